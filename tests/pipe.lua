-- SPDX-License-Identifier: MIT
-- Pipe: send/recv with message boundaries, timeouts, closed, one-way.
local t = require "tap"
local mp = require "luamp"

do
  local a, b = mp.Pipe()
  b:send("one"); b:send({2, 3, x = "y"}); b:send(4.0)
  t.is(a:recv(), "one", "first message arrives first")
  t.same(a:recv(), {2, 3, x = "y"}, "a table keeps its shape")
  t.is(a:recv(), 4.0, "a float stays a float")
  a:send("back")
  t.is(b:recv(), "back", "a duplex pipe carries both ways")
end

do
  local a, b = mp.Pipe()
  local v, why = a:recv(0.05)
  t.is(v, nil, "recv returns nil at the timeout")
  t.is(why, "timeout", "recv says timeout")
  t.is(a:poll(), false, "poll is false when nothing waits")
  b:send(1)
  t.is(a:poll(1), true, "poll is true when a message waits")
  t.is(a:recv(), 1, "the message polled is received")
  b:close()
  v, why = a:recv(1)
  t.is(why, "closed", "recv says closed once the other end is closed")
  t.raises(function() b:send(1) end, "closed", "a closed end refuses to send")
end

do
  local r, w = mp.Pipe(false)
  w:send("x")
  t.is(r:recv(), "x", "a one-way pipe carries from the second end to the first")
  t.raises(function() r:send(1) end, "receiving end of a one%-way Pipe", "the receiving end refuses send")
  t.raises(function() w:recv() end, "sending end of a one%-way Pipe", "the sending end refuses recv")
end

do
  local a, b = mp.Pipe()
  t.raises(function() b:send(nil) end, "nil cannot be sent", "nil cannot be sent")
  t.raises(function() b:send({co = coroutine.create(print)}) end,
    "cannot send message.co: a coroutine", "an unsendable value names its path")
  b:send("still usable")
  t.is(a:recv(), "still usable", "a refused send leaves the pipe usable")
end

-- between processes, with a big message and many small ones
do
  local a, b = mp.Pipe()
  local big = string.rep("0123456789abcdef", 1 << 18)   -- 4 MiB
  local p = mp.Process{target = function()
    a:close()
    for i = 1, 1000 do b:send(i) end
    b:send(big)
    b:send(b:recv() .. "!")   -- echo with a mark
  end}
  p:start()
  b:close()
  local sum = 0
  local first_bad
  for i = 1, 1000 do
    local v, why = a:recv(30)
    if v ~= i then first_bad = first_bad or string.format("message %d: %s, %s", i, tostring(v), tostring(why)) end
    sum = sum + (tonumber(v) or 0)
  end
  t.is(sum, 500500, "1000 messages from a child arrive whole and in order", first_bad)
  local got = a:recv(10)
  t.ok(got == big, "a 4 MiB message crosses intact")
  a:send("ping")
  t.is(a:recv(10), "ping!", "a child answers over the same pipe")
  p:join()
  local v, why = a:recv(5)
  t.is(why, "closed", "recv says closed after the child exited and the parent closed its copy")
end

