-- SPDX-License-Identifier: MIT
-- Process: start, join with timeout, exit codes, names, tracebacks, children.
local t = require "tap"
local mp = require "luamp"

local function tmpfile()
  local path = os.tmpname()
  return path
end

-- a target that writes to a file proves it ran in the child
do
  local path = tmpfile()
  local p = mp.Process{target = function(a, b)
    local f = assert(io.open(path, "w"))
    f:write(a, " ", b, " ", mp.current_process().name)
    f:close()
  end, args = {"hello", 42}, name = "w1"}
  t.is(p.exitcode, nil, "exitcode is nil before start")
  t.is(p:is_alive(), false, "a Process that was not started is not alive")
  p:start()
  t.ok(type(p.pid) == "number" and p.pid > 0, "start sets pid")
  t.is(p:join(), true, "join without timeout returns true")
  t.is(p.exitcode, 0, "exitcode is 0 after a clean target")
  local f = assert(io.open(path))
  t.is(f:read("a"), "hello 42 w1", "the target got its args and its name")
  f:close()
  os.remove(path)
  t.is(p.name, "w1", "name is kept")
  t.is(p.daemon, false, "daemon defaults to false")
end

-- default names
do
  local p = mp.Process{target = function() end}
  t.like(p.name, "^Process%-%d+$", "default name is Process-N")
end

-- join with a timeout on a child that sleeps; then terminate gives -15
do
  local p = mp.Process{target = function() mp._sleep(30) end}
  p:start()
  t.is(p:join(0.05), false, "join(timeout) returns false while the child runs")
  t.is(p:is_alive(), true, "is_alive is true while running")
  t.is(p.exitcode, nil, "exitcode is nil while running")
  p:terminate()
  t.is(p:join(5), true, "join returns true after terminate")
  t.is(p.exitcode, -15, "exitcode is -15 after SIGTERM")
  t.is(p:is_alive(), false, "is_alive is false after exit")
end

do
  local p = mp.Process{target = function() mp._sleep(30) end}
  p:start()
  p:kill()
  p:join()
  t.is(p.exitcode, -9, "exitcode is -9 after kill")
end

-- os.exit code is the exitcode
do
  local p = mp.Process{target = function() os.exit(7) end}
  p:start(); p:join()
  t.is(p.exitcode, 7, "exitcode is the code passed to os.exit")
end

-- a target that raises: exitcode 1, traceback on stderr with the header
do
  local errpath = tmpfile()
  -- run in a separate luamp so that we can capture its stderr
  local script = [[
    local mp = require "luamp"
    local p = mp.Process{target = function() error("kaboom") end, name = "bad"}
    p:start(); p:join()
    io.write(p.exitcode, " ", p.pid)
  ]]
  local cmd = string.format("%q -e %q 2>%q", os.getenv("LUAMP") or arg[-1], script, errpath)
  local h = io.popen(cmd)
  local out = h:read("a")
  h:close()
  local code, pid = out:match("^(%d+) (%d+)$")
  t.is(code, "1", "exitcode is 1 when the target raised")
  local f = assert(io.open(errpath)); local err = f:read("a"); f:close()
  os.remove(errpath)
  t.like(err, "^Process bad %(pid " .. (pid or "?") .. "%):\n", "stderr starts with 'Process name (pid N):'")
  t.like(err, "kaboom", "stderr has the error message")
  t.like(err, "stack traceback:", "stderr has the child's traceback")
end

-- start twice, join before start
do
  local p = mp.Process{target = function() end}
  local e = t.raises(function() p:join() end, "not started", "join before start raises")
  t.ok(mp.Error.is(e, "usage"), "of kind usage")
  p:start()
  e = t.raises(function() p:start() end, "twice", "start twice raises")
  t.ok(mp.Error.is(e, "usage"), "of kind usage, too")
  p:join()
  local pool <close> = mp.Pool(1)
  e = t.raises(function() pool:join() end, "cannot join a running Pool", "joining a running pool raises")
  t.ok(mp.Error.is(e, "usage"), "of kind usage as well")
end

-- argument checks
t.raises(function() mp.Process(5) end, "bad argument #1 to 'Process' %(table expected, got number%)", "Process checks its argument")
t.raises(function() mp.Process{target = 1} end, "function expected, got number", "Process checks target")

