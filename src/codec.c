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
 * Encoding writes with msgpack-c's packer, whose callback appends to the
 * caller's luamp_buf: the caller reuses that buffer from message to message,
 * so no memory is allocated per value.  The only per-message allocations
 * are Lua tables made on the first table or function: the seen-map (value
 * -> id) and the map of shared upvalues.  The encoder runs inside one
 * lua_pcall so that a Lua error in the middle (out of memory) leaves the
 * buffer as it was and the error goes on to the caller.  A refusal reports
 * the path of the culprit ("args[2].f"), collected while the recursion
 * unwinds, so the hot path never builds it.
 *
 * Decoding is luamp's own reader rather than msgpack-c's unpacker: that one
 * builds a msgpack_object tree in a zone allocated per message and caps
 * nesting at 32 levels, while luamp allows 200 and wants Lua values
 * directly.  The reader checks every length against the bytes that remain
 * before it reads or allocates anything, so truncated, lying or random
 * input yields an error message, never a crash or a huge allocation.
 *
 * Names are found through a reverse map value -> name kept in the registry
 * (weak keys).  Rebuilding it means walking every loaded module, so it is
 * checked at most once per message, when the first table or C function is
 * met, against a snapshot of package.loaded's entries, and rebuilt only
 * when a module was added, removed or replaced.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <msgpack.h>

#include "codec.h"

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
#define TOO_BIG "message larger than 1 GiB"

/* The module's registry table of objects: id -> object. */
#define OBJECTS_KEY "luamp.objects"

/* The codec's own registry entries, keyed by address: cheaper to look up
 * than strings, and that happens on every message. */
static char names_key;     /* value -> name, weak keys */
static char loaded_key;    /* package.loaded's values in traversal order; [0] their count */
static char buffer_key;    /* the bindings' encode buffer */

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
    free(b->data);
    luamp_buf_init(b);
}

/* ------------------------------------------------------------------ */
/* Encoder                                                             */

/* Stack slots of encode_main (arguments 1 and 2 are the value and the
 * encoder); each table is made on first use. */
enum { SLOT_SEEN = 3, SLOT_UPVALS, SLOT_NAMES, SLOT_PATH, SLOT_WHY, SLOT_TOP = SLOT_WHY };

typedef struct encoder {
    lua_State *L;
    msgpack_packer pk;
    luamp_buf *out;
    size_t start;          /* out->len before this message */
    const char *root;
    uint32_t next_id;
    int have_seen, have_upvals, have_names, names_rebuilt;
    /* The refusal: a static sentence, or NULL when it is the string in
     * SLOT_WHY.  `whole` refusals (size, memory) get no path. */
    const char *why;
    int whole;
} encoder;

static int enc_value(encoder *e, int depth);

/* A refusal about the message as a whole: its path would mislead. */
static int refuse_whole(encoder *e, const char *why)
{
    e->why = why;
    e->whole = 1;
    return -1;
}

/* msgpack-c's write callback.  It must not touch the Lua stack, as it
 * also serves lua_dump; it only records why it failed. */
static int enc_write(void *data, const char *p, size_t n)
{
    encoder *e = data;

    if (e->out->len - e->start + n > LUAMP_MAX_MESSAGE)
        return refuse_whole(e, TOO_BIG);
    if (luamp_buf_append(e->out, p, n) < 0)
        return refuse_whole(e, "out of memory");
    return 0;
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud)
{
    (void)L;
    return enc_write(ud, p, n);
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

/* The per-message tables are made on first use: a message without
 * tables or functions allocates nothing. */
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
    if (e->whole)
        return;
    luaL_checkstack(e->L, 4, NULL);
    lua_pushstring(e->L, text);
    path_add(e);
}

static void path_index(encoder *e, lua_Integer i)
{
    if (e->whole)
        return;
    luaL_checkstack(e->L, 4, NULL);
    lua_pushfstring(e->L, "[%I]", i);
    path_add(e);
}

static void path_upvalue(encoder *e, const char *name, int i)
{
    if (e->whole)
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

    if (e->whole)
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
    if (msgpack_pack_ext(&e->pk, n, EXT_NAMED) || msgpack_pack_ext_body(&e->pk, name, n))
        return -1;
    lua_pop(L, 1);
    return 1;
}

/* ---- identity ---- */

