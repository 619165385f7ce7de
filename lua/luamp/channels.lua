-- SPDX-License-Identifier: MIT
-- luamp/channels.lua: mp.Queue, mp.JoinableQueue and mp.Pipe.
--
-- Both are C objects (src/queue.c over the shared-memory queue of
-- src/shmq.c, and src/pipe.c), whose methods check their own arguments;
-- these constructors check theirs the Lua way (checks.lua).  A Queue
-- takes items from any number of processes and hands each to one of any
-- number of consumers; a put copies the item into shared memory and
-- returns, whether anyone reads or not (with a maxsize, once there is
-- room).  A Pipe is two ends, Connections, for two sides that talk to
-- each other, at a fraction of a Queue's latency.  doc/design.md says
-- how each moves its bytes.
--
-- Uses: checks.

local core, part = ...

local checks = part("checks")
local argerror, typename = checks.argerror, checks.typename
local tointeger = math.tointeger

local function check_maxsize(maxsize, fname)
  if maxsize == nil then return 0 end
  local i = tointeger(maxsize)
  if not i or i < 0 then
    argerror(1, fname, "non-negative integer expected, got " ..
      (type(maxsize) == "number" and tostring(maxsize) or typename(maxsize)))
  end
  return i
end

local function Queue(maxsize)
  return core.queue(check_maxsize(maxsize, "Queue"))
end

-- A Queue that also counts the items put and not yet marked done:
-- jq:task_done() after dealing with an item, jq:join(timeout) waits until
-- every item put is done.
local function JoinableQueue(maxsize)
  return core.queue(check_maxsize(maxsize, "JoinableQueue"), false, true)
end

local function Pipe(duplex)
  if duplex ~= nil and type(duplex) ~= "boolean" then
    argerror(1, "Pipe", "boolean expected, got " .. typename(duplex))
  end
  return core.pipe(duplex ~= false)
end

return { Queue = Queue, JoinableQueue = JoinableQueue, Pipe = Pipe }
