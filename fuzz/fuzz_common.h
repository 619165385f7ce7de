/* SPDX-License-Identifier: MIT */
/*
 * fuzz_common.h - what the fuzz targets share: a hermetic Lua state with a
 * counting allocator, two known luamp objects, and a check that two Lua
 * values are the same up to identity (an isomorphism of their graphs).
 *
 * Header-only on purpose: fuzz/run compiles each target together with
 * src/codec.c in one clang command, and nothing else links this.
 */
#ifndef LUAMP_FUZZ_COMMON_H
#define LUAMP_FUZZ_COMMON_H

#include "sandbox.h"
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "codec.h"

/* ------------------------------------------------------------------ */
/* Failing loudly                                                      */

/* A broken promise of the codec: print why and abort(), which libFuzzer
 * reports as a crash and saves the input for. */
static void fz_die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "\nfuzz: CONTRACT VIOLATION: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    abort();
}

static inline int fz_starts(const char *s, const char *prefix)
{
    return s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ------------------------------------------------------------------ */
/* The allocator                                                       */

/* Lua's memory: capped, so that a runaway input ends as a Lua memory
 * error rather than libFuzzer's RSS limit, and able to fail one chosen
 * allocation (fz_fail_after counts down to it; -1 is off). */
static size_t fz_used;
static size_t fz_limit = (size_t)768 << 20;
static long fz_fail_after = -1;
static int fz_failed;   /* an injected failure happened */

static void *fz_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    size_t old = ptr != NULL ? osize : 0;
    void *p;

    (void)ud;
    if (nsize == 0) {
        free(ptr);
        fz_used -= old;
        return NULL;
    }
    /* Lua assumes that shrinking never fails: only growth may. */
    if (nsize > old) {
        if (fz_fail_after == 0) {
            fz_fail_after = -1;
            fz_failed = 1;
            return NULL;
        }
        if (fz_fail_after > 0)
            fz_fail_after--;
        if (nsize - old > fz_limit - fz_used)
            return NULL;
    }
    p = realloc(ptr, nsize);
    if (p == NULL)
        return NULL;
    fz_used = fz_used - old + nsize;
    return p;
}

static int fz_panic(lua_State *L)
{
    fz_die("Lua panic: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no message)");
    return 0;
}

/* ------------------------------------------------------------------ */
/* The state                                                           */

/* A luamp object's __luamp_ref: the id its metatable holds. */
static int fz_objref(lua_State *L)
{
    if (!lua_getmetatable(L, 1))
        return 0;
    lua_pushliteral(L, "id");
    lua_rawget(L, -2);
    return 1;
}

/* Two objects known to this "process": a table and a userdata, as a
 * queue and a lock are.  Every other OBJ id is the miss path. */
#define FZ_OBJ_TABLE "queue:1:1"
#define FZ_OBJ_UDATA "lock:1:2"

static void fz_add_object(lua_State *L, int objects, const char *id, int udata)
{
    if (udata)
        lua_newuserdatauv(L, 8, 0);
    else
        lua_newtable(L);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, fz_objref);
    lua_setfield(L, -2, "__luamp_ref");
    lua_pushstring(L, id);
    lua_setfield(L, -2, "id");
    lua_setmetatable(L, -2);
    lua_setfield(L, objects, id);
}

/* The sandbox the fuzzed state runs in: see sandbox.h. */
static const char fz_sandbox[] = FUZZ_SANDBOX;

/* A C function that is a module of its own, and one a lazy module
 * holds. */
static int fz_cfunction(lua_State *L)
{
    lua_pushinteger(L, lua_gettop(L));
    return 1;
}

/* package.preload's loader of the lazy modules, not loaded until a
 * message names them: "fzlazy", "fz.lazy" (whose name has a dot, as
 * "socket.core" does) and their field "f". */
static int fz_lazy_loader(lua_State *L)
{
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, fz_cfunction);
    lua_setfield(L, -2, "f");
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "n");
    return 1;
}

/* After each input: the lazy modules are unloaded again, so that every
 * input finds the same state (and the encoder sees package.loaded
 * change, and rebuilds its names). */
static void fz_reset(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    lua_setfield(L, -2, "fzlazy");
    lua_pushnil(L);
    lua_setfield(L, -2, "fz.lazy");
    lua_pop(L, 1);
}

