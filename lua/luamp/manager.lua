-- SPDX-License-Identifier: MIT
-- luamp/manager.lua: mp.Manager, its dict, list and Namespace, and
-- mp.SharedMemory.
--
-- Python's Manager starts a server process that owns the data, and
-- every access is a message to it.  Here there is no server: a dict or
-- a list is a block of shared memory (src/shdict.c) that every process
-- holding it maps, under a lock of its own, and a Namespace is a dict
-- without methods.  So a Manager holds nothing; it is kept so that code
-- ported from Python reads the same (`with Manager() as m` becomes
-- `local m <close> = mp.Manager()`), and its Lock, Queue, Value... are
-- luamp's own objects.  Its objects live as long as a process holds
-- them, shutdown() or not: shutdown only stops the Manager making more.
--
-- mp.SharedMemory is raw bytes under a name in /dev/shm, as Python's
-- multiprocessing.shared_memory (src/shared_memory.c says who unlinks).
--
-- Uses: checks, sync, channels.

local core, part = ...

local checks = part("checks")
local argerror, typename = checks.argerror, checks.typename
local sync = part("sync")
local channels = part("channels")

local Manager = {}
Manager.__index = Manager
Manager.__name = "luamp.Manager"
-- (it holds nothing to send; by value it went as far as a C function in
-- a method's upvalues, and the refusal named that)
Manager.__luamp_nosend = "a Manager cannot be sent (send the dicts, lists and objects it made)"

local function open(m, what)
  if m._closed then error(string.format("cannot make a %s: the Manager was shut down", what), 3) end
end

-- The C constructors' and methods' errors, with the caller's position.
local function fill(obj, init, name, how)
  if init == nil then return obj end
  if type(init) ~= "table" then argerror(1, name, "table expected, got " .. typename(init)) end
  local ok, err = pcall(how, obj, init)
  if not ok then error(err, 3) end
  return obj
end

function Manager:dict(init)
  open(self, "dict")
  return fill(core.manager_new("dict"), init, "dict", function(d, t) d:update(t) end)
end

function Manager:list(init)
  open(self, "list")
  return fill(core.manager_new("list"), init, "list", function(l, t) l:extend(t) end)
end

function Manager:Namespace(init)
  open(self, "Namespace")
  return fill(core.manager_new("namespace"), init, "Namespace", function(ns, t)
    for k, v in pairs(t) do ns[k] = v end
  end)
end

-- The objects Python's managers hand out as proxies are luamp's own.
for name, make in pairs({
  Lock = sync.Lock, RLock = sync.RLock, Event = sync.Event, Semaphore = sync.Semaphore,
  BoundedSemaphore = sync.BoundedSemaphore, Condition = sync.Condition, Barrier = sync.Barrier,
  Value = sync.Value, Array = sync.Array, Queue = channels.Queue, JoinableQueue = channels.JoinableQueue,
}) do
  Manager[name] = function(self, ...)
    open(self, name)
    local ok, obj = pcall(make, ...)
    if not ok then error(obj, 2) end
    return obj
  end
end

function Manager:shutdown() self._closed = true end
Manager.__close = Manager.shutdown
function Manager:__tostring() return self._closed and "Manager (shut down)" or "Manager" end

local function new_manager()
  return setmetatable({ _closed = false }, Manager)
end

local SHM_OPTS = { name = true, create = true, size = true, unlink = true }

-- mp.SharedMemory(size) or mp.SharedMemory{name =, create =, size =,
-- unlink =}: create defaults to true without a name, false with one.
local function SharedMemory(arg)
  local name, create, size, keep
  if math.type(arg) == "integer" then
    create, size = true, arg
  elseif type(arg) == "table" then
    checks.check_options(arg, SHM_OPTS, 1, "SharedMemory")
    name, size, keep = arg.name, arg.size, arg.unlink == false
    if name ~= nil and type(name) ~= "string" then
      argerror(1, "SharedMemory", "name: string expected, got " .. typename(name))
    end
    if size ~= nil and math.type(size) ~= "integer" then
      argerror(1, "SharedMemory", "size: integer expected, got " .. typename(size))
    end
    create = arg.create
    if create == nil then create = name == nil end
  else
    argerror(1, "SharedMemory", "size or options table expected, got " .. typename(arg))
  end
  local ok, shm = pcall(core.shm_open, name, create, size)
  if not ok then error(shm, 2) end
  if keep then shm:keep() end
  return shm
end

return { Manager = new_manager, SharedMemory = SharedMemory }
