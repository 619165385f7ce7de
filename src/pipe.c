/* SPDX-License-Identifier: MIT */
/*
 * pipe.c - mp.Pipe: two connected ends that carry whole messages.
 *
 * Data goes through shared memory; the kernel is only asked to put a
 * process to sleep, to wake it, and to say when the other end is gone.
 *
 * A Pipe is one memfd, mapped by every process that holds an end: a page
 * of headers and, per direction (two for a duplex Pipe, one otherwise), a
 * ring of 4 MiB mapped twice in a row, so that any run of bytes in the
 * ring is contiguous in memory.  A message is an 8-byte little-endian
 * length and the encoded value.  The sender copies it in and publishes it
 * by one store of the ring's tail; the receiver copies it out and frees it
 * by one store of the head.  A message that does not fit the ring (over
 * 4 MiB) streams through it: the sender writes what fits, the receiver
 * takes what came, until it is whole.  The sender streams the encoder's
 * buffer with its spans (codec.h: big strings left in the Lua strings),
 * as it writes a small message, rather than making it whole first, and
 * the receiver faults in the buffer it collects the message in with one
 * call (luamp_buf_prepare) before it starts: a first 300 MiB message went
 * from about 600 to 900 MiB/s, the rest being mostly the fresh memory
 * the receiver needs for that buffer and then for the Lua string it
 * decodes.  Positions only grow; when a sender finds the ring empty well
 * past its start, it moves both positions back to offset 0, so a Pipe
 * that carries one message at a time touches a page or two, not the
 * whole ring.
 *
 * Any number of processes may use an end at once (Python's Connection is
 * not safe for that): senders of a direction take its send lock, receivers
 * its receive lock, both robust process-shared mutexes, held only while
 * bytes are copied (and while a message over 4 MiB streams), and while a
 * message of 16 KiB or more is decoded where it lies in the ring (in a
 * protected call: nothing here raises with a lock held).
 *
 * Waiting.  Each direction has a socketpair: its ends are held with the
 * sending and the receiving end of the Pipe.  A receiver that finds no
 * message spins a little (adaptively: up to 50 us while the messages it
 * waited for lately came that fast, not at all when they did not), then
 * counts itself a sleeper in shared memory and sleeps in poll() on its
 * socket; a sender that publishes a message while someone sleeps writes a
 * byte into its own socket (once per sleep), which wakes them.  A sender
 * that finds the ring full waits the same way for the receivers, on the
 * same socketpair in the other direction.  A wakeup is a hint: the woken
 * side looks at the ring again.  Sleepers also look again every second
 * (every 10 ms when others sleep on the same end too): a wakeup taken by
 * another process sharing the end costs a delay, never a hang.  The sockets are also how "closed" is
 * known: once every process holding the other end has closed it or died,
 * however it died, the kernel makes the socket read end-of-file (and
 * POLLHUP), and recv returns nil, "closed" after it has delivered every
 * message that was published before.  Sockets rather than pipes, so that
 * an end (its sockets and the memfd) can later be passed to another
 * process with SCM_RIGHTS.
 *
 * Once send returns, the message is in shared memory: the receiver gets it
 * even if the sender then computes for an hour, exits or is killed.
 * Sending never raises SIGPIPE.  A message cut in the middle (a sender or
 * receiver of a message over 4 MiB was interrupted or died) makes the
 * direction "broken": later calls raise instead of reading garbage (a
 * receiver still gets the whole messages that came before the cut).
 *
 * As in Python, ends are inherited by forked children, and an end sees
 * "closed" only when every process holding the other end has closed it.
 */
#include "sys.h"
#include "interrupt.h"
#include "module.h"
#include "objects.h"
#include "pshared.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <lauxlib.h>

#define CAP ((uint64_t)4 << 20)         /* ring bytes per direction: two 1 MiB messages fit */
#define HDR_SIZE ((size_t)4096)         /* the headers of both directions */
#define SKIP_AFTER ((uint64_t)64 << 10) /* rewind an empty ring past this */
#define STREAM_CHUNK (CAP / 4)          /* least a big message is written in */
#define IN_PLACE ((uint64_t)16 << 10)   /* recv decodes in the ring from here */
#define SPIN_MAX 50e-6                  /* seconds of spinning before sleeping */
#define SPIN_PAUSE 2e-6                 /* then yield the CPU between looks */
#define SHORT_WAIT 150e-6               /* a wait this short is worth a spin */
#define RECHECK_MS 1000                 /* a sleeper looks again this often, */
#define CROWDED_MS 10                   /* and this often when not alone */

