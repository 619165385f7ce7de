/* SPDX-License-Identifier: MIT */
/*
 * host.c - the luamp host as a library: create a state, run scripts with
 * tracebacks, close it once the children are reaped.
 *
 * The luamp binary is a thin command-line layer over these functions, so an
 * application that embeds Lua gets exactly what the binary does.  Three
 * decisions shape the file:
 *
 *  - luamp is preloaded, not opened: the module starts when a script first
 *    requires it, and then sits in package.loaded like any module (which is
 *    how a module table travels by name to the workers).
 *  - Every chunk runs under one message handler that turns whatever was
 *    raised into a string with a traceback, so a caller prints one string
 *    and never has to know what the script threw.  The entry point calls
 *    the chunk itself, with no helper of ours in between, so that the
 *    traceback ends as lua's does: the main chunk, then one "[C]: in ?"
 *    for the host that ran it.
 *  - Each entry point does its work inside lua_pcall, so running out of
 *    memory becomes an error status instead of a panic that aborts the
 *    embedding application.
 *
 * States made here take small blocks from an arena of their own (below,
 * and doc/design.md, "Small blocks"), and big ones from malloc with the
 * missing pages faulted in at once (MADV_POPULATE_WRITE): one system call
 * instead of a page fault per 4 KiB.  Big blocks are strings and buffers
 * about to be filled, above all the results a Pool's parent receives;
 * faulting them in page by page was most of its time for 1 MiB results
 * (doc/design.md, "Big messages").
 *
 * Settings such as the default pool size live in the state's registry, not
 * in C globals, so that two states in one process do not share them.
 */
#include "luamp.h"
#include "host.h"
#include "registry.h"
#include "interrupt.h"
#include "sys.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include <lauxlib.h>
#include <lualib.h>

/* The error object at index 1 as a string.  Objects that are not strings
 * are described rather than lost, so that error({code = 1}) still tells
 * the user something. */
static const char *error_text(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    return msg;
}

/* The message handler of chunks: error object in, message with a
 * traceback out. */
static int msghandler(lua_State *L)
{
    luaL_traceback(L, L, error_text(L), 1);
    return 1;
}

/* The message handler while a chunk is being prepared: only an interrupt
 * can be raised there, and it has no stack of its own to show. */
static int plain_msghandler(lua_State *L)
{
    lua_pushstring(L, error_text(L));
    return 1;
}

/* Calls the function below its nargs arguments with msghandler in place;
 * lua_pcall's return convention. */
static int docall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    int status;

    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}

static int open_host(lua_State *L)
{
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_luamp);
    lua_setfield(L, -2, "luamp");
    return 0;
}

/* Blocks from this size up are faulted in when allocated (sys.h).
 * Smaller ones mostly reuse memory the process already has. */
#define POPULATE_FROM LUAMP_POPULATE_FROM

/*
 * Small blocks (tables, their parts, closures, short strings: most of
 * what a Lua program allocates) come from an arena of the state's own,
 * kept on free lists by size class.  Lua says the size of every block
 * it frees, so a block needs no header, and taking or giving one is a
 * pop or a push: the parent of a Pool that runs many small tasks spent a
 * sixth of its time in malloc and free (and in malloc_consolidate,
 * tidying what a cycle of the collector freed).  The arena is reserved
 * address space, touched as it is used; a block is the arena's if its
 * address is in it, so blocks malloc made (before the state took this
 * allocator, or when the arena is used up) go back to free.  Freed
 * small blocks stay on the lists for the state's next ones rather than
 * going back to malloc.  The arena goes when Lua frees the state itself,
 * its last block.  Under AddressSanitizer blocks are malloc's, so that
 * it sees every one.
 */
#define SMALL_MAX 512           /* bytes: bigger blocks are malloc's */
#define SMALL_STEP 16           /* size classes every 16 bytes */

typedef struct arena {
    char *base, *top, *end;     /* reserved: [base, end), used: [base, top) */
    void *state_block;          /* Lua frees it last (lua_close) */
    void *free_list[SMALL_MAX / SMALL_STEP + 1];
} arena;

static arena *arena_new(void)
{
    if (!LUAMP_USE_ARENA)
        return NULL;
    arena *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    /* Address space only: pages are backed when first touched.  A
     * system that refuses the reservation (strict overcommit) keeps
     * malloc for everything. */
    void *p = mmap(NULL, LUAMP_ARENA_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        free(a);
        return NULL;
    }
    a->base = a->top = p;
    a->end = a->base + LUAMP_ARENA_BYTES;
    return a;
}

