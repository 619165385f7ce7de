/* SPDX-License-Identifier: MIT */
/* test_shdict.c - the dict and list in shared memory (shdict.c), from C:
 * every operation, many processes, deaths in the middle of changes,
 * growth and giving memory back, many objects, attaching by descriptor;
 * and the named blocks of shmem.c.  Built with LUAMP_TEST_HOOKS
 * (shd_test_kill_at). */
#include "ctap.h"
#include "../src/shdict.h"
#include "../src/shmem.h"
#include "../src/luamp.h"
#include "../src/sys.h"

#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* a string key or value: its bytes and length */
#define S(x) (x), strlen(x)

static luamp_buf buf;

/* The value of key k as a string ("" if missing: then *st says so). */
static int dget_is(shdict *d, const char *k, const char *want)
{
    int r = shdict_get(d, S(k), &buf);
    return r == SHD_OK && buf.len == strlen(want) && (buf.len == 0 || memcmp(buf.data, want, buf.len) == 0);
}

static int lget_is(shlist *l, uint64_t i, const char *want)
{
    int r = shlist_get(l, i, &buf);
    return r == SHD_OK && buf.len == strlen(want) && (buf.len == 0 || memcmp(buf.data, want, buf.len) == 0);
}

static uint64_t dcount(shdict *d)
{
    uint64_t n = UINT64_MAX;
    shdict_count(d, &n);
    return n;
}

static uint64_t llen(shlist *l)
{
    uint64_t n = UINT64_MAX;
    shlist_len(l, &n);
    return n;
}

static const char *dverify(shdict *d)
{
    const char *why = shdict_verify(d);
    if (why)
        diag("verify: %s", why);
    return why;
}

static const char *lverify(shlist *l)
{
    const char *why = shlist_verify(l);
    if (why)
        diag("verify: %s", why);
    return why;
}

/* Fills p with n bytes that depend on seed. */
static void fill(char *p, size_t n, unsigned seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (char)x;
    }
}

static int count_visit(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
    (void)k, (void)v;
    uint64_t *sum = arg;
    sum[0]++;
    sum[1] += kl + vl;
    return 0;
}

static void test_dict_ops(void)
{
    shdict *d = shdict_create();
    ok(d != NULL, "a dict is created");
    if (!d)
        return;
    ok(shdict_get(d, S("a"), &buf) == SHD_MISSING, "get of a missing key says so");
    ok(shdict_contains(d, S("a")) == SHD_MISSING, "contains: a missing key is not there");
    ok(shdict_delete(d, S("a"), NULL) == SHD_MISSING, "delete of a missing key says so");
    ok(dcount(d) == 0, "a new dict counts 0 keys");
    ok(shdict_set(d, S("a"), S("one")) == SHD_OK && dget_is(d, "a", "one"), "set, then get gives the value");
    ok(shdict_contains(d, S("a")) == SHD_OK, "contains: the key is there");
    ok(shdict_set(d, S("b"), S("two")) == SHD_OK && dcount(d) == 2, "a second key counts 2");
    ok(shdict_set(d, S("a"), S("a much longer value than before, past one grain")) == SHD_OK
       && dget_is(d, "a", "a much longer value than before, past one grain") && dcount(d) == 2,
       "replacing with a bigger value keeps the count");
    ok(shdict_set(d, S("a"), S("1")) == SHD_OK && dget_is(d, "a", "1"), "replacing with a smaller value");
    ok(shdict_set(d, S("e"), "", 0) == SHD_OK && dget_is(d, "e", ""), "an empty value");
    ok(shdict_set(d, "", 0, S("empty key")) == SHD_OK && shdict_get(d, "", 0, &buf) == SHD_OK
       && buf.len == 9, "an empty key");

    /* keys that differ after a NUL byte, or by one */
    const char k1[] = "x\0y", k2[] = "x\0z", k3[] = "x";
    shdict_set(d, k1, 3, S("k1"));
    shdict_set(d, k2, 3, S("k2"));
    shdict_set(d, k3, 1, S("k3"));
    int good = shdict_get(d, k1, 3, &buf) == SHD_OK && buf.len == 2 && memcmp(buf.data, "k1", 2) == 0;
    good &= shdict_get(d, k2, 3, &buf) == SHD_OK && buf.len == 2 && memcmp(buf.data, "k2", 2) == 0;
    good &= shdict_get(d, k3, 1, &buf) == SHD_OK && buf.len == 2 && memcmp(buf.data, "k3", 2) == 0;
    good &= shdict_get(d, "x\0", 2, &buf) == SHD_MISSING;
    ok(good, "binary keys with NUL bytes are told apart by every byte and by length");
    const char v0[] = "a\0b\0";
    ok(shdict_set(d, S("bin"), v0, 5) == SHD_OK && shdict_get(d, S("bin"), &buf) == SHD_OK
       && buf.len == 5 && memcmp(buf.data, v0, 5) == 0, "a value with NUL bytes comes back whole");

    ok(shdict_delete(d, S("b"), &buf) == SHD_OK && buf.len == 3 && memcmp(buf.data, "two", 3) == 0,
       "delete hands back the value it removes");
    ok(shdict_get(d, S("b"), &buf) == SHD_MISSING && dcount(d) == 7, "and the key is gone");
    ok(dverify(d) == NULL, "the dict is consistent");

    uint64_t sum[2] = { 0, 0 };
    ok(shdict_foreach(d, count_visit, sum) == SHD_OK && sum[0] == 7, "foreach visits every entry");
    uint64_t n = 0;
    ok(shdict_snapshot(d, SHD_KEYS | SHD_VALUES, &buf, &n) == SHD_OK && n == 7, "a snapshot holds 7 entries");
    size_t pos = 0, kl, vl, seen = 0;
    const char *k, *v;
    good = 1;
    luamp_buf one;
    luamp_buf_init(&one);
    while (shd_next(&buf, &pos, &k, &kl, &v, &vl)) {
        seen++;
        good &= shdict_get(d, k, kl, &one) == SHD_OK && one.len == vl && (vl == 0 || memcmp(one.data, v, vl) == 0);
    }
    ok(good && seen == 7, "each entry of the snapshot is the key's value");
    ok(shdict_snapshot(d, SHD_KEYS, &buf, &n) == SHD_OK && n == 7, "a snapshot of the keys alone");
    pos = 0;
    good = 1;
    while (shd_next(&buf, &pos, &k, &kl, &v, &vl))
        good &= vl == 0 && shdict_contains(d, k, kl) == SHD_OK;
    ok(good, "holds the keys and no value");

    /* the lock */
    const void *pv;
    size_t pl;
    ok(shdict_peek(d, S("a"), &pv, &pl) == SHD_ERROR && errno == EPERM, "peek without the lock is refused");
    ok(shdict_unlock(d) == SHD_ERROR && errno == EPERM, "unlock without the lock is refused");
    ok(shdict_lock(d, -1) == SHD_OK && shdict_lock(d, -1) == SHD_OK, "the lock is taken twice by its holder");
    ok(shdict_peek(d, S("a"), &pv, &pl) == SHD_OK && pl == 1 && memcmp(pv, "1", 1) == 0,
       "peek under the lock sees the value in place");
    ok(shdict_set(d, S("a"), S("2")) == SHD_OK && dget_is(d, "a", "2"), "operations under the lock take it again");
    pid_t pid = fork();
    if (pid == 0)
        _exit(shdict_lock(d, luamp_now() + 0.05) == SHD_TIMEOUT ? 0 : 1);
    int st;
    ok(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
       "another process cannot take it meanwhile (a timeout)");
    ok(shdict_unlock(d) == SHD_OK && shdict_unlock(d) == SHD_OK && shdict_unlock(d) == SHD_ERROR,
       "two unlocks free it, a third is refused");
    pid = fork();
    if (pid == 0)
        _exit(shdict_lock(d, 0) == SHD_OK ? 0 : 1);
    ok(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "then another process takes it");

    ok(shdict_clear(d) == SHD_OK && dcount(d) == 0 && shdict_get(d, S("a"), &buf) == SHD_MISSING,
       "clear empties the dict");
    ok(shdict_set(d, S("again"), S("yes")) == SHD_OK && dget_is(d, "again", "yes"), "which works on");
    ok(dverify(d) == NULL, "and is consistent");
    luamp_buf_free(&one);
    shdict_close(d);
}