#define CL _Alignas(64)

/* Where one side sleeps: how many sleep, and whether a wakeup is on its way. */
typedef struct bell {
    CL _Atomic uint32_t sleepers;
    _Atomic uint32_t rung;
} bell;

/* One direction's shared state, in the memfd's first page. */
typedef struct dir {
    CL _Atomic uint64_t tail;       /* end of what was published (senders) */
    _Atomic int tx_cpu;             /* where the last sender ran */
    CL _Atomic uint64_t head;       /* start of what is not yet taken (receivers) */
    _Atomic int rx_cpu;             /* where the last receiver ran */
    bell data;                      /* receivers sleep here, senders ring */
    bell room;                      /* senders sleep here, receivers ring */
    CL _Atomic uint32_t broken;     /* a message was cut: CUT_BY_* */
    CL pthread_mutex_t tx_lock;
    uint64_t tx_left;               /* bytes of a big message still to write */
    CL pthread_mutex_t rx_lock;
    uint64_t rx_left;               /* bytes of a big message still to take */
} dir;

_Static_assert(2 * sizeof(dir) <= HDR_SIZE, "the headers fit their page");

/* This process's mapping of a Pipe's memfd, shared by its ends here.
 * The memfd stays open so that an end can be sent to a spawned process. */
typedef struct shm {
    int refs;
    int fd;
    int ndir;
    char *base;
    size_t len;
} shm;

/* One direction as an end sees it. */
typedef struct side {
    dir *d;             /* NULL: this end does not go this way */
    char *data;         /* the ring, mapped twice in a row */
    int fd;             /* this end's socket of the direction's pair */
    uint64_t head;      /* sender: the head it saw last */
    uint64_t skip_at;   /* sender: next position to try rewinding at */
    double spin;        /* seconds to spin before sleeping */
} side;

typedef struct conn {
    shm *m;             /* NULL once closed */
    side rx, tx;
    luamp_buf buf;      /* send's encoding buffer */
    luamp_buf in;       /* recv's copy of a message */
    double next_check;  /* when send next asks whether the peer is alive */
    pid_t watcher;      /* process counted a sleeper for core.wait */
    char id[48];
} conn;

enum { W_READY, W_TIMEOUT, W_CLOSED, W_INTR, W_ERROR };

/* Who cut a message: after a sender, the ring up to the cut message is
 * whole; after a receiver, its head is inside a message. */
enum { CUT_BY_SENDER = 1, CUT_BY_RECEIVER = 2 };

static conn *check_conn(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    if (!c->m)
        luamp_raise(L, "closed", "this Pipe end is closed");
    return c;
}

/* A message's length, before its bytes: 8 bytes, little-endian (messages
 * may pass 4 GiB, as Python's Connection's do). */
#define LEN 8

static inline uint64_t get_len(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t n = 0;
    for (int i = LEN - 1; i >= 0; i--)
        n = n << 8 | u[i];
    return n;
}

/* ---- locks ------------------------------------------------------------ */

/* Takes a direction's send or receive lock, waiting at most until
 * `deadline` and giving way to interrupts.  A holder that died in the
 * middle of a big message (*left not 0) leaves the direction broken
 * (`cut` says by whom). */
