-- SPDX-License-Identifier: MIT
-- AsyncResult, callbacks, map_async, and work going on while the script computes.
local t = require "tap"
local mp = require "luamp"

local function square(x) return x * x end

do
  local pool <close> = mp.Pool(2)
  local r = pool:apply_async(square, {7})
  t.is(r:get(10), 49, "apply_async result by get")
  t.is(r:ready(), true, "ready after get")
  t.is(r:successful(), true, "successful after a good task")
  t.is(r:wait(0), true, "wait on a ready result is true")

  local slow = pool:apply_async(function() mp._sleep(0.3) return 1 end)
  t.is(slow:wait(0.01), false, "wait(timeout) is false before the task ends")
  t.is(slow:ready(), false, "ready is false before the task ends")
  t.raises(function() slow:successful() end, "not ready", "successful raises when not ready")
  local e = t.raises(function() slow:get(0.01) end, "timed out", "get(timeout) raises before the task ends")
  t.ok(mp.Error.is(e, "timeout"), "that error has kind timeout")
  t.is(slow:get(), 1, "the same result can still be got after a timeout")

  local bad = pool:apply_async(function() error("nope") end)
  t.raises(function() bad:get() end, "nope", "get raises the task's error")
  t.is(bad:successful(), false, "successful is false after a failed task")

  -- callbacks run in the parent before get returns
  local seen = {}
  local r2 = pool:apply_async(function(a) return a, a + 1 end, {1},
    {callback = function(x, y) seen.cb = {x, y, mp.current_process().name} end})
  r2:get()
  t.same(seen.cb, {1, 2, "MainProcess"}, "callback gets all return values, in the main process, before get returns")

  local r3 = pool:apply_async(function() error("cb-err") end, {},
    {error_callback = function(err) seen.ecb = err end})
  r3:wait()
  t.ok(mp.Error.is(seen.ecb, "remote") and seen.ecb.message:find("cb%-err"), "error_callback gets the error")

  -- a callback that raises harms nothing
  local r4 = pool:apply_async(square, {3}, {callback = function() error("callback broke") end})
  t.is(r4:get(), 9, "a raising callback does not reach get")
  t.is(pool:apply(square, {4}), 16, "a raising callback does not harm the pool")

  -- map_async with callback
  local got
  local m = pool:map_async(square, {1, 2, 3}, {callback = function(res) got = res end})
  t.same(m:get(), {1, 4, 9, n = 3}, "map_async get returns the results table")
  t.same(got, {1, 4, 9, n = 3}, "map_async callback got the results table")
  t.same(pool:starmap_async(math.max, {{1, 5}, {7, 2}}):get(), {5, 7, n = 2}, "starmap_async works")

  -- many async results
  local rs = {}
  for i = 1, 2000 do rs[i] = pool:apply_async(square, {i}) end
  local ok = true
  for i = 1, 2000 do if rs[i]:get() ~= i * i then ok = false end end
  t.ok(ok, "2000 apply_async results are all correct")
end

-- callbacks have run by pool:join at the latest
do
  local count = 0
  local pool = mp.Pool(2)
  for i = 1, 50 do pool:apply_async(square, {i}, {callback = function() count = count + 1 end}) end
  pool:close()
  pool:join()
  t.is(count, 50, "every callback has run when join returns")
end

-- Work goes on while the script computes: tasks return 4 MiB each (more
-- than any pipe holds); later tasks leave marker files.  The main script
-- never calls luamp while it waits for the markers: they only appear if
-- the big results left the workers without the parent reading them.
do
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir " .. dir))
  local pool <close> = mp.Pool(2)
  local big = {}
  for i = 1, 8 do big[i] = pool:apply_async(function() return string.rep("r", 4 << 20) end) end
  for i = 1, 4 do
    pool:apply_async(function(path) local f = assert(io.open(path, "w")); f:close() end, {dir .. "/m" .. i})
  end
  local found = 0
  local deadline = os.time() + 30
  while found < 4 and os.time() <= deadline do
    found = 0
    for i = 1, 4 do
      local f = io.open(dir .. "/m" .. i)
      if f then f:close(); found = found + 1 end
    end
    local x = 0
    for j = 1, 1e5 do x = x + j end   -- the script computes, no luamp call
  end
  t.is(found, 4, "tasks run to completion, large results drained, while the script computes")
  local ok = true
  for i = 1, 8 do if #big[i]:get() ~= 4 << 20 then ok = false end end
  t.ok(ok, "the large results are all intact afterwards")
  for i = 1, 4 do os.remove(dir .. "/m" .. i) end
  os.remove(dir)
end

