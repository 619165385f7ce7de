/* SPDX-License-Identifier: MIT */
/*
 * pool.c - a Pool's task and result queues (PoolQueue): the messages a
 * Pool's parent and workers exchange, and the C fast paths over them.
 *
 * A PoolQueue is the queue of queue.h, the same shared memory and
 * eventfds as a user's Queue, with a metatable of its own: only a Pool
 * (pool.lua, worker.lua, executor.lua) reaches these methods, and a
 * user's Queue cannot be read as a Pool's queue or the other way round.
 * Its messages are put_task, apply_task, get_task, put_result,
 * put_apply, get_result below, and a worker's loop, serve; get_result
 * also wakes up when a worker dies and settles the results that need no
 * Lua.  apply_fast is Pool:apply_async's common case.
 *
 * The parent decodes results of 64 KiB and more where they lie in the
 * ring (lent: it is their only consumer, LEND_FROM), and a worker holds a
 * task in the ring while it decodes it when that costs no more than
 * copying it out: mostly big strings (TASK_FLAT) or over 64 MiB
 * (LUAMP_HOLD_FROM).
 *
 * The fast paths read and write the Pool's private Lua fields by name
 * (af_names, job_keys, result_fields): core.pool_fields lists them and
 * core.counters counts the fast paths taken, so that tests/fast_paths.lua
 * notices when a rename in lua/luamp/ leaves one behind.
 */
#include "queue.h"
#include "sys.h"
#include "interrupt.h"
#include "module.h"
#include "objects.h"
#include "process.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

static queue *check_queue(lua_State *L)
{
    return luamp_check_queue(L, LUAMP_POOLQUEUE_MT);
}

/* How many times this process took each fast path (for tests: a field
 * renamed on the Lua side must not silently send everything down the
 * slow path).  apply_fast and settle_* count in the parent, serve_* and
 * held_tasks in a worker, whose counts start at its parent's at the
 * fork.  One task or one result each. */
static struct {
    lua_Integer apply_fast, serve_apply, serve_map, settle_apply, settle_map;
    lua_Integer held_tasks;     /* tasks a worker decoded where they lie (TASK_FLAT) */
} counters;

/* core.counters() -> {apply_fast = n, serve_apply = n, ...}: internal */
static int l_counters(lua_State *L)
{
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, counters.apply_fast);
    lua_setfield(L, -2, "apply_fast");
    lua_pushinteger(L, counters.serve_apply);
    lua_setfield(L, -2, "serve_apply");
    lua_pushinteger(L, counters.serve_map);
    lua_setfield(L, -2, "serve_map");
    lua_pushinteger(L, counters.settle_apply);
    lua_setfield(L, -2, "settle_apply");
    lua_pushinteger(L, counters.settle_map);
    lua_setfield(L, -2, "settle_map");
    lua_pushinteger(L, counters.held_tasks);
    lua_setfield(L, -2, "held_tasks");
    return 1;
}

/* Sets the queue's user value n to argument 2, of type t. */
static int set_user_value(lua_State *L, int n, int t)
{
    check_queue(L);
    luaL_checktype(L, 2, t);
    lua_settop(L, 2);
    lua_setiuservalue(L, 1, n);
    return 0;
}

/* q:task_record(t): the table get_task and serve fill with the task they
 * return (jobid, fid, f, kind, start, items, count, seq): one table per
 * worker, rather than nine values a task. */
static int q_task_record(lua_State *L)
{
    return set_user_value(L, 2, LUA_TTABLE);
}

/* q:_on_objects(fn): fn(objects) is called before a task naming luamp
 * objects is put (see share_objects) */
static int q_on_objects(lua_State *L)
{
    return set_user_value(L, 1, LUA_TFUNCTION);
}

/* q:_cross_hosts(): the queue of a cluster Pool, whose tasks may run on
 * another host: the luamp objects a task refers to are refused, saying
 * why (cluster.lua refuses them in a Pool's function and initializer with
 * the same words: core.cross_hosts_why). */
#define CROSS_HOSTS_WHY "the Pool spans the hosts of an MPI job; send what the object holds"
static int q_cross_hosts(lua_State *L)
{
    check_queue(L)->cross_hosts = 1;
    return 0;
}

/* The slot argument at `idx`, or -1. */
static int opt_slot(lua_State *L, int idx)
{
    lua_Integer slot = luaL_optinteger(L, idx, -1);
    luaL_argcheck(L, slot >= -1 && slot < SHMQ_MAX_CLAIMS, idx, "claim slot out of range");
    return (int)slot;
}

/*
 * Pool messages.  A Pool's task and result messages are built and taken
 * apart here rather than as Lua tables: a fixed binary header (host byte
 * order: both ends are forks of one process) followed by encoded values.
 * This keeps the per-task cost of the parent, which serves every worker,
 * to one C call each way.
 *
 * task:   header, the function's encoding (flen bytes), the items.
 * result: header, the results (rlen bytes, none: nil), the errors (elen
 *         bytes, none: nil).  jobid 0: a worker's initializer failed (the
 *         errors hold its Error); jobid -2: a node supervisor says task
 *         `seq` failed (the errors hold {kind, message, pid, host,
 *         exitcode}: cluster.lua); jobid -1: a worker could not decode task
 *         `seq` (the errors hold why).
 */
struct task_hdr {
    int64_t jobid, fid, start, count;
    uint64_t flen;
    uint32_t kind;
    /* A cluster's task (cluster.c): origin, the sequence number rank 0's
     * task queue gave it (0 on one host), is what its result names; and
     * the seconds it may run (0: no limit), which a node supervisor
     * enforces (rank 0's pool keeps its own books of local tasks). */
    int64_t origin;
    double timeout;
};

/* A task's kind (task_kinds) is the low byte of h.kind; the bits above
 * it are flags.  TASK_FLAT: the message is mostly big strings (spans, of
 * LUAMP_SPAN_FROM bytes and more), so decoding it is about one copy of
 * its bytes, no more than copying it out of the ring first would cost:
 * a worker decodes it where it lies (hold_task) and spares that copy.
 * (A message of many small values decodes far slower than it copies: it
 * is copied out, so that the other workers need not wait meanwhile.) */
#define TASK_KIND_MASK 0xffu
#define TASK_FLAT 0x100u
/* Tasks from this size up are looked at for TASK_FLAT. */
#define FLAT_FROM ((size_t)64 << 10)

struct result_hdr {
    int64_t jobid, start, count, seq, nres;
    double elapsed;
    int64_t pid;
    uint64_t rlen, elen;
    uint32_t apply;      /* put by put_apply */
};

static const char *const task_kinds[] = { "apply", "map", "star", NULL };

/* Puts u->buf, waiting as long as it takes.  Returns 0, or -1 with a
 * message pushed when it is too large, for the limit or for the memory
 * the queue could get (so that a worker whose result does not fit fails
 * that task, as one that cannot be encoded does, and goes on); raises on
 * other failures. */
static int put_msg(lua_State *L, queue *u, const char *what, shmq_ticket *t)
{
    lua_Integer mib = (lua_Integer)(luamp_buf_size(&u->buf) >> 20);
    if (luamp_queue_put_buf(L, u, -1, t) == SHMQ_OK)
        return 0;
    if (errno == EMSGSIZE)
        lua_pushfstring(L, "cannot send %s: larger than " LUAMP_MAX_MESSAGE_TEXT, what);
    else
        lua_pushfstring(L, "cannot send %s: no memory for a message of %I MiB (%s)", what, mib, strerror(errno));
    return -1;
}

