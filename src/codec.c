/* SPDX-License-Identifier: MIT */
/*
 * codec.c - Lua values <-> MessagePack.
 *
 * One message is one MessagePack object.  Plain data (nil, booleans,
 * integers, floats, strings, tables without metatables) is written as
 * standard MessagePack, so any implementation reads it; what plain
 * MessagePack cannot say uses six extension types (doc/format.md):
 *
 *   REF    a table or Lua function already written in this message,
 *          by id: ids 0, 1, 2, ... are given in order of first encounter,
 *          identically by the encoder and the decoder, so cycles and
 *          shared parts survive;
 *   NAMED  a loaded module, a C function or a module's table, by name
 *          ("string", "math.sqrt", "luamp.Error"): the receiver uses its
 *          own, since C functions and modules cannot be copied;
 *   META   first element of [META, body, metatable]: a table that has a
 *          metatable;
 *   FUNC   first element of [FUNC, bytecode, up1, ..., upN]: a Lua function;
 *   UPREF  an upvalue shared with an earlier function of the message;
 *   OBJ    a luamp object (queue, lock, ...) by the id its __luamp_ref gives.
 *
 * Encoding writes bytes straight into the caller's luamp_buf (the formats
 * msgpack-c's packer would choose), which the caller reuses from message
 * to message, so no memory is allocated per value.  It runs in two
 * passes, the second only when the first gives up.  The fast pass takes
 * plain data (scalars, and tables without metatables that have no name):
 * it allocates no Lua memory and runs no Lua code, so it needs no
 * protected call; it tells tables met before by address in a C array, and
 * writes an array in one traversal.  Anything else (a function, a
 * userdata, a metatable, a named table, a refusal) makes it give up, and
 * the protected pass encodes the value again inside one lua_pcall, with
 * per-message Lua tables (the seen-map value -> id, the map of shared
 * upvalues), so that a Lua error in the middle (out of memory) leaves the
 * buffer as it was and the error goes on to the caller.  A refusal
 * reports the path of the culprit ("args[2].f"), collected while the
 * recursion unwinds, so the hot path never builds it.
 *
 * Only the fast pass leaves big strings where they are (spans, codec.h),
 * so it must see as many messages as it can: the map of names it needs
 * for tables is made before the first one, rather than by the protected
 * pass that the first message with a table once went to.  And the size
 * limit (LUAMP_MAX_MESSAGE) is checked against the running total before
 * each string is looked at or copied; a refusal for size is final even
 * in the fast pass, as the protected pass would only write the same
 * bytes again, copying the strings the fast pass had pointed at, to come
 * to the same refusal (five 256 MiB strings: 1.7 s and 512 MiB more
 * memory to refuse, now 0.05 s and nothing).  A string of 4 GiB or more,
 * which MessagePack cannot hold, is refused before it is looked at too,
 * but by the protected pass, which names its path: only the strings
 * before it in the message are copied.
 *
 * Decoding is luamp's own reader rather than msgpack-c's unpacker: that one
 * builds a msgpack_object tree in a zone allocated per message and caps
 * nesting at 32 levels, while luamp allows 200 and wants Lua values
 * directly.  The reader checks every length against the bytes that remain
 * before it reads or allocates anything, so truncated, lying or random
 * input yields an error message, never a crash or a huge allocation.
 * Its table of ids is kept between messages, emptied.
 *
 * Names are found through a reverse map value -> name kept in the registry
 * (weak keys).  Rebuilding it means walking every loaded module, so the
 * protected pass checks it at most once per message, when the first table
 * or C function is met, against a snapshot of package.loaded's entries,
 * and rebuilds it only when a module was added, removed or replaced.  The
 * fast pass does not check: a table it finds in the map goes to the
 * protected pass, one it does not find travels by value (doc/format.md).
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "codec.h"
#include "registry.h"

enum ext_type {
    EXT_REF = 1,
    EXT_NAMED = 2,
    EXT_META = 3,
    EXT_FUNC = 4,
    EXT_UPREF = 5,
    EXT_OBJ = 6
};

#define STR_(x) #x
#define STR(x) STR_(x)
#define TOO_DEEP "nesting deeper than " STR(LUAMP_MAX_DEPTH) " levels"
#define TOO_BIG "message larger than " LUAMP_MAX_MESSAGE_TEXT
/* The encoder's refusal for size: by this address, the fast pass knows
 * the refusal is final (see fast_pass). */
static const char too_big[] = TOO_BIG;

/* The module's registry table of objects: id -> object. */

/* The codec's own registry entries, keyed by address: cheaper to look up
 * than strings, and that happens on every message. */
static char names_key;     /* value -> name, weak keys */
static char loaded_key;    /* package.loaded's values in traversal order; [0] their count */
static char buffer_key;    /* the bindings' encode buffer */
static char ids_key;       /* the decoder's id table between messages (ids_cache) */

/* A state keeps its encode buffer between calls up to this size. */
#define BUFFER_KEEP ((size_t)64 << 20)

/* Lua stack slots one nesting level may use, encoding or decoding. */
#define SLACK 8

/* ------------------------------------------------------------------ */
/* Buffers                                                             */

void luamp_buf_init(luamp_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->span_from = 0;
    b->spans = NULL;
    b->nspans = b->spancap = b->spanlen = 0;
}

void luamp_buf_reset(luamp_buf *b)
{
    b->len = 0;
    b->nspans = 0;
    b->spanlen = 0;
}

void luamp_buf_each(const luamp_buf *b, void (*put)(void *ctx, const char *p, size_t n), void *ctx)
{
    size_t from = 0;

    for (size_t i = 0; i < b->nspans; i++) {
        const luamp_span *s = &b->spans[i];
        put(ctx, b->data + from, s->at - from);
        put(ctx, s->p, s->n);
        from = s->at;
    }
    put(ctx, b->data + from, b->len - from);
}

static void copy_piece(void *ctx, const char *p, size_t n)
{
    char **dst = ctx;

    if (n > 0)
        memcpy(*dst, p, n);
    *dst += n;
}

void luamp_buf_copy_out(const luamp_buf *b, char *dst)
{
    luamp_buf_each(b, copy_piece, &dst);
}

/* Piece k of the message (see luamp_buf_cursor). */
static void buf_piece(const luamp_buf *b, size_t k, const char **p, size_t *n)
{
    size_t i = k / 2;

    if (k & 1) {
        *p = b->spans[i].p;
        *n = b->spans[i].n;
    } else {
        size_t from = i > 0 ? b->spans[i - 1].at : 0;
        size_t to = i < b->nspans ? b->spans[i].at : b->len;
        *p = b->data + from;
        *n = to - from;
    }
}

size_t luamp_buf_read(const luamp_buf *b, luamp_buf_cursor *c, char *dst, size_t n)
{
    size_t done = 0;

    while (done < n && c->piece <= 2 * b->nspans) {
        const char *p;
        size_t len, k;

        buf_piece(b, c->piece, &p, &len);
        k = len - c->off < n - done ? len - c->off : n - done;
        if (k > 0)
            memcpy(dst + done, p + c->off, k);
        done += k;
        c->off += k;
        if (c->off == len) {
            c->piece++;
            c->off = 0;
        }
    }
    return done;
}

/* Drops the spans from the n-th on (a cut back to before they were made). */
static void cut_spans(luamp_buf *b, size_t n)
{
    while (b->nspans > n)
        b->spanlen -= b->spans[--b->nspans].n;
}

