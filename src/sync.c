/* SPDX-License-Identifier: MIT */
/*
 * sync.c - mp.Lock, mp.RLock, mp.Value, mp.Array, mp.Semaphore,
 * mp.BoundedSemaphore, mp.Event, mp.Condition and mp.Barrier.
 *
 * Each object is one block of shared memory, a memfd mapped before any
 * fork that should see it (like a Queue, it travels to a forked child as
 * its id, and the child finds the mapping it inherited).  The memfd stays
 * open so that a spawned child can map the same memory: sync_describe
 * says what it needs, sync_attach makes the object there, under the same
 * id.  A block starts with a
 * lock word; a Value or an Array keeps its elements after it, and its
 * lock (get_lock) is an RLock on the same word, as in Python.
 *
 * The lock word is 0 when free, else the pid of the process holding it:
 * taking it is one compare-and-swap, and a waiter sleeps on the word with
 * futex(2) (process-shared: no FUTEX_PRIVATE_FLAG).  `waiters` counts the
 * sleepers, so a release makes no system call when nobody waits.  Storing
 * the holder's pid in the word itself (not beside it) means a process that
 * dies holding a lock cannot leave it taken for ever: a waiter that finds
 * the holder gone (kill(pid, 0) fails with ESRCH once it is reaped; and,
 * after a whole RECHECK, /proc says it is a zombie or the pid names a
 * process started later than the holder, see holder_gone in lock.c) takes the lock
 * over.  Python's lock stays taken, and its other users hang.  Waiters
 * look again at least every RECHECK seconds for that reason.
 *
 * As in Python, a Lock may be released by a process other than the one
 * that acquired it; an RLock only by its holder, once per acquire.
 * Element reads and writes of a Value or Array are single atomic loads
 * and stores; `v.value = v.value + 1` is still two of them, hence
 * get_lock():guard().
 *
 * A Semaphore's word is its count, an Event's 0 or 1; waiters sleep on
 * them the same way.  A semaphore has no holder, so one that a dead
 * process took is not given back (as in Python).
 */
#include "lock.h"
#include "sys.h"
#include "interrupt.h"
#include "module.h"
#include "objects.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <lauxlib.h>

#define LOCK_MT  "luamp.Lock"
#define GUARD_MT "luamp.LockGuard"
#define VALUE_MT "luamp.Value"
#define ARRAY_MT "luamp.Array"
#define SEM_MT   "luamp.Semaphore"
#define EVENT_MT "luamp.Event"
#define COND_MT  "luamp.Condition"
#define BARRIER_MT "luamp.Barrier"
#define DATA_OFFSET 64       /* the elements start here in the block */

/* A block starts with its lock word (lock.h). */
typedef luamp_lock block;

_Static_assert(sizeof(block) <= DATA_OFFSET, "the lock fits before the elements");

/* This process's mapping of a block, shared by the userdata that use it
 * here (a Value and its lock). */
typedef struct mapping {
    int refs;
    int fd;          /* the memfd, kept for spawned children */
    void *base;
    size_t len;
} mapping;

/* What every object of this file starts with; m is NULL once collected. */
typedef struct handle {
    mapping *m;
    block *b;
    char id[48];     /* what it travels as (__luamp_ref) */
} handle;

/* What follows the lock in an object's block: a Value's or an Array's
 * elements, a Condition's or a Barrier's state. */
static void *data_of(const handle *h)
{
    return (char *)h->b + DATA_OFFSET;
}

typedef struct lockud {
    handle h;
    int rlock;
} lockud;

/* A Semaphore or an Event.  In its block, word is the count (or the
 * Event's flag) and depth a BoundedSemaphore's bound (0: none). */
typedef struct semud {
    handle h;
    int event;
} semud;

static const char *sem_give(block *b);

/* Element types: Python's typecodes and their names. */
typedef struct etype {
    const char *code, *name;
    size_t size;
    int is_float, is_signed;
} etype;

static const etype etypes[] = {
    { "b", "int8", 1, 0, 1 },   { "B", "uint8", 1, 0, 0 },
    { "h", "int16", 2, 0, 1 },  { "H", "uint16", 2, 0, 0 },
    { "i", "int32", 4, 0, 1 },  { "I", "uint32", 4, 0, 0 },
    { "l", "int64", 8, 0, 1 },  { "L", "uint64", 8, 0, 0 },
    { "q", "int64", 8, 0, 1 },  { "Q", "uint64", 8, 0, 0 },
    { "f", "float", 4, 1, 1 },  { "d", "double", 8, 1, 1 },
    { NULL, NULL, 0, 0, 0 }
};

typedef struct shared {        /* a Value (n < 0) or an Array */
    handle h;
    const etype *t;
    lua_Integer n;
} shared;

/* ---- blocks --------------------------------------------------------------- */

/* Maps len bytes of memfd fd, which the mapping then owns; NULL (fd
 * closed, errno set) when it cannot. */
static mapping *try_map_fd(int fd, size_t len)
{
    mapping *m = malloc(sizeof *m);
    void *p = m != NULL ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : NULL;
    if (p == MAP_FAILED || m == NULL) {
        int e = m == NULL ? ENOMEM : errno;
        free(m);
        close(fd);
        errno = e;
        return NULL;
    }
    m->refs = 0;
    m->fd = fd;
    m->base = p;
    m->len = len;
    return m;
}

/* map_fd that raises when it cannot. */
static mapping *map_fd(lua_State *L, int fd, size_t len)
{
    mapping *m = try_map_fd(fd, len);
    if (m == NULL)
        luamp_sys_error(L, "cannot map shared memory");
    return m;
}

/* A new mapping of `data` bytes after the header; NULL (errno set, nothing
 * left open) when it cannot be made. */
static mapping *try_new_mapping(size_t data)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (DATA_OFFSET + data + page - 1) / page * page;
    int fd = memfd_create("luamp-sync", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, (off_t)len) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    return try_map_fd(fd, len);
}

static mapping *new_mapping(lua_State *L, size_t data)
{
    mapping *m = try_new_mapping(data);
    if (m == NULL)
        luamp_sys_error(L, "cannot make shared memory");
    return m;
}

/* Gives back a mapping no handle refers to yet. */
static void discard(mapping *m)
{
    munmap(m->base, m->len);
    close(m->fd);
    free(m);
}

static void unref(mapping *m)
{
    if (m != NULL && --m->refs == 0) {
        munmap(m->base, m->len);
        close(m->fd);
        free(m);
    }
}

/* Pushes a new object of `size` bytes (a struct that starts with a
 * handle) on mapping m, with metatable mt and a new id of `kind`, or the
 * id `id` (a spawned child making its parent's object, sync_attach). */
