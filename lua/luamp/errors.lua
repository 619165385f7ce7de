-- SPDX-License-Identifier: MIT
-- luamp/errors.lua: errors as values with a kind (mp.Error), and the
-- message handler tasks run under.
--
-- Every error luamp raises is an mp.Error: a table with a kind
-- ("timeout", "closed", "remote", "serialize", ...: README, Errors), a
-- message, and the fields its kind adds (errno, pid, exitcode, stdout, a
-- remote traceback), so that a script tells errors apart with
-- mp.Error.is(e, kind) instead of matching messages.  The C core raises
-- the same errors through the registry's "luamp.raise", set here.
--
-- An error is printed, logged and sent to other processes, so its
-- __tostring never raises whatever the fields hold, and errmsg makes a
-- sentence of any error value, an Error or not.
--
-- A task's error crosses processes: a worker runs every task under
-- traceback_handler, which keeps the error value, its message and the
-- traceback where it was raised (the worker cannot send the traceback
-- later: its stack is gone by then); the parent makes of them an Error
-- of kind "remote" (pool.lua, remote_error).
--
-- Uses no other part.

local setmetatable, getmetatable, type, error = setmetatable, getmetatable, type, error

local Error = {}
Error.__index = Error
Error.__name = "luamp.Error"

-- Always a string, whatever the fields hold: loggers and the host print
-- errors through it, and a __tostring that raises hides the error itself.
function Error.__tostring(e)
  local m = rawget(e, "message")
  if type(m) ~= "string" then
    m = string.format("%s error (%s)", tostring(rawget(e, "kind")), m == nil and "no message" or type(m) .. " message")
  end
  local tb = rawget(e, "traceback")
  if type(tb) == "string" then return m .. "\n" .. tb end
  return m
end

function Error.is(e, kind)
  return getmetatable(e) == Error and (kind == nil or e.kind == kind)
end

local function new_error(kind, message, fields)
  local e = fields or {}
  e.kind, e.message = kind, message
  return setmetatable(e, Error)
end

local function raise(kind, message, level)
  error(new_error(kind, message), level or 2)
end

debug.getregistry()["luamp.raise"] = function(kind, message, errno)
  error(new_error(kind, message, errno and { errno = errno }), 3)
end

-- A readable sentence for any error value.
local function errmsg(e)
  if type(e) == "string" then return e end
  local mt = getmetatable(e)
  if mt and mt.__tostring then
    local ok, s = pcall(tostring, e)
    if ok and type(s) == "string" then return s end
  end
  return "(error object is a " .. type(e) .. " value)"
end

-- An error as a task reports it; `level` 1 is the function that raised.
local function error_info(e, level)
  return { value = e, message = errmsg(e), traceback = debug.traceback(errmsg(e), level + 1) }
end

local function traceback_handler(e)
  return error_info(e, 2)
end

return {
  Error = Error,
  new_error = new_error,
  raise = raise,
  errmsg = errmsg,
  error_info = error_info,
  traceback_handler = traceback_handler,
}
