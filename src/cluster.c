/* SPDX-License-Identifier: MIT */
/*
 * cluster.c - luamp-mpi: one Pool over the ranks of an MPI job.
 *
 * `mpirun -n N luamp-mpi script.lua` starts N copies of this program.
 * Rank 0 runs the script.  Every other rank is a node supervisor: it
 * never runs user code; it starts Lua worker processes on its host
 * (spawned: a fresh `luamp`, as the spawn start method starts them), feeds
 * them the tasks rank 0 sends and sends their results back.  MPI carries
 * every byte between hosts; nothing else crosses a network.
 *
 * The path of a task.  A cluster Pool on rank 0 is a plain Pool (pool.lua)
 * whose task queue has one more consumer: this file's thread, which takes
 * tasks for the other ranks as a worker would, and whose result queue has
 * one more producer, the same thread, putting what the ranks sent back.
 * So everything the Pool does (chunks, callbacks, imap's bounded feeding,
 * timeouts of local tasks, cancel) works unchanged; a task message is
 * sent as it lies in the queue (pool.c's header, the function's bytes,
 * the encoded items), with rank 0's sequence number written in its header
 * (origin).  The supervisor puts it in its own pool's task queue, a worker
 * runs it and puts the result, naming the task by origin, in the
 * supervisor's result queue, and the supervisor's thread sends it to rank
 * 0 as it lies.  Neither thread decodes a value.  Rank 0's thread sends a
 * task from a copy it takes out of the queue, not from the ring: the
 * ring's room would stay taken until the other rank has received it, and
 * sending from there was measured slower (doc/design.md, "What comes
 * next").
 *
 * Scheduling.  Rank 0's thread takes a task only for a rank with room:
 * each rank has one task (a chunk) in flight per worker, more when tasks
 * are cheap (as many as its workers run in about 5 ms: results say what
 * a task cost), and one comes back with each result.  A rank whose workers are faster or less
 * loaded returns results sooner and so gets more of the work; memory stays
 * bounded on every rank, whatever the input, and rank 0's own workers take
 * what is left in the queue.
 *
 * Failures.  The supervisor (cluster.lua, node_main) reaps its workers:
 * a worker that dies holding a task (its claim slot says which local task,
 * the book below says which of rank 0's) fails that task only, with a
 * result of jobid -2 naming the kind (worker_lost, task_timeout), host and
 * pid; a task's timeout travels in its header and is enforced where it
 * runs.  A task the node has no memory to queue (its ring cannot grow)
 * is received a part at a time and dropped, and the supervisor sends its
 * failure the same way (a note "unqueued" to Lua); it ended the job
 * before.  A rank that dies ends the MPI job: that is Open MPI's rule,
 * and the README says so.
 *
 * Waiting.  Open MPI has no descriptor to poll, and its blocking calls
 * spin.  Each rank's thread polls MPI without blocking and, when nothing
 * came, sleeps in its queue's wait (which a put wakes at once) for a time
 * that doubles from 20 us up to 1 ms while nothing happens, and spins
 * shortly after each message: a busy rank answers within microseconds, an
 * idle one costs a thousand wake-ups a second.
 *
 * Messages.  The tag says what a message is and for which pool
 * (kind | pool << 4); the payload is the queue's message as it is.  MPI
 * counts are ints: a message over LUAMP_MPI_PART bytes (1 GiB; tests set
 * less) goes as a BIG header and parts.  The parts go where a message in
 * one piece goes, as they come: into the ring of the queue it is put in,
 * or from the ring of the queue a result is lent from, with no copy of
 * their own (they once were gathered into a buffer first, and a result
 * in parts copied out of the ring: 2 GiB more memory and two copies for
 * a result of 2 GiB).
 */
#include "cluster.h"
#include "shmq.h"
#include "queue.h"
#include "sys.h"
#include "registry.h"
#include "pshared.h"
#include "interrupt.h"

#include <mpi.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "luamp.h"

enum kind {
    K_TASK = 1, K_RESULT, K_OPEN, K_CLOSE, K_TERMINATE, K_CLOSED, K_STOP, K_BIG, K_PART
};
#define TAG(kind, id) ((int)(((id) << 4) | (kind)))
#define TAG_KIND(tag) ((tag) & 15)
#define TAG_POOL(tag) ((int64_t)(tag) >> 4)

/* The start of pool.c's messages, as far as this file reads them (a
 * test compares the layouts: cluster.lua's core checks).  Both ends of a
 * cluster must agree on it: ranks check each other at the start. */
struct task_head {
    int64_t jobid, fid, start, count;
    uint64_t flen;
    uint32_t kind;
    int64_t origin;
    double timeout;
};
struct result_head {
    int64_t jobid, start, count, seq, nres;
    double elapsed;
};

struct rank_info {
    char host[64];
    int32_t cpus, workers, layout, pid;
};

static int me = -1, nranks;
static int running;                 /* MPI initialised, not finalised */
static struct rank_info *ranks;
static int max_pool;                /* pool ids stay under this (MPI_TAG_UB) */
static size_t part_size = (size_t)1 << 30;
static long long split_sent, split_received;   /* messages that went in parts (mp.cluster()) */

/* ---- books and lists ------------------------------------------------- */

/* A set of task numbers (> 0): open addressing, linear probing, deletion
 * by shifting back, so that a set that had millions in it stays as fast
 * as one that had ten.  Grows when half full; abandons the job when it
 * cannot (die). */
struct seqset {
    int64_t *slot;
    size_t cap, n;
};

static _Noreturn void die(const char *what);

static size_t seq_home(const struct seqset *s, int64_t v)
{
    return (size_t)(((uint64_t)v * 0x9E3779B97F4A7C15u) >> 7) & (s->cap - 1);
}

static void seq_add(struct seqset *s, int64_t v);

static void seq_grow(struct seqset *s)
{
    size_t cap = s->cap ? s->cap * 2 : 64;
    struct seqset b = { calloc(cap, sizeof(int64_t)), cap, 0 };
    if (b.slot == NULL)
        die("out of memory for the book of tasks sent");
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i] != 0)
            seq_add(&b, s->slot[i]);
    free(s->slot);
    *s = b;
}

static void seq_add(struct seqset *s, int64_t v)
{
    if (2 * (s->n + 1) > s->cap)
        seq_grow(s);
    size_t i = seq_home(s, v);
    while (s->slot[i] != 0 && s->slot[i] != v)
        i = (i + 1) & (s->cap - 1);
    if (s->slot[i] == 0) {
        s->slot[i] = v;
        s->n++;
    }
}

static int seq_has(const struct seqset *s, int64_t v)
{
    if (s->n == 0)
        return 0;
    for (size_t i = seq_home(s, v); s->slot[i] != 0; i = (i + 1) & (s->cap - 1))
        if (s->slot[i] == v)
            return 1;
    return 0;
}

static void seq_remove(struct seqset *s, int64_t v)
{
    if (s->n == 0)
        return;
    size_t i = seq_home(s, v);
    while (s->slot[i] != v) {
        if (s->slot[i] == 0)
            return;
        i = (i + 1) & (s->cap - 1);
    }
    /* (shift back what probed past i, so that no probe stops short) */
    for (size_t j = (i + 1) & (s->cap - 1); s->slot[j] != 0; j = (j + 1) & (s->cap - 1)) {
        size_t h = seq_home(s, s->slot[j]);
        if (((j - h) & (s->cap - 1)) >= ((j - i) & (s->cap - 1))) {
            s->slot[i] = s->slot[j];
            i = j;
        }
    }
    s->slot[i] = 0;
    s->n--;
}

static void seq_clear(struct seqset *s)
{
    free(s->slot);
    s->slot = NULL;
    s->cap = s->n = 0;
}

/* A node's record of a task it put in a local queue. */
struct entry {
    int64_t origin;
    uint64_t lseq;
    double timeout;
};

/* Sends in flight: their requests, and the buffer they free when done
 * (NULL: not theirs). */
struct sending {
    MPI_Request req[8];
    int nreq;
    char *data;
    struct sending *next;
};

