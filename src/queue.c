/* SPDX-License-Identifier: MIT */
/*
 * queue.c - mp.Queue and mp.JoinableQueue, the Lua face of shmq.
 *
 * Values are encoded in the caller (an unsendable item raises there, it is
 * never dropped later) and decoded in the getter, each process with its
 * own scratch buffers.  A Queue made before a fork is usable in the child:
 * the shared memory and eventfds are inherited.  Pools use the same queue
 * (queue.h) for their task and result queues, but as a type of their own
 * with their own messages (pool.c): a user's Queue has only the methods
 * below, so that nothing can take a Pool's message off it, or an item off
 * it as one.  This file also keeps what both types share: making and
 * attaching a queue, putting a message, and core.queue_fds.
 *
 * A message is copied out of the ring into the getter's scratch buffer
 * and decoded from there, outside the queue's locks, except a big one:
 * the Pool's parent decodes results of 64 KiB and more where they lie
 * (lent: it is their only consumer, see pool.c), and any getter of an
 * item or a task over 64 MiB holds it in the ring while it decodes it
 * (LUAMP_HOLD_FROM, queue.h): the copy would go to fresh memory and cost as
 * much as the decoding.  (A worker holds a task that is mostly big
 * strings from 64 KiB: pool.c, TASK_FLAT.)  A 300 MiB string now goes through a Queue with
 * one copy on each side, from the Lua string into the ring and from the
 * ring into the new Lua string.
 */
#include "queue.h"
#include "sys.h"
#include "interrupt.h"
#include "module.h"
#include "objects.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

queue *luamp_check_queue(lua_State *L, const char *tname)
{
    queue *u = lua_touserdata(L, 1);
    int ok = u != NULL && lua_getmetatable(L, 1);
    if (ok) {
        ok = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
    }
    if (!ok)
        u = luaL_checkudata(L, 1, tname);   /* raises */
    if (u->q == NULL)
        luaL_error(L, "the Queue was destroyed");
    return u;
}

/* A Queue or a JoinableQueue (their two metatables share the functions
 * but for task_done and join). */
static queue *check_queue(lua_State *L)
{
    queue *u = lua_touserdata(L, 1);
    if (u != NULL && lua_getmetatable(L, 1)) {
        int ours = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
        if (ours && u->q != NULL)
            return u;
    }
    if (luaL_testudata(L, 1, LUAMP_JQUEUE_MT) != NULL)
        return luamp_check_queue(L, LUAMP_JQUEUE_MT);
    return luamp_check_queue(L, LUAMP_QUEUE_MT);
}

static queue *open_queue(lua_State *L, const char *op)
{
    queue *u = check_queue(L);
    if (u->closed)
        luamp_raise(L, "closed", "cannot %s: the Queue was closed in this process", op);
    return u;
}

/* A new queue userdata with two user values (a PoolQueue's share hook,
 * and a worker's task record: pool.c). */
static queue *push_queue(lua_State *L)
{
    queue *u = lua_newuserdatauv(L, sizeof *u, 2);
    memset(u, 0, sizeof *u);
    luamp_buf_init(&u->buf);
    u->buf.span_from = LUAMP_SPAN_FROM;  /* big strings go straight into the ring */
    luamp_buf_init(&u->held);
    return u;
}

/* Gives the new queue on top its metatable: the caller's upvalue 1, or
 * its upvalue 2 for a joinable queue when it has one (core.queue's and
 * core.queue_attach's: Queue, JoinableQueue). */
static void set_type(lua_State *L, queue *u)
{
    int k = 1;
    if (shmq_is_joinable(u->q)) {
        lua_pushvalue(L, lua_upvalueindex(2));
        k = lua_istable(L, -1) ? 2 : 1;
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(k));
    lua_setmetatable(L, -2);
}

