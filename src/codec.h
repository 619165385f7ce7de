/* SPDX-License-Identifier: MIT */
/*
 * codec.h - Lua values <-> MessagePack.
 *
 * A message is exactly one MessagePack object.  Plain values (nil,
 * booleans, integers, floats, strings, tables without metatables, cycles or
 * shared parts) are standard MessagePack any implementation reads; the
 * rest uses extension types described in doc/format.md.
 *
 * The encoder writes MessagePack straight into a luamp_buf.  The
 * decoder is luamp's own reader: it bounds nesting explicitly, reads
 * strings straight out of the input and rejects every malformed or
 * truncated input with a message instead of crashing.
 */
#ifndef LUAMP_CODEC_H
#define LUAMP_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

/* Deepest nesting of tables (and functions' upvalues) in one message. */
#define LUAMP_MAX_DEPTH 200
/* Largest message that is encoded, sent or decoded: 1 TiB.  Memory is
 * the real bound; this one keeps every length that is read back (a
 * pipe's, a queue's, MPI's) far from overflowing and names a size in the
 * refusal.  (It was 1 GiB, until issue 15 asked for messages over 2 GiB:
 * MPI counts are ints, Python's pickles go past 4 GiB.) */
#define LUAMP_MAX_MESSAGE ((size_t)1 << 40)
#define LUAMP_MAX_MESSAGE_TEXT "1 TiB"
/* MessagePack's own bound: a string holds at most 4 GiB - 1 bytes (str 32,
 * bin 32), so a longer one cannot travel, whatever the message's size. */
#define LUAMP_MAX_STRING ((size_t)UINT32_MAX)

/* A string of a message left where it is, not copied into the buffer:
 * its n bytes at p belong at offset `at` of the buffer's data. */
typedef struct luamp_span {
    size_t at;
    const char *p;
    size_t n;
} luamp_span;

/*
 * A message being built.  With span_from > 0, the encoder's fast pass
 * (plain data) does not copy strings of span_from bytes or more: it
 * writes their headers and records spans, so that the message is data
 * with each span's bytes inserted at its offset (luamp_buf_size bytes in
 * all), and a queue copies the string once, straight into shared memory
 * (shmq_put_buf; a Pipe: luamp_buf_copy_out, luamp_buf_read).  The
 * strings are those of the value encoded, so they
 * live as long as it does; the message must be sent before the value
 * can be collected (no Lua code runs in between).
 */
typedef struct luamp_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t span_from;     /* 0: copy every string */
    luamp_span *spans;    /* in order of offset */
    size_t nspans, spancap;
    size_t spanlen;       /* their bytes in all */
} luamp_buf;

/* The span_from of the buffers queues and pipes send from: a copy of
 * 16 KiB costs more than keeping a span. */
#define LUAMP_SPAN_FROM ((size_t)16 << 10)

void luamp_buf_init(luamp_buf *b);
/* The message's length: data and spans. */
static inline size_t luamp_buf_size(const luamp_buf *b) { return b->len + b->spanlen; }
/* Empties the message, spans included. */
void luamp_buf_reset(luamp_buf *b);
/* Calls put(ctx, p, n) for each piece of the message in order: stretches
 * of data and the spans between them. */
void luamp_buf_each(const luamp_buf *b, void (*put)(void *ctx, const char *p, size_t n), void *ctx);
/* Copies the whole message, spans in place, to dst (luamp_buf_size bytes). */
void luamp_buf_copy_out(const luamp_buf *b, char *dst);
/* Where a reader of a message is: in its piece number `piece` (2i: the
 * data before span i, or after the last one when i == nspans; 2i + 1:
 * span i), `off` bytes in.  A zeroed cursor is at the start. */
typedef struct luamp_buf_cursor {
    size_t piece;
    size_t off;
} luamp_buf_cursor;
/* Copies the message's next n bytes (spans in place) to dst and moves the
 * cursor past them: a message streamed piece by piece, whatever its
 * spans, without being made whole first.  Returns the bytes copied, fewer
 * than n only at the end of the message. */
