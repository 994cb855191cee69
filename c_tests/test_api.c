/*
 * The behaviour suite: the request heap through PHP's API, edge cases from PHP's own tests and the
 * reference, fatal errors and corruption checks in child processes, environment variables in fresh
 * processes. The Makefile runs it once per storage manager and with small segments, against the
 * shared and the static library.
 */
#include "test.h"

#include <setjmp.h>
#include <sys/resource.h>

/* The 30 bin sizes of PHP's zend_alloc_sizes.h. */
static const size_t bin_sizes[] = {8,   16,  24,  32,  40,  48,  56,  64,   80,   96,   112,  128,  160,  192,  224,
                                   256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072};

static size_t expected_block_size(size_t size)
{
    if (size <= 3072) {
        for (size_t i = 0; i < sizeof bin_sizes / sizeof bin_sizes[0]; i++) {
            if (bin_sizes[i] >= size) {
                return bin_sizes[i];
            }
        }
    }
    return (size + 4095) & ~(size_t)4095;
}

/* The segment size of the thread's heap: a fresh heap has exactly one segment. */
static size_t segment_size(void)
{
    shutdown_memory_manager(1, 1);
    start_memory_manager();
    return zend_memory_usage(1);
}

static void fill(void *p, size_t n, unsigned char seed)
{
    for (size_t i = 0; i < n; i++) {
        ((unsigned char *)p)[i] = (unsigned char)(seed + i * 7);
    }
}

