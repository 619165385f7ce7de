/* SPDX-License-Identifier: MIT */
/* test_shmq.c - the shared-memory queue's waiting protocol, from C. */
#include "ctap.h"
#include "../src/shmq.h"
#include "../src/sys.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Forks a consumer that waits up to `wait` seconds for one item and
 * reports through a pipe what it got ("timeout" when nothing came). */
static pid_t consumer(shmq *q, double wait, int *rfd)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        luamp_buf b;
        luamp_buf_init(&b);
        int r = shmq_get(q, &b, luamp_now() + wait, NULL);
        const char *msg = r == SHMQ_OK ? b.data : "timeout";
        size_t n = r == SHMQ_OK ? b.len : strlen(msg);
        ssize_t w = write(p[1], msg, n);
        _exit(w == (ssize_t)n ? 0 : 1);
    }
    close(p[1]);
    *rfd = p[0];
    return pid;
}

static int finish(pid_t pid, int rfd, char *out, size_t cap)
{
    ssize_t n = read(rfd, out, cap - 1);
    out[n > 0 ? n : 0] = '\0';
    close(rfd);
    int st;
    return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void fill(char *p, size_t n, char first)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)(first + i % 26);
}

/* Big messages lent in place to a queue's only consumer (shmq.h). */
static void test_lending(void)
{
    static char a[100 << 10], c[100 << 10], d[100 << 10], e[120 << 10];
    shmq *q = shmq_create(0);
    luamp_buf b;
    luamp_buf_init(&b);
    fill(a, sizeof a, 'a');
    fill(c, sizeof c, 'c');
    fill(d, sizeof d, 'A');
    fill(e, sizeof e, 'e');
    if (!q)
        return;

    shmq_put(q, a, sizeof a, -1, NULL);
    shmq_put(q, "small", 5, -1, NULL);
    shmq_wait w = { .claim = -1, .lend_from = 64 << 10 };
    int r = shmq_get(q, &b, 0, &w);
    ok(r == SHMQ_OK && w.lent != NULL && w.lent_len == sizeof a && memcmp(w.lent, a, sizeof a) == 0
       && b.len == 0, "a message of at least lend_from bytes is lent in place, not copied");
    ok(shmq_count(q) == 1, "a lent message no longer counts as held");

    /* Another process fills the ring past its 256 KiB: it grows around the
     * lent bytes instead of writing over them. */
    pid_t pid = fork();
    if (pid == 0) {
        int good = 1;
        for (int i = 0; i < 4; i++)
            good &= shmq_put(q, c, sizeof c, -1, NULL) == SHMQ_OK;
        _exit(good ? 0 : 1);
    }
    int st;
    int put_ok = pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    ok(put_ok && memcmp(w.lent, a, sizeof a) == 0,
       "puts that grow the ring leave a lent message as it was");
    int order = shmq_give_back(q) == 0;
    order &= shmq_get(q, &b, 0, NULL) == SHMQ_OK && b.len == 5 && memcmp(b.data, "small", 5) == 0;
    for (int i = 0; i < 4; i++)
        order &= shmq_get(q, &b, 0, NULL) == SHMQ_OK && b.len == sizeof c && memcmp(b.data, c, sizeof c) == 0;
    ok(order && shmq_count(q) == 0, "once it is given back, the messages behind it come out whole and in order");
    shmq_destroy(q);

    /* The next get takes back what was lent, given back or not. */
    q = shmq_create(0);
    if (!q)
        return;
    shmq_put(q, a, sizeof a, -1, NULL);
    r = shmq_get(q, &b, 0, &w);
    int lent = r == SHMQ_OK && w.lent != NULL;
    r = shmq_get(q, &b, 0, &w);
    ok(lent && r == SHMQ_TIMEOUT && w.lent == NULL, "a get finds nothing after the only message was lent");
    shmq_put(q, a, sizeof a, -1, NULL);
    shmq_put(q, c, sizeof c, -1, NULL);
    ok(shmq_test_capacity(q) == (256 << 10), "that get freed the lent room: 200 KiB more fit the 256 KiB ring");

    /* A message that wraps around the end of the ring is copied: c went
     * in behind a, from 200 KiB on in the 256 KiB ring. */
    r = shmq_get(q, &b, 0, NULL);                      /* a */
    r = shmq_get(q, &b, 0, &w);                        /* c */
    ok(r == SHMQ_OK && w.lent == NULL && b.len == sizeof c && memcmp(b.data, c, sizeof c) == 0,
       "a message that wraps around the ring's end is copied out whole, not lent");
    ok(shmq_test_capacity(q) == (256 << 10), "(the ring did not grow, so it wrapped)");

    /* ... but one put into an empty ring starts at its beginning instead:
     * after d the head is at 144 KiB, where 120 KiB would wrap. */
    shmq_put(q, d, sizeof d, -1, NULL);
    r = shmq_get(q, &b, 0, &w);                        /* d: lent */
    lent = r == SHMQ_OK && w.lent != NULL;
    r = shmq_get(q, &b, 0, &w);                        /* gives d back */
    lent = lent && r == SHMQ_TIMEOUT;
    shmq_put(q, e, sizeof e, -1, NULL);
    r = shmq_get(q, &b, 0, &w);
    ok(lent && r == SHMQ_OK && w.lent != NULL && w.lent_len == sizeof e && memcmp(w.lent, e, sizeof e) == 0
       && shmq_test_capacity(q) == (256 << 10),
       "a message put into an empty ring where it would wrap starts at the beginning, and is lent");
    shmq_destroy(q);
    luamp_buf_free(&b);
}