static void test_list_ops(void)
{
    shlist *l = shlist_create();
    ok(l != NULL, "a list is created");
    if (!l)
        return;
    ok(llen(l) == 0 && shlist_get(l, 0, &buf) == SHD_RANGE, "a new list is empty: get(0) is out of range");
    ok(shlist_set(l, 0, S("x")) == SHD_RANGE && shlist_remove(l, 0, NULL) == SHD_RANGE,
       "set and remove past the end are out of range");
    ok(shlist_insert(l, 1, S("x")) == SHD_RANGE, "insert past the end is out of range");
    ok(shlist_append(l, S("b")) == SHD_OK && shlist_append(l, S("d")) == SHD_OK && llen(l) == 2,
       "append adds at the end");
    ok(shlist_insert(l, 0, S("a")) == SHD_OK && shlist_insert(l, 2, S("c")) == SHD_OK
       && shlist_insert(l, 4, S("e")) == SHD_OK && llen(l) == 5, "insert at the front, in the middle, at the end");
    ok(lget_is(l, 0, "a") && lget_is(l, 1, "b") && lget_is(l, 2, "c") && lget_is(l, 3, "d") && lget_is(l, 4, "e"),
       "the elements are in order");
    ok(shlist_get(l, 5, &buf) == SHD_RANGE, "get past the end is out of range");
    ok(shlist_set(l, 1, S("a bigger b than the b before")) == SHD_OK && lget_is(l, 1, "a bigger b than the b before")
       && shlist_set(l, 1, S("B")) == SHD_OK && lget_is(l, 1, "B"), "set replaces with bigger and smaller values");
    ok(shlist_remove(l, 2, &buf) == SHD_OK && buf.len == 1 && buf.data[0] == 'c' && llen(l) == 4
       && lget_is(l, 2, "d"), "remove in the middle hands the element back and moves the rest down");
    ok(shlist_remove(l, 3, &buf) == SHD_OK && buf.data[0] == 'e' && llen(l) == 3, "remove at the end");
    ok(shlist_remove(l, 0, NULL) == SHD_OK && lget_is(l, 0, "B") && lget_is(l, 1, "d"), "remove at the front");
    uint64_t n = 0;
    ok(shlist_snapshot(l, &buf, &n) == SHD_OK && n == 2, "a snapshot holds 2 elements");
    size_t pos = 0, kl, vl;
    const char *k, *v;
    int good = shd_next(&buf, &pos, &k, &kl, &v, &vl) && kl == 0 && vl == 1 && v[0] == 'B';
    good &= shd_next(&buf, &pos, &k, &kl, &v, &vl) && vl == 1 && v[0] == 'd';
    good &= !shd_next(&buf, &pos, &k, &kl, &v, &vl);
    ok(good, "in order");
    const void *pv;
    size_t pl;
    ok(shlist_peek(l, 0, &pv, &pl) == SHD_ERROR && errno == EPERM, "peek without the lock is refused");
    ok(shlist_lock(l, -1) == SHD_OK && shlist_peek(l, 1, &pv, &pl) == SHD_OK && pl == 1
       && shlist_peek(l, 2, &pv, &pl) == SHD_RANGE && shlist_unlock(l) == SHD_OK, "peek under the lock");
    ok(shlist_clear(l) == SHD_OK && llen(l) == 0, "clear empties the list");
    ok(lverify(l) == NULL, "the list is consistent");

    /* against a model: many inserts and removes anywhere, values of many sizes */
    enum { MAXN = 600 };
    static char *model[MAXN];
    static size_t mlen[MAXN];
    size_t m = 0;
    srand(7);
    good = 1;
    char tmp[5000];
    for (int op = 0; op < 6000 && good; op++) {
        int what = rand() % 10;
        size_t vlen = (size_t)(rand() % 4) == 0 ? (size_t)(rand() % 5000) : (size_t)(rand() % 40);
        fill(tmp, vlen, (unsigned)op);
        if ((what < 5 && m < MAXN) || m == 0) {
            size_t at = (size_t)rand() % (m + 1);
            good &= shlist_insert(l, at, tmp, vlen) == SHD_OK;
            memmove(model + at + 1, model + at, (m - at) * sizeof *model);
            memmove(mlen + at + 1, mlen + at, (m - at) * sizeof *mlen);
            model[at] = malloc(vlen + 1);
            memcpy(model[at], tmp, vlen);
            mlen[at] = vlen;
            m++;
        } else if (what < 8) {
            size_t at = (size_t)rand() % m;
            good &= shlist_remove(l, at, &buf) == SHD_OK && buf.len == mlen[at] && (mlen[at] == 0 || memcmp(buf.data, model[at], mlen[at]) == 0);
            free(model[at]);
            memmove(model + at, model + at + 1, (m - at - 1) * sizeof *model);
            memmove(mlen + at, mlen + at + 1, (m - at - 1) * sizeof *mlen);
            m--;
        } else {
            size_t at = (size_t)rand() % m;
            good &= shlist_set(l, at, tmp, vlen) == SHD_OK;
            free(model[at]);
            model[at] = malloc(vlen + 1);
            memcpy(model[at], tmp, vlen);
            mlen[at] = vlen;
        }
        if (op % 500 == 0 && lverify(l) != NULL)
            good = 0;
    }
    good &= llen(l) == m;
    for (size_t i = 0; i < m && good; i++)
        good &= shlist_get(l, i, &buf) == SHD_OK && buf.len == mlen[i] && (mlen[i] == 0 || memcmp(buf.data, model[i], mlen[i]) == 0);
    ok(good, "6,000 random inserts, removes and sets anywhere agree with a model");
    ok(lverify(l) == NULL, "and leave the list consistent");
    while (m > 0)
        free(model[--m]);
    shlist_close(l);
}