int luamp_buf_reserve(luamp_buf *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (b->cap - b->len >= extra)
        return 0;
    if (extra > SIZE_MAX - b->len)
        return -1;
    need = b->len + extra;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int luamp_buf_append(luamp_buf *b, const void *p, size_t n)
{
    if (luamp_buf_reserve(b, n) < 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void luamp_buf_free(luamp_buf *b)
{
    size_t from = b->span_from;

    free(b->data);
    free(b->spans);
    luamp_buf_init(b);
    b->span_from = from;
}

/* ------------------------------------------------------------------ */
/* Encoder                                                             */

/* Stack slots of encode_main (arguments 1 and 2 are the value and the
 * encoder); each table is made on first use. */
enum { SLOT_SEEN = 3, SLOT_UPVALS, SLOT_NAMES, SLOT_PATH, SLOT_WHY, SLOT_TOP = SLOT_WHY };

/* The fast pass's set of tables met so far (id -> address): a linear
 * scan while small, then an open-addressing index over the same list.
 * Ids are given in order, so the list is indexed by id, and undoing the
 * last ids (a table that turned out not to be an array) is lowering
 * next_id: index entries whose id is past it, or whose list entry was
 * given to another table since, are ignored. */
#define SEEN_SMALL 16

typedef struct seen_set {
    const void *small[SEEN_SMALL];
    const void **list;     /* id -> address: `small`, or malloc'd past SEEN_SMALL */
    size_t cap;            /* of list */
    uint32_t *index;       /* id + 1 per slot, 0 when free; NULL while small */
    size_t mask, used;     /* index has mask + 1 slots, `used` of them taken */
} seen_set;

typedef struct encoder {
    lua_State *L;
    luamp_buf *out;
    size_t start;          /* out->len before this message */
    size_t spans0;         /* out->nspans, and */
    size_t spanlen0;       /* out->spanlen before it */
    const char *root;
    uint32_t next_id;
    int have_seen, have_upvals, have_names, names_rebuilt;
    /* The refusal: a static sentence, or NULL when it is the string in
     * SLOT_WHY.  `whole` refusals (size, memory) get no path. */
    const char *why;
    int whole;
    /* The fast pass (see luamp_encode): plain data only, no Lua
     * allocation, no protected call.  It gives up (-1) on anything else,
     * and the protected pass starts over. */
    int fast;
    int names;             /* fast pass: stack slot of the names map, or 0 */
    seen_set seen;
    /* luamp_encode_slice: the message is t[first .. first + count - 1];
     * luamp_encode_values (stack set): stack slots t .. t + count - 1 */
    int slice, stack;
    lua_Integer first, count;
    /* luamp_encode_items: why luamp objects are refused (NULL: they are
     * sent) */
    const char *no_objects;
} encoder;

static int enc_value(encoder *e, int depth);

/* A refusal about the message as a whole: its path would mislead. */
static int refuse_whole(encoder *e, const char *why)
{
    e->why = why;
    e->whole = 1;
    return -1;
}

/* ---- output: bytes go straight into the buffer ---- */

/* Makes room for n more bytes, within the message size limit.  It must
 * not touch the Lua stack, as it also serves lua_dump; it only records
 * why it failed. */
/* The message's bytes so far, spans included. */
static inline size_t written(const encoder *e)
{
    return e->out->len - e->start + (e->out->spanlen - e->spanlen0);
}

/* Cuts the message back to `len` bytes of data and `spans` spans. */
static void cut_back(encoder *e, size_t len, size_t spans)
{
    e->out->len = len;
    cut_spans(e->out, spans);
}

static int grow(encoder *e, size_t n)
{
    if (written(e) + n > LUAMP_MAX_MESSAGE)
        return refuse_whole(e, too_big);
    if (luamp_buf_reserve(e->out, n) < 0)
        return refuse_whole(e, "out of memory");
    return 0;
}

static inline int room(encoder *e, size_t n)
{
    const luamp_buf *b = e->out;

    if (b->cap - b->len >= n && written(e) + n <= LUAMP_MAX_MESSAGE)
        return 0;
    return grow(e, n);
}

static inline unsigned char *cursor(encoder *e)
{
    return (unsigned char *)e->out->data + e->out->len;
}

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

static int enc_write(encoder *e, const void *p, size_t n)
{
    if (room(e, n))
        return -1;
    if (n > 0)
        memcpy(cursor(e), p, n);
    e->out->len += n;
    return 0;
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud)
{
    (void)L;
    return enc_write(ud, p, n);
}

static inline int put_byte(encoder *e, unsigned c)
{
    if (room(e, 1))
        return -1;
    *cursor(e) = (unsigned char)c;
    e->out->len++;
    return 0;
}

/* A one-byte tag, then n bytes of v big-endian; room is made already. */
static inline void put_tagged(encoder *e, unsigned tag, uint64_t v, int n)
{
    unsigned char *p = cursor(e);

    p[0] = (unsigned char)tag;
    put_be(p + 1, v, n);
    e->out->len += 1 + (size_t)n;
}

/* The smallest int format, as msgpack-c's msgpack_pack_int64 chooses. */
static inline int put_int(encoder *e, int64_t v)
{
    if (room(e, 9))
        return -1;
    if (v >= 0) {
        if (v < 128) {
            *cursor(e) = (unsigned char)v;
            e->out->len++;
        } else if (v < 0x100) {
            put_tagged(e, 0xcc, (uint64_t)v, 1);
        } else if (v < 0x10000) {
            put_tagged(e, 0xcd, (uint64_t)v, 2);
        } else if (v < 0x100000000LL) {
            put_tagged(e, 0xce, (uint64_t)v, 4);
        } else {
            put_tagged(e, 0xcf, (uint64_t)v, 8);
        }
    } else if (v >= -32) {
        *cursor(e) = (unsigned char)(v & 0xff);
        e->out->len++;
    } else if (v >= -128) {
        put_tagged(e, 0xd0, (uint64_t)v, 1);
    } else if (v >= -32768) {
        put_tagged(e, 0xd1, (uint64_t)v, 2);
    } else if (v >= -2147483648LL) {
        put_tagged(e, 0xd2, (uint64_t)v, 4);
    } else {
        put_tagged(e, 0xd3, (uint64_t)v, 8);
    }
    return 0;
}

static inline int put_double(encoder *e, double d)
{
    uint64_t u;

    if (room(e, 9))
        return -1;
    memcpy(&u, &d, sizeof u);
    put_tagged(e, 0xcb, u, 8);
    return 0;
}

/* Header of an array (0x90), map (0x80), str (0xa0) or bin (0): fix
 * form when it fits, else 8, 16 or 32 bits of length. */
static inline int put_header(encoder *e, unsigned kind, size_t n)
{
    if (room(e, 5))
        return -1;
    switch (kind) {
    case 0x90:
    case 0x80:
        if (n < 16)
            return put_byte(e, kind | (unsigned)n);
        if (n < 0x10000)
            put_tagged(e, kind == 0x90 ? 0xdc : 0xde, n, 2);
        else
            put_tagged(e, kind == 0x90 ? 0xdd : 0xdf, n, 4);
        return 0;
    case 0xa0:
        if (n < 32)
            return put_byte(e, 0xa0 | (unsigned)n);
        if (n < 0x100)
            put_tagged(e, 0xd9, n, 1);
        else if (n < 0x10000)
            put_tagged(e, 0xda, n, 2);
        else
            put_tagged(e, 0xdb, n, 4);
        return 0;
    default:
        if (n < 0x100)
            put_tagged(e, 0xc4, n, 1);
        else if (n < 0x10000)
            put_tagged(e, 0xc5, n, 2);
        else
            put_tagged(e, 0xc6, n, 4);
        return 0;
    }
}

/* An extension value, with the smallest header for its size (fixext
 * 1, 2, 4, 8, 16, else ext 8, 16, 32), as msgpack-c writes them. */
static int put_ext(encoder *e, int type, const void *data, size_t n)
{
    unsigned fix = n == 1 ? 0xd4 : n == 2 ? 0xd5 : n == 4 ? 0xd6 : n == 8 ? 0xd7 : n == 16 ? 0xd8 : 0;
    unsigned char *p;

    if (room(e, 6 + n))
        return -1;
    if (fix != 0) {
        *cursor(e) = (unsigned char)fix;
        e->out->len++;
    } else if (n < 0x100) {
        put_tagged(e, 0xc7, n, 1);
    } else if (n < 0x10000) {
        put_tagged(e, 0xc8, n, 2);
    } else {
        put_tagged(e, 0xc9, n, 4);
    }
    p = cursor(e);
    *p = (unsigned char)type;
    if (n > 0)
        memcpy(p + 1, data, n);
    e->out->len += 1 + n;
    return 0;
}

/* ---- the fast pass's seen-set ---- */

static void seen_init(seen_set *s)
{
    s->list = s->small;
    s->cap = SEEN_SMALL;
    s->index = NULL;
    s->mask = 0;
    s->used = 0;
}

static void seen_free(seen_set *s)
{
    if (s->list != s->small)
        free((void *)s->list);
    free(s->index);
    seen_init(s);
}

static inline size_t seen_hash(const seen_set *s, const void *p)
{
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ULL;

    return (size_t)(h >> 32) & s->mask;
}

/* The id of the table at address p, or -1 if not met yet. */
static inline int64_t seen_find(const encoder *e, const void *p)
{
    const seen_set *s = &e->seen;

    if (s->index == NULL) {
        for (uint32_t i = 0; i < e->next_id; i++)
            if (s->list[i] == p)
                return i;
        return -1;
    }
    for (size_t h = seen_hash(s, p);; h = (h + 1) & s->mask) {
        uint32_t id = s->index[h];
        if (id == 0)
            return -1;
        if (id <= e->next_id && s->list[id - 1] == p)
            return id - 1;
    }
}

static void seen_index_put(seen_set *s, const void *p, uint32_t id)
{
    size_t h = seen_hash(s, p);

    while (s->index[h] != 0)
        h = (h + 1) & s->mask;
    s->index[h] = id + 1;
    s->used++;
}

/* Rebuilds the index with room for n ids, from the ids in use. */
static int seen_reindex(encoder *e, size_t n)
{
    seen_set *s = &e->seen;
    size_t slots = 64;

    while (slots < 2 * n)
        slots *= 2;
    free(s->index);
    s->index = calloc(slots, sizeof *s->index);
    if (s->index == NULL)
        return -1;
    s->mask = slots - 1;
    s->used = 0;
    for (uint32_t i = 0; i < e->next_id; i++)
        seen_index_put(s, s->list[i], i);
    return 0;
}

/* Gives the table at address p the next id; -1 out of memory. */
static int seen_add(encoder *e, const void *p)
{
    seen_set *s = &e->seen;
    uint32_t id = e->next_id;

    if (id == s->cap) {
        size_t cap = s->cap * 2;
        const void **list = s->list == s->small ? malloc(cap * sizeof *list)
            : realloc((void *)s->list, cap * sizeof *list);
        if (list == NULL)
            return -1;
        if (s->list == s->small)
            memcpy(list, s->small, sizeof s->small);
        s->list = list;
        s->cap = cap;
    }
    s->list[id] = p;
    e->next_id++;
    if (s->index != NULL && 2 * (s->used + 1) <= s->mask + 1) {
        seen_index_put(s, p, id);
        return 0;
    }
    /* the first index past SEEN_SMALL ids, or a fuller one: undone ids
     * are left out */
    if (e->next_id > SEEN_SMALL || s->index != NULL)
        return seen_reindex(e, 2 * (size_t)e->next_id);
    return 0;
}
static int refuse(encoder *e, const char *why)
{
    e->why = why;
    return -1;
}

/* A refusal whose sentence is made at run time: the string on top. */
static int refuse_top(encoder *e)
{
    lua_replace(e->L, SLOT_WHY);
    e->why = NULL;
    return -1;
}

/* The protected pass's per-message tables are made on first use. */
static void need_table(encoder *e, int slot, int *have)
{
    if (*have)
        return;
    lua_newtable(e->L);
    lua_replace(e->L, slot);
    *have = 1;
}

/* ---- the path of a refused value, collected while unwinding ---- */

/* Adds the segment on top of the stack (innermost first). */
static void path_add(encoder *e)
{
    lua_State *L = e->L;

    if (lua_isnil(L, SLOT_PATH)) {
        lua_newtable(L);
        lua_replace(L, SLOT_PATH);
    }
    lua_rawseti(L, SLOT_PATH, (lua_Integer)lua_rawlen(L, SLOT_PATH) + 1);
}

static void path_text(encoder *e, const char *text)
{
    if (e->whole || e->fast)
        return;
    luaL_checkstack(e->L, 4, NULL);
    lua_pushstring(e->L, text);
    path_add(e);
}

static void path_index(encoder *e, lua_Integer i)
{
    if (e->whole || e->fast)
        return;
    luaL_checkstack(e->L, 4, NULL);
    lua_pushfstring(e->L, "[%I]", i);
    path_add(e);
}

static void path_upvalue(encoder *e, const char *name, int i)
{
    if (e->whole || e->fast)
        return;
    luaL_checkstack(e->L, 4, NULL);
    if (name == NULL || *name == '\0' || *name == '(')
        lua_pushfstring(e->L, ".<upvalue %d>", i);
    else
        lua_pushfstring(e->L, ".<upvalue %s>", name);
    path_add(e);
}

static int is_keyword(const char *s, size_t n)
{
    static const char *const words[] = {
        "and", "break", "do", "else", "elseif", "end", "false", "for",
        "function", "goto", "if", "in", "local", "nil", "not", "or",
        "repeat", "return", "then", "true", "until", "while", NULL
    };
    for (int i = 0; words[i]; i++)
        if (strlen(words[i]) == n && memcmp(words[i], s, n) == 0)
            return 1;
    return 0;
}

/* A Lua name, so that the path can say `.name` (ASCII only: the
 * path must read the same in every locale). */
static int is_identifier(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return !is_keyword(s, n);
}

static void push_quoted(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    luaL_addstring(&b, "[\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            luaL_addchar(&b, '\\');
            luaL_addchar(&b, (char)c);
        } else if (c < 0x20 || c == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\%d", c);
            luaL_addstring(&b, esc);
        } else {
            luaL_addchar(&b, (char)c);
        }
    }
    luaL_addstring(&b, "\"]");
    luaL_pushresult(&b);
}

/* The segment for the value stored under the key at index k.  No
 * metamethod is called: tostring could run user code and fail. */
static void path_key(encoder *e, int k)
{
    lua_State *L = e->L;
    size_t n;
    const char *s;

    if (e->whole || e->fast)
        return;
    luaL_checkstack(L, 6, NULL);
    switch (lua_type(L, k)) {
    case LUA_TSTRING:
        s = lua_tolstring(L, k, &n);
        if (is_identifier(s, n))
            lua_pushfstring(L, ".%s", s);
        else
            push_quoted(L, s, n);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, k)) {
            lua_pushfstring(L, "[%I]", lua_tointeger(L, k));
        } else {
            lua_pushvalue(L, k);
            lua_pushfstring(L, "[%s]", lua_tostring(L, -1));
            lua_remove(L, -2);
        }
        break;
    case LUA_TBOOLEAN:
        lua_pushstring(L, lua_toboolean(L, k) ? "[true]" : "[false]");
        break;
    default:
        lua_pushfstring(L, "[%s: %p]", luaL_typename(L, k), lua_topointer(L, k));
        break;
    }
    path_add(e);
}