static void *push_handle(lua_State *L, size_t size, mapping *m, const char *kind, const char *mt,
                         const char *id)
{
    handle *h = lua_newuserdatauv(L, size, 1);
    memset(h, 0, size);
    h->m = m;
    h->b = m->base;
    m->refs++;
    if (id != NULL)
        snprintf(h->id, sizeof h->id, "%s", id);
    else
        luamp_new_object_id(h->id, sizeof h->id, kind);
    luaL_setmetatable(L, mt);
    return h;
}

/* Makes the guard of the lock or semaphore on top, its user value 1:
 * made once, guard() hands out the same one, whose __close releases. */
static void set_guard(lua_State *L)
{
    lua_newuserdatauv(L, 0, 1);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, GUARD_MT);
    lua_setiuservalue(L, -2, 1);
}

/* Pushes a new lock userdata on mapping m (id: as push_handle),
 * registered for sending. */
static lockud *push_lock(lua_State *L, mapping *m, int rlock, const char *id)
{
    lockud *u = push_handle(L, sizeof *u, m, rlock ? "rlock" : "lock", LOCK_MT, id);
    u->rlock = rlock;
    set_guard(L);
    luamp_register_object(L, -1, u->h.id);
    return u;
}

/* ---- Lock and RLock --------------------------------------------------------- */

/* The object of metatable mt at index 1 (not one its finalizer ran for). */
static void *check_handle(lua_State *L, const char *mt)
{
    handle *h = luaL_checkudata(L, 1, mt);
    if (h->m == NULL)
        luaL_error(L, "the object was collected");
    return h;
}

static lockud *check_lock(lua_State *L)
{
    return check_handle(L, LOCK_MT);
}

static int l_new_lock(lua_State *L)
{
    int rlock = lua_toboolean(L, 1);
    mapping *m = new_mapping(L, 0);
    push_lock(L, m, rlock, NULL);
    return 1;
}

/* acquire([timeout]) -> boolean, release() and guard() of lock u, for a
 * Lock (or RLock) and for the Condition made on it; the object is at
 * index 1, the timeout at 2. */
static int acquire_method(lua_State *L, lockud *u)
{
    int r = luamp_lock_acquire(u->h.b, u->rlock, luamp_opt_deadline(L, 2));
    if (r < 0)
        luamp_raise_interrupt(L);
    lua_pushboolean(L, r > 0);
    return 1;
}

static int release_method(lua_State *L, lockud *u)
{
    const char *why = luamp_lock_release(u->h.b, u->rlock);
    if (why)
        return luaL_error(L, "%s", why);
    return 0;
}

/* (pushes u's guard: uservalue 1 of the lock at index lock) */
static int guard_method(lua_State *L, lockud *u, int lock)
{
    if (luamp_lock_acquire(u->h.b, u->rlock, -1) < 0)
        luamp_raise_interrupt(L);
    lua_getiuservalue(L, lock, 1);
    return 1;
}

static int l_lock_acquire(lua_State *L)
{
    return acquire_method(L, check_lock(L));
}

static int l_lock_release(lua_State *L)
{
    return release_method(L, check_lock(L));
}

static int l_lock_locked(lua_State *L)
{
    lockud *u = check_lock(L);
    lua_pushboolean(L, atomic_load(&u->h.b->word) != 0);
    return 1;
}

/* lock:guard() -> a to-be-closed value that releases the lock */
static int l_lock_guard(lua_State *L)
{
    return guard_method(L, check_lock(L), 1);
}

static int l_guard_close(lua_State *L)
{
    luaL_checkudata(L, 1, GUARD_MT);
    lua_getiuservalue(L, 1, 1);
    const char *why = NULL;
    if (luaL_testudata(L, -1, LOCK_MT)) {
        lockud *u = lua_touserdata(L, -1);
        if (u->h.m != NULL)
            why = luamp_lock_release(u->h.b, u->rlock);
    } else {
        semud *u = luaL_testudata(L, -1, SEM_MT);
        if (u != NULL && u->h.m != NULL)
            why = sem_give(u->h.b);
    }
    if (why)
        return luaL_error(L, "guard: %s", why);
    return 0;
}

/* __gc and __luamp_ref of every object here (its metatable says it is one). */
static int l_handle_gc(lua_State *L)
{
    handle *h = lua_touserdata(L, 1);
    if (h != NULL) {
        unref(h->m);
        h->m = NULL;
    }
    return 0;
}

static int l_handle_ref(lua_State *L)
{
    handle *h = lua_touserdata(L, 1);
    lua_pushstring(L, h->id);
    return 1;
}

static int l_lock_tostring(lua_State *L)
{
    lockud *u = check_lock(L);
    lua_pushfstring(L, "%s (%s, %s)", u->rlock ? "RLock" : "Lock", u->h.id,
                    atomic_load(&u->h.b->word) ? "locked" : "unlocked");
    return 1;
}

/* ---- Semaphore, BoundedSemaphore and Event ------------------------------- */

static semud *check_sem(lua_State *L, const char *mt)
{
    return check_handle(L, mt);
}

/* 1: taken; 0: not by the deadline; -1: interrupted. */
static int sem_take(block *b, double deadline)
{
    for (;;) {
        uint32_t c = atomic_load(&b->word);
        if (c > 0) {
            if (atomic_compare_exchange_strong(&b->word, &c, c - 1))
                return 1;
            continue;
        }
        int r = luamp_lock_wait_while(b, 0, deadline);
        if (r <= 0 && atomic_load(&b->word) == 0)
            return r;
    }
}

/* NULL, or why the release is refused. */
static const char *sem_give(block *b)
{
    uint32_t c = atomic_load(&b->word);
    do {
        if (b->depth > 0 && c >= b->depth)
            return "BoundedSemaphore released too many times";
        if (c == UINT32_MAX)
            return "Semaphore released too many times";
    } while (!atomic_compare_exchange_weak(&b->word, &c, c + 1));
    if (atomic_load(&b->waiters) > 0)
        luamp_futex_wake(&b->word);
    return NULL;
}

/* Pushes a Semaphore or Event on mapping m (id: as push_handle),
 * registered for sending. */
static semud *push_sem(lua_State *L, mapping *m, int event, const char *id)
{
    semud *u = push_handle(L, sizeof *u, m, event ? "event" : "semaphore", event ? EVENT_MT : SEM_MT, id);
    u->event = event;
    if (!event)
        set_guard(L);
    luamp_register_object(L, -1, u->h.id);
    return u;
}

static semud *new_sem(lua_State *L, int event, uint32_t value, uint32_t bound)
{
    semud *u = push_sem(L, new_mapping(L, 0), event, NULL);
    atomic_store(&u->h.b->word, value);
    u->h.b->depth = bound;
    return u;
}

