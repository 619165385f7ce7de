-- SPDX-License-Identifier: MIT
-- Every public function checks its arguments, with Lua's own wording.
local t = require "tap"
local mp = require "luamp"

local function bad(fn, pattern, name) t.raises(fn, pattern, name) end
local function f(x) return x end

bad(function() mp.Pool("x") end, "^[^:]*args%.lua:%d+: bad argument #1 to 'Pool' %(positive integer expected, got string%)", "Pool(string), reported at the caller's line")
bad(function() mp.Pool(2.5) end, "bad argument #1 to 'Pool' %(positive integer expected, got 2.5%)", "Pool(float)")
bad(function() mp.Pool{processes = 1, initializer = 3} end, "bad argument #1 to 'Pool' %(function expected, got number%)", "Pool initializer")
bad(function() mp.Pool{processes = 1, maxtasksperchild = 0} end, "bad argument #1 to 'Pool' %(positive integer expected", "Pool maxtasksperchild")
bad(function() mp.Queue("big") end, "bad argument #1 to 'Queue' %(non%-negative integer expected, got string%)", "Queue(string)")
bad(function() mp.Pipe("yes") end, "bad argument #1 to 'Pipe' %(boolean expected, got string%)", "Pipe(string)")
bad(function() mp.Process() end, "bad argument #1 to 'Process' %(table expected, got nil%)", "Process()")
bad(function() mp.Process{target = print, args = 3} end, "args must be a table", "Process args")
bad(function() mp.Process{target = print, name = {}} end, "name must be a string", "Process name")

do
  local q = mp.Queue()
  bad(function() q:get("soon") end, "bad argument #1 to 'get' %(number expected, got string%)", "Queue:get timeout")
  bad(function() q:put(1, "soon") end, "bad argument #2 to 'put' %(number expected, got string%)", "Queue:put timeout")
  bad(function() mp.Queue().get(5) end, "bad argument #1 to 'get' %(luamp.Queue expected, got number%)", "Queue:get self")
  local a = mp.Pipe()
  bad(function() a:recv("x") end, "bad argument #1 to 'recv' %(number expected, got string%)", "Connection:recv timeout")
  bad(function() a:poll({}) end, "bad argument #1 to 'poll' %(number expected, got table%)", "Connection:poll timeout")
end

do
  local p = mp.Process{target = function() end}
  p:start()
  bad(function() p:join("x") end, "bad argument #1 to 'join' %(number expected, got string%)", "Process:join timeout")
  p:join()
end

do
  local pool <close> = mp.Pool(1)
  local function f(x) return x end
  bad(function() pool:apply(f, 3) end, "bad argument #2 to 'apply_async' %(table expected, got number%)", "apply args")
  bad(function() pool:apply_async(f, {}, {callback = 1}) end, "bad argument #3 to 'apply_async' %(function expected, got number%)", "apply_async callback")
  bad(function() pool:map_async(f, {1}, "x") end, "bad argument #3 to 'map_async' %(chunksize or options table expected, got string%)", "map_async options")
  bad(function() pool:starmap(f, nil) end, "bad argument #2 to 'starmap' %(table expected, got nil%)", "starmap items")
  bad(function() pool:imap_unordered(nil, {}) end, "bad argument #1 to 'imap_unordered' %(function expected, got nil%)", "imap_unordered function")
  local r = pool:apply_async(f, {1})
  bad(function() r:get("x") end, "bad argument #1 to 'get' %(number expected, got string%)", "AsyncResult:get timeout")
  bad(function() r:wait({}) end, "bad argument #1 to 'wait' %(number expected, got table%)", "AsyncResult:wait timeout")
  bad(function() pool.map({}, f, {}) end, "bad argument #1 to 'map' %(Pool expected, got table%)", "map self")
  r:get()
end