/* Random sets and deletes on a few hundred keys with values from 0 bytes
 * to 300 KiB, against a model: the allocator's splitting, merging and
 * giving back, and the table's tombstones, growing and shrinking. */
static void test_dict_model(void)
{
    enum { NK = 300 };
    static char *model[NK];
    static size_t mlen[NK];
    shdict *d = shdict_create();
    if (!d)
        return;
    static char tmp[300 << 10];
    char key[32];
    srand(11);
    int good = 1;
    for (int op = 0; op < 20000 && good; op++) {
        int kn = rand() % NK;
        snprintf(key, sizeof key, "key %d", kn);
        int what = rand() % 10;
        if (what < 6) {
            size_t vlen = rand() % 50 == 0 ? sizeof tmp - (size_t)(rand() % 1000)
                          : rand() % 5 == 0 ? (size_t)(rand() % 3000) : (size_t)(rand() % 60);
            fill(tmp, vlen, (unsigned)op);
            good &= shdict_set(d, S(key), tmp, vlen) == SHD_OK;
            free(model[kn]);
            model[kn] = malloc(vlen + 1);
            memcpy(model[kn], tmp, vlen);
            mlen[kn] = vlen;
        } else if (what < 9) {
            int r = shdict_delete(d, S(key), NULL);
            good &= r == (model[kn] ? SHD_OK : SHD_MISSING);
            free(model[kn]);
            model[kn] = NULL;
        } else {
            int r = shdict_get(d, S(key), &buf);
            good &= model[kn] ? r == SHD_OK && buf.len == mlen[kn] && memcmp(buf.data, model[kn], buf.len) == 0
                              : r == SHD_MISSING;
        }
        if (op % 1000 == 0 && dverify(d) != NULL)
            good = 0;
    }
    uint64_t n = 0;
    for (int i = 0; i < NK; i++)
        n += model[i] != NULL;
    ok(good && dcount(d) == n, "20,000 random sets, deletes and gets of values from 0 B to 300 KiB agree with a model");
    ok(dverify(d) == NULL, "and leave the dict consistent");
    for (int i = 0; i < NK; i++)
        free(model[i]);
    shdict_close(d);
}

/* 4 processes x 10,000 increments of one key, each a get and a set under
 * the lock. */
static void test_increments(void)
{
    shdict *d = shdict_create();
    if (!d)
        return;
    uint64_t zero = 0;
    shdict_set(d, S("n"), &zero, sizeof zero);
    pid_t pids[4];
    for (int p = 0; p < 4; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            for (int i = 0; i < 10000; i++) {
                const void *v;
                size_t vl;
                uint64_t x;
                if (shdict_lock(d, -1) != SHD_OK || shdict_peek(d, S("n"), &v, &vl) != SHD_OK)
                    _exit(1);
                memcpy(&x, v, sizeof x);
                x++;
                if (shdict_set(d, S("n"), &x, sizeof x) != SHD_OK || shdict_unlock(d) != SHD_OK)
                    _exit(1);
            }
            _exit(0);
        }
    }
    int good = 1;
    for (int p = 0; p < 4; p++) {
        int st;
        good &= waitpid(pids[p], &st, 0) == pids[p] && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    uint64_t x = 0;
    good &= shdict_get(d, S("n"), &buf) == SHD_OK && buf.len == 8;
    memcpy(&x, buf.data, 8);
    ok(good && x == 40000, "4 processes x 10,000 locked read-modify-write increments: exactly 40,000 (%llu)",
       (unsigned long long)x);
    ok(dverify(d) == NULL, "the dict is consistent after");
    shdict_close(d);
}

/* A SIGINT to a script waiting for the lock: the call says so.  The
 * signal comes before the wait, as one that comes between two sleeps of
 * the wait does, where no system call is cut short to tell. */
