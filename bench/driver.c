/*
 * driver.c - the benchmark driver: one source, compiled once per allocator family.
 *
 *   -DALLOC_ZEND    this library, through zend_alloc.h (emalloc / efree / erealloc);
 *                   request end = shutdown_memory_manager(1, 0)
 *   -DALLOC_PHP     PHP 8.2's own allocator from libphp8.2.so (release ABI, prototypes below);
 *                   request end = shutdown_memory_manager(1, 0)
 *   -DALLOC_MALLOC  malloc / free / realloc: glibc, or jemalloc / mimalloc / tcmalloc when the
 *                   runner starts it under LD_PRELOAD; request end = free the live set one by one
 *
 * usage:  bench_X WORKLOAD [SCALE]      one timed run; prints a single line of key=value pairs
 *         bench_X fast-pair|fast-batch|fast-sized (and each with -empty) N
 *                                       the small-block fast path, for callgrind (see run.py)
 *
 * Every workload is a trace of operations generated BEFORE the clock starts (fixed seed, so the
 * same trace for every allocator); only its execution is timed. Execution writes a stamp into
 * every block (first 8 bytes, one byte per further 4 KiB page, last byte) and checks it before the
 * block is freed or resized; the bytes read back are folded into a checksum. A wrong stamp exits
 * at once with status 3; the runner also requires the checksum to be equal for every allocator.
 * The stamping is the same work for every allocator, so a fast but wrong allocator cannot win.
 *
 * The driver's own memory (traces, slot tables) comes from mmap, never from the allocator under
 * test, so it neither perturbs that allocator's heap nor counts as its footprint.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* ---- The allocator under test ------------------------------------------------------------- */

#if defined(ALLOC_ZEND)
# include "zend_alloc.h"
# define A_NAME            "zend"
# define A_SYMBOL          "_emalloc" /* the symbol whose provider the runner checks */
# define A_START()         start_memory_manager()
# define A_MALLOC(n)       emalloc(n)
# define A_FREE(p)         efree(p)
/* The header sends constant sizes to the bins' own entry points (with the caller's location), as
 * PHP's release header does; the general pair is measured with a size the compiler cannot see. */
# define A_MALLOC_64()     emalloc(64)
# define A_FREE_64(p)      efree_size((p), 64)
# define A_MALLOC_VAR(n)   emalloc(n)
# define A_REALLOC(p, n)   erealloc((p), (n))
# define A_REQUEST_END()   shutdown_memory_manager(1, 0)
# define A_HAS_REQUEST_END 1
# define A_THREADS         1
/* A thread's heap is destroyed when the thread exits (PHP's semantics): its blocks die with it. */
# define A_OUTLIVES_THREAD 0
#elif defined(ALLOC_PHP)
/* PHP 8.2's release ABI: no file/line parameters, ZEND_FASTCALL is empty on x86-64, bool is a
 * byte. Declared here rather than taken from PHP's headers, which need a configured build tree. */
# include <stdbool.h>
void *_emalloc(size_t size);
void _efree(void *ptr);
void *_erealloc(void *ptr, size_t size);
void *_emalloc_64(void);
void _efree_64(void *ptr);
void start_memory_manager(void);
void shutdown_memory_manager(bool silent, bool full_shutdown);
# define A_NAME            "php"
# define A_SYMBOL          "_emalloc"
# define A_START()         start_memory_manager()
# define A_MALLOC(n)       _emalloc(n)
# define A_FREE(p)         _efree(p)
# define A_MALLOC_64()     _emalloc_64()
# define A_FREE_64(p)      _efree_64(p)
# define A_MALLOC_VAR(n)   _emalloc(n)
# define A_REALLOC(p, n)   _erealloc((p), (n))
# define A_REQUEST_END()   shutdown_memory_manager(1, 0)
# define A_HAS_REQUEST_END 1
# define A_THREADS         0 /* NTS build: one global heap, not thread safe */
# define A_OUTLIVES_THREAD 0
#elif defined(ALLOC_MALLOC)
# define A_NAME            "malloc"
# define A_SYMBOL          "malloc"
# define A_START()         ((void)0)
# define A_MALLOC(n)       malloc(n)
# define A_FREE(p)         free(p)
# define A_MALLOC_64()     malloc(64)
# define A_FREE_64(p)      free(p)
# define A_MALLOC_VAR(n)   malloc(n)
# define A_REALLOC(p, n)   realloc((p), (n))
# define A_REQUEST_END()   ((void)0)
# define A_HAS_REQUEST_END 0
# define A_THREADS         1
# define A_OUTLIVES_THREAD 1 /* a block lives until freed, whichever thread made it */
#else
# error "define ALLOC_ZEND, ALLOC_PHP or ALLOC_MALLOC"
#endif

/* Keeps the compiler from proving a block unused (gcc drops a malloc/free pair otherwise). */
#define OPAQUE(p) __asm__ volatile("" : : "r"(p) : "memory")

#define PAGE 4096u
#define KiB  1024u
#define MiB  (1024u * 1024u)

/* ---- Small helpers ------------------------------------------------------------------------ */

static void die(const char *msg)
{
    fprintf(stderr, "bench %s: %s\n", A_NAME, msg);
    exit(2);
}

/* Driver memory straight from the kernel. Tables touched while timing are pre-faulted
 * (`populate`) so their page faults are not timed; traces are written before timing anyway, and
 * their capacity is a loose upper bound, so they are not. */
static void *map_mem(size_t bytes, int populate)
{
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);
    if (p == MAP_FAILED)
        die("mmap failed");
    return p;
}
#define map(bytes) map_mem((bytes), 1)

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

/* CPU time of the whole process (every thread): unlike wall time, not stretched while the shared
 * machine runs something else. */
