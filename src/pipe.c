/*
 * pipe.c - mp.Pipe: two connected ends that carry whole messages.
 *
 * An end is one side of an AF_UNIX stream socketpair (socketpairs, unlike
 * pipes, can later carry file descriptors with SCM_RIGHTS).  Each message
 * is a 4-byte little-endian length and the encoded value, so boundaries
 * survive any split the kernel makes.  recv reads ahead (up to 64 KiB at
 * a time) so that a stream of small messages costs one read() for many,
 * not two each; poll and waits look at what was read ahead before they
 * ask the kernel.  Bytes read ahead belong to the process that read them:
 * a forked child starts with none (it would otherwise deliver them a
 * second time).  send uses MSG_NOSIGNAL: a closed peer is an error, not a
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

#define READ_AHEAD ((size_t)64 << 10)

typedef struct conn {
    int fd;
    int readable, writable;
    luamp_buf buf;          /* send's encoding buffer */
    luamp_buf in;           /* bytes read ahead: in.data[in_off .. in.len) */
    size_t in_off;
    unsigned in_gen;        /* luamp_fork_generation when they were read */
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
    luamp_buf_init(&c->in);
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

/* Bytes read ahead and not yet delivered (none in a child forked since). */
static size_t buffered(conn *c)
{
    if (c->in_gen != luamp_fork_generation) {
        c->in.len = c->in_off = 0;
        c->in_gen = luamp_fork_generation;
    }
    return c->in.len - c->in_off;
}

/* Length of the frame at the front of what is buffered, if its header is
 * there; -1 otherwise. */
static int64_t frame_len(conn *c)
{
    if (buffered(c) < 4)
        return -1;
    const unsigned char *h = (const unsigned char *)c->in.data + c->in_off;
    return (int64_t)((uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24);
}

static int frame_ready(conn *c)
{
    int64_t n = frame_len(c);
    return n >= 0 && buffered(c) >= 4 + (size_t)n;
}

/* Waits until the socket is readable; 1 ready, 0 timeout. */
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

/* Reads what the socket has (blocking until at least one byte or end of
 * file), making room for `want` bytes at least.  Returns the count read,
 * 0 at end of file; raises on errors. */
static size_t fill(lua_State *L, conn *c, size_t want)
{
    size_t have = buffered(c);
    if (c->in_off > 0) {            /* move what is left to the front */
        memmove(c->in.data, c->in.data + c->in_off, have);
        c->in.len = have;
        c->in_off = 0;
    }
    if (want < READ_AHEAD)
        want = READ_AHEAD;
    if (luamp_buf_reserve(&c->in, want) != 0)
        return (size_t)luaL_error(L, "Pipe:recv: out of memory for a message of %d bytes", (int)want);
    for (;;) {
        ssize_t r = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (r >= 0) {
            c->in.len += (size_t)r;
            return (size_t)r;
        }
        if (errno == EINTR) {
            luamp_raise_interrupt(L);
            continue;
        }
        if (errno == ECONNRESET)
            return 0;
        return (size_t)luamp_sys_error(L, "Pipe:recv");
    }
}

static int c_recv(lua_State *L)
{
    conn *c = check_conn(L);
    if (!c->readable)
        return luaL_error(L, "cannot receive on the sending end of a one-way Pipe");
    double deadline = luamp_opt_deadline(L, 2);
    while (!frame_ready(c)) {
        int64_t n = frame_len(c);
        if (n > (int64_t)LUAMP_MAX_MESSAGE)
            return luaL_error(L, "Pipe:recv: a message of %d bytes is over the 1 GiB limit", (int)n);
        /* The timeout applies until a message starts; then its rest is
         * on its way and is waited for. */
        if (buffered(c) == 0 && !wait_readable(L, c, deadline)) {
            lua_pushnil(L);
            lua_pushliteral(L, "timeout");
            return 2;
        }
        size_t have = buffered(c);
        if (fill(L, c, n >= 0 ? 4 + (size_t)n - have : 4) == 0) {
            if (have == 0) {
                lua_pushnil(L);
                lua_pushliteral(L, "closed");
                return 2;
            }
            return luamp_raise(L, "closed", "Pipe:recv: the other end closed in the middle of a message");
        }
    }
    size_t n = (size_t)frame_len(c);
    const char *msg = c->in.data + c->in_off + 4;
    c->in_off += 4 + n;             /* taken, whatever decoding says */
    int r = luamp_decode(L, msg, n, 0);
    if (c->in_off == c->in.len) {
        c->in_off = c->in.len = 0;
        luamp_buf_trim(&c->in);
    }
    if (r != 0)
        return lua_error(L);
    return 1;
}

static int c_poll(lua_State *L)
{
    conn *c = check_conn(L);
    if (!c->readable)
        return luaL_error(L, "cannot poll the sending end of a one-way Pipe");
    double deadline = lua_isnoneornil(L, 2) ? 0 : luamp_opt_deadline(L, 2);
    lua_pushboolean(L, frame_ready(c) || wait_readable(L, c, deadline));
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
    luamp_buf_free(&c->in);
    luamp_buf_init(&c->in);
    c->in_off = 0;
    return 0;
}

/* For core.wait: -2 (ready now) when a whole message was read ahead. */
static int c_waitfd(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, LUAMP_CONN_MT);
    lua_pushinteger(L, c->fd >= 0 && c->readable && frame_ready(c) ? -2 : c->fd);
    return 1;
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
        {"__luamp_fd", c_waitfd},
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