static void test_interrupted(void)
{
    shdict *d = shdict_create();
    if (!d)
        return;
    shdict_set(d, S("k"), S("v"));
    shdict_lock(d, -1);
    pid_t pid = fork();
    if (pid == 0) {
        luamp_catch_interrupts(luaL_newstate());
        raise(SIGINT);
        _exit(shdict_get(d, S("k"), &buf) == SHD_INTERRUPTED ? 0 : 1);
    }
    /* (a guard against a wait that never ends, not a measure of time) */
    int st = 0, waited = 0;
    pid_t r;
    while ((r = waitpid(pid, &st, WNOHANG)) == 0 && waited++ < 1000) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    ok(r == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
       "a SIGINT makes a get that waits for the lock return SHD_INTERRUPTED");
    shdict_unlock(d);
    ok(dget_is(d, "k", "v"), "the dict is as it was");
    shdict_close(d);
}

/* ---- deaths in the middle of changes ------------------------------------ */

typedef void (*change_fn)(void *obj);

/* Makes a child that stops at kill point `p` (its nth passage) while
 * doing fn, and waits for it: whether it died there, by SIGKILL. */
static int die_at(enum shd_kill_point p, unsigned nth, change_fn fn, void *obj)
{
    pid_t pid = fork();
    if (pid == 0) {
        shd_test_kill_at(p, nth);
        fn(obj);
        _exit(0);
    }
    int st;
    return waitpid(pid, &st, 0) == pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
}

static uint64_t repairs(shdict *d)
{
    shd_stats st;
    return shdict_stats(d, &st) == SHD_OK ? st.repairs : UINT64_MAX;
}

static char big_old[3000], big_new[5000];

static void replace_k(void *d)
{
    shdict_set(d, S("k"), big_new, sizeof big_new);
}

static int k_is(shdict *d, const char *v, size_t n)
{
    return shdict_get(d, S("k"), &buf) == SHD_OK && buf.len == n && memcmp(buf.data, v, n) == 0;
}

/* A dict with k = big_old between other keys, so that freeing k's old
 * block merges it with free neighbours. */
static shdict *dict_with_k(void)
{
    shdict *d = shdict_create();
    if (!d)
        return NULL;
    char key[32];
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof key, "before %d", i);
        shdict_set(d, S(key), S("some value"));
    }
    shdict_set(d, S("k"), big_old, sizeof big_old);
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof key, "after %d", i);
        shdict_set(d, S(key), S("some value"));
    }
    for (int i = 0; i < 40; i += 2) {
        snprintf(key, sizeof key, "before %d", i);
        shdict_delete(d, S(key), NULL);
        snprintf(key, sizeof key, "after %d", i);
        shdict_delete(d, S(key), NULL);
    }
    return d;
}

/* The dict still works: more keys go in and come out. */
static int still_usable(shdict *d)
{
    char key[32];
    int good = 1;
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "new %d", i);
        good &= shdict_set(d, S(key), S(key)) == SHD_OK;
    }
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "new %d", i);
        good &= dget_is(d, key, key);
    }
    return good && dverify(d) == NULL;
}

/* dict_with_k's other keys are all there. */
static int others_there(shdict *d)
{
    char key[32];
    int good = 1;
    for (int i = 1; i < 40; i += 2) {
        snprintf(key, sizeof key, "before %d", i);
        good &= dget_is(d, key, "some value");
        snprintf(key, sizeof key, "after %d", i);
        good &= dget_is(d, key, "some value");
    }
    return good && dcount(d) == 41;
}

static void test_kill_replace(void)
{
    fill(big_old, sizeof big_old, 1);
    fill(big_new, sizeof big_new, 2);
    static const struct {
        enum shd_kill_point p;
        const char *where;
        int is_new;
    } cases[] = {
        { SHD_KILL_WRITTEN, "after writing the new block, before publishing it", 0 },
        { SHD_KILL_PUBLISHED, "after publishing, before freeing the old block", 1 },
        { SHD_KILL_FREEING, "while freeing the old block (merged, not yet listed)", 1 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        shdict *d = dict_with_k();
        if (!d)
            return;
        uint64_t before = repairs(d);
        ok(die_at(cases[c].p, 1, replace_k, d), "a child replacing a value is killed %s", cases[c].where);
        ok(k_is(d, cases[c].is_new ? big_new : big_old, cases[c].is_new ? sizeof big_new : sizeof big_old)
           && others_there(d), "the lock is taken over and the key holds the %s value, whole; the others theirs",
           cases[c].is_new ? "new" : "old");
        ok(repairs(d) == before + 1, "one repair was made");
        ok(dverify(d) == NULL, "the dict is consistent, with nothing leaked");
        ok(still_usable(d), "and works on");
        shdict_close(d);
    }
}

static char v500[500];

static void split_free_block(void *d)
{
    shdict_set(d, S("small"), v500, sizeof v500);
}

static void insert_many(void *d)
{
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "many %d", i);
        shdict_set(d, S(key), S(key));
    }
}

static char *huge;
#define HUGE_LEN ((size_t)3 << 20)

static void set_huge(void *d)
{
    shdict_set(d, S("huge"), huge, HUGE_LEN);
}

static void delete_last(void *d)
{
    shdict_delete(d, S("last"), NULL);
}

static void hold_lock(void *d)
{
    shdict_lock(d, -1);
    kill(getpid(), SIGKILL);
}

