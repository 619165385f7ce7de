-- SPDX-License-Identifier: MIT
-- imap and imap_unordered, over tables and lazy iterators.
local t = require "tap"
local mp = require "luamp"

local function square(x) return x * x end

local pool <close> = mp.Pool(2)

do
  local xs = {}
  for i = 1, 500 do xs[i] = i end
  local order, ok = {}, true
  for i, v in pool:imap(square, xs, 7) do
    order[#order + 1] = i
    if v ~= i * i then ok = false end
  end
  t.is(#order, 500, "imap yields every item")
  local inorder = true
  for k = 1, #order do if order[k] ~= k then inorder = false end end
  t.ok(inorder and ok, "imap yields (index, result) in input order")

  local seen, sum, count = {}, 0, 0
  for i, v in pool:imap_unordered(square, xs, 3) do
    seen[i] = true
    sum = sum + v
    count = count + 1
  end
  t.is(count, 500, "imap_unordered yields every item once")
  t.is(sum, 500 * 501 * 1001 // 6, "imap_unordered results are right")
  local all = true
  for i = 1, 500 do if not seen[i] then all = false end end
  t.ok(all, "imap_unordered yields each index")
end

do
  local n = 0
  for _ in pool:imap(square, {}) do n = n + 1 end
  t.is(n, 0, "imap over an empty table yields nothing")
end

-- a lazy iterator: consumed on demand, with a bounded number in flight
do
  local produced, consumed, maxahead = 0, 0, 0
  local function source()
    if produced >= 2000 then return nil end
    produced = produced + 1
    local ahead = produced - consumed
    if ahead > maxahead then maxahead = ahead end
    return produced
  end
  local sum = 0
  for i, v in pool:imap(square, source, 4) do
    consumed = consumed + 1
    sum = sum + v
  end
  t.is(consumed, 2000, "imap over an iterator yields every item")
  t.is(sum, 2000 * 2001 * 4001 // 6, "imap over an iterator gives the right results")
  t.ok(maxahead <= 2 * 4 * 4 + 4, "imap reads the iterator lazily (at most " .. maxahead .. " items ahead)")
end

-- io.lines, imap_unordered, without a chunksize
do
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  for i = 1, 300 do f:write("line ", i, "\n") end
  f:close()
  local total, n = 0, 0
  for _, len in pool:imap_unordered(function(line) return #line end, io.lines(path)) do
    total, n = total + len, n + 1
  end
  os.remove(path)
  local want = 0
  for i = 1, 300 do want = want + #("line " .. i) end
  t.is(n, 300, "imap_unordered over io.lines yields every line")
  t.is(total, want, "imap_unordered over io.lines computes on every line")
end

-- errors are raised at the failing item, the rest is still reachable
do
  local got = {}
  local ok, err = pcall(function()
    for i, v in pool:imap(function(x) if x == 4 then error("four!") end return x end, {1, 2, 3, 4, 5}, 1) do
      got[#got + 1] = v
    end
  end)
  t.ok(not ok and tostring(err):find("four!"), "imap raises the failing item's error")
  t.same(got, {1, 2, 3}, "imap yielded the items before the failure")
  t.is(pool:apply(square, {5}), 25, "the pool is usable after an imap error")
end

-- breaking out of a loop early leaves the pool usable
do
  for i in pool:imap_unordered(square, {1, 2, 3, 4, 5, 6, 7, 8}, 1) do
    if i then break end
  end
  t.same(pool:map(square, {2}), {4, n = 1}, "the pool is usable after leaving an imap loop early")
end

-- Leaving a loop early, then closing the pool: the close ends (it once
-- forked replacement workers for ever), starts no worker, and reads no
-- more of the input.  Each case runs in a luamp of its own, bounded by a
-- timeout, with the pool's debug log to count replacements.
local LUAMP = os.getenv("LUAMP") or arg[-1]
local function run_script(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "w")); f:write(src); f:close()
  local ok, r = pcall(mp.run, { LUAMP, path }, { capture = true, timeout = 30, env = { LUAMP_LOG = "debug" } })
  os.remove(path)
  if not ok then return { code = "timeout", stdout = "", stderr = tostring(r) } end
  return r
end

local LEAVE = [[
local mp = require "luamp"
local reads = 0
local T = {} for i = 1, 400 do T[i] = string.rep("x", i) end
local function source() local i = 0 return function() i = i + 1; reads = reads + 1; return T[i] end end
local n = 0
do
  local pool <close> = mp.Pool(2)
  for _, v in pool:%s(function(x) return #x end, %s, {chunksize = %d}) do
    n = n + 1; if n >= 5 then break end
  end
  %s
end
print("after", n, reads)
]]
for _, fname in ipairs { "imap", "imap_unordered" } do
  for _, input in ipairs { "T", "source()" } do
    for _, ending in ipairs { "", "pool:close(); pool:join()" } do
      local chunksize = input == "T" and 1 or 2
      local what = string.format("%s over %s, chunksize %d, then %s", fname, input == "T" and "a table" or "an iterator",
        chunksize, ending == "" and "<close>" or "close and join")
      local r = run_script(string.format(LEAVE, fname, input, chunksize, ending))
      local n, reads = r.stdout:match("^after\t(%d+)\t(%d+)")
      t.ok(r.code == 0 and n == "5", what .. ": leaving the loop early lets the pool close",
        "code: " .. tostring(r.code) .. "\nstderr: " .. r.stderr:sub(-600))
      local replaced = r.code == 0 and select(2, r.stderr:gsub("replacing it", "")) or "(did not end)"
      t.is(replaced, 0, what .. ": the closing pool starts no worker")
      if input ~= "T" then
        t.ok(tonumber(reads) and tonumber(reads) < 100, what .. ": no more of the input is read once the loop is left",
          "read: " .. tostring(reads))
      end
    end
  end
end

-- A loop may go on after close (as in Python): every item still comes,
-- and the closed pool starts no worker meanwhile.
do
  local r = run_script [[
local mp = require "luamp"
local T = {} for i = 1, 2000 do T[i] = i end
local pool <close> = mp.Pool(2)
local it = pool:imap(function(x) return x * 2 end, T, 1)
pool:close()
local n, s = 0, 0
for _, v in it do n = n + 1; s = s + v end
pool:join()
print(n, s)
]]
  t.is(r.stdout, "2000\t4002000\n", "imap goes on after close: every item is yielded")
  local _, replaced = r.stderr:gsub("replacing it", "")
  t.is(replaced, 0, "imap after close: the closed pool replaced no worker")
end

-- An iterator not read to its end before join: join ends, and reading on
-- raises "closed" once the part that was run is yielded, never a silent end.
do
  local p <close> = mp.Pool(2)
  local it = p:imap(square, (function() local i = 0 return function() i = i + 1 return i end end)(), 1)
  local i1, v1 = it()
  t.same({ i1, v1 }, { 1, 1 }, "a hand-driven imap yields its first item")
  p:close()
  p:join()
  local n, err = 1, nil
  while true do
    local ok, i = pcall(it)
    if not ok then err = i; break end
    if i == nil then break end
    n = n + 1
  end
  t.ok(mp.Error.is(err, "closed"), "reading an imap past what ran before join raises kind closed", tostring(err))
  t.like(tostring(err and err.message), "Pool was joined first", "the error says the pool was joined first")
  t.ok(n >= 1 and n <= 8 * 2, "what was handed out before join is still yielded", "yielded " .. n)
end

t.raises(function() pool:imap(square, 5) end, "bad argument #2 to 'imap' %(table or iterator function expected, got number%)",
  "imap checks its items")

t.done()
