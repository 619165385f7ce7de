-- Every public function checks its arguments, with Lua's own wording.
local t = require "tap"
local mp = require "luamp"

local function bad(fn, pattern, name) t.raises(fn, pattern, name) end

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

t.done()
