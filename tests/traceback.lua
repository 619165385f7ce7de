-- SPDX-License-Identifier: MIT
-- A task's remote traceback shows the task's frames only (not the
-- worker's loop, nor the script's frames that forked the worker), and
-- says where the script submitted the task.
local t = require "tap"
local mp = require "luamp"

local SRC = debug.getinfo(1, "S").short_src
local function here() return debug.getinfo(2, "l").currentline end
local function at(line) return SRC .. ":" .. line end
-- (plain find: SRC may hold pattern characters)
local function has(s, sub) return type(s) == "string" and s:find(sub, 1, true) ~= nil end

local POOL_LINE = here(); local pool <close> = mp.Pool(2)

local FAIL_DEF = here(); local function fail(x)
  if x == 3 then error("no 3") end     -- FAIL_DEF + 1
  return x
end
local INDEX_DEF = here(); local function index_nil(x)
  local t0 = nil; return t0.x          -- INDEX_DEF + 1
end

-- The traceback of e names the task's frames and nothing under them.
local function task_only(e, what)
  local tb = e.traceback
  t.ok(not has(tb, "luamp/"), what .. ": no frame of luamp's own", tb)
  t.ok(not has(tb, at(POOL_LINE)), what .. ": no frame of the mp.Pool call that forked the worker", tb)
  t.ok(not has(tb, "main chunk") and not has(tb, "[C]: in ?"), what .. ": no frame of the script under the task", tb)
end

local line = here(); local ok, e = pcall(pool.map, pool, fail, {1, 2, 3, 4}, 1)
t.ok(not ok and mp.Error.is(e, "remote"), "map with a failing item raises a remote error")
t.ok(has(e.traceback, "[C]: in function 'error'\n\t" .. at(FAIL_DEF + 1) .. ": in function <" .. at(FAIL_DEF) .. ">"),
  "map: the traceback names error() and the task's function and line", e.traceback)
task_only(e, "map")
t.ok(has(e.traceback, "\ntask submitted by map at " .. at(line)), "map: the traceback says where map was called", e.traceback)

local xs = {} for i = 1, 3000 do xs[i] = i end
line = here(); ok, e = pcall(pool.map, pool, index_nil, xs)
t.ok(has(e.traceback, "stack traceback:\n\t" .. at(INDEX_DEF + 1) .. ": in function <" .. at(INDEX_DEF) .. ">\n"),
  "map in big chunks: a runtime error's traceback starts at the task's line and names its function", e.traceback)
task_only(e, "map in big chunks")
t.ok(has(e.traceback, "\ntask submitted by map at " .. at(line)), "map in big chunks: the submission site", e.traceback)

local r = pool:apply_async(fail, {3})
line = here(); ok, e = pcall(r.get, r)
t.ok(has(e.traceback, at(FAIL_DEF + 1) .. ": in function <" .. at(FAIL_DEF) .. ">"),
  "apply_async: the traceback names the task's function and line", e.traceback)
task_only(e, "apply_async")
t.ok(has(e.traceback, "\ntask's error received at " .. at(line)), "apply_async: the traceback says which get received the error", e.traceback)
ok, e = pcall(r.get, r)
local _, count = e.traceback:gsub("task's error received", "")
t.is(count, 1, "apply_async: a second get does not add the site again")

line = here(); ok, e = pcall(function() for _ in pool:imap(fail, {1, 2, 3}) do end end)
task_only(e, "imap")
t.ok(has(e.traceback, "\ntask submitted by imap at " .. at(line)), "imap: the submission site", e.traceback)

do
  local ex <close> = mp.Executor{max_workers = 1}
  line = here(); local fut = ex:submit(fail, 3)
  ok, e = pcall(fut.result, fut)
  t.ok(has(e.traceback, at(FAIL_DEF + 1) .. ": in function <" .. at(FAIL_DEF) .. ">"),
    "Executor:submit: the traceback names the task's function and line", e.traceback)
  task_only(e, "Executor:submit")
  t.ok(has(e.traceback, "\ntask submitted by submit at " .. at(line)), "Executor:submit: the submission site", e.traceback)
end

-- A deep stack: debug.traceback elides its middle, and the cut still
-- falls at the task's function.
local DEEP_DEF = here(); local function deep(n)
  local function down(k) if k == 0 then error("bottom") end return 1 + down(k - 1) end
  local r = down(n)
  return r
end
ok, e = pcall(pool.map, pool, deep, {200}, 1)
t.ok(has(e.traceback, "(skipping "), "a deep task stack is elided in its middle", e.traceback)
t.ok(has(e.traceback, at(DEEP_DEF + 2) .. ": in function <" .. at(DEEP_DEF) .. ">\n"),
  "a deep task stack ends at the task's function", e.traceback)
task_only(e, "a deep stack")

t.done()