/* Pushes "cannot send <root><path>: <why>".  Very deep paths keep their
 * ends: the first and last segments tell where to look. */
static void push_refusal(encoder *e)
{
    lua_State *L = e->L;
    lua_Integer n = 0, keep = 10;
    luaL_Buffer b;

    if (!lua_isnil(L, SLOT_PATH))
        n = (lua_Integer)lua_rawlen(L, SLOT_PATH);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "cannot send ");
    luaL_addstring(&b, e->root);
    for (lua_Integer i = n; i >= 1; i--) {
        if (n > 3 * keep && i == n - keep) {
            luaL_addstring(&b, "...");
            i = keep + 1;
            continue;
        }
        lua_rawgeti(L, SLOT_PATH, i);
        luaL_addvalue(&b);
    }
    luaL_addstring(&b, ": ");
    if (e->why != NULL) {
        luaL_addstring(&b, e->why);
    } else {
        lua_pushvalue(L, SLOT_WHY);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
}

/* ---- names ---- */

static void push_weak_table(lua_State *L, const char *mode)
{
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushstring(L, mode);
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
}

static int is_cfunction(lua_State *L, int i)
{
    return lua_type(L, i) == LUA_TFUNCTION && lua_iscfunction(L, i);
}

/* map[x] = "mod.field" for the field at the top two slots (key, value)
 * of module `mod`, unless a better name is known: a module's own name,
 * or one outside _G. */
static void name_field(lua_State *L, int map, const char *mod)
{
    size_t n;
    const char *f, *cur;
    int in_g = strcmp(mod, "_G") == 0, named;

    if (lua_type(L, -2) != LUA_TSTRING)
        return;
    f = lua_tolstring(L, -2, &n);
    if (n == 0 || memchr(f, '.', n) != NULL)
        return;   /* the receiver splits names at the last dot */
    if (!is_cfunction(L, -1) && !(lua_istable(L, -1) && !in_g))
        return;
    lua_pushvalue(L, -1);
    lua_rawget(L, map);
    cur = lua_tostring(L, -1);
    named = cur != NULL && (in_g || strncmp(cur, "_G.", 3) != 0);
    lua_pop(L, 1);
    if (named)
        return;
    lua_pushvalue(L, -1);
    lua_pushfstring(L, "%s.%s", mod, f);
    lua_rawset(L, map);
}

static void name_module_fields(lua_State *L, int map, int mod)
{
    const char *name = lua_tostring(L, mod - 1);

    lua_pushnil(L);
    while (lua_next(L, mod)) {
        name_field(L, map, name);
        lua_pop(L, 1);
    }
}

/* Pushes a new map value -> name and stores it, with a snapshot of
 * package.loaded, in the registry.  Modules are named first so that no
 * field name hides one. */
static void names_build(lua_State *L)
{
    lua_Integer count = 0;
    int loaded, map;

    luaL_checkstack(L, 12, NULL);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    loaded = lua_gettop(L);
    push_weak_table(L, "k");
    map = lua_gettop(L);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, map + 1, ++count);
        if (lua_type(L, -2) == LUA_TSTRING && lua_rawlen(L, -2) > 0
            && (lua_istable(L, -1) || is_cfunction(L, -1))) {
            lua_pushvalue(L, -1);
            if (lua_rawget(L, map) == LUA_TNIL) {
                lua_pushvalue(L, -2);
                lua_pushvalue(L, -4);
                lua_rawset(L, map);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pushinteger(L, count);
    lua_rawseti(L, map + 1, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &loaded_key);
    lua_pushnil(L);
    while (lua_next(L, loaded)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1))
            name_module_fields(L, map, lua_gettop(L));
        lua_pop(L, 1);
    }
    lua_pushvalue(L, map);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &names_key);
    lua_replace(L, loaded);
}

/* Whether package.loaded still holds the snapshot's values, in the same
 * order.  A table that was not changed is traversed in the same order, so
 * this costs one lua_next per module and no hashing. */
static int names_current(lua_State *L)
{
    lua_Integer i = 0;
    int snap, same = 1;

    luaL_checkstack(L, 6, NULL);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key);
    snap = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    while (same && lua_next(L, snap + 1)) {
        lua_rawgeti(L, snap, ++i);
        same = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    lua_rawgeti(L, snap, 0);
    same = same && lua_tointeger(L, -1) == i;
    lua_settop(L, snap - 1);
    return same;
}

static void names_ready(encoder *e)
{
    lua_State *L = e->L;

    if (e->have_names)
        return;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &names_key) != LUA_TTABLE || !names_current(L)) {
        lua_pop(L, 1);
        names_build(L);
        e->names_rebuilt = 1;
    }
    lua_replace(L, SLOT_NAMES);
    e->have_names = 1;
}

/* A field may have been set since the map was built (a C function
 * assigned into a module): a miss is worth one rebuild per message. */
static int names_rebuild(encoder *e)
{
    if (e->names_rebuilt)
        return 0;
    names_build(e->L);
    lua_replace(e->L, SLOT_NAMES);
    e->names_rebuilt = 1;
    return 1;
}

/* Writes NAMED for the value on top if it has a name: 1 written, 0 not
 * named, -1 failed. */
static int enc_named(encoder *e)
{
    lua_State *L = e->L;
    size_t n;
    const char *name;

    names_ready(e);
    lua_pushvalue(L, -1);
    lua_rawget(L, SLOT_NAMES);
    if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 1);
        return 0;
    }
    name = lua_tolstring(L, -1, &n);
    if (put_ext(e, EXT_NAMED, name, n))
        return -1;
    lua_pop(L, 1);
    return 1;
}

/* ---- identity ---- */

static int enc_ref(encoder *e, uint32_t id)
{
    unsigned char p[4];
    int n = id <= 0xff ? 1 : id <= 0xffff ? 2 : 4;

    put_be(p, id, n);
    return put_ext(e, EXT_REF, p, (size_t)n);
}

/* Writes REF if the value on top was met before: 1 written, 0 new, -1
 * failed. */
static int enc_seen(encoder *e)
{
    lua_State *L = e->L;
    uint32_t id;

    need_table(e, SLOT_SEEN, &e->have_seen);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, SLOT_SEEN) == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    id = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return enc_ref(e, id) ? -1 : 1;
}

static uint32_t remember(encoder *e)
{
    lua_pushvalue(e->L, -1);
    lua_pushinteger(e->L, e->next_id);
    lua_rawset(e->L, SLOT_SEEN);
    return e->next_id++;
}

/* ---- scalars ---- */

/* Whether the n bytes at s are all ASCII, 32 at a time. */
static inline int ascii_block(const unsigned char *s)
{
    uint64_t a, b, c, d;

    memcpy(&a, s, 8);
    memcpy(&b, s + 8, 8);
    memcpy(&c, s + 16, 8);
    memcpy(&d, s + 24, 8);
    return ((a | b | c | d) & 0x8080808080808080ULL) == 0;
}

/* Valid UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), so that every other implementation accepts our `str`.
 * Runs of ASCII go 32 bytes at a time, then 8, then one; a multibyte
 * sequence is checked against the ranges of the Unicode standard's
 * table 3-7 of well-formed byte sequences. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    const unsigned char *end = s + n;

    for (;;) {
        unsigned c, lo, hi;
        size_t more;

        while (end - s >= 32 && ascii_block(s))
            s += 32;
        while (end - s >= 8) {
            uint64_t w;
            memcpy(&w, s, 8);
            if (w & 0x8080808080808080ULL)
                break;
            s += 8;
        }
        while (s < end && *s < 0x80)
            s++;
        if (s == end)
            return 1;
        /* a lead byte, then its continuation bytes; each sequence
         * followed by another goes round here, not by the ASCII loops */
        do {
            c = *s;
            lo = 0x80;
            hi = 0xbf;
            if (c < 0xc2) {
                return 0;   /* a continuation byte, or an overlong 2-byte form */
            } else if (c < 0xe0) {
                more = 1;
            } else if (c < 0xf0) {
                more = 2;
                if (c == 0xe0)
                    lo = 0xa0;   /* overlong */
                else if (c == 0xed)
                    hi = 0x9f;   /* surrogates */
            } else if (c < 0xf5) {
                more = 3;
                if (c == 0xf0)
                    lo = 0x90;   /* overlong */
                else if (c == 0xf4)
                    hi = 0x8f;   /* past U+10FFFF */
            } else {
                return 0;
            }
            if ((size_t)(end - s) <= more || s[1] < lo || s[1] > hi)
                return 0;
            for (size_t k = 2; k <= more; k++)
                if ((s[k] & 0xc0) != 0x80)
                    return 0;
            s += more + 1;
        } while (s < end && *s >= 0x80);
    }
}

/* The fewest bytes put_header writes for a string of n bytes (str; bin
 * may take one more). */
static inline size_t str_header_size(size_t n)
{
    return n < 32 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
}

/* Records the n bytes at s as a span at the end of the message (see
 * luamp_buf).  Only the fast pass makes spans: it runs no Lua code, so
 * no string it meets can be collected before the message is sent. */
static int add_span(encoder *e, const char *s, size_t n)
{
    luamp_buf *b = e->out;

    if (written(e) + n > LUAMP_MAX_MESSAGE)
        return refuse_whole(e, too_big);
    if (b->nspans == b->spancap) {
        size_t cap = b->spancap ? b->spancap * 2 : 8;
        luamp_span *p = realloc(b->spans, cap * sizeof *p);
        if (p == NULL)
            return refuse_whole(e, "out of memory");
        b->spans = p;
        b->spancap = cap;
    }
    b->spans[b->nspans++] = (luamp_span){ b->len, s, n };
    b->spanlen += n;
    return 0;
}

