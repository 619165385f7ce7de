-- SPDX-License-Identifier: MIT
-- Executor and futures: submit, result, cancel, callbacks, as_completed,
-- wait, map, shutdown, a dying worker, bad input.
-- Tasks that must stay unfinished wait on an Event the test sets: nothing
-- here depends on how long anything takes.
local t = require "tap"
local mp = require "luamp"

local gate = mp.Event()
local count = mp.Value("i", 0)

local function blocked(v)
  gate:wait()
  return v
end

local function counted(v)
  do local _ <close> = count:get_lock():guard(); count.value = count.value + 1 end
  return v
end

local function fail(msg) error(msg, 0) end

-- submit and result
do
  local ex <close> = mp.Executor{ max_workers = 2 }
  t.is(ex.max_workers, 2, "max_workers is kept")
  local f = ex:submit(function(a, b) return a + b, nil, a * b end, 3, 4)
  t.same(table.pack(f:result()), { 7, nil, 12, n = 3 }, "result returns every value, nil included")
  t.is(f:done(), true, "done after result")
  t.is(f:exception(), nil, "exception is nil after a success")
  t.is(f:cancel(), false, "a finished future cannot be cancelled")
  t.is(f:cancelled(), false, "and is not cancelled")
  t.like(tostring(f), "finished", "tostring names the state")

  local g = ex:submit(fail, "boom")
  local e = t.raises(function() g:result() end, "boom", "result raises the task's error")
  t.ok(mp.Error.is(e, "remote"), "of kind remote")
  t.ok(mp.Error.is(g:exception(), "remote") and g:exception().value == "boom",
    "exception returns it, with the task's error value")

  local futs = {}
  for i = 1, 200 do futs[i] = ex:submit(counted, i) end
  local sum = 0
  for i = 1, 200 do sum = sum + futs[i]:result() end
  t.is(sum, 200 * 201 // 2, "200 futures, more than the window, all give their result")
  t.is(count.value, 200, "each task ran once")
end

-- Waits until a worker has taken the future's task (which then blocks on
-- the gate); false if running() never says so.
local function until_running(fut)
  for _ = 1, 5000 do
    if fut:running() then return true end
    mp._sleep(0.001)
  end
  return false
end

-- pending, running, cancel: one worker, blocked
do
  gate:clear()
  count.value = 0
  local ex <close> = mp.Executor{ max_workers = 1 }
  local a = ex:submit(blocked, "a")
  t.ok(until_running(a), "running() becomes true once a worker takes the task")
  local b = ex:submit(counted, "b")
  local c = ex:submit(counted, "c")
  local d = ex:submit(counted, "d")
  t.is(a:running(), true, "the future a worker took is running")
  t.is(b:running(), false, "one waiting in the queue is not")
  t.is(b:done(), false, "nor done")
  t.like(tostring(b), "pending", "it is pending")
  t.is(a:cancel(), false, "a running future cannot be cancelled")
  t.is(b:cancel(), true, "a pending one can (first in the queue)")
  t.is(d:cancel(), true, "and one further back")
  t.is(b:cancel(), true, "cancel again is still true")
  t.is(b:cancelled(), true, "cancelled() says so")
  t.is(b:done(), true, "a cancelled future is done")
  t.is(b:running(), false, "and not running")
  local e = t.raises(function() b:result() end, "cancelled", "result of a cancelled future raises")
  t.ok(mp.Error.is(e, "cancelled"), "of kind cancelled")
  t.raises(function() b:exception() end, "cancelled", "exception of a cancelled future raises too")
  local te = t.raises(function() a:result(0.05) end, "timed out", "result(timeout) raises while the task runs")
  t.ok(mp.Error.is(te, "timeout"), "of kind timeout")
  t.is(a:done(), false, "the future is still running after the timeout")
  gate:set()
  t.is(a:result(), "a", "and gives its result later")
  t.is(c:result(), "c", "the future between the cancelled ones runs")
  t.is(count.value, 1, "the cancelled tasks never ran")
end

-- Many pending futures: a cancel finds its task in the queue at once
-- (shmq.c, "Cancelling"), however many wait.  Both workers are blocked,
-- so every future behind them is pending and every cancel must succeed;
-- walking the queue for each one took minutes at this size.
local MANY = 50000

local function twice(v)
  counted(v)
  return 2 * v
end

