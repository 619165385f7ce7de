/* SPDX-License-Identifier: MIT */
/*
 * lock.h - the lock word of luamp's shared objects (lock.c): a futex word
 * in shared memory that holds its holder's pid, so that a process which
 * dies holding the lock cannot leave it taken for ever.  sync.c's Lock,
 * RLock, Semaphore, Event, Condition and Barrier sleep on it, and so do
 * the dict and list of shdict.c.
 */
#ifndef LUAMP_LOCK_H
#define LUAMP_LOCK_H

#include <stdatomic.h>
#include <stdint.h>

/* Seconds between looks for a dead holder while waiting. */
#define LUAMP_LOCK_RECHECK 0.1

/* All zeros is a free lock.  A Semaphore or an Event keeps its count (or
 * flag) in `word` and a BoundedSemaphore its bound in `depth` instead. */
typedef struct luamp_lock {
    _Atomic uint32_t word;     /* 0: free; else the holder's pid */
    _Atomic uint32_t waiters;  /* processes sleeping on word */
    uint32_t depth;            /* RLock: acquires by the holder not released */
    uint32_t pad;
    _Atomic uint64_t holder;   /* the holder's pid << 32 | its start time (0:
                                  not written yet), see holder_gone in lock.c */
} luamp_lock;

/* This process's pid, without a system call (reset in a forked child). */
uint32_t luamp_lock_self(void);

/* Takes the lock (again, for an RLock's holder): 1 taken; 0 not by the
 * deadline (a luamp_now() time; < 0: none, 0: do not wait); -1
 * interrupted (SIGINT/SIGTERM, see luamp_interrupt_pending).  A holder
 * found dead is taken over (depth 1). */
int luamp_lock_acquire(luamp_lock *b, int rlock, double deadline);

/* Gives the lock back: NULL, or why the release is refused. */
const char *luamp_lock_release(luamp_lock *b, int rlock);

/* Sleeps while b's word is `seen`: 1 when it may have changed, 2 when it
 * is time to look again (LUAMP_LOCK_RECHECK passed), 0 at the deadline,
 * -1 when interrupted. */
int luamp_lock_wait_while(luamp_lock *b, uint32_t seen, double deadline);

/* futex(2) on a process-shared word: sleeps while *word is `seen`, at
 * most LUAMP_LOCK_RECHECK and not past the deadline: 0 when woken, else
 * an errno value (EAGAIN: it changed; ETIMEDOUT; EINTR).  wake wakes one
 * sleeper. */
int luamp_futex_wait(_Atomic uint32_t *word, uint32_t seen, double deadline);
void luamp_futex_wake(_Atomic uint32_t *word);

/* Whether process pid is gone (reaped: a zombie still counts as there
 * until its parent waits for it).  One system call. */
int luamp_pid_gone(uint32_t pid);

#endif
