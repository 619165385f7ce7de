-- SPDX-License-Identifier: MIT
-- codec.lua: Lua values survive luamp's encoder and decoder (src/codec.c),
-- and what cannot travel is refused with the path of the culprit.
local t = require "tap"
local mp = require "luamp"
local enc, dec = mp._encode, mp._decode

local function rt(v) return dec(assert(enc(v))) end
local function byte1(v) return (assert(enc(v)):byte(1)) end
local function refusal(v, root)
  local s, msg = enc(v, root)
  if s ~= nil then return "(encoded)" end
  return msg
end
local function decode_error(s)
  local ok, err = pcall(dec, s)
  if ok then return "(decoded)" end
  return err
end

-- Scalars ------------------------------------------------------------------
t.is(rt(nil), nil, "nil survives")
t.is(rt(true), true, "true survives")
t.is(rt(false), false, "false survives")
for _, n in ipairs{0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536,
                   2^31 // 1, 2^32 // 1, -2^31 // 1, math.maxinteger, math.mininteger} do
  t.is(rt(n), n, "integers stay integers: " .. n)
end
for _, x in ipairs{1.0, 0.5, -2.0, 1e300, 5e-324, math.pi, 2^63, -2^63} do
  t.is(rt(x), x, "floats stay floats: " .. string.format("%.17g", x))
end
t.is(1 / rt(-0.0), -math.huge, "-0.0 keeps its sign")
t.is(1 / rt(0.0), math.huge, "0.0 stays positive")
local nan = rt(0 / 0)
t.ok(nan ~= nan and math.type(nan) == "float", "NaN stays NaN")
t.is(rt(math.huge), math.huge, "inf survives")
t.is(rt(-math.huge), -math.huge, "-inf survives")

t.is(assert(enc(1.0)), "\xcb\x3f\xf0\0\0\0\0\0\0", "1.0 is written as a float64")
t.is(assert(enc(1)), "\x01", "1 is written as a positive fixint")
t.is(assert(enc(-1)), "\xff", "-1 is written as a negative fixint")
t.is(assert(enc(300)), "\xcd\x01\x2c", "300 is written as uint16")
t.is(assert(enc(-300)), "\xd1\xfe\xd4", "-300 is written as int16")
do
  -- every boundary of the int formats, as msgpack-c (and the spec's
  -- smallest form) writes them
  local cases = {
    {127, "\x7f"}, {128, "\xcc\x80"}, {255, "\xcc\xff"}, {256, "\xcd\x01\x00"},
    {65535, "\xcd\xff\xff"}, {65536, "\xce\x00\x01\x00\x00"},
    {0xffffffff, "\xce\xff\xff\xff\xff"}, {0x100000000, "\xcf\0\0\0\x01\0\0\0\0"},
    {-32, "\xe0"}, {-33, "\xd0\xdf"}, {-128, "\xd0\x80"}, {-129, "\xd1\xff\x7f"},
    {-32768, "\xd1\x80\x00"}, {-32769, "\xd2\xff\xff\x7f\xff"},
    {-2147483648, "\xd2\x80\0\0\0"}, {-2147483649, "\xd3\xff\xff\xff\xff\x7f\xff\xff\xff"},
  }
  local bad = {}
  for _, c in ipairs(cases) do
    if enc(c[1]) ~= c[2] then bad[#bad + 1] = tostring(c[1]) end
    if enc({c[1]}) ~= "\x91" .. c[2] then bad[#bad + 1] = "{" .. c[1] .. "}" end
  end
  t.is(table.concat(bad, " "), "", "each integer takes the smallest int format, alone or in a table")
  local function header(v) return (assert(enc(v)):sub(1, 5)) end
  t.is(header(string.rep("a", 31)):sub(1, 1), "\xbf", "a 31-byte str is a fixstr")
  t.is(header(string.rep("a", 32)):sub(1, 2), "\xd9\x20", "a 32-byte str is a str8")
  t.is(header(string.rep("a", 256)):sub(1, 3), "\xda\x01\x00", "a 256-byte str is a str16")
  t.is(header(string.rep("a", 65536)), "\xdb\0\x01\0\0", "a 64 KiB str is a str32")
  t.is(header("\xff"):sub(1, 2), "\xc4\x01", "a short bin is a bin8")
  t.is(header(string.rep("\xff", 256)):sub(1, 3), "\xc5\x01\x00", "a 256-byte bin is a bin16")
  t.is(header(string.rep("\xff", 65536)), "\xc6\0\x01\0\0", "a 64 KiB bin is a bin32")
  local function seq(n) local s = {} for i = 1, n do s[i] = true end return s end
  t.is(header(seq(15)):sub(1, 1), "\x9f", "15 elements are a fixarray")
  t.is(header(seq(16)):sub(1, 3), "\xdc\0\x10", "16 elements are an array16")
  t.is(header(seq(65536)), "\xdd\0\x01\0\0", "65536 elements are an array32")
  local function record(n) local r = {} for i = 1, n do r["k" .. i] = i end return r end
  for _, n in ipairs{15, 16, 17, 65535, 65536} do
    local want = n < 16 and string.char(0x80 + n) or n < 65536 and "\xde" .. string.pack(">I2", n)
                 or "\xdf" .. string.pack(">I4", n)
    local r = record(n)
    local s = assert(enc(r))
    t.ok(s:sub(1, #want) == want, "a map of " .. n .. " entries has the header for its size")
    t.same(dec(s), r, "a map of " .. n .. " entries survives")
  end
  t.same(rt({x = record(20), y = {z = record(16)}}), {x = record(20), y = {z = record(16)}},
         "maps of 16 entries and more nest")
end

-- Strings ------------------------------------------------------------------
for _, s in ipairs{"", "hello", "h\xc3\xa9llo \xe2\x82\xac", "\0\1\2\255", "\xc3\x28",
                   "\xed\xa0\x80", string.rep("ab\0", 40000)} do
  t.is(rt(s), s, "strings survive byte for byte: " .. string.format("%q", s:sub(1, 12)))
end
t.is(byte1("abc"), 0xa3, "valid UTF-8 is written as str")
t.is(byte1("h\xc3\xa9"), 0xa3, "accented UTF-8 is written as str")
t.is(byte1("\xff"), 0xc4, "invalid UTF-8 is written as bin")
t.is(byte1("\xc0\x80"), 0xc4, "overlong UTF-8 is written as bin")
t.is(byte1("\xed\xa0\x80"), 0xc4, "an encoded surrogate is written as bin")
t.is(byte1("a\0b"), 0xa3, "NUL is valid UTF-8 and stays str")
do
  -- str exactly when Lua's strict utf8.len accepts: a sequence good or
  -- bad at every offset of ASCII of every length up to 80, so that it
  -- falls in the 32-byte blocks, the 8-byte words and the tail bytes
  local function kind(s)
    local b = assert(enc(s)):byte(1)
    if (b >= 0xa0 and b <= 0xbf) or (b >= 0xd9 and b <= 0xdb) then return "str" end
    if b >= 0xc4 and b <= 0xc6 then return "bin" end
    return "?"
  end
  local function want(s) return utf8.len(s) and "str" or "bin" end
  local seqs = {"\x80", "\xbf", "\xff", "\xc0\x80", "\xc1\xbf", "\xc2\x80", "\xc3\xa9", "\xc3",
                "\xc3\x28", "\xe2\x82\xac", "\xe2\x82", "\xe0\x80\x80", "\xe0\xa0\x80",
                "\xed\x9f\xbf", "\xed\xa0\x80", "\xef\xbf\xbf", "\xf0\x8f\xbf\xbf",
                "\xf0\x90\x80\x80", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xf4\x90\x80\x80",
                "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xe2\x28\xac", "\xf0\x9f\x28\x80"}
  local wrong, checked = {}, 0
  for len = 0, 80 do
    for at = 0, len do
      for _, q in ipairs(seqs) do
        local s = string.rep("a", at) .. q .. string.rep("b", len - at)
        checked = checked + 1
        if kind(s) ~= want(s) and #wrong < 5 then wrong[#wrong + 1] = string.format("%q", s) end
      end
    end
  end
  t.is(table.concat(wrong, ", "), "", "str or bin agrees with utf8.len at every offset (" .. checked .. " strings)")
  local rng = 12345
  local function rand(n) rng = (rng * 1103515245 + 12345) % 2147483648; return rng % n end
  local pieces = {"a", "z", " ", "\0", "\x7f", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\x9f\xbf"}
  wrong = {}
  for _ = 1, 3000 do
    local parts = {}
    for i = 1, rand(60) do
      parts[i] = rand(40) == 0 and string.char(rand(256)) or pieces[rand(#pieces) + 1]
    end
    local s = table.concat(parts)
    if kind(s) ~= want(s) and #wrong < 5 then wrong[#wrong + 1] = string.format("%q", s) end
  end
  t.is(table.concat(wrong, ", "), "", "str or bin agrees with utf8.len on 3000 mixed strings")
  local big = string.rep("x", 1 << 20)
  t.is(kind(big), "str", "1 MiB of ASCII is a str")
  t.is(kind(big .. "\xff"), "bin", "1 MiB of ASCII with a bad last byte is a bin")
  t.is(kind(big:sub(1, 12345) .. "\x80" .. big:sub(1, 100000)), "bin", "a bad byte deep inside makes a bin")
  t.is(kind(string.rep("\xc3\xa9", 1 << 19)), "str", "1 MiB of 2-byte sequences is a str")
  t.is(kind(string.rep("\xc3\xa9", 1 << 19) .. "\xc3"), "bin", "a truncated last sequence makes a bin")
end

-- Tables -------------------------------------------------------------------
t.is(byte1({1, 2, 3}), 0x93, "a sequence is written as an array")
t.is(byte1({}), 0x80, "the empty table is an empty map")
t.is(byte1({1, nil, 3}), 0x82, "a table with a hole is a map")
t.is(byte1({1, 2, n = 2}), 0x83, "a sequence with an extra key is a map")
t.is(byte1({[2] = 2}), 0x81, "a table not starting at 1 is a map")
t.same(rt({1, 2, 3}), {1, 2, 3}, "arrays survive")
t.same(rt({1, nil, 3}), {1, nil, 3}, "holes survive")
t.same(rt({a = {b = {c = {1, 2, {d = "e"}}}}}), {a = {b = {c = {1, 2, {d = "e"}}}}},
       "nested tables survive")
local mixed = {1, 2, x = "y", [1.5] = true, [true] = false, [-1] = 0, [0] = "zero"}
t.same(rt(mixed), mixed, "mixed keys survive")
local r = rt({[2^53] = "big float key", [3.0] = "three"})
t.is(r[3], "three", "a float key with an integer value is the integer key")
t.is(math.type(next(rt({[0.5] = 1}))), "float", "float keys stay floats")

do
  local key = {1, 2}
  local r = rt({[key] = "v"})
  local k, v = next(r)
  t.ok(type(k) == "table" and k[1] == 1 and k[2] == 2 and v == "v", "tables as keys survive")
end
do
  local cyc = {name = "c"}
  cyc.self = cyc
  local r = rt(cyc)
  t.ok(rawequal(r.self, r) and r.name == "c", "a cycle survives: t.self == t")
  local a = {}
  a[1] = a
  local ra = rt(a)
  t.ok(rawequal(ra[1], ra), "a cycle through an array survives")
end
do
  local s = {1}
  local r = rt({a = s, b = s, c = {s}})
  t.ok(rawequal(r.a, r.b) and rawequal(r.a, r.c[1]), "shared subtables stay shared")
  local r2 = rt({a = {1}, b = {1}})
  t.ok(not rawequal(r2.a, r2.b), "equal but distinct subtables stay distinct")
  local k = {}
  local r3 = rt({[k] = k})
  local rk, rv = next(r3)
  t.ok(rawequal(rk, rv), "a table used as key and value is one table")
end
do
  -- The decoder reads plain data without recording identities and starts
  -- again at the first extension type: references made after many plain
  -- tables still find the right ones.
  local s = {"s"}
  local r = rt({{1}, {2}, {3, {4, {5}}}, s, s, {6}})
  t.ok(r[3][2][2][1] == 5 and r[4][1] == "s" and rawequal(r[4], r[5]) and r[6][1] == 6,
    "a reference after plain tables is to the right table")
  local m = rt({plain = {{1}, {2}}, [7] = s, [8] = {s}})
  t.ok(m.plain[2][1] == 2 and rawequal(m[7], m[8][1]), "and in a map")
  local pool <close> = mp.Pool(1)
  local res = pool:map(function(i) local x = {i}; return i % 2 == 0 and {x, x} or {i} end, {1, 2, 3, 4})
  t.ok(res[1][1] == 1 and rawequal(res[2][1], res[2][2]) and res[2][1][1] == 2 and res[3][1] == 3
    and rawequal(res[4][1], res[4][2]), "results decoded into their job's table keep their references")
end
do
  local s = {}
  t.ok(not rawequal(rt(s), s), "a plain table travels by value")
end
do
  -- The encoder tells tables apart by address in a small list, then in
  -- a hash index over it: cycles and shared tables on both sides of the
  -- switch (16 tables) and of the index's growth.
  for _, n in ipairs{15, 16, 17, 40, 300} do
    local ts = {}
    for i = 1, n do ts[i] = {i = i} end
    -- (prev: met already, so that nesting stays shallow)
    for i = 1, n do ts[i].self = ts[i]; ts[i].prev = ts[i - 1] end
    local msg = {}
    for i = 1, n do msg[i] = ts[i]; msg[n + i] = ts[n + 1 - i] end
    local r = rt(msg)
    local ok = #r == 2 * n
    for i = 1, n do
      local x = r[i]
      ok = ok and x.i == i and rawequal(x.self, x) and rawequal(x.prev, r[i - 1])
           and rawequal(r[2 * n + 1 - i], x)
    end
    t.ok(ok, "cycles and shared tables survive among " .. n .. " tables")
  end
  local distinct = {}
  for i = 1, 100 do distinct[i] = {1} end
  local r = rt(distinct)
  local same = 0
  for i = 2, 100 do if rawequal(r[i], r[i - 1]) then same = same + 1 end end
  t.is(same, 0, "100 equal but distinct tables stay distinct")
end
do
  -- A sequence whose last keys live in the hash part, out of traversal
  -- order: the encoder starts it as an array, meets key 22 before 21,
  -- undoes the 20 tables it wrote (and their ids) and writes it again.
  local items = {}
  for i = 1, 20 do items[i] = "a[" .. i .. "]" end
  local make = load("local a, x = ... return {" .. table.concat(items, ", ")
                    .. ", [22] = a[5], [21] = x}")
  local a = {}
  for i = 1, 20 do a[i] = {i} end
  local v = make(a, {a[3]})
  local order = {}
  for k in next, v do if k > 20 then order[#order + 1] = k end end
  if order[1] ~= 22 then t.diag("this Lua lays the table out otherwise: keys " .. table.concat(order, ",")) end
  t.is(byte1(v), 0xdc, "a sequence partly in the hash part is still an array")
  local r = rt(v)
  local ok = #r == 22
  for i = 1, 20 do ok = ok and r[i][1] == i end
  t.ok(ok and rawequal(r[22], r[5]) and rawequal(r[21][1], r[3]),
       "after the array is written again, references point at the right tables")
  local h = rt({a[1], a[2], a[1], nil, a[2]})
  t.ok(rawequal(h[1], h[3]) and rawequal(h[2], h[5]) and h[4] == nil,
       "a hole found after shared tables makes a map with the same references")
  local x = {a[1], a[1], extra = a[1]}
  local rx = rt(x)
  t.ok(rawequal(rx[1], rx[2]) and rawequal(rx.extra, rx[1]), "an extra key after shared tables makes a map")
end

-- Metatables ---------------------------------------------------------------
do
  local mt = {__index = function(_, k) return k .. "!" end}
  local r = rt(setmetatable({x = 1}, mt))
  t.is(r.foo, "foo!", "a metatable's __index function works after the trip")
  t.is(rawget(r, "x"), 1, "the table's own fields survive next to its metatable")
  local both = rt({setmetatable({}, mt), setmetatable({}, mt)})
  t.ok(rawequal(getmetatable(both[1]), getmetatable(both[2])), "a shared metatable stays shared")
  local self = {}
  self.__index = self
  self.greet = "hi"
  setmetatable(self, self)
  local rs = rt(self)
  t.ok(rawequal(getmetatable(rs), rs) and rs.greet == "hi", "a table that is its own metatable survives")
  local locked = setmetatable({}, {__metatable = "locked", v = 7})
  local rl = rt(locked)
  t.is(debug.getmetatable(rl).v, 7, "a protected metatable travels too")
  local Point = {}
  Point.__index = Point
  function Point:norm2() return self.x * self.x + self.y * self.y end
  local rp = rt({setmetatable({x = 3, y = 4}, Point), setmetatable({x = 1, y = 1}, Point)})
  t.is(rp[1]:norm2(), 25, "methods work on objects after the trip")
  t.ok(rawequal(getmetatable(rp[1]), getmetatable(rp[2])), "objects of one class share the class")
end

-- Functions ----------------------------------------------------------------
do
  local k = 3
  local f = function(x) return x * k end
  local g = rt(f)
  t.is(g(5), 15, "a closure keeps its upvalue: x * k")
  t.ok(not rawequal(g, f), "a Lua function travels as a copy")
  t.is(byte1(f), 0x93, "a closure with one upvalue is an array of 3")
end
do
  local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end
  t.is(rt(fact)(10), 3628800, "a recursive local function survives")
end
do
  local n = 0
  local function inc() n = n + 1 end
  local function get() return n end
  local r = rt({inc, get})
  r[1](); r[1]()
  t.is(r[2](), 2, "two closures sharing an upvalue stay shared")
  t.is(n, 0, "the copy's upvalue is not the original's")
end
do
  local cfg = {x = 1}
  local function f() return cfg end
  local r = rt({f, cfg})
  t.ok(rawequal(r[1](), r[2]), "an upvalue table is the same table as elsewhere in the message")
end
do
  local box = {}
  local function get() return box end
  box.get = get
  local g = rt(get)
  t.ok(rawequal(g().get, g), "a function reachable from its own upvalue is itself")
end
do
  LUAMP_CODEC_TEST_GLOBAL = "receiver's"
  local f = function() return LUAMP_CODEC_TEST_GLOBAL end
  local g = rt(f)
  t.is(g(), "receiver's", "a function reads the receiver's globals")
  local _, env = debug.getupvalue(g, 1)
  t.ok(rawequal(env, _G), "_ENV becomes the receiver's _G")
  LUAMP_CODEC_TEST_GLOBAL = nil
end
do
  local f = function() error("boom") end
  local ok, err = pcall(rt(f))
  t.like(not ok and err, "codec%.lua:%d+: boom", "a function keeps its line numbers for tracebacks")
end
do
  local f = function(...) return select("#", ...), ... end
  local n, a, b = rt(f)(1, nil)
  t.ok(n == 2 and a == 1 and b == nil, "a vararg function still works")
end

-- Names --------------------------------------------------------------------
t.ok(rawequal(rt(math.sqrt), math.sqrt), "a C function travels by name: math.sqrt")
t.ok(rawequal(rt(print), print), "a global C function travels by name: print")
t.ok(rawequal(rt(string.format), string.format), "string.format travels by name")
t.ok(rawequal(rt(string), string), "a module travels by name: string")
t.ok(rawequal(rt(_G), _G), "_G travels by name")
t.ok(rawequal(rt(mp), mp), "the luamp module travels by name")
t.ok(type(mp.Error) == "table" and rawequal(rt(mp.Error), mp.Error),
     "a table field of a module travels by name: luamp.Error")
t.ok(rawequal(rt(package.loaded), package.loaded), "package.loaded travels by name")
t.like(assert(enc(math.sqrt)), "math%.sqrt$", "the name of math.sqrt is on the wire")
t.like(assert(enc(string.upper)), "string%.upper$", "a name outside _G is preferred")
do
  package.loaded.codec_test_mod = {answer = 42, get = function() return 42 end}
  local m = package.loaded.codec_test_mod
  t.ok(rawequal(rt(m), m), "a module loaded after earlier messages travels by name")
  package.loaded.codec_test_mod = nil
  local r = rt(m)
  t.ok(not rawequal(r, m) and r.answer == 42, "an unloaded module's table travels by value")
  -- A message of plain data trusts the map of names as it stands (no
  -- walk over package.loaded per message); one with anything else
  -- (here a C function) checks it first.
  package.loaded.codec_test_data = {answer = 42}
  local data = package.loaded.codec_test_data
  local r2 = rt({data, print})
  t.ok(rawequal(r2[1], data), "a data-only module travels by name in a message that checks the names")
  t.ok(rawequal(rt({data})[1], data), "once the map knows it, a data-only module travels by name in plain data too")
  package.loaded.codec_test_data = nil
  local r3 = rt({data})
  t.ok(not rawequal(r3[1], data) and r3[1].answer == 42,
       "a module unloaded since travels by value: a name found is checked")
end
do
  local iter = string.gmatch("a", "a")
  t.is(refusal({cb = iter}, "item"),
       "cannot send item.cb: a C function that is not in package.loaded",
       "a C function outside package.loaded is refused")
  package.loaded.codec_test_iter = {it = iter}
  t.ok(rawequal(rt(iter), iter), "a C function of a newly loaded module travels by name")
  package.loaded.codec_test_iter = nil
  rt(1 / 0); rt({})
  string.codec_test_it = iter
  t.ok(rawequal(rt(iter), iter), "a C function added to a loaded module later travels by name")
  string.codec_test_it = nil
end

do
  -- A module loaded while a message is decoded (for its name) may decode
  -- messages itself: it must not disturb the references of the outer one.
  local M = {f = print}   -- not data only: the encoder looks its name up
  package.loaded.codec_test_nested = M
  local shared = {"outer"}
  local s = assert(enc({shared, M, shared}))
  package.loaded.codec_test_nested = nil
  local inner
  package.preload.codec_test_nested = function()
    inner = dec(assert(enc({{"inner"}, {"inner2"}, {"inner3"}})))
    return M
  end
  local r = dec(s)
  t.ok(inner ~= nil and inner[1][1] == "inner", "the nested decode ran")
  t.ok(rawequal(r[1], r[3]) and r[1][1] == "outer" and rawequal(r[2], M),
       "references after a nested decode point at the outer message's tables")
  package.loaded.codec_test_nested, package.preload.codec_test_nested = nil, nil
end

-- luamp objects ------------------------------------------------------------
do
  local reg = debug.getregistry()
  local saved = reg["luamp.objects"]
  local objects = saved or {}
  reg["luamp.objects"] = objects
  local Obj = {__luamp_ref = function(o) return "codec-test-" .. o.n end}
  local o = setmetatable({n = 1}, Obj)
  objects["codec-test-1"] = o
  t.ok(rawequal(rt(o), o), "an object with __luamp_ref travels by its id")
  local r = rt({o, o, {o}})
  t.ok(rawequal(r[1], o) and rawequal(r[3][1], o), "an object inside a table travels by its id")
  local unknown = setmetatable({n = 2}, Obj)
  t.is(decode_error(assert(enc(unknown))),
       "cannot receive a luamp object (codec-test-2) that this process does not know: "
       .. "it was made in a process that did not start this one",
       "an object unknown to the receiver is a decode error")
  local Nested = {__luamp_ref = function() local inner = assert(enc({1, 2, 3})); return "codec-test-" .. #inner end}
  local n4 = setmetatable({}, Nested)
  objects["codec-test-4"] = n4
  local r2 = rt({"before", n4, "after"})
  t.ok(r2[1] == "before" and rawequal(r2[2], n4) and r2[3] == "after",
       "an encode nested in __luamp_ref leaves the outer message intact")
  local Failing = {__luamp_ref = function() error("no id", 0) end}
  t.is(refusal({x = setmetatable({}, Failing)}, "args"),
       "cannot send args.x: its __luamp_ref failed: no id", "a failing __luamp_ref is a refusal")
  objects["codec-test-1"], objects["codec-test-4"] = nil, nil
  reg["luamp.objects"] = saved
  t.like(decode_error(assert(enc(o))), "cannot receive a luamp object %(codec%-test%-1%)",
         "without the objects table, an object is a decode error")
end

-- Refusals -----------------------------------------------------------------
local co = coroutine.create(print)
t.is(refusal({1, {f = coroutine.create(print)}}, "args"), "cannot send args[2].f: a coroutine",
     "a coroutine is refused with its path")
t.is(refusal(co), "cannot send value: a coroutine", "the root defaults to 'value'")
t.is(refusal(io.stdout, "result[1]"), "cannot send result[1]: a userdata", "a foreign userdata is refused")
local f0 = function() return co end
t.is(refusal({u = debug.upvalueid(f0, 1)}, "args"), "cannot send args.u: a light userdata",
     "a light userdata is refused")
t.is(refusal({["odd key"] = co}), 'cannot send value["odd key"]: a coroutine', "an odd string key is quoted")
t.is(refusal({["end"] = co}), 'cannot send value["end"]: a coroutine', "a keyword key is quoted")
t.is(refusal({['a"b'] = co}), 'cannot send value["a\\"b"]: a coroutine', "quotes in a key are escaped")
t.is(refusal({[true] = co}), "cannot send value[true]: a coroutine", "a boolean key is shown")
t.is(refusal({[1.5] = co}), "cannot send value[1.5]: a coroutine", "a float key is shown")
t.like(refusal({[{}] = co}), "^cannot send value%[table: 0x%x+%]: a coroutine$", "a table key is shown")
t.is(refusal({[co] = 1}), "cannot send value.<key>: a coroutine", "a refused key is marked <key>")
do
  local k = co
  local f = function() return k end
  t.is(refusal({f}, "args"), "cannot send args[1].<upvalue k>: a coroutine", "a refused upvalue is named")
  t.is(refusal({setmetatable({}, {handler = co})}, "args"),
       "cannot send args[1].<metatable>.handler: a coroutine", "a refused metatable field has its path")
  t.is(refusal(setmetatable({a = {b = co}}, {})), "cannot send value.a.b: a coroutine",
       "the path goes through a table that has a metatable")
end

-- Depth --------------------------------------------------------------------
local function nest(n)
  local v = {}
  for _ = 2, n do v = {v} end
  return v
end
do
  local r = rt(nest(200))
  local depth = 0
  while r do depth = depth + 1; r = r[1] end
  t.is(depth, 200, "200 levels of nesting survive")
  local msg = refusal(nest(201), "args")
  t.like(msg, "^cannot send args%[1%]%[1%]", "201 levels are refused with the path's start")
  t.like(msg, ": nesting deeper than 200 levels$", "201 levels are refused: nesting deeper than 200")
  t.like(msg, "%.%.%.", "a very deep path is shortened")
  local m = {}
  for _ = 1, 100 do m = setmetatable({m}, {}) end
  t.like(refusal(m), "nesting deeper than 200 levels$", "metatable wrappers count as levels")
  local cyc = {}
  cyc[1] = cyc
  t.ok(enc(cyc) ~= nil, "a cycle is not mistaken for deep nesting")
end
t.ok(pcall(dec, string.rep("\x91", 199) .. "\x90"), "decoding 200 nested arrays works")
t.is(decode_error(string.rep("\x91", 200) .. "\x90"), "nesting deeper than 200 levels",
     "decoding 201 nested arrays fails")
t.is(decode_error(string.rep("\x81\xa1k", 201) .. "\xc0"), "nesting deeper than 200 levels",
     "decoding 201 nested maps fails")

-- Foreign and malformed input ---------------------------------------------
t.is(dec("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), 2.0^64, "a uint64 beyond Lua integers is a float")
t.is(dec("\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"), math.maxinteger, "uint64 up to maxinteger is an integer")
t.is(dec("\xd3\x80\0\0\0\0\0\0\0"), math.mininteger, "int64 min is mininteger")
t.is(dec("\xd0\x80"), -128, "int8 is sign-extended")
t.is(dec("\xca\x3f\xc0\0\0"), 1.5, "a float32 is a float")
t.is(dec("\xc4\x02\0\1"), "\0\1", "bin is a string")
t.is(dec("\xd9\x03abc"), "abc", "str8 is a string")
t.same(dec("\x82\xa1a\xc0\xa1b\x01"), {b = 1}, "a map's nil values are dropped")
t.same(dec("\x93\x01\xc0\x03"), {1, nil, 3}, "an array's nils are holes")
t.same(dec("\xdc\0\2\x01\x02"), {1, 2}, "array16 works")
t.same(dec("\xde\0\1\xa1k\xc3"), {k = true}, "map16 works")
t.is(decode_error(""), "truncated message", "empty input is truncated")
t.is(decode_error("\xc1"), "invalid byte 0xc1 in message", "0xc1 is refused")
t.is(decode_error("\x01\x02"), "1 trailing bytes after the message", "trailing bytes are refused")
t.is(decode_error("\xdd\xff\xff\xff\xff\x01"), "truncated message", "a lying array length is refused")
t.is(decode_error("\xdf\x7f\xff\xff\xff\x01\x01"), "truncated message", "a lying map length is refused")
t.is(decode_error("\xdb\xff\xff\xff\xffabc"), "truncated message", "a lying string length is refused")
t.is(decode_error("\x81\xc0\x01"), "nil map key", "a nil map key is refused")
t.is(decode_error("\x81\xcb\x7f\xf8\0\0\0\0\0\0\x01"), "NaN map key", "a NaN map key is refused")
t.is(decode_error("\xd4\x01\x05"), "reference to unknown table or function #5", "a dangling REF is refused")
t.is(decode_error("\xd4\x09\x00"), "unknown extension type 9", "an unknown extension is refused")
t.is(decode_error("\xd7\x01\0\0\0\0\0\0\0\0"), "bad payload size for extension type 1",
     "a REF with an 8-byte payload is refused")
t.is(decode_error("\x93\xd5\x03\0\0\x80\x80"), "bad payload size for extension type 3",
     "a META marker with a 2-byte payload is refused")
t.is(decode_error("\xd6\x03\0\0\0\0"), "misplaced extension type 3", "a META outside a wrapper is refused")
t.is(decode_error("\xc7\x06\x05\0\0\0\0\0\1"), "misplaced extension type 5", "an UPREF outside a function is refused")
t.like(decode_error("\xc7\x0b\x02no_such_mod"), "^cannot receive no_such_mod: module 'no_such_mod' not found",
       "an unknown module name is refused")
t.is(decode_error("\xc7\x0b\x02math.nosuch"), "cannot receive math.nosuch: no field 'nosuch' in module 'math'",
     "an unknown field name is refused")
t.is(decode_error("\x93\xd4\x03\0\x80\x01"), "a metatable that is a number", "a metatable must be a table")
t.like(decode_error("\x92\xd4\x04\0\xc4\x06\x1bLua\x54\0"), "^bad function bytecode: .*truncated",
     "garbage bytecode is refused")
t.like(decode_error("\x92\xd4\x04\0\xc4\x0creturn 1 + 1"), "^bad function bytecode: .*text chunk",
       "source code is not accepted in place of bytecode")
do
  local msg = assert(enc({1, "two", {three = 3.0}, setmetatable({}, {__index = string}), function() return 1 end}))
  local bad = 0
  for i = 0, #msg - 1 do
    if pcall(dec, msg:sub(1, i)) then bad = bad + 1 end
  end
  t.is(bad, 0, "every truncation of a message is refused")
end

t.done()
