/* SPDX-License-Identifier: MIT */
/* rawpipe.c - the physical limit for two forked processes talking over pipes.
 *
 *   gcc -O2 -Wall -Wextra -o rawpipe rawpipe.c
 *   ./rawpipe [pingpong|bulk|bulk1m|small|fork|all] [split] [N]   (default: all)
 *
 * Prints one JSON line per test:
 *   pingpong  1-byte round trip over a pair of pipes (100,000 round trips)
 *   bulk      one-way throughput, 1 MiB write() calls, 2 GiB in total
 *   bulk1m    the same with the pipe buffer raised to 1 MiB (F_SETPIPE_SZ)
 *   small     one-way rate of 16-byte messages, one write() each
 *             (1,000,000), read by a buffered reader (64 KiB read() calls)
 *   fork      fork()+waitpid() of a child that _exit(0)s at once, from a
 *             tiny parent and from a parent with a touched ~50 MB heap
 * With "split", the parent is pinned to CPU 0 and the child to CPU 1, so
 * every message crosses CPUs (otherwise the scheduler places them).
 * A number N replaces the count of the selected test (round trips, MiB,
 * messages, forks), so a benchmark runner can take shorter samples.
 * MiB = 2^20 bytes.
 *
 * luamp's copy of the reference bench/rawpipe.c: identical measurements,
 * plus the optional count.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1 << 20)

static int split;	/* pin parent to CPU 0, child to CPU 1 */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		p += w;
		n -= (size_t)w;
	}
}

/* Read exactly n bytes; returns 0 on clean EOF before any byte. */
static int read_all(int fd, void *buf, size_t n)
{
	char *p = buf;
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		if (r == 0) {
			if (got == 0)
				return 0;
			fprintf(stderr, "short read\n");
			exit(1);
		}
		got += (size_t)r;
	}
	return 1;
}

static void xpipe(int fd[2])
{
	if (pipe(fd) < 0)
		die("pipe");
}

static pid_t xfork(void)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	return pid;
}

/* fork() for the messaging tests: honours "split". */
static pid_t xfork_placed(void)
{
	pid_t pid = xfork();
	if (split) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(pid == 0 ? 1 : 0, &set);
		if (sched_setaffinity(0, sizeof set, &set) < 0)
			die("sched_setaffinity");
	}
	return pid;
}

static void reap(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			die("waitpid");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "child %d failed (status %d)\n", (int)pid, st);
		exit(1);
	}
}

/* (a) 1-byte ping-pong over two pipes. */
static void test_pingpong(long n)
{
	int down[2], up[2];
	char c = 'x';
	xpipe(down);
	xpipe(up);
	pid_t pid = xfork_placed();
	if (pid == 0) {
		close(down[1]);
		close(up[0]);
		while (read_all(down[0], &c, 1))
			write_all(up[1], &c, 1);
		_exit(0);
	}
	close(down[0]);
	close(up[1]);
	for (int i = 0; i < 1000; i++) {	/* warm up */
		write_all(down[1], &c, 1);
		read_all(up[0], &c, 1);
	}
	double t0 = now();
	for (long i = 0; i < n; i++) {
		write_all(down[1], &c, 1);
		if (!read_all(up[0], &c, 1))
			die("echo EOF");
	}
	double dt = now() - t0;
	close(down[1]);
	close(up[0]);
	reap(pid);
	printf("{\"test\":\"pingpong_1byte\",\"split\":%d,\"n\":%ld,\"seconds\":%.6f,"
	       "\"per_op_us\":%.3f}\n", split, n, dt, dt / n * 1e6);
}

/* (b) one-way bulk: parent writes 1 MiB chunks, child reads until EOF.
 * pipesz > 0 first enlarges the pipe buffer (F_SETPIPE_SZ; default 64 KiB). */
