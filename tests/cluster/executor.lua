-- SPDX-License-Identifier: MIT
-- cluster/executor.lua: mp.Executor() over every rank, run on rank 0 of
-- `mpirun -n 3 luamp-mpi` (tests/cluster.sh): submit, map, as_completed,
-- wait, cancel, done callbacks.
-- Tasks that must stay unfinished wait for a gate, a file in the scratch
-- directory (luamp objects cannot reach other hosts): nothing here
-- depends on how long anything takes.
--   arg[1]: scratch directory; arg[2]: the ranks of the job (3)
local t = require "tap"
local mp = require "luamp"
local u = require "cluster.util"

local scratch = assert(arg[1], "usage: executor.lua SCRATCH NRANKS")
local nranks = tonumber(arg[2] or "3")
local exists, put, meet, rank, count = u.exists, u.put, u.meet, u.rank, u.count

local c = type(mp.cluster) == "function" and mp.cluster()
if not t.is(type(c), "table", "mp.cluster() is a table under mpirun") then t.done() end

local n = 0
local function gate_dir()
  n = n + 1
  return u.subdir(scratch, "gate" .. n)
end

-- (a task) leaves dir/started-<v>, waits for dir/open (at most 40 s),
-- leaves dir/ran-<v>, returns v
local function blocked(dir, v)
  put(dir .. "/started-" .. v, u.where())
  for _ = 1, 2000 do
    if exists(dir .. "/open") then break end
    require("luamp")._sleep(0.02)
  end
  put(dir .. "/ran-" .. v, u.where())
  return v
end

-- (a task) leaves dir/ran-<v>, returns v
local function marked(dir, v)
  put(dir .. "/ran-" .. v, u.where())
  return v
end

local function open(dir) put(dir .. "/open", "") end

-- waits (at most 30 s) until dir holds k files named started-*
local function until_started(dir, k)
  for _ = 1, 1500 do
    local p, m = io.popen("ls " .. dir), 0
    for f in p:lines() do if f:find("^started%-") then m = m + 1 end end
    p:close()
    if m >= k then return true end
    mp._sleep(0.02)
  end
  return false
end

local ex <close> = mp.Executor()
t.is(ex.max_workers, c.workers, "mp.Executor() without max_workers has every worker of every rank")

-- submit and result, on every rank
do
  local f = ex:submit(function(a, b) return a + b, nil, a * b end, 3, 4)
  t.same(table.pack(f:result(30)), { 7, nil, 12, n = 3 }, "result returns every value, nil included")
  t.is(f:done(), true, "done after result")
  t.is(f:exception(), nil, "exception is nil after a success")
  t.is(f:cancel(), false, "a finished future cannot be cancelled")
  local g = ex:submit(function(m) error(m, 0) end, "boom")
  local e = t.raises(function() g:result(30) end, "boom", "result raises the task's error")
  t.ok(mp.Error.is(e, "remote"), "of kind remote")
  t.ok(mp.Error.is(g:exception(), "remote") and g:exception().value == "boom",
    "exception returns it, with the task's error value")
  local dir = u.subdir(scratch, "spread")
  local futs, ranks = {}, {}
  local by = u.by(10)
  for i = 1, 2 * c.workers do futs[i] = ex:submit(function() return (meet(dir, nranks, by)) end) end
  for i = 1, #futs do ranks[futs[i]:result(60)] = true end
  t.is(u.keys(ranks), u.keys(u.ranks(nranks)), "submitted tasks ran on every rank")
  local many, sum = {}, 0
  for i = 1, 500 do many[i] = ex:submit(function(x) return x * 2 end, i) end
  for i = 1, 500 do sum = sum + many[i]:result(30) end
  t.is(sum, 500 * 501, "500 futures all give their result")
  local dir2 = u.subdir(scratch, "spread-after-cheap")
  local by2, futs2, ranks2 = u.by(5), {}, {}
  for i = 1, 2 * c.workers do futs2[i] = ex:submit(function() return (meet(dir2, nranks, by2)) end) end
  for i = 1, #futs2 do ranks2[futs2[i]:result(60)] = true end
  t.is(u.keys(ranks2), u.keys(u.ranks(nranks)), "after 500 cheap futures, slow ones run on every rank")
end

