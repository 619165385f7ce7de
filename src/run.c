/* SPDX-License-Identifier: MIT */
/*
 * run.c - mp.run: runs a program from an argument list (never a shell)
 * and waits for it, feeding its standard input and collecting its output
 * at the same time, so that neither side can fill a pipe the other does
 * not read, with a deadline after which the program is killed.
 *
 * The program is started with posix_spawnp (a vfork-like clone: no copy
 * of a big parent's page tables), with the default signal dispositions
 * and an empty signal mask, whatever luamp set for itself.  The parent
 * waits in poll() on the program's pidfd and its pipes, so a Ctrl-C
 * reaches it at once: the program (with its process group, below) is
 * then killed and reaped before the interrupt is raised.  Nothing is left
 * running and no zombie remains.
 *
 * A program dies with the process that started it, however that one
 * dies (a pool's task timeout and Process:kill() are SIGKILLs), and so do
 * the children it did not detach: `sh -c 'sleep 57; true'` forks a sleep
 * that must not be left behind with parent pid 1.  PR_SET_PDEATHSIG, which
 * forked workers use, cannot be set through posix_spawn and would reach
 * only the program, not its children.  So the program runs in a process
 * group of its own, and a watchdog kills that group when the starter
 * dies.  The watchdog is started first and leads a new group; the program
 * is then spawned into that group.  The watchdog reads a pipe whose write
 * end only the starter holds (close-on-exec: the program does not keep
 * it).  When the starter dies, in any way, the kernel closes that end,
 * the read sees end of file, and the watchdog kills the whole group,
 * itself included.  A program's spawn that is under way holds the write
 * end until its exec, which comes after it joined the group, so there is
 * no moment at which the starter can die and leave a program outside the
 * watchdog's reach.  When mp.run ends, the starter kills and reaps the
 * watchdog; on its timeout, a Ctrl-C or an error it kills the whole group
 * (and the program by its pid: one that moved to a group of its own must
 * still end, or the wait for it would not).  A program that leaves the
 * group on purpose (setsid, setpgid: a daemon) is left alone, and so is
 * what a program left running when it exited normally.
 *
 * The watchdog is a clone(CLONE_VM) child on a 16 KiB stack of its own:
 * no copy of the starter's page tables, which fork() makes (10 ms for a
 * worker holding 200 MB, 40 ms for 1 GB), and no exec.  A /bin/sh that
 * runs `read _; kill -KILL 0` was the other candidate: it has memory of
 * its own, but its exec and start cost CPU on every run.  Measured on the
 * loaded 2-CPU VM this was written on, spawning and reaping `true` took
 * 530 us (min) / 790 us (median); 570 / 860 with the clone watchdog; 690 /
 * 1930 with the shell.  mp.run({"true"}) went from 530 to 590 us (min),
 * whatever the starter's size.  The price of sharing the starter's memory:
 * the watchdog runs nothing of the C library but syscall(), makes no call
 * that can fail while the starter lives (it would set the starter's
 * errno), starts with every signal blocked (a handler would run on the
 * starter's data), and is not instrumented by the sanitizers.  ps shows
 * it with the starter's command line (and the name luamp-watchdog).  And
 * the kernel's OOM killer kills every process using its victim's memory:
 * a starter killed for want of memory takes the watchdog along and leaves
 * its program running; so does, on kernels before 5.16, a starter that
 * dumps core.  The watchdog is reaped by run.c alone: the SIGCHLD reaper
 * in process.c waits only for pids in its own table.  A fork of the starter
 * made while the program runs (by another thread of an application)
 * holds the write end too, and keeps the watchdog waiting until it exits
 * or execs.
 *
 * One exception: the main script in the terminal's foreground group (a
 * script run from an interactive shell) runs its program in that group.
 * A program of its own group there would be a background job: stopped by
 * the terminal as soon as it read from it or changed its modes (an
 * editor, a pager, a password prompt), deaf to a Ctrl-C typed at the
 * terminal, and a Ctrl-Z would stop it alone, out of the shell's sight.
 * Handing the terminal over, as a shell does, would need luamp to do job
 * control.  So the program stays in the foreground group, where the
 * terminal's signals reach it as they reach luamp, and the watchdog,
 * told the program's pid through its pipe once it is spawned, kills the
 * program alone when the script dies.  What that program starts is not
 * covered then, nor a program whose starter dies between its exec and
 * the write of its pid.  Workers and Process children, which timeouts and
 * kill() end, always give their programs a group of their own.
 */