/* The task just encoded names luamp objects.  A Pool's task queue has a
 * share hook (its user value, q:_on_objects): it is called with {id =
 * object} for them, to send them to the workers that did not inherit
 * them, before the task is put.  (Encoding the task again to collect
 * them costs nothing to tasks that name no object.) */
static void share_objects(lua_State *L, int qidx, int idx, const char *root, lua_Integer first,
                          lua_Integer count)
{
    if (lua_getiuservalue(L, qidx, 1) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_COLLECT_KEY);   /* an outer one, restored below */
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LUAMP_COLLECT_KEY);
    luamp_buf scratch;
    luamp_buf_init(&scratch);
    if (luamp_encode_items(L, idx, first, count, root, &scratch, NULL) != 0)
        lua_pop(L, 1);      /* (it was encoded once already) */
    luamp_buf_free(&scratch);
    lua_pushvalue(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, LUAMP_COLLECT_KEY);
    lua_remove(L, -2);
    lua_call(L, 1, 0);      /* hook(objects) */
}

/* Builds a task message in u->buf: the header h, the function's bytes
 * (f, flen), then the items (the value at idx, or with `first` its slice
 * first .. first + h->count - 1), and puts it.  Returns 0 with *t, or
 * -1 with a message pushed (the items cannot be encoded). */
static int put_task_msg(lua_State *L, queue *u, int qidx, struct task_hdr *h,
                        const char *f, size_t flen, int idx, const char *root, lua_Integer first,
                        shmq_ticket *t)
{
    h->flen = flen;
    luamp_buf_reset(&u->buf);
    if (luamp_buf_append(&u->buf, h, sizeof *h) != 0 || luamp_buf_append(&u->buf, f, flen) != 0)
        return luaL_error(L, "not enough memory");
    unsigned long objects = luamp_codec_objects_encoded;
    int bad = luamp_encode_items(L, idx, first, h->count, root, &u->buf, u->cross_hosts ? CROSS_HOSTS_WHY : NULL);
    if (bad != 0) {
        luamp_buf_trim(&u->buf);
        return -1;
    }
    if (luamp_codec_objects_encoded != objects)
        share_objects(L, qidx, idx, root, first, h->count);
    size_t total = luamp_buf_size(&u->buf);
    if (total >= FLAT_FROM && u->buf.spanlen >= total / 4 * 3) {
        uint32_t kind = h->kind | TASK_FLAT;
        memcpy(u->buf.data + offsetof(struct task_hdr, kind), &kind, sizeof kind);
    }
    return put_msg(L, u, "the task", t);
}

/* Reads the header of the task message (u->msg) into h; whether the
 * message holds that header, the function's bytes and a known kind. */
static int read_task(const queue *u, struct task_hdr *h)
{
    memset(h, 0, sizeof *h);
    if (u->mlen < sizeof *h)
        return 0;
    memcpy(h, u->msg, sizeof *h);
    h->kind &= TASK_KIND_MASK;
    return u->mlen - sizeof *h >= h->flen && h->kind <= 2;
}

/* q:put_task(jobid, fid, fbytes, kind, start, items, count, root [, first [, timeout]])
 * -> seq | nil, message (an item cannot be encoded).  With `first`, the
 * task's items are items[first .. first + count - 1], encoded straight
 * from the caller's table. */
static int q_put_task(lua_State *L)
{
    queue *u = check_queue(L);
    struct task_hdr h = { 0 };
    size_t flen;
    h.jobid = luaL_checkinteger(L, 2);
    h.fid = luaL_checkinteger(L, 3);
    const char *f = luaL_checklstring(L, 4, &flen);
    h.kind = (uint32_t)luaL_checkoption(L, 5, NULL, task_kinds);
    h.start = luaL_checkinteger(L, 6);
    h.count = luaL_checkinteger(L, 8);
    const char *root = luaL_optstring(L, 9, "items");
    lua_Integer first = luaL_optinteger(L, 10, 0);
    h.timeout = luaL_optnumber(L, 11, 0);
    shmq_ticket t;
    if (put_task_msg(L, u, 1, &h, f, flen, 7, root, first, &t) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)t.seq);
    return 1;
}

/* Pushes the job of an apply task just put as `seq`: {id = jobid, _pool =
 * the value at pool, finished = false} with the metatable at mt, filed as
 * inflight[seq] (inflight a stack index).  The names "id", "_pool" and
 * "finished" are the caller's upvalues number key, key + 1 and key + 2. */
static void push_apply_job(lua_State *L, int key, lua_Integer jobid, int pool, int mt, int inflight,
                           uint64_t seq)
{
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, lua_upvalueindex(key));
    lua_pushinteger(L, jobid);
    lua_rawset(L, -3);
    lua_pushvalue(L, lua_upvalueindex(key + 1));
    lua_pushvalue(L, pool);
    lua_rawset(L, -3);
    lua_pushvalue(L, lua_upvalueindex(key + 2));
    lua_pushboolean(L, 0);
    lua_rawset(L, -3);
    lua_pushvalue(L, mt);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawseti(L, inflight, (lua_Integer)seq);
}

/*
 * q:apply_task(inflight, mt, pool, jobid, fid, fbytes, args [, timeout]) -> job, seq,
 * pos | nil, message (args cannot be encoded): Pool:apply_async's and
 * Executor:submit's task (pos: where it lies, for q:cancel).  Puts
 * the task, makes its job {id = jobid, _pool = pool, finished = false}
 * with metatable mt, and files it as inflight[seq]; one C call where
 * put_task, a table constructor, setmetatable and the filing were four
 * steps of Lua per task.  Its upvalues 2-4 are the field names.
 */
