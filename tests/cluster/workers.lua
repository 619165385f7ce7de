-- SPDX-License-Identifier: MIT
-- cluster/workers.lua: how many workers each rank runs, and that a Pool
-- without a size has them all, run on rank 0 (tests/cluster.sh).
--   arg[1]: scratch directory; arg[2]: the job's ranks; arg[3]: the
--   workers each rank must have ("cpus": the host's CPUs, when the job
--   has one rank and no -j)
local t = require "tap"
local mp = require "luamp"
local u = require "cluster.util"

local scratch = assert(arg[1], "usage: workers.lua SCRATCH NRANKS WORKERS|cpus")
local nranks = assert(tonumber(arg[2]))
local per = arg[3] == "cpus" and mp.cpu_count() or assert(tonumber(arg[3]))
local meet, rank, where = u.meet, u.rank, u.where

local c = type(mp.cluster) == "function" and mp.cluster()
if not t.is(type(c), "table", "mp.cluster() is a table under mpirun") then t.done() end
t.is(#c.ranks, nranks, "cluster.ranks lists the job's " .. nranks .. " ranks")
for i = 1, nranks do
  t.is((c.ranks[i] or {}).workers, per, "rank " .. (i - 1) .. " has " .. per .. " workers")
end
t.is(c.workers, nranks * per, "cluster.workers is " .. nranks * per)
t.is(#(c.hosts or {}), 1, "one host")
t.is(((c.hosts or {})[1] or {}).workers, nranks * per, "whose workers are " .. nranks * per)

local pool <close> = mp.Pool()
t.is(pool.processes, nranks * per, "mp.Pool() has every worker")

-- Every worker takes work: tasks that wait for each other (each leaves
-- its worker's mark, then waits until there is one for every worker), so
-- that a worker can take another only once every worker has taken one.
-- Three a worker: rank 0 sends another rank at most two tasks a worker
-- in flight (doc/design.md, "A task on another host"), so some are left
-- for rank 0's own workers.
local dir = u.subdir(scratch, "all")
local total = nranks * per
local by = u.by(20)
local r = pool:map(function()
  local me = where()
  u.put(dir .. "/" .. me:gsub("[^%w]", "_"), me)
  local sleep = mp._sleep
  repeat
    if u.count(dir) >= total then return me end
    sleep(0.02)
  until os.time() > by
  return me .. " (alone)"
end, u.range(3 * total), 1)
local ranks, workers, n = {}, {}, 0
for i = 1, r.n do
  local rk = tostring(r[i]):match("^(%d+):")
  if rk then ranks[rk] = true end
  if not workers[r[i]] then n = n + 1 end
  workers[r[i]] = true
end
t.is(n, total, "a job of " .. 3 * total .. " waiting tasks ran on " .. total .. " distinct workers",
  table.concat(r, " "))
t.is(u.keys(ranks), u.keys(u.ranks(nranks)), "on every rank")

-- Each rank runs that many workers: a task counts its parent's children
-- (a remote worker's parent is its rank's supervisor, a worker of rank
-- 0's the script's process), whose pid is the rank's in mp.cluster().
do
  local dir2 = u.subdir(scratch, "children")
  local by2 = u.by(5)
  local got = pool:map(function()
    local rk = u.meet(dir2, nranks, by2)
    local f = assert(io.open("/proc/self/stat"))
    local ppid = f:read("a"):match("^%d+ %b() %S+ (%d+)")
    f:close()
    local g = io.open("/proc/" .. ppid .. "/task/" .. ppid .. "/children")
    local n = 0
    if g then for _ in g:read("a"):gmatch("%d+") do n = n + 1 end g:close() end
    return rk .. " " .. ppid .. " " .. n
  end, u.range(2 * total), 1)
  local by_rank = {}
  for i = 1, got.n do
    local rk, ppid, n = tostring(got[i]):match("^(%d+) (%d+) (%d+)$")
    if rk then by_rank[tonumber(rk)] = { tonumber(ppid), tonumber(n) } end
  end
  for i = 0, nranks - 1 do
    local b = by_rank[i] or {}
    t.is(b[2], per, "rank " .. i .. "'s process has " .. per .. " worker processes")
    t.is(b[1], (c.ranks[i + 1] or {}).pid, "and is the pid cluster.ranks[" .. (i + 1) .. "].pid names")
  end
end

-- an Executor without max_workers too
local ex <close> = mp.Executor()
local futs = {}
for i = 1, 3 * total do futs[i] = ex:submit(function(x) return x + 1 end, i) end
local ok = true
for i = 1, #futs do if futs[i]:result(30) ~= i + 1 then ok = false end end
t.ok(ok, "mp.Executor() without max_workers runs tasks on the cluster")
t.is(rank(), "0", "the script ran on rank 0")
t.done()