struct cpool {
    int64_t id;
    shmq *tq, *rq;                  /* this thread's own views */
    int opened;                     /* rank 0: OPEN sent to the ranks */
    int shut;                       /* rank 0: its task queue is shut down, CLOSE sent */
    int terminated;
    int released;                   /* rank 0: the Pool let go of it */
    int *limit, *inflight;          /* rank 0: per rank */
    int *workers;                   /* rank 0: per rank */
    double *cost;                   /* rank 0: per rank, seconds a task (running mean) */
    int64_t cost_job;               /* rank 0: the map-like job cost[] is about */
    double task_bytes;              /* rank 0: the size of its tasks (running mean) */
    int nlocal;                     /* node: its workers */
    int nremote, nclosed;           /* rank 0: ranks with workers, ranks that said CLOSED */
    int gone;                       /* node: its workers all exited */
    int lending;                    /* node: a result is being sent from its ring */
    struct sending lend;            /* (its sends) */
    struct entry *book;             /* node: tasks in its queue or running */
    size_t nbook, capbook;
    int ntimed;
    struct seqset sent;             /* rank 0: tasks sent to a rank, no result back yet */
    struct cpool *next;
};

/* A control message: rank 0's outbox (to send), a node's inbox (for Lua). */
struct note {
    int kind, rank;
    int64_t pool;
    char *data;
    size_t len;
    int fds[6];
    struct note *next;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t comm;
static int comm_started;
static int stop_requested;
static int abandon;                 /* stop at once, sending nothing more */
static int wake_fd = -1;            /* the thread waits on it too */
static int inbox_fd = -1;           /* node: Lua waits on it */
static struct cpool *pools;
static struct note *outbox, **outbox_tail = &outbox;
static struct note *inbox, **inbox_tail = &inbox;
static struct sending *sends;
static int64_t next_pool = 1;

static int tracing = -1;
static int getenv_spin_off;         /* LUAMP_MPI_NO_SPIN: for measuring */
#define TRACE(...) do { if (tracing < 0) tracing = getenv("LUAMP_MPI_TRACE") != NULL; \
    if (tracing) { fprintf(stderr, "[%d %.6f] ", me, luamp_now()); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static void claim_mpi_fds(const int *before, int nbefore);

static void wake(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void drain_fd(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
}

static void push_note(struct note ***tail, struct note *n)
{
    n->next = NULL;
    **tail = n;
    *tail = &n->next;
}

static struct note *pop_note(struct note **head, struct note ***tail)
{
    struct note *n = *head;
    if (n) {
        *head = n->next;
        if (*head == NULL)
            *tail = head;
    }
    return n;
}

static void free_note(struct note *n)
{
    if (n) {
        free(n->data);
        free(n);
    }
}

static struct cpool *find_pool(int64_t id)
{
    for (struct cpool *p = pools; p; p = p->next)
        if (p->id == id)
            return p;
    return NULL;
}

static int lend_done(struct cpool *p, int wait);

static void free_pool(struct cpool *p)
{
    lend_done(p, 1);
    struct cpool **pp = &pools;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (*pp)
        *pp = p->next;
    if (p->tq)
        shmq_destroy(p->tq);
    if (p->rq)
        shmq_destroy(p->rq);
    free(p->limit);
    free(p->inflight);
    free(p->workers);
    free(p->cost);
    free(p->book);
    seq_clear(&p->sent);
    free(p);
}

/* Ends the whole job: what this rank cannot do (memory, descriptors). */
static _Noreturn void die(const char *what)
{
    fprintf(stderr, "luamp-mpi: rank %d: %s\n", me, what);
    MPI_Abort(MPI_COMM_WORLD, 71);
    abort();
}

static _Noreturn void fatal(const char *what, int err)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "error %d", err);
    fprintf(stderr, "luamp-mpi: rank %d: %s failed: %s\n", me, what, msg);
    MPI_Abort(MPI_COMM_WORLD, 70);
    abort();
}

#define CHECK(call, what) do { int rc_ = (call); if (rc_ != MPI_SUCCESS) fatal(what, rc_); } while (0)

/* Replaces fds[0..n-1] by close-on-exec duplicates; -1 (errno set, the
 * duplicates made so far closed, fds as they were) when one fails. */
static int dup_fds(int *fds, int n)
{
    int d[6];
    for (int i = 0; i < n; i++) {
        d[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (d[i] < 0) {
            int e = errno;
            while (i-- > 0)
                close(d[i]);
            errno = e;
            return -1;
        }
    }
    memcpy(fds, d, (size_t)n * sizeof *fds);
    return 0;
}

/* ---- sending and receiving ------------------------------------------- */

/* Posts the sends of len bytes at data to rank `to` with `tag` into s:
 * one message, or a BIG header (a record of its own in `sends`) and
 * parts of at most part_size bytes, sent from this thread alone, back to
 * back, so that they follow their header from this rank in order.  More
 * parts than s holds requests wait for the ones before. */
static void post_sends(int to, int tag, const char *data, size_t len, struct sending *s)
{
    s->nreq = 0;
    if (len <= part_size) {
        CHECK(MPI_Isend(data, (int)len, MPI_BYTE, to, tag, MPI_COMM_WORLD, &s->req[0]), "MPI_Isend");
        s->nreq = 1;
        return;
    }
    int64_t head[2] = { (int64_t)len, tag };
    struct sending *h = calloc(1, sizeof *h);
    if (h == NULL || (h->data = malloc(sizeof head)) == NULL)
        die("out of memory sending a message");
    memcpy(h->data, head, sizeof head);
    split_sent++;
    CHECK(MPI_Isend(h->data, (int)sizeof head, MPI_BYTE, to, TAG(K_BIG, 0), MPI_COMM_WORLD, &h->req[0]), "MPI_Isend");
    h->nreq = 1;
    h->next = sends;
    sends = h;
    for (size_t off = 0; off < len;) {
        size_t n = len - off < part_size ? len - off : part_size;
        if (s->nreq == (int)(sizeof s->req / sizeof *s->req)) {
            CHECK(MPI_Waitall(s->nreq, s->req, MPI_STATUSES_IGNORE), "MPI_Waitall");
            s->nreq = 0;
        }
        CHECK(MPI_Isend(data + off, (int)n, MPI_BYTE, to, TAG(K_PART, 0), MPI_COMM_WORLD, &s->req[s->nreq]),
              "MPI_Isend");
        s->nreq++;
        off += n;
    }
}

/* Sends len bytes of data (which it then owns) to rank `to` with `tag`,
 * without waiting. */
static void send_msg(int to, int tag, char *data, size_t len)
{
    struct sending *s = calloc(1, sizeof *s);
    if (s == NULL) {
        die("out of memory sending a message");
    }
    s->data = data;
    post_sends(to, tag, data, len, s);
    s->next = sends;
    sends = s;
}

/* Frees the sends that completed; whether any is still in flight. */
static int progress_sends(void)
{
    struct sending **pp = &sends;
    while (*pp) {
        struct sending *s = *pp;
        int done = 0;
        CHECK(MPI_Testall(s->nreq, s->req, &done, MPI_STATUSES_IGNORE), "MPI_Testall");
        if (done) {
            *pp = s->next;
            free(s->data);
            free(s);
        } else {
            pp = &s->next;
        }
    }
    return sends != NULL;
}

/* A message that came, probed (m) and not received yet, or, when it
 * comes in parts, its BIG header received and its parts still to come:
 * take_data receives it into a buffer of its own (data), put_incoming
 * straight into a queue's ring. */
struct incoming {
    MPI_Message m;
    int tag, from;
    size_t len;
    char *data;
    int parts;          /* its len bytes follow in parts, not received yet */
};

static char *alloc_or_abort(size_t n)
{
    char *p = malloc(n ? n : 1);
    if (p == NULL)
        die("out of memory for a message");
    return p;
}

/* Whether a message came (then *in says what it is). */
static int probe_msg(struct incoming *in)
{
    int flag = 0, count;
    MPI_Status st;
    CHECK(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &in->m, &st), "MPI_Improbe");
    if (!flag)
        return 0;
    CHECK(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
    in->from = st.MPI_SOURCE;
    in->tag = st.MPI_TAG;
    in->len = (size_t)count;
    in->data = NULL;
    in->parts = 0;
    if (TAG_KIND(in->tag) != K_BIG)
        return 1;
    int64_t head[2];
    if (in->len != sizeof head) {
        fprintf(stderr, "luamp-mpi: rank %d: a malformed message from rank %d\n", me, in->from);
        MPI_Abort(MPI_COMM_WORLD, 72);
    }
    CHECK(MPI_Mrecv(head, (int)sizeof head, MPI_BYTE, &in->m, MPI_STATUS_IGNORE), "MPI_Mrecv");
    split_received++;
    if (head[0] <= 0 || (uint64_t)head[0] > LUAMP_MAX_MESSAGE) {
        fprintf(stderr, "luamp-mpi: rank %d: a malformed message from rank %d\n", me, in->from);
        MPI_Abort(MPI_COMM_WORLD, 72);
    }
    in->tag = (int)head[1];
    in->len = (size_t)head[0];
    in->parts = 1;
    return 1;
}

/* Receives message m into n1 bytes at d1 and n2 at d2 (two pieces when it
 * goes where a ring's record wraps around the ring's end). */
static void recv_into(MPI_Message *m, char *d1, size_t n1, char *d2, size_t n2)
{
    if (n2 == 0) {
        CHECK(MPI_Mrecv(d1, (int)n1, MPI_BYTE, m, MPI_STATUS_IGNORE), "MPI_Mrecv");
        return;
    }
    MPI_Aint at[2];
    int len[2] = { (int)n1, (int)n2 };
    MPI_Datatype two;
    CHECK(MPI_Get_address(d1, &at[0]), "MPI_Get_address");
    CHECK(MPI_Get_address(d2, &at[1]), "MPI_Get_address");
    CHECK(MPI_Type_create_hindexed(2, len, at, MPI_BYTE, &two), "MPI_Type_create_hindexed");
    CHECK(MPI_Type_commit(&two), "MPI_Type_commit");
    CHECK(MPI_Mrecv(MPI_BOTTOM, 1, two, m, MPI_STATUS_IGNORE), "MPI_Mrecv");
    CHECK(MPI_Type_free(&two), "MPI_Type_free");
}

/* Waits for the next part of message in, whose first `off` bytes came:
 * its length (pm: the part, to receive). */
static size_t next_part(struct incoming *in, size_t off, MPI_Message *pm)
{
    MPI_Status ps;
    int n;
    CHECK(MPI_Mprobe(in->from, TAG(K_PART, 0), MPI_COMM_WORLD, pm, &ps), "MPI_Mprobe");
    CHECK(MPI_Get_count(&ps, MPI_BYTE, &n), "MPI_Get_count");
    if (n <= 0 || (size_t)n > in->len - off) {
        fprintf(stderr, "luamp-mpi: rank %d: a malformed message from rank %d\n", me, in->from);
        MPI_Abort(MPI_COMM_WORLD, 72);
    }
    return (size_t)n;
}

/* Receives the parts of a message that came as a BIG header into n1
 * bytes at d1 and the rest at d2, where it belongs (a ring's record, or a
 * buffer): no copy of its own.  Each part as long as the sender made it
 * (the ranks need not agree on LUAMP_MPI_PART). */
static void recv_parts(struct incoming *in, char *d1, size_t n1, char *d2)
{
    for (size_t off = 0; off < in->len;) {
        MPI_Message pm;
        size_t n = next_part(in, off, &pm);
        size_t end = off + n;
        if (end <= n1)
            recv_into(&pm, d1 + off, n, NULL, 0);
        else if (off >= n1)
            recv_into(&pm, d2 + (off - n1), n, NULL, 0);
        else
            recv_into(&pm, d1 + off, n1 - off, d2, end - n1);
        off = end;
    }
    in->parts = 0;
}

/* The message's bytes, received now if they were not (the caller frees
 * in->data). */
static char *take_data(struct incoming *in)
{
    if (in->data == NULL) {
        in->data = alloc_or_abort(in->len);
        if (in->parts)
            recv_parts(in, in->data, in->len, NULL);
        else
            CHECK(MPI_Mrecv(in->data, (int)in->len, MPI_BYTE, &in->m, MPI_STATUS_IGNORE), "MPI_Mrecv");
    }
    return in->data;
}

struct fill_ctx {
    struct incoming *in;
    void *head;
    size_t headlen;
};

/* shmq_put_fill's callback: MPI writes the message where the ring keeps
 * it (in two pieces when the record wraps around the ring's end), and
 * its first headlen bytes are copied out for the caller. */
static void fill_from_mpi(void *ctx, char *d1, size_t n1, char *d2, size_t n2)
{
    struct fill_ctx *f = ctx;
    struct incoming *in = f->in;
    if (in->data) {
        memcpy(d1, in->data, n1);
        memcpy(d2, in->data + n1, n2);
    } else if (in->parts) {
        recv_parts(in, d1, n1, d2);
    } else {
        recv_into(&in->m, d1, n1, d2, n2);
    }
    size_t h1 = f->headlen < n1 ? f->headlen : n1;
    memcpy(f->head, d1, h1);
    memcpy((char *)f->head + h1, d2, f->headlen - h1);
}

/* Puts the message in queue q where MPI writes it (no copy of its own),
 * its first headlen bytes (the message holds them) copied to head.  With
 * may_fail, a message the queue has no room to grow for (shmq_too_big)
 * returns SHMQ_ERROR, still to be received; any other failure ends the
 * job. */
static int put_incoming(shmq *q, struct incoming *in, void *head, size_t headlen, shmq_ticket *t, int may_fail)
{
    struct fill_ctx f = { in, head, headlen };
    int r = shmq_put_fill(q, in->len, fill_from_mpi, &f, -1, t);
    if (r != SHMQ_OK && !(may_fail && r == SHMQ_ERROR && shmq_too_big(errno))) {
        fprintf(stderr, "luamp-mpi: rank %d: cannot queue a message of %zu bytes: %s\n", me, in->len,
                strerror(errno));
        MPI_Abort(MPI_COMM_WORLD, 71);
    }
    return r;
}

/* Receives a message that put_incoming could not queue, a part at a time
 * (parts of at most 1 GiB), keeping only its first headlen bytes, in
 * head. */
static void discard_incoming(struct incoming *in, void *head, size_t headlen)
{
    size_t kept = 0;
    if (!in->parts) {
        take_data(in);
        kept = headlen < in->len ? headlen : in->len;
        memcpy(head, in->data, kept);
        return;
    }
    for (size_t off = 0; off < in->len;) {
        MPI_Message pm;
        size_t n = next_part(in, off, &pm);
        char *part = alloc_or_abort(n);
        recv_into(&pm, part, n, NULL, 0);
        if (kept < headlen) {
            size_t k = headlen - kept < n ? headlen - kept : n;
            memcpy((char *)head + kept, part, k);
            kept += k;
        }
        free(part);
        off += n;
    }
    in->parts = 0;
}

/* ---- waiting ---------------------------------------------------------- */

/* Sleeps up to `us` microseconds, or until a message reaches queue q (if
 * not NULL) or wake_fd is written.  With q, a message got is left in
 * *out (returns 1). */
static int nap(shmq *q, luamp_buf *out, uint64_t *seq, long us, int forever)
{
    if (q) {
        int extra = wake_fd;
        shmq_wait w = { .extra = &extra, .nextra = 1, .claim = -1 };
        double deadline = forever ? -1 : luamp_now() + us / 1e6;
        int r = shmq_get(q, out, deadline, &w);
        if (r == SHMQ_EVENT)
            drain_fd(wake_fd);
        if (r == SHMQ_SHUTDOWN && !forever) {
            /* (a shut queue answers at once: sleep here instead) */
            struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
            nanosleep(&ts, NULL);
        }
        *seq = w.seq;
        return r == SHMQ_OK ? 1 : r == SHMQ_SHUTDOWN ? 2 : 0;
    }
    struct pollfd p = { .fd = wake_fd, .events = POLLIN };
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    if (ppoll(&p, 1, forever ? NULL : &ts, NULL) > 0)
        drain_fd(wake_fd);
    return 0;
}

/* How long a thread sleeps between looks at MPI: HOT_US while it moved a
 * message in the last HOT_WINDOW seconds, then twice as long each time,
 * up to MAX_SLEEP_US. */
#define HOT_US 15
#define BUSY_US 250
#define HOT_WINDOW 0.01
#define MAX_SLEEP_US 1000

struct pacer {
    double hot_until;
    long sleep_us;
};

static void pacer_active(struct pacer *p)
{
    p->hot_until = luamp_now() + HOT_WINDOW;
    p->sleep_us = 0;
}

/* (busy: the other end has work queued, so answering it sooner gains
 * nothing, and looking costs the workers CPU) */
/* Right after a message, while no worker of the other end has work
 * queued, a thread watches MPI and queue q for a moment before it
 * sleeps: a round trip then costs no wake-up from a sleep.  Called with
 * mu held; whether something came. */
#define SPIN_S 100e-6
static int spin(struct pacer *p, int busy, shmq *q)
{
    double t = luamp_now();
    if (busy || t >= p->hot_until || getenv_spin_off)
        return 0;
    for (double until = t + SPIN_S; luamp_now() < until;) {
        int flag = 0;
        CHECK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE), "MPI_Iprobe");
        if (flag || (q && shmq_count(q) > 0))
            return 1;
        /* (a worker of this host waiting for a CPU comes first: on a
         * host with more ranks and workers than CPUs, a spin that held
         * its CPU would delay the very task it waits for) */
        cpu_relax();
        sched_yield();
    }
    return 0;
}

