-- SPDX-License-Identifier: MIT
-- Condition and Barrier, between processes.
-- Processes report what happened on a Queue; nothing here depends on how
-- long anything takes (a short timeout only ever bounds a wait for
-- something that must not come).
local t = require "tap"
local mp = require "luamp"

local function spawn(f, ...)
  local p = mp.Process{ target = f, args = table.pack(...) }
  p:start()
  return p
end

-- Waits (boundedly) until check() is true.
local function eventually(check)
  for _ = 1, 5000 do
    if check() then return true end
    mp._sleep(0.001)
  end
  return false
end

-- Condition basics
do
  local lock = mp.Lock()
  local c = mp.Condition(lock)
  t.like(tostring(c), "^Condition", "tostring names it")
  t.raises(function() c:wait(0) end, "does not hold", "wait without the lock raises")
  t.raises(function() c:notify() end, "does not hold", "notify without the lock raises")
  t.is(c:acquire(), true, "acquire takes the lock")
  t.is(lock:locked(), true, "the lock given is the Condition's lock")
  t.is(c:wait(0.02), false, "wait(timeout) with nobody to notify is false")
  t.is(lock:locked(), true, "and the lock is held again after it")
  t.is(c:wait_for(function() return nil end, 0.02), false, "wait_for is false when the predicate still fails at the timeout")
  t.is(c:wait_for(function() return "yes" end), true, "and true when it holds (a boolean, as every wait)")
  c:notify()
  c:notify_all()
  t.ok(true, "notify with nobody waiting does nothing")
  c:release()
  t.is(lock:locked(), false, "release frees the lock")
  do
    local _ <close> = c:guard()
    t.is(lock:locked(), true, "guard takes the lock")
  end
  t.is(lock:locked(), false, "and leaving its scope frees it")
  t.raises(function() mp.Condition(5) end, "a Lock or an RLock expected", "Condition wants a lock")
  local own = mp.Condition()
  t.is(own:acquire(), true, "a Condition without a lock makes its own")
  t.is(own:acquire(0), true, "an RLock: its holder takes it again")
  own:release()
  own:release()
end

-- notify wakes the oldest waiters, exactly as many as asked; notify_all the rest
do
  local c = mp.Condition()
  local waiting = mp.Value("i", 0)
  local q = mp.Queue()
  local ps = {}
  for i = 1, 4 do
    ps[i] = spawn(function(me)
      local _ <close> = c:guard()
      waiting.value = waiting.value + 1
      local ok = c:wait(30)
      q:put(ok and me or -me)
    end, i)
    -- the next one arrives once this one waits (its wait released the lock)
    t.ok(eventually(function() local _ <close> = c:guard(); return waiting.value == i end),
      "waiter " .. i .. " is waiting")
  end
  do local _ <close> = c:guard(); c:notify() end
  t.is(q:get(10), 1, "notify() wakes the waiter that came first")
  t.is(q:get(0.2), nil, "and only that one")
  do local _ <close> = c:guard(); c:notify(2) end
  local two = { q:get(10), q:get(10) }
  table.sort(two)
  t.same(two, { 2, 3 }, "notify(2) wakes the next two, in order of arrival")
  t.is(q:get(0.2), nil, "and no more")
  do local _ <close> = c:guard(); c:notify_all() end
  t.is(q:get(10), 4, "notify_all wakes the rest")
  for _, p in ipairs(ps) do p:join() end
  t.ok(ps[4].exitcode == 0, "every waiter exited cleanly")
end

