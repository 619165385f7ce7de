/*
 * sys.c - processes and waiting.
 *
 * Every child luamp makes (a Pool worker, a Process) comes from
 * core.fork().  The child asks the kernel for SIGKILL when its parent dies
 * (PR_SET_PDEATHSIG) and then checks that the parent has not died already,
 * so no child outlives the main script, however that script ends.
 *
 * The parent keeps a pidfd for each child.  A pidfd becomes readable when
 * the child exits, so "wait for a result, or a worker death, or the
 * timeout" is one poll() over ordinary file descriptors: queue doorbells
 * (eventfds), pipe ends and pidfds alike.  No helper thread, no SIGCHLD
 * handler: children are reaped by the call that notices their exit.
 */
#include "sys.h"
#include "codec.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <lauxlib.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

double luamp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int luamp_poll_ms(double deadline)
{
    if (deadline < 0)
        return -1;
    double left = deadline - luamp_now();
    if (left <= 0)
        return 0;
    if (left > 86400.0 * 24)
        left = 86400.0 * 24;
    return (int)(left * 1000.0) + 1;
}

/*
 * Every 256 KiB received, the collector is stepped as if they had been
 * allocated once more.  A received big string is usually garbage soon,
 * but the collector only starts a cycle once the heap has doubled: a
 * stream of 1 MiB messages then piles up garbage in fresh pages, and
 * every byte received costs its share of a page fault (half the
 * receiver's time at 1 MiB).  Collected sooner, the memory is reused.
 * The extra work is proportional to the bytes received, as the
 * collector's own pacing is.
 */
#define COLLECT_FROM ((size_t)256 << 10)

void luamp_collect_for(lua_State *L, size_t n)
{
    /* Bytes received since the last step; smaller messages add up (a
     * stream of 64 KiB messages into a heap holding 1 GiB of other data
     * otherwise waits for 1 GiB of garbage).  One counter per process:
     * a step in whichever state crosses the mark is work done early,
     * not work lost. */
    static size_t pending;
    pending += n;
    if (pending >= COLLECT_FROM) {
        size_t kb = pending >> 10;
        pending = 0;
        lua_gc(L, LUA_GCSTEP, kb > INT_MAX ? INT_MAX : (int)kb);
    }
}

int luamp_sys_error(lua_State *L, const char *what)
{
    return luamp_raise_errno(L, errno, "%s", what);
}

static unsigned long object_counter;
static pid_t cached_pid;     /* 0: not known yet; a core.fork child resets it */

pid_t luamp_pid(void)
{
    if (cached_pid == 0)
        cached_pid = getpid();
    return cached_pid;
}

/* In a child of core.fork: its parent, and how many objects the parent
 * had made when it forked (the child inherited every one of those). */
static pid_t forked_from;
static unsigned long objects_at_fork;

void luamp_new_object_id(char *out, size_t n, const char *kind)
{
    snprintf(out, n, "%s:%ld:%lu", kind, (long)getpid(), ++object_counter);
}

static int spawned;     /* this process read a spawn start message */

int luamp_object_is_newer(const char *id, size_t len)
{
    char buf[64];
    if (spawned && forked_from == 0)
        return 2;
    if (forked_from == 0 || len >= sizeof buf)
        return 0;
    memcpy(buf, id, len);
    buf[len] = 0;
    long pid;
    unsigned long n;
    const char *colon = strchr(buf, ':');
    if (colon == NULL || sscanf(colon + 1, "%ld:%lu", &pid, &n) != 2)
        return 0;
    return pid == (long)forked_from && n > objects_at_fork;
}

void luamp_register_object(lua_State *L, int idx, const char *id)
{
    idx = lua_absindex(L, idx);
    if (lua_getfield(L, LUA_REGISTRYINDEX, "luamp.objects") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_newtable(L);
        lua_pushliteral(L, "v");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, "luamp.objects");
    }
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, id);
    lua_pop(L, 1);
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

static void reaper_start(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, NULL) == 0)
        reaper_on = 1;
}

/* ---- interrupts -------------------------------------------------------- */

static volatile sig_atomic_t pending_signal;   /* not yet raised */
static volatile sig_atomic_t seen_signal;      /* ever received */
static lua_State *main_state;
static int interrupts_caught;