static int lock_dir(dir *d, pthread_mutex_t *m, uint64_t *left, int cut, double deadline)
{
    int e = pthread_mutex_trylock(m);
    while (e == EBUSY) {
        if (luamp_interrupt_pending())
            return W_INTR;
        double now = luamp_now();
        if (deadline >= 0 && now >= deadline)
            return W_TIMEOUT;
        double slice = 0.02;
        if (deadline >= 0 && deadline - now < slice)
            slice = deadline - now;
        struct timespec ts;
        if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
            return W_ERROR;
        long ns = ts.tv_nsec + (long)(slice * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        e = pthread_mutex_timedlock(m, &ts);
        if (e == ETIMEDOUT)
            e = EBUSY;
    }
    if (e == EOWNERDEAD) {
        if (*left) {
            atomic_store(&d->broken, cut);
            *left = 0;
        }
        e = pthread_mutex_consistent(m);
    }
    if (e) {
        errno = e;
        return W_ERROR;
    }
    return W_READY;
}

static void unlock_dir(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
}

/* ---- sleeping and waking ---------------------------------------------- */

/* Wakes whoever sleeps on `b` by writing a byte into `fd`, the socket
 * whose peer they poll.  -1 (errno EPIPE) when nobody holds the peer. */
static int ring(bell *b, int fd)
{
    if (atomic_load(&b->sleepers) == 0 || atomic_load(&b->rung)
        || atomic_exchange(&b->rung, 1))
        return 0;
    for (;;) {
        if (send(fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
            return 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;           /* plenty of bytes wait to be read already */
        if (errno != EINTR)
            return -1;
    }
}

/* Learns from a wait of `took` seconds how long the next one should spin. */
static void learn(side *s, double took, int by_spinning)
{
    if (by_spinning || took <= SHORT_WAIT)
        s->spin = SPIN_MAX;
    else if ((s->spin /= 2) < 1e-6)
        s->spin = 0;
}

/* Waits until `*word` is no longer `seen`: spins, then sleeps on bell `b`
 * and socket `fd`.  `peer_cpu`: where the side that changes `word` last
 * ran.  W_READY (look again), W_TIMEOUT, W_CLOSED (every holder of the
 * other end is gone), W_INTR, W_ERROR (errno). */
static int wait_change(side *s, bell *b, _Atomic uint64_t *word, uint64_t seen,
                       _Atomic int *peer_cpu, double deadline)
{
    double t0 = luamp_now();
    if (s->spin > 0 && (deadline < 0 || t0 < deadline)) {
        double pure = t0 + SPIN_PAUSE, until = t0 + s->spin;
        /* A peer that last ran on this CPU cannot run while this spins:
         * hand the CPU over at once. */
        if (atomic_load_explicit(peer_cpu, memory_order_relaxed) == sched_getcpu())
            pure = t0;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        int yielding = pure <= t0;
        for (unsigned i = 1;; i++) {
            if (atomic_load_explicit(word, memory_order_acquire) != seen) {
                learn(s, 0, 1);
                return W_READY;
            }
            if (yielding || (i & 31) == 0) {
                if (luamp_interrupt_pending())
                    return W_INTR;
                double now = luamp_now();
                if (now >= until)
                    break;
                if (now >= pure) {
                    yielding = 1;
                    sched_yield();  /* lets a peer on this CPU run */
                }
            } else {
                cpu_relax();
            }
        }
    }
    int r = W_READY;
    uint32_t others = atomic_fetch_add(&b->sleepers, 1);
    atomic_store(&b->rung, 0);
    while (atomic_load(word) == seen) {
        int ms = luamp_poll_ms(deadline), most = others ? CROWDED_MS : RECHECK_MS;
        if (ms < 0 || ms > most)
            ms = most;
        struct pollfd p = { .fd = s->fd, .events = POLLIN };
        int n = poll(&p, 1, ms);
        if (n > 0) {
            char tmp[64];
            ssize_t k;
            while ((k = recv(s->fd, tmp, sizeof tmp, MSG_DONTWAIT)) > 0)
                ;
            if (k == 0 || (k < 0 && errno == ECONNRESET))
                r = W_CLOSED;
            else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                r = W_ERROR;
            atomic_store(&b->rung, 0);
            break;
        }
        if (n == 0) {
            if (deadline >= 0 && luamp_now() >= deadline) {
                r = W_TIMEOUT;
                break;
            }
            continue;
        }
        if (errno != EINTR) {
            r = W_ERROR;
            break;
        }
        if (luamp_interrupt_pending()) {
            r = W_INTR;
            break;
        }
    }
    int e = errno;
    atomic_fetch_sub(&b->sleepers, 1);
    if (r == W_READY || r == W_TIMEOUT)
        learn(s, luamp_now() - t0, 0);
    errno = e;
    return r;
}

/* core.wait counts the caller a sleeper until its next recv, poll or close. */
static void unwatch(conn *c)
{
    if (c->watcher && c->watcher == getpid())
        atomic_fetch_sub(&c->rx.d->data.sleepers, 1);
    c->watcher = 0;
}

/* Raises for what a wait or a lock returned (not for W_READY/W_TIMEOUT). */
static int wait_error(lua_State *L, int r, const char *what)
{
    if (r == W_INTR)
        luamp_raise_interrupt(L);
    if (r == W_CLOSED)
        return luamp_raise(L, "closed", "cannot send: the other end of the Pipe is closed");
    return luamp_sys_error(L, what);
}

static int broken_error(lua_State *L)
{
    return luamp_raise(L, "closed", "the Pipe is broken: a message over 4 MiB was cut "
                       "when its sender or receiver was interrupted or died");
}

/* ---- send ------------------------------------------------------------- */

/* A message over the ring's size (c->buf, with its spans), with the send
 * lock held; returns with it released.  0, or a W_ code to raise for. */
static int send_stream(conn *c, uint64_t total)
{
    side *s = &c->tx;
    dir *d = s->d;
    uint64_t off = 0;
    luamp_buf_cursor from = { 0, 0 };
    d->tx_left = total;
    while (off < total) {
        uint64_t t = atomic_load_explicit(&d->tail, memory_order_relaxed);
        uint64_t h = atomic_load_explicit(&d->head, memory_order_acquire);
        uint64_t room = CAP - (t - h), left = total - off;
        uint64_t n = room < left ? room : left;
        if (n >= (left < STREAM_CHUNK ? left : STREAM_CHUNK)) {
            luamp_buf_read(&c->buf, &from, s->data + t % CAP, n);
            off += n;
            d->tx_left = total - off;
            atomic_store_explicit(&d->tx_cpu, sched_getcpu(), memory_order_relaxed);
            atomic_store(&d->tail, t + n);
            if (ring(&d->data, s->fd) != 0) {
                d->tx_left = 0;
                atomic_store(&d->broken, CUT_BY_SENDER);
                unlock_dir(&d->tx_lock);
                return W_CLOSED;
            }
            continue;
        }
        int r = wait_change(s, &d->room, &d->head, h, &d->rx_cpu, -1);
        if (r == W_READY && atomic_load(&d->broken))
            r = W_CLOSED;
        if (r != W_READY) {
            if (off > 0) {
                atomic_store(&d->broken, CUT_BY_SENDER);
                d->tx_left = 0;
                atomic_store(&d->data.rung, 0);
                ring(&d->data, s->fd);
            }
            unlock_dir(&d->tx_lock);
            return r;
        }
    }
    d->tx_left = 0;
    unlock_dir(&d->tx_lock);
    return 0;
}

static int c_send(lua_State *L)
{
    conn *c = check_conn(L);
    side *s = &c->tx;
    if (!s->d)
        return luaL_error(L, "cannot send on the receiving end of a one-way Pipe");
    if (lua_isnoneornil(L, 2))
        return luaL_error(L, "bad argument #1 to 'send' (nil cannot be sent on a Pipe)");
    dir *d = s->d;
    luamp_buf_reset(&c->buf);
    if (luamp_buf_reserve(&c->buf, LEN) != 0)
        return luaL_error(L, "Pipe:send: out of memory");
    c->buf.len = LEN;
    if (luamp_encode(L, 2, "message", &c->buf) != 0) {
        luamp_buf_trim(&c->buf);
        return luamp_raise(L, "serialize", "%s", lua_tostring(L, -1));
    }
    uint64_t n = luamp_buf_size(&c->buf) - LEN;
    if (n > LUAMP_MAX_MESSAGE) {
        luamp_buf_trim(&c->buf);
        return luaL_error(L, "Pipe:send: a message of %I bytes is over the " LUAMP_MAX_MESSAGE_TEXT " limit",
                          (lua_Integer)n);
    }
    for (int i = 0; i < LEN; i++)
        c->buf.data[i] = (char)(n >> (8 * i));
    uint64_t total = LEN + n;

    /* Now and then (and first of all), ask whether anyone can still
     * receive: a full ring would tell, but only after 4 MiB. */
    double now = luamp_now();
    if (now >= c->next_check) {
        c->next_check = now + 1e-3;
        struct pollfd p = { .fd = s->fd, .events = POLLIN };
        if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR))) {
            luamp_buf_trim(&c->buf);
            return wait_error(L, W_CLOSED, NULL);
        }
    }

    int r = lock_dir(d, &d->tx_lock, &d->tx_left, CUT_BY_SENDER, -1);
    if (r == W_READY && atomic_load(&d->broken)) {
        unlock_dir(&d->tx_lock);
        luamp_buf_trim(&c->buf);
        return broken_error(L);
    }
    if (r == W_READY && total > CAP)
        r = send_stream(c, total);
    else if (r == W_READY) {
        uint64_t t;
        for (;;) {
            t = atomic_load_explicit(&d->tail, memory_order_relaxed);
            uint64_t h = s->head;
            if (t - h > CAP - total)
                s->head = h = atomic_load_explicit(&d->head, memory_order_acquire);
            if (t - h <= CAP - total)
                break;
            unlock_dir(&d->tx_lock);
            r = wait_change(s, &d->room, &d->head, h, &d->rx_cpu, -1);
            if (r == W_READY)
                r = lock_dir(d, &d->tx_lock, &d->tx_left, CUT_BY_SENDER, -1);
            if (r != W_READY)
                break;
        }
        if (r == W_READY) {
            if (t % CAP >= SKIP_AFTER && t >= s->skip_at) {
                /* Rewind an empty ring to offset 0: head first, so a
                 * receiver that sees the new tail sees the new head. */
                if (atomic_load_explicit(&d->head, memory_order_acquire) == t) {
                    t = (t / CAP + 1) * CAP;
                    atomic_store(&d->head, t);
                    s->head = t;
                } else {
                    s->skip_at = t + 4096;
                }
            }
            luamp_buf_copy_out(&c->buf, s->data + t % CAP);
            atomic_store_explicit(&d->tx_cpu, sched_getcpu(), memory_order_relaxed);
            atomic_store(&d->tail, t + total);
            unlock_dir(&d->tx_lock);
            if (ring(&d->data, s->fd) != 0)
                r = errno == EPIPE || errno == ECONNRESET ? W_CLOSED : W_ERROR;
        }
    }
    luamp_buf_trim(&c->buf);
    if (r != W_READY)
        return wait_error(L, r, "Pipe:send");
    return 0;
}

