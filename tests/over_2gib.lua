-- SPDX-License-Identifier: MIT
-- over_2gib.lua: messages over 2 GiB, and over 4 GiB, go through a Pipe,
-- and a Pool's tasks and results (a Queue is the same queue as a Pool's),
-- whole; a string of 4 GiB or more, which MessagePack cannot hold, is
-- refused naming where it was, before anything is copied.
--   arg[1]: MiB in half a string of the message {BIG, BIG}: 513 (a message
--           of 2 GiB + 4 MiB; 5 GiB at the peak) or 1152 (4.5 GiB; 12 GiB
--           at the peak).  tests/big_messages.sh picks what the machine's
--           free memory allows, or skips.
local t = require "tap"
local mp = require "luamp"
local refusals = require "refusals"

local MiB = 1 << 20
local GiB = 1 << 30
local half = assert(tonumber(arg[1]), "usage: over_2gib.lua MIB")

-- BIG: two halves of `half` MiB, each MiB ending in "<>" (string.rep
-- stops at 2 GiB; a concatenation writes its result once).  A global:
-- the Pool's workers and the Processes inherit it rather than receive it
-- as an upvalue.  Copies of GiBs are slow where memory is (0.4 GB/s on
-- some machines here), so the checks look at lengths, at the ends and at
-- the last MiB's start, which lies past 2 GiB in a message of 4.5 GiB
-- (and past 4 GiB in it), rather than compare every byte: smaller
-- messages check that.
do
  local h = string.rep(string.rep("b", MiB - 2) .. "<>", half)
  BIG = h .. h
end
local SIZE = 2 * #BIG
local what = string.format("%d MiB", SIZE >> 20)
local function whole(v)
  local n = #BIG
  return type(v) == "table" and #v == 2 and #v[1] == n and #v[2] == n
    and v[1]:sub(1, 4) == "bbbb" and v[1]:sub(-4) == "bb<>" and v[2]:sub(-4) == "bb<>"
    and v[1]:sub(n - MiB - 1, n - MiB + 2) == "<>bb" and v[2]:sub(n - MiB - 1, n - MiB + 2) == "<>bb"
    and true or false
end
t.ok(SIZE > 2 * GiB, "(a message of " .. what .. ")")

do
  local a, b = mp.Pipe()
  local p = mp.Process{target = function() a:close(); b:send{BIG, BIG} end}
  p:start()
  b:close()
  local v = a:recv(600)
  p:join(600)
  t.ok(whole(v), "a message of " .. what .. " comes through a Pipe whole")
  v = nil
  t.is(p.exitcode, 0, "its sender ended well")
end
collectgarbage()

do
  local pool <close> = mp.Pool(1)
  local n, ok = pool:apply(function(v) return #v[1] + #v[2], whole(v) end, {{BIG, BIG}})
  t.is(n, SIZE, "a task argument of " .. what .. " reaches the worker")
  t.ok(ok, "whole")
  local r = pool:apply(function() return {BIG, BIG} end)
  t.ok(whole(r), "a result of " .. what .. " comes back whole")
  r = nil
  collectgarbage()
  t.is(pool:apply(function(s) return #s end, {"small"}), 5, "the pool goes on with small tasks")
end
collectgarbage()

-- A string of 4 GiB + 1 byte, made by a concatenation, which writes the
-- result once: 5 GiB at the peak.
do
  BIG = nil
  collectgarbage()
  local g = string.rep(string.rep("b", MiB), 1024)   -- (string.rep stops at 2 GiB)
  local four = g .. g .. g .. g .. "!"
  g = nil
  collectgarbage()
  t.is(#four, 4 * GiB + 1, "(a string of 4 GiB + 1 byte)")
  local q = mp.Queue()
  local a, b = mp.Pipe()
  local pool <close> = mp.Pool(1)
  -- (the messages name where the string was)
  refusals.check(t, mp, {
    {"a string of 4 GiB + 1 put on a Queue", function() q:put{1, {data = four}} end,
      "cannot send item%[2%]%.data: a string of 4 GiB or more"},
    {"a string of 4 GiB + 1 sent on a Pipe", function() b:send{four} end,
      "cannot send message%[1%]: a string of 4 GiB or more"},
    {"a string of 4 GiB + 1 in a Pool task", function() pool:apply(function() end, {1, four}) end,
      "cannot send args%[2%]: a string of 4 GiB or more"},
  }, 64, {queue = q, pipe = {a, b}, pool = pool})
end

t.done()
