/* SPDX-License-Identifier: MIT */
/*
 * process.c - child processes and waiting for them: core.fork,
 * core.spawn, child handles, the SIGCHLD reaper and core.wait.
 *
 * Every child luamp makes (a Pool worker, a Process) comes from
 * core.fork(), or from core.spawn() for the spawn start method (mp.run's
 * programs are run.c's).  The child asks the kernel for SIGKILL when its
 * parent dies (PR_SET_PDEATHSIG) and then checks that the parent has not
 * died already, so no child outlives the main script, however that
 * script ends.
 *
 * The parent keeps a pidfd for each child.  A pidfd becomes readable when
 * the child exits, so "wait for a result, or a worker death, or the
 * timeout" is one poll() over ordinary file descriptors: queue doorbells
 * (eventfds), pipe ends and pidfds alike (core.wait here, a Pool's
 * get_result in pool.c).  There is no helper thread.
 *
 * Where pidfd_open is missing (Linux before 5.3, and valgrind, which does
 * not know the call; LUAMP_NO_PIDFD=1 forces it, for the tests), a death
 * pipe stands in for the pidfd: the parent makes a pipe before the fork
 * and keeps its read end, which becomes readable (end of file) when the
 * child exits and the kernel closes the child's write end.  Only the child
 * may hold that write end: it is close-on-exec (programs the child runs
 * never see it, nor does mp.run's watchdog, which closes everything), the
 * parent closes its copy at once, and a child forked in turn closes its
 * parent's (each process holds exactly one write end, its own).  A spawned
 * child keeps its write end across its exec and finds it in
 * LUAMP_DEATH_FD.  A child is reaped
 * by the call that notices its exit or, in the luamp binary
 * (luamp_catch_interrupts), at once by a SIGCHLD handler that waits for
 * luamp's own children only (the reaper, below), so that none stays a
 * zombie while the script computes.
 */
#include "process.h"
#include "interrupt.h"
#include "module.h"
#include "objects.h"
#include "sys.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <lauxlib.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434      /* Linux 5.3: older headers lack the name */
#endif

static pid_t cached_pid;     /* 0: not known yet; a core.fork child resets it */

pid_t luamp_pid(void)
{
    if (cached_pid == 0)
        cached_pid = getpid();
    return cached_pid;
}

/* Whether pidfds are to be had: -1 not known yet. */
static int have_pidfd = -1;

/* This process's write end of the death pipe its parent watches (the
 * fallback, see the top of this file), or -1. */
static int my_death_fd = -1;

static int pidfds(void)
{
    if (have_pidfd < 0) {
        const char *no = getenv("LUAMP_NO_PIDFD");
        if (no != NULL && *no != '\0' && strcmp(no, "0") != 0) {
            have_pidfd = 0;
        } else {
            int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
            have_pidfd = fd >= 0 || errno != ENOSYS;
            if (fd >= 0)
                close(fd);
        }
    }
    return have_pidfd;
}

int luamp_pidfd_open(pid_t pid)
{
    if (!pidfds()) {
        errno = ENOSYS;
        return -1;
    }
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* Before a fork: the death pipe for the new child (fds[0], fds[1]), or
 * both -1 when pidfds serve.  0, or -1 with errno. */
static int death_pipe(int fds[2])
{
    fds[0] = fds[1] = -1;
    if (pidfds())
        return 0;
    return pipe2(fds, O_CLOEXEC);
}

/* In the new child: its own write end replaces its parent's. */
static void death_pipe_child(int fds[2])
{
    if (fds[1] < 0)
        return;
    close(fds[0]);
    if (my_death_fd >= 0)
        close(my_death_fd);
    my_death_fd = fds[1];
}

/* ---- reaping as children exit ------------------------------------------ */

/*
 * With luamp_catch_interrupts (the luamp binary), a SIGCHLD handler reaps
 * luamp's own children the moment they exit, so none stays a zombie while
 * the script computes.  It waits only for the pids in this table, never
 * for children others made (io.popen, os.execute, the host application),
 * and records their status for the child handle to read.  The main code
 * changes the table with SIGCHLD blocked.
 */
#define MAX_REAPED 4096

static struct {
    pid_t pid;                      /* 0: free */
    volatile sig_atomic_t done;
    int status;
} reaped[MAX_REAPED];
static int reaper_on;

static void on_sigchld(int sig)
{
    int saved = errno;
    (void)sig;
    for (int i = 0; i < MAX_REAPED; i++) {
        int st;
        if (reaped[i].pid > 0 && !reaped[i].done && waitpid(reaped[i].pid, &st, WNOHANG) == reaped[i].pid) {
            reaped[i].status = st;
            reaped[i].done = 1;
        }
    }
    errno = saved;
}

static void block_sigchld(sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, old);
}