-- running, cancel: every worker blocked, then futures behind them.  Each
-- part with blocked tasks has an Executor of its own: a fresh one sends
-- another rank at most two tasks a worker (more once results say tasks
-- are cheap: doc/design.md, "A task on another host"), so three blocked
-- tasks a worker keep every worker busy, rank 0's included, and leave the
-- rest in rank 0's queue.
do
  local bex <close> = mp.Executor()
  local dir = gate_dir()
  local blockers, nb = {}, 3 * c.workers
  for i = 1, nb do blockers[i] = bex:submit(blocked, dir, "b" .. i) end
  t.ok(until_started(dir, c.workers), "every worker of every rank has taken a blocked task")
  local started, ranks = {}, {}
  for i = 1, nb do
    local w = u.get(dir .. "/started-b" .. i)
    if w then
      started[#started + 1] = i
      ranks[w:match("^(%d+):") or "?"] = true
    end
  end
  t.is(#started, c.workers, "one a worker")
  t.is(u.keys(ranks), u.keys(u.ranks(nranks)), "on every rank")
  -- running() is true for a task one of rank 0's workers took (its
  -- claim slot says so) and for one sent to another rank (rank 0's
  -- thread keeps those until their results come back); neither can be
  -- cancelled.
  local running, local_ones, remote_running, uncancellable = 0, 0, 0, 0
  for _, i in ipairs(started) do
    local w = u.get(dir .. "/started-b" .. i)
    local on_rank0 = w and w:match("^0:") ~= nil
    if on_rank0 then local_ones = local_ones + 1 end
    if blockers[i]:running() then
      running = running + 1
      if not on_rank0 then remote_running = remote_running + 1 end
    end
    if blockers[i]:cancel() == false then uncancellable = uncancellable + 1 end
  end
  t.ok(local_ones >= 1, "rank 0's own worker took a blocked task")
  t.ok(remote_running >= 1, "running() is true for a task a worker of another rank runs")
  t.is(running, #started, "running() is true for every task a worker has taken, on whatever rank")
  t.is(uncancellable, #started, "a task a worker of any rank has taken cannot be cancelled")
  local ex = bex
  local later = {}
  for i = 1, 4 * c.workers + 10 do later[i] = ex:submit(marked, dir, "l" .. i) end
  local last = later[#later]
  t.is(last:running(), false, "a future behind busy workers is not running")
  t.is(last:done(), false, "nor done")
  t.is(last:cancel(), true, "the last one submitted can be cancelled")
  t.is(last:cancelled(), true, "cancelled() says so")
  t.is(last:done(), true, "a cancelled future is done")
  local e = t.raises(function() last:result(5) end, "cancelled", "result of a cancelled future raises")
  t.ok(mp.Error.is(e, "cancelled"), "of kind cancelled")
  local withdrawn = { [#later] = true }
  for i = 1, #later - 1, 2 do if later[i]:cancel() then withdrawn[i] = true end end
  local te = t.raises(function() blockers[started[1] or 1]:result(0.05) end, "timed out",
    "result(timeout) raises while the task runs")
  t.ok(mp.Error.is(te, "timeout"), "of kind timeout")
  open(dir)
  local right, ran_cancelled = 0, {}
  for i = 1, #later do
    if withdrawn[i] then
      if not later[i]:cancelled() then ran_cancelled[#ran_cancelled + 1] = "l" .. i .. " not cancelled" end
    elseif later[i]:result(30) == "l" .. i then
      right = right + 1
    end
  end
  local nw = 0
  for _ in pairs(withdrawn) do nw = nw + 1 end
  t.is(right, #later - nw, "the futures not cancelled run and give their results")
  for i = 1, nb do blockers[i]:result(30) end
  local still = 0
  for i = 1, nb do if blockers[i]:running() then still = still + 1 end end
  t.is(still, 0, "once their results are in, no future reads as running")
  ex:submit(function() end):result(30)
  for i in pairs(withdrawn) do
    if exists(dir .. "/ran-l" .. i) then ran_cancelled[#ran_cancelled + 1] = "l" .. i .. " ran" end
  end
  t.is(table.concat(ran_cancelled, ", "), "", "no cancelled task ran (" .. nw .. " cancelled)")
end

-- done callbacks
do
  local ex <close> = mp.Executor()   -- (fresh: see above)
  local dir = gate_dir()
  local seen = {}
  local f = ex:submit(blocked, dir, "cb")
  f:add_done_callback(function(fut) seen[#seen + 1] = { fut == f, fut:result(), mp.current_process().name } end)
  f:add_done_callback(function() seen[#seen + 1] = "second" end)
  t.is(#seen, 0, "no done callback runs before the future is done")
  open(dir)
  f:result(30)
  t.same(seen, { { true, "cb", "MainProcess" }, "second" }, "done callbacks run in order, in the main script")
end

-- as_completed
do
  local ex <close> = mp.Executor()   -- (fresh: see above)
  local dir = gate_dir()
  local slow = ex:submit(blocked, dir, "slow")
  local fast = ex:submit(string.upper, "fast")
  t.is(fast:result(30), "FAST", "a future beside a blocked one finishes")
  local order = {}
  local e = t.raises(function()
    for fut in mp.as_completed({ slow, fast }, 0.5) do order[#order + 1] = fut == fast and "fast" or "slow" end
  end, "unfinished after 0.5s", "as_completed(futures, 0.5) raises while a future is unfinished")
  t.ok(mp.Error.is(e, "timeout"), "of kind timeout")
  t.same(order, { "fast" }, "after yielding the finished one")
  open(dir)
  local got, times = {}, {}
  local futs = { slow, fast }
  for i = 1, 30 do futs[#futs + 1] = ex:submit(function(x) return x end, i) end
  for fut in mp.as_completed(futs) do
    times[fut] = (times[fut] or 0) + 1
    got[#got + 1] = fut
  end
  local once = #got == #futs
  for _, fut in ipairs(futs) do if times[fut] ~= 1 or not fut:done() then once = false end end
  t.ok(once, "as_completed yields each future once, done (" .. #got .. " of " .. #futs .. ")")
  t.is(slow:result(), "slow", "the blocked future finished")
end

-- wait
do
  local ex <close> = mp.Executor()   -- (fresh: see above)
  local dir = gate_dir()
  local slow = ex:submit(blocked, dir, "slow")
  local quick = ex:submit(math.abs, -3)
  local done, pending = mp.wait({ slow, quick }, { return_when = "FIRST_COMPLETED" })
  t.ok(#done == 1 and done[1] == quick and #pending == 1 and pending[1] == slow,
    "wait FIRST_COMPLETED: the quick one done, the blocked one pending")
  local bad = ex:submit(function() error("first exception") end)
  done, pending = mp.wait({ slow, bad }, { return_when = "FIRST_EXCEPTION" })
  t.ok(#done == 1 and done[1] == bad and #pending == 1, "wait FIRST_EXCEPTION returns at the failure")
  done, pending = mp.wait({ slow, quick }, { timeout = 0.5 })
  t.ok(#done == 1 and #pending == 1, "wait ALL_COMPLETED with a timeout returns what is done")
  open(dir)
  done, pending = mp.wait({ slow, quick, bad })
  t.ok(#done == 3 and #pending == 0, "wait ALL_COMPLETED: every future done")
end

-- map
do
  local got = {}
  for i, v in ex:map(function(x) return x * x end, u.range(100)) do got[i] = v end
  local want = {}
  for i = 1, 100 do want[i] = i * i end
  t.same(got, want, "map yields every result in input order")
  local n2, gen = 0, nil
  gen = function() n2 = n2 + 1; if n2 <= 40 then return n2 end end
  local got2 = {}
  for i, v in ex:map(tostring, gen, { chunksize = 3 }) do got2[i] = v end
  local want2 = {}
  for i = 1, 40 do want2[i] = tostring(i) end
  t.same(got2, want2, "map from an iterator, chunksize 3")
  local dir = gate_dir()
  local seen = {}
  local mex <close> = mp.Executor()   -- (fresh: see above)
  local e = t.raises(function()
    for i, v in mex:map(function(x) if x == 2 then return blocked(dir, "m") end return x end, { 1, 2, 3 }, { timeout = 2 }) do
      seen[i] = v
    end
  end, "timed out", "map with {timeout = 2} raises when a result is late")
  t.ok(mp.Error.is(e, "timeout"), "of kind timeout")
  t.same(seen, { 1 }, "after the results before it")
  open(dir)
end

ex:shutdown()
t.raises(function() ex:submit(math.abs, 1) end, "shut", "submit after shutdown is refused")
t.done()
