-- SPDX-License-Identifier: MIT
-- luamp/worker.lua: a pool worker, from its start to its exit.
--
-- A worker is a fork of the script that made its pool (or a spawned
-- process: spawn.lua) and loops: take a task from the pool's task queue,
-- run it, put its result on the result queue, until the task queue is
-- shut down.  A task message carries its function's encoded bytes and an
-- id: the worker decodes a function once and keeps it by id (up to
-- MAX_CACHED_FUNCTIONS).  Most tasks never reach the Lua loop below:
-- tq:serve (src/pool.c) runs apply tasks and small map chunks of a
-- function decoded before in C, under the same message handler
-- (errors.lua), and returns here with any other task: a bigger chunk, a
-- starmap, a new function, a message it cannot decode; and with every
-- task when the pool has maxtasksperchild (the loop counts them).
--
-- One failure fails one item: run_chunk goes on after an item that
-- raised, and put_result replaces a result that cannot travel by a
-- "serialize" error for that item alone.  A task that runs out of memory
-- ends the worker (a Lua state that ran out may not be able to go on),
-- and the pool starts another in its place.
--
-- Uses: errors, log, current, share.

local core, part = ...

local errors = part("errors")
local new_error, errmsg = errors.new_error, errors.errmsg
local error_info = errors.error_info
local log = part("log")
local debug_log = log.debug_log
local current = part("current")
local become_child = current.become_child
local fetch_objects_from = part("share").fetch_objects_from

local getpid, now = core.getpid, core.now
local unpack = table.unpack
local type, error = type, error

local MAX_CACHED_FUNCTIONS = 256

