/* SPDX-License-Identifier: MIT */
/*
 * module.h - the parts of the core table that module.c gathers: each
 * file's luamp_open_* registers its functions and types into the table
 * on top of the stack.  The metatable names are registry keys, listed
 * with the others in registry.h.
 */
#ifndef LUAMP_MODULE_H
#define LUAMP_MODULE_H

#include <lua.h>

#include "registry.h"      /* the metatable names */

/* sys.c: now, sleep, isatty, table, default_processes. */
void luamp_open_sys(lua_State *L);
/* process.c: fork, spawn, child handles, wait, getpid, cpu_count, _exit. */
void luamp_open_process(lua_State *L);
/* objects.c: object_count and the object socket. */
void luamp_open_objects(lua_State *L);
/* interrupt.c: interrupted, ignore_sigint. */
void luamp_open_interrupt(lua_State *L);
/* queue.c: Queue, JoinableQueue, queue_fds (queue.h: the struct it shares with pool.c). */
void luamp_open_queue(lua_State *L);
/* pool.c: a Pool's task and result queues and messages, apply_fast. */
void luamp_open_pool(lua_State *L);
/* pipe.c: Pipe. */
void luamp_open_pipe(lua_State *L);
/* sync.c: Lock, RLock, Semaphore, Event, Condition, Barrier, Value, Array. */
void luamp_open_sync(lua_State *L);
/* manager.c: the dict, list and Namespace of mp.Manager. */
void luamp_open_manager(lua_State *L);
/* shared_memory.c: SharedMemory (shm_open). */
void luamp_open_shared_memory(lua_State *L);
/* run.c: run, log_write. */
void luamp_open_run(lua_State *L);

#endif