static void test_kill_alloc(void)
{
    /* a new key whose block is split off a free block */
    shdict *d = dict_with_k();
    if (!d)
        return;
    shdict_set(d, S("k"), S("short now"));   /* k's 3000 bytes are free */
    ok(die_at(SHD_KILL_SPLIT, 1, split_free_block, d), "a child is killed while splitting a free block");
    ok(shdict_get(d, S("small"), &buf) == SHD_MISSING && dget_is(d, "k", "short now") && others_there(d),
       "the key it was adding is not there, the others are");
    ok(dverify(d) == NULL && still_usable(d), "the dict is consistent, nothing leaked, and works on");
    shdict_close(d);

    /* in the middle of a rehash into a bigger table */
    d = shdict_create();
    if (!d)
        return;
    shdict_set(d, S("first"), S("1"));
    ok(die_at(SHD_KILL_REHASH, 3, insert_many, d), "a child is killed half way through copying a hash table");
    char key[32];
    int good = dget_is(d, "first", "1");
    uint64_t n = dcount(d);
    for (uint64_t i = 0; i + 1 < n; i++) {
        snprintf(key, sizeof key, "many %llu", (unsigned long long)i);
        good &= dget_is(d, key, key);
    }
    snprintf(key, sizeof key, "many %llu", (unsigned long long)n - 1);
    ok(good && n > 64 && shdict_contains(d, S(key)) == SHD_MISSING,
       "every key added before is there (%llu), the one being added not", (unsigned long long)n);
    ok(dverify(d) == NULL, "the dict is consistent, the half-made table freed");
    shdict_close(d);

    /* while the file grows */
    huge = malloc(HUGE_LEN);
    d = shdict_create();
    if (!d || !huge)
        return;
    shdict_set(d, S("a"), S("b"));
    ok(die_at(SHD_KILL_GROWN, 1, set_huge, d), "a child is killed after lengthening the file, before saying so");
    shd_stats st;
    ok(shdict_get(d, S("huge"), &buf) == SHD_MISSING && dget_is(d, "a", "b"), "the value it was adding is not there");
    ok(shdict_stats(d, &st) == SHD_OK && st.file_bytes < HUGE_LEN, "the file is cut back (%llu bytes)",
       (unsigned long long)st.file_bytes);
    fill(huge, HUGE_LEN, 5);
    ok(shdict_set(d, S("huge"), huge, HUGE_LEN) == SHD_OK && shdict_get(d, S("huge"), &buf) == SHD_OK
       && buf.len == HUGE_LEN && memcmp(buf.data, huge, HUGE_LEN) == 0, "then 3 MiB go in and come back");
    ok(dverify(d) == NULL, "the dict is consistent");

    /* emptied: the root gone, the heap not yet reset */
    shdict_clear(d);
    shdict_set(d, S("last"), huge, HUGE_LEN);
    ok(die_at(SHD_KILL_EMPTIED, 1, delete_last, d), "a child is killed deleting the last key, after emptying the root");
    ok(dcount(d) == 0 && shdict_stats(d, &st) == SHD_OK && st.file_bytes == 64 << 10 && st.heap_bytes == 4096,
       "the dict is empty, its heap reset and its file back to 64 KiB");
    ok(dverify(d) == NULL && still_usable(d) , "consistent, and it works on");

    /* holding the lock, no change under way: taken over, nothing to repair */
    uint64_t before = repairs(d);
    ok(die_at(SHD_KILL_NONE, 0, hold_lock, d), "a child dies holding the lock between changes");
    ok(dget_is(d, "new 5", "new 5") && repairs(d) == before, "the lock is taken over, without a repair");
    shdict_close(d);
    free(huge);
}

static void list_insert_mid(void *l)
{
    shlist_insert(l, 2, S("inserted"));
}

static void list_append(void *l)
{
    shlist_append(l, S("appended"));
}

static void list_remove_mid(void *l)
{
    shlist_remove(l, 1, NULL);
}

static void list_set_mid(void *l)
{
    shlist_set(l, 1, S("replaced"));
}

/* The list holds exactly these strings. */
static int list_is(shlist *l, const char *const *want, size_t n)
{
    int good = llen(l) == n;
    for (size_t i = 0; good && i < n; i++)
        good &= lget_is(l, i, want[i]);
    return good;
}

