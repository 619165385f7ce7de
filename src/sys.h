/* SPDX-License-Identifier: MIT */
/*
 * sys.h - the small utilities every part of luamp uses (sys.c): the
 * monotonic clock and deadlines, errors raised to Lua, and scratch
 * buffers for received messages.
 */
#ifndef LUAMP_SYS_H
#define LUAMP_SYS_H

#include <stddef.h>
#include <sys/types.h>
#include <lua.h>
#include "codec.h"

/* Seconds on the monotonic clock. */
double luamp_now(void);

/* Milliseconds left until `deadline` (a luamp_now() time) for poll():
 * -1 when deadline < 0 (wait forever), 0 once passed. */
int luamp_poll_ms(double deadline);

/* Timeout argument at `idx`: nil/none -> -1 (forever), 0 or less -> 0 (do
 * not wait), else a deadline. */
double luamp_opt_deadline(lua_State *L, int idx);

/* Raises an mp.Error of `kind` with a formatted message (through the
 * function the Lua layer stored as registry["luamp.raise"]; a plain error
 * before that). */
int luamp_raise(lua_State *L, const char *kind, const char *fmt, ...);

/* Raises kind "os": the message, ": ", strerror(err), and field errno. */
int luamp_raise_errno(lua_State *L, int err, const char *fmt, ...);

/* Lua: raises "what: strerror(errno)" as an mp.Error of kind "os" with
 * field errno (see luamp_raise_errno). */
int luamp_sys_error(lua_State *L, const char *what);

/* After decoding a message of n bytes: steps the collector for a big one
 * (see sys.c). */
void luamp_collect_for(lua_State *L, size_t n);

/* Shrinks a scratch buffer that a big message left large. */
void luamp_buf_trim(luamp_buf *b);

/* Faults in the pages of [p + from, p + to) that are not resident yet,
 * with one system call per run of them rather than a fault per page
 * (advice only: nothing fails).  Worth it for blocks of
 * LUAMP_POPULATE_FROM bytes and more about to be written. */
#define LUAMP_POPULATE_FROM ((size_t)256 << 10)
void luamp_populate(char *p, size_t from, size_t to);
/* The same for a shared mapping of the memfd fd, p being the file's byte
 * at `at`: the pages the file lacks are allocated in it first
 * (fallocate), one call per run, then mapped here (a 300 MiB copy into
 * a fresh memfd went from about 1,350 to 1,700 MiB/s on this VM,
 * bench/rawbig.c). */
void luamp_populate_shared(char *p, size_t from, size_t to, int fd, off_t at);
/* Empties b and makes room for a message of n bytes about to be copied
 * in: 0, or -1 when out of memory.  A buffer too small is replaced, not
 * grown (nothing it held is copied), and the new one's pages are faulted
 * in (luamp_populate); one big enough is used as it is (asking which of
 * its pages are resident would cost more than the few faults left). */
int luamp_buf_prepare(luamp_buf *b, size_t n);

#endif
