-- SPDX-License-Identifier: MIT
-- luamp/sync.lua: Lock, RLock, Event, Semaphore, BoundedSemaphore,
-- Condition, Barrier, Value and Array.
--
-- C objects in shared memory (src/sync.c): each is one block that every
-- process holding the object maps, a word (a lock's holder, a
-- semaphore's count, an event's flag) and then the data of a Value or
-- an Array; taking a free lock is one compare-and-swap, and a waiter
-- sleeps on the word with futex(2).  These constructors only check their
-- arguments the Lua way, and give the C constructors' errors the
-- caller's position.
--
-- Uses: checks.

local core, part = ...

local checks = part("checks")
local argerror, typename = checks.argerror, checks.typename

local function Lock() return core.lock(false) end
local function RLock() return core.lock(true) end

local function Event() return core.event() end

-- The C constructors raise without a position; this gives the error its
-- place in the caller of mp.X.
local function construct(make, ...)
  local ok, v = pcall(make, ...)
  if not ok then error(v, 3) end
  return v
end

local function Semaphore(value) return (construct(core.semaphore, value, false)) end
local function BoundedSemaphore(value) return (construct(core.semaphore, value, true)) end

local function Condition(lock) return (construct(core.condition, lock)) end
local function Barrier(parties, action, timeout) return (construct(core.barrier, parties, action, timeout)) end

local function Value(typecode, init)
  if type(typecode) ~= "string" then argerror(1, "Value", "typecode (a string) expected, got " .. typename(typecode)) end
  return (construct(core.value, typecode, init))
end

local function Array(typecode, size_or_values)
  if type(typecode) ~= "string" then argerror(1, "Array", "typecode (a string) expected, got " .. typename(typecode)) end
  return (construct(core.array, typecode, size_or_values))
end

return {
  Lock = Lock, RLock = RLock, Event = Event,
  Semaphore = Semaphore, BoundedSemaphore = BoundedSemaphore,
  Condition = Condition, Barrier = Barrier,
  Value = Value, Array = Array,
}