/* ---- recv ------------------------------------------------------------- */

/* The rest of a message over the ring's size, with the receive lock held
 * and its length taken; returns with the lock released and the
 * message in c->in, or a W_ code to raise for. */
static int recv_stream(conn *c, uint64_t n)
{
    side *s = &c->rx;
    dir *d = s->d;
    uint64_t got = 0;
    int closed = 0;
    d->rx_left = n;
    for (;;) {
        uint64_t t = atomic_load_explicit(&d->tail, memory_order_acquire);
        uint64_t h = atomic_load_explicit(&d->head, memory_order_relaxed);
        uint64_t k = t > h ? t - h : 0;
        if (k > n - got)
            k = n - got;
        if (k > 0) {
            memcpy(c->in.data + got, s->data + h % CAP, k);
            got += k;
            d->rx_left = n - got;
            atomic_store_explicit(&d->rx_cpu, sched_getcpu(), memory_order_relaxed);
            atomic_store(&d->head, h + k);
            ring(&d->room, s->fd);
            if (got == n)
                break;
            continue;
        }
        int r = closed ? W_CLOSED : wait_change(s, &d->data, &d->tail, t, &d->tx_cpu, -1);
        if (r == W_READY && atomic_load(&d->broken))
            r = W_CLOSED;
        if (r == W_CLOSED && !closed) {
            closed = 1;         /* look once more: it may all be there */
            continue;
        }
        if (r != W_READY) {
            atomic_store(&d->broken, CUT_BY_RECEIVER);
            d->rx_left = 0;
            atomic_store(&d->room.rung, 0);
            ring(&d->room, s->fd);
            unlock_dir(&d->rx_lock);
            return r;
        }
    }
    d->rx_left = 0;
    unlock_dir(&d->rx_lock);
    c->in.len = n;
    return 0;
}

