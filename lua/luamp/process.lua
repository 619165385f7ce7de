-- SPDX-License-Identifier: MIT
-- luamp/process.lua: mp.Process, a function run in a child process.
--
-- A Process is a table of options until start: then a child is forked
-- (or spawned: spawn.lua) and runs target(table.unpack(args)) under the
-- message handler, prints the traceback if it raised, ends what it left
-- running as the end of a script does (current.shutdown), and leaves by
-- core._exit: never by returning into the parent's code, whose atexit
-- handlers and finalizers are the parent's to run.  Its exit status is
-- 0, or 1 when the target raised.
--
-- The parent keeps the child's handle (a pidfd) and the Process in
-- current.children until it learns the exit: exitcode polls the handle
-- without waiting, join waits.  A Process cannot be sent to another
-- process: its handle is its starter's alone.
--
-- mp.active_children lists the live Processes and, as Python's does, the
-- workers of this process's pools.
--
-- describe_exit says how a process ended, for the errors of mp.run and
-- of a pool whose worker died.
--
-- Uses: errors, checks, current, spawn.

local core, part = ...

local traceback_handler = part("errors").traceback_handler
local raise = part("errors").raise
local checks = part("checks")
local argerror, typename, check_callable = checks.argerror, checks.typename, checks.check_callable
local check_options, check_timeout = checks.check_options, checks.check_timeout
local current = part("current")
local children, become_child = current.children, current.become_child
local spawn = part("spawn")
local check_start_method, check_preload, spawn_child = spawn.check_start_method, spawn.check_preload, spawn.spawn_child

local getpid = core.getpid
local unpack = table.unpack

local Process = {}
local process_count = 0

local function process_index(self, k)
  if k == "exitcode" then
    local h = rawget(self, "_h")
    if h and rawget(self, "_exitcode") == nil then
      local code = h:poll(0)
      if code then self._exitcode = code; children[self] = nil end
    end
    return rawget(self, "_exitcode")
  end
  return Process[k]
end

local ProcessMT = { __index = process_index, __name = "luamp.Process",
  __luamp_nosend = "a Process cannot be sent (send its pid, or a Queue or Pipe to talk to it)" }

function ProcessMT.__tostring(self)
  return string.format("Process %s (pid %s)", self.name, tostring(self.pid))
end

local PROCESS_OPTS = { target = true, args = true, name = true, daemon = true, start_method = true, preload = true }

local function new_process(opts)
  if type(opts) ~= "table" then argerror(1, "Process", "table expected, got " .. typename(opts)) end
  check_options(opts, PROCESS_OPTS, 1, "Process")
  check_callable(opts.target, 1, "Process")
  local args = opts.args or {}
  if type(args) ~= "table" then argerror(1, "Process", "args must be a table, got " .. typename(args)) end
  process_count = process_count + 1
  local name = opts.name
  if name == nil then name = "Process-" .. process_count end
  if type(name) ~= "string" then argerror(1, "Process", "name must be a string, got " .. typename(name)) end
  return setmetatable({ target = opts.target, args = args, name = name,
                        daemon = not not opts.daemon,
                        start_method = check_start_method(opts.start_method, 1, "Process"),
                        preload = check_preload(opts.preload, 1, "Process") }, ProcessMT)
end

-- A Process's life in its child, forked or spawned: runs the target, ends
-- what it left running as a script's end does, and exits.
local function run_process(name, target, args)
  become_child(name)
  local ok, info = xpcall(target, traceback_handler, unpack(args, 1, args.n or #args))
  if not ok then
    io.stderr:write(string.format("Process %s (pid %d):\n%s\n", name, getpid(), info.traceback))
  end
  pcall(current.shutdown)
  core._exit(ok and 0 or 1)
end

function Process:start()
  if rawget(self, "_h") then raise("usage", "cannot start a Process twice", 2) end
  if self.start_method == "spawn" then
    local h = spawn_child({ kind = "process", name = self.name, target = self.target, args = self.args },
      self.preload, "Process")
    self._h = h
    self.pid = h.pid
    children[self] = true
    return
  end
  local h = core.fork(false)
  if h == 0 then run_process(self.name, self.target, self.args) end
  self._h = h
  self.pid = h.pid
  children[self] = true
end

local function started(self, what)
  local h = rawget(self, "_h")
  if not h then raise("usage", "cannot " .. what .. " a Process that was not started", 3) end
  return h
end

function Process:join(timeout)
  check_timeout(timeout, 1, "join")
  local h = started(self, "join")
  local code = h:poll(timeout == nil and -1 or timeout)
  if code then self._exitcode = code; children[self] = nil; return true end
  return false
end

function Process:is_alive()
  if not rawget(self, "_h") then return false end
  return self.exitcode == nil
end

function Process:terminate() started(self, "terminate"):signal(15) end
function Process:kill() started(self, "kill"):signal(9) end

-- The live children: Process objects, and, as in Python, the workers of
-- this process's pools (pool.lua, Pool:_children: records with pid, name,
-- daemon and is_alive).
local function active_children()
  local list = {}
  for p in pairs(children) do
    if p:is_alive() then list[#list + 1] = p end
  end
  for pool in pairs(current.pools) do
    for _, w in ipairs(pool:_children()) do list[#list + 1] = w end
  end
  table.sort(list, function(a, b) return a.pid < b.pid end)
  return list
end

local signames = { [1] = "SIGHUP", [2] = "SIGINT", [3] = "SIGQUIT", [4] = "SIGILL", [6] = "SIGABRT",
  [7] = "SIGBUS", [8] = "SIGFPE", [9] = "SIGKILL", [11] = "SIGSEGV", [13] = "SIGPIPE", [15] = "SIGTERM" }

-- code: an exit status, or minus the signal that killed the process.
local function describe_exit(code)
  if code < 0 then
    return string.format("killed by signal %d (%s)", -code, signames[-code] or "?")
  end
  return "exited with status " .. code
end

return {
  Process = new_process,
  active_children = active_children,
  run_process = run_process,
  describe_exit = describe_exit,
}
