/*
 * pipe.c - mp.Pipe: two connected ends that carry whole messages.
 *
 * An end is one side of an AF_UNIX stream socketpair (socketpairs, unlike
 * pipes, can later carry file descriptors with SCM_RIGHTS).  Each message
 * is a 4-byte little-endian length and the encoded value, so boundaries
 * survive any split the kernel makes.  recv reads exactly one frame and
 * nothing ahead, so poll() on the socket says truthfully whether a message
 * is waiting.  send uses MSG_NOSIGNAL: a closed peer is an error, not a
 * SIGPIPE that kills the script.
 *
 * As in Python, ends are inherited by forked children: an end sees
 * "closed" only when every process holding the other end has closed it.
 */
#include "sys.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <lauxlib.h>

typedef struct conn {
    int fd;
    int readable, writable;
    luamp_buf buf;
    char id[48];
} conn;

static conn *check_conn(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    if (c->fd < 0)
        luamp_raise(L, "closed", "this Pipe end is closed");
    return c;
}

static conn *new_end(lua_State *L, int fd, int readable, int writable)
{
    conn *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->readable = readable;
    c->writable = writable;
    luamp_buf_init(&c->buf);
    luaL_setmetatable(L, LUAMP_CONN_MT);
    luamp_new_object_id(c->id, sizeof c->id, "pipe");
    luamp_register_object(L, -1, c->id);
    return c;
}

/* core.pipe(duplex) -> a, b.  One-way: a receives, b sends. */
static int l_pipe(lua_State *L)
{
    int duplex = lua_isnoneornil(L, 1) ? 1 : lua_toboolean(L, 1);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return luamp_sys_error(L, "cannot create a Pipe: socketpair");
    /* Each end is userdata with a finalizer before anything can raise. */
    conn *a = new_end(L, sv[0], 1, duplex);
    (void)a;
    new_end(L, sv[1], duplex, 1);
    if (!duplex) {
        shutdown(sv[0], SHUT_WR);
        shutdown(sv[1], SHUT_RD);
    }
    return 2;
}

static int c_send(lua_State *L)
{
    conn *c = check_conn(L);
    if (!c->writable)
        return luaL_error(L, "cannot send on the receiving end of a one-way Pipe");
    if (lua_isnoneornil(L, 2))
        return luaL_error(L, "bad argument #1 to 'send' (nil cannot be sent on a Pipe)");
    c->buf.len = 0;
    if (luamp_encode(L, 2, "message", &c->buf) != 0)
        return luamp_raise(L, "serialize", "%s", lua_tostring(L, -1));
    unsigned char hdr[4];
    uint32_t n = (uint32_t)c->buf.len;
    for (int i = 0; i < 4; i++)
        hdr[i] = (unsigned char)(n >> (8 * i));
    struct iovec iov[2] = {
        { hdr, 4 },
        { c->buf.data, c->buf.len }
    };
    struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
    while (m.msg_iovlen > 0) {
        ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            luamp_buf_trim(&c->buf);
            if (e == EPIPE || e == ECONNRESET)
                return luamp_raise(L, "closed", "cannot send: the other end of the Pipe is closed");
            errno = e;
            return luamp_sys_error(L, "Pipe:send");
        }
        while (m.msg_iovlen > 0 && (size_t)w >= m.msg_iov->iov_len) {
            w -= (ssize_t)m.msg_iov->iov_len;
            m.msg_iov++;
            m.msg_iovlen--;
        }
        if (m.msg_iovlen > 0) {
            m.msg_iov->iov_base = (char *)m.msg_iov->iov_base + w;
            m.msg_iov->iov_len -= (size_t)w;
        }
    }
    luamp_buf_trim(&c->buf);
    return 0;
}

/* Waits until a frame (or end of file) is readable; 1 ready, 0 timeout. */
static int wait_readable(lua_State *L, conn *c, double deadline)
{
    struct pollfd p = { .fd = c->fd, .events = POLLIN };
    for (;;) {
        int r = poll(&p, 1, luamp_poll_ms(deadline));
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return luamp_sys_error(L, "Pipe:recv: poll");
        luamp_raise_interrupt(L);
    }
}

static int c_recv(lua_State *L)
{
    conn *c = check_conn(L);
    if (!c->readable)
        return luaL_error(L, "cannot receive on the sending end of a one-way Pipe");
    if (!wait_readable(L, c, luamp_opt_deadline(L, 2))) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    unsigned char hdr[4];
    int r = luamp_read_full(c->fd, hdr, 4);
    if (r == 1) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (r < 0)
        goto broken;
    uint32_t n = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
    if (n > LUAMP_MAX_MESSAGE)
        return luaL_error(L, "Pipe:recv: a message of %d bytes is over the 1 GiB limit", (int)n);
    c->buf.len = 0;
    if (luamp_buf_reserve(&c->buf, n) != 0)
        return luaL_error(L, "Pipe:recv: out of memory for a message of %d bytes", (int)n);
    if (luamp_read_full(c->fd, c->buf.data, n) != 0)
        goto broken;
    c->buf.len = n;
    r = luamp_decode(L, c->buf.data, n, 0);
    luamp_buf_trim(&c->buf);
    if (r != 0)
        return lua_error(L);
    return 1;
broken:
    if (errno == EPIPE || errno == ECONNRESET)
        return luamp_raise(L, "closed", "Pipe:recv: the other end closed in the middle of a message");
    return luamp_sys_error(L, "Pipe:recv");
}

static int c_poll(lua_State *L)
{
    conn *c = check_conn(L);
    if (!c->readable)
        return luaL_error(L, "cannot poll the sending end of a one-way Pipe");
    double deadline = lua_isnoneornil(L, 2) ? 0 : luamp_opt_deadline(L, 2);
    lua_pushboolean(L, wait_readable(L, c, deadline));
    return 1;
}

static int c_close(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    luamp_buf_free(&c->buf);
    luamp_buf_init(&c->buf);
    return 0;
}

static int c_fd(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    lua_pushinteger(L, c->fd);
    return 1;
}

static int c_ref(lua_State *L)
{
    lua_pushstring(L, check_conn(L)->id);
    return 1;
}

static int c_tostring(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    lua_pushfstring(L, "Connection (%s%s)", c->id, c->fd < 0 ? ", closed" : "");
    return 1;
}

void luamp_open_pipe(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"send", c_send},
        {"recv", c_recv},
        {"poll", c_poll},
        {"close", c_close},
        {"fileno", c_fd},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", c_close},
        {"__luamp_fd", c_fd},
        {"__luamp_ref", c_ref},
        {"__tostring", c_tostring},
        {NULL, NULL}
    };
    if (luaL_newmetatable(L, LUAMP_CONN_MT)) {
        luaL_setfuncs(L, meta, 0);
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_pipe);
    lua_setfield(L, -2, "pipe");
}
