/* SPDX-License-Identifier: MIT */
/*
 * shmq.c - a multi-producer, multi-consumer message queue in shared memory.
 *
 * Why not a pipe, as Python's Queue uses?  A pipe holds 64 KiB-1 MiB; a
 * producer that puts more waits for a reader, so Python hands items to a
 * feeder thread, which loses them when the producer exits and deadlocks a
 * parent that joins the producer before reading.  Here a put copies the
 * message into memory shared by every process that inherited the queue
 * and returns: once put returns, the item is in the queue, whatever
 * happens to the producer next.  An unbounded queue never blocks its
 * producer; a bounded one (maxsize, counted in items as in Python) makes
 * put wait for room.
 *
 * Layout: one memfd.  Its first pages hold the header (the locks and the
 * ring's bookkeeping); the rest is a ring of records [u64 length][u64
 * sequence number][bytes], a record may wrap around the end.  The header
 * is mapped once at a fixed address (the kernel's robust-futex list
 * points into it); the ring is mapped separately because it grows: a put
 * that does not fit doubles the file and moves the wrapped part behind the
 * old end, and every process remaps when it sees, under a lock, a
 * capacity different from the one it mapped.  An empty ring that grew past
 * 256 MiB shrinks back, so one huge message does not pin its memory for
 * ever; a smaller ring keeps its size, as growing again costs fresh pages
 * (shrinking at 16 MiB made 32 MiB result chunks fault in every page of
 * the ring again for each chunk).  Even a big ring is kept until no big
 * message came for a second, and it is shrunk by a consumer that finds
 * it empty, not by the get that emptied it (see shrink_empty): freeing
 * 300 MiB takes 50-60 ms, and a stream of 300 MiB items paid that and
 * 200 ms of fresh pages per item.  A put of 256 KiB or more
 * first gets the pages of its record that the file lacks in two calls
 * (fallocate, then MADV_POPULATE_WRITE) rather than one page fault each:
 * a fresh 300 MiB goes in at about 1,700 MiB/s instead of 1,350
 * (bench/rawbig.c).
 *
 * Two locks: producers take the put lock, consumers the get lock (a
 * two-lock queue, as Michael and Scott's).  head and tail are byte
 * positions (below); a producer writes its record past the tail and then
 * publishes the new tail, a consumer reads the record at the head and
 * then publishes the new head.
 * Each side only reads the other's word: the producer reads head when its
 * last look says the ring is short of room, the consumer reads tail.  A
 * producer and a consumer on two CPUs so no longer hand one lock's cache
 * line back and forth, nor wait out each other's copies (one lock ran
 * 200,000 small items at ~2 M/s between two CPUs, against 5.7 M/s on
 * one).  What changes the whole ring (growing, shrinking, requeueing
 * under a claim, recovering from a death) takes both, put lock first.
 * The count of items held is nput (records put, the producers') minus
 * nremoved (records taken or withdrawn, the consumers').
 *
 * Positions: every record ever put has a position of its own, and
 * positions only grow: head and tail never go back, and a record lies at
 * ring offset (position - base) % cap.  Growing the ring, which moves the
 * wrapped part behind the old end, and shrinking it, and starting a
 * record at offset 0 rather than wrap it in an empty ring (see put_src)
 * move `base` instead of the positions.  So a position that a put gave
 * out and that lies between the head and the tail is the start of that
 * very record, whatever the ring did meanwhile, never a place in the
 * middle of another one's bytes (see "Cancelling").  (Positions once
 * started again from the head's offset at every resize: a position kept
 * from before could then fall inside a later record's payload.)  Growing
 * moves base by a multiple of the old capacity, so that base and the old
 * capacity still find every record where it was: a death between the
 * two stores leaves a valid ring.
 *
 * Lending (shmq.h): the record at the head may be lent to its only
 * consumer, which reads it in place.  It is no longer counted, but the
 * head stays before it until it is given back, so no put can overwrite
 * it, and neither growing (which only moves the wrapped part, which ends
 * before the head) nor shrinking (only when empty) moves it.  Only
 * records that do not wrap are lent.  Holding is lending to any of
 * several consumers: the holder keeps the get lock while it reads the
 * record in place, and takes it (or leaves it) when it lets go, so
 * nothing changes in the shared header meanwhile and a holder that dies
 * leaves the record at the head for the next consumer.  The get lock is
 * an error-checking mutex, so that a call of the holder's own that would
 * wait for it (from a finalizer) fails instead of hanging.  Reading a big
 * message in place spares a copy into fresh memory as slow as decoding
 * it; other consumers wait meanwhile, as they waited for that copy.
 *
 * Cancelling (shmq_cancel) marks a record still in the ring as withdrawn
 * and counts it removed; a get that finds it at the head skips it, with
 * every withdrawn record behind it, in one store of the head.  A put
 * hands out its record's position with its sequence number, and cancel
 * goes straight there: a position at or past the head (and what is lent)
 * and before the tail is that record, not taken yet (see "Positions"),
 * so checking its number and setting the bit costs the same in a ring of
 * ten records or of a million.  Walking the ring from the head to find a
 * number instead made an Executor's 40,000 cancels take 6 s, and lose
 * most races with the workers meanwhile.  A position before the head is
 * a record taken; it is back in the ring only if its consumer put it
 * back under a claim (shmq_requeue), at the tail under the same number.
 * Such requeues are rare (a worker that lacks an object), so the header
 * keeps the positions of the last REQUEUED of them, and past that a mark
 * up to where a walk must look; once the head is past the last one, a
 * cancel of a record taken answers at once.  A walk, also the way for a
 * caller without a position, steps from record to record by their
 * lengths, so neither way ever reads a message's bytes as a record's
 * header.
 *
 * Claims: a consumer that names a slot records in it, under the get lock
 * that moves the message out, which message it took; nothing can be
 * taken and lost between the two.
 *
 * Waiting: a consumer that finds the queue empty first watches the tail
 * for a few microseconds when its recent waits were that short (most
 * items of a busy pool arrive within that), then counts itself a sleeper
 * and sleeps in poll() on an eventfd (semaphore mode).  A producer that
 * sees sleepers writes one token for each that has none on its way yet
 * (`get_tokens` counts tokens written and not taken), after it unlocked,
 * so a burst of puts costs one write per sleeper, not one per put.  The
 * sleeper counts have a lock of their own, taken only by sleepers and by
 * whoever wakes them; a sleeper counts itself, then looks at the tail
 * again, and a producer publishes the tail, then looks at the count, with
 * a full fence between each pair, so one of the two sees the other.
 * Producers waiting for room (bounded queues, pacing) sleep the same way
 * on a second eventfd.  An eventfd is an ordinary file descriptor, so a
 * Pool's parent waits on "a result arrived" and "a worker died" in one
 * poll().  A wakeup is a hint: the woken side rechecks under its lock, so
 * a stolen item or a stale token costs a loop, never an item.  A producer
 * killed between counting a token and writing it would leave a sleeper
 * without one: sleepers wake at least once a second, and the last sleeper
 * to leave without a token drains the eventfd and starts the count again.
 *
 * A process that dies holding a lock leaves the ring consistent: a put is
 * committed by its store of the tail, a get by its store of the head, a
 * resize by its store of the capacity, each the last change to the ring
 * (a shrink then truncates the file: see resize for why in that order).
 * The next locker gets EOWNERDEAD, marks the mutex consistent, and, as
 * the counters may then be off by the one item the dead process was
 * moving, counts the records between head and tail again under both
 * locks.
 */
