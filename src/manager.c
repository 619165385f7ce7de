/* SPDX-License-Identifier: MIT */
/*
 * manager.c - the dict, list and Namespace of mp.Manager: Lua bindings
 * over shdict.c.
 *
 * A managed object is a userdata holding this process's view of a
 * shdict or shlist (one memfd that every process using the object maps;
 * shdict.c explains the layout, the lock and why a death tears nothing).
 * Keys and values are stored as luamp's MessagePack (codec.h), so any
 * value a Queue can carry can be a key or a value, and both are copied
 * by value: a table read from a dict is the reader's copy.  A key that
 * is a float with an integral value is stored as that integer, as a Lua
 * table does (d[1.0] is d[1]); other keys compare by their encoding, so
 * two tables with the same contents are the same key.
 *
 * Method names against keys.  d.k and d:m() are the same lookup in Lua,
 * so one rule settles it: __index returns the method for the names of
 * the methods (get, set, keys, ...), and the stored value for every
 * other key; a key that is a method's name is read with d:get("keys")
 * (and written with d["keys"] = v or d:set, which never collide).  A
 * Namespace has no methods: ns.anything is data.
 *
 * update_key(k, fn) and the guard of get_lock() hold the object's lock
 * around Lua code; the lock is recursive for its holder (a process), so
 * that code may use the object.  A process killed there leaves the old
 * value, and the next locker takes the lock over.
 *
 * The object travels like a Lock: to a forked child by its id (the
 * registry of objects), to any other process as {kind =, id =, memfd =}
 * (manager_describe) and the memfd, which manager_attach maps.
 */
#include "registry.h"
#include "shdict.h"
#include "codec.h"
#include "sys.h"
#include "interrupt.h"
#include "objects.h"
#include "module.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#define DICT_MT  "luamp.dict"
#define LIST_MT  "luamp.list"
#define NS_MT    "luamp.Namespace"
#define MLOCK_MT "luamp.ManagedLock"
#define MGUARD_MT "luamp.ManagedGuard"

enum { DICT, LIST, NAMESPACE };
static const char *const kinds[] = { "dict", "list", "namespace", NULL };
static const char *const kind_mts[] = { DICT_MT, LIST_MT, NS_MT };

typedef struct managed {
    int kind;
    shdict *d;          /* a dict's or a Namespace's, else NULL */
    shlist *l;          /* a list's, else NULL */
    luamp_buf key, val; /* scratch */
    char id[48];
} managed;

/* ---- plumbing ---------------------------------------------------------- */

static managed *test_managed(lua_State *L, int idx)
{
    for (int k = 0; kinds[k]; k++) {
        managed *m = luaL_testudata(L, idx, kind_mts[k]);
        if (m != NULL)
            return m;
    }
    return NULL;
}

static managed *check_open(lua_State *L, managed *m)
{
    if (m->d == NULL && m->l == NULL)
        luaL_error(L, "the object was collected");
    return m;
}

static managed *check_dict(lua_State *L)
{
    managed *m = luaL_testudata(L, 1, DICT_MT);
    if (m == NULL)
        m = luaL_checkudata(L, 1, NS_MT);
    return check_open(L, m);
}

static managed *check_list(lua_State *L)
{
    return check_open(L, luaL_checkudata(L, 1, LIST_MT));
}

/* Raises for status st of a call that did not succeed. */
static int fail(lua_State *L, int st, const char *what)
{
    if (st == SHD_INTERRUPTED)
        luamp_raise_interrupt(L);
    if (st == SHD_TIMEOUT)
        return luamp_raise(L, "timeout", "%s: timed out", what);
    return luamp_sys_error(L, what);
}

static void check(lua_State *L, int st, const char *what)
{
    if (st != SHD_OK && st != SHD_MISSING && st != SHD_RANGE)
        fail(L, st, what);
}

/* Encodes the value at idx into b (emptied first), naming it root in a
 * refusal ("cannot send key: a coroutine").  An integral float is
 * encoded as the integer, so that keys 1 and 1.0 are one key. */