static int starts_with_y(const char *msg, size_t len)
{
    return len > 0 && msg[0] == 'Y';
}

/* lend_if: of the big messages, only those it says yes to are lent. */
static void test_lend_if(void)
{
    static char x[100 << 10];
    shmq *q = shmq_create(0);
    luamp_buf b;
    luamp_buf_init(&b);
    if (!q)
        return;
    fill(x, sizeof x, 'a');
    x[0] = 'Y';
    shmq_put(q, x, sizeof x, -1, NULL);
    x[0] = 'N';
    shmq_put(q, x, sizeof x, -1, NULL);
    shmq_wait w = { .claim = -1, .lend_from = 64 << 10, .lend_if = starts_with_y };
    int first = shmq_get(q, &b, 0, &w) == SHMQ_OK && w.lent != NULL && w.lent[0] == 'Y' && b.len == 0;
    int r = shmq_get(q, &b, 0, &w);
    ok(first && r == SHMQ_OK && w.lent == NULL && b.len == sizeof x && b.data[0] == 'N'
       && memcmp(b.data + 1, x + 1, sizeof x - 1) == 0,
       "lend_if chooses which big messages are lent; the others are copied out whole");
    shmq_destroy(q);
    luamp_buf_free(&b);
}

/* Big messages held in place by any consumer, the get lock kept
 * (shmq.h, "Holding"). */
static void test_holding(void)
{
    static char a[100 << 10];
    shmq *q = shmq_create(0);
    luamp_buf b;
    luamp_buf_init(&b);
    fill(a, sizeof a, 'h');
    if (!q)
        return;

    shmq_put(q, a, sizeof a, -1, NULL);
    shmq_put(q, "small", 5, -1, NULL);
    shmq_wait w = { .claim = 3, .lend_from = 64 << 10, .hold = 1 };
    int r = shmq_get(q, &b, 0, &w);
    ok(r == SHMQ_OK && w.lent != NULL && w.lent_len == sizeof a && memcmp(w.lent, a, sizeof a) == 0
       && b.len == 0, "a held message is lent in place, not copied");
    luamp_buf other;
    luamp_buf_init(&other);
    r = shmq_get(q, &other, 0, NULL);
    int e = errno;
    ok(r == SHMQ_ERROR && e == EDEADLK, "a get by the holder itself fails with EDEADLK, it does not hang");

    /* Another consumer waits for the holder, then gets what comes next. */
    int rfd;
    pid_t pid = consumer(q, 10, &rfd);
    char got[64];
    usleep(50 * 1000);
    ok(memcmp(w.lent, a, sizeof a) == 0, "(the held message is as it was put)");
    shmq_end_hold(q, 1);
    int fine = pid > 0 && finish(pid, rfd, got, sizeof got);
    ok(fine && strcmp(got, "small") == 0, "another consumer got the message behind it once it was taken (%s)", got);
    uint64_t seq;
    double since;
    ok(shmq_claim(q, 3, &seq, &since) == 0 && seq == 1, "taking it claimed it in the get's slot");

    /* Not taken: it stays at the head. */
    shmq_put(q, a, sizeof a, -1, NULL);
    r = shmq_get(q, &b, 0, &w);
    int held = r == SHMQ_OK && w.lent != NULL;
    shmq_end_hold(q, 0);
    ok(held && shmq_count(q) == 1, "a held message that is not taken still counts");
    r = shmq_get(q, &b, 0, NULL);
    ok(r == SHMQ_OK && b.len == sizeof a && memcmp(b.data, a, sizeof a) == 0, "and the next get has it");

    /* A holder that dies leaves the message in the queue. */
    shmq_put(q, a, sizeof a, -1, NULL);
    pid = fork();
    if (pid == 0) {
        luamp_buf mine;
        luamp_buf_init(&mine);
        shmq_wait hw = { .claim = -1, .lend_from = 64 << 10, .hold = 1 };
        _exit(shmq_get(q, &mine, 0, &hw) == SHMQ_OK && hw.lent != NULL ? 0 : 1);
    }
    int st;
    int died = pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    r = shmq_get(q, &b, 0, NULL);
    ok(died && r == SHMQ_OK && b.len == sizeof a && memcmp(b.data, a, sizeof a) == 0 && shmq_count(q) == 0,
       "a message whose holder died holding it is got by the next consumer");
    shmq_destroy(q);
    luamp_buf_free(&b);
    luamp_buf_free(&other);
}

