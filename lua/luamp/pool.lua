-- SPDX-License-Identifier: MIT
-- luamp/pool.lua: mp.Pool, the parent's side of a pool of workers.
--
-- How a Pool works.  Every pool has two shared-memory queues: tasks
-- (parent -> any worker) and results (workers -> parent).  A put copies
-- the message into shared memory and returns, so tasks already submitted
-- run, and their results are taken out of the workers, while the script
-- computes and never calls luamp; the parent reads the results queue only
-- when it waits (get, wait, map, join, iteration).  That is also where
-- callbacks run.  A task message carries the function's encoded bytes and
-- an id: the function is encoded once per call (once per pool for a
-- function without upvalues of its own), and each worker decodes it once
-- (worker.lua).
--
-- The books.  A job is one call (apply_async, map, imap...) and is also
-- its AsyncResult (results.lua).  Each task put gets a sequence number,
-- and _inflight files the task under it, so that a result, the death of
-- the worker that held the task (_reap: the worker's claim slot in the
-- task queue says which task it held) or the task's deadline
-- (_check_deadlines) settles exactly that task.  The parent serves every
-- worker, so its cost per task bounds the whole pool's rate: messages
-- are built and taken apart in C (src/pool.c), apply_async's common
-- case is one C function (apply_fast), and get_result settles plain
-- results in C and returns here (_handle) only for what needs Lua.
--
-- Chunks.  map cuts its items into chunks, one task each, sized from the
-- number of workers, the observed cost of an item and the size of the
-- items (auto_chunksize); map and starmap, given no chunksize, first
-- send one item per worker to measure.  imap reads its input only as results are consumed
-- (_feed), so an endless iterator is fine.  doc/design.md, "A map call,
-- step by step", follows one call through this file, worker.lua and
-- src/pool.c.
--
-- A pool's end.  close lets the workers finish what is queued, then they
-- exit as they find the task queue shut down; terminate kills them; join
-- waits for them, and the queues' memory and descriptors are given back
-- at once (_end).  A worker that dies is replaced while there is work.
--
-- Uses: errors, checks, current, log, share, spawn, worker, process,
-- results.

local core, part = ...

local errors = part("errors")
local new_error, raise, errmsg = errors.new_error, errors.raise, errors.errmsg
local script_site, note_site = errors.script_site, errors.note_site
local checks = part("checks")
local c_fast_paths, argerror, typename = checks.c_fast_paths, checks.argerror, checks.typename
local check_callable, check_options, check_posint = checks.check_callable, checks.check_options, checks.check_posint
local NO_OPTIONS, remaining = checks.NO_OPTIONS, checks.remaining
local claimed_deadline = checks.claimed_deadline
local current = part("current")
local pools = current.pools
local log = part("log")
local debug_log = log.debug_log
local share = part("share")
local share_objects = share.share_objects
local worker = part("worker")
local spawn = part("spawn")
local check_start_method, check_preload, spawn_child = spawn.check_start_method, spawn.check_preload, spawn.spawn_child
local describe_exit = part("process").describe_exit
local results = part("results")
local new_async, ApplyResult = results.new_async, results.ApplyResult
local ordered_iterator, unordered_iterator = results.ordered_iterator, results.unordered_iterator
local cluster = part("cluster")

local getpid, now = core.getpid, core.now
local unpack = table.unpack
-- (upvalues rather than global lookups: apply_async runs them per task)
local setmetatable, getmetatable, type, error = setmetatable, getmetatable, type, error

--------------------------------------------------------------------------
-- Starting a pool, and its workers

local Pool = {}
local PoolMT = { __index = Pool, __name = "luamp.Pool",
  __luamp_nosend = "a Pool cannot be sent (it belongs to the process that made it: return what the task found, or send a Queue)" }
local MAX_POOL = 256        -- claim slots in a task queue
local pool_count = 0

local POOL_OPTS = { processes = true, initializer = true, initargs = true, maxtasksperchild = true,
  start_method = true, preload = true }

