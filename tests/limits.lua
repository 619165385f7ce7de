-- Size limits: 256 MiB messages pass; anything over the 1 GiB limit is
-- refused with a clear error, never a crash.
local t = require "tap"
local mp = require "luamp"

local MiB = 1 << 20
-- string.rep copies its base once per repetition: a 1 MiB base is fast
local function blob(c, mib) return string.rep(string.rep(c, MiB), mib) end
local big = blob("L", 256)

do
  local q = mp.Queue()
  q:put(big)
  local got = q:get(60)
  t.ok(got == big, "a 256 MiB item passes through a Queue")
end

do
  local a, b = mp.Pipe()
  local p = mp.Process{target = function() a:close(); b:send(big) end}
  p:start()
  b:close()
  local got = a:recv(60)
  p:join()
  t.ok(got == big, "a 256 MiB message passes through a Pipe between processes")
end

do
  local pool <close> = mp.Pool(1)
  local n, last = pool:apply(function(s) return #s, s:sub(-1) end, {big})
  t.is(n, 256 * MiB, "a 256 MiB argument reaches a pool task")
  local r = pool:apply(function() return string.rep(string.rep("R", 1 << 20), 256) end)
  t.is(#r, 256 * MiB, "a 256 MiB result comes back from a pool task")
end
big = nil
collectgarbage()

do
  local huge = blob("H", 1024) .. "H"
  local q = mp.Queue()
  local e = t.raises(function() q:put(huge) end, "larger than 1 GiB", "an item over 1 GiB is refused by put")
  t.ok(mp.Error.is(e, "serialize"), "the refusal has kind serialize")
  t.is(q:qsize(), 0, "nothing was put")
  local a, b = mp.Pipe()
  t.raises(function() b:send(huge) end, "larger than 1 GiB", "a message over 1 GiB is refused by send")
  b:send("small")
  t.is(a:recv(1), "small", "the pipe is still usable after a refusal")
  local pool <close> = mp.Pool(1)
  t.raises(function() pool:apply(function(s) return #s end, {huge}) end, "larger than 1 GiB",
    "a task argument over 1 GiB is refused in the caller")
  t.is(pool:apply(function() return 1 end), 1, "the pool is still usable after a refusal")
end

t.done()