#include "shmq.h"
#include "sys.h"
#include "interrupt.h"
#include "pshared.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define HDR_SIZE 8192
#define INITIAL_CAP ((size_t)256 << 10)   /* capacities are powers of two */
/* A ring bigger than SHRINK_ABOVE shrinks back once it is empty and no
 * record of BIG_RECORD bytes or more was taken for SHRINK_IDLE seconds
 * (shrink_empty). */
#define SHRINK_ABOVE ((size_t)256 << 20)
#define BIG_RECORD (SHRINK_ABOVE / 4)
#define SHRINK_IDLE 1.0
#define REC_HDR 16     /* u64 length, u64 sequence number */
/* In a record's sequence number: withdrawn by shmq_cancel, to be skipped. */
#define REC_CANCELLED ((uint64_t)1 << 63)
/* Requeued records whose positions the header keeps (see "Cancelling"). */
#define REQUEUED 32

/* The fields are grouped by who writes them and who reads them, a cache
 * line or two each: a put and a get on two CPUs then move only the words
 * one side reads of the other's (and the ring's lines) between them.  The
 * positions have lines of their own: idle consumers watch the tail, and
 * a producer whose lock shared its line had to take that line back from
 * them for every put (a fifth of a Pool's parent's time in apply_async). */
struct shmq_hdr {
    /* the producers', under put_lock */
    pthread_mutex_t put_lock;
    uint64_t nput;       /* records put */
    uint64_t next_seq;
    uint64_t head_seen;  /* head, as a producer last read it */
    uint64_t nremoved_seen; /* nremoved, the same (bounded queues) */
    uint64_t written;    /* the ring's first bytes, those that may have
                            pages in the file (see prefault) */
    /* published by the producers */
    _Alignas(64) uint64_t tail;  /* where the next record goes (a position) */
    int put_cpu;         /* where the last put ran (see spin_until_item) */
    /* published by the consumers */
    _Alignas(64) uint64_t head;  /* position of the oldest record */
    /* the consumers', under get_lock */
    _Alignas(64) pthread_mutex_t get_lock;
    uint64_t nremoved;   /* records taken or withdrawn */
    uint64_t lent;       /* bytes of the record at the head lent to the
                            consumer (0: none), still before the head */
    double last_get;     /* when a consumer last took an item from a
                            ring holding PACE_FROM bytes or more (luamp_now) */
    double big_get;      /* when one last took a BIG_RECORD */
    /* the sleepers', under wake_lock */
    _Alignas(64) pthread_mutex_t wake_lock;
    uint32_t getters;    /* consumers sleeping on ev_get */
    uint32_t putters;    /* producers sleeping on ev_put */
    uint32_t get_tokens; /* tokens written (or about to be) to ev_get, not taken */
    uint32_t put_tokens; /* the same for ev_put */
    /* read by every operation, changed rarely (under both locks) */
    _Alignas(64) uint64_t cap;   /* ring bytes, a power of two */
    uint64_t base;       /* positions start here: see "Positions" */
    uint64_t maxsize;    /* 0: unbounded */
    uint32_t shutdown;
    uint32_t no_pace;    /* producers never wait for a consumer (shmq_no_pace) */
    uint32_t joinable;   /* a JoinableQueue: puts count in unfinished */
    /* JoinableQueue */
    _Alignas(64) uint32_t unfinished; /* items put and not marked done (a
                            futex word, accessed atomically) */
    /* under get_lock, read by the parent when a worker dies */
    _Alignas(64) struct { uint64_t seq; double since; } claims[SHMQ_MAX_CLAIMS];
    /* where requeued records went (see "Cancelling"): set under both
     * locks, read under get_lock */
    _Alignas(64) uint64_t requeue_end;   /* past the last record requeued */
    uint64_t requeue_spill;  /* past the last one not in requeued[] */
    struct { uint64_t seq, pos; } requeued[REQUEUED];   /* (seq 0: free) */
};

_Static_assert(sizeof(struct shmq_hdr) <= HDR_SIZE, "the queue header fits its pages");

struct shmq {
    int memfd;
    int ev_get;          /* written when an item arrives */
    int ev_put;          /* written when room appears */
    struct shmq_hdr *hdr;
    char *ring;
    size_t mapped;       /* ring bytes this process has mapped */
    int spin;            /* this process's last waits were short: spin first */
    /* the message this process holds (shmq_end_hold): its record's bytes
     * (0: none), number, claim slot and when it was got */
    uint64_t held, held_seq;
    int held_claim;
    double held_at;
};

/* Words one side writes under its lock and the other reads without it. */
#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define FENCE() __atomic_thread_fence(__ATOMIC_SEQ_CST)

static int map_ring(shmq *q, size_t cap)
{
    if (q->ring && munmap(q->ring, q->mapped) != 0)
        return -1;
    q->ring = NULL;
    q->mapped = 0;
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, q->memfd, HDR_SIZE);
    if (p == MAP_FAILED)
        return -1;
    q->ring = p;
    q->mapped = cap;
    return 0;
}

shmq *shmq_create(uint64_t maxsize)
{
    shmq *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->ev_get = q->ev_put = -1;
    q->spin = 1;
    q->memfd = memfd_create("luamp-queue", MFD_CLOEXEC);
    if (q->memfd < 0)
        goto fail;
    if (ftruncate(q->memfd, HDR_SIZE + INITIAL_CAP) != 0)
        goto fail;
    void *h = mmap(NULL, HDR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, q->memfd, 0);
    if (h == MAP_FAILED)
        goto fail;
    q->hdr = h;
    if (map_ring(q, INITIAL_CAP) != 0)
        goto fail;
    q->ev_get = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
    q->ev_put = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
    if (q->ev_get < 0 || q->ev_put < 0)
        goto fail;
    /* (the get lock is error-checking: a consumer holds it while it reads
     * a message in place and may then call in again from a finalizer:
     * EDEADLK rather than a hang) */
    int e = init_shared_mutex(&q->hdr->put_lock, PTHREAD_MUTEX_DEFAULT);
    if (!e) e = init_shared_mutex(&q->hdr->get_lock, PTHREAD_MUTEX_ERRORCHECK);
    if (!e) e = init_shared_mutex(&q->hdr->wake_lock, PTHREAD_MUTEX_DEFAULT);
    if (e) {
        errno = e;
        goto fail;
    }
    q->hdr->cap = INITIAL_CAP;
    q->hdr->maxsize = maxsize;
    return q;
fail:
    e = errno;
    shmq_destroy(q);
    errno = e;
    return NULL;
}