static uint64_t cpu_ns(void)
{
    return clock_ns(CLOCK_PROCESS_CPUTIME_ID);
}

/* A "VmXXX:  N kB" line of /proc/self/status, in KiB. VmHWM (peak) rather than getrusage's
 * ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big parent (python) would
 * report the parent's size; VmHWM belongs to the process's own address space. */
static long proc_status_kib(const char *key)
{
    char line[256];
    long kib = -1;
    size_t len = strlen(key);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, len) && line[len] == ':') {
            kib = atol(line + len + 1);
            break;
        }
    fclose(f);
    return kib;
}

static long rss_now_kib(void) { return proc_status_kib("VmRSS"); }
static long rss_peak_kib(void) { return proc_status_kib("VmHWM"); }

/* The file name of the library that provides `sym` here (the runner checks LD_PRELOAD took). */
static const char *provider(const char *sym)
{
    Dl_info info;
    void *f = dlsym(RTLD_DEFAULT, sym);
    if (!f || !dladdr(f, &info) || !info.dli_fname)
        return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

/* splitmix64: tiny, fast, good enough to draw sizes and slots; one state per trace. */
typedef struct { uint64_t s; } rng_t;

static uint64_t rnd(rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static uint32_t below(rng_t *r, uint32_t n)
{
    return (uint32_t)(((rnd(r) >> 32) * n) >> 32);
}

/* Uniform in [lo, hi]. */
static uint32_t uniform(rng_t *r, uint32_t lo, uint32_t hi)
{
    return lo + below(r, hi - lo + 1);
}

/* Roughly log-uniform in [lo, hi]: a random power-of-two octave, then uniform inside it. Real
 * size distributions are heavy at the small end of a range; this needs no libm. */
static uint32_t log_uniform(rng_t *r, uint32_t lo, uint32_t hi)
{
    int lo_bit = 31 - __builtin_clz(lo), hi_bit = 31 - __builtin_clz(hi);
    uint32_t octave = 1u << (lo_bit + (int)below(r, (uint32_t)(hi_bit - lo_bit + 1)));
    uint32_t a = octave < lo ? lo : octave, b = octave * 2 - 1 > hi ? hi : octave * 2 - 1;
    return uniform(r, a, b);
}

/* A PHP-like request size: mostly <= 64 B (zvals, small strings, hash buckets), some up to
 * 3 KiB (arrays, strings), few large (4 KiB..512 KiB), and with `huge` rarely > 2 MiB. */
static uint32_t php_size(rng_t *r, int huge)
{
    uint32_t x = below(r, 100000);
    if (x < 75000)
        return uniform(r, 8, 64);
    if (x < 96000)
        return log_uniform(r, 65, 3 * KiB);
    if (x < 99995 || !huge)
        return log_uniform(r, 4 * KiB, 512 * KiB);
    return uniform(r, 2 * MiB + 1, 6 * MiB);
}

/* ---- Traces ------------------------------------------------------------------------------- */

enum {
    OP_ALLOC,   /* slot = alloc(size), stamped */
    OP_FREE,    /* check slot, free it */
    OP_REALLOC, /* check slot, realloc(slot, size): contents kept, then stamped anew */
    OP_DROP,    /* a request-end survivor: checked; freed one by one only without request end */
    OP_END,     /* request end: shutdown_memory_manager(1, 0) where the allocator has it */
    OP_APPEND,  /* string building: realloc(slot, size) and fill the new tail with a pattern */
    OP_STRFREE, /* string building: hash the whole string, compare, free */
};
#define OP_SHIFT  28
#define SLOT_MASK ((1u << OP_SHIFT) - 1)

typedef struct {
    uint32_t op_slot; /* operation << OP_SHIFT | slot */
    uint32_t size;    /* OP_STRFREE: index into trace.expect */
} op_t;

typedef struct {
    op_t *ops;
    size_t n, cap;
    size_t counted;   /* allocator operations: alloc, free, realloc (survivors count as frees) */
    uint32_t slots;   /* slot table size */
    uint64_t *expect; /* OP_STRFREE: expected string hashes */
    uint64_t salt;    /* makes stamps differ between threads */
} trace_t;

static void trace_init(trace_t *t, size_t cap, uint32_t slots, uint64_t salt)
{
    memset(t, 0, sizeof *t);
    t->ops = map_mem(cap * sizeof(op_t), 0);
    t->cap = cap;
    t->slots = slots;
    t->salt = salt;
}

static void emit(trace_t *t, unsigned op, uint32_t slot, uint32_t size)
{
    if (t->n == t->cap)
        die("trace capacity exceeded (generator bug)");
    t->ops[t->n++] = (op_t){ (uint32_t)op << OP_SHIFT | slot, size };
    t->counted += op != OP_END;
}

/* Scales a base count, keeping at least `min` so tiny smoke runs still do something. */
static size_t scaled(double scale, size_t base, size_t min)
{
    double n = (double)base * scale;
    return n < (double)min ? min : (size_t)n;
}

/* Random replacement over a live set of `live` slots: fill, `steps` times free a random slot and
 * allocate a new block there, then free everything. `size_of` draws the sizes. */
typedef uint32_t (*size_fn)(rng_t *);

static void gen_live_set(trace_t *t, rng_t *r, uint32_t live, size_t steps, size_fn size_of,
                         const size_t *forced, const uint32_t *forced_size, int n_forced)
{
    for (uint32_t s = 0; s < live; s++)
        emit(t, OP_ALLOC, s, size_of(r));
    for (size_t i = 0; i < steps; i++) {
        uint32_t s = below(r, live), size = size_of(r);
        for (int f = 0; f < n_forced; f++)
            if (forced[f] == i)
                size = forced_size[f];
        emit(t, OP_FREE, s, 0);
        emit(t, OP_ALLOC, s, size);
    }
    for (uint32_t s = 0; s < live; s++)
        emit(t, OP_FREE, s, 0);
}

static uint32_t size_small(rng_t *r) { return uniform(r, 8, 256); }
static uint32_t size_php(rng_t *r) { return php_size(r, 1); }
static uint32_t size_large(rng_t *r) { return log_uniform(r, 4 * KiB, 1 * MiB); }
static uint32_t size_pages(rng_t *r) { return log_uniform(r, 4 * KiB, 300 * KiB); }

/* Small-size churn: sizes 8..256 B, live set of 4096. */
static void gen_churn(trace_t *t, double scale, uint64_t seed)
{
    rng_t r = { seed };
    uint32_t live = 4096;
    size_t steps = scaled(scale, 4000000, 2000);
    trace_init(t, 2 * live + 2 * steps, live, seed);
    gen_live_set(t, &r, live, steps, size_small, NULL, NULL, 0);
}

/* The PHP-like mix over a live set of 2000. One large and one huge block are forced in, so that
 * even the tiny smoke scale exercises both paths. */
static void gen_phpmix(trace_t *t, double scale, uint64_t seed)
{
    rng_t r = { seed };
    uint32_t live = 2000;
    size_t steps = scaled(scale, 1000000, 2000);
    size_t forced[2] = { steps / 3, steps / 2 };
    uint32_t forced_size[2] = { 100 * KiB, 3 * MiB };
    trace_init(t, 2 * live + 2 * steps, live, seed);
    gen_live_set(t, &r, live, steps, size_php, forced, forced_size, 2);
}

/* Large blocks: 4 KiB..1 MiB over a live set of 64. */
static void gen_large(trace_t *t, double scale, uint64_t seed)
{
    rng_t r = { seed };
    uint32_t live = 64;
    size_t steps = scaled(scale, 40000, 500);
    trace_init(t, 2 * live + 2 * steps, live, seed);
    gen_live_set(t, &r, live, steps, size_large, NULL, NULL, 0);
}

/* Page-sized churn: 4 KiB..300 KiB (what malloc peers serve from per-size lists) over a live set
 * of PAGES_LIVE blocks, long enough for the segments to fragment. */
#ifndef PAGES_LIVE
#define PAGES_LIVE 128
#endif
static void gen_pages(trace_t *t, double scale, uint64_t seed)
{
    rng_t r = { seed };
    uint32_t live = PAGES_LIVE;
    size_t steps = scaled(scale, 200000, 500);
    trace_init(t, 2 * live + 2 * steps, live, seed);
    gen_live_set(t, &r, live, steps, size_pages, NULL, NULL, 0);
}

/* Request cycles. Each request: `steps` operations, 50% allocate (PHP mix), 42% free a random live
 * block, 8% grow a random live block with realloc (a string being built); then the request ends
 * with about 1/6 of its blocks still live. With `huge`, one allocation in 5000 is a huge block of
 * 2..6 MiB (about two per request, as a request that builds a big array or reads a file), which
 * also takes the request's real peak past ZEND_MM_COMPACT's 2 MiB. */
static void gen_requests(trace_t *t, double scale, uint64_t seed, int huge)
{
    rng_t r = { seed };
    size_t requests = scaled(scale, 200, 3);
    uint32_t steps = 20000;
    uint32_t *live = map(steps * sizeof *live);     /* live slots */
    uint32_t *spare = map(steps * sizeof *spare);   /* free slots (a stack) */
    uint32_t *size = map(steps * sizeof *size);     /* current size per slot */
    trace_init(t, requests * (2 * (size_t)steps + 1), steps, seed);
    for (size_t q = 0; q < requests; q++) {
        uint32_t n_live = 0, n_spare = steps;
        for (uint32_t s = 0; s < steps; s++)
            spare[s] = steps - 1 - s;
        for (uint32_t i = 0; i < steps; i++) {
            uint32_t x = below(&r, 100);
            if (x < 50 || n_live == 0) {
                uint32_t s = spare[--n_spare];
                size[s] = huge && below(&r, 5000) == 0 ? uniform(&r, 2 * MiB + 1, 6 * MiB) : php_size(&r, 0);
                live[n_live++] = s;
                emit(t, OP_ALLOC, s, size[s]);
            } else if (x < 92) {
                uint32_t k = below(&r, n_live), s = live[k];
                live[k] = live[--n_live];
                spare[n_spare++] = s;
                emit(t, OP_FREE, s, 0);
            } else {
                uint32_t s = live[below(&r, n_live)];
                uint32_t grown = size[s] + size[s] / 2 + 16;
                size[s] = grown > 256 * KiB ? 256 * KiB : grown;
                emit(t, OP_REALLOC, s, size[s]);
            }
        }
        for (uint32_t k = 0; k < n_live; k++)
            emit(t, OP_DROP, live[k], 0);
        emit(t, OP_END, 0, 0);
    }
}

static void gen_request(trace_t *t, double scale, uint64_t seed)
{
    gen_requests(t, scale, seed, 0);
}

static void gen_hugereq(trace_t *t, double scale, uint64_t seed)
{
    gen_requests(t, scale, seed, 1);
}

/* LIFO bursts: allocate 64..2047 blocks of 8..512 B, free them in reverse order. */
static void gen_lifo(trace_t *t, double scale, uint64_t seed)
{
    rng_t r = { seed };
    size_t bursts = scaled(scale, 6000, 5);
    uint32_t max_burst = 2047;
    trace_init(t, bursts * 2 * max_burst, max_burst, seed);
    for (size_t b = 0; b < bursts; b++) {
        uint32_t n = uniform(&r, 64, max_burst);
        for (uint32_t s = 0; s < n; s++)
            emit(t, OP_ALLOC, s, uniform(&r, 8, 512));
        for (uint32_t s = n; s-- > 0;)
            emit(t, OP_FREE, s, 0);
    }
}

/* 64-bit FNV-style fold; the checksum and the string hash use it. */
static inline uint64_t fold(uint64_t h, uint64_t v)
{
    return (h ^ v) * 0x100000001B3ull;
}

/* The byte an append starting at string offset `at` writes (cheap, position dependent, so a
 * realloc that copies the wrong range or too little shows). */
static inline uint8_t append_byte(uint32_t at)
{
    return (uint8_t)(at * 131u + 7u);
}

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        h = fold(h, w);
    }
    for (; i < n; i++)
        h = fold(h, p[i]);
    return h;
}

