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
  t.raises(function() mp.Process{ start_method = "spawn", target = print, args = { mp.Lock() } }:start() end,
    "only queues and pipe ends reach one so far", "other objects are refused, saying so")
  local closed = mp.Pipe()
  closed:close()
  t.raises(function() mp.Process{ start_method = "spawn", target = print, args = { closed } }:start() end,
    "closed", "so is a closed pipe end")

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
  local pool <close> = mp.Pool{ processes = 2, start_method = "spawn",
    initializer = function(queue, tag) OUT, TAG = queue, tag end, initargs = { q, "init" } }
  local r = pool:map(function(x) return x * x end, { 1, 2, 3, 4, 5 })
  t.same({ r[1], r[5], r.n }, { 1, 25, 5 }, "a spawned pool maps")
  t.same({ pool:apply(function() return INHERITED == nil, TAG end) }, { true, "init" },
    "its workers have no inherited globals, only what the initializer set")
  pool:apply(function(x) OUT:put(x) end, { "through initargs" })
  t.is(q:get(20), "through initargs", "a Queue reaches spawned workers through initargs")
  local e = t.raises(function() pool:apply(function() os.exit(1) end) end, "died",
    "a spawned worker that dies fails its task")
  t.ok(mp.Error.is(e, "worker_lost"), "with worker_lost")
  t.is(pool:apply(function() return TAG end), "init", "and its replacement is spawned and initialized too")
  local late = mp.Queue()
  local e2 = t.raises(function() pool:apply(function(qq) qq:put(1) end, { late }) end,
    "spawned process knows only the objects it was started with",
    "a Queue as a task argument is refused by a spawned worker, saying why")
  t.ok(mp.Error.is(e2, "serialize"), "with kind serialize")
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