static int reaper_add(pid_t pid)
{
    sigset_t old;
    int slot = -1;
    if (!reaper_on)
        return -1;
    block_sigchld(&old);
    for (int i = 0; i < MAX_REAPED && slot < 0; i++) {
        if (reaped[i].pid == 0) {
            reaped[i].pid = pid;
            reaped[i].done = 0;
            slot = i;
        }
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    /* It may have exited before it was in the table. */
    if (slot >= 0)
        on_sigchld(SIGCHLD);
    return slot;
}

void luamp_reaper_start(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) == 0)
        reaper_on = 1;
}

/* ---- children ---------------------------------------------------------- */

typedef struct child {
    pid_t pid;
    int slot;       /* in the reaper's table, or -1 */
    int pidfd;      /* -1 once reaped */
    int status;     /* wait status once reaped */
    int reaped;
    pid_t parent;   /* the process that forked it: only it may reap */
} child;

static child *check_child(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, LUAMP_CHILD_MT);
}

/* Makes the handle c (on the stack top, returned) watch the new child
 * pid: its pidfd (or the read end of its death pipe, deathfd, when that is
 * not -1), and a place in the reaper's table.  A child that cannot be
 * watched is killed and reaped, and the error raised. */
static int watch_child(lua_State *L, child *c, pid_t pid, int deathfd)
{
    c->pid = pid;
    /* The pidfd first: until the pid is in the reaper's table, nobody
     * reaps the child, so pidfd_open finds it even if it exited. */
    c->pidfd = deathfd >= 0 ? deathfd : luamp_pidfd_open(pid);
    if (c->pidfd < 0) {
        int e = errno;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        errno = e;
        return luamp_sys_error(L, "cannot watch a child process: pidfd_open");
    }
    c->slot = reaper_add(pid);
    return 1;
}

/* core.fork(worker) -> 0 in the child; in the parent a child handle.
 * worker: the child ignores SIGINT (the terminal's Ctrl-C is the main
 * script's business; workers stop when it tells them or when it dies). */
static int l_fork(lua_State *L)
{
    int worker = lua_toboolean(L, 1);
    child *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->pid = -1;
    c->slot = -1;
    c->pidfd = -1;
    c->reaped = 0;
    c->status = 0;
    c->parent = getpid();
    luaL_setmetatable(L, LUAMP_CHILD_MT);

    int dp[2];
    if (death_pipe(dp) != 0)
        return luamp_sys_error(L, "cannot start a child process: pipe");
    fflush(NULL);   /* or buffered output would be written twice */
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        if (dp[0] >= 0) {
            close(dp[0]);
            close(dp[1]);
        }
        errno = e;
        return luamp_sys_error(L, "cannot start a child process: fork");
    }
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(70);
        death_pipe_child(dp);
        luamp_objects_forked(parent);
        cached_pid = 0;
        memset(reaped, 0, sizeof reaped);   /* the parent's children are not ours */
        luamp_interrupts_forked(worker);
        lua_pushinteger(L, 0);
        return 1;
    }
    if (dp[1] >= 0)
        close(dp[1]);
    return watch_child(L, c, pid, dp[0]);
}

/*
 * core.spawn(exe, argv, keep_fds, payload) -> a child handle, as core.fork
 * returns: a fresh process running `exe` with `argv` (the spawn start
 * method).  The descriptors in keep_fds stay open across exec; payload
 * goes in a memfd whose number the child finds in LUAMP_SPAWN_FD.  Only
 * async-signal-safe calls run between fork and exec, so this is safe in
 * a multi-threaded application; everything they need is built before.
 * An exec that fails raises here: its errno comes back on a pipe that
 * exec closes.
 */
extern char **environ;