int luamp_queue_new(lua_State *L)
{
    lua_Integer maxsize = luaL_optinteger(L, 1, 0);
    luaL_argcheck(L, maxsize >= 0, 1, "maxsize must be 0 or positive");
    int no_pace = lua_toboolean(L, 2);   /* core.queue(maxsize, true): see shmq_no_pace */
    queue *u = push_queue(L);
    u->q = shmq_create((uint64_t)maxsize);
    if (u->q == NULL)
        return luamp_sys_error(L, "cannot create a Queue");
    if (no_pace)
        shmq_no_pace(u->q);
    if (lua_toboolean(L, 3))             /* core.queue(maxsize, false, true) */
        shmq_joinable(u->q);
    set_type(L, u);
    luamp_new_object_id(u->id, sizeof u->id, "queue");
    luamp_register_object(L, -1, u->id);
    return 1;
}

/* The queue `id` of the process that spawned this one, from the
 * descriptors it passed. */
int luamp_queue_attach(lua_State *L)
{
    size_t idlen;
    const char *id = luaL_checklstring(L, 1, &idlen);
    int fds[3];
    for (int i = 0; i < 3; i++)
        fds[i] = (int)luaL_checkinteger(L, 2 + i);
    luaL_argcheck(L, idlen < sizeof ((queue *)0)->id, 1, "id too long");
    queue *u = push_queue(L);
    u->q = shmq_attach(fds[0], fds[1], fds[2]);
    if (u->q == NULL)
        return luamp_sys_error(L, "cannot attach a Queue");
    set_type(L, u);
    memcpy(u->id, id, idlen + 1);
    luamp_register_object(L, -1, u->id);
    return 1;
}

/* core.queue_fds(q) -> memfd, ev_get, ev_put: what a spawned process
 * needs to attach q, a Queue or a PoolQueue */
static int l_queue_fds(lua_State *L)
{
    queue *u = luaL_testudata(L, 1, LUAMP_QUEUE_MT);
    if (u == NULL)
        u = luaL_testudata(L, 1, LUAMP_JQUEUE_MT);
    if (u == NULL)
        u = luaL_testudata(L, 1, LUAMP_POOLQUEUE_MT);
    luaL_argexpected(L, u != NULL, 1, "Queue");
    if (u->q == NULL)
        return luaL_error(L, "the Queue was destroyed");
    int fds[3];
    shmq_fds(u->q, fds);
    for (int i = 0; i < 3; i++)
        lua_pushinteger(L, fds[i]);
    return 3;
}

void luamp_queue_free(queue *u)
{
    shmq_destroy(u->q);
    u->q = NULL;
    luamp_buf_free(&u->buf);
    luamp_buf_init(&u->buf);
    luamp_buf_free(&u->held);
    luamp_buf_init(&u->held);
}
/* Encodes the item at index 2 into the scratch buffer, or raises. */
static void encode_item(lua_State *L, queue *u, const char *fname)
{
    if (lua_isnoneornil(L, 2))
        luaL_error(L, "bad argument #1 to '%s' (nil cannot be put on a queue)", fname);
    luamp_buf_reset(&u->buf);
    if (luamp_encode(L, 2, "item", &u->buf) != 0)
        luamp_raise(L, "serialize", "%s", lua_tostring(L, -1));
}

int luamp_queue_put_buf(lua_State *L, queue *u, double deadline, shmq_ticket *t)
{
    int r = shmq_put_buf(u->q, &u->buf, deadline, t);
    luamp_buf_trim(&u->buf);
    if (r == SHMQ_INTERRUPTED)
        luamp_raise_interrupt(L);
    if (r == SHMQ_ERROR && !shmq_too_big(errno))
        return luamp_sys_error(L, "Queue:put");
    return r;
}

/* -> true, sequence number | false (still full at the deadline) */
static int do_put(lua_State *L, queue *u, double deadline)
{
    shmq_ticket t;
    int r = luamp_queue_put_buf(L, u, deadline, &t);
    if (r == SHMQ_ERROR && errno == EMSGSIZE)
        return luamp_raise(L, "serialize", "cannot put an item larger than " LUAMP_MAX_MESSAGE_TEXT " on a queue");
    if (r == SHMQ_ERROR)
        return luamp_sys_error(L, "Queue:put");
    lua_pushboolean(L, r == SHMQ_OK);
    if (r != SHMQ_OK)
        return 1;
    lua_pushinteger(L, (lua_Integer)t.seq);
    return 2;
}