/* A ring that grew past 256 MiB keeps its size while big messages come,
 * and shrinks once a consumer finds it empty a second after the last. */
static void test_shrink(void)
{
    size_t n = (size_t)257 << 20;
    char *m = malloc(n);
    shmq *q = shmq_create(0);
    luamp_buf b;
    luamp_buf_init(&b);
    if (!m || !q) {
        free(m);
        shmq_destroy(q);
        return;
    }
    memset(m, 's', n);
    int moved = 1;
    for (int i = 0; i < 2; i++) {
        moved &= shmq_put(q, m, n, -1, NULL) == SHMQ_OK && shmq_test_capacity(q) == (512 << 20);
        moved &= shmq_get(q, &b, 0, NULL) == SHMQ_OK && b.len == n && shmq_get(q, &b, 0, NULL) == SHMQ_TIMEOUT;
    }
    ok(moved && shmq_test_capacity(q) == (512 << 20),
       "a ring grown for a 257 MiB message keeps its size while such messages come");
    luamp_buf_free(&b);     /* (257 MiB) */
    free(m);
    usleep(1100 * 1000);
    int r = shmq_get(q, &b, 0, NULL);
    ok(r == SHMQ_TIMEOUT && shmq_test_capacity(q) == (256 << 10),
       "a get that finds it empty a second after the last shrinks it back to 256 KiB");
    shmq_destroy(q);
}

/* A message with spans goes in as its data with the spans' bytes in
 * place, even across the end of the ring. */
static void test_spans(void)
{
    static char a[60 << 10], c[20 << 10];
    shmq *q = shmq_create(0);
    luamp_buf m, got, want;
    luamp_buf_init(&m);
    luamp_buf_init(&got);
    luamp_buf_init(&want);
    fill(a, sizeof a, 'a');
    fill(c, sizeof c, 'c');
    if (!q)
        return;
    /* spans at the very start, in the middle and at the very end */
    luamp_buf_append(&m, "<mid>", 5);
    luamp_span spans[] = { { 0, a, sizeof a }, { 2, c, sizeof c }, { 5, a, 1000 } };
    m.spans = spans;
    m.nspans = m.spancap = 3;
    m.spanlen = sizeof a + sizeof c + 1000;
    luamp_buf_append(&want, a, sizeof a);
    luamp_buf_append(&want, "<m", 2);
    luamp_buf_append(&want, c, sizeof c);
    luamp_buf_append(&want, "id>", 3);
    luamp_buf_append(&want, a, 1000);

    /* 81 KiB messages in a 256 KiB ring, one always held: the fourth
     * starts 243 KiB in and wraps */
    int all = 1;
    for (int i = 0; i < 4; i++) {
        all &= shmq_put_buf(q, &m, -1, NULL) == SHMQ_OK;
        if (i > 0)
            all &= shmq_get(q, &got, 0, NULL) == SHMQ_OK && got.len == want.len
                   && memcmp(got.data, want.data, want.len) == 0;
    }
    all &= shmq_get(q, &got, 0, NULL) == SHMQ_OK && got.len == want.len
           && memcmp(got.data, want.data, want.len) == 0;     /* the one that wrapped */
    ok(all && shmq_count(q) == 0 && shmq_test_capacity(q) == (256 << 10),
       "a message with spans comes out as its data with the spans in place, across the ring's end too");
    m.spans = NULL;
    m.nspans = m.spancap = 0;
    m.spanlen = 0;
    luamp_buf_free(&m);
    luamp_buf_free(&got);
    luamp_buf_free(&want);
    shmq_destroy(q);
}

/* shmq_put_fill's callback for test_fill: writes the message (the
 * buffer ctx) into the ring's two pieces, and counts the calls that had
 * two. */
static int fill_wrapped;
static void fill_pieces(void *ctx, char *d1, size_t n1, char *d2, size_t n2)
{
    const char *src = ctx;
    memcpy(d1, src, n1);
    memcpy(d2, src + n1, n2);
    if (n2 > 0)
        fill_wrapped++;
}

