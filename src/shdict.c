/* SPDX-License-Identifier: MIT */
/*
 * shdict.c - a dict and a list of byte strings in shared memory: the
 * storage under mp.Manager().dict() and .list().
 *
 * Python's Manager keeps the dict in a server process, and every d[k] is
 * a round trip to it over a socket (tens of microseconds).  Here there is
 * no server: the object is one memfd that every process using it maps,
 * and each call takes the object's lock, works on the memory directly
 * and lets go, a fraction of a microsecond for a small get or set.  Keys
 * and values are opaque bytes (the Lua layer stores luamp's MessagePack
 * encoding of them); keys compare by their bytes.
 *
 * Layout.  The file's first page is the header: the lock, the size of
 * the file, the heap's top, the root (the dict's hash table or the
 * list's vector of elements), counts, and the heads of the free lists.
 * The rest is a heap of blocks, addressed by their offsets in the file,
 * never by pointers, since each process maps the file where it can.  A
 * block is an 8-byte header (its size, a multiple of 16, and two flags:
 * in use, and whether the block before it is), then its payload.  The
 * dict is a hash table with open addressing (linear probing, at most 70%
 * full, tombstones counted): a slot is 0 (empty), 1 (a deleted key's) or
 * an entry's offset with the top 16 bits of the key's hash above it, so
 * that most misses never read the entry.  An entry is one block: hash,
 * key length, value length, key, value.  The list is a vector of element
 * offsets (length, room, offsets), each element a block of its own.
 *
 * Growth.  The heap grows at its top; when the top would pass the end of
 * the file, the file grows by half (ftruncate) and the header says its
 * new size.  Every process maps the whole file and, each time it takes
 * the lock, remaps (mremap) if the size the header says is not the size
 * it mapped; the file only changes under the lock.  A dict of a million
 * keys is a table of 2^21 slots (16 MiB) and a million entries; a value
 * of 100 MiB is one block.  The table is rebuilt into a new one twice as
 * big when it passes 70% (and into a smaller one when it falls under an
 * eighth), and the new table replaces the old in one store.
 *
 * Giving memory back.  Freed blocks merge with free neighbours (each
 * free block keeps its size in its last word too, so the next block can
 * find its start), and go into free lists by size: one per size up to
 * 1 KiB, then four per power of two; an allocation takes the first block
 * that fits from its list or a bigger one, and splits it.  A free block
 * of 256 KiB or more gives its pages back (fallocate PUNCH_HOLE on the
 * memfd: for every process at once), all but the ones holding its
 * header and footer.  A free block that ends at the top becomes part of
 * the top instead, the pages past the top are given back once there are
 * 64 KiB of them, and a file left mostly empty past the top is cut.  An
 * object that becomes empty (its last key deleted, clear()) drops its
 * whole heap at once and shrinks back to 64 KiB.  Small blocks freed in
 * the middle of the heap keep their pages until reused or merged into a
 * big free block.
 *
 * The lock is lock.c's (sync.c's Lock's): the holder's pid in a futex
 * word, so that a waiter takes over the lock of a holder that died; it
 * is recursive for its holder, a process, so the Lua layer can hold it
 * around a Lua callback (update_key) or a guard() block whose d[k] take
 * it again.  Every call here waits for it, with no deadline; only the
 * explicit lock calls take one.
 *
 * Crash safety.  A process may die (SIGKILL) at any instruction, lock
 * held.  The design keeps three things true at every instant, so that
 * whoever takes the lock next finds every key and element whole, with
 * its old value or its new one:
 *
 *  1. Live data is what the root reaches, and it is never written in
 *     place.  A set writes the new entry (key and value) into a fresh
 *     block, then stores its offset into the slot: one aligned 8-byte
 *     store (PUBLISH: the compiler may not move earlier stores past it;
 *     a signal stops a thread between two instructions, every store
 *     before made, none after), so the slot names the old entry or the
 *     new one, whole.  Only then is the old block freed.  A delete stores a tombstone; a rehash fills a new
 *     table and stores its offset in the root; a list append writes the
 *     slot past the end, then stores the new length; an insert or a
 *     removal in the middle writes a new vector and stores it in the
 *     root (moving the offsets up in place would show one twice and lose
 *     another to a death half way); set(i) stores the new element's
 *     offset in the slot.  Emptying stores 0 in the root, then resets
 *     the heap.
 *
 *  2. The heap can always be walked: from the first block, each header's
 *     size leads to the next, up to the top.  Every change of a size is
 *     one store, made after whatever it uncovers is written: splitting
 *     a block writes the rest's header before shrinking the block; a
 *     merge is one store of the merged size; a block is written past
 *     the top before the top moves over it.
 *
 *  3. The file is never shorter than the header says: it grows before
 *     the header's size changes, and is cut after.
 *
 * Everything else (the free lists and their map, the flags, the counts
 * of keys, tombstones and bytes, the footers) is bookkeeping derived
 * from those, and a death may leave it torn.  So every change sets
 * `dirty` in the header first and clears it last; a process that takes
 * the lock and finds it set knows the holder died inside a change, and
 * repairs: it walks the heap (2), marks what the root reaches (1), and
 * rebuilds the free lists from what is left, merging neighbours; it
 * recounts, and cuts the file back to the size the header says (3).  So
 * a death leaks nothing (a block written but not yet published, an old
 * one published over but not yet freed, a half-built table: all are
 * unreachable, hence free), and no block can be handed out twice, since
 * free lists are only ever taken from after they were rebuilt.  The
 * repair costs a walk of the heap, milliseconds for a million keys, and
 * only after a death inside a change.  A death between changes, such
 * as inside an update's Lua callback with the lock held, costs nothing
 * but the takeover.  A repair that itself dies is done again from the
 * start by the next process: it keeps (1)-(3) too.
 *
 * What a repair cannot mend is memory that breaks (1)-(3) without a
 * death: a wild write by another program into the memfd.  It then finds
 * sizes that do not lead to the top, or offsets that are not blocks, and
 * every call fails with EIO rather than read past the heap.
 *
 * Reads copy the bytes out under the lock (get); peek hands out the
 * bytes in place to a caller that holds the lock, valid until its next
 * call on the object, since a change by this same process may move the
 * mapping (growth remaps) or free the block.
 */
#include "shdict.h"
#include "lock.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#define MAGIC 0x7464686c   /* "lhdt" */
#define KIND_DICT 1
#define KIND_LIST 2

#define HEAP_START 4096              /* the header's page, then the heap */
#define FILE_MIN ((uint64_t)64 << 10) /* a new (or emptied) object's file */
#define FILE_STEP ((uint64_t)64 << 10) /* file sizes are multiples of this */
#define SHRINK_SLACK ((uint64_t)4 << 20)
#define PUNCH_MIN ((uint64_t)256 << 10) /* free blocks this big give their pages back */
#define TRIM_MIN ((uint64_t)64 << 10)   /* and so do this many bytes past the top */
#define MAX_BLOCK ((uint64_t)1 << 47)

/* Blocks: an 8-byte header (size | flags), the payload after it.  Sizes
 * are multiples of GRAIN; a free block also keeps its size in its last
 * 8 bytes (the footer) and its free-list links after the header. */
#define GRAIN 16
#define MIN_BLOCK 32
#define INUSE ((uint64_t)1)
#define PREV_INUSE ((uint64_t)2)
#define FLAGS ((uint64_t)15)

#define NSMALL 62                      /* one list per size, 32 .. 1008 */
#define NBINS (NSMALL + 4 * (48 - 10)) /* then four per power of two */
#define FIT_SCAN 32                    /* blocks looked at in a mixed list */

/* Hash table slots: 0 empty, 1 a deleted key's (a tombstone), else the
 * entry's offset with the top 16 bits of its key's hash above it. */
