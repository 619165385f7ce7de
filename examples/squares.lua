-- SPDX-License-Identifier: MIT
-- squares.lua: the smallest useful luamp program.
--
-- Squares the numbers 1..10 on a pool of worker processes, twice: with
-- pool:map, which takes a list and returns the results in input order, and
-- with apply_async, which submits one task at a time and hands back an
-- AsyncResult to collect later.
--
--   luamp examples/squares.lua
local mp = require "luamp"

local function square(x)
  return x * x
end

local numbers = {}
for i = 1, 10 do numbers[i] = i end

-- The pool is closed and its workers joined when `pool` goes out of scope.
local pool <close> = mp.Pool(4)

-- map sends the function once, the numbers in chunks, and waits for all.
local squares = pool:map(square, numbers)
print("map:         " .. table.concat(squares, " "))

-- apply_async returns at once; every task is already running on a worker
-- while the loop goes on submitting.  get() waits for that one result.
local pending = {}
for i, x in ipairs(numbers) do
  pending[i] = pool:apply_async(square, { x })
end
local again, sum = {}, 0
for i, result in ipairs(pending) do
  again[i] = result:get()
  sum = sum + again[i]
end
print("apply_async: " .. table.concat(again, " "))
print("sum:         " .. sum)
