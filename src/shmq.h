/*
 * shmq.h - a queue of byte messages in shared memory, usable by any number
 * of producer and consumer processes forked after it was made.
 */
#ifndef LUAMP_SHMQ_H
#define LUAMP_SHMQ_H

#include <stddef.h>
#include <stdint.h>
#include "codec.h"

typedef struct shmq shmq;

enum shmq_status {
    SHMQ_OK = 0,
    SHMQ_TIMEOUT,   /* nothing to get, or still full, at the deadline */
    SHMQ_SHUTDOWN,  /* get: empty and shut down, nothing more will come */
    SHMQ_EVENT,     /* get: one of the extra descriptors became readable */
    SHMQ_ERROR      /* errno says why */
};

/* maxsize: most messages held at once (0: unbounded, up to memory). */
shmq *shmq_create(uint64_t maxsize);
/* Unmaps and closes this process's view; the queue lives on elsewhere. */
void shmq_destroy(shmq *q);

/* deadline: a luamp_now() time, or < 0 to wait forever.
 * put copies `n` bytes in; get copies the next message out into `out`
 * (replacing its contents).  While get waits for an item it also watches
 * the `nextra` descriptors in `extra` (pidfds of workers, say): when one
 * becomes readable first it returns SHMQ_EVENT with *which its index. */
int shmq_put(shmq *q, const void *p, size_t n, double deadline);
#define SHMQ_MAX_EXTRA 256
int shmq_get(shmq *q, luamp_buf *out, double deadline,
             const int *extra, int nextra, int *which);

/* Number of messages held now; whether a put would wait. */
uint64_t shmq_count(shmq *q);
int shmq_full(shmq *q);
/* After shutdown, getters that find the queue empty get SHMQ_SHUTDOWN
 * instead of waiting; items already in are still delivered. */
int shmq_shutdown(shmq *q);
/* The eventfd that becomes readable when an item may be waiting. */
int shmq_get_fd(shmq *q);

#endif