static void encode(lua_State *L, int idx, const char *root, luamp_buf *b)
{
    idx = lua_absindex(L, idx);
    luamp_buf_reset(b);
    int pushed = 0;
    if (lua_type(L, idx) == LUA_TNUMBER && !lua_isinteger(L, idx)) {
        lua_Integer i;
        if (lua_numbertointeger(lua_tonumber(L, idx), &i) && (lua_Number)i == lua_tonumber(L, idx)) {
            lua_pushinteger(L, i);
            idx = lua_gettop(L);
            pushed = 1;
        }
    }
    if (luamp_encode(L, idx, root, b) != 0)
        luamp_raise(L, "serialize", "%s", lua_tostring(L, -1));
    if (pushed)
        lua_pop(L, 1);
}

static void decode(lua_State *L, const void *p, size_t n)
{
    if (luamp_decode(L, p, n, 0) != 0)
        luamp_raise(L, "serialize", "a managed object holds a bad value: %s", lua_tostring(L, -1));
}

/* Makes a new object with errno EMFILE or ENOMEM retried once after a
 * full collection: dropped objects hold a memfd each until collected,
 * which a program making many would otherwise run out of. */
static void *retry_after_gc(lua_State *L, void *(*make)(void))
{
    void *o = make();
    if (o == NULL && (errno == EMFILE || errno == ENFILE || errno == ENOMEM)) {
        lua_gc(L, LUA_GCCOLLECT);
        o = make();
    }
    return o;
}

static void *make_dict(void) { return shdict_create(); }
static void *make_list(void) { return shlist_create(); }

/* Pushes a new userdata for kind k on d or l (one of them), with id id
 * or a new one, registered for sending. */
static managed *push_managed(lua_State *L, int k, shdict *d, shlist *l, const char *id)
{
    managed *m = lua_newuserdatauv(L, sizeof *m, 1);   /* (user value 1: its lock object) */
    memset(m, 0, sizeof *m);
    m->kind = k;
    m->d = d;
    m->l = l;
    luamp_buf_init(&m->key);
    luamp_buf_init(&m->val);
    if (id != NULL)
        snprintf(m->id, sizeof m->id, "%s", id);
    else
        luamp_new_object_id(m->id, sizeof m->id, kinds[k]);
    luaL_setmetatable(L, kind_mts[k]);
    luamp_register_object(L, -1, m->id);
    return m;
}

/* core.manager_new(kind) -> a new empty dict, list or namespace */
static int l_new(lua_State *L)
{
    int k = luaL_checkoption(L, 1, NULL, kinds);
    void *o = retry_after_gc(L, k == LIST ? make_list : make_dict);
    if (o == NULL)
        return luamp_sys_error(L, "cannot make a shared object");
    push_managed(L, k, k == LIST ? NULL : o, k == LIST ? o : NULL, NULL);
    return 1;
}

static int lock_obj(managed *m, double deadline)
{
    return m->l ? shlist_lock(m->l, deadline) : shdict_lock(m->d, deadline);
}

static int unlock_obj(managed *m)
{
    return m->l ? shlist_unlock(m->l) : shdict_unlock(m->d);
}

/* ---- dict and Namespace --------------------------------------------------- */

/* Pushes the value of the key at idx, or nil; returns whether found. */
static int dict_push(lua_State *L, managed *m, int idx)
{
    if (lua_isnil(L, idx)) {
        lua_pushnil(L);
        return 0;
    }
    encode(L, idx, "key", &m->key);
    int st = shdict_get(m->d, m->key.data, m->key.len, &m->val);
    check(L, st, "cannot read the dict");
    if (st == SHD_MISSING) {
        lua_pushnil(L);
        return 0;
    }
    decode(L, m->val.data, m->val.len);
    luamp_collect_for(L, m->val.len);
    return 1;
}

/* Sets key at kidx to the value at vidx (nil: deletes it). */
static void dict_store(lua_State *L, managed *m, int kidx, int vidx)
{
    if (lua_isnil(L, kidx))
        luaL_error(L, "key is nil");
    if (lua_type(L, kidx) == LUA_TNUMBER && isnan(lua_tonumber(L, kidx)))
        luaL_error(L, "key is NaN");
    encode(L, kidx, "key", &m->key);
    int st;
    if (lua_isnil(L, vidx)) {
        st = shdict_delete(m->d, m->key.data, m->key.len, NULL);
    } else {
        encode(L, vidx, "value", &m->val);
        st = shdict_set(m->d, m->key.data, m->key.len, m->val.data, m->val.len);
    }
    check(L, st, "cannot change the dict");
}

/* __index: a method (upvalue 1, a table; none for a Namespace) or the
 * value */
