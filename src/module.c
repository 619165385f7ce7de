/*
 * module.c - luaopen_luamp: the module's entry point.
 *
 * The C core (codec, processes, queues, pipes) is gathered in one table,
 * `core`, and handed to lua/luamp.lua, compiled into the library, which
 * builds the Python-shaped API (Process, Pool, AsyncResult, errors) on it.
 * Bookkeeping reads better in Lua; copying bytes and waiting stay in C.
 */
#include "luamp.h"
#include "codec.h"
#include "module.h"

#include <lauxlib.h>

extern const char luamp_lua_source[];
extern const size_t luamp_lua_source_len;

int luaopen_luamp(lua_State *L)
{
    if (luaL_loadbufferx(L, luamp_lua_source, luamp_lua_source_len, "=luamp.lua", "t") != LUA_OK)
        return lua_error(L);
    static const luaL_Reg codec_funcs[] = {
        {"encode", luamp_l_encode},
        {"decode", luamp_l_decode},
        {NULL, NULL}
    };
    lua_newtable(L);
    luaL_setfuncs(L, codec_funcs, 0);
    luamp_open_sys(L);
    luamp_open_process(L);
    luamp_open_objects(L);
    luamp_open_interrupt(L);
    luamp_open_queue(L);
    luamp_open_pipe(L);
    luamp_open_sync(L);
    luamp_open_run(L);
    lua_pushliteral(L, LUAMP_VERSION);
    lua_setfield(L, -2, "version");
    lua_call(L, 1, 1);
    return 1;
}
