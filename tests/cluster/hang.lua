-- SPDX-License-Identifier: MIT
-- cluster/hang.lua: a map that runs on every rank and does not end, for
-- tests/cluster_signals.sh to interrupt or to kill a rank under.  Run on
-- rank 0 of `mpirun -n NRANKS luamp-mpi`.  Leaves SCRATCH/ready once a
-- task runs on every rank, and SCRATCH/caught with the kind of the error
-- that ended the map's get (then raises it again, uncaught).
--   arg[1]: scratch directory; arg[2]: the ranks of the job
local mp = require "luamp"
local u = require "cluster.util"

local scratch = assert(arg[1], "usage: hang.lua SCRATCH NRANKS")
local nranks = assert(tonumber(arg[2]))
local meet = u.meet

local c = assert(mp.cluster(), "mp.cluster() is nil: not a cluster")
local pool <close> = mp.Pool()
local dir = u.subdir(scratch, "meet")
local by = u.by(30)
local r = pool:map_async(function()
  meet(dir, nranks, by)
  mp._sleep(120)
end, u.range(2 * c.workers), 1)
for _ = 1, 1500 do
  local all = true
  for i = 0, nranks - 1 do
    if not u.exists(dir .. "/rank-" .. i) then all = false end
  end
  if all then u.put(scratch .. "/ready", "") break end
  mp._sleep(0.02)
end
local ok, e = pcall(r.get, r)
u.put(scratch .. "/caught", ok and "no error" or (mp.Error.is(e) and e.kind or tostring(e)))
if not ok then error(e, 0) end
