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
