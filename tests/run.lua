-- SPDX-License-Identifier: MIT
-- mp.run (programs from argument lists) and logging (mp.log,
-- mp.log_to_stderr, LUAMP_LOG).
local t = require "tap"
local mp = require "luamp"

local luamp_bin = arg[-1]

-- output, input, status
do
  local r = mp.run({ "echo", "hello", "world" }, { capture = true })
  t.same({ r.code, r.signal, r.stdout, r.stderr }, { 0, nil, "hello world\n", "" },
    "a program's status and captured output")
  r = mp.run({ "sh", "-c", "echo out; echo err >&2; exit 3" }, { capture = true })
  t.same({ r.code, r.stdout, r.stderr }, { 3, "out\n", "err\n" }, "stdout and stderr apart, and the exit status")
  r = mp.run({ "sh", "-c", "kill -9 $$" })
  t.same({ r.code, r.signal }, { nil, 9 }, "a program killed by a signal has signal, not code")
  t.is(r.stdout, nil, "nothing is captured unless asked")
  r = mp.run({ "cat" }, { capture = true, input = "abc" })
  t.is(r.stdout, "abc", "input goes to the program's standard input")
  local big = string.rep("0123456789abcdef", 1 << 16)   -- 1 MiB, more than any pipe holds
  r = mp.run({ "cat" }, { capture = true, input = big })
  t.ok(r.stdout == big, "1 MiB in and out at once: no deadlock, nothing lost")
  r = mp.run({ "head", "-c", "1" }, { capture = true, input = big })
  t.same({ r.code, r.stdout }, { 0, "0" }, "a program that stops reading its input early is no error")
  r = mp.run({ "echo", 42, 1.5 }, { capture = true })
  t.is(r.stdout, "42 1.5\n", "numbers in the argument list become strings")
  r = mp.run({ "printf", "%s|", "a b", "$HOME", "*" }, { capture = true })
  t.is(r.stdout, "a b|$HOME|*|", "arguments reach the program as they are: no shell")
end

-- check, timeout
do
  local e = t.raises(function() mp.run({ "sh", "-c", "exit 2" }, { check = true, capture = true }) end,
    "'sh %-c exit 2' exited with status 2", "check = true raises on a non-zero status")
  t.ok(mp.Error.is(e, "process") and e.code == 2 and e.stdout == "", "of kind process, with code and output")
  e = t.raises(function() mp.run({ "sh", "-c", "kill -TERM $$" }, { check = true }) end,
    "killed by signal 15 %(SIGTERM%)", "and names a signal that killed it")
  t.is(e.signal, 15, "with the signal")
  t.is(mp.run({ "true" }, { check = true }).code, 0, "check passes a zero status")
  e = t.raises(function()
    mp.run({ "sh", "-c", "echo $$; exec sleep 30" }, { timeout = 0.3, capture = true })
  end, "ran past its 0.3s timeout and was killed", "a program past its timeout raises")
  t.ok(mp.Error.is(e, "timeout"), "of kind timeout")
  local pid = e.stdout and e.stdout:match("%d+")
  t.ok(pid ~= nil, "with what it wrote before: " .. tostring(pid))
  t.ok(pid and mp.run({ "kill", "-0", pid }, { capture = true }).code ~= 0, "and the program is gone")
end

-- cwd, env
do
  t.is(mp.run({ "pwd" }, { capture = true, cwd = "/tmp" }).stdout, "/tmp\n", "cwd sets the directory")
  local home = os.getenv("HOME") or ""
  local r = mp.run({ "sh", "-c", "echo \"$LUAMP_T1:$HOME\"" }, { capture = true, env = { LUAMP_T1 = "x y" } })
  t.is(r.stdout, "x y:" .. home .. "\n", "env adds to the inherited environment")
  r = mp.run({ "sh", "-c", "echo \"${HOME-unset}\"" }, { capture = true, env = { HOME = false } })
  t.is(r.stdout, "unset\n", "env removes a variable given false")
  r = mp.run({ "sh", "-c", "echo \"$HOME\"" }, { capture = true, env = { HOME = "/elsewhere" } })
  t.is(r.stdout, "/elsewhere\n", "and replaces one given a string")
  r = mp.run({ "sh", "-c", "echo \"$TZ $LUAMP_Z\"" }, { capture = true, env = { TZ = "UTC", LUAMP_Z = "z" } })
  t.is(r.stdout, "UTC z\n", "any name goes, z included")