static int l_dict_index(lua_State *L)
{
    managed *m = check_dict(L);
    if (lua_type(L, 2) == LUA_TSTRING && lua_type(L, lua_upvalueindex(1)) == LUA_TTABLE) {
        lua_pushvalue(L, 2);
        if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
            return 1;
        lua_pop(L, 1);
    }
    dict_push(L, m, 2);
    return 1;
}

static int l_dict_newindex(lua_State *L)
{
    dict_store(L, check_dict(L), 2, 3);
    return 0;
}

/* d:get(k [, default]) */
static int l_dict_get(lua_State *L)
{
    managed *m = check_dict(L);
    luaL_checkany(L, 2);
    if (!dict_push(L, m, 2))
        lua_pushvalue(L, 3);
    return 1;
}

/* d:set(k, v) */
static int l_dict_set(lua_State *L)
{
    managed *m = check_dict(L);
    luaL_checkany(L, 2);
    dict_store(L, m, 2, 3);
    return 0;
}

/* d:contains(k) -> boolean */
static int l_dict_contains(lua_State *L)
{
    managed *m = check_dict(L);
    luaL_checkany(L, 2);
    if (lua_isnil(L, 2)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    encode(L, 2, "key", &m->key);
    int st = shdict_contains(m->d, m->key.data, m->key.len);
    check(L, st, "cannot read the dict");
    lua_pushboolean(L, st == SHD_OK);
    return 1;
}

/* d:pop(k [, default]) -> its value (removed), or default */
static int l_dict_pop(lua_State *L)
{
    managed *m = check_dict(L);
    luaL_checkany(L, 2);
    if (lua_isnil(L, 2)) {
        lua_pushvalue(L, 3);
        return 1;
    }
    encode(L, 2, "key", &m->key);
    int st = shdict_delete(m->d, m->key.data, m->key.len, &m->val);
    check(L, st, "cannot change the dict");
    if (st == SHD_MISSING)
        lua_pushvalue(L, 3);
    else
        decode(L, m->val.data, m->val.len);
    return 1;
}

/* Calls f(L, m) with the object's lock held, releasing it whether f
 * returns or raises. */
static int locked_call(lua_State *L, managed *m, lua_CFunction f)
{
    int st = lock_obj(m, -1);
    if (st != SHD_OK)
        return fail(L, st, "cannot lock the object");
    lua_pushcfunction(L, f);
    lua_insert(L, 1);
    int r = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    unlock_obj(m);
    if (r != LUA_OK)
        return lua_error(L);
    return lua_gettop(L);
}

static int setdefault_locked(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    if (!dict_push(L, m, 2)) {
        lua_pop(L, 1);
        dict_store(L, m, 2, 3);
        lua_pushvalue(L, 3);
    }
    return 1;
}

/* d:setdefault(k, default) -> d[k], set to default first if absent */
static int l_dict_setdefault(lua_State *L)
{
    managed *m = check_dict(L);
    luaL_checkany(L, 2);
    lua_settop(L, 3);
    return locked_call(L, m, setdefault_locked);
}

static int update_locked(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        dict_store(L, m, -2, -1);
        lua_pop(L, 1);
    }
    return 0;
}