#define EMPTY 0
#define TOMB 1
#define OFF_MASK (((uint64_t)1 << 48) - 1)
#define MIN_SLOTS 8

typedef struct shd_hdr {
    luamp_lock lock;
    uint32_t magic, kind;
    uint64_t seed;        /* of the hash function, random per object */
    uint64_t size;        /* bytes of the file, as every process maps it */
    uint64_t top;         /* the heap's end: blocks lie in [HEAP_START, top) */
    uint64_t root;        /* the hash table or the list's vector; 0: empty */
    uint64_t dirty;       /* a change is under way (see "Crash safety") */
    /* derived: recomputed by a repair */
    uint64_t count;       /* dict: keys */
    uint64_t tombs;       /* dict: tombstones in the table */
    uint64_t used;        /* bytes in blocks in use */
    uint64_t touched;     /* past this, no page of the file holds memory */
    uint64_t repairs;
    uint64_t binmap[(NBINS + 63) / 64];
    uint64_t bins[NBINS]; /* heads of the free lists */
} shd_hdr;

_Static_assert(sizeof(shd_hdr) <= HEAP_START, "the header fits its page");

/* A process's view of an object. */
typedef struct shobj {
    int fd;
    int kind;
    char *base;        /* the whole file, mapped */
    uint64_t mapped;
    uint64_t key;      /* the hash function's secret, from the seed */
} shobj;

struct shdict { shobj o; };
struct shlist { shobj o; };

/* A dict entry, in a block's payload. */
typedef struct entry {
    uint64_t hash, klen, vlen;
    char bytes[];      /* the key, then the value */
} entry;

/* The hash table, in a block's payload. */
typedef struct table {
    uint64_t nslots;   /* a power of two */
    uint64_t slot[];
} table;

/* The list's vector of element offsets, in a block's payload. */
typedef struct vec {
    uint64_t len, cap;
    uint64_t slot[];
} vec;

/* A list element, in a block's payload. */
typedef struct elem {
    uint64_t len;
    char bytes[];
} elem;

#define H(o) ((shd_hdr *)(o)->base)
#define AT(o, off) ((void *)((o)->base + (off)))
#define WORD(o, off) (*(uint64_t *)((o)->base + (off)))
#define PAYLOAD(o, b) ((void *)((o)->base + (b) + 8))
#define NEXT_FREE(o, b) (((uint64_t *)AT(o, b))[1])
#define PREV_FREE(o, b) (((uint64_t *)AT(o, b))[2])

/* A store that another process may find after this one died: one aligned
 * 8-byte store, after every store before it (the compiler keeps the
 * order, and a signal stops a thread between two instructions). */
#define PUBLISH(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* Nothing after this point is done before it. */
#define BARRIER() __atomic_signal_fence(__ATOMIC_SEQ_CST)

#ifdef LUAMP_TEST_HOOKS
static enum shd_kill_point kill_point;
static unsigned kill_nth;

void shd_test_kill_at(enum shd_kill_point point, unsigned nth)
{
    kill_point = point;
    kill_nth = nth;
}

#define KILL_POINT(p) do { \
        if (kill_point == (p) && --kill_nth == 0) \
            kill(getpid(), SIGKILL); \
    } while (0)
#else
#define KILL_POINT(p) ((void)0)
#endif

static uint64_t page_size(void)
{
    static uint64_t page;
    if (page == 0) {
        long p = sysconf(_SC_PAGESIZE);
        page = p > 0 ? (uint64_t)p : 4096;
    }
    return page;
}

static uint64_t round_up(uint64_t n, uint64_t to)
{
    return (n + to - 1) / to * to;
}

/* ---- hashing -------------------------------------------------------------- */

/* The two halves of the 128-bit product, xored: every bit of both
 * operands reaches every bit of the result. */