static lua_State *fz_new_state(void)
{
    lua_State *L = lua_newstate(fz_alloc, NULL);
    int objects;

    if (L == NULL)
        fz_die("cannot create a Lua state");
    lua_atpanic(L, fz_panic);
    luaL_openlibs(L);
    if (luaL_dostring(L, fz_sandbox) != LUA_OK)
        fz_die("sandbox: %s", lua_tostring(L, -1));
    lua_newtable(L);
    objects = lua_gettop(L);
    fz_add_object(L, objects, FZ_OBJ_TABLE, 0);
    fz_add_object(L, objects, FZ_OBJ_UDATA, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "luamp.objects");
    /* modules that are not tables: a C function, and a value that is
     * neither table nor function; and the lazy ones */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushcfunction(L, fz_cfunction);
    lua_setfield(L, -2, "fz.cmod");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "fz.flag");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, fz_lazy_loader);
    lua_setfield(L, -2, "fzlazy");
    lua_pushcfunction(L, fz_lazy_loader);
    lua_setfield(L, -2, "fz.lazy");
    lua_settop(L, 0);
    return L;
}

/* ------------------------------------------------------------------ */
/* Same value, up to identity                                          */

/*
 * fz_same(a, b) tells whether the value at a (the original) and the one
 * at b (its copy after a trip through the codec) are the same: equal
 * scalars (floats bit for bit, so NaN and -0.0 count), the very same
 * object for what travels by name or id (modules, C functions, luamp
 * objects), and for tables and Lua functions a one-to-one pairing of
 * the original's with the copy's under which entries, metatables,
 * upvalues and the sharing of upvalues correspond.  So cycles and shared
 * parts must come back exactly as they were, but the order of a table's
 * entries (which a copy is free to change) does not matter.
 *
 * A key that is itself a table or function copied by value can only be
 * matched once its pairing is known; when several such keys of one table
 * stay unpaired their entries are only counted (fz_same_unpaired).
 */
typedef struct fz_same {
    lua_State *L;
    int map, inv, ups, upinv;   /* stack slots: a -> b, b -> a, upvalue ids */
    int order_free;   /* some copied table has 2+ entries that are not 1..n */
    int unpaired;     /* entries only counted */
    int gave_up;      /* too deep to follow: not compared */
    char why[256];
} fz_same;

static int same_value(fz_same *s, int a, int b, int depth);

