-- SPDX-License-Identifier: MIT
-- luamp/checks.lua: argument checks, options tables and deadlines.
--
-- A bad call gets the error Lua's own libraries give, at the caller's
-- line: `script.lua:7: bad argument #1 to 'Pool' (positive integer
-- expected, got string)`.  The checks run deep inside the library (an
-- Executor makes a Pool, which checks its options), so argerror does not
-- count levels: it walks the stack past every frame of the library's
-- parts (their chunk names start "=luamp/": init.lua) and of the C fast
-- paths that call back into them (c_fast_paths: pool.lua registers
-- apply_async's), and blames the first frame outside.
--
-- Options are tables of named fields, checked against the names a call
-- knows: a misspelt option is an error, not a silently ignored default.
--
-- Timeouts are seconds from now (nil: wait for ever); a call that waits
-- several times turns its timeout into one deadline (deadline_of) and
-- passes what remains of it to each wait (remaining), so the whole call
-- keeps to the timeout.
--
-- Uses no other part.

local core = ...

local setmetatable, getmetatable, type, error = setmetatable, getmetatable, type, error
local tointeger = math.tointeger
local now = core.now

-- The error points at the first caller outside the library (its parts,
-- whose chunk names are "=luamp/...", see init.lua, and its C fast paths,
-- which call back into them): the user's line.
local c_fast_paths = setmetatable({}, { __mode = "k" })
local function argerror(n, fname, msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "Sf")
    if not info or (info.source:sub(1, 7) ~= "=luamp/" and not c_fast_paths[info.func]) then break end
    level = level + 1
  end
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), level)
end

local function typename(v)
  if math.type(v) == "float" then return "number" end
  return type(v)
end

local function check_callable(v, n, fname)
  if type(v) == "function" then return end
  local mt = getmetatable(v)
  if mt and mt.__call then return end
  argerror(n, fname, "function expected, got " .. typename(v))
end

-- v must be a key of `set` (names); `must` says which, for the error.
local function check_one_of(v, set, n, fname, must)
  if type(v) ~= "string" or not set[v] then
    argerror(n, fname, must .. ", got " .. (type(v) == "string" and ('"' .. v .. '"') or typename(v)))
  end
end

-- opts (nil: none) must be a table whose keys are all in `known`;
-- returns it, or an empty table.
local NO_OPTIONS = setmetatable({}, { __newindex = function() error("options are read-only", 2) end })
local function check_options(opts, known, n, fname)
  if opts == nil then return NO_OPTIONS end
  if type(opts) ~= "table" then argerror(n, fname, "options table expected, got " .. typename(opts)) end
  for k in pairs(opts) do
    if not known[k] then argerror(n, fname, "unknown option '" .. tostring(k) .. "'") end
  end
  return opts
end

local function check_timeout(v, n, fname)
  if v ~= nil and type(v) ~= "number" then
    argerror(n, fname, "number expected, got " .. typename(v))
  end
end

local function check_posint(v, n, fname, allow_nil)
  if v == nil and allow_nil then return nil end
  local i = tointeger(v)
  if not i or i < 1 then
    argerror(n, fname, "positive integer expected, got " ..
      (type(v) == "number" and tostring(v) or typename(v)))
  end
  return i
end

local function check_bool(v, n, fname, what)
  if v ~= nil and type(v) ~= "boolean" then
    argerror(n, fname, what .. " must be a boolean, got " .. typename(v))
  end
end

local function deadline_of(timeout)
  if timeout == nil then return nil end
  return now() + (timeout > 0 and timeout or 0)
end

local function remaining(deadline)
  if deadline == nil then return nil end
  local left = deadline - now()
  return left > 0 and left or 0
end

-- A task a worker took at `since` (its claim slot's time) with `timeout`
-- seconds: whether the worker must be killed now (past the deadline, and
-- not killed for this task already: killed[slot] then records it), and
-- the earliest deadline still ahead (first, or this task's if sooner).
-- Pool:_check_deadlines and a cluster node's supervisor use it.
local function claimed_deadline(killed, slot, seq, since, timeout, t, first)
  if killed[slot] == seq then return false, first end
  local dl = since + timeout
  if dl <= t then
    killed[slot] = seq
    return true, first
  end
  if not first or dl < first then first = dl end
  return false, first
end

return {
  claimed_deadline = claimed_deadline,
  c_fast_paths = c_fast_paths,
  argerror = argerror,
  typename = typename,
  check_callable = check_callable,
  check_one_of = check_one_of,
  NO_OPTIONS = NO_OPTIONS,
  check_options = check_options,
  check_timeout = check_timeout,
  check_posint = check_posint,
  check_bool = check_bool,
  deadline_of = deadline_of,
  remaining = remaining,
}
