-- SPDX-License-Identifier: MIT
-- cluster_bench.lua: the luamp side of luamp's cluster benchmark (bench/cluster).
--
-- Usage:
--   mpirun -n N luamp-mpi [-j J] bench/cluster_bench.lua WORKLOAD [--n N] [--workers W | --remote]
--   luamp bench/cluster_bench.lua WORKLOAD --workers W      (a local Pool(W))
--   luamp bench/cluster_bench.lua --list
--
-- Runs ONE workload and prints ONE line of JSON on stdout, with the fields
-- of bench/python/mpi4py_bench.py (its mpi4py.futures twin): same workload
-- names, counts and sizes, same units.  Under luamp-mpi (mp.cluster() is
-- a table) the Pool is mp.Pool(), which spans every worker of every rank,
-- or mp.Pool(W) with --workers, or with --remote a Pool of the workers of
-- the ranks other than 0 only (see remote_workers); under plain luamp it
-- is a local Pool(W), the baseline a cluster Pool with the same number of
-- workers is held to.
-- The Pool is created and warmed up (four trivial tasks per worker,
-- chunksize 1) before the clock starts.
--
--   map_small         pool:map(square, n ints), n = 1,000,000, luamp's
--                     default chunksize (as map_small in luamp_bench.lua)
--   apply_latency     n x pool:apply(where, {i}), one at a time, each timed
--                     alone and counted by the rank of the worker that ran
--                     it (`where` returns i * 1000 + that rank, from the
--                     MPI launcher's environment, which the workers of a
--                     rank inherit): remote_us is the mean round trip to a
--                     worker on another rank than 0, local_us to one of
--                     rank 0's own workers
--   apply_async_many  n x pool:apply_async(square, {i}), then get on each
--   map_1mib          pool:map(string.len, n distinct 1 MiB strings),
--                     n = 256, luamp's default chunksize (as
--                     map_large_distinct in luamp_bench.lua)
--
-- Units: per_op_us = microseconds per operation, ops_per_s = operations
-- per second, mb_per_s = MiB (2^20 bytes) of payload per second.

local mp = require "luamp"

local MIB = 1 << 20
local now = mp._now

-- ------------------------------------------------------------- JSON output
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\"
    elseif c == "\n" then return "\\n" elseif c == "\t" then return "\\t" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local json_value

