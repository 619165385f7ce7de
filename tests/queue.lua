-- SPDX-License-Identifier: MIT
-- Queue: FIFO, timeouts, bounded size, many producers/consumers, big items,
-- nothing lost when a producer exits.
local t = require "tap"
local mp = require "luamp"

do
  local q = mp.Queue()
  t.is(q:empty(), true, "a new queue is empty")
  t.is(q:put(1), true, "put returns true")
  q:put("two"); q:put({3}); q:put(4.5)
  t.is(q:qsize(), 4, "qsize counts the items")
  t.is(q:get(), 1, "get returns items in FIFO order (1)")
  t.is(q:get(), "two", "get returns items in FIFO order (2)")
  t.same(q:get(), {3}, "get returns items in FIFO order (3)")
  t.is(q:get(), 4.5, "get returns items in FIFO order (4)")
  local v, why = q:get(0.05)
  t.is(v, nil, "get returns nil at the timeout")
  t.is(why, "timeout", "get says timeout")
  v, why = q:get_nowait()
  t.is(why, "empty", "get_nowait says empty")
  t.is(q:full(), false, "an unbounded queue is never full")
end

do
  local q = mp.Queue(2)
  t.is(q:put_nowait("a"), true, "put_nowait succeeds with room")
  q:put("b")
  t.is(q:full(), true, "a bounded queue is full at maxsize")
  t.is(q:put_nowait("c"), false, "put_nowait returns false when full")
  t.is(q:put("c", 0.05), false, "put with a timeout returns false when still full")
  t.is(q:get(), "a", "the queue kept its first item")
  t.is(q:put("c", 1), true, "put succeeds once there is room")
  t.is(q:qsize(), 2, "qsize is exact")
end

do
  local q = mp.Queue()
  t.raises(function() q:put(nil) end, "nil cannot be put", "nil cannot be put on a queue")
  local err = t.raises(function() q:put({1, {f = coroutine.create(print)}}) end,
    "cannot send item%[2%]%.f: a coroutine", "an unsendable item raises in put, naming its path")
  t.ok(mp.Error.is(err, "serialize"), "that error has kind serialize")
  t.is(q:qsize(), 0, "a refused item is not half-put")
  q:close()
  t.raises(function() q:put(1) end, "closed", "put after close raises")
  t.raises(function() q:get() end, "closed", "get after close raises")
  t.raises(function() mp.Queue(-1) end, "bad argument #1 to 'Queue'", "Queue checks maxsize")
  t.raises(function() mp.Queue():get("x") end, "number expected", "get checks its timeout")
end

-- items are put just before the producers exit: none is lost
do
  local q = mp.Queue()
  local producers = {}
  for p = 1, 4 do
    producers[p] = mp.Process{target = function()
      for i = 1, 500 do q:put({p, i}) end
    end}
    producers[p]:start()
  end
  for _, p in ipairs(producers) do p:join() end
  t.is(q:qsize(), 2000, "items put by exited producers are all still there")
  local last, inorder, count = {0, 0, 0, 0}, true, 0
  while true do
    local v = q:get_nowait()
    if v == nil then break end
    count = count + 1
    if v[2] ~= last[v[1]] + 1 then inorder = false end
    last[v[1]] = v[2]
  end
  t.is(count, 2000, "every item of every producer arrives")
  t.ok(inorder, "items are FIFO per producer")
end