static void test_kill_list(void)
{
    static const char *const base[] = { "a", "b", "c", "d" };
    static const char *const ins[] = { "a", "b", "inserted", "c", "d" };
    static const char *const rem[] = { "a", "c", "d" };
    static const char *const set[] = { "a", "replaced", "c", "d" };
    static const struct {
        change_fn fn;
        enum shd_kill_point p;
        const char *what;
        const char *const *after;
        size_t n;
    } cases[] = {
        { list_insert_mid, SHD_KILL_WRITTEN, "inserting in the middle, before publishing", base, 4 },
        { list_insert_mid, SHD_KILL_PUBLISHED, "inserting in the middle, after publishing", ins, 5 },
        { list_append, SHD_KILL_WRITTEN, "appending, before publishing the length", base, 4 },
        { list_remove_mid, SHD_KILL_WRITTEN, "removing in the middle, before publishing", base, 4 },
        { list_remove_mid, SHD_KILL_PUBLISHED, "removing in the middle, after publishing", rem, 3 },
        { list_set_mid, SHD_KILL_WRITTEN, "replacing an element, before publishing", base, 4 },
        { list_set_mid, SHD_KILL_PUBLISHED, "replacing an element, after publishing", set, 4 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        shlist *l = shlist_create();
        if (!l)
            return;
        for (int i = 0; i < 4; i++)
            shlist_append(l, S(base[i]));
        ok(die_at(cases[c].p, 1, cases[c].fn, l), "list: a child is killed %s", cases[c].what);
        ok(list_is(l, cases[c].after, cases[c].n), "the list is the %s one, whole",
           cases[c].after == base ? "old" : "new");
        ok(lverify(l) == NULL && shlist_append(l, S("more")) == SHD_OK && lget_is(l, cases[c].n, "more")
           && lverify(l) == NULL, "consistent, nothing leaked, and it works on");
        shlist_close(l);
    }
}

/* Children killed at random moments in loops of changes: afterwards every
 * value is one that was written, whole, and nothing leaked.  The values
 * are made before, so that the loops spend their time in changes: 4 for
 * each of 100 keys, each a tag and the key's number, then bytes that
 * follow from both. */
enum { CHURN_KEYS = 100, CHURN_VALS = 4 };
static char churn_val[CHURN_KEYS][CHURN_VALS][2000];
static size_t churn_len[CHURN_KEYS][CHURN_VALS];

static void make_churn_values(void)
{
    for (int kn = 0; kn < CHURN_KEYS; kn++) {
        for (int j = 0; j < CHURN_VALS; j++) {
            char *v = churn_val[kn][j];
            size_t n = 8 + (size_t)(rand() % 3 ? rand() % 40 : rand() % 1900);
            unsigned tag = (unsigned)rand();
            memcpy(v, &tag, 4);
            memcpy(v + 4, &kn, 4);
            fill(v + 8, n - 8, tag ^ (unsigned)kn);
            churn_len[kn][j] = n;
        }
    }
}

static void churn(shdict *d, shlist *l, unsigned seed)
{
    char key[32];
    uint64_t len = llen(l);
    srand(seed);
    for (;;) {
        int kn = rand() % CHURN_KEYS, j = rand() % CHURN_VALS;
        snprintf(key, sizeof key, "k%d", kn);
        const char *val = churn_val[kn][j];
        size_t n = churn_len[kn][j];
        switch (rand() % 6) {
        case 0: case 1: case 2: shdict_set(d, S(key), val, n); break;
        case 3: shdict_delete(d, S(key), NULL); break;
        case 4: shlist_insert(l, (uint64_t)rand() % (len + 1), val, n); len++; break;
        case 5: if (len > 0) shlist_remove(l, (uint64_t)rand() % len--, NULL); break;
        }
    }
}

/* Whether v is a whole value churn wrote (for key number kn, or any). */
static int value_whole(const char *v, size_t n, int kn)
{
    static char want[2000];
    if (n < 8 || n > sizeof want)
        return 0;
    unsigned tag;
    int k;
    memcpy(&tag, v, 4);
    memcpy(&k, v + 4, 4);
    fill(want, n - 8, tag ^ (unsigned)k);
    return (kn < 0 || k == kn) && memcmp(v + 8, want, n - 8) == 0;
}

static int list_elem_whole(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
    (void)k, (void)kl;
    if (!value_whole(v, vl, -1))
        *(int *)arg = 0;
    return 0;
}

static void test_random_kills(void)
{
    shdict *d = shdict_create();
    shlist *l = shlist_create();
    if (!d || !l)
        return;
    /* (SHDICT_KILLS=n runs it n times instead, for a longer soak) */
    int good = 1, runs = getenv("SHDICT_KILLS") ? atoi(getenv("SHDICT_KILLS")) : 100;
    make_churn_values();
    const char *why = NULL;
    for (int run = 0; run < runs && good; run++) {
        pid_t pid = fork();
        if (pid == 0) {
            churn(d, l, (unsigned)run);
            _exit(0);
        }
        struct timespec ts = { 0, (long)(rand() % 3000 + 200) * 1000 };
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        char key[32];
        for (int kn = 0; kn < 100 && good; kn++) {
            snprintf(key, sizeof key, "k%d", kn);
            int r = shdict_get(d, S(key), &buf);
            good &= r == SHD_MISSING || (r == SHD_OK && value_whole(buf.data, buf.len, kn));
        }
        shlist_foreach(l, list_elem_whole, &good);
        if ((why = shdict_verify(d)) != NULL || (why = shlist_verify(l)) != NULL)
            good = 0;
    }
    if (why)
        diag("verify: %s", why);
    shd_stats st;
    shdict_stats(d, &st);
    ok(good, "%d children killed at random moments of changes to a dict and a list: every value whole,"
       " nothing leaked"
       " (%llu repairs)", runs, (unsigned long long)st.repairs);
    shdict_close(d);
    shlist_close(l);
}

/* ---- growth and giving memory back ---------------------------------------- */

static void test_growth(void)
{
    shdict *d = shdict_create();
    if (!d)
        return;
    char key[32];
    int good = 1;
    enum { N = 1000000 };
    for (int i = 0; i < N && good; i++) {
        snprintf(key, sizeof key, "key %d", i);
        good &= shdict_set(d, S(key), &i, sizeof i) == SHD_OK;
    }
    shd_stats full;
    shdict_stats(d, &full);
    ok(good && full.count == N, "1,000,000 keys go in");
    for (int i = 0; i < N && good; i += 997) {
        snprintf(key, sizeof key, "key %d", i);
        good &= shdict_get(d, S(key), &buf) == SHD_OK && buf.len == sizeof i && memcmp(buf.data, &i, sizeof i) == 0;
    }
    ok(good, "and come back out");
    ok(dverify(d) == NULL, "the dict is consistent at 1,000,000 keys (%llu MiB of file, %llu MiB in memory)",
       (unsigned long long)full.file_bytes >> 20, (unsigned long long)full.resident_bytes >> 20);
    for (int i = 0; i < N && good; i++) {
        snprintf(key, sizeof key, "key %d", i);
        good &= shdict_delete(d, S(key), NULL) == SHD_OK;
        if (i == N / 2) {
            shd_stats half;
            shdict_stats(d, &half);
            ok(half.resident_bytes < full.resident_bytes * 3 / 4,
               "half deleted: memory is given back as it goes (%llu MiB of %llu)",
               (unsigned long long)half.resident_bytes >> 20, (unsigned long long)full.resident_bytes >> 20);
        }
    }
    shd_stats empty;
    shdict_stats(d, &empty);
    ok(good && empty.count == 0, "and all are deleted");
    ok(empty.file_bytes == 64 << 10 && empty.resident_bytes <= 64 << 10,
       "the empty dict is small again: %llu KiB of file, %llu KiB in memory",
       (unsigned long long)empty.file_bytes >> 10, (unsigned long long)empty.resident_bytes >> 10);
    ok(dverify(d) == NULL, "and consistent");

    /* 100 MiB in one value */
    size_t big = (size_t)100 << 20;
    char *v = malloc(big);
    if (!v)
        return;
    fill(v, big, 9);
    shdict_set(d, S("small"), S("stays"));
    ok(shdict_set(d, S("big"), v, big) == SHD_OK, "a value of 100 MiB is set");
    ok(shdict_get(d, S("big"), &buf) == SHD_OK && buf.len == big && memcmp(buf.data, v, big) == 0,
       "and comes back whole");
    shd_stats st;
    shdict_stats(d, &st);
    ok(st.resident_bytes >= big, "it is in the object's memory (%llu MiB)", (unsigned long long)st.resident_bytes >> 20);
    ok(shdict_delete(d, S("big"), NULL) == SHD_OK && shdict_stats(d, &st) == SHD_OK
       && st.resident_bytes < (1 << 20) && st.file_bytes < (1 << 20),
       "deleted, its memory is given back and the file shrinks (%llu KiB in memory, %llu KiB of file)",
       (unsigned long long)st.resident_bytes >> 10, (unsigned long long)st.file_bytes >> 10);
    shdict_set(d, S("big"), v, big);
    shdict_set(d, S("after"), S("keeps the big one from the top"));
    ok(shdict_set(d, S("big"), S("small now")) == SHD_OK && shdict_stats(d, &st) == SHD_OK
       && st.resident_bytes < (1 << 20),
       "set again below another key, then replaced by a small value: its pages are given back from the"
       " middle of the file (%llu KiB in memory)", (unsigned long long)st.resident_bytes >> 10);
    ok(dget_is(d, "small", "stays") && dget_is(d, "after", "keeps the big one from the top")
       && dget_is(d, "big", "small now") && dverify(d) == NULL, "the other keys stay, the dict consistent");
    ok(shdict_delete(d, S("after"), NULL) == SHD_OK && shdict_delete(d, S("big"), NULL) == SHD_OK
       && shdict_stats(d, &st) == SHD_OK && st.file_bytes < (1 << 20),
       "once the keys after it go, the file shrinks (%llu KiB)", (unsigned long long)st.file_bytes >> 10);
    free(v);
    buf.len = 0;
    luamp_buf_free(&buf);
    luamp_buf_init(&buf);
    shdict_close(d);
}

/* ---- many objects, and attaching ----------------------------------------- */

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int n = 0, c;
    while ((c = getc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static int count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -1;
    int n = 0;
    while (readdir(dir))
        n++;
    closedir(dir);
    return n;
}

static void test_many_objects(void)
{
    int fds = count_fds(), maps = count_lines("/proc/self/maps");
    int good = 1;
    char v[1 << 16];
    memset(v, 'v', sizeof v);
    for (int i = 0; i < 10000 && good; i++) {
        if (i % 2) {
            shdict *d = shdict_create();
            good &= d != NULL && shdict_set(d, S("k"), v, i % 100 == 1 ? sizeof v : 10) == SHD_OK;
            shdict_close(d);
        } else {
            shlist *l = shlist_create();
            good &= l != NULL && shlist_append(l, v, i % 100 == 0 ? sizeof v : 10) == SHD_OK;
            shlist_close(l);
        }
    }
    int fds2 = count_fds(), maps2 = count_lines("/proc/self/maps");
    ok(good && fds2 == fds && maps2 == maps,
       "10,000 dicts and lists made, used and closed leave no descriptor (%d, %d) nor mapping (%d, %d)",
       fds, fds2, maps, maps2);
}

static int send_fd(int sock, int fd)
{
    char c = 'f';
    struct iovec iov = { &c, 1 };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    return sendmsg(sock, &m, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
    char c;
    struct iovec iov = { &c, 1 };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
    if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) != 1)
        return -1;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    if (!cm || cm->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
}

static int send_byte(int sock, char c)
{
    return write(sock, &c, 1) == 1 ? 0 : -1;
}

static char recv_byte(int sock)
{
    char c = 0;
    return read(sock, &c, 1) == 1 ? c : 0;
}

/* The child: started before the objects exist, it attaches what it
 * receives and checks what the parent wrote. */
static void attach_child(int sock)
{
    char key[32];
    shdict *d = shdict_attach(recv_fd(sock));
    shlist *l = shlist_attach(recv_fd(sock));
    if (!d || !l)
        _exit(1);
    if (!dget_is(d, "hello", "from the parent") || !lget_is(l, 0, "first"))
        _exit(2);
    send_byte(sock, 'r');
    if (recv_byte(sock) != 'g')     /* the parent made them grow */
        _exit(3);
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "grown %d", i);
        if (!dget_is(d, key, key))
            _exit(4);
    }
    if (llen(l) != 10001 || !lget_is(l, 10000, "last"))
        _exit(5);
    /* and it makes them grow for the parent */
    static char v[1 << 20];
    memset(v, 'c', sizeof v);
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof key, "child %d", i);
        if (shdict_set(d, S(key), v, sizeof v) != SHD_OK)
            _exit(6);
    }
    shdict_close(d);
    shlist_close(l);
    _exit(0);
}

