/* SPDX-License-Identifier: MIT */
/*
 * test_embed.c: the host API of luamp.h, used the way an application that
 * embeds luamp uses it: only luamp.h and the Lua API are needed.
 */
#include "luamp.h"
#include "ctap.h"
#include "../src/host.h"            /* LUAMP_USE_ARENA */

#include <lauxlib.h>           /* LUA_ERRFILE */

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

/* The string on top of the stack, "" when it is not one. */
static const char *top(lua_State *L)
{
    const char *s = lua_tostring(L, -1);

    return s != NULL ? s : "";
}

static int contains(const char *s, const char *part)
{
    return strstr(s, part) != NULL;
}

/* A new temporary file holding text; its name goes to path. */
static int make_file(char *path, size_t size, const char *text)
{
    int fd;
    size_t len = strlen(text);

    snprintf(path, size, "%s/luamp-embed-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    fd = mkstemp(path);
    if (fd < 0) {
        diag("mkstemp %s: %s", path, strerror(errno));
        return 0;
    }
    if (write(fd, text, len) != (ssize_t)len) {
        diag("write %s: %s", path, strerror(errno));
        close(fd);
        return 0;
    }
    return close(fd) == 0;
}

/* The contents of a small file, "" when it cannot be read. */
static const char *slurp(const char *path)
{
    static char buf[4096];
    size_t n = 0;
    FILE *f = fopen(path, "r");

    if (f != NULL) {
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return buf;
}

static void test_dostring(lua_State *L)
{
    int base = lua_gettop(L);
    int status;

    status = luamp_dostring(L, "return string.rep('ab', 2), 2 + 1", "=ok");
    ok(status == LUA_OK && lua_gettop(L) == base + 2, "dostring returns LUA_OK and leaves the chunk's 2 results");
    ok(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 3 && strcmp(lua_tostring(L, -2), "abab") == 0,
       "dostring runs with the standard libraries open (string.rep gave 'abab', 3)");
    lua_settop(L, base);

    status = luamp_dostring(L, "x = = 1", "=chunky");
    ok(status == LUA_ERRSYNTAX && lua_gettop(L) == base + 1, "a syntax error returns LUA_ERRSYNTAX with one message");
    ok(contains(top(L), "chunky:1:"), "a syntax error message names the chunk: %s", top(L));
    lua_settop(L, base);

    status = luamp_dostring(L, "x = = 1", NULL);
    ok(contains(top(L), "[string \"x = = 1\"]:1:"), "without a chunk name, the code names the chunk: %s", top(L));
    lua_settop(L, base);

    status = luamp_dostring(L, "local t = nil\nerror('boom')", "=rt");
    ok(status == LUA_ERRRUN && contains(top(L), "rt:2: boom"), "a runtime error returns LUA_ERRRUN with its position");
    ok(contains(top(L), "stack traceback:") && contains(top(L), "rt:2: in main chunk"),
       "a runtime error message carries a traceback");
    lua_settop(L, base);

    luamp_dostring(L, "error(setmetatable({}, {__tostring = function() return 'as text' end}))", "=obj");
    ok(strncmp(top(L), "as text\nstack traceback:", 24) == 0, "an error object is shown through __tostring, with a traceback");
    lua_settop(L, base);

    luamp_dostring(L, "error(true)", "=obj");
    ok(strncmp(top(L), "(error object is a boolean value)", 33) == 0, "an error object without __tostring is described");
    lua_settop(L, base);
}

static void test_dofile(lua_State *L)
{
    char path[256];
    char *argv[] = {path, "a", "b"};
    int base = lua_gettop(L);
    int status;

    if (!make_file(path, sizeof path, "return arg[0], arg[1], arg[2], #arg, select('#', ...), ...\n"))
        return;
    status = luamp_dofile(L, path, 3, argv);
    ok(status == LUA_OK && lua_gettop(L) == base + 7, "dofile returns LUA_OK and leaves the script's results");
    ok(strcmp(lua_tostring(L, base + 1), path) == 0 && strcmp(lua_tostring(L, base + 2), "a") == 0
       && strcmp(lua_tostring(L, base + 3), "b") == 0 && lua_tointeger(L, base + 4) == 2,
       "dofile sets arg[0] to argv[0] and arg[1..] to the arguments");
    ok(lua_tointeger(L, base + 5) == 2 && strcmp(lua_tostring(L, base + 6), "a") == 0
       && strcmp(lua_tostring(L, base + 7), "b") == 0, "the script receives its arguments as ...");
    lua_settop(L, base);

    luamp_dostring(L, "arg = {[-1] = 'host', [0] = 'old', 'stale', 'stale', 'stale'}", "=setup");
    luamp_dofile(L, path, 2, argv);
    lua_settop(L, base);
    luamp_dostring(L, "return arg[-1], #arg, arg[1]", "=check");
    ok(strcmp(lua_tostring(L, -3), "host") == 0 && lua_tointeger(L, -2) == 1 && strcmp(top(L), "a") == 0,
       "dofile replaces arg but keeps its negative indices (the host's options)");
    lua_settop(L, base);

    luamp_dostring(L, "arg = {[0] = 'kept'}", "=setup");
    luamp_dofile(L, path, 0, NULL);
    ok(strcmp(lua_tostring(L, base + 1), "kept") == 0 && lua_tointeger(L, base + 5) == 0,
       "dofile with argc 0 leaves arg alone and passes no arguments");
    lua_settop(L, base);
    unlink(path);

    status = luamp_dofile(L, path, 0, NULL);
    ok(status == LUA_ERRFILE && contains(top(L), "cannot open") && contains(top(L), path),
       "dofile of a missing file returns LUA_ERRFILE naming it: %s", top(L));
    lua_settop(L, base);

    if (!make_file(path, sizeof path, "\nerror('in file')\n"))
        return;
    status = luamp_dofile(L, path, 0, NULL);
    ok(status == LUA_ERRRUN && contains(top(L), ":2: in file") && contains(top(L), "stack traceback:"),
       "a script's runtime error has its line and a traceback");
    lua_settop(L, base);
    unlink(path);
}

static void test_dofile_stdin(lua_State *L)
{
    char path[256];
    char *argv[] = {"-", "x"};
    int saved;

    if (!make_file(path, sizeof path, "return arg[0], ...\n"))
        return;
    saved = dup(STDIN_FILENO);
    if (saved < 0 || freopen(path, "r", stdin) == NULL) {
        diag("cannot redirect stdin: %s", strerror(errno));
        return;
    }
    luamp_dofile(L, NULL, 2, argv);
    ok(strcmp(lua_tostring(L, -2), "-") == 0 && strcmp(top(L), "x") == 0, "dofile with path NULL runs standard input");
    lua_settop(L, 0);
    if (dup2(saved, STDIN_FILENO) < 0)
        diag("cannot restore stdin: %s", strerror(errno));
    clearerr(stdin);
    close(saved);
    unlink(path);
}

static void test_default_processes(lua_State *L)
{
    luamp_set_default_processes(L, 4);
    lua_getfield(L, LUA_REGISTRYINDEX, "luamp.default_processes");
    ok(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 4,
       "set_default_processes(4) stores the integer 4 in the registry");
    lua_pop(L, 1);
    luamp_set_default_processes(L, 0);
    ok(lua_getfield(L, LUA_REGISTRYINDEX, "luamp.default_processes") == LUA_TNIL,
       "set_default_processes(0) restores the default (nothing stored)");
    lua_pop(L, 1);
}

static void test_require(lua_State *L)
{
    int status = luamp_dostring(L, "local mp = require 'luamp'; return mp.version, package.loaded.luamp == mp", "=req");

    ok(status == LUA_OK && strcmp(lua_tostring(L, -2), LUAMP_VERSION) == 0 && lua_toboolean(L, -1),
       "require 'luamp' loads the preloaded module (version %s): %s", LUAMP_VERSION, lua_tostring(L, -2));
    lua_settop(L, 0);
}

/* luamp_close's contract, pinned with a stand-in module: it calls
 * package.loaded.luamp._shutdown, and reports its error on stderr. */
static void test_close(void)
{
    char marker[256], errpath[256], code[600];
    lua_State *L = luamp_newstate();
    int saved;

    if (L == NULL || !make_file(marker, sizeof marker, "") || !make_file(errpath, sizeof errpath, ""))
        return;
    snprintf(code, sizeof code,
             "package.loaded.luamp = {_shutdown = function()"
             " local f = assert(io.open('%s', 'w')); f:write('shut down'); f:close() end}",
             marker);
    luamp_dostring(L, code, "=fake");
    luamp_close(L);
    ok(strcmp(slurp(marker), "shut down") == 0, "luamp_close calls package.loaded.luamp._shutdown");

    L = luamp_newstate();
    luamp_dostring(L, "package.loaded.luamp = {_shutdown = function() error('cannot stop') end}", "=fake");
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    if (saved < 0 || freopen(errpath, "w", stderr) == NULL) {
        diag("cannot redirect stderr: %s", strerror(errno));
        return;
    }
    luamp_close(L);
    fflush(stderr);
    if (dup2(saved, STDERR_FILENO) < 0)
        diag("cannot restore stderr: %s", strerror(errno));
    close(saved);
    ok(strncmp(slurp(errpath), "luamp: fake:1: cannot stop\nstack traceback:", 43) == 0,
       "an error in _shutdown is printed on stderr with a traceback");
    unlink(marker);
    unlink(errpath);
}

/* How many of the whole pages inside [p, p + n) are resident. */
static size_t resident_pages(void *p, size_t n, size_t *pages)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t e = ((uintptr_t)p + n) & ~(uintptr_t)(page - 1);
    unsigned char vec[4096];
    size_t count = 0;

    *pages = (e - a) / page;
    if (*pages > sizeof vec || mincore((void *)a, e - a, vec) != 0) {
        diag("mincore: %s", strerror(errno));
        return 0;
    }
    for (size_t i = 0; i < *pages; i++)
        count += vec[i] & 1;
    return count;
}

/* A big block comes with its pages faulted in, without being written. */
static void test_populate(lua_State *L)
{
    size_t size = (size_t)4 << 20, pages, got;
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);

    /* The check can fail: an untouched malloc block is not resident. */
    char *plain = malloc(size);
    got = plain ? resident_pages(plain, size, &pages) : 0;
    ok(plain && got < pages, "an untouched malloc block is not resident (%zu of %zu pages)", got, pages);
    free(plain);

    void *u = lua_newuserdatauv(L, size, 0);
    got = resident_pages(u, size, &pages);
    ok(pages > 0 && got == pages, "a new 4 MiB userdata is resident before it is written (%zu of %zu pages)",
       got, pages);
    lua_pop(L, 1);

    char *p = f(ud, NULL, 0, 100);
    if (p)
        memset(p, 'x', 100);
    char *q = p ? f(ud, p, 100, size) : NULL;
    got = q ? resident_pages(q + 100, size - 100, &pages) : 0;
    ok(q && memcmp(q, "xxxx", 4) == 0 && got == pages,
       "a block grown to 4 MiB keeps its bytes and has its new pages resident (%zu of %zu)", got, pages);
    if (q)
        f(ud, q, size, 0);
}