static void put_be(unsigned char *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

static int enc_ref(encoder *e, uint32_t id)
{
    unsigned char p[4];
    int n = id <= 0xff ? 1 : id <= 0xffff ? 2 : 4;

    put_be(p, id, n);
    return msgpack_pack_ext(&e->pk, n, EXT_REF) || msgpack_pack_ext_body(&e->pk, p, n)
        ? -1 : 0;
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

/* Valid UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), so that every other implementation accepts our `str`. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint64_t w;
        uint32_t cp;
        size_t more;
        unsigned c;

        if (n - i >= 8) {
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            more = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            more = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            more = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i - 1 < more)
            return 0;
        for (size_t k = 1; k <= more; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
            || (more == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += more + 1;
    }
    return 1;
}

static int enc_string(encoder *e)
{
    size_t n;
    const char *s = lua_tolstring(e->L, -1, &n);

    if (n > LUAMP_MAX_MESSAGE)
        return refuse_whole(e, TOO_BIG);   /* before spending time on checking it */
    if (utf8_valid((const unsigned char *)s, n))
        return msgpack_pack_str(&e->pk, n) || msgpack_pack_str_body(&e->pk, s, n) ? -1 : 0;
    return msgpack_pack_bin(&e->pk, n) || msgpack_pack_bin_body(&e->pk, s, n) ? -1 : 0;
}

static int enc_number(encoder *e)
{
    /* Floats always as float64: 1.0 must stay a float, NaN keep its bits. */
    if (lua_isinteger(e->L, -1))
        return msgpack_pack_int64(&e->pk, (int64_t)lua_tointeger(e->L, -1)) ? -1 : 0;
    return msgpack_pack_double(&e->pk, (double)lua_tonumber(e->L, -1)) ? -1 : 0;
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

    lua_pushvalue(L, -2);
    status = lua_pcall(L, 1, 1, 0);
    if (status == LUA_ERRMEM)
        lua_error(L);
    if (status != LUA_OK) {
        lua_pushfstring(L, "its __luamp_ref failed: %s",
                        lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)");
        return refuse_top(e);
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        return refuse(e, "its __luamp_ref did not return a string");
    id = lua_tolstring(L, -1, &n);
    if (msgpack_pack_ext(&e->pk, n, EXT_OBJ) || msgpack_pack_ext_body(&e->pk, id, n))
        return -1;
    lua_pop(L, 1);
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

static int enc_userdata(encoder *e)
{
    if (!get_ref_method(e->L))
        return refuse(e, "a userdata");
    return enc_obj(e);
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
    if (msgpack_pack_array(&e->pk, (size_t)n))
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

    if (msgpack_pack_map(&e->pk, (size_t)n))
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
    luaL_checkstack(e->L, SLACK, NULL);
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
    if (msgpack_pack_array(&e->pk, 3) || msgpack_pack_ext(&e->pk, 1, EXT_META)
        || msgpack_pack_ext_body(&e->pk, &zero, 1))
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
    lua_pop(L, 1);
    return enc_with_metatable(e, depth);
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
    return msgpack_pack_ext(&e->pk, 6, EXT_UPREF) || msgpack_pack_ext_body(&e->pk, p, 6)
        ? -1 : 0;
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
    if (msgpack_pack_array(&e->pk, (size_t)ar.nups + 2)
        || msgpack_pack_ext(&e->pk, 1, EXT_FUNC) || msgpack_pack_ext_body(&e->pk, &zero, 1)
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
    msgpack_packer *pk = &e->pk;

    switch (lua_type(e->L, -1)) {
    case LUA_TNIL:
        return msgpack_pack_nil(pk) ? -1 : 0;
    case LUA_TBOOLEAN:
        return (lua_toboolean(e->L, -1) ? msgpack_pack_true(pk) : msgpack_pack_false(pk)) ? -1 : 0;
    case LUA_TNUMBER:
        return enc_number(e);
    case LUA_TSTRING:
        return enc_string(e);
    case LUA_TTABLE:
        return enc_table(e, depth);
    case LUA_TFUNCTION:
        return lua_iscfunction(e->L, -1) ? enc_cfunction(e) : enc_lfunction(e, depth);
    case LUA_TUSERDATA:
        return enc_userdata(e);
    case LUA_TLIGHTUSERDATA:
        return refuse(e, "a light userdata");
    default:   /* LUA_TTHREAD, the last of Lua's types */
        return refuse(e, "a coroutine");
    }
}

/* Protected body of luamp_encode: (value, encoder) -> nil | refusal. */
static int encode_main(lua_State *L)
{
    encoder *e = lua_touserdata(L, 2);

    lua_settop(L, SLOT_TOP);
    lua_pushvalue(L, 1);
    if (enc_value(e, 1) == 0) {
        lua_pushnil(L);
        return 1;
    }
    push_refusal(e);
    return 1;
}

/* Scalars cannot need a table, a name or a Lua allocation: they skip the
 * protected call, which costs more than encoding them.  -1: not a scalar,
 * or refused (the protected path then says why). */
static int encode_scalar(encoder *e, int idx)
{
    lua_State *L = e->L;
    int r;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return msgpack_pack_nil(&e->pk) ? -1 : 0;
    case LUA_TBOOLEAN:
        return (lua_toboolean(L, idx) ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk)) ? -1 : 0;
    case LUA_TNUMBER:
    case LUA_TSTRING:
        lua_pushvalue(L, idx);
        r = lua_type(L, idx) == LUA_TNUMBER ? enc_number(e) : enc_string(e);
        lua_pop(L, 1);
        return r;
    default:
        return -1;
    }
}

int luamp_encode(lua_State *L, int idx, const char *root, luamp_buf *out)
{
    encoder e;

    memset(&e, 0, sizeof e);
    e.L = L;
    e.out = out;
    e.start = out->len;
    e.root = root != NULL ? root : "value";
    msgpack_packer_init(&e.pk, &e, enc_write);
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 4, NULL);
    if (encode_scalar(&e, idx) == 0)
        return 0;
    out->len = e.start;
    lua_pushcfunction(L, encode_main);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, &e);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        out->len = e.start;
        lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    out->len = e.start;
    return -1;
}

