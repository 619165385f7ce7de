-- SPDX-License-Identifier: MIT
-- cluster/util.lua: helpers of the cluster scripts (tests/cluster/*.lua,
-- run by tests/cluster*.sh on rank 0 of an mpirun job).  Tasks take these
-- functions as upvalues (local copies), so they travel as bytecode and
-- run in the worker, wherever the pool put it.
--
-- Where a task ran: the rank of the node supervisor that started its
-- worker, from OMPI_COMM_WORLD_RANK (mpirun sets it for each rank, and a
-- worker inherits it from its supervisor), and the host, from the
-- kernel's host name (a worker's UTS namespace is its rank's).
--
-- The scratch directory (arg[1], from the harness) is on a file system
-- every rank sees (all the ranks of these tests run on this machine):
-- tasks leave marks there to tell each other, and rank 0, what they did.
local M = {}

function M.rank()
  return os.getenv("OMPI_COMM_WORLD_RANK") or "none"
end

function M.host()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("l")
  if f then f:close() end
  return h or "unknown"
end

function M.pid()
  return require("luamp").current_process().pid
end

-- "rank:host:pid" of the process running this
function M.where()
  return M.rank() .. ":" .. M.host() .. ":" .. M.pid()
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() return true end
  return false
end
M.exists = exists

-- Leaves the mark dir/rank-R of this task's rank, then waits until every
-- rank 0 .. nranks-1 has left its mark, or until os.time() passes `by`
-- (a deadline rank 0 computes, M.by(secs), shared by all the tasks of a
-- job: however the pool deals them, the job ends by then).  A task on a
-- rank whose workers came up first does not finish until every rank has
-- taken work, so that a job of a few items reaches every rank if the pool
-- deals them to every rank.  Returns this task's rank and whether every
-- rank was seen.  (A `by` under a million is a number of seconds from
-- when this task calls meet, each task its own.)
function M.meet(dir, nranks, by)
  if by < 1e6 then by = os.time() + by end
  local r = M.rank()
  local f = assert(io.open(dir .. "/rank-" .. r, "w"))
  f:close()
  local sleep = require("luamp")._sleep
  repeat
    local all = true
    for i = 0, nranks - 1 do
      if not exists(dir .. "/rank-" .. i) then all = false break end
    end
    if all then return r, true end
    sleep(0.02)
  until os.time() > by
  return r, false
end

-- The deadline of a job's meetings: secs seconds from now (the tasks of
-- these tests run on this machine's clock)
function M.by(secs)
  return os.time() + secs
end

-- True for exactly one caller across every process, per name: the first
-- to make directory dir/name (mkdir is atomic).
function M.first(dir, name)
  return os.execute("mkdir " .. dir .. "/" .. name .. " 2>/dev/null") == true
end

-- Writes s to file path (for rank 0 to read).
function M.put(path, s)
  local f = assert(io.open(path .. ".tmp", "w"))
  f:write(s)
  f:close()
  assert(os.rename(path .. ".tmp", path))
end

function M.get(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- How many files directory dir holds
function M.count(dir)
  local p, n = io.popen("ls " .. dir), 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

-- A scratch subdirectory, new: dir/name
function M.subdir(dir, name)
  local p = dir .. "/" .. name
  assert(os.execute("rm -rf " .. p .. " && mkdir -p " .. p))
  return p
end

-- Set of the values of list l (l.n items if it has n)
function M.set(l)
  local s = {}
  for i = 1, l.n or #l do if l[i] ~= nil then s[l[i]] = true end end
  return s
end

function M.range(n)
  local l = {}
  for i = 1, n do l[i] = i end
  return l
end

-- The ranks' numbers "0" .. "n-1" as a set, to compare with set(...)
function M.ranks(n)
  local s = {}
  for i = 0, n - 1 do s[tostring(i)] = true end
  return s
end

function M.keys(s)
  local l = {}
  for k in pairs(s) do l[#l + 1] = tostring(k) end
  table.sort(l)
  return table.concat(l, ",")
end

return M
