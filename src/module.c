/* SPDX-License-Identifier: MIT */
/*
 * module.c - luaopen_luamp: the module's entry point.
 *
 * The C core (codec, processes, queues, pipes) is gathered in one table,
 * `core`, and handed to the Lua parts of the module (lua/luamp/NAME.lua),
 * compiled into the library, which build the Python-shaped API (Process,
 * Pool, AsyncResult, errors) on it.  Bookkeeping reads better in Lua;
 * copying bytes and waiting stay in C.
 *
 * The parts are embedded (tools/bin2c makes src/luamp_lua.c), never
 * installed as files: a stock lua5.4 gets them only through luamp.so, so
 * they always match the C core they run on.  luaopen_luamp runs init.lua
 * with the core and load_part, which compiles any other part; init.lua
 * explains how the parts find each other.
 */
#include "luamp.h"
#include "codec.h"
#include "module.h"

#include <lauxlib.h>
#include <string.h>

/* src/luamp_lua.c: {name, source, length} per part, then a NULL name */
struct luamp_lua_part { const char *name; const char *source; size_t len; };
extern const struct luamp_lua_part luamp_lua_parts[];

/* load_part(name) -> the chunk of lua/luamp/NAME.lua, compiled under the
 * chunk name "=luamp/NAME.lua": errors and tracebacks say
 * `luamp/pool.lua:123:`, and "=" says that no file of that name is there
 * to be opened. */
static int load_part(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    for (const struct luamp_lua_part *p = luamp_lua_parts; p->name != NULL; p++) {
        if (strcmp(p->name, name) == 0) {
            const char *chunkname = lua_pushfstring(L, "=luamp/%s.lua", name);
            if (luaL_loadbufferx(L, p->source, p->len, chunkname, "t") != LUA_OK)
                return lua_error(L);
            return 1;
        }
    }
    return luaL_error(L, "luamp: the library has no part named '%s'", name);
}

/* core.registry_keys: registry.h's keys the Lua layer uses, by name. */
static void push_registry_keys(lua_State *L)
{
    static const char *const keys[][2] = {
        {"objects", LUAMP_OBJECTS_KEY},
        {"collect", LUAMP_COLLECT_KEY},
        {"raise", LUAMP_RAISE_KEY},
        {"fetch_objects", LUAMP_FETCH_KEY},
        {"cluster", LUAMP_CLUSTER_KEY},
    };
    lua_createtable(L, 0, sizeof keys / sizeof *keys);
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        lua_pushstring(L, keys[i][1]);
        lua_setfield(L, -2, keys[i][0]);
    }
}

int luaopen_luamp(lua_State *L)
{
    static const luaL_Reg codec_funcs[] = {
        {"encode", luamp_l_encode},
        {"decode", luamp_l_decode},
        {NULL, NULL}
    };
    lua_pushcfunction(L, load_part);
    lua_pushliteral(L, "init");
    lua_call(L, 1, 1);
    lua_newtable(L);
    luaL_setfuncs(L, codec_funcs, 0);
    push_registry_keys(L);
    lua_setfield(L, -2, "registry_keys");
    luamp_open_sys(L);
    luamp_open_process(L);
    luamp_open_objects(L);
    luamp_open_interrupt(L);
    luamp_open_queue(L);
    luamp_open_pool(L);
    luamp_open_pipe(L);
    luamp_open_sync(L);
    luamp_open_manager(L);
    luamp_open_shared_memory(L);
    luamp_open_run(L);
    lua_pushliteral(L, LUAMP_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushcfunction(L, load_part);
    lua_call(L, 2, 1);
    return 1;
}
