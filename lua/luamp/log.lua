-- SPDX-License-Identifier: MIT
-- luamp/log.lua: mp.log, mp.log_to_stderr, and the pools' debug messages.
--
-- One line per message on stderr, written whole by one write(2)
-- (core.log_write), so lines from different processes never mix; each
-- names the process that wrote it (current.lua).  At "debug", pools say
-- what they do: workers started, tasks put, deaths and replacements.  A
-- forked child logs at its parent's level (it is a copy), a spawned one
-- is sent the level (spawn.lua).  LUAMP_LOG=level in the environment sets
-- the level before the script runs.
--
-- The level changes while other parts hold this table, so they read
-- log.level and log.debugging at the moment they need them (the pool
-- checks log.debugging before it formats a message).  A part that must
-- act when debugging starts or stops registers with on_debugging:
-- pool.lua switches apply_async between its C fast path and the Lua one,
-- which logs each task.
--
-- Uses: checks, current.

local core, part = ...

local checks = part("checks")
local argerror, typename, check_one_of = checks.argerror, checks.typename, checks.check_one_of
local current = part("current")

local LOG_LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
local LOG_PREFIX = { debug = "", info = "", warn = "WARN ", error = "ERROR " }

local log = {
  level = nil,         -- 1 (debug) to 4 (error); nil: off
  debugging = false,   -- level == 1
}

local watchers = {}    -- functions called with log.debugging when it changes

function log.set_level(l)
  local was = log.debugging
  log.level = l
  log.debugging = l == 1
  if log.debugging ~= was then
    for _, fn in ipairs(watchers) do fn(log.debugging) end
  end
end

-- fn(debugging) is called now, and again whenever log.debugging changes.
function log.on_debugging(fn)
  watchers[#watchers + 1] = fn
  fn(log.debugging)
end

local function check_level(level, n, fname)
  check_one_of(level, LOG_LEVELS, n, fname, 'level must be "debug", "info", "warn" or "error"')
  return LOG_LEVELS[level]
end

function log.log_to_stderr(level)
  if level == nil then log.set_level(nil) else log.set_level(check_level(level, 1, "log_to_stderr")) end
end

function log.log(level, fmt, ...)
  local l = check_level(level, 1, "log")
  if type(fmt) ~= "string" then argerror(2, "log", "format string expected, got " .. typename(fmt)) end
  if not log.level or l < log.level then return end
  local ok, msg = pcall(string.format, fmt, ...)
  if not ok then argerror(2, "log", "bad format or arguments: " .. tostring(msg)) end
  core.log_write(current.name, LOG_PREFIX[level] .. msg)
end

-- The pools' own messages (callers check log.debugging first).
function log.debug_log(fmt, ...)
  core.log_write(current.name, string.format(fmt, ...))
end

do
  local env = os.getenv("LUAMP_LOG")
  if env and env ~= "" then
    if LOG_LEVELS[env] then
      log.set_level(LOG_LEVELS[env])
    else
      io.stderr:write("luamp: LUAMP_LOG=", env, " is not a level (debug, info, warn, error); ignored\n")
    end
  end
end

return log