/* Blocks from the state's allocator keep their bytes through any mix of
 * allocations, reallocations (across the small classes and to and from
 * malloc's sizes) and frees: 2,000 slots, 60,000 random steps, every
 * block filled with its own byte and checked before it changes. */
static void test_small_blocks(lua_State *L)
{
    enum { SLOTS = 2000, STEPS = 60000 };
    static unsigned char *blk[SLOTS];
    static size_t len[SLOTS];
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    unsigned long x = 12345;
    int intact = 1, failed = 0;

    for (int step = 0; step < STEPS; step++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        int i = (int)((x >> 33) % SLOTS);
        size_t n = (x >> 13) % 4 == 0 ? 0 : 1 + (x >> 20) % 700;
        unsigned char mark = (unsigned char)(i * 31 + step);
        if (blk[i] != NULL) {
            for (size_t k = 0; k < len[i]; k++)
                intact &= blk[i][k] == blk[i][0];
        }
        if (n == 0 && blk[i] == NULL)
            continue;
        unsigned char *p = f(ud, blk[i], blk[i] ? len[i] : LUA_TTABLE, n);
        if (n == 0) {
            blk[i] = NULL;
            continue;
        }
        if (p == NULL) {
            failed = 1;
            break;
        }
        size_t kept = blk[i] ? (len[i] < n ? len[i] : n) : 0;
        for (size_t k = 1; k < kept; k++)
            intact &= p[k] == p[0];
        memset(p, mark, n);
        blk[i] = p;
        len[i] = n;
    }
    for (int i = 0; i < SLOTS; i++) {
        if (blk[i] != NULL)
            f(ud, blk[i], len[i], 0);
        blk[i] = NULL;
    }
    ok(!failed && intact, "60,000 random allocations, reallocations and frees keep every block's bytes");

#if LUAMP_USE_ARENA
    /* The next block of a 16-byte class is the one last freed in it
     * (malloc would keep 40 and 48 bytes apart). */
    void *a = f(ud, NULL, LUA_TTABLE, 40);
    f(ud, a, 40, 0);
    void *b = f(ud, NULL, LUA_TTABLE, 48);
    ok(a != NULL && a == b, "a freed small block serves the next block of its size class");
    f(ud, b, 48, 0);
#else
    printf("ok %d # SKIP the state's arena is off under AddressSanitizer\n", ++ctap_n);
#endif
}

