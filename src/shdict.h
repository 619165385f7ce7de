/* SPDX-License-Identifier: MIT */
/*
 * shdict.h - a dict and a list of byte strings in shared memory
 * (shdict.c), the storage under mp.Manager's dict() and list().
 *
 * An object is one memfd that every process using it maps; there is no
 * server.  Each call takes the object's lock (recursive for its holder,
 * a process), works on the shared memory directly and lets go.  Keys and
 * values are opaque bytes: keys compare by their bytes.  A process that
 * dies at any moment, holding the lock or not, leaves every key with its
 * old value or its new one, never a mix; the next locker repairs the
 * rest (see "Crash safety" in shdict.c).
 *
 * Every call that can fail returns one of shd_status.  Each waits for the
 * lock as long as it takes (only shdict_lock and shlist_lock take a
 * deadline), and returns SHD_INTERRUPTED if a SIGINT or SIGTERM reaches
 * the main script meanwhile (luamp_interrupt_pending).  Indices are
 * 0-based.
 */
#ifndef LUAMP_SHDICT_H
#define LUAMP_SHDICT_H

#include <stddef.h>
#include <stdint.h>
#include "codec.h"

typedef struct shdict shdict;
typedef struct shlist shlist;

enum shd_status {
    SHD_OK = 0,
    SHD_MISSING,      /* no such key */
    SHD_RANGE,        /* index out of range */
    SHD_TIMEOUT,      /* the lock was not taken by the deadline */
    SHD_INTERRUPTED,  /* a SIGINT/SIGTERM reached the main script while waiting */
    SHD_ERROR = -1    /* errno says why (EIO: the object's memory is not
                         what it should be, which no death can cause) */
};

/* ---- objects ------------------------------------------------------------ */

/* A new empty object; NULL (errno) when it cannot be made. */
shdict *shdict_create(void);
shlist *shlist_create(void);

/* A view of the object behind memfd fd (received by SCM_RIGHTS, or at
 * spawn), which the view then owns; NULL (errno, fd still the caller's)
 * when fd is not such an object (EINVAL) or cannot be mapped. */
shdict *shdict_attach(int fd);
shlist *shlist_attach(int fd);

/* The memfd, to send to another process (which attaches it). */
int shdict_fd(const shdict *d);
int shlist_fd(const shlist *l);

/* Unmaps and closes this process's view (releasing the lock if this
 * process holds it).  The object itself goes when the last process that
 * has it closes it or exits. */
void shdict_close(shdict *d);
void shlist_close(shlist *l);

/* ---- the lock ------------------------------------------------------------
 * Held across several calls, it makes them one atomic step (get, then
 * set: an update; or a get_lock():guard() block).  The calls take it
 * again themselves, which its holder may.  deadline: a luamp_now() time,
 * < 0 for none, 0 to only try.  SHD_OK, SHD_TIMEOUT, SHD_INTERRUPTED or
 * SHD_ERROR (unlock: EPERM when this process does not hold it). */
int shdict_lock(shdict *d, double deadline);
int shdict_unlock(shdict *d);
int shlist_lock(shlist *l, double deadline);
int shlist_unlock(shlist *l);

/* ---- dict ----------------------------------------------------------------- */

/* Copies the value of key into out (replacing its contents): SHD_OK or
 * SHD_MISSING. */
int shdict_get(shdict *d, const void *key, size_t klen, luamp_buf *out);

/* The value of key where it lies in shared memory, for a caller that
 * holds the lock: valid until its next call on this object, or unlock.
 * SHD_OK, SHD_MISSING, or SHD_ERROR (EPERM: the lock is not held). */
int shdict_peek(shdict *d, const void *key, size_t klen, const void **val, size_t *vlen);

/* Sets key to a copy of the value, adding the key or replacing its value. */
int shdict_set(shdict *d, const void *key, size_t klen, const void *val, size_t vlen);

/* Removes key, copying its value into old first unless old is NULL:
 * SHD_OK or SHD_MISSING. */
int shdict_delete(shdict *d, const void *key, size_t klen, luamp_buf *old);

/* SHD_OK when key is present, SHD_MISSING when not. */
int shdict_contains(shdict *d, const void *key, size_t klen);