/* core.semaphore(value, bounded); errors without a position, as core.value */
static int l_new_semaphore(lua_State *L)
{
    const char *fname = lua_toboolean(L, 2) ? "BoundedSemaphore" : "Semaphore";
    int isint;
    lua_Integer n = lua_isnoneornil(L, 1) ? 1 : lua_tointegerx(L, 1, &isint);
    if (!lua_isnoneornil(L, 1) && (!isint || lua_type(L, 1) != LUA_TNUMBER || n < 0 || n > INT32_MAX))
        return luaL_error(L, "bad argument #1 to '%s' (a non-negative integer expected, got %s)", fname,
                          lua_type(L, 1) == LUA_TNUMBER ? lua_tostring(L, 1) : luaL_typename(L, 1));
    new_sem(L, 0, (uint32_t)n, lua_toboolean(L, 2) ? (uint32_t)n : 0);
    return 1;
}

static int l_new_event(lua_State *L)
{
    new_sem(L, 1, 0, 0);
    return 1;
}

static int l_sem_acquire(lua_State *L)
{
    semud *u = check_sem(L, SEM_MT);
    int r = sem_take(u->h.b, luamp_opt_deadline(L, 2));
    if (r < 0)
        luamp_raise_interrupt(L);
    lua_pushboolean(L, r > 0);
    return 1;
}

static int l_sem_release(lua_State *L)
{
    semud *u = check_sem(L, SEM_MT);
    const char *why = sem_give(u->h.b);
    if (why)
        return luaL_error(L, "%s", why);
    return 0;
}

static int l_sem_get_value(lua_State *L)
{
    lua_pushinteger(L, atomic_load(&check_sem(L, SEM_MT)->h.b->word));
    return 1;
}

