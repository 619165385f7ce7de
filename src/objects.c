/* SPDX-License-Identifier: MIT */
/*
 * objects.c - luamp objects by id, and the socket that brings a pool's
 * worker the ones it lacks.
 *
 * Every luamp object (a Queue, a Pipe end, a Lock, ...) gets an id,
 * "<kind>:<pid>:<counter>": the process that made it, and how many
 * objects that process had made.  It is remembered under that id in
 * registry["luamp.objects"] (weak values).  The codec sends an object as
 * its id, and the receiver finds the object it inherited under that id.
 * A child of core.fork remembers its parent and how many objects the
 * parent had made when it forked, so that the decoder, through
 * luamp_codec_newer_hook, tells an id it cannot know yet ("newer than
 * me": the parent's, counted past the fork) from one that is not its to
 * know.
 *
 * A pool's parent sends each worker, ahead of a task that names it, an
 * object the worker did not inherit (made after it was forked, or any
 * for a spawned one): its description and descriptors, one datagram on a
 * socket pair per worker (SCM_RIGHTS).  The worker reads them when its
 * decoder meets an object it does not know (LUAMP_FETCH_KEY).
 */
#include "objects.h"
#include "module.h"
#include "sys.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <lauxlib.h>

/* ---- ids and the registry ---------------------------------------------- */

static unsigned long object_counter;

/* In a child of core.fork: its parent, and how many objects the parent
 * had made when it forked (the child inherited every one of those). */
static pid_t forked_from;
static unsigned long objects_at_fork;

void luamp_new_object_id(char *out, size_t n, const char *kind)
{
    snprintf(out, n, "%s:%ld:%lu", kind, (long)getpid(), ++object_counter);
}

static int spawned;     /* this process read a spawn start message */

void luamp_objects_forked(pid_t parent)
{
    forked_from = parent;
    objects_at_fork = object_counter;
}

void luamp_objects_spawned(void)
{
    spawned = 1;
}

/* The codec's luamp_codec_newer_hook: 1 when the object id names an
 * object that the process which forked this one (with core.fork) made
 * after the fork: one this process cannot have inherited; 2 when this
 * process was spawned (it knows only the objects it was started with);
 * else 0. */
static int object_is_newer(const char *id, size_t len)
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
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_OBJECTS_KEY) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_newtable(L);
        lua_pushliteral(L, "v");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, LUAMP_OBJECTS_KEY);
    }
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, id);
    lua_pop(L, 1);
}

/* ---- the object socket ------------------------------------------------- */

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

void luamp_open_objects(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"object_count", l_object_count},
        {"objsock", l_objsock},
        {"objsock_send", l_objsock_send},
        {"objsock_recv", l_objsock_recv},
        {"close_fd", l_close_fd},
        {NULL, NULL}
    };
    luamp_codec_newer_hook = object_is_newer;
    luaL_setfuncs(L, funcs, 0);
}