static int filled(const void *p, size_t n, unsigned char seed)
{
    for (size_t i = 0; i < n; i++) {
        if (((const unsigned char *)p)[i] != (unsigned char)(seed + i * 7)) {
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Block sizes and accounting                                                                     */

static void test_block_size_of_every_small_request(void)
{
    shutdown_memory_manager(1, 0);
    for (size_t size = 0; size <= 3072; size++) {
        size_t before = zend_memory_usage(0);
        void *p = emalloc(size);
        size_t bs = zend_mem_block_size(p);
        if (bs != expected_block_size(size) || zend_memory_usage(0) - before != bs) {
            CHECK_EQ(bs, expected_block_size(size));
            CHECK_EQ(zend_memory_usage(0) - before, bs);
            fprintf(stderr, "  request size %zu\n", size);
        } else {
            CHECK(1);
        }
        efree(p);
        CHECK_EQ(zend_memory_usage(0), before);
    }
}

static void test_block_size_at_the_large_and_huge_boundaries(void)
{
    static const size_t sizes[] = {3073,    4095,    4096,    4097,    8192,    8193,    100000,  1048576,
                                   2093056, 2093057, 2097152, 2097153, 3000000, 3000001, 8388608, 33554433};
    shutdown_memory_manager(1, 0);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t before = zend_memory_usage(0);
        char *p = emalloc(sizes[i]);
        CHECK_EQ(zend_mem_block_size(p), expected_block_size(sizes[i]));
        CHECK_EQ(zend_memory_usage(0) - before, expected_block_size(sizes[i]));
        p[0] = 1;
        p[sizes[i] - 1] = 2;
        efree(p);
        CHECK_EQ(zend_memory_usage(0), before);
    }
    CHECK_EQ(zend_mem_block_size(NULL), 0);
}

/* PHP 8 release builds call size-specialised entry points for constant sizes: each gives a block of
 * its bin from the current heap and frees it again (usage returns), and the large and huge ones
 * behave as emalloc/efree. The header maps the large/huge names to the general functions, as PHP's
 * debug header does; the exported symbols are reached without those macros. */
#undef _emalloc_large
#undef _emalloc_huge
#undef _efree_large
#undef _efree_huge
static void test_release_size_specialised_entry_points(void)
{
    static void *(*const allocs[])(void) = {_emalloc_8, _emalloc_16, _emalloc_24, _emalloc_32, _emalloc_40, _emalloc_48, _emalloc_56, _emalloc_64, _emalloc_80, _emalloc_96, _emalloc_112, _emalloc_128, _emalloc_160, _emalloc_192, _emalloc_224, _emalloc_256, _emalloc_320, _emalloc_384, _emalloc_448, _emalloc_512, _emalloc_640, _emalloc_768, _emalloc_896, _emalloc_1024, _emalloc_1280, _emalloc_1536, _emalloc_1792, _emalloc_2048, _emalloc_2560, _emalloc_3072};
    static void (*const frees[])(void *) = {_efree_8, _efree_16, _efree_24, _efree_32, _efree_40, _efree_48, _efree_56, _efree_64, _efree_80, _efree_96, _efree_112, _efree_128, _efree_160, _efree_192, _efree_224, _efree_256, _efree_320, _efree_384, _efree_448, _efree_512, _efree_640, _efree_768, _efree_896, _efree_1024, _efree_1280, _efree_1536, _efree_1792, _efree_2048, _efree_2560, _efree_3072};
    static const size_t bins[] = {8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072};
    shutdown_memory_manager(1, 0);
    for (size_t i = 0; i < sizeof bins / sizeof bins[0]; i++) {
        size_t before = zend_memory_usage(0);
        char *p = allocs[i]();
        CHECK(p != NULL && is_zend_ptr(p));
        CHECK_EQ(zend_mem_block_size(p), bins[i]);
        CHECK_EQ(zend_memory_usage(0) - before, bins[i]);
        memset(p, 0x5a, bins[i]);
        /* A block of the bin from emalloc() is freed by _efree_N too. */
        char *q = emalloc(bins[i]);
        frees[i](p);
        frees[i](q);
        CHECK_EQ(zend_memory_usage(0), before);
    }
    size_t before = zend_memory_usage(0);
    char *large = _emalloc_large(5000);
    char *huge = _emalloc_huge(3u << 20);
    CHECK_EQ(zend_mem_block_size(large), 8192);
    CHECK_EQ(zend_mem_block_size(huge), 3u << 20);
    CHECK_EQ(zend_memory_usage(0) - before, 8192 + (3u << 20));
    large[4999] = 1;
    huge[(3u << 20) - 1] = 1;
    _efree_large(large, 5000);
    _efree_huge(huge, 3u << 20);
    CHECK_EQ(zend_memory_usage(0), before);
}

/* This header's emalloc() and efree_size() call a bin's own entry points (_emalloc_at_N,
 * _efree_at_N) for a compile-time-constant size, as PHP's release header does; the blocks are the
 * same as emalloc()'s with that size. check_coverage.sh sees each entry point among this binary's
 * imports, so a macro that stopped routing fails there. */
#ifndef ZEND_MM_NOPLT
# error "the header defines ZEND_MM_NOPLT (empty where the compiler has no noplt attribute)"
#endif
#define EVERY_BIN(X)                                                                                \
    X(8) X(16) X(24) X(32) X(40) X(48) X(56) X(64) X(80) X(96) X(112) X(128) X(160) X(192) X(224)    \
    X(256) X(320) X(384) X(448) X(512) X(640) X(768) X(896) X(1024) X(1280) X(1536) X(1792) X(2048) \
    X(2560) X(3072)
static void test_constant_sizes_call_the_bins_entry_points(void)
{
    shutdown_memory_manager(1, 0);
    size_t before = zend_memory_usage(0);
    int wrong = 0;
#define ONE_BIN(n)                                                                                 \
    {                                                                                              \
        char *p = emalloc(n), *q = emalloc((n) - 7);                                               \
        wrong += p == NULL || q == NULL || zend_mem_block_size(p) != (n) ||                        \
                 zend_mem_block_size(q) != (n) || zend_memory_usage(0) - before != 2 * (n);        \
        memset(p, 0x5a, n);                                                                        \
        efree_size(p, n);                                                                          \
        efree_size(q, (n) - 7);                                                                    \
        wrong += zend_memory_usage(0) != before;                                                   \
    }
    EVERY_BIN(ONE_BIN)
#undef ONE_BIN
    CHECK_EQ(wrong, 0);
    /* A size between two bins takes the larger bin; a constant above 3072 the general path. */
    char *mid = emalloc(100), *large = emalloc(5000);
    CHECK_EQ(zend_mem_block_size(mid), 112);
    CHECK_EQ(zend_mem_block_size(large), 8192);
    efree_size(large, 5000);
    /* A wrong constant size in efree_size() still frees the block by what it is. */
    efree_size(mid, 64);
    CHECK_EQ(zend_memory_usage(0), before);
    /* The selectors the two macros use, called directly. */
    void *r = ZEND_MM_EMALLOC_CONST_(24);
    CHECK_EQ(zend_mem_block_size(r), 24);
    ZEND_MM_EFREE_CONST_(r, 24);
    CHECK_EQ(zend_memory_usage(0), before);
}

static void test_emalloc_zero_and_null_handling(void)
{
    void *p = emalloc(0);
    CHECK(p != NULL);
    CHECK_EQ(zend_mem_block_size(p), 8);
    efree(p);
    efree(NULL); /* a no-op */
    void *q = erealloc(NULL, 100);
    CHECK_EQ(zend_mem_block_size(q), 112);
    efree(q);
    void *z = ecalloc(0, 10);
    CHECK(z != NULL);
    efree(z);
}

static void test_alignment(void)
{
    for (size_t i = 0; i < sizeof bin_sizes / sizeof bin_sizes[0]; i++) {
        void *blocks[8];
        int all16 = 1, all8 = 1;
        for (int j = 0; j < 8; j++) {
            blocks[j] = emalloc(bin_sizes[i]);
            all8 &= ((uintptr_t)blocks[j] % 8) == 0;
            all16 &= ((uintptr_t)blocks[j] % 16) == 0;
        }
        CHECK(all8);
        if (bin_sizes[i] % 16 == 0) {
            CHECK(all16); /* as PHP: only bins 8, 24, 40 and 56 are merely 8-aligned */
        }
        for (int j = 0; j < 8; j++) {
            efree(blocks[j]);
        }
    }
    /* Large blocks are page aligned (sizes below the largest large block of 64K segments). */
    for (size_t size = 3073; size < 60000; size = size * 3 / 2) {
        void *p = emalloc(size);
        CHECK(((uintptr_t)p % 4096) == 0);
        efree(p);
    }
    void *huge = emalloc(5000000);
    CHECK(((uintptr_t)huge % 16) == 0);
    efree(huge);
}

static void test_small_blocks_are_adjacent_and_reused_lifo(void)
{
    shutdown_memory_manager(1, 0);
    char *a = emalloc(24), *b = emalloc(24), *c = emalloc(24);
    CHECK(b == a + 24 && c == b + 24);
    efree(b);
    CHECK(emalloc(24) == b);
    efree(a);
    efree(c);
    CHECK(emalloc(20) == c); /* last freed, first reused */
}

static void test_usage_peak_and_reset(void)
{
    size_t seg = segment_size();
    CHECK_EQ(zend_memory_usage(0), 0);
    CHECK_EQ(zend_memory_peak_usage(0), 0);
    CHECK_EQ(zend_memory_peak_usage(1), seg);
    void *p = emalloc(1000000);
    size_t high = zend_memory_usage(0);
    CHECK_EQ(high, expected_block_size(1000000));
    efree(p);
    CHECK_EQ(zend_memory_usage(0), 0);
    CHECK_EQ(zend_memory_peak_usage(0), high);
    void *q = emalloc(100);
    CHECK_EQ(zend_memory_peak_usage(0), high);
    zend_memory_reset_peak_usage();
    CHECK_EQ(zend_memory_peak_usage(0), 112);
    CHECK_EQ(zend_memory_peak_usage(1), zend_memory_usage(1));
    efree(q);
}

static void test_real_usage_steps_by_segments(void)
{
    size_t seg = segment_size();
    size_t real = zend_memory_usage(1);
    CHECK_EQ(real, seg);
    /* Fill segments with blocks of an eighth of a segment: the real usage grows one segment at a
     * time. */
    void *blocks[64];
    size_t n = 0, steps = 0;
    while (n < 64 && steps < 3) {
        blocks[n++] = emalloc(seg / 8);
        size_t now = zend_memory_usage(1);
        if (now != real) {
            CHECK_EQ(now - real, seg);
            real = now;
            steps++;
        }
    }
    CHECK_EQ(steps, 3);
    while (n > 0) {
        efree(blocks[--n]);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* realloc                                                                                        */

static void test_realloc_small(void)
{
    char *p = emalloc(100);
    fill(p, 100, 1);
    char *q = erealloc(p, 105);
    CHECK(q == p); /* still fits bin 112 */
    q = erealloc(p, 90);
    CHECK(q != p); /* fits the smaller bin 96: moves, as PHP 8 */
    CHECK_EQ(zend_mem_block_size(q), 96);
    CHECK(filled(q, 90, 1));
    char *r = erealloc(q, 1000);
    CHECK_EQ(zend_mem_block_size(r), 1024);
    CHECK(filled(r, 90, 1));
    char *z = erealloc(r, 0);
    CHECK(z != NULL);
    CHECK_EQ(zend_mem_block_size(z), 8);
    CHECK(erealloc(z, 0) == z); /* already in bin 0 */
    efree(z);
}

static void test_realloc_large_in_place(void)
{
    /* Sizes stay below the largest large block of the smallest segments (64K: 15 pages). */
    shutdown_memory_manager(1, 0);
    char *p = emalloc(5000);
    fill(p, 5000, 2);
    char *q = erealloc(p, 7000);
    CHECK(q == p); /* the next page is free: grows in place */
    CHECK_EQ(zend_mem_block_size(q), 8192);
    char *r = erealloc(q, 40000);
    CHECK(r == p);
    CHECK_EQ(zend_mem_block_size(r), 40960);
    size_t usage = zend_memory_usage(0);
    char *s = erealloc(r, 20000);
    CHECK(s == p); /* shrinks in place, the tail pages go back */
    CHECK_EQ(zend_memory_usage(0), usage - (40960 - 20480));
    CHECK(filled(s, 5000, 2));
    char *blocker = emalloc(4096); /* takes the page right after s */
    CHECK(blocker == s + 20480);
    char *t = erealloc(s, 30000);
    CHECK(t != s); /* cannot grow in place any more: moves */
    CHECK(filled(t, 5000, 2));
    char *u = erealloc(t, 100);
    CHECK_EQ(zend_mem_block_size(u), 112); /* large -> small moves */
    CHECK(filled(u, 100, 2));
    efree(u);
    efree(blocker);
}

static void test_realloc_huge(void)
{
    char *p = emalloc(3000000);
    fill(p, 3000000, 3);
    size_t usage = zend_memory_usage(0);
    char *q = erealloc(p, 3100000);
    CHECK_EQ(zend_mem_block_size(q), 3100672);
    CHECK_EQ(zend_memory_usage(0), usage + (3100672 - 3002368));
    CHECK(filled(q, 3000000, 3));
    char *r = erealloc(q, 2500000);
    CHECK_EQ(zend_mem_block_size(r), 2502656);
    CHECK(filled(r, 2500000, 3));
    char *s = erealloc(r, 5000);
    CHECK_EQ(zend_mem_block_size(s), 8192);
    CHECK(filled(s, 5000, 3));
    char *t = erealloc(s, 9000000);
    CHECK(filled(t, 5000, 3));
    CHECK_EQ(zend_mem_block_size(t), 9003008);
    efree(t);
}

/* A freed huge block stays cached for reuse. Reused by a smaller block, the rest of it does not
 * stay resident as part of that block: on a storage that can cut it (the built-in ones), it stays
 * cached as a block of its own, counted in the real usage and given back by zend_mm_gc(); on
 * another, its pages go back at once. Shrunk in place, a block's pages past its new size go back.
 * (The cache holds up to 64 MiB: the big block stays below.) */
static void test_huge_block_tails_are_not_kept_resident(void)
{
    /* Huge for every segment size (up to ZEND_MM_SEG_SIZE=16M). */
    const size_t big = (size_t)62 << 20, small = (size_t)18 << 20;
    char *p = emalloc(big);
    memset(p, 1, big);
    efree(p);
    long cached = rss_kib();
    size_t real = zend_memory_usage(1);
    char *q = emalloc(small);
    memset(q, 2, small);
    CHECK(rss_kib() <= cached + 1024); /* the cached block served: no fresh memory */
    CHECK(zend_memory_usage(1) <= real);
    zend_mm_gc(zend_mm_get_heap());
    /* The 44 MiB past the new block are gone now, whichever way the storage took them. */
    CHECK(rss_kib() + 40 * 1024 <= cached);
    efree(q);
    char *r = emalloc(big);
    fill(r, big, 3);
    long full = rss_kib();
    r = erealloc(r, big - (big / 4)); /* shrunk in place */
    CHECK(filled(r, big - big / 4, 3));
    CHECK(rss_kib() + 12 * 1024 <= full);
    efree(r);
}

/* Stamps one byte per page of a block, its first and its last byte, from `seed`. */
static void stamp_pages(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i += 4096) {
        p[i] = (unsigned char)(seed + i / 4096);
    }
    if ((n - 1) % 4096 != 0) {
        p[n - 1] = (unsigned char)(seed ^ 0x5a);
    }
}

/* Whether the page stamps of `stamp_pages(p, n, seed)` are intact in the first `upto` bytes. */
static int stamped_pages(const unsigned char *p, size_t n, size_t upto, unsigned seed)
{
    for (size_t i = 0; i < upto && i < n; i += 4096) {
        if (p[i] != (unsigned char)(seed + i / 4096)) {
            return 0;
        }
    }
    return upto < n || (n - 1) % 4096 == 0 || p[n - 1] == (unsigned char)(seed ^ 0x5a);
}

/* Huge blocks freed, allocated and resized in a random order, so the cache cuts freed blocks for
 * smaller requests and joins pieces freed again: every block keeps its contents, and a size the
 * heap reports is the block's. */
static void test_huge_blocks_cut_and_joined_keep_their_contents(void)
{
    enum { SLOTS = 6, ROUNDS = 400 };
    unsigned char *slot[SLOTS] = {0};
    size_t size[SLOTS] = {0};
    unsigned seed[SLOTS] = {0};
    unsigned state = 12345;
    int bad = 0;
    for (int round = 0; round < ROUNDS; round++) {
        state = state * 1103515245u + 12345u;
        int i = (int)((state >> 16) % SLOTS);
        state = state * 1103515245u + 12345u;
        size_t n = ((size_t)3 << 19) + (size_t)((state >> 8) % (15u << 19)); /* 1.5 to 9 MiB */
        if (slot[i] && !stamped_pages(slot[i], size[i], size[i], seed[i])) {
            bad++;
        }
        if (slot[i] && (round & 3) == 0) {
            unsigned char *q = erealloc(slot[i], n);
            if (!stamped_pages(q, size[i], n, seed[i])) {
                bad++;
            }
            slot[i] = q;
        } else if (slot[i]) {
            efree(slot[i]);
            slot[i] = NULL;
            continue;
        } else {
            slot[i] = emalloc(n);
        }
        CHECK(zend_mem_block_size(slot[i]) >= n);
        size[i] = n;
        seed[i] = (unsigned)round;
        stamp_pages(slot[i], n, seed[i]);
    }
    for (int i = 0; i < SLOTS; i++) {
        if (slot[i]) {
            bad += !stamped_pages(slot[i], size[i], size[i], seed[i]);
            efree(slot[i]);
        }
    }
    CHECK(bad == 0);
}

static void test_erealloc2_copies_at_most_copy_size(void)
{
    char *p = emalloc(64);
    memset(p, 'a', 64);
    char *q = erealloc2(p, 4000, 10);
    CHECK(memcmp(q, "aaaaaaaaaa", 10) == 0);
    efree(q);
    p = emalloc(10000);
    memset(p, 'b', 10000);
    q = erealloc2(p, 50, 20);
    CHECK(memcmp(q, "bbbbbbbbbbbbbbbbbbbb", 20) == 0);
    efree(q);
}

static void test_safe_and_calloc(void)
{
    int *z = ecalloc(1000, sizeof(int));
    int sum = 0;
    for (int i = 0; i < 1000; i++) {
        sum |= z[i];
    }
    CHECK(sum == 0);
    CHECK_EQ(zend_mem_block_size(z), 4096);
    efree(z);
    /* Reused memory is zeroed too. */
    char *dirty = emalloc(256);
    memset(dirty, 0xff, 256);
    efree(dirty);
    char *clean = ecalloc(1, 256);
    CHECK(clean == dirty && clean[0] == 0 && clean[255] == 0);
    efree(clean);
    /* A huge block reused, and one made fresh (whose pages the library need not write). */
    size_t huge = (size_t)5 << 20;
    unsigned char *big = emalloc(huge);
    memset(big, 0xff, huge);
    efree(big);
    unsigned char *zeroed = ecalloc(huge, 1);
    unsigned char *fresh = ecalloc(1, huge * 2);
    int nonzero = 0;
    for (size_t i = 0; i < huge; i += 64) {
        nonzero += zeroed[i] != 0 || zeroed[i + 63] != 0 || fresh[i] != 0 || fresh[huge + i + 63] != 0;
    }
    CHECK(nonzero == 0);
    efree(zeroed);
    efree(fresh);
    void *s = safe_emalloc(10, 100, 24);
    CHECK_EQ(zend_mem_block_size(s), 1024);
    s = safe_erealloc(s, 20, 100, 0);
    CHECK_EQ(zend_mem_block_size(s), 2048);
    efree(s);
}

static void test_strings(void)
{
    char *s = estrdup("hello, world");
    CHECK(strcmp(s, "hello, world") == 0);
    CHECK_EQ(zend_mem_block_size(s), 16);
    char *n = estrndup("hello, world", 5);
    CHECK(strcmp(n, "hello") == 0);
    char *e = estrndup(NULL, 0);
    CHECK(e[0] == '\0');
    char *p = zend_strndup("persistent", 4);
    CHECK(strcmp(p, "pers") == 0 && !is_zend_ptr(p));
    free(p);
    char *d = __zend_strdup("dup");
    CHECK(strcmp(d, "dup") == 0);
    free(d);
    efree(s);
    efree(n);
    efree(e);
}

static void test_persistent_allocations(void)
{
    void *m = __zend_malloc(100);
    void *c = __zend_calloc(10, 10);
    CHECK(m && c && ((char *)c)[99] == 0);
    m = __zend_realloc(m, 1000);
    void *s = _safe_malloc(10, 10, 10);
    s = _safe_realloc(s, 10, 20, 0);
    CHECK(s != NULL && !is_zend_ptr(s) && !is_zend_ptr(m));
    free(m);
    free(c);
    free(s);
}

/* ---------------------------------------------------------------------------------------------- */
/* Lifecycle                                                                                      */

static void test_request_shutdown_keeps_the_heap(void)
{
    zend_mm_heap *heap = zend_mm_get_heap();
    for (int i = 0; i < 1000; i++) {
        emalloc(i * 10);
    }
    emalloc(5000000);
    shutdown_memory_manager(1, 0);
    CHECK(zend_mm_get_heap() == heap);
    CHECK_EQ(zend_memory_usage(0), 0);
    CHECK_EQ(zend_memory_peak_usage(0), 0);
    CHECK_EQ(zend_memory_peak_usage(1), zend_memory_usage(1));
    CHECK(full_mem_check(1) == 0);
    void *p = emalloc(10);
    CHECK(p != NULL);
    efree(p);
}

static void test_full_shutdown_then_a_new_heap(void)
{
    emalloc(100);
    shutdown_memory_manager(1, 1);
    void *p = emalloc(100); /* a new heap is made on demand */
    CHECK(p != NULL);
    CHECK_EQ(zend_memory_usage(0), 112);
    efree(p);
    shutdown_memory_manager(0, 1);
    start_memory_manager();
    CHECK_EQ(zend_memory_usage(0), 0);
}

static void test_thousand_requests_keep_rss_flat(void)
{
    long rss_early = 0;
    for (int request = 0; request < 1000; request++) {
        void *keep[64];
        for (int i = 0; i < 2000; i++) {
            void *p = emalloc((size_t)(i * 37 % 3000));
            if (i % 3 == 0) {
                efree(p);
            } else if (i % 31 == 0) {
                keep[(i / 31) % 64] = p;
            }
        }
        char *s = NULL;
        for (int i = 0; i < 200; i++) {
            s = erealloc(s, (size_t)(i + 1) * 300);
        }
        emalloc(request % 10 == 0 ? 3000000 : 70000);
        (void)keep;
        shutdown_memory_manager(1, 0);
        if (request == 9) {
            rss_early = rss_kib();
        }
    }
    long rss_late = rss_kib();
    if (!(rss_late <= rss_early + 1024)) {
        fprintf(stderr, "  RSS after 10 requests %ld KiB, after 1000 requests %ld KiB\n", rss_early, rss_late);
    }
    CHECK(rss_late <= rss_early + 1024);
}

/* One big request, then small ones, on a fresh heap: the big request's memory stays resident
 * (RSS) no more than a quarter above its real peak, and after 20 small requests the process holds at
 * most 2 MiB more than the heap's first segment above what it held before the big one: 4 MiB with
 * the default segments (PHP 8.2 holds 1.6 MiB there: its first chunk). */
static void memory_goes_back_between_requests(void *arg)
{
    (void)arg;
    shutdown_memory_manager(1, 1); /* a fresh heap */
    emalloc(100);
    shutdown_memory_manager(1, 0);
    long base = rss_kib();
    char *blocks[24];
    for (int i = 0; i < 24; i++) { /* 24 MiB of large blocks, and two 6 MiB huge blocks */
        blocks[i] = emalloc(1000000);
        memset(blocks[i], i, 1000000);
    }
    for (int i = 0; i < 2; i++) {
        memset(emalloc(6000000), i, 6000000);
    }
    for (int i = 0; i < 24; i += 2) { /* half freed mid-request, as a request's temporaries are */
        efree(blocks[i]);
    }
    for (int i = 0; i < 12; i++) { /* huge temporaries, each bigger than the last */
        size_t size = 3000000 + (size_t)i * 500000;
        char *p = emalloc(size);
        memset(p, i, size);
        efree(p);
    }
    long during = rss_kib() - base;
    long real_peak_kib = (long)(zend_memory_peak_usage(1) / 1024);
    CHECK(during <= real_peak_kib + real_peak_kib / 4);
    shutdown_memory_manager(1, 0);
    for (int request = 0; request < 20; request++) {
        memset(emalloc(100), 1, 100);
        shutdown_memory_manager(1, 0);
    }
    long after = rss_kib() - base;
    /* What the heap still holds (its first segment, all of which the big request may have
     * touched: 2 MiB by default) plus 2 MiB. */
    long held_kib = (long)(zend_memory_usage(1) / 1024) + 2 * 1024;
    CHECK(after <= held_kib);
    if (during > real_peak_kib + real_peak_kib / 4 || after > held_kib) {
        fprintf(stderr, "  RSS above the start: %ld KiB in the big request (real peak %ld KiB), %ld KiB after\n",
                during, real_peak_kib, after);
    }
}

static void test_memory_goes_back_between_requests(void)
{
    if (under_valgrind()) {
        printf("test_memory_goes_back_between_requests: skipped under valgrind (RSS is valgrind's)\n");
        return;
    }
    run_checks_in_child(memory_goes_back_between_requests, NULL, "one big request, then 20 small ones");
}

static void test_gc_returns_free_runs(void)
{
    shutdown_memory_manager(1, 0);
    void *blocks[20000];
    for (int i = 0; i < 20000; i++) {
        blocks[i] = emalloc(64);
    }
    void *keep = emalloc(64);
    for (int i = 0; i < 20000; i++) {
        efree(blocks[i]);
    }
    size_t freed = zend_mm_gc(zend_mm_get_heap());
    CHECK(freed >= 300 * 4096 && freed % 4096 == 0);
    CHECK_EQ(zend_mm_gc(zend_mm_get_heap()), 0); /* nothing left to collect */
    CHECK_EQ(zend_memory_usage(0), 64);
    CHECK(full_mem_check(1) == 0);
    efree(keep);
    /* The memory serves new requests. */
    for (int i = 0; i < 20000; i++) {
        blocks[i] = emalloc(200);
    }
    for (int i = 0; i < 20000; i++) {
        efree(blocks[i]);
    }
    CHECK(full_mem_check(1) == 0);
}

static void test_memory_limit_setting(void)
{
    size_t seg = segment_size();
    CHECK(zend_set_memory_limit(seg / 2) == FAILURE); /* below what is in use */
    CHECK(zend_set_memory_limit(seg) == SUCCESS);
    CHECK(zend_set_memory_limit(64 * seg) == SUCCESS);
    /* Cached segments are dropped to meet a lower limit (PHP 8). */
    void *blocks[64];
    for (int i = 0; i < 8; i++) {
        blocks[i] = emalloc(seg / 2);
    }
    for (int i = 0; i < 8; i++) {
        efree(blocks[i]);
    }
    size_t real = zend_memory_usage(1);
    if (real > seg) {
        CHECK(zend_set_memory_limit(seg) == SUCCESS);
        CHECK(zend_memory_usage(1) <= seg);
    }
    CHECK(zend_set_memory_limit((size_t)-1) == SUCCESS);
}

static void test_heap_checks(void)
{
    char *p = emalloc(100);
    CHECK(mem_block_check(p, 1) == 1);
    CHECK(mem_block_check(p + 8, 1) == 0);
    char stack;
    CHECK(mem_block_check(&stack, 1) == 0);
    efree(p);
    CHECK(mem_block_check(p, 1) == 0);
    CHECK(full_mem_check(1) == 0);
}

static void test_is_zend_ptr(void)
{
    char *small = emalloc(10), *large = emalloc(10000), *huge = emalloc(4000000);
    void *foreign = malloc(10);
    int local;
    CHECK(is_zend_ptr(small) && is_zend_ptr(large) && is_zend_ptr(huge));
    CHECK(is_zend_ptr(large + 5000) && is_zend_ptr(huge + 3999999));
    CHECK(!is_zend_ptr(foreign) && !is_zend_ptr(&local) && !is_zend_ptr(NULL));
    free(foreign);
    efree(small);
    efree(large);
    efree(huge);
}

static void test_explicit_heaps(void)
{
    zend_mm_heap *mine = zend_mm_get_heap();
    zend_mm_heap *heap = zend_mm_startup();
    CHECK(heap != NULL && heap != mine);
    char *p = zend_mm_alloc(heap, 100);
    CHECK_EQ(zend_mm_block_size(heap, p), 112);
    p = zend_mm_realloc(heap, p, 3000);
    p = zend_mm_realloc2(heap, p, 6000, 3000);
    CHECK_EQ(zend_mm_block_size(heap, p), 8192);
    CHECK(!is_zend_ptr(p)); /* not the current heap's */
    zend_mm_heap *old = zend_mm_set_heap(heap);
    CHECK(old == mine && zend_mm_get_heap() == heap);
    CHECK(is_zend_ptr(p));
    void *q = emalloc(10); /* emalloc now uses `heap` */
    CHECK_EQ(zend_memory_usage(0), 8192 + 16);
    efree(q);
    zend_mm_set_heap(old);
    zend_mm_free(heap, p);
    CHECK(zend_mm_gc(heap) > 0);
    zend_mm_shutdown(heap, 0, 1);
    zend_mm_shutdown(heap, 1, 1);
    CHECK(zend_mm_get_heap() == mine);
    CHECK(zend_mm_get_storage(mine) != NULL);
}

static int custom_calls;
static void *counting_malloc(size_t n) { custom_calls++; return malloc(n); }
static void counting_free(void *p) { custom_calls++; free(p); }
static void *counting_realloc(void *p, size_t n) { custom_calls++; return realloc(p, n); }

static void test_custom_handlers(void)
{
    zend_mm_heap *heap = zend_mm_get_heap();
    CHECK(is_zend_mm() && !zend_mm_is_custom_heap(heap));
    size_t usage = zend_memory_usage(0);
    zend_mm_set_custom_handlers(heap, counting_malloc, counting_free, counting_realloc);
    CHECK(!is_zend_mm() && zend_mm_is_custom_heap(NULL));
    void *(*m)(size_t) = NULL;
    void (*f)(void *) = NULL;
    void *(*r)(void *, size_t) = NULL;
    zend_mm_get_custom_handlers(heap, &m, &f, &r);
    CHECK(m == counting_malloc && f == counting_free && r == counting_realloc);
    custom_calls = 0;
    char *p = emalloc(100);
    p = erealloc(p, 200);
    CHECK_EQ(zend_mem_block_size(p), 0);
    efree(p);
    CHECK_EQ(custom_calls, 3);
    CHECK_EQ(zend_memory_usage(0), usage);
    CHECK_EQ(zend_mm_gc(heap), 0);
    zend_mm_set_custom_handlers(heap, NULL, NULL, NULL);
    CHECK(is_zend_mm());
    zend_mm_get_custom_handlers(heap, &m, &f, &r);
    CHECK(m == NULL && f == NULL && r == NULL);
    void *q = emalloc(100);
    CHECK_EQ(zend_mem_block_size(q), 112);
    efree(q);
}

/* PHP's ext/zend_test makes a heap of zeroed malloc'ed memory by giving it handlers that forward to
 * the original heap, makes it current, and frees the memory at request end. */
static zend_mm_heap *forward_to;
static int forward_calls;
static void *forward_malloc(size_t n)
{
    forward_calls++;
    return _zend_mm_alloc(forward_to, n ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
}
static void forward_free(void *p)
{
    forward_calls++;
    _zend_mm_free(forward_to, p ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
}
static void *forward_realloc(void *p, size_t n)
{
    forward_calls++;
    return _zend_mm_realloc(forward_to, p, n ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
}

static void test_caller_memory_as_custom_heap(void)
{
    unsigned char *memory = calloc(1, 4096);
    zend_mm_heap *fake = (zend_mm_heap *)memory;
    forward_to = zend_mm_get_heap();
    size_t usage = zend_memory_usage(0);
    zend_mm_set_custom_handlers(fake, forward_malloc, forward_free, forward_realloc);
    CHECK(zend_mm_is_custom_heap(fake));
    zend_mm_heap *old = zend_mm_set_heap(fake);
    CHECK(old == forward_to);
    CHECK(!is_zend_mm());
    forward_calls = 0;
    char *p = emalloc(100);
    p = erealloc(p, 3000);
    memset(p, 'x', 3000);
    CHECK_EQ(forward_calls, 2);
    zend_mm_set_heap(old);
    CHECK(is_zend_mm());
    CHECK(zend_memory_usage(0) >= usage + 3000); /* the block lives on the original heap */
    zend_mm_set_heap(fake);
    efree(p);
    CHECK_EQ(forward_calls, 3);
    zend_mm_set_heap(old);
    CHECK_EQ(zend_memory_usage(0), usage);
    size_t written = 0;
    for (size_t i = 0; i < 4096; i++) {
        written += memory[i] != 0;
    }
    CHECK_EQ(written, 0); /* the library never writes into the caller's memory */
    /* The same address again: the same stand-in, with the new handlers. */
    zend_mm_set_custom_handlers(fake, counting_malloc, counting_free, counting_realloc);
    void *(*m)(size_t) = NULL;
    void (*f)(void *) = NULL;
    void *(*r)(void *, size_t) = NULL;
    zend_mm_get_custom_handlers(fake, &m, &f, &r);
    CHECK(m == counting_malloc && f == counting_free && r == counting_realloc);
    /* Clearing the handlers leaves a working heap of the library's. */
    zend_mm_set_custom_handlers(fake, NULL, NULL, NULL);
    CHECK(!zend_mm_is_custom_heap(fake));
    void *q = zend_mm_alloc(fake, 50);
    CHECK_EQ(zend_mm_block_size(fake, q), 56);
    zend_mm_free(fake, q);
    zend_mm_shutdown(fake, 1, 1); /* full shutdown forgets the address */
    free(memory);
}

/* ---------------------------------------------------------------------------------------------- */
/* Fatal errors (child processes)                                                                 */

/* A child announces the line of the call that must fail, so the parent knows what to expect. */
#define ANNOUNCE_LINE(line) (printf("line %d\n", (line)), fflush(stdout))
static int announced_line(const child_result *r)
{
    return strncmp(r->out, "line ", 5) == 0 ? atoi(r->out + 5) : -1;
}
/* Absurd sizes reach the library through a volatile, past the compiler's alloc_size checks. */
static volatile size_t size_max = SIZE_MAX;

static void exhaust_the_limit(void *arg)
{
    (void)arg;
    /* Four segments' worth (8 MiB with the default size); blocks of a quarter segment or 1 MiB. */
    size_t limit = 4 * zend_memory_usage(1);
    size_t block = limit / 16 < 1048576 ? limit / 16 : 1048576;
    zend_set_memory_limit(limit);
    ANNOUNCE_LINE(__LINE__ + 3);
    printf("limit %zu block %zu\n", limit, block);
    for (;;) {
        char *p = emalloc(block);
        p[0] = 1;
    }
}

static void test_memory_limit_fatal_error(void)
{
    child_result r = run_child(exhaust_the_limit, NULL, NULL);
    size_t limit = 0, block = 0;
    const char *nl = strchr(r.out, '\n');
    CHECK(nl && sscanf(nl + 1, "limit %zu block %zu", &limit, &block) == 2);
    char want[256];
    snprintf(want, sizeof want,
             "\nFatal error: Allowed memory size of %zu bytes exhausted (tried to allocate %zu bytes) in %s on line %d\n",
             limit, block, __FILE__, announced_line(&r));
    CHECK_EXIT(r, 255, want);
}

static void overflow_safe_emalloc(void *arg) { (void)arg; ANNOUNCE_LINE(__LINE__); safe_emalloc((size_t)1 << 62, 8, 0); }
static void overflow_ecalloc(void *arg) { (void)arg; ANNOUNCE_LINE(__LINE__); ecalloc(size_max, 2); }
static void overflow_huge(void *arg) { (void)arg; ANNOUNCE_LINE(__LINE__); emalloc(size_max - 99); }
static void overflow_estrndup(void *arg) { (void)arg; ANNOUNCE_LINE(__LINE__); estrndup("x", SIZE_MAX); }
static void overflow_safe_erealloc(void *arg) { (void)arg; ANNOUNCE_LINE(__LINE__); safe_erealloc(NULL, 2, SIZE_MAX / 2, 2); }
static void overflow_erealloc_huge(void *arg) { (void)arg; void *p = emalloc(3000000); ANNOUNCE_LINE(__LINE__); erealloc(p, SIZE_MAX - 10); }
static void overflow_safe_malloc(void *arg) { (void)arg; _safe_malloc(SIZE_MAX, SIZE_MAX, 0); }
static void overflow_zend_strndup(void *arg) { (void)arg; zend_strndup("x", SIZE_MAX); }

static void check_fatal(void (*fn)(void *), const char *message, int with_line)
{
    child_result r = run_child(fn, NULL, NULL);
    char want[512];
    if (with_line) {
        snprintf(want, sizeof want, "\nFatal error: %s in %s on line %d\n", message, __FILE__, announced_line(&r));
    } else {
        snprintf(want, sizeof want, "\nFatal error: %s in Unknown on line 0\n", message);
    }
    CHECK_EXIT(r, 255, want);
}

static void test_overflow_messages(void)
{
    check_fatal(overflow_safe_emalloc, "Possible integer overflow in memory allocation (4611686018427387904 * 8 + 0)", 1);
    check_fatal(overflow_ecalloc, "Possible integer overflow in memory allocation (18446744073709551615 * 2 + 0)", 1);
    check_fatal(overflow_huge, "Possible integer overflow in memory allocation (18446744073709551516 + 4096)", 1);
    check_fatal(overflow_estrndup, "Possible integer overflow in memory allocation (1 * 18446744073709551615 + 1)", 1);
    check_fatal(overflow_safe_erealloc, "Possible integer overflow in memory allocation (2 * 9223372036854775807 + 2)", 1);
    check_fatal(overflow_erealloc_huge, "Possible integer overflow in memory allocation (18446744073709551605 + 4096)", 1);
    check_fatal(overflow_safe_malloc,
                "Possible integer overflow in memory allocation (18446744073709551615 * 18446744073709551615 + 0)", 0);
    check_fatal(overflow_zend_strndup, "Possible integer overflow in memory allocation (1 * 18446744073709551615 + 1)", 0);
}

static void out_of_storage(void *arg)
{
    (void)arg;
    struct rlimit lim = {512UL << 20, 512UL << 20};
    setrlimit(RLIMIT_AS, &lim);
    ANNOUNCE_LINE(__LINE__ + 1);
    emalloc((size_t)1 << 30);
}

static void test_out_of_memory_fatal_error(void)
{
    child_result r = run_child(out_of_storage, NULL, NULL);
    CHECK(r.exited && r.status == 255);
    CHECK_CONTAINS(r.err, "\nFatal error: Out of memory (allocated ");
    CHECK_CONTAINS(r.err, " bytes) (tried to allocate 1073741824 bytes) in " __FILE__ " on line ");
}

static void persistent_out_of_memory(void *arg)
{
    struct rlimit lim = {256UL << 20, 256UL << 20};
    setrlimit(RLIMIT_AS, &lim);
    switch ((int)(intptr_t)arg) {
    case 0: __zend_malloc((size_t)1 << 30); break;
    case 1: __zend_calloc(1, (size_t)1 << 30); break;
    case 2: __zend_realloc(NULL, (size_t)1 << 30); break;
    case 3: pemalloc((size_t)1 << 30, 1); break;
    default: _safe_malloc(1, (size_t)1 << 30, 0); break;
    }
}

static void test_persistent_out_of_memory(void)
{
    for (intptr_t i = 0; i < 5; i++) {
        child_result r = run_child(persistent_out_of_memory, (void *)i, NULL);
        CHECK_EXIT(r, 1, "Out of memory\n");
    }
}

/* A handler that records the error and jumps back, as PHP's bailout does. */
static jmp_buf bailout;
static char handled_message[256], handled_file[256];
static uint32_t handled_line;
static int handled_type, limit_reporting_seen;

static void bailing_handler(int type, const char *filename, uint32_t lineno, const char *message)
{
    handled_type = type;
    snprintf(handled_message, sizeof handled_message, "%s", message);
    snprintf(handled_file, sizeof handled_file, "%s", filename);
    handled_line = lineno;
    limit_reporting_seen = zend_alloc_in_memory_limit_error_reporting();
    /* The handler may allocate beyond the limit while it reports. */
    char *note = emalloc(3 * zend_memory_usage(1));
    note[0] = 1;
    longjmp(bailout, 1);
}

static void *relayed_alloc(size_t size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
    (void)__zend_orig_filename;
    (void)__zend_orig_lineno;
    return emalloc_rel(size);
}

static void test_error_handler_can_bail_out(void)
{
    shutdown_memory_manager(1, 0);
    size_t seg = zend_memory_usage(1);
    size_t big = 2 * seg + 12345; /* needs storage beyond the first segment whatever its size */
    char expected[128];
    snprintf(expected, sizeof expected, " bytes exhausted (tried to allocate %zu bytes)", big);
    CHECK(zend_mm_set_error_handler(bailing_handler) == NULL);
    zend_set_memory_limit(seg);
    int line = 0;
    if (setjmp(bailout) == 0) {
        line = __LINE__ + 1;
        relayed_alloc(big ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
        CHECK(!"the allocation returned");
    }
    CHECK_EQ(handled_type, E_ERROR);
    CHECK(strstr(handled_message, "Allowed memory size of ") == handled_message);
    CHECK_CONTAINS(handled_message, expected);
    CHECK(strcmp(handled_file, __FILE__) == 0); /* the relayed location: this function */
    CHECK_EQ(handled_line, line);
    CHECK(limit_reporting_seen);
    /* The request ends normally; the next one has the limit back. */
    shutdown_memory_manager(1, 0);
    CHECK(!zend_alloc_in_memory_limit_error_reporting());
    CHECK(zend_set_memory_limit(seg) == SUCCESS);
    handled_message[0] = '\0';
    if (setjmp(bailout) == 0) {
        emalloc(big);
        CHECK(!"the allocation returned");
    }
    CHECK_CONTAINS(handled_message, expected);
    CHECK(zend_mm_set_error_handler(NULL) == bailing_handler);
    shutdown_memory_manager(1, 0);
    zend_set_memory_limit((size_t)-1);
}

static void test_recoverable_realloc_returns_null(void)
{
    shutdown_memory_manager(1, 0);
    char *p = emalloc(100);
    strcpy(p, "kept");
    size_t big = 2 * zend_memory_usage(1) + 1; /* needs storage beyond the first segment */
    zend_set_memory_limit(zend_memory_usage(1));
    char *q = erealloc_recoverable(p, big);
    CHECK(q == NULL);
    CHECK(strcmp(p, "kept") == 0 && zend_mem_block_size(p) == 112);
    zend_set_memory_limit((size_t)-1);
    q = erealloc_recoverable(p, big);
    CHECK(q != NULL && strcmp(q, "kept") == 0);
    efree(q);
}

static void handler_that_returns(int type, const char *filename, uint32_t lineno, const char *message)
{
    (void)type;
    fprintf(stderr, "handled: %s at %s:%u\n", message, filename, lineno);
}

static void returning_handler(void *arg)
{
    (void)arg;
    zend_mm_set_error_handler(handler_that_returns);
    ANNOUNCE_LINE(__LINE__ + 1);
    safe_emalloc(SIZE_MAX, 2, 0);
    puts("emalloc returned");
}

static void test_a_handler_that_returns_ends_the_process(void)
{
    child_result r = run_child(returning_handler, NULL, NULL);
    char want[256];
    snprintf(want, sizeof want,
             "handled: Possible integer overflow in memory allocation (18446744073709551615 * 2 + 0) at %s:%d\n",
             __FILE__, announced_line(&r));
    CHECK_EXIT(r, 255, want);
    CHECK(strstr(r.out, "returned") == NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* Pointers the heap does not own (child processes)                                               */

static void free_malloc_pointer(void *arg) { (void)arg; efree(malloc(64)); }
static void free_interior_large(void *arg) { (void)arg; efree((char *)emalloc(5000) + 16); }
static void free_wild_pointer(void *arg) { (void)arg; efree((void *)0x12345678); }
static void free_high_pointer(void *arg) { (void)arg; efree((void *)~(uintptr_t)0xfff); }
static void free_stack_pointer(void *arg) { int local; (void)arg; efree(&local); }
static void free_huge_twice(void *arg) { (void)arg; void *p = emalloc(5000000); efree(p); efree(p); }
static void free_large_twice(void *arg) { (void)arg; void *p = emalloc(50000); emalloc(10); efree(p); efree(p); }
static void free_interior_huge(void *arg) { (void)arg; efree((char *)emalloc(5000000) + 4096); }
static void free_second_page_of_large(void *arg) { (void)arg; char *p = emalloc(9000); efree(p + 4096); }
static void size_of_foreign(void *arg) { (void)arg; zend_mem_block_size(malloc(10)); }
static void realloc_foreign(void *arg) { (void)arg; erealloc(malloc(10), 100); }
static void free_after_request(void *arg) { (void)arg; void *p = emalloc(100000); shutdown_memory_manager(1, 0); efree(p); }
static void free_into_cached_segment(void *arg)
{
    (void)arg;
    /* Blocks in segments other than the first one; after the request they sit in cached segments. */
    void *blocks[64];
    for (int i = 0; i < 64; i++) {
        blocks[i] = emalloc(100000);
    }
    shutdown_memory_manager(1, 0);
    efree(blocks[63]);
}
static void free_other_heap_block(void *arg)
{
    (void)arg;
    zend_mm_heap *other = zend_mm_startup();
    void *p = zend_mm_alloc(other, 100);
    efree(p);
}
static void free_with_another_heap(void *arg)
{
    (void)arg;
    void *p = emalloc(100);
    zend_mm_heap *other = zend_mm_startup();
    zend_mm_free(other, p);
}

static void test_foreign_pointers_are_reported_not_crashed_on(void)
{
    void (*cases[])(void *) = {free_malloc_pointer, free_interior_large, free_wild_pointer,  free_high_pointer,
                               free_stack_pointer,  free_huge_twice,     free_large_twice,   free_interior_huge,
                               free_second_page_of_large, size_of_foreign, free_into_cached_segment,     realloc_foreign,    free_after_request,
                               free_other_heap_block, free_with_another_heap};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        child_result r = run_child(cases[i], NULL, NULL);
        CHECK_CORRUPTED(r);
        if (r.exited || r.signal != SIGABRT) {
            fprintf(stderr, "  (case %zu)\n", i);
        }
    }
}

static void null_heap(void *arg) { (void)arg; zend_mm_alloc(NULL, 10); }
static void bogus_heap(void *arg) { int x; (void)arg; zend_mm_alloc((zend_mm_heap *)&x, 10); }
static void partial_handlers(void *arg) { (void)arg; zend_mm_set_custom_handlers(zend_mm_get_heap(), malloc, NULL, NULL); }
static void many_caller_heaps(void *arg)
{
    (void)arg;
    for (int i = 0; i < 64; i++) {
        zend_mm_set_custom_handlers((zend_mm_heap *)calloc(1, 4096), malloc, free, realloc);
    }
}
static void unadopted_caller_heap(void *arg)
{
    (void)arg;
    zend_mm_set_heap((zend_mm_heap *)calloc(1, 4096));
}
static void caller_heap_without_handlers(void *arg)
{
    (void)arg;
    zend_mm_set_custom_handlers((zend_mm_heap *)calloc(1, 4096), NULL, NULL, NULL);
}
static void estrdup_null(void *arg) { (void)arg; ANNOUNCE_LINE(__LINE__); estrdup(NULL); }

static void test_bad_arguments_are_reported(void)
{
    child_result r = run_child(null_heap, NULL, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_alloc: the heap is NULL\n");
    r = run_child(bogus_heap, NULL, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_alloc: not a zend_mm_heap\n");
    r = run_child(partial_handlers, NULL, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_set_custom_handlers: malloc, free and realloc must all be set, or all be NULL\n");
    r = run_child(many_caller_heaps, NULL, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_set_custom_handlers: not a zend_mm_heap, and no heap can be made to stand for it (all stand-ins in use, or out of memory)\n");
    r = run_child(unadopted_caller_heap, NULL, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_set_heap: not a zend_mm_heap\n");
    r = run_child(caller_heap_without_handlers, NULL, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_set_custom_handlers: not a zend_mm_heap\n");
    check_fatal(estrdup_null, "estrdup(): the string is NULL", 1);
}

/* ---------------------------------------------------------------------------------------------- */
/* Environment variables (fresh processes)                                                        */

static void test_storage_selection(void)
{
    static const char *const names[] = {"malloc", "mmap_anon", "mmap_zero"};
    for (int i = 0; i < 3; i++) {
        char var[64];
        snprintf(var, sizeof var, "ZEND_MM_MEM_TYPE=%s", names[i]);
        const char *env[] = {var, NULL};
        child_result r = run_self("storage", env);
        char want[128];
        snprintf(want, sizeof want, "storage %s segment 2097152\n", names[i]);
        CHECK_EXIT(r, 0, "");
        CHECK(strcmp(r.out, want) == 0);
    }
    child_result r = run_self("storage", NULL);
    CHECK(strcmp(r.out, "storage malloc segment 2097152\n") == 0); /* the default is the first */
}

static void test_segment_sizes(void)
{
    static const char *const values[] = {"65536", "64k", "256K", "0x40000", "01000000", "1M", "4m", "1g"};
    static const size_t sizes[] = {65536, 65536, 262144, 262144, 262144, 1048576, 4194304, 1073741824};
    for (int i = 0; i < 8; i++) {
        char var[64];
        snprintf(var, sizeof var, "ZEND_MM_SEG_SIZE=%s", values[i]);
        const char *env[] = {var, "ZEND_MM_MEM_TYPE=mmap_anon", NULL};
        child_result r = run_self("storage", env);
        char want[128];
        snprintf(want, sizeof want, "storage mmap_anon segment %zu\n", sizes[i]);
        CHECK_EXIT(r, 0, "");
        CHECK(strcmp(r.out, want) == 0);
        if (strcmp(r.out, want) != 0) {
            fprintf(stderr, "  %s: got %s", var, r.out);
        }
    }
}

/* What ZEND_MM_SEG_SIZE's errors add to PHP 5.3's text: the value in bytes and the rule. */
#define SEG_RULE(value, bytes) \
    " (got '" value "' = " bytes " bytes; it takes a power of two from 64K to 1G bytes, written as 262144, 256k, " \
    "0x40000 or 2M)\n"

static void test_bad_environment_values(void)
{
    static const struct {
        const char *var;
        const char *err;
    } cases[] = {
        {"ZEND_MM_MEM_TYPE=shm",
         "Wrong or unsupported zend_mm storage type 'shm'\n  supported types:\n    'malloc'\n    'mmap_anon'\n    'mmap_zero'\n"},
        {"ZEND_MM_MEM_TYPE=", "Wrong or unsupported zend_mm storage type ''\n  supported types:\n    'malloc'\n    'mmap_anon'\n    'mmap_zero'\n"},
        {"ZEND_MM_MEM_TYPE=MALLOC",
         "Wrong or unsupported zend_mm storage type 'MALLOC'\n  supported types:\n    'malloc'\n    'mmap_anon'\n    'mmap_zero'\n"},
        {"ZEND_MM_SEG_SIZE=3M", "ZEND_MM_SEG_SIZE must be a power of two" SEG_RULE("3M", "3145728")},
        {"ZEND_MM_SEG_SIZE=-2M", "ZEND_MM_SEG_SIZE must be a power of two" SEG_RULE("-2M", "-2097152")},
        {"ZEND_MM_SEG_SIZE=0", "ZEND_MM_SEG_SIZE must be a power of two" SEG_RULE("0", "0")},
        {"ZEND_MM_SEG_SIZE=32k", "ZEND_MM_SEG_SIZE is too small" SEG_RULE("32k", "32768")},
        {"ZEND_MM_SEG_SIZE=32", "ZEND_MM_SEG_SIZE is too small" SEG_RULE("32", "32")},
        {"ZEND_MM_SEG_SIZE=2g", "ZEND_MM_SEG_SIZE is too large" SEG_RULE("2g", "2147483648")},
        {"ZEND_MM_SEG_SIZE=1099511627776", "ZEND_MM_SEG_SIZE is too large" SEG_RULE("1099511627776", "1099511627776")},
        {"ZEND_MM_SEG_SIZE=99999999999999999999999", "ZEND_MM_SEG_SIZE is out of range: '99999999999999999999999'\n"},
        {"ZEND_MM_SEG_SIZE=lots", "ZEND_MM_SEG_SIZE must be a number (optionally followed by k, m or g), got 'lots'\n"},
        {"ZEND_MM_SEG_SIZE=2MB", "ZEND_MM_SEG_SIZE must be a number (optionally followed by k, m or g), got '2MB'\n"},
        {"ZEND_MM_SEG_SIZE=", "ZEND_MM_SEG_SIZE must be a number (optionally followed by k, m or g), got ''\n"},
        {"ZEND_MM_COMPACT=-1", "ZEND_MM_COMPACT must not be negative, got '-1'\n"},
        {"ZEND_MM_COMPACT=big", "ZEND_MM_COMPACT must be a number (optionally followed by k, m or g), got 'big'\n"},
        {"USE_ZEND_ALLOC=yes", "USE_ZEND_ALLOC is a switch: 1 for on or 0 for off (no, off and false mean 0 too), got 'yes'\n"},
        {"USE_ZEND_ALLOC=1k", "USE_ZEND_ALLOC is a switch: 1 for on or 0 for off (no, off and false mean 0 too), got '1k'\n"},
        {"ZEND_MM_DEBUG=on", "ZEND_MM_DEBUG is a switch: 1 for on or 0 for off (no, off and false mean 0 too), got 'on'\n"},
        {"ZEND_MM_STATS=xml", "ZEND_MM_STATS takes 1 (text), json or 0 (off; no, off and false too), got 'xml'\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *env[] = {cases[i].var, NULL};
        child_result r = run_self("storage", env);
        CHECK_EXIT(r, 255, cases[i].err);
        CHECK(r.out[0] == '\0');
    }
}

/* USE_ZEND_ALLOC_HUGE_PAGES=1 advises segments and huge blocks of the built-in storages for
 * transparent huge pages (PHP 8's MADV_HUGEPAGE on its chunks); without it they are left alone.
 * (test_storage checks that a user storage's memory is never advised.) */
static void test_use_zend_alloc_huge_pages(void)
{
    if (access("/sys/kernel/mm/transparent_hugepage/enabled", R_OK) != 0) {
        fprintf(stderr, "note: this kernel has no transparent huge pages; huge page advice not checked\n");
        return;
    }
    const char *on[] = {"USE_ZEND_ALLOC_HUGE_PAGES=1", "ZEND_MM_MEM_TYPE=mmap_anon", NULL};
    child_result r = run_self("hugepages", on);
    CHECK_EXIT(r, 0, "");
    CHECK(strcmp(r.out, "small hg huge hg\n") == 0);
    const char *off[] = {"ZEND_MM_MEM_TYPE=mmap_anon", NULL};
    r = run_self("hugepages", off);
    CHECK(strcmp(r.out, "small - huge -\n") == 0);
    const char *bad[] = {"USE_ZEND_ALLOC_HUGE_PAGES=yes", NULL};
    r = run_self("hugepages", bad);
    CHECK_EXIT(r, 255,
               "USE_ZEND_ALLOC_HUGE_PAGES is a switch: 1 for on or 0 for off (no, off and false mean 0 too), got 'yes'\n");
}

static void test_use_zend_alloc_0_uses_the_c_library(void)
{
    const char *env[] = {"USE_ZEND_ALLOC=0", NULL};
    child_result r = run_self("libc", env);
    CHECK_EXIT(r, 0, "");
    CHECK(strcmp(r.out, "custom 1 handlers libc block_size 0 usage 0 real 0 peaks 0 0 freed-with-free ok\n") == 0);
    const char *env1[] = {"USE_ZEND_ALLOC=2", NULL};
    r = run_self("libc", env1);
    CHECK(strcmp(r.out, "custom 0\n") == 0); /* PHP's atol: non-zero is on */
    /* PHP reads a word as 0: "no" (and off, false) switch the C library on here too. */
    const char *no[] = {"USE_ZEND_ALLOC=no", NULL};
    r = run_self("libc", no);
    CHECK_EXIT(r, 0, "");
    CHECK(strncmp(r.out, "custom 1 ", 9) == 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Ported from PHP's own tests (Zend/tests): the same situations in C                      */

/* memory_get_peak_usage.phpt: the peaks grow while a big array (range(1, 1024*1024)) is built. */
static void test_php_memory_get_peak_usage(void)
{
    shutdown_memory_manager(1, 0);
    size_t peak = zend_memory_peak_usage(0), real_peak = zend_memory_peak_usage(1);
    void **buckets = emalloc(1024 * 1024 * sizeof(void *));
    for (int i = 0; i < 1024 * 1024; i += 64) {
        buckets[i] = emalloc(32);
    }
    CHECK(zend_memory_peak_usage(0) > peak);
    /* ... and the real peak once the first segment is full (however large segments are). */
    size_t real = zend_memory_usage(1);
    for (int i = 0; i < 1 << 20 && zend_memory_usage(1) == real; i++) {
        emalloc(3000);
    }
    CHECK(zend_memory_peak_usage(1) > real_peak);
    shutdown_memory_manager(1, 0);
}

/* memory_reset_peak_usage.phpt: after freeing two big arrays and resetting, the peak is lower. */
static void test_php_memory_reset_peak_usage(void)
{
    shutdown_memory_manager(1, 0);
    void *a = emalloc(8 * 1024 * 1024), *b = emalloc(8 * 1024 * 1024);
    efree(a);
    efree(b);
    size_t peak = zend_memory_peak_usage(0);
    zend_memory_reset_peak_usage();
    void *c = emalloc(1024);
    CHECK(zend_memory_peak_usage(0) < peak);
    CHECK_EQ(zend_memory_peak_usage(0), 1024);
    efree(c);
}

/* bug40770.phpt: under an 8M limit, a string grown by 1 MiB at a time ends in the limit error. */
static void grow_string_past_the_limit(void *arg)
{
    (void)arg;
    zend_set_memory_limit(8 * 1024 * 1024);
    size_t len = 0;
    char *s = NULL;
    ANNOUNCE_LINE(__LINE__ + 2);
    for (;;) {
        s = erealloc(s, len + 1048576 + 1);
        memset(s + len, 'x', 1048576);
        len += 1048576;
    }
}

static void test_php_bug40770(void)
{
    if (segment_size() > 2 * 1024 * 1024) {
        return; /* the first segment alone passes the limit */
    }
    child_result r = run_child(grow_string_past_the_limit, NULL, NULL);
    CHECK(r.exited && r.status == 255);
    CHECK_CONTAINS(r.err, "\nFatal error: Allowed memory size of 8388608 bytes exhausted (tried to allocate ");
    char where[128];
    snprintf(where, sizeof where, " bytes) in %s on line %d\n", __FILE__, announced_line(&r));
    CHECK_CONTAINS(r.err, where);
}

/* bug43450.phpt: 100000 rounds of building and dropping a temporary must not grow the usage. */
static void test_php_bug43450(void)
{
    size_t usage = zend_memory_usage(0);
    for (int i = 0; i < 100000; i++) {
        char *tmp = estrdup("an object's string representation");
        char *md5 = estrndup(tmp, 32);
        efree(tmp);
        efree(md5);
    }
    CHECK(zend_memory_usage(0) <= usage + 16 * 1024);
}

/* bug81070.phpt: with a 5 MiB string alive, lowering the limit to 3M fails. */
static void test_php_bug81070(void)
{
    shutdown_memory_manager(1, 0);
    char *s = emalloc(5 * 1024 * 1024);
    memset(s, 'a', 5 * 1024 * 1024);
    CHECK(zend_set_memory_limit(3 * 1024 * 1024) == FAILURE);
    CHECK(zend_set_memory_limit(128 * 1024 * 1024) == SUCCESS);
    efree(s);
    zend_set_memory_limit((size_t)-1);
}

/* gh11189.phpt: an out-of-memory error while an array grows leaves the heap valid, and the code that
 * runs after the bailout (PHP: an output-buffer callback at shutdown) can still allocate. */
static jmp_buf gh11189_bailout;
static void gh11189_handler(int type, const char *file, uint32_t line, const char *message)
{
    (void)type, (void)file, (void)line, (void)message;
    longjmp(gh11189_bailout, 1);
}

static void test_php_gh11189(void)
{
    shutdown_memory_manager(1, 0);
    size_t seg = zend_memory_usage(1);
    zend_set_memory_limit(2 * seg);
    zend_mm_error_handler_t old = zend_mm_set_error_handler(gh11189_handler);
    /* volatile: they change between setjmp and longjmp */
    volatile size_t n = 0, cap = 8;
    size_t *volatile array = emalloc(cap * sizeof *array);
    if (setjmp(gh11189_bailout) == 0) {
        for (;;) {
            if (n == cap) {
                cap *= 2;
                array = erealloc(array, cap * sizeof *array);
            }
            array[n] = n;
            n++;
        }
    }
    zend_mm_set_error_handler(old);
    int intact = 1;
    for (size_t i = 0; i < n; i++) {
        intact &= array[i] == i;
    }
    CHECK(intact && n > 1000);
    CHECK(full_mem_check(1) == 0);
    char *appended = estrdup("Success");
    CHECK(strcmp(appended, "Success") == 0);
    shutdown_memory_manager(1, 0);
    zend_set_memory_limit((size_t)-1);
}

/* What the fresh processes do. */
static int probe(const char *mode)
{
    if (strcmp(mode, "storage") == 0) {
        start_memory_manager();
        zend_mm_storage *storage = zend_mm_get_storage(zend_mm_get_heap());
        printf("storage %s segment %zu\n", storage->handlers->name, zend_memory_usage(1));
        void *p = emalloc(100);
        efree(p);
        return 0;
    }
    if (strcmp(mode, "libc") == 0) {
        start_memory_manager();
        if (is_zend_mm()) {
            puts("custom 0");
            return 0;
        }
        void *(*m)(size_t);
        void (*f)(void *);
        void *(*r)(void *, size_t);
        zend_mm_get_custom_handlers(zend_mm_get_heap(), &m, &f, &r);
        void *p = emalloc(100);
        size_t bs = zend_mem_block_size(p);
        size_t usage = zend_memory_usage(0);
        free(p); /* it came from malloc */
        /* PHP's heap is then an empty struct: every usage and peak reads 0. */
        printf("custom %d handlers %s block_size %zu usage %zu real %zu peaks %zu %zu freed-with-free ok\n",
               !is_zend_mm(), m == malloc && f == free && r == realloc ? "libc" : "other", bs, usage,
               zend_memory_usage(1), zend_memory_peak_usage(0), zend_memory_peak_usage(1));
        return 0;
    }
    if (strcmp(mode, "hugepages") == 0) {
        start_memory_manager();
        char *small = emalloc(100);
        char *huge = emalloc(4u << 20);
        printf("small %s huge %s\n", huge_page_flag(small), huge_page_flag(huge));
        efree(huge);
        efree(small);
        return 0;
    }
    fprintf(stderr, "unknown probe %s\n", mode);
    return 2;
}

/* ---------------------------------------------------------------------------------------------- */
/* Version                                                                                        */

/* The header's version macros agree with each other and with the library's run-time answer (the
 * same build here; the install test checks an installed copy). */
static void test_version(void)
{
    char numbers[64];
    snprintf(numbers, sizeof numbers, "%d.%d.%d", ZEND_ALLOC_VERSION_MAJOR, ZEND_ALLOC_VERSION_MINOR,
             ZEND_ALLOC_VERSION_PATCH);
    CHECK(strcmp(ZEND_ALLOC_VERSION, numbers) == 0);
    CHECK(zend_alloc_version() != NULL && strcmp(zend_alloc_version(), ZEND_ALLOC_VERSION) == 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--probe") == 0) {
        return probe(argv[2]);
    }
    start_memory_manager();
    RUN(test_version);
    RUN(test_block_size_of_every_small_request);
    RUN(test_block_size_at_the_large_and_huge_boundaries);
    RUN(test_release_size_specialised_entry_points);
    RUN(test_constant_sizes_call_the_bins_entry_points);
    RUN(test_emalloc_zero_and_null_handling);
    RUN(test_alignment);
    RUN(test_small_blocks_are_adjacent_and_reused_lifo);
    RUN(test_usage_peak_and_reset);
    RUN(test_real_usage_steps_by_segments);
    RUN(test_realloc_small);
    RUN(test_realloc_large_in_place);
    RUN(test_realloc_huge);
    RUN(test_huge_block_tails_are_not_kept_resident);
    RUN(test_huge_blocks_cut_and_joined_keep_their_contents);
    RUN(test_erealloc2_copies_at_most_copy_size);
    RUN(test_safe_and_calloc);
    RUN(test_strings);
    RUN(test_persistent_allocations);
    RUN(test_request_shutdown_keeps_the_heap);
    RUN(test_full_shutdown_then_a_new_heap);
    RUN(test_thousand_requests_keep_rss_flat);
    RUN(test_memory_goes_back_between_requests);
    RUN(test_gc_returns_free_runs);
    RUN(test_memory_limit_setting);
    RUN(test_heap_checks);
    RUN(test_is_zend_ptr);
    RUN(test_explicit_heaps);
    RUN(test_custom_handlers);
    RUN(test_caller_memory_as_custom_heap);
    RUN(test_memory_limit_fatal_error);
    RUN(test_overflow_messages);
    RUN(test_out_of_memory_fatal_error);
    RUN(test_persistent_out_of_memory);
    RUN(test_error_handler_can_bail_out);
    RUN(test_recoverable_realloc_returns_null);
    RUN(test_a_handler_that_returns_ends_the_process);
    RUN(test_foreign_pointers_are_reported_not_crashed_on);
    RUN(test_bad_arguments_are_reported);
    RUN(test_php_memory_get_peak_usage);
    RUN(test_php_memory_reset_peak_usage);
    RUN(test_php_bug40770);
    RUN(test_php_bug43450);
    RUN(test_php_bug81070);
    RUN(test_php_gh11189);
    RUN(test_storage_selection);
    RUN(test_segment_sizes);
    RUN(test_bad_environment_values);
    RUN(test_use_zend_alloc_0_uses_the_c_library);
    RUN(test_use_zend_alloc_huge_pages);
    CHECK(full_mem_check(0) == 0);
    shutdown_memory_manager(1, 1);
    return test_summary();
}
