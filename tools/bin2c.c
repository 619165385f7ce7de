/* SPDX-License-Identifier: MIT */
/* bin2c NAME DIR FILE...: embeds the files DIR/FILE..., each under its base
 * name without ".lua" (lua/luamp/pool.lua: "pool"), as a table
 * `const struct luamp_lua_part NAME[]` ending with a NULL name, so the
 * Lua parts of luamp ship inside the library (src/module.c reads it). */
#include <stdio.h>
#include <string.h>

/* Prints `static const char partINDEX[]`: the bytes of DIR/FILE, and a
 * NUL (not counted in the length: sizeof - 1). */
static int embed(const char *dir, const char *file, int index)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) {
        fprintf(stderr, "bin2c: %s/%s: path too long\n", dir, file);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "bin2c: cannot open ");
        perror(path);
        return -1;
    }
    int c;
    unsigned long n = 0;
    printf("static const char part%d[] = {", index);
    while ((c = getc(f)) != EOF) {
        printf("%s%d,", n % 20 == 0 ? "\n" : "", c);
        n++;
    }
    printf("0};\n");
    int failed = ferror(f);
    if (failed) {
        fprintf(stderr, "bin2c: cannot read ");
        perror(path);
    }
    fclose(f);
    return failed ? -1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bin2c NAME DIR FILE... > output.c\n");
        return 2;
    }
    int nfiles = argc - 3;
    printf("/* Made by tools/bin2c from the parts in lua/luamp/: do not edit. */\n"
           "#include <stddef.h>\n"
           "struct luamp_lua_part { const char *name; const char *source; size_t len; };\n");
    for (int i = 0; i < nfiles; i++)
        if (embed(argv[2], argv[3 + i], i) != 0)
            return 1;
    printf("const struct luamp_lua_part %s[] = {\n", argv[1]);
    for (int i = 0; i < nfiles; i++) {
        const char *base = strrchr(argv[3 + i], '/');
        base = base ? base + 1 : argv[3 + i];
        size_t n = strlen(base);
        if (n > 4 && strcmp(base + n - 4, ".lua") == 0)
            n -= 4;
        printf("    { \"%.*s\", part%d, sizeof part%d - 1 },\n", (int)n, base, i, i);
    }
    printf("    { NULL, NULL, 0 }\n};\n");
    return fflush(stdout) == 0 ? 0 : 1;
}
