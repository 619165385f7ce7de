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

-- Every worker takes work: c.workers tasks that wait for each other
-- (each leaves a mark, then waits until c.workers marks are there), so
-- that no worker can take two.
local dir = u.subdir(scratch, "all")
local total = nranks * per
local r = pool:map(function()
  local me = where()
  u.put(dir .. "/" .. me:gsub("[^%w]", "_"), me)
  local sleep = mp._sleep
  for _ = 1, 1000 do
    if u.count(dir) >= total then return me end
    sleep(0.02)
  end
  return me .. " (alone)"
end, u.range(total), 1)
local ranks, workers, n = {}, {}, 0
for i = 1, r.n do
  local rk = tostring(r[i]):match("^(%d+):")
  if rk then ranks[rk] = true end
  if not workers[r[i]] then n = n + 1 end
  workers[r[i]] = true
end
t.is(n, total, "a job of " .. total .. " waiting tasks ran on " .. total .. " distinct workers",
  table.concat(r, " "))
t.is(u.keys(ranks), u.keys(u.ranks(nranks)), "on every rank")

-- an Executor without max_workers too
local ex <close> = mp.Executor()
local futs = {}
for i = 1, 3 * total do futs[i] = ex:submit(function(x) return x + 1 end, i) end
local ok = true
for i = 1, #futs do if futs[i]:result(30) ~= i + 1 then ok = false end end
t.ok(ok, "mp.Executor() without max_workers runs tasks on the cluster")
t.is(rank(), "0", "the script ran on rank 0")
t.done()