static int q_apply_task(lua_State *L)
{
    queue *u = check_queue(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    struct task_hdr h = { .kind = 0, .start = 1, .count = 1 };
    size_t flen;
    h.jobid = luaL_checkinteger(L, 5);
    h.fid = luaL_checkinteger(L, 6);
    const char *f = luaL_checklstring(L, 7, &flen);
    h.timeout = luaL_optnumber(L, 9, 0);
    lua_settop(L, 8);
    shmq_ticket t;
    if (put_task_msg(L, u, 1, &h, f, flen, 8, "args", 0, &t) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    push_apply_job(L, 2, h.jobid, 4, 3, 2, t.seq);
    lua_pushinteger(L, (lua_Integer)t.seq);
    lua_pushinteger(L, (lua_Integer)t.pos);
    return 3;
}

/*
 * Pool:apply_async's common case in C: pool:apply_async(f [, args]) from
 * the pool's own process, on a running pool, for a function whose
 * encoding the pool has cached.  Anything else (options, a function not
 * seen yet, a bad argument, a pool that is closed, broken or another
 * process's) goes to the Lua function, which checks and says what is
 * wrong.  In Lua those checks and lookups were a fifth of a task's cost
 * to the parent.
 * core.apply_fast(PoolMT, ApplyResult, NO_ARGS, slow) -> the function.
 */
enum {
    AF_POOLMT = 1, AF_RESULTMT, AF_NOARGS, AF_SLOW, AF_RUN, AF_OWNER, AF_STATE, AF_BROKEN,
    AF_NEXTJOB, AF_FCACHE, AF_TQ, AF_INFLIGHT, AF_ID, AF_POOL, AF_FINISHED, AF_QUEUEMT,
    AF_N = AF_QUEUEMT
};
/* The names of upvalues AF_RUN .. AF_FINISHED: "run" is a value of
 * _state, the others fields of a Pool and of an apply job (pool.lua). */
static const char *const af_names[] = { "run", "_owner", "_state", "_broken", "_nextjob", "_fcache",
                                        "_tq", "_inflight", "id", "_pool", "finished" };
_Static_assert(sizeof af_names / sizeof *af_names == AF_FINISHED - AF_RUN + 1, "a name for every AF_ key");

/* pushes self[upvalue k] (raw); its type */
static int af_field(lua_State *L, int k)
{
    lua_pushvalue(L, lua_upvalueindex(k));
    return lua_rawget(L, 1);
}

static int apply_fast(lua_State *L)
{
    int n = lua_gettop(L);
    if (n < 2 || n > 3 || lua_type(L, 2) != LUA_TFUNCTION)
        goto slow;
    lua_settop(L, 3);                      /* 1 self, 2 f, 3 args */
    int targs = lua_type(L, 3);
    if ((targs != LUA_TNIL && targs != LUA_TTABLE) || !lua_istable(L, 1) || !lua_getmetatable(L, 1))
        goto slow;
    int ours = lua_rawequal(L, -1, lua_upvalueindex(AF_POOLMT));
    lua_pop(L, 1);
    if (!ours)
        goto slow;
    /* 4 _owner, 5 _state, 6 _broken, 7 _fcache, 8 cached {fid, fbytes}, 9 fid, 10 fbytes,
     * 11 _nextjob, 12 _tq, 13 _inflight */
    if (af_field(L, AF_OWNER) != LUA_TNUMBER || lua_tointeger(L, 4) != (lua_Integer)luamp_pid()
        || af_field(L, AF_STATE) != LUA_TSTRING || !lua_rawequal(L, 5, lua_upvalueindex(AF_RUN))
        || af_field(L, AF_BROKEN) != LUA_TNIL || af_field(L, AF_FCACHE) != LUA_TTABLE)
        goto slow;
    lua_pushvalue(L, 2);
    if (lua_rawget(L, 7) != LUA_TTABLE || lua_rawgeti(L, 8, 1) != LUA_TNUMBER
        || lua_rawgeti(L, 8, 2) != LUA_TSTRING || af_field(L, AF_NEXTJOB) != LUA_TNUMBER
        || af_field(L, AF_TQ) != LUA_TUSERDATA || af_field(L, AF_INFLIGHT) != LUA_TTABLE)
        goto slow;
    queue *u = lua_touserdata(L, 12);
    if (!lua_getmetatable(L, 12))
        goto slow;
    ours = lua_rawequal(L, -1, lua_upvalueindex(AF_QUEUEMT));
    lua_pop(L, 1);
    if (!ours || u->q == NULL || u->closed)
        goto slow;
    lua_Integer id = lua_tointeger(L, 11) + 1;
    lua_pushvalue(L, lua_upvalueindex(AF_NEXTJOB));
    lua_pushinteger(L, id);
    lua_rawset(L, 1);
    if (targs == LUA_TNIL) {
        lua_pushvalue(L, lua_upvalueindex(AF_NOARGS));
        lua_replace(L, 3);
    }
    struct task_hdr h = { .kind = 0, .start = 1, .count = 1, .jobid = id };
    h.fid = lua_tointeger(L, 9);
    size_t flen;
    const char *f = lua_tolstring(L, 10, &flen);
    shmq_ticket t;
    if (put_task_msg(L, u, 12, &h, f, flen, 3, "args", 0, &t) != 0)
        return luamp_raise(L, "serialize", "%s", lua_tostring(L, -1));
    push_apply_job(L, AF_ID, id, 1, lua_upvalueindex(AF_RESULTMT), 13, t.seq);
    counters.apply_fast++;
    return 1;
slow:
    lua_settop(L, n);
    lua_pushvalue(L, lua_upvalueindex(AF_SLOW));
    lua_insert(L, 1);
    lua_call(L, n, 1);
    return 1;
}

static int new_apply_fast(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    luaL_checktype(L, 4, LUA_TFUNCTION);
    lua_settop(L, 4);
    for (size_t i = 0; i < sizeof af_names / sizeof *af_names; i++)
        lua_pushstring(L, af_names[i]);
    luaL_getmetatable(L, LUAMP_POOLQUEUE_MT);
    lua_pushcclosure(L, apply_fast, AF_N);
    return 1;
}

static int wait_status(lua_State *L, int r, int event);

/* Waits for a message, and also for the child handles in the table at
 * widx (0: none) to finish.  On SHMQ_OK leaves the message in u->buf and
 * returns 0; else pushes false, "event", i (the i-th handle finished) |
 * false, "timeout" | false, "closed" and returns the number of values. */
static int wait_message(lua_State *L, queue *u, double deadline, int widx, shmq_wait *w)
{
    int fds[SHMQ_MAX_EXTRA], map[SHMQ_MAX_EXTRA], n = 0;
    w->extra = fds;
    if (widx && !lua_isnoneornil(L, widx)) {
        luaL_checktype(L, widx, LUA_TTABLE);
        lua_Integer len = luaL_len(L, widx);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_geti(L, widx, i);
            int fd = luamp_waitable_fd(L, -1);
            lua_pop(L, 1);
            if (fd == -2) {    /* already finished */
                lua_pushboolean(L, 0);
                lua_pushliteral(L, "event");
                lua_pushinteger(L, i);
                return 3;
            }
            if (fd < 0)
                continue;
            if (n == SHMQ_MAX_EXTRA)
                return luaL_error(L, "get_result: too many objects");
            fds[n] = fd;
            map[n++] = (int)i;
        }
    }
    w->nextra = n;
    int r = shmq_get(u->q, &u->buf, deadline, w);
    return wait_status(L, r, r == SHMQ_EVENT ? map[w->which] : 0);
}

/* What wait_message returns for shmq_get's status r (event: the index of
 * the object that became ready). */
static int wait_status(lua_State *L, int r, int event)
{
    switch (r) {
    case SHMQ_OK:
        return 0;
    case SHMQ_EVENT:
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "event");
        lua_pushinteger(L, event);
        return 3;
    case SHMQ_TIMEOUT:
    case SHMQ_SHUTDOWN:
        lua_pushboolean(L, 0);
        lua_pushstring(L, r == SHMQ_TIMEOUT ? "timeout" : "closed");
        return 2;
    case SHMQ_INTERRUPTED:
        luamp_raise_interrupt(L);
        /* fallthrough */
    default:
        return luamp_sys_error(L, "Queue:get");
    }
}

/* A pool worker's object socket (core.watch_objects), or -1: see
 * wait_task.  One per process: a worker runs one state. */
static int worker_objsock = -1;

/* core.watch_objects(fd): this process is a pool worker whose parent
 * sends it objects on socket fd */
static int l_watch_objects(lua_State *L)
{
    worker_objsock = (int)luaL_checkinteger(L, 1);
    return 0;
}

/* shmq_wait's lend_if for a worker's tasks: whether to decode this one
 * where it lies (see TASK_FLAT). */
static int hold_task(const char *msg, size_t len)
{
    uint32_t kind;
    if (len >= LUAMP_HOLD_FROM)
        return 1;
    if (len < sizeof(struct task_hdr))
        return 0;
    memcpy(&kind, msg + offsetof(struct task_hdr, kind), sizeof kind);
    return (kind & TASK_FLAT) != 0;
}