/* String building: grow one buffer by appends of 1..64 B to ~1 MiB, `builds` times. The expected
 * content hash of each string is computed here, on a reference buffer, before timing. */
static void gen_strings(trace_t *t, double scale, uint64_t seed)
{
    rng_t r = { seed };
    size_t builds = scaled(scale, 64, 1);
    uint32_t target = scale >= 1.0 ? 1 * MiB : (uint32_t)scaled(scale, 1 * MiB, 64 * KiB);
    uint8_t *ref = map(target + 64);
    trace_init(t, builds * (target + 1), 1, seed);
    t->expect = map(builds * sizeof(uint64_t));
    for (size_t b = 0; b < builds; b++) {
        uint32_t len = 0;
        while (len < target) {
            uint32_t add = uniform(&r, 1, 64);
            memset(ref + len, append_byte(len), add);
            len += add;
            emit(t, OP_APPEND, 0, len);
        }
        t->expect[b] = hash_bytes(ref, len);
        emit(t, OP_STRFREE, 0, (uint32_t)b);
    }
}

/* ---- Execution (the timed part) ----------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    uint64_t stamp;
    uint32_t size;
} slot_t;

static void corrupt(const char *what, uint32_t slot, uint32_t size)
{
    fprintf(stderr, "bench %s: CORRUPTION: %s (slot %u, size %u)\n", A_NAME, what, slot, size);
    exit(3);
}

/* Stamps a block: 8 bytes at the start, one byte per further page, and the last byte. The last
 * byte is the stamp's top byte, so for an 8-byte block it agrees with the head (little endian). */