static inline uint64_t fold(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
    __extension__ typedef unsigned __int128 u128;
    u128 r = (u128)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t al = a & 0xffffffffu, ah = a >> 32, bl = b & 0xffffffffu, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    uint64_t lo = (ll & 0xffffffffu) | mid << 32;
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

static inline uint64_t read64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t read32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

#define K0 0x9e3779b97f4a7c15ull   /* 2^64 / the golden ratio */
#define K1 0xbf58476d1ce4e5b9ull   /* (splitmix64's multipliers) */
#define K2 0x94d049bb133111ebull

/* The hash of n bytes at p under secret key: 16 bytes at a time, each
 * pair of words folded into the state; the last 1 to 16 bytes read as
 * two (overlapping) words.  The key enters every fold, so that no input
 * chosen without it zeroes a product. */
static uint64_t hash_bytes(const void *p, size_t n, uint64_t key)
{
    const unsigned char *s = p;
    uint64_t h = fold((uint64_t)n ^ key, K0);
    size_t left = n;
    while (left > 16) {
        h = fold(read64(s) ^ key, read64(s + 8) ^ h);
        s += 16;
        left -= 16;
    }
    uint64_t a = 0, b = 0;
    if (left >= 8) {
        a = read64(s);
        b = read64(s + left - 8);
    } else if (left >= 4) {
        a = read32(s);
        b = read32(s + left - 4);
    } else if (left > 0) {
        a = (uint64_t)s[0] << 16 | (uint64_t)s[left >> 1] << 8 | s[left - 1];
    }
    return fold(fold(a ^ key ^ K1, b ^ h), K2 ^ key);
}

/* ---- the mapping and the file ---------------------------------------------- */

/* Under the lock: maps the file as long as the header says it is. */
static int sync_mapping(shobj *o)
{
    uint64_t size = H(o)->size;
    if (size == o->mapped)
        return 0;
    void *p = mremap(o->base, o->mapped, size, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
        return -1;
    o->base = p;
    o->mapped = size;
    return 0;
}

/* Gives back the pages that lie wholly within [lo, hi).  A failure only
 * keeps memory that could have been given back (fallocate cannot fail on
 * a memfd for any other reason), so it is not an error of the change
 * that frees the memory. */
static void punch(shobj *o, uint64_t lo, uint64_t hi)
{
    uint64_t page = page_size();
    lo = round_up(lo, page);
    hi = hi / page * page;
    if (lo < hi)
        (void)fallocate(o->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)lo, (off_t)(hi - lo));
}

/* Makes the file at least `need` bytes long (and more, to grow seldom). */
static int grow_file(shobj *o, uint64_t need)
{
    uint64_t size = H(o)->size;
    uint64_t want = round_up(need > size + size / 2 ? need : size + size / 2, FILE_STEP);
    if (ftruncate(o->fd, (off_t)want) != 0)
        return -1;
    KILL_POINT(SHD_KILL_GROWN);
    void *p = mremap(o->base, o->mapped, want, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
        return -1;    /* (the file stays longer than the header says: harmless) */
    o->base = p;
    o->mapped = want;
    PUBLISH(&H(o)->size, want);
    return 0;
}

/* After the top came down: gives back the pages past it, and shortens a
 * file left mostly empty. */
static void after_top_fell(shobj *o)
{
    shd_hdr *h = H(o);
    uint64_t keep = round_up(h->top, page_size());
    if (h->touched > keep && h->touched - keep >= TRIM_MIN) {
        punch(o, keep, h->touched);
        h->touched = keep;
    }
    uint64_t size = h->size;
    uint64_t slack = size / 2 > SHRINK_SLACK ? size / 2 : SHRINK_SLACK;
    if (size <= FILE_MIN || (h->top != HEAP_START && size - h->top <= slack))
        return;
    uint64_t want = round_up(h->top + (h->top - HEAP_START) / 4, FILE_STEP);
    if (want < FILE_MIN)
        want = FILE_MIN;
    if (want >= size)
        return;
    /* The header first: a process that maps the new size before the file
     * is cut touches nothing past the top. */
    PUBLISH(&h->size, want);
    if (h->touched > want)
        h->touched = want;
    (void)ftruncate(o->fd, (off_t)want);   /* (if not: longer than said, harmless) */
    (void)sync_mapping(o);                 /* (if not: mapped past the end, untouched) */
}

/* ---- the heap ------------------------------------------------------------- */

static inline uint64_t block_size(shobj *o, uint64_t b)
{
    return WORD(o, b) & ~FLAGS;
}

static unsigned bin_of(uint64_t s)
{
    if (s < 1024)
        return (unsigned)(s / GRAIN) - 2;
    unsigned e = 63u - (unsigned)__builtin_clzll(s);
    unsigned i = NSMALL + (e - 10) * 4 + (unsigned)((s >> (e - 2)) & 3);
    return i < NBINS ? i : NBINS - 1;
}

static void bin_insert(shobj *o, uint64_t b, uint64_t s)
{
    shd_hdr *h = H(o);
    unsigned i = bin_of(s);
    uint64_t next = h->bins[i];
    NEXT_FREE(o, b) = next;
    PREV_FREE(o, b) = 0;
    if (next)
        PREV_FREE(o, next) = b;
    h->bins[i] = b;
    h->binmap[i / 64] |= (uint64_t)1 << (i % 64);
}

static void bin_unlink(shobj *o, uint64_t b, uint64_t s)
{
    shd_hdr *h = H(o);
    unsigned i = bin_of(s);
    uint64_t next = NEXT_FREE(o, b), prev = PREV_FREE(o, b);
    if (prev)
        NEXT_FREE(o, prev) = next;
    else
        h->bins[i] = next;
    if (next)
        PREV_FREE(o, next) = prev;
    if (h->bins[i] == 0)
        h->binmap[i / 64] &= ~((uint64_t)1 << (i % 64));
}

/* The first non-empty list after list i, or NBINS. */
static unsigned next_bin(shobj *o, unsigned i)
{
    shd_hdr *h = H(o);
    for (unsigned w = (i + 1) / 64, first = (i + 1) % 64; w < sizeof h->binmap / 8; w++, first = 0) {
        uint64_t m = first < 64 ? h->binmap[w] >> first << first : 0;
        if (m)
            return w * 64 + (unsigned)__builtin_ctzll(m);
    }
    return NBINS;
}

/* Writes free block b of s bytes (its header, footer and list links);
 * its predecessor is in use, and so is its successor, whose flag says
 * the block before it is free. */
static void make_free(shobj *o, uint64_t b, uint64_t s)
{
    WORD(o, b + s - 8) = s;
    PUBLISH(&WORD(o, b), s | PREV_INUSE);
    WORD(o, b + s) &= ~PREV_INUSE;
    KILL_POINT(SHD_KILL_FREEING);
    bin_insert(o, b, s);
}

/* Takes s bytes at the front of free block b (out of its list), putting
 * the rest back as a free block. */
static void take_front(shobj *o, uint64_t b, uint64_t s)
{
    uint64_t bs = block_size(o, b);
    uint64_t prev = WORD(o, b) & PREV_INUSE;
    if (bs - s >= MIN_BLOCK) {
        /* the rest's header is written before b shrinks to uncover it */
        uint64_t r = b + s;
        WORD(o, r + (bs - s) - 8) = bs - s;
        WORD(o, r) = (bs - s) | PREV_INUSE;
        PUBLISH(&WORD(o, b), s | INUSE | prev);
        KILL_POINT(SHD_KILL_SPLIT);
        bin_insert(o, r, bs - s);
    } else {
        PUBLISH(&WORD(o, b), bs | INUSE | prev);
        WORD(o, b + bs) |= PREV_INUSE;   /* (the next block is in use: not the top) */
    }
}

/* A block of s bytes from the free lists, or 0. */
static uint64_t take_free(shobj *o, uint64_t s)
{
    shd_hdr *h = H(o);
    unsigned i = bin_of(s);
    uint64_t b = h->bins[i];
    /* a list of one size fits; one of several sizes, maybe */
    for (int n = 0; s >= 1024 && b != 0 && block_size(o, b) < s; n++)
        b = n < FIT_SCAN ? NEXT_FREE(o, b) : 0;
    if (b == 0) {
        i = next_bin(o, i);
        if (i == NBINS)
            return 0;
        b = h->bins[i];
    }
    bin_unlink(o, b, block_size(o, b));
    take_front(o, b, s);
    return b;
}

/* A block of s bytes past the top, growing the file if need be; 0 (errno)
 * when it cannot. */
static uint64_t take_top(shobj *o, uint64_t s)
{
    uint64_t b = H(o)->top;
    if (b + s > H(o)->size && grow_file(o, b + s) != 0)
        return 0;
    shd_hdr *h = H(o);
    /* the block before the top is always in use (see free_block) */
    WORD(o, b) = s | INUSE | PREV_INUSE;
    PUBLISH(&h->top, b + s);
    uint64_t touched = round_up(b + s, page_size());
    if (h->touched < touched)
        h->touched = touched;
    return b;
}

/* A block with at least n bytes of payload; 0 (errno) when there is no
 * room.  It may move the mapping: offsets stay, pointers do not. */
static uint64_t heap_alloc(shobj *o, uint64_t n)
{
    if (n > MAX_BLOCK) {
        errno = EFBIG;
        return 0;
    }
    uint64_t s = round_up(n + 8, GRAIN);
    if (s < MIN_BLOCK)
        s = MIN_BLOCK;
    uint64_t b = take_free(o, s);
    if (b == 0)
        b = take_top(o, s);
    if (b != 0)
        H(o)->used += block_size(o, b);
    return b;
}

/* Frees block b, merged with its free neighbours; into the top if it
 * ends there.  The merged block's header is one store: before it, the
 * heap reads as before; after it, as one free block. */
static void heap_free(shobj *o, uint64_t b)
{
    shd_hdr *h = H(o);
    uint64_t s = block_size(o, b);
    h->used -= s;
    /* what of the merged block is known punched already */
    uint64_t punched_lo = 0, punched_hi = 0;
    if (!(WORD(o, b) & PREV_INUSE)) {
        uint64_t ps = WORD(o, b - 8);
        b -= ps;
        bin_unlink(o, b, ps);
        if (ps >= PUNCH_MIN)
            punched_lo = (b + ps - 8) / page_size() * page_size();
        s += ps;
    }
    uint64_t n = b + s;
    if (n == h->top) {
        /* The block before b is in use (free blocks are never adjacent):
         * so it stays with the top. */
        PUBLISH(&h->top, b);
        after_top_fell(o);
        return;
    }
    if (!(WORD(o, n) & INUSE)) {
        uint64_t ns = block_size(o, n);
        bin_unlink(o, n, ns);
        if (ns >= PUNCH_MIN)
            punched_hi = round_up(n + 24, page_size());
        s += ns;
    }
    make_free(o, b, s);
    if (s >= PUNCH_MIN) {
        /* everything but the header's and the footer's pages, less what
         * a neighbour had given back already */
        uint64_t lo = punched_lo ? punched_lo : b + 24;
        uint64_t hi = punched_hi ? punched_hi : b + s - 8;
        punch(o, lo, hi);
    }
}

/* Frees every block at once (the object is empty: its root is 0). */
static void heap_reset(shobj *o)
{
    shd_hdr *h = H(o);
    memset(h->bins, 0, sizeof h->bins);
    memset(h->binmap, 0, sizeof h->binmap);
    h->used = 0;
    PUBLISH(&h->top, (uint64_t)HEAP_START);
    after_top_fell(o);
}

/* ---- locking, and repair after a death ------------------------------------- */

static int repair(shobj *o);

/* Takes the object's lock; the first time (not again while held), maps
 * the file as long as it now is, and repairs what a process that died
 * holding the lock left half done. */
static int obj_lock(shobj *o, double deadline)
{
    int r = luamp_lock_acquire(&H(o)->lock, 1, deadline);
    if (r == 0)
        return SHD_TIMEOUT;
    if (r < 0)
        return SHD_INTERRUPTED;
    if (H(o)->lock.depth > 1)
        return SHD_OK;
    if (sync_mapping(o) == 0 && (!H(o)->dirty || repair(o) == 0))
        return SHD_OK;
    int e = errno;
    luamp_lock_release(&H(o)->lock, 1);
    errno = e;
    return SHD_ERROR;
}

static void obj_unlock(shobj *o)
{
    luamp_lock_release(&H(o)->lock, 1);
}

/* unlock() for a caller, who may not hold the lock. */
static int obj_unlock_checked(shobj *o)
{
    if (luamp_lock_release(&H(o)->lock, 1) != NULL) {
        errno = EPERM;
        return SHD_ERROR;
    }
    return SHD_OK;
}

/* Around every change: a process that finds dirty set when it takes the
 * lock knows the holder died inside one. */
static void begin_change(shobj *o)
{
    H(o)->dirty = 1;
    BARRIER();
}

static void end_change(shobj *o)
{
    PUBLISH(&H(o)->dirty, 0);
}

/* A bitmap of one bit per GRAIN bytes of the heap. */
typedef struct bitmap {
    uint64_t *w;
    uint64_t base;
} bitmap;

static int bits_new(bitmap *m, uint64_t from, uint64_t to)
{
    m->base = from;
    m->w = calloc((to - from) / GRAIN / 64 + 1, 8);
    return m->w ? 0 : -1;
}

static int bit_get(const bitmap *m, uint64_t off)
{
    uint64_t i = (off - m->base) / GRAIN;
    return (int)(m->w[i / 64] >> (i % 64) & 1);
}

static void bit_set(bitmap *m, uint64_t off)
{
    uint64_t i = (off - m->base) / GRAIN;
    m->w[i / 64] |= (uint64_t)1 << (i % 64);
}

/* Walks the heap from its start to its top, checking that the sizes
 * lead there, and records where each block starts: 0, or -1 (EIO). */
static int walk(shobj *o, bitmap *starts)
{
    shd_hdr *h = H(o);
    if (h->top < HEAP_START || h->top > h->size || h->top % GRAIN || h->size > o->mapped) {
        errno = EIO;
        return -1;
    }
    if (bits_new(starts, HEAP_START, h->top) != 0)
        return -1;
    for (uint64_t b = HEAP_START; b < h->top;) {
        uint64_t s = block_size(o, b);
        if (s < MIN_BLOCK || s % GRAIN || s > h->top - b) {
            free(starts->w);
            errno = EIO;
            return -1;
        }
        bit_set(starts, b);
        b += s;
    }
    return 0;
}

/* Calls fn for each block the object's root reaches, the root's own
 * first, checking each is a block before reading it: 0, what fn
 * returned if not 0, or -1 (EIO) for an offset that is not a block. */
typedef int (*block_fn)(shobj *o, uint64_t b, void *arg);

static int is_block(shobj *o, const bitmap *starts, uint64_t b, uint64_t payload)
{
    return b >= HEAP_START && b < H(o)->top && b % GRAIN == 0 && bit_get(starts, b)
           && block_size(o, b) - 8 >= payload;
}

static int each_live(shobj *o, const bitmap *starts, block_fn fn, void *arg)
{
    uint64_t root = H(o)->root;
    if (root == 0)
        return 0;
    int r;
    if (o->kind == KIND_DICT) {
        if (!is_block(o, starts, root, sizeof(table)))
            goto bad;
        table *t = PAYLOAD(o, root);
        uint64_t n = t->nslots;
        if (n == 0 || (n & (n - 1)) || n > H(o)->top / 8 || !is_block(o, starts, root, sizeof(table) + n * 8))
            goto bad;
        if ((r = fn(o, root, arg)) != 0)
            return r;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t s = t->slot[i];
            if (s == EMPTY || s == TOMB)
                continue;
            uint64_t e = s & OFF_MASK;
            if (!is_block(o, starts, e, sizeof(entry)))
                goto bad;
            if ((r = fn(o, e, arg)) != 0)
                return r;
        }
    } else {
        if (!is_block(o, starts, root, sizeof(vec)))
            goto bad;
        vec *v = PAYLOAD(o, root);
        if (v->len > v->cap || v->cap > H(o)->top / 8 || !is_block(o, starts, root, sizeof(vec) + v->cap * 8))
            goto bad;
        if ((r = fn(o, root, arg)) != 0)
            return r;
        for (uint64_t i = 0; i < v->len; i++) {
            if (!is_block(o, starts, v->slot[i], sizeof(elem)))
                goto bad;
            if ((r = fn(o, v->slot[i], arg)) != 0)
                return r;
        }
    }
    return 0;
bad:
    errno = EIO;
    return -1;
}

/* each_live's fn for repair: marks b in use, once. */
static int mark(shobj *o, uint64_t b, void *arg)
{
    (void)arg;
    if (WORD(o, b) & INUSE) {
        errno = EIO;   /* reached twice */
        return -1;
    }
    WORD(o, b) |= INUSE;
    return 0;
}

/* Rebuilds what a process that died in the middle of a change may have
 * left half done: the free lists, the flags, the counts.  What is live
 * is what the root reaches, and that is whole (see "Crash safety"); the
 * rest of the heap is free. */
static int repair(shobj *o)
{
    shd_hdr *h = H(o);
    struct stat st;
    if (fstat(o->fd, &st) != 0)
        return -1;
    if ((uint64_t)st.st_size != h->size && ftruncate(o->fd, (off_t)h->size) != 0)
        return -1;
    bitmap starts;
    if (walk(o, &starts) != 0)
        return -1;
    for (uint64_t b = HEAP_START; b < h->top; b += block_size(o, b))
        WORD(o, b) &= ~FLAGS;
    if (each_live(o, &starts, mark, NULL) != 0) {
        int e = errno;
        free(starts.w);
        errno = e;
        return -1;
    }
    free(starts.w);
    memset(h->bins, 0, sizeof h->bins);
    memset(h->binmap, 0, sizeof h->binmap);
    h->used = 0;
    uint64_t prev_inuse = PREV_INUSE;
    for (uint64_t b = HEAP_START; b < h->top;) {
        uint64_t s = block_size(o, b);
        if (WORD(o, b) & INUSE) {
            WORD(o, b) |= prev_inuse;
            h->used += s;
            prev_inuse = PREV_INUSE;
            b += s;
            continue;
        }
        uint64_t run = s;
        while (b + run < h->top && !(WORD(o, b + run) & INUSE))
            run += block_size(o, b + run);
        if (b + run == h->top) {
            PUBLISH(&h->top, b);
            break;
        }
        make_free(o, b, run);
        if (run >= PUNCH_MIN)
            punch(o, b + 24, b + run - 8);
        prev_inuse = 0;
        b += run;
    }
    h->touched = h->size;
    after_top_fell(o);
    if (o->kind == KIND_DICT) {
        h->count = h->tombs = 0;
        if (h->root) {
            table *t = PAYLOAD(o, h->root);
            for (uint64_t i = 0; i < t->nslots; i++) {
                h->count += t->slot[i] > TOMB;
                h->tombs += t->slot[i] == TOMB;
            }
        }
    }
    h->repairs++;
    end_change(o);
    return 0;
}

/* ---- objects ------------------------------------------------------------- */

static uint64_t new_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed)
        return seed;
    /* (no entropy yet, early at boot: a seed only spreads keys) */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return fold((uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 32, (uint64_t)ts.tv_sec ^ K0);
}

