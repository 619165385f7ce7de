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

t.raises(function() pool:imap(square, 5) end, "bad argument #2 to 'imap' %(table or iterator function expected, got number%)",
  "imap checks its items")

t.done()