-- several consumers in child processes share the work, nothing twice
do
  local q, out = mp.Queue(), mp.Queue()
  local consumers = {}
  for c = 1, 3 do
    consumers[c] = mp.Process{target = function()
      local sum, n = 0, 0
      while true do
        local v = q:get()
        if v == "END" then break end
        sum, n = sum + v, n + 1
      end
      out:put({sum, n})
    end}
    consumers[c]:start()
  end
  for i = 1, 3000 do q:put(i) end
  for _ = 1, 3 do q:put("END") end
  local sum, n = 0, 0
  for _ = 1, 3 do local r = out:get(20); sum, n = sum + r[1], n + r[2] end
  for _, c in ipairs(consumers) do c:join() end
  t.is(n, 3000, "consumers got every item exactly once (count)")
  t.is(sum, 3000 * 3001 // 2, "consumers got every item exactly once (sum)")
end

-- a 64 MiB item through a queue between processes
do
  local q = mp.Queue()
  local p = mp.Process{target = function()
    q:put(string.rep("x", 64 << 20))
    q:put("after")
  end}
  p:start()
  p:join()   -- joining the producer before reading never deadlocks
  local big = q:get(30)
  t.is(#big, 64 << 20, "a 64 MiB item arrives whole")
  t.ok(big:find("[^x]") == nil, "a 64 MiB item arrives intact")
  t.is(q:get(5), "after", "the item after a big one follows")
end

-- Strings of 16 KiB and more go into the queue's memory straight from
-- the Lua string (spans, codec.h): beside small values, in maps that
-- grow a long header, and in a value the fast pass leaves to the slow one.
do
  local q = mp.Queue()
  local function blob(c, n) return string.rep(c, n - 3) .. "end" end
  local function items()
    local m = {}
    for i = 1, 20 do m["k" .. i] = i end
    m.big = blob("m", 1 << 16)
    return {
      {blob("a", 100000), "small", blob("b", 1 << 20), 7},
      m,
      {blob("c", 70000), setmetatable({blob("d", 80000)}, {__index = {}})},
      blob("e", (16 << 10) - 1),
    }
  end
  local p = mp.Process{target = function() for _, v in ipairs(items()) do q:put(v) end end}
  p:start()
  local want = items()
  local got = {}
  for i = 1, #want do got[i] = q:get(10) end
  p:join()
  t.same(got[1], want[1], "a table with big strings arrives intact")
  t.same(got[2], want[2], "a map of 21 entries with a big string arrives intact")
  t.ok(got[3] and got[3][1] == want[3][1] and got[3][2][1] == want[3][2][1]
       and getmetatable(got[3][2]) ~= nil, "big strings beside a metatable arrive intact")
  t.is(got[4], want[4], "a string just under 16 KiB arrives intact")
end

-- a bounded queue blocks a producer until a consumer makes room
do
  local q = mp.Queue(1)
  local p = mp.Process{target = function() for i = 1, 50 do q:put(i) end end}
  p:start()
  local sum = 0
  for _ = 1, 50 do sum = sum + q:get(10) end
  p:join()
  t.is(sum, 1275, "a bounded queue passes every item through a producer that waits")
end

-- a producer that waits for room holds its big items in place (spans)
-- until they go in: they arrive intact
do
  local q = mp.Queue(1)
  local p = mp.Process{target = function()
    for i = 1, 8 do q:put({i, string.rep(string.char(64 + i), 100000 + i)}) end
  end}
  p:start()
  local intact = true
  for i = 1, 8 do
    mp._sleep(0.002)     -- the producer is waiting for room by now
    local v = q:get(10)
    intact = intact and v[1] == i and v[2] == string.rep(string.char(64 + i), 100000 + i)
  end
  p:join()
  t.ok(intact, "big items put while the queue was full arrive intact")
end

-- big items taken do not pile up as garbage until the heap doubles (every
-- byte of them would land in fresh pages): get steps the collector
do
  local live = string.rep("L", 96 << 20)
  local q = mp.Queue()
  -- the most garbage seen while taking n items of `size` bytes
  local function peak_garbage(n, size)
    local p = mp.Process{target = function()
      for i = 1, n do q:put(string.rep(string.char(64 + i % 26), size)) end
    end}
    p:start()
    collectgarbage()
    local base, peak = collectgarbage("count"), 0
    for _ = 1, n do
      q:get(10)
      peak = math.max(peak, collectgarbage("count") - base)
    end
    p:join()
    return peak
  end
  t.ok(peak_garbage(200, 1 << 20) < 0.75 * #live / 1024,
    "200 big items taken never amount to 3/4 of the live heap in garbage")
  -- small ones add up
  t.ok(peak_garbage(2000, 64 << 10) < 0.75 * #live / 1024,
    "2,000 items of 64 KiB taken never amount to 3/4 of the live heap in garbage")
  live = nil
  collectgarbage()
end

-- JoinableQueue: join waits until every item put is marked done
do
  local jq = mp.JoinableQueue()
  t.like(tostring(jq), "^JoinableQueue", "tostring says JoinableQueue")
  t.is(jq:join(0), true, "join on a queue that never had items returns true at once")
  for i = 1, 3 do jq:put(i) end
  t.is(jq:join(0.05), false, "join(timeout) is false while items are not done")
  t.is(jq:get(), 1, "a JoinableQueue is a Queue")
  jq:task_done()
  t.is(jq:join(0.01), false, "still false with items not done")
  local p = mp.Process{ target = function()
    for _ = 1, 2 do jq:get(5); jq:task_done() end
    for i = 1, 5 do jq:put(i) end          -- puts from another process count too
  end }
  p:start()
  p:join()
  t.is(jq:join(0.05), false, "items put by a child count as unfinished")
  for _ = 1, 5 do jq:get(5); jq:task_done() end
  t.is(jq:join(), true, "join returns once every item was marked done")
  t.raises(function() jq:task_done() end, "called more times than items were put",
    "task_done beyond the items put raises")
  t.is(mp.Queue().task_done, nil, "a plain Queue has no task_done")
  t.is(mp.Queue().join, nil, "nor join")
  local task_done = getmetatable(jq).__index.task_done
  t.raises(function() task_done(mp.Queue()) end, "only for a JoinableQueue",
    "a JoinableQueue's task_done called on a plain Queue raises")
  t.raises(function() mp.JoinableQueue(-1) end, "bad argument #1 to 'JoinableQueue'", "maxsize is checked")
  local bounded = mp.JoinableQueue(1)
  t.is(bounded:put_nowait("x"), true, "a bounded JoinableQueue takes up to maxsize")
  t.is(bounded:put_nowait("y"), false, "and no more")
  t.is(bounded:join(0), false, "the refused put does not count")
  bounded:get()
  bounded:task_done()
  t.is(bounded:join(0), true, "the one put, done, leaves none unfinished")
end

t.done()