static long pacer_next(struct pacer *p, int busy)
{
    if (luamp_now() < p->hot_until)
        return busy ? BUSY_US : HOT_US;
    p->sleep_us = p->sleep_us ? (p->sleep_us * 2 > MAX_SLEEP_US ? MAX_SLEEP_US : p->sleep_us * 2) : 2 * HOT_US;
    return p->sleep_us;
}

/* ---- rank 0 ----------------------------------------------------------- */

/* The rank with room for one more of pool p's tasks that has the fewest
 * in flight for each of its workers, or -1. */
static int rank_with_room(struct cpool *p)
{
    int best = -1;
    double load = 0;
    for (int r = 1; r < nranks; r++) {
        if (p->inflight[r] >= p->limit[r])
            continue;
        double l = (double)p->inflight[r] / p->workers[r];
        if (best < 0 || l < load) {
            load = l;
            best = r;
        }
    }
    return best;
}

/* The message in b, in a block of its own for send_msg: a big one is
 * taken as it is (b then allocates anew), a small one copied (b keeps its
 * block for the next). */
static char *take_buffer(luamp_buf *b)
{
    char *data;
    if (b->len >= ((size_t)64 << 10)) {
        data = b->data;
        b->data = NULL;
        b->len = b->cap = 0;
        return data;
    }
    data = alloc_or_abort(b->len);
    memcpy(data, b->data, b->len);
    return data;
}

