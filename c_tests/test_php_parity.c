/*
 * test_php_parity.c - compares libzend_alloc with PHP 8.2's real allocator.
 *
 * PHP's allocator and this library export the same names (_emalloc, _efree, ...), so PHP's side runs
 * in another process: c_tests/php_probe.c, linked only against Debian's libphp8.2-embed, runs the
 * scenarios below and prints one measurement per line. This test runs the very same scenarios
 * against libzend_alloc in-process, runs the probe with popen, and compares the two outputs line by
 * line (block sizes, zend_memory_usage deltas, realloc moves, alignment classes, LIFO reuse, peak).
 *
 *   gcc -std=c99 -Wall -Wextra -Werror c_tests/php_probe.c -L/usr/lib -lphp8.2 -o c_tests/build/php_probe
 *   gcc -std=c99 -Wall -Wextra -Werror -Iinclude c_tests/test_php_parity.c -Ltarget/release -lzend_alloc \
 *       -Wl,-rpath,$PWD/target/release -o c_tests/build/test_php_parity
 *   c_tests/build/test_php_parity [path/to/php_probe]
 *
 * The probe is argv[1], else $PHP_PROBE, else c_tests/build/php_probe. If it cannot run (not built,
 * libphp8.2-embed not installed) the test FAILS: it does not skip.
 *
 * The two documented differences, both about huge blocks (more than 2093056 bytes):
 * - zend_memory_usage(0): PHP spends 24 more bytes than the block size, because it allocates its
 *   huge-list node (zend_mm_huge_list: ptr, size, next) from its own 24-byte bin; this library keeps
 *   that bookkeeping in a header page in front of the block, so its usage grows by exactly the block
 *   size: ours == php - 24.
 * - zend_memory_usage(1): that header page is memory taken from storage, so the real usage grows by
 *   one page more than PHP's: ours == php + 4096.
 * Every other value must be identical.
 *
 * Both sides run with the default configuration (2 MiB segments; malloc storage here): variables
 * that would change this library's heap are removed from the environment first (by re-executing
 * this program without them), and the probe removes USE_ZEND_ALLOC itself.
 */
#include "test.h"

/* ---- libzend_alloc's side of the API the scenarios use ---- */
#define A_ALLOC(n)       emalloc(n)
#define A_FREE(p)        efree(p)
#define A_REALLOC(p, n)  erealloc((p), (n))
#define A_BLOCK_SIZE(p)  zend_mem_block_size(p)
#define A_USAGE(real)    zend_memory_usage(real)
#define A_PEAK(real)     zend_memory_peak_usage(real)
/* Request end: every block released, usage and peak back to 0. */
#define A_RESET()        shutdown_memory_manager(1, 0)

/* A growable list of output lines. */
typedef struct {
    char **v;
    size_t n, cap;
} lines;

static lines ours;

static void lines_push(lines *l, const char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4096;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v) {
            perror("realloc");
            exit(2);
        }
    }
    l->v[l->n] = strdup(s);
    if (!l->v[l->n]) {
        perror("strdup");
        exit(2);
    }
    l->n++;
}

/* Records one measurement of our side (the probe prints the same line). */
static void out(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    lines_push(&ours, buf);
}

/* ==== Scenarios: identical in php_probe.c and test_php_parity.c ==== */

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

