-- SPDX-License-Identifier: MIT
-- The methods a user's objects carry are the documented API
-- (README, "API"): a Queue does not carry a Pool's
-- private messages, nor a Connection its descriptors.
local t = require "tap"
local mp = require "luamp"

-- The names in the __index table(s) of obj's metatable, sorted.
local function methods(obj)
  local names, seen = {}, {}
  local mt = getmetatable(obj)
  while type(mt) == "table" and type(mt.__index) == "table" and not seen[mt] do
    seen[mt] = true
    for k in pairs(mt.__index) do names[#names + 1] = tostring(k) end
    mt = getmetatable(mt.__index)
  end
  table.sort(names)
  return names
end

local function set(list)
  local s = {}
  for _, k in ipairs(list) do s[k] = true end
  return s
end

local QUEUE = { "close", "empty", "full", "get", "get_nowait", "put", "put_nowait", "qsize" }
local JOINABLE = { "close", "empty", "full", "get", "get_nowait", "join", "put", "put_nowait",
                   "qsize", "task_done" }
local CONNECTION = { "close", "poll", "recv", "send" }

local function exactly(obj, documented, what)
  local allowed = set(documented)
  local extra = {}
  for _, k in ipairs(methods(obj)) do
    if not allowed[k] then extra[#extra + 1] = k end
  end
  t.is(table.concat(extra, " "), "", what .. " has no method outside the documented API")
  t.same(methods(obj), documented, what .. " has all its documented methods")
end

exactly(mp.Queue(), QUEUE, "a Queue")
exactly(mp.Queue(3), QUEUE, "a bounded Queue")
exactly(mp.JoinableQueue(), JOINABLE, "a JoinableQueue")
local a, b = mp.Pipe()
exactly(a, CONNECTION, "a duplex Pipe's first end")
exactly(b, CONNECTION, "a duplex Pipe's second end")
a, b = mp.Pipe(false)
exactly(a, CONNECTION, "a one-way Pipe's receiving end")
exactly(b, CONNECTION, "a one-way Pipe's sending end")

do
  -- the issue's report: the item was taken off as a malformed result
  local q = mp.Queue()
  q:put("user item")
  t.is(q.get_result, nil, "a Queue has no get_result to take an item off it")
  t.is(q:qsize(), 1, "and keeps its item")
  t.is(q:get(), "user item", "which get returns")
end

do
  -- a Queue spawned into another process is a Queue there too
  -- (and a JoinableQueue a JoinableQueue)
  local q, jq = mp.Queue(), mp.JoinableQueue()
  local p = mp.Process{ start_method = "spawn", args = { q, jq }, target = function(q2, jq2)
    local function names(obj)
      local list = {}
      for k in pairs(getmetatable(obj).__index) do list[#list + 1] = k end
      table.sort(list)
      return table.concat(list, " ")
    end
    q2:put(names(q2))
    q2:put(names(jq2))
  end }
  p:start()
  t.is(q:get(10), table.concat(QUEUE, " "), "a Queue sent to a spawned process has the Queue's methods")
  t.is(q:get(10), table.concat(JOINABLE, " "), "and a JoinableQueue the JoinableQueue's")
  p:join()
end

do
  local pool = mp.Pool(1)
  t.is(pool:apply(function() return 6 * 7 end), 42, "a Pool still runs its tasks over its own queues")
  pool:close()
  pool:join()
end

t.done()
