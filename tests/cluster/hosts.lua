-- SPDX-License-Identifier: MIT
-- cluster/hosts.lua: a job over two hosts (tests/cluster_hosts.sh: two
-- network namespaces with host names of their own), run on rank 0:
-- mp.cluster() shows both hosts and their ranks, and a Pool's work is
-- done on both, with the results a local computation gives.
--   arg[1]: scratch directory (the hosts share this machine's files);
--   arg[2..]: the hosts in rank order, each as NAME=RANK,RANK...
local t = require "tap"
local mp = require "luamp"
local u = require "cluster.util"

local scratch = assert(arg[1], "usage: hosts.lua SCRATCH NAME=R,R... NAME=R,R...")
local want_hosts, nranks, host_of = {}, 0, {}
for i = 2, #arg do
  local name, list = arg[i]:match("^([^=]+)=(.+)$")
  local ranks = {}
  for r in list:gmatch("%d+") do
    ranks[#ranks + 1] = tonumber(r)
    host_of[tonumber(r)] = name
    nranks = nranks + 1
  end
  want_hosts[#want_hosts + 1] = { name = name, ranks = ranks }
end
local meet, host, rank = u.meet, u.host, u.rank

t.is(host(), want_hosts[1].name, "rank 0 runs on the first host")
local c = type(mp.cluster) == "function" and mp.cluster()
if not t.is(type(c), "table", "mp.cluster() is a table under mpirun") then t.done() end
t.is(#c.ranks, nranks, "cluster.ranks lists the " .. nranks .. " ranks")
for i = 1, nranks do
  local r = c.ranks[i] or {}
  t.is(r.rank, i - 1, "cluster.ranks[" .. i .. "].rank")
  t.is(r.host, host_of[i - 1], "cluster.ranks[" .. i .. "].host is " .. tostring(host_of[i - 1]))
end
t.is(#(c.hosts or {}), #want_hosts, "cluster.hosts lists " .. #want_hosts .. " hosts")
local total = 0
for i, w in ipairs(want_hosts) do
  local h = (c.hosts or {})[i] or {}
  t.is(h.name, w.name, "cluster.hosts[" .. i .. "].name is " .. w.name)
  t.same(h.ranks, w.ranks, "cluster.hosts[" .. i .. "].ranks")
  local sum = 0
  for _, r in ipairs(w.ranks) do sum = sum + ((c.ranks[r + 1] or {}).workers or 0) end
  t.is(h.workers, sum, "cluster.hosts[" .. i .. "].workers is the sum of its ranks'")
  total = total + sum
end
t.is(c.workers, total, "cluster.workers is the sum of the hosts'")

local pool <close> = mp.Pool()
t.is(pool.processes, c.workers, "mp.Pool() has every worker of both hosts")
local dir = u.subdir(scratch, "meet")
local by = u.by(20)
local r = pool:map(function()
  local rk = meet(dir, nranks, by)
  return rk .. "@" .. host()
end, u.range(2 * c.workers), 1)
local hosts, ok = {}, true
for i = 1, r.n do
  local rk, h = tostring(r[i]):match("^(%d+)@(.+)$")
  if not rk or host_of[tonumber(rk)] ~= h then ok = false end
  if h then hosts[h] = true end
end
local names = {}
for _, w in ipairs(want_hosts) do names[#names + 1] = w.name end
table.sort(names)
t.is(u.keys(hosts), table.concat(names, ","), "a map's tasks ran on both hosts")
t.ok(ok, "each on the host of its rank", table.concat(r, " "))
local k = 7
local xs = u.range(500)
local want = { n = #xs }
for i = 1, #xs do want[i] = { i * k, tostring(i):rep(3) } end
t.same(pool:map(function(x) return { x * k, tostring(x):rep(3) } end, xs), want,
  "a map of 500 items gives what the local computation gives")
local big = pool:map(function(n) return string.rep("h", n) end, { 4 << 20, 1 })
t.ok(#big[1] == 4 << 20 and big[2] == "h", "results of megabytes cross hosts")
local e = t.raises(function() pool:apply(function(q) return q end, { mp.Queue() }) end, "luamp%.Queue",
  "a Queue is refused, naming it")
t.ok(mp.Error.is(e, "serialize"), "with kind serialize")
t.is(rank(), "0", "the script ran on rank 0")
t.done()
