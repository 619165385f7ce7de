/* SPDX-License-Identifier: MIT */
/*
 * rawbig.c - what this machine itself does with 300 MiB, the yardstick
 * for bench/big.lua: no luamp, no Lua, one process (two for the pipe).
 *
 *   gcc -O2 bench/rawbig.c -o rawbig && ./rawbig [MiB] [repetitions]
 *
 * Each line is the median over the repetitions, in MiB/s:
 *   memcpy warm         into memory written before (the copy alone)
 *   memcpy fresh anon   into a new private mapping: a page fault per 4 KiB,
 *                       each page zeroed by the kernel (what a new Lua
 *                       string or a new receive buffer costs)
 *   populate+memcpy     the same with MADV_POPULATE_WRITE first (what
 *                       luamp's allocator and luamp_populate do)
 *   memcpy fresh memfd  into a new shared mapping of a new memfd (a queue
 *                       ring that grew)
 *   fallocate+populate  the same, the file's pages allocated and mapped
 *     +memcpy memfd     first (what shmq does before a big put)
 *   pipe 1 MiB          write() of the whole buffer in a child, read() into
 *                       memory written before, 1 MiB pipe buffer
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static size_t N;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static char *anon(void)
{
    char *p = mmap(NULL, N, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

static double warm(const char *src)
{
    char *d = anon();
    memset(d, 0, N);
    double t = now();
    memcpy(d, src, N);
    t = now() - t;
    munmap(d, N);
    return t;
}

static double fresh(const char *src, int populate)
{
    double t = now();
    char *d = anon();
    if (populate && madvise(d, N, MADV_POPULATE_WRITE) != 0)
        die("madvise");
    memcpy(d, src, N);
    t = now() - t;
    munmap(d, N);
    return t;
}

static double shared(const char *src, int prepare)
{
    int fd = memfd_create("rawbig", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)N) != 0)
        die("memfd");
    double t = now();
    if (prepare && fallocate(fd, 0, 0, (off_t)N) != 0)
        die("fallocate");
    char *d = mmap(NULL, N, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (d == MAP_FAILED)
        die("mmap");
    if (prepare && madvise(d, N, MADV_POPULATE_WRITE) != 0)
        die("madvise");
    memcpy(d, src, N);
    t = now() - t;
    munmap(d, N);
    close(fd);
    return t;
}

static double pipe_through(const char *src)
{
    int p[2];
    if (pipe(p) != 0)
        die("pipe");
    if (fcntl(p[1], F_SETPIPE_SZ, 1 << 20) < 0)
        die("F_SETPIPE_SZ");
    char *d = anon();
    memset(d, 0, N);
    double t = now();
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(p[0]);
        for (size_t o = 0; o < N;) {
            ssize_t k = write(p[1], src + o, N - o);
            if (k <= 0)
                _exit(1);
            o += (size_t)k;
        }
        _exit(0);
    }
    close(p[1]);
    for (size_t o = 0; o < N;) {
        ssize_t k = read(p[0], d + o, N - o);
        if (k <= 0)
            die("read");
        o += (size_t)k;
    }
    t = now() - t;
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("writer");
    close(p[0]);
    munmap(d, N);
    return t;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 300;
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    if (mib == 0 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: rawbig [MiB] [repetitions (1-100)]\n");
        return 2;
    }
    N = mib << 20;
    char *src = anon();
    memset(src, 'x', N);
    static const char *const names[] = { "memcpy warm", "memcpy fresh anon", "populate+memcpy anon",
        "memcpy fresh memfd", "fallocate+populate+memcpy memfd", "pipe 1 MiB" };
    enum { K = sizeof names / sizeof *names };
    double t[K][100];
    for (int r = 0; r < reps; r++) {    /* (interleaved: the machine's speed drifts) */
        t[0][r] = warm(src);
        t[1][r] = fresh(src, 0);
        t[2][r] = fresh(src, 1);
        t[3][r] = shared(src, 0);
        t[4][r] = shared(src, 1);
        t[5][r] = pipe_through(src);
    }
    for (int k = 0; k < K; k++) {
        qsort(t[k], (size_t)reps, sizeof t[k][0], by_value);
        printf("%-32s %6.0f MiB/s (%.0f-%.0f)\n", names[k], (double)mib / t[k][reps / 2],
               (double)mib / t[k][reps - 1], (double)mib / t[k][0]);
    }
    return 0;
}