#include "sys.h"
#include "interrupt.h"
#include "module.h"
#include "process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <sys/wait.h>

#include <lauxlib.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

extern char **environ;

#define POLL_EXIT_MS 10

/* A growing byte buffer for what the program writes. */
typedef struct sink {
    char *data;
    size_t len, cap;
} sink;

static int sink_read(sink *s, int fd)
{
    if (s->cap - s->len < 65536) {
        size_t cap = s->cap ? s->cap * 2 : 65536;
        while (cap - s->len < 65536)
            cap *= 2;
        char *p = realloc(s->data, cap);
        if (p == NULL) {
            errno = ENOMEM;
            return -1;
        }
        s->data = p;
        s->cap = cap;
    }
    ssize_t n = read(fd, s->data + s->len, s->cap - s->len);
    if (n > 0)
        s->len += (size_t)n;
    return (int)(n > 0 ? 1 : n);   /* 1 more, 0 end of file, -1 error */
}

typedef struct run_state {
    pid_t pid;
    pid_t watchdog;              /* leader of the program's group, or -1 */
    int group;                   /* the program runs in the watchdog's group */
    int watch;                   /* the write end of the watchdog's pipe, or -1 */
    char *wd_stack;              /* the watchdog's stack, or NULL */
    size_t wd_len;
    int pidfd;
    int in, out, err;            /* our ends, or -1 */
    char **envp;                 /* built, or NULL (environ) */
    sink so, se;
} run_state;

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Waits for a child of ours; -1 with errno when it cannot (ECHILD: a
 * SIGCHLD handler of the application reaped it first). */
