-- SPDX-License-Identifier: MIT
-- luamp/current.lua: the current process, what it started, and how that
-- ends.
--
-- Every process that runs luamp has a name ("MainProcess", "Process-2",
-- "PoolWorker-3", as in Python) and a pid, and keeps the books of what
-- it started: its Process children, its pools and its executors.  A
-- forked child begins as a copy of its parent, books included, so the
-- first thing it does (become_child) is to take its own name and pid and
-- to forget its parent's children, pools and executors: they are the
-- parent's to wait for and to end.  A pool or an executor is used only in
-- the process that made it (their _owner against current.pid).
--
-- This table is what every part gets from part("current"), and it is
-- never replaced: become_child changes its fields and empties its books
-- in place, so a part that keeps the books in locals, or reads
-- current.pid at each call, always sees the process it runs in.
--
-- shutdown (mp._shutdown) is the end of the main script (luamp_close
-- calls it), and of a Process's child when its target returns: nothing
-- is left running.  Executors not shut down run their futures to the
-- end, as Python's do at exit; closed pools finish their work, others are
-- terminated; non-daemon Processes are joined, daemon ones terminated.
-- After a SIGINT or SIGTERM, everything is stopped at once.
--
-- Uses no other part.

local core = ...

local getpid = core.getpid

local current = {
  name = "MainProcess",
  pid = getpid(),
  children = {},                                  -- live Process objects started here -> true
  pools = setmetatable({}, { __mode = "k" }),     -- live pools started here -> true
  executors = setmetatable({}, { __mode = "k" }), -- live executors made here -> their number
}
local children, pools, executors = current.children, current.pools, current.executors

function current.current_process()
  return { name = current.name, pid = current.pid }
end

local function clear(t)
  for k in pairs(t) do t[k] = nil end
end

-- What a forked child forgets of its parent: it has no children and
-- owns no pools of its own yet.
function current.become_child(name)
  current.name, current.pid = name, getpid()
  clear(children)
  clear(pools)
  clear(executors)
end

function current.shutdown()
  local hard = core.interrupted()
  local list = {}
  -- (executors first: they end their pools)
  if not hard then
    for ex in pairs(executors) do list[#list + 1] = ex end
    table.sort(list, function(a, b) return executors[a] < executors[b] end)
    for _, ex in ipairs(list) do ex:_at_exit() end
    list = {}
  end
  for pool in pairs(pools) do list[#list + 1] = pool end
  for _, pool in ipairs(list) do pool:_at_exit(hard) end
  list = {}
  for p in pairs(children) do list[#list + 1] = p end
  for _, p in ipairs(list) do
    if p.daemon or hard then p:kill() end
  end
  for _, p in ipairs(list) do p:join() end
end

return current