static int same_fail(fz_same *s, const char *fmt, ...)
{
    va_list ap;

    if (s->why[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(s->why, sizeof s->why, fmt, ap);
        va_end(ap);
    }
    return 0;
}

/* Whether an object travels by copy: a table or a Lua function. */
static int by_copy(lua_State *L, int i)
{
    int t = lua_type(L, i);

    return t == LUA_TTABLE || (t == LUA_TFUNCTION && !lua_iscfunction(L, i));
}

/* Pairs a with b, or checks an existing pairing: 1 newly paired (compare
 * the contents), 0 paired before and consistently, -1 inconsistent. */
static int pair(fz_same *s, int a, int b)
{
    lua_State *L = s->L;
    int r;

    lua_pushvalue(L, a);
    if (lua_rawget(L, s->map) != LUA_TNIL) {
        r = lua_rawequal(L, -1, b) ? 0 : -1;
        lua_pop(L, 1);
        return r;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, b);
    if (lua_rawget(L, s->inv) != LUA_TNIL) {
        lua_pop(L, 1);
        return -1;   /* b is already the copy of another value */
    }
    lua_pop(L, 1);
    lua_pushvalue(L, a);
    lua_pushvalue(L, b);
    lua_rawset(L, s->map);
    lua_pushvalue(L, b);
    lua_pushvalue(L, a);
    lua_rawset(L, s->inv);
    return 1;
}

/* The copy of the copied key at k, pushed (nil when not paired yet). */
static void push_paired(fz_same *s, int k)
{
    lua_pushvalue(s->L, k);
    lua_rawget(s->L, s->map);
}

/* Entries of table a whose key is at k: compares a[k] with b[kb], kb on
 * top of the stack (popped). */
static int same_entry(fz_same *s, int a, int b, int k, int depth)
{
    lua_State *L = s->L;
    int ok;

    lua_pushvalue(L, -1);
    if (lua_rawget(L, b) == LUA_TNIL) {
        lua_pop(L, 2);
        return same_fail(s, "a key of the original is missing from the copy");
    }
    lua_pushvalue(L, k);
    lua_rawget(L, a);
    ok = same_value(s, lua_gettop(L), lua_gettop(L) - 1, depth + 1);
    lua_pop(L, 3);
    return ok;
}

static int same_table(fz_same *s, int a, int b, int depth)
{
    lua_State *L = s->L;
    lua_Integer ca = 0, cb = 0, pending = 0, left = 0, last = 0;
    int has_a, has_b, pend;

    lua_pushnil(L);
    while (lua_next(L, a)) {
        lua_pop(L, 1);
        ca++;
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
        lua_pop(L, 1);
        cb++;
    }
    if (ca != cb)
        return same_fail(s, "a table of %d entries came back with %d", (int)ca, (int)cb);
    /* The encoder writes keys 1..n as an array, in order; any other
     * table of 2+ entries in traversal order, which the copy may not
     * share. */
    if (ca >= 2) {
        lua_pushnil(L);
        while (lua_next(L, a)) {
            lua_pop(L, 1);
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > ca)
                s->order_free = 1;
        }
    }

    /* The body first, the metatable second: the encoder's order. */
    lua_newtable(L);
    pend = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, a)) {
        int k = lua_gettop(L) - 1;
        lua_pop(L, 1);
        if (!by_copy(L, k)) {
            lua_pushvalue(L, k);           /* the same key */
        } else {
            lua_pushvalue(L, k);
            if (lua_rawget(L, b) != LUA_TNIL) {
                lua_pop(L, 1);
                lua_pushvalue(L, k);       /* by name: the same key */
            } else {
                lua_pop(L, 1);
                push_paired(s, k);
                if (lua_isnil(L, -1)) {    /* not paired yet: later */
                    lua_pop(L, 1);
                    lua_pushvalue(L, k);
                    lua_rawseti(L, pend, ++pending);
                    continue;
                }
            }
        }
        if (!same_entry(s, a, b, k, depth))
            return 0;
    }
    /* Keys paired meanwhile, by the other entries. */
    for (int progress = 1; progress && pending > 0;) {
        progress = 0;
        for (lua_Integer i = 1; i <= pending; i++) {
            int k;
            if (lua_rawgeti(L, pend, i) == LUA_TNIL) {
                lua_pop(L, 1);
                continue;
            }
            k = lua_gettop(L);
            push_paired(s, k);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 2);
                continue;
            }
            if (!same_entry(s, a, b, k, depth))
                return 0;
            lua_pop(L, 1);
            lua_pushnil(L);
            lua_rawseti(L, pend, i);
            progress = 1;
        }
    }
    /* What is left: one copied key on each side pair up; more are only
     * counted, since matching them would take a search. */
    for (lua_Integer i = 1; i <= pending; i++) {
        if (lua_rawgeti(L, pend, i) != LUA_TNIL) {
            left++;
            last = i;
        }
        lua_pop(L, 1);
    }
    if (left == 1) {
        int k, kb;
        lua_Integer nb = 0;
        lua_rawgeti(L, pend, last);
        k = lua_gettop(L);
        lua_pushnil(L);
        kb = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, b)) {
            lua_pop(L, 1);
            if (!by_copy(L, -1))
                continue;
            lua_pushvalue(L, -1);
            if (lua_rawget(L, a) == LUA_TNIL) {      /* not a shared key */
                lua_pushvalue(L, -2);
                if (lua_rawget(L, s->inv) == LUA_TNIL) {
                    nb++;
                    lua_pushvalue(L, -3);
                    lua_replace(L, kb);
                }
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
        if (nb != 1)
            return same_fail(s, "a key copied by value has %d candidates in the copy", (int)nb);
        if (!same_value(s, k, kb, depth + 1))
            return 0;
        lua_pushvalue(L, kb);
        if (!same_entry(s, a, b, k, depth))
            return 0;
        lua_pop(L, 2);
    } else {
        s->unpaired += (int)left;
    }
    lua_pop(L, 1);   /* pend */

    has_a = lua_getmetatable(L, a);
    has_b = lua_getmetatable(L, b);
    if (has_a != has_b) {
        lua_pop(L, has_a + has_b);
        return same_fail(s, has_a ? "a metatable was lost" : "a metatable appeared");
    }
    if (has_a) {
        int ok = same_value(s, lua_gettop(L) - 1, lua_gettop(L), depth + 1);
        lua_pop(L, 2);
        return ok;
    }
    return 1;
}