static void set_key(shobj *o)
{
    o->key = fold(H(o)->seed, K1) | 1;
}

static shobj *obj_create(int kind, size_t size)
{
    shobj *o = calloc(1, size);
    if (o == NULL)
        return NULL;
    o->fd = memfd_create(kind == KIND_DICT ? "luamp-dict" : "luamp-list", MFD_CLOEXEC);
    if (o->fd < 0)
        goto fail;
    if (ftruncate(o->fd, (off_t)FILE_MIN) != 0)
        goto fail;
    void *p = mmap(NULL, FILE_MIN, PROT_READ | PROT_WRITE, MAP_SHARED, o->fd, 0);
    if (p == MAP_FAILED)
        goto fail;
    o->base = p;
    o->mapped = FILE_MIN;
    o->kind = kind;
    shd_hdr *h = H(o);       /* (a new memfd is zeros: the lock is free) */
    h->magic = MAGIC;
    h->kind = (uint32_t)kind;
    h->seed = new_seed();
    h->size = FILE_MIN;
    h->top = HEAP_START;
    h->touched = HEAP_START;
    set_key(o);
    return o;
fail:;
    int e = errno;
    if (o->fd >= 0)
        close(o->fd);
    free(o);
    errno = e;
    return NULL;
}

static shobj *obj_attach(int fd, int kind, size_t size)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return NULL;
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < FILE_MIN) {
        errno = EINVAL;
        return NULL;
    }
    shobj *o = calloc(1, size);
    if (o == NULL)
        return NULL;
    /* The file is never shorter than the header says (it grows before the
     * header, and shrinks after); the first lock maps what the header
     * says. */
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        free(o);
        errno = e;
        return NULL;
    }
    o->base = p;
    o->mapped = (uint64_t)st.st_size;
    if (H(o)->magic != MAGIC || H(o)->kind != (uint32_t)kind) {
        munmap(p, (size_t)st.st_size);
        free(o);
        errno = EINVAL;
        return NULL;
    }
    o->fd = fd;
    o->kind = kind;
    set_key(o);
    return o;
}

