-- SPDX-License-Identifier: MIT
-- luamp_bench.lua: the luamp side of luamp's benchmarks.
--
-- Usage:  luamp bench/luamp_bench.lua WORKLOAD [--n N] [--size BYTES] [--workers W]
--         luamp bench/luamp_bench.lua --list
--
-- Runs ONE workload and prints ONE line of JSON on stdout, in the format of
-- bench/python/mpbench.py (its Python twin): same workload names, same
-- counts, sizes and chunksizes, same fields and units.  Pools are created
-- and warmed up (one trivial task per worker) before the clock starts,
-- except in pool_start, whose subject is the pool lifecycle itself.
--
-- Units: per_op_us = microseconds per operation, ops_per_s = operations
-- per second, mb_per_s = MiB (2^20 bytes) of payload per second.
--
-- Items are 0 .. n-1, as Python's range(n), so both sides move exactly the
-- same values.  Reference workloads keep each side's *default* chunksize
-- where the reference says "default chunksize" (Python: ceil(n / (4 *
-- processes)); luamp: the same, capped at 100,000 per chunk).

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

-- An object whose key order is kept: { {"key", value}, ... } with field
-- `ordered = true`; plain tables are emitted with sorted keys.
local function json_object(t)
  local parts = {}
  if not t.ordered and #t > 0 then
    local count = 0
    for _ in pairs(t) do count = count + 1 end
    if count == #t then
      for i = 1, #t do parts[i] = json_value(t[i]) end
      return "[" .. table.concat(parts, ", ") .. "]"
    end
  end
  if t.ordered then
    for _, kv in ipairs(t) do
      if kv[2] ~= nil then parts[#parts + 1] = json_string(kv[1]) .. ": " .. json_value(kv[2]) end
    end
  else
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = json_string(k) .. ": " .. json_value(t[k]) end
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
-- bytes([i & 0xFF]) * MIB: the same bytes.  Not string.rep(c, MIB), which
-- copies one byte at a time (4 ms a blob, 80 times Python's memset) and
-- would time string.rep instead of moving results.
local function make_blob(i) return string.rep(string.rep(string.char(i & 0xFF), 1024), 1024) end

local function cpu_task(n)
  local s = 0
  for i = 0, n - 1 do s = s + i * i % 7 end
  return s
end

local function crashy(i)
  if i == 3 then os.exit(1) end
  return i
end

local function range(n)          -- {0, 1, ..., n-1}, like Python's range(n)
  local t = {}
  for i = 1, n do t[i] = i - 1 end
  return t
end

-- A message of exactly `size` bytes, distinct for each i (the index is in
-- its first bytes), the same bytes as mpbench.py's message(i, size).
local function message(i, size)
  local head = string.format("%08d", i % 100000000)
  if size <= #head then return head:sub(1, size) end
  return head .. string.rep("x", size - #head)
end

local function warm_pool(nproc)
  nproc = nproc or 2
  -- What the set-up left for the collector (the temporary strings that
  -- built the messages) is collected now, not in the timed part; the
  -- Python side does the same.
  collectgarbage()
  local pool = mp.Pool(nproc)
  pool:map(ident, range(nproc * 4), 1)     -- make sure all workers are up
  return pool
end

local function done(pool) pool:close(); pool:join() end

-- ---------------------------------------------------------------- /proc
local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function kib_field(text, name)
  return tonumber(text:match("\n" .. name .. ":%s*(%d+) kB") or text:match("^" .. name .. ":%s*(%d+) kB"))
end

local function children_of(pid)
  local s = read_file(string.format("/proc/%d/task/%d/children", pid, pid)) or ""
  local list = {}
  for p in s:gmatch("%d+") do list[#list + 1] = tonumber(p) end
  return list
end

-- ------------------------------------------------------------------ workloads
local W = {}
local order = {}
local function workload(name, f) W[name] = f; order[#order + 1] = name end

workload("pool_start", function(o)
  local n = o.n or 50
  local t0 = now()
  for _ = 1, n do
    local pool = mp.Pool(2)
    assert(pool:apply(ident, { 1 }) == 1)
    pool:close()
    pool:join()
  end
  local dt = now() - t0
  return O("n", n, "seconds", dt, "ms_per_op", dt / n * 1e3, "per_op_us", dt / n * 1e6)
end)

workload("apply_latency", function(o)
  local n = o.n or 20000
  local pool = warm_pool()
  for i = 0, 199 do pool:apply(ident, { i }) end
  local t0 = now()
  for i = 0, n - 1 do pool:apply(ident, { i }) end
  local dt = now() - t0
  done(pool)
  return O("n", n, "seconds", dt, "per_op_us", dt / n * 1e6)
end)

workload("apply_async_many", function(o)
  local n = o.n or 100000
  local pool = warm_pool()
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
  return O("n", n, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6)
end)

local function map_(n, chunksize, nproc)
  local pool = warm_pool(nproc)
  local items = range(n)
  local t0 = now()
  local out = pool:map(square, items, chunksize)
  local dt = now() - t0
  done(pool)
  assert(out.n == n and out[n] == (n - 1) * (n - 1), "wrong map result")
  return O("n", n, "workers", nproc, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6)
end

workload("map_small", function(o) return map_(o.n or 1000000, nil) end)
workload("map_chunk1", function(o) return map_(o.n or 100000, 1) end)

workload("imap_unordered", function(o)
  local n = o.n or 200000
  local pool = warm_pool()
  local items = range(n)
  local t0 = now()
  local total = 0
  for _, v in pool:imap_unordered(square, items, 64) do total = total + v end
  local dt = now() - t0
  done(pool)
  local want = 0
  for i = 0, n - 1 do want = want + i * i end
  assert(total == want, "wrong total")
  return O("n", n, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6)
end)

workload("map_large_distinct", function(o)
  local n = o.n or 256
  local data = {}
  for i = 0, n - 1 do data[i + 1] = string.rep(string.char(i & 0xFF), MIB) end
  local pool = warm_pool()
  local t0 = now()
  local out = pool:map(string.len, data)
  local dt = now() - t0
  done(pool)
  local sum = 0
  for i = 1, out.n do sum = sum + out[i] end
  assert(sum == n * MIB, "wrong sum")
  return O("n", n, "seconds", dt, "mb_per_s", n / dt, "ops_per_s", n / dt)
end)

workload("map_large_result", function(o)
  local n = o.n or 256
  local pool = warm_pool()
  local t0 = now()
  local out = pool:map(make_blob, range(n))
  local dt = now() - t0
  done(pool)
  assert(out.n == n, "wrong count")
  for i = 1, n do assert(#out[i] == MIB, "wrong blob") end
  return O("n", n, "seconds", dt, "mb_per_s", n / dt, "ops_per_s", n / dt)
end)

-- Queue and pipe: `items[i]` (or the integer i-1 when items is nil).
local function producer(q, n, items)
  if items then
    for i = 1, n do q:put(items[i]) end
  else
    for i = 0, n - 1 do q:put(i) end
  end
end

local function queue_(n, items, bytes)
  local q = mp.Queue()
  local p = mp.Process{ target = producer, args = { q, n, items } }
  collectgarbage()   -- the set-up's garbage, as in warm_pool
  local t0 = now()
  p:start()
  for _ = 1, n do q:get() end
  local dt = now() - t0
  p:join()
  assert(p.exitcode == 0, "producer failed")
  local r = O("n", n, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6)
  if bytes then r[#r + 1] = { "mb_per_s", n * bytes / MIB / dt } end
  return r
end

workload("queue_small", function(o) return queue_(o.n or 200000, nil) end)

workload("queue_1k", function(o)
  local n = o.n or 200000
  local item = string.rep("q", 1024)
  -- the same string n times, as Python puts the same bytes object n times
  return queue_(n, setmetatable({}, { __index = function() return item end }), 1024)
end)

local function pipe_sender(conn, n, items)
  if items then
    for i = 1, n do conn:send(items[i]) end
  else
    for i = 0, n - 1 do conn:send(i) end
  end
  conn:close()
end

local function pipe_oneway(n, duplex, items, bytes)
  local reader, writer = mp.Pipe(duplex)
  local p = mp.Process{ target = pipe_sender, args = { writer, n, items } }
  collectgarbage()   -- the set-up's garbage, as in warm_pool
  local t0 = now()
  p:start()
  writer:close()
  local s, got = 0, 0
  if items then
    for _ = 1, n do got = got + #reader:recv() end
  else
    for _ = 1, n do s = s + reader:recv() end
  end
  local dt = now() - t0
  p:join()
  if items then assert(got == n * bytes, "lost bytes")
  else assert(s == n * (n - 1) // 2, "wrong sum") end
  local r = O("n", n, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6)
  if bytes then r[#r + 1] = { "size", bytes }; r[#r + 1] = { "mb_per_s", n * bytes / MIB / dt } end
  return r
end

workload("pipe_small", function(o) return pipe_oneway(o.n or 200000, true) end)
workload("pipe_small_simplex", function(o) return pipe_oneway(o.n or 200000, false) end)

local function echo(conn)
  while true do
    local x = conn:recv()
    if x == nil or x == false then break end
    conn:send(x)
  end
end

workload("pipe_pingpong", function(o)
  local n = o.n or 20000
  local a, b = mp.Pipe()
  local p = mp.Process{ target = echo, args = { b } }
  p:start()
  for i = 0, 199 do a:send(i); a:recv() end
  local t0 = now()
  for i = 0, n - 1 do
    a:send(i)
    assert(a:recv() == i)
  end
  local dt = now() - t0
  a:send(false)            -- nil cannot travel: false stops the echo
  p:join()
  return O("n", n, "seconds", dt, "per_op_us", dt / n * 1e6)
end)

-- cpu_speedup and its ceiling: serial and parallel timings alternate
-- CPU_ROUNDS times and each keeps its fastest, on every side alike (the
-- Python side does the same): a shared VM's speed drifts within seconds,
-- and one slow phase otherwise decides the ratio.
local CPU_ROUNDS = 3

local function cpu_speedup(n, nproc)
  local items = {}
  for i = 1, 8 do items[i] = n end
  local pool = warm_pool(nproc)
  local ts, tp = math.huge, math.huge
  local serial, par
  for _ = 1, CPU_ROUNDS do
    local t0 = now()
    serial = {}
    for i = 1, 8 do serial[i] = cpu_task(items[i]) end
    ts = math.min(ts, now() - t0)
    t0 = now()
    par = pool:map(cpu_task, items)
    tp = math.min(tp, now() - t0)
  end
  done(pool)
  for i = 1, 8 do assert(par[i] == serial[i], "wrong result") end
  local sp = ts / tp
  return O("n", n, "items", 8, "workers", nproc, "seconds", tp, "serial_s", ts, "parallel_s", tp,
           "speedup", sp, "efficiency", sp / math.min(nproc, mp.cpu_count()))
end

workload("cpu_speedup", function(o) return cpu_speedup(o.n or 3000000, 2) end)

-- value_lock: `with v.get_lock(): v.value += 1` in Python
local function incr(v, n)
  local lock = v:get_lock()
  for _ = 1, n do
    local _ <close> = lock:guard()
    v.value = v.value + 1
  end
end

workload("value_lock", function(o)
  local n = o.n or 10000                   -- per process
  local v = mp.Value("i", 0)
  local procs = {}
  for i = 1, 2 do procs[i] = mp.Process{ target = incr, args = { v, n } } end
  local t0 = now()
  for _, p in ipairs(procs) do p:start() end
  for _, p in ipairs(procs) do p:join() end
  local dt = now() - t0
  assert(v.value == 2 * n, "lost updates: " .. v.value .. " of " .. 2 * n)
  -- the same number of locked increments in one process, uncontended
  local u = mp.Value("i", 0)
  local t1 = now()
  incr(u, 2 * n)
  local du = now() - t1
  return O("n", 2 * n, "seconds", dt, "ops_per_s", 2 * n / dt, "final", v.value, "correct", true,
           "uncontended_ops_per_s", 2 * n / du)
end)

-- manager_get, manager_set, manager_incr: mp.Manager's dict against
-- Python's Manager().dict() (1,000 integer keys)
local function manager_dict(m)
  local d = m:dict()
  for i = 0, 999 do d[i] = i end
  return d
end

workload("manager_get", function(o)
  local n = o.n or 100000
  local m <close> = mp.Manager()
  local d = manager_dict(m)
  local t0 = now()
  for i = 0, n - 1 do local _ = d[i % 1000] end
  local dt = now() - t0
  return O("n", n, "seconds", dt, "per_op_us", dt / n * 1e6, "ops_per_s", n / dt)
end)

workload("manager_set", function(o)
  local n = o.n or 100000
  local m <close> = mp.Manager()
  local d = manager_dict(m)
  local t0 = now()
  for i = 0, n - 1 do d[i % 1000] = i end
  local dt = now() - t0
  return O("n", n, "seconds", dt, "per_op_us", dt / n * 1e6, "ops_per_s", n / dt)
end)

local function manager_incr(d, n)
  local add = function(v) return v + 1 end
  for _ = 1, n do d:update_key("n", add) end
end

workload("manager_incr", function(o)
  local n = o.n or 10000                   -- per process
  local m <close> = mp.Manager()
  local d = m:dict{ n = 0 }
  local procs = {}
  for i = 1, 2 do procs[i] = mp.Process{ target = manager_incr, args = { d, n } } end
  local t0 = now()
  for _, p in ipairs(procs) do p:start() end
  for _, p in ipairs(procs) do p:join() end
  local dt = now() - t0
  assert(d.n == 2 * n, "lost updates: " .. d.n .. " of " .. 2 * n)
  return O("n", 2 * n, "seconds", dt, "ops_per_s", 2 * n / dt, "final", d.n, "correct", true)
end)

-- Future:cancel on n pending futures: the 2 workers are busy with tasks
-- that wait on an Event, so the n futures submitted behind them all wait
-- in the task queue.
workload("cancel", function(o)
  local n = o.n or 100000
  local gate = mp.Event()
  local ex = mp.Executor{ max_workers = 2 }
  local blockers = {}
  for i = 1, 2 do blockers[i] = ex:submit(function(g) g:wait(); return 0 end, gate) end
  while not (blockers[1]:running() and blockers[2]:running()) do mp._sleep(0.001) end
  local double = function(x) return 2 * x end
  local t0 = now()
  local futs = {}
  for i = 0, n - 1 do futs[i + 1] = ex:submit(double, i) end
  local t1 = now()
  collectgarbage()
  local t2 = now()
  local cancelled = 0
  for i = 1, n do
    if futs[i]:cancel() then cancelled = cancelled + 1 end
  end
  local dt = now() - t2
  gate:set()
  ex:shutdown()
  return O("n", n, "cancelled", cancelled, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6,
           "submit_s", t1 - t0)
end)

-- The ceiling for cpu_speedup: the same 8 loops, serial and then shared by
-- W bare processes (8/W loops each) that exchange no message at all; the
-- parent only forks them and waits for their exit.
local function loops(n, k)
  local s = 0
  for _ = 1, k do s = s + cpu_task(n) end
  if s < 0 then os.exit(3) end       -- keep the work observable
end

workload("cpu_ceiling", function(o)
  local n, nproc = o.n or 3000000, o.workers or 2
  local ts, tp = math.huge, math.huge
  for _ = 1, CPU_ROUNDS do
    local t0 = now()
    loops(n, 8)
    ts = math.min(ts, now() - t0)
    local procs = {}
    for w = 1, nproc do
      local k = 8 // nproc + (w <= 8 % nproc and 1 or 0)
      procs[w] = mp.Process{ target = loops, args = { n, k } }
    end
    t0 = now()
    for _, p in ipairs(procs) do p:start() end
    for _, p in ipairs(procs) do p:join() end
    tp = math.min(tp, now() - t0)
    for _, p in ipairs(procs) do assert(p.exitcode == 0, "loop process failed") end
  end
  local sp = ts / tp
  return O("n", n, "items", 8, "workers", nproc, "seconds", tp, "serial_s", ts, "parallel_s", tp,
           "speedup", sp, "efficiency", sp / math.min(nproc, mp.cpu_count()))
end)

-- ------------------------------------------------------------ sweeps
-- Throughput against message size (pipe, queue, map) and against the
-- number of workers (map, cpu).  The runner picks n per size so each
-- point takes a fraction of a second; both sides get the same n.

local function messages(n, size)
  local t = {}
  for i = 1, n do t[i] = message(i - 1, size) end
  return t
end

workload("pipe_size", function(o)
  local size, n = o.size or 1024, o.n or 10000
  return pipe_oneway(n, true, messages(n, size), size)
end)

workload("queue_size", function(o)
  local size, n = o.size or 1024, o.n or 10000
  local r = queue_(n, messages(n, size), size)
  table.insert(r, #r, { "size", size })
  return r
end)

workload("map_size", function(o)
  local size, n = o.size or 1024, o.n or 10000
  local data = messages(n, size)
  local pool = warm_pool()
  local t0 = now()
  local out = pool:map(string.len, data)
  local dt = now() - t0
  done(pool)
  local sum = 0
  for i = 1, out.n do sum = sum + out[i] end
  assert(sum == n * size, "wrong sum")
  return O("n", n, "size", size, "seconds", dt, "ops_per_s", n / dt, "per_op_us", dt / n * 1e6,
           "mb_per_s", n * size / MIB / dt)
end)

workload("map_workers", function(o) return map_(o.n or 1000000, nil, o.workers or 2) end)
workload("cpu_workers", function(o) return cpu_speedup(o.n or 3000000, o.workers or 2) end)

-- ------------------------------------------------------------ memory
-- Private pages of each worker after Pool(2) has started and run one
-- trivial task per worker: what a worker costs beyond the pages it still
-- shares with the parent.
workload("worker_rss", function(o)
  local pool = warm_pool(2)
  mp._sleep(0.2)
  local me = mp.current_process().pid
  local parent = read_file(string.format("/proc/%d/smaps_rollup", me)) or ""
  local worst, pss, list = 0, 0, {}
  for _, pid in ipairs(children_of(me)) do
    local s = read_file(string.format("/proc/%d/smaps_rollup", pid))
    if s then
      local priv = (kib_field(s, "Private_Clean") or 0) + (kib_field(s, "Private_Dirty") or 0)
                   + (kib_field(s, "Private_Hugetlb") or 0)
      list[#list + 1] = priv
      if priv > worst then worst = priv end
      pss = math.max(pss, kib_field(s, "Pss") or 0)
    end
  end
  done(pool)
  assert(#list == 2, "expected 2 workers, found " .. #list)
  return O("n", 2, "seconds", nil, "private_kib", worst, "workers_private_kib", list,
           "worker_pss_kib", pss, "parent_rss_kib", kib_field(parent, "Rss"))
end)

-- imap over an iterator of 10 M items (chunksize 1024): the parent's peak
-- RSS (VmHWM) must stay bounded, whatever the input length.
workload("map_iter_rss", function(o)
  local n = o.n or 10000000
  local pool = warm_pool(2)
  local i = -1
  local function src()
    i = i + 1
    if i < n then return i end
  end
  local t0 = now()
  local count, bad = 0, 0
  for idx, v in pool:imap(square, src, 1024) do
    count = count + 1
    if v ~= (idx - 1) * (idx - 1) then bad = bad + 1 end
  end
  local dt = now() - t0
  done(pool)
  assert(count == n and bad == 0, "wrong imap results")
  local status = read_file("/proc/self/status") or ""
  local hwm = kib_field(status, "VmHWM") or 0
  return O("n", n, "seconds", dt, "ops_per_s", n / dt, "vmhwm_kib", hwm, "vmhwm_mib", hwm / 1024)
end)

-- ------------------------------------------------ crash behaviour probes
-- Each probe runs as its own process under `timeout LIMIT` (worker_crash).
local function describe_error(e)
  if mp.Error.is(e) then
    return string.format("raised luamp.Error kind=%q: %s", e.kind, tostring(e.message))
  end
  return "raised " .. tostring(e)
end

local function protect(f)
  local t0 = now()
  local ok, r = pcall(f)
  if ok then return r end
  return describe_error(r) .. string.format(" (after %.3fs)", now() - t0)
end

local function show_list(t)
  local parts = {}
  for i = 1, t.n or #t do parts[i] = tostring(t[i]) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local CRASH = {}
local crash_order = {}
local function probe(name, f) CRASH[name] = f; crash_order[#crash_order + 1] = name end

probe("pool_map", function()
  return protect(function()
    local pool = mp.Pool(2)
    local out = pool:map(crashy, range(8))
    done(pool)
    return "returned " .. show_list(out)
  end)
end)

probe("pool_apply", function()
  return protect(function()
    local pool = mp.Pool(2)
    local out = pool:apply(crashy, { 3 })
    done(pool)
    return "returned " .. tostring(out)
  end)
end)

probe("pool_get_timeout", function()
  local pool = mp.Pool(2)
  local r = pool:map_async(crashy, range(8))
  local ok, e = pcall(r.get, r, 5)
  local msg
  if ok then msg = "get(5) returned"
  elseif mp.Error.is(e, "timeout") then msg = "map_async():get(5) raised kind \"timeout\""
  else msg = "map_async():get(5) " .. describe_error(e) end
  local ok2, after = pcall(pool.apply, pool, ident, { 42 })
  if ok2 then msg = msg .. "; pool still usable afterwards: apply -> " .. tostring(after)
  else msg = msg .. "; apply afterwards " .. describe_error(after) end
  pool:terminate()
  return msg
end)

probe("executor_map", function()
  if not mp.Executor then return "not implemented (mp.Executor does not exist yet)" end
  return protect(function()
    local ex = mp.Executor{ max_workers = 2 }
    local out = {}
    for i, v in ex:map(crashy, range(8)) do out[i] = v end
    ex:shutdown()
    return "returned " .. show_list(out)
  end)
end)

probe("executor_submit", function()
  if not mp.Executor then return "not implemented (mp.Executor does not exist yet)" end
  local ex = mp.Executor{ max_workers = 2 }
  local msg = protect(function()
    local f = ex:submit(crashy, 3)
    return "future:result() returned " .. tostring(f:result())
  end)
  local ok, v = pcall(function() return ex:submit(ident, 1):result() end)
  if ok then msg = msg .. "; executor still usable: submit -> " .. tostring(v)
  else msg = msg .. "; later submit " .. describe_error(v) end
  ex:shutdown{ wait = false, cancel_futures = true }
  return msg
end)

local function die() os.exit(1) end

probe("queue_get_dead_producer", function()
  local q = mp.Queue()
  local p = mp.Process{ target = die, args = { q } }
  p:start()
  local x, why = q:get()        -- the producer died without putting anything
  return "returned " .. tostring(x) .. (why and (", " .. tostring(why)) or "")
end)

probe("pipe_recv_peer_dead_end_open", function()
  local a, b = mp.Pipe()
  local p = mp.Process{ target = die, args = { b } }
  p:start()
  local x, why = a:recv()       -- the parent still holds b: no EOF ever arrives
  return "returned " .. tostring(x) .. (why and (", " .. tostring(why)) or "")
end)

probe("pipe_recv_peer_dead_end_closed", function()
  local a, b = mp.Pipe()
  local p = mp.Process{ target = die, args = { b } }
  p:start()
  b:close()                     -- the parent drops its copy of the child's end
  local x, why = a:recv()
  return "recv() returned " .. tostring(x) .. (why and (", " .. tostring(why)) or "")
end)

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function pgroup_members(pgid)
  local left = 0
  local ls = io.popen("ls /proc")
  for d in ls:lines() do
    if d:match("^%d+$") then
      local st = read_file("/proc/" .. d .. "/stat")
      if st then
        local rest = st:match("%) (.*)$")
        local fields = {}
        for f in (rest or ""):gmatch("%S+") do fields[#fields + 1] = f end
        if tonumber(fields[3]) == pgid and fields[1] ~= "Z" then left = left + 1 end
      end
    end
  end
  ls:close()
  return left
end

workload("worker_crash", function(o)
  local limit = o.n or 20
  local exe = arg and arg[-1] or "luamp"
  local script = arg and arg[0]
  local res = { ordered = true }
  local errfile = os.tmpname()
  for _, name in ipairs(crash_order) do
    -- `timeout` leads its own process group; its pid is printed first.
    local cmd = string.format("timeout %d %s %s _crash %s 2>%s & echo $!; wait $!; echo \"rc=$?\"",
      limit, shell_quote(exe), shell_quote(script), name, shell_quote(errfile))
    local t0 = now()
    local pipe = io.popen(cmd, "r")
    local lines = {}
    for l in pipe:lines() do lines[#lines + 1] = l end
    pipe:close()
    local dt = now() - t0
    mp._sleep(0.2)
    local pgid = tonumber(table.remove(lines, 1))
    local rc = tonumber((table.remove(lines) or ""):match("rc=(%d+)"))
    local left = pgid and pgroup_members(pgid) or nil
    local what
    if rc == 124 then what = string.format("HANGS (killed by timeout after %ds)", limit)
    else what = table.concat(lines, "\n"):match("^%s*(.-)%s*$") end
    if what == "" then what = "no output" end
    local err = read_file(errfile) or ""
    local tail = ""
    for l in err:gmatch("[^\n]+") do if l:match("%S") then tail = l end end
    res[#res + 1] = { name, O("rc", rc, "seconds", math.floor(dt * 1000 + 0.5) / 1000,
                             "behaviour", what, "stderr_tail", tail, "leftover_processes", left) }
  end
  os.remove(errfile)
  return O("n", limit, "seconds", nil, "probes", res)
end)

-- ------------------------------------------------------------------ main
local function usage()
  io.stderr:write("usage: luamp luamp_bench.lua WORKLOAD [--n N] [--size BYTES] [--workers W] | --list\n")
  os.exit(2)
end

local args, opts = {}, {}
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--list" then opts.list = true
    elseif a == "--n" or a == "--size" or a == "--workers" then
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

if args[1] == "_crash" then
  local f = CRASH[args[2]]
  if not f then usage() end
  print(f())
  io.stdout:flush()
  os.exit(0)
end

local f = W[args[1]]
if not f then
  io.stderr:write("unknown workload '", args[1], "'; try --list\n")
  os.exit(2)
end

local r = f(opts)
local out = O("workload", args[1])
for _, kv in ipairs(r) do out[#out + 1] = kv end
out[#out + 1] = { "luamp", mp.version }
out[#out + 1] = { "lua", _VERSION }
print(json_value(out))
io.stdout:flush()
