/* SPDX-License-Identifier: MIT */
/*
 * fuzz_decode.c - libFuzzer target: luamp_decode on untrusted bytes.
 *
 * Each input is decoded as untrusted (LUAMP_DECODE_NO_CODE) by one Lua
 * state kept for the whole run, inside a lua_pcall since the decoder may
 * raise for memory errors.  Checked, with abort() on violation:
 *
 *  - the contract of codec.h: 0 with exactly one value pushed, or -1
 *    with one non-empty string message pushed; no other error raised;
 *  - what decodes re-encodes (but for refusals an input can provoke:
 *    userdata such as io.stdout, a __luamp_ref it installed, nesting made
 *    deeper by the encoder's own traversal order of shared tables);
 *  - the re-encoded message decodes, to a value that is the same up to
 *    identity (fuzz_common.h: same scalars bit for bit, same sharing and
 *    cycles, same metatables, same named values);
 *  - when the order of entries cannot differ (no table of 2+ entries
 *    written as a map), the copy encodes to exactly the same bytes;
 *  - plain MessagePack (no extension types, nesting within msgpack-c's
 *    32 levels) decodes to what msgpack-c's own unpacker reads in the
 *    bytes, mapped to Lua as doc/format.md says: an independent reader
 *    as the oracle for integers, floats, strings, holes, dropped nil
 *    values, duplicate and float keys, and for what must be refused.
 *
 * registry["luamp.objects"] holds two objects (a table and a userdata),
 * so OBJ ids exercise both the hit and the miss path.
 */
#include <math.h>

#include <msgpack.h>

#include "fuzz_common.h"

static lua_State *L;
static luamp_buf e1, e2;
static unsigned long runs;

typedef struct input {
    const char *data;
    size_t len;
} input;

/* luamp_decode with its contract checked; returns its result. */
static int decode_checked(const char *p, size_t n, int flags, const char *what)
{
    int base = lua_gettop(L), r = luamp_decode(L, p, n, flags);

    if (r == 0) {
        if (lua_gettop(L) != base + 1)
            fz_die("%s: decoded, but %d values pushed", what, lua_gettop(L) - base);
    } else if (r == -1) {
        if (lua_gettop(L) != base + 1 || lua_type(L, -1) != LUA_TSTRING)
            fz_die("%s: refused with %d values pushed, the top one a %s", what,
                   lua_gettop(L) - base, luaL_typename(L, -1));
        if (lua_rawlen(L, -1) == 0)
            fz_die("%s: refused with an empty message", what);
    } else {
        fz_die("%s: luamp_decode returned %d", what, r);
    }
    return r;
}

/* luamp_encode with its contract checked: the buffer is restored and
 * one message pushed on refusal, nothing pushed on success. */
static int encode_checked(int idx, luamp_buf *b, const char *what)
{
    int base = lua_gettop(L), r;

    b->len = 0;
    r = luamp_encode(L, idx, "value", b);
    if (r == 0) {
        if (lua_gettop(L) != base)
            fz_die("%s: encoded, but %d values pushed", what, lua_gettop(L) - base);
        if (b->len == 0)
            fz_die("%s: encoded into nothing", what);
    } else if (r == -1) {
        if (lua_gettop(L) != base + 1 || lua_type(L, -1) != LUA_TSTRING)
            fz_die("%s: refused with %d values pushed", what, lua_gettop(L) - base);
        if (b->len != 0)
            fz_die("%s: refused, leaving %zu bytes in the buffer", what, b->len);
        if (!fz_starts(lua_tostring(L, -1), "cannot send value"))
            fz_die("%s: odd refusal: %s", what, lua_tostring(L, -1));
    } else {
        fz_die("%s: luamp_encode returned %d", what, r);
    }
    return r;
}

/* Whether the input may hold a REF (ext type 1), found by looking at the
 * bytes: generous, it only excuses nesting refusals. */
static int may_have_ref(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] >= 0xd4 && p[i] <= 0xd6 && p[i + 1] == 1)
            return 1;
        if (p[i] >= 0xc7 && p[i] <= 0xc9) {
            size_t at = i + 2 + (p[i] == 0xc7 ? 0 : p[i] == 0xc8 ? 1 : 3);
            if (at < n && p[at] == 1)
                return 1;
        }
    }
    return 0;
}

/* Refusals a decoded value may earn: it may hold a userdata (io.stdout),
 * a table whose metatable the input gave a __luamp_ref (any C function
 * of a loaded module), a table that such a function changed, or shared
 * tables that the encoder meets in another order than the input had
 * them, deeper. */
static int fair_refusal(const char *msg, const input *in)
{
    return strstr(msg, ": a userdata") != NULL
        || strstr(msg, "__luamp_ref") != NULL
        || strstr(msg, ": a table that changed while it was being sent") != NULL
        || (strstr(msg, ": nesting deeper than 200 levels") != NULL
            && may_have_ref((const unsigned char *)in->data, in->len));
}

/* ---- msgpack-c as the oracle ---- */

/* Pushes the Lua value doc/format.md says msgpack-c's object stands for:
 * 1 pushed; 0 it holds an extension type (luamp's business, not
 * compared); -1 luamp must refuse it (a nil or NaN map key). */