end

-- bad input
do
  local e = t.raises(function() mp.run({ "luamp-no-such-program" }) end,
    "cannot run 'luamp%-no%-such%-program': No such file or directory", "a missing program raises")
  t.ok(mp.Error.is(e, "process"), "of kind process")
  t.raises(function() mp.run({ "pwd" }, { cwd = "/luamp/no/such/dir" }) end,
    "in the directory given as cwd", "a missing cwd is named")
  t.raises(function() mp.run("ls -l") end, "no shell is involved", "a command string is refused, saying why")
  t.raises(function() mp.run({}) end, "the argument list is empty", "an empty list is refused")
  t.raises(function() mp.run({ "echo", {} }) end, "argument 2 must be a string", "a bad argument is named")
  t.raises(function() mp.run({ "echo" }, { captured = true }) end, "unknown option 'captured'", "unknown options are refused")
  t.raises(function() mp.run({ "echo" }, { timeout = -1 }) end, "timeout must be a positive number", "timeout is checked")
  t.raises(function() mp.run({ "echo" }, { env = { ["A=B"] = "x" } }) end, "is not a variable name", "env names are checked")
  t.raises(function() mp.run({ "echo" }, { env = { A = 1 } }) end, "env.A must be a string", "env values too")
end

-- runs from a pool's tasks too
do
  local pool <close> = mp.Pool(2)
  local out = pool:map(function(w) return mp.run({ "echo", w }, { capture = true }).stdout end, { "a", "b", "c" })
  t.same({ out[1], out[2], out[3] }, { "a\n", "b\n", "c\n" }, "mp.run works in workers")
end

-- A program outlives nobody: it dies with the process that ran it, however
-- that process dies, and so do the children it did not detach.

