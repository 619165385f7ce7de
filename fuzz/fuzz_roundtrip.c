/* SPDX-License-Identifier: MIT */
/*
 * fuzz_roundtrip.c - libFuzzer target: Lua values -> luamp_encode ->
 * luamp_decode -> the same values.
 *
 * The input is a little program that builds Lua values on a stack:
 * scalars (edge-case integers, floats bit for bit, strings valid UTF-8 or
 * not), tables filled from other stack items (so with shared parts,
 * cycles and tables as keys), metatables, named values (modules, C
 * functions, module tables), luamp objects, and Lua functions from a few
 * factories: upvalues, recursion, shared upvalues, upvalues joined at
 * random, bytecode over 255 and 65535 bytes; and values that cannot be
 * sent (a coroutine, a light userdata, a C function in no module).  What
 * it built, the whole stack as one array, is then checked:
 *
 *  - it encodes, or is refused only for nesting deeper than 200 levels or
 *    for a value that cannot be sent, leaving the buffer as it was;
 *  - the message decodes, trusted, to the same value up to identity
 *    (fuzz_common.h), functions included: same bytecode and debug
 *    information, same upvalues shared alike;
 *  - when no table's order of entries can differ, the copy encodes to
 *    exactly the same bytes;
 *  - decoded as untrusted (LUAMP_DECODE_NO_CODE), it is refused for
 *    "refusing a function from an untrusted source" or is the same
 *    value too.
 *
 * If the first byte is odd, one allocation of Lua's fails during the
 * first encode and decode (bytes 2 and 3 tell which): the codec must
 * raise or refuse cleanly, leave the buffer as it was, and the state
 * must then do the checks above as if nothing happened.
 */
#include <math.h>

#include "fuzz_common.h"

static lua_State *L;
static luamp_buf e1, e2;
static unsigned long runs;
static int verbose;   /* FUZZ_VERBOSE=1: print each message built */

#define MAX_ITEMS 48

typedef struct reader {
    const uint8_t *p, *end;
} reader;

static unsigned byte(reader *r)
{
    return r->p < r->end ? *r->p++ : 0;
}

static uint64_t bytes(reader *r, int n)
{
    uint64_t v = 0;

    for (int i = 0; i < n; i++)
        v = (v << 8) | byte(r);
    return v;
}

/* ---- what the programs can use ---- */

static const lua_Integer ints[] = {
    0, 1, -1, 31, 32, 127, 128, 255, 256, 65535, 65536, 0x7fffffff, 0x80000000LL,
    0xffffffffLL, 0x100000000LL, -32, -33, -128, -129, -32768, -32769,
    -2147483648LL, -2147483649LL, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1
};

static const double floats[] = {
    0.0, -0.0, 1.0, -1.5, 0.5, 1e308, 5e-324, 2251799813685248.5, 9007199254740992.0,
    9223372036854775808.0, -9223372036854775808.0, 18446744073709551616.0,
    HUGE_VAL, -HUGE_VAL, NAN, -NAN
};

#define S(lit) { lit, sizeof(lit) - 1 }
static const struct { const char *s; size_t n; } strings[] = {
    S(""), S("a"), S("x"), S("self"), S("__index"), S("__name"), S("n"), S("1"), S("é"),
    S("€"), S("😀"), S("a\0b"), S("0123456789012345678901234567890"),
    S("01234567890123456789012345678901"),
    /* not UTF-8: a lone byte, overlong forms, a surrogate, past U+10FFFF, cut short */
    S("\xff"), S("\xc0\x80"), S("\xe0\x80\x80"), S("\xed\xa0\x80"), S("\xf4\x90\x80\x80"),
    S("\xf0\x9f\x98")
};

/* Resolved at start: things a message names. */
static const char *const names[] = {
    "string", "math", "_G", "table", "package", "utf8", "math.sqrt", "string.format",
    "table.insert", "_G.type", "_G.pairs", "package.loaded", "package.searchers",
    "utf8.char", "os.time", "coroutine.wrap", "_G.require", "fz.cmod", NULL
};