static int enc_string(encoder *e)
{
    size_t n;
    const char *s = lua_tolstring(e->L, -1, &n);
    unsigned char *p;
    int span = e->fast && e->out->span_from && n >= e->out->span_from;

    /* before spending time on checking it, and before a byte is copied */
    if (n > LUAMP_MAX_STRING)
        return refuse(e, "a string of 4 GiB or more (a MessagePack string holds at most 4 GiB - 1 bytes)");
    if (written(e) + str_header_size(n) + n > LUAMP_MAX_MESSAGE)
        return refuse_whole(e, too_big);
    if (room(e, span ? 5 : 5 + n))
        return -1;
    if (put_header(e, utf8_valid((const unsigned char *)s, n) ? 0xa0 : 0, n))
        return -1;
    if (span)
        return add_span(e, s, n);
    p = cursor(e);
    memcpy(p, s, n);
    e->out->len += n;
    return 0;
}

static inline int enc_number(encoder *e)
{
    /* Floats always as float64: 1.0 must stay a float, NaN keep its bits. */
    if (lua_isinteger(e->L, -1))
        return put_int(e, (int64_t)lua_tointeger(e->L, -1));
    return put_double(e, (double)lua_tonumber(e->L, -1));
}

/* ---- luamp objects ---- */

/* Writes OBJ for the value below the top, with the id returned by the
 * __luamp_ref function on top, which is popped. */
static int enc_obj(encoder *e)
{
    lua_State *L = e->L;
    size_t n;
    const char *id;
    int status;

    /* (a task for a cluster Pool: it may run on another host, where the
     * object's shared memory and descriptors do not exist) */
    if (e->no_objects != NULL) {
        const char *kind = "luamp object";
        if (luaL_getmetafield(L, -2, "__name") == LUA_TSTRING)
            kind = lua_tostring(L, -1);
        lua_pushfstring(L, "a %s cannot cross hosts (%s)", kind, e->no_objects);
        return refuse_top(e);
    }
    lua_pushvalue(L, -2);
    status = lua_pcall(L, 1, 1, 0);
    if (status == LUA_ERRMEM)
        lua_error(L);
    if (status != LUA_OK) {
        /* (an error object says what it is through its __tostring: a
         * closed Pipe end raises luamp's "this Pipe end is closed") */
        const char *why = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)";
        if (lua_type(L, -1) == LUA_TTABLE && luaL_getmetafield(L, -1, "__tostring") != LUA_TNIL) {
            lua_pushvalue(L, -2);
            if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
                why = lua_tostring(L, -1);
        }
        lua_pushfstring(L, "its __luamp_ref failed: %s", why);
        return refuse_top(e);
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        return refuse(e, "its __luamp_ref did not return a string");
    id = lua_tolstring(L, -1, &n);
    if (put_ext(e, EXT_OBJ, id, n))
        return -1;
    luamp_codec_objects_encoded++;
    /* registry["luamp.collect"][id] = object, when that table is set: what
     * a message refers to (the spawn start method sends their descriptors) */
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_COLLECT_KEY) == LUA_TTABLE) {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -4);
        lua_rawset(L, -3);
    }
    lua_pop(L, 2);
    return 0;
}

/* Pushes the __luamp_ref of the value on top's metatable and returns 1,
 * or pushes nothing and returns 0. */
static int get_ref_method(lua_State *L)
{
    if (!lua_getmetatable(L, -1))
        return 0;
    lua_pushliteral(L, "__luamp_ref");
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_type(L, -1) == LUA_TFUNCTION)
        return 1;
    lua_pop(L, 1);
    return 0;
}

/* With a metatable on top (popped when it returns 0): refuses the value
 * whose metatable has a string __luamp_nosend, which says why it cannot
 * travel ("a Pool cannot be sent: ..."), where copying its fields would
 * only fail deeper, on some private userdata the user never named. */
static int refuses_to_travel(encoder *e)
{
    lua_State *L = e->L;
    lua_pushliteral(L, "__luamp_nosend");
    if (lua_rawget(L, -2) == LUA_TSTRING) {
        lua_remove(L, -2);
        return refuse_top(e);
    }
    lua_pop(L, 1);
    return 0;
}

static int enc_userdata(encoder *e)
{
    if (get_ref_method(e->L))
        return enc_obj(e);
    if (lua_getmetatable(e->L, -1)) {
        if (refuses_to_travel(e))
            return -1;
        lua_pop(e->L, 1);
    }
    return refuse(e, "a userdata");
}

/* ---- tables ---- */

/* Whether the table at t is a sequence: keys exactly 1..n with n > 0.
 * Sets *count to its number of keys either way. */
static int is_array(lua_State *L, int t, lua_Unsigned *count)
{
    lua_Unsigned n = lua_rawlen(L, t), c = 0;
    int array = n > 0;

    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        c++;
        /* lua_isinteger first: lua_tointeger alone would take "2" for 2 */
        if (array && (!lua_isinteger(L, -1) || (lua_Unsigned)lua_tointeger(L, -1) - 1 >= n))
            array = 0;
    }
    *count = c;
    return array && c == n;
}

static int enc_array_items(encoder *e, int t, lua_Unsigned n, int depth)
{
    if (put_header(e, 0x90, (size_t)n))
        return -1;
    for (lua_Unsigned i = 1; i <= n; i++) {
        lua_rawgeti(e->L, t, (lua_Integer)i);
        if (enc_value(e, depth)) {
            path_index(e, (lua_Integer)i);
            return -1;
        }
        lua_pop(e->L, 1);
    }
    return 0;
}

static int enc_map_items(encoder *e, int t, lua_Unsigned n, int depth)
{
    lua_State *L = e->L;
    lua_Unsigned written = 0;

    if (put_header(e, 0x80, (size_t)n))
        return -1;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int k = lua_gettop(L) - 1;
        lua_pushvalue(L, k);
        if (enc_value(e, depth)) {
            path_text(e, ".<key>");
            return -1;
        }
        lua_pop(L, 1);
        if (enc_value(e, depth)) {
            path_key(e, k);
            return -1;
        }
        lua_pop(L, 1);
        written++;
    }
    /* A __luamp_ref that changes a table being sent would otherwise
     * produce a map whose header lies. */
    return written == n ? 0 : refuse(e, "a table that changed while it was being sent");
}

/* The table on top as a plain map or array, at nesting level `depth`. */
static int enc_body(encoder *e, int depth)
{
    int t = lua_gettop(e->L);
    lua_Unsigned n;

    if (depth > LUAMP_MAX_DEPTH)
        return refuse(e, TOO_DEEP);
    if (e->fast ? !lua_checkstack(e->L, SLACK) : (luaL_checkstack(e->L, SLACK, NULL), 0))
        return -1;
    if (is_array(e->L, t, &n))
        return enc_array_items(e, t, n, depth + 1);
    return enc_map_items(e, t, n, depth + 1);
}

/* [META, body, metatable]: the table's id is already given, so the body
 * and the metatable may refer to the table. */
static int enc_with_metatable(encoder *e, int depth)
{
    lua_State *L = e->L;
    static const char zero = 0;

    if (depth > LUAMP_MAX_DEPTH)
        return refuse(e, TOO_DEEP);
    if (put_header(e, 0x90, 3) || put_ext(e, EXT_META, &zero, 1))
        return -1;
    if (enc_body(e, depth + 1))
        return -1;
    lua_getmetatable(L, -1);
    if (enc_value(e, depth + 1)) {
        path_text(e, ".<metatable>");
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

static int enc_table(encoder *e, int depth)
{
    lua_State *L = e->L;
    int r;

    if ((r = enc_seen(e)) != 0 || (r = enc_named(e)) != 0)
        return r < 0 ? -1 : 0;
    if (get_ref_method(L))
        return enc_obj(e);
    remember(e);
    if (!lua_getmetatable(L, -1))
        return enc_body(e, depth);
    if (refuses_to_travel(e))
        return -1;
    lua_pop(L, 1);
    return enc_with_metatable(e, depth);
}

/* Fast pass: the table at t as a map of its entries in traversal
 * order, in one traversal: the header, written for fewer than 16 entries,
 * is fixed afterwards. */
static int fast_map(encoder *e, int t, int depth)
{
    lua_State *L = e->L;
    size_t mark = e->out->len, count = 0, spans = e->out->nspans;

    if (put_byte(e, 0x80))
        return -1;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pushvalue(L, -2);
        if (enc_value(e, depth) != 0)
            return -1;
        lua_pop(L, 1);
        if (enc_value(e, depth) != 0)
            return -1;
        lua_pop(L, 1);
        count++;
    }
    if (count >= 16) {
        /* map16 or map32 after all: the entries move up */
        size_t hdr = count < 0x10000 ? 3 : 5, body = e->out->len - mark - 1;
        unsigned char *p;
        if (room(e, hdr - 1))
            return -1;
        p = (unsigned char *)e->out->data + mark;
        memmove(p + hdr, p + 1, body);
        p[0] = hdr == 3 ? 0xde : 0xdf;
        put_be(p + 1, count, (int)hdr - 1);
        e->out->len += hdr - 1;
        for (size_t k = spans; k < e->out->nspans; k++)
            e->out->spans[k].at += hdr - 1;
    } else {
        e->out->data[mark] = (char)(0x80 | count);
    }
    return 0;
}

/* Fast pass: the table on top, met for the first time, that has no
 * metatable and no name.  A sequence is written in one traversal: the
 * header says #t, and the values follow as long as lua_next yields the
 * keys 1, 2, ..., #t in order, as it does when they all live in the
 * table's array part (constructors, appends, decoded arrays).  Another
 * key undoes what was written: a key that cannot be in a sequence, or a
 * hole where the next key should be, makes the table a map; an index
 * out of order (a sequence partly in the hash part) sends it the
 * general way, which counts the keys first.  A table whose border is 0
 * is a map. */
static int fast_body(encoder *e, int depth)
{
    lua_State *L = e->L;
    int t = lua_gettop(L), map = 0;
    lua_Unsigned n = lua_rawlen(L, t), i = 0;
    size_t mark = e->out->len, spans = e->out->nspans;
    uint32_t ids = e->next_id;

    if (depth > LUAMP_MAX_DEPTH || !lua_checkstack(L, SLACK))
        return -1;
    if (n == 0)
        return fast_map(e, t, depth + 1);
    if (put_header(e, 0x90, (size_t)n))
        return -1;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (i == n || !lua_isinteger(L, -2)) {
            map = 1;
        } else if ((lua_Unsigned)lua_tointeger(L, -2) != i + 1) {
            lua_Unsigned k = (lua_Unsigned)lua_tointeger(L, -2);
            map = k - 1 >= n || lua_rawgeti(L, t, (lua_Integer)i + 1) == LUA_TNIL;
        } else {
            if (lua_isinteger(L, -1) ? put_int(e, (int64_t)lua_tointeger(L, -1)) : enc_value(e, depth + 1))
                return -1;
            lua_pop(L, 1);
            i++;
            continue;
        }
        lua_settop(L, t);
        cut_back(e, mark, spans);
        e->next_id = ids;
        return map ? fast_map(e, t, depth + 1) : enc_body(e, depth);
    }
    return 0;
}