static inline void stamp_block(uint8_t *p, uint32_t size, uint64_t st)
{
    memcpy(p, &st, 8);
    for (uint32_t off = PAGE; off < size - 1; off += PAGE)
        p[off] = (uint8_t)st;
    p[size - 1] = (uint8_t)(st >> 56);
}

/* Reads a block's stamp back; exits on a mismatch; returns what it read, folded. */
static inline uint64_t check_block(const slot_t *s, uint32_t slot)
{
    uint64_t head;
    memcpy(&head, s->p, 8);
    uint8_t tail = s->p[s->size - 1];
    uint64_t acc = fold(head, tail);
    int bad = head != s->stamp || tail != (uint8_t)(s->stamp >> 56);
    for (uint32_t off = PAGE; off < s->size - 1; off += PAGE) {
        bad |= s->p[off] != (uint8_t)s->stamp;
        acc += s->p[off];
    }
    if (bad)
        corrupt("block stamp changed while the block was live", slot, s->size);
    return acc;
}

static uint64_t run_trace(const trace_t *t, slot_t *tab)
{
    uint64_t cs = 0;
    for (size_t i = 0; i < t->n; i++) {
        op_t o = t->ops[i];
        uint32_t slot = o.op_slot & SLOT_MASK;
        slot_t *s = &tab[slot];
        /* A stamp per operation index: deterministic, so the checksum depends on the trace only. */
        uint64_t st = (i + 1 + t->salt) * 0x9E3779B97F4A7C15ull;
        switch (o.op_slot >> OP_SHIFT) {
        case OP_ALLOC:
            s->p = A_MALLOC(o.size);
            s->size = o.size;
            s->stamp = st;
            stamp_block(s->p, o.size, st);
            break;
        case OP_FREE:
            cs = fold(cs, check_block(s, slot));
            A_FREE(s->p);
            break;
        case OP_DROP:
            cs = fold(cs, check_block(s, slot));
#if !A_HAS_REQUEST_END
            A_FREE(s->p); /* malloc has no request end: free the survivors one by one */
#endif
            break;
        case OP_END:
            A_REQUEST_END();
            break;
        case OP_REALLOC: {
            cs = fold(cs, check_block(s, slot));
            uint8_t *q = A_REALLOC(s->p, o.size);
            uint64_t head;
            memcpy(&head, q, 8);
            if (head != s->stamp || (o.size > s->size && q[s->size - 1] != (uint8_t)(s->stamp >> 56)))
                corrupt("realloc lost the contents", slot, o.size);
            s->p = q;
            s->size = o.size;
            s->stamp = st;
            stamp_block(q, o.size, st);
            break;
        }
        case OP_APPEND: {
            uint32_t len = s->p ? s->size : 0;
            s->p = s->p ? A_REALLOC(s->p, o.size) : A_MALLOC(o.size);
            memset(s->p + len, append_byte(len), o.size - len);
            s->size = o.size;
            break;
        }
        case OP_STRFREE: {
            uint64_t h = hash_bytes(s->p, s->size);
            if (h != t->expect[o.size])
                corrupt("string contents differ from the reference", slot, s->size);
            cs = fold(cs, h);
            A_FREE(s->p);
            s->p = NULL;
            break;
        }
        }
    }
    return cs;
}

/* ---- Workloads ---------------------------------------------------------------------------- */