int luamp_interrupt_pending(void)
{
    return pending_signal != 0;
}

void luamp_raise_interrupt(lua_State *L)
{
    int sig = pending_signal;
    if (!sig)
        return;
    pending_signal = 0;
    lua_sethook(L, NULL, 0, 0);
    luamp_raise(L, "interrupted", "interrupted by %s", sig == SIGINT ? "SIGINT" : "SIGTERM");
}

static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    luamp_raise_interrupt(L);
}

/* Async-signal-safe: lua_sethook is meant for this (lua.c does the same). */
static void on_interrupt(int sig)
{
    pending_signal = sig;
    seen_signal = sig;
    if (main_state)
        lua_sethook(main_state, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

void luamp_catch_interrupts(lua_State *L)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    main_state = L;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    interrupts_caught = 1;
    reaper_start();
}

/* In a new child: the parent's interrupt handling is not the child's. */
static void reset_child_signals(int worker)
{
    main_state = NULL;
    pending_signal = 0;
    seen_signal = 0;
    if (interrupts_caught) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
    }
    memset(reaped, 0, sizeof reaped);   /* the parent's children are not ours */
    if (worker)
        signal(SIGINT, SIG_IGN);
}

static int l_interrupted(lua_State *L)
{
    lua_pushboolean(L, seen_signal != 0);
    return 1;
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
 * pid: its pidfd, and a place in the reaper's table.  A child that cannot
 * be watched is killed and reaped, and the error raised. */
static int watch_child(lua_State *L, child *c, pid_t pid)
{
    c->pid = pid;
    /* The pidfd first: until the pid is in the reaper's table, nobody
     * reaps the child, so pidfd_open finds it even if it exited. */
    c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
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

    fflush(NULL);   /* or buffered output would be written twice */
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return luamp_sys_error(L, "cannot start a child process: fork");
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(70);
        forked_from = parent;
        objects_at_fork = object_counter;
        cached_pid = 0;
        reset_child_signals(worker);
        lua_pushinteger(L, 0);
        return 1;
    }
    return watch_child(L, c, pid);
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
    /* the environment, plus LUAMP_SPAWN_FD */
    size_t nenv = 0;
    for (char **e = environ; *e; e++)
        nenv++;
    const char **envp = lua_newuserdatauv(L, (nenv + 2) * sizeof *envp, 0);
    size_t k = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "LUAMP_SPAWN_FD=", 15) != 0)
            envp[k++] = *e;
    envp[k++] = lua_pushfstring(L, "LUAMP_SPAWN_FD=%d", mfd);
    envp[k] = NULL;

    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) != 0) {
        int e = errno;
        close(mfd);
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
    if (pid < 0) {
        close(errpipe[0]);
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
        return luamp_raise_errno(L, e, "cannot spawn a process: cannot run %s", exe);
    }
    return watch_child(L, c, pid);
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
    spawned = 1;
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

/* core.ignore_sigint(): a spawned pool worker, as a forked one */
static int l_ignore_sigint(lua_State *L)
{
    (void)L;
    signal(SIGINT, SIG_IGN);
    return 0;
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

static int l_now(lua_State *L)
{
    lua_pushnumber(L, luamp_now());
    return 1;
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

static int l_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    double deadline = luamp_now() + s;
    int ms;
    while ((ms = luamp_poll_ms(deadline)) > 0) {
        if (poll(NULL, 0, ms) < 0)
            luamp_raise_interrupt(L);
    }
    return 0;
}

static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* core.table(narr, nrec): a table with room for narr array items and
 * nrec other fields (Lua 5.4 has no way to say so from Lua), so that one
 * filled with a million results is not grown and copied twenty times. */
static int l_table(lua_State *L)
{
    lua_Integer narr = luaL_checkinteger(L, 1), nrec = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, narr >= 0 && narr <= (1 << 26), 1, "out of range");
    luaL_argcheck(L, nrec >= 0 && nrec <= (1 << 26), 2, "out of range");
    lua_createtable(L, (int)narr, (int)nrec);
    return 1;
}

static int l_default_processes(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "luamp.default_processes");
    return 1;
}