static int l_spawn(lua_State *L)
{
    const char *exe = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    size_t plen;
    const char *payload = luaL_checklstring(L, 4, &plen);

    lua_Integer argc = luaL_len(L, 2), nkeep = luaL_len(L, 3);
    luaL_argcheck(L, argc >= 1 && argc < 64, 2, "1 to 63 arguments expected");
    luaL_argcheck(L, nkeep >= 0 && nkeep < 256, 3, "too many descriptors");
    const char *argv[64];
    for (lua_Integer i = 0; i < argc; i++) {
        lua_geti(L, 2, i + 1);
        argv[i] = luaL_checkstring(L, -1);
        lua_pop(L, 1);
    }
    argv[argc] = NULL;
    int keep[256];
    for (lua_Integer i = 0; i < nkeep; i++) {
        lua_geti(L, 3, i + 1);
        keep[i] = (int)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }

    int mfd = memfd_create("luamp-spawn", MFD_CLOEXEC);
    if (mfd < 0)
        return luamp_sys_error(L, "cannot spawn a process: memfd_create");
    for (size_t off = 0; off < plen;) {
        ssize_t w = write(mfd, payload + off, plen - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            close(mfd);
            errno = e;
            return luamp_sys_error(L, "cannot spawn a process: writing its start message");
        }
        off += (size_t)w;
    }
    int dp[2], errpipe[2];
    if (death_pipe(dp) != 0) {
        int e = errno;
        close(mfd);
        errno = e;
        return luamp_sys_error(L, "cannot spawn a process: pipe");
    }
    /* the environment, plus LUAMP_SPAWN_FD (and LUAMP_DEATH_FD) */
    size_t nenv = 0;
    for (char **e = environ; *e; e++)
        nenv++;
    const char **envp = lua_newuserdatauv(L, (nenv + 3) * sizeof *envp, 0);
    size_t k = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "LUAMP_SPAWN_FD=", 15) != 0 && strncmp(*e, "LUAMP_DEATH_FD=", 15) != 0)
            envp[k++] = *e;
    envp[k++] = lua_pushfstring(L, "LUAMP_SPAWN_FD=%d", mfd);
    if (dp[1] >= 0)
        envp[k++] = lua_pushfstring(L, "LUAMP_DEATH_FD=%d", dp[1]);
    envp[k] = NULL;

    if (pipe2(errpipe, O_CLOEXEC) != 0) {
        int e = errno;
        close(mfd);
        if (dp[0] >= 0) {
            close(dp[0]);
            close(dp[1]);
        }
        errno = e;
        return luamp_sys_error(L, "cannot spawn a process: pipe");
    }
    child *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->pid = -1;
    c->slot = -1;
    c->pidfd = -1;
    c->parent = getpid();
    luaL_setmetatable(L, LUAMP_CHILD_MT);

    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        int e = 0;
        sigset_t none;
        sigemptyset(&none);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(70);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (lua_Integer i = 0; i < nkeep && e == 0; i++)
            if (fcntl(keep[i], F_SETFD, 0) != 0)
                e = errno;
        if (e == 0 && fcntl(mfd, F_SETFD, 0) != 0)
            e = errno;
        if (e == 0 && dp[1] >= 0 && fcntl(dp[1], F_SETFD, 0) != 0)
            e = errno;
        if (e == 0) {
            execve(exe, (char *const *)argv, (char *const *)envp);
            e = errno;
        }
        while (write(errpipe[1], &e, sizeof e) < 0 && errno == EINTR)
            ;
        _exit(127);
    }
    int fork_errno = errno;
    close(errpipe[1]);
    close(mfd);
    if (dp[1] >= 0)
        close(dp[1]);
    if (pid < 0) {
        close(errpipe[0]);
        if (dp[0] >= 0)
            close(dp[0]);
        errno = fork_errno;
        return luamp_sys_error(L, "cannot spawn a process: fork");
    }
    int e = 0;
    ssize_t r;
    while ((r = read(errpipe[0], &e, sizeof e)) < 0 && errno == EINTR)
        ;
    close(errpipe[0]);
    if (r > 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        if (dp[0] >= 0)
            close(dp[0]);
        return luamp_raise_errno(L, e, "cannot spawn a process: cannot run %s", exe);
    }
    return watch_child(L, c, pid, dp[0]);
}

/* core.spawn_payload() -> the start message a spawning parent left, or
 * nil when this process was not spawned (then or already read). */
