/* SPDX-License-Identifier: MIT */
/*
 * shmem.c - a block of shared memory with a name, for mp.SharedMemory.
 *
 * The dict and list of shdict.c and the objects of sync.c are memfds:
 * they have no name, and reach another process by inheritance or over a
 * socket.  mp.SharedMemory is the other kind, as in Python: a name that
 * any process can open, even one luamp did not start, and that outlives
 * every process until someone unlinks it.  It is a file in /dev/shm made
 * with shm_open, as Python's is, so each side can open the other's
 * blocks by name.  The size is fixed when the block is made (Python has
 * no resize either).
 *
 * A view maps the block and closes the descriptor at once: it holds no
 * file descriptor, only a mapping, so thousands of blocks cost no
 * descriptors.  The owner flag records who should unlink the name at the
 * end: by default the process that made the block (Python's
 * resource_tracker does the same, and warns at exit about blocks left).
 * The Lua layer decides when; nothing here unlinks by itself.
 */
#include "shmem.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>

struct shmem {
    char *data;
    size_t size;
    int owner;
    char name[NAME_MAX + 2];   /* "/" and the name */
};

int shmem_check_name(const char *name)
{
    if (name == NULL) {
        errno = EINVAL;
        return -1;
    }
    while (name[0] == '/')
        name++;
    size_t n = strlen(name);
    if (n > NAME_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (n == 0 || strchr(name, '/') != NULL || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

/* shm_open's name for `name`: "/" and the name. */
static int full_name(char *out, size_t cap, const char *name)
{
    if (shmem_check_name(name) != 0)
        return -1;
    while (name[0] == '/')
        name++;
    snprintf(out, cap, "/%s", name);
    return 0;
}

/* A new random name, as Python's "psm_" and 8 hex digits. */
static int random_name(char *out, size_t cap)
{
    unsigned char r[4];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        return -1;
    snprintf(out, cap, "/luamp_%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    return 0;
}

shmem *shmem_open(const char *name, int flags, size_t size)
{
    int create = flags & SHMEM_CREATE, excl = create && (flags & SHMEM_EXCL);
    if ((create && size == 0) || (name == NULL && !excl)) {
        errno = EINVAL;
        return NULL;
    }
    shmem *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    int fd = -1, made = 0;
    for (int tries = 0; fd < 0; tries++) {
        if (name ? full_name(m->name, sizeof m->name, name) : random_name(m->name, sizeof m->name))
            goto fail;
        if (create) {
            /* exclusively first, to know whether this view made it */
            fd = shm_open(m->name, O_RDWR | O_CREAT | O_EXCL, 0600);
            made = fd >= 0;
        }
        if (fd < 0 && (!create || (errno == EEXIST && !excl)))
            fd = shm_open(m->name, O_RDWR, 0);
        if (fd < 0 && !(name == NULL && errno == EEXIST && tries < 100))
            goto fail;
    }
    struct stat st;
    if (made && ftruncate(fd, (off_t)size) != 0)
        goto fail;
    if (!made) {
        if (fstat(fd, &st) != 0)
            goto fail;
        if (st.st_size <= 0) {
            errno = EINVAL;    /* (made elsewhere, its size not set yet) */
            goto fail;
        }
        size = (size_t)st.st_size;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        goto fail;
    close(fd);
    m->data = p;
    m->size = size;
    m->owner = made;
    return m;
fail:;
    int e = errno;
    if (fd >= 0) {
        if (made)
            shm_unlink(m->name);
        close(fd);
    }
    free(m);
    errno = e;
    return NULL;
}

const char *shmem_name(const shmem *m)
{
    return m->name + 1;
}

size_t shmem_size(const shmem *m)
{
    return m->size;
}

void *shmem_data(shmem *m)
{
    return m->data;
}

int shmem_owner(const shmem *m)
{
    return m->owner;
}

void shmem_set_owner(shmem *m, int owner)
{
    m->owner = owner != 0;
}

int shmem_read(const shmem *m, size_t off, void *dst, size_t n)
{
    if (off > m->size || n > m->size - off) {
        errno = ERANGE;
        return -1;
    }
    memcpy(dst, m->data + off, n);
    return 0;
}

int shmem_write(shmem *m, size_t off, const void *src, size_t n)
{
    if (off > m->size || n > m->size - off) {
        errno = ERANGE;
        return -1;
    }
    memcpy(m->data + off, src, n);
    return 0;
}

int shmem_unlink(shmem *m)
{
    return shm_unlink(m->name);
}

int shmem_unlink_name(const char *name)
{
    char full[NAME_MAX + 2];
    if (full_name(full, sizeof full, name) != 0)
        return -1;
    return shm_unlink(full);
}

void shmem_close(shmem *m)
{
    if (m == NULL)
        return;
    munmap(m->data, m->size);
    free(m);
}