/* wait_message for a worker's next task, forever.  While it waits, it
 * also reads the objects its parent sends on its object socket
 * (registry LUAMP_FETCH_KEY), so that a parent sending many does not find
 * the socket full while the worker is idle.  The task is u->msg: in
 * u->buf, or held in the ring (u->holding; see push_task) when it is a
 * TASK_FLAT one or has LUAMP_HOLD_FROM bytes. */
static int wait_task(lua_State *L, queue *u, shmq_wait *w)
{
    int n;
    w->lend_from = FLAT_FROM;
    w->lend_if = hold_task;
    w->hold = 1;
    if (worker_objsock < 0) {
        n = wait_message(L, u, -1, 0, w);
    } else {
        for (;;) {
            w->extra = &worker_objsock;
            w->nextra = 1;
            int r = shmq_get(u->q, &u->buf, -1, w);
            if (r != SHMQ_EVENT) {
                n = wait_status(L, r, 0);
                break;
            }
            if (!luamp_fetch_objects(L))
                worker_objsock = -1;    /* (the parent's end is closed, or unreadable) */
        }
    }
    if (n == 0) {
        u->holding = w->lent != NULL;
        u->msg = u->holding ? w->lent : u->buf.data;
        u->mlen = u->holding ? w->lent_len : u->buf.len;
        /* (a cluster's task: its result names it by rank 0's number) */
        int64_t origin;
        if (u->mlen >= sizeof(struct task_hdr)) {
            memcpy(&origin, u->msg + offsetof(struct task_hdr, origin), sizeof origin);
            if (origin > 0)
                w->seq = (uint64_t)origin;
        }
    }
    return n;
}

/* Pushes false, "undecodable", seq, message (the message on top). */
static int undecodable(lua_State *L, uint64_t seq)
{
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "undecodable");
    lua_pushinteger(L, (lua_Integer)seq);
    lua_rotate(L, -4, -1);
    return 4;
}

/* push_task's work on the task message u->msg: fills the task record
 * at `rec` (jobid, fid, f, kind, start, items, count, seq) and pushes
 * true, or pushes what get_task returns on failure.  A held message
 * (u->holding) stays where it is: the caller takes it, or with
 * u->requeue leaves it in the queue. */
static int push_task_msg(lua_State *L, queue *u, uint64_t seq, int slot, int fcache, int rec)
{
    struct task_hdr h;
    if (!read_task(u, &h)) {
        lua_pushliteral(L, "malformed task message");
        return undecodable(L, seq);
    }
    size_t off = sizeof h + h.flen;
    lua_pushinteger(L, h.jobid);
    lua_setfield(L, rec, "jobid");
    lua_pushinteger(L, h.fid);
    lua_setfield(L, rec, "fid");
    if (lua_rawgeti(L, fcache, h.fid) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushlstring(L, u->msg + sizeof h, h.flen);
    }
    lua_setfield(L, rec, "f");
    lua_pushstring(L, task_kinds[h.kind]);
    lua_setfield(L, rec, "kind");
    lua_pushinteger(L, h.start);
    lua_setfield(L, rec, "start");
    luamp_decode_missed_newer();
    if (luamp_decode(L, u->msg + off, u->mlen - off, 0) != 0) {
        if (slot >= 0 && luamp_decode_missed_newer()) {
            if (u->holding)
                u->requeue = 1;
            if (u->holding || shmq_requeue(u->q, slot, u->msg, u->mlen, seq) == SHMQ_OK) {
                lua_pushboolean(L, 0);
                lua_pushliteral(L, "requeued");
                return 2;
            }
        }
        return undecodable(L, seq);
    }
    lua_setfield(L, rec, "items");
    lua_pushinteger(L, h.count);
    lua_setfield(L, rec, "count");
    lua_pushinteger(L, (lua_Integer)seq);
    lua_setfield(L, rec, "seq");
    lua_pushboolean(L, 1);
    return 1;
}

/* push_task_msg(u, seq, slot, fcache, rec) in a protected call, for a
 * held message. */
static int push_held_task(lua_State *L)
{
    queue *u = lua_touserdata(L, 1);
    uint64_t seq = (uint64_t)lua_tointeger(L, 2);
    int slot = (int)lua_tointeger(L, 3);
    return push_task_msg(L, u, seq, slot, 4, 5);
}

/* Pushes what q:get_task returns for the task message u->msg, taken as
 * `seq` (claimed in `slot`); fcache is a stack index.  A task that
 * refers to an object made after this worker was forked goes back to the
 * queue (false, "requeued"): the worker then exits, and the one forked to
 * replace it has the object.  A held task is decoded where it lies (see
 * LUAMP_HOLD_FROM), in a protected call, as nothing may raise while the
 * queue's get lock is held; a requeued one is simply not taken. */
static int push_task(lua_State *L, queue *u, uint64_t seq, int slot, int fcache)
{
    int n;
    /* The task record: the queue's user value 2 (get_task's record, set
     * by task_record), at the top of the stack while it is filled. */
    fcache = lua_absindex(L, fcache);
    if (lua_getiuservalue(L, 1, 2) != LUA_TTABLE)
        return luaL_error(L, "a worker's task queue has no task record (tq:task_record)");
    int rec = lua_gettop(L);
    if (u->holding) {
        int top = lua_gettop(L);
        lua_pushcfunction(L, push_held_task);   /* (a C function gets 20 free slots) */
        lua_pushlightuserdata(L, u);
        lua_pushinteger(L, (lua_Integer)seq);
        lua_pushinteger(L, slot);
        lua_pushvalue(L, fcache);
        lua_pushvalue(L, rec);
        u->requeue = 0;
        counters.held_tasks++;
        int gc = luamp_collector_off(L);
        int st = lua_pcall(L, 5, LUA_MULTRET, 0);
        u->holding = 0;
        shmq_end_hold(u->q, !(st == LUA_OK && u->requeue));
        luamp_collector_on(L, gc);
        if (st != LUA_OK)
            return lua_error(L);
        n = lua_gettop(L) - top;
    } else {
        n = push_task_msg(L, u, seq, slot, fcache, rec);
    }
    if (n == 1)
        luamp_collect_for(L, u->mlen);
    luamp_buf_trim(&u->buf);
    return n;
}

/* q:get_task(slot, fcache) -> true, the task in the queue's task record
 * (see task_record) | false, "closed" | false, "undecodable", seq,
 * message.  The record's f is fcache[fid] when the worker has it, else
 * the function's encoding. */
static int q_get_task(lua_State *L)
{
    queue *u = check_queue(L);
    shmq_wait w = { .claim = opt_slot(L, 2) };
    luaL_checktype(L, 3, LUA_TTABLE);
    int n = wait_task(L, u, &w);
    if (n)
        return n;
    return push_task(L, u, w.seq, w.claim, 3);
}

/* Appends the value at idx (0, nil or false: nothing) to u->buf; its
 * length in *len.
 * Returns 0, or -1 with the encoder's message pushed. */
static int encode_part(lua_State *L, queue *u, int idx, const char *root, uint64_t *len)
{
    size_t before = luamp_buf_size(&u->buf);
    *len = 0;
    if (idx == 0 || lua_isnoneornil(L, idx) || (lua_isboolean(L, idx) && !lua_toboolean(L, idx)))
        return 0;
    if (luamp_encode(L, idx, root, &u->buf) != 0)
        return -1;
    *len = luamp_buf_size(&u->buf) - before;
    return 0;
}