/* d:update(t): every key of t set at once (nil values cannot be in t) */
static int l_dict_update(lua_State *L)
{
    managed *m = check_dict(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    locked_call(L, m, update_locked);
    return 0;
}

/* Pushes what a snapshot holds: with keys and values, as a table k -> v
 * (what 0) or an array of {k, v} (what 3); keys or values only as an
 * array (1, 2). */
static int push_snapshot(lua_State *L, managed *m, int what)
{
    uint64_t n = 0;
    int st;
    if (m->l)
        st = shlist_snapshot(m->l, &m->val, &n);
    else
        st = shdict_snapshot(m->d, what == 1 ? SHD_KEYS : what == 2 ? SHD_VALUES : SHD_KEYS | SHD_VALUES,
                             &m->val, &n);
    check(L, st, "cannot read the object");
    int narr = n > INT_MAX ? INT_MAX : (int)n;
    lua_createtable(L, what || m->l ? narr : 0, what || m->l ? 0 : narr);
    int t = lua_gettop(L);
    size_t pos = 0;
    const char *k, *v;
    size_t kl, vl;
    lua_Integer i = 0;
    luaL_checkstack(L, 4, NULL);
    while (shd_next(&m->val, &pos, &k, &kl, &v, &vl)) {
        i++;
        if (m->l) {
            decode(L, v, vl);
            lua_rawseti(L, t, i);
        } else if (what == 1) {
            decode(L, k, kl);
            lua_rawseti(L, t, i);
        } else if (what == 2) {
            decode(L, v, vl);
            lua_rawseti(L, t, i);
        } else if (what == 3) {
            lua_createtable(L, 2, 0);
            decode(L, k, kl);
            lua_rawseti(L, -2, 1);
            decode(L, v, vl);
            lua_rawseti(L, -2, 2);
            lua_rawseti(L, t, i);
        } else {
            decode(L, k, kl);
            decode(L, v, vl);
            lua_rawset(L, t);
        }
    }
    luamp_collect_for(L, m->val.len);
    luamp_buf_trim(&m->val);
    return 1;
}

static int l_dict_keys(lua_State *L) { return push_snapshot(L, check_dict(L), 1); }
static int l_dict_values(lua_State *L) { return push_snapshot(L, check_dict(L), 2); }
static int l_dict_items(lua_State *L) { return push_snapshot(L, check_dict(L), 3); }
static int l_dict_totable(lua_State *L) { return push_snapshot(L, check_dict(L), 0); }

static int l_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

/* __pairs: over a snapshot, a copy taken at once under the lock */
static int l_pairs(lua_State *L)
{
    managed *m = test_managed(L, 1);
    luaL_argexpected(L, m != NULL, 1, "managed object");
    check_open(L, m);
    lua_pushcfunction(L, l_next);
    push_snapshot(L, m, m->l ? 2 : 0);
    lua_pushnil(L);
    return 3;
}

static int l_dict_clear(lua_State *L)
{
    managed *m = check_dict(L);
    check(L, shdict_clear(m->d), "cannot clear the dict");
    return 0;
}

static int l_len(lua_State *L)
{
    managed *m = test_managed(L, 1);
    luaL_argexpected(L, m != NULL, 1, "managed object");
    check_open(L, m);
    uint64_t n = 0;
    check(L, m->l ? shlist_len(m->l, &n) : shdict_count(m->d, &n), "cannot read the object");
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* ---- list ----------------------------------------------------------------- */

/* The 0-based index of the 1-based position at idx, for a list of n
 * elements; extra: 1 to allow n + 1. */
static uint64_t list_pos(lua_State *L, int idx, uint64_t n, int extra)
{
    int isint;
    lua_Integer i = lua_tointegerx(L, idx, &isint);
    if (!isint)
        luaL_error(L, "list index must be an integer, got %s", luaL_typename(L, idx));
    if (i < 1 || (uint64_t)i > n + (uint64_t)extra)
        luaL_error(L, "list index %I out of range (length %I)", i, (lua_Integer)n);
    return (uint64_t)i - 1;
}

static uint64_t list_len(lua_State *L, managed *m)
{
    uint64_t n = 0;
    check(L, shlist_len(m->l, &n), "cannot read the list");
    return n;
}

/* Pushes element i (0-based) or nil; returns whether there is one. */
static int list_push(lua_State *L, managed *m, uint64_t i)
{
    int st = shlist_get(m->l, i, &m->val);
    check(L, st, "cannot read the list");
    if (st == SHD_RANGE) {
        lua_pushnil(L);
        return 0;
    }
    decode(L, m->val.data, m->val.len);
    luamp_collect_for(L, m->val.len);
    return 1;
}

static void check_value(lua_State *L, int idx)
{
    if (lua_isnil(L, idx))
        luaL_error(L, "cannot store nil in a list (l:remove(i) removes an element)");
}

/* __index: a method, or element i (nil past the end) */
static int l_list_index(lua_State *L)
{
    managed *m = check_list(L);
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (isint) {
        if (i < 1 || !list_push(L, m, (uint64_t)i - 1))
            lua_pushnil(L);
        return 1;
    }
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(1));
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

static int set_locked(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    uint64_t n = list_len(L, m);
    uint64_t i = list_pos(L, 2, n, 1);
    encode(L, 3, "value", &m->val);
    check(L, i == n ? shlist_append(m->l, m->val.data, m->val.len)
                    : shlist_set(m->l, i, m->val.data, m->val.len), "cannot change the list");
    return 0;
}

/* __newindex: l[i] = v for 1 <= i <= #l + 1 (the last: an append) */
static int l_list_newindex(lua_State *L)
{
    managed *m = check_list(L);
    check_value(L, 3);
    lua_settop(L, 3);
    return locked_call(L, m, set_locked);
}

static int l_list_append(lua_State *L)
{
    managed *m = check_list(L);
    luaL_checkany(L, 2);
    check_value(L, 2);
    encode(L, 2, "value", &m->val);
    check(L, shlist_append(m->l, m->val.data, m->val.len), "cannot change the list");
    return 0;
}

static int insert_locked(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    uint64_t n = list_len(L, m);
    uint64_t i = list_pos(L, 2, n, 1);
    encode(L, 3, "value", &m->val);
    check(L, shlist_insert(m->l, i, m->val.data, m->val.len), "cannot change the list");
    return 0;
}

/* l:insert([i,] v), as table.insert */
static int l_list_insert(lua_State *L)
{
    managed *m = check_list(L);
    if (lua_gettop(L) <= 2)
        return l_list_append(L);
    check_value(L, 3);
    lua_settop(L, 3);
    return locked_call(L, m, insert_locked);
}

static int remove_locked(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    uint64_t n = list_len(L, m);
    if (lua_isnoneornil(L, 2) && n == 0) {
        lua_pushnil(L);
        return 1;
    }
    uint64_t i = lua_isnoneornil(L, 2) ? n - 1 : list_pos(L, 2, n, 0);
    check(L, shlist_remove(m->l, i, &m->val), "cannot change the list");
    decode(L, m->val.data, m->val.len);
    return 1;
}

/* l:remove([i]) -> the element removed (the last by default; nil from
 * an empty list), as table.remove */
static int l_list_remove(lua_State *L)
{
    managed *m = check_list(L);
    lua_settop(L, 2);
    return locked_call(L, m, remove_locked);
}

static int extend_locked(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    lua_Integer n = luaL_len(L, 2);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 2, i);
        check_value(L, -1);
        encode(L, -1, "value", &m->val);
        check(L, shlist_append(m->l, m->val.data, m->val.len), "cannot change the list");
        lua_pop(L, 1);
    }
    return 0;
}