static void test_attach(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        attach_child(sv[1]);
    }
    close(sv[1]);
    shdict *d = shdict_create();
    shlist *l = shlist_create();
    if (!d || !l)
        return;
    shdict_set(d, S("hello"), S("from the parent"));
    shlist_append(l, S("first"));
    send_fd(sv[0], shdict_fd(d));
    send_fd(sv[0], shlist_fd(l));
    ok(recv_byte(sv[0]) == 'r', "a process that received the descriptors attaches them and sees the data");
    char key[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "grown %d", i);
        shdict_set(d, S(key), S(key));
    }
    for (int i = 1; i < 10000; i++)
        shlist_append(l, S("middle"));
    shlist_append(l, S("last"));
    send_byte(sv[0], 'g');
    int st;
    ok(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
       "it follows the growth this process made (child status %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    static char v[1 << 20];
    memset(v, 'c', sizeof v);
    ok(shdict_get(d, S("child 7"), &buf) == SHD_OK && buf.len == sizeof v && memcmp(buf.data, v, sizeof v) == 0,
       "and this process follows the growth it made");
    ok(dverify(d) == NULL && lverify(l) == NULL, "both objects are consistent");

    errno = 0;
    ok(shdict_attach(shlist_fd(l)) == NULL && errno == EINVAL && shlist_attach(shdict_fd(d)) == NULL,
       "a list's descriptor is not a dict's, nor the other way round");
    ok(shdict_attach(sv[0]) == NULL && errno == EINVAL, "nor is a socket's");
    close(sv[0]);
    shdict_close(d);
    shlist_close(l);
}