typedef void (*gen_fn)(trace_t *, double, uint64_t);

static const struct {
    const char *name;
    gen_fn gen;
} single[] = {
    /* New workloads go last: a workload's seed is its place here. */
    { "churn", gen_churn },     { "phpmix", gen_phpmix }, { "request", gen_request },
    { "strings", gen_strings }, { "lifo", gen_lifo },     { "large", gen_large },
    { "hugereq", gen_hugereq }, { "pages", gen_pages },
};

#define SEED 0x5EED2024u

typedef struct {
    uint64_t checksum, ns, cpu_ns;
    size_t ops;
} result_t;

/* The multi-thread workload: THREADS threads, each running its own small-churn trace (own seed,
 * own stamps) on its own heap. The traces are made by the main thread before timing, so the
 * RSS baseline includes them as for the other workloads. */
#define THREADS 2

typedef struct {
    pthread_t tid;
    pthread_barrier_t *go;
    trace_t trace;
    slot_t *tab;
    uint64_t start, end, checksum;
} worker_t;

static void *worker(void *arg)
{
    worker_t *w = arg;
    /* First use on this thread outside the clock: makes the thread's heap / arena / cache. */
    void *warm = A_MALLOC(64);
    OPAQUE(warm);
    A_FREE(warm);
    pthread_barrier_wait(w->go);
    w->start = now_ns();
    w->checksum = run_trace(&w->trace, w->tab);
    w->end = now_ns();
    return NULL;
}

static void gen_threads(worker_t *w, double scale)
{
    for (int i = 0; i < THREADS; i++) {
        gen_churn(&w[i].trace, scale, SEED + 1000u * (unsigned)(i + 1));
        w[i].tab = map(w[i].trace.slots * sizeof(slot_t));
    }
}

static result_t run_threads(worker_t *w)
{
    pthread_barrier_t go;
    result_t res = { 0, 0, 0, 0 };
    pthread_barrier_init(&go, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        w[i].go = &go;
        if (pthread_create(&w[i].tid, NULL, worker, &w[i]))
            die("pthread_create failed");
    }
    uint64_t start = UINT64_MAX, end = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(w[i].tid, NULL);
        start = w[i].start < start ? w[i].start : start;
        end = w[i].end > end ? w[i].end : end;
        res.checksum += w[i].checksum; /* a sum: independent of thread order */
        res.ops += w[i].trace.counted;
    }
    res.ns = end - start; /* wall time of all threads; ns/op is per operation of either thread */
    return res;
}

/* The cross-thread workload: a producer thread allocates blocks (a malloc-like mix: 70% 8..128 B,
 * 25% 129 B..2 KiB, 5% 2..64 KiB) and stamps them, a consumer thread checks and frees them, so
 * every block is freed by the thread that did not allocate it. They meet in a single-producer
 * single-consumer ring of XRING slots; a side that finds it full or empty yields. The producer
 * thread exits only after the consumer is done. */
#define XRING 1024

typedef struct {
    _Atomic size_t head, tail;
    void *slot[XRING];
    size_t n;
    pthread_barrier_t go, done;
    uint64_t start, end, checksum;
} xring_t;

static size_t xsize(size_t i)
{
    uint64_t h = (uint64_t)i * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    unsigned pick = (unsigned)(h % 100);
    if (pick < 70)
        return 8 + (size_t)(h >> 8) % 121;
    if (pick < 95)
        return 129 + (size_t)(h >> 8) % 1920;
    return 2048 + (size_t)(h >> 8) % 63488;
}

static void *xproducer(void *arg)
{
    xring_t *r = arg;
    void *warm = A_MALLOC(64);
    OPAQUE(warm);
    A_FREE(warm);
    pthread_barrier_wait(&r->go);
    r->start = now_ns();
    for (size_t i = 0; i < r->n; i++) {
        size_t size = xsize(i);
        unsigned char *p = A_MALLOC(size);
        uint64_t stamp = (uint64_t)i * 0x2545F4914F6CDD1Dull ^ size;
        memcpy(p, &stamp, sizeof stamp);
        if (size > sizeof stamp)
            p[size - 1] = (unsigned char)i;
        size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        while (head - atomic_load_explicit(&r->tail, memory_order_acquire) == XRING)
            sched_yield();
        r->slot[head % XRING] = p;
        atomic_store_explicit(&r->head, head + 1, memory_order_release);
    }
    /* The producer's thread outlives its blocks: with PHP's semantics (zend) a thread's heap goes
     * when the thread exits. */
    pthread_barrier_wait(&r->done);
    return NULL;
}

static void *xconsumer(void *arg)
{
    xring_t *r = arg;
    pthread_barrier_wait(&r->go);
    uint64_t sum = 0;
    for (size_t i = 0; i < r->n; i++) {
        size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        while (atomic_load_explicit(&r->head, memory_order_acquire) == tail)
            sched_yield();
        unsigned char *p = r->slot[tail % XRING];
        atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
        size_t size = xsize(i);
        uint64_t stamp;
        memcpy(&stamp, p, sizeof stamp);
        if (stamp != ((uint64_t)i * 0x2545F4914F6CDD1Dull ^ size) ||
            (size > sizeof stamp && p[size - 1] != (unsigned char)i))
            die("xthread: a block's stamp changed");
        sum = sum * 31 + stamp;
        A_FREE(p);
    }
    r->checksum = sum;
    r->end = now_ns();
    pthread_barrier_wait(&r->done);
    return NULL;
}