static int l_spawn_payload(lua_State *L)
{
    const char *v = getenv("LUAMP_SPAWN_FD");
    if (v == NULL)
        return 0;
    int fd = atoi(v);
    unsetenv("LUAMP_SPAWN_FD");
    const char *d = getenv("LUAMP_DEATH_FD");
    if (d != NULL) {
        /* our death pipe's write end, which what we run must not hold */
        my_death_fd = atoi(d);
        unsetenv("LUAMP_DEATH_FD");
        if (my_death_fd < 0 || fcntl(my_death_fd, F_SETFD, FD_CLOEXEC) != 0)
            my_death_fd = -1;
    }
    luamp_objects_spawned();
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return luamp_sys_error(L, "cannot read the spawn start message");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char chunk[65536];
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(fd, chunk, sizeof chunk, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            close(fd);
            return luamp_sys_error(L, "cannot read the spawn start message");
        }
        if (n == 0)
            break;
        luaL_addlstring(&b, chunk, (size_t)n);
        off += n;
    }
    close(fd);
    luaL_pushresult(&b);
    return 1;
}

/* core.self_exe() -> the path of this process's executable */
static int l_self_exe(lua_State *L)
{
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n < 0)
        return luamp_sys_error(L, "cannot find this program's executable");
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

/* Reaps the child if it has exited; wait: block until it has. */
static int child_reap(child *c, int wait)
{
    sigset_t old;
    if (c->reaped)
        return 1;
    if (c->parent != getpid())
        return 0;
    if (c->slot >= 0)
        block_sigchld(&old);
    if (c->slot >= 0 && reaped[c->slot].done) {
        c->status = reaped[c->slot].status;
    } else {
        for (;;) {
            pid_t r = waitpid(c->pid, &c->status, wait ? 0 : WNOHANG);
            if (r == c->pid)
                break;
            if (r == 0) {
                if (c->slot >= 0)
                    sigprocmask(SIG_SETMASK, &old, NULL);
                return 0;
            }
            if (errno == EINTR)
                continue;
            /* ECHILD: someone else reaped it (a SIG_IGN'd SIGCHLD, a host
             * application's own waitpid); it is gone, its status unknown. */
            c->status = 0;
            break;
        }
    }
    if (c->slot >= 0) {
        reaped[c->slot].pid = 0;
        c->slot = -1;
        sigprocmask(SIG_SETMASK, &old, NULL);
    }
    c->reaped = 1;
    if (c->pidfd >= 0) {
        close(c->pidfd);
        c->pidfd = -1;
    }
    return 1;
}

/* Exit code in Python's convention: the status, or -N for signal N. */
static void push_exitcode(lua_State *L, child *c)
{
    if (WIFSIGNALED(c->status))
        lua_pushinteger(L, -WTERMSIG(c->status));
    else
        lua_pushinteger(L, WEXITSTATUS(c->status));
}

/* h:poll(timeout) -> exitcode once exited (reaped), or nil while running. */
static int l_child_poll(lua_State *L)
{
    child *c = check_child(L, 1);
    double timeout = luaL_optnumber(L, 2, 0);
    double deadline = timeout < 0 ? -1 : luamp_now() + timeout;
    while (!c->reaped && c->parent == getpid()) {
        struct pollfd p = { .fd = c->pidfd, .events = POLLIN };
        int r = poll(&p, 1, luamp_poll_ms(deadline));
        if (r < 0 && errno != EINTR)
            return luamp_sys_error(L, "poll");
        if (r < 0)
            luamp_raise_interrupt(L);
        if (r > 0) {
            child_reap(c, 1);
            break;
        }
        if (r == 0)
            break;
    }
    if (!c->reaped)
        return 0;
    push_exitcode(L, c);
    return 1;
}

/* h:signal(sig) -> true, or false if already reaped. */
static int l_child_signal(lua_State *L)
{
    child *c = check_child(L, 1);
    int sig = (int)luaL_checkinteger(L, 2);
    if (c->reaped || c->parent != getpid()) {
        lua_pushboolean(L, 0);
        return 1;
    }
    /* pidfd_send_signal would be exact; kill() is safe too because the pid
     * cannot be reused before we reap it. */
    if (kill(c->pid, sig) != 0 && errno != ESRCH)
        return luamp_sys_error(L, "kill");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_child_index(lua_State *L)
{
    child *c = check_child(L, 1);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "pid") == 0) {
        lua_pushinteger(L, c->pid);
        return 1;
    }
    luaL_getmetatable(L, LUAMP_CHILD_MT);
    lua_getfield(L, -1, k);
    return 1;
}