static void obj_close(shobj *o)
{
    if (o == NULL)
        return;
    luamp_lock *l = &H(o)->lock;
    if (atomic_load(&l->word) == luamp_lock_self()) {
        l->depth = 1;
        luamp_lock_release(l, 1);
    }
    munmap(o->base, o->mapped);
    close(o->fd);
    free(o);
}

static int obj_stats(shobj *o, shd_stats *st)
{
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    shd_hdr *h = H(o);
    struct stat fs;
    if (fstat(o->fd, &fs) != 0) {
        int e = errno;
        obj_unlock(o);
        errno = e;
        return SHD_ERROR;
    }
    memset(st, 0, sizeof *st);
    st->file_bytes = (uint64_t)fs.st_size;
    st->resident_bytes = (uint64_t)fs.st_blocks * 512;
    st->heap_bytes = h->top;
    st->used_bytes = h->used;
    st->repairs = h->repairs;
    if (o->kind == KIND_DICT) {
        st->count = h->count;
        st->slots = h->root ? ((table *)PAYLOAD(o, h->root))->nslots : 0;
    } else if (h->root) {
        st->count = ((vec *)PAYLOAD(o, h->root))->len;
        st->slots = ((vec *)PAYLOAD(o, h->root))->cap;
    }
    obj_unlock(o);
    return SHD_OK;
}

/* Copies n bytes at p into out, replacing its contents. */
static int copy_out(luamp_buf *out, const void *p, size_t n)
{
    luamp_buf_reset(out);
    if (luamp_buf_reserve(out, n) != 0) {
        errno = ENOMEM;
        return -1;
    }
    if (n > 0)          /* (an empty value: p and out->data may be NULL) */
        memcpy(out->data, p, n);
    out->len = n;
    return 0;
}

/* A snapshot record: key length, value length, key, value. */
static int snap_add(luamp_buf *out, const void *k, uint64_t kl, const void *v, uint64_t vl)
{
    uint64_t lens[2] = { kl, vl };
    if (luamp_buf_reserve(out, sizeof lens + kl + vl) != 0) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(out->data + out->len, lens, sizeof lens);
    out->len += sizeof lens;
    if (kl)
        memcpy(out->data + out->len, k, kl);
    out->len += kl;
    if (vl)
        memcpy(out->data + out->len, v, vl);
    out->len += vl;
    return 0;
}

int shd_next(const luamp_buf *snap, size_t *pos, const char **key, size_t *klen,
             const char **val, size_t *vlen)
{
    uint64_t lens[2];
    if (*pos + sizeof lens > snap->len)
        return 0;
    memcpy(lens, snap->data + *pos, sizeof lens);
    *pos += sizeof lens;
    *key = snap->data + *pos;
    *klen = lens[0];
    *pos += lens[0];
    *val = snap->data + *pos;
    *vlen = lens[1];
    *pos += lens[1];
    return 1;
}

/* ---- dict --------------------------------------------------------------- */

static table *table_of(shobj *o)
{
    return H(o)->root ? PAYLOAD(o, H(o)->root) : NULL;
}

static entry *entry_at(shobj *o, uint64_t slot)
{
    return PAYLOAD(o, slot & OFF_MASK);
}

/* Where key is in the table: its slot's index (1), or (0) the index of
 * the slot a new key would take (the first tombstone on its way, or the
 * empty slot that ends it).  The table must exist. */
static int find(shobj *o, const void *key, size_t klen, uint64_t hash, uint64_t *at)
{
    table *t = table_of(o);
    uint64_t mask = t->nslots - 1, tag = hash >> 48 << 48;
    uint64_t free_at = UINT64_MAX;
    for (uint64_t i = hash & mask;; i = (i + 1) & mask) {
        uint64_t s = t->slot[i];
        if (s == EMPTY) {
            *at = free_at != UINT64_MAX ? free_at : i;
            return 0;
        }
        if (s == TOMB) {
            if (free_at == UINT64_MAX)
                free_at = i;
        } else if ((s & ~OFF_MASK) == tag) {
            entry *e = entry_at(o, s);
            if (e->hash == hash && e->klen == klen && memcmp(e->bytes, key, klen) == 0) {
                *at = i;
                return 1;
            }
        }
    }
}

/* The smallest table that holds count keys at most half full. */
static uint64_t slots_for(uint64_t count)
{
    uint64_t n = MIN_SLOTS;
    while (n / 2 < count)
        n *= 2;
    return n;
}

/* Copies every entry into a new table of nslots and publishes it in one
 * store, then frees the old one: 0, or -1 (errno, nothing changed). */
static int rehash(shobj *o, uint64_t nslots)
{
    uint64_t nb = heap_alloc(o, sizeof(table) + nslots * 8);
    if (nb == 0)
        return -1;
    table *nt = PAYLOAD(o, nb);
    nt->nslots = nslots;
    memset(nt->slot, 0, nslots * 8);
    uint64_t mask = nslots - 1, old = H(o)->root, copied = 0;
    if (old) {
        table *t = PAYLOAD(o, old);
        for (uint64_t i = 0; i < t->nslots; i++) {
            uint64_t s = t->slot[i];
            if (s <= TOMB)
                continue;
            uint64_t j = entry_at(o, s)->hash & mask;
            while (nt->slot[j] != EMPTY)
                j = (j + 1) & mask;
            nt->slot[j] = s;
            if (++copied % 64 == 0)
                KILL_POINT(SHD_KILL_REHASH);
        }
    }
    PUBLISH(&H(o)->root, nb);
    H(o)->tombs = 0;
    if (old)
        heap_free(o, old);
    return 0;
}

