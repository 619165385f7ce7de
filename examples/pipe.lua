-- SPDX-License-Identifier: MIT
-- pipe.lua: a Pipe between the parent and a child process.
--
-- mp.Pipe() returns two connected ends.  The child sends values on its end;
-- the parent receives on the other until recv returns nil, "closed".  That
-- happens once every copy of the child's end is closed: the child's copy
-- when the child exits, and the parent's own, since the parent made both
-- ends.  So the parent closes its copy right after starting the child.
--
--   luamp examples/pipe.lua
local mp = require "luamp"

-- Prints a value the way this example wants to see it: tables with their
-- keys sorted, so the output does not depend on table iteration order.
local function show(v)
  if type(v) ~= "table" then
    return string.format("%s (%s)", tostring(v), math.type(v) or type(v))
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = k .. " = " .. tostring(v[k]) end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

local function child(conn)
  conn:send("hello from " .. mp.current_process().name)
  conn:send(42)       -- an integer stays an integer...
  conn:send(42.0)     -- ...and a float a float
  conn:send({ answer = 42, pid_is_positive = mp.current_process().pid > 0, unit = "none" })
  -- The child ends here; its copy of the end is closed when it exits.
end

local parent_end, child_end = mp.Pipe()
local p = mp.Process{ target = child, args = { child_end }, name = "child" }
p:start()
child_end:close()    -- the child has its own copy; without this, no "closed"

while true do
  local v, why = parent_end:recv(10)
  if v == nil then
    print("recv: " .. why)
    break
  end
  print("got " .. show(v))
end
p:join()
print("child exit code: " .. p.exitcode)