/* One block of each size, each from a fresh request: block size, usage and real-usage deltas. */
static void measure_block(size_t size)
{
    A_RESET();
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

/* ==== End of the shared scenarios ==== */

/* ---- Comparison ---- */

/* Bytes of zend_memory_usage(0) PHP spends per huge block on its huge-list node (see the top). */
#define PHP_HUGE_NODE 24
/* Bytes of zend_memory_usage(1) this library spends per huge block on its header page. */
#define OUR_HUGE_HEADER 4096

/* The fields of each kind of line: the first `keys` name the measurement, the rest are values. */
static const struct {
    const char *kind;
    int keys;
    const char *names[8];
} FIELDS[] = {
    {"start", 0, {"usage", "real_usage"}},
    {"segment", 0, {"blocks_in_first_segment", "real_usage_step"}},
    {"reset", 0, {"usage", "peak"}},
    {"block", 1, {"size", "block_size", "usage_delta", "real_usage_delta"}},
    {"realloc", 3, {"scenario", "from", "to", "moved", "block_size", "usage_delta", "content_ok"}},
    {"align", 1, {"bin_size", "all_16_aligned", "16_aligned_of_8"}},
    {"align_large", 1, {"size", "page_aligned"}},
    {"align_huge", 1, {"size", "page_aligned"}},
    {"lifo", 1, {"size", "same_address"}},
    {"peak", 1, {"size", "peak_delta", "real_peak_delta", "usage_after"}},
};
#define NKINDS (sizeof FIELDS / sizeof FIELDS[0])

#define MAX_TOKENS 10

/* Splits a copy of `line` at spaces into tok[]; returns the count. */
static int split(const char *line, char *copy, size_t cap, char *tok[MAX_TOKENS])
{
    int n = 0;
    snprintf(copy, cap, "%s", line);
    for (char *s = strtok(copy, " \n"); s && n < MAX_TOKENS; s = strtok(NULL, " \n")) {
        tok[n++] = s;
    }
    return n;
}

static int kind_index(const char *kind)
{
    for (size_t k = 0; k < NKINDS; k++) {
        if (strcmp(FIELDS[k].kind, kind) == 0) {
            return (int)k;
        }
    }
    return -1;
}

static int field_index(int k, const char *name)
{
    for (int i = 0; i < 8 && FIELDS[k].names[i]; i++) {
        if (strcmp(FIELDS[k].names[i], name) == 0) {
            return i + 1; /* tok[0] is the kind */
        }
    }
    return -1;
}

static unsigned long long num(const char *s)
{
    return strtoull(s, NULL, 10);
}

static int mismatches_shown = 0;
#define MAX_SHOWN 60

static void report(const char *fmt, ...)
{
    va_list ap;
    tests_failed++;
    if (++mismatches_shown > MAX_SHOWN) {
        return;
    }
    fprintf(stderr, "FAIL [%s] ", current_test);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* "block size=3000000" / "realloc scenario=huge_grow from=3000000 to=3100000": a line's name. */
static void describe(int k, char *tok[], char *buf, size_t cap)
{
    size_t len = (size_t)snprintf(buf, cap, "%s", tok[0]);
    for (int i = 0; i < FIELDS[k].keys && len < cap; i++) {
        len += (size_t)snprintf(buf + len, cap - len, " %s=%s", FIELDS[k].names[i], tok[i + 1]);
    }
}

/* Compares one line of ours with PHP's; reports every differing field with both values. Returns 0
 * if the two lines do not measure the same thing (then the outputs are out of step). */
static int compare_line(size_t idx, const char *o, const char *p)
{
    char oc[256], pc[256], name[160];
    char *ot[MAX_TOKENS], *pt[MAX_TOKENS];
    int on = split(o, oc, sizeof oc, ot), pn = split(p, pc, sizeof pc, pt);
    int k = on > 0 ? kind_index(ot[0]) : -1;
    int same_shape = k >= 0 && on == pn && strcmp(ot[0], pt[0]) == 0;
    for (int i = 1; same_shape && i <= FIELDS[k].keys; i++) {
        same_shape = strcmp(ot[i], pt[i]) == 0;
    }
    if (!same_shape) {
        report("line %zu: the outputs are out of step (probe built from another version of the scenarios?)\n"
               "  ours: %s\n  php:  %s\n  (comparison stopped here)",
               idx + 1, o, p);
        return 0;
    }
    describe(k, ot, name, sizeof name);
    int bs = field_index(k, "block_size");
    int huge = bs > 0 && num(ot[bs]) > LARGEST_LARGE;
    int ok = 1;
    for (int i = FIELDS[k].keys + 1; i < on; i++) {
        const char *field = FIELDS[k].names[i - 1];
        if (huge && strcmp(field, "usage_delta") == 0) {
            /* documented: PHP's huge-list node costs it 24 bytes we do not spend */
            unsigned long long want = num(pt[i]) - PHP_HUGE_NODE;
            if (num(ot[i]) != want) {
                report("%s: %s ours=%s php=%s (expected ours = php - %d = %llu for a huge block)", name, field,
                       ot[i], pt[i], PHP_HUGE_NODE, want);
                ok = 0;
            }
        } else if (huge && strcmp(field, "real_usage_delta") == 0) {
            /* documented: our huge blocks take a header page from storage */
            unsigned long long want = num(pt[i]) + OUR_HUGE_HEADER;
            if (num(ot[i]) != want) {
                report("%s: %s ours=%s php=%s (expected ours = php + %d = %llu for a huge block)", name, field,
                       ot[i], pt[i], OUR_HUGE_HEADER, want);
                ok = 0;
            }
        } else if (strcmp(ot[i], pt[i]) != 0) {
            report("%s: %s ours=%s php=%s", name, field, ot[i], pt[i]);
            ok = 0;
        }
    }
    if (ok) {
        tests_passed++;
    }
    return 1;
}

static lines php;
static const char *probe_path;

/* Runs the probe and collects its measurement lines; fails with a clear message if it cannot. */
static int run_probe(void)
{
    char cmd[4200], buf[512];
    int ended = 0;
    if (access(probe_path, X_OK) != 0) {
        fprintf(stderr,
                "FAIL [%s] cannot run the PHP probe %s: %s\n"
                "  build it with: gcc -std=c99 -Wall -Wextra -Werror c_tests/php_probe.c -L/usr/lib -lphp8.2 "
                "-o c_tests/build/php_probe\n"
                "  (it needs PHP 8.2's allocator: install libphp8.2-embed, e.g. apt-get install libphp8.2-embed)\n"
                "  or pass its path as argv[1] or in PHP_PROBE\n",
                current_test, probe_path, strerror(errno));
        return 0;
    }
    snprintf(cmd, sizeof cmd, "'%s'", probe_path);
    fflush(stdout);
    fflush(stderr);
    FILE *f = popen(cmd, "r");
    if (!f) {
        fprintf(stderr, "FAIL [%s] popen(%s): %s\n", current_test, probe_path, strerror(errno));
        return 0;
    }
    while (fgets(buf, sizeof buf, f)) {
        buf[strcspn(buf, "\n")] = '\0';
        if (buf[0] == '#' || buf[0] == '\0') {
            continue;
        }
        if (strcmp(buf, "end") == 0) {
            ended = 1;
            continue;
        }
        lines_push(&php, buf);
    }
    int st = pclose(f);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || !ended) {
        fprintf(stderr,
                "FAIL [%s] the PHP probe %s did not run to the end (%s %d, %zu lines read)\n"
                "  exit status 127 usually means libphp8.2.so is missing: install libphp8.2-embed "
                "(apt-get install libphp8.2-embed) and rebuild the probe\n",
                current_test, probe_path,
                st != -1 && WIFEXITED(st) ? "exit status" : "signal/status",
                st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : (st != -1 && WIFSIGNALED(st) ? WTERMSIG(st) : st),
                php.n);
        return 0;
    }
    return 1;
}

static int probe_ok = 0;

static void probe_runs(void)
{
    probe_ok = run_probe();
    CHECK(probe_ok);
    if (probe_ok) {
        CHECK(php.n > 3000);
    }
}

static void compare_with_php(void)
{
    if (!probe_ok) {
        return;
    }
    size_t n = ours.n < php.n ? ours.n : php.n;
    for (size_t i = 0; i < n; i++) {
        if (!compare_line(i, ours.v[i], php.v[i])) {
            return;
        }
    }
    if (ours.n != php.n) {
        report("line counts differ: ours %zu, php %zu (first unmatched: %s)", ours.n, php.n,
               ours.n > php.n ? ours.v[n] : php.v[n]);
    }
    if (mismatches_shown > MAX_SHOWN) {
        fprintf(stderr, "  ... %d more mismatches not shown\n", mismatches_shown - MAX_SHOWN);
    }
}

/* Field `field` of the first line starting with `prefix` ("realloc huge_grow "), or -1. */
static long long value(const lines *l, const char *prefix, const char *field)
{
    char copy[256];
    char *tok[MAX_TOKENS];
    for (size_t i = 0; i < l->n; i++) {
        if (strncmp(l->v[i], prefix, strlen(prefix)) == 0) {
            int n = split(l->v[i], copy, sizeof copy, tok);
            int k = kind_index(tok[0]);
            int f = k >= 0 ? field_index(k, field) : -1;
            return f > 0 && f < n ? (long long)num(tok[f]) : -1;
        }
    }
    return -1;
}

/* The values the brief documents, held against both sides (PHP's too: it is the reference). */
static void expectations_for(const lines *l, int is_php)
{
    static const char *const moved[][2] = {
        {"realloc small_shrink_bin ", "1"}, {"realloc small_to_zero ", "1"},
        {"realloc small_same_bin ", "0"}, {"realloc large_same_pages ", "0"},
        {"realloc large_grow_free ", "0"}, {"realloc large_grow_blocked ", "1"},
        {"realloc large_shrink ", "0"}, {"realloc large_to_small ", "1"},
    };
    char prefix[64];
    CHECK_EQ(value(l, "segment ", "real_usage_step"), 2097152);
    CHECK_EQ(value(l, "reset ", "usage"), 0);
    CHECK_EQ(value(l, "realloc small_shrink_bin ", "block_size"), 96);
    CHECK_EQ(value(l, "realloc small_to_zero ", "block_size"), 8);
    CHECK_EQ(value(l, "realloc huge_grow ", "block_size"), 3100672);
    CHECK_EQ(value(l, "realloc huge_shrink ", "block_size"), 2502656);
    CHECK_EQ(value(l, "realloc large_to_small ", "block_size"), 112);
    for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
        CHECK_EQ(value(l, moved[i][0], "moved"), num(moved[i][1]));
    }
    for (size_t i = 0; i < l->n; i++) {
        if (strncmp(l->v[i], "realloc ", 8) == 0) {
            char copy[256];
            char *tok[MAX_TOKENS];
            split(l->v[i], copy, sizeof copy, tok);
            snprintf(prefix, sizeof prefix, "realloc %s ", tok[1]);
            CHECK_EQ(value(l, prefix, "content_ok"), 1);
        }
    }
    for (int b = 0; b < 30; b++) {
        size_t s = bin_sizes[b];
        snprintf(prefix, sizeof prefix, "align %zu ", s);
        CHECK_EQ(value(l, prefix, "all_16_aligned"), s % 16 == 0);
        snprintf(prefix, sizeof prefix, "block %zu ", s);
        CHECK_EQ(value(l, prefix, "block_size"), s);
    }
    CHECK_EQ(value(l, "align_large 3073 ", "page_aligned"), 1);
    CHECK_EQ(value(l, "align_large 2093056 ", "page_aligned"), 1);
    CHECK_EQ(value(l, "lifo 100 ", "same_address"), 1);
    CHECK_EQ(value(l, "lifo 5000 ", "same_address"), 1);
    CHECK_EQ(value(l, "peak 1048576 ", "peak_delta"), 1048576);
    CHECK_EQ(value(l, "block 2093056 ", "usage_delta"), 2093056);
    CHECK_EQ(value(l, "block 3000000 ", "block_size"), 3002368);
    CHECK_EQ(value(l, "block 3000000 ", "usage_delta"), 3002368 + (is_php ? PHP_HUGE_NODE : 0));
}