int shdict_count(shdict *d, uint64_t *n);
int shdict_clear(shdict *d);

/* Calls fn for every entry, in no particular order, under the lock: it
 * may read this object but not change it; the bytes are valid during the
 * call only.  fn returns 0 to go on, anything else to stop. */
typedef int (*shd_visit)(void *arg, const void *key, size_t klen, const void *val, size_t vlen);
int shdict_foreach(shdict *d, shd_visit fn, void *arg);

/* Copies every entry into out (replacing its contents), to be read with
 * shd_next after the lock is let go: a consistent snapshot.  What is
 * copied: SHD_KEYS, SHD_VALUES or both; *n (if not NULL): how many. */
#define SHD_KEYS 1
#define SHD_VALUES 2
int shdict_snapshot(shdict *d, int what, luamp_buf *out, uint64_t *n);

/* Steps through a snapshot (of a dict or a list) from *pos (0 at first):
 * 1 and the next entry's bytes (a list's have no key: klen 0), or 0 at
 * the end. */
int shd_next(const luamp_buf *snap, size_t *pos, const char **key, size_t *klen,
             const char **val, size_t *vlen);

/* ---- list ----------------------------------------------------------------- */

int shlist_len(shlist *l, uint64_t *n);

/* Element i: copied into out / where it lies (as shdict_peek).  SHD_RANGE
 * past the end. */
int shlist_get(shlist *l, uint64_t i, luamp_buf *out);
int shlist_peek(shlist *l, uint64_t i, const void **val, size_t *vlen);

/* Replaces element i (i < length), adds one at the end, or inserts one
 * before element i (i <= length), moving the rest up. */
int shlist_set(shlist *l, uint64_t i, const void *val, size_t vlen);
int shlist_append(shlist *l, const void *val, size_t vlen);
int shlist_insert(shlist *l, uint64_t i, const void *val, size_t vlen);

/* Removes element i, moving the rest down, copying it into old first
 * unless old is NULL (a pop). */
int shlist_remove(shlist *l, uint64_t i, luamp_buf *old);

int shlist_clear(shlist *l);
int shlist_foreach(shlist *l, shd_visit fn, void *arg);   /* (key NULL) */
int shlist_snapshot(shlist *l, luamp_buf *out, uint64_t *n);

/* ---- inspection ----------------------------------------------------------- */

typedef struct shd_stats {
    uint64_t count;          /* keys, or elements */
    uint64_t slots;          /* the hash table's slots, or the list's room */
    uint64_t file_bytes;     /* the memfd's size */
    uint64_t resident_bytes; /* its pages that hold memory (fstat's st_blocks) */
    uint64_t heap_bytes;     /* up to the heap's top */
    uint64_t used_bytes;     /* in blocks in use (headers included) */
    uint64_t repairs;        /* changes of dead processes repaired */
} shd_stats;

int shdict_stats(shdict *d, shd_stats *st);
int shlist_stats(shlist *l, shd_stats *st);

/* Checks the whole object under its lock: NULL when it is consistent
 * (every block reachable from the dict or list in use, every other one
 * free and in its free list, counts right, no leak), else what is wrong.
 * Costs a walk of every block: for tests and debugging. */
const char *shdict_verify(shdict *d);
const char *shlist_verify(shlist *l);

/* Test hooks (a build with LUAMP_TEST_HOOKS only): the process SIGKILLs
 * itself the nth time it reaches `point` in a change, lock held. */
enum shd_kill_point {
    SHD_KILL_NONE,
    SHD_KILL_WRITTEN,    /* a new block written, not yet published */
    SHD_KILL_PUBLISHED,  /* published, the old block not yet freed */
    SHD_KILL_FREEING,    /* inside free: merged with neighbours, not in a list yet */
    SHD_KILL_SPLIT,      /* inside alloc: a free block split, its rest not in a list yet */
    SHD_KILL_REHASH,     /* at each 64th entry copied into a new hash table */
    SHD_KILL_GROWN,      /* the file made longer, the new size not yet published */
    SHD_KILL_EMPTIED     /* an object just emptied, its heap not reset yet */
};
void shd_test_kill_at(enum shd_kill_point point, unsigned nth);

#endif
