/* SPDX-License-Identifier: MIT */
/*
 * shdict.c - the cost of the shared dict and list (src/shdict.c) from C:
 * nanoseconds per operation on small values from one process, and per
 * locked increment of one key from two processes at once.  What the Lua
 * layer's d[k] adds on top (encoding, the Lua call) is not measured here.
 *
 *   make && cc -O2 -Wall -Wextra -D_GNU_SOURCE -Isrc bench/shdict.c \
 *      .libs/libluamp.a $(pkg-config --cflags --libs lua5.4) -lm -o shdict
 *   ./shdict [keys [increments]]     (default 1000 keys, 1,000,000 increments)
 *
 * Prints one JSON line per measurement: what, how many operations, and
 * ns per operation.  Keys are 9 bytes ("key" and a number: a MessagePack
 * string of 8 characters is as long), values 9 bytes (an encoded
 * integer), as the Lua layer would store d[i] = i.  Each single-process
 * line is the best of 5 passes over all the keys.
 */
#include "shdict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

#define KLEN 9
static char (*keys)[KLEN];
static long nkeys;

static void report(const char *what, long n, double seconds)
{
    printf("{\"test\":\"%s\",\"n\":%ld,\"ns_per_op\":%.1f}\n", what, n, seconds * 1e9 / (double)n);
    fflush(stdout);
}

typedef int (*pass_fn)(void *obj, long i, luamp_buf *b);

/* The best of 5 passes of fn over every key. */
static void measure(const char *what, pass_fn fn, void *obj, luamp_buf *b)
{
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (long i = 0; i < nkeys; i++)
            if (fn(obj, i, b) < 0)
                die(what);
        double t = now() - t0;
        if (t < best)
            best = t;
    }
    report(what, nkeys, best);
}

static char value[KLEN] = "\xcf\0\0\0\0\0\0\0\1";

static int d_set(void *d, long i, luamp_buf *b)
{
    (void)b;
    return shdict_set(d, keys[i], KLEN, value, KLEN);
}

static int d_get(void *d, long i, luamp_buf *b)
{
    return shdict_get(d, keys[i], KLEN, b) == SHD_OK ? 0 : -1;
}

static int d_miss(void *d, long i, luamp_buf *b)
{
    char k[KLEN];
    memcpy(k, keys[i], KLEN);
    k[0] = 'K';
    return shdict_get(d, k, KLEN, b) == SHD_MISSING ? 0 : -1;
}

static int d_contains(void *d, long i, luamp_buf *b)
{
    (void)b;
    return shdict_contains(d, keys[i], KLEN) == SHD_OK ? 0 : -1;
}

/* A locked read-modify-write of one key: what d.update_key does. */
static int d_update(void *d, long i, luamp_buf *b)
{
    (void)b;
    const void *v;
    size_t vl;
    uint64_t x;
    if (shdict_lock(d, -1) != SHD_OK || shdict_peek(d, keys[i], KLEN, &v, &vl) != SHD_OK || vl != KLEN)
        return -1;
    memcpy(&x, (const char *)v + 1, 8);
    x++;
    char nv[KLEN];
    nv[0] = '\xcf';
    memcpy(nv + 1, &x, 8);
    if (shdict_set(d, keys[i], KLEN, nv, KLEN) != SHD_OK)
        return -1;
    return shdict_unlock(d) == SHD_OK ? 0 : -1;
}

static int l_get(void *l, long i, luamp_buf *b)
{
    return shlist_get(l, (uint64_t)i, b) == SHD_OK ? 0 : -1;
}

static int l_set(void *l, long i, luamp_buf *b)
{
    (void)b;
    return shlist_set(l, (uint64_t)i, value, KLEN);
}