/* ------------------------------------------------------------------ */
/* Decoder                                                             */

typedef struct decoder {
    lua_State *L;
    const unsigned char *p, *end;
    int flags;
    int ids;              /* stack slot of the id -> value table */
    lua_Integer nids;
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

static void remember_value(decoder *d)
{
    lua_State *L = d->L;

    if (d->nids == 0) {
        lua_newtable(L);
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
static int peek_ext(decoder *d, ext *x)
{
    if (need(d, 1))
        return -1;
    if (!is_ext_byte(*d->p))
        return 0;
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

static int dec_obj(decoder *d, const ext *x)
{
    lua_State *L = d->L;

    if (lua_getfield(L, LUA_REGISTRYINDEX, OBJECTS_KEY) == LUA_TTABLE) {
        lua_pushlstring(L, (const char *)x->data, x->len);
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_remove(L, -2);
            return 0;
        }
    }
    lua_pushlstring(L, (const char *)x->data, x->len);
    return fail(d, "cannot receive a luamp object (%s) that this process does not know: "
                "objects created after a worker started cannot be sent to it yet",
                lua_tostring(L, -1));
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

static int fill_array(decoder *d, int t, uint64_t n, int depth)
{
    for (uint64_t i = 1; i <= n; i++) {
        if (dec_value(d, depth))
            return -1;
        if (lua_isnil(d->L, -1))
            lua_pop(d->L, 1);  /* a hole */
        else
            lua_rawseti(d->L, t, (lua_Integer)i);
    }
    return 0;
}

static int fill_map(decoder *d, int t, uint64_t n, int depth)
{
    lua_State *L = d->L;

    for (uint64_t i = 0; i < n; i++) {
        if (dec_value(d, depth))
            return -1;
        if (lua_isnil(L, -1))
            return fail(d, "nil map key");
        if (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1)))
            return fail(d, "NaN map key");
        if (dec_value(d, depth))
            return -1;
        if (lua_isnil(L, -1))
            lua_pop(L, 2);  /* a table cannot hold nil: the key goes */
        else
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
    return fill_array(d, lua_gettop(d->L), n, depth + 1);
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
        return dec_ext(d, c);
    else if ((c >= 0xc4 && c <= 0xc6) || c >= 0xd9)
        return dec_sized(d, c, depth);
    else   /* the one byte MessagePack never uses */
        return fail(d, "invalid byte 0xc1 in message");
    return 0;
}

int luamp_decode(lua_State *L, const char *data, size_t len, int flags)
{
    decoder d;
    int base = lua_gettop(L);

    luaL_checkstack(L, SLACK, NULL);
    if (len > LUAMP_MAX_MESSAGE) {
        lua_pushliteral(L, TOO_BIG);
        return -1;
    }
    lua_pushnil(L);   /* the id table, made on the first table */
    d.L = L;
    d.p = (const unsigned char *)data;
    d.end = d.p + len;
    d.flags = flags;
    d.ids = base + 1;
    d.nids = 0;
    if (dec_value(&d, 1) == 0) {
        if (d.p == d.end) {
            lua_remove(L, d.ids);
            return 0;
        }
        fail(&d, "%d trailing bytes after the message", (int)left(&d));
    }
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
    return -1;
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
    luamp_buf *b;
    size_t start, n;

    luaL_checkany(L, 1);
    b = state_buffer(L);
    /* Appending after what is there keeps a nested encode (from a
     * __luamp_ref) from clobbering the outer one. */
    start = b->len;
    if (luamp_encode(L, 1, root, b) != 0) {
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
