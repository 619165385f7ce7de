-- SPDX-License-Identifier: MIT
-- over_2gib.lua: messages over 2 GiB, of strings over 1 GiB, go through
-- a Pipe, and a Pool's tasks and results (a Queue is the same queue as a
-- Pool's), whole; a string of 4 GiB or more, which MessagePack cannot
-- hold, is refused naming where it was, before anything is copied.
-- tests/big_messages.sh runs it when the machine has the memory (5 GiB at
-- the peak, 10 GiB to spare).
local t = require "tap"
local mp = require "luamp"

local MiB = 1 << 20
local GiB = 1 << 30

-- The peak of this process's resident memory (KiB), and a way to start
-- it again: so a check sees what one step cost, not the one before.
local function status(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+) kB"))
end
local function reset_peak()
  local f = assert(io.open("/proc/self/clear_refs", "w"))
  f:write("5")
  f:close()
end

-- BIG: 1 GiB + 1 MiB, so that {BIG, BIG} is a message just over 2 GiB.
-- (A global: the Pool's workers and the Processes inherit it rather than
-- receive it as an upvalue.)  Copies of GiBs are slow where memory is
-- (0.4 GB/s on some machines here), so the checks look at lengths and at
-- the ends of the strings, which a length cut to 32 bits would break,
-- rather than compare every byte: smaller messages check that.
BIG = string.rep(string.rep("b", MiB - 2) .. "<>", 1025)
local SIZE = 2 * #BIG
local function whole(v)
  return type(v) == "table" and #v == 2 and #v[1] == #BIG and #v[2] == #BIG
    and v[1]:sub(-4) == "bb<>" and v[2]:sub(-4) == "bb<>" and v[2]:sub((1 << 30) - 1, (1 << 30) + 2) == "<>bb"
    and true or false
end

do
  local a, b = mp.Pipe()
  local p = mp.Process{target = function() a:close(); b:send{BIG, BIG} end}
  p:start()
  b:close()
  local v = a:recv(120)
  p:join(120)
  t.ok(whole(v), "a message of 2 GiB + 2 MiB comes through a Pipe whole")
  v = nil
  t.is(p.exitcode, 0, "its sender ended well")
end
collectgarbage()

do
  local pool <close> = mp.Pool(1)
  local n, ok = pool:apply(function(v) return #v[1] + #v[2], whole(v) end, {{BIG, BIG}})
  t.is(n, SIZE, "a task argument of 2 GiB + 2 MiB reaches the worker")
  t.ok(ok, "whole")
  local r = pool:apply(function() return {BIG, BIG} end)
  t.ok(whole(r), "a result of 2 GiB + 2 MiB comes back whole")
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
  for _, case in ipairs{
    {"a Queue", function() q:put{1, {data = four}} end, "cannot send item%[2%]%.data: a string of 4 GiB or more"},
    {"a Pipe", function() b:send{four} end, "cannot send message%[1%]: a string of 4 GiB or more"},
    {"a Pool task", function() pool:apply(function() end, {1, four}) end, "cannot send args%[2%]: a string of 4 GiB or more"},
  } do
    reset_peak()
    local before = status("VmHWM")
    local e = t.raises(case[2], case[3], "a string of 4 GiB + 1 is refused by " .. case[1] .. ", naming where it was")
    t.ok(mp.Error.is(e, "serialize"), "as a serialize error: " .. case[1])
    local grew = (status("VmHWM") - before) // 1024
    t.ok(grew < 64, "before it is copied: " .. case[1], "the peak grew by " .. grew .. " MiB")
  end
  t.is(q:qsize(), 0, "nothing was put")
  b:send("small")
  t.is(a:recv(1), "small", "the Pipe still works")
  t.is(pool:apply(function() return 1 end), 1, "the Pool still works")
end

t.done()