/* Puts a result message whose results and errors are at ridx and eidx,
 * or whose results are the h->nres stack values from `values` (not 0). */
static int put_result_msg(lua_State *L, queue *u, struct result_hdr *h, int ridx, int eidx, int values)
{
    luamp_buf_reset(&u->buf);
    if (luamp_buf_append(&u->buf, h, sizeof *h) != 0)
        return luaL_error(L, "not enough memory");
    int bad;
    if (values) {
        bad = luamp_encode_values(L, values, (int)h->nres, "result", &u->buf) != 0;
        h->rlen = luamp_buf_size(&u->buf) - sizeof *h;
    } else if (!h->apply && h->count > 0 && ridx && lua_type(L, ridx) == LUA_TTABLE) {
        /* a chunk's results, 1..count (nil ones too): as an array, read
         * by index, whatever holes the table has */
        bad = luamp_encode_slice(L, ridx, 1, h->count, "result", &u->buf) != 0;
        h->rlen = luamp_buf_size(&u->buf) - sizeof *h;
    } else {
        bad = encode_part(L, u, ridx, "result", &h->rlen) != 0;
    }
    if (bad || encode_part(L, u, eidx, "error", &h->elen) != 0) {
        luamp_buf_trim(&u->buf);
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    memcpy(u->buf.data, h, sizeof *h);
    if (put_msg(L, u, "the result", NULL) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void result_header(lua_State *L, struct result_hdr *h, int first)
{
    memset(h, 0, sizeof *h);
    h->jobid = luaL_checkinteger(L, first);
    h->start = luaL_checkinteger(L, first + 1);
    h->count = luaL_checkinteger(L, first + 2);
    h->seq = luaL_checkinteger(L, first + 3);
    h->pid = luaL_checkinteger(L, first + 4);
    h->elapsed = luaL_checknumber(L, first + 5);
}

/* q:put_result(jobid, start, count, seq, pid, elapsed, results, errs)
 * -> true | nil, message (something cannot be encoded) */
static int q_put_result(lua_State *L)
{
    queue *u = check_queue(L);
    struct result_hdr h;
    result_header(L, &h, 2);
    lua_settop(L, 9);
    return put_result_msg(L, u, &h, 8, 9, 0);
}

/* Puts an apply task's outcome: ok and the nvals stack values from
 * `first` (its results), or not ok and the value at `first` (its
 * error).  Pushes true, or nil and why it cannot be encoded. */
static int send_apply(lua_State *L, queue *u, const struct task_hdr *t, uint64_t seq,
                      lua_Integer pid, double t0, int ok, int first, int nvals)
{
    struct result_hdr h;
    memset(&h, 0, sizeof h);
    h.jobid = t->jobid;
    h.seq = (int64_t)seq;
    h.pid = pid;
    h.elapsed = luamp_now() - t0;
    h.start = 1;
    h.count = 1;
    h.apply = 1;
    if (ok) {
        h.nres = nvals;
        return put_result_msg(L, u, &h, 0, 0, first);
    }
    lua_createtable(L, 1, 0);
    if (nvals > 0)
        lua_pushvalue(L, first);
    else
        lua_pushnil(L);
    lua_rawseti(L, -2, 1);
    return put_result_msg(L, u, &h, 0, lua_gettop(L), 0);
}

/* send_apply, and when the outcome cannot be sent, an error in its
 * place: {message = why, serialize = true} for results, the {message,
 * traceback} of the error (the message handler's table at `first`) for an
 * error.  Raises if even that cannot be sent. */
static void send_outcome(lua_State *L, queue *u, const struct task_hdr *t, uint64_t seq,
                         lua_Integer pid, double t0, int ok, int first, int nvals)
{
    if (send_apply(L, u, t, seq, pid, t0, ok, first, nvals) == 1)
        return;
    int why = lua_gettop(L);
    lua_createtable(L, 0, 2);
    if (ok) {
        lua_pushvalue(L, why);
        lua_setfield(L, -2, "message");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "serialize");
    } else if (lua_istable(L, first)) {
        lua_getfield(L, first, "message");
        lua_setfield(L, -2, "message");
        lua_getfield(L, first, "traceback");
        lua_setfield(L, -2, "traceback");
    }
    if (send_apply(L, u, t, seq, pid, t0, 0, lua_gettop(L), 1) != 1)
        luaL_error(L, "cannot send a task's outcome: %s", lua_tostring(L, -1));
}

/* q:put_apply(jobid, seq, pid, t0, ok, ...): an apply task's outcome
 * straight from xpcall: its results, or (ok false) its error; t0 is when
 * it started (core.now()).  What cannot be sent is replaced by an error
 * (see send_outcome). */
static int q_put_apply(lua_State *L)
{
    queue *u = check_queue(L);
    struct task_hdr t = { .jobid = luaL_checkinteger(L, 2) };
    uint64_t seq = (uint64_t)luaL_checkinteger(L, 3);
    lua_Integer pid = luaL_checkinteger(L, 4);
    double t0 = luaL_checknumber(L, 5);
    int top = lua_gettop(L);
    send_outcome(L, u, &t, seq, pid, t0, lua_toboolean(L, 6), 7, top > 6 ? top - 6 : 0);
    return 0;
}

/* Largest map chunk serve runs in C.  Each item there costs a
 * lua_pcall; Lua's run_chunk runs a whole chunk in one xpcall and calls
 * f from Lua, cheaper per item once chunks are big. */
#define SERVE_MAP_MAX 16

/* Runs a map chunk (stack: 7 f, 8 items) as run_chunk in lua/luamp/worker.lua does,
 * each item in a protected call with the handler at 5, and sends its
 * results and errors; when they cannot be sent, put_result (at 6)
 * sends what can be. */
static int serve_map(lua_State *L, queue *r, const struct task_hdr *t, uint64_t seq, lua_Integer pid)
{
    lua_createtable(L, (int)t->count, 0);      /* 9: results */
    lua_pushnil(L);                            /* 10: errors, once one fails */
    double t0 = luamp_now();
    int spent = 0;
    for (lua_Integer i = 1; i <= t->count; i++) {
        lua_pushvalue(L, 7);
        lua_rawgeti(L, 8, i);
        int status = lua_pcall(L, 1, 1, 5);
        if (status == LUA_OK) {
            lua_rawseti(L, 9, i);
        } else {
            spent |= status != LUA_ERRRUN;
            if (lua_isnil(L, 10)) {
                lua_newtable(L);
                lua_replace(L, 10);
            }
            lua_rawseti(L, 10, i);
        }
    }
    struct result_hdr h;
    memset(&h, 0, sizeof h);
    h.jobid = t->jobid;
    h.start = t->start;
    h.count = t->count;
    h.seq = (int64_t)seq;
    h.pid = pid;
    h.elapsed = luamp_now() - t0;
    if (put_result_msg(L, r, &h, 9, lua_isnil(L, 10) ? 0 : 10, 0) == 1)
        return spent;
    lua_settop(L, 10);
    lua_pushvalue(L, 6);
    lua_pushvalue(L, 4);
    lua_pushinteger(L, h.jobid);
    lua_pushinteger(L, h.start);
    lua_pushinteger(L, h.count);
    lua_pushinteger(L, h.seq);
    lua_pushinteger(L, h.pid);
    lua_pushnumber(L, h.elapsed);
    lua_pushvalue(L, 9);
    lua_pushvalue(L, 10);
    lua_call(L, 9, 0);
    return spent;
}

/* What serve returns after a task that ran out of memory (or whose
 * message handler failed): Lua then skips the handler, the task's error is
 * Lua's bare message, and the worker, which may not be able to go on,
 * exits to be replaced. */
static int spent_worker(lua_State *L)
{
    lua_settop(L, 0);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "spent");
    return 2;
}

/*
 * tq:serve(slot, fcache, rq, handler, pid, put_result): a worker's loop,
 * in C for the tasks that need nothing else: apply tasks, and map chunks
 * of up to SERVE_MAP_MAX items, whose function is in fcache.  An apply
 * runs as xpcall(f, handler, unpack(args)) would, and its outcome goes to
 * rq as put_apply sends it.  A map chunk runs as run_chunk
 * in lua/luamp/worker.lua; the Lua put_result sends what it can when its results
 * cannot all be sent.  Returns what get_task would for the first other
 * task (or when the queue closes).  This is most of what a worker does
 * per small task, and every task that stays in C spares the worker a
 * return to Lua with nine values, an args table, xpcall and unpack there.
 */
static int q_serve(lua_State *L)
{
    queue *u = check_queue(L);
    shmq_wait w = { .claim = opt_slot(L, 2) };
    luaL_checktype(L, 3, LUA_TTABLE);
    queue *r = luaL_checkudata(L, 4, LUAMP_POOLQUEUE_MT);
    luaL_checktype(L, 5, LUA_TFUNCTION);
    lua_Integer pid = luaL_checkinteger(L, 6);
    luaL_checktype(L, 7, LUA_TFUNCTION);
    lua_settop(L, 7);
    lua_remove(L, 6);          /* 6: put_result (pid is kept in C) */
    if (r->closed || r->q == NULL)
        return luaL_argerror(L, 4, "an open queue expected");
    for (;;) {
        int n = wait_task(L, u, &w);
        if (n)
            return n;
        struct task_hdr h;
        if (u->holding || !read_task(u, &h)
            || !(h.kind == 0 || (h.kind == 1 && h.count >= 1 && h.count <= SERVE_MAP_MAX))
            || lua_rawgeti(L, 3, h.fid) != LUA_TFUNCTION) {
            lua_settop(L, 6);
            return push_task(L, u, w.seq, w.claim, 3);
        }
        if (h.kind == 1) {
            size_t off = sizeof h + h.flen;
            if (luamp_decode(L, u->msg + off, u->mlen - off, 0) != 0 || !lua_istable(L, 8)) {
                lua_settop(L, 6);
                return push_task(L, u, w.seq, w.claim, 3);   /* (which says why) */
            }
            luamp_collect_for(L, u->mlen);
            luamp_buf_trim(&u->buf);
            counters.serve_map++;
            if (serve_map(L, r, &h, w.seq, pid))
                return spent_worker(L);
            lua_settop(L, 6);
            continue;
        }
        /* stack: 7 f, 8 args */
        size_t off = sizeof h + h.flen;
        lua_Integer nargs = -1;
        if (luamp_decode(L, u->msg + off, u->mlen - off, 0) == 0 && lua_istable(L, 8)) {
            lua_pushliteral(L, "n");
            if (lua_rawget(L, 8) == LUA_TNUMBER && lua_isinteger(L, -1))
                nargs = lua_tointeger(L, -1);
            else
                nargs = (lua_Integer)lua_rawlen(L, 8);
            lua_pop(L, 1);
        }
        if (nargs < 0 || nargs > 250 || !lua_checkstack(L, (int)nargs + 8)) {
            lua_settop(L, 6);   /* the Lua loop runs it, or says what is wrong */
            return push_task(L, u, w.seq, w.claim, 3);
        }
        luamp_collect_for(L, u->mlen);
        luamp_buf_trim(&u->buf);
        lua_pushvalue(L, 5);          /* 9: handler */
        lua_pushvalue(L, 7);          /* 10: f */
        for (lua_Integer i = 1; i <= nargs; i++)
            lua_rawgeti(L, 8, i);
        counters.serve_apply++;
        double t0 = luamp_now();
        int status = lua_pcall(L, (int)nargs, LUA_MULTRET, 9);
        send_outcome(L, r, &h, w.seq, pid, t0, status == LUA_OK, 10, lua_gettop(L) - 9);
        if (status != LUA_OK && status != LUA_ERRRUN)
            return spent_worker(L);
        lua_settop(L, 6);
    }
}

/* The fields of get_result's record, in the order push_result pushes
 * them: pool.lua's Pool:_handle reads them by these names. */
static const char *const result_fields[] = { "jobid", "start", "count", "results", "errs", "elapsed",
                                             "pid", "seq", "nres", "rlen" };

/* Pushes the values of get_result's record (result_fields, in order) for the message in
 * u->buf (header h, checked), decoding its results into their sink when
 * there is one: inflight[seq] for an apply task (the job itself), else
 * sinks[jobid] (sinks and inflight: stack indexes, or 0). */
static int push_result(lua_State *L, queue *u, const struct result_hdr *h, int sinks, int inflight)
{
    lua_pushinteger(L, h->jobid);
    lua_pushinteger(L, h->start);
    lua_pushinteger(L, h->count);
    const char *p = u->msg + sizeof *h;
    int bad = 0, books = h->apply ? inflight : sinks;
    if (h->rlen == 0) {
        lua_pushnil(L);
    } else if (books && lua_rawgeti(L, books, h->apply ? h->seq : h->jobid) == LUA_TTABLE) {
        if (luamp_decode_into(L, p, h->rlen, 0, -1, h->start - 1) != 0) {
            lua_remove(L, -2);          /* the sink: the message stays */
            bad = 1;
        } else {
            lua_pop(L, 1);
            lua_pushboolean(L, 1);
        }
    } else {
        if (books)
            lua_pop(L, 1);              /* what was there */
        if (luamp_decode(L, p, h->rlen, 0) != 0)
            bad = 1;
    }
    if (bad) {
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
    } else if (h->elen == 0) {
        lua_pushnil(L);
    } else if (luamp_decode(L, p + h->rlen, h->elen, 0) != 0) {
        lua_remove(L, -2);
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
    }
    lua_pushnumber(L, h->elapsed);
    lua_pushinteger(L, h->pid);
    lua_pushinteger(L, h->seq);
    lua_pushinteger(L, h->nres);
    lua_pushinteger(L, h->rlen);
    return (int)(sizeof result_fields / sizeof *result_fields);
}

/* The fields of a Pool's jobs that get_result reads and writes: its
 * upvalues 2, 3, ... hold these names as strings, so that no field access
 * there has to look a C string up (upvalue 1 is the metatable). */
enum { K_CALLBACK = 2, K_TIMEOUT, K_JOB, K_CHUNKS, K_SOURCE, K_PROGRESS, K_PROBING,
       K_ERROR_CALLBACK, K_DONE, K_INFLIGHT, K_TOTAL, K_FINISHED, K_END };
static const char *const job_keys[] = { "callback", "timeout", "job", "chunks", "source",
    "progress", "probing", "error_callback", "done", "inflight", "total", "finished" };
_Static_assert(sizeof job_keys / sizeof *job_keys == K_END - K_CALLBACK, "a name for every K_ key");

/* Is t[k] (t a stack index, k a K_ key) nil, not looking at t's
 * metatable? */
static int raw_nil(lua_State *L, int t, int k)
{
    lua_pushvalue(L, lua_upvalueindex(k));
    int r = lua_rawget(L, t) == LUA_TNIL;
    lua_pop(L, 1);
    return r;
}

/* t[k] = the value on top (popped), raw. */
static void raw_set(lua_State *L, int t, int k)
{
    lua_pushvalue(L, lua_upvalueindex(k));
    lua_insert(L, -2);
    lua_rawset(L, t);
}

/*
 * Settles an apply task's successful result here, as Pool:_handle would
 * in Lua, when nothing else needs doing: its job (an AsyncResult) is
 * inflight[seq] and has no callback and no timeout.  Its values are
 * decoded into the job, its `finished` becomes the number of values (see
 * Pool:apply_async), and it leaves inflight.  A script that runs many
 * small apply_async tasks otherwise spends more time in that Lua than in
 * everything else the parent does per result.
 * Returns 1 settled, 0 not for here (nothing changed).
 */
static int settle_apply(lua_State *L, queue *u, const struct result_hdr *h, int inflight)
{
    if (!h->apply || h->jobid <= 0 || h->elen != 0 || h->rlen == 0 || !inflight)
        return 0;
    int top = lua_gettop(L), job = top + 1, done = 0;
    luaL_checkstack(L, 4, NULL);
    if (lua_rawgeti(L, inflight, h->seq) == LUA_TTABLE
        && raw_nil(L, job, K_CALLBACK) && raw_nil(L, job, K_TIMEOUT)
        && luamp_decode_into(L, u->msg + sizeof *h, h->rlen, 0, job, 0) == 0) {
        lua_pushinteger(L, h->nres);
        raw_set(L, job, K_FINISHED);
        lua_pushnil(L);
        lua_rawseti(L, inflight, h->seq);
        counters.settle_apply++;
        done = 1;
    }
    /* (a failed decode may have stored some values in the job: the message
     * then goes to Lua, which decodes it again and fails the task) */
    lua_settop(L, top);
    return done;
}

/* The integer t[k] (t a stack index, k a K_ key), not looking at t's
 * metatable; 0 if it is not one. */
static lua_Integer raw_int(lua_State *L, int t, int k)
{
    lua_pushvalue(L, lua_upvalueindex(k));
    lua_rawget(L, t);
    lua_Integer v = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

/*
 * Settles a chunk of a map job here, as Pool:_handle would in Lua, when
 * nothing else needs doing: no item failed, the task is inflight[seq] =
 * {job = job, ...} without a timeout, and the job is a plain map (not
 * imap: no chunks, no source; no progress bar, no callbacks, not
 * probing).  Its results are decoded into sinks[jobid] at their indexes;
 * job.done and job.inflight are counted; at the last chunk the job is
 * finished and leaves jobs and sinks.  Returns 1 settled, 0 not for here
 * (nothing changed).
 */
static int settle_map(lua_State *L, queue *u, const struct result_hdr *h, int sinks, int inflight, int jobs)
{
    if (h->apply || h->jobid <= 0 || h->elen != 0 || h->rlen == 0 || h->count <= 0
        || !inflight || !sinks || !jobs)
        return 0;
    int top = lua_gettop(L), rec = top + 1, job = top + 2, sink = top + 3, done = 0;
    luaL_checkstack(L, 6, NULL);
    if (lua_rawgeti(L, inflight, h->seq) == LUA_TTABLE && raw_nil(L, rec, K_TIMEOUT)
        && (lua_pushvalue(L, lua_upvalueindex(K_JOB)), lua_rawget(L, rec) == LUA_TTABLE)
        && raw_nil(L, job, K_CHUNKS) && raw_nil(L, job, K_SOURCE) && raw_nil(L, job, K_PROGRESS)
        && raw_nil(L, job, K_PROBING) && raw_nil(L, job, K_CALLBACK) && raw_nil(L, job, K_ERROR_CALLBACK)
        && lua_rawgeti(L, sinks, h->jobid) == LUA_TTABLE
        && luamp_decode_into(L, u->msg + sizeof *h, h->rlen, 0, sink, h->start - 1) == 0) {
        lua_Integer ndone = raw_int(L, job, K_DONE) + h->count;
        lua_pushinteger(L, ndone);
        raw_set(L, job, K_DONE);
        lua_pushinteger(L, raw_int(L, job, K_INFLIGHT) - 1);
        raw_set(L, job, K_INFLIGHT);
        lua_pushnil(L);
        lua_rawseti(L, inflight, h->seq);
        if (ndone == raw_int(L, job, K_TOTAL)) {
            lua_pushboolean(L, 1);
            raw_set(L, job, K_FINISHED);
            lua_pushnil(L);
            lua_rawseti(L, jobs, h->jobid);
            lua_pushnil(L);
            lua_rawseti(L, sinks, h->jobid);
        }
        counters.settle_map++;
        done = 1;
    }
    lua_settop(L, top);
    return done;
}

/* Results from this size up are decoded where they lie in the result
 * queue's ring (shmq.h, "Lending"), not copied out first: a copy of 1 MiB
 * was a tenth of what the parent spent per result of map_large_result. */
#define LEND_FROM ((size_t)64 << 10)

/* Swaps the buffers buf and held; buf keeps its settings. */
static void swap_held(queue *u)
{
    luamp_buf t = u->buf;
    u->buf = u->held;
    u->held = t;
    u->held.span_from = u->buf.span_from;
    u->buf.span_from = t.span_from;
}

/* Gives the message get_result decodes back to the ring if it was lent:
 * before anything that may run Lua code (a collection step's finalizers),
 * which might read this queue again. */
static void give_back(lua_State *L, queue *u)
{
    if (u->lent) {
        u->lent = 0;
        if (shmq_give_back(u->q) != 0)
            luamp_sys_error(L, "Pool result queue");
    }
}

/*
 * q:get_result(timeout, waitables, sinks, inflight, jobs, rec)
 *   -> true, with the result in the record rec (the caller's, reused from
 *      call to call): its fields RESULT_FIELDS, below; rlen is the
 *      results' encoded size
 *    | false, "settled", n (items), elapsed (the sum over their tasks)
 *    | false, "event", i | false, "timeout" | false, "closed".
 * A result that cannot be decoded here comes with results false and errs
 * the reason.  When sinks[jobid] is a table (inflight[seq] for an apply
 * task), the results go straight into it at their indexes (start, start +
 * 1, ...) and results is true.  Given inflight (and jobs), the results
 * settle_apply (and settle_map) can
 * settle are settled here, as many in a row as are waiting: "settled"
 * says how many, once no more are waiting or the next needs Lua (that one
 * is held for the next call).
 */
static int q_get_result(lua_State *L)
{
    queue *u = check_queue(L);
    luaL_checktype(L, 7, LUA_TTABLE);
    lua_settop(L, 7);
    int sinks = lua_istable(L, 4) ? 4 : 0;
    int inflight = lua_istable(L, 5) ? 5 : 0;
    int jobs = lua_istable(L, 6) ? 6 : 0;
    double deadline = luamp_opt_deadline(L, 2);
    lua_Integer settled = 0;
    double elapsed = 0;
    for (;;) {
        if (u->held.len > 0) {
            swap_held(u);
            u->held.len = 0;
            u->msg = u->buf.data;
            u->mlen = u->buf.len;
        } else {
            shmq_wait w = { .claim = -1, .lend_from = LEND_FROM };
            int n = wait_message(L, u, settled ? 0 : deadline, settled ? 0 : 3, &w);
            if (n && settled)
                break;
            if (n)
                return n;
            u->lent = w.lent != NULL;
            u->msg = u->lent ? w.lent : u->buf.data;
            u->mlen = u->lent ? w.lent_len : u->buf.len;
        }
        struct result_hdr h = { 0 };
        if (u->mlen >= sizeof h)
            memcpy(&h, u->msg, sizeof h);
        if (u->mlen < sizeof h || h.rlen > u->mlen - sizeof h || h.elen != u->mlen - sizeof h - h.rlen) {
            give_back(L, u);
            luamp_buf_trim(&u->buf);
            return luaL_error(L, "malformed result message");
        }
        if (h.apply ? settle_apply(L, u, &h, inflight) : settle_map(L, u, &h, sinks, inflight, jobs)) {
            settled += h.count;
            elapsed += h.elapsed;
            give_back(L, u);
            luamp_collect_for(L, u->mlen);
            continue;
        }
        if (settled) {
            if (u->lent) {      /* copied: the ring's room is not kept waiting */
                if (luamp_buf_append(&u->held, u->msg, u->mlen) != 0) {
                    give_back(L, u);
                    return luaL_error(L, "not enough memory");
                }
                give_back(L, u);
            } else {
                swap_held(u);
            }
            break;
        }
        for (int n = push_result(L, u, &h, sinks, inflight); n > 0; n--)
            lua_setfield(L, 7, result_fields[n - 1]);
        give_back(L, u);
        luamp_collect_for(L, u->mlen);
        luamp_buf_trim(&u->buf);
        lua_pushboolean(L, 1);
        return 1;
    }
    luamp_buf_trim(&u->buf);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "settled");
    lua_pushinteger(L, settled);
    lua_pushnumber(L, elapsed);
    return 4;
}

/* q:claim(slot) -> seq (0: nothing), since */
static int q_claim(lua_State *L)
{
    queue *u = check_queue(L);
    uint64_t seq;
    double since;
    if (shmq_claim(u->q, opt_slot(L, 2), &seq, &since) != 0)
        return luamp_sys_error(L, "Queue:claim");
    lua_pushinteger(L, (lua_Integer)seq);
    lua_pushnumber(L, since);
    return 2;
}

/* q:cancel(seq [, pos]) -> whether the message was withdrawn before any
 * consumer took it (an Executor's future.cancel).  pos, what apply_task
 * returned with seq, finds it at once; without it the ring is walked. */
static int q_cancel(lua_State *L)
{
    queue *u = check_queue(L);
    lua_Integer seq = luaL_checkinteger(L, 2);
    uint64_t pos = lua_isnoneornil(L, 3) ? SHMQ_ANYWHERE : (uint64_t)luaL_checkinteger(L, 3);
    int r = shmq_cancel(u->q, (uint64_t)seq, pos);
    if (r < 0)
        return luamp_sys_error(L, "Queue:cancel");
    lua_pushboolean(L, r);
    return 1;
}

static int q_release(lua_State *L)
{
    queue *u = check_queue(L);
    if (shmq_release(u->q, opt_slot(L, 2)) != 0)
        return luamp_sys_error(L, "Queue:release");
    return 0;
}

/* q:destroy(): gives back this process's memory and descriptors now
 * rather than at garbage collection (a Pool does it when it ends). */
static int q_destroy(lua_State *L)
{
    luamp_queue_free(luaL_checkudata(L, 1, LUAMP_POOLQUEUE_MT));
    return 0;
}

static int q_qsize(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)shmq_count(check_queue(L)->q));
    return 1;
}

