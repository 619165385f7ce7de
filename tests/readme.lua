-- SPDX-License-Identifier: MIT
-- Every Lua block of the README runs as shown, pasted into a file below
-- `local mp = require "luamp"`: the README cannot drift from the code.
local t = require "tap"
local mp = require "luamp"

local LUAMP = os.getenv("LUAMP") or arg[-1]
local top = os.getenv("top_srcdir") or "."

local blocks, cur, first = {}, nil, nil
local n = 0
for line in io.lines(top .. "/README.md") do
  n = n + 1
  if cur then
    if line:match("^```") then
      blocks[#blocks + 1] = { line = first, code = table.concat(cur, "\n") }
      cur = nil
    else
      cur[#cur + 1] = line
    end
  elseif line:match("^```lua%s*$") then
    cur, first = {}, n + 1
  end
end
t.ok(#blocks >= 8, "the README has its Lua blocks (" .. #blocks .. ")")

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
for i, b in ipairs(blocks) do
  local path = string.format("%s/block%d.lua", dir, i)
  local f = assert(io.open(path, "w"))
  f:write('local mp = require "luamp"\n', b.code, "\n")
  f:close()
  local ok, r = pcall(mp.run, { LUAMP, path }, { capture = true, timeout = 60, cwd = dir })
  local what = string.format("README.md:%d (%s) runs as shown", b.line, (b.code:match("^[^\n]*")):sub(1, 50))
  if not ok then
    t.ok(false, what, tostring(r))
  else
    t.ok(r.code == 0, what, "exit " .. tostring(r.code or -r.signal) .. "\n" .. r.stderr:sub(-800))
  end
end
os.execute("rm -rf " .. dir)

t.done()
