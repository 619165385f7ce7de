/* SPDX-License-Identifier: MIT */
/*
 * queue.h - the Lua-side queue both queue types share: mp.Queue and
 * mp.JoinableQueue (queue.c) and a Pool's task and result queues (pool.c,
 * metatable LUAMP_POOLQUEUE_MT).  One struct over one shmq, so that a
 * process attaches either from the same three descriptors; two
 * metatables, so that a user's Queue carries only the Queue's methods and
 * a Pool's private messages cannot be read off it.
 */
#ifndef LUAMP_QUEUE_H
#define LUAMP_QUEUE_H

#include "shmq.h"
#include "codec.h"

#include <lua.h>

typedef struct queue {
    shmq *q;
    int closed;          /* this process called close() */
    luamp_buf buf;
    luamp_buf held;      /* a result get_result took but did not return
                            yet, when len > 0 (see q_get_result, pool.c) */
    const char *msg;     /* get_result's message, or a worker's task: in */
    size_t mlen;         /* buf, lent by the ring (lent set), or held in */
    int lent;            /* it with the get lock (holding set; requeue: */
    int holding, requeue; /* leave it there, see push_task) */
    int cross_hosts;     /* a cluster Pool's task queue: refuses objects */
    char id[48];
} queue;

/* Items and tasks from this size up are decoded where they lie in the
 * ring, the queue's get lock held (shmq.h, "Holding"), instead of being
 * copied out first; queue.c says why. */
#define LUAMP_HOLD_FROM ((size_t)64 << 20)

/* The queue at index 1, of type tname.  The calling function has that
 * type's metatable as its upvalue 1: comparing with it is much cheaper
 * than luaL_checkudata's lookup by name, and the parent and each worker
 * call these for every task.  Raises when it was destroyed. */
queue *luamp_check_queue(lua_State *L, const char *tname);

/* core.queue(maxsize, no_pace, joinable) and core.queue_attach(id, memfd,
 * ev_get, ev_put), for the metatable that is the caller's upvalue 1. */
int luamp_queue_new(lua_State *L);
int luamp_queue_attach(lua_State *L);

/* Puts u->buf.  Raises on an interrupt or a system error; returns
 * SHMQ_OK, SHMQ_TIMEOUT, or SHMQ_ERROR with errno for a message that is
 * too big (shmq_too_big). */
int luamp_queue_put_buf(lua_State *L, queue *u, double deadline, shmq_ticket *t);

/* Gives back this process's memory and descriptors of the queue. */
void luamp_queue_free(queue *u);

/* Stop the collector while a message is read where it lies, the get lock
 * held: no finalizer then runs meanwhile, to call the queue again (or
 * destroy it).  off returns whether it was running, for on. */
int luamp_collector_off(lua_State *L);
void luamp_collector_on(lua_State *L, int was_running);

#endif