/* ---- named blocks (shmem.c) ------------------------------------------------ */

/* Whether /dev/shm holds a file whose name starts with prefix. */
static int in_dev_shm(const char *prefix)
{
    DIR *dir = opendir("/dev/shm");
    if (!dir)
        return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(dir)) != NULL)
        found |= strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(dir);
    return found;
}

static void test_shmem(void)
{
    char name[64], longname[NAME_MAX + 2];
    snprintf(name, sizeof name, "luamp-test-%d", (int)getpid());
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ok(shmem_check_name("psm_1f2e") == 0 && shmem_check_name("/psm_1f2e") == 0, "a name, with a '/' in front or not");
    ok(shmem_check_name("") != 0 && shmem_check_name("/") != 0 && shmem_check_name("a/b") != 0
       && shmem_check_name(".") != 0 && shmem_check_name("..") != 0 && errno == EINVAL,
       "empty names, '.', '..' and names with a '/' inside are refused");
    ok(shmem_check_name(longname) != 0 && errno == ENAMETOOLONG && shmem_check_name(longname + 1) == 0,
       "a name is NAME_MAX bytes at most");
    ok(shmem_open(name, 0, 0) == NULL && errno == ENOENT, "opening a block that does not exist says so");
    ok(shmem_open(name, SHMEM_CREATE | SHMEM_EXCL, 0) == NULL && errno == EINVAL, "a new block of 0 bytes is refused");
    ok(shmem_open("a/b", SHMEM_CREATE, 10) == NULL && errno == EINVAL, "and so is a bad name");

    shmem *m = shmem_open(name, SHMEM_CREATE | SHMEM_EXCL, 1000);
    ok(m != NULL && shmem_size(m) == 1000 && shmem_owner(m) && strcmp(shmem_name(m), name) == 0,
       "a block of 1000 bytes is made under its name, and its maker owns it");
    if (!m)
        return;
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    ok(access(path, F_OK) == 0, "it is a file in /dev/shm");
    ok(shmem_open(name, SHMEM_CREATE | SHMEM_EXCL, 1000) == NULL && errno == EEXIST,
       "making it again, exclusively, is refused");
    char zero[1000] = { 0 }, got[1000];
    ok(shmem_read(m, 0, got, 1000) == 0 && memcmp(got, zero, 1000) == 0, "a new block is zeros");
    ok(shmem_write(m, 990, "0123456789", 10) == 0 && shmem_write(m, 0, "start", 5) == 0,
       "writes up to its last byte");
    ok(shmem_write(m, 991, "0123456789", 10) != 0 && errno == ERANGE && shmem_write(m, 1001, "", 0) != 0
       && shmem_write(m, SIZE_MAX, "x", 1) != 0, "writes past its end are refused");
    ok(shmem_read(m, 995, got, 6) != 0 && errno == ERANGE && shmem_read(m, 1000, got, 0) == 0,
       "and so are reads");

    pid_t pid = fork();
    if (pid == 0) {
        /* a process that did not inherit it opens it by its name */
        shmem_close(m);
        shmem *c = shmem_open(name, 0, 0);
        char b[10];
        if (!c || shmem_size(c) != 1000 || shmem_owner(c) || shmem_read(c, 990, b, 10) != 0
            || memcmp(b, "0123456789", 10) != 0)
            _exit(1);
        if (shmem_write(c, 500, "from the child", 14) != 0)
            _exit(2);
        shmem_close(c);
        _exit(0);
    }
    int st;
    ok(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
       "another process opens it by name, of its size, not its owner, and reads it");
    ok(shmem_read(m, 500, got, 14) == 0 && memcmp(got, "from the child", 14) == 0, "its writes are seen here");
    shmem *again = shmem_open(name, SHMEM_CREATE, 5);
    ok(again && shmem_size(again) == 1000 && !shmem_owner(again) && memcmp(shmem_data(again), "start", 5) == 0,
       "SHMEM_CREATE without SHMEM_EXCL opens the existing block whole");
    shmem_close(again);

    ok(shmem_unlink(m) == 0 && access(path, F_OK) != 0, "unlink removes the name");
    ok(shmem_open(name, 0, 0) == NULL && errno == ENOENT, "so it can no longer be opened");
    ok(memcmp(shmem_data(m), "start", 5) == 0, "while the memory stays for the views that have it");
    ok(shmem_unlink(m) != 0 && errno == ENOENT, "unlinking twice says it is gone");
    shmem_close(m);

    char made_up[64] = "";
    m = shmem_open(NULL, SHMEM_CREATE | SHMEM_EXCL, 4096);
    ok(m && strncmp(shmem_name(m), "luamp_", 6) == 0 && shmem_owner(m), "without a name, one is made up (%s)",
       m ? shmem_name(m) : "none");
    if (m) {
        snprintf(made_up, sizeof made_up, "%s", shmem_name(m));
        ok(shmem_unlink_name(made_up) == 0 && shmem_unlink_name(made_up) != 0 && errno == ENOENT,
           "a block is unlinked by its name alone");
        shmem_close(m);
    }
    ok(!in_dev_shm(name) && (made_up[0] == '\0' || !in_dev_shm(made_up)), "nothing is left in /dev/shm");
}

int main(void)
{
    luamp_buf_init(&buf);
    test_dict_ops();
    test_list_ops();
    test_dict_model();
    test_increments();
    test_interrupted();
    test_kill_replace();
    test_kill_alloc();
    test_kill_list();
    test_random_kills();
    test_growth();
    test_many_objects();
    test_attach();
    test_shmem();
    luamp_buf_free(&buf);
    return done_testing();
}