local function new_pool(opts)
  local n, init, initargs, maxtasks
  local method, preload = spawn.get_start_method(), nil
  if type(opts) == "table" then
    check_options(opts, POOL_OPTS, 1, "Pool")
    n = check_posint(opts.processes, 1, "Pool", true)
    init, initargs, maxtasks = opts.initializer, opts.initargs or {}, opts.maxtasksperchild
    method = check_start_method(opts.start_method, 1, "Pool")
    preload = check_preload(opts.preload, 1, "Pool")
    if init ~= nil then check_callable(init, 1, "Pool") end
    if type(initargs) ~= "table" then argerror(1, "Pool", "initargs must be a table") end
    maxtasks = check_posint(maxtasks, 1, "Pool", true)
  elseif opts ~= nil then
    n = check_posint(opts, 1, "Pool")
  end
  n = n or core.default_processes() or core.cpu_count()
  if n > MAX_POOL then argerror(1, "Pool", "at most " .. MAX_POOL .. " processes") end
  -- Under luamp-mpi, a Pool's n workers are spread over the ranks, and
  -- this process starts its own share (cluster.lua, plan).
  local plan = cluster.active() and cluster.plan(n)
  local n_local = plan and plan[0] or n
  -- (map_async never waits for the workers to make room in the task queue)
  local tq = core.pool_queue(0, true)
  local ok, rq = pcall(core.pool_queue, 0)
  if not ok then
    tq:destroy()
    error(rq, 2)
  end
  if plan then tq:_cross_hosts() end
  pool_count = pool_count + 1
  local self = setmetatable({
    processes = n,
    _owner = getpid(),
    _id = pool_count,
    _tq = tq,
    _rq = rq,
    _workers = {},          -- child handles, in spawn order
    _spawned = 0,
    _jobs = {},             -- id -> job not finished yet (but apply jobs: see apply_async)
    _sinks = {},            -- id -> results table of a map job: results are decoded into it
    _nextjob = 0,
    _fcache = setmetatable({}, { __mode = "k" }),
    _nextfid = 0,
    _state = "run",
    _initializer = init,
    _initargs = initargs,
    _start_method = method,
    _preload = preload,
    _maxtasks = maxtasks,
    _cost = nil,            -- observed seconds per item, for chunk sizes
    _slot = {},             -- worker handle -> its claim slot in the task queue
    _wname = {},            -- worker handle -> its name
    _free_slots = {},
    _inflight = {},         -- task sequence number -> {job, start, count, timeout}, or an apply job
    _ntimed = 0,            -- tasks in flight that have a deadline
    _killed = {},           -- slot -> sequence number of a task past its deadline
    _share = {},            -- worker handle -> what was sent to it: share.worker_record
    _result = {},           -- get_result's record, reused by every _pump
    _cluster_plan = plan or nil,  -- workers per rank, under luamp-mpi
  }, PoolMT)
  self._tq:_on_objects(function(objects) share_objects(self, objects) end)
  for slot = n_local - 1, 0, -1 do self._free_slots[#self._free_slots + 1] = slot end
  if log.debugging then debug_log("Pool %d: starting %d workers", self._id, n_local) end
  -- A pool that cannot start all its workers (fork's EAGAIN under a
  -- process limit, descriptors running out) stops those it started and
  -- gives its queues back before it raises, so that a retry, or anything
  -- else that forks, is not starved by workers waiting for a collection.
  local started, err = pcall(function()
    for _ = 1, n_local do self:_spawn() end
    if plan then
      self._cluster = cluster.open(tq, rq, plan, { init = init, initargs = initargs, maxtasks = maxtasks,
                                                   preload = preload })
    end
  end)
  if not started then
    self:terminate()
    error(err, 2)
  end
  pools[self] = true
  return self
end

function Pool:_spawn()
  self._spawned = self._spawned + 1
  local slot = table.remove(self._free_slots)
  local psock, wsock = core.objsock()
  local known, ok, h = core.object_count(), nil, nil
  if self._start_method == "spawn" then
    known = false
    ok, h = pcall(spawn_child, { kind = "worker", tq = self._tq, rq = self._rq, index = self._spawned,
                                 slot = slot, init = self._initializer, initargs = self._initargs,
                                 maxtasks = self._maxtasks, objsock = wsock },
                  self._preload, "Pool", { wsock })
  else
    ok, h = pcall(core.fork, true)
  end
  if not ok then
    core.close_fd(psock)
    core.close_fd(wsock)
    self._free_slots[#self._free_slots + 1] = slot
    error(h, 0)
  end
  if h == 0 then
    core.close_fd(psock)
    worker.run(self, self._spawned, slot, wsock)
  end
  core.close_fd(wsock)
  self._workers[#self._workers + 1] = h
  self._slot[h] = slot
  self._wname[h] = "PoolWorker-" .. self._spawned
  self._share[h] = share.worker_record(psock, known)
  if log.debugging then debug_log("Pool %d: started PoolWorker-%d (pid %d)", self._id, self._spawned, h.pid) end
end

local function check_pool(self, fname)
  if getmetatable(self) ~= PoolMT then
    error(string.format("bad argument #1 to '%s' (Pool expected, got %s)", fname, typename(self)), 3)
  end
  if self._owner ~= current.pid then   -- (every luamp fork updates current)
    raise("usage", string.format("cannot use a Pool of process %d in process %d", self._owner, current.pid), 3)
  end
end

local function check_running(self, fname)
  check_pool(self, fname)
  if self._state ~= "run" then
    raise("closed", "cannot " .. fname .. ": the Pool is " ..
      (self._state == "close" and "closed" or "terminated"), 3)
  end
  if self._broken then error(self._broken, 3) end
end

-- Encoded function for this pool: (fid, bytes).  A function whose only
-- upvalue is the global environment cannot change, so it is encoded once
-- per pool; any other is encoded once per call.
local function encode_function(self, f, fname)
  local c = self._fcache[f]
  if c then return c[1], c[2] end
  -- (a cluster Pool's function may go to other hosts, with its upvalues)
  local bytes, why = (self._cluster_plan and cluster.encode_across or core.encode)(f, "function")
  if not bytes then raise("serialize", why, 4) end
  self._nextfid = self._nextfid + 1
  local fid = self._nextfid
  local cacheable = type(f) == "function"
  if cacheable then
    for i = 1, math.huge do
      local name, v = debug.getupvalue(f, i)
      if name == nil then break end
      if not (name == "_ENV" and v == _G) then cacheable = false; break end
    end
  end
  if cacheable then self._fcache[f] = { fid, bytes } end
  return fid, bytes
end

-- A worker as mp.active_children lists it: pid, name ("PoolWorker-3"),
-- daemon (true, as in Python) and is_alive(): whether its pool has not
-- yet seen it exit.
local PoolWorker = { __name = "luamp.PoolWorker", __index = {} }
function PoolWorker.__index:is_alive()
  for _, h in ipairs(self._pool._workers) do
    if h == self._h then return true end
  end
  return false
end
PoolWorker.__tostring = function(w) return string.format("pool worker %s (pid %d)", w.name, w.pid) end

function Pool:_children()
  local list = {}
  for _, h in ipairs(self._workers) do
    list[#list + 1] = setmetatable({ pid = h.pid, name = self._wname[h], daemon = true, _pool = self, _h = h }, PoolWorker)
  end
  return list
end

--------------------------------------------------------------------------
-- The books: results, failures, deaths and deadlines

local function remote_error(info, pid)
  if type(info) ~= "table" then
    -- The message handler did not run: Lua skips it when memory runs out
    -- (and when the handler itself fails), so the error is Lua's own
    -- string.  The worker that ran the task exits after sending it.
    return new_error("remote", string.format("%s in the task (worker pid %d)", errmsg(info), pid),
      { value = info, pid = pid })
  end
  if info.serialize then
    return new_error("serialize", info.message)
  end
  local value = info.value
  if value == nil then value = info.message end
  local tb = info.traceback and ("remote traceback (pid " .. tostring(pid) .. "):\n" .. info.traceback)
  return new_error("remote", info.message, { value = value, traceback = tb, pid = pid })
end

local function run_callback(fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then
    io.stderr:write("luamp: error in a callback (ignored): ", errmsg(err), "\n")
  end
end

-- Marks a job finished and runs its callback.  A map-like job's
-- `finished` is true; an apply job's is the number of its values, which
-- are in the job itself at 1..n (0 when it failed): one shape, whether
-- get_result settled it in C (pool.c, settle_apply) or _complete did.
local function finish(self, job)
  if job.kind ~= "apply" then
    job.finished = true
  elseif type(job.finished) ~= "number" then
    job.finished = 0
  end
  self._jobs[job.id] = nil
  self._sinks[job.id] = nil
  if job.progress then job.progress(true) end
  if job.abandoned then return end        -- nobody is waiting for it
  if job.err then
    if job.error_callback then run_callback(job.error_callback, job.err) end
  elseif job.callback then
    if job.kind == "apply" then
      run_callback(job.callback, unpack(job, 1, job.finished))
    else
      run_callback(job.callback, job.results)
    end
  end
end

-- Feeds the next chunks of a lazily read job.  What is read from the
-- source but not yet yielded to the loop stays under a bound, so memory
-- stays bounded however long the input and however slow the loop.
local function feed(self, job)
  while job.source and job.inflight < job.maxinflight
        and (job.next_index - 1) - job.yielded < job.window do
    if not self:_submit_chunk(job) then break end
  end
end
Pool._feed = feed     -- (results.lua's loops call it as a method)

-- Records the outcome of `count` items from `start` of a job: results
-- (a sequence, holes allowed) and errors (index in the chunk -> Error).
function Pool:_complete(job, start, count, results, errors, nres)
  if job.kind == "apply" then
    if errors then
      job.err = errors[1]
    else   -- (results true: the values were decoded into the job itself)
      if results ~= true then table.move(results, 1, nres, 1, job) end
      job.finished = nres
    end
    return finish(self, job)
  end
  if errors then
    for i, e in pairs(errors) do
      local idx = start + i - 1
      if not job.first_err or idx < job.first_err then job.first_err, job.err = idx, e end
    end
  end
  local chunks = job.chunks
  if chunks then          -- imap: the loop takes results chunk by chunk
    local rec = { start = start, count = count, results = results, errors = errors }
    if job.ordered then
      chunks[start] = rec
    else
      job.ctail = job.ctail + 1
      chunks[job.ctail] = rec
    end
  elseif results ~= true then   -- (true: decoded in place already)
    table.move(results, 1, count, start, job.results)
  end
  job.done = job.done + count
  job.inflight = job.inflight - 1
  if job.progress then job.progress(false) end
  if job.source then feed(self, job) end
  if job.done == job.total then finish(self, job) end
end

-- Takes a task out of the books; nil if it was settled already.
function Pool:_settle(seq)
  local rec = self._inflight[seq]
  if not rec then return nil end
  self._inflight[seq] = nil
  if rec.timeout then self._ntimed = self._ntimed - 1 end
  return rec
end

-- Fails every item of a task taken out of the books with error e.
function Pool:_fail_task(rec, e)
  local errors = {}
  local count = rec.count or 1           -- (an apply job is its own record)
  for k = 1, count do errors[k] = e end
  self:_complete(rec.job or rec, rec.start or 1, count, {}, errors)
end

-- The pool cannot run tasks any more: every unfinished job fails with e,
-- and so does every later submission.
function Pool:_break(e)
  if self._broken then return end
  self._broken = e
  local jobs = self:_unfinished()
  for seq in pairs(self._inflight) do self:_settle(seq) end
  for _, job in ipairs(jobs) do
    job.err = job.err or e
    finish(self, job)
  end
end

-- Every job not finished yet, in submission order: those in _jobs, and
-- the apply jobs, which are in _inflight only (see apply_async).
function Pool:_unfinished()
  local jobs = {}
  for _, job in pairs(self._jobs) do jobs[#jobs + 1] = job end
  for _, rec in pairs(self._inflight) do
    if rec.kind == "apply" then jobs[#jobs + 1] = rec end
  end
  table.sort(jobs, function(a, b) return a.id < b.id end)
  return jobs
end

-- r: get_result's record (pool.c, result_fields).
function Pool:_handle(r)
  local jobid, start, count, results, errs = r.jobid, r.start, r.count, r.results, r.errs
  local elapsed, pid, seq, nres, rlen = r.elapsed, r.pid, r.seq, r.nres, r.rlen
  if jobid <= 0 then
    if jobid == -2 then                       -- a cluster node: the worker that held it died
      local rec = self:_settle(seq)
      if rec and type(errs) == "table" then
        self:_fail_task(rec, new_error(errs.kind, errs.message,
          { pid = errs.pid, host = errs.host, exitcode = errs.exitcode }))
      end
      return
    end
    if jobid == 0 then                        -- a worker's initializer failed
      local info = type(errs) == "table" and errs or { message = errmsg(errs) }
      return self:_break(new_error("remote", "the Pool's initializer failed: " .. tostring(info.message),
        { traceback = info.traceback }))
    end
    local rec = self:_settle(seq)             -- a worker could not decode a task
    if rec then self:_fail_task(rec, new_error("serialize", "cannot receive the task: " .. errs)) end
    return
  end
  local rec = self:_settle(seq)
  if not rec then return end                  -- cancelled, or its worker was killed
  self._early_deaths = 0
  if results == false then                    -- not decodable here
    return self:_fail_task(rec, new_error("serialize", "cannot receive the result: " .. errs))
  end
  local job = rec.job or rec
  if count > 0 then
    local cost = self:_observe_cost(elapsed / count)
    if job.probing then job.probe_cost, job.probe_bytes = cost, rlen / count end
  end
  local errors
  if errs then
    errors = {}
    for i, info in pairs(errs) do errors[i] = note_site(remote_error(info, pid), job.site) end
  end
  self:_complete(job, start, count, results or {}, errors, nres)
end

-- n items (apply tasks, map items) were settled by get_result itself
-- (see pool.c, settle_apply and settle_map), in `elapsed` seconds in all.
function Pool:_settled(n, elapsed)
  self._early_deaths = 0
  self:_observe_cost(elapsed / n)
end

-- Folds a task's seconds per item into the pool's estimate (for chunk
-- sizes); returns the task's own.
function Pool:_observe_cost(cost)
  self._cost = self._cost and (self._cost * 0.7 + cost * 0.3) or cost
  return cost
end

-- A worker exited: fail the task it held (if any), reap it, and start
-- another while there is work.  Results it put before dying were handled
-- first (_pump drains the results queue before it reaps).
function Pool:_reap(i)
  local h = table.remove(self._workers, i)
  local code = h:poll(-1)
  local slot = self._slot[h]
  self._slot[h] = nil
  if self._share[h].sock then core.close_fd(self._share[h].sock) end
  self._share[h] = nil
  local seq = self._tq:claim(slot)
  local rec = seq ~= 0 and self:_settle(seq)
  if rec then
    local e
    if self._killed[slot] == seq then
      e = new_error("task_timeout", string.format(
        "the task ran past its %gs timeout; its worker %s (pid %d) was killed and replaced",
        rec.timeout, self._wname[h], h.pid), { pid = h.pid })
    else
      e = new_error("worker_lost", string.format(
        "the worker %s (pid %d) running this task died: %s",
        self._wname[h], h.pid, describe_exit(code)), { pid = h.pid, exitcode = code })
    end
    self:_fail_task(rec, e)
  end
  if log.debugging then
    debug_log("Pool %d: %s (pid %d) %s%s", self._id, self._wname[h], h.pid, describe_exit(code),
      rec and (self._killed[slot] == seq and "; its task ran past its timeout and fails"
               or "; the task it ran fails (worker_lost)") or "")
  end
  self._killed[slot] = nil
  self._wname[h] = nil
  self._tq:release(slot)
  self._free_slots[#self._free_slots + 1] = slot
  -- Workers that keep dying before they take any task (an initializer
  -- that exits, a crash at start) would be replaced for ever: past a
  -- bound, the pool is broken and its tasks fail.
  if rec or code == 0 then
    self._early_deaths = 0
  else
    self._early_deaths = (self._early_deaths or 0) + 1
    if self._early_deaths > 2 * self.processes + 2 then
      self:_break(new_error("worker_lost", string.format(
        "the Pool's workers keep dying before they run any task (the last %s)",
        describe_exit(code)), { exitcode = code }))
    end
  end
  if self._state == "terminate" or self._broken then return end
  -- A closed pool replaces a worker only while there is work for it: tasks
  -- waiting in the queue, or input a job has still to read.  (A closing
  -- pool's workers exit one by one as they find the queue empty; replacing
  -- them because some job was still registered forked for ever.)
  if self._state == "run" or not self._sealed or self._tq:qsize() > 0 then
    if log.debugging then debug_log("Pool %d: replacing it", self._id) end
    self:_spawn()
  end
end

-- The earliest deadline of a running task; kills the workers of tasks
-- already past theirs (their exit then fails the task).  A deadline runs
-- from when a worker takes the task: while a timed task still waits in the
-- queue, look again soon, as nothing else would wake the parent then.
local UNCLAIMED_RECHECK = 0.05

function Pool:_check_deadlines()
  local first
  local t = now()
  local claimed_timed = 0
  for _, h in ipairs(self._workers) do
    local slot = self._slot[h]
    local seq, since = self._tq:claim(slot)
    local rec = seq ~= 0 and self._inflight[seq]
    if rec and rec.timeout then
      claimed_timed = claimed_timed + 1
      local kill
      kill, first = claimed_deadline(self._killed, slot, seq, since, rec.timeout, t, first)
      if kill then
        if log.debugging then debug_log("Pool %d: killing %s (pid %d): its task is past its timeout", self._id, self._wname[h], h.pid) end
        h:signal(9)
      end
    end
  end
  if claimed_timed < self._ntimed and (not first or first > t + UNCLAIMED_RECHECK) then
    first = t + UNCLAIMED_RECHECK
  end
  return first
end

-- Waits until a message arrives (handling all that are waiting) or a
-- worker exits, or the deadline passes.  Returns false at the deadline.
function Pool:_pump(deadline)
  if self._ended then return false end
  local rq = self._rq
  local wait_until = deadline
  if self._ntimed > 0 then
    local dl = self:_check_deadlines()
    if dl and (not wait_until or dl < wait_until) then wait_until = dl end
  end
  local sinks, inflight, jobs = self._sinks, self._inflight, self._jobs
  local rec = self._result                   -- (filled by get_result, reused)
  local got, a, b, c = rq:get_result(remaining(wait_until), self._workers, sinks, inflight, jobs, rec)
  if got or a == "settled" then
    repeat
      if got then self:_handle(rec) else self:_settled(b, c) end
      got, a, b, c = rq:get_result(0, nil, sinks, inflight, jobs, rec)
    until not got and a ~= "settled"
    return true
  end
  if a == "event" then
    local w = b
    repeat                           -- what the worker put before it died
      got, a, b, c = rq:get_result(0, nil, sinks, inflight, jobs, rec)
      if got then self:_handle(rec) elseif a == "settled" then self:_settled(b, c) end
    until not got and a ~= "settled"
    self:_reap(w)
    return true
  end
  return wait_until ~= deadline      -- a task deadline, not the caller's
end

function Pool:_wait_for(job, deadline)
  while not job.finished do
    if self._ended then error("the Pool has ended", 3) end
    if not self:_pump(deadline) and deadline and now() >= deadline then return false end
  end
  return true
end

-- A job is also what map_async/apply_async return (an AsyncResult).
-- `total` is known for apply (1) and map, not for imap over an iterator.
local function new_job(self, kind, opts, fname, f, total)
  local id = self._nextjob + 1
  self._nextjob = id
  local fid, fbytes = encode_function(self, f, fname)
  local job = { id = id, kind = kind, done = 0, inflight = 0, finished = false, _pool = self,
                callback = opts.callback, error_callback = opts.error_callback,
                timeout = opts.timeout, fid = fid, fbytes = fbytes, total = total }
  local site = script_site(2)       -- (for the remote tracebacks of its tasks)
  if site then job.site = "task submitted by " .. fname .. " at " .. site end
  self._jobs[id] = job
  return job
end

-- Puts one task of a map-like job; an item that cannot travel raises
-- "serialize" naming it.  With `first`, the task's items are
-- items[first .. first + count - 1] (items then has no metatable),
-- encoded without a copy of the chunk.
function Pool:_put_task(job, kind, start, items, count, first)
  local timeout = job.timeout and job.timeout * count
  local seq, why = self._tq:put_task(job.id, job.fid, job.fbytes, kind, start, items, count, "items", first, timeout)
  if seq then
    job.inflight = job.inflight + 1
    self._inflight[seq] = { job = job, start = start, count = count, timeout = timeout }
    if timeout then self._ntimed = self._ntimed + 1 end
    return
  end
  self._jobs[job.id] = nil
  self._sinks[job.id] = nil
  if not first then   -- name the item by its index in the whole input
    for i = 1, count do
      local _, why_i = core.encode(items[i], "items[" .. (start + i - 1) .. "]")
      if why_i then why = why_i; break end
    end
  end
  error(new_error("serialize", why), 0)
end

local NO_OPTS = NO_OPTIONS

-- The options of map-like calls, and of apply_async (which takes no
-- chunksize and draws no progress bar).
local MAP_OPTS = { chunksize = true, callback = true, error_callback = true, timeout = true, progress = true }
local APPLY_OPTS = { callback = true, error_callback = true, timeout = true }

local function check_opts(opts, n, fname, known)
  if opts == nil then return NO_OPTS end
  if type(opts) == "number" then
    return { chunksize = check_posint(opts, n, fname) }
  end
  if type(opts) ~= "table" then argerror(n, fname, "chunksize or options table expected, got " .. typename(opts)) end
  check_options(opts, known or MAP_OPTS, n, fname)
  if opts.chunksize ~= nil then check_posint(opts.chunksize, n, fname) end
  if opts.callback ~= nil then check_callable(opts.callback, n, fname) end
  if opts.error_callback ~= nil then check_callable(opts.error_callback, n, fname) end
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or not (opts.timeout > 0)) then
    argerror(n, fname, "timeout must be a positive number, got " .. tostring(opts.timeout))
  end
  return opts
end

--------------------------------------------------------------------------
-- Submitting

local NO_ARGS = {}     -- only ever encoded, never handed out

-- Puts the task f(table.unpack(args)) and files its job (an ApplyResult)
-- in _inflight: the job, the task's sequence number, the job's id and
-- the task's position in the queue (for _tq:cancel).
local function put_apply(pool, f, args, fname, timeout)
  local id = pool._nextjob + 1
  pool._nextjob = id
  local fid, fbytes = encode_function(pool, f, fname)
  -- (tq:apply_task puts the task, makes the job and files it in _inflight)
  local job, seq, pos = pool._tq:apply_task(pool._inflight, ApplyResult, pool, id, fid, fbytes, args, timeout)
  if not job then error(new_error("serialize", seq), 0) end
  return job, seq, id, pos
end

function Pool:apply_async(f, args, opts)
  -- (check_running's checks, inline: apply_async runs for every task of
  -- some scripts)
  if getmetatable(self) ~= PoolMT or self._owner ~= current.pid or self._state ~= "run" or self._broken then
    check_running(self, "apply_async")
  end
  if type(f) ~= "function" then check_callable(f, 1, "apply_async") end
  if args ~= nil and type(args) ~= "table" then argerror(2, "apply_async", "table expected, got " .. typename(args)) end
  if opts ~= nil then
    if type(opts) ~= "table" then argerror(3, "apply_async", "table expected, got " .. typename(opts)) end
    opts = check_opts(opts, 3, "apply_async", APPLY_OPTS)
  else
    opts = NO_OPTS
  end
  -- A lean job: apply_async runs for every task of some scripts.  It is
  -- the AsyncResult, its own record in the books (in _inflight only, not
  -- in _jobs) and where its values are decoded (at 1..n).  Its table
  -- has room for one value and `finished` without growing: get_result
  -- settles it in C (pool.c, settle_apply) by setting finished to the
  -- number of values, as _complete does when it is settled in Lua.
  local job, seq, id = put_apply(self, f, args or NO_ARGS, "apply_async", opts.timeout)
  if log.debugging then debug_log("Pool %d: put apply task %d (job %d)", self._id, seq, id) end
  if opts ~= NO_OPTS then
    local timeout = opts.timeout
    job.timeout, job.callback, job.error_callback = timeout, opts.callback, opts.error_callback
    if timeout then self._ntimed = self._ntimed + 1 end
  end
  return job
end

-- The common case in C (pool.c, apply_fast), which hands everything else
-- to the function above; while the pools log at "debug", that function
-- serves every call, so that each task is logged.
local apply_async_lua = Pool.apply_async
local apply_async_fast = core.apply_fast(PoolMT, ApplyResult, NO_ARGS, apply_async_lua)
c_fast_paths[apply_async_fast] = true
log.on_debugging(function(debugging) Pool.apply_async = debugging and apply_async_lua or apply_async_fast end)

function Pool:apply(f, args)
  check_running(self, "apply")
  return Pool.apply_async(self, f, args):get()
end

-- Big items travel in chunks of about CHUNK_BYTES: a worker starts on the
-- first items sooner, and its buffers and decoded strings stay small and
-- are reused (256 items of 1 MiB: ~1,000 -> ~1,400 MiB/s).
local CHUNK_BYTES = 2 << 20
-- map and starmap put the chunks of more string bytes than this as
-- earlier ones come back (see Pool:_start_map).
local LAZY_BYTES = 16 << 20

-- The mean length of the string items among up to 8 spread over items.
local function sampled_item_bytes(items, n)
  local sum, k = 0, 0
  for i = 1, n, math.max(1, n // 8) do
    local v = items[i]
    if type(v) == "string" then sum = sum + #v end
    k = k + 1
    if k == 8 then break end
  end
  return k > 0 and sum / k or 0
end

-- `cost` (seconds) and `rbytes` (encoded result bytes) per item, when a
-- probe measured them for this job.
local function auto_chunksize(self, n, items, cost, rbytes)
  local cs = math.max(1, math.min(math.ceil(n / (self.processes * 4)), 100000))
  cost = cost or self._cost
  if cost and cost > 0 then
    -- about 20 ms of work per chunk when tasks are known to be slow
    cs = math.min(cs, math.max(1, math.floor(0.02 / cost)))
  end
  local bytes = math.max(sampled_item_bytes(items, n), rbytes or 0)
  if bytes > 0 then cs = math.min(cs, math.max(1, math.floor(CHUNK_BYTES / bytes + 0.5))) end
  return cs
end

-- A progress bar on stderr, when it is a terminal, laid out as tqdm's:
--    45%|#########           | 450/1000 [0:00:02<0:00:03, 180.5/s]
-- and for an iterator of unknown length `450 [0:00:02, 180.5/s]`.  The
-- line is redrawn in place ("\r", the line, then erase to the end of
-- the line: a shorter line leaves nothing behind) at most ten times a
-- second, and once more, with a newline, when the job ends, failed or
-- not.  The bar takes what the terminal's width (asked at each redraw,
-- so a resized window is followed) leaves of the line, less one column:
-- a line that fills the last column makes some terminals wrap.
local function hms(s)
  s = math.floor(s + 0.5)
  return string.format("%d:%02d:%02d", s // 3600, s // 60 % 60, s % 60)
end

local function progress_line(done, total, elapsed, columns)
  local rate = elapsed > 0 and done / elapsed or 0
  if not total then
    return string.format("%d [%s, %.1f/s]", done, hms(elapsed), rate)
  end
  local eta = done >= total and "0:00:00" or rate > 0 and hms((total - done) / rate) or "?"
  local left = string.format("%3d%%|", total > 0 and 100 * done // total or 100)
  local right = string.format("| %d/%d [%s<%s, %.1f/s]", done, total, hms(elapsed), eta, rate)
  local width = columns - 1 - #left - #right
  if width < 1 then return (left:gsub("|$", "")) .. right:sub(2) end
  local filled = total > 0 and width * done // total or width
  return left .. string.rep("#", filled) .. string.rep(" ", width - filled) .. right
end

local function progress_bar(job)
  if not core.isatty(2) then return nil end
  local t0, last = now(), 0
  local sized = job.total ~= nil    -- (an iterator's count is known at its end only)
  return function(final)
    local t = now()
    if not final and t - last < 0.1 then return end
    last = t
    local line = progress_line(job.done, sized and job.total, t - t0, core.term_columns(2) or 80)
    io.stderr:write("\r", line, "\27[K", final and "\n" or "")
    io.stderr:flush()
  end
end

-- Starts a map-like job over a sequence: all chunks are put at once
-- (but see the big-data case at the end).
-- With `probe` (map and starmap, which wait for the job anyway) and no
-- chunksize given, one item per worker goes first, and the rest in chunks
-- sized by what the first of them cost and returned: a function that
-- returns 1 MiB per item gets chunks of 2 items, not #items / 8.
function Pool:_start_map(fname, kind, f, items, opts, probe)
  check_running(self, fname)
  check_callable(f, 1, fname)
  if type(items) ~= "table" then argerror(2, fname, "table expected, got " .. typename(items)) end
  opts = check_opts(opts, 3, fname)
  local n = items.n or #items
  local job = new_job(self, kind, opts, fname, f, n)
  job.results = core.table(math.min(n, 1 << 26), 1)   -- (filled at once: no growing)
  job.results.n = n
  if opts.progress then job.progress = progress_bar(job) end
  local plain = getmetatable(items) == nil
  self._sinks[job.id] = job.results
  local function put(start, count)
    if plain then
      self:_put_task(job, kind, start, items, count, start)
    else   -- (a proxy table: read through its metamethods)
      self:_put_task(job, kind, start, table.move(items, start, start + count - 1, 1, {}), count)
    end
  end
  local cs, first = opts.chunksize or (opts.timeout and 1), 1
  if not cs and probe and n > 4 * self.processes then
    job.probing = true
    for start = 1, self.processes do put(start, 1) end
    first = self.processes + 1
    while job.done == 0 and not job.finished do self:_pump() end
    job.probing = nil
    if job.finished then return job end      -- the pool broke meanwhile
    cs = auto_chunksize(self, n - first + 1, items, job.probe_cost, job.probe_bytes)
  end
  cs = cs or auto_chunksize(self, n, items)
  job.chunksize, self._chunksize = cs, cs   -- (the pool's copy is for tests)
  if probe and sampled_item_bytes(items, n) * (n - first + 1) > LAZY_BYTES then
    -- Big data, and the caller waits anyway: chunks are put as earlier
    -- ones come back, a few per worker at a time, not all at once (256
    -- MiB of items would grow the task queue to 256 MiB of fresh pages,
    -- which cost more than sending them)
    job.items, job.next_index, job.yielded = items, first, 0
    job.source = true
    job.maxinflight = self.processes * 4
    job.window = math.huge
    feed(self, job)
    return job
  end
  if log.debugging then
    debug_log("Pool %d: %s of %d items: putting %d tasks of %d items", self._id, fname, n,
      (n - first + cs) // cs, cs)
  end
  for start = first, n, cs do put(start, math.min(cs, n - start + 1)) end
  if n == 0 then finish(self, job) end
  return job
end

function Pool:map_async(f, items, opts)
  return new_async(Pool._start_map(self, "map_async", "map", f, items, opts))
end

function Pool:starmap_async(f, items, opts)
  return new_async(Pool._start_map(self, "starmap_async", "star", f, items, opts))
end

function Pool:map(f, items, opts)
  local job = Pool._start_map(self, "map", "map", f, items, opts, true)
  self:_wait_for(job)
  if job.err then error(job.err, 2) end
  return job.results
end

function Pool:starmap(f, items, opts)
  local job = Pool._start_map(self, "starmap", "star", f, items, opts, true)
  self:_wait_for(job)
  if job.err then error(job.err, 2) end
  return job.results
end

local MAX_LAZY_CHUNK = 1024   -- largest chunk read from an iterator

-- Reads the next chunk of a lazy job from its source; false at its end.
-- An iterator is never called again once it returned nil (io.lines
-- raises if it is).
function Pool:_submit_chunk(job)
  local cs = job.chunksize
  if not cs then   -- unknown length: from the observed cost per item
    cs = self._cost and math.max(1, math.min(MAX_LAZY_CHUNK, math.floor(0.02 / math.max(self._cost, 1e-9)))) or 1
  end
  local chunk, count, slice = {}, 0, nil
  local items, src, first = job.items, job.source, job.next_index
  if items then
    count = math.min(cs, job.total - first + 1)
    if getmetatable(items) == nil then
      chunk, slice = items, first
    elseif count > 0 then
      table.move(items, first, first + count - 1, 1, chunk)
    end
    if count < cs then job.exhausted = true end
  else
    while count < cs do
      local v = src()
      if v == nil then job.exhausted = true; break end
      count = count + 1
      chunk[count] = v
    end
  end
  job.next_index = first + count
  if count > 0 then
    self:_put_task(job, job.kind, first, chunk, count, slice)
  end
  if job.exhausted then
    job.source = nil
    job.total = job.next_index - 1
    if job.done == job.total and not job.finished then finish(self, job) end
    self:_seal()
  end
  return count > 0
end

local function start_imap(self, fname, f, items, opts)
  check_running(self, fname)
  check_callable(f, 1, fname)
  local ti = type(items)
  if ti ~= "table" and ti ~= "function" then
    argerror(2, fname, "table or iterator function expected, got " .. typename(items))
  end
  opts = check_opts(opts, 3, fname)
  local job = new_job(self, "map", opts, fname, f)
  job.fname = fname
  job.results = {}
  job.next_index = 1
  job.yielded = 0
  job.maxinflight = self.processes * 4
  if ti == "table" then
    job.items = items
    job.total = items.n or #items
    job.source = true
    job.chunksize = opts.chunksize or (opts.timeout and 1) or auto_chunksize(self, job.total, items)
  else
    job.source = items
    job.total = nil
    job.chunksize = opts.chunksize or (opts.timeout and 1)
  end
  job.window = job.maxinflight * (job.chunksize or MAX_LAZY_CHUNK)
  if opts.progress then job.progress = progress_bar(job) end
  feed(self, job)
  return job
end

-- No more of a lazy job's input is read: its loop was left (`why` is
-- "loop") or the pool is joined ("join").  The chunks already handed out
-- still run; their results are dropped with the job.
local function abandon(self, job, why)
  if not job.source or job.finished then return end
  job.source = nil
  job.abandoned = why
  job.total = job.next_index - 1
  if log.debugging then debug_log("Pool %d: %s left after %d items", self._id, job.fname, job.total) end
  if job.done == job.total then finish(self, job) end
  self:_seal()
end
Pool._abandon = abandon   -- (called by a loop left early: results.lua)

function Pool:imap(f, items, opts)
  return ordered_iterator(self, start_imap(self, "imap", f, items, opts))
end

-- Yields (index, result) as results arrive.
function Pool:imap_unordered(f, items, opts)
  return unordered_iterator(self, start_imap(self, "imap_unordered", f, items, opts))
end

--------------------------------------------------------------------------
-- Ending

function Pool:close()
  check_pool(self, "close")
  if self._state == "run" then
    self._state = "close"
    if log.debugging then debug_log("Pool %d: closed", self._id) end
    self:_seal()
  end
end

-- A closed pool's task queue is shut down (its workers then exit as they
-- find it empty) once no job has input left to read: an imap loop may go
-- on after close, as in Python, and its next chunks still need workers.
function Pool:_seal()
  if self._state ~= "close" or self._sealed then return end
  for _, job in pairs(self._jobs) do
    if job.source then return end
  end
  self._sealed = true
  self._tq:shutdown()
end


-- Waits for every worker to exit, handling results meanwhile, so every
-- task has finished and every callback has run when it returns.
function Pool:join()
  check_pool(self, "join")
  if self._state == "run" then raise("usage", "cannot join a running Pool: close or terminate it first", 2) end
  for _, job in pairs(self._jobs) do abandon(self, job, "join") end
  while #self._workers > 0 do self:_pump() end
  -- the other ranks' workers, when the Pool spans a cluster
  if self._cluster then
    while not cluster.done(self._cluster) do self:_pump(now() + 0.005) end
  end
  -- results that were put just before the last worker exited
  while self:_pump(now()) do end
  self:_end()
end

-- Gives back the queues' shared memory and descriptors now: a script that
-- makes and closes thousands of pools does not wait for the collector.
function Pool:_end()
  if self._ended then return end
  self._ended = true
  if self._cluster then cluster.release(self._cluster) end
  self._tq:destroy()
  self._rq:destroy()
  for h, s in pairs(self._share) do
    if s.sock then core.close_fd(s.sock) end
    self._share[h] = nil
  end
  pools[self] = nil
end

function Pool:terminate()
  check_pool(self, "terminate")
  if self._state == "terminate" then return end
  self._state = "terminate"
  if log.debugging then debug_log("Pool %d: terminating %d workers", self._id, #self._workers) end
  self._tq:shutdown()
  for _, h in ipairs(self._workers) do h:signal(9) end
  if self._cluster then cluster.terminate(self._cluster) end
  for _, h in ipairs(self._workers) do h:poll(-1) end
  self._workers = {}
  if self._cluster then cluster.wait_done(self._cluster, 5) end
  local jobs = self:_unfinished()
  self._inflight, self._ntimed = {}, 0
  self._jobs, self._sinks = {}, {}
  for _, job in ipairs(jobs) do
    job.err = job.err or new_error("cancelled", "the task was cancelled: the Pool was terminated")
    finish(self, job)
  end
  self:_end()
end

-- The end of the script (current.shutdown): a closed pool finishes its
-- work, unless the script was interrupted; then the pool is terminated.
function Pool:_at_exit(hard)
  if self._owner ~= getpid() then return end
  if self._state == "close" and not hard then pcall(Pool.join, self) end
  pcall(Pool.terminate, self)
end

PoolMT.__close = function(self, err)
  if self._owner ~= getpid() then return end
  if err ~= nil then
    self:terminate()
  else
    self:close()
    self:join()
  end
end

PoolMT.__gc = function(self)
  if self._owner == getpid() and self._state ~= "terminate" then
    pcall(Pool.terminate, self)
  end
end

PoolMT.__tostring = function(self)
  return string.format("Pool %d (%d processes, %s)", self._id, self.processes, self._state)
end

return {
  Pool = new_pool,
  check_running = check_running,
  put_apply = put_apply,
  start_imap = start_imap,
  run_callback = run_callback,
}