size_t luamp_buf_read(const luamp_buf *b, luamp_buf_cursor *c, char *dst, size_t n);
/* Makes room for `extra` more bytes; 0, or -1 when out of memory. */
int luamp_buf_reserve(luamp_buf *b, size_t extra);
int luamp_buf_append(luamp_buf *b, const void *p, size_t n);
void luamp_buf_free(luamp_buf *b);

/* Decoder options. */
/* Untrusted input: refuse bytecode and names of functions, and resolve
 * names only among loaded modules (no require). */
#define LUAMP_DECODE_NO_CODE 0x1

/*
 * Appends the value at stack index `idx` to `out` as one message.
 * `root` names the value in error paths ("args", "item", "result[1]").
 * Returns 0; on failure returns -1 with `out` restored to its previous
 * length and an error message pushed, such as
 *   "cannot send args[2].handler: a coroutine".
 * Raises only for Lua memory errors (out is then left as it was too).
 */
int luamp_encode(lua_State *L, int idx, const char *root, luamp_buf *out);

/*
 * luamp_encode for t[first], ..., t[first + count - 1] of the table at
 * `idx` (read raw) as an array, without making that table: the message is
 * the one a table holding just them would make, and refusals name each
 * value by its index in t ("items[1234]").
 */
int luamp_encode_slice(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                       const char *root, luamp_buf *out);

/*
 * luamp_encode of the value at idx (first <= 0), or luamp_encode_slice of
 * its `count` items from `first`; with `no_objects` not NULL, every luamp
 * object is refused, saying so ("cannot send args[1]: a luamp.Queue
 * cannot cross hosts (no_objects)"): a task for a cluster Pool, which may
 * run on another host.
 */
int luamp_encode_items(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                       const char *root, luamp_buf *out, const char *no_objects);

/*
 * luamp_encode_slice for the n stack values from index `first` (nils
 * included): what a function returned, say, without a table for them.
 */
int luamp_encode_values(lua_State *L, int first, int n, const char *root, luamp_buf *out);
/*
 * Decodes one message of exactly `len` bytes and pushes its value.
 * Returns 0; on malformed input returns -1 with an error message pushed
 * instead ("truncated message", "nesting deeper than 200 levels", ...).
 * Raises only for Lua memory errors.
 */
int luamp_decode(lua_State *L, const char *data, size_t len, int flags);

/*
 * luamp_decode inside a protected call, for a caller that holds a lock
 * over the input: never raises.  0 with the value pushed, or -1 with the
 * error pushed (a message, or Lua's out-of-memory error).  Needs 4 free
 * stack slots (luaL_checkstack before taking the lock).
 */
int luamp_decode_protected(lua_State *L, const char *data, size_t len, int flags);

/*
 * Decodes a message that is a table and stores its integer keys k in the
 * table at stack index t, at offset + k, instead of pushing it; a plain
 * array goes there without an intermediate table.  Returns as
 * luamp_decode, pushing nothing on success.
 */
int luamp_decode_into(lua_State *L, const char *data, size_t len, int flags, int t, lua_Integer offset);

/* Lua bindings: core.encode(v [, root]) -> string | nil, msg;
 * core.decode(s) -> v, raising on malformed input. */
int luamp_l_encode(lua_State *L);
int luamp_l_decode(lua_State *L);

/* Whether a decode since the last call failed on a luamp object made
 * after this process was forked; clears it.  The hook (set by
 * objects.c) tells such an object's id (1), or says this
 * process was spawned, so knows only what it was started with (2). */
int luamp_decode_missed_newer(void);
extern int (*luamp_codec_newer_hook)(const char *id, size_t len);
/* How many luamp objects encoders have written so far in this process: a
 * caller that sees it move knows the message names some. */
extern unsigned long luamp_codec_objects_encoded;
/* A decoder that meets an object it does not know first calls
 * registry[LUAMP_FETCH_KEY]() if that is a function (a pool's worker
 * reads the objects its parent sent it ahead of the task), then looks
 * again. */
/* Calls registry[LUAMP_FETCH_KEY]() protected: 1 when it ran and the
 * parent may send more, 0 when there is none, it failed, or it says the
 * parent's end is closed (it returned false). */
int luamp_fetch_objects(lua_State *L);


#endif
