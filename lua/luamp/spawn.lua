-- SPDX-License-Identifier: MIT
-- luamp/spawn.lua: start methods, and starting a fresh process.
--
-- "fork" (the default): a child is a fork of the running script, a copy
-- of its VM with everything made before the fork.  "spawn": a child is a
-- fresh luamp (or stock lua) process, which Python offers because a fork
-- of a multi-threaded program is unsafe; a spawned child has a clean VM.
--
-- spawn_child writes a start message and core.spawn starts the program
-- with `-e` code that sets package.path and cpath (a stock lua must find
-- the luamp module where the parent found it) and calls mp._spawned, the
-- other half of this file, in the child.  The message is a header
-- (package.path and cpath, the modules to preload, the log level, and
-- the description of each luamp object the body refers to: share.lua)
-- and a body encoded as a task is: a Process's target and arguments, or a
-- pool worker's queues, slot and initializer.  The encoder collects the
-- objects the body refers to (registry "luamp.collect"), so only those are
-- sent; their descriptors stay open across exec, and the child makes
-- each object under its id before it decodes the body.  core.spawn
-- forks and execs, with nothing but async-signal-safe calls between.
--
-- Uses: errors, checks, log, share, worker; and process, which uses this
-- file, looked up only when a spawned Process starts (spawned).

local core, part = ...

local errors = part("errors")
local new_error, errmsg = errors.new_error, errors.errmsg
local checks = part("checks")
local argerror, typename, check_one_of = checks.argerror, checks.typename, checks.check_one_of
local log = part("log")
local share = part("share")
local describe_object, attach_object = share.describe_object, share.attach_object
local worker = part("worker")

local START_METHODS = { fork = true, spawn = true }
local default_start_method = "fork"

local function check_start_method(name, n, fname)
  if name == nil then return default_start_method end
  check_one_of(name, START_METHODS, n, fname, 'start_method must be "fork" or "spawn"')
  return name
end

local function set_start_method(name)
  if name == nil then argerror(1, "set_start_method", '"fork" or "spawn" expected, got nil') end
  default_start_method = check_start_method(name, 1, "set_start_method")
end

local function get_start_method() return default_start_method end

local function check_preload(list, n, fname)
  if list == nil then return nil end
  if type(list) ~= "table" then argerror(n, fname, "preload must be a table of module names, got " .. typename(list)) end
  for i = 1, #list do
    if type(list[i]) ~= "string" then argerror(n, fname, "preload[" .. i .. "] must be a module name, got " .. typename(list[i])) end
  end
  return list
end

-- The program a spawned child runs: LUAMP_EXE if set; this program when it
-- is luamp or a stock lua (which finds the luamp module on package.cpath);
-- else (an application embedding luamp) the installed luamp.
local function spawn_program()
  local exe = os.getenv("LUAMP_EXE")
  if exe and exe ~= "" then return exe end
  local me = core.self_exe()
  local base = me:match("[^/]*$")
  if base:find("^luamp") or base:find("^lua") then return me end
  return core.installed_luamp or "luamp"
end

-- Starts a fresh process to run `body` (kind "process" or "worker"),
-- keeping descriptors extra_fds open in it too.
-- Raises "serialize" for what cannot travel, naming it under `root`.
local function spawn_child(body, preload, root, extra_fds, paths)
  local reg = debug.getregistry()
  local collect = {}
  reg[core.registry_keys.collect] = collect
  local ok, bytes, why = pcall(core.encode, body, root)
  reg[core.registry_keys.collect] = nil
  if not ok then error(bytes, 0) end
  if not bytes then error(new_error("serialize", why), 0) end
  local objects, fds = {}, {}
  for id, obj in pairs(collect) do objects[#objects + 1] = describe_object(obj, id, fds) end
  for _, fd in ipairs(extra_fds or {}) do fds[#fds + 1] = fd end
  paths = paths or { path = package.path, cpath = package.cpath, log = log.level }
  local header = assert(core.encode({ path = paths.path, cpath = paths.cpath, preload = preload or {},
                                      objects = objects, log = paths.log }))
  local exe = spawn_program()
  -- (the paths first: a stock lua must find the luamp module where this
  -- script found it, which may not be the default package.cpath)
  local boot = string.format("package.path = %q; package.cpath = %q; require('luamp')._spawned()",
    paths.path, paths.cpath)
  return core.spawn(exe, { exe, "-e", boot }, fds, string.pack("<s4", header) .. bytes)
end

-- mp._spawned: the start of a spawned process (see spawn_child).  Runs
-- what it was sent, and exits.
local function spawned()
  local payload = core.spawn_payload()
  if not payload then error("luamp: mp._spawned runs only in a process luamp spawned", 2) end
  local header, pos = string.unpack("<s4", payload)
  local h = core.decode(header)
  package.path, package.cpath = h.path, h.cpath
  if h.log then log.set_level(h.log) end
  -- (held here until the body, which refers to them, is decoded: the
  -- registry of objects holds them weakly)
  local held, session = {}, {}
  for _, o in ipairs(h.objects) do held[#held + 1] = attach_object(o, session) end
  local ok, err = pcall(function()
    for _, name in ipairs(h.preload) do require(name) end
  end)
  if not ok then
    io.stderr:write("luamp: a spawned process could not preload a module: ", errmsg(err), "\n")
    core._exit(1)
  end
  local body
  ok, body = pcall(core.decode, payload:sub(pos))
  held = nil
  if not ok then
    io.stderr:write("luamp: a spawned process could not receive what to run: ", errmsg(body), "\n")
    core._exit(1)
  end
  if body.kind == "process" then part("process").run_process(body.name, body.target, body.args) end
  core.ignore_sigint()
  if body.kind == "node_worker" then
    -- (a cluster Pool's worker on another rank: its Pool's initializer,
    -- arguments and limits come encoded from rank 0; a module they name
    -- that this host lacks fails the Pool, saying so)
    local cfg
    ok, cfg = pcall(core.decode, body.config)
    if not ok then
      pcall(body.rq.put_result, body.rq, 0, 0, 0, 0, core.getpid(), 0, nil,
        { message = "cannot receive the Pool's initializer on this host: " .. errmsg(cfg) })
      core._exit(1)
    end
    worker.run({ _tq = body.tq, _rq = body.rq, _initializer = cfg.init, _initargs = cfg.initargs or {},
                 _maxtasks = cfg.maxtasks }, body.index, body.slot, nil)
  end
  worker.run({ _tq = body.tq, _rq = body.rq, _initializer = body.init, _initargs = body.initargs or {},
               _maxtasks = body.maxtasks }, body.index, body.slot, body.objsock)
end

-- A cluster Pool's worker on this rank (cluster.lua): queues and slot of
-- this node, the rest as rank 0 sent it (header: path, cpath, preload,
-- log; body: still encoded).
local function spawn_node_worker(tq, rq, index, slot, header, body)
  return spawn_child({ kind = "node_worker", tq = tq, rq = rq, index = index, slot = slot, config = body },
    header.preload, "Pool", nil, header)
end

return {
  spawn_node_worker = spawn_node_worker,
  check_start_method = check_start_method,
  set_start_method = set_start_method,
  get_start_method = get_start_method,
  check_preload = check_preload,
  spawn_child = spawn_child,
  spawned = spawned,
}