static void arena_free(arena *a)
{
    if (a != NULL) {
        munmap(a->base, LUAMP_ARENA_BYTES);
        free(a);
    }
}

static inline int arena_has(const arena *a, const void *p)
{
    return (const char *)p >= a->base && (const char *)p < a->end;
}

/* A small block of class k (k * SMALL_STEP bytes), or NULL when the arena
 * is used up. */
static void *arena_take(arena *a, size_t k)
{
    void *p = a->free_list[k];
    if (p != NULL) {
        a->free_list[k] = *(void **)p;
        return p;
    }
    size_t n = k * SMALL_STEP;
    if ((size_t)(a->end - a->top) < n)
        return NULL;
    p = a->top;
    a->top += n;
    return p;
}

static inline void arena_give(arena *a, void *p, size_t k)
{
    *(void **)p = a->free_list[k];
    a->free_list[k] = p;
}

static inline size_t small_class(size_t n)
{
    return (n + SMALL_STEP - 1) / SMALL_STEP;
}

/* malloc's realloc plus luamp_populate() for big blocks. */
static void *big_realloc(void *ptr, size_t osize, size_t nsize)
{
    void *p = realloc(ptr, nsize);
    if (p != NULL && nsize >= POPULATE_FROM) {
        size_t kept = ptr != NULL ? osize : 0;
        if (kept < nsize)
            luamp_populate(p, kept, nsize);
    }
    return p;
}

/* lua_Alloc over the arena and malloc (see above).  For a new object ptr
 * is NULL and osize is its type, not a size. */
static void *alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    arena *a = ud;
    int ours = ptr != NULL && arena_has(a, ptr);
    if (nsize == 0) {
        if (ours) {
            arena_give(a, ptr, small_class(osize));
        } else {
            free(ptr);
            if (ptr != NULL && ptr == a->state_block)
                arena_free(a);      /* the state is gone */
        }
        return NULL;
    }
    if (ptr == NULL)
        osize = 0;
    if (!ours && ptr != NULL)       /* malloc's block stays malloc's */
        return big_realloc(ptr, osize, nsize);
    if (ours && small_class(osize) == small_class(nsize) && nsize <= SMALL_MAX)
        return ptr;
    void *p = nsize <= SMALL_MAX ? arena_take(a, small_class(nsize)) : NULL;
    if (p == NULL)
        p = big_realloc(NULL, 0, nsize);
    if (p != NULL && ours) {
        memcpy(p, ptr, osize < nsize ? osize : nsize);
        arena_give(a, ptr, small_class(osize));
    }
    return p;
}

/* lua_Alloc without an arena: malloc's realloc plus luamp_populate(). */
static void *alloc_malloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return big_realloc(ptr, ptr != NULL ? osize : 0, nsize);
}

lua_State *luamp_newstate(void)
{
    lua_State *L = luaL_newstate();

    if (L == NULL)
        return NULL;
    /* Blocks allocated so far are malloc's, and stay so. */
    arena *a = arena_new();
    if (a != NULL) {
        a->state_block = (char *)L - LUA_EXTRASPACE;
        lua_setallocf(L, alloc, a);
    } else {
        lua_setallocf(L, alloc_malloc, NULL);
    }
    lua_pushcfunction(L, open_host);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        lua_close(L);
        return NULL;
    }
    return L;
}

void luamp_set_default_processes(lua_State *L, int n)
{
    if (n > 0)
        lua_pushinteger(L, n);
    else
        lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LUAMP_DEFAULT_PROCESSES_KEY);
}

/* What one run needs: a file with its arguments, or a string. */
struct chunk {
    const char *path;   /* file to run, NULL for stdin (when code is NULL) */
    int argc;
    char **argv;
    const char *code;   /* source to run instead of a file */
    const char *name;   /* chunk name of code */
};

/* Replaces the global `arg` with argv, keeping the negative indices of the
 * old table: that is where a host such as the luamp binary keeps the
 * interpreter and its options, which a script may still want to read. */
