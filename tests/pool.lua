-- SPDX-License-Identifier: MIT
-- Pool: map, starmap, apply, errors, closures, chunking, lifecycle.
local t = require "tap"
local mp = require "luamp"

local function square(x) return x * x end

do
  local pool <close> = mp.Pool(2)
  t.is(pool.processes, 2, "processes is the pool size")
  local r = pool:map(square, {1, 2, 3, 4, 5})
  t.same(r, {1, 4, 9, 16, 25, n = 5}, "map returns results in input order with n")

  local xs = {}
  for i = 1, 1000 do xs[i] = i end
  for _, cs in ipairs({1, 7, 1000}) do
    local out = pool:map(square, xs, cs)
    local ok = out.n == 1000
    for i = 1, 1000 do if out[i] ~= i * i then ok = false end end
    t.ok(ok, "map keeps input order with chunksize " .. cs)
  end
  t.same(pool:map(square, {}), {n = 0}, "map over an empty table returns an empty result")

  -- closures travel with their upvalues
  local k = 10
  t.same(pool:map(function(x) return x * k end, {1, 2, 3}), {10, 20, 30, n = 3},
    "a closure's upvalue travels with it")
  k = 100
  t.same(pool:map(function(x) return x * k end, {1}), {100, n = 1},
    "a closure's upvalue is read at call time, not cached")
  -- C functions by name
  t.same(pool:map(math.sqrt, {4, 9}), {2.0, 3.0, n = 2}, "a C function travels by name")
  t.same(pool:map(string.upper, {"a", "b"}), {"A", "B", n = 2}, "string.upper travels by name")

  -- holes: items.n, nil results
  local r2 = pool:map(function(x) if x then return x end end, {1, nil, 3, n = 3})
  t.is(r2.n, 3, "items.n is honoured")
  t.ok(r2[1] == 1 and r2[2] == nil and r2[3] == 3, "nil items and results keep their places")

  -- items are read through metamethods when the table has them
  local proxy = setmetatable({}, { __index = function(_, i) return math.type(i) and i * 10 or nil end,
    __len = function() return 5 end })
  t.same(pool:map(function(x) return x + 1 end, proxy, 2), {11, 21, 31, 41, 51, n = 5},
    "map reads a proxy table's items through __index and __len")
  local seen = {}
  for i, v in pool:imap(function(x) return x + 1 end, proxy, 2) do seen[i] = v end
  t.same(seen, {11, 21, 31, 41, 51}, "imap reads a proxy table's items through __index too")
  -- results land at their indexes whatever the chunking
  local big = {}
  for i = 1, 1000 do big[i] = i end
  local out = pool:map(function(x) return -x end, big, 7)
  local right = out.n == 1000
  for i = 1, 1000 do right = right and out[i] == -i end
  t.ok(right, "1,000 results in chunks of 7 each land at their index")

  -- math.type survives, multiple returns keep the first in map
  local r3 = pool:map(function(x) return x, "second" end, {1, 1.0})
  t.is(math.type(r3[1]), "integer", "an integer result stays an integer")
  t.is(math.type(r3[2]), "float", "a float result stays a float")

  -- starmap
  t.same(pool:starmap(function(a, b) return a + b end, {{1, 2}, {3, 4}}), {3, 7, n = 2},
    "starmap unpacks each argument list")
  t.same(pool:starmap(function(a, b, c) return c end, {{1, nil, 3, n = 3}}), {3, n = 1},
    "starmap honours n in argument lists")

  -- apply: all return values
  local a, b, c = pool:apply(function(x, y) return x + y, x * y, nil end, {3, 4})
  t.ok(a == 7 and b == 12 and c == nil, "apply returns every return value")
  t.is(select("#", pool:apply(function() return 1, nil, nil end)), 3, "apply keeps trailing nils")
  t.is(select("#", pool:apply(function() end)), 0, "apply of a function that returns nothing returns nothing")
  -- (the values are encoded straight from the worker's stack)
  local s1, s2, s3 = pool:apply(function() local x = {1}; return x, {x}, x end)
  t.ok(rawequal(s1, s3) and rawequal(s2[1], s1), "a table returned twice comes back as one table")
  local m, f = pool:apply(function() return string, {string.format} end)
  t.ok(rawequal(m, string) and rawequal(f[1], string.format), "modules and their functions come back by name")
  t.raises(function() pool:apply(function() return 1, coroutine.create(print) end) end,
    "cannot send result%[2%]: a coroutine", "an unsendable second value is named")
  t.is(pool:apply(function() return mp.current_process().name end):match("^PoolWorker%-%d+$") ~= nil, true,
    "a task runs in a PoolWorker and can use the luamp module upvalue")
  t.ok(pool:apply(function() return mp.current_process().pid end) ~= mp.current_process().pid,
    "a task runs in another process")

  -- errors: a task's error fails that task only
  local err = t.raises(function()
    pool:map(function(x) if x == 3 then error("three is bad") end return x end, {1, 2, 3, 4, 5}, 1)
  end, "three is bad", "map raises the task's error")
  t.ok(mp.Error.is(err, "remote"), "the error has kind remote")
  t.like(err.message, "three is bad", "the error's message is the task's message")
  t.like(err.traceback or "", "remote traceback %(pid %d+%)", "the error carries the remote traceback")
  t.ok(type(err.pid) == "number", "the error names the worker's pid")
  t.same(pool:map(square, {6}), {36, n = 1}, "the pool stays usable after a task error")

  local e2 = t.raises(function() pool:apply(function() error({code = 42}) end) end,
    "error object is a table", "a table error value is described")
  t.same(e2.value, {code = 42}, "the original error value is carried")

  local e3 = t.raises(function()
    pool:map(function(x) if x % 2 == 0 then error("even " .. x) end return x end, {1, 2, 3, 4}, 1)
  end, "even 2", "map raises the first failing item's error in input order")

  local e6 = t.raises(function() pool:apply(function() error({co = coroutine.create(print)}) end) end,
    "error object is a table", "an error value that cannot travel still fails the task")
  t.is(type(e6.value), "string", "an error value that cannot travel degrades to its description")

  -- Once a worker knows a function, its apply tasks run in C (queue.c,
  -- q_serve): the same outcomes, however they end.
  do
    local p1 <close> = mp.Pool(1)
    local function outcome(kind, ...)
      if kind == "error" then error("boom") end
      if kind == "table error" then error({code = 7}) end
      if kind == "unsendable" then return 1, coroutine.create(print) end
      if kind == "unsendable error" then error({co = coroutine.create(print)}) end
      if kind == "count" then return select("#", ...), ... end
      if kind == "self" then local x = ...; return rawequal(x[2], x) end
      return kind
    end
    t.is(p1:apply(outcome, {"warm"}), "warm", "a function the worker then knows")
    t.is(p1:apply(outcome, {"again"}), "again", "run again")
    local e = t.raises(function() p1:apply(outcome, {"error"}) end, "boom", "its error")
    t.like(e.traceback or "", "remote traceback", "with the remote traceback")
    local e1 = t.raises(function() p1:apply(outcome, {"table error"}) end, "error object", "a table error")
    t.same(e1.value, {code = 7}, "its table error value")
    t.raises(function() p1:apply(outcome, {"unsendable"}) end, "cannot send result%[2%]: a coroutine",
      "an unsendable result names it")
    local e2 = t.raises(function() p1:apply(outcome, {"unsendable error"}) end, "error object is a table",
      "an unsendable error value still fails the task")
    t.is(type(e2.value), "string", "and degrades to its description")
    t.same({p1:apply(outcome, {"count", 1, nil, 3, n = 4})}, {3, 1, nil, 3}, "args.n counts the arguments, holes too")
    t.same({p1:apply(outcome, {"count"})}, {0}, "no arguments after kind")
    local a = {"self"}
    a[2] = a
    t.is(p1:apply(outcome, a), true, "args that refer to the args table itself")
    t.is(p1:apply(outcome, {"after"}), "after", "the worker goes on")

    -- small map chunks of a known function run in C as well
    local function item(x)
      if x == 3 then error("three") end
      if x == 5 then return coroutine.create(print) end
      if x == 7 then return nil end
      return x * 2
    end
    t.same(p1:map(item, {1, 2}, 1), {2, 4, n = 2}, "a map chunk of a function the worker knows")
    t.same(p1:map(item, {1, 2, 4, 6}, 2), {2, 4, 8, 12, n = 4}, "chunks of two")
    local r7 = p1:map(item, {6, 7, 8}, 3)
    t.ok(r7.n == 3 and r7[1] == 12 and r7[2] == nil and r7[3] == 16, "a nil result leaves a hole")
    t.raises(function() p1:map(item, {1, 2, 3, 4}, 2) end, "three", "a failing item raises its error")
    local e5 = t.raises(function() p1:map(item, {4, 5, 6}, 3) end, "cannot send result%[2%]: a coroutine",
      "an unsendable item result names its index")
    t.ok(mp.Error.is(e5, "serialize"), "and has kind serialize")
    local a = p1:map_async(item, {1, 3, 4, 5}, 4)
    a:wait(5)
    t.raises(function() a:get() end, "three", "a chunk with a failing and an unsendable item fails at the first")
    t.same(p1:map(item, {8}, 1), {16, n = 1}, "the worker goes on after them")
  end

  -- in a big chunk (run in Lua), failing items are found where they failed
  do
    local xs = {}
    for i = 1, 100 do xs[i] = i end
    local function picky(x) if x == 10 or x == 20 or x == 75 then error("no " .. x) end return -x end
    local failed, ok = {}, true
    local it = pool:imap(picky, xs, 50)
    for k = 1, 100 do
      local good, i, v = pcall(it)
      if good then
        ok = ok and v == -i
      else
        failed[#failed + 1] = tostring(i):match("no (%d+)")
      end
    end
    t.same(failed, {"10", "20", "75"}, "each failing item of a 50-item chunk fails alone, in place")
    t.ok(ok, "and every other item of it has its result")
    local sm = pool:starmap_async(function(a, b) return a + b end, {{1, 2}, {3, 4}, {5}, {5, 6}}, 4)
    t.raises(function() sm:get(5) end, "arithmetic on a nil value", "starmap: an item that fails raises")
  end

  -- automatic chunksize batches small tasks: 800 items on 2 workers go in
  -- chunks of 100, each run by one worker from start to end.  (A pool of
  -- its own: one that ran slow tasks before, on a loaded machine, may have
  -- measured a cost that makes smaller chunks, rightly.)
  local fresh <close> = mp.Pool(2)
  local pids = fresh:map_async(function() return mp.current_process().pid end, (function()
    local xs = {} for i = 1, 800 do xs[i] = i end return xs end)()):get()
  local blocks_ok = true
  for b = 0, 7 do
    for i = b * 100 + 2, b * 100 + 100 do
      if pids[i] ~= pids[b * 100 + 1] then blocks_ok = false end
    end
  end
  t.ok(blocks_ok, "the automatic chunksize sends 800 items to 2 workers in chunks of 100")
  -- map (which waits anyway) sends one item per worker first and sizes the
  -- chunks of the rest by what that cost and returned
  local xs = {}
  for i = 1, 802 do xs[i] = i end
  local sq = pool:map(function(x) return x * x end, xs)
  t.ok(sq.n == 802 and sq[1] == 1 and sq[2] == 4 and sq[802] == 802 * 802, "a probed map returns every result")
  t.is(pool._chunksize, 100, "800 cheap items after the 2 probes go in chunks of 100")
  local small = {}
  for i = 1, 800 do small[i] = "item" .. i end
  local r_small = pool:map_async(string.len, small)
  t.is(r_small.chunksize, 100, "800 short strings go in chunks of 100 too")
  r_small:get()
  -- big items go in chunks of about 2 MiB
  local big = {}
  for i = 1, 64 do big[i] = string.rep(string.char(64 + i % 26), 512 << 10) end
  local r_big = pool:map_async(string.len, big)
  t.is(r_big.chunksize, 4, "64 strings of 512 KiB go in chunks of 4 (2 MiB), not 8")
  local lens = r_big:get()
  t.ok(lens.n == 64 and lens[1] == 512 << 10 and lens[64] == 512 << 10, "and all arrive")
  -- map (which waits anyway) puts the chunks of more than 16 MiB as earlier
  -- ones come back, at most 4 per worker in the task queue: the worker
  -- sees how many wait there (items 3, 29 and 55, "C", pause first, so
  -- that all 15 chunks would be there by then if they were put at once)
  do
    local p1 <close> = mp.Pool(1)
    local tq = p1._tq
    local waiting = p1:map(function(s)
      if s:byte(1) == 67 then mp._sleep(0.1) end
      return tq:qsize()
    end, big)
    local most = 0
    for i = 1, waiting.n do most = math.max(most, waiting[i]) end
    t.ok(waiting.n == 64 and most <= 4, "a map of 32 MiB keeps at most 4 chunks per worker waiting (saw "
      .. most .. " of 15)")
  end
  big = nil
  -- (slow tasks lower the pool's cost-based chunksize for later calls, so
  -- this one comes last)
  local ids = {}
  for i = 1, 40 do ids[i] = i end
  local function blob(i) return string.rep(string.rep(string.char(48 + i), 1024), 1024) end
  local blobs = pool:map(blob, ids)
  -- (at most 2: a task that took over 10 ms, on a loaded machine or under
  -- a sanitizer, makes the cost rule give 1)
  t.ok(pool._chunksize <= 2, "results of 1 MiB make chunks of 2 items (2 MiB) or fewer, not 5",
    "chunksize " .. tostring(pool._chunksize))
  local blobs_ok = blobs.n == 40
  for i = 1, 40 do blobs_ok = blobs_ok and blobs[i] == blob(i) end
  t.ok(blobs_ok, "and all 40 results are right")
  blobs = nil

  -- unsendable arguments raise in the caller, naming the path
  local e4 = t.raises(function() pool:apply(print, {1, {f = coroutine.create(print)}}) end,
    "cannot send args%[2%]%.f: a coroutine", "an unsendable argument names its path")
  t.ok(mp.Error.is(e4, "serialize"), "that error has kind serialize")
  t.raises(function() pool:map(square, {1, 2, io.stdout}) end,
    "cannot send items%[3%]: a userdata", "an unsendable map item names its index")
  t.raises(function() pool:map(function() return coroutine.create(print) end, {1}) end,
    "cannot send result%[1%]: a coroutine", "an unsendable result fails that task with its path")
  t.same(pool:map(square, {7}), {49, n = 1}, "the pool stays usable after a result that cannot travel")
  local e5 = t.raises(function() pool:apply(function() return coroutine.create(print) end) end,
    "coroutine", "apply of an unsendable result raises")
  t.ok(mp.Error.is(e5, "serialize"), "an unsendable result has kind serialize")

  -- argument checks
  t.raises(function() pool:map(5, {}) end, "bad argument #1 to 'map' %(function expected, got number%)",
    "map checks its function")
  t.raises(function() pool:map(square, 5) end, "bad argument #2 to 'map' %(table expected, got number%)",
    "map checks its items")
  t.raises(function() pool:map(square, {1}, 0) end, "positive integer expected", "map checks chunksize")
end

t.raises(function() mp.Pool("x") end, "bad argument #1 to 'Pool' %(positive integer expected, got string%)",
  "Pool checks its size")
t.raises(function() mp.Pool(0) end, "positive integer expected", "Pool refuses 0 processes")

-- default size, initializer and globals
do
  local pool <close> = mp.Pool{processes = 2, initializer = function(v) WORKER_STATE = v end, initargs = {"init!"}}
  t.is(pool:apply(function() return WORKER_STATE end), "init!", "the initializer runs in each worker with initargs")
end
do
  local pool <close> = mp.Pool()
  t.is(pool.processes, mp.cpu_count(), "Pool() defaults to cpu_count (or -j)")
end
do
  local pool <close> = mp.Pool{processes = 1, initializer = function() error("init broke") end}
  t.raises(function() pool:apply(square, {2}) end, "initializer failed.*init broke",
    "a failing initializer fails the tasks with its message")
end

-- maxtasksperchild: workers are replaced, results are still all there
do
  local pool <close> = mp.Pool{processes = 2, maxtasksperchild = 2}
  local r = pool:map(function() return mp.current_process().pid end, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 1)
  local pids = {}
  local count = 0
  for i = 1, 10 do if not pids[r[i]] then pids[r[i]] = true; count = count + 1 end end
  t.ok(count >= 5, "maxtasksperchild=2 used at least 5 workers for 10 tasks (" .. count .. ")")
end

-- close, join, terminate, use after close
do
  local pool = mp.Pool(2)
  local ar = pool:apply_async(function() mp._sleep(0.2); return "done" end)
  pool:close()
  local e = t.raises(function() pool:apply(square, {1}) end, "closed", "a closed pool refuses tasks")
  t.ok(mp.Error.is(e, "closed"), "that error has kind closed")
  pool:join()
  t.is(ar:ready(), true, "join waits for submitted tasks")
  t.is(ar:get(), "done", "a task submitted before close completes")
  t.raises(function() mp.Pool(1):join() end, "running Pool", "join on a running pool raises")
end

do
  local pool = mp.Pool(2)
  local ar = pool:apply_async(function() mp._sleep(30) end)
  pool:terminate()
  local e = t.raises(function() ar:get(5) end, "cancelled", "terminate cancels unfinished tasks")
  t.ok(mp.Error.is(e, "cancelled"), "their error has kind cancelled")
  pool:join()
end

-- <close> terminates when the scope is left by an error
do
  local ar
  local ok = pcall(function()
    local pool <close> = mp.Pool(1)
    ar = pool:apply_async(function() mp._sleep(30) end)
    error("leave")
  end)
  t.ok(not ok, "the scope was left by an error")
  t.raises(function() ar:get(5) end, "cancelled", "<close> terminated the pool on error")
end

-- a pool cannot be used from a child process
do
  local pool <close> = mp.Pool(1)
  local q = mp.Queue()
  local p = mp.Process{target = function()
    local ok, e = pcall(pool.map, pool, square, {1})
    q:put(tostring(mp.Error.is(e) and e.kind) .. ": " .. tostring(e))
  end}
  p:start(); p:join()
  t.like(q:get(5), "^usage: cannot use a Pool of process", "a pool refuses to be used from a forked child, kind usage")
end

-- A worker whose collector the task stopped is not collected behind its
-- back: receiving steps the collector (sys.c, luamp_collect_for) only
-- while it runs.
do
  local items = {}
  for i = 1, 64 do    -- 1 MiB each, in strings too small to be sent as spans
    local s = {}
    for j = 1, 128 do s[j] = string.rep(string.char(64 + (i + j) % 26), 8 << 10) .. i end
    items[i] = s
  end
  local stopped <close> = mp.Pool { processes = 1, initializer = function() collectgarbage("stop") end }
  local counts = stopped:map(function() return collectgarbage("count") end, items, { chunksize = 1 })
  local lo, hi = math.huge, 0
  for i = 1, #counts do lo, hi = math.min(lo, counts[i]), math.max(hi, counts[i]) end
  local mib = (hi - lo) / 1024
  t.ok(mib > 48, "64 MiB of tasks stay in a worker whose collector was stopped", string.format("%.1f MiB", mib))
end

t.done()