/* Sends task message t (taken from p's queue as seq) to rank r. */
static void send_task(struct cpool *p, int r, luamp_buf *t, uint64_t seq)
{
    struct task_head h;
    if (t->len < sizeof h)
        return;                     /* (not pool.c's: cannot happen) */
    memcpy(&h, t->data, sizeof h);
    /* A new map-like job may cost anything: what earlier tasks cost does
     * not tell, and a rank given many of its slow tasks would hold them
     * back from idle workers elsewhere.  (A stream of applies, a job each,
     * keeps its estimate.) */
    if ((h.kind & 0xff) != 0 && h.jobid != p->cost_job) {   /* (a map-like kind: pool.c's flags masked) */
        p->cost_job = h.jobid;
        for (int k = 1; k < nranks; k++) {
            p->cost[k] = 0;
            p->limit[k] = p->workers[k];
        }
    }
    h.origin = (int64_t)seq;
    memcpy(t->data, &h, sizeof h);
    size_t len = t->len;
    p->task_bytes = p->task_bytes > 0 ? 0.8 * p->task_bytes + 0.2 * (double)len : (double)len;
    send_msg(r, TAG(K_TASK, p->id), take_buffer(t), len);
    TRACE("task %llu to rank %d", (unsigned long long)seq, r);
    p->inflight[r]++;
    seq_add(&p->sent, (int64_t)seq);
}

static int root_receive(void)
{
    struct incoming in;
    int n = 0;
    while (probe_msg(&in)) {
        int put = 0;
        n++;
        int tag = in.tag, from = in.from;
        size_t len = in.len;
        struct cpool *p = find_pool(TAG_POOL(tag));
        if (p && TAG_KIND(tag) == K_RESULT) {
            struct result_head h = { 0 };
            if (len >= sizeof h && !p->terminated && !p->released) {
                put_incoming(p->rq, &in, &h, sizeof h, NULL, 0);    /* (the result, where the Pool reads it) */
                put = 1;
            } else if (len >= sizeof h) {
                memcpy(&h, take_data(&in), sizeof h);
            }
            TRACE("result %lld from rank %d", (long long)h.seq, from);
            if (h.seq > 0)
                seq_remove(&p->sent, h.seq);
            if (h.jobid != 0 && p->inflight[from] > 0) {
                p->inflight[from]--;
                /* Tasks in flight to a rank: one a worker (a rank never
                 * holds a task back while a worker elsewhere is free), and
                 * for cheap tasks as many as its workers run in about 5 ms,
                 * so that a stream of small applies is not bound by the
                 * round trip; never more than 256 a worker. */
                if (h.count > 0 && h.elapsed >= 0 && len >= sizeof h) {
                    double c = h.elapsed / (double)h.count;
                    p->cost[from] = p->cost[from] > 0 ? 0.8 * p->cost[from] + 0.2 * c : c;
                    double per = 0.005 / (p->cost[from] > 1e-6 ? p->cost[from] : 1e-6);
                    /* (and no more than about 4 MiB of tasks a worker: big
                     * items gain nothing from more, and fresh memory on
                     * both sides costs) */
                    double by_bytes = (4 << 20) / (p->task_bytes > 1 ? p->task_bytes : 1);
                    if (per > by_bytes)
                        per = by_bytes;
                    int w = p->workers[from];
                    int lim = per > 256 ? 256 * w : (int)(per * w);
                    p->limit[from] = lim > w ? lim : w;
                }
            }
        } else if (p && TAG_KIND(tag) == K_CLOSED) {
            p->nclosed++;
            p->inflight[from] = 0;
            if (p->released && p->nclosed >= p->nremote)
                free_pool(p);
        }
        if (!put)
            take_data(&in);    /* (what is not put is received all the same, and dropped) */
        free(in.data);
    }
    return n;
}

/* Whether every rank with workers has two tasks a worker in flight. */
static int pipeline_full(void)
{
    int any = 0;
    for (struct cpool *p = pools; p; p = p->next) {
        if (p->terminated || p->shut)
            continue;
        for (int r = 1; r < nranks; r++) {
            if (p->workers[r] == 0)
                continue;
            if (p->inflight[r] < 2 * p->workers[r])
                return 0;
            any = 1;
        }
    }
    return any;
}