static int q_put(lua_State *L)
{
    queue *u = open_queue(L, "put");
    double deadline = luamp_opt_deadline(L, 3);
    encode_item(L, u, "put");
    return do_put(L, u, deadline);
}

static int q_put_nowait(lua_State *L)
{
    queue *u = open_queue(L, "put");
    encode_item(L, u, "put_nowait");
    return do_put(L, u, 0);
}

/* Pushes the message in the scratch buffer as a value. */
static int push_item(lua_State *L, queue *u)
{
    int r = luamp_decode(L, u->buf.data, u->buf.len, 0);
    luamp_collect_for(L, u->buf.len);
    luamp_buf_trim(&u->buf);
    if (r != 0)
        return lua_error(L);
    return 1;
}

/* LUAMP_HOLD_FROM (queue.h): items from this size up are decoded where
 * they lie in the ring, the queue's get lock held (shmq.h, "Holding"), instead of being copied out
 * first.  The scratch buffer keeps 64 MiB (luamp_buf_trim), so a copy of
 * a smaller item goes to memory this process has, and costs a fraction
 * of decoding it, which other consumers of the queue do meanwhile; a
 * bigger one went to fresh memory, a page fault per 4 KiB, and cost as
 * much as the decoding that follows (a 300 MiB string: about 170 ms of
 * the getter's 400). */

/* Stops the collector while a message is read where it lies, the get
 * lock held: no finalizer then runs meanwhile, to call the queue again
 * (or destroy it).  Whether it was running (for collector_on). */
int luamp_collector_off(lua_State *L)
{
    int running = lua_gc(L, LUA_GCISRUNNING);
    if (running)
        lua_gc(L, LUA_GCSTOP);
    return running;
}

void luamp_collector_on(lua_State *L, int was_running)
{
    if (was_running)
        lua_gc(L, LUA_GCRESTART);
}

/* Pushes the item held in the ring (w), and takes it whatever decoding
 * says; raises what decoding says. */
static int push_held(lua_State *L, queue *u, const shmq_wait *w)
{
    int gc = luamp_collector_off(L);
    int r = luamp_decode_protected(L, w->lent, w->lent_len, 0);
    shmq_end_hold(u->q, 1);
    luamp_collector_on(L, gc);
    if (r != 0)
        return lua_error(L);
    luamp_collect_for(L, w->lent_len);
    return 1;
}

static int do_get(lua_State *L, queue *u, double deadline, const char *why_empty)
{
    shmq_wait w = { .claim = -1, .lend_from = LUAMP_HOLD_FROM, .hold = 1 };
    int r = shmq_get(u->q, &u->buf, deadline, &w);
    switch (r) {
    case SHMQ_OK:
        return w.lent ? push_held(L, u, &w) : push_item(L, u);
    case SHMQ_TIMEOUT:
        lua_pushnil(L);
        lua_pushstring(L, why_empty);
        return 2;
    case SHMQ_SHUTDOWN:
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    case SHMQ_INTERRUPTED:
        luamp_raise_interrupt(L);
        /* fallthrough */
    default:
        return luamp_sys_error(L, "Queue:get");
    }
}

static int q_get(lua_State *L)
{
    queue *u = open_queue(L, "get");
    return do_get(L, u, luamp_opt_deadline(L, 2), "timeout");
}

static int q_get_nowait(lua_State *L)
{
    queue *u = open_queue(L, "get");
    return do_get(L, u, 0, "empty");
}

static int q_gc(lua_State *L)
{
    luamp_queue_free(lua_touserdata(L, 1));   /* (only ever a queue's) */
    return 0;
}