static int fast_table(encoder *e, int depth)
{
    lua_State *L = e->L;
    const void *p = lua_topointer(L, -1);
    int64_t id = seen_find(e, p);

    if (id >= 0)
        return enc_ref(e, (uint32_t)id);
    /* no map of names (fast_pass could not make one), a metatable, or a
     * name: the protected pass */
    if (e->names == 0 || lua_getmetatable(L, -1))
        return -1;
    lua_pushvalue(L, -1);
    if (lua_rawget(L, e->names) != LUA_TNIL)
        return -1;
    lua_pop(L, 1);
    if (seen_add(e, p))
        return -1;
    return fast_body(e, depth);
}

/* ---- functions ---- */

static int enc_cfunction(encoder *e)
{
    int r = enc_named(e);

    if (r == 0 && names_rebuild(e))
        r = enc_named(e);
    if (r == 0)
        return refuse(e, "a C function that is not in package.loaded");
    return r < 0 ? -1 : 0;
}

/* bin(bytecode).  lua_dump streams, so the length is unknown when the
 * header is due: write a bin32 header, then shrink it in place. */
static int enc_bytecode(encoder *e)
{
    static const char bin32[5] = { (char)0xc6, 0, 0, 0, 0 };
    size_t at = e->out->len, len, hdr;
    unsigned char *p;

    if (enc_write(e, bin32, sizeof bin32) || lua_dump(e->L, dump_writer, e, 0))
        return -1;
    len = e->out->len - at - 5;
    hdr = len <= 0xff ? 2 : len <= 0xffff ? 3 : 5;
    p = (unsigned char *)e->out->data + at;
    if (hdr < 5)
        memmove(p + hdr, p + 5, len);
    p[0] = hdr == 2 ? 0xc4 : hdr == 3 ? 0xc5 : 0xc6;
    put_be(p + 1, len, (int)hdr - 1);
    e->out->len = at + hdr + len;
    return 0;
}

static int enc_upref(encoder *e, lua_Integer where)
{
    unsigned char p[6];

    put_be(p, (uint64_t)where >> 16, 4);
    put_be(p + 4, (uint64_t)where & 0xffff, 2);
    return put_ext(e, EXT_UPREF, p, 6);
}

/* Upvalue i of the function at f, whose id is fid.  An upvalue met before
 * (lua_upvalueid) becomes UPREF(function id, index); it is recorded before
 * its value is written, which may hold another closure sharing it. */
static int enc_upvalue(encoder *e, int f, uint32_t fid, int i, int depth)
{
    lua_State *L = e->L;
    void *uid = lua_upvalueid(L, f, i);
    const char *name;

    need_table(e, SLOT_UPVALS, &e->have_upvals);
    lua_pushlightuserdata(L, uid);
    if (lua_rawget(L, SLOT_UPVALS) == LUA_TNUMBER) {
        lua_Integer where = lua_tointeger(L, -1);
        lua_pop(L, 1);
        return enc_upref(e, where);
    }
    lua_pop(L, 1);
    lua_pushlightuserdata(L, uid);
    lua_pushinteger(L, ((lua_Integer)fid << 16) | i);
    lua_rawset(L, SLOT_UPVALS);
    name = lua_getupvalue(L, f, i);
    if (enc_value(e, depth)) {
        path_upvalue(e, name, i);
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

/* [FUNC, bytecode, up1, ..., upN].  The id comes first so that a
 * recursive function finds itself among its upvalues. */
static int enc_lfunction(encoder *e, int depth)
{
    lua_State *L = e->L;
    static const char zero = 0;
    int f = lua_gettop(L), r;
    uint32_t fid;
    lua_Debug ar;

    if ((r = enc_seen(e)) != 0)
        return r < 0 ? -1 : 0;
    if (depth > LUAMP_MAX_DEPTH)
        return refuse(e, TOO_DEEP);
    luaL_checkstack(L, SLACK, NULL);
    fid = remember(e);
    lua_pushvalue(L, f);
    lua_getinfo(L, ">u", &ar);
    if (put_header(e, 0x90, (size_t)ar.nups + 2) || put_ext(e, EXT_FUNC, &zero, 1)
        || enc_bytecode(e))
        return -1;
    for (int i = 1; i <= ar.nups; i++)
        if (enc_upvalue(e, f, fid, i, depth + 1))
            return -1;
    return 0;
}

/* Writes the value on top of the stack, which stays there. */
static int enc_value(encoder *e, int depth)
{
    lua_State *L = e->L;
    int type = lua_type(L, -1);

    switch (type) {
    case LUA_TNIL:
        return put_byte(e, 0xc0);
    case LUA_TBOOLEAN:
        return put_byte(e, lua_toboolean(L, -1) ? 0xc3 : 0xc2);
    case LUA_TNUMBER:
        return enc_number(e);
    case LUA_TSTRING:
        return enc_string(e);
    case LUA_TTABLE:
        return e->fast ? fast_table(e, depth) : enc_table(e, depth);
    }
    if (e->fast)
        return -1;   /* functions, userdata and refusals: the protected pass */
    switch (type) {
    case LUA_TFUNCTION:
        return lua_iscfunction(L, -1) ? enc_cfunction(e) : enc_lfunction(e, depth);
    case LUA_TUSERDATA:
        return enc_userdata(e);
    case LUA_TLIGHTUSERDATA:
        return refuse(e, "a light userdata");
    default:   /* LUA_TTHREAD, the last of Lua's types */
        return refuse(e, "a coroutine");
    }
}

/* Stands for a slice's array among the tables the fast pass has met: the
 * array is a table of the message (it has an id) that is never made. */
static char slice_marker;

/* The message of luamp_encode_slice: an array of t[first], t[first+1],
 * ..., as encoding a table holding just them would write it. */
static int enc_slice(encoder *e, int t)
{
    lua_State *L = e->L;

    if (e->fast) {
        if (seen_add(e, &slice_marker))
            return -1;
    } else {
        e->next_id++;
    }
    if (put_header(e, 0x90, (size_t)e->count))
        return -1;
    for (lua_Integer i = 0; i < e->count; i++) {
        int type;
        if (e->stack) {
            lua_pushvalue(L, t + (int)i);
            type = lua_type(L, -1);
        } else {
            type = lua_rawgeti(L, t, e->first + i);
        }
        if (type == LUA_TNUMBER && lua_isinteger(L, -1)) {   /* (the common case, inline) */
            if (put_int(e, (int64_t)lua_tointeger(L, -1)))
                return -1;
        } else if (enc_value(e, 2)) {
            path_index(e, e->first + i);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* The whole message: the value at idx, or the slice of the table there. */
static int enc_root(encoder *e, int idx)
{
    if (e->slice)
        return enc_slice(e, idx);
    lua_pushvalue(e->L, idx);
    return enc_value(e, 1);
}

/* Protected body of luamp_encode: (value, encoder) -> nil | refusal. */
static int encode_main(lua_State *L)
{
    encoder *e = lua_touserdata(L, 2);

    lua_settop(L, SLOT_TOP);
    if (enc_root(e, 1) == 0) {
        lua_pushnil(L);
        return 1;
    }
    push_refusal(e);
    return 1;
}

static void encoder_init(encoder *e, lua_State *L, const char *root, luamp_buf *out, int fast,
                         lua_Integer first, lua_Integer count)
{
    e->slice = count >= 0;
    e->stack = 0;
    e->first = first;
    e->count = count;
    e->L = L;
    e->out = out;
    e->start = out->len;
    e->spans0 = out->nspans;
    e->spanlen0 = out->spanlen;
    e->root = root != NULL ? root : "value";
    e->next_id = 0;
    e->have_seen = e->have_upvals = e->have_names = e->names_rebuilt = 0;
    e->why = NULL;
    e->whole = 0;
    e->fast = fast;
    e->names = 0;
    e->no_objects = NULL;
    seen_init(&e->seen);
}

/*
 * Two passes, the second only when the first gives up.  The fast pass
 * takes plain data (scalars, tables without metatables that are not
 * named) and nothing else: it allocates no Lua memory and runs no Lua
 * code, so it needs no protected call, tables met are told apart by
 * address (lua_topointer) in a C set, and names are looked up in the
 * map as it stands, without checking package.loaded for changes.  Any
 * other value (a function, a userdata, a metatable, a named table), a
 * refusal or a lack of memory makes it give up; the buffer is cut back
 * and the protected pass encodes the whole value again, with the
 * checks, tables and error paths described above.
 */
static int names_build_main(lua_State *L)
{
    names_build(L);
    return 0;
}

/* Makes the map of names if the state has none yet, before the fast
 * pass, which gives up on every table without one: the first message
 * with a table went to the protected pass, which makes no spans, and so
 * copied its big strings (a first put of a table holding a 300 MiB
 * string copied it twice, the refusal of an oversized one only came
 * after a copy of up to the limit).  Protected, and only advice: when it
 * fails (out of memory), the protected pass makes the map or says why
 * it cannot. */
static void names_first(lua_State *L)
{
    lua_pushcfunction(L, names_build_main);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK)
        lua_pop(L, 1);
}

/* The fast pass over the value at idx, or the slice (first, count) of
 * the table there, or (stack) the count stack values from idx: 0, or -1
 * with out cut back when it gives up, or REFUSED with out cut back and
 * the refusal pushed when the message is over the size limit.
 *
 * That refusal is final.  What the fast pass wrote before it gave up
 * is what the protected pass writes for the same values, so a message
 * whose first part already passes the limit cannot come under it
 * there; and the protected pass makes no spans, so it copied every big
 * string the fast pass had only pointed at into the buffer before it
 * came to the same refusal (five 256 MiB strings in a table took 1.7 s
 * and 512 MiB more memory to refuse on a Queue, 2.4 s and 767 MiB on a
 * Pipe; now nothing is copied). */
#define REFUSED (-2)

static int fast_pass(lua_State *L, int idx, const char *root, luamp_buf *out,
                     lua_Integer first, lua_Integer count, int stack)
{
    encoder e;
    int top = lua_gettop(L), r, tables = 0;

    encoder_init(&e, L, root, out, 1, first, count);
    e.stack = stack;
    if (!stack)
        tables = lua_type(L, idx) == LUA_TTABLE;
    for (int i = 0; stack && i < count && !tables; i++)
        tables = lua_type(L, idx + i) == LUA_TTABLE;
    if (tables && lua_rawgetp(L, LUA_REGISTRYINDEX, &names_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        names_first(L);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &names_key);
    }
    if (tables && lua_istable(L, -1))
        e.names = lua_gettop(L);
    r = enc_root(&e, idx);
    seen_free(&e.seen);
    lua_settop(L, top);
    if (r != 0)
        cut_back(&e, e.start, e.spans0);
    if (r != 0 && e.why == too_big) {
        lua_pushfstring(L, "cannot send %s: %s", e.root, too_big);
        return REFUSED;
    }
    return r;
}

/* The protected pass over the value at idx (an absolute index), or the
 * slice of the table there. */
static int protected_pass(lua_State *L, int idx, const char *root, luamp_buf *out,
                          lua_Integer first, lua_Integer count, const char *no_objects)
{
    encoder e;

    encoder_init(&e, L, root, out, 0, first, count);
    e.no_objects = no_objects;
    lua_pushcfunction(L, encode_main);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, &e);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        cut_back(&e, e.start, e.spans0);
        lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    cut_back(&e, e.start, e.spans0);
    return -1;
}

/* (the fast pass sends no object: it leaves them to the protected one) */
static int encode(lua_State *L, int idx, const char *root, luamp_buf *out,
                  lua_Integer first, lua_Integer count, const char *no_objects)
{
    int r;

    idx = lua_absindex(L, idx);
    luaL_checkstack(L, SLACK, NULL);
    if ((r = fast_pass(L, idx, root, out, first, count, 0)) != -1)
        return r == 0 ? 0 : -1;
    return protected_pass(L, idx, root, out, first, count, no_objects);
}

int luamp_encode(lua_State *L, int idx, const char *root, luamp_buf *out)
{
    return encode(L, idx, root, out, 0, -1, NULL);
}

int luamp_encode_slice(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                       const char *root, luamp_buf *out)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    return encode(L, idx, root, out, first, count < 0 ? 0 : count, NULL);
}

int luamp_encode_items(lua_State *L, int idx, lua_Integer first, lua_Integer count,
                       const char *root, luamp_buf *out, const char *no_objects)
{
    if (first <= 0)
        return encode(L, idx, root, out, 0, -1, no_objects);
    luaL_checktype(L, idx, LUA_TTABLE);
    return encode(L, idx, root, out, first, count < 0 ? 0 : count, no_objects);
}

int luamp_encode_values(lua_State *L, int first, int n, const char *root, luamp_buf *out)
{
    int top = lua_gettop(L), r;

    first = lua_absindex(L, first);
    luaL_checkstack(L, SLACK, NULL);
    if ((r = fast_pass(L, first, root, out, 1, n, 1)) != -1)
        return r == 0 ? 0 : -1;
    /* The protected pass cannot see this stack: it gets them in a table. */
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushvalue(L, first + i);
        lua_rawseti(L, -2, i + 1);
    }
    r = protected_pass(L, top + 1, root, out, 1, n, NULL);
    lua_remove(L, top + 1);   /* (above it: the refusal, if any) */
    return r;
}

/* ------------------------------------------------------------------ */
/* Decoder                                                             */

typedef struct decoder {
    lua_State *L;
    const unsigned char *p, *end;
    int flags;
    int ids;              /* stack slot of the id -> value table */
    lua_Integer nids;
    struct ids_cache *cache;   /* where the id table came from, or NULL */
    int plain;            /* first pass: see decode() */
    int again;            /* the first pass met an extension type */
} decoder;

typedef struct ext {
    int type;
    const unsigned char *data;
    size_t len;
} ext;

static int dec_value(decoder *d, int depth);

/* Pushes the message and returns -1; luamp_decode drops everything
 * above it. */
static int fail(decoder *d, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    lua_pushvfstring(d->L, fmt, ap);
    va_end(ap);
    return -1;
}

static size_t left(const decoder *d)
{
    return (size_t)(d->end - d->p);
}

static int need(decoder *d, size_t n)
{
    return left(d) >= n ? 0 : fail(d, "truncated message");
}

static uint64_t get_be(const unsigned char *p, int n)
{
    uint64_t v = 0;

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* the widths MessagePack uses, as single loads (numbers and lengths
     * of every big message go through here) */
    switch (n) {
    case 1:
        return p[0];
    case 2: {
        uint16_t x;
        memcpy(&x, p, 2);
        return __builtin_bswap16(x);
    }
    case 4: {
        uint32_t x;
        memcpy(&x, p, 4);
        return __builtin_bswap32(x);
    }
    case 8:
        memcpy(&v, p, 8);
        return __builtin_bswap64(v);
    }
#endif
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads an n-byte big-endian length or number. */
static int take(decoder *d, int n, uint64_t *v)
{
    if (need(d, (size_t)n))
        return -1;
    *v = get_be(d->p, n);
    d->p += n;
    return 0;
}

/* The id table is needed from the first table or function of a
 * message.  Rather than a new one per message, a state keeps one in the
 * user value of a registry userdata, emptied after each message, and
 * marked busy in C while in use: a decode nested in this one (a module
 * loaded for a name, a finalizer) makes its own.  A Lua error (out of
 * memory) that leaves it marked busy only costs later messages a new
 * table each. */
typedef struct ids_cache {
    int busy;
} ids_cache;

static void ids_take(decoder *d)
{
    lua_State *L = d->L;
    ids_cache *c;

    switch (lua_rawgetp(L, LUA_REGISTRYINDEX, &ids_key)) {
    case LUA_TUSERDATA:
        c = lua_touserdata(L, -1);
        if (c->busy)
            break;
        c->busy = 1;
        d->cache = c;
        lua_getiuservalue(L, -1, 1);
        lua_remove(L, -2);
        return;
    case LUA_TNIL:
        lua_pop(L, 1);
        c = lua_newuserdatauv(L, sizeof *c, 1);
        c->busy = 1;
        d->cache = c;
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, -3, 1);
        lua_insert(L, -2);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &ids_key);
        return;
    }
    lua_pop(L, 1);
    lua_newtable(L);
}