/* Whether a message (or the start of one over 4 MiB) is waiting. */
static int ready(side *s)
{
    dir *d = s->d;
    uint64_t t = atomic_load_explicit(&d->tail, memory_order_acquire);
    uint64_t h = atomic_load_explicit(&d->head, memory_order_relaxed);
    if (t <= h || t - h < LEN)
        return 0;
    uint64_t total = LEN + get_len(s->data + h % CAP);
    return total > CAP || t - h >= total;
}

static int c_recv(lua_State *L)
{
    conn *c = check_conn(L);
    side *s = &c->rx;
    if (!s->d)
        return luaL_error(L, "cannot receive on the sending end of a one-way Pipe");
    double deadline = luamp_opt_deadline(L, 2);
    dir *d = s->d;
    unwatch(c);
    int closed = 0, timed_out = 0, r;
    for (;;) {
        r = lock_dir(d, &d->rx_lock, &d->rx_left, CUT_BY_RECEIVER, timed_out ? luamp_now() : deadline);
        if (r != W_READY)
            break;
        uint64_t t = atomic_load_explicit(&d->tail, memory_order_acquire);
        uint64_t h = atomic_load_explicit(&d->head, memory_order_relaxed);
        uint32_t cut = atomic_load(&d->broken);
        if (cut && (cut == CUT_BY_RECEIVER || t <= h || t - h < LEN || t - h < LEN + get_len(s->data + h % CAP))) {
            unlock_dir(&d->rx_lock);
            return broken_error(L);
        }
        if (t > h && t - h >= LEN) {
            const char *p = s->data + h % CAP;
            uint64_t n = get_len(p);
            if (n > LUAMP_MAX_MESSAGE) {
                atomic_store(&d->broken, CUT_BY_RECEIVER);
                unlock_dir(&d->rx_lock);
                return luaL_error(L, "Pipe:recv: a message of %I bytes is over the " LUAMP_MAX_MESSAGE_TEXT " limit",
                                  (lua_Integer)n);
            }
            c->in.len = 0;
            if (LEN + n <= CAP && t - h >= LEN + n) {
                if (n >= IN_PLACE) {
                    /* Decoded where it lies, saving a copy; protected,
                     * so that nothing raises with the lock held.  Taken
                     * whatever decoding says. */
                    int st = luamp_decode_protected(L, p + LEN, n, 0);
                    atomic_store_explicit(&d->rx_cpu, sched_getcpu(), memory_order_relaxed);
                    atomic_store(&d->head, h + LEN + n);
                    unlock_dir(&d->rx_lock);
                    ring(&d->room, s->fd);
                    if (st != 0)
                        return lua_error(L);
                    luamp_collect_for(L, n);
                    return 1;
                }
                if (luamp_buf_reserve(&c->in, n) != 0) {
                    unlock_dir(&d->rx_lock);
                    return luaL_error(L, "Pipe:recv: out of memory for a message of %I bytes", (lua_Integer)n);
                }
                memcpy(c->in.data, p + LEN, n);
                c->in.len = n;
                atomic_store_explicit(&d->rx_cpu, sched_getcpu(), memory_order_relaxed);
                atomic_store(&d->head, h + LEN + n);
                unlock_dir(&d->rx_lock);
                ring(&d->room, s->fd);
                r = W_READY;
                break;
            }
            if (LEN + n > CAP) {
                if (luamp_buf_prepare(&c->in, n) != 0) {
                    unlock_dir(&d->rx_lock);
                    return luaL_error(L, "Pipe:recv: out of memory for a message of %I bytes", (lua_Integer)n);
                }
                atomic_store(&d->head, h + LEN);
                r = recv_stream(c, n);
                if (r == W_CLOSED)
                    return luamp_raise(L, "closed", "Pipe:recv: the other end closed in the middle of a message");
                if (r != W_READY)
                    return wait_error(L, r, "Pipe:recv");
                break;
            }
        }
        unlock_dir(&d->rx_lock);
        if (closed || timed_out) {
            if (t > h)
                return luamp_raise(L, "closed", "Pipe:recv: the other end closed in the middle of a message");
            lua_pushnil(L);
            if (closed)
                lua_pushliteral(L, "closed");
            else
                lua_pushliteral(L, "timeout");
            return 2;
        }
        r = wait_change(s, &d->data, &d->tail, t, &d->tx_cpu, deadline);
        if (r == W_CLOSED)
            closed = 1;         /* what was published before is still taken */
        else if (r == W_TIMEOUT)
            timed_out = 1;
        else if (r != W_READY)
            return wait_error(L, r, "Pipe:recv");
    }
    if (r == W_TIMEOUT) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    if (r != W_READY)
        return wait_error(L, r, "Pipe:recv");
    int e = luamp_decode(L, c->in.data, c->in.len, 0);
    size_t n = c->in.len;
    luamp_buf_trim(&c->in);
    if (e != 0)
        return lua_error(L);
    luamp_collect_for(L, n);
    return 1;
}