-- Every options table refuses keys it does not know, the same way: a
-- misspelled option must not pass silently.
do
  local pool <close> = mp.Pool(1)
  local ex <close> = mp.Executor { max_workers = 1 }
  local function f(x) return x end
  local fut = ex:submit(f, 1)
  local calls = {
    { "Pool", 1, function(o) return mp.Pool(o) end, { processes = 1, initialiser = f }, "initialiser" },
    { "Process", 1, function(o) return mp.Process(o) end, { target = f, arg = {} }, "arg" },
    { "map", 3, function(o) return pool:map(f, { 1 }, o) end, { chunksze = 10 }, "chunksze" },
    { "starmap", 3, function(o) return pool:starmap(f, { { 1 } }, o) end, { chunk = 1 }, "chunk" },
    { "map_async", 3, function(o) return pool:map_async(f, { 1 }, o) end, { callbak = f }, "callbak" },
    { "starmap_async", 3, function(o) return pool:starmap_async(f, { { 1 } }, o) end, { errorcallback = f }, "errorcallback" },
    { "imap", 3, function(o) return pool:imap(f, { 1 }, o) end, { progres = true }, "progres" },
    { "imap_unordered", 3, function(o) return pool:imap_unordered(f, { 1 }, o) end, { time_out = 1 }, "time_out" },
    { "apply_async", 3, function(o) return pool:apply_async(f, { 1 }, o) end, { calback = f }, "calback" },
    { "apply_async", 3, function(o) return pool:apply_async(f, { 1 }, o) end, { chunksize = 2 }, "chunksize" },
    { "Executor", 1, function(o) return mp.Executor(o) end, { max_worker = 1 }, "max_worker" },
    { "map", 3, function(o) return ex:map(f, { 1 }, o) end, { chunk_size = 1 }, "chunk_size" },
    { "shutdown", 1, function(o) return ex:shutdown(o) end, { cancel_future = true }, "cancel_future" },
    { "wait", 2, function(o) return mp.wait({ fut }, o) end, { returnwhen = "FIRST_COMPLETED" }, "returnwhen" },
    { "run", 2, function(o) return mp.run({ "true" }, o) end, { capure = true }, "capure" },
  }
  for _, c in ipairs(calls) do
    local fname, n, call, opts, key = c[1], c[2], c[3], c[4], c[5]
    bad(function() call(opts) end,
      "bad argument #" .. n .. " to '" .. fname .. "' %(unknown option '" .. key .. "'%)",
      fname .. " refuses the unknown option '" .. key .. "'")
  end
  t.is(fut:result(), 1, "the executor was not shut down by the refused call")
  t.is(pool:apply(f, { 2 }), 2, "the pool still works after every refusal")
end

-- Objects that live in one process (a Pool, an Executor, a Future, an
-- AsyncResult, a Process, a Manager) are refused by name, at the user's path, not by
-- some private field deep inside them.
do
  local pool <close> = mp.Pool(1)
  local ex <close> = mp.Executor { max_workers = 1 }
  local r = pool:apply_async(function() return 1 end)
  local fut = ex:submit(function() return 1 end)
  local function refused(fn, pattern, name)
    local e = t.raises(fn, pattern, name)
    t.ok(mp.Error.is(e, "serialize"), name .. ": kind serialize")
  end
  refused(function() pool:apply(function() return pool end) end,
    "^cannot send function%.<upvalue pool>: a Pool cannot be sent %(", "a task naming its Pool as an upvalue")
  refused(function() pool:apply(f, { { a = { pool } } }) end,
    "^cannot send args%[1%]%.a%[1%]: a Pool cannot be sent", "a Pool deep in an argument")
  refused(function() ex:submit(function() return ex end) end,
    "^cannot send function%.<upvalue ex>: an Executor cannot be sent", "a task naming its Executor")
  refused(function() pool:apply(f, { fut }) end, "^cannot send args%[1%]: a Future cannot be sent", "a Future argument")
  refused(function() pool:apply(f, { r }) end, "^cannot send args%[1%]: an AsyncResult cannot be sent", "an AsyncResult argument")
  refused(function() mp.Queue():put(mp.Process { target = f }) end, "^cannot send item: a Process cannot be sent", "a Process put on a Queue")
  local m <close> = mp.Manager()
  refused(function() pool:apply(f, { m }) end, "^cannot send args%[1%]: a Manager cannot be sent %(send the dicts",
    "a Manager argument")
  t.is(pool:apply(function(d) d.k = 1; return d.k end, { m:dict() }), 1, "while a dict it made goes")
  r:get(); fut:result()
end

t.done()