-- Whether pid runs: a killed orphan may stay a zombie until init reaps it.
local function running(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local state = (f:read("a") or ""):match(".*%) (%a)")
  f:close()
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- The pids of `pids` still running after a few seconds, as a string; they
-- are killed, so that a failed check leaves nothing behind.
local function survivors(pids)
  local left = {}
  for _ = 1, 60 do
    left = {}
    for _, pid in ipairs(pids) do
      if running(pid) then left[#left + 1] = pid end
    end
    if #left == 0 then return "" end
    mp._sleep(0.05)
  end
  mp.run({ "kill", "-KILL", table.unpack(left) })
  return table.concat(left, " ")
end

-- The pids in file `path` once there are n of them (nil if that never comes).
local function pids_in(path, n)
  for _ = 1, 200 do
    local pids = {}
    local f = io.open(path)
    if f then
      for pid in f:read("a"):gmatch("%d+\n") do pids[#pids + 1] = pid:sub(1, -2) end
      f:close()
    end
    if #pids >= n then return pids end
    mp._sleep(0.05)
  end
end

-- sh writes its pid and its child's to the file named by its argument.
local FAMILY = { "sh", "-c", 'echo $$ >>"$1"; sleep 57 & echo $! >>"$1"; wait', "sh" }
local function family(file)
  local argv = table.move(FAMILY, 1, #FAMILY, 1, {})
  argv[#argv + 1] = file
  return argv
end

do
  local e = t.raises(function()
    mp.run({ "sh", "-c", "sleep 57 & echo $!; wait" }, { timeout = 0.3, capture = true })
  end, "ran past its 0.3s timeout", "a program with a child runs past its timeout")
  local pid = e.stdout and e.stdout:match("%d+")
  t.ok(pid ~= nil, "the child's pid was written: " .. tostring(pid))
  t.is(survivors({ pid }), "", "the timeout kills the program's child too")
end

do
  local file = os.tmpname()
  local pool <close> = mp.Pool(1)
  local r = pool:apply_async(function(argv) mp.run(argv) end, { family(file) }, { timeout = 2 })
  local pids = pids_in(file, 2)
  local ok, e = pcall(r.get, r)
  t.ok(not ok and mp.Error.is(e, "task_timeout"), "a task waiting in mp.run fails with task_timeout")
  t.ok(pids ~= nil, "its program wrote its pid and its child's")
  t.is(survivors(pids or {}), "", "the killed worker's program and the program's child die with the worker")
  os.remove(file)
end

do
  local file = os.tmpname()
  local p = mp.Process{ target = function(argv) mp.run(argv) end, args = { family(file) } }
  p:start()
  local pids = pids_in(file, 2)
  t.ok(pids ~= nil, "a Process's program wrote its pid and its child's")
  p:kill()
  p:join()
  t.is(p.exitcode, -9, "the Process was killed")
  t.is(survivors(pids or {}), "", "a Process killed in mp.run takes its program and the program's child with it")
  os.remove(file)
end

-- A luamp script, run apart, that prints its pid, then runs a program that
-- prints its own and its child's; returns the three pids and the handle.
local function script_in_run()
  local code = [[local mp = require "luamp"
    io.write(mp.current_process().pid, "\n")
    mp.run({"sh", "-c", "echo $$; sleep 57 & echo $!; wait"})]]
  -- (standard input not a terminal, even when make check runs at one:
  -- see the next block for a script at a terminal)
  local h = io.popen("exec '" .. luamp_bin .. "' -e '" .. code .. "' 2>/dev/null </dev/null")
  return h, h:read("l"), h:read("l"), h:read("l")
end

for _, sig in ipairs({ "KILL", "INT" }) do
  local h, script, program, child = script_in_run()
  t.ok(script and program and child, "a script in mp.run wrote the pids (SIG" .. sig .. ")")
  mp.run({ "kill", "-" .. sig, script or "0" })
  t.is(survivors({ program, child }), "", "a script stopped by SIG" .. sig .. " in mp.run: "
    .. "its program and the program's child die with it")
  h:close()
end

-- The main script at a terminal (in its foreground group) runs its
-- program in that group: the program can read the terminal (a program of
-- its own group would be stopped there, as a background job), and still
-- dies when the script is killed.  script(1) gives the script a terminal.
if mp.run({ "sh", "-c", "command -v script" }, { capture = true }).code ~= 0 then
  t.skip("mp.run from a script at a terminal", "no script(1) program (bsdutils)")
else
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write([[
local mp = require "luamp"
local r = mp.run({ "sh", "-c", "read x; echo got:$x" }, { timeout = 20, capture = true })
io.write(r.stdout)
]])
  f:close()
  local r = mp.run({ "script", "-qec", "'" .. luamp_bin .. "' " .. path, "/dev/null" },
    { input = "typed\n", capture = true, timeout = 30 })
  t.like(r.stdout, "got:typed", "a program run by the main script at a terminal reads what is typed there")

  local file = os.tmpname()
  f = assert(io.open(path, "w"))
  f:write(string.format([[
local mp = require "luamp"
local out = assert(io.open(%q, "a"))
out:write(mp.current_process().pid, "\n")
out:close()
mp.run({ "sh", "-c", 'echo $$ >>"$1"; exec sleep 57', "sh", %q })
]], file, file))
  f:close()
  -- (the terminal's session goes on after the script, as a shell's would:
  -- a session that ended would hang the terminal up, and SIGHUP would end
  -- the program whatever luamp does)
  local runner = mp.Process { target = function()
    mp.run({ "script", "-qec", "'" .. luamp_bin .. "' " .. path .. "; exec sleep 30", "/dev/null" },
      { input = "", timeout = 60 })
  end }
  runner:start()
  local pids = pids_in(file, 2)
  t.ok(pids ~= nil, "the script at a terminal wrote its pid and its program's")
  if pids then mp.run({ "kill", "-KILL", pids[1] }) end
  t.is(survivors(pids and { pids[2] } or {}), "", "a script at a terminal killed in mp.run takes its program with it")
  runner:kill()
  runner:join()
  os.remove(path)
  os.remove(file)
end

do
  local me = mp.current_process().pid
  local f = io.open("/proc/" .. me .. "/task/" .. me .. "/children")
  if f then
    mp.run({ "true" })
    pcall(mp.run, { "sleep", "5" }, { timeout = 0.1 })
    local kids = f:read("a")
    f:close()
    t.is(kids, "", "after mp.run returns or times out, no child of this process is left")
  end
end

-- logging: a luamp child's stderr
local function luamp(code, env)
  return mp.run({ luamp_bin, "-e", code }, { capture = true, env = env })
end

local LINE = "^%[luamp %d%d:%d%d:%d%d%.%d%d%d pid=%d+ "

do
  local r = luamp([[local mp = require "luamp"; mp.log("error", "not shown")]])
  t.is(r.stderr, "", "logging is off unless asked")
  r = luamp([[local mp = require "luamp"; mp.log_to_stderr("info"); mp.log("info", "hello %d", 5)
    mp.log("debug", "hidden"); mp.log("warn", "careful"); mp.log("error", "broken")]])
  local lines = {}
  for l in r.stderr:gmatch("[^\n]+") do lines[#lines + 1] = l end
  t.is(#lines, 3, "messages below the level are left out")
  t.like(lines[1], LINE .. "MainProcess%] hello 5$", "a line: time, pid, process name, message")
  t.like(lines[2], "%] WARN careful$", "warnings say so")
  t.like(lines[3], "%] ERROR broken$", "errors too")
  r = luamp([[local mp = require "luamp"; mp.log_to_stderr("info"); mp.log_to_stderr(nil); mp.log("error", "x")]])
  t.is(r.stderr, "", "log_to_stderr(nil) turns it off")
  r = luamp([[local mp = require "luamp"; mp.log_to_stderr("info")
    local p = mp.Process{name = "kid", target = function() mp.log("info", "from the child") end}
    p:start(); p:join()]])
  t.like(r.stderr, LINE .. "kid%] from the child\n$", "a child logs at its parent's level, under its own name")
end

do
  local r = luamp([[local mp = require "luamp"
    local procs = {}
    for i = 1, 2 do
      procs[i] = mp.Process{target = function()
        for k = 1, 300 do mp.log("info", "%d %d %s", i, k, string.rep("x", 200)) end
      end}
      procs[i]:start()
    end
    for _, p in ipairs(procs) do p:join() end]], { LUAMP_LOG = "info" })
  local n, whole = 0, true
  for l in r.stderr:gmatch("[^\n]*\n") do
    n = n + 1
    if not l:find(LINE .. "Process%-%d%] %d %d+ " .. string.rep("x", 200) .. "\n$") then whole = false end
  end
  t.is(n, 600, "LUAMP_LOG sets the level; 600 lines from two processes")
  t.ok(whole, "every line whole: none cut into by another process")
end

do
  local r = luamp([[local mp = require "luamp"
    local pool = mp.Pool(2)
    pool:map(function(x) return x end, {1, 2, 3, 4, 5}, 2)
    pcall(pool.apply, pool, os.exit, {1})
    pool:close(); pool:join()]], { LUAMP_LOG = "debug" })
  t.like(r.stderr, "Pool 1: starting 2 workers", "debug: the pool says it starts")
  t.like(r.stderr, "started PoolWorker%-1 %(pid %d+%)", "each worker started, with its pid")
  t.like(r.stderr, "map of 5 items: putting 3 tasks of 2 items", "what a map puts")
  t.like(r.stderr, "put apply task %d+ %(job %d+%)", "each apply task (its C fast path steps aside)")
  t.like(r.stderr, "PoolWorker%-%d %(pid %d+%) exited with status 1; the task it ran fails",
    "a worker's death")
  t.like(r.stderr, "replacing it", "and its replacement")
  t.like(r.stderr, "Pool 1: closed", "and the pool's end")
  r = luamp([[require "luamp"]], { LUAMP_LOG = "loud" })
  t.like(r.stderr, "LUAMP_LOG=loud is not a level", "a bad LUAMP_LOG is reported")
end

do
  t.raises(function() mp.log("loud", "x") end, "level must be", "mp.log checks the level")
  t.raises(function() mp.log_to_stderr(3) end, "level must be", "so does log_to_stderr")
  t.raises(function() mp.log("info", 5) end, "format string expected", "the format must be a string")
  mp.log_to_stderr("error")
  t.raises(function() mp.log("error", "%d", "x") end, "bad format or arguments", "a bad format raises")
  mp.log_to_stderr(nil)
end

t.done()
