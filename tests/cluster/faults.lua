-- SPDX-License-Identifier: MIT
-- cluster/faults.lua: faults on other ranks, run on rank 0 of `mpirun -n 3
-- luamp-mpi` (tests/cluster.sh).  A worker that dies on rank 2 fails only
-- its task, with kind worker_lost and a message naming its host and pid,
-- and is replaced; a task past its deadline on rank 1 fails with
-- task_timeout and only its worker is killed; luamp objects, which
-- cannot cross hosts, are refused with kind serialize, naming them.
-- The victims are chosen by the tasks themselves: each task meets the
-- others (every rank has taken one), then the first on the victim's rank
-- to make a directory is the one that dies or hangs.
--   arg[1]: scratch directory; arg[2]: the ranks of the job (3)
local t = require "tap"
local mp = require "luamp"
local u = require "cluster.util"

local scratch = assert(arg[1], "usage: faults.lua SCRATCH NRANKS")
local nranks = tonumber(arg[2] or "3")
local meet, first, put, host, pid, rank = u.meet, u.first, u.put, u.host, u.pid, u.rank

local c = type(mp.cluster) == "function" and mp.cluster()
if not t.is(type(c), "table", "mp.cluster() is a table under mpirun") then t.done() end
local pool <close> = mp.Pool()

-- the pool works on every rank (after a fault: the dead worker was replaced)
local function every_rank(what)
  local dir = u.subdir(scratch, "check-" .. what:gsub("%W", "_"))
  local by = u.by(5)
  local r = pool:map(function(x) local rk = meet(dir, nranks, by); return x * 2, rk end, u.range(2 * c.workers), 1)
  local ok = r.n == 2 * c.workers
  for i = 1, r.n do if r[i] ~= 2 * i then ok = false end end
  t.ok(ok, what .. ": the pool's next map is right")
  -- (a directory of its own: in dir, every rank has met already, and a
  -- map of quick tasks may then all run on rank 0)
  local dir2 = u.subdir(scratch, "check2-" .. what:gsub("%W", "_"))
  local by2 = u.by(5)
  local ranks = pool:map(function() return (meet(dir2, nranks, by2)) end, u.range(2 * c.workers), 1)
  t.is(u.keys(u.set(ranks)), u.keys(u.ranks(nranks)), what .. ": and runs on every rank")
end

local function pattern(s) return (s:gsub("%p", "%%%0")) end

-- Kills the worker running it when it is the first on rank `victim` (of
-- the tasks given this dir): `how` is "exit" (os.exit(3)) or "kill"
-- (SIGKILL from itself); else returns its rank.  The victim leaves
-- "host pid" in dir/victim/who first.  The tasks meet until os.time()
-- `by` (util.lua).
local function maybe_die(dir, victim, how, by)
  local rk = meet(dir, nranks, by)
  if rk == victim and first(dir, "victim") then
    put(dir .. "/victim/who", host() .. " " .. pid())
    if how == "exit" then os.exit(3) end
    os.execute("kill -9 " .. pid())
    require("luamp")._sleep(30)
  end
  return rk
end

