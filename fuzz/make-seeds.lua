-- SPDX-License-Identifier: MIT
-- make-seeds.lua: writes the fuzzers' seed corpora:
--   fuzz/corpus/decode/*      messages for fuzz_decode.c
--   fuzz/corpus/roundtrip/*   value-building programs for fuzz_roundtrip.c
--
--   lua5.4 fuzz/make-seeds.lua [DIR]      (DIR defaults to fuzz/corpus)
--
-- Plain Lua, no luamp needed: every message is spelled out in bytes, so a
-- seed can be what no encoder writes (truncated, lying lengths, unknown
-- extension types).  The corpora are committed; run this after changing a
-- seed here, and commit the result.  Wire format: doc/format.md.

local dir = arg[1] or (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/corpus"

-- h"c7 06 02" -> the bytes
local function h(hex)
    return (hex:gsub("%s+", ""):gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end))
end

-- A str of MessagePack (fixstr or str8) holding s.
local function str(s)
    if #s < 32 then return string.char(0xa0 + #s) .. s end
    return h"d9" .. string.char(#s) .. s
end

-- ext: ext8 with a payload of any length < 256; fixext when it fits.
local function ext(t, payload)
    local fix = { [1] = 0xd4, [2] = 0xd5, [4] = 0xd6, [8] = 0xd7, [16] = 0xd8 }
    if fix[#payload] then
        return string.char(fix[#payload], t) .. payload
    end
    return h"c7" .. string.char(#payload, t) .. payload
end

local REF, NAMED, META, FUNC, UPREF, OBJ = 1, 2, 3, 4, 5, 6
local function named(name) return ext(NAMED, name) end
local meta_marker = ext(META, "\0")

local seeds = {
    -- plain values
    { "plain-ints", h"9b 00 7f e0 cc ff cd 12 34 ce de ad be ef d0 80 d1 80 00"
        .. h"d2 80 00 00 00 d3 80 00 00 00 00 00 00 00 cf ff ff ff ff ff ff ff ff" },
    { "plain-floats", h"96 ca 3f c0 00 00 cb 80 00 00 00 00 00 00 00"
        .. h"cb 7f f0 00 00 00 00 00 00 ca ff c0 00 01 cb 3f f0 00 00 00 00 00 00"
        .. h"cb 7f f8 00 00 de ad be ef" },
    { "plain-strings", h"97" .. str("hello") .. h"d9 04 e2 82 ac 21"
        .. h"da 00 02 ff fe" .. h"db 00 00 00 03 ed a0 80"
        .. h"c4 03 00 01 02 c5 00 01 41 c6 00 00 00 01 42" },
    { "plain-utf8-edges", h"94 a2 c0 80 a3 e0 80 80 a4 f4 90 80 80 a4 f0 9f 98 80" },
    { "plain-array-holes", h"95 01 c0 03 c0 c0" },
    { "plain-map", h"83" .. str("a") .. h"01" .. str("b") .. h"92 01 02" .. str("c") .. h"80" },
    { "plain-map-float-keys", h"83 cb 3f f0 00 00 00 00 00 00" .. str("one")
        .. h"cb 3f f8 00 00 00 00 00 00 c3 ca 40 00 00 00 c2" },
    { "plain-map-odd-keys", h"84 c3 01 c2 02 80 03 91 01 04" },
    { "plain-map-keys", h"93" .. h"83 01 0a 01 0b 01 0c" .. h"82" .. str("k") .. h"c0 01 02"
        .. h"83 01" .. str("x") .. h"02" .. str("y") .. h"03" .. str("z") },
    { "plain-wide-headers", h"93 dc 00 02 01 02 dd 00 00 00 01 c0 de 00 01 a1 6b df 00 00 00 01 01 02" },
    { "plain-nested", h"81" .. str("a") .. h"81" .. str("b") .. h"81" .. str("c") .. h"81"
        .. str("d") .. h"93 80 90 91 91 80" },

    -- REF: identity, cycles, shared parts
    { "ext-ref-shared", h"92 80" .. ext(REF, "\1") },
    { "ext-ref-cycle", h"81" .. str("self") .. ext(REF, "\0") },
    { "ext-ref-widths", h"93 90" .. ext(REF, h"00 01") .. ext(REF, h"00 00 00 00") },
    { "ext-ref-key", h"82 80 01" .. ext(REF, "\1") .. h"02" },
    { "ext-ref-unknown", h"92 80" .. ext(REF, "\9") },

    -- NAMED: modules, C functions, module tables, misses
    { "ext-named", h"95" .. named("string") .. named("math.sqrt") .. named("_G")
        .. named("package.loaded") .. named("_G.type") },
    { "ext-named-miss-field", named("math.nosuch") },
    { "ext-named-miss-module", named("nosuchmodule") },
    { "ext-named-miss-dotted", h"92" .. named("socket.core.connect") .. named("string.") },
    { "ext-named-value", h"93" .. named("math.pi") .. named("_G._VERSION") .. named("utf8.charpattern") },
    { "ext-named-userdata", named("io.stdout") },
    -- modules the fuzzers' state adds: fz.cmod is a C function, fz.flag
    -- true; fzlazy and fz.lazy load from package.preload when named
    { "ext-named-fz", h"95" .. named("fzlazy") .. named("fz.lazy.f") .. named("fz.cmod")
        .. named("fz.flag") .. named("fz.lazy") },
    { "ext-named-not-table", named("fz.cmod.x") },

    -- META: tables with metatables
    { "ext-meta", h"93" .. meta_marker .. h"81" .. str("x") .. h"01" .. h"81" .. str("__index")
        .. ext(REF, "\1") },
    { "ext-meta-self", h"93" .. meta_marker .. h"80" .. ext(REF, "\0") },
    { "ext-meta-named", h"93" .. meta_marker .. h"92 01 02" .. named("string") },
    { "ext-meta-weak", h"93" .. meta_marker .. h"92 80 80" .. h"81" .. str("__mode") .. str("kv") },
    { "ext-meta-gc", h"93" .. meta_marker .. h"80" .. h"81" .. str("__gc") .. named("_G.type") },
    { "ext-meta-forged-object", h"93" .. meta_marker .. h"91" .. str("queue:1:1")
        .. h"81" .. str("__luamp_ref") .. named("table.concat") },
    { "ext-meta-failing-ref", h"92" .. h"93" .. meta_marker .. h"80" .. h"81" .. str("__luamp_ref")
        .. named("math.sqrt") .. h"93" .. meta_marker .. h"80" .. h"81" .. str("__luamp_ref")
        .. named("_G.next") },
    { "ext-meta-not-table", h"93" .. meta_marker .. h"80 01" },

    -- FUNC and UPREF: refused from an untrusted source
    { "ext-func", h"92" .. ext(FUNC, "\0") .. h"c4 04 1b 4c 75 61" },
    { "ext-upref-misplaced", h"91" .. ext(UPREF, h"00 00 00 00 00 01") },

    -- OBJ: luamp objects, known (the fuzzers register these ids) or not
    { "ext-obj", h"93" .. ext(OBJ, "queue:1:1") .. ext(OBJ, "lock:1:2") .. ext(OBJ, "queue:1:1") },
    { "ext-obj-unknown", ext(OBJ, "queue:812:3") },
    { "ext-unknown-types", h"93" .. ext(7, "\0") .. h"d6 ff 00 00 00 00" .. ext(-128 & 0xff, "") },

    -- limits and malformed input
    { "deep-200", string.rep(h"91", 200) .. h"c0" },
    { "deep-201", string.rep(h"91", 201) .. h"c0" },
    { "deep-meta", string.rep(h"93" .. meta_marker .. h"91", 60) .. h"80" .. string.rep(h"80", 60) },
    { "big-lengths", h"95 dd ff ff ff ff df ff ff ff ff c6 ff ff ff ff db ff ff ff ff c9 ff ff ff ff 01" },
    { "everything", h"9d c0 c3 01 ff cb 3f f8 00 00 00 00 00 00" .. str("s") .. h"c4 01 ff 80"
        .. h"81" .. str("a") .. h"01" .. ext(REF, "\1") .. named("math.sqrt")
        .. h"93" .. meta_marker .. h"80 80" .. ext(OBJ, "queue:1:1") },
}

-- Programs for fuzz_roundtrip.c: a flags byte (odd: starve one
-- allocation, whose number the next two bytes give), then operations,
-- each an opcode byte and its argument bytes.  The opcodes are step()'s
-- cases there; an item argument picks a stack item, counted from the
-- bottom (modulo their number).
local OP = {
    ["nil"] = 0, bool = 1, int8 = 2, int64 = 3, int = 4, float64 = 5, float = 6,
    str = 7,          -- length byte (250..253: 255, 256, 65535, 65536 bytes of one byte), bytes
    dict = 8,         -- index into strings[]: 3 "self", 4 "__index", 11 "a\0b", 14.. not UTF-8
    table = 9,        -- size hint byte
    set = 10,         -- item t: t[k] = v, k and v the top two (popped)
    append = 11,      -- item t: t[#t + 1] = top (popped)
    setmeta = 12,     -- item t: setmetatable(t, top) (popped)
    dup = 13,         -- item: push a copy
    named = 14,       -- index into names[]
    object = 15,      -- 0 the userdata, 1 the table
    closure = 16,     -- factory index: closures over the top item (popped)
    join = 17,        -- item f, item g, i, j: upvalue i of f becomes upvalue j of g
    pop = 18,
    setup = 19,       -- item f, i: upvalue i of f = top (popped)
    pack = 20,        -- n: the top n items into one array
    swap = 21,
    unsendable = 22,  -- 0 a coroutine, 1 a light userdata, 2 a C function in no module
}

local function prog(flags, ...)
    local out = { string.char(flags) }
    for _, x in ipairs({ ... }) do
        if type(x) == "string" then
            out[#out + 1] = OP[x] and string.char(OP[x]) or x   -- raw bytes otherwise
        else
            out[#out + 1] = string.char(x)
        end
    end
    return table.concat(out)
end

local programs = {
    { "scalars", prog(0, "nil", "bool", 1, "bool", 0, "int8", 0x80, "int64", h"7f ff ff ff ff ff ff ff",
        "int", 23, "int", 24, "float64", h"7f f8 00 00 00 00 00 01", "float", 1, "float", 14,
        "str", 5, "hello", "str", 3, h"ff fe fd", "dict", 8, "dict", 11, "dict", 15,
        "str", 250, "x", "str", 252, h"ff", "pack", 7, "pack", 7, "pack", 7) },
    { "cycle", prog(0, "table", 0, "dict", 3, "dup", 0, "set", 0, "table", 0, "dup", 0, "append", 1,
        "dup", 1, "dup", 0, "set", 1) },
    { "shared", prog(0, "table", 9, "table", 0, "dup", 0, "dup", 1, "pack", 3, "dup", 1, "dup", 0,
        "set", 2) },
    { "metatable", prog(0, "table", 0, "table", 0, "dict", 4, "dup", 1, "set", 1, "dup", 1,
        "setmeta", 0, "int8", 1, "dict", 1, "set", 0, "table", 0, "dup", 0, "setmeta", 2) },
    { "named", prog(0, "named", 0, "named", 2, "named", 6, "named", 7, "named", 11, "named", 12,
        "object", 0, "object", 1, "pack", 7, "table", 0, "named", 1, "int8", 1, "set", 1) },
    { "closures", prog(0, "int8", 5, "closure", 0, "table", 0, "closure", 1, "int8", 7, "closure", 2,
        "closure", 3, "closure", 4, "closure", 5, "closure", 6, "nil", "closure", 9) },
    { "upvalues", prog(0, "int8", 1, "closure", 2, "int8", 2, "closure", 6, "join", 0, 2, 0, 0,
        "join", 3, 1, 1, 0, "table", 0, "setup", 0, 0, "dup", 0, "dup", 1, "pack", 2) },
    { "big-functions", prog(0, "int8", 1, "closure", 7, "int8", 2, "closure", 8) },
    { "refused", prog(0, "table", 0, "table", 0, "str", 4, "key ", "table", 0, "set", 1, "unsendable", 0,
        "append", 2, "table", 0, "dup", 0, "unsendable", 1, "set", 2, "pack", 2, "pack", 2, "pack", 2,
        "pack", 2, "closure", 0) },
    { "starved", prog(1, 0, 40, "table", 0, "dict", 3, "dup", 0, "set", 0, "int8", 3, "closure", 2,
        "named", 7, "object", 1, "pack", 4) },
}

local function write(sub, list)
    local d = dir .. "/" .. sub
    os.execute("mkdir -p '" .. d .. "'")
    local total = 0
    for _, s in ipairs(list) do
        local f = assert(io.open(d .. "/" .. s[1], "wb"))
        f:write(s[2])
        f:close()
        total = total + #s[2]
    end
    io.write(("%d seeds, %d bytes, in %s\n"):format(#list, total, d))
end

write("decode", seeds)
write("roundtrip", programs)