static void test_fill(void)
{
    static char a[81 << 10];
    shmq *q = shmq_create(0);
    luamp_buf got;
    luamp_buf_init(&got);
    if (!q)
        return;
    for (size_t i = 0; i < sizeof a; i++)
        a[i] = (char)(i * 7 + i / 251);
    /* as test_spans: 81 KiB messages in a 256 KiB ring, one always held,
     * so that the fourth wraps around the ring's end */
    int all = 1;
    shmq_ticket t;
    for (int i = 0; i < 4; i++) {
        all &= shmq_put_fill(q, sizeof a, fill_pieces, a, -1, &t) == SHMQ_OK && t.seq == (uint64_t)i + 1;
        if (i > 0)
            all &= shmq_get(q, &got, 0, NULL) == SHMQ_OK && got.len == sizeof a
                   && memcmp(got.data, a, sizeof a) == 0;
    }
    all &= shmq_get(q, &got, 0, NULL) == SHMQ_OK && got.len == sizeof a && memcmp(got.data, a, sizeof a) == 0;
    ok(all && shmq_count(q) == 0, "a put whose bytes a callback writes into the ring comes out whole");
    ok(fill_wrapped == 1, "the callback is given the two pieces of a record that wraps (%d)", fill_wrapped);
    luamp_buf_free(&got);
    shmq_destroy(q);
}

/* Gets one message as a string into buf (empty on failure). */
static const char *get_str(shmq *q, luamp_buf *b, char *buf, size_t n)
{
    buf[0] = 0;
    if (shmq_get(q, b, 0, NULL) == SHMQ_OK && b->len < n) {
        memcpy(buf, b->data, b->len);
        buf[b->len] = 0;
    }
    return buf;
}

static void test_cancel(void)
{
    shmq *q = shmq_create(0);
    luamp_buf b;
    luamp_buf_init(&b);
    char s[16];
    if (!q)
        return;
    shmq_ticket t[4];
    const char *words[] = { "one", "two", "three", "four" };
    int puts_ok = 1;
    for (int i = 0; i < 4; i++)
        puts_ok &= shmq_put(q, words[i], strlen(words[i]), -1, &t[i]) == SHMQ_OK;
    ok(puts_ok && shmq_cancel(q, t[0].seq, SHMQ_ANYWHERE) == 1 && shmq_cancel(q, t[2].seq, SHMQ_ANYWHERE) == 1,
       "messages still queued can be withdrawn by number alone, at the head and further back");
    ok(shmq_count(q) == 2, "withdrawn messages no longer count (%llu)", (unsigned long long)shmq_count(q));
    ok(shmq_cancel(q, t[2].seq, SHMQ_ANYWHERE) == 0 && shmq_cancel(q, t[2].seq, t[2].pos) == 0,
       "withdrawing twice finds nothing the second time, with its position or without");
    ok(strcmp(get_str(q, &b, s, sizeof s), "two") == 0, "get skips the withdrawn head (got %s)", s);
    ok(shmq_cancel(q, t[1].seq, SHMQ_ANYWHERE) == 0, "a message already taken cannot be withdrawn");
    ok(strcmp(get_str(q, &b, s, sizeof s), "four") == 0, "and skips one further back (got %s)", s);
    ok(shmq_get(q, &b, 0, NULL) == SHMQ_TIMEOUT && shmq_count(q) == 0, "then the queue is empty");
    ok(shmq_cancel(q, t[3].seq + 100, SHMQ_ANYWHERE) == 0, "a number never put is not found");
    ok(shmq_put(q, "five", 4, -1, NULL) == SHMQ_OK && strcmp(get_str(q, &b, s, sizeof s), "five") == 0,
       "the queue works on after withdrawals");
    luamp_buf_free(&b);
    shmq_destroy(q);
}

/* Puts a message of n bytes of `first`, `first + 1` ...; its ticket in *t. */
static int put_filled(shmq *q, char *scratch, size_t n, char first, shmq_ticket *t)
{
    fill(scratch, n, first);
    return shmq_put(q, scratch, n, -1, t) == SHMQ_OK;
}

/* Gets a message and checks it is n bytes as put_filled makes them. */
static int got_filled(shmq *q, luamp_buf *b, char *scratch, size_t n, char first)
{
    fill(scratch, n, first);
    return shmq_get(q, b, 0, NULL) == SHMQ_OK && b->len == n && memcmp(b->data, scratch, n) == 0;
}