do
  gate:clear()
  count.value = 0
  local ex <close> = mp.Executor{ max_workers = 2 }
  local b1, b2 = ex:submit(blocked, "b1"), ex:submit(blocked, "b2")
  t.ok(until_running(b1) and until_running(b2), "both workers are blocked")
  local futs = {}
  for i = 1, MANY do futs[i] = ex:submit(twice, i) end
  local withdrawn = 0
  for i = 1, MANY, 2 do
    if futs[i]:cancel() then withdrawn = withdrawn + 1 end
  end
  t.is(withdrawn, MANY // 2, "cancelling every other of 50,000 pending futures succeeds every time")
  t.is(ex._pool._tq:qsize(), MANY // 2, "the task queue counts only the tasks left")
  local all_cancelled = true
  for i = 1, MANY, 2 do all_cancelled = all_cancelled and futs[i]:cancelled() end
  t.ok(all_cancelled, "each of them says it is cancelled")
  gate:set()
  local right = 0
  for i = 2, MANY, 2 do
    if futs[i]:result() == 2 * i and not futs[i]:cancelled() then right = right + 1 end
  end
  t.is(right, MANY // 2, "the other 25,000 run and give their results")
  t.is(count.value, MANY // 2, "and the cancelled ones never ran")
end

-- shutdown{cancel_futures = true} with 50,000 futures pending
do
  gate:clear()
  count.value = 0
  local ex = mp.Executor{ max_workers = 2 }
  local b1, b2 = ex:submit(blocked, "b1"), ex:submit(blocked, "b2")
  t.ok(until_running(b1) and until_running(b2), "both workers are blocked again")
  local futs = {}
  for i = 1, MANY do futs[i] = ex:submit(twice, i) end
  ex:shutdown{ wait = false, cancel_futures = true }
  local cancelled = 0
  for i = 1, MANY do
    if futs[i]:cancelled() then cancelled = cancelled + 1 end
  end
  t.is(cancelled, MANY, "shutdown{cancel_futures = true} cancels all 50,000 pending futures")
  t.is(ex._pool._tq:qsize(), 0, "and leaves no task in the queue")
  gate:set()
  ex:shutdown()
  t.same({ b1:result(), b2:result(), count.value }, { "b1", "b2", 0 },
    "the running ones end, and no cancelled task ran")
end

-- submitted tasks run while the script waits on something else
do
  local q = mp.Queue()
  local ex <close> = mp.Executor{ max_workers = 2 }
  for i = 1, 20 do ex:submit(function(x) q:put(x) end, i) end
  local sum = 0
  for _ = 1, 20 do sum = sum + q:get(10) end
  t.is(sum, 210, "every task ran without the script waiting on a future")
end

-- done callbacks
do
  gate:clear()
  local ex <close> = mp.Executor{ max_workers = 1 }
  local seen = {}
  local f = ex:submit(blocked, 5)
  f:add_done_callback(function(fut) seen[#seen + 1] = { fut == f, fut:result(), mp.current_process().name } end)
  f:add_done_callback(function() error("a broken callback") end)
  f:add_done_callback(function() seen[#seen + 1] = "second" end)
  t.is(#seen, 0, "no callback runs before the future is done")
  gate:set()
  f:result()
  t.same(seen, { { true, 5, "MainProcess" }, "second" },
    "callbacks run in order, in the main process, with the future; a raising one harms none")
  local now_called
  f:add_done_callback(function(fut) now_called = fut end)
  t.is(now_called, f, "a callback added to a done future runs at once")
  local c = ex:submit(counted, 1)
  local p = ex:submit(counted, 2)
  gate:clear()
  local blocker1, blocker2 = ex:submit(blocked, 1), ex:submit(blocked, 2)
  local late = ex:submit(counted, 3)
  local got
  late:add_done_callback(function(fut) got = fut:cancelled() end)
  late:cancel()
  t.is(got, true, "cancelling runs the done callbacks")
  gate:set()
  t.same({ c:result(), p:result(), blocker1:result(), blocker2:result() }, { 1, 2, 1, 2 },
    "the other futures finish")
end

-- as_completed
do
  gate:clear()
  local ex <close> = mp.Executor{ max_workers = 2 }
  local slow = ex:submit(blocked, "slow")
  local fast = ex:submit(string.upper, "fast")
  local order = {}
  for fut in mp.as_completed({ slow, fast, fast }) do
    order[#order + 1] = fut:result()
    if #order == 1 then gate:set() end
  end
  t.same(order, { "FAST", "slow" }, "as_completed yields each future once, as it ends")

  gate:clear()
  local s2 = ex:submit(blocked, 1)
  local done_one = ex:submit(math.abs, -3)
  done_one:result()
  local first
  local e = t.raises(function()
    for fut in mp.as_completed({ s2, done_one }, 0.05) do first = first or fut end
  end, "1 of 2 futures unfinished", "as_completed raises when the timeout passes first")
  t.ok(mp.Error.is(e, "timeout"), "of kind timeout")
  t.is(first, done_one, "after yielding what had ended")
  gate:set()
  t.is(s2:result(), 1, "the late future still ends")

  -- futures of two executors at once
  local ex2 <close> = mp.Executor{ max_workers = 1 }
  local mixed, n = {}, 0
  for i = 1, 10 do mixed[#mixed + 1] = (i % 2 == 0 and ex or ex2):submit(counted, i) end
  local total = 0
  for fut in mp.as_completed(mixed) do total = total + fut:result(); n = n + 1 end
  t.is(n, 10, "as_completed over two executors yields every future")
  t.is(total, 55, "with every result")
end

-- wait
do
  gate:clear()
  local ex <close> = mp.Executor{ max_workers = 2 }
  local slow = ex:submit(blocked, 1)
  local fast = ex:submit(math.abs, -2)
  local done, pending = mp.wait({ slow, fast }, { return_when = "FIRST_COMPLETED" })
  t.same({ #done, #pending }, { 1, 1 }, "FIRST_COMPLETED returns after one")
  t.ok(done[1] == fast and pending[1] == slow, "done and pending are the right futures")
  local bad = ex:submit(fail, "no")
  done, pending = mp.wait({ slow, bad }, { return_when = "FIRST_EXCEPTION" })
  t.ok(#done == 1 and done[1] == bad and pending[1] == slow, "FIRST_EXCEPTION returns on a failure")
  done, pending = mp.wait({ fast, slow, bad }, { timeout = 0.05 })
  t.ok(#done == 2 and done[1] == fast and done[2] == bad and pending[1] == slow,
    "ALL_COMPLETED with a timeout returns what ended, in the order given")
  gate:set()
  done, pending = mp.wait({ fast, slow, bad })
  t.same({ #done, #pending }, { 3, 0 }, "ALL_COMPLETED waits for all")
  done = mp.wait({ bad, slow }, { return_when = "FIRST_EXCEPTION" })
  t.is(#done, 2, "FIRST_EXCEPTION with all done returns all")
  t.raises(function() mp.wait({ fast }, { return_when = "SOMETIMES" }) end,
    "return_when must be", "a bad return_when is refused")
  t.raises(function() mp.wait({ fast, 42 }) end, "futures%[2%] is not a Future", "so is a non-future")
  t.raises(function() mp.as_completed("x") end, "table of futures expected", "as_completed checks its argument")
end

-- map
do
  local ex <close> = mp.Executor{ max_workers = 2 }
  local out = {}
  for i, v in ex:map(function(x) return x * 10 end, { 1, 2, 3, 4, 5 }) do out[i] = v end
  t.same(out, { 10, 20, 30, 40, 50 }, "map yields (index, result) in input order")
  local lines = { "a", "bb", "ccc" }
  local k = 0
  local lens = {}
  for i, v in ex:map(string.len, function() k = k + 1; return lines[k] end, { chunksize = 1 }) do lens[i] = v end
  t.same(lens, { 1, 2, 3 }, "map reads an iterator function")
  local got, errs = {}, {}
  local it = ex:map(function(x) if x == 2 then error("two") end return x end, { 1, 2, 3 })
  while true do
    local ok, i, v = pcall(it)
    if not ok then errs[#errs + 1] = i elseif i == nil then break else got[i] = v end
  end
  t.ok(#errs == 1 and mp.Error.is(errs[1], "remote") and tostring(errs[1]):find("two"),
    "a failed item raises at its turn")
  t.same(got, { 1, nil, 3 }, "and the loop can go on past it")
  gate:clear()
  local e = t.raises(function()
    for _ in ex:map(blocked, { 1, 2 }, { timeout = 0.05 }) do end
  end, "timed out", "map's timeout raises when results are late")
  t.ok(mp.Error.is(e, "timeout"), "of kind timeout")
  gate:set()
  t.raises(function() ex:map(print, {}, { chunk = 1 }) end, "unknown option 'chunk'", "map refuses unknown options")
end

-- a worker that dies
do
  local ex <close> = mp.Executor{ max_workers = 2 }
  local ok_before = ex:submit(math.abs, -1)
  local dead = ex:submit(os.exit, 3)
  local e = t.raises(function() dead:result() end, "died: exited with status 3", "a dead worker fails its future")
  t.ok(mp.Error.is(e, "worker_lost"), "of kind worker_lost")
  t.is(ok_before:result(), 1, "the other futures are not harmed")
  local futs = {}
  for i = 1, 20 do futs[i] = ex:submit(counted, i) end
  local sum = 0
  for i = 1, 20 do sum = sum + futs[i]:result() end
  t.is(sum, 210, "the executor replaced the worker and goes on")
end

-- shutdown
do
  gate:clear()
  count.value = 0
  local ex = mp.Executor{ max_workers = 1 }
  local a = ex:submit(blocked, "a")
  t.ok(until_running(a), "the first task is taken")
  local b, c, d = ex:submit(blocked, "b"), ex:submit(counted, "c"), ex:submit(counted, "d")
  t.is(ex:shutdown{ wait = false, cancel_futures = true }, nil, "shutdown without wait returns at once")
  t.ok(b:cancelled() and c:cancelled() and d:cancelled(), "cancel_futures cancels the pending futures")
  t.ok(not a:cancelled(), "but not the running one")
  local e = t.raises(function() ex:submit(print) end, "shut down", "submit after shutdown raises")
  t.ok(mp.Error.is(e, "closed"), "of kind closed")
  t.raises(function() ex:map(print, {}) end, "shut down", "so does map")
  gate:set()
  t.is(a:result(), "a", "a running future still ends after shutdown")
  ex:shutdown()
  t.is(count.value, 0, "cancelled tasks never ran")
  t.like(tostring(ex), "shut down", "tostring says it is shut down")

  count.value = 0
  gate:clear()
  local ex2 = mp.Executor{ max_workers = 1 }
  local futs = {}
  futs[1] = ex2:submit(blocked, 0)
  for i = 2, 6 do futs[i] = ex2:submit(counted, i) end
  ex2:shutdown{ wait = false }
  gate:set()
  t.is(futs[6]:result(), 6, "after shutdown without wait, queued futures still run")
  t.is(count.value, 5, "each once")

  count.value = 0
  do
    local ex3 <close> = mp.Executor{ max_workers = 2 }
    for i = 1, 30 do ex3:submit(counted, i) end
  end
  t.is(count.value, 30, "leaving an Executor's scope waits for its futures")
end

-- what a script leaves unfinished still runs (here a Process's target)
do
  local q = mp.Queue()
  local p = mp.Process{ target = function()
    local ex = mp.Executor{ max_workers = 2 }
    for i = 1, 10 do ex:submit(function(x) q:put(x) end, i) end
  end }
  p:start()
  p:join()
  local got = {}
  for _ = 1, 10 do got[#got + 1] = q:get(5) end
  table.sort(got)
  t.same(got, { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 },
    "futures left unfinished at exit all run, as in Python")
  t.is(p.exitcode, 0, "and the process exits cleanly")
end

-- options
do
  local ex <close> = mp.Executor{ max_workers = 1, initializer = function(x) INIT = x end, initargs = { 7 } }
  t.is(ex:submit(function() return INIT end):result(), 7, "the initializer ran in the worker")
  local ex2 <close> = mp.Executor{ max_workers = 1, max_tasks_per_child = 1 }
  local p1 = ex2:submit(function() return mp.current_process().pid end):result()
  local p2 = ex2:submit(function() return mp.current_process().pid end):result()
  t.ok(p1 ~= p2, "max_tasks_per_child replaces workers")
  local ex3 <close> = mp.Executor()
  t.is(ex3.max_workers, mp.cpu_count(), "max_workers defaults to the CPU count")
end

-- bad input
do
  t.raises(function() mp.Executor{ max_workers = 0 } end, "positive integer expected", "max_workers must be positive")
  t.raises(function() mp.Executor{ max_worker = 2 } end, "unknown option 'max_worker'", "unknown options are refused")
  t.raises(function() mp.Executor(3) end, "options table expected", "options must be a table")
  t.raises(function() mp.Executor{ start_method = "thread" } end, "start_method must be", "an unknown start method is refused")
  t.raises(function() mp.Executor{ initializer = 1 } end, "function expected", "a bad initializer is refused")
  local ex <close> = mp.Executor{ max_workers = 1 }
  t.raises(function() ex:submit(nil) end, "bad argument #1 to 'submit'", "submit wants a function")
  local co = coroutine.create(print)
  local e = t.raises(function() ex:submit(print, 1, co) end, "cannot send args%[2%]: a coroutine",
    "unsendable arguments are refused at submit")
  t.ok(mp.Error.is(e, "serialize"), "of kind serialize")
  gate:clear()
  local b1, b2 = ex:submit(blocked, 1), ex:submit(blocked, 2)
  t.raises(function() ex:submit(print, { f = co }) end, "cannot send args%[1%]%.f: a coroutine",
    "also when the future would wait in the parent")
  t.raises(function() ex:submit(function() return co end) end, "cannot send", "so is an unsendable function")
  t.raises(function() ex:shutdown{ wait = "yes" } end, "wait must be a boolean", "shutdown checks its options")
  t.raises(function() b1:add_done_callback(5) end, "function expected", "add_done_callback wants a function")
  gate:set()
  t.same({ b1:result(), b2:result() }, { 1, 2 }, "the executor is unharmed by what it refused")
  local q = mp.Queue()
  local f = ex:submit(blocked, 3)
  local p = mp.Process{ target = function()
    local ok, err = pcall(f.result, f)
    q:put(not ok and tostring(err) or "no error")
  end }
  p:start()
  p:join()
  t.like(q:get(5), "cannot wait for a Future of process", "a future is waited on only where it was made")
end

t.done()