static int l_sem_guard(lua_State *L)
{
    semud *u = check_sem(L, SEM_MT);
    if (sem_take(u->h.b, -1) < 0)
        luamp_raise_interrupt(L);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static int l_event_set(lua_State *L)
{
    semud *u = check_sem(L, EVENT_MT);
    atomic_store(&u->h.b->word, 1);
    if (atomic_load(&u->h.b->waiters) > 0)
        (void)syscall(SYS_futex, (uint32_t *)&u->h.b->word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    return 0;
}

static int l_event_clear(lua_State *L)
{
    atomic_store(&check_sem(L, EVENT_MT)->h.b->word, 0);
    return 0;
}

static int l_event_is_set(lua_State *L)
{
    lua_pushboolean(L, atomic_load(&check_sem(L, EVENT_MT)->h.b->word) != 0);
    return 1;
}

/* event:wait([timeout]) -> whether it is set */
static int l_event_wait(lua_State *L)
{
    semud *u = check_sem(L, EVENT_MT);
    double deadline = luamp_opt_deadline(L, 2);
    while (atomic_load(&u->h.b->word) == 0) {
        int r = luamp_lock_wait_while(u->h.b, 0, deadline);
        if (r < 0)
            luamp_raise_interrupt(L);
        if (r == 0)
            break;
    }
    lua_pushboolean(L, atomic_load(&u->h.b->word) != 0);
    return 1;
}

static int l_sem_tostring(lua_State *L)
{
    semud *u = lua_touserdata(L, 1);
    if (u->event)
        lua_pushfstring(L, "Event (%s, %s)", u->h.id, atomic_load(&u->h.b->word) ? "set" : "not set");
    else
        lua_pushfstring(L, "%s (%s, value %d)", u->h.b->depth ? "BoundedSemaphore" : "Semaphore", u->h.id,
                        (int)atomic_load(&u->h.b->word));
    return 1;
}

/* ---- Value and Array ------------------------------------------------------- */

static const etype *check_type(lua_State *L, int idx, const char *fname)
{
    const char *s = luaL_checkstring(L, idx);
    for (const etype *t = etypes; t->code; t++)
        if (strcmp(s, t->code) == 0 || strcmp(s, t->name) == 0)
            return t;
    luaL_error(L, "bad argument #%d to '%s' (unknown typecode '%s': one of b B h H i I l L q Q f d,"
               " or int8 ... uint64, float, double)", idx, fname, s);
    return NULL;
}

static void *elem(const shared *s, lua_Integer i)
{
    return (char *)data_of(&s->h) + (size_t)i * s->t->size;
}

static void push_elem(lua_State *L, const shared *s, lua_Integer i)
{
    void *p = elem(s, i);
    switch (s->t->code[0]) {
    case 'b': lua_pushinteger(L, __atomic_load_n((int8_t *)p, __ATOMIC_RELAXED)); break;
    case 'B': lua_pushinteger(L, __atomic_load_n((uint8_t *)p, __ATOMIC_RELAXED)); break;
    case 'h': lua_pushinteger(L, __atomic_load_n((int16_t *)p, __ATOMIC_RELAXED)); break;
    case 'H': lua_pushinteger(L, __atomic_load_n((uint16_t *)p, __ATOMIC_RELAXED)); break;
    case 'i': lua_pushinteger(L, __atomic_load_n((int32_t *)p, __ATOMIC_RELAXED)); break;
    case 'I': lua_pushinteger(L, __atomic_load_n((uint32_t *)p, __ATOMIC_RELAXED)); break;
    case 'l': case 'q': case 'L': case 'Q':
        lua_pushinteger(L, (lua_Integer)__atomic_load_n((int64_t *)p, __ATOMIC_RELAXED));
        break;
    case 'f': {
        uint32_t bits = __atomic_load_n((uint32_t *)p, __ATOMIC_RELAXED);
        float f;
        memcpy(&f, &bits, sizeof f);
        lua_pushnumber(L, f);
        break;
    }
    default: {
        uint64_t bits = __atomic_load_n((uint64_t *)p, __ATOMIC_RELAXED);
        double d;
        memcpy(&d, &bits, sizeof d);
        lua_pushnumber(L, d);
        break;
    }
    }
}

/* Stores the value at idx into element i, or raises naming `what`. */
static void set_elem(lua_State *L, const shared *s, lua_Integer i, int idx, const char *what)
{
    const etype *t = s->t;
    void *p = elem(s, i);
    if (t->is_float) {
        int isnum;
        lua_Number x = lua_tonumberx(L, idx, &isnum);
        if (!isnum || lua_type(L, idx) != LUA_TNUMBER)
            luaL_error(L, "cannot store a %s in %s: a number expected", luaL_typename(L, idx), what);
        if (t->size == 4) {
            float f = (float)x;
            uint32_t bits;
            memcpy(&bits, &f, sizeof bits);
            __atomic_store_n((uint32_t *)p, bits, __ATOMIC_RELAXED);
        } else {
            uint64_t bits;
            memcpy(&bits, &x, sizeof bits);
            __atomic_store_n((uint64_t *)p, bits, __ATOMIC_RELAXED);
        }
        return;
    }
    int isint;
    lua_Integer v = lua_tointegerx(L, idx, &isint);
    if (!isint || lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "cannot store %s in %s: an integer expected", lua_type(L, idx) == LUA_TNUMBER
                   ? "a float with a fraction" : lua_pushfstring(L, "a %s", luaL_typename(L, idx)), what);
    int bits = (int)t->size * 8;
    int ok = t->is_signed ? (bits == 64 || (v >= -((lua_Integer)1 << (bits - 1)) && v < ((lua_Integer)1 << (bits - 1))))
                          : (v >= 0 && (bits == 64 || v < ((lua_Integer)1 << bits)));
    if (!ok)
        luaL_error(L, "cannot store %I in %s: out of range for %s", v, what, t->name);
    switch (t->size) {
    case 1: __atomic_store_n((uint8_t *)p, (uint8_t)v, __ATOMIC_RELAXED); break;
    case 2: __atomic_store_n((uint16_t *)p, (uint16_t)v, __ATOMIC_RELAXED); break;
    case 4: __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_RELAXED); break;
    default: __atomic_store_n((uint64_t *)p, (uint64_t)v, __ATOMIC_RELAXED); break;
    }
}

/* Pushes a Value (n < 0) or Array of n elements on mapping m (id: as
 * push_handle), with the lock on top as its user value 1 (popped),
 * registered for sending. */
static shared *push_shared(lua_State *L, mapping *m, const etype *t, lua_Integer n, const char *id)
{
    shared *s = push_handle(L, sizeof *s, m, n < 0 ? "value" : "array", n < 0 ? VALUE_MT : ARRAY_MT, id);
    s->t = t;
    s->n = n;
    lua_rotate(L, -2, 1);
    lua_setiuservalue(L, -2, 1);
    luamp_register_object(L, -1, s->h.id);
    return s;
}

/* A new Value (n < 0) or Array of n elements, with its lock (an RLock on
 * the same word). */
static shared *new_shared(lua_State *L, const etype *t, lua_Integer n)
{
    size_t count = n < 0 ? 1 : (size_t)n;
    if (count > (SIZE_MAX - 2 * DATA_OFFSET) / t->size)
        luaL_error(L, "Array: too many elements");
    mapping *m = new_mapping(L, count * t->size);
    push_lock(L, m, 1, NULL);
    return push_shared(L, m, t, n, NULL);
}

/* core.value(typecode [, init]); errors without a position: mp.Value
 * gives them its caller's. */
static int l_new_value(lua_State *L)
{
    const etype *t = check_type(L, 1, "Value");
    shared *s = new_shared(L, t, -1);
    if (!lua_isnoneornil(L, 2))
        set_elem(L, s, 0, 2, "a Value");
    return 1;
}

/* core.array(typecode, size_or_table), as core.value */
static int l_new_array(lua_State *L)
{
    const etype *t = check_type(L, 1, "Array");
    lua_Integer n;
    if (lua_type(L, 2) == LUA_TTABLE) {
        n = luaL_len(L, 2);
    } else {
        int isint;
        n = lua_tointegerx(L, 2, &isint);
        if (!isint || lua_type(L, 2) != LUA_TNUMBER || n < 0)
            return luaL_error(L, "bad argument #2 to 'Array' (a size (a non-negative integer) or a table of"
                              " values expected, got %s)", lua_type(L, 2) == LUA_TNUMBER
                              ? lua_pushfstring(L, "%s", lua_tostring(L, 2)) : luaL_typename(L, 2));
    }
    shared *s = new_shared(L, t, n);
    if (lua_type(L, 2) == LUA_TTABLE) {
        for (lua_Integer i = 0; i < n; i++) {
            lua_geti(L, 2, i + 1);
            char what[48];
            snprintf(what, sizeof what, "Array element %lld", (long long)(i + 1));
            set_elem(L, s, i, -1, what);
            lua_pop(L, 1);
        }
    }
    return 1;
}

static shared *check_shared(lua_State *L, const char *mt)
{
    return check_handle(L, mt);
}

static int l_shared_get_lock(lua_State *L)
{
    shared *s = lua_touserdata(L, 1);
    if (s == NULL || (!luaL_testudata(L, 1, VALUE_MT) && !luaL_testudata(L, 1, ARRAY_MT)))
        return luaL_argerror(L, 1, "a Value or an Array expected");
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static int l_value_index(lua_State *L)
{
    shared *s = check_shared(L, VALUE_MT);
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "value") == 0) {
        push_elem(L, s, 0);
        return 1;
    }
    if (k && strcmp(k, "get_lock") == 0) {
        lua_pushcfunction(L, l_shared_get_lock);
        return 1;
    }
    if (k && strcmp(k, "typecode") == 0) {
        lua_pushstring(L, s->t->code);
        return 1;
    }
    return 0;
}

static int l_value_newindex(lua_State *L)
{
    shared *s = check_shared(L, VALUE_MT);
    const char *k = lua_tostring(L, 2);
    if (!k || strcmp(k, "value") != 0)
        return luaL_error(L, "a Value has no field '%s' to set (only 'value')", k ? k : luaL_typename(L, 2));
    set_elem(L, s, 0, 3, "a Value");
    return 0;
}

/* Array index i (1-based) at stack index idx, checked: 0-based. */
static lua_Integer array_slot(lua_State *L, const shared *s, int idx)
{
    int isint;
    lua_Integer i = lua_tointegerx(L, idx, &isint);
    if (!isint || lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "Array index must be an integer, got %s", luaL_typename(L, idx));
    if (i < 1 || i > s->n)
        luaL_error(L, "Array index %I out of range 1..%I", i, s->n);
    return i - 1;
}

static int l_array_totable(lua_State *L)
{
    shared *s = check_shared(L, ARRAY_MT);
    lua_createtable(L, (int)(s->n < INT_MAX ? s->n : INT_MAX), 0);
    for (lua_Integer i = 0; i < s->n; i++) {
        push_elem(L, s, i);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int l_array_index(lua_State *L)
{
    shared *s = check_shared(L, ARRAY_MT);
    if (lua_type(L, 2) == LUA_TNUMBER) {
        int isint;
        lua_Integer i = lua_tointegerx(L, 2, &isint);
        if (isint && (i < 1 || i > s->n))
            return 0;      /* nil past the ends, so ipairs stops */
        push_elem(L, s, array_slot(L, s, 2));
        return 1;
    }
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "get_lock") == 0)
        lua_pushcfunction(L, l_shared_get_lock);
    else if (k && strcmp(k, "totable") == 0)
        lua_pushcfunction(L, l_array_totable);
    else if (k && strcmp(k, "typecode") == 0)
        lua_pushstring(L, s->t->code);
    else
        return 0;
    return 1;
}

