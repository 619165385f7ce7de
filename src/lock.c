/* SPDX-License-Identifier: MIT */
/*
 * lock.c - the lock word of luamp's shared objects (lock.h).
 *
 * The word is 0 when free, else the pid of the process holding it:
 * taking it is one compare-and-swap, and a waiter sleeps on the word with
 * futex(2) (process-shared: no FUTEX_PRIVATE_FLAG).  `waiters` counts the
 * sleepers, so a release makes no system call when nobody waits.  Storing
 * the holder's pid in the word itself (not beside it) means a process that
 * dies holding a lock cannot leave it taken for ever: a waiter that finds
 * the holder gone (kill(pid, 0) fails with ESRCH once it is reaped; and,
 * after a whole RECHECK, /proc says it is a zombie or the pid names a
 * process started later than the holder, see holder_gone) takes the lock
 * over.  Waiters look again at least every RECHECK seconds for that
 * reason.  (Moved here from sync.c, whose objects use it, so that
 * shdict.c's can too.)
 */
#include "lock.h"
#include "sys.h"
#include "interrupt.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

#define RECHECK LUAMP_LOCK_RECHECK
typedef luamp_lock block;

/* This process's pid: getpid() is a system call, and an acquire and a
 * release each need it.  A fork resets it in the child, and the tag,
 * through a fork handler registered at the first use; if that cannot be
 * registered (no memory), every child would take its parent's pid for
 * its own, so the pid is then asked for each time. */
static uint32_t my_pid;
static uint64_t my_tag;
static int cache_pid;
static pthread_once_t fork_handler = PTHREAD_ONCE_INIT;

static void forget_pid(void)
{
    my_pid = 0;
    my_tag = 0;
}

static void register_fork_handler(void)
{
    cache_pid = pthread_atfork(NULL, NULL, forget_pid) == 0;
}

uint32_t luamp_lock_self(void)
{
    if (my_pid == 0) {
        (void)pthread_once(&fork_handler, register_fork_handler);
        if (!cache_pid)
            return (uint32_t)getpid();
        my_pid = (uint32_t)getpid();
    }
    return my_pid;
}

/* Process pid's start time (clock ticks after boot, from /proc/PID/stat)
 * and state letter: 0, or -1 when there is no such process (ENOENT) or
 * /proc cannot say (errno). */
static int proc_stat(uint32_t pid, uint64_t *start, char *state)
{
    char path[32], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* pid (comm) state ppid ...: the name may hold spaces and parentheses,
     * so fields count from its last ')'; the start time is field 22 */
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ') {
        errno = EINVAL;
        return -1;
    }
    *state = p[2];
    p += 2;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL) {
            errno = EINVAL;
            return -1;
        }
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

/* What a holder writes in block.holder: its pid and (the low half of) its
 * start time, which tell it from a later process given the same pid. */
static uint64_t tag_of(uint32_t pid, uint64_t start)
{
    return (uint64_t)pid << 32 | (start & 0xffffffffu) | 1;   /* (never 0) */
}

static uint64_t self_tag(void)
{
    uint32_t me = luamp_lock_self();
    if (my_tag == 0 || !cache_pid) {
        uint64_t start = 0;
        char state;
        (void)proc_stat(me, &start, &state);    /* (no /proc: pid only) */
        if (!cache_pid)
            return tag_of(me, start);
        my_tag = tag_of(me, start);
    }
    return my_tag;
}

int luamp_futex_wait(_Atomic uint32_t *word, uint32_t seen, double deadline)
{
    double wait = RECHECK;
    if (deadline >= 0) {
        double left = deadline - luamp_now();
        if (left < wait)
            wait = left > 0 ? left : 0;
    }
    struct timespec ts = { (time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9) };
    if (syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, &ts, NULL, 0) == 0)
        return 0;
    return errno;   /* EAGAIN: it changed; ETIMEDOUT; EINTR */
}

void luamp_futex_wake(_Atomic uint32_t *word)
{
    /* (the only failures are bad arguments, which these are not) */
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Whether process pid is gone (reaped: a zombie still counts as there
 * until its parent waits for it).  One system call: a Condition asks it
 * of every waiter it notifies. */
int luamp_pid_gone(uint32_t pid)
{
    return pid != 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Whether the process holding lock b (its word is pid) is gone: reaped
 * (kill() says so), or, with `deep` (after the holder kept the lock for a
 * whole RECHECK: reading /proc costs microseconds), a zombie, or the pid
 * now names another process: the holder died and its pid was given to a
 * new one, which kill() alone took for the holder alive, so the lock
 * stayed taken for ever.  A holder that has not written its tag yet
 * counts as there. */
static int holder_gone(block *b, uint32_t pid, int deep)
{
    if (pid == 0)
        return 0;
    uint64_t tag = atomic_load(&b->holder);
    int tagged = (uint32_t)(tag >> 32) == pid;
    if (pid == luamp_lock_self())
        return tagged && tag != self_tag();
    if (kill((pid_t)pid, 0) != 0)
        return errno == ESRCH;
    if (!deep)
        return 0;
    uint64_t start;
    char state;
    if (proc_stat(pid, &start, &state) != 0)
        return errno == ENOENT;
    return state == 'Z' || state == 'X' || (tagged && tag != tag_of(pid, start));
}

/* Sleeps while the word is `seen`: 1 when it may have changed, 2 when it
 * is time to look again (RECHECK passed), 0 at the deadline, -1 when
 * interrupted.  An interrupt is looked for after every sleep, not only
 * one that a signal cut short (EINTR): a signal that arrives between
 * two sleeps would otherwise be missed, and the wait go on for ever. */
int luamp_lock_wait_while(block *b, uint32_t seen, double deadline)
{
    if (deadline == 0 || (deadline > 0 && luamp_now() >= deadline))
        return 0;
    atomic_fetch_add(&b->waiters, 1);
    int e = luamp_futex_wait(&b->word, seen, deadline);
    atomic_fetch_sub(&b->waiters, 1);
    if (luamp_interrupt_pending())
        return -1;
    return e == ETIMEDOUT ? 2 : 1;
}

/* 1: taken; 0: not by the deadline; -1: interrupted (SIGINT/SIGTERM). */
int luamp_lock_acquire(block *b, int rlock, double deadline)
{
    uint32_t me = luamp_lock_self();
    int deep = 0;
    for (;;) {
        uint32_t w = 0;
        if (atomic_compare_exchange_strong(&b->word, &w, me)) {
            atomic_store(&b->holder, self_tag());
            b->depth = 1;
            return 1;
        }
        int gone = holder_gone(b, w, deep);
        if (w == me && rlock && !gone) {
            b->depth++;
            return 1;
        }
        if (gone) {
            if (atomic_compare_exchange_strong(&b->word, &w, me)) {
                atomic_store(&b->holder, self_tag());
                b->depth = 1;
                return 1;
            }
            continue;
        }
        int r = luamp_lock_wait_while(b, w, deadline);
        if (r <= 0)
            return r;
        deep = r == 2;
    }
}

/* NULL, or why the release is refused. */
const char *luamp_lock_release(block *b, int rlock)
{
    uint32_t w = atomic_load(&b->word);
    if (w == 0)
        return "release of an unlocked lock";
    if (rlock) {
        if (w != luamp_lock_self())
            return "cannot release an RLock this process does not hold";
        if (--b->depth > 0)
            return NULL;
    }
    atomic_store(&b->holder, 0);
    atomic_store(&b->word, 0);
    if (atomic_load(&b->waiters) > 0)
        luamp_futex_wake(&b->word);
    return NULL;
}
