/*
 * sys.h - the small POSIX layer under luamp's Lua types: monotonic time,
 * waiting on several file descriptors with a timeout, forking children
 * that die with their parent, and child handles built on pidfds.
 */
#ifndef LUAMP_SYS_H
#define LUAMP_SYS_H

#include <stddef.h>
#include <sys/types.h>
#include <lua.h>
#include "codec.h"
#include "luamp.h"

/* Whether states made by luamp_newstate take their small blocks from an
 * arena (host.c): not under AddressSanitizer, so that it sees each one. */
#if defined(__SANITIZE_ADDRESS__)
#define LUAMP_USE_ARENA 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LUAMP_USE_ARENA 0
#endif
#endif
#ifndef LUAMP_USE_ARENA
#define LUAMP_USE_ARENA 1
#endif
/* The address space an arena reserves: 16 GiB. */
#define LUAMP_ARENA_BYTES ((size_t)1 << 34)

/* Seconds on the monotonic clock. */
double luamp_now(void);

/* Milliseconds left until `deadline` (a luamp_now() time) for poll():
 * -1 when deadline < 0 (wait forever), 0 once passed. */
int luamp_poll_ms(double deadline);

/* After decoding a message of n bytes: steps the collector for a big one
 * (see sys.c). */
void luamp_collect_for(lua_State *L, size_t n);

/* Lua: raises "what: strerror(errno)" as an mp.Error of kind "os" with
 * field errno (see luamp_raise_errno). */
int luamp_sys_error(lua_State *L, const char *what);

/* Registers the core functions of this layer into the table on top. */
void luamp_open_sys(lua_State *L);

/* Metatable names. */
#define LUAMP_CHILD_MT "luamp.child"
#define LUAMP_CONN_MT  "luamp.Connection"
#define LUAMP_QUEUE_MT "luamp.Queue"

/* From pipe.c and shmq.c: register their constructors into the table on top. */
void luamp_open_pipe(lua_State *L);
void luamp_open_queue(lua_State *L);
/* From sync.c: Lock, RLock, Value and Array. */
void luamp_open_sync(lua_State *L);
void luamp_open_run(lua_State *L);

/* A file descriptor a waitable object exposes to core.wait(). */
int luamp_waitable_fd(lua_State *L, int idx);

/* Remembers a luamp object under `id` in registry["luamp.objects"] (weak
 * values) so that the codec can send it by reference to a forked child. */
/* This process's pid (getpid() is a system call; this is not). */
pid_t luamp_pid(void);

/* 1 when the object id names an object that the process which forked
 * this one (with core.fork) made after the fork: one this process cannot
 * have inherited; 2 when this process was spawned (it knows only the
 * objects it was started with); else 0. */
int luamp_object_is_newer(const char *id, size_t len);
void luamp_register_object(lua_State *L, int idx, const char *id);
/* A process-unique id for a new object: "<kind>:<pid>:<counter>". */
void luamp_new_object_id(char *out, size_t n, const char *kind);

#endif

/*
 * Interruption.  luamp_catch_interrupts() (the luamp binary calls it)
 * turns SIGINT and SIGTERM into a Lua error of kind "interrupted" in the
 * main script: raised at once by the luamp call that was waiting, or by a
 * hook at the script's next instruction when it was computing.  Forked
 * children go back to the default actions.
 */
/* A signal arrived that nobody has raised yet (waits check this on EINTR). */
int luamp_interrupt_pending(void);
/* Raises the pending interrupt as a Lua error; returns if there is none. */
void luamp_raise_interrupt(lua_State *L);

/* Raises an mp.Error of `kind` with a formatted message (through the
 * function the Lua layer stored as registry["luamp.raise"]; a plain error
 * before that). */
int luamp_raise(lua_State *L, const char *kind, const char *fmt, ...);
/* Raises kind "os": the message, ": ", strerror(err), and field errno. */
int luamp_raise_errno(lua_State *L, int err, const char *fmt, ...);

/* Timeout argument at `idx`: nil/none -> -1 (forever), 0 or less -> 0 (do
 * not wait), else a deadline. */
double luamp_opt_deadline(lua_State *L, int idx);

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
