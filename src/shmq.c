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
 * Layout: one memfd.  Its first page holds the header (a robust,
 * process-shared mutex and the ring's bookkeeping); the rest is a ring of
 * records [u32 length][bytes], a record may wrap around the end.  The
 * header is mapped once at a fixed address (the kernel's robust-futex list
 * points into it); the ring is mapped separately because it grows: a put
 * that does not fit doubles the file and moves the wrapped part behind the
 * old end, and every process remaps when it sees, under the lock, a
 * capacity different from the one it mapped.  An empty ring that grew past
 * 256 MiB shrinks back, so one huge message does not pin its memory for
 * ever; a smaller ring keeps its size, as growing again costs fresh pages
 * (shrinking at 16 MiB made 32 MiB result chunks fault in every page of
 * the ring again for each chunk).
 *
 * Lending (shmq.h): the record at the head may be lent to its only
 * consumer, which reads it in place.  It is no longer counted, but its
 * bytes stay in `used` until given back, so no put can overwrite it, and
 * neither growing (which only moves the wrapped part, which ends before
 * the head) nor shrinking (only when empty) moves it.  Only records that
 * do not wrap are lent.
 *
 * Cancelling (shmq_cancel) marks a record still in the ring as withdrawn
 * and stops counting it; the next get that finds it at the head frees it
 * and goes on to the next.
 *
 * Claims: a consumer that names a slot records in it, under the lock
 * that moves the message out, which message it took; nothing can be
 * taken and lost between the two.
 *
 * Waiting: a consumer that finds the queue empty first watches the count
 * for a few microseconds when its recent waits were that short (most
 * items of a busy pool arrive within that),
 * then counts itself in the header and sleeps in poll() on an eventfd
 * (semaphore mode).  A producer writes one token for each sleeper that has
 * none on its way yet (`woken` counts tokens written and not taken), after
 * it unlocked, so a burst of puts costs one write per sleeper, not one per
 * put, and nobody waits on the lock for a system call.  Producers waiting
 * for room (bounded queues) sleep the same way on a second eventfd.  An
 * eventfd is an ordinary file descriptor, so a Pool's parent waits on "a
 * result arrived" and "a worker died" in one poll().  A wakeup is a hint:
 * the woken side rechecks under the lock, so a stolen item or a stale
 * token costs a loop, never an item.  A producer killed between counting
 * a token and writing it would leave a sleeper without one: sleepers wake
 * at least once a second, and the last sleeper to leave without a token
 * drains the eventfd and starts the count again.
 *
 * A process that dies holding the lock leaves the queue consistent: every
 * change is committed by the last store (count/used) before unlock, and
 * the next locker gets EOWNERDEAD and marks the mutex consistent.
 */
#include "shmq.h"
#include "sys.h"

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
#define INITIAL_CAP ((size_t)256 << 10)
#define SHRINK_ABOVE ((size_t)256 << 20)
#define REC_HDR 12     /* u32 length, u64 sequence number */
/* In a record's sequence number: withdrawn by shmq_cancel, to be skipped. */
#define REC_CANCELLED ((uint64_t)1 << 63)

/* The fields are grouped by who writes them, a cache line each: a put
 * and a get on two CPUs then move only the first line (and the ring's)
 * between them, not also lines that only one side writes. */
struct shmq_hdr {
    /* changed by every put and every get */
    pthread_mutex_t lock;
    uint64_t head;       /* offset of the oldest record */
    uint64_t used;       /* bytes held */
    uint64_t count;      /* records held */
    /* read by every operation, changed rarely */
    _Alignas(64) uint64_t cap;   /* ring bytes */
    uint64_t maxsize;    /* 0: unbounded */
    uint32_t getters;    /* consumers sleeping on ev_get */
    uint32_t putters;    /* producers sleeping on ev_put */
    uint32_t get_tokens; /* tokens written (or about to be) to ev_get, not taken */
    uint32_t put_tokens; /* the same for ev_put */
    uint32_t shutdown;
    uint32_t no_pace;    /* producers never wait for a consumer (shmq_no_pace) */
    uint32_t joinable;   /* a JoinableQueue: puts count in unfinished */
    /* the producers' */
    _Alignas(64) uint64_t next_seq;
    uint32_t unfinished; /* items put and not marked done (a futex word,
                            accessed atomically) */
    /* the consumers' */
    _Alignas(64) double last_get;  /* when a consumer last took an item from a
                            ring holding PACE_FROM bytes or more (luamp_now) */
    uint64_t lent;       /* bytes of the record at the head lent to the
                            consumer (0: none), still counted in used */
    struct { uint64_t seq; double since; } claims[SHMQ_MAX_CLAIMS];
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
};

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

    pthread_mutexattr_t a;
    int e = pthread_mutexattr_init(&a);
    if (!e) e = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!e) e = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!e) e = pthread_mutex_init(&q->hdr->lock, &a);
    pthread_mutexattr_destroy(&a);
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
    /* the ring is mapped by the first lock(), at the capacity it has then */
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

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Locks and brings this process's ring mapping up to date.  On failure the
 * lock is not held.  The lock is held for a few copies at most, so a
 * contended lock is retried briefly before sleeping in the kernel. */
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