static result_t run_xthread(double scale)
{
    static xring_t r;
    result_t res = { 0, 0, 0, 0 };
    r.n = (size_t)(2000000 * scale);
    if (r.n < 1000)
        r.n = 1000;
    pthread_barrier_init(&r.go, NULL, 2);
    pthread_barrier_init(&r.done, NULL, 2);
    pthread_t prod, cons;
    if (pthread_create(&prod, NULL, xproducer, &r) || pthread_create(&cons, NULL, xconsumer, &r))
        die("pthread_create failed");
    pthread_join(prod, NULL);
    pthread_join(cons, NULL);
    res.checksum = r.checksum;
    res.ops = 2 * r.n;
    res.ns = r.end - r.start;
    return res;
}

/* The server workload (after larson): LTHREADS threads share LSLOTS slots, each slot holding a
 * block of 8..1000 bytes. Each round every thread replaces random blocks in its own range of slots,
 * and the ranges rotate between rounds, so most blocks are freed by another thread than the one
 * that made them. Every block is stamped with its slot and generation and checked when it is
 * replaced; at the end each thread frees the blocks of its range (PHP's semantics: a thread's heap
 * goes with the thread). */
#define LTHREADS 4
#define LSLOTS 8192

typedef struct {
    unsigned char *block[LSLOTS];
    uint32_t gen[LSLOTS];
    pthread_barrier_t turn;
    int rounds, per_round;
} larson_t;

typedef struct {
    larson_t *l;
    int t;
    uint64_t start, end, checksum, ops;
} lworker_t;

static size_t lsize(uint32_t slot, uint32_t gen)
{
    return 8 + (size_t)(((uint64_t)slot * 2654435761u + gen * 40503u) % 993);
}

static uint64_t lstamp(uint32_t slot, uint32_t gen)
{
    return ((uint64_t)slot << 32 | gen) * 0x9E3779B97F4A7C15ull;
}

static uint64_t lreplace(larson_t *l, uint32_t slot)
{
    uint64_t sum = 0;
    unsigned char *p = l->block[slot];
    if (p) {
        uint64_t stamp;
        memcpy(&stamp, p, sizeof stamp);
        if (stamp != lstamp(slot, l->gen[slot]))
            die("larson: a block's stamp changed");
        sum = stamp;
        A_FREE(p);
    }
    uint32_t gen = ++l->gen[slot];
    size_t size = lsize(slot, gen);
    p = A_MALLOC(size);
    uint64_t stamp = lstamp(slot, gen);
    memcpy(p, &stamp, sizeof stamp);
    l->block[slot] = p;
    return sum;
}

static void *lworker(void *arg)
{
    lworker_t *w = arg;
    larson_t *l = w->l;
    const uint32_t range = LSLOTS / LTHREADS;
    void *warm = A_MALLOC(64);
    OPAQUE(warm);
    A_FREE(warm);
    pthread_barrier_wait(&l->turn);
    w->start = now_ns();
    for (int round = 0; round < l->rounds; round++) {
        uint32_t first = (uint32_t)((w->t + round) % LTHREADS) * range;
        rng_t r = { (uint64_t)round * 7919u + (uint64_t)w->t * 104729u + 1 };
        for (int i = 0; i < l->per_round; i++) {
            w->checksum += lreplace(l, first + below(&r, range));
            w->ops += 2;
        }
        pthread_barrier_wait(&l->turn);
    }
    uint32_t first = (uint32_t)((w->t + l->rounds) % LTHREADS) * range;
    for (uint32_t slot = first; slot < first + range; slot++) {
        if (l->block[slot]) {
            w->checksum += lreplace(l, slot); /* checks it, then a last block ... */
            A_FREE(l->block[slot]);           /* ... freed at once */
            l->block[slot] = NULL;
            w->ops += 3;
        }
    }
    w->end = now_ns();
    pthread_barrier_wait(&l->turn); /* no thread (and heap) goes before the last free */
    return NULL;
}

static result_t run_larson(double scale)
{
    static larson_t l;
    result_t res = { 0, 0, 0, 0 };
    l.rounds = (int)(40 * scale) < 2 ? 2 : (int)(40 * scale);
    l.per_round = 20000;
    pthread_barrier_init(&l.turn, NULL, LTHREADS);
    lworker_t w[LTHREADS];
    pthread_t tid[LTHREADS];
    memset(w, 0, sizeof w);
    for (int t = 0; t < LTHREADS; t++) {
        w[t].l = &l;
        w[t].t = t;
        if (pthread_create(&tid[t], NULL, lworker, &w[t]))
            die("pthread_create failed");
    }
    uint64_t start = UINT64_MAX, end = 0;
    for (int t = 0; t < LTHREADS; t++) {
        pthread_join(tid[t], NULL);
        start = w[t].start < start ? w[t].start : start;
        end = w[t].end > end ? w[t].end : end;
        res.checksum += w[t].checksum; /* a sum: independent of thread order */
        res.ops += w[t].ops;
    }
    res.ns = end - start;
    return res;
}

/* The thread-churn workload: waves (60 at scale 1) of TC_THREADS short-lived threads, as a server
 * that starts a thread per job. Thread i of a wave first checks and frees the TC_HAND blocks that
 * thread i of the wave before handed on (made by a thread that has exited since: its heap,
 * cache or arena was left behind with them), then replaces random slots of its own TC_SLOTS-slot
 * set TC_OPS times (90% 8..264 B, 10% 265 B..16 KiB), hands TC_HAND of its blocks on, frees the
 * rest and exits. Thread start-up and exit are inside the clock: they are what this measures
 * beside the allocation itself (a thread's first allocation makes its heap). Blocks are stamped
 * and checked as the traces' are. */
#define TC_THREADS 16
#define TC_SLOTS 512
#define TC_HAND 256
#define TC_OPS 2000

typedef struct {
    slot_t hand[2][TC_THREADS][TC_HAND]; /* by wave parity: read one, write the other */
} tchurn_t;

