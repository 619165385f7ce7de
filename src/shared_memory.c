/* SPDX-License-Identifier: MIT */
/*
 * shared_memory.c - mp.SharedMemory: Lua bindings over shmem.c.
 *
 * A SharedMemory is a named block in /dev/shm (shmem.c says why a name,
 * not a memfd): any process can open it by its name, Python's
 * multiprocessing.shared_memory included, and it stays until the name is
 * unlinked.  Offsets are 1-based and inclusive as string.sub's, so
 * shm:write(1, s) then shm:read(1, #s) gives s back; a read or write
 * that does not lie within the block raises rather than being cut.
 *
 * Who unlinks.  The process that made the block owns its name and
 * unlinks it when the view is closed or collected, or when the Lua
 * state closes; keep() (or the option unlink = false) gives that up, for
 * a block meant to outlive its maker.  A forked child inherits the view
 * but not the ownership (the view records its maker's pid), so a child
 * that collects it does not take the block from its parent.  A process
 * killed by SIGKILL cannot unlink: its block stays in /dev/shm, as
 * Python's does without its resource tracker.
 *
 * A view travels as a Lock does, by id to a forked child; to any other
 * process as its name (shm_describe), which shm_attach opens there, as
 * Python pickles a SharedMemory.  Such a view owns nothing.
 */
#include "registry.h"
#include "shmem.h"
#include "sys.h"
#include "module.h"
#include "objects.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#define SHM_MT "luamp.SharedMemory"

typedef struct shmud {
    shmem *m;       /* NULL once closed */
    pid_t maker;    /* the process that may unlink the name */
    char id[48];    /* what it travels as (__luamp_ref) */
} shmud;

static shmud *check_shm(lua_State *L)
{
    shmud *u = luaL_checkudata(L, 1, SHM_MT);
    if (u->m == NULL)
        luaL_error(L, "the SharedMemory is closed");
    return u;
}

/* core.shm_open(name | nil, create, size) -> a SharedMemory: create
 * makes a new block (refusing a name in use), else the block of that
 * name is opened whole */
static int l_open(lua_State *L)
{
    const char *name = luaL_optstring(L, 1, NULL);
    int create = lua_toboolean(L, 2);
    lua_Integer size = luaL_optinteger(L, 3, 0);
    if (name && shmem_check_name(name) != 0)
        return luamp_sys_error(L, lua_pushfstring(L, "bad SharedMemory name '%s'", name));
    if (create && size < 1)
        return luaL_error(L, "a new SharedMemory needs a size of 1 byte or more, got %I", size);
    shmud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->m = NULL;
    luaL_setmetatable(L, SHM_MT);
    u->m = shmem_open(name, create ? SHMEM_CREATE | SHMEM_EXCL : 0, (size_t)size);
    if (u->m == NULL) {
        if (create)
            return luamp_sys_error(L, name ? lua_pushfstring(L, "cannot make SharedMemory '%s'", name)
                                          : "cannot make a SharedMemory");
        return luamp_sys_error(L, lua_pushfstring(L, "cannot open SharedMemory '%s'", name ? name : "?"));
    }
    u->maker = create ? getpid() : 0;
    luamp_new_object_id(u->id, sizeof u->id, "shm");
    luamp_register_object(L, -1, u->id);
    return 1;
}

/* core.shm_describe(obj) -> {name =, id =} | nil: what a process that
 * did not inherit the view needs to open the block (by its name) */
static int l_describe(lua_State *L)
{
    shmud *u = luaL_testudata(L, 1, SHM_MT);
    if (u == NULL || u->m == NULL)
        return 0;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, shmem_name(u->m));
    lua_setfield(L, -2, "name");
    lua_pushstring(L, u->id);
    lua_setfield(L, -2, "id");
    return 1;
}

/* core.shm_attach(desc) -> a view of the block desc names, under the
 * same id, which does not own the name (a view of that id made already
 * is returned instead) */
static int l_attach(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_getfield(L, 1, "name");
    lua_getfield(L, 1, "id");
    const char *name = lua_tostring(L, 2), *id = lua_tostring(L, 3);
    if (name == NULL || id == NULL || strlen(id) >= sizeof ((shmud *)0)->id)
        return luaL_error(L, "shm_attach: a bad description");
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_OBJECTS_KEY) == LUA_TTABLE
        && lua_getfield(L, -1, id) != LUA_TNIL && luaL_testudata(L, -1, SHM_MT))
        return 1;
    shmud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->m = NULL;
    luaL_setmetatable(L, SHM_MT);
    u->m = shmem_open(name, 0, 0);
    if (u->m == NULL)
        return luamp_sys_error(L, lua_pushfstring(L, "cannot open SharedMemory '%s'", name));
    u->maker = 0;
    snprintf(u->id, sizeof u->id, "%s", id);
    luamp_register_object(L, -1, u->id);
    return 1;
}