-- a producer/consumer on wait_for; an RLock held twice is released fully by wait
do
  local c = mp.Condition(mp.RLock())
  local items = mp.Value("i", 0)
  local q = mp.Queue()
  local consumer = spawn(function()
    local _ <close> = c:guard()
    c:acquire()                              -- held twice
    local held = c:wait_for(function() return items.value >= 3 end, 30)
    c:release()
    q:put(held and items.value)
  end)
  for _ = 1, 3 do
    local _ <close> = c:guard()              -- (the consumer's wait let go of both levels)
    items.value = items.value + 1
    c:notify()
  end
  t.is(q:get(10), 3, "wait_for wakes when its predicate holds")
  consumer:join()
  t.is(consumer.exitcode, 0, "the consumer got its RLock back at the same depth (two releases)")
end

-- a waiter that died does not swallow a notification
do
  local c = mp.Condition()
  local waiting = mp.Value("i", 0)
  local q = mp.Queue()
  local doomed = spawn(function()
    local _ <close> = c:guard()
    waiting.value = 1
    c:wait(30)
  end)
  t.ok(eventually(function() local _ <close> = c:guard(); return waiting.value == 1 end), "the doomed waiter waits")
  doomed:kill()
  doomed:join()
  local live = spawn(function()
    local _ <close> = c:guard()
    waiting.value = 2
    q:put(c:wait(30))
  end)
  t.ok(eventually(function() local _ <close> = c:guard(); return waiting.value == 2 end), "a live waiter waits")
  do local _ <close> = c:guard(); c:notify(1) end
  t.is(q:get(10), true, "notify(1) skips the dead waiter and wakes the live one")
  live:join()
end

-- Barrier
do
  local b = mp.Barrier(3)
  t.is(b.parties, 3, "parties")
  t.is(b.n_waiting, 0, "n_waiting starts at 0")
  t.is(b.broken, false, "not broken")
  local q = mp.Queue()
  for round = 1, 2 do
    local ps = { spawn(function() q:put(b:wait()) end), spawn(function() q:put(b:wait()) end) }
    local got = { b:wait(), q:get(10), q:get(10) }
    table.sort(got)
    t.same(got, { 1, 2, 3 }, "round " .. round .. ": each party gets a distinct index 1..parties")
    for _, p in ipairs(ps) do p:join() end
  end
end

do
  local runs = mp.Value("i", 0)
  local q = mp.Queue()
  local b = mp.Barrier(2, function() runs.value = runs.value + 1; q:put(mp.current_process().pid) end)
  local p = spawn(function() b:wait() end)
  b:wait()
  p:join()
  t.is(runs.value, 1, "the action runs once per round")
  local ran_in = q:get(5)
  t.ok(ran_in == p.pid or ran_in == mp.current_process().pid, "in one of the parties")
end

do
  local b = mp.Barrier(2)
  local e = t.raises(function() b:wait(0.02) end, "timed out at the Barrier with 1 of 2", "a wait that times out raises")
  t.ok(mp.Error.is(e, "timeout"), "of kind timeout")
  t.is(b.broken, true, "and breaks the barrier")
  local e2 = t.raises(function() b:wait() end, "is broken", "waiting on a broken barrier raises at once")
  t.ok(mp.Error.is(e2, "broken"), "of kind broken")
  b:reset()
  t.is(b.broken, false, "reset mends it")
  local p = spawn(function() b:wait(30) end)
  t.is(b:wait(30) >= 1, true, "and it works again")
  p:join()
  t.is(mp.Barrier(2, nil, 0.02).parties, 2, "a default timeout is accepted")
  t.raises(function() mp.Barrier(2, nil, 0.02):wait() end, "timed out", "and used by wait")
end

-- abort and reset reach a waiting party; a failing action breaks the barrier
do
  for _, how in ipairs({ "abort", "reset" }) do
    local b = mp.Barrier(2)
    local q = mp.Queue()
    local p = spawn(function()
      local ok, e = pcall(b.wait, b, 30)
      q:put(ok and "passed" or e.kind)
    end)
    t.ok(eventually(function() return b.n_waiting == 1 end), how .. ": a party waits")
    b[how](b)
    t.is(q:get(10), "broken", how .. " makes the waiting party raise kind broken")
    t.is(b.broken, how == "abort", how .. (how == "abort" and " leaves it broken" or " leaves it usable"))
    p:join()
  end
  local b = mp.Barrier(2, function() error("action failed") end)
  local q = mp.Queue()
  local p = spawn(function()
    local ok, e = pcall(b.wait, b, 30)
    q:put(ok and "passed" or (mp.Error.is(e) and e.kind or tostring(e)))
  end)
  t.ok(eventually(function() return b.n_waiting == 1 end), "a party waits")
  t.raises(function() b:wait() end, "action failed", "the last party gets the action's error")
  t.is(q:get(10), "broken", "the others find the barrier broken")
  t.is(b.broken, true, "which stays broken")
  p:join()
end

-- sent to a pool's tasks (made before the pool)
do
  local c = mp.Condition()
  local b = mp.Barrier(2)
  local pool <close> = mp.Pool(2)
  local r = pool:map(function(i)
    local idx = b:wait(30)
    local _ <close> = c:guard()
    c:notify()
    return idx
  end, { 1, 2 }, 1)
  table.sort(r)
  t.same({ r[1], r[2] }, { 1, 2 }, "a Barrier and a Condition reach a pool's tasks")
end

do
  t.raises(function() mp.Barrier(0) end, "bad argument #1 to 'Barrier'", "parties must be positive")
  t.raises(function() mp.Barrier(2, 5) end, "bad argument #2 to 'Barrier'", "the action must be a function")
  t.raises(function() mp.Barrier(2, nil, -1) end, "bad argument #3 to 'Barrier'", "the timeout must not be negative")
  t.like(tostring(mp.Barrier(4)), "^Barrier %(.*0 of 4 waiting%)", "tostring says how many wait")
end

t.done()