/* Withdrawing by the position a put gave out (shmq.c, "Cancelling"). */
static void test_cancel_at(void)
{
    static char big[300 << 10], x[10 << 10];
    luamp_buf b;
    luamp_buf_init(&b);
    char s[16];
    shmq *q = shmq_create(0);
    if (!q)
        return;
    shmq_ticket t[8];
    const char *words[] = { "one", "two", "three", "four", "five" };
    int all = 1;
    for (int i = 0; i < 5; i++)
        all &= shmq_put(q, words[i], strlen(words[i]), -1, &t[i]) == SHMQ_OK;
    ok(all && shmq_cancel(q, t[2].seq, t[2].pos) == 1 && shmq_cancel(q, t[0].seq, t[0].pos) == 1
       && shmq_count(q) == 3, "by position: one in the middle and the one at the head are withdrawn");
    ok(shmq_cancel(q, t[0].seq, t[0].pos) == 0, "and only once");
    ok(strcmp(get_str(q, &b, s, sizeof s), "two") == 0
       && shmq_cancel(q, t[1].seq, t[1].pos) == 0 && shmq_count(q) == 2,
       "a message taken cannot be withdrawn by its position (and the count stays 2)");
    ok(shmq_cancel(q, t[4].seq, t[3].pos) == 1 && strcmp(get_str(q, &b, s, sizeof s), "four") == 0
       && shmq_get(q, &b, 0, NULL) == SHMQ_TIMEOUT && shmq_count(q) == 0,
       "a position that holds another message is no help: the number is looked for, and that one alone goes");
    shmq_destroy(q);

    /* The ring grows while some records wrap around its end: those move,
     * and their positions still find them.  A 200 KiB message put and
     * taken leaves the head 200 KiB into the 256 KiB ring, then eight
     * 10 KiB ones follow (the sixth wraps), then a 300 KiB one makes the
     * ring grow. */
    q = shmq_create(0);
    if (!q)
        return;
    all = put_filled(q, big, 200 << 10, 'A', NULL) && got_filled(q, &b, big, 200 << 10, 'A');
    for (int i = 0; i < 8; i++)
        all &= put_filled(q, x, sizeof x, (char)('a' + i), &t[i]);
    uint64_t before = shmq_test_capacity(q);
    all &= put_filled(q, big, sizeof big, 'B', NULL);
    ok(all && before == (256 << 10) && shmq_test_capacity(q) > before, "(the ring grew, from %llu KiB to %llu)",
       (unsigned long long)(before >> 10), (unsigned long long)(shmq_test_capacity(q) >> 10));
    ok(shmq_cancel(q, t[5].seq, t[5].pos) == 1 && shmq_cancel(q, t[6].seq, t[6].pos) == 1
       && shmq_cancel(q, t[1].seq, t[1].pos) == 1 && shmq_count(q) == 6,
       "after the ring grew, records that wrapped and moved are withdrawn by their positions, and one that did not");
    all = 1;
    for (int i = 0; i < 8; i++)
        if (i != 1 && i != 5 && i != 6)
            all &= got_filled(q, &b, x, sizeof x, (char)('a' + i));
    all &= got_filled(q, &b, big, sizeof big, 'B');
    ok(all && shmq_get(q, &b, 0, NULL) == SHMQ_TIMEOUT && shmq_count(q) == 0,
       "the others come out whole and in order");
    shmq_destroy(q);

    /* A task put back under a claim goes to the tail: its old position
     * is behind the head, and the queue knows where it went. */
    q = shmq_create(0);
    if (!q)
        return;
    for (int i = 0; i < 3; i++)
        all &= shmq_put(q, words[i], strlen(words[i]), -1, &t[i]) == SHMQ_OK;
    shmq_wait w = { .claim = 0 };
    all &= shmq_get(q, &b, 0, &w) == SHMQ_OK && w.seq == t[0].seq;
    all &= shmq_requeue(q, 0, b.data, b.len, w.seq) == SHMQ_OK;
    ok(all && shmq_cancel(q, t[2].seq, t[2].pos) == 1 && shmq_count(q) == 2,
       "with a requeued message behind it, another is withdrawn by its position, and only it");
    ok(shmq_cancel(q, t[0].seq, t[0].pos) == 1 && shmq_count(q) == 1,
       "a requeued message is withdrawn by the position its first put gave out");
    ok(strcmp(get_str(q, &b, s, sizeof s), "two") == 0 && shmq_get(q, &b, 0, NULL) == SHMQ_TIMEOUT,
       "then only the third comes out");
    all = shmq_put(q, "again", 5, -1, &t[3]) == SHMQ_OK;
    all &= shmq_get(q, &b, 0, &w) == SHMQ_OK && shmq_requeue(q, 0, b.data, b.len, w.seq) == SHMQ_OK;
    all &= shmq_get(q, &b, 0, &w) == SHMQ_OK && w.seq == t[3].seq;
    ok(all && shmq_cancel(q, t[3].seq, t[3].pos) == 0 && shmq_count(q) == 0,
       "a requeued message taken again cannot be withdrawn");
    shmq_release(q, 0);

    /* More requeued messages than the header keeps positions for. */
    enum { NREQ = 80 };
    shmq_ticket rt[NREQ];
    char item[16];
    all = 1;
    for (int i = 0; i < NREQ; i++) {
        snprintf(item, sizeof item, "item %d", i);
        all &= shmq_put(q, item, strlen(item), -1, &rt[i]) == SHMQ_OK;
    }
    for (int i = 0; i < NREQ; i++) {
        all &= shmq_get(q, &b, 0, &w) == SHMQ_OK && w.seq == rt[i].seq;
        all &= shmq_requeue(q, 0, b.data, b.len, w.seq) == SHMQ_OK;
    }
    int withdrawn = 0;
    for (int i = 0; i < NREQ; i += 2)
        withdrawn += shmq_cancel(q, rt[i].seq, rt[i].pos);
    all &= withdrawn == NREQ / 2 && shmq_count(q) == NREQ / 2;
    for (int i = 1; i < NREQ; i += 2) {
        snprintf(item, sizeof item, "item %d", i);
        all &= strcmp(get_str(q, &b, s, sizeof s), item) == 0;
    }
    ok(all && shmq_get(q, &b, 0, NULL) == SHMQ_TIMEOUT,
       "%d messages requeued: every other one is withdrawn by its first position (%d), the rest come out",
       NREQ, withdrawn);
    shmq_destroy(q);
    luamp_buf_free(&b);
}