shmq *shmq_attach(int memfd, int ev_get, int ev_put)
{
    shmq *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->memfd = memfd;
    q->ev_get = ev_get;
    q->ev_put = ev_put;
    q->spin = 1;
    void *h = mmap(NULL, HDR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (h == MAP_FAILED) {
        int e = errno;
        free(q);
        errno = e;
        return NULL;
    }
    q->hdr = h;
    /* the ring is mapped by the first lock, at the capacity it has then */
    return q;
}

void shmq_fds(shmq *q, int fds[3])
{
    fds[0] = q->memfd;
    fds[1] = q->ev_get;
    fds[2] = q->ev_put;
}

void shmq_destroy(shmq *q)
{
    if (!q)
        return;
    if (q->ring)
        munmap(q->ring, q->mapped);
    if (q->hdr)
        munmap(q->hdr, HDR_SIZE);
    if (q->memfd >= 0)
        close(q->memfd);
    if (q->ev_get >= 0)
        close(q->ev_get);
    if (q->ev_put >= 0)
        close(q->ev_put);
    free(q);
}

/* A lock is held for a few copies at most, so a contended lock is retried
 * briefly before sleeping in the kernel. */
#define LOCK_SPINS 200

/* Whether the mutex looks taken, by a plain read of its word (glibc's
 * layout): spinning on reads keeps the cache line shared until the
 * holder lets go, where spinning on trylock's compare-and-swap takes the
 * line away from the holder at every try, and so slows the very process
 * everybody waits for (a producer and a consumer on two CPUs ran at a
 * third of their speed on one). */
static inline int looks_locked(pthread_mutex_t *m)
{
#ifdef __GLIBC__
    return __atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) != 0;
#else
    (void)m;
    return 0;
#endif
}

/* Locks m: 0, 1 when its holder died (the caller repairs, see recover),
 * or -1 (errno). */