static int lock(shmq *q)
{
    int e = EBUSY;
    for (int i = 0; i < LOCK_SPINS && e == EBUSY; i++) {
        e = pthread_mutex_trylock(&q->hdr->lock);
        for (int k = 0; e == EBUSY && k < 32 && looks_locked(&q->hdr->lock); k++)
            cpu_relax();
    }
    if (e == EBUSY)
        e = pthread_mutex_lock(&q->hdr->lock);
    if (e == EOWNERDEAD)
        e = pthread_mutex_consistent(&q->hdr->lock);
    if (e) {
        errno = e;
        return -1;
    }
    if (q->mapped != q->hdr->cap && map_ring(q, q->hdr->cap) != 0) {
        e = errno;
        pthread_mutex_unlock(&q->hdr->lock);
        errno = e;
        return -1;
    }
    return 0;
}

static void unlock(shmq *q)
{
    pthread_mutex_unlock(&q->hdr->lock);
}

static void ring_write(shmq *q, uint64_t off, const void *p, size_t n)
{
    uint64_t cap = q->hdr->cap;
    off %= cap;
    size_t first = n < cap - off ? n : (size_t)(cap - off);
    memcpy(q->ring + off, p, first);
    memcpy(q->ring, (const char *)p + first, n - first);
}

static void ring_read(shmq *q, uint64_t off, void *p, size_t n)
{
    uint64_t cap = q->hdr->cap;
    off %= cap;
    size_t first = n < cap - off ? n : (size_t)(cap - off);
    memcpy(p, q->ring + off, first);
    memcpy((char *)p + first, q->ring, n - first);
}

/* Resizes the ring to `cap` bytes, keeping its records; under the lock.
 * Growing moves the part that wrapped around to behind the old end;
 * shrinking is only done when the ring is empty. */
