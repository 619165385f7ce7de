-- SPDX-License-Identifier: MIT
-- luamp/executor.lua: mp.Executor and its futures, mp.as_completed and
-- mp.wait (Python's concurrent.futures).
--
-- An Executor is a Pool with futures in front.  submit puts the task in
-- the pool's task queue at once, so it runs while the script computes;
-- until a worker takes it, cancel can still withdraw it from the queue
-- (the task then never runs), found at once by the position the put gave
-- out, which the future keeps.  A future is pending while its task waits
-- in the queue, running once a worker has taken it (the queue's claim
-- slots say which), then finished or cancelled.  Results are handled, and
-- done callbacks run, while the script waits on a future of the executor
-- (or asks done(), or iterates its map, or shuts it down).
--
-- Python's executor keeps pending calls in the parent and feeds its
-- workers a few at a time from a helper thread, so that they can still
-- be cancelled; luamp has no helper thread, and a backlog in the parent
-- would only move while the script waits.  So cancel works on the queue
-- itself (shmq.c, "Cancelling"), and a future is settled by its task's
-- callbacks when the pool handles the result, or the death of the worker
-- that ran it.  as_completed and wait register on each future a list to
-- be told, and wait on the pools of the futures still out (several
-- pools: a short slice on each in turn).
--
-- Uses: errors, checks, current, spawn, pool, results, cluster.

local core, part = ...

local errors = part("errors")
local raise, note_site = errors.raise, errors.note_site
local checks = part("checks")
local argerror, typename = checks.argerror, checks.typename
local check_callable, check_one_of, check_options = checks.check_callable, checks.check_one_of, checks.check_options
local check_timeout, check_posint = checks.check_timeout, checks.check_posint
local check_bool, deadline_of = checks.check_bool, checks.deadline_of
local current = part("current")
local executors = current.executors
local spawn = part("spawn")
local check_start_method, check_preload = spawn.check_start_method, spawn.check_preload
local pool_part = part("pool")
local Pool, put_apply, start_imap = pool_part.Pool, pool_part.put_apply, pool_part.start_imap
local check_running, run_callback = pool_part.check_running, pool_part.run_callback
local ordered_iterator = part("results").ordered_iterator
local cluster = part("cluster")

local getpid, now = core.getpid, core.now
local pack, unpack = table.pack, table.unpack

local Executor = {}
local ExecutorMT = { __index = Executor, __name = "luamp.Executor",
  __luamp_nosend = "an Executor cannot be sent (it belongs to the process that made it: return what the task found, or send a Queue)" }
local Future = {}
local FutureMT = { __index = Future, __name = "luamp.Future",
  __luamp_nosend = "a Future cannot be sent (send its value: fut:result())" }
local executor_count = 0

local EXECUTOR_OPTS = { max_workers = true, initializer = true, initargs = true,
                        max_tasks_per_child = true, start_method = true, preload = true }

local function new_executor(opts)
  opts = check_options(opts, EXECUTOR_OPTS, 1, "Executor")
  local n = check_posint(opts.max_workers, 1, "Executor", true)
  if opts.initializer ~= nil then check_callable(opts.initializer, 1, "Executor") end
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then
    argerror(1, "Executor", "initargs must be a table, got " .. typename(opts.initargs))
  end
  local maxtasks = check_posint(opts.max_tasks_per_child, 1, "Executor", true)
  local method = check_start_method(opts.start_method, 1, "Executor")
  local preload = check_preload(opts.preload, 1, "Executor")
  local pool = Pool{ processes = n, initializer = opts.initializer, initargs = opts.initargs,
                        maxtasksperchild = maxtasks, start_method = method, preload = preload }
  executor_count = executor_count + 1
  local self = setmetatable({
    max_workers = pool.processes,
    _id = executor_count,
    _owner = current.pid,
    _pool = pool,
    _futures = {},          -- sequence number of its task -> future not settled
    _unsettled = 0,
    _shutdown = false,
  }, ExecutorMT)
  executors[self] = executor_count
  return self
end

local function check_executor(self, fname)
  if getmetatable(self) ~= ExecutorMT then
    error(string.format("bad argument #1 to '%s' (Executor expected, got %s)", fname, typename(self)), 3)
  end
  if self._owner ~= current.pid then
    raise("usage", string.format("cannot use an Executor of process %d in process %d", self._owner, current.pid), 3)
  end
end

local function is_done(fut)
  local s = fut._state
  return s == "finished" or s == "cancelled"
end

-- A future ends: finished (with values, or err) or cancelled.  Those
-- waiting on it (as_completed, wait) learn it first, then its done
-- callbacks run.
local function settle(fut, state, err, values)
  fut._state, fut._err, fut._values = state, err, values
  local ex = fut._ex
  ex._futures[fut._seq] = nil
  ex._unsettled = ex._unsettled - 1
  local ws = fut._waiters
  if ws then
    fut._waiters = nil
    for i = 1, #ws do
      local w = ws[i]
      if not w.dead then w.n = w.n + 1; w[w.n] = fut end
    end
  end
  local cbs = fut._callbacks
  if cbs then
    fut._callbacks = nil
    for i = 1, #cbs do run_callback(cbs[i], fut) end
  end
end

function Executor:submit(f, ...)
  check_executor(self, "submit")
  if self._shutdown then raise("closed", "cannot submit: the Executor is shut down", 2) end
  check_callable(f, 1, "submit")
  local pool = self._pool
  check_running(pool, "submit")
  local job, seq, _, pos = put_apply(pool, f, pack(...), "submit")
  local fut = setmetatable({ _ex = self, _seq = seq, _pos = pos, _state = "pending" }, FutureMT)
  local caller = debug.getinfo(2, "Sl")     -- (for the remote traceback of its task)
  local site = caller and "task submitted by submit at " .. caller.short_src .. ":" .. caller.currentline
  job.callback = function(...) settle(fut, "finished", nil, pack(...)) end
  job.error_callback = function(e) settle(fut, "finished", note_site(e, site)) end
  self._futures[seq] = fut
  self._unsettled = self._unsettled + 1
  return fut
end

-- Waits until something happens in one of the executors `exs` (results
-- arrive, a worker exits) or the deadline passes; false at the deadline.
local MULTI_SLICE = 0.002
local function wait_some(exs, deadline)
  for _, ex in ipairs(exs) do
    if ex._pool._ended then error("the Executor has ended", 3) end
  end
  if #exs == 1 then return exs[1]._pool:_pump(deadline) end
  -- Several executors: take what has arrived anywhere, else sleep on one
  -- for a short slice at a time, in turn.
  for _, ex in ipairs(exs) do
    if ex._pool:_pump(now()) then return true end
  end
  exs.turn = (exs.turn or 0) % #exs + 1
  local slice = now() + MULTI_SLICE
  if deadline and deadline < slice then slice = deadline end
  return exs[exs.turn]._pool:_pump(slice) or not deadline or now() < deadline
end

local function owned_executor(fut, level)
  local ex = fut._ex
  if ex._owner ~= current.pid then
    raise("usage", string.format("cannot wait for a Future of process %d in process %d", ex._owner, current.pid), level + 1)
  end
  return ex
end

-- Waits for the future to end; false if the timeout passed first.
local function wait_future(fut, timeout, fname)
  if is_done(fut) then return true end
  check_timeout(timeout, 1, fname)
  local exs = { owned_executor(fut, 3) }
  local deadline = deadline_of(timeout)
  while not is_done(fut) do
    if not wait_some(exs, deadline) and deadline and now() >= deadline then return false end
  end
  return true
end

-- Waits for a future to finish, for result and exception: raises
-- "timeout" when it has not by then, "cancelled" when it was cancelled.
local function finished(fut, timeout, fname)
  if not wait_future(fut, timeout, fname) then
    raise("timeout", string.format("timed out after %gs waiting for a future", timeout), 3)
  end
  if fut._state == "cancelled" then raise("cancelled", "the future was cancelled", 3) end
end

function Future:result(timeout)
  finished(self, timeout, "result")
  if self._err ~= nil then error(self._err, 2) end
  local v = self._values
  return unpack(v, 1, v.n)
end

function Future:exception(timeout)
  finished(self, timeout, "exception")
  return self._err
end

-- Takes what has arrived, without waiting, so that done() and running()
-- are current.
local function refresh(fut)
  if is_done(fut) then return end
  local ex = fut._ex
  if ex._owner == current.pid and not ex._pool._ended then ex._pool:_pump(now()) end
end

function Future:done()
  refresh(self)
  return is_done(self)
end

-- Whether a worker has taken the task and not finished it; under
-- luamp-mpi, also whether it went to another rank, where it runs or is
-- next in line (as Python's executor counts a task running once it is in
-- its call queue).
function Future:running()
  refresh(self)
  if is_done(self) then return false end
  local pool = self._ex._pool
  for _, h in ipairs(pool._workers) do
    if pool._tq:claim(pool._slot[h]) == self._seq then return true end
  end
  return pool._cluster ~= nil and cluster.sent(pool._cluster, self._seq)
end

function Future:cancelled() return self._state == "cancelled" end

-- A future whose task no worker has taken yet is cancelled: the task is
-- withdrawn from the queue and never runs.  The task's position takes the
-- queue straight to it (shmq.c, "Cancelling").
function Future:cancel()
  if is_done(self) then return self._state == "cancelled" end
  local pool = self._ex._pool
  if pool._ended or not pool._tq:cancel(self._seq, self._pos) then return false end
  pool:_settle(self._seq)
  settle(self, "cancelled")
  return true
end

function Future:add_done_callback(fn)
  check_callable(fn, 1, "add_done_callback")
  if is_done(self) then
    run_callback(fn, self)
  else
    local cbs = self._callbacks
    if not cbs then cbs = {}; self._callbacks = cbs end
    cbs[#cbs + 1] = fn
  end
end

FutureMT.__tostring = function(self)
  return "Future (" .. self._state .. ")"
end

local EXECUTOR_MAP_OPTS = { timeout = true, chunksize = true }

-- for i, v in ex:map(f, items, {timeout =, chunksize =}): results in input
-- order, as the Pool's imap (items: a table or an iterator function).
-- The timeout counts from the call, as in Python.
function Executor:map(f, items, opts)
  check_executor(self, "map")
  if self._shutdown then raise("closed", "cannot map: the Executor is shut down", 2) end
  opts = check_options(opts, EXECUTOR_MAP_OPTS, 3, "map")
  local timeout = opts.timeout
  check_timeout(timeout, 3, "map")
  local deadline = deadline_of(timeout)
  local job = start_imap(self._pool, "map", f, items, { chunksize = opts.chunksize })
  return ordered_iterator(self._pool, job, deadline, timeout)
end

-- Stops taking work.  cancel_futures cancels the futures no worker has
-- taken yet; wait (the default) waits for every other future to end and
-- for the workers to exit.  Without wait, the workers run what is queued
-- and exit.
local SHUTDOWN_OPTS = { wait = true, cancel_futures = true }

function Executor:shutdown(opts)
  check_executor(self, "shutdown")
  opts = check_options(opts, SHUTDOWN_OPTS, 1, "shutdown")
  check_bool(opts.wait, 1, "shutdown", "wait")
  check_bool(opts.cancel_futures, 1, "shutdown", "cancel_futures")
  self._shutdown = true
  local pool = self._pool
  if opts.cancel_futures then
    local seqs = {}
    for seq in pairs(self._futures) do seqs[#seqs + 1] = seq end
    table.sort(seqs)      -- (callbacks run in submission order)
    for _, seq in ipairs(seqs) do
      local fut = self._futures[seq]
      if fut then Future.cancel(fut) end
    end
  end
  if opts.wait == false then
    if pool._state == "run" then pool:close() end
    return
  end
  while not pool._ended and self._unsettled > 0 do pool:_pump() end
  if pool._state == "run" then pool:close() end
  if not pool._ended then pool:join() end
end

-- The end of the script, when not interrupted (current.shutdown): an
-- Executor not shut down runs its submitted futures to the end.
function Executor:_at_exit()
  if self._owner == getpid() and not self._shutdown then pcall(Executor.shutdown, self) end
end

ExecutorMT.__close = function(self, err)
  if self._owner ~= getpid() then return end
  self:shutdown{ wait = true, cancel_futures = err ~= nil }
end

ExecutorMT.__tostring = function(self)
  return string.format("Executor %d (%d workers%s)", self._id, self.max_workers,
    self._shutdown and ", shut down" or "")
end

-- The distinct futures of a sequence (checked), and the executors of
-- those not done yet.
local function future_set(futures, fname)
  if type(futures) ~= "table" then argerror(1, fname, "table of futures expected, got " .. typename(futures)) end
  local list, seen, exs, exset = {}, {}, {}, {}
  for i = 1, futures.n or #futures do
    local fut = futures[i]
    if getmetatable(fut) ~= FutureMT then
      argerror(1, fname, "futures[" .. i .. "] is not a Future (got " .. typename(fut) .. ")")
    end
    if not seen[fut] then
      seen[fut] = true
      list[#list + 1] = fut
      if not is_done(fut) then
        local ex = owned_executor(fut, 3)
        if not exset[ex] then exset[ex] = true; exs[#exs + 1] = ex end
      end
    end
  end
  return list, exs
end

-- A list that learns of each future of `list` as it ends (already ended
-- ones first, in order).
local function completions(list)
  local w = { n = 0 }
  for _, fut in ipairs(list) do
    if is_done(fut) then
      w.n = w.n + 1
      w[w.n] = fut
    else
      local ws = fut._waiters
      if not ws then ws = {}; fut._waiters = ws end
      ws[#ws + 1] = w
    end
  end
  return w
end

-- for fut in mp.as_completed(futures, timeout): each future once, as it
-- ends (those already ended first).
local function as_completed(futures, timeout)
  local list, exs = future_set(futures, "as_completed")
  check_timeout(timeout, 2, "as_completed")
  local deadline = deadline_of(timeout)
  local w = completions(list)
  local head = 0
  return function()
    if head == #list then return nil end
    while head == w.n do
      if not wait_some(exs, deadline) and deadline and now() >= deadline then
        w.dead = true
        raise("timeout", string.format("%d of %d futures unfinished after %gs",
          #list - head, #list, timeout), 2)
      end
    end
    head = head + 1
    local fut = w[head]
    w[head] = nil
    return fut
  end
end

local RETURN_WHEN = { ALL_COMPLETED = true, FIRST_COMPLETED = true, FIRST_EXCEPTION = true }

local WAIT_OPTS = { timeout = true, return_when = true }

-- done, pending = mp.wait(futures, {timeout =, return_when =})
local function wait(futures, opts)
  local list, exs = future_set(futures, "wait")
  opts = check_options(opts, WAIT_OPTS, 2, "wait")
  local timeout, when = opts.timeout, opts.return_when or "ALL_COMPLETED"
  check_timeout(timeout, 2, "wait")
  check_one_of(when, RETURN_WHEN, 2, "wait",
    'return_when must be "ALL_COMPLETED", "FIRST_COMPLETED" or "FIRST_EXCEPTION"')
  local deadline = deadline_of(timeout)
  local w = completions(list)
  local seen, failed = 0, false
  while true do
    for i = seen + 1, w.n do
      local fut = w[i]
      if fut._state == "finished" and fut._err ~= nil then failed = true end
    end
    seen = w.n
    if seen == #list or (when == "FIRST_COMPLETED" and seen > 0) or (when == "FIRST_EXCEPTION" and failed) then break end
    if not wait_some(exs, deadline) and deadline and now() >= deadline then break end
  end
  w.dead = true
  local done, pending = {}, {}
  for _, fut in ipairs(list) do
    local t = is_done(fut) and done or pending
    t[#t + 1] = fut
  end
  return done, pending
end

return {
  Executor = new_executor,
  as_completed = as_completed,
  wait = wait,
}
