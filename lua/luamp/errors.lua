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
-- A task's error crosses processes: a worker runs every task under a
-- message handler that keeps the error value, its message and the
-- traceback where it was raised (the worker cannot send the traceback
-- later: its stack is gone by then); the parent makes of them an Error
-- of kind "remote" (pool.lua, remote_error).  The traceback shows the
-- task's frames only: below the task's function lie the worker's loop
-- and the frames of the script that forked the worker (its mp.Pool
-- call), which say nothing about the error and mislead.  The worker
-- knows how many frames lie below a task (worker.lua), so the handler
-- cuts the stack there, counting from its bottom: that holds however
-- deep the task's stack, where debug.traceback elides the middle.  What
-- the remote traceback cannot say, where the script submitted the task,
-- the parent adds at its end (note_site): "task submitted by map at
-- script.lua:9" when the job recorded it (map-likes, once per job; an
-- Executor's submit), else "task's error received at script.lua:12",
-- where get() handed the error to the script (apply_async records
-- nothing: its cost per task is the point of its fast path).
--
-- Uses no other part; the core only for its registry key names.

local core = ...
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

debug.getregistry()[core.registry_keys.raise] = function(kind, message, errno)
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

-- A line of a traceback, as luaL_traceback writes it.
local function global_name(f)
  for mod, t in pairs(package.loaded) do
    if type(t) == "table" then
      for k, v in pairs(t) do
        if v == f and type(k) == "string" then return mod == "_G" and k or mod .. "." .. k end
      end
    end
  end
end

-- (`task`: the task's own frame, named as the function it is: its
-- name in the frame that called it would be a local of luamp's.)
local function frame_line(ar, task)
  local name = global_name(ar.func)
  if name then name = "function '" .. name .. "'"
  elseif ar.namewhat ~= "" and not task then name = ar.namewhat .. " '" .. ar.name .. "'"
  elseif ar.what == "main" then name = "main chunk"
  elseif ar.what ~= "C" then name = "function <" .. ar.short_src .. ":" .. ar.linedefined .. ">"
  else name = "?" end
  local line = ar.currentline > 0 and ":" .. ar.currentline or ""
  return "\n\t" .. ar.short_src .. line .. ": in " .. name .. (ar.istailcall and "\n\t(...tail calls...)" or "")
end

-- debug.traceback(msg, level + 1) without the `below` frames at the
-- bottom of the stack; levels are counted from the caller's caller.
local LEVELS1, LEVELS2 = 10, 11    -- (luaL_traceback's: a deep stack shows its ends)

-- The number of the bottom level of the stack, counted from the caller
-- of this function (as luaL_traceback finds it: by halves, since each
-- getinfo walks the stack from its top).
local function last_level()
  local lo, hi = 1, 2
  while debug.getinfo(hi, "l") do lo, hi = hi, hi * 2 end
  while hi - lo > 1 do
    local mid = (lo + hi) // 2
    if debug.getinfo(mid, "l") then lo = mid else hi = mid end
  end
  return lo - 1
end

local function traceback_above(msg, level, below)
  local first, last = level + 1, last_level() - below
  if last < first then return debug.traceback(msg, level + 1) end
  local out = { msg, "\nstack traceback:" }
  local l = first
  while l <= last do
    if last - first + 1 > LEVELS1 + LEVELS2 and l == first + LEVELS1 then
      local skip = last - l - LEVELS2 + 1
      out[#out + 1] = string.format("\n\t...\t(skipping %d levels)", skip)
      l = l + skip
    end
    out[#out + 1] = frame_line(debug.getinfo(l, "Slntf"), l == last)
    l = l + 1
  end
  return table.concat(out)
end

-- An error as a task reports it.  A message handler calls error_info in
-- tail position, which leaves error_info in the handler's place: so
-- `level` counts from error_info, and 2 is the function that raised.
-- (Not tail position would cost a frame of the few a handler has after
-- a stack overflow.)  With `below`, the traceback leaves out that many
-- frames at the bottom of the stack: those under the task's function.
local function error_info(e, level, below)
  local msg = errmsg(e)
  local tb = below and traceback_above(msg, level, below) or debug.traceback(msg, level)
  return { value = e, message = msg, traceback = tb }
end

local function traceback_handler(e)
  return error_info(e, 2)
end

-- Where the script called into luamp: "script.lua:12", the first frame
-- from `level` (1: the caller of this function) out that is neither C
-- nor one of luamp's own chunks ("=luamp/..."); nil past a few frames.
local function script_site(level)
  for l = level + 1, level + 8 do
    local ar = debug.getinfo(l, "Sl")
    if not ar then return nil end
    if ar.what ~= "C" and ar.source:sub(1, 7) ~= "=luamp/" then return ar.short_src .. ":" .. ar.currentline end
  end
end

-- Adds `line` ("task submitted by map at script.lua:9") at the end of a
-- remote error's traceback, once; returns the error.
local function note_site(e, line)
  if getmetatable(e) == Error and e.kind == "remote" and not rawget(e, "site") and line then
    e.site = line
    e.traceback = (type(e.traceback) == "string" and e.traceback .. "\n" or "") .. line
  end
  return e
end

return {
  Error = Error,
  script_site = script_site,
  last_level = last_level,
  note_site = note_site,
  new_error = new_error,
  raise = raise,
  errmsg = errmsg,
  error_info = error_info,
  traceback_handler = traceback_handler,
}