static int q_shutdown(lua_State *L)
{
    if (shmq_shutdown(check_queue(L)->q) != 0)
        return luamp_sys_error(L, "PoolQueue:shutdown");
    return 0;
}

static int q_ref(lua_State *L)
{
    lua_pushstring(L, check_queue(L)->id);
    return 1;
}

static int q_tostring(lua_State *L)
{
    lua_pushfstring(L, "PoolQueue (%s)", check_queue(L)->id);
    return 1;
}

/*
 * core.pool_fields() -> {name, ...}: every field of a Pool, of a job or of
 * a task record (pool.lua, results.lua) that this file reads or writes by
 * name, from the lists above (af_names, job_keys, result_fields).  A
 * field renamed on one side only would not fail: the fast path would
 * just stop being taken, or take what it should not.  tests/fast_paths.lua
 * checks that lua/luamp/ still names each, and counts the fast paths.
 */
static int l_pool_fields(lua_State *L)
{
    lua_newtable(L);
    lua_Integer n = 0;
    for (size_t i = 1; i < sizeof af_names / sizeof *af_names; i++) {   /* (not "run") */
        lua_pushstring(L, af_names[i]);
        lua_rawseti(L, -2, ++n);
    }
    for (size_t i = 0; i < sizeof job_keys / sizeof *job_keys; i++) {
        lua_pushstring(L, job_keys[i]);
        lua_rawseti(L, -2, ++n);
    }
    for (size_t i = 0; i < sizeof result_fields / sizeof *result_fields; i++) {
        lua_pushstring(L, result_fields[i]);
        lua_rawseti(L, -2, ++n);
    }
    return 1;
}