static int reap(pid_t pid, int *status)
{
    while (waitpid(pid, status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return 0;
}

/* Kills the program's whole group, the watchdog included, and the program
 * itself, which may have left the group.  (kill cannot fail here: both are
 * our children, not reaped yet, and the watchdog is in its group.) */
static void kill_group(run_state *r)
{
    if (r->watchdog > 0 && r->group)
        kill(-r->watchdog, SIGKILL);
    if (r->pid > 0)
        kill(r->pid, SIGKILL);
}

/* Ends the watchdog (without touching the program's group), reaps it and
 * frees its stack, which is free to go only once it has exited. */
static void stop_watchdog(run_state *r)
{
    if (r->watchdog > 0) {
        kill(r->watchdog, SIGKILL);
        reap(r->watchdog, NULL);
        r->watchdog = -1;
    }
    if (r->wd_stack) {
        munmap(r->wd_stack, r->wd_len);
        r->wd_stack = NULL;
    }
    close_fd(&r->watch);
}

/* Kills the program and its group (when not reaped yet), reaps it and the
 * watchdog, frees everything. */
static void run_cleanup(run_state *r, int kill_it)
{
    if (kill_it)
        kill_group(r);
    if (r->pid > 0) {
        reap(r->pid, NULL);
        r->pid = -1;
    }
    stop_watchdog(r);
    close_fd(&r->pidfd);
    close_fd(&r->in);
    close_fd(&r->out);
    close_fd(&r->err);
    if (r->envp) {
        for (char **e = r->envp; *e; e++)
            free(*e);
        free(r->envp);
        r->envp = NULL;
    }
    free(r->so.data);
    free(r->se.data);
    r->so.data = r->se.data = NULL;
}

/*
 * The watchdog (see the top of this file).  It shares the starter's memory
 * and thread pointer, so it runs no C library code but syscall(), and
 * makes no call that can fail while the starter lives: a failing one
 * would set the starter's errno.  It finds its arguments at the bottom of
 * its stack, which the starter does not touch.
 */
#define WATCHDOG_STACK (16 * 1024)

typedef struct watchdog_args {
    int rfd, wfd;               /* the pipe: it keeps the read end */
    int close_range;            /* the kernel has close_range */
    int group;                  /* kill its group; else the pid read first */
} watchdog_args;

__attribute__((no_sanitize("address", "undefined")))
static int watchdog_main(void *arg)
{
    watchdog_args a = *(watchdog_args *)arg;
    char c;
    syscall(SYS_prctl, PR_SET_NAME, (unsigned long)"luamp-watchdog", 0UL, 0UL, 0UL);
    syscall(SYS_close, a.wfd);
    if (a.close_range) {        /* the starter's other descriptors are not ours to hold */
        if (a.rfd > 0)
            syscall(SYS_close_range, 0UL, (unsigned long)a.rfd - 1, 0UL);
        syscall(SYS_close_range, (unsigned long)a.rfd + 1, (unsigned long)~0U, 0UL);
    }
    if (!a.group) {
        /* the program's pid, written once it is spawned */
        pid_t pid = 0;
        size_t got = 0;
        long n;
        while (got < sizeof pid && (n = syscall(SYS_read, a.rfd, (char *)&pid + got, sizeof pid - got)) > 0)
            got += (size_t)n;
        while (syscall(SYS_read, a.rfd, &c, (size_t)1) > 0)
            ;
        if (got == sizeof pid && pid > 0)
            syscall(SYS_kill, pid, SIGKILL);
        return 0;
    }
    while (syscall(SYS_read, a.rfd, &c, (size_t)1) > 0)
        ;
    /* End of file: the starter is gone.  Its group, by number: if the
     * starter died before making it, kill(0) would hit the starter's. */
    syscall(SYS_kill, -(pid_t)syscall(SYS_getpid), SIGKILL);
    return 0;
}

/* Starts the watchdog, blocked reading a pipe of which r->watch is the
 * only write end, and the leader of a new process group when r->group.
 * 0, or an errno value. */
static int start_watchdog(run_state *r)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t len = (size_t)page + WATCHDOG_STACK;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return errno;
    char *stack = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED || mprotect(stack, (size_t)page, PROT_NONE) != 0) {   /* a guard page */
        int e = errno;
        if (stack != MAP_FAILED)
            munmap(stack, len);
        close(fds[0]);
        close(fds[1]);
        return e;
    }
    watchdog_args *a = (watchdog_args *)(stack + page);
    a->rfd = fds[0];
    a->wfd = fds[1];
    a->close_range = syscall(SYS_close_range, (unsigned long)~0U, (unsigned long)~0U, 0UL) == 0;
    a->group = r->group;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = clone(watchdog_main, stack + len, CLONE_VM | SIGCHLD, a);
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(fds[0]);
    if (pid < 0) {
        munmap(stack, len);
        close(fds[1]);
        return e;
    }
    r->watchdog = pid;
    r->watch = fds[1];
    r->wd_stack = stack;
    r->wd_len = len;
    if (!r->group)
        return 0;
    return setpgid(pid, pid) == 0 ? 0 : errno;
}

/* Whether this process is in the foreground group of the terminal on its
 * standard input, output or error. */
static int in_foreground(void)
{
    pid_t pg = getpgrp();
    for (int fd = 0; fd <= 2; fd++) {
        if (isatty(fd))
            return tcgetpgrp(fd) == pg;
    }
    return 0;
}

/* The environment: this process's, with the table at idx applied
 * (name -> string sets, name -> false removes).  NULL with errno. */
