-- SPDX-License-Identifier: MIT
-- tap.lua: a small TAP producer for luamp's Lua tests.
--   local t = require "tap"
--   t.ok(cond, "name"); t.is(got, want, "name"); t.same(got, want, "name")
--   t.raises(fn, pattern, "name"); t.done()
-- Every check names the behaviour it pins; t.done() prints the plan and
-- makes the script exit non-zero if anything failed.
local M = {}
local n, failed = 0, 0

local function report(pass, name, diag)
  n = n + 1
  io.write(pass and "ok " or "not ok ", n, " - ", name, "\n")
  if not pass then
    failed = failed + 1
    for line in (diag or ""):gmatch("[^\n]+") do io.write("#   ", line, "\n") end
  end
  io.flush()
  return pass
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if math.type(v) == "float" then return string.format("%.17g (float)", v) end
  return tostring(v)
end

function M.ok(cond, name, diag) return report(not not cond, name, diag) end

function M.is(got, want, name)
  local pass = rawequal(got, want) or got == want
    or (got ~= got and want ~= want)                  -- NaN is NaN
  if pass and type(got) == "number" and type(want) == "number" then
    pass = math.type(got) == math.type(want)
  end
  return report(pass, name, "got:  " .. show(got) .. "\nwant: " .. show(want))
end

local function deep(a, b, path, seen)
  if type(a) ~= type(b) then
    return false, path .. ": got " .. show(a) .. ", want " .. show(b)
  end
  if type(a) ~= "table" then
    if a == b or (a ~= a and b ~= b) then
      if type(a) == "number" and math.type(a) ~= math.type(b) then
        return false, path .. ": got " .. show(a) .. ", want " .. show(b)
      end
      return true
    end
    return false, path .. ": got " .. show(a) .. ", want " .. show(b)
  end
  if seen[a] == b then return true end
  seen[a] = b
  for k, v in pairs(b) do
    local ok, why = deep(a[k], v, path .. "[" .. show(k) .. "]", seen)
    if not ok then return false, why end
  end
  for k in pairs(a) do
    if b[k] == nil then return false, path .. "[" .. show(k) .. "]: unexpected " .. show(a[k]) end
  end
  return true
end

function M.same(got, want, name)
  local pass, why = deep(got, want, "value", {})
  return report(pass, name, why)
end

function M.like(got, pattern, name)
  local pass = type(got) == "string" and got:find(pattern) ~= nil
  return report(pass, name, "got:     " .. show(got) .. "\npattern: " .. pattern)
end

-- Calls fn; passes when it raises an error whose tostring matches pattern.
-- Returns the error value so that callers can check more of it.
function M.raises(fn, pattern, name)
  local ok, err = pcall(fn)
  if ok then report(false, name, "no error was raised") return nil end
  local s = tostring(err)
  report(s:find(pattern) ~= nil, name, "error:   " .. s .. "\npattern: " .. pattern)
  return err
end

function M.skip(name, why) n = n + 1; io.write("ok ", n, " - ", name, " # SKIP ", why, "\n") end

function M.diag(msg) for line in tostring(msg):gmatch("[^\n]+") do io.write("# ", line, "\n") end end

local finished = false

function M.done()
  finished = true
  io.write("1..", n, "\n")
  io.flush()
  if failed > 0 then os.exit(1) end
end

-- A script that dies part-way (an error outside a check) still ends its
-- TAP with a failure that says so, and a plan, rather than leaving the
-- harness to report a missing plan: luamp closes the state at exit, which
-- runs this finalizer.  (Its error and traceback are on stderr.)  Only
-- in the process that loaded this: forked children share stdout.
local function pid() return require("luamp").current_process().pid end
local owner = pid()
M._sentinel = setmetatable({}, { __gc = function()
  if finished or pid() ~= owner then return end
  report(false, "the test script ended before t.done(): it raised an error (on stderr) or exited")
  io.write("1..", n, "\n")
  io.flush()
end })

return M