/* Lua function factories: (x) -> one or two closures over x. */
static const char *const factories[] = {
    "return function(x) return function() return x end end",
    "return function(x) local function f() return f, x end return f end",
    "return function(x) local function g() x = x end local function h() return x end return g, h end",
    /* _ENV as an upvalue, a fresh one: setupvalue must not reach the
     * factory's own, which later inputs share */
    "return function(x) local _ENV = _G return function() return type, x end end",
    "return function() return function() return 42 end end",
    "return function(x) local a, b = x, {x} return function() return a, b, x end end",
    "return function(x) local n = 0 return function() n = n + 1 return n end, "
    "function() return n, x end end",
    NULL,   /* the big ones, made at start */
    NULL,
    NULL
};
#define NFACTORIES (sizeof factories / sizeof factories[0])
#define BIG_FACTORY ((int)NFACTORIES - 2)

static int factory_ref[NFACTORIES];
static int names_ref, objects_ref, thread_ref;
static int nnames;

static void make_factory(int i, const char *src, const char *chunkname)
{
    if (luaL_loadbuffer(L, src, strlen(src), chunkname) != LUA_OK
        || lua_pcall(L, 0, 1, 0) != LUA_OK)
        fz_die("factory %d: %s", i, lua_tostring(L, -1));
    factory_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* A function of n constants: bytecode of about 10 n bytes. */
static void make_big_factory(int i, int n)
{
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    luaL_addstring(&b, "return function(x) return function() return {");
    for (int k = 0; k < n; k++) {
        char item[32];
        snprintf(item, sizeof item, "%d.5,", k);
        luaL_addstring(&b, item);
    }
    luaL_addstring(&b, "}, x end end");
    luaL_pushresult(&b);
    make_factory(i, lua_tostring(L, -1), "=big");
    lua_pop(L, 1);
}

static void setup(void)
{
    L = fz_new_state();
    luamp_buf_init(&e1);
    luamp_buf_init(&e2);
    for (int i = 0; factories[i] != NULL; i++)
        make_factory(i, factories[i], "=fuzz_roundtrip");
    make_big_factory(BIG_FACTORY - 1, 30);     /* bytecode > 255 bytes */
    make_big_factory(BIG_FACTORY, 7000);       /* bytecode > 65535 bytes */
    make_factory(NFACTORIES - 1, "return function(x) return string.dump end", "=fuzz_roundtrip");
    /* names -> values, resolved the way the decoder does */
    lua_newtable(L);
    for (nnames = 0; names[nnames] != NULL; nnames++) {
        luamp_buf b;
        char msg[64];
        luamp_buf_init(&b);
        snprintf(msg, sizeof msg, "\xc7%c\x02%s", (int)strlen(names[nnames]), names[nnames]);
        if (luamp_decode(L, msg, strlen(names[nnames]) + 3, 0) != 0)
            fz_die("name %s: %s", names[nnames], lua_tostring(L, -1));
        lua_rawseti(L, -2, nnames + 1);
    }
    names_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, LUA_REGISTRYINDEX, "luamp.objects");
    objects_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newthread(L);
    thread_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- the builder ---- */

typedef struct builder {
    reader in;
    int base;    /* stack slot below the first item */
    int built;   /* stack slot: set of the tables and functions built */
    int big;     /* 64 KiB strings or functions made: one is enough, as
                  * copies of strings multiply in the message */
    int unsendable;   /* a value the encoder must refuse was made */
} builder;

static int nitems(builder *b)
{
    return lua_gettop(L) - b->base;
}

/* The stack slot of the item a byte names (0 when there are none). */
static int item(builder *b)
{
    int n = nitems(b);

    return n == 0 ? 0 : b->base + 1 + (int)(byte(&b->in) % (unsigned)n);
}

/* Whether the value at i was built by this program (and so may be
 * changed: modules and objects must stay as they are). */
static int is_built(builder *b, int i)
{
    int r;

    lua_pushvalue(L, i);
    r = lua_rawget(L, b->built) != LUA_TNIL;
    lua_pop(L, 1);
    return r;
}

static void mark_built(builder *b)
{
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, b->built);
}

static int is_lua_function(int i)
{
    return lua_type(L, i) == LUA_TFUNCTION && !lua_iscfunction(L, i);
}

/* A table key the encoder would choke on or that would turn tables
 * into luamp objects. */
static int bad_key(int k)
{
    if (lua_isnil(L, k))
        return 1;
    if (lua_type(L, k) == LUA_TNUMBER && isnan(lua_tonumber(L, k)))
        return 1;
    return lua_type(L, k) == LUA_TSTRING && strcmp(lua_tostring(L, k), "__luamp_ref") == 0;
}