static int same_function(fz_same *s, int a, int b, int depth)
{
    lua_State *L = s->L;
    lua_Debug ia, ib;
    int ok;

    lua_pushvalue(L, a);
    lua_getinfo(L, ">u", &ia);
    lua_pushvalue(L, b);
    lua_getinfo(L, ">u", &ib);
    if (ia.nups != ib.nups)
        return same_fail(s, "a function of %d upvalues came back with %d", ia.nups, ib.nups);
    /* the same bytecode, debug information included */
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "dump");
    lua_pushvalue(L, a);
    lua_call(L, 1, 1);
    lua_getfield(L, -2, "dump");
    lua_pushvalue(L, b);
    lua_call(L, 1, 1);
    ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 3);
    if (!ok)
        return same_fail(s, "a function came back with other bytecode");
    for (int i = 1; i <= ia.nups; i++) {
        void *ua = lua_upvalueid(L, a, i), *ub = lua_upvalueid(L, b, i);
        /* shared upvalues must be shared alike */
        lua_pushlightuserdata(L, ua);
        if (lua_rawget(L, s->ups) != LUA_TNIL) {
            ok = lua_touserdata(L, -1) == ub;
            lua_pop(L, 1);
            if (!ok)
                return same_fail(s, "upvalue %d is shared differently in the copy", i);
            continue;   /* the value was compared where it was first met */
        }
        lua_pop(L, 1);
        lua_pushlightuserdata(L, ub);
        if (lua_rawget(L, s->upinv) != LUA_TNIL) {
            lua_pop(L, 1);
            return same_fail(s, "upvalue %d of the copy is shared, the original's is not", i);
        }
        lua_pop(L, 1);
        lua_pushlightuserdata(L, ua);
        lua_pushlightuserdata(L, ub);
        lua_rawset(L, s->ups);
        lua_pushlightuserdata(L, ub);
        lua_pushlightuserdata(L, ua);
        lua_rawset(L, s->upinv);
        lua_getupvalue(L, a, i);
        lua_getupvalue(L, b, i);
        ok = same_value(s, lua_gettop(L) - 1, lua_gettop(L), depth + 1);
        lua_pop(L, 2);
        if (!ok)
            return 0;
    }
    return 1;
}

/* Whether the table at i has a metatable with a __luamp_ref function,
 * which makes it a luamp object that travels by id (OBJ). */
static int has_ref_method(lua_State *L, int i)
{
    int r;

    if (!lua_getmetatable(L, i))
        return 0;
    lua_pushliteral(L, "__luamp_ref");
    r = lua_rawget(L, -2) == LUA_TFUNCTION;
    lua_pop(L, 2);
    return r;
}

static int same_value(fz_same *s, int a, int b, int depth)
{
    lua_State *L = s->L;
    int t = lua_type(L, a), r;

    /* A luamp object travels by id: what comes back is what the id names
     * here, an object too (another one when an input's __luamp_ref made
     * up the id of a known object). */
    if (t == LUA_TTABLE && has_ref_method(L, a) && !lua_rawequal(L, a, b)) {
        if ((lua_type(L, b) == LUA_TTABLE || lua_type(L, b) == LUA_TUSERDATA) && has_ref_method(L, b))
            return 1;
        return same_fail(s, "a luamp object came back as a %s that is none", luaL_typename(L, b));
    }
    if (t != lua_type(L, b))
        return same_fail(s, "a %s came back as a %s", lua_typename(L, t),
                         lua_typename(L, lua_type(L, b)));
    if (lua_rawequal(L, a, b)) {
        if (t == LUA_TNUMBER && lua_isinteger(L, a) != lua_isinteger(L, b))
            return same_fail(s, "an integer and a float swapped");
        if (t == LUA_TNUMBER && !lua_isinteger(L, a)) {
            lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
            if (memcmp(&x, &y, sizeof x) != 0)
                return same_fail(s, "a float's sign changed");   /* 0.0 == -0.0 */
        }
        return 1;   /* scalars, and what travels by name or id */
    }
    switch (t) {
    case LUA_TNUMBER:
        if (!lua_isinteger(L, a) && !lua_isinteger(L, b)) {
            lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
            if (memcmp(&x, &y, sizeof x) == 0)
                return 1;   /* NaN, bit for bit */
        }
        return same_fail(s, "a number changed");
    case LUA_TTABLE:
    case LUA_TFUNCTION:
        if (!by_copy(L, a) || !by_copy(L, b))
            return same_fail(s, "a %s that travels by name came back as another", lua_typename(L, t));
        if (depth > 1000) {
            s->gave_up = 1;
            return 1;
        }
        luaL_checkstack(L, 24, "fz_same");
        r = pair(s, a, b);
        if (r < 0)
            return same_fail(s, "a shared %s is shared differently in the copy", lua_typename(L, t));
        if (r == 0)
            return 1;
        return t == LUA_TTABLE ? same_table(s, a, b, depth) : same_function(s, a, b, depth);
    default:
        return same_fail(s, "a %s changed", lua_typename(L, t));
    }
}

/* Compares the values at a and b; returns 1 when they are the same.
 * Allocates: call it where memory errors may raise. */
static int fz_same_values(lua_State *L, int a, int b, fz_same *s)
{
    int r;

    memset(s, 0, sizeof *s);
    s->L = L;
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    luaL_checkstack(L, 8, "fz_same");
    for (int i = 0; i < 4; i++)
        lua_newtable(L);
    s->map = lua_gettop(L) - 3;
    s->inv = s->map + 1;
    s->ups = s->map + 2;
    s->upinv = s->map + 3;
    r = same_value(s, a, b, 0);
    lua_settop(L, s->map - 1);
    return r;
}

#endif