/* Empties the object: its root goes in one store, then the whole heap. */
static void empty_object(shobj *o)
{
    PUBLISH(&H(o)->root, 0);
    H(o)->count = H(o)->tombs = 0;
    KILL_POINT(SHD_KILL_EMPTIED);
    heap_reset(o);
}

static shobj *dobj(shdict *d)
{
    return &d->o;
}

shdict *shdict_create(void)
{
    return (shdict *)obj_create(KIND_DICT, sizeof(shdict));
}

shdict *shdict_attach(int fd)
{
    return (shdict *)obj_attach(fd, KIND_DICT, sizeof(shdict));
}

int shdict_fd(const shdict *d)
{
    return d->o.fd;
}

void shdict_close(shdict *d)
{
    obj_close(d ? dobj(d) : NULL);
}

int shdict_lock(shdict *d, double deadline)
{
    return obj_lock(dobj(d), deadline);
}

int shdict_unlock(shdict *d)
{
    return obj_unlock_checked(dobj(d));
}

/* Under the lock: the entry of key, or NULL. */
static entry *lookup(shobj *o, const void *key, size_t klen)
{
    if (H(o)->root == 0)
        return NULL;
    uint64_t at;
    if (!find(o, key, klen, hash_bytes(key, klen, o->key), &at))
        return NULL;
    return entry_at(o, table_of(o)->slot[at]);
}

int shdict_get(shdict *d, const void *key, size_t klen, luamp_buf *out)
{
    shobj *o = dobj(d);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    entry *e = lookup(o, key, klen);
    r = e == NULL ? SHD_MISSING : copy_out(out, e->bytes + e->klen, e->vlen) == 0 ? SHD_OK : SHD_ERROR;
    int err = errno;
    obj_unlock(o);
    errno = err;
    return r;
}

int shdict_peek(shdict *d, const void *key, size_t klen, const void **val, size_t *vlen)
{
    shobj *o = dobj(d);
    if (atomic_load(&H(o)->lock.word) != luamp_lock_self()) {
        errno = EPERM;
        return SHD_ERROR;
    }
    entry *e = lookup(o, key, klen);
    if (e == NULL)
        return SHD_MISSING;
    *val = e->bytes + e->klen;
    *vlen = e->vlen;
    return SHD_OK;
}

int shdict_contains(shdict *d, const void *key, size_t klen)
{
    shobj *o = dobj(d);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    r = lookup(o, key, klen) ? SHD_OK : SHD_MISSING;
    obj_unlock(o);
    return r;
}

/* Under the lock, in a change. */
static int dict_set(shobj *o, const void *key, size_t klen, const void *val, size_t vlen)
{
    if (klen > MAX_BLOCK || vlen > MAX_BLOCK - klen) {
        errno = EFBIG;
        return -1;
    }
    uint64_t hash = hash_bytes(key, klen, o->key), at = 0;
    int found = H(o)->root != 0 && find(o, key, klen, hash, &at);
    if (!found) {
        /* room for one more key, tombstones counted: at most 70% full */
        uint64_t n = H(o)->root ? table_of(o)->nslots : 0;
        uint64_t filled = H(o)->count + H(o)->tombs + 1;
        if (filled * 10 > n * 7) {
            if (rehash(o, slots_for(H(o)->count + 1)) != 0)
                return -1;
            find(o, key, klen, hash, &at);
        }
    }
    uint64_t b = heap_alloc(o, sizeof(entry) + klen + vlen);
    if (b == 0)
        return -1;
    /* (the allocation may have moved the mapping: no pointer from before) */
    entry *e = PAYLOAD(o, b);
    e->hash = hash;
    e->klen = klen;
    e->vlen = vlen;
    if (klen)
        memcpy(e->bytes, key, klen);
    if (vlen)
        memcpy(e->bytes + klen, val, vlen);
    KILL_POINT(SHD_KILL_WRITTEN);
    uint64_t *slot = &table_of(o)->slot[at];
    uint64_t old = *slot;
    PUBLISH(slot, (hash >> 48 << 48) | b);
    KILL_POINT(SHD_KILL_PUBLISHED);
    if (found) {
        heap_free(o, old & OFF_MASK);
    } else {
        H(o)->count++;
        if (old == TOMB)
            H(o)->tombs--;
    }
    return 0;
}

int shdict_set(shdict *d, const void *key, size_t klen, const void *val, size_t vlen)
{
    shobj *o = dobj(d);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    begin_change(o);
    r = dict_set(o, key, klen, val, vlen) == 0 ? SHD_OK : SHD_ERROR;
    int e = errno;
    end_change(o);
    obj_unlock(o);
    errno = e;
    return r;
}

/* Under the lock, in a change: turns slot `at` into a tombstone, or
 * into an empty slot (with the tombstones before it) when the next one
 * is empty, as no search then goes past it. */
static void clear_slot(shobj *o, uint64_t at)
{
    table *t = table_of(o);
    uint64_t mask = t->nslots - 1;
    if (t->slot[(at + 1) & mask] != EMPTY) {
        PUBLISH(&t->slot[at], (uint64_t)TOMB);
        H(o)->tombs++;
        return;
    }
    PUBLISH(&t->slot[at], (uint64_t)EMPTY);
    for (uint64_t i = (at - 1) & mask; t->slot[i] == TOMB; i = (i - 1) & mask) {
        PUBLISH(&t->slot[i], (uint64_t)EMPTY);
        H(o)->tombs--;
    }
}

int shdict_delete(shdict *d, const void *key, size_t klen, luamp_buf *old)
{
    shobj *o = dobj(d);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    uint64_t at;
    if (H(o)->root == 0 || !find(o, key, klen, hash_bytes(key, klen, o->key), &at)) {
        obj_unlock(o);
        return SHD_MISSING;
    }
    uint64_t b = table_of(o)->slot[at] & OFF_MASK;
    entry *e = PAYLOAD(o, b);
    if (old && copy_out(old, e->bytes + e->klen, e->vlen) != 0) {
        obj_unlock(o);
        errno = ENOMEM;
        return SHD_ERROR;
    }
    begin_change(o);
    clear_slot(o, at);
    KILL_POINT(SHD_KILL_PUBLISHED);
    H(o)->count--;
    heap_free(o, b);
    r = SHD_OK;
    uint64_t n = table_of(o)->nslots;
    if (H(o)->count == 0)
        empty_object(o);
    else if (H(o)->count < n / 8 && n > MIN_SLOTS)
        (void)rehash(o, slots_for(H(o)->count));  /* (if not: the big one stays) */
    end_change(o);
    obj_unlock(o);
    return r;
}

int shdict_count(shdict *d, uint64_t *n)
{
    shobj *o = dobj(d);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    *n = H(o)->count;
    obj_unlock(o);
    return SHD_OK;
}

int shdict_clear(shdict *d)
{
    shobj *o = dobj(d);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    begin_change(o);
    empty_object(o);
    end_change(o);
    obj_unlock(o);
    return SHD_OK;
}

int shdict_foreach(shdict *d, shd_visit fn, void *arg)
{
    shobj *o = dobj(d);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    table *t = table_of(o);
    for (uint64_t i = 0; t != NULL && i < t->nslots; i++) {
        if (t->slot[i] <= TOMB)
            continue;
        entry *e = entry_at(o, t->slot[i]);
        if (fn(arg, e->bytes, e->klen, e->bytes + e->klen, e->vlen) != 0)
            break;
    }
    obj_unlock(o);
    return SHD_OK;
}

typedef struct snap_ctx {
    luamp_buf *out;
    int what;
    int failed;
    uint64_t n;
} snap_ctx;

static int snap_visit(void *arg, const void *k, size_t kl, const void *v, size_t vl)
{
    snap_ctx *c = arg;
    if (snap_add(c->out, k, c->what & SHD_KEYS ? kl : 0, v, c->what & SHD_VALUES ? vl : 0) != 0) {
        c->failed = 1;
        return -1;
    }
    c->n++;
    return 0;
}

