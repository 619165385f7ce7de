-- SPDX-License-Identifier: MIT
-- Faults: dead workers, per-task deadlines.  Only the task concerned fails;
-- the pool goes on; nothing hangs.
local t = require "tap"
local mp = require "luamp"

local function square(x) return x * x end

local pool <close> = mp.Pool(2)

do
  local e = t.raises(function() pool:apply(function() os.exit(3) end) end,
    "died: exited with status 3", "apply of a task that calls os.exit fails instead of hanging")
  t.ok(mp.Error.is(e, "worker_lost"), "its error has kind worker_lost")
  t.ok(type(e.pid) == "number" and e.pid > 0, "the error names the worker's pid")
  t.like(e.message, "pid " .. tostring(e.pid), "the message names the pid")
  t.is(e.exitcode, 3, "the error carries the exit status")
  t.is(pool:apply(square, {5}), 25, "the pool goes on after a worker died")
end

do
  local e = t.raises(function()
    pool:apply(function() require("luamp")._sleep(0.05); local pid = mp.current_process().pid; os.execute("kill -9 " .. pid); mp._sleep(5) end)
  end, "killed by signal 9 %(SIGKILL%)", "a worker killed by SIGKILL fails its task naming the signal")
  t.ok(mp.Error.is(e, "worker_lost"), "a SIGKILLed worker gives worker_lost")
end

do
  local e = t.raises(function()
    pool:apply(function() local pid = mp.current_process().pid; os.execute("kill -SEGV " .. pid); mp._sleep(5) end)
  end, "signal 11 %(SIGSEGV%)", "a crashed worker (SIGSEGV) fails its task naming the signal")
end