static int lock_mutex(pthread_mutex_t *m)
{
    int e = EBUSY;
    for (int i = 0; i < LOCK_SPINS && e == EBUSY; i++) {
        e = pthread_mutex_trylock(m);
        for (int k = 0; e == EBUSY && k < 32 && looks_locked(m); k++)
            cpu_relax();
    }
    if (e == EBUSY)
        e = pthread_mutex_lock(m);
    if (e == EOWNERDEAD) {
        e = pthread_mutex_consistent(m);
        if (!e)
            return 1;
    }
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

static void unlock_mutex(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
}

/* Under lock m (either: the capacity only changes under both): brings
 * this process's ring mapping up to date; on failure lets go of m. */
static int remap(shmq *q, pthread_mutex_t *m)
{
    if (q->mapped == q->hdr->cap || map_ring(q, q->hdr->cap) == 0)
        return 0;
    int e = errno;
    unlock_mutex(m);
    errno = e;
    return -1;
}

/* The record at ring position pos: its length and sequence number. */
static void read_rec(shmq *q, uint64_t pos, uint64_t *len, uint64_t *seq);

/* Under both locks, after a process died holding one: the counters may be
 * off by the item it was moving; the records between head and tail say
 * how many are held. */
static void recover(shmq *q)
{
    struct shmq_hdr *h = q->hdr;
    uint64_t live = 0;
    for (uint64_t pos = h->head + h->lent; pos < h->tail;) {
        uint64_t len;
        uint64_t seq;
        read_rec(q, pos, &len, &seq);
        live += !(seq & REC_CANCELLED);
        pos += REC_HDR + (uint64_t)len;
    }
    STORE(&h->nremoved, h->nput - live);
    h->head_seen = h->head;
    h->nremoved_seen = h->nremoved;
}

static void unlock_put(shmq *q)
{
    unlock_mutex(&q->hdr->put_lock);
}

static void unlock_get(shmq *q)
{
    unlock_mutex(&q->hdr->get_lock);
}

/* Takes the get lock with the put lock held (the order everybody uses). */
static int lock_get_too(shmq *q, int dead)
{
    int r = lock_mutex(&q->hdr->get_lock);
    if (r < 0 || remap(q, &q->hdr->get_lock) != 0)
        return -1;
    if (r || dead)
        recover(q);
    return 0;
}

/* Takes the get lock with the put lock held if nobody has it; whether it
 * did. */
static int try_lock_get(shmq *q)
{
    int e = pthread_mutex_trylock(&q->hdr->get_lock);
    if (e == EOWNERDEAD) {
        if (pthread_mutex_consistent(&q->hdr->get_lock) != 0) {
            unlock_get(q);
            return 0;
        }
        recover(q);
        e = 0;
    }
    return e == 0;
}

/* Takes the put lock (lock_both: and then the get lock), mapping the ring
 * as it is now.  On failure no lock is held. */
static int lock_put_(shmq *q, int both)
{
    int r = lock_mutex(&q->hdr->put_lock);
    if (r < 0)
        return -1;
    if (r || both) {
        if (lock_get_too(q, r) != 0) {
            int e = errno;
            unlock_put(q);
            errno = e;
            return -1;
        }
        if (!both)
            unlock_get(q);
    } else if (remap(q, &q->hdr->put_lock) != 0) {
        return -1;
    }
    return 0;
}

static int lock_put(shmq *q)
{
    return lock_put_(q, 0);
}

static int lock_both(shmq *q)
{
    return lock_put_(q, 1);
}

static void unlock_both(shmq *q)
{
    unlock_get(q);
    unlock_put(q);
}

/* Takes the get lock, mapping the ring as it is now.  A consumer that
 * finds its holder dead lets go and repairs under both locks, in order. */
static int lock_get(shmq *q)
{
    int r = lock_mutex(&q->hdr->get_lock);
    if (r < 0)
        return -1;
    if (r) {
        unlock_get(q);
        if (lock_both(q) != 0)
            return -1;
        recover(q);
        unlock_put(q);
        return 0;
    }
    return remap(q, &q->hdr->get_lock);
}

/* The sleeper counts' lock.  Nothing to repair when its holder died: the
 * counts are only hints (see "Waiting"). */
static int lock_wake(shmq *q)
{
    return lock_mutex(&q->hdr->wake_lock) >= 0;
}

static void unlock_wake(shmq *q)
{
    unlock_mutex(&q->hdr->wake_lock);
}

/* Where position pos lies in the ring. */
static inline uint64_t ring_off(const struct shmq_hdr *h, uint64_t pos)
{
    return (pos - h->base) & (h->cap - 1);
}

static void ring_write(shmq *q, uint64_t pos, const void *p, size_t n)
{
    uint64_t cap = q->hdr->cap, off = ring_off(q->hdr, pos);
    size_t first = n < cap - off ? n : (size_t)(cap - off);
    memcpy(q->ring + off, p, first);
    memcpy(q->ring, (const char *)p + first, n - first);
}

static void ring_read(shmq *q, uint64_t pos, void *p, size_t n)
{
    uint64_t cap = q->hdr->cap, off = ring_off(q->hdr, pos);
    size_t first = n < cap - off ? n : (size_t)(cap - off);
    memcpy(p, q->ring + off, first);
    memcpy((char *)p + first, q->ring, n - first);
}

static void read_rec(shmq *q, uint64_t pos, uint64_t *len, uint64_t *seq)
{
    unsigned char rec[REC_HDR];
    ring_read(q, pos, rec, REC_HDR);
    memcpy(len, rec, 8);
    memcpy(seq, rec + 8, 8);
}

/* Resizes the ring to `cap` bytes, keeping its records; under both locks.
 * Growing moves the part that wrapped around to behind the old end;
 * shrinking is only done when the ring is empty.  The records keep their
 * positions; base moves so that the head lies at offset `head`.
 *
 * The file is never smaller than the capacity the header states, as
 * every process maps what the header says and a page past the end of
 * the file is SIGBUS: growing makes the file bigger before it stores the
 * capacity, shrinking stores it before it makes the file smaller.  A
 * death in between leaves a file bigger than its ring, which only wastes
 * memory until the next resize.  (Shrinking once truncated first: a
 * process killed before the store left the others mapping, and touching,
 * pages the file no longer had.) */
static int resize(shmq *q, uint64_t cap)
{
    struct shmq_hdr *h = q->hdr;
    uint64_t old = h->cap, used = h->tail - h->head;
    uint64_t head = ring_off(h, h->head);
    if (cap > old) {
        if (ftruncate(q->memfd, (off_t)(HDR_SIZE + cap)) != 0)
            return -1;
        if (map_ring(q, cap) != 0)
            return -1;
        if (head + used > old) {
            memcpy(q->ring + old, q->ring, head + used - old);
            h->written = head + used;
        }
    } else {
        if (map_ring(q, cap) != 0)
            return -1;
        head = 0;
        if (h->written > cap)
            h->written = cap;
    }
    /* (a death before the capacity leaves the old layout valid: growing
     * moves base by a multiple of the old capacity, and a ring shrinks
     * only when empty) */
    STORE(&h->base, h->head - head);
    h->head_seen = h->head;     /* (an old look could claim more room than a smaller ring has) */
    STORE(&h->cap, cap);
    if (cap < old && ftruncate(q->memfd, (off_t)(HDR_SIZE + cap)) != 0)
        return -1;      /* (the ring is resized; the file keeps pages it need not) */
    return 0;
}

static void ring(int fd, uint32_t n)
{
    uint64_t v = n;
    /* EAGAIN: the counter is saturated, sleepers have plenty to wake on. */
    if (n)
        while (write(fd, &v, sizeof v) < 0 && errno == EINTR)
            ;
}

/* Takes one token; whether there was one. */
static int drain_one(int fd)
{
    uint64_t v;
    ssize_t r;
    while ((r = read(fd, &v, sizeof v)) < 0 && errno == EINTR)
        ;
    return r == (ssize_t)sizeof v;
}

/* Under the wake lock: how many tokens to write for sleepers that have
 * none coming (the caller writes them with ring() after unlocking). */
static uint32_t tokens_due(uint32_t sleepers, uint32_t *tokens)
{
    if (sleepers <= *tokens)
        return 0;
    uint32_t n = sleepers - *tokens;
    *tokens = sleepers;
    return n;
}

/* Wakes the consumers (put_side 0) or producers (1) sleeping for what the
 * caller just published, if any: after a full fence, so that a sleeper
 * that counted itself before the publication is seen here, and one that
 * counts itself after it sees the publication when it looks again. */
static void wake(shmq *q, int put_side)
{
    struct shmq_hdr *h = q->hdr;
    uint32_t *sleepers = put_side ? &h->putters : &h->getters;
    FENCE();
    if (__atomic_load_n(sleepers, __ATOMIC_RELAXED) == 0)
        return;
    if (!lock_wake(q))
        return;
    uint32_t n = tokens_due(*sleepers, put_side ? &h->put_tokens : &h->get_tokens);
    unlock_wake(q);
    ring(put_side ? q->ev_put : q->ev_get, n);
}

/* Counts the caller a sleeper (then a full fence: see wake). */
static void sleeper_came(shmq *q, uint32_t *sleepers)
{
    if (lock_wake(q)) {
        __atomic_store_n(sleepers, *sleepers + 1, __ATOMIC_RELAXED);
        unlock_wake(q);
    }   /* (else it is not counted, and wakes within MAX_SLEEP) */
    FENCE();
}

/* When a sleeper leaves: `took` says whether it took a token.  The last
 * sleeper out without one empties the eventfd, so a token counted by a
 * producer that died before writing it cannot leave later sleepers
 * without theirs. */
static void sleeper_left(shmq *q, int fd, uint32_t *sleepers, uint32_t *tokens, int took)
{
    if (!lock_wake(q))
        return;
    if (*sleepers == 0) {       /* (a count lost with a lock's dead holder) */
        unlock_wake(q);
        return;
    }
    __atomic_store_n(sleepers, *sleepers - 1, __ATOMIC_RELAXED);
    if (took) {
        if (*tokens)
            (*tokens)--;
    } else if (*sleepers == 0 && *tokens) {
        while (drain_one(fd))
            ;
        *tokens = 0;
    }
    unlock_wake(q);
}

/* Longest single sleep: see "Waiting" above. */
#define MAX_SLEEP 1.0

/* Sleeps on `fd` until it is written, one of the `nx` extra descriptors
 * becomes readable (*which is set to its index) or the deadline passes;
 * the caller counted itself a sleeper and let go of its lock. */
static int sleep_on(int fd, const int *extra, int nx, int *which, double deadline, int *took)
{
    double cap = luamp_now() + MAX_SLEEP;
    if (deadline < 0 || deadline > cap)
        deadline = cap;
    *took = 0;
    struct pollfd p[1 + SHMQ_MAX_EXTRA];
    p[0].fd = fd;
    p[0].events = POLLIN;
    for (int i = 0; i < nx; i++) {
        p[1 + i].fd = extra[i];
        p[1 + i].events = POLLIN;
    }
    for (;;) {
        /* An interrupt that came after the caller last looked and before
         * poll() began would not make poll() fail with EINTR: seen here,
         * at the latest when the sleep's cap wakes the caller, which
         * calls again. */
        if (luamp_interrupt_pending())
            return SHMQ_INTERRUPTED;
        /* (ppoll: a deadline microseconds away, as luamp-mpi's thread
         * sets between looks at MPI, is not rounded up to a millisecond) */
        double left = deadline - luamp_now();
        if (left < 0)
            left = 0;
        struct timespec ts = { (time_t)left, (long)((left - (double)(time_t)left) * 1e9) };
        int r = ppoll(p, (nfds_t)(1 + nx), &ts, NULL);
        if (r > 0) {
            for (int i = 0; i < nx; i++) {
                if (p[1 + i].revents) {
                    *which = i;
                    return SHMQ_EVENT;
                }
            }
            *took = drain_one(fd);
            return SHMQ_OK;
        }
        if (r == 0)
            return SHMQ_TIMEOUT;
        if (errno != EINTR)
            return SHMQ_ERROR;
        if (luamp_interrupt_pending())
            return SHMQ_INTERRUPTED;
    }
}

/* Before sleeping, a consumer whose last waits in this process were
 * short (under SHORT_WAIT) watches the tail for up to SPIN_TIME seconds:
 * an item that arrives meanwhile costs no system call on either side.
 * After SPIN_PAUSE it yields the CPU between looks, so that on a busy
 * machine the process it waits for can run; at once when the last put ran
 * on this CPU: that producer cannot put while this one spins there (an
 * apply round trip with parent and worker on one CPU took 2.8 us, the
 * raw pipe ping-pong 1.9).  Without the lock: what it
 * sees is only a hint, rechecked under it. */
#define SPIN_TIME 30e-6
#define SPIN_PAUSE 2e-6
#define SHORT_WAIT 150e-6

static int looks_empty(struct shmq_hdr *h, uint64_t head)
{
    return __atomic_load_n(&h->tail, __ATOMIC_RELAXED) == head
        && !__atomic_load_n(&h->shutdown, __ATOMIC_RELAXED);
}

/* (head: as the caller saw it under the lock) */
static void spin_until_item(struct shmq_hdr *h, uint64_t head, double deadline)
{
    double start = luamp_now(), end = start + SPIN_TIME;
    double pause = __atomic_load_n(&h->put_cpu, __ATOMIC_RELAXED) == sched_getcpu() ? 0 : SPIN_PAUSE;
    if (deadline > 0 && deadline < end)
        end = deadline;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (!looks_empty(h, head))
                return;
            cpu_relax();
        }
        double t = luamp_now();
        if (t >= end)
            return;
        if (t - start >= pause)
            sched_yield();
    }
}