void luamp_open_pool(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"put_task", q_put_task},
        {"get_task", q_get_task},
        {"task_record", q_task_record},
        {"serve", q_serve},
        {"put_result", q_put_result},
        {"put_apply", q_put_apply},
        {"claim", q_claim},
        {"cancel", q_cancel},
        {"_on_objects", q_on_objects},
        {"_cross_hosts", q_cross_hosts},
        {"release", q_release},
        {"destroy", q_destroy},
        {"qsize", q_qsize},
        {"shutdown", q_shutdown},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", q_destroy},
        {"__luamp_ref", q_ref},
        {"__tostring", q_tostring},
        {NULL, NULL}
    };
    if (luaL_newmetatable(L, LUAMP_POOLQUEUE_MT)) {   /* (see luamp_check_queue) */
        lua_pushvalue(L, -1);
        luaL_setfuncs(L, meta, 1);
        luaL_newlibtable(L, methods);
        lua_pushvalue(L, -2);
        luaL_setfuncs(L, methods, 1);
        lua_pushvalue(L, -2);
        for (int k = K_CALLBACK; k < K_END; k++)
            lua_pushstring(L, job_keys[k - K_CALLBACK]);
        lua_pushcclosure(L, q_get_result, K_END - 1);
        lua_setfield(L, -2, "get_result");
        lua_pushvalue(L, -2);
        lua_pushliteral(L, "id");
        lua_pushliteral(L, "_pool");
        lua_pushliteral(L, "finished");
        lua_pushcclosure(L, q_apply_task, 4);
        lua_setfield(L, -2, "apply_task");
        lua_setfield(L, -2, "__index");
    }
    lua_pushcfunction(L, new_apply_fast);
    lua_setfield(L, -3, "apply_fast");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, luamp_queue_new, 1);
    lua_setfield(L, -3, "pool_queue");
    lua_pushcclosure(L, luamp_queue_attach, 1);
    lua_setfield(L, -2, "pool_queue_attach");
    lua_pushcfunction(L, l_watch_objects);
    lua_setfield(L, -2, "watch_objects");
    lua_pushcfunction(L, l_counters);
    lua_setfield(L, -2, "counters");
    lua_pushliteral(L, CROSS_HOSTS_WHY);
    lua_setfield(L, -2, "cross_hosts_why");
    lua_pushcfunction(L, l_pool_fields);
    lua_setfield(L, -2, "pool_fields");
}