static void remember_value(decoder *d)
{
    lua_State *L = d->L;

    if (d->plain)         /* nothing can refer back to it */
        return;
    if (d->nids == 0) {
        ids_take(d);
        lua_replace(L, d->ids);
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->ids, ++d->nids);
}

static int dec_bytes(decoder *d, uint64_t n)
{
    if (need(d, n))
        return -1;
    lua_pushlstring(d->L, (const char *)d->p, (size_t)n);
    d->p += n;
    return 0;
}

/* ---- extension types ---- */

/* The ext whose lead byte c was just read: fixext1..16, ext8/16/32. */
static int ext_body(decoder *d, unsigned c, ext *x)
{
    uint64_t n;

    if (c >= 0xd4 && c <= 0xd8)
        n = (uint64_t)1 << (c - 0xd4);
    else if (take(d, c == 0xc7 ? 1 : c == 0xc8 ? 2 : 4, &n))
        return -1;
    if (need(d, 1 + n))
        return -1;
    x->type = (int8_t)d->p[0];
    x->data = d->p + 1;
    x->len = (size_t)n;
    d->p += 1 + n;
    return 0;
}

static int is_ext_byte(unsigned c)
{
    return (c >= 0xd4 && c <= 0xd8) || (c >= 0xc7 && c <= 0xc9);
}

/* Consumes the next item if it is an ext (1), else leaves it (0). */
/* In the plain pass, an extension type ends it: the message is decoded
 * again with identities (see decode()). */
static int not_plain(decoder *d)
{
    d->again = 1;
    return fail(d, "not plain");
}

static int peek_ext(decoder *d, ext *x)
{
    if (need(d, 1))
        return -1;
    if (!is_ext_byte(*d->p))
        return 0;
    if (d->plain)
        return not_plain(d);
    d->p++;
    return ext_body(d, d->p[-1], x) ? -1 : 1;
}

static int check_marker(decoder *d, const ext *x)
{
    if (x->len != 1)
        return fail(d, "bad payload size for extension type %d", x->type);
    if (x->data[0] != 0)
        return fail(d, "bad payload for extension type %d", x->type);
    return 0;
}

static int dec_ref(decoder *d, const ext *x)
{
    uint64_t id;

    if (x->len != 1 && x->len != 2 && x->len != 4)
        return fail(d, "bad payload size for extension type %d", x->type);
    id = get_be(x->data, (int)x->len);
    if ((lua_Integer)id >= d->nids)
        return fail(d, "reference to unknown table or function #%I", (lua_Integer)id);
    lua_rawgeti(d->L, d->ids, (lua_Integer)id + 1);
    return 0;
}

/* Protected: (name "m.f") -> field f of module m, requiring m if needed. */
static int resolve_field(lua_State *L)
{
    size_t n;
    const char *name = lua_tolstring(L, 1, &n);
    const char *dot = memrchr(name, '.', n);
    const char *mod;

    lua_pushlstring(L, name, (size_t)(dot - name));      /* 2 */
    mod = lua_tostring(L, 2);
    lua_getglobal(L, "require");
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);                                    /* 3 */
    if (!lua_istable(L, 3))
        return luaL_error(L, "module '%s' is not a table", mod);
    if (lua_getfield(L, 3, dot + 1) == LUA_TNIL)
        return luaL_error(L, "no field '%s' in module '%s'", dot + 1, mod);
    return 1;
}

/* Protected: (name) -> what the name stands for here.  "m.f" is field f
 * of module m (split at the last dot), or else a module of that name
 * not loaded yet ("socket.core"); a name without a dot is a module. */
static int resolve_name(lua_State *L)
{
    size_t n;
    const char *name = lua_tolstring(L, 1, &n);
    int dotted = memrchr(name, '.', n) != NULL;

    if (dotted) {
        lua_pushcfunction(L, resolve_field);
        lua_pushvalue(L, 1);
        if (lua_pcall(L, 1, 1, 0) == LUA_OK)
            return 1;
    }
    lua_getglobal(L, "require");
    lua_pushvalue(L, 1);
    if (!dotted) {
        lua_call(L, 1, 1);
        return 1;
    }
    if (lua_pcall(L, 1, 1, 0) == LUA_OK)
        return 1;
    lua_pop(L, 1);
    return lua_error(L);   /* the first reason tells more */
}

/* The common case without a protected call: the module, or the module
 * holding the field, is loaded already. */
