-- SPDX-License-Identifier: MIT
-- luamp/share.lua: luamp objects sent to a process that did not inherit
-- them.
--
-- A Queue, a Pipe end, a Lock or a Value is shared memory and
-- descriptors.  A forked child inherits every object made before its
-- fork, so the codec sends an object as its id alone, and the receiver
-- finds under that id the object it inherited.  A process that did not
-- inherit it (a spawned child, a pool worker forked before the object
-- was made) must be sent what it takes to make the object anew: a
-- description (describe_object: kind, id, sizes; core.sync_describe for
-- the objects of src/sync.c) and the descriptors, which only the start
-- of a fresh process (spawn.lua: they stay open across exec) or a Unix
-- socket (SCM_RIGHTS) can pass.  The receiver renumbers the descriptors
-- in the description (remap_object) and makes the object on the same
-- memory under the same id (attach_object).
--
-- Objects made after a pool's workers were forked (any, for spawned
-- workers) reach them ahead of the tasks that name them: before such a
-- task is put (the task queue's share hook), the parent sends each
-- worker that lacks one of its objects the object's description and
-- descriptors on that worker's object socket (a datagram with
-- SCM_RIGHTS), and a worker whose decoder meets an object it does not
-- know reads its socket (registry "luamp.fetch_objects") and makes the
-- objects there.  A worker whose socket is full (it has not read for a
-- long time) misses the object, hands the task back and is replaced
-- (see push_task in pool.c).  doc/design.md tells the whole story.
--
-- Uses: errors, current.

local core, part = ...
local KEYS = core.registry_keys      -- (src/registry.h)

local new_error = part("errors").new_error
local current = part("current")
local now = core.now

-- Calls fn on sync object description d (core.sync_describe) and on the
-- description of its lock, which a Value's, an Array's and a Condition's
-- holds (d.lock).
local function each_sync_part(d, fn)
  fn(d)
  if d.lock then each_sync_part(d.lock, fn) end
end