static void *root_thread(void *arg)
{
    (void)arg;
    luamp_buf task = { 0 };
    struct pacer pace = { 0 };
    double stop_deadline = 0;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    pthread_mutex_lock(&mu);
    for (;;) {
        int did = 0;
        struct note *n;
        if (abandon)
            break;
        while ((n = pop_note(&outbox, &outbox_tail)) != NULL) {
            if (n->kind == K_OPEN || n->kind == K_TERMINATE || n->kind == K_STOP) {
                send_msg(n->rank, TAG(n->kind, n->pool), n->data, n->len);
                n->data = NULL;
            }
            if (n->kind == K_OPEN) {
                struct cpool *p = find_pool(n->pool);
                if (p)
                    p->opened = 1;
            }
            free_note(n);
            did++;
        }
        did += root_receive();
        /* tasks for the ranks with room */
        shmq *waitq = NULL;
        int expecting = 0, several = 0;   /* (several pools' queues to watch) */
        for (struct cpool *p = pools, *next; p; p = next) {
            next = p->next;
            if (p->released && (p->terminated || p->nclosed >= p->nremote) && !sends) {
                free_pool(p);
                continue;
            }
            for (int r = 1; r < nranks; r++)
                if (p->inflight[r] > 0)
                    expecting = 1;
            if (p->nremote > p->nclosed && (p->shut || p->terminated))
                expecting = 1;
            if (!p->opened || p->shut || p->terminated)
                continue;
            int r;
            while ((r = rank_with_room(p)) >= 0) {
                /* (beyond a task a worker, a rank takes more only while
                 * the queue holds more than rank 0's own workers can
                 * start: a short queue is theirs, not held back behind a
                 * remote worker's current task) */
                if (p->inflight[r] >= p->workers[r] && shmq_count(p->tq) <= (uint64_t)p->nlocal)
                    break;
                shmq_wait w = { .claim = -1 };
                int got = shmq_get(p->tq, &task, 0, &w);
                if (got == SHMQ_OK) {
                    send_task(p, r, &task, w.seq);
                    did++;
                    continue;
                }
                if (got == SHMQ_SHUTDOWN) {
                    p->shut = 1;
                    for (int k = 1; k < nranks; k++)
                        if (p->limit[k] > 0)
                            send_msg(k, TAG(K_CLOSE, p->id), NULL, 0);
                    expecting = 1;
                } else {
                    if (waitq != NULL)
                        several = 1;
                    waitq = waitq ? waitq : p->tq;
                }
                break;
            }
        }
        if (progress_sends())
            expecting = 1;
        if (stop_requested && outbox == NULL && (!sends || luamp_now() > stop_deadline))
            break;
        if (stop_requested && stop_deadline == 0)
            stop_deadline = luamp_now() + 5;   /* (a rank that is gone never takes its STOP) */
        if (did) {
            pacer_active(&pace);
            continue;
        }
        int full = pipeline_full();
        if (expecting && spin(&pace, full, waitq))
            continue;
        pthread_mutex_unlock(&mu);
        /* (with nothing to expect from MPI, only a task or a note can
         * wake this thread) */
        uint64_t seq = 0;
        /* (a put to a queue other than waitq wakes nothing: with several,
         * the others are looked at between naps) */
        int got = nap(waitq, &task, &seq, pacer_next(&pace, full),
                      !expecting && !several && !stop_requested);
        pthread_mutex_lock(&mu);
        if (got == 1) {
            /* a task came while the lock was let go: the pool is still
             * there (only this thread frees pools) */
            struct cpool *p = pools;
            while (p && p->tq != waitq)
                p = p->next;
            int r = p ? rank_with_room(p) : -1;
            for (int k = 1; p && r < 0 && k < nranks; k++)
                if (p->workers[k] > 0)
                    r = k;     /* (cannot happen: room only shrinks here; never drop a task) */
            if (p && r >= 0 && !p->terminated)
                send_task(p, r, &task, seq);
            pacer_active(&pace);
        }
    }
    pthread_mutex_unlock(&mu);
    luamp_buf_free(&task);
    return NULL;
}

/* ---- a node ----------------------------------------------------------- */

/* Takes task origin's entry out of p's book (if there). */
static void unbook(struct cpool *p, int64_t origin)
{
    for (size_t i = 0; i < p->nbook; i++) {
        if (p->book[i].origin == origin) {
            if (p->book[i].timeout > 0)
                p->ntimed--;
            p->book[i] = p->book[--p->nbook];
            return;
        }
    }
}

static void tell_lua(int kind, int64_t pool, char *data, size_t len, const int *fds, int nfds)
{
    struct note *n = calloc(1, sizeof *n);
    if (n == NULL) {
        die("out of memory");
    }
    n->kind = kind;
    n->pool = pool;
    n->data = data;
    n->len = len;
    for (int i = 0; i < 6; i++)
        n->fds[i] = i < nfds ? fds[i] : -1;
    push_note(&inbox_tail, n);
    wake(inbox_fd);
}

/* Makes pool id's queues and tells Lua to start its workers. */
static void node_open(int64_t id, char *data, size_t len)
{
    /* (a supervisor runs no user code: a descriptor it has that is still
     * inheritable is one MPI opened since, a TCP connection to a rank) */
    claim_mpi_fds(NULL, 0);
    struct cpool *p = calloc(1, sizeof *p);
    int fds[6];
    if (p == NULL || (p->tq = shmq_create(0)) == NULL || (p->rq = shmq_create(0)) == NULL) {
        fprintf(stderr, "luamp-mpi: rank %d: cannot make a pool's queues: %s\n", me, strerror(errno));
        MPI_Abort(MPI_COMM_WORLD, 71);
    }
    shmq_no_pace(p->tq);
    p->id = id;
    if (len >= 4)
        memcpy(&p->nlocal, data, 4);
    shmq_fds(p->tq, fds);
    shmq_fds(p->rq, fds + 3);
    if (dup_fds(fds, 6) != 0)
        die("cannot share a pool's queues with its supervisor");
    p->next = pools;
    pools = p;
    tell_lua(K_OPEN, id, data, len, fds, 6);
}

/* Sends what p's workers put in its result queue to rank 0. */
/* A result of LEND_FROM bytes and more is sent from where it lies in the
 * result queue's ring (lent: the thread is the queue's only consumer), and
 * the ring's room is given back once rank 0 has received it; until then
 * no other result of that pool is taken (a get would give the room back).
 * Whether the lent result is out (wait: after waiting for it). */