typedef struct {
    tchurn_t *c;
    int wave, t;
    uint64_t checksum, ops;
} tcworker_t;

static void tc_make(slot_t *s, uint32_t size, uint64_t stamp)
{
    s->p = A_MALLOC(size);
    s->size = size;
    s->stamp = stamp;
    stamp_block(s->p, size, stamp);
}

static uint64_t tc_free(slot_t *s, uint32_t slot)
{
    uint64_t read = check_block(s, slot);
    A_FREE(s->p);
    s->p = NULL;
    return read;
}

static void *tcworker(void *arg)
{
    tcworker_t *w = arg;
    slot_t *in = w->c->hand[w->wave & 1][w->t], *out = w->c->hand[(w->wave + 1) & 1][w->t];
    slot_t own[TC_SLOTS];
    memset(own, 0, sizeof own);
    for (int k = 0; k < TC_HAND; k++) {
        if (in[k].p) {
            w->checksum += tc_free(&in[k], (uint32_t)k);
            w->ops++;
        }
    }
    rng_t r = { (uint64_t)w->wave * 104729u + (uint64_t)w->t * 7919u + 1 };
    for (int i = 0; i < TC_OPS; i++) {
        uint32_t slot = below(&r, TC_SLOTS);
        slot_t *b = &own[slot];
        if (b->p) {
            w->checksum += tc_free(b, slot);
            w->ops++;
        }
        uint32_t size = below(&r, 10) ? uniform(&r, 8, 264) : uniform(&r, 265, 16 * KiB);
        tc_make(b, size, ((uint64_t)w->wave << 40 | (uint64_t)w->t << 24 | (uint64_t)i) * 0x9E3779B97F4A7C15ull);
        w->ops++;
    }
    for (int s = 0; s < TC_SLOTS; s++) {
        if (s < TC_HAND) {
            out[s] = own[s]; /* may be empty: that slot was never allocated */
        } else if (own[s].p) {
            w->checksum += tc_free(&own[s], (uint32_t)s);
            w->ops++;
        }
    }
    return NULL;
}

static result_t run_tchurn(double scale)
{
    tchurn_t *c = map(sizeof *c);
    result_t res = { 0, 0, 0, 0 };
    int waves = (int)(60 * scale) < 2 ? 2 : (int)(60 * scale);
    tcworker_t w[TC_THREADS];
    pthread_t tid[TC_THREADS];
    uint64_t start = now_ns();
    for (int wave = 0; wave <= waves; wave++) {
        memset(w, 0, sizeof w);
        for (int t = 0; t < TC_THREADS; t++) {
            w[t].c = c;
            w[t].wave = wave;
            w[t].t = t;
            if (pthread_create(&tid[t], NULL, tcworker, &w[t]))
                die("pthread_create failed");
        }
        for (int t = 0; t < TC_THREADS; t++) {
            pthread_join(tid[t], NULL);
            res.checksum += w[t].checksum; /* a sum: independent of thread order */
            res.ops += w[t].ops;
        }
    }
    /* The last wave's hand-ons, freed by the main thread. */
    for (int t = 0; t < TC_THREADS; t++) {
        for (int k = 0; k < TC_HAND; k++) {
            slot_t *b = &c->hand[(waves + 1) & 1][t][k];
            if (b->p) {
                res.checksum += tc_free(b, (uint32_t)k);
                res.ops++;
            }
        }
    }
    res.ns = now_ns() - start;
    return res;
}

/* ---- Small-block fast path, for callgrind ------------------------------------------------- */
/* run.py counts instructions inside bench_pair / bench_batch (--toggle-collect) and subtracts
 * the matching empty loop. Warm-up goes through copies with other names so it is not counted. */

#define PAIR_LOOP(name, ALLOC, FREE)                                                               \
    __attribute__((noinline)) void name(size_t n)                                                 \
    {                                                                                              \
        static char dummy;                                                                         \
        size_t n64 = 64;                                                                           \
        __asm__("" : "+r"(n64)); /* not a constant: the general entry points */                    \
        (void)dummy, (void)n64;                                                                    \
        for (size_t i = 0; i < n; i++) {                                                           \
            void *p = ALLOC;                                                                       \
            OPAQUE(p);                                                                             \
            FREE;                                                                                  \
        }                                                                                          \
    }
#define BATCH_LOOP(name, ALLOC, FREE)                                                              \
    __attribute__((noinline)) void name(size_t n)                                                 \
    {                                                                                              \
        static char dummy;                                                                         \
        size_t n64 = 64;                                                                           \
        __asm__("" : "+r"(n64)); /* not a constant: the general entry points */                    \
        (void)dummy, (void)n64;                                                                    \
        void *b[64];                                                                               \
        for (size_t r = 0; r < n; r++) {                                                           \
            for (int i = 0; i < 64; i++) {                                                         \
                void *p = ALLOC;                                                                   \
                OPAQUE(p);                                                                         \
                b[i] = p;                                                                          \
            }                                                                                      \
            for (int i = 63; i >= 0; i--) {                                                        \
                void *p = b[i];                                                                    \
                OPAQUE(p);                                                                         \
                FREE;                                                                              \
            }                                                                                      \
        }                                                                                          \
    }