static int named_fast(lua_State *L, const char *name, size_t n)
{
    const char *dot = memrchr(name, '.', n);

    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushlstring(L, name, n);
    if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 1);
    if (dot != NULL) {
        lua_pushlstring(L, name, (size_t)(dot - name));
        if (lua_rawget(L, -2) == LUA_TTABLE) {
            lua_pushlstring(L, dot + 1, (size_t)(name + n - dot - 1));
            if (lua_rawget(L, -2) != LUA_TNIL) {
                lua_replace(L, -3);
                lua_pop(L, 1);
                return 1;
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

static int dec_named(decoder *d, const ext *x)
{
    lua_State *L = d->L;
    const char *name = (const char *)x->data;
    int status;

    if (x->len == 0 || memchr(name, '\0', x->len) != NULL)
        return fail(d, "bad name in message");
    if (named_fast(L, name, x->len)) {
        /* Untrusted bytes must not name a function either: set as a
         * metamethod (__concat = os.execute), it would run on first use. */
        if ((d->flags & LUAMP_DECODE_NO_CODE) && lua_type(L, -1) == LUA_TFUNCTION) {
            lua_pop(L, 1);
            return fail(d, "refusing a function from an untrusted source");
        }
        return 0;
    }
    /* Nor make this process load a module from disk. */
    if (d->flags & LUAMP_DECODE_NO_CODE) {
        lua_pushlstring(L, name, x->len);
        return fail(d, "cannot receive %s: not loaded here (untrusted source)", lua_tostring(L, -1));
    }
    lua_pushlstring(L, name, x->len);   /* kept for the message */
    lua_pushcfunction(L, resolve_name);
    lua_pushvalue(L, -2);
    status = lua_pcall(L, 1, 1, 0);
    if (status == LUA_ERRMEM)
        lua_error(L);
    if (status != LUA_OK)
        return fail(d, "cannot receive %s: %s", lua_tostring(L, -2),
                    lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                    : "(error object is not a string)");
    lua_remove(L, -2);
    return 0;
}

/* A decode failed on an object made after this process started (see
 * luamp_decode_missed_newer). */
static int missed_newer;

int (*luamp_codec_newer_hook)(const char *id, size_t len);
unsigned long luamp_codec_objects_encoded;

/* Pushes registry.objects[id] and returns 1, or pushes nothing and
 * returns 0. */
static int find_obj(lua_State *L, const ext *x)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_OBJECTS_KEY) == LUA_TTABLE) {
        lua_pushlstring(L, (const char *)x->data, x->len);
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_remove(L, -2);
            return 1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

int luamp_fetch_objects(lua_State *L)
{
    int more = lua_getfield(L, LUA_REGISTRYINDEX, LUAMP_FETCH_KEY) == LUA_TFUNCTION
               && lua_pcall(L, 0, 1, 0) == LUA_OK
               && !(lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1));
    lua_pop(L, 1);
    return more;
}

static int dec_obj(decoder *d, const ext *x)
{
    lua_State *L = d->L;

    if (find_obj(L, x))
        return 0;
    /* (what the parent sent ahead of this message; if that fails, the
     * object stays unknown, as said below) */
    luamp_fetch_objects(L);
    if (find_obj(L, x))
        return 0;
    lua_pushlstring(L, (const char *)x->data, x->len);
    int why = luamp_codec_newer_hook ? luamp_codec_newer_hook((const char *)x->data, x->len) : 0;
    if (why == 2)
        return fail(d, "cannot receive a luamp object (%s) that this process does not know: "
                    "a spawned process knows only the objects it was started with (and, in a pool, "
                    "those its tasks were sent with)", lua_tostring(L, -1));
    if (why == 1) {
        missed_newer = 1;
        return fail(d, "cannot receive a luamp object (%s) made after this process started: "
                    "such an object can reach a pool's workers only as a task's argument",
                    lua_tostring(L, -1));
    }
    return fail(d, "cannot receive a luamp object (%s) that this process does not know: "
                "it was made in a process that did not start this one", lua_tostring(L, -1));
}

int luamp_decode_missed_newer(void)
{
    int r = missed_newer;
    missed_newer = 0;
    return r;
}

static int dec_ext(decoder *d, unsigned c)
{
    ext x;

    if (ext_body(d, c, &x))
        return -1;
    switch (x.type) {
    case EXT_REF:
        return dec_ref(d, &x);
    case EXT_NAMED:
        return dec_named(d, &x);
    case EXT_OBJ:
        return dec_obj(d, &x);
    case EXT_META:
    case EXT_FUNC:
    case EXT_UPREF:
        return fail(d, "misplaced extension type %d", x.type);
    default:
        return fail(d, "unknown extension type %d", x.type);
    }
}

/* ---- tables ---- */

/* Only the byte 0xc0 decodes to nil (a REF, a name or an object never
 * does), and only a float can be NaN: the lead byte tells, so that
 * plain values are not asked their type again. */
static int is_nil_next(const decoder *d)
{
    return d->p < d->end && *d->p == 0xc0;
}

/* The n values of an array into t[offset + 1 ...]. */
static int fill_array(decoder *d, int t, uint64_t n, int depth, lua_Integer offset)
{
    for (uint64_t i = 1; i <= n; i++) {
        if (is_nil_next(d)) {
            d->p++;   /* a hole */
            continue;
        }
        if (dec_value(d, depth))
            return -1;
        lua_rawseti(d->L, t, offset + (lua_Integer)i);
    }
    return 0;
}

static int fill_map(decoder *d, int t, uint64_t n, int depth)
{
    lua_State *L = d->L;

    for (uint64_t i = 0; i < n; i++) {
        int is_float = d->p < d->end && (*d->p == 0xca || *d->p == 0xcb);
        if (is_nil_next(d))
            return fail(d, "nil map key");
        if (dec_value(d, depth))
            return -1;
        if (is_float && isnan(lua_tonumber(L, -1)))
            return fail(d, "NaN map key");
        if (is_nil_next(d)) {
            d->p++;
            lua_pop(L, 1);  /* a table cannot hold nil: the key goes */
            continue;
        }
        if (dec_value(d, depth))
            return -1;
        lua_rawset(L, t);
    }
    return 0;
}

/* A new table for n items of at least `each` bytes, which must be
 * there: a lying count must not drive the allocation. */
static int new_table(decoder *d, uint64_t n, int each, int map, int depth)
{
    if (depth > LUAMP_MAX_DEPTH)
        return fail(d, TOO_DEEP);
    if (n > left(d) / (size_t)each)
        return fail(d, "truncated message");
    /* (a message over 2 GiB may hold that many nils; no Lua table does) */
    if (n > INT_MAX)
        return fail(d, "a table of %I entries, more than Lua's tables hold", (lua_Integer)n);
    luaL_checkstack(d->L, SLACK, NULL);
    lua_createtable(d->L, map ? 0 : (int)n, map ? (int)n : 0);
    remember_value(d);
    return 0;
}

static int dec_plain(decoder *d, uint64_t n, int map, int depth)
{
    if (new_table(d, n, map ? 2 : 1, map, depth))
        return -1;
    if (map)
        return fill_map(d, lua_gettop(d->L), n, depth + 1);
    return fill_array(d, lua_gettop(d->L), n, depth + 1, 0);
}

/* Reads an array or map header: 1 map, 0 array, -1 neither. */
static int table_header(decoder *d, uint64_t *n)
{
    unsigned c;

    if (need(d, 1))
        return -1;
    c = *d->p++;
    if (c >= 0x80 && c <= 0x8f) {
        *n = c & 0x0f;
        return 1;
    }
    if (c >= 0x90 && c <= 0x9f) {
        *n = c & 0x0f;
        return 0;
    }
    if (c == 0xdc || c == 0xdd)
        return take(d, c == 0xdc ? 2 : 4, n) ? -1 : 0;
    if (c == 0xde || c == 0xdf)
        return take(d, c == 0xde ? 2 : 4, n) ? -1 : 1;
    return fail(d, "a metatable wrapper without a table");
}

/* [META, body, metatable], META already read. */
static int dec_meta(decoder *d, uint64_t n, int depth)
{
    uint64_t count = 0;
    int map, t;

    if (n != 3)
        return fail(d, "a metatable wrapper of %I elements", (lua_Integer)n);
    if ((map = table_header(d, &count)) < 0 || dec_plain(d, count, map, depth + 1))
        return -1;
    t = lua_gettop(d->L);
    if (dec_value(d, depth + 1))
        return -1;
    if (!lua_istable(d->L, -1))
        return fail(d, "a metatable that is a %s", luaL_typename(d->L, -1));
    lua_setmetatable(d->L, t);
    return 0;
}

/* ---- functions ---- */

typedef struct chunk {
    const char *p;
    size_t n;
} chunk;

static const char *chunk_reader(lua_State *L, void *ud, size_t *size)
{
    chunk *c = ud;
    const char *p = c->p;

    (void)L;
    *size = c->n;
    c->n = 0;
    return *size > 0 ? p : NULL;
}

static int load_bytecode(decoder *d)
{
    uint64_t n;
    unsigned c;
    chunk ch;
    int status;

    if (need(d, 1))
        return -1;
    c = *d->p++;
    if (c < 0xc4 || c > 0xc6)
        return fail(d, "a function without bytecode");
    if (take(d, 1 << (c - 0xc4), &n) || need(d, n))
        return -1;
    ch.p = (const char *)d->p;
    ch.n = (size_t)n;
    d->p += n;
    status = lua_load(d->L, chunk_reader, &ch, "=luamp message", "b");
    if (status == LUA_ERRMEM)
        lua_error(d->L);
    if (status != LUA_OK)
        return fail(d, "bad function bytecode: %s", lua_tostring(d->L, -1));
    return 0;
}

/* UPREF(function id, index): upvalue i of f becomes that upvalue. */
static int join_upvalue(decoder *d, const ext *x, int f, int i)
{
    lua_State *L = d->L;
    uint64_t fid;
    unsigned idx;

    if (x->len != 6)
        return fail(d, "bad payload size for extension type %d", x->type);
    fid = get_be(x->data, 4);
    idx = (unsigned)get_be(x->data + 4, 2);
    if ((lua_Integer)fid >= d->nids)
        return fail(d, "reference to unknown table or function #%I", (lua_Integer)fid);
    lua_rawgeti(L, d->ids, (lua_Integer)fid + 1);
    if (lua_type(L, -1) != LUA_TFUNCTION || lua_iscfunction(L, -1))
        return fail(d, "a shared upvalue of something that is not a function");
    if (lua_getupvalue(L, -1, (int)idx) == NULL)
        return fail(d, "a shared upvalue %d of a function that has fewer", (int)idx);
    lua_pop(L, 1);
    lua_upvaluejoin(L, f, i, lua_gettop(L), (int)idx);
    lua_pop(L, 1);
    return 0;
}

static int dec_upvalue(decoder *d, int f, int i, int depth)
{
    const unsigned char *at = d->p;
    ext x;
    int r = peek_ext(d, &x);

    if (r < 0)
        return -1;
    if (r == 1 && x.type == EXT_UPREF)
        return join_upvalue(d, &x, f, i);
    d->p = at;
    if (dec_value(d, depth))
        return -1;
    lua_setupvalue(d->L, f, i);
    return 0;
}

/* [FUNC, bytecode, up1, ..., upN], FUNC already read.  The id is given
 * before the upvalues, as the encoder did. */
static int dec_func(decoder *d, uint64_t n, int depth)
{
    lua_State *L = d->L;
    lua_Debug ar;
    int f;

    if (d->flags & LUAMP_DECODE_NO_CODE)
        return fail(d, "refusing a function from an untrusted source");
    if (n < 2)
        return fail(d, "a function without bytecode");
    luaL_checkstack(L, SLACK, NULL);
    if (load_bytecode(d))
        return -1;
    f = lua_gettop(L);
    lua_pushvalue(L, f);
    lua_getinfo(L, ">u", &ar);
    if ((uint64_t)ar.nups != n - 2)
        return fail(d, "a function with %d upvalues sent with %I", (int)ar.nups, (lua_Integer)(n - 2));
    remember_value(d);
    for (int i = 1; i <= ar.nups; i++)
        if (dec_upvalue(d, f, i, depth + 1))
            return -1;
    return 0;
}

/* An array: a plain one, or a wrapper for a function or a table with a
 * metatable, told apart by a first element of type META or FUNC. */
static int dec_array(decoder *d, uint64_t n, int depth)
{
    const unsigned char *at = d->p;
    ext x;
    int r;

    if (depth > LUAMP_MAX_DEPTH)
        return fail(d, TOO_DEEP);
    if (n > 0) {
        if ((r = peek_ext(d, &x)) < 0)
            return -1;
        if (r == 1 && (x.type == EXT_META || x.type == EXT_FUNC)) {
            if (check_marker(d, &x))
                return -1;
            return x.type == EXT_META ? dec_meta(d, n, depth) : dec_func(d, n, depth);
        }
        d->p = at;
    }
    return dec_plain(d, n, 0, depth);
}

static int dec_number(decoder *d, unsigned c)
{
    uint64_t v;
    int n = 1 << (c & 3);   /* 0xcc..0xcf and 0xd0..0xd3: 1, 2, 4, 8 bytes */

    if (take(d, n, &v))
        return -1;
    if (c >= 0xd0) {
        /* sign-extend the n-byte value */
        uint64_t sign = (uint64_t)1 << (8 * n - 1);
        lua_pushinteger(d->L, (lua_Integer)(int64_t)((v ^ sign) - sign));
    } else if (v > (uint64_t)INT64_MAX) {
        lua_pushnumber(d->L, (lua_Number)v);   /* beyond Lua integers */
    } else {
        lua_pushinteger(d->L, (lua_Integer)v);
    }
    return 0;
}

static int dec_float(decoder *d, unsigned c)
{
    uint64_t v;

    if (c == 0xca) {
        uint32_t u;
        float f;
        if (take(d, 4, &v))
            return -1;
        u = (uint32_t)v;
        memcpy(&f, &u, sizeof f);
        lua_pushnumber(d->L, (lua_Number)f);
    } else {
        double f;
        if (take(d, 8, &v))
            return -1;
        memcpy(&f, &v, sizeof f);
        lua_pushnumber(d->L, (lua_Number)f);
    }
    return 0;
}

/* Strings, bins, arrays and maps with a length field: c is 0xc4..0xc6,
 * 0xd9..0xdb, 0xdc..0xdf. */
static int dec_sized(decoder *d, unsigned c, int depth)
{
    uint64_t n;
    int width;

    if (c <= 0xc6)
        width = 1 << (c - 0xc4);
    else if (c <= 0xdb)
        width = 1 << (c - 0xd9);
    else
        width = c == 0xdc || c == 0xde ? 2 : 4;
    if (take(d, width, &n))
        return -1;
    if (c <= 0xdb)
        return dec_bytes(d, n);
    if (c <= 0xdd)
        return dec_array(d, n, depth);
    return dec_plain(d, n, 1, depth);
}

/* Reads one value and pushes it; `depth` is its nesting level. */
static int dec_value(decoder *d, int depth)
{
    unsigned c;

    if (need(d, 1))
        return -1;
    c = *d->p++;
    if (c <= 0x7f || c >= 0xe0) {
        lua_pushinteger(d->L, (int8_t)c);
        return 0;
    }
    if (c >= 0xa0 && c <= 0xbf)
        return dec_bytes(d, c & 0x1f);
    if (c >= 0x90 && c <= 0x9f)
        return dec_array(d, c & 0x0f, depth);
    if (c >= 0x80 && c <= 0x8f)
        return dec_plain(d, c & 0x0f, 1, depth);
    if (c == 0xc0)
        lua_pushnil(d->L);
    else if (c == 0xc2 || c == 0xc3)
        lua_pushboolean(d->L, c == 0xc3);
    else if (c == 0xca || c == 0xcb)
        return dec_float(d, c);
    else if (c >= 0xcc && c <= 0xd3)
        return dec_number(d, c);
    else if (is_ext_byte(c))
        return d->plain ? not_plain(d) : dec_ext(d, c);
    else if ((c >= 0xc4 && c <= 0xc6) || c >= 0xd9)
        return dec_sized(d, c, depth);
    else   /* the one byte MessagePack never uses */
        return fail(d, "invalid byte 0xc1 in message");
    return 0;
}

/* Empties the state's id table for the next message; one that grew
 * large goes with the garbage, and a small one takes its place. */
#define IDS_KEEP 4096

static void ids_release(decoder *d)
{
    lua_State *L = d->L;

    if (d->cache == NULL)
        return;
    if (d->nids > IDS_KEEP) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &ids_key);
        lua_newtable(L);
        lua_setiuservalue(L, -2, 1);
        lua_pop(L, 1);
    } else {
        for (lua_Integer i = 1; i <= d->nids; i++) {
            lua_pushnil(L);
            lua_rawseti(L, d->ids, i);
        }
    }
    d->cache->busy = 0;
}