static int l_array_newindex(lua_State *L)
{
    shared *s = check_shared(L, ARRAY_MT);
    lua_Integer i = array_slot(L, s, 2);
    char what[48];
    snprintf(what, sizeof what, "Array element %lld", (long long)(i + 1));
    set_elem(L, s, i, 3, what);
    return 0;
}

static int l_array_len(lua_State *L)
{
    lua_pushinteger(L, check_shared(L, ARRAY_MT)->n);
    return 1;
}

static int l_value_tostring(lua_State *L)
{
    shared *s = check_shared(L, VALUE_MT);
    push_elem(L, s, 0);
    lua_pushfstring(L, "Value('%s', %s)", s->t->code, luaL_tolstring(L, -1, NULL));
    return 1;
}

static int l_array_tostring(lua_State *L)
{
    shared *s = check_shared(L, ARRAY_MT);
    lua_pushfstring(L, "Array('%s', %I elements)", s->t->code, s->n);
    return 1;
}

/* ---- Condition ------------------------------------------------------------- */

/*
 * A Condition's block holds a slot per waiting process: its pid, its
 * arrival ticket and a word it sleeps on.  Slots change only under the
 * Condition's lock (its user value 1), which wait and notify require, as
 * in Python.  notify(n) wakes the n oldest waiters, each on its own word,
 * so a notification goes to exactly one waiter; a waiter whose timeout
 * passed but that was notified before it got the lock back counts as
 * notified, so no notification is lost.  A waiter that died is skipped
 * and its slot taken back.
 */
#define COND_SLOTS 128

typedef struct cond_slot {
    uint32_t pid;               /* 0: free */
    _Atomic uint32_t notified;  /* its waiter sleeps on this word */
    uint64_t ticket;            /* order of arrival */
} cond_slot;

typedef struct cond_data {
    uint64_t next_ticket;
    cond_slot slots[COND_SLOTS];
} cond_data;

typedef struct condud {
    handle h;
} condud;

static cond_data *cond_of(condud *u)
{
    return data_of(&u->h);
}

/* The Condition at index 1 and its lock (which it keeps alive). */
static condud *check_cond(lua_State *L, lockud **lock)
{
    condud *u = check_handle(L, COND_MT);
    lua_getiuservalue(L, 1, 1);
    *lock = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return u;
}

static int holds(const lockud *l)
{
    return atomic_load(&l->h.b->word) == luamp_lock_self();
}

/* core.condition([lock]): a new RLock when none is given */
static int l_new_condition(lua_State *L)
{
    mapping *lm = NULL;      /* the new RLock's, made first: nothing to undo */
    if (lua_isnoneornil(L, 1)) {
        lm = new_mapping(L, 0);
    } else if (luaL_testudata(L, 1, LOCK_MT) == NULL) {
        return luaL_error(L, "bad argument #1 to 'Condition' (a Lock or an RLock expected, got %s)",
                          luaL_typename(L, 1));
    }
    /* The condition's own memory, before any object is made, so that a
     * failure here leaves nothing behind for the collector to close. */
    mapping *m = try_new_mapping(sizeof(cond_data));
    if (m == NULL) {
        int e = errno;
        if (lm)
            discard(lm);
        errno = e;
        return luamp_sys_error(L, "cannot make shared memory");
    }
    if (lm)
        push_lock(L, lm, 1, NULL);
    else
        lua_pushvalue(L, 1);
    condud *u = push_handle(L, sizeof *u, m, "condition", COND_MT, NULL);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 1);
    luamp_register_object(L, -1, u->h.id);
    return 1;
}

/* Takes the lock back after a wait, however long it takes. */
static void retake(lockud *l, uint32_t depth)
{
    while (luamp_lock_acquire(l->h.b, l->rlock, -1) < 0)
        ;
    l->h.b->depth = depth;
}

/* Waits on the Condition, whose lock the caller holds (released while
 * waiting, fully for an RLock, and taken back before returning): 1 when
 * notified, 0 at the deadline.  Raises on an interrupt (lock held). */
static int cond_wait_on(lua_State *L, condud *u, lockud *l, double deadline)
{
    uint32_t me = luamp_lock_self();
    if (!holds(l))
        luaL_error(L, "cannot wait on a Condition whose lock this process does not hold");
    cond_data *c = cond_of(u);
    cond_slot *slot = NULL;
    for (int i = 0; i < COND_SLOTS && slot == NULL; i++) {
        cond_slot *s = &c->slots[i];
        if (s->pid == 0 || luamp_pid_gone(s->pid))
            slot = s;
    }
    if (slot == NULL)
        luaL_error(L, "more than %d processes wait on this Condition", COND_SLOTS);
    slot->pid = me;
    atomic_store(&slot->notified, 0);
    slot->ticket = c->next_ticket++;
    uint32_t depth = l->h.b->depth;
    l->h.b->depth = 1;
    luamp_lock_release(l->h.b, l->rlock);
    int interrupted = 0;
    while (atomic_load(&slot->notified) == 0) {
        if (deadline == 0 || (deadline > 0 && luamp_now() >= deadline))
            break;
        if (luamp_futex_wait(&slot->notified, 0, deadline) == EINTR && luamp_interrupt_pending()) {
            interrupted = 1;
            break;
        }
    }
    retake(l, depth);
    int notified = atomic_load(&slot->notified) != 0;
    slot->pid = 0;
    if (interrupted && !notified)
        luamp_raise_interrupt(L);
    return notified;
}

/* cond:wait([timeout]) -> false if the timeout passed first */
static int l_cond_wait(lua_State *L)
{
    lockud *l;
    condud *u = check_cond(L, &l);
    lua_pushboolean(L, cond_wait_on(L, u, l, luamp_opt_deadline(L, 2)));
    return 1;
}

/* cond:wait_for(predicate [, timeout]) -> whether the predicate held (a
 * boolean, as the API contract has every wait return) */
static int l_cond_wait_for(lua_State *L)
{
    lockud *l;
    condud *u = check_cond(L, &l);
    luaL_checkany(L, 2);
    double deadline = luamp_opt_deadline(L, 3);
    for (;;) {
        lua_pushvalue(L, 2);
        lua_call(L, 0, 1);
        int held = lua_toboolean(L, -1);
        if (held || deadline == 0 || (deadline > 0 && luamp_now() >= deadline)) {
            lua_pushboolean(L, held);
            return 1;
        }
        lua_pop(L, 1);
        cond_wait_on(L, u, l, deadline);
    }
}

