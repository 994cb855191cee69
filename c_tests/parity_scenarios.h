/*
 * The scenarios test_php_parity.c compares: included by php_probe.c (PHP 8.2's allocator) and by
 * test_php_parity.c (this library), each defining first the A_* macros for its allocator and
 * out(fmt, ...), which records one measurement line.
 */
#ifndef PARITY_SCENARIOS_H
#define PARITY_SCENARIOS_H

#define LARGEST_LARGE ((size_t)2093056) /* 511 pages: the largest block served inside a 2 MiB segment */

static const size_t bin_sizes[30] = {
    8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512,
    640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072,
};

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (unsigned char)(i * 31u + seed);
    }
}

static int intact(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != (unsigned char)(i * 31u + seed)) {
            return 0;
        }
    }
    return 1;
}

/* Fresh process: usage right after start, then the real-usage step when the first segment is full
 * (one-page large blocks until zend_memory_usage(1) changes). Must run first: after a request end
 * PHP counts cached segments in the real usage, so a later step would not be visible. */
static void scenario_segment_step(void)
{
    static void *blocks[4096];
    size_t n = 0, step = 0;
    size_t r0 = A_USAGE(1);
    out("start %zu %zu", A_USAGE(0), r0);
    while (n < sizeof blocks / sizeof blocks[0]) {
        blocks[n++] = A_ALLOC(4096);
        size_t r1 = A_USAGE(1);
        if (r1 != r0) {
            step = r1 - r0;
            break;
        }
    }
    /* blocks that fitted in the first segment, and the step the next one caused */
    out("segment %zu %zu", n - 1, step);
    while (n > 0) {
        A_FREE(blocks[--n]);
    }
    A_RESET();
    out("reset %zu %zu", A_USAGE(0), A_PEAK(0));
}

/* One block of each size, each from a fresh request: block size, usage and real-usage deltas.
 * (Fresh as in a new process: this library keeps freed huge blocks for later requests, PHP does
 * not; zend_mm_gc gives them back on both.) */
static void measure_block(size_t size)
{
    A_RESET();
    A_GC();
    size_t u0 = A_USAGE(0), r0 = A_USAGE(1);
    void *p = A_ALLOC(size);
    size_t u1 = A_USAGE(0), r1 = A_USAGE(1);
    out("block %zu %zu %zu %zu", size, A_BLOCK_SIZE(p), u1 - u0, r1 - r0);
    A_FREE(p);
}

static void scenario_blocks(void)
{
    static const size_t extra[] = {
        3073, 4095, 4096, 4097, 8192, 8193, 100000, LARGEST_LARGE, LARGEST_LARGE + 1,
        2097152, 2097153, 3000000, 3000001,
    };
    for (size_t size = 0; size <= 3072; size++) {
        measure_block(size);
    }
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        measure_block(extra[i]);
    }
}

/*
 * erealloc(emalloc(from), to) in a fresh request, optionally with a block of `blocker` bytes
 * allocated right after the first one (so a large block cannot grow into the next pages).
 * Prints whether the block moved ("-" when not compared: huge blocks may be moved by mremap),
 * its block size, the usage delta and whether min(from, to) bytes survived.
 */
static void realloc_case(const char *name, size_t from, size_t to, size_t blocker, int compare_ptr)
{
    A_RESET();
    size_t u0 = A_USAGE(0);
    unsigned char *p = A_ALLOC(from);
    void *b = blocker ? A_ALLOC(blocker) : NULL;
    fill(p, from, 7);
    unsigned char *q = A_REALLOC(p, to);
    size_t keep = from < to ? from : to;
    int ok = intact(q, keep, 7);
    size_t bs = A_BLOCK_SIZE(q);
    if (b) {
        A_FREE(b);
    }
    size_t du = A_USAGE(0) - u0;
    out("realloc %s %zu %zu %s %zu %zu %d", name, from, to, compare_ptr ? (q == p ? "0" : "1") : "-", bs, du, ok);
    A_FREE(q);
}