static void push_string(builder *b)
{
    char s[40];
    unsigned n = byte(&b->in), i;

    if (n >= 250) {   /* str8/str16 and bin8/bin16 boundaries: one byte repeated */
        n = n == 250 ? 255 : n == 251 ? 256 : n == 252 ? 65535 : 65536;
        if (n > 256 && b->big++ > 0)
            n = 256;
    } else {
        n %= 40;
    }
    if (n >= 255) {
        char c = (char)byte(&b->in);
        luaL_Buffer lb;
        luaL_buffinit(L, &lb);
        for (i = 0; i < n; i++)
            luaL_addchar(&lb, c);
        luaL_pushresult(&lb);
        return;
    }
    for (i = 0; i < n && b->in.p < b->in.end; i++)
        s[i] = (char)byte(&b->in);
    lua_pushlstring(L, s, i);
}

static void step(builder *b)
{
    unsigned op = byte(&b->in) % 23;
    int t, k, f, g;

    if (nitems(b) >= MAX_ITEMS && (op < 16 || op == 22))
        op = 18;   /* full: pop instead of pushing */
    switch (op) {
    case 0:
        lua_pushnil(L);
        break;
    case 1:
        lua_pushboolean(L, byte(&b->in) & 1);
        break;
    case 2:
        lua_pushinteger(L, (int8_t)byte(&b->in));
        break;
    case 3:
        lua_pushinteger(L, (lua_Integer)bytes(&b->in, 8));
        break;
    case 4:
        lua_pushinteger(L, ints[byte(&b->in) % (sizeof ints / sizeof ints[0])]);
        break;
    case 5: {
        uint64_t bits = bytes(&b->in, 8);
        double d;
        memcpy(&d, &bits, sizeof d);
        lua_pushnumber(L, d);
        break;
    }
    case 6:
        lua_pushnumber(L, floats[byte(&b->in) % (sizeof floats / sizeof floats[0])]);
        break;
    case 7:
        push_string(b);
        break;
    case 8: {
        unsigned i = byte(&b->in) % (sizeof strings / sizeof strings[0]);
        lua_pushlstring(L, strings[i].s, strings[i].n);
        break;
    }
    case 9: {
        unsigned sz = byte(&b->in);
        lua_createtable(L, (int)(sz & 7), (int)((sz >> 3) & 7));
        mark_built(b);
        break;
    }
    case 10:   /* t[k] = v, with k and v the top two */
        t = item(b);
        if (nitems(b) >= 3 && lua_istable(L, t) && is_built(b, t) && t < lua_gettop(L) - 1
            && !bad_key(lua_gettop(L) - 1)) {
            lua_rawset(L, t);
        }
        break;
    case 11:   /* t[#t + 1] = v */
        t = item(b);
        if (nitems(b) >= 2 && lua_istable(L, t) && is_built(b, t) && t < lua_gettop(L)) {
            lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1);
        }
        break;
    case 12:   /* setmetatable(t, top) */
        t = item(b);
        if (nitems(b) >= 2 && lua_istable(L, t) && is_built(b, t) && t < lua_gettop(L)
            && lua_istable(L, -1)) {
            lua_pushliteral(L, "__luamp_ref");
            k = lua_rawget(L, -2);
            lua_pop(L, 1);
            if (k == LUA_TNIL)
                lua_setmetatable(L, t);
        }
        break;
    case 13:   /* a copy of an item: sharing, and cycles once stored */
        if ((t = item(b)) != 0 && !(lua_type(L, t) == LUA_TSTRING && lua_rawlen(L, t) > 256))
            lua_pushvalue(L, t);   /* (not big strings: copies go into the message) */
        break;
    case 14:
        lua_rawgeti(L, LUA_REGISTRYINDEX, names_ref);
        lua_rawgeti(L, -1, 1 + (lua_Integer)(byte(&b->in) % (unsigned)nnames));
        lua_remove(L, -2);
        break;
    case 15:
        lua_rawgeti(L, LUA_REGISTRYINDEX, objects_ref);
        lua_getfield(L, -1, byte(&b->in) & 1 ? FZ_OBJ_TABLE : FZ_OBJ_UDATA);
        lua_remove(L, -2);
        break;
    case 16: {   /* closures over the top item (popped) */
        int had = nitems(b), below, n, which = (int)(byte(&b->in) % NFACTORIES);
        if (which == BIG_FACTORY && b->big++ > 0)
            which = BIG_FACTORY - 1;
        lua_rawgeti(L, LUA_REGISTRYINDEX, factory_ref[which]);
        if (had > 0)
            lua_rotate(L, -2, 1);   /* factory, x */
        else
            lua_pushnil(L);
        below = lua_gettop(L) - 2;
        lua_call(L, 1, LUA_MULTRET);
        n = lua_gettop(L) - below;
        for (int i = 0; i < n; i++) {
            lua_pushvalue(L, -1 - i);
            lua_pushboolean(L, 1);
            lua_rawset(L, b->built);
        }
        break;
    }
    case 17:   /* upvalue i of f becomes upvalue j of g */
        f = item(b);
        g = item(b);
        if (f && g && is_lua_function(f) && is_lua_function(g)) {
            int i = 1 + (int)(byte(&b->in) % 4), j = 1 + (int)(byte(&b->in) % 4);
            if (lua_getupvalue(L, f, i) != NULL) {
                lua_pop(L, 1);
                if (lua_getupvalue(L, g, j) != NULL) {
                    lua_pop(L, 1);
                    lua_upvaluejoin(L, f, i, g, j);
                }
            }
        }
        break;
    case 18:
        if (nitems(b) > 0)
            lua_pop(L, 1);
        break;
    case 19:   /* upvalue i of f = top */
        f = item(b);
        if (nitems(b) >= 2 && f && f < lua_gettop(L) && is_lua_function(f)) {
            if (lua_setupvalue(L, f, 1 + (int)(byte(&b->in) % 4)) == NULL)
                lua_pop(L, 1);
        }
        break;
    case 20: {   /* the top n items into one new array, which replaces them */
        int n = (int)(byte(&b->in) % 8), have = nitems(b);
        if (n > have)
            n = have;
        lua_createtable(L, n, 0);
        mark_built(b);
        for (int i = 1; i <= n; i++) {   /* item i is at -(n + 2 - i) */
            lua_pushvalue(L, -(n + 2 - i));
            lua_rawseti(L, -2, i);
        }
        if (n > 0) {
            lua_replace(L, -(n + 1));
            lua_pop(L, n - 1);
        }
        break;
    }
    case 21:   /* swap the top two */
        if (nitems(b) >= 2)
            lua_rotate(L, -2, 1);
        break;
    default:   /* what cannot be sent, so that refusals build their paths */
        switch (byte(&b->in) % 3) {
        case 0:
            lua_rawgeti(L, LUA_REGISTRYINDEX, thread_ref);
            break;
        case 1:
            lua_pushlightuserdata(L, &runs);
            break;
        default:
            lua_pushcfunction(L, fz_objref);   /* in no module */
            break;
        }
        b->unsendable = 1;
        break;
    }
}

