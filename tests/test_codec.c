/* SPDX-License-Identifier: MIT */
/*
 * test_codec.c - unit tests of src/codec.c through its C interface: the
 * exact bytes on the wire, buffers left as they were on failure, the
 * decoder's refusals of malformed input, and fuzzing (truncations,
 * random and mutated bytes) that must never crash.  Run it under ASan or
 * valgrind to make the "never crash" part mean something.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "codec.h"
#include "ctap.h"
#include "../fuzz/sandbox.h"

#include <limits.h>
#ifdef HAVE_MSGPACK
#include <msgpack.h>
#endif

static lua_State *L;

/* Pushes the value of a Lua expression. */
static void eval(const char *expr)
{
    char code[4096];

    snprintf(code, sizeof code, "return %s", expr);
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "test_codec: %s: %s\n", expr, lua_tostring(L, -1));
        exit(2);
    }
}

static void run(const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "test_codec: %s\n", lua_tostring(L, -1));
        exit(2);
    }
}

/* Encodes a Lua expression into b (appending); returns luamp_encode's
 * result and leaves the stack as it was. */
static int encode_expr(const char *expr, const char *root, luamp_buf *b)
{
    int r;

    eval(expr);
    r = luamp_encode(L, -1, root, b);
    lua_pop(L, r == 0 ? 1 : 2);
    return r;
}