-- An object whose key order is kept ({ {"key", value}, ... } with field
-- `ordered = true`), or an array (a sequence without other keys).
local function json_object(t)
  local parts = {}
  if t.ordered then
    for _, kv in ipairs(t) do
      if kv[2] ~= nil then parts[#parts + 1] = json_string(kv[1]) .. ": " .. json_value(kv[2]) end
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  if count == #t then
    for i = 1, #t do parts[i] = json_value(t[i]) end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = t[k]
    if v == nil then v = t[tonumber(k)] end
    parts[#parts + 1] = json_string(k) .. ": " .. json_value(v)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function json_value(v)
  local t = type(v)
  if v == nil then return "null"
  elseif t == "boolean" then return tostring(v)
  elseif t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return string.format("%.14g", v)
  elseif t == "string" then return json_string(v)
  elseif t == "table" then return json_object(v)
  end
  return json_string(tostring(v))
end

local function O(...)        -- ordered object from alternating keys and values
  local t, a = { ordered = true }, table.pack(...)
  for i = 1, a.n, 2 do t[#t + 1] = { a[i], a[i + 1] } end
  return t
end

-- ------------------------------------------------------------- task bodies
local function ident(x) return x end
local function square(x) return x * x end

-- i * 1000 + the MPI rank of the process that runs it (0 outside MPI):
-- a worker inherits its rank's launcher environment.
local function where(i)
  local r = os.getenv("OMPI_COMM_WORLD_RANK") or os.getenv("PMIX_RANK") or os.getenv("PMI_RANK")
  return i * 1000 + (tonumber(r) or 0)
end

local function range(n)          -- {0, 1, ..., n-1}, like Python's range(n)
  local t = {}
  for i = 1, n do t[i] = i - 1 end
  return t
end

-- ------------------------------------------------------------------ set-up
local cluster = mp.cluster and mp.cluster() or nil

-- --remote: a Pool of as many workers as the ranks other than 0 have,
-- which luamp-mpi places on those ranks first (README.md, "Running on a
-- cluster": a size caps the total, spread from rank 1 on, rank 0 last);
-- every task then runs on another rank, which apply_latency checks and
-- reports (remote_n).
local function remote_workers()
  local w = 0
  for i = 2, #cluster.ranks do w = w + cluster.ranks[i].workers end
  return w
end

local function make_pool(o)
  collectgarbage()
  if o.remote and cluster and #cluster.ranks > 1 then o.workers = remote_workers() end
  local pool
  if o.workers then pool = mp.Pool(o.workers) else pool = mp.Pool() end
  local w = o.workers or pool.processes or (cluster and cluster.workers) or mp.cpu_count()
  pool:map(ident, range(w * 4), 1)     -- make sure all workers are up
  collectgarbage()
  return pool, w
end

local function done(pool) pool:close(); pool:join() end

-- ------------------------------------------------------------------ workloads
local W, order = {}, {}
local function workload(name, f) W[name] = f; order[#order + 1] = name end

workload("map_small", function(o)
  local n = o.n or 1000000
  local items = range(n)
  local pool, w = make_pool(o)
  local t0 = now()
  local out = pool:map(square, items)
  local dt = now() - t0
  done(pool)
  assert(out.n == n and out[n] == (n - 1) * (n - 1), "wrong map result")
  return w, O("n", n, "chunksize", "default", "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6)
end)

-- (the same on luamp's side: its default chunksize is already map_small's)
workload("map_small_default", function(o) return W.map_small(o) end)

workload("apply_latency", function(o)
  local n = o.n or 5000
  local pool, w = make_pool(o)
  for i = 0, 199 do pool:apply(ident, { i }) end
  local by_rank, remote, lsum, rsum = {}, {}, 0, 0
  local t0 = now()
  for i = 0, n - 1 do
    local t1 = now()
    local v = pool:apply(where, { i })
    local d = now() - t1
    local r = v % 1000
    assert(v // 1000 == i, "wrong apply result")
    by_rank[r] = (by_rank[r] or 0) + 1
    if r == 0 then lsum = lsum + d
    else rsum = rsum + d; remote[#remote + 1] = d end
  end
  local dt = now() - t0
  done(pool)
  local served = {}
  for r in pairs(by_rank) do served[#served + 1] = r end
  table.sort(served)
  local counts = { ordered = true }
  for _, r in ipairs(served) do counts[#counts + 1] = { tostring(r), by_rank[r] } end
  local rn, ln = #remote, n - #remote
  local median
  if rn > 0 then
    table.sort(remote)
    median = remote[(rn + 1) // 2] * 1e6
  end
  return w, O("n", n, "seconds", dt, "per_op_us", dt / n * 1e6,
              "served_by_ranks", served, "tasks_by_rank", counts,
              "remote_us", rn > 0 and rsum / rn * 1e6 or nil, "remote_median_us", median,
              "remote_n", rn,
              "local_us", ln > 0 and lsum / ln * 1e6 or nil, "local_n", ln)
end)

workload("apply_async_many", function(o)
  local n = o.n or 20000
  local pool, w = make_pool(o)
  local t0 = now()
  local rs = {}
  for i = 0, n - 1 do rs[i + 1] = pool:apply_async(square, { i }) end
  local total = 0
  for i = 1, n do total = total + rs[i]:get() end
  local dt = now() - t0
  done(pool)
  local want = 0
  for i = 0, n - 1 do want = want + i * i end
  assert(total == want, "wrong total")
  return w, O("n", n, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6)
end)

-- map(len) over n distinct 1 MiB strings, `times` times over the same
-- pool, the last one timed.  map_1mib: once (the rings, buffers and heaps
-- of every process grow during it, in fresh pages, which on a VM cost as
-- much as the copies); map_1mib_warm: three times, the steady rate.
local function map_1mib(o, times)
  local n = o.n or 256
  local data = {}
  for i = 0, n - 1 do data[i + 1] = string.rep(string.rep(string.char(i & 0xFF), 1024), 1024) end
  local pool, w = make_pool(o)
  local out, dt
  for _ = 1, times do
    collectgarbage()
    local t0 = now()
    out = pool:map(string.len, data)
    dt = now() - t0
  end
  done(pool)
  local sum = 0
  for i = 1, out.n do sum = sum + out[i] end
  assert(sum == n * MIB, "wrong sum")
  return w, O("n", n, "chunksize", "default", "seconds", dt, "mb_per_s", n / dt, "ops_per_s", n / dt)
end

workload("map_1mib", function(o) return map_1mib(o, 1) end)
workload("map_1mib_warm", function(o) return map_1mib(o, 3) end)

-- ------------------------------------------------------------------ main
local function usage()
  io.stderr:write("usage: luamp cluster_bench.lua WORKLOAD [--n N] [--workers W | --remote] | --list\n")
  os.exit(2)
end

local args, opts = {}, {}
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--list" then opts.list = true
    elseif a == "--remote" then opts.remote = true
    elseif a == "--n" or a == "--workers" then
      local v = math.tointeger(tonumber(arg[i + 1]))
      if not v then usage() end
      if v ~= 0 then opts[a:sub(3)] = v end
      i = i + 1
    elseif a:sub(1, 2) == "--" then usage()
    else args[#args + 1] = a end
    i = i + 1
  end
end

if opts.list or not args[1] then
  for _, name in ipairs(order) do print(name) end
  os.exit(0)
end

local f = W[args[1]]
if not f then
  io.stderr:write("unknown workload '", args[1], "'; try --list\n")
  os.exit(2)
end

local workers, r = f(opts)
local out = O("workload", args[1], "side", cluster and "cluster" or "local",
              "ranks", cluster and #cluster.ranks or 1, "workers", workers)
if cluster then
  local per = {}
  for i, rk in ipairs(cluster.ranks) do per[i] = rk.workers end
  out[#out + 1] = { "workers_by_rank", per }
  out[#out + 1] = { "hosts", #cluster.hosts }
end
for _, kv in ipairs(r) do out[#out + 1] = kv end
out[#out + 1] = { "luamp", mp.version }
out[#out + 1] = { "lua", _VERSION }
print(json_value(out))
io.stdout:flush()
