-- SPDX-License-Identifier: MIT
-- cluster/over_2gib.lua: a task argument and a result of 2 GiB + 2 MiB cross
-- between rank 0 and a worker on rank 1, whole, as a BIG header and MPI
-- messages of at most 1 GiB (MPI counts are ints).  tests/big_messages.sh
-- runs it under mpirun -n 2 when the machine has the memory.
--   arg[1]: scratch directory (unused); arg[2]: the ranks of the job (2)
local t = require "tap"
local mp = require "luamp"
local u = require "cluster.util"

local MiB = 1 << 20
local c = mp.cluster()
if not t.is(type(c), "table", "mp.cluster() is a table under mpirun") then t.done() end

-- 1 GiB + 1 MiB; each 1 MiB block ends in "<>".  The checks look at
-- lengths and ends (a length cut to 32 bits breaks them), not at every
-- byte: copies of GiBs are slow on some machines here.
local function block() return string.rep("b", MiB - 2) .. "<>" end
local function whole(v, n)
  return type(v) == "table" and #v == 2 and #v[1] == n and #v[2] == n
    and v[1]:sub(-4) == "bb<>" and v[2]:sub(-4) == "bb<>" and v[2]:sub((1 << 30) - 1, (1 << 30) + 2) == "<>bb"
    and true or false
end
local big = string.rep(block(), 1025)
local n = #big

-- A Pool of one worker: on rank 1 (a size is spread from rank 1 on).
local pool <close> = mp.Pool(1)
local rank = u.rank
local where, size, ok = pool:apply(function(v, len)
  return rank(), #v[1] + #v[2], whole(v, len)
end, {{big, big}, n})
t.is(where, "1", "the task ran on rank 1")
t.is(size, 2 * n, "a task argument of 2 GiB + 2 MiB reached it")
t.ok(ok, "whole")
local split = mp.cluster().split
t.ok(split.sent > 0, "it went in parts", string.format("sent %d", split.sent))

big = nil
collectgarbage()
local r = pool:apply(function(blocks)
  local s = string.rep(string.rep("b", (1 << 20) - 2) .. "<>", blocks)
  return {s, s}
end, {1025})
t.ok(whole(r, n), "a result of 2 GiB + 2 MiB came back whole from rank 1")
r = nil
collectgarbage()
t.ok(mp.cluster().split.received > 0, "in parts")
t.is(pool:apply(function(s) return #s end, {"small"}), 5, "the pool goes on with small tasks")
t.done()