/* Collected without being reaped: kill and reap, so no zombie stays. */
static int l_child_gc(lua_State *L)
{
    child *c = check_child(L, 1);
    if (!c->reaped && c->parent == getpid()) {
        kill(c->pid, SIGKILL);
        child_reap(c, 1);
    }
    return 0;
}

/* ---- waiting ----------------------------------------------------------- */

int luamp_waitable_fd(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);     /* callers pass -1; the stack grows below */
    child *c = luaL_testudata(L, idx, LUAMP_CHILD_MT);
    if (c)
        return c->reaped ? -2 : c->pidfd;
    if (lua_getmetatable(L, idx)) {
        lua_getfield(L, -1, "__luamp_fd");
        if (lua_iscfunction(L, -1)) {
            lua_pushvalue(L, idx);
            lua_call(L, 1, 1);
            int fd = (int)luaL_optinteger(L, -1, -1);
            lua_pop(L, 2);
            return fd;
        }
        lua_pop(L, 2);
    }
    return luaL_error(L, "core.wait: object %d cannot be waited on", idx);
}

/*
 * core.wait(list, timeout) -> the 1-based index of a ready object, or nil
 * at the timeout.  Objects: child handles (ready once exited; an already
 * reaped child is ready at once), queues (ready when an item may be
 * waiting) and pipe ends.  Readiness is a hint: callers check again.
 */
static int l_wait(lua_State *L)
{
    enum { MAXW = 512 };
    struct pollfd p[MAXW];
    int map[MAXW];
    luaL_checktype(L, 1, LUA_TTABLE);
    double timeout = luaL_optnumber(L, 2, -1);
    double deadline = lua_isnoneornil(L, 2) ? -1 : luamp_now() + (timeout < 0 ? 0 : timeout);
    int n = (int)luaL_len(L, 1), np = 0;
    for (int i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        int fd = luamp_waitable_fd(L, -1);
        lua_pop(L, 1);
        if (fd == -2) {
            lua_pushinteger(L, i);
            return 1;
        }
        if (fd < 0)
            continue;
        if (np == MAXW)
            return luaL_error(L, "core.wait: more than %d objects", MAXW);
        p[np].fd = fd;
        p[np].events = POLLIN;
        p[np].revents = 0;
        map[np++] = i;
    }
    for (;;) {
        int r = poll(p, (nfds_t)np, luamp_poll_ms(deadline));
        if (r > 0)
            break;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return luamp_sys_error(L, "poll");
        luamp_raise_interrupt(L);
    }
    for (int i = 0; i < np; i++) {
        if (p[i].revents) {
            lua_pushinteger(L, map[i]);
            return 1;
        }
    }
    return 0;
}

static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

static int l_cpu_count(lua_State *L)
{
    cpu_set_t set;
    long n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    lua_pushinteger(L, n > 0 ? n : 1);
    return 1;
}

/* core._exit(code): leave a child without running the parent's cleanup
 * (atexit handlers, Lua finalizers of objects it inherited). */
static int l_exit(lua_State *L)
{
    int code = (int)luaL_optinteger(L, 1, 0);
    fflush(NULL);
    _exit(code);
    return 0;
}

void luamp_open_process(lua_State *L)
{
    static const luaL_Reg child_methods[] = {
        {"poll", l_child_poll},
        {"signal", l_child_signal},
        {"__index", l_child_index},
        {"__gc", l_child_gc},
        {NULL, NULL}
    };
    static const luaL_Reg funcs[] = {
        {"fork", l_fork},
        {"spawn", l_spawn},
        {"spawn_payload", l_spawn_payload},
        {"self_exe", l_self_exe},
        {"wait", l_wait},
        {"getpid", l_getpid},
        {"cpu_count", l_cpu_count},
        {"_exit", l_exit},
        {NULL, NULL}
    };
#ifdef LUAMP_BINDIR
    lua_pushliteral(L, LUAMP_BINDIR "/luamp");   /* the installed luamp, for spawn */
    lua_setfield(L, -2, "installed_luamp");
#endif
    if (luaL_newmetatable(L, LUAMP_CHILD_MT))
        luaL_setfuncs(L, child_methods, 0);
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
}