-- in a map, only the items of the chunk the dead worker held fail
do
  local xs = {}
  for i = 1, 20 do xs[i] = i end
  local r = pool:map_async(function(x) if x == 7 then os.exit(1) end return x * 10 end, xs, 1)
  local ok, e = pcall(r.get, r, 20)
  local lost = not ok and mp.Error.is(e, "worker_lost")
  t.ok(lost, "map with a dying item raises worker_lost" .. (lost and "" or " (got " .. tostring(ok) .. ", " .. tostring(e) .. ")"))
  local res = {}
  local ok2, e2 = pcall(function()
    for _, v in pool:imap_unordered(function(x) if x == 3 then os.exit(1) end return x end, {1, 2, 3, 4, 5}, 1) do
      res[#res + 1] = v
    end
  end)
  t.ok(not ok2 and mp.Error.is(e2, "worker_lost"), "imap_unordered raises worker_lost for the lost item")
  local bad = false
  for _, v in ipairs(res) do if v == 3 then bad = true end end
  t.ok(not bad and #res < 5, "imap_unordered yielded only items that were not lost")
end

do
  local got, errs = {}, {}
  local ok, e = pcall(function()
    for i, v in pool:imap(function(x) if x == 3 then os.exit(1) end return x end, {1, 2, 3, 4, 5}, 1) do
      got[#got + 1] = v
    end
  end)
  t.same(got, {1, 2}, "imap yields the items before a lost one")
  t.ok(mp.Error.is(e, "worker_lost"), "imap raises worker_lost at the lost item")
end

do
  local r = pool:map_async(function(x) if x == 2 then os.exit(9) end return x end, {1, 2, 3, 4}, 1)
  r:wait(20)
  t.is(r:ready(), true, "a map with a lost item still completes")
  t.is(pool:apply(square, {3}), 9, "the pool goes on after a lost map item")
end

-- workers that die before they take any task do not make the pool
-- respawn them for ever: it breaks, and its tasks fail
do
  local doomed <close> = mp.Pool{processes = 1, initializer = function() os.exit(4) end}
  local e = t.raises(function() doomed:apply(function() return 1 end) end,
    "keep dying before they run any task %(the last exited with status 4%)",
    "a pool whose initializer exits fails its tasks instead of hanging")
  t.ok(mp.Error.is(e, "worker_lost"), "that failure has kind worker_lost")
end

-- per-task deadlines
do
  -- the deadline of a task that no worker has taken yet when the parent
  -- starts waiting is still enforced
  local fresh <close> = mp.Pool(1)
  local r = fresh:apply_async(function() mp._sleep(30) end, {}, {timeout = 0.3})
  local e = t.raises(function() r:get(10) end, "ran past its 0.3s timeout",
    "a deadline is enforced when the parent waits before the worker took the task")
end

do
  local r = pool:apply_async(function() mp._sleep(30) end, {}, {timeout = 0.2})
  local fast = pool:apply_async(square, {4})
  local e = t.raises(function() r:get(20) end, "ran past its 0.2s timeout", "a task past its deadline fails")
  t.ok(mp.Error.is(e, "task_timeout"), "its error has kind task_timeout")
  t.is(fast:get(20), 16, "other tasks are unaffected by a timeout")
  t.is(pool:apply(square, {6}), 36, "the pool goes on after a timeout")
  local ok = pool:apply_async(function() mp._sleep(0.05); return "in time" end, {}, {timeout = 10})
  t.is(ok:get(), "in time", "a task within its deadline succeeds")
end

do
  local res = pool:map_async(function(x) if x == 2 then mp._sleep(30) end return x end, {1, 2, 3}, {timeout = 0.2})
  local e = t.raises(function() res:get(20) end, "timeout", "map with a timeout fails the slow item")
  t.ok(mp.Error.is(e, "task_timeout"), "the slow map item fails with task_timeout")
end

t.raises(function() pool:apply_async(square, {1}, {timeout = -1}) end,
  "bad argument #3 to 'apply_async' %(timeout must be a positive number", "timeout is checked")

-- objects made after the pool reach its tasks: the parent sends them to
-- the workers ahead of the task (an object socket per worker)
do
  local before = pool:map(function() mp._sleep(0.05) return mp.current_process().pid end, {1, 2, 3, 4}, 1)
  local late = mp.Queue()
  local a, b = mp.Pipe()
  pool:apply(function(q, w) q:put(1); w:send("via a pipe") end, {late, b})
  t.is(late:get(5), 1, "a Queue made after the pool reaches its task")
  t.is(a:recv(5), "via a pipe", "so does a Pipe end")
  local after = pool:map(function() mp._sleep(0.05) return mp.current_process().pid end, {1, 2, 3, 4}, 1)
  local old = {}
  for i = 1, 4 do old[before[i]] = true end
  local replaced = 0
  for i = 1, 4 do if not old[after[i]] then replaced = replaced + 1 end end
  t.is(replaced, 0, "without replacing a worker")
  -- a script that waits on the new object itself, not on the pool
  local direct = mp.Queue()
  pool:apply_async(function(q) q:put("straight") end, {direct})
  t.is(direct:get(10), "straight", "a task with a new Queue runs while the parent waits on that Queue")
  local v, lk = mp.Value("i", 0), mp.Lock()
  pool:starmap(function(x, vv, l)
    for _ = 1, 50 do
      local g <close> = vv:get_lock():guard()
      vv.value = vv.value + x
    end
    l:acquire(); l:release()
  end, {{1, v, lk}, {2, v, lk}, {3, v, lk}, {4, v, lk}}, 1)
  t.is(v.value, 500, "so do a Value and a Lock made after the pool: 4 tasks x 50 locked increments, none lost")
  -- a map over n new Queues, one each: how many got their item
  local function deliver(n)
    local qs = {}
    for i = 1, n do qs[i] = mp.Queue() end
    local ran = pool:map(function(q) q:put("y"); return true end, qs, 1)
    local got = 0
    for i = 1, n do if ran[i] and qs[i]:get(5) == "y" then got = got + 1 end end
    return got
  end
  t.is(deliver(20), 20, "20 tasks, each with a Queue newer than the workers, all run")
  -- more new objects at once than a worker's socket holds (10 unread by
  -- default): the parent waits a moment for room, idle workers read while
  -- they wait, and whatever is left takes the fallback; every task runs
  t.is(deliver(300), 300, "a map over 300 new Queues delivers to every one")
  -- a worker keeps what it was sent while the parent has it: 300 tasks,
  -- each with a new Lock the parent lets go of, leave it far fewer than
  -- 300 descriptors
  do
    local p1 <close> = mp.Pool(1)
    local function fd_count()
      collectgarbage(); collectgarbage()
      local f, n = io.popen("ls /proc/" .. mp.current_process().pid .. "/fd"), 0
      for _ in f:lines() do n = n + 1 end
      f:close()
      return n
    end
    local n0 = p1:apply(fd_count)
    for i = 1, 300 do
      p1:apply(function(l) l:acquire(); l:release() end, {mp.Lock()})
      if i % 50 == 0 then collectgarbage() end
    end
    local grew = p1:apply(fd_count) - n0
    t.ok(grew <= 200, "a worker sent 300 Locks one after another lets go of those the parent let go of ("
      .. grew .. " more descriptors)")
  end
  -- a worker the parent could not send the object to (here: its socket
  -- forgotten) hands the task back and is replaced by one forked after it
  for _, s in pairs(pool._share) do s.sock = false end
  local unsent = mp.Queue()
  local pids = pool:map(function() mp._sleep(0.05) return mp.current_process().pid end, {1, 2, 3, 4}, 1)
  pool:apply(function(q) q:put("late") end, {unsent})
  t.is(unsent:get(10), "late", "an object that could not be sent ahead still reaches its task")
  local known = {}
  for i = 1, 4 do known[pids[i]] = true end
  local fresh = pool:map(function() mp._sleep(0.05) return mp.current_process().pid end, {1, 2, 3, 4}, 1)
  local new = 0
  for i = 1, 4 do if not known[fresh[i]] then new = new + 1 end end
  t.ok(new > 0, "by a worker forked after it")
  -- the other way round: a result naming a Queue the worker made
  local e2 = t.raises(function() pool:apply(function() return mp.Queue() end) end,
    "cannot receive the result: cannot receive a luamp object .* made in a process that did not start this one",
    "a result the parent cannot decode fails its task, saying why")
  t.ok(mp.Error.is(e2, "serialize"), "that failure has kind serialize too")
  local it = pool:imap(function(x) if x == 2 then return mp.Queue() end return x * 10 end, {1, 2, 3}, 1)
  t.same({ it() }, {1, 10}, "imap: items before an undecodable result arrive")
  t.raises(it, "cannot receive the result", "imap: the undecodable result raises at its turn")
  t.same({ it() }, {3, 30}, "imap: the items after it arrive too")
  local early = mp.Queue()
  local p2 <close> = mp.Pool(1)
  p2:apply(function(q) q:put("from a worker") end, {early})
  t.is(early:get(5), "from a worker", "a Queue made before the pool can be passed to its tasks")
end

-- a closed pool whose worker dies replaces it while apply tasks wait
do
  local pool = mp.Pool(1)
  local r1 = pool:apply_async(function() os.exit(3) end)
  local r2 = pool:apply_async(square, {3})
  pool:close()
  pool:join()
  t.raises(function() r1:get(5) end, "exited with status 3", "the task that exited fails")
  t.is(r2:get(5), 9, "the apply task queued behind it still runs after close")
end

-- a Process whose child dies by a signal still joins
do
  local p = mp.Process{target = function() os.execute("kill -9 " .. mp.current_process().pid); mp._sleep(5) end}
  p:start()
  t.is(p:join(20), true, "join returns when the child was killed")
  t.is(p.exitcode, -9, "exitcode says which signal")
end

-- 1,000 pools leave no descriptor behind
do
  -- descriptor -> what it is, and how many there are, counting a pipe
  -- once however many of its ends are open here: `ls` may list this
  -- process before io.popen closed its copy of the write end of the pipe
  -- it reads (seen under make -j2).
  local function fds()
    local set, n, pipes = {}, 0, {}
    local h = io.popen("ls -l /proc/" .. mp.current_process().pid .. "/fd")
    for line in h:lines() do
      local fd, what = line:match("(%d+) %-> (.*)$")
      if fd then
        set[fd] = what
        if not (what:match("^pipe:") and pipes[what]) then n = n + 1 end
        if what:match("^pipe:") then pipes[what] = true end
      end
    end
    h:close()
    return set, n
  end
  collectgarbage(); collectgarbage()   -- queues of earlier tests hold descriptors until collected
  local before, nbefore = fds()
  for _ = 1, 1000 do
    local p <close> = mp.Pool(1)
  end
  -- Objects of earlier tests may still let go of a descriptor meanwhile,
  -- so the count may fall; a leak of one per pool would add 1,000.
  local after, nafter = fds()
  local new = {}
  for fd, what in pairs(after) do
    if before[fd] ~= what then new[#new + 1] = fd .. " -> " .. what end
  end
  t.ok(nafter <= nbefore, "creating and closing 1,000 pools leaves the descriptor count flat ("
    .. nbefore .. " before, " .. nafter .. " after" .. (nafter > nbefore and "; new: " .. table.concat(new, ", ") or "") .. ")")
  local function rss_kib()
    for line in io.lines("/proc/self/status") do
      local kb = line:match("^VmRSS:%s+(%d+) kB")
      if kb then return tonumber(kb) end
    end
  end
  if (os.getenv("SANITIZERS") or "") ~= "" then
    t.skip("1,000 more pools leave the resident memory flat",
      "AddressSanitizer keeps freed memory in quarantine")
  else
    collectgarbage(); collectgarbage()
    local rss0 = rss_kib()
    for _ = 1, 1000 do
      local p <close> = mp.Pool(1)
    end
    collectgarbage(); collectgarbage()
    local grown = rss_kib() - rss0
    t.ok(grown < 2048, "1,000 more pools leave the resident memory flat (grew " .. grown .. " KiB)")
  end
end

-- A task that overflows the stack fails with "stack overflow", fast: the
-- worker's message handler once walked its hundreds of thousands of
-- frames from the top for each one (quadratic: hours).  In a luamp of
-- its own, bounded by a timeout.
do
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write([[
local mp = require "luamp"
local pool <close> = mp.Pool(1)
local function deep() local function r(n) return 1 + r(n + 1) end return r(1) end
local ok, e = pcall(pool.map, pool, deep, {1, 2}, 2)
print(ok, mp.Error.is(e, "remote"), (tostring(e.message):match("stack overflow")))
ok, e = pcall(pool.apply, pool, deep)
print(ok, mp.Error.is(e, "remote"), (tostring(e.message):match("stack overflow")))
print(pool:apply(function() return 42 end))
]])
  f:close()
  local ok, r = pcall(mp.run, { os.getenv("LUAMP") or arg[-1], path }, { capture = true, timeout = 60 })
  os.remove(path)
  t.is(ok and r.stdout, "false\ttrue\tstack overflow\nfalse\ttrue\tstack overflow\n42\n",
    "a task that overflows the stack fails with stack overflow (map and apply), and the pool goes on",
    ok and r.stderr or tostring(r))
end

t.done()