/*
 * Pacing: a ring that already holds PACE_FROM bytes does not grow while a
 * consumer is taking items (one did in the last PACE_WAIT seconds): the
 * producer waits for the room that consumer makes, up to PACE_WAIT at a
 * time.  Growing costs fresh pages, zeroed by the kernel and faulted in
 * by every process that touches them, where a ring the consumer keeps up
 * with stays small and in the CPU's caches; a producer faster than its
 * consumer gains nothing by running further ahead.  A consumer that
 * stops taking (a script computing) lets the ring grow again, so put
 * still never waits long on an unbounded queue.
 */
#define PACE_FROM ((uint64_t)4 << 20)
#define PACE_WAIT 10e-3

/* Under the put lock: the items held, by the producer's last look at
 * nremoved (fresh: look again first). */
static uint64_t held(struct shmq_hdr *h, int fresh)
{
    if (fresh)
        h->nremoved_seen = LOAD(&h->nremoved);
    return h->nput - h->nremoved_seen;
}

/* Under the put lock: the free bytes, by the producer's last look at the
 * head (fresh: look again first). */
static uint64_t room(struct shmq_hdr *h, int fresh)
{
    if (fresh)
        h->head_seen = LOAD(&h->head);
    return h->cap - (h->tail - h->head_seen);
}

static double last_get(struct shmq_hdr *h)
{
    double t;
    __atomic_load(&h->last_get, &t, __ATOMIC_RELAXED);
    return t;
}

/* Under the put lock: why a put of `need` bytes must wait now (0: it
 * need not; 1: the queue holds maxsize items; 2: pacing, unless the
 * producer already waited for pacing in vain). */
static int must_wait(struct shmq_hdr *h, uint64_t need, int paced_out, int fresh)
{
    if (h->maxsize && held(h, 0) >= h->maxsize && (!fresh || held(h, 1) >= h->maxsize))
        return 1;
    if (!paced_out && !h->no_pace && room(h, 0) < need && room(h, 1) < need
        && h->cap - room(h, 0) >= PACE_FROM && luamp_now() - last_get(h) < PACE_WAIT)
        return 2;
    return 0;
}

/* Under the put lock: sleeps as a producer until a consumer makes room or
 * `until` passes.  Returns SHMQ_OK or SHMQ_TIMEOUT holding the lock again,
 * or SHMQ_ERROR / SHMQ_INTERRUPTED without it (errno kept). */
static int wait_for_room(shmq *q, double until, uint64_t need, int paced_out)
{
    struct shmq_hdr *h = q->hdr;
    int took = 0, r = SHMQ_OK, e = 0;
    sleeper_came(q, &h->putters);
    if (must_wait(h, need, paced_out, 1)) {
        unlock_put(q);
        r = sleep_on(q->ev_put, NULL, 0, NULL, until, &took);
        e = errno;
        if (lock_put(q) != 0) {
            e = errno;
            sleeper_left(q, q->ev_put, &h->putters, &h->put_tokens, took);
            errno = e;
            return SHMQ_ERROR;
        }
    }
    sleeper_left(q, q->ev_put, &h->putters, &h->put_tokens, took);
    if (r == SHMQ_ERROR || r == SHMQ_INTERRUPTED) {
        unlock_put(q);
        errno = e;
    }
    return r;
}

int shmq_put(shmq *q, const void *p, size_t n, double deadline, shmq_ticket *t)
{
    luamp_buf b;
    luamp_buf_init(&b);
    b.data = (char *)p;     /* only read */
    b.len = n;
    return shmq_put_buf(q, &b, deadline, t);
}

/* Where write_piece writes next. */
struct ring_cursor {
    shmq *q;
    uint64_t pos;
};

static void write_piece(void *ctx, const char *p, size_t n)
{
    struct ring_cursor *c = ctx;
    ring_write(c->q, c->pos, p, n);
    c->pos += n;
}

/* Under the put lock: gets the pages of the n bytes at ring position pos
 * that the file does not have yet (a ring that grew: the kernel gives
 * them out zeroed, one page fault per 4 KiB) at once, before they are
 * written (sys.h, luamp_populate_shared).  Only past the bytes written
 * since the ring last shrank, which have their pages: a ring in use is
 * not asked about its pages at every put (a mincore() per MiB). */
static void prefault(shmq *q, uint64_t pos, uint64_t n)
{
    struct shmq_hdr *h = q->hdr;
    uint64_t cap = h->cap, off = ring_off(h, pos);
    uint64_t first = n < cap - off ? n : cap - off;
    uint64_t from = off > h->written ? off : h->written;
    if (off + first > from)
        luamp_populate_shared(q->ring, from, off + first, q->memfd, HDR_SIZE);
    if (n > first && n - first > h->written)
        luamp_populate_shared(q->ring, h->written, n - first, q->memfd, HDR_SIZE);
    if (off + first > h->written)
        h->written = n > first ? cap : off + first;
}

/* Writes message m (its data with its spans inserted) at ring position pos. */
static void write_message(shmq *q, uint64_t pos, const luamp_buf *m)
{
    struct ring_cursor c = { q, pos };
    luamp_buf_each(m, write_piece, &c);
}

