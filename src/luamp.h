/* SPDX-License-Identifier: MIT */
/*
 * luamp.h - the public C API of luamp.
 *
 * luamp gives Lua 5.4 what Python's multiprocessing gives Python: worker
 * processes with their own Lua VMs, pools, queues and pipes, exchanging
 * MessagePack-encoded values.  This header offers two things:
 *
 *  - luaopen_luamp(), which opens the module in any lua_State (it is what
 *    require "luamp" calls);
 *  - a small host API that does what the luamp binary does, so that an
 *    application embeds the whole host in a few lines:
 *
 *        lua_State *L = luamp_newstate();
 *        if (L == NULL) return 1;
 *        if (luamp_dofile(L, "job.lua", 0, NULL) != LUA_OK)
 *            fprintf(stderr, "%s\n", lua_tostring(L, -1));
 *        luamp_close(L);
 *
 * No function here calls exit(); failures are returned.
 */
#ifndef LUAMP_H
#define LUAMP_H

#include <lua.h>

#define LUAMP_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* Opens the module and leaves its table on the stack (returns 1). */
int luaopen_luamp(lua_State *L);

/* A new state with the standard libraries open and "luamp" in
 * package.preload.  NULL when memory is exhausted.  It allocates its
 * small blocks from an arena of its own (doc/design.md, "Small blocks"),
 * which lua_close (or luamp_close) gives back; an allocator set later
 * with lua_setallocf must pass its calls on to this one (lua_getallocf). */
lua_State *luamp_newstate(void);

/* Default size of a Pool created without a size (the binary's -j N).
 * n <= 0 restores the default, mp.cpu_count().  The value is kept in the
 * state's registry (field "luamp.default_processes"), so states differ. */
void luamp_set_default_processes(lua_State *L, int n);

/* Runs a script file (path NULL: standard input) with `argv` as its
 * arguments.  When argc > 0 the global `arg` becomes argv, as in lua:
 * arg[0] = argv[0] (the script name), arg[1..] the arguments, and any
 * negative indices of the previous `arg` (a host's interpreter and
 * options) kept; the script also receives argv[1..] as `...`.  With argc 0
 * `arg` is left alone and the script gets no arguments.
 * Returns LUA_OK with the script's results on the stack, or an error status
 * (LUA_ERRFILE when the file cannot be read, LUA_ERRSYNTAX, LUA_ERRRUN...)
 * with one string on the stack: the message, and for errors raised while
 * running, a traceback. */
int luamp_dofile(lua_State *L, const char *path, int argc, char **argv);

/* Runs a chunk of Lua source named chunkname (NULL: the code names
 * itself, [string "..."]); same return convention as luamp_dofile. */
int luamp_dostring(lua_State *L, const char *code, const char *chunkname);

/* Turns SIGINT and SIGTERM into a catchable Lua error of kind
 * "interrupted" in the script running in L (the luamp binary does this;
 * an application that handles those signals itself should not).  Once
 * one arrived, luamp_close stops every child at once instead of waiting. */
void luamp_catch_interrupts(lua_State *L);

/* Takes back an interrupt that arrived while no Lua code ran, so that it
 * does not stop the next chunk: a host's prompt calls this when its read
 * failed with EINTR (the user pressed Ctrl-C at the prompt).  Returns the
 * signal taken back (SIGINT or SIGTERM), 0 when there was none.
 * (luamp_close still stops the children at once: an interrupt did
 * arrive.) */
int luamp_clear_interrupt(lua_State *L);

/* Reaps and stops what the scripts left running (non-daemon Processes are
 * joined, daemon ones and open pools terminated) by calling the loaded
 * module's _shutdown, then closes the state.  An error while shutting down
 * is printed on stderr, as "luamp: message". */
void luamp_close(lua_State *L);

#ifdef __cplusplus
}
#endif
#endif
