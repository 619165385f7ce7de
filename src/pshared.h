/* SPDX-License-Identifier: MIT */
/*
 * pshared.h - what code working on memory shared between processes
 * (shmq.c, pipe.c) needs alike: a pause for its spin loops, and its
 * mutexes.
 */
#ifndef LUAMP_PSHARED_H
#define LUAMP_PSHARED_H

#include <pthread.h>

/* One turn of a spin loop: tells the CPU that this is a wait, so that it
 * neither speculates past it nor starves a sibling hyperthread. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Initializes a mutex of `type` (PTHREAD_MUTEX_DEFAULT,
 * PTHREAD_MUTEX_ERRORCHECK) in shared memory: process-shared, and robust,
 * so that a process that dies holding it gives the next locker
 * EOWNERDEAD instead of a hang.  0, or an errno value. */
static inline int init_shared_mutex(pthread_mutex_t *m, int type)
{
    pthread_mutexattr_t a;
    int e = pthread_mutexattr_init(&a);
    if (!e) e = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!e) e = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!e) e = pthread_mutexattr_settype(&a, type);
    if (!e) e = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return e;
}

#endif