-- every message is delivered once, whichever process receives it: a child
-- forked after its parent received the first of five takes the second (it
-- waits in shared memory, not in a buffer of the parent's), the parent the rest
do
  local a, b = mp.Pipe()
  for i = 1, 5 do b:send(i) end
  t.is(a:recv(1), 1, "the first of five small messages")
  local q = mp.Queue()
  local p = mp.Process{target = function()
    local v, why = a:recv(1)
    q:put(v == nil and why or v)
  end}
  p:start(); p:join()
  t.is(q:get(5), 2, "a child forked later receives the next message, not one its parent had")
  local rest = {}
  for _ = 3, 5 do rest[#rest + 1] = a:recv(1) end
  t.same(rest, {3, 4, 5}, "the parent receives the rest in order, none twice")
  t.same({a:recv(0)}, {nil, "timeout"}, "and then nothing more")
  b:send("later")
  t.is(a:poll(0), true, "poll sees a message that arrived later")
  t.is(a:recv(0), "later", "and recv returns it")
end

-- the ring (4 MiB a direction) wraps and rewinds: many messages of all
-- sizes, more than it holds in all, and sizes on both sides of its size
do
  local a, b = mp.Pipe()
  local function msg(i) return string.rep(string.char(65 + i % 26), (i * 37) % 5000) end
  -- a string of n bytes is a 4-byte length, a 5-byte str32 head and n bytes
  local R = mp._pipe_ring
  local edge = {R - 10, R - 9, R - 8, 3 * R}
  local p = mp.Process{target = function()
    a:close()
    for i = 1, 3000 do b:send(msg(i)) end
    for k, n in ipairs(edge) do b:send(string.rep(string.char(96 + k), n)) end
    for _ = 1, 40 do b:send(b:recv()) end     -- echo: the ring empties each time
  end}
  p:start()
  b:close()
  local ok = true
  for i = 1, 3000 do ok = ok and a:recv(10) == msg(i) end
  t.ok(ok, "3000 messages of 0-5000 bytes, several rings full, arrive intact and in order")
  for k, n in ipairs(edge) do
    local s = a:recv(10)
    t.ok(s == string.rep(string.char(96 + k), n), "a message of " .. n .. " bytes around the ring's size")
  end
  ok = true
  for i = 1, 40 do
    local s = string.rep(string.char(65 + i % 26), 100000 + i)
    a:send(s)
    ok = ok and a:recv(10) == s
  end
  t.ok(ok, "100 KB messages one at a time (the empty ring rewinds to its start) come back intact")
  p:join()
  t.same({a:recv(5)}, {nil, "closed"}, "and then closed")
end

-- Strings of 16 KiB and more go from the Lua string straight into the
-- ring (spans, codec.h), in a message that fits the ring and in one
-- that streams through it.
do
  local a, b = mp.Pipe()
  local function s(c, n) return string.rep(c, n - 1) .. "." end
  local function msgs()
    return {
      {s("a", 16 << 10), "small", s("b", 1 << 20), 42, {s("c", 20000)}},
      {s("d", mp._pipe_ring // 2 + 1000), s("e", mp._pipe_ring // 2), "end"},   -- streams
      s("f", (16 << 10) - 1),
    }
  end
  local p = mp.Process{target = function() for _, m in ipairs(msgs()) do b:send(m) end end}
  p:start()
  local want = msgs()
  t.same(a:recv(10), want[1], "a table of big and small strings arrives intact")
  t.same(a:recv(10), want[2], "a table of big strings that streams through the ring arrives intact")
  t.is(a:recv(10), want[3], "a string just under 16 KiB arrives intact")
  p:join()
end

-- a sender that dies, however it dies: what it sent is delivered, then closed
do
  local a, b = mp.Pipe()
  local sent = mp.Queue()
  local p = mp.Process{target = function()
    a:close()
    for i = 1, 3 do b:send(i) end
    sent:put(true)
    mp._sleep(60)
  end}
  p:start()
  b:close()
  t.is(a:recv(10), 1, "a message from a child that will be killed")
  t.is(sent:get(10), true, "the child sent all three before it is killed")
  p:kill(); p:join()
  t.is(a:recv(5), 2, "messages sent before the sender was killed are still delivered")
  t.is(a:recv(5), 3, "all of them")
  t.same({a:recv(5)}, {nil, "closed"}, "then recv says closed")
  t.is(a:poll(0), true, "and poll is true: recv would not wait")
end

-- a sender killed in the middle of a message bigger than the ring: an error, not garbage
do
  local a, b = mp.Pipe()
  local p = mp.Process{target = function() a:close(); b:send(string.rep("x", 4 * mp._pipe_ring)) end}
  p:start()
  b:close()
  t.is(a:poll(10), true, "the start of a big message arrived")
  p:kill(); p:join()
  t.raises(function() a:recv(5) end, "closed in the middle of a message",
    "a message cut by the death of its sender raises")
end

-- nobody left to receive: send raises "closed" (no SIGPIPE), also when
-- it was waiting for room
do
  local a, b = mp.Pipe()
  local p = mp.Process{target = function() end}
  p:start(); p:join()
  a:close()
  local e = t.raises(function() b:send("x") end, "closed", "send raises once nobody holds the other end")
  t.ok(mp.Error.is(e, "closed"), "of kind closed")

  for _, size in ipairs({1000, mp._pipe_ring + (1 << 20)}) do
    a, b = mp.Pipe()
    local q = mp.Queue()
    p = mp.Process{target = function()
      a:close()
      local ok, err = pcall(function() for _ = 1, 1e6 do b:send(string.rep("x", size)) end end)
      q:put(mp.Error.is(err, "closed") and "closed" or tostring(err))
    end}
    p:start()
    b:close()
    local m, why = a:recv(30)
    t.is(type(m) == "string" and #m or why, size, "a message of " .. size .. " bytes before the ring is full")
    a:close()
    t.is(q:get(10), "closed", "a sender waiting for room (" .. size .. "-byte messages) gets closed when the receiver goes")
    p:join()
    t.is(p.exitcode, 0, "and is not killed by SIGPIPE")
  end
end

-- several processes on one end at once: nothing torn, lost or doubled
do
  local a, b = mp.Pipe()
  local ps = {}
  for w = 1, 3 do
    ps[w] = mp.Process{target = function()
      a:close()
      for i = 1, 2000 do b:send({w, i, string.rep("m", i % 300)}) end
      if w == 1 then b:send(string.rep("B", mp._pipe_ring + (1 << 20))) end   -- streams, holding the lock
    end}
    ps[w]:start()
  end
  b:close()
  local last, ok, big = {0, 0, 0}, true, 0
  for _ = 1, 6001 do
    local m = a:recv(20)
    if type(m) == "string" then
      big = big + 1
      ok = ok and m == string.rep("B", mp._pipe_ring + (1 << 20))
    elseif not m or m[2] ~= last[m[1]] + 1 or #m[3] ~= m[2] % 300 then
      ok = false
    else
      last[m[1]] = m[2]
    end
  end
  t.ok(ok and big == 1, "three processes sending on one end at once: every message whole, each sender's in order")
  for w = 1, 3 do ps[w]:join() end
  t.same({a:recv(5)}, {nil, "closed"}, "closed once all three have exited")

  a, b = mp.Pipe()
  local q = mp.Queue()
  for w = 1, 2 do
    ps[w] = mp.Process{target = function()
      local n, sum = 0, 0
      while true do
        local v = a:recv(20)
        if v == false or v == nil then break end
        n, sum = n + 1, sum + v
      end
      q:put({n, sum})
    end}
    ps[w]:start()
  end
  for i = 1, 5000 do b:send(i) end
  b:send(false); b:send(false)
  local r1, r2 = q:get(30) or { 0, 0 }, q:get(30) or { 0, 0 }
  t.same({r1[1] + r2[1], r1[2] + r2[2]}, {5000, 5000 * 5001 // 2},
    "two processes receiving from one end: each message received exactly once")
  for w = 1, 2 do ps[w]:join() end
end

-- Ctrl-C: a wait in recv, or in send for room, raises "interrupted"
do
  local me = mp.current_process().pid
  local function ctrl_c_soon()
    local p = mp.Process{target = function() mp._sleep(0.3); os.execute("kill -INT " .. me) end}
    p:start()
    return p
  end
  -- (the signaller starts inside the pcall: on a loaded machine its
  -- SIGINT may come before the wait does, and is then raised at the next
  -- instruction, which must still be inside the pcall)
  local a, b = mp.Pipe()
  local p
  local ok, e = pcall(function() p = ctrl_c_soon(); return a:recv() end)
  t.ok(not ok and mp.Error.is(e, "interrupted"), "SIGINT while recv waits raises interrupted", tostring(e))
  p:join()
  b:send("after")
  t.is(a:recv(1), "after", "the pipe works after an interrupted recv")

  local n = 0
  ok, e = pcall(function() p = ctrl_c_soon(); while true do b:send(string.rep("s", 4000)); n = n + 1 end end)
  t.ok(not ok and mp.Error.is(e, "interrupted"), "SIGINT while send waits for room raises interrupted", tostring(e))
  p:join()
  local intact = true
  for _ = 1, n do intact = intact and a:recv(1) == string.rep("s", 4000) end
  t.ok(intact and a:poll(0) == false, "every message sent before the interrupt is there, and no more")

  b:send("before")
  local huge = string.rep("h", mp._pipe_ring + (1 << 20))
  ok, e = pcall(function() p = ctrl_c_soon(); b:send(huge) end)
  t.ok(not ok and mp.Error.is(e, "interrupted"), "SIGINT in the middle of sending a big message raises interrupted", tostring(e))
  p:join()
  t.is(a:recv(1), "before", "what was sent before the cut message is still received")
  t.raises(function() a:recv(1) end, "broken", "the message it cut makes the pipe broken, not a source of garbage")
  t.raises(function() b:send(1) end, "broken", "and send says so too")
end

-- core.wait (luamp's internal wait on several objects) wakes for a pipe end
do
  local core
  for i = 1, math.huge do
    local name, v = debug.getupvalue(mp.Pipe, i)
    if not name then break end
    if name == "core" then core = v end
  end
  local a, b = mp.Pipe()
  local p = mp.Process{target = function() a:close(); mp._sleep(0.2); b:send("woken") end}
  p:start()
  b:close()
  t.is(core.wait({a}, 10), 1, "core.wait returns when a message arrives on a pipe end")
  t.is(a:recv(0), "woken", "and the message is there")
  p:join()
end

-- big messages received do not pile up as garbage until the heap doubles
-- (every byte of them would land in fresh pages): recv steps the collector
do
  local live = string.rep("L", 96 << 20)
  local a, b = mp.Pipe()
  local p = mp.Process{target = function()
    a:close()
    for i = 1, 200 do b:send(string.rep(string.char(64 + i % 26), 1 << 20)) end
  end}
  p:start()
  b:close()
  collectgarbage()
  local base, peak = collectgarbage("count"), 0
  for _ = 1, 200 do
    a:recv(10)
    peak = math.max(peak, collectgarbage("count") - base)
  end
  p:join()
  t.ok(peak < 0.75 * #live / 1024, "200 received 1 MiB strings never amount to 3/4 of the live heap in garbage")
  live = nil
  collectgarbage()
end

t.raises(function() mp.Pipe(1) end, "bad argument #1 to 'Pipe' %(boolean expected, got number%)", "Pipe checks duplex")

t.done()
