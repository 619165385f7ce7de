-- SPDX-License-Identifier: MIT
-- cluster/parts.lua: messages split into parts.  tests/cluster.sh runs it
-- under mpirun -n 3 with LUAMP_MPI_PART=700 (bytes), so that tasks and
-- results of a few bytes to 100 KB cross as a BIG header and parts, as
-- messages over 1 GiB do (MPI counts are ints; tests/cluster/over_2gib.lua
-- sends real ones).
--   arg[1]: scratch directory; arg[2]: the ranks of the job (3)
local t = require "tap"
local mp = require "luamp"
local u = require "cluster.util"

local scratch = assert(arg[1], "usage: parts.lua SCRATCH NRANKS")
local nranks = tonumber(arg[2] or "3")
local c = mp.cluster()
if not t.is(type(c), "table", "mp.cluster() is a table under mpirun") then t.done() end
t.ok(os.getenv("LUAMP_MPI_PART") ~= nil, "LUAMP_MPI_PART is set for rank 0")

local pool <close> = mp.Pool()
local items = {}
for i = 1, 60 do items[i] = string.rep(string.char(65 + i % 26), (i * 1711) % 100000 + i) end
local dir = u.subdir(scratch, "parts")
local r = pool:map(function(s)
  local rk = u.meet(dir, nranks, 20)
  return { rk, s:reverse() .. "|" .. #s }
end, items, 1)
local right, ranks = true, {}
for i = 1, #items do
  if r[i][2] ~= items[i]:reverse() .. "|" .. #items[i] then right = false end
  ranks[r[i][1]] = true
end
t.ok(right, "60 tasks of up to 100 KB, split into parts both ways, give the local results")
t.is(u.keys(ranks), u.keys(u.ranks(nranks)), "and ran on every rank")
local big = string.rep("xyz", 70000)
t.is(pool:apply(function(s, n) return s:rep(n) end, { big, 3 }), big:rep(3), "an apply of 210 KB returning 630 KB")
-- One after the other, on one worker (of rank 1): records of 100 KB in
-- fresh 256 KiB rings, rank 1's task queue and rank 0's result queue, so
-- that the third and the sixth wrap around the ring's end, and their
-- parts are received into the ring in two pieces.
do
  local one <close> = mp.Pool(1)
  local right = true
  for i = 1, 6 do
    local s = string.rep(string.char(96 + i), 100000 + i) .. "|" .. i
    local r = one:apply(function(x) return x:reverse() end, {s})
    if r ~= s:reverse() then right = false end
  end
  t.ok(right, "six tasks and results of 100 KB in turn, some wrapping around a ring, come back whole")
end
local split = mp.cluster().split
t.ok(split.sent > 0 and split.received > 0, "rank 0 sent and received messages in parts",
  string.format("sent %d, received %d", split.sent, split.received))
t.done()