#define LEND_FROM ((size_t)64 << 10)
static int lend_done(struct cpool *p, int wait)
{
    int done = 1;
    if (!p->lending)
        return 1;
    if (wait)
        CHECK(MPI_Waitall(p->lend.nreq, p->lend.req, MPI_STATUSES_IGNORE), "MPI_Waitall");
    else
        CHECK(MPI_Testall(p->lend.nreq, p->lend.req, &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (!done)
        return 0;
    p->lending = 0;
    shmq_give_back(p->rq);
    return 1;
}

/* A result leaves the node: its task leaves the book. */
static void result_out(struct cpool *p, const char *msg, size_t len)
{
    struct result_head h = { 0 };
    if (len >= sizeof h)
        memcpy(&h, msg, sizeof h);
    if (h.jobid != 0)
        unbook(p, h.seq);
    TRACE("result %lld out", (long long)h.seq);
}

/* Sends the result in buf (taken from p's result queue) to rank 0. */
static void send_result(struct cpool *p, luamp_buf *buf)
{
    result_out(p, buf->data, buf->len);
    size_t len = buf->len;
    char *data = take_buffer(buf);
    if (!p->terminated)
        send_msg(0, TAG(K_RESULT, p->id), data, len);
    else
        free(data);
}

/* Sends what p's workers put in its result queue to rank 0 (wait: every
 * result, waiting for a lent one to be received). */
static int forward_results(struct cpool *p, luamp_buf *buf, int wait)
{
    int n = 0;
    for (;;) {
        if (!lend_done(p, wait))
            return n;
        shmq_wait w = { .claim = -1, .lend_from = LEND_FROM };
        if (shmq_get(p->rq, buf, 0, &w) != SHMQ_OK)
            return n;
        n++;
        if (w.lent) {
            const char *msg = w.lent;
            size_t mlen = w.lent_len;
            result_out(p, msg, mlen);
            if (p->terminated) {
                shmq_give_back(p->rq);
                continue;
            }
            post_sends(0, TAG(K_RESULT, p->id), msg, mlen, &p->lend);
            p->lending = 1;
            continue;
        }
        send_result(p, buf);
    }
}

static int node_receive(int *stop)
{
    struct incoming in;
    int n = 0;
    while (probe_msg(&in)) {
        int put = 0;
        n++;
        int tag = in.tag;
        size_t len = in.len;
        int64_t id = TAG_POOL(tag);
        struct cpool *p = find_pool(id);
        switch (TAG_KIND(tag)) {
        case K_OPEN:
            take_data(&in);
            put = 1;
            if (p == NULL) {
                node_open(id, in.data, len);
                in.data = NULL;     /* (the note to Lua holds it now) */
            }
            break;
        case K_TASK:
            if (p && !p->terminated && len >= sizeof(struct task_head)) {
                struct task_head h;
                shmq_ticket t;
                if (p->nbook == p->capbook) {
                    size_t cap = p->capbook ? 2 * p->capbook : 16;
                    struct entry *b = realloc(p->book, cap * sizeof *b);
                    if (b == NULL) {
                        die("out of memory");
                    }
                    p->book = b;
                    p->capbook = cap;
                }
                /* (the task, where the workers take it) */
                put = 1;
                if (put_incoming(p->tq, &in, &h, sizeof h, &t, 1) != SHMQ_OK) {
                    /* This host has no room for it: that task fails,
                     * not the job (Lua sends its error to rank 0). */
                    int err = errno;
                    int64_t *note = malloc(3 * sizeof *note);
                    if (note == NULL)
                        die("out of memory");
                    note[0] = err;
                    memset(&h, 0, sizeof h);
                    discard_incoming(&in, &h, sizeof h);
                    note[1] = h.origin;
                    note[2] = (int64_t)len;
                    TRACE("task %lld not queued", (long long)h.origin);
                    tell_lua(K_TASK, id, (char *)note, 3 * sizeof *note, NULL, 0);
                    break;
                }
                TRACE("task %lld in", (long long)h.origin);
                p->book[p->nbook++] = (struct entry){ h.origin, t.seq, h.timeout };
                if (h.timeout > 0) {
                    p->ntimed++;
                    wake(inbox_fd);     /* (the supervisor then watches its deadline) */
                }
            }
            break;
        case K_CLOSE:
            if (p && !p->terminated) {
                shmq_shutdown(p->tq);
                tell_lua(K_CLOSE, id, NULL, 0, NULL, 0);
            }
            break;
        case K_TERMINATE:
            if (p && !p->terminated) {
                p->terminated = 1;
                shmq_shutdown(p->tq);
                tell_lua(K_TERMINATE, id, NULL, 0, NULL, 0);
            }
            break;
        case K_STOP:
            *stop = 1;
            break;
        }
        if (!put)
            take_data(&in);    /* (received all the same, and dropped) */
        free(in.data);
    }
    return n;
}

static void *node_thread(void *arg)
{
    (void)arg;
    luamp_buf buf = { 0 };
    struct pacer pace = { 0 };
    int stop = 0;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    pthread_mutex_lock(&mu);
    for (;;) {
        int did = node_receive(&stop);
        if (stop) {
            tell_lua(K_STOP, 0, NULL, 0, NULL, 0);
            break;
        }
        shmq *waitq = NULL;
        for (struct cpool *p = pools, *next; p; p = next) {
            next = p->next;
            did += forward_results(p, &buf, 0);
            if (p->gone) {
                /* its workers exited: everything they put was sent above */
                send_msg(0, TAG(K_CLOSED, p->id), NULL, 0);
                free_pool(p);
                did++;
                continue;
            }
            if (p->nbook > 0 && waitq == NULL && !p->lending)
                waitq = p->rq;      /* (not while lent: a get gives the room back) */
        }
        progress_sends();
        if (stop_requested)
            break;
        if (did) {
            pacer_active(&pace);
            continue;
        }
        int busy = 1;
        for (struct cpool *p = pools; p; p = p->next)
            if (!p->terminated && p->nbook < (size_t)(2 * (p->nlocal > 0 ? p->nlocal : 1)))
                busy = 0;
        busy = busy && pools;
        if (pools && spin(&pace, busy, waitq))
            continue;
        pthread_mutex_unlock(&mu);
        uint64_t seq;
        int got = nap(waitq, &buf, &seq, pacer_next(&pace, busy), 0);
        pthread_mutex_lock(&mu);
        if (got == 1) {
            struct cpool *p = pools;
            while (p && p->rq != waitq)
                p = p->next;
            if (p)
                send_result(p, &buf);
            pacer_active(&pace);
        }
    }
    /* (the last results and CLOSED notes go out before MPI_Finalize; a
     * send rank 0 never takes, as it left, is given up after 5 s) */
    double give_up = luamp_now() + 5;
    while (progress_sends() && luamp_now() < give_up) {
        pthread_mutex_unlock(&mu);
        usleep(100);
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    luamp_buf_free(&buf);
    return NULL;
}

/* ---- what Lua calls (registry["luamp.cluster"]) ------------------------ */

static shmq *view_of(lua_State *L, int idx)
{
    queue *u = luaL_checkudata(L, idx, LUAMP_POOLQUEUE_MT);
    int fds[3];
    if (u->q == NULL)
        luaL_argerror(L, idx, "a destroyed queue");
    shmq_fds(u->q, fds);
    if (dup_fds(fds, 3) != 0)
        luamp_sys_error(L, "cannot share a Pool's queue with the cluster");
    shmq *q = shmq_attach(fds[0], fds[1], fds[2]);
    if (q == NULL)
        luamp_sys_error(L, "cannot share a Pool's queue with the cluster");
    return q;
}

static void push_rank(lua_State *L, int r)
{
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, r);
    lua_setfield(L, -2, "rank");
    lua_pushstring(L, ranks[r].host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, ranks[r].workers);
    lua_setfield(L, -2, "workers");
    lua_pushinteger(L, ranks[r].pid);
    lua_setfield(L, -2, "pid");
}

/* info() -> {ranks = {{rank, host, workers, pid}...}, hosts = {{name,
 * ranks, workers}...}, workers = total, rank = this rank} */
static int c_info(lua_State *L)
{
    lua_createtable(L, 0, 4);
    lua_createtable(L, nranks, 0);
    int total = 0;
    for (int r = 0; r < nranks; r++) {
        push_rank(L, r);
        lua_rawseti(L, -2, r + 1);
        total += ranks[r].workers;
    }
    lua_setfield(L, -2, "ranks");
    lua_newtable(L);
    int nhosts = 0;
    for (int r = 0; r < nranks; r++) {
        int first = 1;
        for (int k = 0; k < r; k++)
            if (strcmp(ranks[k].host, ranks[r].host) == 0)
                first = 0;
        if (!first)
            continue;
        lua_createtable(L, 0, 3);
        lua_pushstring(L, ranks[r].host);
        lua_setfield(L, -2, "name");
        lua_newtable(L);
        int n = 0, w = 0;
        for (int k = r; k < nranks; k++) {
            if (strcmp(ranks[k].host, ranks[r].host) == 0) {
                lua_pushinteger(L, k);
                lua_rawseti(L, -2, ++n);
                w += ranks[k].workers;
            }
        }
        lua_setfield(L, -2, "ranks");
        lua_pushinteger(L, w);
        lua_setfield(L, -2, "workers");
        lua_rawseti(L, -2, ++nhosts);
    }
    lua_setfield(L, -2, "hosts");
    lua_pushinteger(L, total);
    lua_setfield(L, -2, "workers");
    lua_pushinteger(L, me);
    lua_setfield(L, -2, "rank");
    pthread_mutex_lock(&mu);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, split_sent);
    lua_setfield(L, -2, "sent");
    lua_pushinteger(L, split_received);
    lua_setfield(L, -2, "received");
    pthread_mutex_unlock(&mu);
    lua_setfield(L, -2, "split");
    return 1;
}

static void queue_note(int kind, int rank, int64_t pool, const char *data, size_t len)
{
    struct note *n = calloc(1, sizeof *n);
    if (n == NULL || (len && (n->data = malloc(len)) == NULL)) {
        die("out of memory");
    }
    if (len)
        memcpy(n->data, data, len);
    n->kind = kind;
    n->rank = rank;
    n->pool = pool;
    n->len = len;
    push_note(&outbox_tail, n);
}

/* open(tq, rq, plan, config) -> id: plan[r] workers on rank r (r >= 1);
 * config: what each rank's OPEN carries after its worker count. */
static int c_open(lua_State *L)
{
    luaL_checktype(L, 3, LUA_TTABLE);
    size_t clen;
    const char *config = luaL_checklstring(L, 4, &clen);
    if (next_pool >= max_pool)
        return luaL_error(L, "too many cluster Pools for this MPI's tags");
    struct cpool *p = calloc(1, sizeof *p);
    if (p == NULL || (p->limit = calloc((size_t)nranks, sizeof(int))) == NULL
        || (p->inflight = calloc((size_t)nranks, sizeof(int))) == NULL
        || (p->workers = calloc((size_t)nranks, sizeof(int))) == NULL
        || (p->cost = calloc((size_t)nranks, sizeof(double))) == NULL) {
        if (p) {
            free(p->limit);
            free(p->inflight);
            free(p->workers);
        }
        free(p);
        return luaL_error(L, "not enough memory");
    }
    p->tq = view_of(L, 1);
    p->rq = view_of(L, 2);
    char *msg = malloc(clen + 4);
    if (msg == NULL) {
        free_pool(p);
        return luaL_error(L, "not enough memory");
    }
    memcpy(msg + 4, config, clen);
    pthread_mutex_lock(&mu);
    p->id = next_pool++;
    lua_geti(L, 3, 0);
    p->nlocal = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    for (int r = 1; r < nranks; r++) {
        lua_geti(L, 3, r);
        int32_t n = (int32_t)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (n <= 0)
            continue;
        p->limit[r] = n;
        p->workers[r] = n;
        p->nremote++;
        memcpy(msg, &n, 4);
        queue_note(K_OPEN, r, p->id, msg, clen + 4);
    }
    if (p->nremote == 0)
        p->opened = 1;
    p->next = pools;
    pools = p;
    pthread_mutex_unlock(&mu);
    free(msg);
    wake(wake_fd);
    lua_pushinteger(L, p->id);
    return 1;
}

/* Takes mu and finds the pool whose id is argument 1 (NULL: gone). */
static struct cpool *lock_pool(lua_State *L)
{
    int64_t id = luaL_checkinteger(L, 1);
    pthread_mutex_lock(&mu);
    return find_pool(id);
}

/* terminate(id): the ranks kill that pool's workers; what they still
 * send of it is dropped. */
static int c_terminate(lua_State *L)
{
    struct cpool *p = lock_pool(L);
    if (p && !p->terminated) {
        p->terminated = 1;
        for (int r = 1; r < nranks; r++)
            if (p->limit[r] > 0)
                queue_note(K_TERMINATE, r, p->id, NULL, 0);
    }
    pthread_mutex_unlock(&mu);
    wake(wake_fd);
    return 0;
}

/* done(id) -> whether every rank's workers of the pool have exited (after
 * a close or a terminate) and their results arrived. */
static int c_done(lua_State *L)
{
    struct cpool *p = lock_pool(L);
    lua_pushboolean(L, p == NULL || p->nclosed >= p->nremote);
    pthread_mutex_unlock(&mu);
    return 1;
}

/* sent(id, seq): whether task seq went to another rank and its result
 * has not come back (Future:running). */
static int c_sent(lua_State *L)
{
    int64_t seq = (int64_t)luaL_checkinteger(L, 2);
    struct cpool *p = lock_pool(L);
    lua_pushboolean(L, p != NULL && !p->terminated && seq_has(&p->sent, seq));
    pthread_mutex_unlock(&mu);
    return 1;
}

/* release(id): the Pool ended; the thread lets go of its queues. */
static int c_release(lua_State *L)
{
    struct cpool *p = lock_pool(L);
    if (p)
        p->released = 1;
    pthread_mutex_unlock(&mu);
    wake(wake_fd);
    return 0;
}

/* node_next() -> kind, pool id [, data, six descriptors] | nil */
static int c_node_next(lua_State *L)
{
    static const char *const names[] = { [K_OPEN] = "open", [K_CLOSE] = "close",
                                         [K_TERMINATE] = "terminate", [K_STOP] = "stop",
                                         [K_TASK] = "unqueued" };
    pthread_mutex_lock(&mu);
    struct note *n = pop_note(&inbox, &inbox_tail);
    if (inbox == NULL)
        drain_fd(inbox_fd);
    pthread_mutex_unlock(&mu);
    if (n == NULL)
        return 0;
    lua_pushstring(L, names[n->kind]);
    lua_pushinteger(L, n->pool);
    int k = 2;
    if (n->kind == K_OPEN) {
        lua_pushlstring(L, n->data, n->len);
        for (int i = 0; i < 6; i++)
            lua_pushinteger(L, n->fds[i]);
        k += 7;
    } else if (n->kind == K_TASK) {
        /* (a task this host could not queue: origin, bytes, why) */
        int64_t note[3];
        memcpy(note, n->data, sizeof note);
        lua_pushinteger(L, note[1]);
        lua_pushinteger(L, note[2]);
        lua_pushstring(L, strerror((int)note[0]));
        k += 3;
    }
    free_note(n);
    return k;
}

static int c_inbox_fd(lua_State *L)
{
    lua_pushinteger(L, inbox_fd);
    return 1;
}

/* node_lost(id, lseq) -> origin | nil: the task a dead worker held, if
 * its result did not come (what the worker put is sent on first). */
static int c_node_lost(lua_State *L)
{
    uint64_t lseq = (uint64_t)luaL_checkinteger(L, 2);
    luamp_buf buf = { 0 };
    int found = 0;
    int64_t origin = 0;
    double timeout = 0;
    struct cpool *p = lock_pool(L);
    if (p) {
        forward_results(p, &buf, 1);
        for (size_t i = 0; i < p->nbook; i++) {
            if (p->book[i].lseq == lseq) {
                origin = p->book[i].origin;
                timeout = p->book[i].timeout;
                found = 1;
                unbook(p, origin);
                break;
            }
        }
    }
    pthread_mutex_unlock(&mu);
    luamp_buf_free(&buf);
    wake(wake_fd);
    if (!found)
        return 0;
    lua_pushinteger(L, origin);
    lua_pushnumber(L, timeout);
    return 2;
}

/* node_timeout(id, lseq) -> timeout | nil; node_timed(id) -> count */
static int c_node_timeout(lua_State *L)
{
    uint64_t lseq = (uint64_t)luaL_checkinteger(L, 2);
    int found = 0;
    double timeout = 0;
    struct cpool *p = lock_pool(L);
    for (size_t i = 0; p && i < p->nbook; i++) {
        if (p->book[i].lseq == lseq) {
            timeout = p->book[i].timeout;
            found = timeout > 0;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    if (!found)
        return 0;
    lua_pushnumber(L, timeout);
    return 1;
}

static int c_node_timed(lua_State *L)
{
    struct cpool *p = lock_pool(L);
    lua_pushinteger(L, p ? p->ntimed : 0);
    pthread_mutex_unlock(&mu);
    return 1;
}

/* node_gone(id): the pool's workers have all exited. */
static int c_node_gone(lua_State *L)
{
    struct cpool *p = lock_pool(L);
    if (p)
        p->gone = 1;
    pthread_mutex_unlock(&mu);
    wake(wake_fd);
    return 0;
}

static void install(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"info", c_info}, {"open", c_open}, {"terminate", c_terminate}, {"done", c_done},
        {"release", c_release}, {"sent", c_sent}, {"node_next", c_node_next}, {"inbox_fd", c_inbox_fd},
        {"node_lost", c_node_lost}, {"node_timeout", c_node_timeout}, {"node_timed", c_node_timed},
        {"node_gone", c_node_gone}, {NULL, NULL}
    };
    luaL_newlib(L, fns);
    lua_pushinteger(L, (lua_Integer)sizeof(struct task_head));
    lua_setfield(L, -2, "task_head_size");
    lua_setfield(L, LUA_REGISTRYINDEX, LUAMP_CLUSTER_KEY);
}

/* ---- start and end ---------------------------------------------------- */

/* -j N from the command line (options come before the script). */
static int option_j(int argc, char **argv)
{
    for (int i = 1; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            break;
        if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "-j", 2) == 0) {
            const char *v = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : "");
            int n = atoi(v);
            return n > 0 ? n : 0;
        }
    }
    return 0;
}