static int c_poll(lua_State *L)
{
    conn *c = check_conn(L);
    side *s = &c->rx;
    if (!s->d)
        return luaL_error(L, "cannot poll the sending end of a one-way Pipe");
    double deadline = lua_isnoneornil(L, 2) ? luamp_now() : luamp_opt_deadline(L, 2);
    unwatch(c);
    int yes;
    for (;;) {
        uint64_t t = atomic_load_explicit(&s->d->tail, memory_order_acquire);
        if ((yes = ready(s)) != 0)
            break;
        int r = wait_change(s, &s->d->data, &s->d->tail, t, &s->d->tx_cpu, deadline);
        if (r == W_TIMEOUT) {
            yes = ready(s);
            break;
        }
        if (r == W_CLOSED) {
            yes = 1;            /* recv will say "closed" (or deliver) */
            break;
        }
        if (r != W_READY)
            return wait_error(L, r, "Pipe:poll");
    }
    lua_pushboolean(L, yes);
    return 1;
}

/* ---- ends ------------------------------------------------------------- */

static void shm_unref(shm *m)
{
    if (m && --m->refs == 0) {
        munmap(m->base, m->len);
        close(m->fd);
        free(m);
    }
}

static int c_close(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    if (c->m) {
        unwatch(c);
        if (c->rx.fd >= 0)
            close(c->rx.fd);
        if (c->tx.fd >= 0 && c->tx.fd != c->rx.fd)
            close(c->tx.fd);
        c->rx.fd = c->tx.fd = -1;
        c->rx.d = c->tx.d = NULL;
        shm_unref(c->m);
        c->m = NULL;
    }
    luamp_buf_free(&c->buf);
    luamp_buf_init(&c->buf);
    luamp_buf_free(&c->in);
    luamp_buf_init(&c->in);
    return 0;
}