static char **build_env(lua_State *L, int idx)
{
    size_t n = 0, extra = 0;
    for (char **e = environ; *e; e++)
        n++;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        extra++;
        lua_pop(L, 1);
    }
    char **envp = calloc(n + extra + 1, sizeof *envp);
    if (envp == NULL)
        return NULL;
    size_t k = 0;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t nl = eq ? (size_t)(eq - *e) : strlen(*e);
        lua_pushlstring(L, *e, nl);
        int overridden = lua_rawget(L, idx) != LUA_TNIL;
        lua_pop(L, 1);
        if (!overridden && (envp[k] = strdup(*e)) != NULL)
            k++;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t nl, vl;
            const char *name = lua_tolstring(L, -2, &nl);
            const char *val = lua_tolstring(L, -1, &vl);
            char *s = malloc(nl + vl + 2);
            if (s != NULL) {
                memcpy(s, name, nl);
                s[nl] = '=';
                memcpy(s + nl + 1, val, vl + 1);
                envp[k++] = s;
            }
        }
        lua_pop(L, 1);
    }
    envp[k] = NULL;
    return envp;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Writes what it can of the input without SIGPIPE: a program that closed
 * its standard input early is no error (as in Python).  Returns bytes
 * written, 0 when the program took no more (EPIPE), -1 on error. */
static ssize_t feed(int fd, const char *p, size_t n)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t w = write(fd, p, n > 65536 ? 65536 : n);
    int e = errno;
    if (w < 0 && e == EPIPE) {
        struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
        w = 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return w;
}

/*
 * core.run(argv, capture, input, timeout, cwd, env, main)
 *   -> code|nil, signal|nil, stdout|nil, stderr|nil, timed_out
 * argv: a non-empty sequence of strings (checked by the caller); env: a
 * table or nil; main: the caller is the main script (see the top of this
 * file for what it changes at a terminal).  Raises "cannot run '<prog>':
 * <why>".
 */