/* What a put writes: message m, or with fill, n bytes that fill writes
 * straight into the ring (shmq_put_fill). */
struct put_src {
    const luamp_buf *m;
    size_t n;
    shmq_fill_fn fill;
    void *ctx;
};

/* Puts src as record number `fixed` (0: the next number) and, with
 * clear_slot >= 0, empties that claim slot in the same locked step. */
int shmq_too_big(int err)
{
    return err == EMSGSIZE || err == ENOMEM || err == ENOSPC;
}

static int put_src(shmq *q, const struct put_src *src, double deadline, uint64_t fixed, int clear_slot,
                   shmq_ticket *t);

static int put_rec(shmq *q, const luamp_buf *m, double deadline, uint64_t fixed, int clear_slot,
                   shmq_ticket *t)
{
    struct put_src src = { m, luamp_buf_size(m), NULL, NULL };
    return put_src(q, &src, deadline, fixed, clear_slot, t);
}

int shmq_put_buf(shmq *q, const luamp_buf *m, double deadline, shmq_ticket *t)
{
    return put_rec(q, m, deadline, 0, -1, t);
}

int shmq_put_fill(shmq *q, size_t n, shmq_fill_fn fill, void *ctx, double deadline, shmq_ticket *t)
{
    struct put_src src = { NULL, n, fill, ctx };
    return put_src(q, &src, deadline, 0, -1, t);
}

int shmq_requeue(shmq *q, int slot, const void *p, size_t n, uint64_t seq)
{
    luamp_buf b;
    luamp_buf_init(&b);
    b.data = (char *)p;     /* only read */
    b.len = n;
    return put_rec(q, &b, -1, seq, slot, NULL);
}

static int expired(double deadline)
{
    return deadline == 0 || (deadline > 0 && luamp_now() >= deadline);
}

/* Under both locks: remembers where the requeued record seq lies now (see
 * "Cancelling"), in a free entry, or else by the spill mark. */
static void note_requeued(struct shmq_hdr *h, uint64_t seq, uint64_t pos, uint64_t need)
{
    uint64_t live = h->head + h->lent;
    int i = 0;
    while (i < REQUEUED && h->requeued[i].seq != 0 && h->requeued[i].pos >= live)
        i++;
    if (i < REQUEUED) {
        h->requeued[i].seq = seq;
        h->requeued[i].pos = pos;
    } else {
        h->requeue_spill = pos + need;
    }
    h->requeue_end = pos + need;
}

static int put_src(shmq *q, const struct put_src *src, double deadline, uint64_t fixed, int clear_slot,
                   shmq_ticket *t)
{
    struct shmq_hdr *h = q->hdr;
    size_t n = src->n;
    uint64_t need = REC_HDR + (uint64_t)n;
    if (n > LUAMP_MAX_MESSAGE) {
        errno = EMSGSIZE;
        return SHMQ_ERROR;
    }
    if (lock_put(q) != 0)
        return SHMQ_ERROR;
    int why, paced_out = 0;
    while ((why = must_wait(h, need, paced_out, 1)) != 0) {
        double until = deadline;
        if (why == 1 && expired(deadline)) {
            unlock_put(q);
            return SHMQ_TIMEOUT;
        }
        if (why == 2) {
            until = luamp_now() + PACE_WAIT;
            if (deadline >= 0 && deadline < until)
                until = deadline;
        }
        int r = wait_for_room(q, until, need, paced_out);
        if (r == SHMQ_ERROR || r == SHMQ_INTERRUPTED)
            return r;
        if (r == SHMQ_TIMEOUT && why == 2)
            paced_out = 1;      /* the consumer is slow after all: grow */
    }
    int both = fixed || clear_slot >= 0 || (room(h, 0) < need && room(h, 1) < need);
    if (both && lock_get_too(q, 0) != 0) {
        int e = errno;
        unlock_put(q);
        errno = e;
        return SHMQ_ERROR;
    }
    if (!both && ring_off(h, h->tail) + need > h->cap && room(h, 1) == h->cap)
        both = try_lock_get(q);     /* would wrap in an empty ring: see below */
    if (room(h, 1) < need) {
        uint64_t cap = h->cap * 2;
        while (cap - (h->tail - h->head) < need)
            cap *= 2;
        if (resize(q, cap) != 0) {
            int e = errno;
            unlock_both(q);
            errno = e;
            return SHMQ_ERROR;
        }
    }
    /* A record put into an empty ring starts at its beginning rather than
     * wrap around its end, so that it can be lent (big results are). */
    if (both && h->head == h->tail && ring_off(h, h->tail) + need > h->cap)
        STORE(&h->base, h->tail);
    if (need >= LUAMP_POPULATE_FROM)
        prefault(q, h->tail, need);
    unsigned char rec[REC_HDR];
    uint64_t len = n;
    uint64_t s = fixed ? fixed : ++h->next_seq;
    memcpy(rec, &len, 8);
    memcpy(rec + 8, &s, 8);
    ring_write(q, h->tail, rec, REC_HDR);
    if (src->fill) {
        uint64_t off = ring_off(h, h->tail + REC_HDR);
        size_t first = n < h->cap - off ? n : (size_t)(h->cap - off);
        src->fill(src->ctx, q->ring + off, first, q->ring, n - first);
    } else {
        write_message(q, h->tail + REC_HDR, src->m);
    }
    if (t) {
        t->seq = s;
        t->pos = h->tail;
    }
    if (fixed)
        note_requeued(h, s, h->tail, need);
    if (h->joinable && !fixed)
        __atomic_add_fetch(&h->unfinished, 1, __ATOMIC_RELAXED);
    if (clear_slot >= 0)
        h->claims[clear_slot].seq = 0;
    STORE(&h->nput, h->nput + 1);
    STORE(&h->tail, h->tail + need);     /* the put is in */
    int cpu = sched_getcpu();
    if (cpu != h->put_cpu)              /* (a store only when it moved) */
        __atomic_store_n(&h->put_cpu, cpu, __ATOMIC_RELAXED);
    if (both)
        unlock_get(q);
    unlock_put(q);
    wake(q, 0);
    return SHMQ_OK;
}

/* Under both locks, with an empty ring: shrinks a ring that grew big. */
static void maybe_shrink(shmq *q)
{
    if (q->hdr->cap > SHRINK_ABOVE && q->hdr->head == q->hdr->tail)
        resize(q, INITIAL_CAP);   /* failure just keeps the big ring */
}

/* Under the get lock: frees the n bytes of the record at the head. */
static void consumed(shmq *q, uint64_t n)
{
    STORE(&q->hdr->head, q->hdr->head + n);
}

/* Under the get lock: shrinks a ring that grew big and is empty, if no
 * producer is busy (the put lock is taken second, so only tried) and no
 * big record was taken for SHRINK_IDLE.  Called by a consumer that finds
 * the ring empty (and again each time it wakes up, at least once a
 * second), not by the one that emptied it: freeing the pages of a big
 * ring (50-60 ms for 300 MiB) delayed the very get that took the big
 * message.  And a ring that carries big messages keeps its pages while
 * they come: shrunk after each, it gave every next one fresh pages to
 * fault in (a stream of 300 MiB items: about 200 ms each). */