static conn *new_end(lua_State *L)
{
    conn *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->rx.fd = c->tx.fd = -1;
    luamp_buf_init(&c->buf);
    c->buf.span_from = LUAMP_SPAN_FROM;  /* big strings go straight into the ring */
    luamp_buf_init(&c->in);
    luaL_setmetatable(L, LUAMP_CONN_MT);
    return c;
}

static void set_side(side *s, shm *m, int i, int fd)
{
    s->d = (dir *)(m->base) + i;
    s->data = m->base + HDR_SIZE + (size_t)i * 2 * CAP;
    s->fd = fd;
    s->spin = SPIN_MAX;
    s->skip_at = 0;
}

/* Maps `ndir` directions of the Pipe memfd `fd` (each ring twice in a
 * row); with init, sets up their headers.  NULL with errno on failure
 * (fd is left open). */
static shm *shm_map(int fd, int ndir, int init)
{
    size_t len = HDR_SIZE + (size_t)ndir * 2 * CAP;
    shm *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    int e = 0;
    char *base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        goto fail;
    if (mmap(base, HDR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
        goto fail;
    for (int i = 0; i < ndir; i++) {
        char *r = base + HDR_SIZE + (size_t)i * 2 * CAP;
        off_t off = (off_t)(HDR_SIZE + (size_t)i * CAP);
        if (mmap(r, CAP, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off) == MAP_FAILED
            || mmap(r + CAP, CAP, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off) == MAP_FAILED)
            goto fail;
        dir *d = (dir *)base + i;
        if (init) {
            d->tx_cpu = d->rx_cpu = -1;
            /* error-checking: EDEADLK, not a hang, if a finalizer run while
             * recv decodes a message in place calls recv on the same end */
            if ((e = init_shared_mutex(&d->tx_lock, PTHREAD_MUTEX_ERRORCHECK)) != 0
                || (e = init_shared_mutex(&d->rx_lock, PTHREAD_MUTEX_ERRORCHECK)) != 0)
                goto fail;
        }
    }
    m->refs = 0;
    m->fd = fd;
    m->ndir = ndir;
    m->base = base;
    m->len = len;
    return m;
fail:
    if (!e)
        e = errno;
    if (base != MAP_FAILED)
        munmap(base, len);
    free(m);
    errno = e;
    return NULL;
}

/* A new Pipe memfd of `ndir` directions, mapped; NULL with errno. */
static shm *shm_create(int ndir)
{
    size_t file = HDR_SIZE + (size_t)ndir * CAP;
    int fd = memfd_create("luamp-pipe", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    shm *m = ftruncate(fd, (off_t)file) == 0 ? shm_map(fd, ndir, 1) : NULL;
    if (!m) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return m;
}

/* core.pipe(duplex) -> a, b.  One-way: a receives, b sends.
 * Direction 0 carries b -> a, direction 1 (duplex only) a -> b. */
static int l_pipe(lua_State *L)
{
    int duplex = lua_isnoneornil(L, 1) ? 1 : lua_toboolean(L, 1);
    int ndir = duplex ? 2 : 1;
    /* Both ends exist, with their finalizer, before anything can raise. */
    conn *a = new_end(L);
    conn *b = new_end(L);
    int sv[2][2] = { { -1, -1 }, { -1, -1 } };
    for (int i = 0; i < ndir; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[i]) != 0) {
            int e = errno;
            if (i > 0) {
                close(sv[0][0]);
                close(sv[0][1]);
            }
            errno = e;
            return luamp_sys_error(L, "cannot create a Pipe: socketpair");
        }
    }
    shm *m = shm_create(ndir);
    if (!m) {
        int e = errno;
        for (int i = 0; i < ndir; i++) {
            close(sv[i][0]);
            close(sv[i][1]);
        }
        errno = e;
        return luamp_sys_error(L, "cannot create a Pipe: shared memory");
    }
    a->m = b->m = m;
    m->refs = 2;
    set_side(&a->rx, m, 0, sv[0][0]);
    set_side(&b->tx, m, 0, sv[0][1]);
    if (duplex) {
        set_side(&a->tx, m, 1, sv[1][0]);
        set_side(&b->rx, m, 1, sv[1][1]);
    }
    luamp_new_object_id(a->id, sizeof a->id, "pipe");
    luamp_register_object(L, -2, a->id);
    luamp_new_object_id(b->id, sizeof b->id, "pipe");
    luamp_register_object(L, -1, b->id);
    return 2;
}

/* For core.wait: -2 (ready now) when a message is waiting; otherwise the
 * socket that a sender writes to, with this process counted a sleeper so
 * that it does (until its next recv, poll or close). */
static int c_waitfd(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    int fd = -1;
    if (c->m && c->rx.d) {
        if (ready(&c->rx))
            fd = -2;
        else {
            if (c->watcher != getpid()) {
                atomic_fetch_add(&c->rx.d->data.sleepers, 1);
                c->watcher = getpid();
            }
            atomic_store(&c->rx.d->data.rung, 0);
            fd = c->rx.fd;
        }
    }
    lua_pushinteger(L, fd);
    return 1;
}

/* core.pipe_fds(end) -> memfd, ndir, rx direction (-1: none), rx socket, tx
 * direction, tx socket: what a spawned process needs to use this end */
static int c_fds(lua_State *L)
{
    conn *c = check_conn(L);      /* (raises "closed" for a closed end) */
    lua_pushinteger(L, c->m->fd);
    lua_pushinteger(L, c->m->ndir);
    lua_pushinteger(L, c->rx.d ? (lua_Integer)(c->rx.d - (dir *)c->m->base) : -1);
    lua_pushinteger(L, c->rx.d ? c->rx.fd : -1);
    lua_pushinteger(L, c->tx.d ? (lua_Integer)(c->tx.d - (dir *)c->m->base) : -1);
    lua_pushinteger(L, c->tx.d ? c->tx.fd : -1);
    return 6;
}

/* core.pipe_attach(id, memfd, ndir, rx_dir, rx_fd, tx_dir, tx_fd): the
 * Pipe end `id` of the process that spawned this one, from what pipe_fds
 * gave there; the end owns the descriptors. */
static int l_pipe_attach(lua_State *L)
{
    size_t idlen;
    const char *id = luaL_checklstring(L, 1, &idlen);
    int memfd = (int)luaL_checkinteger(L, 2), ndir = (int)luaL_checkinteger(L, 3);
    int rxi = (int)luaL_checkinteger(L, 4), rxfd = (int)luaL_checkinteger(L, 5);
    int txi = (int)luaL_checkinteger(L, 6), txfd = (int)luaL_checkinteger(L, 7);
    luaL_argcheck(L, ndir == 1 || ndir == 2, 3, "1 or 2 directions");
    luaL_argcheck(L, rxi < ndir && txi < ndir && (rxi >= 0 || txi >= 0), 4, "bad directions");
    luaL_argcheck(L, idlen < sizeof ((conn *)0)->id, 1, "id too long");
    conn *c = new_end(L);
    shm *m = shm_map(memfd, ndir, 0);
    if (!m)
        return luamp_sys_error(L, "cannot attach a Pipe end");
    m->refs = 1;
    c->m = m;
    if (rxi >= 0)
        set_side(&c->rx, m, rxi, rxfd);
    if (txi >= 0)
        set_side(&c->tx, m, txi, txfd);
    memcpy(c->id, id, idlen + 1);
    luamp_register_object(L, -1, c->id);
    return 1;
}

static int c_ref(lua_State *L)
{
    lua_pushstring(L, check_conn(L)->id);
    return 1;
}

static int c_tostring(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    lua_pushfstring(L, "Connection (%s%s)", c->id, c->m ? "" : ", closed");
    return 1;
}

void luamp_open_pipe(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"send", c_send},
        {"recv", c_recv},
        {"poll", c_poll},
        {"close", c_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", c_close},
        {"__luamp_fd", c_waitfd},
        {"__luamp_ref", c_ref},
        {"__tostring", c_tostring},
        {NULL, NULL}
    };
    if (luaL_newmetatable(L, LUAMP_CONN_MT)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_pipe);
    lua_setfield(L, -2, "pipe");
    lua_pushcfunction(L, l_pipe_attach);
    lua_setfield(L, -2, "pipe_attach");
    lua_pushcfunction(L, c_fds);
    lua_setfield(L, -2, "pipe_fds");
    lua_pushinteger(L, (lua_Integer)CAP);    /* for tests at the ring's edge */
    lua_setfield(L, -2, "pipe_ring");
}