/* ---- the checks ---- */

/* Protected: (builder) -> the value built, as an array of the stack. */
static int build(lua_State *S)
{
    builder *b = lua_touserdata(S, 1);
    int n;

    lua_newtable(L);
    b->built = lua_gettop(L);
    b->base = b->built;
    while (b->in.p < b->in.end) {
        luaL_checkstack(L, 16, "builder");
        step(b);
    }
    n = nitems(b);
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, b->base + i);
        lua_rawseti(L, -2, i);
    }
    return 1;
}

static int p_encode(lua_State *S)
{
    int r = luamp_encode(S, 1, "value", lua_touserdata(S, 2));

    lua_pushinteger(S, r);
    return 1;
}

static int p_decode(lua_State *S)
{
    const luamp_buf *b = lua_touserdata(S, 1);
    int r = luamp_decode(S, b->data, b->len, (int)lua_tointeger(S, 2));

    if (lua_gettop(S) != 3 || (r != 0 && lua_type(S, -1) != LUA_TSTRING))
        fz_die("luamp_decode broke its contract while memory ran out");
    lua_pushinteger(S, r);
    return 1;
}

/* Encode and decode with one allocation failing somewhere. */
static void starved(int v, long after)
{
    int top = lua_gettop(L), status;

    e1.len = 0;
    fz_fail_after = after;
    fz_failed = 0;
    lua_pushcfunction(L, p_encode);
    lua_pushvalue(L, v);
    lua_pushlightuserdata(L, &e1);
    status = lua_pcall(L, 2, 1, 0);
    if (status != LUA_OK || lua_tointeger(L, -1) != 0) {
        if (e1.len != 0)
            fz_die("a failed encode left %zu bytes in the buffer", e1.len);
    } else {
        lua_pushcfunction(L, p_decode);
        lua_pushlightuserdata(L, &e1);
        lua_pushinteger(L, 0);
        lua_pcall(L, 2, 1, 0);
    }
    if (verbose)
        fprintf(stderr, "fuzz_roundtrip: allocation %ld %s\n", after,
                fz_failed ? "failed" : "was not reached");
    fz_fail_after = -1;
    lua_settop(L, top);
}