static int q_qsize(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)shmq_count(check_queue(L)->q));
    return 1;
}

static int q_empty(lua_State *L)
{
    lua_pushboolean(L, shmq_count(check_queue(L)->q) == 0);
    return 1;
}

static int q_full(lua_State *L)
{
    lua_pushboolean(L, shmq_full(check_queue(L)->q));
    return 1;
}

static int q_close(lua_State *L)
{
    check_queue(L)->closed = 1;
    return 0;
}

/* The queue at index 1, which must be a JoinableQueue, for fname. */
static queue *check_joinable(lua_State *L, const char *fname)
{
    queue *u = check_queue(L);
    if (!shmq_is_joinable(u->q))
        luaL_error(L, "%s is only for a JoinableQueue", fname);
    return u;
}

/* jq:task_done(): one item taken earlier is dealt with */
static int q_task_done(lua_State *L)
{
    queue *u = check_joinable(L, "task_done");
    int r = shmq_task_done(u->q);
    if (r < 0)
        return luamp_sys_error(L, "JoinableQueue:task_done");
    if (r > 0)
        return luaL_error(L, "task_done() called more times than items were put");
    return 0;
}

/* jq:join([timeout]) -> true when every item put is done; false at the timeout */
static int q_join(lua_State *L)
{
    queue *u = check_joinable(L, "join");
    int r = shmq_join(u->q, luamp_opt_deadline(L, 2));
    if (r == SHMQ_INTERRUPTED)
        luamp_raise_interrupt(L);
    lua_pushboolean(L, r == SHMQ_OK);
    return 1;
}

static int q_ref(lua_State *L)
{
    lua_pushstring(L, check_queue(L)->id);
    return 1;
}

static int q_tostring(lua_State *L)
{
    queue *u = check_queue(L);
    lua_pushfstring(L, "%s (%s)", shmq_is_joinable(u->q) ? "JoinableQueue" : "Queue", u->id);
    return 1;
}

/* Pushes the metatable tname with the methods, each function having it
 * as its upvalue 1 (see luamp_check_queue). */
/* A queue type: the metatable tname, whose __index holds `methods` and
 * `more` (NULL: none), each method with the metatable as its upvalue. */
static void new_type(lua_State *L, const char *tname, const luaL_Reg *methods, const luaL_Reg *more,
                     int n)
{
    static const luaL_Reg meta[] = {
        {"__gc", q_gc},
        {"__luamp_ref", q_ref},
        {"__tostring", q_tostring},
        {NULL, NULL}
    };
    if (luaL_newmetatable(L, tname)) {
        lua_pushvalue(L, -1);
        luaL_setfuncs(L, meta, 1);
        lua_createtable(L, 0, n);
        lua_pushvalue(L, -2);
        luaL_setfuncs(L, methods, 1);
        if (more != NULL) {
            lua_pushvalue(L, -2);
            luaL_setfuncs(L, more, 1);
        }
        lua_setfield(L, -2, "__index");
    }
}

void luamp_open_queue(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"put", q_put},
        {"put_nowait", q_put_nowait},
        {"get", q_get},
        {"get_nowait", q_get_nowait},
        {"qsize", q_qsize},
        {"empty", q_empty},
        {"full", q_full},
        {"close", q_close},
        {NULL, NULL}
    };
    static const luaL_Reg joinable[] = {    /* a JoinableQueue's, beside those */
        {"task_done", q_task_done},
        {"join", q_join},
        {NULL, NULL}
    };
    new_type(L, LUAMP_QUEUE_MT, methods, NULL, 8);
    new_type(L, LUAMP_JQUEUE_MT, methods, joinable, 10);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, luamp_queue_new, 2);
    lua_setfield(L, -4, "queue");
    lua_pushcclosure(L, luamp_queue_attach, 2);
    lua_setfield(L, -2, "queue_attach");
    lua_pushcfunction(L, l_queue_fds);
    lua_setfield(L, -2, "queue_fds");
}
