-- SPDX-License-Identifier: MIT
-- cluster/nompi.lua: not under MPI (luamp-mpi or luamp started directly,
-- tests/cluster.sh), mp.cluster() is nil and a Pool is luamp's own.
--   arg[1]: the default pool size expected (-j N given), or "cpus"
local t = require "tap"
local mp = require "luamp"

local want = arg[1] == "cpus" and mp.cpu_count() or assert(tonumber(arg[1]), "usage: nompi.lua N|cpus")

t.is(os.getenv("OMPI_COMM_WORLD_SIZE"), nil, "this run is not under mpirun")
t.is(type(mp.cluster), "function", "mp.cluster is a function")
t.is(select("#", mp.cluster()), 1, "mp.cluster() returns one value")
t.is(mp.cluster(), nil, "which is nil when not under MPI")

local pool <close> = mp.Pool()
t.is(pool.processes, want, "mp.Pool() has the local default size (" .. want .. ")")
local k = 3
local r = pool:map(function(x) return x * k end, { 1, 2, 3 })
t.same(r, { 3, 6, 9, n = 3 }, "map works")
local me = mp.current_process().pid
local parents = pool:map(function() local f = io.open("/proc/self/stat"); local s = f:read("a"); f:close()
  return tonumber(s:match("^%d+ %b() %S+ (%d+)")) end, { 1, 2, 3, 4 }, 1)
local all = true
for i = 1, parents.n do if parents[i] ~= me then all = false end end
t.ok(all, "its workers are this process's own children")
local q = mp.Queue()
pool:apply(function(qq) qq:put("via a queue") end, { q })
t.is(q:get(10), "via a queue", "a Queue reaches a task, as in luamp")
local e = t.raises(function() pool:apply(function() os.exit(5) end) end, "exited with status 5",
  "a worker's death fails its task")
t.ok(mp.Error.is(e, "worker_lost"), "with kind worker_lost")
t.is(pool:apply(math.abs, { -2 }), 2, "the pool goes on")
local ex <close> = mp.Executor()
t.is(ex.max_workers, want, "mp.Executor() has the local default size")
t.is(ex:submit(string.upper, "x"):result(10), "X", "an Executor works")
t.done()