static void ours_match_documented_values(void)
{
    expectations_for(&ours, 0);
}

static void php_matches_documented_values(void)
{
    if (probe_ok) {
        expectations_for(&php, 1);
    }
}

/* Removes the variables that would change this library's heap, re-executing if any was set. */
static void use_default_configuration(char **argv)
{
    static const char *const vars[] = {"ZEND_MM_MEM_TYPE", "ZEND_MM_SEG_SIZE", "ZEND_MM_COMPACT", "USE_ZEND_ALLOC"};
    int changed = 0;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        if (getenv(vars[i])) {
            fprintf(stderr, "note: test_php_parity compares the default heap: ignoring %s=%s\n", vars[i],
                    getenv(vars[i]));
            unsetenv(vars[i]);
            changed = 1;
        }
    }
    if (changed) {
        execv("/proc/self/exe", argv);
        perror("execv /proc/self/exe");
        exit(2);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    use_default_configuration(argv);
    probe_path = argc > 1 ? argv[1] : getenv("PHP_PROBE") ? getenv("PHP_PROBE") : "c_tests/build/php_probe";

    /* Our side first, in this fresh process (the segment step must be the heap's first event). */
    start_memory_manager();
    run_scenarios();
    printf("ours: %zu measurements; php probe: %s\n", ours.n, probe_path);
    fflush(stdout);

    RUN(probe_runs);
    RUN(compare_with_php);
    RUN(ours_match_documented_values);
    RUN(php_matches_documented_values);
    return test_summary();
}
