/* SPDX-License-Identifier: MIT */
/* ctap.h: a few macros that print TAP from C unit tests. */
#ifndef CTAP_H
#define CTAP_H
#include <stdio.h>

static int ctap_n, ctap_failed;

#define ok(cond, ...) do {                                              \
        int ctap_pass_ = !!(cond);                                      \
        printf("%s %d - ", ctap_pass_ ? "ok" : "not ok", ++ctap_n);     \
        printf(__VA_ARGS__);                                            \
        printf("\n");                                                   \
        if (!ctap_pass_) {                                              \
            ctap_failed++;                                              \
            printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                               \
        fflush(stdout);                                                 \
    } while (0)

#define skip(name, why) do {                                           \
        printf("ok %d - %s # SKIP %s\n", ++ctap_n, name, why);          \
        fflush(stdout);                                                 \
    } while (0)

#define diag(...) do { printf("# "); printf(__VA_ARGS__); printf("\n"); } while (0)

static inline int done_testing(void)
{
    printf("1..%d\n", ctap_n);
    fflush(stdout);
    return ctap_failed ? 1 : 0;
}
#endif