static int launched_by_mpi(void)
{
    static const char *const vars[] = { "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE" };
    if (getenv("LUAMP_SPAWN_FD") != NULL)   /* (a child luamp spawned) */
        return 0;
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i]) != NULL)
            return 1;
    return 0;
}

/* ---- MPI's descriptors ----------------------------------------------- */

/* Open MPI leaves its sockets (to mpirun's PMIx server, its out-of-band
 * channel) inheritable.  A worker that inherits them keeps them open
 * after its rank has gone, and mpirun, shutting down, then hung now and
 * then inside PMIx (seen here after Ctrl-C, 1 run in 8).  So they are
 * made close-on-exec (spawned workers), and closed in the children a fork
 * makes (rank 0's forked workers, Processes). */
static int *mpi_fds;
static int nmpi_fds;

/* The open descriptors above 2, as a malloc'd array (*n of them). */
static int *open_fds(int *n)
{
    int cap = 64, *fds = malloc(cap * sizeof *fds);
    DIR *d = opendir("/proc/self/fd");
    *n = 0;
    if (fds == NULL || d == NULL) {
        if (d)
            closedir(d);
        free(fds);
        return NULL;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (fd <= 2 || fd == dirfd(d))
            continue;
        if (*n == cap) {
            int *more = realloc(fds, 2 * cap * sizeof *fds);
            if (more == NULL)
                break;
            fds = more;
            cap *= 2;
        }
        fds[(*n)++] = fd;
    }
    closedir(d);
    return fds;
}