/* What a snapshot through foreach returns. */
static int snap_done(int r, snap_ctx *c, uint64_t *n)
{
    if (r == SHD_OK && c->failed) {
        luamp_buf_reset(c->out);
        errno = ENOMEM;
        return SHD_ERROR;
    }
    if (r == SHD_OK && n)
        *n = c->n;
    return r;
}

int shdict_snapshot(shdict *d, int what, luamp_buf *out, uint64_t *n)
{
    snap_ctx c = { out, what, 0, 0 };
    luamp_buf_reset(out);
    return snap_done(shdict_foreach(d, snap_visit, &c), &c, n);
}

/* ---- list --------------------------------------------------------------- */

static shobj *lobj(shlist *l)
{
    return &l->o;
}

static vec *vec_of(shobj *o)
{
    return H(o)->root ? PAYLOAD(o, H(o)->root) : NULL;
}

static uint64_t list_len(shobj *o)
{
    vec *v = vec_of(o);
    return v ? v->len : 0;
}

shlist *shlist_create(void)
{
    return (shlist *)obj_create(KIND_LIST, sizeof(shlist));
}

shlist *shlist_attach(int fd)
{
    return (shlist *)obj_attach(fd, KIND_LIST, sizeof(shlist));
}

int shlist_fd(const shlist *l)
{
    return l->o.fd;
}

void shlist_close(shlist *l)
{
    obj_close(l ? lobj(l) : NULL);
}

int shlist_lock(shlist *l, double deadline)
{
    return obj_lock(lobj(l), deadline);
}

int shlist_unlock(shlist *l)
{
    return obj_unlock_checked(lobj(l));
}

int shlist_len(shlist *l, uint64_t *n)
{
    shobj *o = lobj(l);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    *n = list_len(o);
    obj_unlock(o);
    return SHD_OK;
}

static elem *elem_at(shobj *o, uint64_t i)
{
    return PAYLOAD(o, vec_of(o)->slot[i]);
}

int shlist_get(shlist *l, uint64_t i, luamp_buf *out)
{
    shobj *o = lobj(l);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    if (i >= list_len(o)) {
        r = SHD_RANGE;
    } else {
        elem *e = elem_at(o, i);
        r = copy_out(out, e->bytes, e->len) == 0 ? SHD_OK : SHD_ERROR;
    }
    int err = errno;
    obj_unlock(o);
    errno = err;
    return r;
}

int shlist_peek(shlist *l, uint64_t i, const void **val, size_t *vlen)
{
    shobj *o = lobj(l);
    if (atomic_load(&H(o)->lock.word) != luamp_lock_self()) {
        errno = EPERM;
        return SHD_ERROR;
    }
    if (i >= list_len(o))
        return SHD_RANGE;
    elem *e = elem_at(o, i);
    *val = e->bytes;
    *vlen = e->len;
    return SHD_OK;
}

/* A new element block holding the value: its offset, or 0 (errno). */
static uint64_t new_elem(shobj *o, const void *val, size_t vlen)
{
    if (vlen > MAX_BLOCK) {
        errno = EFBIG;
        return 0;
    }
    uint64_t b = heap_alloc(o, sizeof(elem) + vlen);
    if (b == 0)
        return 0;
    elem *e = PAYLOAD(o, b);
    e->len = vlen;
    if (vlen)
        memcpy(e->bytes, val, vlen);
    return b;
}

/* Runs a list change under the lock: SHD_OK, or SHD_ERROR (errno). */
typedef int (*list_change)(shobj *o, uint64_t i, const void *val, size_t vlen, luamp_buf *old);

static int run_list_change(shlist *l, list_change fn, uint64_t i, const void *val, size_t vlen,
                           luamp_buf *old)
{
    shobj *o = lobj(l);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    begin_change(o);
    r = fn(o, i, val, vlen, old);
    int e = errno;
    end_change(o);
    obj_unlock(o);
    errno = e;
    return r;
}

static int list_set(shobj *o, uint64_t i, const void *val, size_t vlen, luamp_buf *old)
{
    (void)old;
    if (i >= list_len(o))
        return SHD_RANGE;
    uint64_t b = new_elem(o, val, vlen);
    if (b == 0)
        return SHD_ERROR;
    KILL_POINT(SHD_KILL_WRITTEN);
    uint64_t *slot = &vec_of(o)->slot[i];
    uint64_t prev = *slot;
    PUBLISH(slot, b);
    KILL_POINT(SHD_KILL_PUBLISHED);
    heap_free(o, prev);
    return SHD_OK;
}

int shlist_set(shlist *l, uint64_t i, const void *val, size_t vlen)
{
    return run_list_change(l, list_set, i, val, vlen, NULL);
}

/* A copy of the vector with room for cap elements, with element b
 * inserted before element i (b != 0), or without element i (b == 0):
 * its offset, or 0 (errno).  Not published. */
static uint64_t copy_vec(shobj *o, uint64_t cap, uint64_t i, uint64_t b)
{
    uint64_t nb = heap_alloc(o, sizeof(vec) + cap * 8);
    if (nb == 0)
        return 0;
    vec *nv = PAYLOAD(o, nb), *v = vec_of(o);
    uint64_t len = v ? v->len : 0;
    if (i > 0)
        memcpy(nv->slot, v->slot, i * 8);
    if (b) {
        nv->slot[i] = b;
        if (len > i)
            memcpy(nv->slot + i + 1, v->slot + i, (len - i) * 8);
        nv->len = len + 1;
    } else {
        memcpy(nv->slot + i, v->slot + i + 1, (len - i - 1) * 8);
        nv->len = len - 1;
    }
    nv->cap = cap;
    return nb;
}

/* Publishes vector nb in the root and frees the old one. */
static void swap_vec(shobj *o, uint64_t nb)
{
    uint64_t old = H(o)->root;
    PUBLISH(&H(o)->root, nb);
    KILL_POINT(SHD_KILL_PUBLISHED);
    if (old)
        heap_free(o, old);
}

static int list_insert(shobj *o, uint64_t i, const void *val, size_t vlen, luamp_buf *old)
{
    (void)old;
    uint64_t len = list_len(o);
    if (i == UINT64_MAX)
        i = len;    /* (an append) */
    if (i > len)
        return SHD_RANGE;
    uint64_t b = new_elem(o, val, vlen);
    if (b == 0)
        return SHD_ERROR;
    vec *v = vec_of(o);
    if (i == len && v != NULL && len < v->cap) {
        /* an append with room: the slot past the end is nobody's yet,
         * and the new length publishes it */
        v->slot[len] = b;
        KILL_POINT(SHD_KILL_WRITTEN);
        PUBLISH(&v->len, len + 1);
        return SHD_OK;
    }
    /* Elsewhere, a new vector: moving the elements up in place would
     * leave one twice and another lost to a death half way. */
    uint64_t cap = v == NULL ? MIN_SLOTS : len < v->cap ? v->cap : v->cap * 2;
    uint64_t nb = copy_vec(o, cap, i, b);
    if (nb == 0) {
        int e = errno;
        heap_free(o, b);
        errno = e;
        return SHD_ERROR;
    }
    KILL_POINT(SHD_KILL_WRITTEN);
    swap_vec(o, nb);
    return SHD_OK;
}

int shlist_append(shlist *l, const void *val, size_t vlen)
{
    return run_list_change(l, list_insert, UINT64_MAX, val, vlen, NULL);
}

int shlist_insert(shlist *l, uint64_t i, const void *val, size_t vlen)
{
    return run_list_change(l, list_insert, i, val, vlen, NULL);
}

