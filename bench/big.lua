-- SPDX-License-Identifier: MIT
-- big.lua: one big message through luamp, timed (luamp only).
--
-- Usage:  luamp bench/big.lua KIND [MIB] [N]
--
-- KIND is one of
--   queue    a Process puts a string of MIB MiB (default 300) on a Queue,
--            the parent gets it
--   pipe     the same through Pipe():send / recv
--   arg      pool:apply(function(s) return #s end, {s}), Pool(1)
--   result   pool:apply(function() return s end), s made by the worker
--            beforehand
--   qstream  the Process puts the same string N times back to back, the
--            parent gets them (time per item)
--   pstream  the same through a Pipe
-- queue, pipe, arg and result move one message at a time, N times (default
-- 1), each after the last was got, and report the median: the first one
-- is what a program that sends one big value sees (every page of the
-- ring and of the new string is fresh memory).  Run each in a fresh
-- process for that: the runs of bench/run do not include these.
--
-- Prints one JSON line: kind, mib, n, seconds (median per message) and
-- mb_per_s.  The clock runs from just before put / send / apply to just
-- after the value is in the receiver's hands; the sender makes its string
-- before.  Compare with bench/rawbig.c, the machine's own limits for the
-- same amount of memory.

local mp = require "luamp"

local now = mp._now
local MIB = 1 << 20
local kind, mib, n = arg[1], tonumber(arg[2] or 300), tonumber(arg[3] or 1)
assert(kind, "usage: luamp bench/big.lua queue|pipe|arg|result|qstream|pstream [MIB] [N]")
local size = math.floor(mib * MIB)

-- string.rep of a 1 MiB block: the string at memset speed
local function blob(c)
  return string.rep(string.rep(c, MIB), size // MIB) .. string.rep(c, size % MIB)
end

local times = {}

-- One message at a time: `send(s)` in a child after each "go", `recv()`
-- here; the child sends the time it started too.
local function one_by_one(make_ends)
  local go, send, recv = make_ends()
  local p = mp.Process{target = function()
    local s = blob("x")
    for _ = 1, n do
      go.wait()
      local t0 = now()
      send(s)
      send(t0)
    end
  end}
  p:start()
  for i = 1, n do
    go.signal()
    local s = recv()
    local t1 = now()
    local t0 = recv()
    assert(#s == size, "wrong size")
    s = nil
    times[i] = t1 - t0
  end
  p:join()
  assert(p.exitcode == 0, "the sender failed")
end

local function go_queue()
  local q = mp.Queue()
  return { wait = function() q:get() end, signal = function() q:put(1) end }
end

-- N messages back to back: the time from "go" to the last one got.
local function stream(send_end, recv_end)
  local ready, go = mp.Queue(), mp.Queue()
  local p = mp.Process{target = function()
    local s = blob("x")
    ready:put(true)
    go:get()
    for _ = 1, n do send_end(s) end
  end}
  p:start()
  ready:get()
  local t0 = now()
  go:put(true)
  for _ = 1, n do assert(#recv_end() == size, "wrong size") end
  times[1] = (now() - t0) / n
  p:join()
  assert(p.exitcode == 0, "the sender failed")
end

if kind == "queue" then
  one_by_one(function()
    local q = mp.Queue()
    return go_queue(), function(v) q:put(v) end, function() return q:get() end
  end)
elseif kind == "pipe" then
  one_by_one(function()
    local a, b = mp.Pipe()
    return go_queue(), function(v) b:send(v) end, function() return a:recv() end
  end)
elseif kind == "qstream" then
  local q = mp.Queue()
  stream(function(s) q:put(s) end, function() return q:get() end)
elseif kind == "pstream" then
  local a, b = mp.Pipe()
  stream(function(s) b:send(s) end, function() return a:recv() end)
elseif kind == "arg" or kind == "result" then
  local pool = mp.Pool(1)
  local s
  if kind == "arg" then
    s = blob("x")
    assert(pool:apply(function() return 1 end) == 1)
  else
    assert(pool:apply(function(bytes)
      _G.BIG = string.rep(string.rep("y", MIB), bytes // MIB) .. string.rep("y", bytes % MIB)
      return #_G.BIG
    end, {size}) == size)
  end
  for i = 1, n do
    collectgarbage()
    local t0 = now()
    if kind == "arg" then
      assert(pool:apply(function(v) return #v end, {s}) == size, "wrong size")
    else
      assert(#pool:apply(function() return _G.BIG end) == size, "wrong size")
    end
    times[i] = now() - t0
  end
  pool:close()
  pool:join()
else
  error("unknown kind " .. tostring(kind))
end

table.sort(times)
local t = times[(#times + 1) // 2]
print(string.format('{"kind": "%s", "mib": %g, "n": %d, "seconds": %.6f, "mb_per_s": %.1f}',
  kind, mib, n, t, mib / t))