static int expect(const msgpack_object *o)
{
    int r;

    luaL_checkstack(L, 8, "expect");
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        lua_pushnil(L);
        return 1;
    case MSGPACK_OBJECT_BOOLEAN:
        lua_pushboolean(L, o->via.boolean);
        return 1;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            lua_pushnumber(L, (lua_Number)o->via.u64);
        else
            lua_pushinteger(L, (lua_Integer)o->via.u64);
        return 1;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        lua_pushinteger(L, (lua_Integer)o->via.i64);
        return 1;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        lua_pushnumber(L, (lua_Number)o->via.f64);
        return 1;
    case MSGPACK_OBJECT_STR:
        lua_pushlstring(L, o->via.str.ptr, o->via.str.size);
        return 1;
    case MSGPACK_OBJECT_BIN:
        lua_pushlstring(L, o->via.bin.ptr, o->via.bin.size);
        return 1;
    case MSGPACK_OBJECT_ARRAY:
        lua_createtable(L, (int)o->via.array.size, 0);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if ((r = expect(&o->via.array.ptr[i])) <= 0)
                return r;
            if (lua_isnil(L, -1))
                lua_pop(L, 1);   /* a hole */
            else
                lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        return 1;
    case MSGPACK_OBJECT_MAP:
        lua_createtable(L, 0, (int)o->via.map.size);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if ((r = expect(&o->via.map.ptr[i].key)) <= 0)
                return r;
            if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1))))
                return -1;
            if ((r = expect(&o->via.map.ptr[i].val)) <= 0)
                return r;
            if (lua_isnil(L, -1))
                lua_pop(L, 2);   /* a nil value: the entry goes */
            else
                lua_rawset(L, -3);
        }
        return 1;
    default:   /* MSGPACK_OBJECT_EXT */
        return 0;
    }
}

/* luamp decoded the input into the value at v: msgpack-c must agree. */
static void check_oracle(const input *in, int v)
{
    msgpack_unpacked u;
    size_t off = 0;
    msgpack_unpack_return ret;
    int top = lua_gettop(L), r;
    fz_same same;

    msgpack_unpacked_init(&u);
    ret = msgpack_unpack_next(&u, in->data, in->len, &off);
    switch (ret) {
    case MSGPACK_UNPACK_SUCCESS:
        if (off != in->len)
            fz_die("luamp decoded %zu bytes, msgpack-c reads a message of %zu", in->len, off);
        r = expect(&u.data);
        if (r < 0)
            fz_die("luamp decoded a map with a nil or NaN key");
        if (r > 0 && !fz_same_values(L, lua_gettop(L), v, &same))
            fz_die("luamp and msgpack-c read different values: %s", same.why);
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:   /* nesting past 32 levels */
        break;
    case MSGPACK_UNPACK_EXTRA_BYTES:
        fz_die("luamp decoded a message with bytes after it (msgpack-c reads %zu of %zu)",
               off, in->len);
        break;
    case MSGPACK_UNPACK_CONTINUE:
        fz_die("luamp decoded a message that msgpack-c finds truncated");
        break;
    default:
        fz_die("luamp decoded a message that msgpack-c cannot parse (%d)", (int)ret);
    }
    msgpack_unpacked_destroy(&u);
    lua_settop(L, top);
}

static int one_input(lua_State *S)
{
    const input *in = lua_touserdata(S, 1);
    int v1, v2;
    fz_same same;

    (void)S;
    if (decode_checked(in->data, in->len, LUAMP_DECODE_NO_CODE, "the input") != 0)
        return 0;
    v1 = lua_gettop(L);
    /* No collection from here on: a decoded table may be weak (a
     * metatable with __mode), and must stay as it is to be compared. */
    lua_gc(L, LUA_GCSTOP);
    /* Only now: a message luamp decoded has no length that lies, so
     * msgpack-c allocates in proportion to the input. */
    check_oracle(in, v1);

    if (encode_checked(v1, &e1, "the decoded value") != 0) {
        if (fair_refusal(lua_tostring(L, -1), in))
            return 0;
        fz_die("a decoded value cannot be encoded: %s", lua_tostring(L, -1));
    }
    if (decode_checked(e1.data, e1.len, LUAMP_DECODE_NO_CODE, "the re-encoded value") != 0) {
        /* an id that a __luamp_ref of the input's made up */
        if (fz_starts(lua_tostring(L, -1), "cannot receive a luamp object ("))
            return 0;
        fz_die("a re-encoded value does not decode: %s", lua_tostring(L, -1));
    }
    v2 = lua_gettop(L);
    if (!fz_same_values(L, v1, v2, &same))
        fz_die("the round trip changed the value: %s", same.why);

    if (encode_checked(v2, &e2, "the copy") != 0) {
        if (fair_refusal(lua_tostring(L, -1), in))
            return 0;
        fz_die("the copy cannot be encoded: %s", lua_tostring(L, -1));
    }
    if (!same.order_free && !same.gave_up
        && (e1.len != e2.len || memcmp(e1.data, e2.data, e1.len) != 0))
        fz_die("the copy encodes to other bytes (%zu and %zu bytes)", e1.len, e2.len);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = { (const char *)data, size };
    int status;

    if (L == NULL) {
        L = fz_new_state();
        luamp_buf_init(&e1);
        luamp_buf_init(&e2);
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCRESTART);
    lua_pushcfunction(L, one_input);
    lua_pushlightuserdata(L, &in);
    status = lua_pcall(L, 1, 0, 0);
    if (status != LUA_OK && status != LUA_ERRMEM)
        fz_die("an error other than a memory error was raised (status %d): %s", status,
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)");
    lua_settop(L, 0);
    fz_reset(L);
    lua_gc(L, LUA_GCRESTART);
    /* The collector runs on its own while inputs decode; now and then a
     * step or a whole cycle more, so that finalizers of decoded
     * metatables (__gc) run too. */
    if (++runs % 64 == 0)
        lua_gc(L, LUA_GCSTEP, 0);
    if (runs % 4096 == 0)
        lua_gc(L, LUA_GCCOLLECT);
    /* Big one-off messages must not keep their buffers. */
    if (e1.cap > ((size_t)1 << 20))
        luamp_buf_free(&e1);
    if (e2.cap > ((size_t)1 << 20))
        luamp_buf_free(&e2);
    return 0;
}