/* A message's bytes are never taken for a record's header, even where
 * a position handed out earlier now lies inside them. */
static void test_cancel_payload(void)
{
    static char filler[256 << 10];
    luamp_buf b;
    luamp_buf_init(&b);
    char s[16];
    shmq *q = shmq_create(0);
    if (!q)
        return;
    /* z at 0 and a at 20 are put and taken (a record is a 16-byte
     * header and the bytes); a filler leaves the head 8 bytes before the
     * end of the 256 KiB ring, so that d, put into the empty ring, starts
     * at offset 0 instead of wrapping.  When that set the positions back
     * to 0, d's bytes 4-19 lay at a's old position: they look like a's
     * header.  Its bytes 40-55 look like the header of e, which follows
     * d. */
    shmq_ticket z, a, f, d, e;
    int all = shmq_put(q, "zzzz", 4, -1, &z) == SHMQ_OK && shmq_put(q, "aaaa", 4, -1, &a) == SHMQ_OK;
    all &= strcmp(get_str(q, &b, s, sizeof s), "zzzz") == 0 && strcmp(get_str(q, &b, s, sizeof s), "aaaa") == 0;
    size_t nfill = (256 << 10) - 2 * 20 - 16 - 8;
    all &= put_filled(q, filler, nfill, 'f', &f) && got_filled(q, &b, filler, nfill, 'f');
    unsigned char dbytes[100];
    memset(dbytes, 'd', sizeof dbytes);
    uint64_t fake_len = 4;
    uint64_t e_seq = f.seq + 2;
    memcpy(dbytes + 4, &fake_len, 8);
    memcpy(dbytes + 12, &a.seq, 8);
    memcpy(dbytes + 40, &fake_len, 8);
    memcpy(dbytes + 48, &e_seq, 8);
    all &= shmq_put(q, dbytes, sizeof dbytes, -1, &d) == SHMQ_OK;
    all &= shmq_put(q, "eeee", 4, -1, &e) == SHMQ_OK && e.seq == e_seq;
    ok(all && a.pos == 20 && shmq_test_capacity(q) == (256 << 10),
       "(a was put at position 20, and the ring did not grow)");
    ok(shmq_cancel(q, a.seq, a.pos) == 0 && shmq_cancel(q, a.seq, SHMQ_ANYWHERE) == 0 && shmq_count(q) == 2,
       "bytes of a message that look like a taken message's header are not found, by position or by walking");
    ok(shmq_cancel(q, e.seq, SHMQ_ANYWHERE) == 1 && shmq_count(q) == 1,
       "bytes that look like the next message's header are stepped over: that message is withdrawn");
    ok(shmq_get(q, &b, 0, NULL) == SHMQ_OK && b.len == sizeof dbytes && memcmp(b.data, dbytes, sizeof dbytes) == 0
       && shmq_get(q, &b, 0, NULL) == SHMQ_TIMEOUT && shmq_count(q) == 0,
       "the message comes out as it was put, and the withdrawn one not at all");
    shmq_destroy(q);
    luamp_buf_free(&b);
}

/* Pacing: while a consumer keeps taking (here one item every 200 us), a
 * faster producer waits for the room it makes rather than growing the
 * ring for all it puts: n items of `size` bytes (64 MiB), where the ring
 * needs about 8.  Returns the ring's capacity at the end; *passed says
 * whether every item went through. */
