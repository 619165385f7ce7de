/* SPDX-License-Identifier: MIT */
/*
 * sys.c - the small utilities every part of luamp uses: the monotonic
 * clock and deadlines, errors raised to Lua as an mp.Error, scratch
 * buffers and the collector's pace for received messages, and the core
 * functions too small for a file of their own (now, sleep, isatty,
 * term_columns, table, default_processes).
 *
 * A timeout crosses luamp as a deadline on the monotonic clock (-1:
 * none, 0: do not wait), so that a wait that wakes early and waits again
 * never waits longer in all; luamp_poll_ms turns it into poll()'s
 * argument.  A failed system call reaches the user as a sentence with its
 * cause: luamp_sys_error and luamp_raise_errno raise an mp.Error of kind
 * "os" whose message ends with strerror and whose errno field holds the
 * number.
 */
#include "sys.h"
#include "host.h"
#include "interrupt.h"
#include "module.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <lauxlib.h>

/* ---- time and deadlines ------------------------------------------------ */

double luamp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int luamp_poll_ms(double deadline)
{
    if (deadline < 0)
        return -1;
    double left = deadline - luamp_now();
    if (left <= 0)
        return 0;
    if (left > 86400.0 * 24)
        left = 86400.0 * 24;
    return (int)(left * 1000.0) + 1;
}

double luamp_opt_deadline(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return -1;
    double t = luaL_checknumber(L, idx);
    luaL_argcheck(L, t == t, idx, "timeout is NaN");
    return t > 0 ? luamp_now() + t : 0;     /* 0: do not wait at all */
}

/* ---- errors raised to Lua ---------------------------------------------- */

/* Raises the message on top of the stack as an mp.Error of `kind`, with
 * field errno when err is not 0 (a plain string where lua/luamp/errors.lua is not
 * loaded yet). */
static int raise_top(lua_State *L, const char *kind, int err)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_RAISE_KEY) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return lua_error(L);
    }
    lua_pushstring(L, kind);
    lua_pushvalue(L, -3);
    if (err)
        lua_pushinteger(L, err);
    else
        lua_pushnil(L);
    lua_call(L, 3, 0);      /* raises */
    return 0;
}

int luamp_raise(lua_State *L, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return raise_top(L, kind, 0);
}

int luamp_raise_errno(lua_State *L, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushfstring(L, "%s: %s", lua_tostring(L, -1), strerror(err));
    return raise_top(L, "os", err);
}

int luamp_sys_error(lua_State *L, const char *what)
{
    return luamp_raise_errno(L, errno, "%s", what);
}

/* ---- received messages ------------------------------------------------- */

/*
 * Every 256 KiB received, the collector is stepped as if they had been
 * allocated once more.  A received big string is usually garbage soon,
 * but the collector only starts a cycle once the heap has doubled: a
 * stream of 1 MiB messages then piles up garbage in fresh pages, and
 * every byte received costs its share of a page fault (half the
 * receiver's time at 1 MiB).  Collected sooner, the memory is reused.
 * The extra work is proportional to the bytes received, as the
 * collector's own pacing is.  A collector the script stopped stays
 * stopped (a step runs even then).
 *
 * Such a step does nothing between two cycles, when the collector's debt
 * stands at minus the heap's size: a worker forked from a parent holding
 * 256 MiB piled up 128 MiB of received 1 MiB strings before a cycle
 * began.  Starting the next cycle at once (a basic step first) fixed
 * that, but halved map_small's rate (22 -> 16 M/s): a worker that
 * inherited the script's million items, or a parent holding a million
 * results, then marked them all over again for every 256 KiB.  A task
 * of big strings is held while decoded (pool.c, TASK_FLAT), and the
 * collector's restart after that starts its next step at once, which is
 * what such streams need; a stream of big messages of small values
 * still waits for the heap to double.
 */
#define COLLECT_FROM ((size_t)256 << 10)

void luamp_collect_for(lua_State *L, size_t n)
{
    /* Bytes received since the last step; smaller messages add up (a
     * stream of 64 KiB messages into a heap holding 1 GiB of other data
     * otherwise waits for 1 GiB of garbage).  One counter per process:
     * a step in whichever state crosses the mark is work done early,
     * not work lost. */
    static size_t pending;
    pending += n;
    if (pending >= COLLECT_FROM) {
        size_t kb = pending >> 10;
        pending = 0;
        if (lua_gc(L, LUA_GCISRUNNING))
            lua_gc(L, LUA_GCSTEP, kb > INT_MAX ? INT_MAX : (int)kb);
    }
}