-- active_children and current_process
do
  t.is(mp.current_process().name, "MainProcess", "current_process is MainProcess in the host")
  local q = mp.Queue()
  local p = mp.Process{target = function() q:get() end}
  p:start()
  local kids = mp.active_children()
  local found = false
  for _, k in ipairs(kids) do if k == p then found = true end end
  t.ok(found, "active_children lists a running child")
  q:put("go")
  p:join()
  found = false
  for _, k in ipairs(mp.active_children()) do if k == p then found = true end end
  t.ok(not found, "active_children drops a finished child")
end

-- active_children lists pool workers too, as Python's does
do
  local function pids()
    local set, n = {}, 0
    for _, c in ipairs(mp.active_children()) do set[c.pid], n = c, n + 1 end
    return set, n
  end
  local before, n0 = pids()
  local both = mp.Barrier(2)     -- (so that each worker runs one task and says its pid)
  local pool = mp.Pool(2)
  local worker_pids = pool:map(function() both:wait(10) return mp.current_process().pid end, {1, 2}, 1)
  local during, n1 = pids()
  t.is(n1, n0 + 2, "a Pool(2) adds two entries to active_children")
  local names = {}
  for _, pid in ipairs(worker_pids) do
    local w = during[pid]
    t.ok(w and not before[pid], "active_children lists the worker of pid " .. tostring(pid))
    if w then
      names[#names + 1] = w.name
      t.is(w:is_alive(), true, "a pool worker listed is alive")
      t.is(w.daemon, true, "a pool worker is a daemon, as in Python")
    end
  end
  table.sort(names)
  t.same(names, {"PoolWorker-1", "PoolWorker-2"}, "pool workers are listed by their names")
  pool:close()
  pool:join()
  local after, n2 = pids()
  t.is(n2, n0, "the workers leave active_children once the pool is closed and joined")
  for _, pid in ipairs(worker_pids) do
    t.ok(not after[pid], "the worker of pid " .. pid .. " is no longer listed")
    if during[pid] then t.is(during[pid]:is_alive(), false, "a joined pool's worker is not alive") end
  end
end

-- a child sees the parent's globals as they were at fork time
do
  GLOBAL_AT_FORK = "before"
  local q = mp.Queue()
  local p = mp.Process{target = function() q:put(GLOBAL_AT_FORK) end}
  p:start()
  GLOBAL_AT_FORK = "after"
  t.is(q:get(5), "before", "the child sees globals as they were at fork time")
  p:join()
end

-- the child's pid is reported by current_process in the child
do
  local q = mp.Queue()
  local p = mp.Process{target = function() q:put(mp.current_process().pid) end}
  p:start()
  t.is(q:get(5), p.pid, "current_process().pid in the child is p.pid")
  p:join()
end

-- at the end of the script, non-daemon children are joined and daemon
-- ones terminated
do
  local mark = os.tmpname()
  local script = string.format([[
    local mp = require "luamp"
    local d = mp.Process{target = function() mp._sleep(60) end, daemon = true}
    d:start()
    local n = mp.Process{target = function()
      mp._sleep(0.3)
      local f = io.open(%q, "w"); f:write("finished"); f:close()
    end}
    n:start()
    io.write(d.pid)
  ]], mark)
  local h = io.popen(string.format("%q -e %q", os.getenv("LUAMP") or arg[-1], script))
  local dpid = h:read("a")
  local ok = h:close()
  t.ok(ok, "a script leaving children running exits 0")
  local f = io.open(mark); local text = f and f:read("a"); if f then f:close() end
  os.remove(mark)
  t.is(text, "finished", "a non-daemon child is joined when the script ends")
  local alive = io.open("/proc/" .. dpid .. "/stat")
  if alive then alive:close() end
  t.ok(dpid:match("^%d+$") and not alive, "a daemon child is terminated when the script ends")
end

-- a child that exits while the script computes is reaped at once: it is
-- never a zombie, and its exit code is still known
do
  local p = mp.Process{target = function() os.exit(5) end}
  p:start()
  local path = "/proc/" .. p.pid .. "/stat"
  local state, deadline = "?", os.time() + 10
  repeat           -- pure computation and file reads: no luamp call
    local f = io.open(path)
    local text = f and f:read("a")   -- nil too if it was reaped meanwhile
    state = text and text:match("^%d+ %(.-%) (%a)")
    if f then f:close() end
  until state == nil or os.time() > deadline
  t.is(state, nil, "an exited child disappears without a luamp call (no zombie)")
  t.is(p.exitcode, 5, "the exit code of a child reaped early is kept")
end

t.done()