static void set_arg_table(lua_State *L, int argc, char **argv)
{
    int i;

    lua_createtable(L, argc - 1, 0);
    if (lua_getglobal(L, "arg") == LUA_TTABLE) {
        for (i = -1; lua_rawgeti(L, -1, i) != LUA_TNIL; i--)
            lua_rawseti(L, -3, i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_setglobal(L, "arg");
}

/* Pushes the status of loading the chunk, then the loaded chunk and its
 * arguments, or the load error: a status travels back from here as a
 * value, because a load error must stay LUA_ERRSYNTAX or LUA_ERRFILE
 * rather than become a raised error. */
static int load_chunk(lua_State *L)
{
    const struct chunk *c = lua_touserdata(L, 1);
    int status, i;

    lua_settop(L, 0);
    lua_pushinteger(L, LUA_OK);
    if (c->code != NULL) {
        status = luaL_loadbuffer(L, c->code, strlen(c->code), c->name);
    } else {
        if (c->argc > 0)
            set_arg_table(L, c->argc, c->argv);
        status = luaL_loadfile(L, c->path);
        if (status == LUA_OK) {
            luaL_checkstack(L, c->argc, "too many arguments to script");
            for (i = 1; i < c->argc; i++)
                lua_pushstring(L, c->argv[i]);
        }
    }
    lua_pushinteger(L, status);
    lua_replace(L, 1);
    return lua_gettop(L);
}

/* Loads the chunk inside lua_pcall (building `arg` and loading can run
 * out of memory), then calls it from here, so that nothing of the host
 * but its caller lies under the chunk: a traceback ends as lua's does,
 * with the main chunk and one "[C]: in ?".  The message handler stays in
 * place under everything, so whatever is raised comes back as a string. */
static int run(lua_State *L, struct chunk *c)
{
    int base = lua_gettop(L);
    int handler = base + 1;
    int status;

    lua_pushcfunction(L, plain_msghandler);
    lua_pushcfunction(L, load_chunk);
    lua_pushlightuserdata(L, c);
    status = lua_pcall(L, 1, LUA_MULTRET, handler);
    if (status == LUA_OK) {
        status = (int)lua_tointeger(L, handler + 1);
        lua_remove(L, handler + 1);
        if (status == LUA_OK) {
            lua_pushcfunction(L, msghandler);
            lua_replace(L, handler);
            status = lua_pcall(L, lua_gettop(L) - handler - 1, LUA_MULTRET, handler);
        }
    }
    lua_remove(L, handler);
    return status;
}

int luamp_dofile(lua_State *L, const char *path, int argc, char **argv)
{
    struct chunk c = {path, argc, argv, NULL, NULL};

    return run(L, &c);
}

int luamp_dostring(lua_State *L, const char *code, const char *chunkname)
{
    struct chunk c = {NULL, 0, NULL, code, chunkname != NULL ? chunkname : code};

    return run(L, &c);
}

/* Raises the pending interrupt, which interrupt.c's luamp_raise_interrupt
 * forgets as it raises it. */
static int raise_interrupt(lua_State *L)
{
    luamp_raise_interrupt(L);
    return 0;
}

/* The interrupt is raised, inside lua_pcall, and its error dropped: that
 * way it is forgotten exactly as when a script catches it.  (The hook the
 * signal handler set may raise it as raise_interrupt is called: the same
 * error, caught the same way.) */
int luamp_clear_interrupt(lua_State *L)
{
    int sig = luamp_interrupt_pending();

    if (sig == 0)
        return 0;
    lua_pushcfunction(L, raise_interrupt);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK)
        lua_pop(L, 1);
    return sig;
}

/* Calls package.loaded.luamp._shutdown if the module was loaded; a state
 * that never required luamp has nothing to stop. */
static int shutdown_module(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "luamp") != LUA_TTABLE)
        return 0;
    if (lua_getfield(L, -1, "_shutdown") != LUA_TFUNCTION)
        return 0;
    if (docall(L, 0, 0) != LUA_OK)
        return lua_error(L);
    return 0;
}

/* The module shuts down before lua_close rather than from a __gc
 * metamethod: finalizers run in an unspecified order, and reaping children
 * needs the module's tables intact. */
void luamp_close(lua_State *L)
{
    lua_pushcfunction(L, shutdown_module);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        const char *msg = lua_tostring(L, -1);

        fprintf(stderr, "luamp: %s\n", msg != NULL ? msg : "error while shutting down");
    }
    lua_close(L);
}