/* Wakes up to n of the oldest waiters (the caller holds the lock). */
static int cond_notify_n(lua_State *L, lua_Integer n)
{
    lockud *l;
    condud *u = check_cond(L, &l);
    if (!holds(l))
        return luaL_error(L, "cannot notify on a Condition whose lock this process does not hold");
    cond_data *c = cond_of(u);
    for (; n > 0; n--) {
        cond_slot *best = NULL;
        for (int i = 0; i < COND_SLOTS; i++) {
            cond_slot *s = &c->slots[i];
            if (s->pid == 0 || atomic_load(&s->notified) != 0)
                continue;
            if (luamp_pid_gone(s->pid)) {
                s->pid = 0;
                continue;
            }
            if (best == NULL || s->ticket < best->ticket)
                best = s;
        }
        if (best == NULL)
            break;
        atomic_store(&best->notified, 1);
        luamp_futex_wake(&best->notified);
    }
    return 0;
}

static int l_cond_notify(lua_State *L)
{
    lua_Integer n = luaL_optinteger(L, 2, 1);
    return cond_notify_n(L, n);
}

static int l_cond_notify_all(lua_State *L)
{
    return cond_notify_n(L, COND_SLOTS);
}

static int l_cond_acquire(lua_State *L)
{
    lockud *l;
    check_cond(L, &l);
    return acquire_method(L, l);
}

static int l_cond_release(lua_State *L)
{
    lockud *l;
    check_cond(L, &l);
    return release_method(L, l);
}

/* cond:guard(): acquires the lock; its guard releases it */
static int l_cond_guard(lua_State *L)
{
    lockud *l;
    check_cond(L, &l);
    lua_getiuservalue(L, 1, 1);      /* the lock */
    return guard_method(L, l, lua_gettop(L));
}

static int l_cond_tostring(lua_State *L)
{
    condud *u = lua_touserdata(L, 1);
    lua_pushfstring(L, "Condition (%s)", u->h.id);
    return 1;
}

/* ---- Barrier ---------------------------------------------------------------- */

/*
 * The block's word is the generation: parties arriving in generation g
 * sleep while it is g; the last to arrive runs the action and moves it on.
 * What became of generation g (released, or broken by a timeout, abort,
 * reset or a failed action) is kept in outcome[g % 64], read by its
 * waiters when they wake.  The fields are guarded by a lock of their own.
 */
#define BAR_RELEASED 1
#define BAR_BROKEN 2

typedef struct barrier_data {
    block inner;          /* guards what follows */
    uint32_t parties;
    uint32_t count;       /* arrived in this generation */
    uint32_t broken;
    double timeout;       /* default for wait (< 0: none) */
    uint8_t outcome[64];
} barrier_data;

typedef struct barud {
    handle h;
} barud;

static barrier_data *bar_of(barud *u)
{
    return data_of(&u->h);
}

static void bar_lock(barrier_data *d)
{
    while (luamp_lock_acquire(&d->inner, 0, -1) < 0)
        ;
}

/* Under the inner lock: ends generation gen with outcome o, then unlocks
 * and wakes its waiters. */
static void bar_end(barud *u, uint32_t gen, int o)
{
    barrier_data *d = bar_of(u);
    d->outcome[gen % 64] = (uint8_t)o;
    d->count = 0;
    atomic_store(&u->h.b->word, gen + 1);
    luamp_lock_release(&d->inner, 0);
    if (atomic_load(&u->h.b->waiters) > 0)
        (void)syscall(SYS_futex, (uint32_t *)&u->h.b->word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* core.barrier(parties, action, timeout); errors without a position */
static int l_new_barrier(lua_State *L)
{
    int isint;
    lua_Integer n = lua_tointegerx(L, 1, &isint);
    if (!isint || lua_type(L, 1) != LUA_TNUMBER || n < 1 || n > INT32_MAX)
        return luaL_error(L, "bad argument #1 to 'Barrier' (a positive number of parties expected, got %s)",
                          lua_type(L, 1) == LUA_TNUMBER ? lua_tostring(L, 1) : luaL_typename(L, 1));
    if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION && !luaL_getmetafield(L, 2, "__call"))
        return luaL_error(L, "bad argument #2 to 'Barrier' (an action function expected, got %s)",
                          luaL_typename(L, 2));
    double timeout = -1;
    if (!lua_isnoneornil(L, 3)) {
        if (lua_type(L, 3) != LUA_TNUMBER || !(lua_tonumber(L, 3) >= 0))
            return luaL_error(L, "bad argument #3 to 'Barrier' (a timeout in seconds expected, got %s)",
                              lua_type(L, 3) == LUA_TNUMBER ? lua_tostring(L, 3) : luaL_typename(L, 3));
        timeout = lua_tonumber(L, 3);
    }
    lua_settop(L, 2);
    mapping *m = new_mapping(L, sizeof(barrier_data));
    barud *u = push_handle(L, sizeof *u, m, "barrier", BARRIER_MT, NULL);
    barrier_data *d = bar_of(u);
    d->parties = (uint32_t)n;
    d->timeout = timeout;
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
    luamp_register_object(L, -1, u->h.id);
    return 1;
}

/* barrier:wait([timeout]) -> this party's index, 1 .. parties */
static int l_barrier_wait(lua_State *L)
{
    barud *u = check_handle(L, BARRIER_MT);
    barrier_data *d = bar_of(u);
    block *b = u->h.b;
    double deadline = !lua_isnoneornil(L, 2) ? luamp_opt_deadline(L, 2)
                      : d->timeout >= 0 ? luamp_now() + d->timeout : -1;
    bar_lock(d);
    if (d->broken) {
        luamp_lock_release(&d->inner, 0);
        return luamp_raise(L, "broken", "the Barrier is broken (reset it to use it again)");
    }
    uint32_t gen = atomic_load(&b->word);
    uint32_t index = d->count++;
    if (d->count == d->parties) {
        /* the last party runs the action, then releases the others */
        lua_getiuservalue(L, 1, 1);
        if (!lua_isnil(L, -1) && lua_pcall(L, 0, 0, 0) != LUA_OK) {
            d->broken = 1;
            bar_end(u, gen, BAR_BROKEN);
            return lua_error(L);
        }
        bar_end(u, gen, BAR_RELEASED);
        lua_pushinteger(L, (lua_Integer)index + 1);
        return 1;
    }
    luamp_lock_release(&d->inner, 0);
    int r = 1;
    while (r > 0 && atomic_load(&b->word) == gen)
        r = luamp_lock_wait_while(b, gen, deadline);
    if (r <= 0) {
        /* Timed out or interrupted still waiting: the others would wait
         * for ever for this party, so the barrier breaks. */
        bar_lock(d);
        if (atomic_load(&b->word) == gen) {
            uint32_t arrived = d->count;
            d->broken = 1;
            bar_end(u, gen, BAR_BROKEN);
            if (r < 0)
                luamp_raise_interrupt(L);
            return luamp_raise(L, "timeout", "timed out at the Barrier with %d of %d parties arrived;"
                               " the Barrier is now broken", (int)arrived, (int)d->parties);
        }
        luamp_lock_release(&d->inner, 0);   /* released meanwhile */
    }
    if (d->outcome[gen % 64] == BAR_BROKEN)
        return luamp_raise(L, "broken", "the Barrier was broken while this process waited"
                           " (reset, abort, a party's timeout or a failed action)");
    lua_pushinteger(L, (lua_Integer)index + 1);
    return 1;
}

/* Ends the waiting generation as broken; broken stays set (abort) or not (reset). */
static int bar_interrupt(lua_State *L, int stay_broken)
{
    barud *u = check_handle(L, BARRIER_MT);
    barrier_data *d = bar_of(u);
    bar_lock(d);
    d->broken = (uint32_t)stay_broken;
    bar_end(u, atomic_load(&u->h.b->word), BAR_BROKEN);
    return 0;
}

static int l_barrier_abort(lua_State *L) { return bar_interrupt(L, 1); }
static int l_barrier_reset(lua_State *L) { return bar_interrupt(L, 0); }

/* barrier.parties, .n_waiting, .broken; methods from the upvalue */
static int l_barrier_index(lua_State *L)
{
    barud *u = check_handle(L, BARRIER_MT);
    barrier_data *d = bar_of(u);
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "parties") == 0)
        lua_pushinteger(L, d->parties);
    else if (k && strcmp(k, "n_waiting") == 0)
        lua_pushinteger(L, d->broken ? 0 : d->count);
    else if (k && strcmp(k, "broken") == 0)
        lua_pushboolean(L, d->broken != 0);
    else {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(1));
    }
    return 1;
}