/* Decodes into t (a stack index) when t is not 0: see luamp_decode_into. */
static int into_table(decoder *d, int t, lua_Integer offset)
{
    lua_State *L = d->L;
    const unsigned char *at = d->p;
    uint64_t n;
    ext x;
    int r, wrapped = 0;

    if (need(d, 1))
        return -1;
    if ((*at >= 0x90 && *at <= 0x9f) || *at == 0xdc || *at == 0xdd) {
        if (table_header(d, &n) < 0)
            return -1;
        const unsigned char *body = d->p;
        if (n > 0) {
            if ((r = peek_ext(d, &x)) < 0)
                return -1;
            wrapped = r == 1 && (x.type == EXT_META || x.type == EXT_FUNC);
        }
        d->p = body;
        if (!wrapped) {        /* a plain array: t stands for it */
            if (n > left(d))
                return fail(d, "truncated message");
            luaL_checkstack(L, SLACK, NULL);
            lua_pushvalue(L, t);
            remember_value(d);
            lua_pop(L, 1);
            return fill_array(d, t, n, 2, offset);
        }
    }
    d->p = at;
    if (dec_value(d, 1))
        return -1;
    if (!lua_istable(L, -1))
        return fail(d, "a table was expected");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_isinteger(L, -2)) {
            lua_pushvalue(L, -1);
            lua_rawseti(L, t, offset + lua_tointeger(L, -3));
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

static int decode(lua_State *L, const char *data, size_t len, int flags, int t, lua_Integer offset)
{
    decoder d;
    int base = lua_gettop(L), r;

    luaL_checkstack(L, SLACK, NULL);
    if (len > LUAMP_MAX_MESSAGE) {
        lua_pushliteral(L, TOO_BIG);
        return -1;
    }
    /* Most messages are plain data: no extension types, so nothing in
     * them refers back to a table by its id.  A first pass records no
     * ids; the first extension type stops it, and the message is decoded
     * again from the start, recording them.  (That first pass makes only
     * tables and strings, and what it stored into t is stored again.) */
    d.plain = 1;
    for (;;) {
        lua_pushnil(L);   /* the id table, made on the first table */
        d.L = L;
        d.p = (const unsigned char *)data;
        d.end = d.p + len;
        d.flags = flags;
        d.ids = base + 1;
        d.nids = 0;
        d.cache = NULL;
        d.again = 0;
        r = t ? into_table(&d, t, offset) : dec_value(&d, 1);
        if (r == 0 || !d.again)
            break;
        lua_settop(L, base);
        d.plain = 0;
    }
    if (r == 0 && d.p != d.end)
        r = fail(&d, "%I trailing bytes after the message", (lua_Integer)left(&d));
    ids_release(&d);
    if (r == 0) {
        lua_remove(L, d.ids);
        return 0;
    }
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
    return -1;
}

int luamp_decode(lua_State *L, const char *data, size_t len, int flags)
{
    return decode(L, data, len, flags, 0, 0);
}

int luamp_decode_into(lua_State *L, const char *data, size_t len, int flags, int t, lua_Integer offset)
{
    return decode(L, data, len, flags, lua_absindex(L, t), offset);
}

/* decode_protected(pointer, length, flags) -> value; raises what
 * decoding says. */
static int decode_protected(lua_State *L)
{
    const char *p = lua_touserdata(L, 1);
    size_t n = (size_t)lua_tointeger(L, 2);

    if (luamp_decode(L, p, n, (int)lua_tointeger(L, 3)) != 0)
        return lua_error(L);
    return 1;
}

int luamp_decode_protected(lua_State *L, const char *data, size_t len, int flags)
{
    lua_pushcfunction(L, decode_protected);
    lua_pushlightuserdata(L, (void *)data);
    lua_pushinteger(L, (lua_Integer)len);
    lua_pushinteger(L, flags);
    return lua_pcall(L, 3, 1, 0) == LUA_OK ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* Lua bindings                                                        */

static int buffer_gc(lua_State *L)
{
    luamp_buf_free(lua_touserdata(L, 1));
    return 0;
}

/* The state's encode buffer, kept in the registry and freed by __gc, so
 * that an error in the middle of an encode leaks nothing. */
static luamp_buf *state_buffer(lua_State *L)
{
    luamp_buf *b;

    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &buffer_key) == LUA_TUSERDATA) {
        b = lua_touserdata(L, -1);
        lua_pop(L, 1);
        return b;
    }
    lua_pop(L, 1);
    b = lua_newuserdatauv(L, sizeof *b, 0);
    luamp_buf_init(b);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, buffer_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &buffer_key);
    return b;
}

int luamp_l_encode(lua_State *L)
{
    const char *root = luaL_optstring(L, 2, "value");
    const char *no_objects = luaL_optstring(L, 3, NULL);
    luamp_buf *b;
    size_t start, n;

    luaL_checkany(L, 1);
    b = state_buffer(L);
    /* Appending after what is there keeps a nested encode (from a
     * __luamp_ref) from clobbering the outer one. */
    start = b->len;
    if (encode(L, 1, root, b, 0, -1, no_objects) != 0) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    /* Reset first: a memory error in lua_pushlstring must not leave the
     * message in the buffer. */
    n = b->len - start;
    b->len = start;
    lua_pushlstring(L, b->data + start, n);
    if (start == 0 && b->cap > BUFFER_KEEP)
        luamp_buf_free(b);
    return 1;
}

int luamp_l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);

    if (luamp_decode(L, s, n, 0) != 0)
        return lua_error(L);
    return 1;
}
