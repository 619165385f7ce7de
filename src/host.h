/* SPDX-License-Identifier: MIT */
/*
 * host.h - what host.c shares with the rest of luamp and its tests: where
 * the default pool size is kept, and the arena small blocks come from.
 */
#ifndef LUAMP_HOST_H
#define LUAMP_HOST_H

#include <stddef.h>

/* Registry field of the default size of a Pool created without one
 * (luamp_set_default_processes; nil: mp.cpu_count()). */

/* Whether states made by luamp_newstate take their small blocks from an
 * arena (host.c): not under AddressSanitizer, so that it sees each one. */
#if defined(__SANITIZE_ADDRESS__)
#define LUAMP_USE_ARENA 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LUAMP_USE_ARENA 0
#endif
#endif
#ifndef LUAMP_USE_ARENA
#define LUAMP_USE_ARENA 1
#endif
/* The address space an arena reserves: 16 GiB. */
#define LUAMP_ARENA_BYTES ((size_t)1 << 34)

#endif