/* l:extend(t): appends t[1], ..., t[#t] at once */
static int l_list_extend(lua_State *L)
{
    managed *m = check_list(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    return locked_call(L, m, extend_locked);
}

static int l_list_get(lua_State *L)
{
    managed *m = check_list(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || !list_push(L, m, (uint64_t)i - 1))
        lua_pushvalue(L, 3);
    return 1;
}

static int l_list_totable(lua_State *L) { return push_snapshot(L, check_list(L), 2); }

static int l_list_clear(lua_State *L)
{
    managed *m = check_list(L);
    check(L, shlist_clear(m->l), "cannot clear the list");
    return 0;
}

/* ---- both: update_key, get_lock ------------------------------------------- */

static int update_key_locked(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    /* 2: key, 3: fn, 4: default */
    if (m->l) {
        uint64_t i = list_pos(L, 2, list_len(L, m), 0);
        list_push(L, m, i);
    } else if (!dict_push(L, m, 2)) {
        lua_pop(L, 1);
        lua_pushvalue(L, 4);
    }
    lua_pushvalue(L, 3);
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    if (m->l) {
        check_value(L, 5);
        encode(L, 5, "value", &m->val);
        check(L, shlist_set(m->l, (uint64_t)lua_tointeger(L, 2) - 1, m->val.data, m->val.len),
              "cannot change the list");
    } else {
        dict_store(L, m, 2, 5);
    }
    return 1;
}

/* o:update_key(k, fn [, default]) -> the new value: o[k] = fn(o[k] or
 * default), under the object's lock (fn may use the object) */
static int l_update_key(lua_State *L)
{
    managed *m = test_managed(L, 1);
    luaL_argexpected(L, m != NULL, 1, "managed object");
    check_open(L, m);
    luaL_checkany(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lua_settop(L, 4);
    return locked_call(L, m, update_key_locked);
}

/* The lock of get_lock(): a handle on the object's own lock, user value
 * 1 the object, 2 its guard. */
static managed *check_mlock(lua_State *L)
{
    luaL_checkudata(L, 1, MLOCK_MT);
    lua_getiuservalue(L, 1, 1);
    managed *m = check_open(L, lua_touserdata(L, -1));
    lua_pop(L, 1);
    return m;
}

/* lock:acquire([timeout]) -> boolean */
static int l_mlock_acquire(lua_State *L)
{
    managed *m = check_mlock(L);
    int st = lock_obj(m, luamp_opt_deadline(L, 2));
    if (st != SHD_OK && st != SHD_TIMEOUT)
        fail(L, st, "cannot lock the object");
    lua_pushboolean(L, st == SHD_OK);
    return 1;
}

static int l_mlock_release(lua_State *L)
{
    managed *m = check_mlock(L);
    if (unlock_obj(m) != SHD_OK)
        return luaL_error(L, "cannot release a lock this process does not hold");
    return 0;
}

/* lock:guard() -> a to-be-closed value that releases the lock */
static int l_mlock_guard(lua_State *L)
{
    managed *m = check_mlock(L);
    int st = lock_obj(m, -1);
    if (st != SHD_OK)
        return fail(L, st, "cannot lock the object");
    lua_getiuservalue(L, 1, 2);
    return 1;
}

static int l_mguard_close(lua_State *L)
{
    luaL_checkudata(L, 1, MGUARD_MT);
    lua_getiuservalue(L, 1, 1);
    lua_getiuservalue(L, -1, 1);
    managed *m = lua_touserdata(L, -1);
    if (m != NULL && (m->d || m->l) && unlock_obj(m) != SHD_OK)
        return luaL_error(L, "guard: the lock is not held by this process");
    return 0;
}

static int l_mlock_tostring(lua_State *L)
{
    managed *m = check_mlock(L);
    lua_pushfstring(L, "Lock (of %s)", m->id);
    return 1;
}

/* o:get_lock() -> its lock (made once) */
static int l_get_lock(lua_State *L)
{
    managed *m = test_managed(L, 1);
    luaL_argexpected(L, m != NULL, 1, "managed object");
    check_open(L, m);
    if (lua_getiuservalue(L, 1, 1) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    lua_newuserdatauv(L, 0, 2);
    luaL_setmetatable(L, MLOCK_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    lua_newuserdatauv(L, 0, 1);
    luaL_setmetatable(L, MGUARD_MT);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 1);
    lua_setiuservalue(L, -2, 2);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, 1);
    return 1;
}

/* ---- life, sending ----------------------------------------------------- */

static int l_gc(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    if (m->d)
        shdict_close(m->d);
    if (m->l)
        shlist_close(m->l);
    m->d = NULL;
    m->l = NULL;
    luamp_buf_free(&m->key);
    luamp_buf_free(&m->val);
    return 0;
}

static int l_ref(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    lua_pushstring(L, m->id);
    return 1;
}

static int l_tostring(lua_State *L)
{
    managed *m = lua_touserdata(L, 1);
    if (m->d == NULL && m->l == NULL)
        lua_pushfstring(L, "%s (%s, collected)", kinds[m->kind], m->id);
    else
        lua_pushfstring(L, "%s (%s)", kinds[m->kind], m->id);
    return 1;
}

/* core.manager_describe(obj) -> {kind =, id =, memfd =} | nil (not a
 * managed object) */
static int l_describe(lua_State *L)
{
    managed *m = test_managed(L, 1);
    if (m == NULL || (m->d == NULL && m->l == NULL))
        return 0;
    lua_createtable(L, 0, 3);
    lua_pushstring(L, kinds[m->kind]);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, m->id);
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, m->l ? shlist_fd(m->l) : shdict_fd(m->d));
    lua_setfield(L, -2, "memfd");
    return 1;
}