static int one_input(lua_State *S)
{
    const uint8_t *data = lua_touserdata(S, 1);
    size_t size = (size_t)lua_tointeger(S, 2);
    builder b;
    int v, v2, r, starve = size > 0 && (data[0] & 1);
    long after = 0;
    fz_same same;

    b.big = 0;
    b.unsendable = 0;
    b.in.p = data + (size > 0);
    b.in.end = data + size;
    if (starve)
        after = (long)bytes(&b.in, 2);
    lua_pushcfunction(L, build);
    lua_pushlightuserdata(L, &b);
    lua_call(L, 1, 1);
    v = lua_gettop(L);

    if (starve)
        starved(v, after);

    e1.len = 0;
    r = luamp_encode(L, v, "value", &e1);
    if (r != 0) {
        const char *msg = lua_tostring(L, -1);
        if (verbose)
            fprintf(stderr, "fuzz_roundtrip: refused: %s\n", msg);
        if (e1.len != 0 || !fz_starts(msg, "cannot send value"))
            fz_die("a refusal broke the contract: %zu bytes left, message: %s", e1.len, msg);
        if (strstr(msg, ": nesting deeper than 200 levels") != NULL)
            return 0;
        if (b.unsendable && (strstr(msg, ": a coroutine") != NULL
                             || strstr(msg, ": a light userdata") != NULL
                             || strstr(msg, ": a C function that is not in package.loaded") != NULL))
            return 0;
        fz_die("a value the fuzzer built cannot be encoded: %s", msg);
    }
    if (verbose) {
        fprintf(stderr, "fuzz_roundtrip: %zu bytes:", e1.len);
        for (size_t i = 0; i < e1.len && i < 400; i++)
            fprintf(stderr, " %02x", (unsigned char)e1.data[i]);
        fprintf(stderr, e1.len > 400 ? " ...\n" : "\n");
    }
    if (luamp_decode(L, e1.data, e1.len, 0) != 0)
        fz_die("an encoded value does not decode: %s", lua_tostring(L, -1));
    v2 = lua_gettop(L);
    if (!fz_same_values(L, v, v2, &same))
        fz_die("the round trip changed the value: %s", same.why);
    e2.len = 0;
    if (luamp_encode(L, v2, "value", &e2) != 0) {
        if (strstr(lua_tostring(L, -1), ": nesting deeper than 200 levels") != NULL)
            return 0;
        fz_die("the copy cannot be encoded: %s", lua_tostring(L, -1));
    }
    if (!same.order_free && !same.gave_up
        && (e1.len != e2.len || memcmp(e1.data, e2.data, e1.len) != 0))
        fz_die("the copy encodes to other bytes (%zu and %zu bytes)", e1.len, e2.len);

    /* untrusted: refused for its functions, or the same value */
    if (luamp_decode(L, e1.data, e1.len, LUAMP_DECODE_NO_CODE) != 0) {
        if (strcmp(lua_tostring(L, -1), "refusing a function from an untrusted source") != 0)
            fz_die("decoded as untrusted, refused for: %s", lua_tostring(L, -1));
    } else if (!fz_same_values(L, v, -1, &same)) {
        fz_die("decoded as untrusted, the value changed: %s", same.why);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int status;

    if (L == NULL) {
        setup();
        verbose = getenv("FUZZ_VERBOSE") != NULL;
    }
    lua_settop(L, 0);
    /* No collection while values are built and compared: a metatable
     * may make a table weak. */
    lua_gc(L, LUA_GCSTOP);
    lua_pushcfunction(L, one_input);
    lua_pushlightuserdata(L, (void *)data);
    lua_pushinteger(L, (lua_Integer)size);
    status = lua_pcall(L, 2, 0, 0);
    if (status != LUA_OK)
        fz_die("an error was raised (status %d): %s", status,
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)");
    lua_settop(L, 0);
    fz_reset(L);
    lua_gc(L, LUA_GCRESTART);
    if (++runs % 16 == 0)
        lua_gc(L, LUA_GCSTEP, 0);
    if (runs % 1024 == 0)
        lua_gc(L, LUA_GCCOLLECT);
    if (e1.cap > ((size_t)1 << 20))
        luamp_buf_free(&e1);
    if (e2.cap > ((size_t)1 << 20))
        luamp_buf_free(&e2);
    return 0;
}
