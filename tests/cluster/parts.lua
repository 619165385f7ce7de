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
-- A task the node has no memory to queue fails, and only it: rank 1's
-- supervisor is held to 24 MiB more address space than it has, so that
-- its task queue cannot grow to the 32 MiB a 30 MiB task needs.  (The
-- node then receives the task a part at a time and drops it; it once
-- ended the whole MPI job.)
do
  local one <close> = mp.Pool(1)
  t.is(one:apply(u.rank), "1", "(the one worker runs on rank 1)")
  local sup = mp.cluster().ranks[2].pid
  local vm
  for line in io.lines("/proc/" .. sup .. "/status") do vm = vm or tonumber(line:match("^VmSize:%s+(%d+) kB")) end
  mp.run({ "prlimit", "--pid", tostring(sup), "--as=" .. (vm + 24 * 1024) * 1024 }, { check = true })
  local ok, e = pcall(one.apply, one, function(s) return #s end, { string.rep("m", 30 << 20) })
  t.ok(not ok and mp.Error.is(e, "serialize"), "a task rank 1 has no memory to queue fails with kind serialize",
    tostring(e))
  t.like(e and e.message, "^cannot queue the task on host .+: no memory for a message of 30 MiB %(",
    "the message names the host and the size")
  t.is(one:apply(function(s) return #s end, { "small" }), 5, "the job goes on: rank 1 runs the next task")
end
local split = mp.cluster().split
t.ok(split.sent > 0 and split.received > 0, "rank 0 sent and received messages in parts",
  string.format("sent %d, received %d", split.sent, split.received))
t.done()