static void close_mpi_fds(void)
{
    for (int i = 0; i < nmpi_fds; i++)
        close(mpi_fds[i]);
}

/* Marks the descriptors open now that were not in before[nbefore] (all
 * above 2 when before is NULL) close-on-exec, and remembers them. */
static void claim_mpi_fds(const int *before, int nbefore)
{
    int n;
    int *now = open_fds(&n);
    for (int i = 0; now && i < n; i++) {
        int known = 0;
        for (int k = 0; before && k < nbefore && !known; k++)
            known = before[k] == now[i];
        if (known)
            continue;
        int fl = fcntl(now[i], F_GETFD);
        if (fl < 0 || (fl & FD_CLOEXEC))
            continue;
        if (fcntl(now[i], F_SETFD, fl | FD_CLOEXEC) != 0)
            continue;
        int *more = realloc(mpi_fds, (nmpi_fds + 1) * sizeof *mpi_fds);
        if (more == NULL)
            continue;
        mpi_fds = more;
        mpi_fds[nmpi_fds++] = now[i];
    }
    free(now);
}

int luamp_cluster_start(int *argc, char ***argv)
{
    int provided, flag, *ub;
    if (!launched_by_mpi())
        return -1;
    int nbefore;
    int *before = open_fds(&nbefore);
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "luamp-mpi: MPI_Init_thread failed\n");
        return -2;
    }
    running = 1;
    if (provided < MPI_THREAD_SERIALIZED) {
        fprintf(stderr, "luamp-mpi: this MPI does not let a thread other than the main one call it\n");
        MPI_Abort(MPI_COMM_WORLD, 70);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    max_pool = flag ? (*ub >> 4) : (32767 >> 4);
    getenv_spin_off = getenv("LUAMP_MPI_NO_SPIN") != NULL;
    const char *part = getenv("LUAMP_MPI_PART");
    if (part && atol(part) > 0 && atol(part) <= (1L << 30))
        part_size = (size_t)atol(part);
    /* A rank is the supervisor of its share of the host: mpirun's binding
     * of a rank to one core would put all its workers on that core. */
    cpu_set_t all;
    CPU_ZERO(&all);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    for (long c = 0; c < ncpu && c < CPU_SETSIZE; c++)
        CPU_SET(c, &all);
    if (getenv("LUAMP_MPI_KEEP_BINDING") == NULL)
        sched_setaffinity(0, sizeof all, &all);    /* (best effort: a cgroup may refuse) */
    cpu_set_t set;
    long cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : ncpu;
    struct rank_info mine = { .cpus = (int32_t)(cpus > 0 ? cpus : 1),
                              .layout = (int32_t)(sizeof(struct task_head) * 1000 + sizeof(long)),
                              .pid = (int32_t)getpid() };
    if (gethostname(mine.host, sizeof mine.host - 1) != 0)
        snprintf(mine.host, sizeof mine.host, "rank%d", me);
    ranks = calloc((size_t)nranks, sizeof *ranks);
    if (ranks == NULL) {
        fprintf(stderr, "luamp-mpi: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 71);
    }
    CHECK(MPI_Allgather(&mine, sizeof mine, MPI_BYTE, ranks, sizeof mine, MPI_BYTE, MPI_COMM_WORLD),
          "MPI_Allgather");
    claim_mpi_fds(before, nbefore);
    free(before);
    if (pthread_atfork(NULL, NULL, close_mpi_fds) != 0)
        fprintf(stderr, "luamp-mpi: cannot arrange for MPI's descriptors to be closed in children\n");
    int j = option_j(*argc, *argv);
    for (int r = 0; r < nranks; r++) {
        if (ranks[r].layout != ranks[0].layout) {
            if (me == 0)
                fprintf(stderr, "luamp-mpi: rank %d (%s) runs another build of luamp than rank 0\n", r,
                        ranks[r].host);
            MPI_Abort(MPI_COMM_WORLD, 70);
        }
        int here = 0;
        for (int k = 0; k < nranks; k++)
            if (strcmp(ranks[k].host, ranks[r].host) == 0)
                here++;
        int w = j > 0 ? j : ranks[r].cpus / here;
        ranks[r].workers = w > 0 ? w : 1;
    }
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    inbox_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0 || inbox_fd < 0) {
        fprintf(stderr, "luamp-mpi: eventfd: %s\n", strerror(errno));
        MPI_Abort(MPI_COMM_WORLD, 71);
    }
    return me;
}

int luamp_cluster_active(void)
{
    return running && me == 0;
}

static int start_thread(void *(*fn)(void *))
{
    sigset_t all, old;
    sigfillset(&all);
    /* (signals are the main thread's: SIGINT/SIGTERM interrupt the script) */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&comm, NULL, fn, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        fprintf(stderr, "luamp-mpi: cannot start a thread: %s\n", strerror(e));
        return -1;
    }
    comm_started = 1;
    return 0;
}

static void end_thread(void)
{
    if (!comm_started)
        return;
    pthread_mutex_lock(&mu);
    stop_requested = 1;
    pthread_mutex_unlock(&mu);
    wake(wake_fd);
    pthread_join(comm, NULL);
    comm_started = 0;
}

/* A script that ends with os.exit leaves without luamp_cluster_stop:
 * the ranks are stopped here, so that mpirun sees the status it chose
 * rather than a rank that left the job without finalising. */
static pid_t root_pid;

static void stop_at_exit(void)
{
    /* (not in a fork of rank 0, a worker whose task called os.exit) */
    if (running && me == 0 && getpid() == root_pid)
        luamp_cluster_stop(0);
}

int luamp_cluster_install(lua_State *L, int processes)
{
    (void)processes;
    if (!luamp_cluster_active())
        return 0;
    root_pid = getpid();
    if (!comm_started && atexit(stop_at_exit) != 0)
        fprintf(stderr, "luamp-mpi: cannot register the cluster's end at exit\n");
    install(L);
    int total = 0;
    for (int r = 0; r < nranks; r++)
        total += ranks[r].workers;
    luamp_set_default_processes(L, total);
    return comm_started ? 0 : start_thread(root_thread);
}

/* After Ctrl-C or SIGTERM, mpirun is ending the job itself: a rank leaves
 * without MPI_Finalize, whose exchange with mpirun's PMIx server while
 * that server shuts down left mpirun hung now and then (Open MPI 4.1.4:
 * seen here 2 runs in 20). */
static int leave_quietly(void)
{
    return luamp_interrupt_seen() != 0;
}

int luamp_cluster_stop(int status)
{
    if (!running)
        return status;
    if (leave_quietly()) {
        pthread_mutex_lock(&mu);
        abandon = 1;
        pthread_mutex_unlock(&mu);
        end_thread();
        running = 0;
        return status;
    }
    if (me == 0 && comm_started) {
        pthread_mutex_lock(&mu);
        for (int r = 1; r < nranks; r++)
            queue_note(K_STOP, r, 0, NULL, 0);
        pthread_mutex_unlock(&mu);
        end_thread();
    }
    running = 0;
    MPI_Finalize();
    return status;
}

int luamp_cluster_node(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    int status = 0;
    lua_State *L = luamp_newstate();
    if (L == NULL) {
        die("cannot create a Lua state");
    }
    /* SIGTERM (mpirun ending the job) ends the supervisor, which kills
     * its workers; SIGINT (Ctrl-C at mpirun's terminal, which reaches
     * every process of its group) is rank 0's to handle: its script may
     * go on, and needs the ranks. */
    luamp_catch_interrupts(L);
    signal(SIGINT, SIG_IGN);
    install(L);
    if (start_thread(node_thread) != 0)
        MPI_Abort(MPI_COMM_WORLD, 71);
    if (luamp_dostring(L, "require('luamp')._node()", "=luamp-mpi") != LUA_OK) {
        fprintf(stderr, "luamp-mpi: rank %d (%s): %s\n", me, ranks[me].host, lua_tostring(L, -1));
        status = 1;
    }
    luamp_close(L);
    end_thread();
    running = 0;
    if (!leave_quietly())
        MPI_Finalize();
    return status;
}
