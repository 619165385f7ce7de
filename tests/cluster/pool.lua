-- SPDX-License-Identifier: MIT
-- cluster/pool.lua: mp.cluster() and a Pool over every rank, run on rank 0
-- of `mpirun -n 3 luamp-mpi` (tests/cluster.sh): the shape of the
-- cluster, work done on every rank, and each call of the Pool giving what
-- the same computation gives locally.
--   arg[1]: scratch directory; arg[2]: the ranks of the job (3)
local t = require "tap"
local mp = require "luamp"
local u = require "cluster.util"

local scratch = assert(arg[1], "usage: pool.lua SCRATCH NRANKS")
local nranks = tonumber(arg[2] or "3")
local meet, rank, where, host = u.meet, u.rank, u.where, u.host

t.is(type(mp.cluster), "function", "mp.cluster is a function")
local c = type(mp.cluster) == "function" and mp.cluster()
if not t.is(type(c), "table", "mp.cluster() is a table under mpirun") then
  t.done()
end

-- The shape: every rank, on this one host, with its workers.
local me = host()
t.is(rank(), "0", "the script runs on rank 0")
t.is(type(c.ranks), "table", "cluster.ranks is a table")
t.is(#c.ranks, nranks, "cluster.ranks lists the " .. nranks .. " ranks")
local sum = 0
for i = 1, nranks do
  local r = c.ranks[i] or {}
  t.is(r.rank, i - 1, "cluster.ranks[" .. i .. "].rank is " .. (i - 1))
  t.is(r.host, me, "cluster.ranks[" .. i .. "].host is this host's name")
  t.ok(math.type(r.workers) == "integer" and r.workers >= 1,
    "cluster.ranks[" .. i .. "].workers is a positive integer (" .. tostring(r.workers) .. ")")
  sum = sum + (math.type(r.workers) == "integer" and r.workers or 0)
end
t.is(c.workers, sum, "cluster.workers is the sum of the ranks' workers")
t.is(type(c.hosts), "table", "cluster.hosts is a table")
t.is(#(c.hosts or {}), 1, "cluster.hosts has one host")
local h = (c.hosts or {})[1] or {}
t.is(h.name, me, "cluster.hosts[1].name is this host's name")
local want_ranks = {}
for i = 1, nranks do want_ranks[i] = i - 1 end
t.same(h.ranks, want_ranks, "cluster.hosts[1].ranks lists every rank, in order")
t.is(h.workers, sum, "cluster.hosts[1].workers is the sum of its ranks' workers")
-- (without -j: the host's CPUs shared among its ranks, at least one each)
local cpus = mp.cpu_count()
local lo, hi = math.max(1, cpus // nranks), math.max(1, (cpus + nranks - 1) // nranks)
for i = 1, nranks do
  local w = (c.ranks[i] or {}).workers
  t.ok(type(w) == "number" and w >= lo and w <= hi, string.format(
    "without -j, rank %d has its share of the host's %d CPUs among %d ranks (%d..%d): %s",
    i - 1, cpus, nranks, lo, hi, tostring(w)))
end
t.same(mp.cluster(), c, "mp.cluster() called again says the same")

local pool <close> = mp.Pool()
t.is(pool.processes, c.workers, "mp.Pool() without a size has every worker of every rank")

-- Every rank takes work: tasks meet (tests/cluster/util.lua) until each
-- rank has run one.
do
  local dir = u.subdir(scratch, "spread")
  local by = u.by(20)
  local r = pool:map(function() return (meet(dir, nranks, by)) end, u.range(2 * c.workers), 1)
  t.is(u.keys(u.set(r)), u.keys(u.ranks(nranks)), "a map's tasks ran on every rank")
  local pids = pool:map(function() mp._sleep(0.02) return where() end, u.range(8 * c.workers), 1)
  local distinct = 0
  for _ in pairs(u.set(pids)) do distinct = distinct + 1 end
  t.ok(distinct >= 1 and distinct <= c.workers,
    "a map ran on at most the cluster's " .. c.workers .. " workers (" .. distinct .. ")")
end

-- Results identical to a local computation.
local function locally(f, items, star)
  local r = { n = #items }
  for i = 1, #items do
    if star then r[i] = f(table.unpack(items[i])) else r[i] = f(items[i]) end
  end
  return r
end

local k = 3
local function mix(x)
  if x % 7 == 0 then return nil end
  if x % 5 == 0 then return { x = x, s = string.rep("ab", x % 4), f = x / 4, nested = { x, { -x } } } end
  if x % 3 == 0 then return string.format("%d-%s", x * k, string.upper("q")) end
  return x * k + 0.5 * (x % 2)
end
local xs = u.range(200)

t.same(pool:map(mix, xs), locally(mix, xs), "map (chosen chunksize) as computed locally")
t.same(pool:map(mix, xs, 3), locally(mix, xs), "map with chunksize 3 as computed locally")
t.same(pool:map(mix, xs, { chunksize = 1 }), locally(mix, xs), "map with {chunksize = 1} as computed locally")
t.same(pool:map(mix, {}), { n = 0 }, "map of nothing is empty")
t.same(pool:map(string.upper, { "a", "b", "c" }), { "A", "B", "C", n = 3 }, "map of a C function by name")
local big = pool:map(function(n) return string.rep("z", n) end, { 1 << 20, 3 << 20, 5 })
t.ok(#big[1] == 1 << 20 and #big[2] == 3 << 20 and big[3] == "zzzzz", "map carries results of megabytes")
t.same(pool:map(function(s) return #s end, { string.rep("y", 2 << 20), "" }), { 2 << 20, 0, n = 2 },
  "and arguments of megabytes")

local pairs_in = {}
for i = 1, 50 do pairs_in[i] = { i, 51 - i, i % 3 } end
local function tri(a, b, c3) return a * 100 + b, c3 end
t.same(pool:starmap(tri, pairs_in), locally(tri, pairs_in, true), "starmap as computed locally")
t.same(pool:starmap(math.max, { { 1, 5 }, { 7, 2 } }), { 5, 7, n = 2 }, "starmap of a C function")
t.same(pool:starmap_async(tri, pairs_in, 4):get(30), locally(tri, pairs_in, true), "starmap_async as computed locally")

do
  local got = { n = 0 }
  for i, v in pool:imap(mix, xs, 4) do got[i] = v; got.n = math.max(got.n, i) end
  t.same(got, locally(mix, xs), "imap from a list, in order, as computed locally")
  local order = {}
  for i in pool:imap(mix, xs, 1) do order[#order + 1] = i end
  t.same(order, u.range(#xs), "imap yields the indices in input order")
  local n, gen = 0, nil
  gen = function() n = n + 1; if n <= 60 then return n end end
  local got2, count = {}, 0
  for i, v in pool:imap(function(x) return x * x end, gen) do got2[i] = v; count = count + 1 end
  local want2 = {}
  for i = 1, 60 do want2[i] = i * i end
  t.same(got2, want2, "imap from an iterator")
  t.is(count, 60, "imap from an iterator yields every item once")
end

do
  local got, seen, count, again = { n = #xs }, {}, 0, 0
  for i, v in pool:imap_unordered(mix, xs, 2) do
    if seen[i] then again = again + 1 end
    seen[i] = true; got[i] = v; count = count + 1
  end
  t.is(count, #xs, "imap_unordered yields every item")
  t.is(again, 0, "imap_unordered yields no index twice")
  t.same(got, locally(mix, xs), "imap_unordered: each index with its result, as computed locally")
  local stopped = 0
  for i in pool:imap_unordered(function(x) return x end, u.range(1000), 1) do
    stopped = stopped + 1
    if stopped == 5 then break end
  end
  t.is(pool:apply(math.abs, { -4 }), 4, "the pool goes on after leaving an imap_unordered loop early")
end

do
  local got
  local r = pool:map_async(mix, xs, { callback = function(res) got = res end })
  t.same(r:get(30), locally(mix, xs), "map_async: get gives the results")
  t.same(got, locally(mix, xs), "map_async: the callback got the results table")
  t.is(r:ready(), true, "map_async: ready after get")
  t.is(r:successful(), true, "map_async: successful")
  t.ok(math.type(r.chunksize) == "integer" and r.chunksize >= 1, "map_async: the AsyncResult says its chunksize")
  local ecb
  local bad = pool:map_async(function(x) if x == 13 then error("thirteen") end return x end, xs,
    { error_callback = function(e) ecb = e end, chunksize = 1 })
  local e = t.raises(function() bad:get(30) end, "thirteen", "map_async: a failing item fails the job")
  t.ok(mp.Error.is(e, "remote"), "with kind remote")
  t.ok(mp.Error.is(ecb, "remote") and tostring(ecb.message):find("thirteen") ~= nil,
    "map_async: the error_callback got the error")
  t.is(bad:successful(), false, "map_async: not successful")
end

do
  t.is(pool:apply(string.rep, { "ab", 3 }), "ababab", "apply of a C function")
  t.same({ pool:apply(function(a, b) return a + b, a * b, nil, "x" end, { 6, 7 }) }, { 13, 42, nil, "x" },
    "apply returns every value")
  local seen = {}
  local r = pool:apply_async(function(a, b) return a + b, a * b end, { 6, 7 },
    { callback = function(s, p) seen.cb = { s, p, mp.current_process().name } end })
  t.same({ r:get(30) }, { 13, 42 }, "apply_async: get returns every value")
  t.same(seen.cb, { 13, 42, "MainProcess" }, "apply_async: the callback ran in the main script with every value")
  local r2 = pool:apply_async(function() error("remote boom") end, {},
    { error_callback = function(e) seen.ecb = e end })
  local e = t.raises(function() r2:get(30) end, "remote boom", "apply_async: get raises the task's error")
  t.ok(mp.Error.is(e, "remote"), "apply_async: kind remote")
  t.like(tostring(e.value), "remote boom", "apply_async: e.value is what the task raised")
  t.ok(mp.Error.is(seen.ecb, "remote"), "apply_async: the error_callback got the error")
  local rs = {}
  for i = 1, 300 do rs[i] = pool:apply_async(function(x) return x * x end, { i }) end
  local ok = true
  for i = 1, 300 do if rs[i]:get(30) ~= i * i then ok = false end end
  t.ok(ok, "300 apply_async results are all correct")
end

-- After many cheap tasks, a job of tasks that take time (here: that wait
-- for each other) still reaches every rank, rather than queueing behind
-- one rank's workers while the others idle.
do
  local dir = u.subdir(scratch, "spread-after-cheap")
  local by = u.by(5)
  local r = pool:map(function() return (meet(dir, nranks, by)) end, u.range(2 * c.workers), 1)
  t.is(u.keys(u.set(r)), u.keys(u.ranks(nranks)), "after many cheap tasks, a job of slow ones runs on every rank")
end

-- progress = true with stderr not a terminal (a file, under mpirun's
-- --output-filename): the result as without; nothing drawn (the harness
-- checks rank 0's stderr)
t.same(pool:map(mix, xs, { progress = true }), locally(mix, xs), "map with progress = true")
do
  local got = {}
  for i, v in pool:imap(function(x) return -x end, u.range(30), { progress = true, chunksize = 2 }) do got[i] = v end
  local want = {}
  for i = 1, 30 do want[i] = -i end
  t.same(got, want, "imap with progress = true")
end

-- per-task deadline: the late item fails with task_timeout, the others
-- are unaffected
do
  local r = pool:map_async(function(x) if x == 3 then mp._sleep(60) end return x end, u.range(6),
    { timeout = 1, chunksize = 1 })
  local e = t.raises(function() r:get(30) end, "timeout", "map with {timeout = 1}: the late item fails the job")
  t.ok(mp.Error.is(e, "task_timeout"), "with kind task_timeout")
  local a = pool:apply_async(function() mp._sleep(60) end, {}, { timeout = 0.5 })
  local b = pool:apply_async(function(x) return x + 1 end, { 1 }, { timeout = 20 })
  local e2 = t.raises(function() a:get(30) end, "timeout", "apply_async with {timeout = 0.5}: fails")
  t.ok(mp.Error.is(e2, "task_timeout"), "with kind task_timeout")
  t.is(b:get(30), 2, "a task within its deadline succeeds")
  t.same(pool:map(mix, xs), locally(mix, xs), "the pool goes on after timeouts")
end

-- initializer, on every worker of every rank
do
  local dir = u.subdir(scratch, "init")
  local ip <close> = mp.Pool { initializer = function(prefix) INIT_TAG = prefix .. rank() end, initargs = { "init-" } }
  t.is(ip.processes, c.workers, "mp.Pool{initializer =} without processes spans every worker")
  local by = u.by(20)
  local r = ip:map(function() local rk = meet(dir, nranks, by); return tostring(INIT_TAG) .. "/" .. rk end,
    u.range(2 * c.workers), 1)
  local ok, ranks = true, {}
  for i = 1, r.n do
    local tag, rk = tostring(r[i]):match("^init%-(%d+)/(%d+)$")
    if not tag or tag ~= rk then ok = false end
    if rk then ranks[rk] = true end
  end
  t.ok(ok, "every task saw the global its worker's initializer set, with its rank", table.concat(r, " "))
  t.is(u.keys(ranks), u.keys(u.ranks(nranks)), "the initializer ran on every rank")
end

-- maxtasksperchild = 1: every task in a fresh worker
do
  local mp1 <close> = mp.Pool { maxtasksperchild = 1 }
  local rs = {}
  for i = 1, 3 * c.workers do rs[i] = mp1:apply_async(function() return where() end) end
  local seen, dup = {}, false
  for i = 1, #rs do
    local w = rs[i]:get(30)
    if seen[w] then dup = true end
    seen[w] = true
  end
  t.ok(not dup, "maxtasksperchild = 1: no two tasks ran in the same worker")
  t.same(mp1:map(mix, xs, 10), locally(mix, xs), "maxtasksperchild = 1: map as computed locally")
end

-- big results (64 KiB and more) are sent from where they lie in a node's
-- result queue, while the next ones wait there: all arrive whole, from
-- every rank
do
  local p <close> = mp.Pool()
  local function big(i)
    local rk = os.getenv("OMPI_COMM_WORLD_RANK") or "?"
    return rk .. ":" .. string.rep(string.char(65 + i % 26), 60000 + i * 9000)
  end
  local idx = {}
  for i = 1, 40 do idx[i] = i end
  local r = p:map(big, idx, 1)
  local whole, ranks = true, {}
  for i = 1, 40 do
    local rk, body = tostring(r[i]):match("^(%d+):(.*)$")
    if body ~= string.rep(string.char(65 + i % 26), 60000 + i * 9000) then whole = false end
    if rk then ranks[rk] = true end
  end
  t.ok(whole, "40 results of 69 to 420 KB arrive whole")
  t.ok(ranks["1"] or ranks["2"], "some of them from another rank")
end

-- a pool closed and joined ends; its callbacks have run
do
  local p = mp.Pool()
  local n = 0
  for i = 1, 30 do p:apply_async(math.abs, { -i }, { callback = function() n = n + 1 end }) end
  p:close()
  p:join()
  t.is(n, 30, "join returns when every task is done and every callback has run")
  t.raises(function() p:apply(math.abs, { 1 }) end, "closed", "a closed pool refuses tasks")
end

t.done()