static int l_barrier_tostring(lua_State *L)
{
    barud *u = lua_touserdata(L, 1);
    barrier_data *d = bar_of(u);
    lua_pushfstring(L, "Barrier (%s, %d of %d waiting%s)", u->h.id, (int)d->count, (int)d->parties,
                    d->broken ? ", broken" : "");
    return 1;
}

/* Registers metatable mt with the metamethods meta and, unless NULL,
 * the methods as its __index. */
static void new_type(lua_State *L, const char *mt, const luaL_Reg *meta, const luaL_Reg *methods)
{
    if (luaL_newmetatable(L, mt)) {
        luaL_setfuncs(L, meta, 0);
        if (methods) {
            lua_newtable(L);
            luaL_setfuncs(L, methods, 0);
            lua_setfield(L, -2, "__index");
        }
    }
    lua_pop(L, 1);
}

/* ---- to a spawned child --------------------------------------------------- */

/* What each kind of object is, for sync_describe and sync_attach. */
static const char *const kinds[] = { "lock", "semaphore", "event", "value", "array", "condition",
                                     "barrier", NULL };
static const char *const kind_mts[] = { LOCK_MT, SEM_MT, EVENT_MT, VALUE_MT, ARRAY_MT, COND_MT, BARRIER_MT };

/* The kind of the object at idx (an index into kinds), or -1. */
static int kind_of(lua_State *L, int idx)
{
    for (int k = 0; kinds[k]; k++) {
        if (luaL_testudata(L, idx, kind_mts[k]))
            return ((handle *)lua_touserdata(L, idx))->m != NULL ? k : -1;
    }
    return -1;
}

static void set_int(lua_State *L, int t, const char *field, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, t, field);
}

/*
 * core.sync_describe(obj) -> {kind =, id =, memfd =, bytes =, ...} | nil:
 * what a spawned child needs to make the object anew on the same memory;
 * then a lock: rlock; a value or array: typecode, n (-1: a value), and
 * lock, its lock's description; a condition: lock; a barrier: action (or
 * nil).  nil: not one of this file's objects.
 */
static int l_describe(lua_State *L)
{
    int k = kind_of(L, 1);
    if (k < 0)
        return 0;
    handle *h = lua_touserdata(L, 1);
    lua_settop(L, 1);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, kinds[k]);
    lua_setfield(L, 2, "kind");
    lua_pushstring(L, h->id);
    lua_setfield(L, 2, "id");
    set_int(L, 2, "memfd", h->m->fd);
    set_int(L, 2, "bytes", (lua_Integer)h->m->len);
    if (k == 0) {
        lua_pushboolean(L, ((lockud *)h)->rlock);
        lua_setfield(L, 2, "rlock");
    } else if (k == 3 || k == 4) {
        lua_pushstring(L, ((shared *)h)->t->code);
        lua_setfield(L, 2, "typecode");
        set_int(L, 2, "n", ((shared *)h)->n);
    }
    if (k == 3 || k == 4 || k == 5) {   /* its lock, user value 1 */
        lua_pushcfunction(L, l_describe);
        lua_getiuservalue(L, 1, 1);
        lua_call(L, 1, 1);
        lua_setfield(L, 2, "lock");
    } else if (k == 6) {                /* its action */
        lua_getiuservalue(L, 1, 1);
        lua_setfield(L, 2, "action");
    }
    return 1;
}

/* The mapping of memfd fd in this attaching (session: a table of fd ->
 * mapping, so that the objects on one block share its mapping). */
static mapping *session_mapping(lua_State *L, int session, int fd, size_t len)
{
    lua_rawgeti(L, session, fd);
    mapping *m = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (m == NULL) {
        m = map_fd(L, fd, len);
        lua_pushlightuserdata(L, m);
        lua_rawseti(L, session, fd);
    }
    return m;
}

static lua_Integer get_int(lua_State *L, int t, const char *field)
{
    lua_getfield(L, t, field);
    int isint;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    lua_pop(L, 1);
    if (!isint)
        luaL_error(L, "sync_attach: a bad description");
    return v;
}