/* Single process: inserts, gets, misses, replaces, updates, deletes. */
static void single(void)
{
    luamp_buf b;
    luamp_buf_init(&b);
    char name[64];
    shdict *d = shdict_create();
    if (!d)
        die("shdict_create");
    double t0 = now();
    for (long i = 0; i < nkeys; i++)
        if (shdict_set(d, keys[i], KLEN, value, KLEN) != SHD_OK)
            die("set");
    snprintf(name, sizeof name, "dict_insert_%ld", nkeys);
    report(name, nkeys, now() - t0);
    snprintf(name, sizeof name, "dict_get_%ld", nkeys);
    measure(name, d_get, d, &b);
    snprintf(name, sizeof name, "dict_get_missing_%ld", nkeys);
    measure(name, d_miss, d, &b);
    snprintf(name, sizeof name, "dict_contains_%ld", nkeys);
    measure(name, d_contains, d, &b);
    snprintf(name, sizeof name, "dict_replace_%ld", nkeys);
    measure(name, d_set, d, &b);
    snprintf(name, sizeof name, "dict_locked_update_%ld", nkeys);
    measure(name, d_update, d, &b);
    t0 = now();
    for (long i = 0; i < nkeys; i++)
        if (shdict_delete(d, keys[i], KLEN, NULL) != SHD_OK)
            die("delete");
    snprintf(name, sizeof name, "dict_delete_%ld", nkeys);
    report(name, nkeys, now() - t0);
    shdict_close(d);

    shlist *l = shlist_create();
    if (!l)
        die("shlist_create");
    t0 = now();
    for (long i = 0; i < nkeys; i++)
        if (shlist_append(l, value, KLEN) != SHD_OK)
            die("append");
    snprintf(name, sizeof name, "list_append_%ld", nkeys);
    report(name, nkeys, now() - t0);
    snprintf(name, sizeof name, "list_get_%ld", nkeys);
    measure(name, l_get, l, &b);
    snprintf(name, sizeof name, "list_set_%ld", nkeys);
    measure(name, l_set, l, &b);
    shlist_close(l);
    luamp_buf_free(&b);
}

/* `procs` processes, each `n` locked increments of one key at once. */
static void contended(int procs, long n)
{
    shdict *d = shdict_create();
    if (!d)
        die("shdict_create");
    char zero[KLEN] = "\xcf";     /* (an encoded 0, as d_update counts) */
    if (shdict_set(d, keys[0], KLEN, zero, KLEN) != SHD_OK)
        die("set");
    int go[2];
    if (pipe(go) != 0)
        die("pipe");
    pid_t pids[8];
    for (int p = 0; p < procs; p++) {
        pids[p] = fork();
        if (pids[p] < 0)
            die("fork");
        if (pids[p] == 0) {
            char c;
            close(go[1]);
            if (read(go[0], &c, 1) != 0)    /* (EOF: the parent says go) */
                _exit(1);
            for (long i = 0; i < n; i++)
                if (d_update(d, 0, NULL) != 0)
                    _exit(1);
            _exit(0);
        }
    }
    close(go[0]);
    double t0 = now();
    close(go[1]);
    for (int p = 0; p < procs; p++) {
        int st;
        if (waitpid(pids[p], &st, 0) != pids[p] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            die("child");
    }
    double t = now() - t0;
    luamp_buf b;
    luamp_buf_init(&b);
    uint64_t x = 0;
    if (shdict_get(d, keys[0], KLEN, &b) != SHD_OK || b.len != KLEN)
        die("get");
    memcpy(&x, b.data + 1, 8);
    if (x != (uint64_t)procs * (uint64_t)n) {
        fprintf(stderr, "lost increments: %llu of %ld\n", (unsigned long long)x, procs * n);
        exit(1);
    }
    char name[64];
    snprintf(name, sizeof name, "locked_increment_%dproc", procs);
    report(name, procs * n, t);
    luamp_buf_free(&b);
    shdict_close(d);
}

int main(int argc, char **argv)
{
    nkeys = argc > 1 ? atol(argv[1]) : 1000;
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    if (nkeys < 1 || n < 1) {
        fprintf(stderr, "usage: %s [keys [increments]]\n", argv[0]);
        return 2;
    }
    keys = malloc((size_t)nkeys * KLEN);
    if (!keys)
        die("malloc");
    for (long i = 0; i < nkeys; i++) {
        char k[16];
        snprintf(k, sizeof k, "key%06ld", i % 1000000);
        memcpy(keys[i], k, KLEN);
        if (i >= 1000000)
            memcpy(keys[i] + 3, &i, 6);    /* (still distinct past a million) */
    }
    single();
    contended(1, n);
    contended(2, n);
    free(keys);
    return 0;
}
