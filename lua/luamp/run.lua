-- SPDX-License-Identifier: MIT
-- luamp/run.lua: mp.run, a program run from an argument list.
--
-- mp.run(argv, opts) runs a program, never through a shell, and waits
-- for it, feeding its input and collecting its output together so that
-- neither can block the other (core.run, src/run.c).  The program dies
-- with the process that ran it, however that one dies: it runs in a
-- process group that a watchdog kills (src/run.c says how, and why not
-- PR_SET_PDEATHSIG).  The main script keeps its program in the
-- terminal's foreground (the last argument of core.run), so that an
-- editor or a password prompt works.  Here: the checks of argv and the
-- options, and the errors, "process" for a program that could not start
-- or (check = true) failed, "timeout" for one killed at its deadline,
-- each with the output read so far.
--
-- Uses: errors, checks, current, process.

local core, part = ...

local errors = part("errors")
local Error, new_error, raise = errors.Error, errors.new_error, errors.raise
local checks = part("checks")
local argerror, typename, check_options = checks.argerror, checks.typename, checks.check_options
local current = part("current")
local describe_exit = part("process").describe_exit

local RUN_OPTS = { capture = true, input = true, timeout = true, check = true, cwd = true, env = true }

-- The command line, shortened, for messages.
local function describe_command(argv)
  local s = table.concat(argv, " ")
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return "'" .. s .. "'"
end

local function run(argv, opts)
  if type(argv) ~= "table" then
    argerror(1, "run", "argument list (a table of strings) expected, got " .. typename(argv) ..
      (type(argv) == "string" and "; no shell is involved: {\"sh\", \"-c\", command} runs one" or ""))
  end
  local args = {}
  for i = 1, #argv do
    local a = argv[i]
    if math.type(a) then a = tostring(a) end
    if type(a) ~= "string" then argerror(1, "run", "argument " .. i .. " must be a string, got " .. typename(a)) end
    if a:find("\0", 1, true) then argerror(1, "run", "argument " .. i .. " contains a NUL byte") end
    args[i] = a
  end
  if #args == 0 then argerror(1, "run", "the argument list is empty") end
  opts = check_options(opts, RUN_OPTS, 2, "run")
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0)) then
    argerror(2, "run", "timeout must be a positive number, got " .. tostring(timeout))
  end
  for _, k in ipairs({ "capture", "check" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "boolean" then argerror(2, "run", k .. " must be a boolean, got " .. typename(opts[k])) end
  end
  for _, k in ipairs({ "input", "cwd" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then argerror(2, "run", k .. " must be a string, got " .. typename(opts[k])) end
  end
  local env = opts.env
  if env ~= nil then
    if type(env) ~= "table" then argerror(2, "run", "env must be a table, got " .. typename(env)) end
    for k, v in pairs(env) do
      if type(k) ~= "string" or k == "" or k:find("=", 1, true) or k:find("\0", 1, true) then
        argerror(2, "run", "env: " .. tostring(k) .. " is not a variable name")
      end
      if v ~= false and type(v) ~= "string" then
        argerror(2, "run", "env." .. k .. " must be a string (or false to remove it), got " .. typename(v))
      end
      if v and v:find("\0", 1, true) then argerror(2, "run", "env." .. k .. " contains a NUL byte") end
    end
  end
  local ok, code, sig, out, err, timed_out = pcall(core.run, args, opts.capture, opts.input, timeout, opts.cwd, env,
    current.name == "MainProcess")
  if not ok then
    if Error.is(code) then error(code, 2) end          -- (interrupted)
    raise("process", tostring(code), 2)
  end
  local r = { code = code, signal = sig, stdout = out, stderr = err }
  if timed_out then
    error(new_error("timeout", string.format("%s ran past its %gs timeout and was killed",
      describe_command(args), timeout), { stdout = out, stderr = err }), 2)
  end
  if opts.check and code ~= 0 then
    error(new_error("process", string.format("%s %s", describe_command(args),
      code and ("exited with status " .. code) or describe_exit(-sig)),
      { code = code, signal = sig, stdout = out, stderr = err }), 2)
  end
  return r
end

return { run = run }