/* Not static, so callgrind sees these exact names. */
void bench_pair(size_t n);
void bench_batch(size_t n);
void bench_pair_empty(size_t n);
void bench_batch_empty(size_t n);
void warm_pair(size_t n);
void warm_batch(size_t n);
void bench_sized(size_t n);
void bench_sized_empty(size_t n);
void warm_sized(size_t n);
PAIR_LOOP(bench_pair, A_MALLOC_VAR(n64), A_FREE(p))
/* PHP 8's size-specialised entry points, which its release header calls for constant sizes. */
PAIR_LOOP(bench_sized, A_MALLOC_64(), A_FREE_64(p))
PAIR_LOOP(warm_sized, A_MALLOC_64(), A_FREE_64(p))
PAIR_LOOP(bench_sized_empty, (void *)&dummy, (void)0)
PAIR_LOOP(warm_pair, A_MALLOC_VAR(n64), A_FREE(p))
PAIR_LOOP(bench_pair_empty, (void *)&dummy, (void)0)
BATCH_LOOP(bench_batch, A_MALLOC_VAR(n64), A_FREE(p))
BATCH_LOOP(warm_batch, A_MALLOC_VAR(n64), A_FREE(p))
BATCH_LOOP(bench_batch_empty, (void *)&dummy, (void)0)

static int run_fast(const char *mode, size_t n)
{
    /* Batch loops do 64 pairs per round; n is always the number of pairs. */
    size_t rounds = n / 64 ? n / 64 : 1;
    void (*fn)(size_t), (*warm)(size_t);
    size_t arg, pairs;
    if (!strcmp(mode, "fast-pair")) {
        fn = bench_pair, warm = warm_pair, arg = pairs = n;
    } else if (!strcmp(mode, "fast-batch")) {
        fn = bench_batch, warm = warm_batch, arg = rounds, pairs = rounds * 64;
    } else if (!strcmp(mode, "fast-sized")) {
        fn = bench_sized, warm = warm_sized, arg = pairs = n;
    } else if (!strcmp(mode, "fast-sized-empty")) {
        fn = bench_sized_empty, warm = NULL, arg = pairs = n;
    } else if (!strcmp(mode, "fast-pair-empty")) {
        fn = bench_pair_empty, warm = NULL, arg = pairs = n;
    } else if (!strcmp(mode, "fast-batch-empty")) {
        fn = bench_batch_empty, warm = NULL, arg = rounds, pairs = rounds * 64;
    } else {
        return 0;
    }
    A_START();
    if (warm) /* the empty loops call nothing that needs warming */
        warm(1000);
    uint64_t t0 = now_ns();
    fn(arg);
    uint64_t ns = now_ns() - t0;
    printf("alloc=%s workload=%s ops=%zu ns=%" PRIu64 " checksum=%016" PRIx64 " lib=%s\n", A_NAME, mode,
           2 * pairs, ns, (uint64_t)pairs, provider(A_SYMBOL));
    return 1;
}

/* ---- Main --------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s churn|phpmix|request|hugereq|strings|lifo|large|pages|threads|xthread|larson|tchurn [SCALE]\n"
                        "       %s fast-pair|fast-batch|fast-pair-empty|fast-batch-empty N\n",
                argv[0], argv[0]);
        return 2;
    }
    const char *name = argv[1];
    double scale = argc > 2 ? atof(argv[2]) : 1.0;
    if (scale <= 0)
        die("SCALE must be positive");
    if (!strncmp(name, "fast-", 5)) {
        if (run_fast(name, argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000))
            return 0;
        die("unknown fast-path mode");
    }

    result_t res = { 0, 0, 0, 0 };
    long rss_base;
    if (!strcmp(name, "threads") || !strcmp(name, "xthread") || !strcmp(name, "larson") ||
        !strcmp(name, "tchurn")) {
        if (!A_THREADS) {
            /* PHP's NTS heap is one global without locks: two threads would corrupt it. */
            printf("alloc=%s workload=%s status=na reason=not-thread-safe\n", A_NAME, name);
            return 0;
        }
        if (!strcmp(name, "tchurn") && !A_OUTLIVES_THREAD) {
            /* Its blocks handed on would die with the thread that made them. */
            printf("alloc=%s workload=%s status=na reason=heap-ends-with-thread\n", A_NAME, name);
            return 0;
        }
        worker_t w[THREADS];
        memset(w, 0, sizeof w);
        if (!strcmp(name, "threads"))
            gen_threads(w, scale); /* traces made before the RSS baseline, as for the others */
        rss_base = rss_now_kib();
        A_START();
        uint64_t c0 = cpu_ns();
        res = !strcmp(name, "threads")   ? run_threads(w)
            : !strcmp(name, "xthread") ? run_xthread(scale)
            : !strcmp(name, "larson")  ? run_larson(scale)
                                       : run_tchurn(scale);
        res.cpu_ns = cpu_ns() - c0;
    } else {
        trace_t t;
        size_t w = 0;
        while (w < sizeof single / sizeof single[0] && strcmp(single[w].name, name))
            w++;
        if (w == sizeof single / sizeof single[0])
            die("unknown workload");
        single[w].gen(&t, scale, SEED + w);
        slot_t *tab = map(t.slots * sizeof(slot_t));
        rss_base = rss_now_kib(); /* trace and tables are resident: what follows is the allocator */
        A_START();
        void *warm = A_MALLOC(64); /* lazy initialisation outside the clock, for every allocator */
        OPAQUE(warm);
        A_FREE(warm);
        uint64_t t0 = now_ns(), c0 = cpu_ns();
        res.checksum = run_trace(&t, tab);
        res.ns = now_ns() - t0;
        res.cpu_ns = cpu_ns() - c0;
        res.ops = t.counted;
    }
    /* rss_end_kib: what the allocator still holds after its last request end (or free). */
    printf("alloc=%s workload=%s ops=%zu ns=%" PRIu64 " cpu_ns=%" PRIu64 " checksum=%016" PRIx64
           " rss_base_kib=%ld rss_peak_kib=%ld rss_end_kib=%ld lib=%s\n",
           A_NAME, name, res.ops, res.ns, res.cpu_ns, res.checksum, rss_base, rss_peak_kib(), rss_now_kib(),
           provider(A_SYMBOL));
    return 0;
}