/* core.manager_attach(desc) -> the object desc describes, on its memfd
 * (which it then owns; an object of that id made already is returned
 * instead, the memfd left to the caller) */
static int l_attach(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "kind");
    int k = luaL_checkoption(L, -1, NULL, kinds);
    lua_getfield(L, 1, "id");
    const char *id = lua_tostring(L, -1);
    lua_getfield(L, 1, "memfd");
    int isint;
    lua_Integer fd = lua_tointegerx(L, -1, &isint);
    if (id == NULL || strlen(id) >= sizeof ((managed *)0)->id || !isint || fd < 0 || fd > INT_MAX)
        return luaL_error(L, "manager_attach: a bad description");
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_OBJECTS_KEY) == LUA_TTABLE
        && lua_getfield(L, -1, id) != LUA_TNIL && test_managed(L, -1))
        return 1;
    void *o = k == LIST ? (void *)shlist_attach((int)fd) : (void *)shdict_attach((int)fd);
    if (o == NULL)
        return luamp_sys_error(L, "cannot attach a shared object");
    push_managed(L, k, k == LIST ? NULL : o, k == LIST ? o : NULL, id);
    return 1;
}

/* core.manager_stats(obj) -> {count, slots, file_bytes, resident_bytes,
 * heap_bytes, used_bytes, repairs}: for tests and debugging */
