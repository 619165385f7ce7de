-- SPDX-License-Identifier: MIT
-- Constructors that fail undo what they did before they raise: no worker
-- left running, no descriptor left open, and the error is an mp.Error of
-- kind "os" with the errno.  The limits (descriptors, processes) are set
-- on a luamp of its own, which reports what it saw on stdout.
local t = require "tap"
local mp = require "luamp"

local LUAMP = os.getenv("LUAMP") or arg[-1]

-- Runs a luamp script under `prefix` (prlimit, setpriv: words of a
-- command line), the script in a file everybody can read.  Returns
-- stdout, and mp.run's record.
local function run_limited(prefix, src)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  os.execute("chmod 0644 " .. path)
  local argv = {}
  for w in prefix:gmatch("%S+") do argv[#argv + 1] = w end
  argv[#argv + 1] = LUAMP
  argv[#argv + 1] = path
  local r = mp.run(argv, { capture = true, timeout = 60 })
  os.remove(path)
  return r.stdout, r
end

-- The child's helpers: descriptors and children of this process, read
-- from /proc without starting anything.
local PROBE = [[
local mp = require "luamp"
local pid = mp.current_process().pid
-- A descriptor kept in reserve, so that what counts them still can when
-- a constructor took all the others.
local reserve = assert(io.open("/dev/null"))
local function with_reserve(fn)
  reserve:close()
  local v = fn()
  reserve = assert(io.open("/dev/null"))
  return v
end
local function nfds()   -- (listing /proc/self/fd would take a program)
  return with_reserve(function()
    local n = 0
    for fd = 0, 1023 do
      local f = io.open("/proc/" .. pid .. "/fdinfo/" .. fd)
      if f then n = n + 1; f:close() end
    end
    return n
  end)
end
local function children()
  return with_reserve(function()
    local f = assert(io.open("/proc/" .. pid .. "/task/" .. pid .. "/children"))
    local s = f:read("a")
    f:close()
    return (s:gsub("%s+$", ""))
  end)
end
local function report(name, ok, e, before)
  local after, kids = nfds(), children()
  print(string.format("%s|%s|%s|%s|%s|%s|%s", name, tostring(ok), mp.Error.is(e) and e.kind or type(e),
    mp.Error.is(e) and tostring(e.errno) or "-", before == after and "same" or (before .. "->" .. after),
    kids == "" and "none" or kids, mp.Error.is(e) and e.message or tostring(e)))
end
]]

local function parse(out)
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local name, ok, kind, errno, fds, kids, msg = line:match("^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$")
    if name then rows[name] = { ok = ok, kind = kind, errno = errno, fds = fds, kids = kids, msg = msg } end
  end
  return rows
end

-- Descriptors run out while a pool starts its workers.
do
  local out, r = run_limited("prlimit --nofile=40", PROBE .. [[
for _, method in ipairs { "fork", "spawn" } do
  local before = nfds()
  local ok, e = pcall(mp.Pool, { processes = 60, start_method = method })
  report("Pool " .. method, ok, e, before)
  before = nfds()
  ok, e = pcall(mp.Executor, { max_workers = 60, start_method = method })
  report("Executor " .. method, ok, e, before)
end
local pool = mp.Pool(2)
print("retry|" .. pool:apply(function() return 6 * 7 end))
pool:close(); pool:join()
]])
  local rows = parse(out)
  for _, name in ipairs { "Pool fork", "Pool spawn", "Executor fork", "Executor spawn" } do
    local row = rows[name] or {}
    t.is(row.ok, "false", name .. " of 60 workers under a limit of 40 descriptors fails", r.stderr)
    t.is(row.kind, "os", name .. ": the error has kind os (" .. tostring(row.msg) .. ")")
    t.is(row.errno, "24", name .. ": the error's errno is EMFILE")
    t.like(row.msg, "Too many open files$", name .. ": the message ends with the system's reason")
    t.is(row.kids, "none", name .. ": no worker is left running")
    t.is(row.fds, "same", name .. ": every descriptor it opened is closed")
  end
  t.like(out, "retry|42\n", "a smaller pool starts right after the failures")
end

-- Descriptors run out while making queues, pipes and sync objects: each
-- failed constructor leaves the descriptor count as it found it.
do
  local out, r = run_limited("prlimit --nofile=48", PROBE .. [[
local makers = {
  Queue = mp.Queue, JoinableQueue = mp.JoinableQueue, Pipe = mp.Pipe,
  Lock = mp.Lock, RLock = mp.RLock, Semaphore = mp.Semaphore, Event = mp.Event,
  Condition = mp.Condition, Barrier = function() return mp.Barrier(2) end,
  Value = function() return mp.Value("i", 1) end, Array = function() return mp.Array("d", 4) end,
}
for name, make in pairs(makers) do
  local keep = {}
  local before, ok, e
  repeat
    before = nfds()
    local r = table.pack(pcall(make))    -- (both ends of a Pipe)
    ok, e = r[1], r[2]
    if ok then keep[#keep + 1] = r end
  until not ok or #keep > 2000
  report(name, ok, e, before)
  keep = nil
  collectgarbage(); collectgarbage()
end
]])
  local rows = parse(out)
  for _, name in ipairs { "Queue", "JoinableQueue", "Pipe", "Lock", "RLock", "Semaphore", "Event",
                          "Condition", "Barrier", "Value", "Array" } do
    local row = rows[name] or {}
    t.ok(row.ok == "false" and row.kind == "os" and row.errno == "24",
      name .. ": running out of descriptors raises kind os with errno EMFILE",
      "got: " .. tostring(row.ok) .. " " .. tostring(row.kind) .. " " .. tostring(row.errno) .. " " .. tostring(row.msg)
      .. "\n" .. r.stderr)
    t.is(row.fds, "same", name .. ": the failed constructor closed what it opened")
  end
end

-- Processes run out (RLIMIT_NPROC, which binds only users other than root):
-- the pool stops the workers it started before it raises.
do
  local uid = mp.run({ "id", "-u" }, { capture = true }).stdout
  local setpriv = mp.run({ "sh", "-c", "command -v setpriv" }, { capture = true }).code == 0
  local prefix
  if uid == "0\n" and setpriv then
    prefix = "prlimit --nproc=6 setpriv --reuid=65534 --regid=65534 --clear-groups"
  end
  if not prefix then
    t.skip("a pool that cannot fork all its workers stops those it started",
      "needs root, to run the script as user nobody under a process limit")
  else
    local out, r = run_limited(prefix, PROBE .. [[
for _, method in ipairs { "fork", "spawn" } do
  local before = nfds()
  local ok, e = pcall(mp.Pool, { processes = 8, start_method = method })
  report("Pool " .. method, ok, e, before)
end
local pool = mp.Pool(2)
print("retry|" .. pool:apply(function() return 6 * 7 end))
pool:close(); pool:join()
]])
    local rows = parse(out)
    for _, name in ipairs { "Pool fork", "Pool spawn" } do
      local row = rows[name] or {}
      if row.errno == "13" then
        -- (a spawned worker is this luamp run again, as nobody: a build
        -- under a directory only root may enter, /root, cannot be)
        t.skip(name .. " under a limit of 6 processes", "user nobody cannot run " .. LUAMP .. ": " .. tostring(row.msg))
        goto next
      end
      t.is(row.ok, "false", name .. " of 8 workers under a limit of 6 processes fails", r.stderr)
      t.ok(row.kind == "os" and row.errno == "11", name .. ": the error has kind os and errno EAGAIN",
        tostring(row.kind) .. " " .. tostring(row.errno) .. " " .. tostring(row.msg))
      t.is(row.kids, "none", name .. ": no worker is left running")
      t.is(row.fds, "same", name .. ": every descriptor it opened is closed")
      ::next::
    end
    t.like(out, "retry|42\n", "a smaller pool starts right after the failures")
  end
end

t.done()
