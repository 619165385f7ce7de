-- SPDX-License-Identifier: MIT
-- Size limits: 256 MiB messages pass; anything over the 1 TiB limit is
-- refused with a clear error, never a crash.  (Messages over 2 GiB, and
-- strings of 4 GiB, which MessagePack cannot hold: tests/over_2gib.lua.)
local t = require "tap"
local mp = require "luamp"
local refusals = require "refusals"

local MiB = 1 << 20
-- string.rep copies its base once per repetition: a 1 MiB base is fast
local function blob(c, mib) return string.rep(string.rep(c, MiB), mib) end
local big = blob("L", 256)

-- A table whose strings add up to more than 1 TiB (one string of 64 MiB
-- - 16 bytes, 16,385 times) is refused by the encoder's running total,
-- before any of them is copied: the peak does not move.  (Encoders once
-- copied them up to the limit before they refused.)
local over = {}
do
  local s = string.rep("\xff", 64 * MiB - 16)   -- (not UTF-8: nothing to check)
  for i = 1, (1 << 14) + 1 do over[i] = s end
end
OVER = over   -- (a global, so that a task returns it without sending it)
do
  local q = mp.Queue()
  local a, b = mp.Pipe()
  local pool <close> = mp.Pool(1)
  local over1 = "larger than 1 TiB"
  refusals.check(t, mp, {
    {"over 1 TiB put on a Queue", function() q:put(over) end, over1},
    {"over 1 TiB sent on a Pipe", function() b:send(over) end, over1},
    {"over 1 TiB as a Pool task's argument", function() pool:apply(function(s) return #s end, {over}) end, over1},
    {"over 1 TiB as a Pool task's result", function() pool:apply(function() return OVER end) end, over1},
  }, 32, {queue = q, pipe = {a, b}, pool = pool})
end

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

over, OVER = nil, nil
collectgarbage()

t.done()
