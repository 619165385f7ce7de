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
  for _ = 1, 1000 do sum = sum + a:recv(10) end
  t.is(sum, 500500, "1000 messages from a child arrive whole and in order")
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

t.raises(function() mp.Pipe(1) end, "bad argument #1 to 'Pipe' %(boolean expected, got number%)", "Pipe checks duplex")

t.done()
