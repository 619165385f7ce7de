/* SPDX-License-Identifier: MIT */
/*
 * codec.c - luamp's codec against msgpack-c's packer and unpacker, on the
 * same Lua values, so that the choice of a codec of luamp's own stays a
 * measured one.
 *
 * luamp encodes and decodes MessagePack with src/codec.c and links no
 * MessagePack library; msgpack-c is the oracle its tests and fuzzers
 * compare it with.  The alternative it was chosen over is luamp built on
 * msgpack-c: walk the Lua value and call msgpack_pack_* for each part,
 * and on the way back unpack into a zone (msgpack_unpack_next) and turn
 * each msgpack_object into a Lua value.  That is what the "msgpack-c"
 * side does here, value for value, so both sides go from a Lua value to
 * bytes and back, as a queue's put and get must.  Plain data only (no
 * functions, cycles, metatables: msgpack-c has no notion of them), and a
 * value nested deeper than msgpack-c's unpacker allows (32 levels, its
 * MSGPACK_EMBED_STACK_SIZE) to show that limit.
 *
 *   cc -O2 -D_GNU_SOURCE -Isrc bench/codec.c src/codec.c \
 *      $(pkg-config --cflags --libs lua5.4 msgpack-c) -o codec && ./codec
 *
 * `codec [seconds [value]]`: each measurement runs for `seconds` (0.2);
 * only the value named, if one is.  Prints one JSON line per value
 * (bench/run reads them): bytes, and the nanoseconds per encode and per
 * decode on each side (null where a side cannot do it).
 */
#include "codec.h"

#include <lauxlib.h>
#include <lualib.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- msgpack-c, as luamp would use it ---- */

static void pack_value(msgpack_packer *pk, lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            msgpack_pack_int64(pk, lua_tointeger(L, idx));
        else
            msgpack_pack_double(pk, lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, s, n);
        break;
    }
    case LUA_TTABLE: {
        lua_Unsigned len = lua_rawlen(L, idx), count = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            count++;
            lua_pop(L, 1);
        }
        if (count == len && len > 0) {
            msgpack_pack_array(pk, (size_t)len);
            for (lua_Unsigned i = 1; i <= len; i++) {
                lua_rawgeti(L, idx, (lua_Integer)i);
                pack_value(pk, L, -1);
                lua_pop(L, 1);
            }
        } else {
            msgpack_pack_map(pk, (size_t)count);
            lua_pushnil(L);
            while (lua_next(L, idx)) {
                pack_value(pk, L, -2);
                pack_value(pk, L, -1);
                lua_pop(L, 1);
            }
        }
        break;
    }
    default:
        msgpack_pack_nil(pk);
    }
}

static void push_object(lua_State *L, const msgpack_object *o)
{
    luaL_checkstack(L, 4, "too deep");
    switch (o->type) {
    case MSGPACK_OBJECT_BOOLEAN:
        lua_pushboolean(L, o->via.boolean);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        lua_pushinteger(L, (lua_Integer)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        lua_pushinteger(L, (lua_Integer)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        lua_pushnumber(L, o->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        lua_pushlstring(L, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        lua_pushlstring(L, o->via.bin.ptr, o->via.bin.size);
        break;
    case MSGPACK_OBJECT_ARRAY:
        lua_createtable(L, (int)o->via.array.size, 0);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            push_object(L, &o->via.array.ptr[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    case MSGPACK_OBJECT_MAP:
        lua_createtable(L, 0, (int)o->via.map.size);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            push_object(L, &o->via.map.ptr[i].key);
            push_object(L, &o->via.map.ptr[i].val);
            lua_rawset(L, -3);
        }
        break;
    default:
        lua_pushnil(L);
    }
}

/* ---- the values ---- */

static const struct {
    const char *name, *expr;
} values[] = {
    { "ints", "local t = {} for i = 1, 1000 do t[i] = i * 7 end return t" },
    { "floats", "local t = {} for i = 1, 1000 do t[i] = i / 3 end return t" },
    { "strings", "local t = {} for i = 1, 1000 do t[i] = string.format('item-%05d', i) end return t" },
    { "records", "local t = {} for i = 1, 200 do t[i] = {id = i, name = 'item' .. i, score = i * 0.5,"
                 " ok = i % 2 == 0, tags = {'a', 'b', 'c'}} end return t" },
    { "nested30", "local t = {leaf = 1} for i = 1, 29 do t = {x = t, n = i} end return t" },
    { "nested40", "local t = {leaf = 1} for i = 1, 39 do t = {x = t, n = i} end return t" },
    { "string1m", "return string.rep('0123456789abcdef', 65536)" },
};

/* Runs fn until `min` seconds passed; ns per call. */
#define TIME(min, body)                                                  \
    do {                                                                 \
        long n_ = 0, batch_ = 1;                                         \
        double t0_ = now(), el_;                                         \
        for (;;) {                                                       \
            for (long k_ = 0; k_ < batch_; k_++) { body; }               \
            n_ += batch_;                                                \
            el_ = now() - t0_;                                           \
            if (el_ >= (min))                                            \
                break;                                                   \
            batch_ *= 2;                                                 \
        }                                                                \
        ns = el_ * 1e9 / (double)n_;                                     \
    } while (0)

int main(int argc, char **argv)
{
    double min = argc > 1 ? atof(argv[1]) : 0.2;
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luamp_buf b;
    luamp_buf_init(&b);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);

    for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
        if (argc > 2 && strcmp(argv[2], values[v].name) != 0)
            continue;
        if (luaL_dostring(L, values[v].expr) != LUA_OK) {
            fprintf(stderr, "%s: %s\n", values[v].name, lua_tostring(L, -1));
            return 1;
        }
        int top = lua_gettop(L);
        double ns, lenc, ldec, menc, mdec = -1;

        luamp_buf_reset(&b);
        if (luamp_encode(L, top, "value", &b) != 0) {
            fprintf(stderr, "%s: %s\n", values[v].name, lua_tostring(L, -1));
            return 1;
        }
        lua_settop(L, top);
        TIME(min, luamp_buf_reset(&b); luamp_encode(L, top, "value", &b));
        lenc = ns;
        TIME(min, luamp_decode(L, b.data, b.len, 0); lua_settop(L, top));
        ldec = ns;

        msgpack_sbuffer_clear(&sb);
        pack_value(&pk, L, top);
        size_t mbytes = sb.size;
        TIME(min, msgpack_sbuffer_clear(&sb); pack_value(&pk, L, top));
        menc = ns;
        size_t off = 0;
        int ok = msgpack_unpack_next(&u, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS;
        if (ok) {
            TIME(min, off = 0; msgpack_unpack_next(&u, sb.data, sb.size, &off); push_object(L, &u.data);
                 lua_settop(L, top));
            mdec = ns;
        }
        printf("{\"value\": \"%s\", \"bytes\": %zu, \"msgpackc_bytes\": %zu, \"luamp_enc_ns\": %.1f, "
               "\"luamp_dec_ns\": %.1f, \"msgpackc_enc_ns\": %.1f, \"msgpackc_dec_ns\": ",
               values[v].name, b.len, mbytes, lenc, ldec, menc);
        if (mdec >= 0)
            printf("%.1f}\n", mdec);
        else
            printf("null}\n");
        fflush(stdout);
        lua_settop(L, 0);
    }
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    luamp_buf_free(&b);
    lua_close(L);
    return 0;
}