static void shrink_empty(shmq *q)
{
    struct shmq_hdr *h = q->hdr;
    if (h->cap > SHRINK_ABOVE && h->head == LOAD(&h->tail) && luamp_now() - h->big_get >= SHRINK_IDLE) {
        int e = pthread_mutex_trylock(&h->put_lock);
        if (e == EOWNERDEAD) {
            e = pthread_mutex_consistent(&h->put_lock);
            if (e)
                unlock_put(q);
            else
                recover(q);
        }
        if (e == 0) {
            maybe_shrink(q);
            unlock_put(q);
        }
    }
}

/* Under the get lock: frees the record lent at the head, if any; whether
 * there was one. */
static int take_back(shmq *q)
{
    uint64_t n = q->hdr->lent;
    if (n) {
        q->hdr->lent = 0;
        consumed(q, n);
    }
    return n != 0;
}

/* Under the get lock, with nothing lent: frees the withdrawn records at
 * the head, so that the head is a live record or the tail (`tail`, as
 * the caller read it), in one step however many there are.  Whether it
 * freed any. */
static int skip_cancelled(shmq *q, uint64_t tail)
{
    struct shmq_hdr *h = q->hdr;
    uint64_t pos = h->head;
    while (pos != tail) {
        uint64_t len;
        uint64_t seq;
        read_rec(q, pos, &len, &seq);
        if (!(seq & REC_CANCELLED))
            break;
        pos += REC_HDR + (uint64_t)len;
    }
    if (pos == h->head)
        return 0;
    consumed(q, pos - h->head);
    return 1;
}

/* Under the get lock: withdraws the record at pos, the start of a record
 * not taken yet, if it is numbered seq: 1, 0 if it was withdrawn before,
 * -1 if it is another record. */
static int withdraw_at(shmq *q, uint64_t pos, uint64_t seq)
{
    uint64_t len;
    uint64_t s;
    read_rec(q, pos, &len, &s);
    if ((s & ~REC_CANCELLED) != seq)
        return -1;
    if (s & REC_CANCELLED)
        return 0;
    s |= REC_CANCELLED;
    ring_write(q, pos + 8, &s, 8);
    STORE(&q->hdr->nremoved, q->hdr->nremoved + 1);
    return 1;
}

/* Under the get lock: withdraws record seq, looked for by walking the
 * records from `from` (the start of one) up to `to`; 1 or 0. */
static int withdraw_walking(shmq *q, uint64_t seq, uint64_t from, uint64_t to)
{
    for (uint64_t pos = from; pos < to;) {
        uint64_t len;
        uint64_t s;
        read_rec(q, pos, &len, &s);
        if ((s & ~REC_CANCELLED) == seq)     /* (a requeued record is out of order) */
            return withdraw_at(q, pos, seq);
        pos += REC_HDR + (uint64_t)len;
    }
    return 0;
}

/* Under the get lock: withdraws record seq if it was taken and put back
 * (requeued) since; `live` is the first position not taken.  1, 0, or
 * -1 when where the header says it went holds another record (its
 * requeuer died before the record was in). */
static int withdraw_requeued(shmq *q, uint64_t seq, uint64_t live, uint64_t tail)
{
    struct shmq_hdr *h = q->hdr;
    if (h->requeue_end <= live)
        return 0;           /* no requeued record is left */
    for (int i = 0; i < REQUEUED; i++) {
        if (h->requeued[i].seq == seq && h->requeued[i].pos >= live && h->requeued[i].pos < tail)
            return withdraw_at(q, h->requeued[i].pos, seq);
    }
    if (h->requeue_spill <= live)
        return 0;
    return withdraw_walking(q, seq, live, h->requeue_spill < tail ? h->requeue_spill : tail);
}

int shmq_cancel(shmq *q, uint64_t seq, uint64_t pos)
{
    struct shmq_hdr *h = q->hdr;
    if (seq == 0 || (seq & REC_CANCELLED))
        return 0;           /* (never a message's number) */
    if (lock_get(q) != 0)
        return -1;
    int found = -1;
    uint64_t live = h->head + h->lent, tail = LOAD(&h->tail);
    if (pos < live)
        found = withdraw_requeued(q, seq, live, tail);
    else if (pos < tail)
        found = withdraw_at(q, pos, seq);   /* (-1: not the position seq's put gave out) */
    if (found < 0)
        found = withdraw_walking(q, seq, live, tail);
    unlock_get(q);
    if (found)
        wake(q, 1);
    return found;
}

int shmq_give_back(shmq *q)
{
    if (lock_get(q) != 0)
        return -1;
    take_back(q);
    unlock_get(q);
    wake(q, 1);
    return 0;
}

