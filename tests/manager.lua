-- SPDX-License-Identifier: MIT
-- mp.Manager: shared dicts, lists and Namespaces that read like tables,
-- their atomic updates, how they travel, and their errors.
local t = require "tap"
local mp = require "luamp"

local m <close> = mp.Manager()

-- a dict reads and writes like a table
do
  local d = m:dict{a = 1, b = {x = {1, 2}}}
  t.is(d.a, 1, "dict(init) holds init's keys")
  t.same(d.b, {x = {1, 2}}, "a value that is a table comes back whole")
  d.c = "three"
  t.is(d["c"], "three", "d[k] = v then d[k]")
  d[1.0] = "one"
  t.is(d[1], "one", "keys 1.0 and 1 are one key, as in a table")
  d[{1, 2}] = "pair"
  t.is(d[{1, 2}], "pair", "a table key is found by its contents")
  t.is(#d, 5, "#d counts the keys")
  d.c = nil
  t.is(d.c, nil, "d[k] = nil removes the key")
  t.is(#d, 4, "and #d says so")
  t.is(d.missing, nil, "a missing key reads as nil")
  t.is(d[nil], nil, "d[nil] reads as nil, as in a table")
  local copy = d.b
  copy.x[1] = 99
  t.is(d.b.x[1], 1, "changing a value read from a dict does not change the dict")
end

-- method names against keys: methods win for their names, get reaches the data
do
  local d = m:dict()
  d.keys = "data"
  t.is(type(d.keys), "function", "d.keys is the method")
  t.is(d:get("keys"), "data", "d:get('keys') reads the key named like a method")
  t.same(d:keys(), {"keys"}, "and keys() lists it")
  d:set("get", 1)
  t.is(d:get("get"), 1, "d:set stores under a method's name")
end

-- every dict method
do
  local d = m:dict()
  t.is(d:get("x", 7), 7, "get returns the default for a missing key")
  t.is(d:setdefault("x", 1), 1, "setdefault sets a missing key")
  t.is(d:setdefault("x", 2), 1, "setdefault keeps a present key")
  t.is(d:contains("x"), true, "contains a present key")
  t.is(d:contains("y"), false, "does not contain a missing key")
  d:update{y = 2, z = 3}
  t.is(d.y + d.z, 5, "update sets every key of a table")
  t.is(d:pop("y"), 2, "pop returns the value")
  t.is(d.y, nil, "and removes the key")
  t.is(d:pop("y", "none"), "none", "pop of a missing key returns the default")
  local keys = d:keys()
  table.sort(keys)
  t.same(keys, {"x", "z"}, "keys lists the keys")
  local values = d:values()
  table.sort(values)
  t.same(values, {1, 3}, "values lists the values")
  local items = d:items()
  table.sort(items, function(a, b) return a[1] < b[1] end)
  t.same(items, {{"x", 1}, {"z", 3}}, "items lists {key, value} pairs")
  t.same(d:totable(), {x = 1, z = 3}, "totable copies the dict")
  local seen = {}
  for k, v in pairs(d) do seen[k] = v; d[k] = nil end
  t.same(seen, {x = 1, z = 3}, "pairs walks a snapshot, which removing keys meanwhile does not disturb")
  d:update{a = 1}
  d:clear()
  t.is(#d, 0, "clear empties the dict")
  t.like(tostring(d), "^dict %(dict:%d+:%d+%)$", "tostring names the dict")
end

-- a list reads and writes like an array
do
  local l = m:list{10, 20}
  t.is(#l, 2, "list(init) holds init's elements")
  t.is(l[1], 10, "l[i] is 1-based")
  l[3] = 30
  t.is(l[3], 30, "l[#l + 1] = v appends")
  l[1] = 11
  t.is(l[1], 11, "l[i] = v replaces")
  t.is(l[4], nil, "past the end reads nil")
  t.is(l[0], nil, "l[0] reads nil")
  local got = {}
  for i, v in ipairs(l) do got[i] = v end
  t.same(got, {11, 20, 30}, "ipairs walks the list")
  got = {}
  for i, v in pairs(l) do got[i] = v end
  t.same(got, {11, 20, 30}, "pairs walks a snapshot of the list")
  l:append(40)
  l:insert(1, 0)
  l:insert(50)
  t.same(l:totable(), {0, 11, 20, 30, 40, 50}, "append, insert(i, v) and insert(v) as table.insert")
  t.is(l:remove(1), 0, "remove(i) returns the element")
  t.is(l:remove(), 50, "remove() takes the last")
  t.is(l:pop(), 40, "pop is remove")
  l:extend{"a", "b"}
  t.same(l:totable(), {11, 20, 30, "a", "b"}, "extend appends a table's elements")
  t.is(l:get(9, "d"), "d", "get(i, default) past the end")
  l:clear()
  t.is(#l, 0, "clear empties the list")
  t.is(l:remove(), nil, "remove() from an empty list is nil")
  t.raises(function() l[3] = 1 end, "list index 3 out of range %(length 0%)", "a hole cannot be made")
  t.raises(function() l:append(nil) end, "cannot store nil in a list", "nil is not an element")
  t.raises(function() l:insert(5, 1) end, "out of range", "insert past the end raises")
  t.raises(function() l.x = 1 end, "list index must be an integer, got string", "a list has no string keys")
  t.raises(function() l:update_key(1, function(v) return v end) end, "list index 1 out of range",
    "update_key on a missing element raises")
end

-- a Namespace has no methods: every field is data
do
  local ns = m:Namespace{x = 1}
  ns.keys = "k"
  ns.y = ns.x + 1
  t.is(ns.keys, "k", "ns.keys is data")
  t.is(ns.y, 2, "ns fields read and write")
end

-- the Manager hands out luamp's own objects, and stops when shut down
do
  local mm = mp.Manager()
  t.like(tostring(mm:Lock()), "^Lock ", "m:Lock() is a luamp Lock")
  t.like(tostring(mm:RLock()), "^RLock ", "m:RLock() is a luamp RLock")
  t.is(mm:Value("i", 5).value, 5, "m:Value() is a luamp Value")
  local q = mm:Queue()
  q:put(1)
  t.is(q:get(), 1, "m:Queue() is a luamp Queue")
  local d = mm:dict{a = 1}
  mm:shutdown()
  t.raises(function() mm:dict() end, "the Manager was shut down", "a shut-down Manager makes nothing")
  t.is(d.a, 1, "its objects outlive it")
end

-- atomic read-modify-write
do
  local d = m:dict{n = 0}
  t.is(d:update_key("n", function(old) return old + 1 end), 1, "update_key returns the new value")
  t.is(d:update_key("m", function(old) return old + 1 end, 10), 11, "update_key's default for a missing key")
  d:update_key("m", function() return nil end)
  t.is(d.m, nil, "update_key to nil removes the key")
  t.raises(function() d:update_key("n", function() error("boom") end) end, "boom", "an error in the function")
  t.is(d:get_lock():acquire(0), true, "and the lock is free again after it")
  d:get_lock():release()
  do
    local _ <close> = d:get_lock():guard()
    d.n = d.n + 1
  end
  t.is(d.n, 2, "d[k] under the guard of get_lock (the lock is recursive)")
  local l = m:list{1}
  l:update_key(1, function(v) return v * 5 end)
  t.is(l[1], 5, "a list's update_key")

  local c = m:dict{n = 0}
  local procs = {}
  for i = 1, 4 do
    procs[i] = mp.Process{target = function()
      for _ = 1, 10000 do c:update_key("n", function(n) return n + 1 end) end
    end}
    procs[i]:start()
  end
  for _, p in ipairs(procs) do p:join() end
  t.is(c.n, 40000, "4 processes x 10,000 update_key increments: none lost")
end

-- a holder killed inside update_key's function loses nothing
do
  local d = m:dict{n = 1, other = "kept"}
  local inside = mp.Event()
  local p = mp.Process{target = function()
    d:update_key("n", function(old) inside:set(); mp._sleep(60); return old + 100 end)
  end}
  p:start()
  inside:wait()
  p:kill()
  p:join()
  t.is(d.n, 1, "the value a killed holder was updating is the old one")
  t.is(d:update_key("n", function(old) return old + 1 end), 2, "and the next update takes the lock over")
  t.is(d.other, "kept", "the rest of the dict is whole")
end

-- sent every way
do
  local d, l = m:dict(), m:list()
  local p = mp.Process{target = function() d.forked = true; l:append("forked") end}
  p:start(); p:join()
  t.is(d.forked, true, "a forked Process changes the parent's dict")

  local ns = m:Namespace()
  local sp = mp.Process{start_method = "spawn", target = function(dd, ll, nn)
    dd.spawned = true; ll:append("spawned"); nn.s = 1
  end, args = {d, l, ns}}
  sp:start(); sp:join()
  t.is(d.spawned, true, "a spawned Process gets the dict")
  t.same(l:totable(), {"forked", "spawned"}, "and the list")
  t.is(ns.s, 1, "and the Namespace")

  local pool <close> = mp.Pool(2)
  local late = m:dict()
  pool:map(function(a) a[1][a[2]] = a[2] * 2 end, {{late, 1}, {late, 2}, {late, 3}, {late, 4}})
  t.same(late:totable(), {2, 4, 6, 8}, "a dict made after the pool reaches its workers")
  t.is(pool:apply(function(dd) return dd.forked end, {d}), true, "a dict made before the pool, as an argument")

  local spool <close> = mp.Pool{processes = 1, start_method = "spawn"}
  spool:apply(function(dd) dd.from_spawned_pool = 1 end, {d})
  t.is(d.from_spawned_pool, 1, "a spawned pool worker gets it as an argument")
  local ex <close> = mp.Executor{max_workers = 1}
  ex:submit(function(ll) ll:append("executor") end, l):result()
  t.is(l[#l], "executor", "an executor task gets a list")
end

-- bad input
do
  local d = m:dict()
  t.raises(function() d[coroutine.create(print)] = 1 end, "cannot send key: a coroutine",
    "an unsendable key is refused by name")
  t.raises(function() d.x = coroutine.create(print) end, "cannot send value: a coroutine",
    "an unsendable value is refused by name")
  t.raises(function() return d[io.stdout] end, "cannot send key", "reading an unsendable key raises")
  t.raises(function() d[0/0] = 1 end, "key is NaN", "a NaN key is refused")
  t.raises(function() d[nil] = 1 end, "key is nil", "a nil key is refused")
  t.raises(function() m:dict(5) end, "bad argument #1 to 'dict' %(table expected, got number%)",
    "dict's init must be a table")
end

-- growth and shrink, and no leak of descriptors or mappings
do
  local d = m:dict()
  local small = mp._manager_stats(d).file_bytes
  for i = 1, 20000 do d[i] = string.rep("x", 100) end
  t.is(#d, 20000, "a dict grows to 20,000 keys")
  t.ok(mp._manager_stats(d).file_bytes > 2000000, "its memory grows with them")
  for i = 1, 20000 do d[i] = nil end
  t.is(#d, 0, "and empties")
  t.is(mp._manager_stats(d).file_bytes, small, "an emptied dict gives its memory back")
  d.big = string.rep("y", 1 << 22)
  t.is(#d.big, 1 << 22, "a 4 MiB value")
  d.big = nil
  t.ok(mp._manager_stats(d).resident_bytes < 1 << 20, "and gives it back when removed")
  local l = m:list()
  for i = 1, 20000 do l:append(i) end
  t.is(l[20000], 20000, "a list grows to 20,000 elements")
  for _ = 1, 20000 do l:remove() end
  t.is(mp._manager_stats(l).file_bytes, mp._manager_stats(m:list()).file_bytes, "and shrinks back when emptied")
  local function fds()
    local n = 0
    local ls = io.popen("ls /proc/" .. mp.current_process().pid .. "/fd")
    for _ in ls:lines() do n = n + 1 end
    ls:close()
    return n
  end
  local function maps()
    local n = 0
    for _ in io.lines("/proc/self/maps") do n = n + 1 end
    return n
  end
  collectgarbage()
  local before_fds, before_maps = fds(), maps()
  for i = 1, 10000 do
    local x = m:dict()
    x.i = i
  end
  collectgarbage(); collectgarbage()
  t.ok(fds() <= before_fds, "10,000 dicts made and dropped leave no descriptor", fds() .. " vs " .. before_fds)
  -- (a leak would leave 10,000 mappings; the allocator, AddressSanitizer's
  -- most, maps a few of its own meanwhile)
  t.ok(maps() <= before_maps + 100, "and no mapping", maps() .. " vs " .. before_maps)
end

-- SharedMemory: named bytes, 1-based offsets, unlinked by its maker
do
  local function exists(name)
    local f = io.open("/dev/shm/" .. name)
    if f then f:close() end
    return f ~= nil
  end
  local shm = mp.SharedMemory(64)
  t.is(shm.size, 64, "SharedMemory(size) has that size")
  t.ok(exists(shm.name), "and a name in /dev/shm")
  t.is(shm:read(1, 4), "\0\0\0\0", "a new block is zeros")
  shm:write(1, "hello")
  shm:write(64, "!")
  t.is(shm:read(1, 5), "hello", "write then read at offset 1, as string.sub counts")
  t.is(shm:read(64, 1), "!", "the last byte is at offset size")
  t.is(shm:read(65, 0), "", "an empty read just past the end")
  local other = mp.SharedMemory{name = shm.name}
  t.is(other.size, 64, "opening by name maps the whole block")
  local p = mp.Process{target = function() other:write(1, "HELLO") end}
  p:start(); p:join()
  t.is(shm:read(1, 5), "HELLO", "a child's write is seen through another view")
  t.ok(exists(shm.name), "a child's views do not unlink its parent's block")
  t.raises(function() shm:read(0, 1) end, "offset must be 1 or more", "offset 0 raises")
  t.raises(function() shm:read(-3, 1) end, "offset must be 1 or more", "a negative offset raises")
  t.raises(function() shm:read(60, 10) end, "cannot read 10 bytes at offset 60: the SharedMemory has 64",
    "a read past the end raises")
  t.raises(function() shm:write(63, "abc") end, "cannot write 3 bytes at offset 63", "a write past the end raises")
  t.raises(function() shm:read(1, -1) end, "length must be 0 or more", "a negative length raises")
  t.raises(function() mp.SharedMemory{name = shm.name, create = true, size = 8} end, "File exists",
    "create refuses a name in use")
  t.raises(function() mp.SharedMemory{name = "luamp-test-no-such-block"} end, "No such file",
    "opening a missing name raises")
  t.raises(function() mp.SharedMemory(0) end, "size of 1 byte or more", "size 0 raises")
  t.raises(function() mp.SharedMemory{sise = 3} end, "unknown option 'sise'", "options are checked")
  local name = shm.name
  other:close()
  shm:close()
  t.ok(not exists(name), "the maker's close unlinks the name")
  t.raises(function() shm:read(1, 1) end, "the SharedMemory is closed", "a closed block raises")

  local kept = mp.SharedMemory{size = 8, unlink = false}
  name = kept.name
  kept:close()
  t.ok(exists(name), "unlink = false keeps the name past close")
  local again = mp.SharedMemory{name = name}
  again:unlink()
  t.ok(not exists(name), "unlink() removes it")
  again:close()

  local block = mp.SharedMemory(8)
  local pool <close> = mp.Pool(1)
  local late = mp.SharedMemory(8)
  t.is(pool:apply(function(x) x:write(1, "pool"); return x.size end, {late}), 8,
    "a block made after a pool reaches its worker as an argument")
  t.is(late:read(1, 4), "pool", "and the worker's write is seen")
  local sp = mp.Process{start_method = "spawn", target = function(x) x:write(1, "spwn") end, args = {block}}
  sp:start(); sp:join()
  t.is(block:read(1, 4), "spwn", "a spawned child opens a block it was sent, by its name")
  t.ok(exists(block.name), "and leaves its name to its maker")
  pool:close(); pool:join()
  name = late.name
  late:close(); block:close()
  t.ok(not exists(name), "the maker unlinks a block it sent")

  local dropped = mp.SharedMemory(8)
  name = dropped.name
  dropped = nil
  collectgarbage(); collectgarbage()
  t.ok(not exists(name), "a collected block is unlinked")
end

t.done()
