-- SPDX-License-Identifier: MIT
-- producer_consumer.lua: many producers, many consumers, one Queue.
--
-- Producers put numbered items on a work queue; consumers take items until
-- they get an END sentinel, then report what they took on a second queue.
-- The parent puts one END per consumer once every producer has finished:
-- each consumer stops at the first END it takes, so every consumer gets
-- exactly one, and everything put before the ENDs has been taken by then.
-- At the end the parent checks that every item arrived exactly once.
--
--   luamp examples/producer_consumer.lua
local mp = require "luamp"

local PRODUCERS, CONSUMERS, ITEMS = 4, 3, 250
local END = "END"

-- Item i of producer p is the number p * 1000 + i: all items are distinct.
local function produce(work, p)
  for i = 1, ITEMS do
    work:put(p * 1000 + i)
  end
end

local function consume(work, totals)
  local taken, sum = {}, 0
  while true do
    local item = work:get()
    if item == END then break end
    taken[#taken + 1] = item
    sum = sum + item
  end
  totals:put({ name = mp.current_process().name, taken = taken, sum = sum })
end

local work, totals = mp.Queue(), mp.Queue()

local consumers = {}
for c = 1, CONSUMERS do
  consumers[c] = mp.Process{ target = consume, args = { work, totals }, name = "consumer-" .. c }
  consumers[c]:start()
end
local producers = {}
for p = 1, PRODUCERS do
  producers[p] = mp.Process{ target = produce, args = { work, p } }
  producers[p]:start()
end

-- Joining a producer never waits for its items to be read: a put has
-- copied the item into the queue by the time it returns.
for _, p in ipairs(producers) do p:join() end
for _ = 1, CONSUMERS do work:put(END) end

-- One report per consumer; read them before joining the consumers.
local count, sum, seen = 0, 0, {}
for _ = 1, CONSUMERS do
  local report = totals:get()
  count = count + #report.taken
  sum = sum + report.sum
  for _, item in ipairs(report.taken) do
    seen[item] = (seen[item] or 0) + 1
  end
end
for _, c in ipairs(consumers) do c:join() end

-- What should have arrived, computed here without any queue.
local want_count, want_sum, exactly_once = 0, 0, true
for p = 1, PRODUCERS do
  for i = 1, ITEMS do
    local item = p * 1000 + i
    want_count, want_sum = want_count + 1, want_sum + item
    if seen[item] ~= 1 then exactly_once = false end
  end
end

print(string.format("%d producers, %d consumers, %d items each", PRODUCERS, CONSUMERS, ITEMS))
print(string.format("items received: %d (expected %d)", count, want_count))
print(string.format("checksum:       %d (expected %d)", sum, want_sum))
print("every item received exactly once: " .. (exactly_once and count == want_count and "yes" or "NO"))