/* How many times `size` bytes this process has mapped in mappings whose
 * size is a multiple of it (the kernel merges neighbours). */
static int mappings_of(size_t size)
{
    FILE *fp = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    if (fp == NULL)
        return -1;
    while (fgets(line, sizeof line, fp) != NULL) {
        unsigned long from, to;
        if (sscanf(line, "%lx-%lx", &from, &to) == 2 && (to - from) % size == 0)
            n += (int)((to - from) / size);
    }
    fclose(fp);
    return n;
}

/* Closing a state gives its arena's address space back. */
static void test_arena_closed(void)
{
#if LUAMP_USE_ARENA
    size_t size = LUAMP_ARENA_BYTES;
    int before = mappings_of(size);
    lua_State *L = luamp_newstate();
    int during = mappings_of(size);
    if (L != NULL)
        luamp_close(L);
    int after = mappings_of(size);
    ok(L != NULL && during == before + 1 && after == before,
       "a state reserves an arena and closing it unmaps it (%d, %d, %d arenas mapped)", before, during, after);
#else
    printf("ok %d # SKIP the state's arena is off under AddressSanitizer\n", ++ctap_n);
#endif
}

/* luamp_clear_interrupt, as a host's prompt uses it.  Last: the state
 * that catches interrupts keeps them caught for the rest of the process. */