static int l_ref(lua_State *L)
{
    shmud *u = luaL_checkudata(L, 1, SHM_MT);
    lua_pushstring(L, u->id);
    return 1;
}

/* The 0-based offset of argument 2 (1-based) for n bytes, checked to lie
 * within the block. */
static size_t range(lua_State *L, shmud *u, size_t n, const char *what)
{
    lua_Integer off = luaL_checkinteger(L, 2);
    size_t size = shmem_size(u->m);
    luaL_argcheck(L, off >= 1, 2, "offset must be 1 or more");
    if ((size_t)(off - 1) > size || n > size - (size_t)(off - 1))
        luaL_error(L, "cannot %s %I bytes at offset %I: the SharedMemory has %I", what, (lua_Integer)n, off,
                   (lua_Integer)size);
    return (size_t)(off - 1);
}

/* shm:read(offset, len) -> string */
static int l_read(lua_State *L)
{
    shmud *u = check_shm(L);
    lua_Integer n = luaL_checkinteger(L, 3);
    luaL_argcheck(L, n >= 0, 3, "length must be 0 or more");
    size_t off = range(L, u, (size_t)n, "read");
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)n);
    shmem_read(u->m, off, p, (size_t)n);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* shm:write(offset, s) */
static int l_write(lua_State *L)
{
    shmud *u = check_shm(L);
    size_t n;
    const char *s = luaL_checklstring(L, 3, &n);
    size_t off = range(L, u, n, "write");
    shmem_write(u->m, off, s, n);
    return 0;
}

/* Unlinks the name if this process made the block and still owns it. */
static void unlink_owned(shmud *u)
{
    if (u->maker == getpid() && shmem_owner(u->m)) {
        shmem_unlink(u->m);
        shmem_set_owner(u->m, 0);
    }
}

/* shm:close(): unmaps, unlinking the name if this process owns it */
static int l_close(lua_State *L)
{
    shmud *u = luaL_checkudata(L, 1, SHM_MT);
    if (u->m) {
        unlink_owned(u);
        shmem_close(u->m);
        u->m = NULL;
    }
    return 0;
}

/* shm:unlink(): removes the name now (the mapping stays until close) */
static int l_unlink(lua_State *L)
{
    shmud *u = check_shm(L);
    if (shmem_unlink(u->m) != 0)
        return luamp_sys_error(L, lua_pushfstring(L, "cannot unlink SharedMemory '%s'", shmem_name(u->m)));
    shmem_set_owner(u->m, 0);
    return 0;
}

/* shm:keep(): the name outlives this view (no unlink at close) */
static int l_keep(lua_State *L)
{
    shmem_set_owner(check_shm(L)->m, 0);
    lua_settop(L, 1);
    return 1;
}

/* __index: the fields size and name, then the methods (upvalue 1) */
static int l_index(lua_State *L)
{
    shmud *u = luaL_checkudata(L, 1, SHM_MT);
    const char *k = lua_tostring(L, 2);
    if (k && u->m && strcmp(k, "size") == 0) {
        lua_pushinteger(L, (lua_Integer)shmem_size(u->m));
    } else if (k && u->m && strcmp(k, "name") == 0) {
        lua_pushstring(L, shmem_name(u->m));
    } else {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(1));
    }
    return 1;
}

static int l_tostring(lua_State *L)
{
    shmud *u = luaL_checkudata(L, 1, SHM_MT);
    if (u->m == NULL)
        lua_pushliteral(L, "SharedMemory (closed)");
    else
        lua_pushfstring(L, "SharedMemory ('%s', %I bytes)", shmem_name(u->m), (lua_Integer)shmem_size(u->m));
    return 1;
}

void luamp_open_shared_memory(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"read", l_read}, {"write", l_write}, {"close", l_close}, {"unlink", l_unlink}, {"keep", l_keep},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_close}, {"__close", l_close}, {"__tostring", l_tostring}, {"__luamp_ref", l_ref},
        {NULL, NULL}
    };
    luaL_newmetatable(L, SHM_MT);
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_pushcclosure(L, l_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    static const luaL_Reg functions[] = {
        {"shm_open", l_open}, {"shm_describe", l_describe}, {"shm_attach", l_attach}, {NULL, NULL}
    };
    luaL_setfuncs(L, functions, 0);
}