static int list_remove(shobj *o, uint64_t i, const void *val, size_t vlen, luamp_buf *old)
{
    (void)val;
    (void)vlen;
    uint64_t len = list_len(o);
    if (i >= len)
        return SHD_RANGE;
    vec *v = vec_of(o);
    uint64_t b = v->slot[i];
    if (old && copy_out(old, ((elem *)PAYLOAD(o, b))->bytes, ((elem *)PAYLOAD(o, b))->len) != 0)
        return SHD_ERROR;
    if (len == 1) {
        empty_object(o);
        return SHD_OK;
    }
    uint64_t cap = v->cap;
    if (len - 1 < cap / 4 && cap > MIN_SLOTS)
        cap /= 2;
    if (i == len - 1 && cap == v->cap) {
        PUBLISH(&v->len, len - 1);
        KILL_POINT(SHD_KILL_PUBLISHED);
    } else {
        uint64_t nb = copy_vec(o, cap, i, 0);
        if (nb == 0)
            return SHD_ERROR;
        KILL_POINT(SHD_KILL_WRITTEN);
        swap_vec(o, nb);
    }
    heap_free(o, b);
    return SHD_OK;
}

int shlist_remove(shlist *l, uint64_t i, luamp_buf *old)
{
    return run_list_change(l, list_remove, i, NULL, 0, old);
}

int shlist_clear(shlist *l)
{
    shobj *o = lobj(l);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    begin_change(o);
    empty_object(o);
    end_change(o);
    obj_unlock(o);
    return SHD_OK;
}

int shlist_foreach(shlist *l, shd_visit fn, void *arg)
{
    shobj *o = lobj(l);
    int r = obj_lock(o, -1);
    if (r != SHD_OK)
        return r;
    uint64_t len = list_len(o);
    for (uint64_t i = 0; i < len; i++) {
        elem *e = elem_at(o, i);
        if (fn(arg, NULL, 0, e->bytes, e->len) != 0)
            break;
    }
    obj_unlock(o);
    return SHD_OK;
}

int shlist_snapshot(shlist *l, luamp_buf *out, uint64_t *n)
{
    snap_ctx c = { out, SHD_VALUES, 0, 0 };
    luamp_buf_reset(out);
    return snap_done(shlist_foreach(l, snap_visit, &c), &c, n);
}

/* ---- inspection ----------------------------------------------------------- */

int shdict_stats(shdict *d, shd_stats *st)
{
    return obj_stats(dobj(d), st);
}

int shlist_stats(shlist *l, shd_stats *st)
{
    return obj_stats(lobj(l), st);
}

typedef struct verify_ctx {
    bitmap reached;
    const char *why;
    uint64_t live, bytes;
} verify_ctx;

static int verify_live(shobj *o, uint64_t b, void *arg)
{
    verify_ctx *c = arg;
    if (bit_get(&c->reached, b)) {
        c->why = "a block is reached twice";
        return 1;
    }
    bit_set(&c->reached, b);
    if (!(WORD(o, b) & INUSE)) {
        c->why = "a block in use is marked free";
        return 1;
    }
    c->live++;
    c->bytes += block_size(o, b);
    uint64_t room = block_size(o, b) - 8;
    if (b != H(o)->root && o->kind == KIND_DICT) {
        entry *e = PAYLOAD(o, b);
        if (e->klen > room - sizeof(entry) || e->vlen > room - sizeof(entry) - e->klen)
            c->why = "an entry is longer than its block";
        else if (e->hash != hash_bytes(e->bytes, e->klen, o->key))
            c->why = "an entry's hash is not its key's";
    } else if (b != H(o)->root) {
        elem *e = PAYLOAD(o, b);
        if (e->len > room - sizeof(elem))
            c->why = "an element is longer than its block";
    }
    return c->why != NULL;
}

static const char *verify(shobj *o)
{
    static char why[128];
    shd_hdr *h = H(o);
    bitmap starts;
    verify_ctx c = { { NULL, 0 }, NULL, 0, 0 };
    if (h->dirty)
        return "a change was left half done";
    if (walk(o, &starts) != 0)
        return "the blocks do not lead from the heap's start to its top";
    if (bits_new(&c.reached, HEAP_START, h->top) != 0) {
        free(starts.w);
        return "out of memory";
    }
    int r = each_live(o, &starts, verify_live, &c);
    if (r < 0 && c.why == NULL)
        c.why = "an offset in the dict or list is not a block";
    /* every block: reached and in use, or free and in its list */
    uint64_t nfree = 0, used = 0, prev_inuse = PREV_INUSE;
    for (uint64_t b = HEAP_START; c.why == NULL && b < h->top; b += block_size(o, b)) {
        uint64_t w = WORD(o, b), s = block_size(o, b);
        if ((w & PREV_INUSE) != prev_inuse)
            c.why = "a block's flag says wrongly whether the one before it is in use";
        else if (w & INUSE) {
            used += s;
            if (!bit_get(&c.reached, b))
                c.why = "a block in use is reached by nothing (a leak)";
        } else {
            nfree++;
            if (!prev_inuse)
                c.why = "two free blocks are next to each other";
            else if (WORD(o, b + s - 8) != s)
                c.why = "a free block's footer is not its size";
            else if (b + s == h->top)
                c.why = "a free block lies before the top";
        }
        prev_inuse = w & INUSE ? PREV_INUSE : 0;
    }
    /* the free lists: free blocks, each in the list of its size, once */
    uint64_t listed = 0;
    for (unsigned i = 0; c.why == NULL && i < NBINS; i++) {
        int nonempty = h->bins[i] != 0;
        if (nonempty != (int)(h->binmap[i / 64] >> (i % 64) & 1))
            c.why = "the map of non-empty free lists is wrong";
        uint64_t prev = 0;
        for (uint64_t b = h->bins[i]; c.why == NULL && b != 0; b = NEXT_FREE(o, b)) {
            if (b < HEAP_START || b >= h->top || !bit_get(&starts, b))
                c.why = "a free list holds something that is not a block";
            else if (WORD(o, b) & INUSE)
                c.why = "a free list holds a block in use";
            else if (bin_of(block_size(o, b)) != i)
                c.why = "a free block is in the wrong list";
            else if (PREV_FREE(o, b) != prev)
                c.why = "a free list's back link is wrong";
            else if (++listed > nfree)
                c.why = "a free list has a loop, or a block twice";
            prev = b;
        }
    }
    if (c.why == NULL && listed != nfree)
        c.why = "a free block is in no list (a leak)";
    if (c.why == NULL && used != h->used)
        c.why = "the count of bytes in use is wrong";
    if (c.why == NULL && o->kind == KIND_DICT) {
        uint64_t count = 0, tombs = 0;
        table *t = table_of(o);
        for (uint64_t i = 0; t && i < t->nslots; i++) {
            uint64_t s = t->slot[i];
            count += s > TOMB;
            tombs += s == TOMB;
            if (s > TOMB && (s & ~OFF_MASK) != (entry_at(o, s)->hash >> 48 << 48))
                c.why = "a slot's hash bits are not its entry's";
        }
        if (c.why == NULL && (count != h->count || tombs != h->tombs)) {
            snprintf(why, sizeof why, "the counts are wrong (%llu keys, %llu tombstones; said %llu, %llu)",
                     (unsigned long long)count, (unsigned long long)tombs,
                     (unsigned long long)h->count, (unsigned long long)h->tombs);
            c.why = why;
        }
    }
    free(starts.w);
    free(c.reached.w);
    return c.why;
}

static const char *obj_verify(shobj *o)
{
    if (obj_lock(o, -1) != SHD_OK)
        return "cannot take the lock";
    const char *why = verify(o);
    obj_unlock(o);
    return why;
}

const char *shdict_verify(shdict *d)
{
    return obj_verify(dobj(d));
}

const char *shlist_verify(shlist *l)
{
    return obj_verify(lobj(l));
}