/* ---- objects sent to a pool's workers ----------------------------------------
 *
 * A pool's parent sends each worker, ahead of a task that names it, an
 * object the worker did not inherit (made after it was forked, or any
 * for a spawned one): its description and descriptors, one datagram on a
 * socket pair per worker (SCM_RIGHTS).  The worker reads them when its
 * decoder meets an object it does not know (LUAMP_FETCH_KEY). */

/* core.object_count() -> objects this process has made so far */
static int l_object_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)object_counter);
    return 1;
}

/* core.objsock() -> parent end, worker end: a non-blocking socket pair */
static int l_objsock(lua_State *L)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0)
        return luamp_sys_error(L, "cannot make a socket pair for a worker");
    lua_pushinteger(L, sv[0]);
    lua_pushinteger(L, sv[1]);
    return 2;
}

#define OBJSOCK_MAX_FDS 64
#define OBJSOCK_MAX_BYTES (64 << 10)

/* core.objsock_send(fd, bytes, fds [, deadline]) -> true | nil, message:
 * the socket stayed full (it holds only net.unix.max_dgram_qlen unread
 * datagrams, 10 by default) until the deadline (a core.now() time;
 * none: do not wait), and the caller lets the worker find the object
 * another way */
static int l_objsock_send(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    size_t len;
    const char *bytes = luaL_checklstring(L, 2, &len);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 3);
    luaL_argcheck(L, n >= 0 && n <= OBJSOCK_MAX_FDS, 3, "too many descriptors");
    luaL_argcheck(L, len <= OBJSOCK_MAX_BYTES, 2, "description too long");
    int fds[OBJSOCK_MAX_FDS];
    for (lua_Integer i = 0; i < n; i++) {
        lua_geti(L, 3, i + 1);
        fds[i] = (int)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    union {
        char buf[CMSG_SPACE(sizeof(int) * OBJSOCK_MAX_FDS)];
        struct cmsghdr align;
    } u;
    struct iovec iov = { (void *)bytes, len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (n > 0) {
        memset(&u, 0, sizeof u);
        msg.msg_control = u.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)n);
    }
    double deadline = luaL_optnumber(L, 4, 0);
    ssize_t r;
    for (;;) {
        while ((r = sendmsg(fd, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
            ;
        if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || luamp_now() >= deadline)
            break;
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        if (poll(&p, 1, luamp_poll_ms(deadline)) < 0 && errno != EINTR)
            break;
    }
    if (r < 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.objsock_recv(fd) -> bytes, fds | nil (nothing waiting) | false
 * (the parent's end is closed) */
static int l_objsock_recv(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    char *buf = lua_newuserdatauv(L, OBJSOCK_MAX_BYTES, 0);   /* (rare: collected) */
    union {
        char buf[CMSG_SPACE(sizeof(int) * OBJSOCK_MAX_FDS)];
        struct cmsghdr align;
    } u;
    struct iovec iov = { buf, OBJSOCK_MAX_BYTES };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                          .msg_controllen = sizeof u.buf };
    ssize_t r;
    while ((r = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return luamp_sys_error(L, "cannot read the objects sent to this worker");
    }
    int got[OBJSOCK_MAX_FDS], ngot = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k && ngot < OBJSOCK_MAX_FDS; i++)
                memcpy(&got[ngot++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    if (r == 0 && ngot == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        for (int i = 0; i < ngot; i++)
            close(got[i]);
        return luaL_error(L, "an object sent to this worker was cut short");
    }
    lua_pushlstring(L, buf, (size_t)r);
    lua_createtable(L, ngot, 0);
    for (int i = 0; i < ngot; i++) {
        lua_pushinteger(L, got[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 2;
}

/* core.close_fd(fd) */
static int l_close_fd(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    if (fd >= 0 && close(fd) != 0 && errno != EINTR)
        return luamp_sys_error(L, "cannot close a descriptor");
    return 0;
}

void luamp_open_sys(lua_State *L)
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
        {"ignore_sigint", l_ignore_sigint},
        {"wait", l_wait},
        {"now", l_now},
        {"getpid", l_getpid},
        {"cpu_count", l_cpu_count},
        {"_exit", l_exit},
        {"sleep", l_sleep},
        {"isatty", l_isatty},
        {"interrupted", l_interrupted},
        {"default_processes", l_default_processes},
        {"table", l_table},
        {"encode", luamp_l_encode},
        {"decode", luamp_l_decode},
        {"object_count", l_object_count},
        {"objsock", l_objsock},
        {"objsock_send", l_objsock_send},
        {"objsock_recv", l_objsock_recv},
        {"close_fd", l_close_fd},
        {NULL, NULL}
    };
    luamp_codec_newer_hook = luamp_object_is_newer;
#ifdef LUAMP_BINDIR
    lua_pushliteral(L, LUAMP_BINDIR "/luamp");   /* the installed luamp, for spawn */
    lua_setfield(L, -2, "installed_luamp");
#endif
    if (luaL_newmetatable(L, LUAMP_CHILD_MT))
        luaL_setfuncs(L, child_methods, 0);
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
}

/* Raises the message on top of the stack as an mp.Error of `kind`, with
 * field errno when err is not 0 (a plain string where luamp.lua is not
 * loaded yet). */
static int raise_top(lua_State *L, const char *kind, int err)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, "luamp.raise") != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return lua_error(L);
    }
    lua_pushstring(L, kind);
    lua_pushvalue(L, -3);
    if (err)
        lua_pushinteger(L, err);
    else
        lua_pushnil(L);
    lua_call(L, 3, 0);      /* raises */
    return 0;
}

int luamp_raise(lua_State *L, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return raise_top(L, kind, 0);
}

int luamp_raise_errno(lua_State *L, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushfstring(L, "%s: %s", lua_tostring(L, -1), strerror(err));
    return raise_top(L, "os", err);
}

double luamp_opt_deadline(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return -1;
    double t = luaL_checknumber(L, idx);
    luaL_argcheck(L, t == t, idx, "timeout is NaN");
    return t > 0 ? luamp_now() + t : 0;     /* 0: do not wait at all */
}

/* A block glibc hands out again usually is resident already, and
 * faulting in resident pages is not free (about 140 ns a page here, more
 * than copying them), so mincore() first says which are not, 256 pages
 * at a time. */
static void populate(char *p, size_t from, size_t to, int fd, off_t at)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + from + page - 1) & ~(page - 1);
    uintptr_t e = ((uintptr_t)p + to) & ~(page - 1);
    unsigned char vec[256];

    while (a < e) {
        size_t n = (e - a) / page < sizeof vec ? (e - a) / page : sizeof vec;
        if (mincore((void *)a, n * page, vec) != 0)
            return;     /* (advice only: the pages fault in when written) */
        for (size_t i = 0; i < n;) {
            size_t j = i;
            while (j < n && !(vec[j] & 1))
                j++;
            /* Advice only: if they fail (EINVAL before Linux 5.14, ENOMEM,
             * ENOSPC), the pages fault in when written, as they would
             * have anyway. */
            if (j > i && fd >= 0)
                (void)fallocate(fd, 0, at + (off_t)(a + i * page - (uintptr_t)p), (off_t)((j - i) * page));
            if (j > i)
                (void)madvise((void *)(a + i * page), (j - i) * page, MADV_POPULATE_WRITE);
            i = j + 1;
        }
        a += n * page;
    }
}

void luamp_populate(char *p, size_t from, size_t to)
{
    populate(p, from, to, -1, 0);
}

void luamp_populate_shared(char *p, size_t from, size_t to, int fd, off_t at)
{
    populate(p, from, to, fd, at);
}

int luamp_buf_prepare(luamp_buf *b, size_t n)
{
    luamp_buf_reset(b);
    if (b->cap >= n)
        return 0;       /* (a buffer kept: mostly written before) */
    luamp_buf_free(b);  /* (realloc would copy what the buffer held) */
    if (luamp_buf_reserve(b, n) != 0)
        return -1;
    if (n >= LUAMP_POPULATE_FROM)
        luamp_populate(b->data, 0, n);
    return 0;
}

/* Scratch buffers keep up to 64 MiB: growing one again for every big
 * message costs a realloc chain and fresh page faults each time. */
void luamp_buf_trim(luamp_buf *b)
{
    if (b->cap > ((size_t)64 << 20)) {
        luamp_buf_free(b);
    }
    luamp_buf_reset(b);
}
