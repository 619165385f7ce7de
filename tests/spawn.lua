-- SPDX-License-Identifier: MIT
-- The spawn start method: children are fresh processes that inherit
-- nothing but what they are sent.
local t = require "tap"
local mp = require "luamp"

INHERITED = "from the parent's globals"

-- Process
do
  local q = mp.Queue()
  local p = mp.Process{ start_method = "spawn", target = function(queue, x, tbl)
    queue:put({ x * 2, tbl.k, INHERITED == nil, mp.current_process().name, package.loaded.tap ~= nil })
  end, args = { q, 21, { k = "v" } }, name = "fresh" }
  p:start()
  local got = q:get(20)
  p:join()
  t.same(got, { 42, "v", true, "fresh", false },
    "a spawned Process runs its target with its arguments and a Queue, without the parent's globals")
  t.is(p.exitcode, 0, "and exits with status 0")

  local up = mp.Queue()
  local p2 = mp.Process{ start_method = "spawn", preload = { "tap" }, target = function()
    up:put(package.loaded.tap ~= nil)          -- up: an upvalue
    os.exit(3)
  end }
  p2:start()
  t.is(up:get(20), true, "preload modules are loaded in the child; a Queue can be an upvalue")
  p2:join()
  t.is(p2.exitcode, 3, "the child's exit status comes back")

  local failing = mp.Process{ start_method = "spawn", target = function() error("spawned failure") end }
  failing:start()
  failing:join()
  t.is(failing.exitcode, 1, "a target that raises exits with status 1")

  local co = coroutine.create(print)
  t.raises(function() mp.Process{ start_method = "spawn", target = print, args = { co } }:start() end,
    "cannot send Process.args%[1%]: a coroutine", "what cannot travel is refused at start, by its path")
  local qa = mp.Queue()
  t.raises(function() mp.Process{ start_method = "spawn", target = print,
      args = { mp.Barrier(2, function() qa:put(1) end) } }:start() end,
    "cannot send a Barrier whose action refers to luamp objects to a spawned process",
    "a Barrier whose action names a luamp object is refused, saying so")
  local closed = mp.Pipe()
  closed:close()
  t.raises(function() mp.Process{ start_method = "spawn", target = print, args = { closed } }:start() end,
    "closed", "so is a closed pipe end")

  -- locks, values, semaphores, events, conditions and barriers: the child
  -- works on the parent's objects, not copies
  do
    local v, arr = mp.Value("i", 0), mp.Array("d", 4)
    local lock, rlock = mp.Lock(), mp.RLock()
    local sem, bsem, ev, back = mp.Semaphore(0), mp.BoundedSemaphore(1), mp.Event(), mp.Event()
    local cond = mp.Condition(lock)
    local bar = mp.Barrier(2, function() end)
    local out = mp.Queue()
    lock:acquire()
    local p = mp.Process{ start_method = "spawn", target = function(v, arr, lock, rlock, sem, bsem, ev, back,
                                                                    cond, bar, out, vlock)
      for _ = 1, 2000 do
        local g <close> = v:get_lock():guard()
        v.value = v.value + 1
      end
      for i = 1, #arr do arr[i] = i * 1.5 end
      out:put({ lock:acquire(0), rlock:acquire(0) and rlock:acquire(0), cond:acquire(0) and "cond" or "no",
                v:get_lock() == vlock, bsem:acquire(0) })
      sem:release()
      sem:release()
      out:put(ev:wait(20))
      local g <close> = cond:guard()
      back:set()
      cond:wait_for(function() return arr[1] == -1 end, 20)
      out:put(arr[1])
      out:put(bar:wait(20))
    end, args = { v, arr, lock, rlock, sem, bsem, ev, back, cond, bar, out, v:get_lock() } }
    p:start()
    for _ = 1, 2000 do
      local g <close> = v:get_lock():guard()
      v.value = v.value + 1
    end
    local first = out:get(20)
    t.same(first, { false, true, "no", true, true },
      "a spawned child sees the parent's Lock held, takes an RLock twice, keeps a Value's own lock, "
      .. "and shares a BoundedSemaphore")
    t.is(rlock:acquire(0), false, "the RLock the child took is held in the parent too")
    t.ok(sem:acquire(20) and sem:acquire(20), "the child's Semaphore releases reach the parent")
    t.is(bsem:acquire(0), false, "and so does its take of the BoundedSemaphore")
    ev:set()
    t.is(out:get(20), true, "an Event set in the parent wakes the child")
    lock:release()
    t.is(back:wait(20), true, "the child took the Condition (on the Lock the parent let go)")
    do
      local g <close> = cond:guard()
      arr[1] = -1
      cond:notify_all()
    end
    t.is(out:get(20), -1.0, "a notify in the parent wakes the child waiting on the Condition")
    local mine = bar:wait(20)
    local theirs = out:get(20)
    t.ok((mine == 1 and theirs == 2) or (mine == 2 and theirs == 1), "the Barrier lets both through, "
      .. "one index each (" .. tostring(mine) .. ", " .. tostring(theirs) .. ")")
    p:join()
    t.is(v.value, 4000, "a Value incremented under its lock by parent and spawned child: no update lost")
    t.same({ arr[2], arr[3], arr[4] }, { 3.0, 4.5, 6.0 }, "an Array the child wrote is read in the parent")
    t.is(p.exitcode, 0, "and the child exits cleanly")
  end

  -- pipe ends: both ways, big messages, and "closed" once the child is gone
  local a, b = mp.Pipe()
  local pp = mp.Process{ start_method = "spawn", target = function(conn)
    conn:send(conn:recv(10) * 2)
    conn:send(string.rep("z", 6 << 20))        -- more than the ring: streams
  end, args = { b } }
  pp:start()
  b:close()
  a:send(21)
  t.is(a:recv(20), 42, "a pipe end reaches a spawned child, both ways")
  local big = a:recv(20)
  t.ok(big and #big == 6 << 20, "a message bigger than the ring streams through it")
  pp:join()
  t.same({ a:recv(5) }, { nil, "closed" }, "the end reads closed once the child that held the other is gone")
  local r, w = mp.Pipe(false)
  local pw = mp.Process{ start_method = "spawn", target = function() w:send("one way") end }
  pw:start()
  t.is(r:recv(20), "one way", "a one-way sending end as an upvalue")
  pw:join()
  t.raises(function() mp.Process{ start_method = "forkserver", target = print } end,
    'start_method must be "fork" or "spawn"', "an unknown start method is refused")
  t.raises(function() mp.Process{ start_method = "spawn", target = print, preload = { 5 } } end,
    "preload%[1%] must be a module name", "preload is checked")
end

-- Pool and Executor
do
  local q = mp.Queue()
  local counter = mp.Value("q", 0)
  local pool <close> = mp.Pool{ processes = 2, start_method = "spawn",
    initializer = function(queue, tag, v) OUT, TAG, COUNTER = queue, tag, v end, initargs = { q, "init", counter } }
  local r = pool:map(function(x) return x * x end, { 1, 2, 3, 4, 5 })
  t.same({ r[1], r[5], r.n }, { 1, 25, 5 }, "a spawned pool maps")
  t.same({ pool:apply(function() return INHERITED == nil, TAG end) }, { true, "init" },
    "its workers have no inherited globals, only what the initializer set")
  pool:apply(function(x) OUT:put(x) end, { "through initargs" })
  t.is(q:get(20), "through initargs", "a Queue reaches spawned workers through initargs")
  pool:map(function()
    for _ = 1, 100 do
      local g <close> = COUNTER:get_lock():guard()
      COUNTER.value = COUNTER.value + 1
    end
  end, { 1, 2, 3, 4, 5, 6 }, 1)
  t.is(counter.value, 600, "so does a Value, which spawned workers update under its lock")
  local e = t.raises(function() pool:apply(function() os.exit(1) end) end, "died",
    "a spawned worker that dies fails its task")
  t.ok(mp.Error.is(e, "worker_lost"), "with worker_lost")
  t.is(pool:apply(function() return TAG end), "init", "and its replacement is spawned and initialized too")
  local late, lv = mp.Queue(), mp.Value("i", 0)
  pool:starmap(function(qq, v) qq:put(1); local g <close> = v:get_lock():guard(); v.value = v.value + 1 end,
    { { late, lv }, { late, lv }, { late, lv } }, 1)
  t.same({ late:get(20), late:get(20), late:get(20), lv.value }, { 1, 1, 1, 3 },
    "a Queue and a Value made later reach spawned workers as task arguments")
end

do
  local ex <close> = mp.Executor{ max_workers = 1, start_method = "spawn" }
  t.is(ex:submit(string.rep, "ab", 3):result(20), "ababab", "a spawned Executor runs futures")
end

do
  t.is(mp.get_start_method(), "fork", "the default start method is fork")
  mp.set_start_method("spawn")
  t.is(mp.get_start_method(), "spawn", "set_start_method changes it")
  local q = mp.Queue()
  local p = mp.Process{ target = function() q:put(INHERITED == nil) end }
  p:start()
  t.is(q:get(20), true, "Processes then spawn by default")
  p:join()
  mp.set_start_method("fork")
  t.raises(function() mp.set_start_method("thread") end, 'must be "fork" or "spawn"', "set_start_method checks")
end

t.done()