-- The parent settles plain apply results in C (queue.c, settle_apply) and
-- hands the rest to Lua; a result needing Lua that arrives right after
-- plain ones is held for the next call, never lost.
do
  local pool <close> = mp.Pool(1)
  local function wait_results(n)
    local deadline = mp._now() + 10
    while pool._rq:qsize() < n and mp._now() < deadline do mp._sleep(0.001) end
    return pool._rq:qsize()
  end
  local got_cb
  local plain = pool:apply_async(square, {3})
  local with_cb = pool:apply_async(square, {4}, {callback = function(v) got_cb = v end})
  local failing = pool:apply_async(function() error("boom") end)
  local undecodable = pool:apply_async(function() return mp.Queue() end)
  local plain2 = pool:apply_async(function() return 1, nil, 3 end)
  t.is(wait_results(5), 5, "five results wait in the results queue")
  t.is(plain:get(5), 9, "a plain apply result settled in C")
  t.is(got_cb, 16, "the callback of the result after it ran (it was held, not lost)")
  t.is(with_cb:get(5), 16, "that result is there too")
  t.raises(function() failing:get(5) end, "boom", "a failed task after them raises its error")
  t.raises(function() undecodable:get(5) end, "cannot receive the result",
    "a result that cannot be decoded here fails its task")
  t.same({plain2:get(5)}, {1, nil, 3}, "a later plain result keeps its values, holes included")
  t.is(select("#", plain2:get()), 3, "and their number")

  -- results settled in C still tell the pool what a task costs: after a
  -- task of 50 ms, map_async of cheap items goes one item per chunk
  t.is(pool:apply_async(function() mp._sleep(0.05) return true end):get(5), true, "a slow apply")
  t.is(pool:map_async(square, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}).chunksize, 1,
    "its cost sizes later chunks")
end

-- Results of 64 KiB and more are decoded where they lie in the result
-- queue's ring (lent, shmq.h).  One that needs Lua, right after one
-- settled in C, is copied aside for the next call before the ring gets
-- its room back.
do
  local pool <close> = mp.Pool(1)
  local deadline = mp._now() + 10
  local a = pool:apply_async(string.rep, {"a", 100000})
  local got
  local b = pool:apply_async(string.rep, {"b", 200000}, {callback = function(v) got = v end})
  local c = pool:apply_async(string.rep, {"c", 300000})
  while pool._rq:qsize() < 3 and mp._now() < deadline do mp._sleep(0.001) end
  t.is(pool._rq:qsize(), 3, "three big results wait in the results queue")
  t.ok(a:get(5) == string.rep("a", 100000), "a big plain result settled in C is intact")
  t.ok(got == string.rep("b", 200000), "the big result held after it reached its callback intact")
  t.ok(b:get(5) == got and c:get(5) == string.rep("c", 300000), "so did the one after that")
  local blobs = pool:starmap(string.rep, {{"p", 70000}, {"q", 1 << 20}, {"r", 65536}})
  t.ok(blobs[1] == string.rep("p", 70000) and blobs[2] == string.rep("q", 1 << 20)
    and blobs[3] == string.rep("r", 65536), "big map results decoded in place are intact")
end

-- Chunks of a plain map are settled in C too (settle_map); jobs that need
-- Lua (callbacks, imap, errors) still get theirs.
do
  local pool <close> = mp.Pool(2)
  local xs = {}
  for i = 1, 200 do xs[i] = i end
  local got
  local a = pool:map_async(square, xs, 7)
  local b = pool:map_async(square, xs, {chunksize = 5, callback = function(r) got = r end})
  local c = pool:map_async(function(x) if x == 150 then error("bad item") end return x end, xs, 3)
  local it = pool:imap(square, xs, 4)
  local ra = a:get(10)
  local ok = ra.n == 200
  for i = 1, 200 do ok = ok and ra[i] == i * i end
  t.ok(ok, "a map settled in C has every result in place")
  b:wait(10)
  t.ok(got and got[200] == 40000 and got.n == 200, "a map with a callback gets its results")
  t.raises(function() c:get(10) end, "bad item", "a map with a failing item raises it")
  local sum = 0
  for _, v in it do sum = sum + v end
  t.is(sum, 2686700, "imap alongside sees every result")
  t.is(next(pool._jobs), nil, "no job is left in the books")
  t.is(next(pool._inflight), nil, "no task is left in flight")
  -- the cost of items settled in C sizes later chunks
  pool._cost = nil
  pool:map(function(x) mp._sleep(0.03) return x end, {1, 2, 3, 4}, 1)
  t.is(pool:map_async(square, xs).chunksize, 1, "slow map items make later chunks small")
end

t.done()