static int l_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int capture = lua_toboolean(L, 2);
    size_t inlen = 0;
    const char *input = luaL_optlstring(L, 3, NULL, &inlen);
    double deadline = luamp_opt_deadline(L, 4);
    const char *cwd = luaL_optstring(L, 5, NULL);
    int has_env = lua_istable(L, 6);
    int main_script = lua_toboolean(L, 7);

    lua_Integer argc = luaL_len(L, 1);
    const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(argc + 1), 0);
    for (lua_Integer i = 0; i < argc; i++) {
        lua_geti(L, 1, i + 1);
        argv[i] = lua_tostring(L, -1);
        lua_pop(L, 1);      /* (the strings stay in the table) */
    }
    argv[argc] = NULL;

    run_state r = { .pid = -1, .watchdog = -1, .watch = -1, .pidfd = -1, .in = -1, .out = -1, .err = -1 };
    r.group = !(main_script && in_foreground());
    int child_in[2] = { -1, -1 }, child_out[2] = { -1, -1 }, child_err[2] = { -1, -1 };
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int fa_ok = 0, attr_ok = 0, e = 0;
    const char *what = "cannot run '%s': %s";

    if (has_env && (r.envp = build_env(L, 6)) == NULL) {
        e = errno;
        goto fail;
    }
    if ((input && pipe2(child_in, O_CLOEXEC) != 0)
        || (capture && (pipe2(child_out, O_CLOEXEC) != 0 || pipe2(child_err, O_CLOEXEC) != 0))) {
        e = errno;
        goto fail;
    }
    if ((e = posix_spawn_file_actions_init(&fa)) != 0)
        goto fail;
    fa_ok = 1;
    if ((e = posix_spawnattr_init(&attr)) != 0)
        goto fail;
    attr_ok = 1;
    if ((e = start_watchdog(&r)) != 0) {
        what = "cannot run '%s': cannot start its watchdog: %s";
        goto fail;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if ((e = posix_spawnattr_setsigmask(&attr, &none)) != 0
        || (e = posix_spawnattr_setsigdefault(&attr, &all)) != 0
        || (r.group && (e = posix_spawnattr_setpgroup(&attr, r.watchdog)) != 0)
        || (e = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
                                                | (r.group ? POSIX_SPAWN_SETPGROUP : 0))) != 0)
        goto fail;
    if (input && (e = posix_spawn_file_actions_adddup2(&fa, child_in[0], 0)) != 0)
        goto fail;
    if (capture && ((e = posix_spawn_file_actions_adddup2(&fa, child_out[1], 1)) != 0
                    || (e = posix_spawn_file_actions_adddup2(&fa, child_err[1], 2)) != 0))
        goto fail;
    if (cwd && (e = posix_spawn_file_actions_addchdir_np(&fa, cwd)) != 0)
        goto fail;
    fflush(NULL);   /* what the script printed comes before what the program prints */
    e = posix_spawnp(&r.pid, argv[0], &fa, &attr, (char *const *)argv, r.envp ? r.envp : environ);
    if (e != 0) {
        r.pid = -1;
        if (cwd && e == ENOENT && access(cwd, X_OK) != 0)
            what = "cannot run '%s' in the directory given as cwd: %s";
        goto fail;
    }
    if (!r.group) {
        /* the watchdog's target (a pipe holds 4 bytes whole: no short write) */
        ssize_t w;
        while ((w = write(r.watch, &r.pid, sizeof r.pid)) < 0 && errno == EINTR)
            ;
        if (w != (ssize_t)sizeof r.pid) {
            e = w < 0 ? errno : EIO;
            what = "cannot run '%s': cannot tell its watchdog its pid: %s";
            goto fail;
        }
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    fa_ok = attr_ok = 0;
    close_fd(&child_in[0]);
    close_fd(&child_out[1]);
    close_fd(&child_err[1]);
    r.in = child_in[1];
    r.out = child_out[0];
    r.err = child_err[0];
    /* Without pidfds (old kernels, valgrind), the program's exit is
     * looked for every POLL_EXIT_MS instead (waitid without reaping). */
    r.pidfd = luamp_pidfd_open(r.pid);
    int look_for_exit = r.pidfd < 0 && errno == ENOSYS;
    if ((r.pidfd < 0 && !look_for_exit) || (r.in >= 0 && set_nonblock(r.in) != 0) || (r.out >= 0 && set_nonblock(r.out) != 0)
        || (r.err >= 0 && set_nonblock(r.err) != 0)) {
        e = errno;
        what = "cannot watch '%s': %s";
        goto fail_running;
    }
    if (r.in >= 0 && inlen == 0)
        close_fd(&r.in);

    size_t fed = 0;
    int exited = 0, timed_out = 0;
    while (!exited || r.out >= 0 || r.err >= 0) {
        struct pollfd p[4];
        int np = 0, i_pid = -1, i_in = -1, i_out = -1, i_err = -1;
        if (!exited && !look_for_exit) { i_pid = np; p[np].fd = r.pidfd; p[np++].events = POLLIN; }
        if (r.in >= 0) { i_in = np; p[np].fd = r.in; p[np++].events = POLLOUT; }
        if (r.out >= 0) { i_out = np; p[np].fd = r.out; p[np++].events = POLLIN; }
        if (r.err >= 0) { i_err = np; p[np].fd = r.err; p[np++].events = POLLIN; }
        int ms = luamp_poll_ms(deadline);
        if (look_for_exit && !exited && (ms < 0 || ms > POLL_EXIT_MS))
            ms = POLL_EXIT_MS;
        int n = poll(p, (nfds_t)np, ms);
        if (look_for_exit && !exited && n >= 0) {
            siginfo_t si;
            si.si_pid = 0;
            if (waitid(P_PID, (id_t)r.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == r.pid) {
                exited = 1;
                close_fd(&r.in);
            }
        }
        if (n < 0) {
            if (errno != EINTR) {
                e = errno;
                what = "cannot wait for '%s': %s";
                goto fail_running;
            }
            if (luamp_interrupt_pending()) {
                run_cleanup(&r, 1);
                luamp_raise_interrupt(L);
            }
            continue;
        }
        if (n == 0) {
            if (deadline >= 0 && luamp_now() >= deadline) {
                timed_out = 1;
                kill_group(&r);
                break;
            }
            continue;
        }
        if (i_in >= 0 && p[i_in].revents) {
            ssize_t w = feed(r.in, input + fed, inlen - fed);
            if (w > 0)
                fed += (size_t)w;
            if (w == 0 || fed == inlen || (w < 0 && errno != EAGAIN && errno != EINTR))
                close_fd(&r.in);
        }
        if (i_out >= 0 && p[i_out].revents) {
            int k = sink_read(&r.so, r.out);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
                close_fd(&r.out);
        }
        if (i_err >= 0 && p[i_err].revents) {
            int k = sink_read(&r.se, r.err);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
                close_fd(&r.err);
        }
        if (i_pid >= 0 && p[i_pid].revents) {
            exited = 1;
            close_fd(&r.in);     /* nobody left to read it */
        }
    }
    if (timed_out) {
        /* what was written before the kill, without waiting for a pipe a
         * detached grandchild may hold open */
        while (r.out >= 0 && sink_read(&r.so, r.out) > 0)
            ;
        while (r.err >= 0 && sink_read(&r.se, r.err) > 0)
            ;
    }
    int st = 0;
    if (reap(r.pid, &st) != 0)
        st = 0;
    r.pid = -1;
    stop_watchdog(&r);      /* before any Lua call that may raise */
    if (WIFEXITED(st)) {
        lua_pushinteger(L, WEXITSTATUS(st));
        lua_pushnil(L);
    } else {
        lua_pushnil(L);
        lua_pushinteger(L, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    }
    if (capture) {
        lua_pushlstring(L, r.so.data ? r.so.data : "", r.so.len);
        lua_pushlstring(L, r.se.data ? r.se.data : "", r.se.len);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    lua_pushboolean(L, timed_out);
    run_cleanup(&r, 0);
    return 5;

fail:
    close_fd(&child_in[0]);
    close_fd(&child_in[1]);
    close_fd(&child_out[0]);
    close_fd(&child_out[1]);
    close_fd(&child_err[0]);
    close_fd(&child_err[1]);
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (attr_ok)
        posix_spawnattr_destroy(&attr);
fail_running:
    run_cleanup(&r, 1);
    return luaL_error(L, what, argv[0], strerror(e));
}

/* core.log_write(name, message): one line on stderr, in one write(2), so
 * that lines from different processes never mix:
 * [luamp 12:00:01.234 pid=812 name] message */
static int l_log_write(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    size_t len;
    const char *msg = luaL_checklstring(L, 2, &len);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char head[128];
    snprintf(head, sizeof head, "[luamp %02d:%02d:%02d.%03ld pid=%ld %s] ", tm.tm_hour, tm.tm_min, tm.tm_sec,
             ts.tv_nsec / 1000000, (long)getpid(), name);
    luaL_addstring(&b, head);
    luaL_addlstring(&b, msg, len);
    luaL_addchar(&b, '\n');
    luaL_pushresult(&b);
    size_t n;
    const char *line = lua_tolstring(L, -1, &n);
    fflush(stderr);
    while (n > 0) {
        ssize_t w = write(2, line, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;      /* nowhere to say it: logging never fails the caller */
        }
        line += w;
        n -= (size_t)w;
    }
    return 0;
}

void luamp_open_run(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"run", l_run},
        {"log_write", l_log_write},
        {NULL, NULL}
    };
    luaL_setfuncs(L, funcs, 0);
}