static int resize(shmq *q, uint64_t cap)
{
    struct shmq_hdr *h = q->hdr;
    uint64_t old = h->cap;
    if (cap > old) {
        if (ftruncate(q->memfd, (off_t)(HDR_SIZE + cap)) != 0)
            return -1;
        if (map_ring(q, cap) != 0)
            return -1;
        if (h->head + h->used > old)
            memcpy(q->ring + old, q->ring, h->head + h->used - old);
    } else {
        if (map_ring(q, cap) != 0)
            return -1;
        if (ftruncate(q->memfd, (off_t)(HDR_SIZE + cap)) != 0)
            return -1;
        h->head = 0;
    }
    h->cap = cap;   /* last: a death before this leaves the old layout valid */
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

/* Under the lock: how many tokens to write for sleepers that have none
 * coming (the caller writes them with ring() after unlocking). */
static uint32_t tokens_due(uint32_t sleepers, uint32_t *tokens)
{
    if (sleepers <= *tokens)
        return 0;
    uint32_t n = sleepers - *tokens;
    *tokens = sleepers;
    return n;
}

/* Under the lock, when a sleeper leaves: `took` says whether it took a
 * token.  The last sleeper out without one empties the eventfd, so a
 * token counted by a producer that died before writing it cannot leave
 * later sleepers without theirs. */
static void sleeper_left(int fd, uint32_t *sleepers, uint32_t *tokens, int took)
{
    (*sleepers)--;
    if (took) {
        if (*tokens)
            (*tokens)--;
    } else if (*sleepers == 0 && *tokens) {
        while (drain_one(fd))
            ;
        *tokens = 0;
    }
}

/* Longest single sleep: see "Waiting" above. */
#define MAX_SLEEP 1.0

/* Sleeps on `fd` until it is written, one of the `nx` extra descriptors
 * becomes readable (*which is set to its index) or the deadline passes;
 * the caller registered itself as a sleeper under the lock and released it. */
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
        int r = poll(p, (nfds_t)(1 + nx), luamp_poll_ms(deadline));
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
 * short (under SHORT_WAIT) watches the count for up to SPIN_TIME seconds:
 * an item that arrives meanwhile costs no system call on either side.
 * After SPIN_PAUSE it yields the CPU between looks, so that on a busy
 * machine the process it waits for can run.  Without the lock: the count
 * is only a hint, rechecked under it. */
#define SPIN_TIME 30e-6
#define SPIN_PAUSE 2e-6
#define SHORT_WAIT 150e-6

static void spin_until_item(struct shmq_hdr *h, double deadline)
{
    double start = luamp_now(), end = start + SPIN_TIME;
    if (deadline > 0 && deadline < end)
        end = deadline;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (__atomic_load_n(&h->count, __ATOMIC_RELAXED) != 0
                || __atomic_load_n(&h->shutdown, __ATOMIC_RELAXED))
                return;
            cpu_relax();
        }
        double t = luamp_now();
        if (t >= end)
            return;
        if (t - start > SPIN_PAUSE)
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

static int consumer_active(const struct shmq_hdr *h)
{
    return !h->no_pace && h->used >= PACE_FROM && luamp_now() - h->last_get < PACE_WAIT;
}

/* Under the lock: sleeps as a producer until a consumer makes room or
 * `until` passes.  Returns SHMQ_OK or SHMQ_TIMEOUT holding the lock again,
 * or SHMQ_ERROR / SHMQ_INTERRUPTED without it (errno kept). */
static int wait_for_room(shmq *q, double until)
{
    struct shmq_hdr *h = q->hdr;
    int took;
    h->putters++;
    unlock(q);
    int r = sleep_on(q->ev_put, NULL, 0, NULL, until, &took);
    int e = errno;
    if (lock(q) != 0)
        return SHMQ_ERROR;
    sleeper_left(q->ev_put, &h->putters, &h->put_tokens, took);
    if (r == SHMQ_ERROR || r == SHMQ_INTERRUPTED) {
        unlock(q);
        errno = e;
    }
    return r;
}

int shmq_put(shmq *q, const void *p, size_t n, double deadline, uint64_t *seq)
{
    luamp_buf b;
    luamp_buf_init(&b);
    b.data = (char *)p;     /* only read */
    b.len = n;
    return shmq_put_buf(q, &b, deadline, seq);
}

/* Where write_piece writes next. */
struct ring_cursor {
    shmq *q;
    uint64_t off;
};

static void write_piece(void *ctx, const char *p, size_t n)
{
    struct ring_cursor *c = ctx;
    ring_write(c->q, c->off, p, n);
    c->off += n;
}

/* Writes message m (its data with its spans inserted) at ring offset off. */
static void write_message(shmq *q, uint64_t off, const luamp_buf *m)
{
    struct ring_cursor c = { q, off };
    luamp_buf_each(m, write_piece, &c);
}

/* Puts message m as record number `fixed` (0: the next number) and, with
 * clear_slot >= 0, empties that claim slot in the same locked step. */
static int put_rec(shmq *q, const luamp_buf *m, double deadline, uint64_t fixed, int clear_slot,
                   uint64_t *seq);

int shmq_put_buf(shmq *q, const luamp_buf *m, double deadline, uint64_t *seq)
{
    return put_rec(q, m, deadline, 0, -1, seq);
}

int shmq_requeue(shmq *q, int slot, const void *p, size_t n, uint64_t seq)
{
    luamp_buf b;
    luamp_buf_init(&b);
    b.data = (char *)p;     /* only read */
    b.len = n;
    return put_rec(q, &b, -1, seq, slot, NULL);
}

static int put_rec(shmq *q, const luamp_buf *m, double deadline, uint64_t fixed, int clear_slot,
                   uint64_t *seq)
{
    struct shmq_hdr *h = q->hdr;
    size_t n = luamp_buf_size(m);
    uint64_t need = REC_HDR + (uint64_t)n;
    if (n > LUAMP_MAX_MESSAGE) {
        errno = EMSGSIZE;
        return SHMQ_ERROR;
    }
    if (lock(q) != 0)
        return SHMQ_ERROR;
    while (h->maxsize && h->count >= h->maxsize) {
        if (deadline == 0 || (deadline > 0 && luamp_now() >= deadline)) {
            unlock(q);
            return SHMQ_TIMEOUT;
        }
        int r = wait_for_room(q, deadline);
        if (r == SHMQ_ERROR || r == SHMQ_INTERRUPTED)
            return r;
    }
    while (h->cap - h->used < need && consumer_active(h)) {
        double until = luamp_now() + PACE_WAIT;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        int r = wait_for_room(q, until);
        if (r == SHMQ_ERROR || r == SHMQ_INTERRUPTED)
            return r;
        if (r == SHMQ_TIMEOUT)
            break;      /* the consumer is slow after all: grow */
    }
    if (h->cap - h->used < need) {
        uint64_t cap = h->cap * 2;
        while (cap - h->used < need)
            cap *= 2;
        if (resize(q, cap) != 0) {
            int e = errno;
            unlock(q);
            errno = e;
            return SHMQ_ERROR;
        }
    }
    unsigned char rec[REC_HDR];
    uint32_t len = (uint32_t)n;
    uint64_t s = fixed ? fixed : ++h->next_seq;
    memcpy(rec, &len, 4);
    memcpy(rec + 4, &s, 8);
    uint64_t tail = h->head + h->used;
    ring_write(q, tail, rec, REC_HDR);
    write_message(q, tail + REC_HDR, m);
    if (seq)
        *seq = s;
    h->used += need;
    h->count++;
    if (h->joinable && !fixed)
        __atomic_add_fetch(&h->unfinished, 1, __ATOMIC_RELAXED);
    if (clear_slot >= 0)
        h->claims[clear_slot].seq = 0;
    uint32_t wake = tokens_due(h->getters, &h->get_tokens);
    unlock(q);
    ring(q->ev_get, wake);
    return SHMQ_OK;
}

/* Under the lock: frees the n bytes of records at the head. */
static void consumed(shmq *q, uint64_t n)
{
    struct shmq_hdr *h = q->hdr;
    h->head = (h->head + n) % h->cap;
    h->used -= n;
    if (h->used == 0) {
        h->head = 0;
        if (h->cap > SHRINK_ABOVE)
            resize(q, INITIAL_CAP);   /* failure just keeps the big ring */
    }
}

/* Under the lock: frees the record lent at the head, if any. */
static void take_back(shmq *q)
{
    uint64_t n = q->hdr->lent;
    if (n) {
        q->hdr->lent = 0;
        consumed(q, n);
    }
}

/* Under the lock: the length and sequence number of the record at ring
 * offset off. */
static void read_rec(shmq *q, uint64_t off, uint32_t *len, uint64_t *seq)
{
    unsigned char rec[REC_HDR];
    ring_read(q, off, rec, REC_HDR);
    memcpy(len, rec, 4);
    memcpy(seq, rec + 4, 8);
}

/* Under the lock, with count > 0 and nothing lent: frees the withdrawn
 * records at the head, so that the head is a live record. */
static void skip_cancelled(shmq *q)
{
    struct shmq_hdr *h = q->hdr;
    for (;;) {
        uint32_t len;
        uint64_t seq;
        read_rec(q, h->head, &len, &seq);
        if (!(seq & REC_CANCELLED))
            return;
        consumed(q, REC_HDR + (uint64_t)len);
    }
}

int shmq_cancel(shmq *q, uint64_t seq)
{
    struct shmq_hdr *h = q->hdr;
    if (lock(q) != 0)
        return -1;
    int found = 0;
    uint64_t off = h->head + h->lent, end = h->head + h->used;
    while (off < end) {
        uint32_t len;
        uint64_t s;
        read_rec(q, off, &len, &s);
        if (s == seq) {
            s |= REC_CANCELLED;
            ring_write(q, off + 4, &s, 8);
            h->count--;
            found = 1;
            break;
        }
        off += REC_HDR + (uint64_t)len;   /* (a requeued record is out of order) */
    }
    uint32_t wake = found ? tokens_due(h->putters, &h->put_tokens) : 0;
    unlock(q);
    ring(q->ev_put, wake);
    return found;
}

int shmq_give_back(shmq *q)
{
    if (lock(q) != 0)
        return -1;
    take_back(q);
    uint32_t wake = tokens_due(q->hdr->putters, &q->hdr->put_tokens);
    unlock(q);
    ring(q->ev_put, wake);
    return 0;
}

int shmq_get(shmq *q, luamp_buf *out, double deadline, shmq_wait *w)
{
    struct shmq_hdr *h = q->hdr;
    shmq_wait none = { .claim = -1 };
    if (!w)
        w = &none;
    if (lock(q) != 0)
        return SHMQ_ERROR;
    if (w->claim >= 0)
        h->claims[w->claim].seq = 0;    /* what it held before is done */
    w->lent = NULL;
    if (h->lent) {                      /* and so is what it borrowed */
        take_back(q);
        uint32_t wake = tokens_due(h->putters, &h->put_tokens);
        if (wake) {
            unlock(q);
            ring(q->ev_put, wake);
            if (lock(q) != 0)
                return SHMQ_ERROR;
        }
    }
    int spun = !q->spin;
    double waited_from = 0;
    while (h->count == 0) {
        if (h->shutdown || deadline == 0 || (deadline > 0 && luamp_now() >= deadline)) {
            int r = h->shutdown ? SHMQ_SHUTDOWN : SHMQ_TIMEOUT;
            unlock(q);
            return r;
        }
        if (waited_from == 0)
            waited_from = luamp_now();
        if (!spun) {
            spun = 1;
            unlock(q);
            spin_until_item(h, deadline);
            if (lock(q) != 0)
                return SHMQ_ERROR;
            continue;
        }
        h->getters++;
        unlock(q);
        int took;
        int r = sleep_on(q->ev_get, w->extra, w->nextra, &w->which, deadline, &took);
        int e = errno;
        if (lock(q) != 0)
            return SHMQ_ERROR;
        sleeper_left(q->ev_get, &h->getters, &h->get_tokens, took);
        if ((r == SHMQ_EVENT || r == SHMQ_INTERRUPTED) && h->count == 0) {
            unlock(q);
            return r;
        }
        if (r == SHMQ_ERROR) {
            unlock(q);
            errno = e;
            return r;
        }
    }
    skip_cancelled(q);
    /* One clock read serves everything below; none when nothing needs it
     * (last_get only matters once the ring is big enough to pace). */
    int pacing = h->used >= PACE_FROM;
    double t = waited_from != 0 || w->claim >= 0 || pacing ? luamp_now() : 0;
    if (waited_from != 0)
        q->spin = t - waited_from < SHORT_WAIT;
    unsigned char rec[REC_HDR];
    uint32_t len;
    ring_read(q, h->head, rec, REC_HDR);
    memcpy(&len, rec, 4);
    memcpy(&w->seq, rec + 4, 8);
    uint64_t need = REC_HDR + (uint64_t)len;
    int lend = w->lend_from && len >= w->lend_from && h->head + need <= h->cap;
    luamp_buf_reset(out);
    if (lend) {
        w->lent = q->ring + h->head + REC_HDR;
        w->lent_len = len;
    } else {
        if (luamp_buf_reserve(out, len) != 0) {
            unlock(q);
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
    if (lend)
        h->lent = need;
    else
        consumed(q, need);
    h->count--;
    if (pacing)
        h->last_get = t;
    uint32_t wake = lend ? 0 : tokens_due(h->putters, &h->put_tokens);
    unlock(q);
    ring(q->ev_put, wake);
    return SHMQ_OK;
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
    if (lock(q) != 0)
        return -1;
    uint32_t n = __atomic_load_n(&h->unfinished, __ATOMIC_RELAXED);
    if (n > 0)
        __atomic_store_n(&h->unfinished, n - 1, __ATOMIC_RELEASE);
    unlock(q);
    if (n == 0)
        return 1;
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

uint64_t shmq_count(shmq *q)
{
    if (lock(q) != 0)
        return 0;
    uint64_t n = q->hdr->count;
    unlock(q);
    return n;
}

int shmq_full(shmq *q)
{
    if (lock(q) != 0)
        return 0;
    int full = q->hdr->maxsize && q->hdr->count >= q->hdr->maxsize;
    unlock(q);
    return full;
}

int shmq_shutdown(shmq *q)
{
    if (lock(q) != 0)
        return -1;
    q->hdr->shutdown = 1;
    /* Wake every sleeper; each finds the queue empty and shut down. */
    uint32_t wake = tokens_due(q->hdr->getters, &q->hdr->get_tokens);
    unlock(q);
    ring(q->ev_get, wake);
    return 0;
}

int shmq_claim(shmq *q, int slot, uint64_t *seq, double *since)
{
    if (lock(q) != 0)
        return -1;
    *seq = q->hdr->claims[slot].seq;
    *since = q->hdr->claims[slot].since;
    unlock(q);
    return 0;
}

int shmq_release(shmq *q, int slot)
{
    if (lock(q) != 0)
        return -1;
    q->hdr->claims[slot].seq = 0;
    unlock(q);
    return 0;
}

int shmq_get_fd(shmq *q)
{
    return q->ev_get;
}

void shmq_test_lose_token(shmq *q)
{
    if (lock(q) == 0) {
        q->hdr->get_tokens++;
        unlock(q);
    }
}

unsigned shmq_test_tokens(shmq *q)
{
    unsigned n = 0;
    if (lock(q) == 0) {
        n = q->hdr->get_tokens;
        unlock(q);
    }
    return n;
}

void shmq_no_pace(shmq *q)
{
    if (lock(q) == 0) {
        q->hdr->no_pace = 1;
        unlock(q);
    }
}

uint64_t shmq_test_capacity(shmq *q)
{
    uint64_t cap = 0;
    if (lock(q) == 0) {
        cap = q->hdr->cap;
        unlock(q);
    }
    return cap;
}
