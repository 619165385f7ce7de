/* SPDX-License-Identifier: MIT */
/*
 * shmem.h - a block of shared memory with a name (shmem.c), for
 * mp.SharedMemory: a file in /dev/shm that any process may open by its
 * name, Python's multiprocessing.shared_memory among them, and that stays
 * until its name is unlinked.
 */
#ifndef LUAMP_SHMEM_H
#define LUAMP_SHMEM_H

#include <stddef.h>

typedef struct shmem shmem;

#define SHMEM_CREATE 1   /* make the block if there is none of that name */
#define SHMEM_EXCL   2   /* with SHMEM_CREATE: refuse (EEXIST) if there is one */

/* 0 when name can name a block, else -1 with errno EINVAL (empty, ".",
 * "..", or a '/' after the first other character) or ENAMETOOLONG (more
 * than NAME_MAX bytes).  Names are those of shm_open, with or without
 * leading '/': "psm_1f2e" and "/psm_1f2e" are the same block,
 * /dev/shm/psm_1f2e, Python's SharedMemory("psm_1f2e"). */
int shmem_check_name(const char *name);

/* Maps the block `name` (flags 0: it must exist), making it first with
 * SHMEM_CREATE (size bytes, zeros; EINVAL for 0), and refusing an
 * existing one with SHMEM_EXCL too.  With SHMEM_CREATE | SHMEM_EXCL, name
 * may be NULL: a new random name.  An existing block is mapped whole
 * (size is then ignored, as Python does).  NULL with errno when it
 * cannot.  The view that made the block is its owner (shmem_owner). */
shmem *shmem_open(const char *name, int flags, size_t size);

/* Its name (without the leading '/'), size, and bytes. */
const char *shmem_name(const shmem *m);
size_t shmem_size(const shmem *m);
void *shmem_data(shmem *m);

/* Whether this view should unlink the name when it is done with the
 * block: set for the view that made it, which the Lua layer may change
 * (a block meant to outlive its maker). */
int shmem_owner(const shmem *m);
void shmem_set_owner(shmem *m, int owner);

/* Copies n bytes out of or into the block at offset off: 0, or -1 with
 * errno ERANGE when they do not lie within it. */
int shmem_read(const shmem *m, size_t off, void *dst, size_t n);
int shmem_write(shmem *m, size_t off, const void *src, size_t n);

/* Removes the name: no process can open the block any more, and its
 * memory goes once every view is closed.  0, or -1 (errno; ENOENT when
 * the name is gone already). */
int shmem_unlink(shmem *m);
int shmem_unlink_name(const char *name);

/* Unmaps this view (it holds no descriptor).  The name stays. */
void shmem_close(shmem *m);

#endif
