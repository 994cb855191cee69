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
#include <setjmp.h>

/* ---- libzend_alloc's side of the API the scenarios use ---- */
#define A_ALLOC(n)       emalloc(n)
#define A_FREE(p)        efree(p)
#define A_REALLOC(p, n)  erealloc((p), (n))
#define A_BLOCK_SIZE(p)  zend_mem_block_size(p)
#define A_USAGE(real)    zend_memory_usage(real)
#define A_PEAK(real)     zend_memory_peak_usage(real)
/* Request end: every block released, usage and peak back to 0. */
#define A_RESET()        shutdown_memory_manager(1, 0)
#define A_GC()           zend_mm_gc(zend_mm_get_heap())

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

#include "parity_scenarios.h"

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

static char overflow_message[256];
static jmp_buf overflow_bailout;

static void keep_message(int type, const char *file, uint32_t line, const char *message)
{
    (void)type;
    (void)file;
    (void)line;
    snprintf(overflow_message, sizeof overflow_message, "%s", message);
    longjmp(overflow_bailout, 1);
}

/* emalloc(SIZE_MAX - 100) overflows when rounded up to pages: the message is PHP's text with the
 * caller's size and PHP's page size, as PHP 8.2 itself prints it (not a header of ours). */
static void test_the_overflow_message_is_phps(void)
{
    char cmd[4200], php_out[512] = "";
    snprintf(cmd, sizeof cmd, "exec '%s' overflow-message 2>&1", probe_path);
    fflush(stdout);
    fflush(stderr);
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL);
    if (f) {
        size_t n = fread(php_out, 1, sizeof php_out - 1, f);
        php_out[n] = '\0';
        pclose(f);
    }
    zend_mm_set_error_handler(keep_message);
    volatile size_t huge = SIZE_MAX - 100;
    if (setjmp(overflow_bailout) == 0) {
        emalloc(huge);
    }
    zend_mm_set_error_handler(NULL);
    CHECK_CONTAINS(overflow_message,
                   "Possible integer overflow in memory allocation (18446744073709551515 + 4096)");
    CHECK(overflow_message[0] != '\0' && strstr(php_out, overflow_message) != NULL);
    if (!strstr(php_out, overflow_message)) {
        fprintf(stderr, "  PHP 8.2 printed: [%s]\n  ours:            [%s]\n", php_out, overflow_message);
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
    RUN(test_the_overflow_message_is_phps);
    return test_summary();
}