-- The descriptors of sync object description d, added to fds; a
-- Barrier's action becomes its encoding, which must not name luamp
-- objects (they would have to be sent before it is decoded).
local function sync_fds(d, fds)
  each_sync_part(d, function(p) fds[#fds + 1] = p.memfd end)
  if d.kind == "barrier" and d.action ~= nil then
    local reg, seen = debug.getregistry(), {}
    local outer = reg[KEYS.collect]
    reg[KEYS.collect] = seen
    local ok, bytes, why = pcall(core.encode, d.action, "the Barrier's action")
    reg[KEYS.collect] = outer
    if not ok then error(bytes, 0) end
    if not bytes then error(new_error("serialize", why), 0) end
    if next(seen) ~= nil then
      error(new_error("serialize", "cannot send a Barrier whose action refers to luamp objects " ..
        "to a spawned process"), 0)
    end
    d.action = bytes
  end
end

-- The fields of a description that are descriptors (-1: none, for a
-- one-way pipe end's missing side).
local DESCRIPTORS = {
  queue = { "memfd", "ev_get", "ev_put" },
  pool_queue = { "memfd", "ev_get", "ev_put" },
  pipe = { "memfd", "rx_fd", "tx_fd" },
}

-- What a process that did not inherit object obj (id) needs to make it
-- anew: {kind = "queue" | "pool_queue" | "pipe" | "sync", id = id, ...}
-- and the descriptors in it, added to fds.  Raises "serialize" for what
-- cannot go.
local function describe_object(obj, id, fds)
  local mt = getmetatable(obj)
  local kind = mt and mt.__name
  local o
  if kind == "luamp.Queue" or kind == "luamp.JoinableQueue" or kind == "luamp.PoolQueue" then
    o = { kind = kind == "luamp.PoolQueue" and "pool_queue" or "queue", id = id }
    o.memfd, o.ev_get, o.ev_put = core.queue_fds(obj)
  elseif kind == "luamp.Connection" then
    o = { kind = "pipe", id = id }
    o.memfd, o.ndir, o.rx_dir, o.rx_fd, o.tx_dir, o.tx_fd = core.pipe_fds(obj)
  elseif kind == "luamp.dict" or kind == "luamp.list" or kind == "luamp.Namespace" then
    local d = core.manager_describe(obj)   -- {kind =, id =, memfd =}
    if not d then error(new_error("serialize", "cannot send a collected " .. kind), 0) end
    fds[#fds + 1] = d.memfd
    return { kind = "managed", id = d.id, managed = d }
  elseif kind == "luamp.SharedMemory" then
    local d = core.shm_describe(obj)       -- {name =, id =}: opened by its name
    if not d then error(new_error("serialize", "cannot send a closed SharedMemory"), 0) end
    return { kind = "shm", id = d.id, shm = d }
  else
    local d = core.sync_describe(obj)     -- a lock, value, condition...: {kind =, id =, memfd =, ...}
    if not d then
      error(new_error("serialize", string.format("cannot send %s (%s) to a process that did not "
        .. "inherit it", tostring(obj), id)), 0)
    end
    sync_fds(d, fds)
    return { kind = "sync", id = id, sync = d }
  end
  for _, k in ipairs(DESCRIPTORS[o.kind]) do
    if o[k] >= 0 then fds[#fds + 1] = o[k] end
  end
  return o
end

-- Replaces the descriptor numbers in description o by map[number].
local function remap_object(o, map)
  if o.kind == "sync" then return each_sync_part(o.sync, function(p) p.memfd = map[p.memfd] end) end
  if o.kind == "managed" then o.managed.memfd = map[o.managed.memfd]; return end
  if o.kind == "shm" then return end
  for _, k in ipairs(DESCRIPTORS[o.kind]) do
    if o[k] >= 0 then o[k] = map[o[k]] end
  end
end

-- Makes the object description o describes (its descriptors are this
-- process's); session: a table shared by the objects made together.
local function attach_object(o, session)
  if o.kind == "queue" then return core.queue_attach(o.id, o.memfd, o.ev_get, o.ev_put)
  elseif o.kind == "pool_queue" then return core.pool_queue_attach(o.id, o.memfd, o.ev_get, o.ev_put)
  elseif o.kind == "pipe" then
    return core.pipe_attach(o.id, o.memfd, o.ndir, o.rx_dir, o.rx_fd, o.tx_dir, o.tx_fd)
  elseif o.kind == "managed" then return core.manager_attach(o.managed)
  elseif o.kind == "shm" then return core.shm_attach(o.shm)
  end
  local d = o.sync
  if d.kind == "barrier" and d.action then d.action = core.decode(d.action) end
  return core.sync_attach(d, session)
end

local SHARE_WAIT = 0.02   -- seconds a worker's full socket is waited for, per task
-- A worker keeps what it was sent while this process still has it: the
-- ids sent to it are checked against the registry of objects (weak) once
-- SCAN_EVERY more were sent, and those gone are sent as a "forget" list.
local SCAN_EVERY = 64

-- What the parent keeps per worker (pool._share[handle]): sock, this
-- end of the worker's object socket; known, how many objects this process
-- had made when it forked the worker (false: spawned, it knows none);
-- ids, {id = true} sent to it, and n, their count; scan_at, the count at
-- which the ids are next checked.
local function worker_record(sock, known)
  return { sock = sock, known = known, ids = {}, n = 0, scan_at = SCAN_EVERY }
end

-- Before a task naming `objects` (id -> object) is put on pool's task
-- queue: sends each worker those it lacks.
local function share_objects(pool, objects)
  local me, made = current.pid, {}
  local live = debug.getregistry()[KEYS.objects] or {}
  for _, h in ipairs(pool._workers) do
    local s = pool._share[h]
    local sock, known = s.sock, s.known
    local until_ = now() + SHARE_WAIT
    if sock and s.n >= s.scan_at then
      local gone = {}
      for id in pairs(s.ids) do
        if live[id] == nil then gone[#gone + 1] = id end
      end
      if #gone > 0 and core.objsock_send(sock, assert(core.encode({ "forget", gone })), {}, until_) then
        for _, id in ipairs(gone) do s.ids[id] = nil end
        s.n = s.n - #gone
      end
      s.scan_at = s.n + SCAN_EVERY
    end
    for id, obj in pairs(sock and objects or {}) do
      local need = not s.ids[id]
      if need and known then
        local pid, n = id:match(":(%d+):(%d+)$")
        need = tonumber(pid) == me and tonumber(n) > known
      end
      if need then
        local m = made[id]
        if not m then
          local fds, unique, seen = {}, {}, {}
          local o = describe_object(obj, id, fds)
          for _, fd in ipairs(fds) do
            if not seen[fd] then seen[fd] = true; unique[#unique + 1] = fd end
          end
          m = { assert(core.encode({ o, unique })), unique }
          made[id] = m
        end
        if core.objsock_send(sock, m[1], m[2], until_) then
          s.ids[id], s.n = true, s.n + 1
        else
          until_ = 0      -- (the worker is busy: not waiting for it again this time)
        end
      end
    end
  end
end

-- In a worker: makes the objects its parent sent on socket `sock`
-- whenever its decoder meets one it does not know, or it waits for a
-- task and the socket has something.  It keeps them (the registry of
-- objects holds them only weakly) until the parent says it let go of
-- them, so a job that makes a Queue per task does not fill the worker
-- with descriptors.
local function fetch_objects_from(sock)
  local held = {}     -- id -> object
  local reg = debug.getregistry()
  reg[KEYS.fetch_objects] = function()
    while true do
      local bytes, fds = core.objsock_recv(sock)
      if not bytes then return bytes ~= false end     -- (false: the parent's end is closed)
      local ok, m = pcall(core.decode, bytes)
      local o = ok and m[1]
      if o == "forget" then
        for _, id in ipairs(m[2]) do held[id] = nil end
        o = nil
      end
      local id = o and o.id
      local known = reg[KEYS.objects]
      if not o or (known and known[id] ~= nil) then
        for _, fd in ipairs(fds) do core.close_fd(fd) end
      else
        local map = {}
        for i, fd in ipairs(m[2]) do map[fd] = fds[i] end
        remap_object(o, map)
        local made, obj = pcall(attach_object, o, {})
        if made then held[id] = obj end
      end
    end
  end
  core.watch_objects(sock)
end

return {
  describe_object = describe_object,
  attach_object = attach_object,
  worker_record = worker_record,
  share_objects = share_objects,
  fetch_objects_from = fetch_objects_from,
}