static void test_clear_interrupt(void)
{
    lua_State *L = luamp_newstate();
    int base, status;

    if (L == NULL)
        return;
    base = lua_gettop(L);
    luamp_dostring(L, "require 'luamp'", "=load");   /* interrupts are mp.Errors */
    lua_settop(L, base);
    luamp_catch_interrupts(L);
    ok(luamp_clear_interrupt(L) == 0, "luamp_clear_interrupt returns 0 when no interrupt arrived");
    raise(SIGINT);
    ok(luamp_clear_interrupt(L) == SIGINT, "luamp_clear_interrupt returns SIGINT for one that arrived between chunks");
    status = luamp_dostring(L, "return 42", "=after");
    ok(status == LUA_OK && lua_tointeger(L, -1) == 42, "the next chunk runs once the interrupt was taken back");
    lua_settop(L, base);
    ok(luamp_clear_interrupt(L) == 0, "an interrupt is taken back once");
    raise(SIGTERM);
    ok(luamp_clear_interrupt(L) == SIGTERM, "luamp_clear_interrupt returns SIGTERM for a SIGTERM");
    raise(SIGINT);
    status = luamp_dostring(L, "return 42", "=next");
    ok(status == LUA_ERRRUN && strncmp(top(L), "interrupted by SIGINT", 21) == 0,
       "an interrupt not taken back stops the next chunk as it starts, with a string message: %s", top(L));
    lua_settop(L, base);
    luamp_close(L);
}

int main(void)
{
    lua_State *L = luamp_newstate();

    ok(L != NULL, "luamp_newstate returns a state");
    if (L == NULL)
        return done_testing();
    test_dostring(L);
    test_dofile(L);
    test_dofile_stdin(L);
    test_default_processes(L);
    test_require(L);
    test_populate(L);
    test_small_blocks(L);
    luamp_close(L);
    test_close();
    test_arena_closed();
    test_clear_interrupt();
    return done_testing();
}