int shmq_get(shmq *q, luamp_buf *out, double deadline, shmq_wait *w)
{
    struct shmq_hdr *h = q->hdr;
    shmq_wait none = { .claim = -1 };
    if (!w)
        w = &none;
    if (lock_get(q) != 0)
        return SHMQ_ERROR;
    if (w->claim >= 0)
        h->claims[w->claim].seq = 0;    /* what it held before is done */
    w->lent = NULL;
    int freed = take_back(q);           /* and so is what it borrowed */
    int spun = !q->spin;
    double waited_from = 0;
    for (;;) {
        uint64_t tail = LOAD(&h->tail);
        freed |= skip_cancelled(q, tail);
        if (h->head != tail)
            break;
        shrink_empty(q);
        if (LOAD(&h->shutdown) || expired(deadline)) {
            int r = LOAD(&h->shutdown) ? SHMQ_SHUTDOWN : SHMQ_TIMEOUT;
            unlock_get(q);
            if (freed)
                wake(q, 1);
            return r;
        }
        if (waited_from == 0)
            waited_from = luamp_now();
        if (!spun) {
            spun = 1;
            uint64_t head = h->head;
            unlock_get(q);
            spin_until_item(h, head, deadline);
            if (lock_get(q) != 0)
                return SHMQ_ERROR;
            continue;
        }
        sleeper_came(q, &h->getters);
        if (LOAD(&h->tail) != h->head || LOAD(&h->shutdown)) {
            sleeper_left(q, q->ev_get, &h->getters, &h->get_tokens, 0);
            continue;
        }
        unlock_get(q);
        if (freed) {
            freed = 0;
            wake(q, 1);
        }
        int took;
        int r = sleep_on(q->ev_get, w->extra, w->nextra, &w->which, deadline, &took);
        int e = errno;
        sleeper_left(q, q->ev_get, &h->getters, &h->get_tokens, took);
        if (lock_get(q) != 0)
            return SHMQ_ERROR;
        uint64_t now_tail = LOAD(&h->tail);
        freed |= skip_cancelled(q, now_tail);
        if ((r == SHMQ_EVENT || r == SHMQ_INTERRUPTED) && h->head == now_tail) {
            unlock_get(q);
            return r;
        }
        if (r == SHMQ_ERROR) {
            unlock_get(q);
            errno = e;
            return r;
        }
    }
    /* One clock read serves everything below; none when nothing needs it
     * (last_get only matters once the ring is big enough to pace). */
    int pacing = LOAD(&h->tail) - h->head >= PACE_FROM;
    double t = waited_from != 0 || w->claim >= 0 || pacing ? luamp_now() : 0;
    if (waited_from != 0)
        q->spin = t - waited_from < SHORT_WAIT;
    uint64_t len;
    read_rec(q, h->head, &len, &w->seq);
    uint64_t need = REC_HDR + (uint64_t)len, off = ring_off(h, h->head);
    if (need >= BIG_RECORD)
        h->big_get = t;     /* (pacing, so t was read) */
    int lend = w->lend_from && len >= w->lend_from && off + need <= h->cap
               && (!w->lend_if || w->lend_if(q->ring + off + REC_HDR, len));
    luamp_buf_reset(out);
    if (lend) {
        w->lent = q->ring + off + REC_HDR;
        w->lent_len = len;
        if (w->hold) {
            if (pacing)
                __atomic_store(&h->last_get, &t, __ATOMIC_RELAXED);
            q->held = need;
            q->held_seq = w->seq;
            q->held_claim = w->claim;
            q->held_at = t;
            return SHMQ_OK;     /* with the lock: see shmq_end_hold */
        }
    } else {
        if (luamp_buf_prepare(out, len) != 0) {
            unlock_get(q);
            errno = ENOMEM;
            return SHMQ_ERROR;
        }
        ring_read(q, h->head + REC_HDR, out->data, len);
        out->len = len;
    }
    if (w->claim >= 0) {
        h->claims[w->claim].seq = w->seq;
        h->claims[w->claim].since = t;
    }
    if (pacing)
        __atomic_store(&h->last_get, &t, __ATOMIC_RELAXED);
    if (lend)
        h->lent = need;
    else
        consumed(q, need);   /* the get is done */
    STORE(&h->nremoved, h->nremoved + 1);
    unlock_get(q);
    if (!lend || freed)
        wake(q, 1);
    return SHMQ_OK;
}

void shmq_end_hold(shmq *q, int take)
{
    struct shmq_hdr *h = q->hdr;
    if (q->held == 0)
        return;
    if (take) {
        if (q->held_claim >= 0) {
            h->claims[q->held_claim].seq = q->held_seq;
            h->claims[q->held_claim].since = q->held_at;
        }
        consumed(q, q->held);
        STORE(&h->nremoved, h->nremoved + 1);
    }
    q->held = 0;
    unlock_get(q);
    wake(q, 1);     /* (also for what the get freed before it) */
}

void shmq_joinable(shmq *q)
{
    q->hdr->joinable = 1;     /* (before anyone else sees the queue) */
}

int shmq_is_joinable(shmq *q)
{
    return q->hdr->joinable != 0;
}

int shmq_task_done(shmq *q)
{
    struct shmq_hdr *h = q->hdr;
    uint32_t n = __atomic_load_n(&h->unfinished, __ATOMIC_RELAXED);
    do {
        if (n == 0)
            return 1;
    } while (!__atomic_compare_exchange_n(&h->unfinished, &n, n - 1, 0, __ATOMIC_RELEASE,
                                          __ATOMIC_RELAXED));
    if (n == 1)     /* (the only failures are bad arguments) */
        (void)syscall(SYS_futex, &h->unfinished, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
    return 0;
}

/* A joiner looks again at least this often (seconds), so a wakeup lost
 * to a process killed between its store and its wake costs only that. */
#define JOIN_RECHECK 0.1

int shmq_join(shmq *q, double deadline)
{
    uint32_t *word = &q->hdr->unfinished;
    for (;;) {
        uint32_t n = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        if (n == 0)
            return SHMQ_OK;
        double t = luamp_now(), wait = JOIN_RECHECK;
        if (deadline >= 0) {
            if (t >= deadline)
                return SHMQ_TIMEOUT;
            if (deadline - t < wait)
                wait = deadline - t;
        }
        struct timespec ts = { (time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9) };
        if (syscall(SYS_futex, word, FUTEX_WAIT, n, &ts, NULL, 0) != 0
            && errno == EINTR && luamp_interrupt_pending())
            return SHMQ_INTERRUPTED;
    }
}

uint64_t shmq_unfinished(shmq *q)
{
    return __atomic_load_n(&q->hdr->unfinished, __ATOMIC_ACQUIRE);
}

/* Under the get lock: the items held.  (A producer counts its item just
 * before publishing it, so nput may run one ahead of the ring, never
 * behind what a consumer could have taken.) */
static uint64_t count_now(struct shmq_hdr *h)
{
    uint64_t put = LOAD(&h->nput), removed = h->nremoved;
    return put > removed ? put - removed : 0;
}

uint64_t shmq_count(shmq *q)
{
    if (lock_get(q) != 0)
        return 0;
    uint64_t n = count_now(q->hdr);
    unlock_get(q);
    return n;
}

int shmq_full(shmq *q)
{
    if (lock_get(q) != 0)
        return 0;
    int full = q->hdr->maxsize && count_now(q->hdr) >= q->hdr->maxsize;
    unlock_get(q);
    return full;
}

int shmq_shutdown(shmq *q)
{
    if (lock_get(q) != 0)
        return -1;
    STORE(&q->hdr->shutdown, 1);
    unlock_get(q);
    /* Wake every sleeper; each finds the queue empty and shut down. */
    wake(q, 0);
    return 0;
}

int shmq_claim(shmq *q, int slot, uint64_t *seq, double *since)
{
    if (lock_get(q) != 0)
        return -1;
    *seq = q->hdr->claims[slot].seq;
    *since = q->hdr->claims[slot].since;
    unlock_get(q);
    return 0;
}

int shmq_release(shmq *q, int slot)
{
    if (lock_get(q) != 0)
        return -1;
    q->hdr->claims[slot].seq = 0;
    unlock_get(q);
    return 0;
}

int shmq_get_fd(shmq *q)
{
    return q->ev_get;
}

void shmq_test_lose_token(shmq *q)
{
    if (lock_wake(q)) {
        q->hdr->get_tokens++;
        unlock_wake(q);
    }
}

unsigned shmq_test_tokens(shmq *q)
{
    unsigned n = 0;
    if (lock_wake(q)) {
        n = q->hdr->get_tokens;
        unlock_wake(q);
    }
    return n;
}

void shmq_no_pace(shmq *q)
{
    if (lock_put(q) == 0) {
        q->hdr->no_pace = 1;
        unlock_put(q);
    }
}

uint64_t shmq_test_capacity(shmq *q)
{
    uint64_t cap = 0;
    if (lock_get(q) == 0) {
        cap = q->hdr->cap;
        unlock_get(q);
    }
    return cap;
}
