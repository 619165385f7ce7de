-- SPDX-License-Identifier: MIT
-- Tasks that run out of memory: the error says so and names the worker,
-- tostring of every mp.Error is a string, the worker is replaced and the
-- pool goes on.  The limit is a worker's own RLIMIT_AS (prlimit), set by
-- the task itself a little above what the worker has mapped already.
local t = require "tap"
local mp = require "luamp"

-- tostring of an mp.Error never raises, whatever its fields hold
do
  t.is(tostring(setmetatable({ kind = "remote" }, mp.Error)), "remote error (no message)",
    "tostring of an Error without a message is a string")
  t.is(tostring(setmetatable({ kind = "os", message = {}, traceback = 5 }, mp.Error)),
    "os error (table message)", "tostring of an Error with odd fields is a string")
end

local have_prlimit = mp.run({ "sh", "-c", "command -v prlimit" }, { capture = true }).code == 0
if not have_prlimit then
  t.skip("tasks out of memory", "no prlimit program (util-linux)")
  t.done()
  return
end

-- Runs in a worker: limits its own address space to what it has now plus
-- 256 MiB, then (if `grow`) allocates until memory runs out.
local function starve(grow)
  local vm
  for line in io.lines("/proc/self/status") do
    vm = vm or tonumber(line:match("^VmSize:%s+(%d+) kB"))
  end
  local pid = mp.current_process().pid
  if grow then
    mp.run({ "prlimit", "--pid", tostring(pid), "--as=" .. (vm + 256 * 1024) * 1024 }, { check = true })
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 1 << 20) .. i end
  end
  return pid
end

local function check_oom(e, how)
  t.ok(mp.Error.is(e, "remote"), how .. ": the error has kind remote", tostring(e))
  t.like(e and e.message, "^not enough memory in the task %(worker pid %d+%)$",
    how .. ": the message says the task ran out of memory, with the worker's pid")
  t.is(e and e.value, "not enough memory", how .. ": its value is Lua's own message")
  t.ok(e and type(e.pid) == "number" and e.message:find(tostring(e.pid), 1, true),
    how .. ": the error's pid is the worker's")
  t.is(type(tostring(e)), "string", how .. ": tostring of the error is a string")
end

local pool <close> = mp.Pool(1)

do
  local ok, e = pcall(pool.apply, pool, starve, { true })
  t.ok(not ok, "apply of a task that runs out of memory raises")
  check_oom(e, "apply")
  local pid = pool:apply(starve, { false })
  t.ok(pid ~= e.pid, "the worker whose task ran out of memory was replaced")
  -- now starve is in the new worker's function cache: the task runs on
  -- the worker loop's C path
  local ok2, e2 = pcall(pool.apply, pool, starve, { true })
  t.ok(not ok2, "apply on the worker's fast path of a task that runs out of memory raises")
  check_oom(e2, "apply (fast path)")
  t.ok(e2.pid == pid, "it ran in the worker that had the function cached")
  t.ok(pool:apply(starve, { false }) ~= pid, "that worker was replaced too")
end

do
  local function item(x)
    if x == 3 then starve(true) end
    return x * 10
  end
  local ok, e = pcall(pool.map, pool, item, { 1, 2, 3, 4 }, 4)
  t.ok(not ok, "map with an item that runs out of memory raises")
  check_oom(e, "map")
  t.same(pool:map(item, { 1, 2 }, 2), { 10, 20, n = 2 }, "the pool maps again afterwards")
  local ok2, e2 = pcall(pool.map, pool, item, { 5, 3 }, 2)
  t.ok(not ok2, "map on the worker's fast path with an item out of memory raises")
  check_oom(e2, "map (fast path)")
end

-- A result that the worker has no memory to queue (the result queue's
-- ring cannot grow to 256 MiB in its address space) fails its task,
-- naming its size, and the worker goes on.  (It once made the worker
-- exit: the task was "worker_lost", exit status 70.)
do
  local function big_result()
    local s = string.rep("r", 200 << 20)
    local vm
    for line in io.lines("/proc/self/status") do
      vm = vm or tonumber(line:match("^VmSize:%s+(%d+) kB"))
    end
    local pid = require("luamp").current_process().pid
    require("luamp").run({ "prlimit", "--pid", tostring(pid), "--as=" .. (vm + 64 * 1024) * 1024 }, { check = true })
    return s
  end
  local function pid() return require("luamp").current_process().pid end
  local before = pool:apply(pid)
  local ok, e = pcall(pool.apply, pool, big_result)
  t.ok(not ok and mp.Error.is(e, "serialize"), "a result the worker has no memory to queue fails with kind serialize",
    tostring(e))
  t.like(e and e.message, "^cannot send the result: no memory for a message of 200 MiB %(",
    "the message says so and names the result's size")
  t.is(pool:apply(pid), before, "the same worker goes on")
  t.is(pool:apply(function() return ("x"):rep(1000) end), ("x"):rep(1000), "and returns results")
end

do
  local ex <close> = mp.Executor { max_workers = 1 }
  local fut = ex:submit(starve, true)
  check_oom(fut:exception(60), "a future")
  t.is(type(ex:submit(starve, false):result(60)), "number", "the executor goes on")
end

do
  local ok, e = pcall(mp.Pool, { processes = 1, initializer = starve, initargs = { true } })
  if ok then
    local p = e
    ok, e = pcall(p.apply, p, starve, { false })
    p:terminate()
  end
  t.ok(not ok and mp.Error.is(e) and e.message:find("initializer failed: not enough memory", 1, true),
    "an initializer that runs out of memory breaks the pool with a clear message", tostring(e))
end

t.done()