for _, how in ipairs({ "exit", "kill" }) do
  local dir = u.subdir(scratch, "die-" .. how)
  local rs = {}
  local by = u.by(how == "exit" and 20 or 5)
  for i = 1, 2 * c.workers do rs[i] = pool:apply_async(maybe_die, { dir, "2", how, by }) end
  local lost, other, fine = {}, {}, 0
  for i = 1, #rs do
    local ok, e = pcall(rs[i].get, rs[i], 60)
    if ok then fine = fine + 1
    elseif mp.Error.is(e, "worker_lost") then lost[#lost + 1] = e
    else other[#other + 1] = tostring(e) end
  end
  local what = how == "exit" and "a worker on rank 2 calling os.exit(3)" or "a worker on rank 2 killed by SIGKILL"
  t.is(#lost, 1, what .. ": one task fails with worker_lost", table.concat(other, "\n"))
  t.is(fine, #rs - 1, what .. ": every other task succeeds")
  local who = u.get(dir .. "/victim/who") or "? ?"
  local vhost, vpid = who:match("^(%S+) (%d+)$")
  local e = lost[1] or { message = "(no worker_lost error)" }
  t.like(e.message, pattern(vhost or "?"), what .. ": the message names the worker's host (" .. tostring(vhost) .. ")")
  t.like(e.message, "%f[%d]" .. (vpid or "?") .. "%f[%D]", what .. ": the message names the worker's pid (" .. tostring(vpid) .. ")")
  t.like(e.message, how == "exit" and "exited with status 3" or "killed by signal 9",
    what .. ": the message says how the worker ended")
  t.is(e.host, vhost, what .. ": e.host is the worker's host (README)")
  t.is(e.pid, tonumber(vpid), what .. ": e.pid is its pid")
  every_rank("after " .. what)
end

-- a map with an item whose worker dies on rank 2 fails with worker_lost
do
  local dir = u.subdir(scratch, "die-map")
  local e = t.raises(function()
    local by = u.by(5)
    pool:map(function(x) maybe_die(dir, "2", "exit", by) return x end, u.range(2 * c.workers), 1)
  end, "", "map with an item whose worker dies on rank 2 raises")
  t.ok(mp.Error.is(e, "worker_lost"), "with kind worker_lost")
  every_rank("after a lost map item")
end

-- an Executor's future whose worker dies on rank 2: that future alone
do
  local ex <close> = mp.Executor()
  local dir = u.subdir(scratch, "die-future")
  local futs = {}
  local by = u.by(20)
  for i = 1, 2 * c.workers do futs[i] = ex:submit(maybe_die, dir, "2", "kill", by) end
  local lost, fine = 0, 0
  for i = 1, #futs do
    local e = futs[i]:exception(60)
    if e == nil then fine = fine + 1 elseif mp.Error.is(e, "worker_lost") then lost = lost + 1 end
  end
  t.is(lost, 1, "Executor: the future whose worker died on rank 2 fails with worker_lost")
  t.is(fine, #futs - 1, "Executor: the others succeed")
  t.is(ex:submit(math.abs, -5):result(30), 5, "Executor: goes on")
end

-- a task past its deadline on rank 1: task_timeout; its worker killed
do
  local dir = u.subdir(scratch, "timeout")
  local by = u.by(4)
  local function maybe_hang()
    local rk = meet(dir, nranks, by)
    if rk == "1" and first(dir, "victim") then
      put(dir .. "/victim/who", host() .. " " .. pid())
      require("luamp")._sleep(60)
    end
    return rk
  end
  local rs = {}
  for i = 1, 2 * c.workers do rs[i] = pool:apply_async(maybe_hang, {}, { timeout = 5 }) end
  local late, other, fine = {}, {}, 0
  for i = 1, #rs do
    local ok, e = pcall(rs[i].get, rs[i], 60)
    if ok then fine = fine + 1
    elseif mp.Error.is(e, "task_timeout") then late[#late + 1] = e
    else other[#other + 1] = tostring(e) end
  end
  t.is(#late, 1, "a task past its timeout on rank 1 fails with task_timeout", table.concat(other, "\n"))
  t.is(fine, #rs - 1, "every other task succeeds")
  t.like((late[1] or {}).message, "timeout", "its message says so")
  local vpid = tonumber((u.get(dir .. "/victim/who") or ""):match(" (%d+)$"))
  local gone = false
  for _ = 1, 250 do
    if vpid and not os.execute("kill -0 " .. vpid .. " 2>/dev/null") then gone = true break end
    mp._sleep(0.02)
  end
  t.ok(gone, "its worker (pid " .. tostring(vpid) .. ") was killed")
  every_rank("after a remote timeout")
end

-- luamp objects cannot cross hosts: refused, naming them, not a hang
do
  local f = function(x) return x end
  local objects = {
    { "luamp.Queue", mp.Queue() },
    { "luamp.JoinableQueue", mp.JoinableQueue() },
    { "luamp.Lock", mp.Lock() },
    { "luamp.Value", mp.Value("i", 0) },
    { "luamp.Event", mp.Event() },
    { "luamp.Connection", (mp.Pipe()) },
  }
  for _, o in ipairs(objects) do
    local name, obj = o[1], o[2]
    local e = t.raises(function() pool:apply(f, { obj }) end, "^cannot send args%[1%]",
      "a " .. name .. " as an argument of apply is refused at its path")
    t.ok(mp.Error.is(e, "serialize"), name .. ": kind serialize")
    t.like(e and e.message, pattern(name), name .. ": the message names the object")
  end
  local q, l = mp.Queue(), mp.Lock()
  local e = t.raises(function() pool:apply(f, { { deep = { q } } }) end, "^cannot send args%[1%]%.deep%[1%]",
    "a Queue deep in an argument is refused at its path")
  t.like(e and e.message, "luamp%.Queue", "naming it")
  e = t.raises(function() pool:apply(function() return q:qsize() end) end, "luamp%.Queue",
    "a Queue as a task's upvalue is refused, naming it")
  t.ok(mp.Error.is(e, "serialize"), "kind serialize")
  e = t.raises(function() pool:map(f, { 1, l, 3 }) end, "luamp%.Lock", "a Lock among map's items is refused, naming it")
  t.ok(mp.Error.is(e, "serialize"), "kind serialize")
  e = t.raises(function() pool:starmap(f, { { 1 }, { q } }) end, "luamp%.Queue", "a Queue among starmap's items is refused")
  local ok, r = pcall(pool.apply_async, pool, f, { l })
  if ok then ok, r = pcall(r.get, r, 30) end
  t.ok(not ok and mp.Error.is(r, "serialize") and tostring(r.message):find("luamp%.Lock") ~= nil,
    "apply_async with a Lock fails with kind serialize naming it", tostring(r))
  local ex <close> = mp.Executor()
  local ok2, r2 = pcall(ex.submit, ex, f, mp.Value("d", 1.5))
  if ok2 then ok2, r2 = pcall(r2.result, r2, 30) end
  t.ok(not ok2 and mp.Error.is(r2, "serialize") and tostring(r2.message):find("luamp%.Value") ~= nil,
    "Executor:submit with a Value fails with kind serialize naming it", tostring(r2))
  -- a result that cannot travel fails its task only
  local e3 = t.raises(function() pool:apply(function() return coroutine.create(print) end) end,
    "coroutine", "a remote task returning a coroutine fails")
  t.ok(mp.Error.is(e3, "serialize"), "with kind serialize")
  t.is(pool:apply(math.abs, { -7 }), 7, "the pool goes on after every refusal")
  local lq = mp.Queue()
  lq:put({ l })
  local back = lq:get(5)
  t.ok(back and getmetatable(back[1]) == getmetatable(l), "a Queue of rank 0 still carries a Lock: the refusal is the cluster Pool's alone")
  -- (with the Executor's pool open beside it: rank 0's thread watches
  -- both task queues)
  every_rank("after the refusals")
end

t.is(rank(), "0", "the script ran on rank 0")
t.done()