static void scenario_realloc(void)
{
    /* Every bin boundary: a block of each bin resized to the next smaller bin's size (PHP 8.2
     * keeps it), one byte below (moves), its own size (keeps) and one byte above (moves). */
    for (int b = 1; b < 30; b++) {
        realloc_case("bin_to_smaller_size", bin_sizes[b], bin_sizes[b - 1], 0, 1);
        realloc_case("bin_below_smaller_size", bin_sizes[b], bin_sizes[b - 1] - 1, 0, 1);
        realloc_case("bin_to_own_size", bin_sizes[b] - 1, bin_sizes[b], 0, 1);
        realloc_case("bin_above_own_size", bin_sizes[b], bin_sizes[b] + 1, 0, 1);
    }
    realloc_case("small_shrink_exact", 100, 96, 0, 1); /* 96 is the smaller bin's size: stays */
    realloc_case("small_shrink_bin", 100, 90, 0, 1);   /* 112 -> 96 bin: moves */
    realloc_case("small_to_zero", 96, 0, 0, 1);        /* 96 -> 8 bin: moves */
    realloc_case("small_same_bin", 100, 110, 0, 1);    /* stays in the 112 bin */
    realloc_case("small_shrink_keep", 100, 97, 0, 1);  /* 97 > 96: stays in the 112 bin */
    realloc_case("small_grow", 100, 200, 0, 1);        /* 112 -> 224 bin: moves */
    realloc_case("small_to_large", 100, 5000, 0, 1);
    realloc_case("large_same_pages", 5000, 7000, 0, 1); /* both 2 pages: in place */
    realloc_case("large_grow_free", 5000, 10000, 0, 1); /* next page free: in place */
    realloc_case("large_grow_blocked", 5000, 10000, 5000, 1); /* next page taken: moves */
    realloc_case("large_shrink", 100000, 50000, 0, 1);  /* in place, tail pages freed */
    realloc_case("large_to_small", 100000, 100, 0, 1);  /* moves to the 112 bin */
    realloc_case("large_to_huge", 100000, 3000000, 0, 0);
    realloc_case("huge_grow", 3000000, 3100000, 0, 0);
    realloc_case("huge_shrink", 3000000, 2500000, 0, 0);
    realloc_case("huge_to_large", 3000000, 1000000, 0, 1); /* necessarily moves into a segment */
}

/* 16-alignment per bin: 8 blocks of each bin size from a fresh request; large and huge blocks:
 * page aligned (PHP's huge blocks are even 2 MiB aligned; that is not compared). */
static void scenario_alignment(void)
{
    static const size_t large[] = {3073, 4096, 8193, 100000, LARGEST_LARGE};
    A_RESET();
    for (int b = 0; b < 30; b++) {
        void *p[8];
        int n16 = 0;
        for (int i = 0; i < 8; i++) {
            p[i] = A_ALLOC(bin_sizes[b]);
            n16 += ((uintptr_t)p[i] % 16) == 0;
        }
        for (int i = 0; i < 8; i++) {
            A_FREE(p[i]);
        }
        out("align %zu %d %d", bin_sizes[b], n16 == 8, n16);
    }
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++) {
        A_RESET();
        void *p = A_ALLOC(large[i]);
        void *q = A_ALLOC(large[i] < 100000 ? large[i] : 4096);
        out("align_large %zu %d", large[i], ((uintptr_t)p % 4096) == 0 && ((uintptr_t)q % 4096) == 0);
        A_FREE(q);
        A_FREE(p);
    }
    A_RESET();
    void *h = A_ALLOC(3000000);
    out("align_huge %d %d", 3000000, ((uintptr_t)h % 4096) == 0);
    A_FREE(h);
}

/* A freed block is the next one handed out for the same size. */
static void scenario_lifo(void)
{
    static const size_t sizes[] = {8, 24, 100, 1000, 3072, 5000, 100000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        A_RESET();
        void *keep = A_ALLOC(sizes[i]); /* the run stays in use */
        void *p = A_ALLOC(sizes[i]);
        A_FREE(p);
        void *q = A_ALLOC(sizes[i]);
        out("lifo %zu %d", sizes[i], p == q);
        A_FREE(q);
        A_FREE(keep);
    }
}

/* zend_memory_peak_usage rises by the block size when a 1 MiB block comes and goes. */
static void scenario_peak(void)
{
    A_RESET();
    size_t pk0 = A_PEAK(0), rp0 = A_PEAK(1);
    void *p = A_ALLOC(1048576);
    A_FREE(p);
    out("peak %d %zu %zu %zu", 1048576, A_PEAK(0) - pk0, A_PEAK(1) - rp0, A_USAGE(0));
}

static void run_scenarios(void)
{
    scenario_segment_step();
    scenario_blocks();
    scenario_realloc();
    scenario_alignment();
    scenario_lifo();
    scenario_peak();
    A_RESET();
}


#endif /* PARITY_SCENARIOS_H */