static int l_stats(lua_State *L)
{
    managed *m = test_managed(L, 1);
    luaL_argexpected(L, m != NULL, 1, "managed object");
    check_open(L, m);
    shd_stats st;
    check(L, m->l ? shlist_stats(m->l, &st) : shdict_stats(m->d, &st), "cannot read the object");
    lua_createtable(L, 0, 7);
    const struct { const char *name; uint64_t v; } fields[] = {
        {"count", st.count}, {"slots", st.slots}, {"file_bytes", st.file_bytes},
        {"resident_bytes", st.resident_bytes}, {"heap_bytes", st.heap_bytes},
        {"used_bytes", st.used_bytes}, {"repairs", st.repairs},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        lua_pushinteger(L, (lua_Integer)fields[i].v);
        lua_setfield(L, -2, fields[i].name);
    }
    return 1;
}

/* ---- registration ----------------------------------------------------------- */

/* Registers metatable mt with meta, and __index: index with the methods
 * (or nil) as its upvalue. */
static void new_type(lua_State *L, const char *mt, const luaL_Reg *meta, lua_CFunction index,
                     const luaL_Reg *methods)
{
    luaL_newmetatable(L, mt);
    luaL_setfuncs(L, meta, 0);
    if (methods) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "methods");
    } else {
        lua_pushnil(L);
    }
    lua_pushcclosure(L, index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void luamp_open_manager(lua_State *L)
{
    static const luaL_Reg dict_methods[] = {
        {"get", l_dict_get}, {"set", l_dict_set}, {"contains", l_dict_contains}, {"pop", l_dict_pop},
        {"setdefault", l_dict_setdefault}, {"update", l_dict_update}, {"keys", l_dict_keys},
        {"values", l_dict_values}, {"items", l_dict_items}, {"totable", l_dict_totable},
        {"clear", l_dict_clear}, {"update_key", l_update_key}, {"get_lock", l_get_lock}, {NULL, NULL}
    };
    static const luaL_Reg list_methods[] = {
        {"get", l_list_get}, {"append", l_list_append}, {"insert", l_list_insert},
        {"remove", l_list_remove}, {"pop", l_list_remove}, {"extend", l_list_extend},
        {"totable", l_list_totable}, {"clear", l_list_clear}, {"update_key", l_update_key},
        {"get_lock", l_get_lock}, {NULL, NULL}
    };
    static const luaL_Reg dict_meta[] = {
        {"__newindex", l_dict_newindex}, {"__len", l_len}, {"__pairs", l_pairs}, {"__gc", l_gc},
        {"__luamp_ref", l_ref}, {"__tostring", l_tostring}, {NULL, NULL}
    };
    static const luaL_Reg list_meta[] = {
        {"__newindex", l_list_newindex}, {"__len", l_len}, {"__pairs", l_pairs}, {"__gc", l_gc},
        {"__luamp_ref", l_ref}, {"__tostring", l_tostring}, {NULL, NULL}
    };
    static const luaL_Reg mlock_methods[] = {
        {"acquire", l_mlock_acquire}, {"release", l_mlock_release}, {"guard", l_mlock_guard},
        {"__tostring", l_mlock_tostring}, {NULL, NULL}
    };
    static const luaL_Reg mguard_meta[] = { {"__close", l_mguard_close}, {NULL, NULL} };
    static const luaL_Reg functions[] = {
        {"manager_new", l_new}, {"manager_describe", l_describe}, {"manager_attach", l_attach},
        {"manager_stats", l_stats}, {NULL, NULL}
    };
    new_type(L, DICT_MT, dict_meta, l_dict_index, dict_methods);
    new_type(L, NS_MT, dict_meta, l_dict_index, NULL);
    new_type(L, LIST_MT, list_meta, l_list_index, list_methods);
    luaL_newmetatable(L, MLOCK_MT);
    luaL_setfuncs(L, mlock_methods, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, MGUARD_MT);
    luaL_setfuncs(L, mguard_meta, 0);
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
}