/* Pushes the object that description desc (a stack index) describes. */
static void attach(lua_State *L, int desc, int session)
{
    luaL_checkstack(L, 8, NULL);
    desc = lua_absindex(L, desc);
    lua_getfield(L, desc, "kind");
    int k = luaL_checkoption(L, -1, NULL, kinds);
    lua_pop(L, 1);
    lua_getfield(L, desc, "id");  /* (stays on the stack, holding the string) */
    const char *id = lua_tostring(L, -1);
    if (id == NULL || strlen(id) >= sizeof ((handle *)0)->id)
        luaL_error(L, "sync_attach: a bad description");
    /* made already (sent twice, or the lock of another object sent) */
    int top = lua_gettop(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_OBJECTS_KEY) == LUA_TTABLE
        && lua_getfield(L, -1, id) != LUA_TNIL && kind_of(L, -1) == k) {
        lua_replace(L, top);
        lua_settop(L, top);
        return;
    }
    lua_settop(L, top);
    lua_Integer fd = get_int(L, desc, "memfd"), len = get_int(L, desc, "bytes");
    if (fd < 0 || fd > INT_MAX || len < DATA_OFFSET)
        luaL_error(L, "sync_attach: a bad description");
    mapping *m = session_mapping(L, session, (int)fd, (size_t)len);
    switch (k) {
    case 0:
        lua_getfield(L, desc, "rlock");
        push_lock(L, m, lua_toboolean(L, -1), id);
        lua_remove(L, -2);
        break;
    case 1:
    case 2:
        push_sem(L, m, k == 2, id);
        break;
    case 3:
    case 4: {
        lua_getfield(L, desc, "typecode");
        const etype *t = check_type(L, -1, "sync_attach");
        lua_pop(L, 1);
        lua_Integer n = get_int(L, desc, "n");
        size_t count = n < 0 ? 1 : (size_t)n;
        if ((k == 3) != (n < 0) || count > ((size_t)len - DATA_OFFSET) / t->size)
            luaL_error(L, "sync_attach: a bad description");
        lua_getfield(L, desc, "lock");
        attach(L, -1, session);
        lua_remove(L, -2);
        push_shared(L, m, t, n, id);
        break;
    }
    case 5:
        lua_getfield(L, desc, "lock");
        attach(L, -1, session);
        lua_remove(L, -2);
        push_handle(L, sizeof(condud), m, "condition", COND_MT, id);
        lua_rotate(L, -2, 1);
        lua_setiuservalue(L, -2, 1);
        luamp_register_object(L, -1, id);
        break;
    case 6:
        push_handle(L, sizeof(barud), m, "barrier", BARRIER_MT, id);
        lua_getfield(L, desc, "action");
        lua_setiuservalue(L, -2, 1);
        luamp_register_object(L, -1, id);
        break;
    }
    lua_remove(L, -2);  /* the id */
}

/* core.sync_attach(desc, session) -> the object: in a spawned child, the
 * object sync_describe described, on the same memory (session: an empty
 * table the child passes to every call). */
static int l_attach(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    attach(L, 1, 2);
    return 1;
}

void luamp_open_sync(lua_State *L)
{
    static const luaL_Reg lock_methods[] = {
        {"acquire", l_lock_acquire}, {"release", l_lock_release}, {"locked", l_lock_locked},
        {"guard", l_lock_guard}, {NULL, NULL}
    };
    static const luaL_Reg lock_meta[] = {
        {"__gc", l_handle_gc}, {"__luamp_ref", l_handle_ref}, {"__tostring", l_lock_tostring}, {NULL, NULL}
    };
    static const luaL_Reg value_meta[] = {
        {"__index", l_value_index}, {"__newindex", l_value_newindex}, {"__gc", l_handle_gc},
        {"__luamp_ref", l_handle_ref}, {"__tostring", l_value_tostring}, {NULL, NULL}
    };
    static const luaL_Reg array_meta[] = {
        {"__index", l_array_index}, {"__newindex", l_array_newindex}, {"__len", l_array_len},
        {"__gc", l_handle_gc}, {"__luamp_ref", l_handle_ref}, {"__tostring", l_array_tostring}, {NULL, NULL}
    };
    static const luaL_Reg guard_meta[] = { {"__close", l_guard_close}, {NULL, NULL} };
    new_type(L, LOCK_MT, lock_meta, lock_methods);
    new_type(L, GUARD_MT, guard_meta, NULL);
    new_type(L, VALUE_MT, value_meta, NULL);
    new_type(L, ARRAY_MT, array_meta, NULL);
    static const luaL_Reg sem_methods[] = {
        {"acquire", l_sem_acquire}, {"release", l_sem_release}, {"get_value", l_sem_get_value},
        {"guard", l_sem_guard}, {NULL, NULL}
    };
    static const luaL_Reg event_methods[] = {
        {"set", l_event_set}, {"clear", l_event_clear}, {"is_set", l_event_is_set}, {"wait", l_event_wait},
        {NULL, NULL}
    };
    static const luaL_Reg sem_meta[] = {
        {"__gc", l_handle_gc}, {"__luamp_ref", l_handle_ref}, {"__tostring", l_sem_tostring}, {NULL, NULL}
    };
    static const luaL_Reg cond_methods[] = {
        {"acquire", l_cond_acquire}, {"release", l_cond_release}, {"guard", l_cond_guard},
        {"wait", l_cond_wait}, {"wait_for", l_cond_wait_for}, {"notify", l_cond_notify},
        {"notify_all", l_cond_notify_all}, {NULL, NULL}
    };
    static const luaL_Reg cond_meta[] = {
        {"__gc", l_handle_gc}, {"__luamp_ref", l_handle_ref}, {"__tostring", l_cond_tostring}, {NULL, NULL}
    };
    static const luaL_Reg barrier_methods[] = {
        {"wait", l_barrier_wait}, {"abort", l_barrier_abort}, {"reset", l_barrier_reset}, {NULL, NULL}
    };
    static const luaL_Reg barrier_meta[] = {
        {"__gc", l_handle_gc}, {"__luamp_ref", l_handle_ref}, {"__tostring", l_barrier_tostring}, {NULL, NULL}
    };
    static const luaL_Reg constructors[] = {
        {"lock", l_new_lock}, {"value", l_new_value}, {"array", l_new_array},
        {"semaphore", l_new_semaphore}, {"event", l_new_event}, {"condition", l_new_condition},
        {"barrier", l_new_barrier}, {"sync_describe", l_describe}, {"sync_attach", l_attach},
        {NULL, NULL}
    };
    new_type(L, SEM_MT, sem_meta, sem_methods);
    new_type(L, EVENT_MT, sem_meta, event_methods);
    new_type(L, COND_MT, cond_meta, cond_methods);
    if (luaL_newmetatable(L, BARRIER_MT)) {    /* __index: fields, then methods */
        luaL_setfuncs(L, barrier_meta, 0);
        lua_newtable(L);
        luaL_setfuncs(L, barrier_methods, 0);
        lua_pushcclosure(L, l_barrier_index, 1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, constructors, 0);
}