/* ---- big blocks ------------------------------------------------------- */

/* A block glibc hands out again usually is resident already, and
 * faulting in resident pages is not free (about 140 ns a page here, more
 * than copying them), so mincore() first says which are not, 256 pages
 * at a time. */
static void populate(char *p, size_t from, size_t to, int fd, off_t at)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + from + page - 1) & ~(page - 1);
    uintptr_t e = ((uintptr_t)p + to) & ~(page - 1);
    unsigned char vec[256];

    while (a < e) {
        size_t n = (e - a) / page < sizeof vec ? (e - a) / page : sizeof vec;
        if (mincore((void *)a, n * page, vec) != 0)
            return;     /* (advice only: the pages fault in when written) */
        for (size_t i = 0; i < n;) {
            size_t j = i;
            while (j < n && !(vec[j] & 1))
                j++;
            /* Advice only: if they fail (EINVAL before Linux 5.14, ENOMEM,
             * ENOSPC), the pages fault in when written, as they would
             * have anyway. */
            if (j > i && fd >= 0)
                (void)fallocate(fd, 0, at + (off_t)(a + i * page - (uintptr_t)p), (off_t)((j - i) * page));
            if (j > i)
                (void)madvise((void *)(a + i * page), (j - i) * page, MADV_POPULATE_WRITE);
            i = j + 1;
        }
        a += n * page;
    }
}

void luamp_populate(char *p, size_t from, size_t to)
{
    populate(p, from, to, -1, 0);
}

void luamp_populate_shared(char *p, size_t from, size_t to, int fd, off_t at)
{
    populate(p, from, to, fd, at);
}

int luamp_buf_prepare(luamp_buf *b, size_t n)
{
    luamp_buf_reset(b);
    if (b->cap >= n)
        return 0;       /* (a buffer kept: mostly written before) */
    luamp_buf_free(b);  /* (realloc would copy what the buffer held) */
    if (luamp_buf_reserve(b, n) != 0)
        return -1;
    if (n >= LUAMP_POPULATE_FROM)
        luamp_populate(b->data, 0, n);
    return 0;
}

/* Scratch buffers keep up to 64 MiB: growing one again for every big
 * message costs a realloc chain and fresh page faults each time. */
void luamp_buf_trim(luamp_buf *b)
{
    if (b->cap > ((size_t)64 << 20)) {
        luamp_buf_free(b);
    }
    luamp_buf_reset(b);
}

/* ---- core functions ---------------------------------------------------- */

static int l_now(lua_State *L)
{
    lua_pushnumber(L, luamp_now());
    return 1;
}

static int l_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    double deadline = luamp_now() + s;
    int ms;
    while ((ms = luamp_poll_ms(deadline)) > 0) {
        if (poll(NULL, 0, ms) < 0)
            luamp_raise_interrupt(L);
    }
    return 0;
}

static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* term_columns(fd): the width of the terminal on fd; nil when fd is not a
 * terminal, 80 when the terminal does not say (a serial line, a pty
 * nobody sized). */
static int l_term_columns(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    struct winsize ws;
    if (!isatty(fd)) {
        lua_pushnil(L);
        return 1;
    }
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        lua_pushinteger(L, ws.ws_col);
    else
        lua_pushinteger(L, 80);
    return 1;
}

/* core.table(narr, nrec): a table with room for narr array items and
 * nrec other fields (Lua 5.4 has no way to say so from Lua), so that one
 * filled with a million results is not grown and copied twenty times. */
static int l_table(lua_State *L)
{
    lua_Integer narr = luaL_checkinteger(L, 1), nrec = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, narr >= 0 && narr <= (1 << 26), 1, "out of range");
    luaL_argcheck(L, nrec >= 0 && nrec <= (1 << 26), 2, "out of range");
    lua_createtable(L, (int)narr, (int)nrec);
    return 1;
}

static int l_default_processes(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_DEFAULT_PROCESSES_KEY);
    return 1;
}

void luamp_open_sys(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"now", l_now},
        {"sleep", l_sleep},
        {"isatty", l_isatty},
        {"term_columns", l_term_columns},
        {"default_processes", l_default_processes},
        {"table", l_table},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
}