/* The refusal message for a Lua expression ("" when it encodes). */
static const char *refusal(const char *expr, const char *root)
{
    static char msg[512];
    luamp_buf b;

    luamp_buf_init(&b);
    eval(expr);
    msg[0] = '\0';
    if (luamp_encode(L, -1, root, &b) != 0) {
        snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    luamp_buf_free(&b);
    return msg;
}

/* The decoder's error for some bytes ("" when they decode). */
static const char *decode_error(const char *s, size_t n, int flags)
{
    static char msg[512];

    msg[0] = '\0';
    if (luamp_decode(L, s, n, flags) != 0)
        snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return msg;
}
#define DECODE_ERROR(lit, flags) decode_error(lit, sizeof(lit) - 1, flags)

static int bytes_are(const luamp_buf *b, size_t from, const char *want, size_t n)
{
    return b->len - from == n && memcmp(b->data + from, want, n) == 0;
}
#define BYTES_ARE(b, from, lit) bytes_are(b, from, lit, sizeof(lit) - 1)

static int contains(const luamp_buf *b, const char *want, size_t n)
{
    return memmem(b->data, b->len, want, n) != NULL;
}

/* Encodes then decodes `expr`, leaving the result in global `r`. */
static int round_trip(const char *expr)
{
    luamp_buf b;
    int ok;

    luamp_buf_init(&b);
    ok = encode_expr(expr, NULL, &b) == 0 && luamp_decode(L, b.data, b.len, 0) == 0;
    if (ok)
        lua_setglobal(L, "r");
    else if (b.len > 0)
        lua_pop(L, 1);
    luamp_buf_free(&b);
    return ok;
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int lua_true(const char *expr)
{
    int v;

    eval(expr);
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static void test_buffers(void)
{
    luamp_buf b;

    luamp_buf_init(&b);
    ok(b.data == NULL && b.len == 0 && b.cap == 0, "a new buffer is empty");
    ok(luamp_buf_append(&b, "abc", 3) == 0 && b.len == 3 && memcmp(b.data, "abc", 3) == 0,
       "append copies the bytes");
    ok(luamp_buf_reserve(&b, 10000) == 0 && b.cap - b.len >= 10000 && b.len == 3,
       "reserve makes room without changing the length");
    ok(luamp_buf_reserve(&b, SIZE_MAX) == -1 && b.len == 3, "an impossible reserve fails cleanly");
    luamp_buf_free(&b);
    ok(b.data == NULL && b.len == 0, "free leaves an empty buffer");
}

static void test_wire(void)
{
    luamp_buf b;

    luamp_buf_init(&b);
    luamp_buf_append(&b, "HDR", 3);
    ok(encode_expr("1.0", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\xcb\x3f\xf0\0\0\0\0\0\0"),
       "floats stay floats: 1.0 is a float64");
    ok(memcmp(b.data, "HDR", 3) == 0, "encoding appends after what the buffer holds");
    b.len = 3;
    ok(encode_expr("-0.0", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\xcb\x80\0\0\0\0\0\0\0"),
       "-0.0 keeps its sign bit");
    b.len = 3;
    ok(encode_expr("42", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\x2a"), "42 is a positive fixint");
    b.len = 3;
    ok(encode_expr("-33", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\xd0\xdf"), "-33 is an int8");
    b.len = 3;
    ok(encode_expr("math.maxinteger", NULL, &b) == 0
       && BYTES_ARE(&b, 3, "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"), "maxinteger is a uint64");
    b.len = 3;
    ok(encode_expr("math.mininteger", NULL, &b) == 0
       && BYTES_ARE(&b, 3, "\xd3\x80\0\0\0\0\0\0\0"), "mininteger is an int64");
    b.len = 3;
    ok(encode_expr("'hi'", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\xa2hi"), "UTF-8 text is a str");
    b.len = 3;
    ok(encode_expr("'\\xff'", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\xc4\x01\xff"), "other bytes are a bin");
    b.len = 3;
    ok(encode_expr("{true, false, nil}", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\x92\xc3\xc2"),
       "a sequence is an array");
    b.len = 3;
    ok(encode_expr("{x = 1}", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\x81\xa1x\x01"), "a record is a map");
    b.len = 3;
    ok(encode_expr("(function() local t = {} return {t, t} end)()", NULL, &b) == 0
       && BYTES_ARE(&b, 3, "\x92\x80\xd4\x01\x01"), "a second encounter is REF with the table's id");
    b.len = 3;
    ok(encode_expr("setmetatable({}, {})", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\x93\xd4\x03\0\x80\x80"),
       "a table with a metatable is [META, body, metatable]");
    b.len = 3;
    ok(encode_expr("math.sqrt", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\xc7\x09\x02math.sqrt"),
       "a C function is NAMED by module and field");
    b.len = 3;
    ok(encode_expr("string", NULL, &b) == 0 && BYTES_ARE(&b, 3, "\xc7\x06\x02string"),
       "a module is NAMED by its name");
    b.len = 3;
    ok(encode_expr("function() return 1 end", NULL, &b) == 0 && b.len > 8
       && memcmp(b.data + 3, "\x92\xd4\x04\0", 4) == 0 && contains(&b, "\x1bLua", 4),
       "a function is [FUNC, bytecode]");
    b.len = 3;
    ok(encode_expr("(function() local n = 0; return {function() n = n + 1 end, function() return n end} end)()",
                   NULL, &b) == 0
       && contains(&b, "\xc7\x06\x05\0\0\0\x01\0\x01", 9),
       "a shared upvalue is UPREF(function 1, upvalue 1)");
    luamp_buf_free(&b);
}

static void test_refusals(void)
{
    luamp_buf b;
    int top;

    ok(strcmp(refusal("{1, {f = coroutine.create(print)}}", "args"),
              "cannot send args[2].f: a coroutine") == 0, "a coroutine is refused with its path");
    ok(strcmp(refusal("io.stdout", NULL), "cannot send value: a userdata") == 0,
       "a userdata is refused; the root defaults to value");
    ok(strcmp(refusal("{k = {[3] = string.gmatch('', '')}}", "item"),
              "cannot send item.k[3]: a C function that is not in package.loaded") == 0,
       "an unnamed C function is refused");
    ok(strcmp(refusal("(function() local co = coroutine.create(print); "
                      "return {function() return co end} end)()", "args"),
              "cannot send args[1].<upvalue co>: a coroutine") == 0,
       "an upvalue is named in the path");

    luamp_buf_init(&b);
    luamp_buf_append(&b, "keep", 4);
    top = lua_gettop(L);
    eval("{1, 2, 3, 'long enough to be written first', coroutine.create(print)}");
    ok(luamp_encode(L, -1, "args", &b) == -1 && lua_gettop(L) == top + 2,
       "a refusal pushes one message");
    ok(b.len == 4 && memcmp(b.data, "keep", 4) == 0, "a refusal leaves the buffer as it was");
    lua_settop(L, top);
    eval("{1, 2}");
    ok(luamp_encode(L, -1, "args", &b) == 0 && lua_gettop(L) == top + 1, "a success pushes nothing");
    lua_settop(L, top);
    luamp_buf_free(&b);
}

static void test_depth(void)
{
    const char *deep = "(function(n) local v = {} for _ = 2, n do v = {v} end return v end)";
    char expr[256];
    luamp_buf b;
    char *in;

    snprintf(expr, sizeof expr, "%s(200)", deep);
    luamp_buf_init(&b);
    ok(encode_expr(expr, NULL, &b) == 0 && luamp_decode(L, b.data, b.len, 0) == 0,
       "200 nested tables encode and decode");
    lua_pop(L, 1);
    luamp_buf_free(&b);
    snprintf(expr, sizeof expr, "%s(201)", deep);
    ok(strstr(refusal(expr, NULL), ": nesting deeper than 200 levels") != NULL,
       "201 nested tables are refused");
    ok(starts_with(refusal("(function() local f = function() end; "
                           "for _ = 1, 201 do local g = f; f = function() return g end end; return f end)()",
                           NULL), "cannot send value.<upvalue g>.<upvalue g>")
       && strstr(refusal("(function() local f = function() end; "
                         "for _ = 1, 201 do local g = f; f = function() return g end end; return f end)()",
                         NULL), "nesting deeper than 200 levels") != NULL,
       "201 nested functions are refused");

    in = malloc(202);
    memset(in, 0x91, 201);
    in[199] = (char)0x90;
    ok(*decode_error(in, 200, 0) == '\0', "decoding 200 nested arrays works");
    in[199] = (char)0x91;
    in[200] = (char)0x90;
    ok(strcmp(decode_error(in, 201, 0), "nesting deeper than 200 levels") == 0,
       "decoding 201 nested arrays fails");
    free(in);
}

static void test_decode_errors(void)
{
    int top = lua_gettop(L);
    luamp_buf b;

    ok(strcmp(DECODE_ERROR("", 0), "truncated message") == 0, "empty input is truncated");
    ok(strcmp(DECODE_ERROR("\xc1", 0), "invalid byte 0xc1 in message") == 0, "0xc1 is refused");
    ok(strcmp(DECODE_ERROR("\x92\x01", 0), "truncated message") == 0, "a short array is truncated");
    ok(strcmp(DECODE_ERROR("\xc0\xc0", 0), "1 trailing bytes after the message") == 0,
       "trailing bytes are refused");
    ok(strcmp(DECODE_ERROR("\xdd\xff\xff\xff\xff\x01", 0), "truncated message") == 0,
       "a lying array32 length allocates nothing");
    ok(strcmp(DECODE_ERROR("\xdf\xff\xff\xff\xff\x01\x01", 0), "truncated message") == 0,
       "a lying map32 length allocates nothing");
    ok(strcmp(DECODE_ERROR("\xc6\xff\xff\xff\xff", 0), "truncated message") == 0,
       "a lying bin32 length is refused");
    ok(strcmp(DECODE_ERROR("\xc9\xff\xff\xff\xff\x01", 0), "truncated message") == 0,
       "a lying ext32 length is refused");
    ok(strcmp(DECODE_ERROR("\x81\xc0\x01", 0), "nil map key") == 0, "nil map keys are refused");
    ok(strcmp(DECODE_ERROR("\x81\xca\x7f\xc0\0\0\x01", 0), "NaN map key") == 0,
       "NaN map keys are refused");
    ok(strcmp(DECODE_ERROR("\x92\x80\xd4\x01\x02", 0), "reference to unknown table or function #2") == 0,
       "a REF to an unknown id is refused");
    ok(strcmp(DECODE_ERROR("\xd6\x01\0\0\0\0", 0), "reference to unknown table or function #0") == 0,
       "a REF needs its table first");
    ok(strcmp(DECODE_ERROR("\xd4\x07\0", 0), "unknown extension type 7") == 0, "ext 7 is unknown");
    ok(strcmp(DECODE_ERROR("\xd4\xff\0", 0), "unknown extension type -1") == 0,
       "timestamps (ext -1) are unknown");
    ok(strcmp(DECODE_ERROR("\xd4\x04\0", 0), "misplaced extension type 4") == 0,
       "a FUNC marker outside an array is refused");
    ok(strcmp(DECODE_ERROR("\x92\xd4\x03\0\x80", 0), "a metatable wrapper of 2 elements") == 0,
       "a META wrapper needs 3 elements");
    ok(strcmp(DECODE_ERROR("\x93\xd4\x03\0\x01\x80", 0), "a metatable wrapper without a table") == 0,
       "a META wrapper needs a table body");
    ok(strcmp(DECODE_ERROR("\x93\xd4\x03\x01\x80\x80", 0), "bad payload for extension type 3") == 0,
       "a META marker must be 0");
    ok(strcmp(DECODE_ERROR("\xdd\xff\xff\xff\xff\xd4\x03\0", 0),
              "a metatable wrapper of 4294967295 elements") == 0,
       "a huge element count is reported as it is");
    ok(strcmp(DECODE_ERROR("\xd6\x01\xff\xff\xff\xff", 0),
              "reference to unknown table or function #4294967295") == 0,
       "a huge REF id is reported as it is");
    ok(strcmp(DECODE_ERROR("\x91\xd4\x04\0", 0), "a function without bytecode") == 0,
       "a FUNC wrapper needs bytecode");
    ok(strcmp(DECODE_ERROR("\xc7\0\x02", 0), "bad name in message") == 0, "an empty name is refused");
    ok(starts_with(DECODE_ERROR("\xc7\x0d\x02no_such_mod.f", 0),
                   "cannot receive no_such_mod.f: module 'no_such_mod' not found"),
       "an unknown module is refused with require's reason");
    ok(strcmp(DECODE_ERROR("\xc7\x0a\x02string.xyz", 0),
              "cannot receive string.xyz: no field 'xyz' in module 'string'") == 0,
       "an unknown field is refused");
    ok(*DECODE_ERROR("\xc7\x09\x02os.getenv", 0) == '\0', "os.getenv resolves");
    ok(strcmp(decode_error("", LUAMP_MAX_MESSAGE + 1, 0), "message larger than 1 TiB") == 0,
       "input larger than 1 TiB is refused before it is read");
    {
        /* An array of 2^31 entries: a message over 2 GiB may say so, as
         * its bytes are there (zero pages, never touched); no Lua table
         * holds that many. */
        size_t n = 5 + ((size_t)1 << 31);
        char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            memcpy(p, "\xdd\x80\0\0\0", 5);
            ok(strcmp(decode_error(p, n, 0), "a table of 2147483648 entries, more than Lua's tables hold") == 0,
               "an array of 2^31 entries is refused before a table is made");
            munmap(p, n);
        } else {
            skip("an array of 2^31 entries is refused before a table is made", "no 2 GiB of address space");
        }
    }
    ok(lua_gettop(L) == top, "failed decodes leave the stack balanced");

    luamp_buf_init(&b);
    encode_expr("{function() return 1 end}", NULL, &b);
    ok(strcmp(decode_error(b.data, b.len, LUAMP_DECODE_NO_CODE),
              "refusing a function from an untrusted source") == 0,
       "LUAMP_DECODE_NO_CODE refuses functions");
    ok(*decode_error(b.data, b.len, 0) == '\0', "without it the same function is accepted");
    luamp_buf_free(&b);
    /* [META, {}, {__concat = NAMED "os.execute"}]: found by the fuzzer */
    ok(strcmp(DECODE_ERROR("\x93\xd4\x03\x00\x80\x81\xa8__concat\xc7\x0a\x02os.execute",
                           LUAMP_DECODE_NO_CODE),
              "refusing a function from an untrusted source") == 0,
       "LUAMP_DECODE_NO_CODE refuses a C function by name (a metamethod would run it)");
    ok(strcmp(DECODE_ERROR("\xc7\x09\x02os.getenv", LUAMP_DECODE_NO_CODE),
              "refusing a function from an untrusted source") == 0,
       "LUAMP_DECODE_NO_CODE refuses os.getenv by name");
    ok(*DECODE_ERROR("\xc7\x06\x02string", LUAMP_DECODE_NO_CODE) == '\0',
       "LUAMP_DECODE_NO_CODE still accepts a loaded module by name");
    ok(strcmp(DECODE_ERROR("\xc7\x06\x02socket", LUAMP_DECODE_NO_CODE),
              "cannot receive socket: not loaded here (untrusted source)") == 0,
       "LUAMP_DECODE_NO_CODE never requires a module from disk");
}

/* Surgery on the message {f} where f has one upvalue holding 3: its last
 * byte (0x03) is that upvalue. */
static void test_upvalue_errors(void)
{
    luamp_buf b;
    char *m;
    size_t n;

    luamp_buf_init(&b);
    encode_expr("(function() local k = 3; return {function() return k end} end)()", NULL, &b);
    n = b.len;
    ok(b.data[n - 1] == 3, "the upvalue is the message's last byte");
    m = malloc(n + 16);
    memcpy(m, b.data, n - 1);
    memcpy(m + n - 1, "\xc7\x06\x05\0\0\0\0\0\x01", 9);
    ok(strcmp(decode_error(m, n + 8, 0), "a shared upvalue of something that is not a function") == 0,
       "an UPREF to a table is refused");
    memcpy(m + n - 1, "\xc7\x06\x05\0\0\0\x01\0\x02", 9);
    ok(strcmp(decode_error(m, n + 8, 0), "a shared upvalue 2 of a function that has fewer") == 0,
       "an UPREF past the function's upvalues is refused");
    memcpy(m + n - 1, "\xc7\x06\x05\0\0\0\x07\0\x01", 9);
    ok(strcmp(decode_error(m, n + 8, 0), "reference to unknown table or function #7") == 0,
       "an UPREF to an unknown function is refused");
    memcpy(m, b.data, n);
    m[1] = (char)0x94;
    m[n] = (char)0xc0;
    ok(strcmp(decode_error(m, n + 1, 0), "a function with 1 upvalues sent with 2") == 0,
       "an upvalue count that differs from the bytecode's is refused");
    free(m);
    luamp_buf_free(&b);
}

static void test_round_trips(void)
{
    ok(round_trip("{1, 2.0, 'x', {y = {true}}}")
       && lua_true("r[1] == 1 and math.type(r[2]) == 'float' and r[3] == 'x' and r.y == nil and r[4].y[1] == true"),
       "nested values survive");
    ok(round_trip("(function() local t = {}; t.t = t; return t end)()") && lua_true("rawequal(r.t, r)"),
       "cycles survive");
    ok(round_trip("(function() local k = 7; return function(x) return x * k end end)()")
       && lua_true("r(6) == 42"), "closures survive: x * k");
    ok(round_trip("(function() local n = 0; return {function() n = n + 1 end, function() return n end} end)()")
       && lua_true("(function() r[1](); r[1](); r[1](); return r[2]() == 3 end)()"),
       "shared upvalues stay shared");
    ok(round_trip("math.sqrt") && lua_true("rawequal(r, math.sqrt)"), "C functions travel by name");
    ok(round_trip("setmetatable({}, {__index = function(_, k) return k * 2 end})")
       && lua_true("r[21] == 42"), "metatables survive");
}

/* A Lua memory error in the middle of an encode: the buffer is restored
 * and the error propagates. */
static int fail_allocs;
static int allocs_left = -1;   /* >= 0: growing allocations that succeed before they fail */

static void *alloc(void *ud, void *p, size_t osize, size_t nsize)
{
    (void)ud;
    if (nsize == 0) {
        free(p);
        return NULL;
    }
    if (nsize > osize && (fail_allocs || allocs_left == 0))
        return NULL;
    if (nsize > osize && allocs_left > 0)
        allocs_left--;
    return realloc(p, nsize);
}

static int starve(lua_State *S)
{
    fail_allocs = 1;
    lua_pushvalue(S, lua_upvalueindex(1));
    return 1;
}

static int encode_in_pcall(lua_State *S)
{
    luamp_buf *b = lua_touserdata(S, 1);
    luamp_encode(S, 2, "args", b);
    return 0;
}

static void test_memory_error(void)
{
    lua_State *S = lua_newstate(alloc, NULL);
    luamp_buf b;
    int status;

    luaL_openlibs(S);
    luamp_buf_init(&b);
    luamp_buf_append(&b, "keep", 4);
    lua_pushcfunction(S, encode_in_pcall);
    lua_pushlightuserdata(S, &b);
    /* {"x", obj, {}}: obj's __luamp_ref starves the allocator, so the
     * table after it cannot be remembered. */
    lua_createtable(S, 3, 0);
    lua_pushliteral(S, "x");
    lua_rawseti(S, -2, 1);
    lua_newtable(S);
    lua_createtable(S, 0, 1);
    lua_pushliteral(S, "obj-id");
    lua_pushcclosure(S, starve, 1);
    lua_setfield(S, -2, "__luamp_ref");
    lua_setmetatable(S, -2);
    lua_rawseti(S, -2, 2);
    for (int i = 0; i < 1000; i++) {   /* enough to outgrow the seen-map */
        lua_newtable(S);
        lua_rawseti(S, -2, 3 + i);
    }
    status = lua_pcall(S, 2, 0, 0);
    fail_allocs = 0;
    ok(status == LUA_ERRMEM, "a memory error during an encode propagates");
    ok(b.len == 4 && memcmp(b.data, "keep", 4) == 0, "a memory error leaves the buffer as it was");
    luamp_buf_free(&b);
    lua_close(S);
}

static int decode_in_pcall(lua_State *S)
{
    size_t n;
    const char *s = lua_tolstring(S, 1, &n);

    if (luamp_decode(S, s, n, 0) != 0)
        return lua_error(S);
    return 1;
}

/* (message) -> whether it decodes to {t, {2}, t} with t = {1} */
static int decodes_shared(lua_State *S, const luamp_buf *b)
{
    int good;

    lua_pushcfunction(S, decode_in_pcall);
    lua_pushlstring(S, b->data, b->len);
    if (lua_pcall(S, 1, 1, 0) != LUA_OK) {
        lua_pop(S, 1);
        return 0;
    }
    lua_rawgeti(S, -1, 1);
    lua_rawgeti(S, -2, 3);
    good = lua_istable(S, -1) && lua_rawequal(S, -1, -2);
    lua_pop(S, 3);
    return good;
}

/* The decoder keeps its id table between messages, marked busy while in
 * use: a memory error that leaves it marked must not break later
 * messages, at whichever allocation it strikes. */
static void test_decode_memory_error(void)
{
    lua_State *S = lua_newstate(alloc, NULL);
    luamp_buf b;
    int errmem = 0, good = 1;

    luaL_openlibs(S);
    luamp_buf_init(&b);
    ok(luaL_dostring(S, "local t = {1}; return {t, {2}, t}") == LUA_OK
       && luamp_encode(S, -1, "value", &b) == 0, "a message with a shared table encodes");
    lua_settop(S, 0);
    ok(decodes_shared(S, &b), "a message with a shared table decodes");
    for (int k = 0; k < 12; k++) {
        lua_pushcfunction(S, decode_in_pcall);
        lua_pushlstring(S, b.data, b.len);
        allocs_left = k;
        errmem += lua_pcall(S, 1, 1, 0) == LUA_ERRMEM;
        allocs_left = -1;
        lua_pop(S, 1);
        good = good && decodes_shared(S, &b) && decodes_shared(S, &b);
    }
    ok(errmem > 0, "memory errors struck decodes (%d times)", errmem);
    ok(good, "after each, messages decode with their shared tables");
    luamp_buf_free(&b);
    lua_close(S);
}

static void test_objects(void)
{
    run("OBJ = setmetatable({}, {__luamp_ref = function() return 'q-1' end})");
    ok(*refusal("OBJ", NULL) == '\0', "an object with __luamp_ref encodes");
    ok(!round_trip("OBJ"), "an object is unknown before the registry lists it");
    run("debug.getregistry()['luamp.objects'] = {['q-1'] = OBJ}");
    ok(round_trip("{OBJ, OBJ}") && lua_true("rawequal(r[1], OBJ) and rawequal(r[2], OBJ)"),
       "an object travels by its id");
    run("debug.getregistry()['luamp.objects'] = nil; OBJ = nil");
}

/* The message b holds: its data with its spans inserted, into out. */
static void flatten(const luamp_buf *b, luamp_buf *out)
{
    size_t from = 0;

    luamp_buf_reset(out);
    for (size_t i = 0; i < b->nspans; i++) {
        luamp_buf_append(out, b->data + from, b->spans[i].at - from);
        luamp_buf_append(out, b->spans[i].p, b->spans[i].n);
        from = b->spans[i].at;
    }
    luamp_buf_append(out, b->data + from, b->len - from);
}

/* Whether expr encodes, after a prefix, to the same bytes with spans as
 * without; *nspans: how many spans that took. */
static int same_with_spans(const char *expr, size_t *nspans)
{
    luamp_buf plain, spanned, flat;
    int same;

    luamp_buf_init(&plain);
    luamp_buf_init(&spanned);
    luamp_buf_init(&flat);
    spanned.span_from = 64 << 10;
    luamp_buf_append(&plain, "hd", 2);
    luamp_buf_append(&spanned, "hd", 2);
    same = encode_expr(expr, NULL, &plain) == 0 && encode_expr(expr, NULL, &spanned) == 0;
    flatten(&spanned, &flat);
    same = same && luamp_buf_size(&spanned) == plain.len && flat.len == plain.len
           && memcmp(flat.data, plain.data, plain.len) == 0;
    *nspans = spanned.nspans;
    luamp_buf_free(&plain);
    luamp_buf_free(&spanned);
    luamp_buf_free(&flat);
    return same;
}

/* Strings of span_from bytes or more stay where they are (luamp_buf). */
static void test_spans(void)
{
    size_t n = 0;
    luamp_buf b;

    run("BIG = string.rep('a', 100000); BIG2 = string.rep('\\xff', 1 << 16)");
    ok(same_with_spans("{BIG, 'small', BIG2, 42}", &n) && n == 2,
       "big strings become spans, and the message is the same bytes (%zu spans)", n);
    ok(same_with_spans("string.rep('s', 65535)", &n) && n == 0, "a string below span_from is copied");
    ok(same_with_spans("{a = BIG, b = 1, c = 2, d = 3, e = 4, f = 5, g = 6, h = 7, i = 8, j = 9,"
                       " k = 10, l = 11, m = 12, n = 13, o = 14, p = 15, q = BIG2}", &n) && n == 2,
       "spans stay in place when a map of 16 entries or more moves up behind its header");
    ok(same_with_spans("{BIG, BIG2, x = 1}", &n) && n == 2,
       "a sequence that turns out to be a map drops the spans it wrote (%zu left)", n);
    ok(same_with_spans("{BIG, setmetatable({}, {})}", &n) && n == 0,
       "a value the fast pass gives up on is copied whole by the protected pass");

    /* copy_out and read give the message the encoder meant */
    luamp_buf plain, flat;
    luamp_buf_init(&plain);
    luamp_buf_init(&flat);
    luamp_buf_init(&b);
    b.span_from = 64 << 10;
    encode_expr("{BIG, 'x', {BIG2, BIG}, 'tail'}", NULL, &plain);
    encode_expr("{BIG, 'x', {BIG2, BIG}, 'tail'}", NULL, &b);
    luamp_buf_reserve(&flat, luamp_buf_size(&b));
    luamp_buf_copy_out(&b, flat.data);
    flat.len = luamp_buf_size(&b);
    size_t spans = b.nspans;
    ok(spans == 3 && flat.len == plain.len && memcmp(flat.data, plain.data, plain.len) == 0,
       "copy_out writes the message with its %zu spans in place", spans);
    int whole = 1;
    size_t steps[] = { 1, 7, 4096, 65536 + 3, 1 << 20 };
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        luamp_buf_cursor c = { 0, 0 };
        size_t at = 0, got;
        memset(flat.data, 0, flat.len);
        while ((got = luamp_buf_read(&b, &c, flat.data + at, steps[i])) > 0)
            at += got;
        whole = whole && at == plain.len && memcmp(flat.data, plain.data, plain.len) == 0;
    }
    ok(whole, "read streams the message with its spans in place, in steps of 1 byte to 1 MiB");
    luamp_buf_free(&plain);
    luamp_buf_free(&flat);
    luamp_buf_reset(&b);

    luamp_buf_append(&b, "keep", 4);
    eval("{BIG, coroutine.create(print)}");
    ok(luamp_encode(L, -1, "item", &b) == -1 && b.len == 4 && b.nspans == 0 && b.spanlen == 0,
       "a refused message leaves no span behind");
    lua_pop(L, 2);
    luamp_buf_free(&b);
    ok(b.span_from == 64 << 10, "free keeps the buffer's span_from");
    run("BIG = nil; BIG2 = nil");
}

/* The size limit, 1 TiB, is met by a message made of spans: the same
 * string of 64 MiB - 16 bytes 16,385 times, in 64 MiB of memory. */
static void test_size_limit(void)
{
    luamp_buf b;

    luamp_buf_init(&b);
    luamp_buf_append(&b, "keep", 4);
    b.span_from = 1 << 16;
    /* bytes that are not UTF-8, so that no time goes into checking them */
    run("S = string.rep('\\xff', (64 << 20) - 16); T = {} for i = 1, (1 << 14) + 1 do T[i] = S end");
    eval("T");
    ok(luamp_encode(L, -1, "args", &b) == -1, "a message over 1 TiB is refused");
    ok(strcmp(lua_tostring(L, -1), "cannot send args: message larger than 1 TiB") == 0,
       "the size refusal names the root only");
    lua_pop(L, 2);
    ok(b.len == 4 && b.nspans == 0 && b.spanlen == 0, "a refused large message leaves the buffer as it was");
    run("T[#T] = nil");
    eval("T");
    ok(luamp_encode(L, -1, "args", &b) == 0 && luamp_buf_size(&b) > ((size_t)1 << 40) - (1 << 20),
       "one string less, just under 1 TiB, passes (in spans)");
    lua_pop(L, 1);
    run("S = nil; T = nil; collectgarbage()");
    luamp_buf_free(&b);
}

/* ---- fuzzing ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Decodes in protected mode: memory errors from absurd bytecode sizes
 * are allowed to raise. */
static int pdecode_call(lua_State *S)
{
    size_t n;
    const char *s = lua_tolstring(S, 1, &n);
    int r = luamp_decode(S, s, n, (int)lua_tointeger(S, 2));

    if (lua_gettop(S) != 3)
        r = -3;   /* one value or one message must have been pushed */
    lua_pushinteger(S, r);
    return 2;
}

/* -2 raised, -1 refused, 0 decoded; -3 when the stack was left wrong. */
static int pdecode(const char *s, size_t n, int flags)
{
    int top = lua_gettop(L), r;

    lua_pushcfunction(L, pdecode_call);
    lua_pushlstring(L, s, n);
    lua_pushinteger(L, flags);
    if (lua_pcall(L, 2, 2, 0) != LUA_OK) {
        lua_settop(L, top);
        return -2;
    }
    r = (int)lua_tointeger(L, -1);
    lua_settop(L, top);
    return r;
}

static const char *const corpus[] = {
    "nil", "true", "0", "-1", "1.5", "0/0", "math.mininteger", "'text'", "'\\0\\255'",
    "{}", "{1, 2, 3}", "{a = 1, b = {c = {d = {}}}}",
    "{[{}] = {}, [1.5] = true, [false] = 'f'}",
    "(function() local t = {}; t.t = t; return {t, t, x = t} end)()",
    "setmetatable({x = 1}, {__index = string})",
    "(function() local t = {}; return setmetatable(t, t) end)()",
    "{math.sqrt, string, _G, print}",
    "(function() local k = {1}; return {function() return k end, k} end)()",
    "(function() local n = 0; return {function() n = n + 1 end, function() return n end} end)()",
    "(function() local function f(n) return n > 0 and f(n - 1) or 0 end; return f end)()",
};
#define CORPUS_SIZE (sizeof corpus / sizeof corpus[0])

/* Whether a message holds bytecode (Lua's chunk signature). */
static int has_bytecode(const luamp_buf *b)
{
    return contains(b, "\x1bLua", 4);
}

static void fuzz_truncations(void)
{
    int unbalanced = 0, accepted = 0, whole = 0;
    luamp_buf b;

    luamp_buf_init(&b);
    for (size_t i = 0; i < CORPUS_SIZE; i++) {
        b.len = 0;
        if (encode_expr(corpus[i], NULL, &b) != 0)
            continue;   /* counted as not decoding whole */
        whole += pdecode(b.data, b.len, 0) == 0;
        for (size_t n = 0; n < b.len; n++) {
            int r = pdecode(b.data, n, 0);
            unbalanced += r == -3;
            accepted += r == 0;
        }
    }
    ok(whole == (int)CORPUS_SIZE, "every corpus message decodes whole (%d of %d)", whole, (int)CORPUS_SIZE);
    ok(accepted == 0 && unbalanced == 0, "every truncated prefix is refused (%d accepted, %d unbalanced)",
       accepted, unbalanced);
    luamp_buf_free(&b);
}

static void fuzz_random(void)
{
    char s[64];
    int unbalanced = 0, decoded = 0;

    for (int i = 0; i < 4000; i++) {
        size_t n = next_random() % sizeof s;
        int r;
        for (size_t k = 0; k < n; k++)
            s[k] = (char)next_random();
        r = pdecode(s, n, 0);
        unbalanced += r == -3;
        decoded += r == 0;
    }
    ok(unbalanced == 0, "4000 random byte strings are decoded or refused (%d decoded)", decoded);
}

static void fuzz_mutations(void)
{
    luamp_buf b;
    int unbalanced = 0, runs = 0;

    luamp_buf_init(&b);
    for (size_t i = 0; i < CORPUS_SIZE; i++) {
        int flags;
        b.len = 0;
        encode_expr(corpus[i], NULL, &b);
        /* Corrupt bytecode may be absurd (lua_load trusts it): functions
         * are fuzzed only as untrusted input, the way they'd arrive. */
        flags = has_bytecode(&b) ? LUAMP_DECODE_NO_CODE : 0;
        for (int j = 0; j < 200; j++) {
            char *m = malloc(b.len + 1);
            memcpy(m, b.data, b.len);
            for (int k = 0; k < 1 + (int)(next_random() % 3); k++)
                m[next_random() % b.len] = (char)next_random();
            unbalanced += pdecode(m, b.len, flags) == -3;
            runs++;
            free(m);
        }
    }
    ok(unbalanced == 0, "%d mutated messages are decoded or refused", runs);
    luamp_buf_free(&b);
}

/* ---- inputs the fuzzer once crashed on ---- */

/* The state of fuzz/fuzz_decode.c (fuzz/sandbox.h, shared), so that its
 * inputs replay as they ran there, with its luamp objects. */
static const char fuzz_sandbox[] =
    FUZZ_SANDBOX
    "debug.getregistry()['luamp.objects'] = {['queue:1:1'] = {}, ['lock:1:2'] = io.stdout}\n";

/* (bytes) -> 0 decoded, re-encoded and decoded again; -1 refused at some
 * step; -3 a step left the stack other than codec.h says. */
static int replay_one(lua_State *S)
{
    size_t n;
    const char *s = lua_tolstring(S, 1, &n);
    luamp_buf b;
    int r;

    if ((r = luamp_decode(S, s, n, LUAMP_DECODE_NO_CODE)) != 0) {
        lua_pushinteger(S, lua_gettop(S) == 2 && r == -1 && lua_isstring(S, 2) ? -1 : -3);
        return 1;
    }
    if (lua_gettop(S) != 2) {
        lua_pushinteger(S, -3);
        return 1;
    }
    luamp_buf_init(&b);
    r = luamp_encode(S, 2, "value", &b);
    if (r == 0 && lua_gettop(S) == 2)
        r = luamp_decode(S, b.data, b.len, LUAMP_DECODE_NO_CODE) == 0 ? 0 : -1;
    else if (r != -1 || lua_gettop(S) != 3)
        r = -3;
    luamp_buf_free(&b);
    lua_pushinteger(S, r);
    return 1;
}

/* Reads a whole file into a malloc'd buffer; NULL if it cannot. */
static char *read_file(const char *path, size_t *n)
{
    struct stat st;
    FILE *f;
    char *buf;

    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return NULL;
    buf = malloc((size_t)st.st_size + 1);
    f = fopen(path, "rb");
    if (buf == NULL || f == NULL || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        free(buf);
        buf = NULL;
    }
    if (f != NULL)
        fclose(f);
    *n = (size_t)st.st_size;
    return buf;
}

/* Every file in $FUZZ_REGRESSIONS (the source tree's fuzz/regressions/,
 * inputs that made fuzz/run fail once) is decoded as untrusted, and what
 * decodes is encoded and decoded again, each step ending in a value or a
 * refusal: no crash, no error raised, the stack as codec.h says. */
static void test_fuzz_regressions(void)
{
    const char *dir = getenv("FUZZ_REGRESSIONS");
    DIR *d = dir != NULL && *dir != '\0' ? opendir(dir) : NULL;
    struct dirent *ent;
    int files = 0, bad = 0;

    if (d == NULL) {
        ok(1, "fuzzer regressions # SKIP FUZZ_REGRESSIONS names no directory");
        return;
    }
    while ((ent = readdir(d)) != NULL) {
        char path[4096];
        size_t n;
        char *buf;
        lua_State *S;
        int r = -2;

        if (ent->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        buf = read_file(path, &n);
        if (buf == NULL) {
            struct stat st;
            if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
                continue;    /* fuzz/regressions/roundtrip/: programs, replayed by fuzz/run */
            diag("cannot read %s", path);
            bad++;
            files++;
            continue;
        }
        files++;
        S = luaL_newstate();
        luaL_openlibs(S);
        if (luaL_dostring(S, fuzz_sandbox) != LUA_OK) {
            fprintf(stderr, "test_codec: sandbox: %s\n", lua_tostring(S, -1));
            exit(2);
        }
        lua_pushcfunction(S, replay_one);
        lua_pushlstring(S, buf, n);
        if (lua_pcall(S, 1, 1, 0) == LUA_OK)
            r = (int)lua_tointeger(S, -1);
        if (r != 0 && r != -1) {
            diag("%s: %s", path, r == -2 ? "an error was raised" : "the stack was left wrong");
            bad++;
        }
        lua_close(S);   /* and the finalizers of what was decoded run */
        free(buf);
    }
    closedir(d);
    ok(bad == 0, "%d fuzzer regression inputs are decoded or refused cleanly (%d not)", files, bad);
}

static void test_bindings(void)
{
    lua_register(L, "encode", luamp_l_encode);
    lua_register(L, "decode", luamp_l_decode);
    ok(lua_true("(function() local s, e = encode({co = coroutine.create(print)}, 'x') "
                "return s == nil and e == 'cannot send x.co: a coroutine' end)()"),
       "encode returns nil and a message on refusal");
    ok(lua_true("decode(encode({1, 'a', {b = 2.5}}))[3].b == 2.5"), "encode and decode round trip");
    ok(lua_true("select(2, pcall(decode, '\\xc1')) == 'invalid byte 0xc1 in message'"),
       "decode raises its message");
    ok(lua_true("(function() local big = string.rep('y', 2 << 20) "
                "return decode(encode(big)) == big and decode(encode(1)) == 1 end)()"),
       "the binding's buffer is reused after a large message");
}

#ifdef HAVE_MSGPACK
/*
 * The encoder writes MessagePack itself (a write callback per value was
 * most of its cost); msgpack-c's packer is the reference it must match
 * byte for byte, format by format, at every size boundary.
 */
typedef void (*pack_fn)(msgpack_packer *pk, long long n);

static void pack_int(msgpack_packer *pk, long long n) { msgpack_pack_int64(pk, n); }

static void pack_str(msgpack_packer *pk, long long n)
{
    msgpack_pack_str(pk, (size_t)n);
    for (long long i = 0; i < n; i++)
        msgpack_pack_str_body(pk, "a", 1);
}

static void pack_bin(msgpack_packer *pk, long long n)
{
    msgpack_pack_bin(pk, (size_t)n);
    for (long long i = 0; i < n; i++)
        msgpack_pack_bin_body(pk, "\xff", 1);
}

static void pack_array(msgpack_packer *pk, long long n)
{
    msgpack_pack_array(pk, (size_t)n);
    for (long long i = 0; i < n; i++)
        msgpack_pack_int64(pk, i % 300);
}

static void pack_map(msgpack_packer *pk, long long n)
{
    (void)n;
    msgpack_pack_map(pk, 1);
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "key", 3);
    msgpack_pack_double(pk, 0.5);
}

/* Whether luamp encodes the Lua expression (with %lld for n) exactly as
 * msgpack-c packs it with `pack`. */
static int same_as_msgpack_c(const char *fmt, pack_fn pack, long long n)
{
    char expr[256];
    luamp_buf b;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int same;

    snprintf(expr, sizeof expr, fmt, n);
    luamp_buf_init(&b);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack(&pk, n);
    same = encode_expr(expr, NULL, &b) == 0 && b.len == sb.size && memcmp(b.data, sb.data, sb.size) == 0;
    if (!same)
        diag("%s: luamp %zu bytes, msgpack-c %zu", expr, b.len, sb.size);
    msgpack_sbuffer_destroy(&sb);
    luamp_buf_free(&b);
    return same;
}

static void test_msgpack_c_oracle(void)
{
    static const long long ints[] = {
        0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295LL, 4294967296LL, LLONG_MAX,
        -1, -32, -33, -128, -129, -32768, -32769, -2147483648LL, -2147483649LL, LLONG_MIN
    };
    static const long long sizes[] = { 0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536 };
    int all = 1;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        all &= same_as_msgpack_c(ints[i] == LLONG_MIN ? "math.mininteger" : "%lld", pack_int, ints[i]);
    ok(all, "integers at every format boundary encode as msgpack-c packs them");
    all = 1;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        all &= same_as_msgpack_c("string.rep('a', %lld)", pack_str, sizes[i]);
    ok(all, "text of every header size encodes as msgpack-c packs a str");
    all = 1;   /* (from 1: the empty string is text, and {} a map) */
    for (size_t i = 1; i < sizeof sizes / sizeof sizes[0]; i++)
        all &= same_as_msgpack_c("string.rep('\\xff', %lld)", pack_bin, sizes[i]);
    ok(all, "bytes of every header size encode as msgpack-c packs a bin");
    all = 1;
    for (size_t i = 1; i < sizeof sizes / sizeof sizes[0]; i++)
        all &= same_as_msgpack_c("(function(n) local t = {} for i = 1, n do t[i] = (i - 1) %% 300 end "
                                 "return t end)(%lld)", pack_array, sizes[i]);
    ok(all, "arrays of every header size encode as msgpack-c packs them");
    ok(same_as_msgpack_c("{key = 0.5} --%lld", pack_map, 0), "a record encodes as msgpack-c packs a map");
}
#else
static void test_msgpack_c_oracle(void)
{
    skip("the encoder writes what msgpack-c's packer writes", "msgpack-c was not found by configure");
}
#endif

/* luamp_encode_slice and luamp_decode_into, as a Pool's map uses them. */
static void test_slices(void)
{
    luamp_buf a, b;
    luamp_buf_init(&a);
    luamp_buf_init(&b);

    eval("{10, 20, 30, 40}");
    ok(luamp_encode_slice(L, -1, 2, 2, "items", &a) == 0, "a slice encodes");
    lua_pop(L, 1);
    ok(encode_expr("{20, 30}", NULL, &b) == 0 && a.len == b.len && memcmp(a.data, b.data, a.len) == 0,
       "a slice encodes exactly as a table holding just those values");

    /* shared tables inside a slice keep their identity: ids count the
     * slice's own (never made) array */
    a.len = 0;
    eval("(function() local s = {} return {1, s, s, {s}} end)()");
    ok(luamp_encode_slice(L, -1, 2, 3, "items", &a) == 0, "a slice with shared tables encodes");
    lua_pop(L, 1);
    ok(luamp_decode(L, a.data, a.len, 0) == 0, "and decodes");
    lua_setglobal(L, "sliced");
    ok(lua_true("sliced[1] == sliced[2] and sliced[3][1] == sliced[1] and #sliced == 3"),
       "shared tables in a slice come back as one table");

    eval("{1, 2, io.stdout, 4}");
    ok(luamp_encode_slice(L, -1, 2, 3, "items", &a) == -1
       && strcmp(lua_tostring(L, -1), "cannot send items[3]: a userdata") == 0,
       "a refusal in a slice names the value by its index in the whole table (%s)", lua_tostring(L, -1));
    lua_pop(L, 2);

    /* decode_into: an array goes to offset + 1 ..., holes stay holes */
    a.len = 0;
    ok(encode_expr("{'x', nil, 'z'}", NULL, &a) == 0, "a table with a hole encodes");
    run("into = {n = 9}");
    lua_getglobal(L, "into");
    ok(luamp_decode_into(L, a.data, a.len, 0, -1, 10) == 0, "decode_into succeeds");
    lua_pop(L, 1);
    ok(lua_true("into[11] == 'x' and into[12] == nil and into[13] == 'z' and into.n == 9 and into[1] == nil"),
       "decode_into puts the values at offset + index and leaves the rest alone");
    a.len = 0;
    ok(encode_expr("{5, 6, 7}", NULL, &a) == 0, "an array encodes");
    lua_getglobal(L, "into");
    int top = lua_gettop(L);
    ok(luamp_decode_into(L, a.data, a.len, 0, -1, 0) == 0 && lua_gettop(L) == top,
       "decode_into of an array pushes nothing");
    lua_pop(L, 1);
    ok(lua_true("into[1] == 5 and into[3] == 7 and into[11] == 'x'"), "a plain array goes in at its offset");
    a.len = 0;
    ok(encode_expr("(function() local s = {} return {s, s} end)()", NULL, &a) == 0, "shared values encode");
    lua_getglobal(L, "into");
    ok(luamp_decode_into(L, a.data, a.len, 0, -1, 100) == 0, "decode_into takes shared values");
    lua_pop(L, 1);
    ok(lua_true("type(into[101]) == 'table' and into[101] == into[102]"),
       "shared values decoded into a table stay one table");
    lua_getglobal(L, "into");
    ok(luamp_decode_into(L, "\x05", 1, 0, -1, 0) == -1 && strcmp(lua_tostring(L, -1), "a table was expected") == 0,
       "decode_into refuses a message that is not a table");
    lua_pop(L, 2);
    luamp_buf_free(&a);
    luamp_buf_free(&b);
}

int main(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    test_buffers();
    test_wire();
    test_msgpack_c_oracle();
    test_slices();
    test_refusals();
    test_depth();
    test_decode_errors();
    test_upvalue_errors();
    test_round_trips();
    test_memory_error();
    test_decode_memory_error();
    test_objects();
    test_spans();
    test_size_limit();
    fuzz_truncations();
    fuzz_random();
    fuzz_mutations();
    test_fuzz_regressions();
    test_bindings();
    lua_close(L);
    return done_testing();
}