static uint64_t paced_ring(const char *big, size_t size, int n, int *passed)
{
    shmq *q = shmq_create(0);
    *passed = 0;
    if (!q)
        return 0;
    pid_t eater = fork();
    if (eater == 0) {
        luamp_buf b;
        luamp_buf_init(&b);
        for (int i = 0; i < n; i++) {
            if (shmq_get(q, &b, luamp_now() + 30, NULL) != SHMQ_OK || b.len != size)
                _exit(1);
            usleep(200);
        }
        _exit(0);
    }
    /* The first 8 MiB go in before the consumer may have started (a fork
     * takes milliseconds on a busy machine, and pacing waits only for a
     * consumer seen taking); the rest once it has taken one. */
    int puts_ok = eater > 0;
    for (int i = 0; i < n && puts_ok; i++) {
        puts_ok &= shmq_put(q, big, size, -1, NULL) == SHMQ_OK;
        for (int k = 0; i == 15 && k < 100000 && shmq_count(q) > 15; k++)
            usleep(100);
    }
    int st;
    *passed = puts_ok && waitpid(eater, &st, 0) == eater && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    uint64_t cap = shmq_test_capacity(q);
    shmq_destroy(q);
    return cap;
}

/* Many producers and consumers at once (the two-lock ring, shmq.c):
 * NPROD producers put NITEM items each, of sizes from 8 bytes to 300 KiB
 * (the big ones make the ring grow while others read and write it),
 * NCONS consumers take them and check each one's bytes, and say through
 * a pipe which items they got; every item must come out exactly once and
 * whole.  With maxsize, producers also wait for room. */
enum { NPROD = 3, NCONS = 2, NITEM = 6000, STOP = 0xffff };

static size_t item_size(unsigned i)
{
    return i % 997 == 5 ? (size_t)300 << 10 : 8 + i % 61;
}

static void item_fill(unsigned char *p, size_t n, unsigned prod, unsigned i)
{
    memcpy(p, &prod, 4);
    memcpy(p + 4, &i, 4);
    for (size_t k = 8; k < n; k++)
        p[k] = (unsigned char)(k * 7 + i + prod);
}

