/* SPDX-License-Identifier: MIT */
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
    SHMQ_INTERRUPTED, /* a SIGINT/SIGTERM reached the main script */
    SHMQ_ERROR      /* errno says why */
};

/* maxsize: most messages held at once (0: unbounded, up to memory). */
shmq *shmq_create(uint64_t maxsize);
/* The queue's descriptors (memfd, get eventfd, put eventfd), and a view
 * of a queue from them in a process that received them across exec (the
 * spawn start method); the view owns them. */
void shmq_fds(shmq *q, int fds[3]);
shmq *shmq_attach(int memfd, int ev_get, int ev_put);
/* Unmaps and closes this process's view; the queue lives on elsewhere. */
void shmq_destroy(shmq *q);

/* Each message put gets a sequence number (1, 2, ...).  A consumer may
 * "claim" what it gets in a slot of the queue's shared header: the slot
 * then holds the message's sequence number and the time it was taken
 * until the consumer gets again (or sleeps), so if the consumer dies, its
 * parent knows which message it held.  A Pool's workers each own a slot. */
#define SHMQ_MAX_CLAIMS 256

typedef struct shmq_wait {
    const int *extra;   /* also wake when one of these becomes readable */
    int nextra;         /* at most SHMQ_MAX_EXTRA */
    int which;          /* out: index into extra, with SHMQ_EVENT */
    int claim;          /* slot to claim the message in, or -1 */
    uint64_t seq;       /* out: the message's sequence number */
    size_t lend_from;   /* 0, or lend messages of this many bytes and more */
    int hold;           /* lend them holding the get lock (see below) */
    /* with lend_from: lend only the messages this says yes to (it reads
     * the message where it lies, under the get lock) */
    int (*lend_if)(const char *msg, size_t len);
    const char *lent;   /* out: the message, lent in place, or NULL */
    size_t lent_len;    /* out: its length */
} shmq_wait;

/* Where a put left its message: its sequence number, and the position
 * of its record in the ring, by which shmq_cancel finds it at once. */
typedef struct shmq_ticket {
    uint64_t seq;
    uint64_t pos;
} shmq_ticket;

/* deadline: a luamp_now() time, or < 0 to wait forever.
 * put copies `n` bytes in (*t, if not NULL, says where);
 * get copies the next message out into `out` (replacing its contents). */
int shmq_put(shmq *q, const void *p, size_t n, double deadline, shmq_ticket *t);
/* put for a message built in a luamp_buf: its data with its spans. */
int shmq_put_buf(shmq *q, const luamp_buf *m, double deadline, shmq_ticket *t);
/* put of n bytes that fill writes into the ring itself, where they lie:
 * at d1 (n1 bytes) and, when the record wraps around the ring's end, d2
 * (n2 bytes), under the put lock (no other producer puts meanwhile; a
 * producer that dies in fill leaves nothing put).  luamp-mpi receives
 * MPI messages so, without a copy (cluster.c). */
typedef void (*shmq_fill_fn)(void *ctx, char *d1, size_t n1, char *d2, size_t n2);
int shmq_put_fill(shmq *q, size_t n, shmq_fill_fn fill, void *ctx, double deadline, shmq_ticket *t);
#define SHMQ_MAX_EXTRA 256
/* Whether a put's SHMQ_ERROR (its errno) says the message is too big:
 * over LUAMP_MAX_MESSAGE (EMSGSIZE), or more than the ring could grow to
 * hold (ENOMEM, ENOSPC).  Nothing was put; the queue goes on. */
int shmq_too_big(int err);
int shmq_get(shmq *q, luamp_buf *out, double deadline, shmq_wait *w);

/* Lending: a get asked to (w->lend_from) may hand out a big message where
 * it lies in the ring instead of copying it into `out` (which is then
 * left empty): w->lent points at it.  Its room stays taken until
 * shmq_give_back, or until the next get on the queue, so only a queue
 * with a single consumer may lend, and the lent bytes are only valid
 * until then.  A Pool's result queue, read by its parent alone, lends. */
int shmq_give_back(shmq *q);

/* Holding: a get asked to (w->hold, with w->lend_from) lends a big
 * message that does not wrap while it keeps the get lock, which any
 * queue may do, whatever its number of consumers: the consumer reads the
 * message in place and no other consumer gets meanwhile.  Nothing is
 * taken until shmq_end_hold(q, take) lets go of the lock: take 1 takes
 * the message (as a get that copied it would have), take 0 leaves it at
 * the head.  A consumer that dies holding leaves the message in the
 * queue.  Until shmq_end_hold, any other call of this process that needs
 * the get lock of the queue fails with EDEADLK instead of waiting for
 * itself. */
void shmq_end_hold(shmq *q, int take);

/* What slot `slot` holds: the sequence number (0: nothing) and when it
 * was taken (luamp_now() time).  release empties the slot. */
int shmq_claim(shmq *q, int slot, uint64_t *seq, double *since);
int shmq_release(shmq *q, int slot);

/* Puts a message taken from the queue back, under its own sequence
 * number, and empties claim slot `slot` in the same step: a consumer that
 * cannot handle a message hands it to another (see pool.c, push_task). */
int shmq_requeue(shmq *q, int slot, const void *p, size_t n, uint64_t seq);

/* Withdraws the message numbered seq if no consumer has taken it yet: it
 * no longer counts, and no get returns it.  1 withdrawn, 0 not in the
 * queue (taken, or never put), -1 on error (errno).  pos is the position
 * the put of seq gave out (its ticket's), or SHMQ_ANYWHERE: with it the
 * record is found at once, else by walking the ring. */
#define SHMQ_ANYWHERE UINT64_MAX
int shmq_cancel(shmq *q, uint64_t seq, uint64_t pos);

/* JoinableQueue: made joinable right after shmq_create, every put counts
 * an unfinished item; shmq_task_done marks one done (1: none was
 * unfinished, -1: error); shmq_join waits until none is unfinished
 * (SHMQ_OK, SHMQ_TIMEOUT or SHMQ_INTERRUPTED). */
void shmq_joinable(shmq *q);
int shmq_is_joinable(shmq *q);
int shmq_task_done(shmq *q);
int shmq_join(shmq *q, double deadline);
uint64_t shmq_unfinished(shmq *q);

/* Number of messages held now; whether a put would wait. */
uint64_t shmq_count(shmq *q);
int shmq_full(shmq *q);
/* After shutdown, getters that find the queue empty get SHMQ_SHUTDOWN
 * instead of waiting; items already in are still delivered. */
int shmq_shutdown(shmq *q);
/* Producers of this queue never wait for a consumer to make room before
 * the ring grows (see "Pacing" in shmq.c): a Pool's task queue, whose
 * producer (map_async) must not wait for its workers. */
void shmq_no_pace(shmq *q);
/* The eventfd that becomes readable when an item may be waiting. */
int shmq_get_fd(shmq *q);

/* Test hooks: count a token for a sleeping consumer without writing it,
 * as a producer killed between the two would; the tokens counted now. */
void shmq_test_lose_token(shmq *q);
unsigned shmq_test_tokens(shmq *q);
/* Test hook: the ring's capacity in bytes now. */
uint64_t shmq_test_capacity(shmq *q);

#endif