-- The frames under a task's function: worker_main and what lies under it
-- (run, and the script's frames that forked this worker), and the frame
-- that calls the task: tq:serve's (C) or xpcall's.  A task's traceback
-- leaves them out (errors.lua); set when the worker starts.
local under_task
local function task_handler(e)
  return error_info(e, 2, under_task)
end

-- Runs a map-like task; returns results (a sequence, holes allowed) and
-- errors by position (or false).  One xpcall runs the chunk; when an
-- item fails, the message handler finds which in the loop's frame (a
-- position kept up to date per item cost as much as a cheap f), and the
-- loop goes on after it.
local function run_chunk(f, kind, items, count)
  local results, errs = core.table(count), false
  local pos = 1
  local body
  -- (f, items and results copied into locals: registers, where upvalues
  -- cost a load each per item, a fifth of the loop)
  if kind == "map" then
    body = function()
      local f, items, results = f, items, results
      for i = pos, count do results[i] = f(items[i]) end
    end
  else
    body = function()
      local f, items, results, unpack = f, items, results, unpack
      for i = pos, count do
        local a = items[i]
        results[i] = f(unpack(a, 1, a.n or #a))
      end
    end
  end
  local failed
  local function handler(e)
    -- body's frame is near the bottom of the stack, under the task's: it
    -- is looked for from the bottom up.  (From the top, each getinfo
    -- walking the stack from its top, a task that overflowed the stack
    -- with hundreds of thousands of frames took hours.)
    local last = errors.last_level()
    for level = last, math.max(2, last - 64), -1 do
      local info = debug.getinfo(level, "f")
      if info and info.func == body then
        for k = 1, math.huge do
          local name, v = debug.getlocal(level, k)
          if name == nil then break end
          if name == "i" then failed = v end
        end
        break
      end
    end
    return error_info(e, 2, under_task + 2)   -- (and run_chunk, xpcall, body)
  end
  local spent = false
  while pos <= count do
    failed = nil
    local ok, info = xpcall(body, handler)
    if ok then break end
    errs = errs or {}
    if not failed then
      -- (the handler did not run or failed itself: memory ran out, see
      -- spent_worker in pool.c.  Which item ran last is unknown, so every
      -- item from pos fails rather than any running twice.)
      for k = pos, count do errs[k] = info end
      spent = true
      break
    end
    errs[failed] = info
    pos = failed + 1
  end
  return results, errs, spent
end

-- An error as it can travel: its message and traceback when the whole
-- Error (its value) cannot.
local function plain_error(info)
  if type(info) ~= "table" then return { message = errmsg(info) } end
  return { message = info.message, traceback = info.traceback }
end

-- Sends the result of a map-like task, or a degraded one when some result
-- cannot travel: that item fails with kind "serialize", the others are
-- kept.
local function put_result(rq, jobid, start, count, seq, pid, elapsed, results, errs)
  local ok, why = rq:put_result(jobid, start, count, seq, pid, elapsed, results, errs)
  if ok then return end
  errs = errs or {}
  local failed = false
  for i = 1, count do
    if errs[i] then
      if not core.encode(errs[i]) then errs[i] = plain_error(errs[i]) end
    else
      local bytes, why_i = core.encode(results[i], "result[" .. (start + i - 1) .. "]")
      if not bytes then
        errs[i] = { message = why_i, serialize = true }
        results[i] = nil
        failed = true
      end
    end
  end
  if not failed then       -- too large as a whole: every item fails
    for i = 1, count do errs[i] = errs[i] or { message = why, serialize = true } end
    results = nil
  end
  assert(rq:put_result(jobid, start, count, seq, pid, elapsed, results, errs))
end

-- Sends an apply task's outcome; false when the task ran out of memory
-- (its error is not the handler's table).
local function send_apply_outcome(rq, jobid, seq, pid, t0, ok, ...)
  rq:put_apply(jobid, seq, pid, t0, ok, ...)
  return ok or type((...)) == "table"
end

local function worker_main(pool, index, slot)
  become_child("PoolWorker-" .. index)
  local tq, rq = pool._tq, pool._rq
  local pid = current.pid
  under_task = errors.last_level() + 1
  if pool._initializer then
    local a = pool._initargs
    local ok, info = xpcall(pool._initializer, task_handler, unpack(a, 1, a.n or #a))
    if not ok then
      pcall(rq.put_result, rq, 0, 0, 0, 0, pid, 0, nil, plain_error(info))
      core._exit(1)
    end
  end
  local fcache, ncached = {}, 0
  local left = pool._maxtasks
  local task = {}          -- filled by get_task and serve (pool.c, task_record)
  tq:task_record(task)
  while true do
    -- tq:serve runs apply tasks and small map chunks of known functions
    -- in C, and returns the first other task as get_task does (it does not count tasks: with
    -- maxtasksperchild, every task comes here)
    local got, why, bad_seq, bad_msg
    if left then
      got, why, bad_seq, bad_msg = tq:get_task(slot, fcache)
    else
      got, why, bad_seq, bad_msg = tq:serve(slot, fcache, rq, task_handler, pid, put_result)
    end
    if not got then
      if why == "spent" then break end
      if why == "requeued" then
        -- The task refers to an object made after this worker was forked;
        -- it went back to the queue, and the worker forked to replace this
        -- one has the object.
        if log.debugging then debug_log("a task needs an object made after this worker started: leaving it to a new worker") end
        core._exit(0)
      end
      if why ~= "undecodable" then core._exit(0) end   -- the pool was closed
      -- e.g. an object this process cannot know: fail the task
      rq:put_result(-1, 0, 0, bad_seq, pid, 0, nil, bad_msg)
      goto continue
    end
    local jobid, fid, f, kind, start, items, count, seq =
      task.jobid, task.fid, task.f, task.kind, task.start, task.items, task.count, task.seq
    task.items, task.f = nil, nil      -- (the record keeps nothing alive)
    if type(f) == "string" then
      local ok, fn = pcall(core.decode, f)
      if ok then
        if ncached >= MAX_CACHED_FUNCTIONS then fcache, ncached = {}, 0 end
        fcache[fid], ncached = fn, ncached + 1
        f = fn
      else
        f = function() error(new_error("serialize", "cannot receive the task's function: " .. errmsg(fn)), 0) end
      end
    end
    if kind == "apply" then
      local t0 = now()
      if not send_apply_outcome(rq, jobid, seq, pid, t0, xpcall(f, task_handler, unpack(items, 1, items.n or #items))) then
        break
      end
    else
      local t0 = now()
      local results, errs, spent = run_chunk(f, kind, items, count)
      put_result(rq, jobid, start, count, seq, pid, now() - t0, results, errs)
      if spent then break end
    end
    if left then
      left = left - 1
      if left == 0 then core._exit(0) end
    end
    ::continue::
  end
  -- A task ran out of memory (its error is Lua's bare message, see
  -- run_chunk): this worker may not be able to go on, and the pool forks a
  -- fresh one in its place.
  if log.debugging then debug_log("a task ran out of memory: this worker exits to be replaced") end
  core._exit(0)
end

-- A worker's whole life, in a fork of the process that made the pool or
-- in a spawned process (spawn.lua); never returns.  `pool` holds what
-- the worker uses of its pool (_tq, _rq, _initializer, _initargs,
-- _maxtasks); objsock is its end of its object socket (share.lua).
local function run(pool, index, slot, objsock)
  if objsock then fetch_objects_from(objsock) end
  local ok, err = xpcall(worker_main, debug.traceback, pool, index, slot)
  if not ok then
    io.stderr:write(string.format("luamp: %s (pid %d) failed: %s\n", current.name, getpid(), errmsg(err)))
  end
  core._exit(ok and 0 or 70)
end

return { run = run }