static int crowd(uint64_t maxsize, const char **why)
{
    static unsigned char item[300 << 10];
    static unsigned char got[NCONS][NPROD][NITEM];
    shmq *q = shmq_create(maxsize);
    *why = "create";
    if (!q)
        return 0;
    int fds[NCONS][2];
    pid_t cons[NCONS], prod[NPROD];
    for (int c = 0; c < NCONS; c++) {
        if (pipe(fds[c]) != 0)
            return 0;
        cons[c] = fork();
        if (cons[c] == 0) {
            static unsigned char seen[NPROD][NITEM];
            luamp_buf b;
            luamp_buf_init(&b);
            int bad = 0;
            for (;;) {
                if (shmq_get(q, &b, luamp_now() + 30, NULL) != SHMQ_OK || b.len < 8) {
                    bad = 1;
                    break;
                }
                unsigned pr, i;
                memcpy(&pr, b.data, 4);
                memcpy(&i, b.data + 4, 4);
                if (pr == STOP)
                    break;
                if (pr >= NPROD || i >= NITEM || b.len != item_size(i)) {
                    bad = 1;
                    break;
                }
                item_fill(item, b.len, pr, i);
                bad |= memcmp(item, b.data, b.len) != 0;
                seen[pr][i]++;
            }
            seen[0][0] |= bad ? 0x80 : 0;
            ssize_t w = write(fds[c][1], seen, sizeof seen);
            _exit(w == (ssize_t)sizeof seen ? 0 : 1);
        }
        close(fds[c][1]);
    }
    for (int p = 0; p < NPROD; p++) {
        prod[p] = fork();
        if (prod[p] == 0) {
            for (unsigned i = 0; i < NITEM; i++) {
                size_t n = item_size(i);
                item_fill(item, n, (unsigned)p, i);
                if (shmq_put(q, item, n, luamp_now() + 30, NULL) != SHMQ_OK)
                    _exit(1);
            }
            _exit(0);
        }
    }
    int all_ok = 1, st;
    for (int p = 0; p < NPROD; p++)
        all_ok &= prod[p] > 0 && waitpid(prod[p], &st, 0) == prod[p] && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    *why = "a producer failed";
    unsigned stop[2] = { STOP, 0 };
    for (int c = 0; c < NCONS; c++)
        all_ok &= shmq_put(q, stop, sizeof stop, luamp_now() + 10, NULL) == SHMQ_OK;
    for (int c = 0; c < NCONS; c++) {
        size_t have = 0;
        ssize_t r;
        while (have < sizeof got[c] && (r = read(fds[c][0], (char *)got[c] + have, sizeof got[c] - have)) > 0)
            have += (size_t)r;
        close(fds[c][0]);
        all_ok &= have == sizeof got[c] && cons[c] > 0 && waitpid(cons[c], &st, 0) == cons[c]
                  && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    if (!all_ok)
        return 0;
    *why = "an item came out damaged";
    for (int c = 0; c < NCONS; c++) {
        if (got[c][0][0] & 0x80)
            return 0;
    }
    *why = "an item was lost or came out twice";
    for (int p = 0; p < NPROD; p++) {
        for (int i = 0; i < NITEM; i++) {
            int times = 0;
            for (int c = 0; c < NCONS; c++)
                times += got[c][p][i];
            if (times != 1)
                return 0;
        }
    }
    *why = "the queue is not empty";
    int empty = shmq_count(q) == 0;
    shmq_destroy(q);
    return empty;
}

int main(void)
{
    char got[64];
    int rfd;

    /* A consumer sleeping on an empty queue is woken by a put. */
    shmq *q = shmq_create(0);
    ok(q != NULL, "a queue is created");
    pid_t c = consumer(q, 5.0, &rfd);
    usleep(50000);   /* most likely asleep by now; either way it must get the item */
    ok(shmq_put(q, "hello", 5, -1, NULL) == SHMQ_OK, "put succeeds");
    ok(finish(c, rfd, got, sizeof got), "the consumer exits cleanly");
    ok(strcmp(got, "hello") == 0, "a sleeping consumer gets the item put after it slept (got %s)", got);
    ok(shmq_test_tokens(q) == 0, "the consumer took the one token written for it");

    /* A producer that counted a wakeup token and died before writing it
     * must not leave a sleeping consumer deaf to later puts. */
    c = consumer(q, 10.0, &rfd);
    usleep(50000);
    shmq_test_lose_token(q);
    ok(shmq_put(q, "after", 5, -1, NULL) == SHMQ_OK, "put after a lost token succeeds");
    ok(finish(c, rfd, got, sizeof got), "that consumer exits cleanly");
    ok(strcmp(got, "after") == 0, "a consumer whose wakeup was lost still gets the item (got %s)", got);

    ok(shmq_test_tokens(q) == 0, "the lost token was written off when its sleeper left");

    /* And the queue works normally afterwards. */
    c = consumer(q, 5.0, &rfd);
    usleep(50000);
    ok(shmq_put(q, "again", 5, -1, NULL) == SHMQ_OK, "put succeeds");
    ok(finish(c, rfd, got, sizeof got) && strcmp(got, "again") == 0,
       "the next sleeping consumer is woken as usual (got %s)", got);

    /* Shutdown wakes every sleeper. */
    pid_t cs[3];
    int fds[3];
    for (int i = 0; i < 3; i++)
        cs[i] = consumer(q, 10.0, &fds[i]);
    usleep(50000);
    ok(shmq_shutdown(q) == 0, "shutdown succeeds");
    int all = 1;
    for (int i = 0; i < 3; i++)
        all &= finish(cs[i], fds[i], got, sizeof got) && strcmp(got, "timeout") == 0;
    ok(all, "shutdown wakes every sleeping consumer, which find nothing");
    shmq_destroy(q);

    /* Pacing: see paced_ring.  A consumer descheduled for more than the
     * pacing wait at the wrong moments (a busy host, a sanitizer build)
     * lets the ring grow in one try; without pacing it grows in every
     * one, so three tries tell the two apart. */
    enum { BIG = 512 << 10, NBIG = 128 };
    static char big[BIG];
    memset(big, 'b', sizeof big);
    int passed_ok = 1;
    uint64_t cap = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        cap = paced_ring(big, BIG, NBIG, &passed_ok);
        if (!passed_ok || cap <= ((uint64_t)32 << 20))
            break;
        diag("try %d: the ring grew to %llu MiB", attempt + 1, (unsigned long long)(cap >> 20));
    }
    ok(passed_ok, "64 MiB pass through a queue to a consumer");
    ok(cap <= ((uint64_t)32 << 20), "a producer paced by its consumer keeps the ring small (%llu MiB)",
       (unsigned long long)(cap >> 20));

    /* ... and with nobody taking, put does not wait: the ring grows. */
    q = shmq_create(0);
    int puts_ok = 1;
    for (int i = 0; i < 64; i++)
        puts_ok &= shmq_put(q, big, sizeof big, -1, NULL) == SHMQ_OK;
    ok(puts_ok && shmq_count(q) == 64 && shmq_test_capacity(q) >= ((uint64_t)32 << 20),
       "without a consumer, 32 MiB of puts all go in at once");
    shmq_destroy(q);
    test_lending();
    test_lend_if();
    test_holding();
    test_shrink();
    test_spans();
    test_cancel();
    test_cancel_at();
    test_cancel_payload();
    const char *why = "";
    int crowd_ok = crowd(0, &why);
    ok(crowd_ok, "3 producers and 2 consumers move 18,000 items of 8 B-300 KiB, each once%s%s",
       crowd_ok ? "" : ": ", crowd_ok ? "" : why);
    crowd_ok = crowd(4, &why);
    ok(crowd_ok, "the same through a queue that holds at most 4%s%s", crowd_ok ? "" : ": ", crowd_ok ? "" : why);
    test_fill();
    return done_testing();
}