static void test_bulk(long total_mib, int pipesz)
{
	int fd[2];
	char *buf = malloc(MIB);
	if (!buf)
		die("malloc");
	memset(buf, 'b', MIB);
	xpipe(fd);
	if (pipesz > 0 && fcntl(fd[1], F_SETPIPE_SZ, pipesz) < 0)
		die("F_SETPIPE_SZ");
	pid_t pid = xfork_placed();
	if (pid == 0) {
		close(fd[1]);
		long long got = 0;
		ssize_t r;
		while ((r = read(fd[0], buf, MIB)) != 0) {
			if (r < 0) {
				if (errno == EINTR)
					continue;
				die("read");
			}
			got += r;
		}
		_exit(got == total_mib * (long long)MIB ? 0 : 1);
	}
	close(fd[0]);
	double t0 = now();
	for (long i = 0; i < total_mib; i++)
		write_all(fd[1], buf, MIB);
	close(fd[1]);
	reap(pid);		/* the reader has drained everything */
	double dt = now() - t0;
	free(buf);
	printf("{\"test\":\"bulk_1MiB_writes%s\",\"split\":%d,\"n\":%ld,\"seconds\":%.6f,"
	       "\"mb_per_s\":%.1f}\n", pipesz > 0 ? "_pipe1MiB" : "", split, total_mib,
	       dt, total_mib / dt);
}

/* (c) small messages: child does one write() per 16-byte message; parent
 * reads 64 KiB at a time and walks the 16-byte records, checking order. */
static void test_small(long n)
{
	int fd[2];
	xpipe(fd);
	double t0 = now();
	pid_t pid = xfork_placed();
	if (pid == 0) {
		close(fd[0]);
		uint64_t msg[2] = { 0, 0x5555555555555555ull };
		for (long i = 0; i < n; i++) {
			msg[0] = (uint64_t)i;
			write_all(fd[1], msg, sizeof msg);
		}
		_exit(0);
	}
	close(fd[1]);
	static char buf[65536 + 16];
	size_t have = 0;
	long seen = 0;
	ssize_t r;
	while ((r = read(fd[0], buf + have, 65536)) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		have += (size_t)r;
		size_t off = 0;
		for (; have - off >= 16; off += 16) {
			uint64_t seq;
			memcpy(&seq, buf + off, 8);
			if (seq != (uint64_t)seen++) {
				fprintf(stderr, "out of order\n");
				exit(1);
			}
		}
		memmove(buf, buf + off, have - off);	/* keep a partial record */
		have -= off;
	}
	double dt = now() - t0;
	close(fd[0]);
	reap(pid);
	if (seen != n) {
		fprintf(stderr, "lost messages: %ld of %ld\n", seen, n);
		exit(1);
	}
	printf("{\"test\":\"small_16B_msgs\",\"split\":%d,\"n\":%ld,"
	       "\"seconds\":%.6f,\"ops_per_s\":%.0f,\"per_op_us\":%.3f}\n",
	       split, n, dt, n / dt, dt / n * 1e6);
}

static double fork_wait_us(int reps)
{
	for (int i = 0; i < 5; i++) {		/* warm up */
		pid_t pid = xfork();
		if (pid == 0)
			_exit(0);
		reap(pid);
	}
	double t0 = now();
	for (int i = 0; i < reps; i++) {
		pid_t pid = xfork();
		if (pid == 0)
			_exit(0);
		reap(pid);
	}
	return (now() - t0) / reps * 1e6;
}

/* (d) fork()+waitpid() cost, tiny parent vs parent with 50 MB touched heap */
static void test_fork(int reps)
{
	const size_t heap = 50u * 1000 * 1000;
	double tiny = fork_wait_us(reps);
	char *p = malloc(heap);
	if (!p)
		die("malloc");
	for (size_t i = 0; i < heap; i += 4096)	/* touch every page */
		p[i] = (char)i;
	double big = fork_wait_us(reps);
	volatile char sink = p[heap / 2];
	(void)sink;
	free(p);
	printf("{\"test\":\"fork_waitpid\",\"n\":%d,\"tiny_us\":%.1f,"
	       "\"heap50MB_us\":%.1f}\n", reps, tiny, big);
}

int main(int argc, char **argv)
{
	const char *t = argc > 1 ? argv[1] : "all";
	int all = strcmp(t, "all") == 0;
	long n = 0;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "split") == 0)
			split = 1;
		else if ((n = strtol(argv[i], NULL, 10)) <= 0) {
			fprintf(stderr, "usage: %s [pingpong|bulk|bulk1m|small|fork|all] [split] [N]\n",
				argv[0]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (all || !strcmp(t, "pingpong"))
		test_pingpong(n ? n : 100000);
	if (all || !strcmp(t, "bulk"))
		test_bulk(n ? n : 2048, 0);
	if (all || !strcmp(t, "bulk1m"))
		test_bulk(n ? n : 2048, MIB);
	if (all || !strcmp(t, "small"))
		test_small(n ? n : 1000000);
	if (all || !strcmp(t, "fork"))
		test_fork(n ? (int)n : 200);
	return 0;
}
