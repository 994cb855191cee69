/*
 * Block tracking (ZEND_MM_DEBUG=1, zend_mm_set_tracking): PHP 5.3's debug build at run time.
 *
 * Every case runs in a fresh process (the library reads ZEND_MM_DEBUG once per process), which
 * writes what PHP 5.3 would print to stdout with printf and the same formats, while the library
 * writes its report to stderr; the parent compares them byte for byte. Reports for bad pointers
 * are checked line by line, and every child must exit normally (a bad pointer is reported and
 * the operation skipped, never a signal), except for a bad free from another thread, which ends
 * the process with "zend_mm_heap corrupted" as it does without tracking.
 */
#include "test.h"

#include <pthread.h>
#include <setjmp.h>

#define DASHES "---------------------------------------\n"

/* Sizes the compiler cannot see, so the deliberate overflows below compile without warnings. */
static volatile size_t ten = 10, twenty_four = 24;

static const char *const debug_on[] = {"ZEND_MM_DEBUG=1", NULL};

/* Drops the "[date]  Script:  'name'" lines (their date varies) after checking their shape;
 * returns how many there were. */
static int strip_script_lines(char *text, const char *script)
{
    char want[256];
    int n = 0;
    snprintf(want, sizeof want, "]  Script:  '%s'\n", script);
    char *line = text, *out = text;
    while (*line) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line + 1) : strlen(line);
        char *mark = strstr(line, want);
        if (line[0] == '[' && mark && mark + strlen(want) == line + len) {
            n++;
        } else {
            memmove(out, line, len);
            out += len;
        }
        line += len;
    }
    *out = '\0';
    return n;
}

/* ---- Leak report --------------------------------------------------------------------------- */

/* Where the known leaks were made. */
static struct {
    int single, group, large, huge, relayed, relay_inner;
    void *p_single, *p_group, *p_large, *p_huge, *p_relayed;
} leaks;

/* A helper that relays its caller's location, as PHP's internal functions do. */
static void *relaying_alloc(size_t size ZEND_FILE_LINE_DC)
{
    leaks.relay_inner = __LINE__ + 1;
    return _emalloc(size ZEND_FILE_LINE_RELAY_CC ZEND_FILE_LINE_CC);
}

/* Leaks known blocks at known lines (and frees one, which is not reported). */
static void leak_some(void)
{
    void *freed = emalloc(50);
    leaks.single = __LINE__ + 1;
    leaks.p_single = emalloc(10);
    leaks.group = __LINE__ + 2;
    for (int i = 0; i < 3; i++) {
        void *p = emalloc(20);
        if (i == 0) {
            leaks.p_group = p;
        }
    }
    leaks.large = __LINE__ + 1;
    leaks.p_large = emalloc(10000);
    leaks.huge = __LINE__ + 1;
    leaks.p_huge = emalloc(3 << 20);
    leaks.relayed = __LINE__ + 1;
    leaks.p_relayed = relaying_alloc(33 ZEND_FILE_LINE_CC);
    efree(freed);
}

/* One leak group as the report lists it. */
typedef struct {
    void *addr;
    size_t size;
    int line, repeats, relayed;
} expected_leak;

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const expected_leak *)a)->addr, y = (uintptr_t)((const expected_leak *)b)->addr;
    return x < y ? -1 : x > y;
}

/* The groups in the report's order (PHP's): huge blocks, then the segment's blocks by address. */
static int expected_leaks(expected_leak *out)
{
    expected_leak rest[4] = {
        {leaks.p_single, 10, leaks.single, 0, 0},
        {leaks.p_group, 20, leaks.group, 2, 0},
        {leaks.p_large, 10000, leaks.large, 0, 0},
        {leaks.p_relayed, 33, leaks.relayed, 0, 1},
    };
    qsort(rest, 4, sizeof rest[0], by_address);
    out[0] = (expected_leak){leaks.p_huge, (size_t)3 << 20, leaks.huge, 0, 0};
    memcpy(out + 1, rest, sizeof rest);
    return 5;
}

/* Prints to stdout what PHP 5.3's message handler prints for those leaks (script lines aside). */
static void print_expected_report(const char *script)
{
    expected_leak e[5];
    int n = expected_leaks(e);
    for (int i = 0; i < n; i++) {
        printf("%s(%d) :  Freeing 0x%.8lX (%zu bytes), script=%s\n", __FILE__, e[i].line, (unsigned long)e[i].addr,
               e[i].size, script);
        if (e[i].relayed) {
            printf("%s(%d) : Actual location (location was relayed)\n", __FILE__, leaks.relay_inner);
        }
        if (e[i].repeats) {
            printf("Last leak repeated %ld time%s\n", (long)e[i].repeats, e[i].repeats > 1 ? "s" : "");
        }
    }
    printf("=== Total %d memory leaks detected ===\n", 7);
}

/* The handler's log: every message it got, in order. */
static char handler_log[4096];

static void log_line(const char *fmt, ...)
{
    va_list ap;
    size_t len = strlen(handler_log);
    va_start(ap, fmt);
    vsnprintf(handler_log + len, sizeof handler_log - len, fmt, ap);
    va_end(ap);
}

static void record_message(long message, const void *data)
{
    switch (message) {
    case ZMSG_LOG_SCRIPT_NAME:
        log_line("script %s\n", data == NULL ? "null" : "data");
        break;
    case ZMSG_MEMORY_LEAK_DETECTED: {
        const zend_leak_info *leak = data;
        log_line("leak %p %zu %s:%u orig %s:%u\n", leak->addr, leak->size, leak->filename ? leak->filename : "null",
                 leak->lineno, leak->orig_filename ? leak->orig_filename : "null", leak->orig_lineno);
        break;
    }
    case ZMSG_MEMORY_LEAK_REPEATED:
        log_line("repeated %zu\n", (size_t)(uintptr_t)data);
        break;
    case ZMSG_MEMORY_LEAKS_GRAND_TOTAL:
        log_line("total %u\n", *(const uint32_t *)data);
        break;
    default:
        log_line("unknown %ld\n", message);
    }
}

/* What record_message should log for the known leaks. */
static void print_expected_messages(void)
{
    expected_leak e[5];
    int n = expected_leaks(e);
    for (int i = 0; i < n; i++) {
        printf("script null\nleak %p %zu %s:%d orig ", e[i].addr, e[i].size, __FILE__, e[i].line);
        if (e[i].relayed) {
            printf("%s:%d\n", __FILE__, leaks.relay_inner);
        } else {
            printf("null:0\n");
        }
        if (e[i].repeats) {
            printf("repeated %d\n", e[i].repeats);
        }
    }
    printf("total 7\n");
}

/* ---- Statistics ------------------------------------------------------------------------------- */

/* A known mix on an explicit heap: 10 blocks of 100 bytes (4 freed), 2 large (1 freed), 1 huge
 * (freed). */
static void known_mix(void)
{
    void *small[10], *large[2];
    for (int i = 0; i < 10; i++) {
        small[i] = emalloc(100);
    }
    for (int i = 0; i < 4; i++) {
        efree(small[i]);
    }
    for (int i = 0; i < 2; i++) {
        large[i] = emalloc(10000);
    }
    efree(large[0]);
    efree(emalloc(3 << 20));
}

/* The index of the bin that serves `size` bytes. */
static int bin_of_size(size_t size)
{
    zend_mm_stats st;
    zend_mm_get_stats(NULL, &st);
    for (int b = 0; b < ZEND_MM_BINS; b++) {
        if (st.bins[b].size >= size) {
            return b;
        }
    }
    return -1;
}

static void test_stats_count_what_was_done(void)
{
    zend_mm_heap *heap = zend_mm_startup();
    zend_mm_heap *old = zend_mm_set_heap(heap);
    zend_mm_stats st;
    CHECK_EQ(zend_mm_get_stats(heap, &st), SUCCESS);
    CHECK_EQ(st.counting, 0);
    CHECK_EQ(zend_mm_set_stats(heap, 1), SUCCESS);
    known_mix();
    CHECK_EQ(zend_mm_set_stats(heap, 0), SUCCESS);
    CHECK_EQ(zend_mm_set_stats(heap, 1), FAILURE); /* not while blocks are live */
    CHECK_EQ(zend_mm_get_stats(heap, &st), SUCCESS);
    int b = bin_of_size(100);
    CHECK_EQ(st.counting, 0); /* switched off above: only what the heap holds */
    CHECK_EQ(st.bins[b].live, 6);
    CHECK_EQ(st.bins[b].runs, 1);
    CHECK_EQ(st.large.live, 1);
    CHECK_EQ(st.large.bytes, 12288);
    CHECK_EQ(st.huge.live, 0);
    CHECK_EQ(st.huge.cached, 1);
    CHECK_EQ(zend_mm_get_stats(heap, NULL), FAILURE);
    zend_mm_shutdown(heap, 0, 1); /* request end: nothing live */
    CHECK_EQ(zend_mm_set_stats(heap, 1), SUCCESS);
    known_mix();
    CHECK_EQ(zend_mm_get_stats(heap, &st), SUCCESS);
    CHECK_EQ(st.counting, 1);
    CHECK_EQ(st.requests, 1);
    CHECK_EQ(st.bins[b].allocs, 10);
    CHECK_EQ(st.bins[b].frees, 4);
    CHECK_EQ(st.bins[b].live, 6);
    CHECK_EQ(st.bins[b].peak_live, 10);
    CHECK_EQ(st.large.allocs, 2);
    CHECK_EQ(st.large.frees, 1);
    CHECK_EQ(st.large.peak_live, 2);
    CHECK_EQ(st.huge.allocs, 1);
    CHECK_EQ(st.huge.frees, 1);
    CHECK_EQ(st.usage, zend_memory_usage(0));
    CHECK_EQ(st.real_usage, zend_memory_usage(1));
    CHECK(st.top_by_bytes[0].file == NULL); /* no sites without tracking */
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
}

static void test_tracking_stats_name_the_top_sites(void)
{
    zend_mm_heap *heap = zend_mm_startup();
    zend_mm_heap *old = zend_mm_set_heap(heap);
    CHECK_EQ(zend_mm_set_tracking(heap, 1), SUCCESS);
    int line_a = __LINE__ + 2;
    for (int i = 0; i < 5; i++) {
        emalloc(100); /* 5 blocks, 500 bytes live */
    }
    int line_b = __LINE__ + 2;
    for (int i = 0; i < 20; i++) {
        void *p = emalloc(10); /* 20 allocations, 2 live */
        if (i >= 2) {
            efree(p);
        }
    }
    zend_mm_stats st;
    CHECK_EQ(zend_mm_get_stats(heap, &st), SUCCESS);
    CHECK_EQ(st.tracking, 1);
    CHECK(st.top_by_bytes[0].file && strcmp(st.top_by_bytes[0].file, __FILE__) == 0);
    CHECK_EQ(st.top_by_bytes[0].line, line_a);
    CHECK_EQ(st.top_by_bytes[0].blocks, 5);
    CHECK_EQ(st.top_by_bytes[0].bytes, 500);
    CHECK_EQ(st.top_by_bytes[1].line, line_b);
    CHECK_EQ(st.top_by_bytes[1].bytes, 20);
    CHECK_EQ(st.top_by_allocs[0].line, line_b);
    CHECK_EQ(st.top_by_allocs[0].allocs, 20);
    CHECK_EQ(st.top_by_allocs[1].line, line_a);
    CHECK(st.top_by_allocs[2].file == NULL);
    CHECK_EQ(sizeof st.top_by_bytes / sizeof st.top_by_bytes[0], ZEND_MM_TOP_SITES);
    /* The same as one line of JSON, written to a file descriptor. */
    char path[] = "/tmp/zend_alloc_sites_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        zend_mm_print_stats(heap, fd, 1);
        char json[8192] = "";
        ssize_t n = pread(fd, json, sizeof json - 1, 0);
        json[n > 0 ? n : 0] = '\0';
        close(fd);
        unlink(path);
        char want[256];
        snprintf(want, sizeof want, "\"top_by_bytes\":[{\"file\":\"%s\",\"line\":%d,\"blocks\":5,\"bytes\":500,", __FILE__,
                 line_a);
        CHECK_CONTAINS(json, want);
        CHECK(n > 0 && json[n - 1] == '\n' && strchr(json, '\n') == json + n - 1); /* one line */
    }
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
}

static const char *const json_checker =
    "import json, sys\n"
    "lines = [l for l in open(sys.argv[1]) if l.startswith('{')]\n"
    "d = json.loads(lines[0])\n"
    "b = [x for x in d['bins'] if x['size'] == int(sys.argv[2])][0]\n"
    "ok = (d['counting'] and b['allocs'] == 10 and b['frees'] == 4 and b['live'] == 6 and b['peak_live'] == 10\n"
    "      and d['large']['allocs'] == 2 and d['large']['live'] == 1 and d['huge']['frees'] == 1\n"
    "      and len(d['bins']) == 30 and d['top_by_bytes'] == [])\n"
    "print('json ok' if ok and len(lines) == 1 else 'json BAD %r' % lines)\n";

static void test_stats_environment_prints_json_that_parses(void)
{
    const char *env[] = {"ZEND_MM_STATS=json", NULL};
    child_result r = run_self("stats", env);
    CHECK(r.exited && r.status == 0);
    char path[] = "/tmp/zend_alloc_stats_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) {
        return;
    }
    CHECK_EQ(write(fd, r.err, strlen(r.err)), strlen(r.err));
    close(fd);
    char cmd[1024];
    int bin_size = atoi(r.out); /* the child printed the 100-byte bin's size */
    snprintf(cmd, sizeof cmd, "python3 -c \"$ZA_CHECKER\" %s %d", path, bin_size);
    setenv("ZA_CHECKER", json_checker, 1);
    FILE *p = popen(cmd, "r");
    char verdict[256] = "";
    if (p) {
        if (!fgets(verdict, sizeof verdict, p)) {
            verdict[0] = '\0';
        }
        pclose(p);
    }
    unlink(path);
    CHECK(strcmp(verdict, "json ok\n") == 0);
    if (strcmp(verdict, "json ok\n") != 0) {
        fprintf(stderr, "  checker said [%s]; stderr was:\n%s", verdict, r.err);
    }
    const char *text[] = {"ZEND_MM_STATS=1", NULL};
    child_result t = run_self("stats", text);
    CHECK_CONTAINS(t.err, "zend_alloc heap ");
    CHECK_CONTAINS(t.err, "  bin   size     live     peak       allocs        frees   runs\n");
    CHECK_CONTAINS(t.err, "  large: 1 live (12288 bytes), peak 2, 2 allocs, 1 frees\n");
}

/* ---- Fault injection -------------------------------------------------------------------------- */

static jmp_buf bailout;
static char last_error[256];

static void bail_out(int type, const char *file, uint32_t line, const char *message)
{
    (void)type;
    (void)file;
    (void)line;
    snprintf(last_error, sizeof last_error, "%s", message);
    longjmp(bailout, 1);
}

/* Counts the allocations a request gets before the injected failure (or -1 if none came in
 * `max` tries). */
static int allocations_until_failure(int max)
{
    static volatile int made; /* volatile: read after the longjmp */
    made = 0;
    if (setjmp(bailout) == 0) {
        for (; made < max; made++) {
            emalloc(16);
        }
        return -1;
    }
    return made;
}

static int fault_injection_with_a_handler(void)
{
    zend_mm_set_error_handler(bail_out);
    int first = allocations_until_failure(10);
    int hit = zend_mm_max_allocs_hit();
    shutdown_memory_manager(1, 0); /* a new request gets a new budget */
    int second = allocations_until_failure(10);
    printf("first %d hit %d second %d error [%s]\n", first, hit, second, last_error);
    return 0;
}

static int probe(const char *mode)
{
    if (strcmp(mode, "leaks") == 0 || strcmp(mode, "leaks-named") == 0) {
        int named = strcmp(mode, "leaks-named") == 0;
        start_memory_manager();
        if (named) {
            zend_mm_set_script_name("/srv/www/index.php");
        }
        leak_some();
        print_expected_report(named ? "/srv/www/index.php" : "-");
        fflush(stdout);
        shutdown_memory_manager(0, 0);
        /* The next request starts clean: nothing more to report. */
        efree(emalloc(10));
        shutdown_memory_manager(0, 0);
        return 0;
    }
    if (strcmp(mode, "leaks-silent") == 0) {
        start_memory_manager();
        leak_some();
        shutdown_memory_manager(1, 0);
        emalloc(10);
        shutdown_memory_manager(1, 1);
        return 0;
    }
    if (strcmp(mode, "handler") == 0) {
        start_memory_manager();
        int installed = zend_mm_set_message_handler(record_message) == NULL;
        leak_some();
        print_expected_messages();
        shutdown_memory_manager(0, 0);
        printf("--\n%s", handler_log);
        int restored = zend_mm_set_message_handler(NULL) == record_message;
        return installed && restored ? 0 : 1;
    }
    if (strcmp(mode, "faults") == 0) {
        start_memory_manager();
        for (int i = 0; i < 3; i++) {
            efree(emalloc(100)); /* frees are not counted */
        }
        printf("hit %d\n", zend_mm_max_allocs_hit());
        fflush(stdout);
        emalloc(100);
        printf("not reached\n");
        return 0;
    }
    if (strcmp(mode, "faults-recover") == 0) {
        start_memory_manager();
        return fault_injection_with_a_handler();
    }
    if (strcmp(mode, "stats") == 0) {
        zend_mm_heap *heap = zend_mm_startup();
        zend_mm_set_heap(heap);
        known_mix();
        zend_mm_stats st;
        zend_mm_get_stats(heap, &st);
        printf("%zu", st.bins[bin_of_size(100)].size);
        fflush(stdout);
        zend_mm_shutdown(heap, 1, 1); /* prints the statistics */
        zend_mm_set_heap(NULL);
        return 0;
    }
    if (strcmp(mode, "tracking-state") == 0) {
        start_memory_manager();
        printf("tracking %d\n", zend_mm_is_tracking(NULL));
        return 0;
    }
    fprintf(stderr, "unknown probe mode %s\n", mode);
    return 2;
}

static void check_same(const char *what, const char *got, const char *want)
{
    CHECK(strcmp(got, want) == 0);
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "  %s:\n%s  expected:\n%s", what, got, want);
    }
}

static void test_leak_report_is_php_53s(void)
{
    child_result r = run_self("leaks", debug_on);
    CHECK(r.exited && r.status == 0);
    CHECK_EQ(strip_script_lines(r.err, "-"), 5); /* one per group */
    check_same("report", r.err, r.out);
}

static void test_leak_report_names_the_script(void)
{
    child_result r = run_self("leaks-named", debug_on);
    CHECK(r.exited && r.status == 0);
    CHECK_EQ(strip_script_lines(r.err, "/srv/www/index.php"), 5);
    check_same("report", r.err, r.out);
}

static void test_no_report_without_tracking_silently_or_when_disabled(void)
{
    child_result off = run_self("leaks", NULL);
    CHECK_EXIT(off, 0, "");
    const char *no_print[] = {"ZEND_MM_DEBUG=1", "ZEND_ALLOC_PRINT_LEAKS=0", NULL};
    child_result disabled = run_self("leaks", no_print);
    CHECK_EXIT(disabled, 0, "");
    child_result silent = run_self("leaks-silent", debug_on);
    CHECK_EXIT(silent, 0, "");
    child_result state_off = run_self("tracking-state", NULL);
    CHECK(strcmp(state_off.out, "tracking 0\n") == 0);
    child_result state_on = run_self("tracking-state", debug_on);
    CHECK(strcmp(state_on.out, "tracking 1\n") == 0);
}

static void test_a_message_handler_gets_phps_protocol(void)
{
    child_result r = run_self("handler", debug_on);
    CHECK_EXIT(r, 0, "");
    char *sep = strstr(r.out, "--\n");
    CHECK(sep != NULL);
    if (sep) {
        *sep = '\0';
        check_same("messages", sep + 3, r.out);
    }
}

static void test_fault_injection_fails_the_allocation_after_the_nth(void)
{
    const char *env[] = {"ZEND_MM_MAX_ALLOCS=3", NULL};
    child_result r = run_self("faults", env);
    CHECK(r.exited && r.status == 121);
    CHECK(strcmp(r.out, "hit 0\n") == 0);
    CHECK_CONTAINS(r.err, "\nFatal error: Allowed memory size of ");
    CHECK_CONTAINS(r.err, " bytes exhausted (tried to allocate 100 bytes) in " __FILE__ " on line ");
    child_result none = run_self("faults", NULL); /* no injection: the fourth succeeds */
    CHECK_EXIT(none, 0, "");
    CHECK(strcmp(none.out, "hit 0\nnot reached\n") == 0);
    const char *two[] = {"ZEND_MM_MAX_ALLOCS=2", NULL};
    child_result again = run_self("faults-recover", two);
    CHECK_EXIT(again, 0, "");
    CHECK_CONTAINS(again.out, "first 2 hit 1 second 2 error [Allowed memory size of ");
}

static void test_max_allocs_api(void)
{
    zend_mm_heap *heap = zend_mm_startup();
    zend_mm_heap *old = zend_mm_set_heap(heap);
    zend_mm_error_handler_t old_handler = zend_mm_set_error_handler(bail_out);
    zend_mm_set_max_allocs(5);
    CHECK_EQ(allocations_until_failure(100), 5);
    CHECK_EQ(zend_mm_max_allocs_hit(), 1);
    char *p = erealloc_recoverable(NULL, 10); /* may fail: NULL instead of the error */
    CHECK(p == NULL);
    zend_mm_set_max_allocs(UINT64_MAX); /* off */
    CHECK_EQ(zend_mm_max_allocs_hit(), 0);
    CHECK_EQ(allocations_until_failure(1000), -1);
    zend_mm_set_error_handler(old_handler);
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
}

static void test_bad_debug_value_is_refused(void)
{
    const char *env[] = {"ZEND_MM_DEBUG=yes", NULL};
    child_result r = run_self("tracking-state", env);
    CHECK(r.exited && r.status == 255);
    CHECK_CONTAINS(r.err, "ZEND_MM_DEBUG");
}

/* ---- Checks ----------------------------------------------------------------------------------- */

/* Each case runs in a child on a tracking heap; `expect` lists lines its stderr must hold, and
 * "after" (printed by the case once the bad call returned) proves the process went on. */
typedef struct {
    const char *name;
    void (*run)(void *);
} bad_case;

static char *make_tracking(void)
{
    start_memory_manager();
    CHECK_EQ(zend_mm_set_tracking(NULL, 1), SUCCESS);
    return NULL;
}

static void double_free_small(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(100);
    efree(p);
    efree(p);
    printf("after %zu\n", zend_mem_block_size(emalloc(7)));
}

static void double_free_large(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(10000);
    efree(p);
    efree(p);
    printf("after\n");
}

static void double_free_huge(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(3 << 20);
    efree(p);
    efree(p);
    printf("after\n");
}

static void interior_pointer(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(100);
    efree(p + 16);
    printf("after %zu\n", zend_mem_block_size(p));
}

static void foreign_pointer(void *arg)
{
    (void)arg;
    make_tracking();
    char *m = malloc(64);
    efree(m);
    free(m);
    printf("after\n");
}

static void another_heaps_block(void *arg)
{
    (void)arg;
    make_tracking();
    zend_mm_heap *other = zend_mm_startup();
    void *q = _zend_mm_alloc(other, 100 ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
    efree(q);
    _zend_mm_free(other, q ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
    printf("after\n");
}

static void overflow_past_the_end(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(ten);
    memset(p, 'a', ten + 1); /* one byte too many */
    efree(p);            /* reported, skipped */
    p[ten] = '\x7f'; /* still ours: the free was skipped; a second byte changed */
    p[ten + 1] = 'b';
    printf("after %d\n", mem_block_check(p, 1));
}

static void underflow_before_the_start(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = (char *)emalloc(twenty_four) + twenty_four - 24;
    p[-1] = 0;
    p[-2] = 0;
    efree(p);
    printf("after\n");
}

static void use_after_free(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(100);
    efree(p);
    p[5] = 'x'; /* written after the free */
    /* The check runs when the block is handed out again: allocate (and keep) blocks of its size
     * until it is, in whatever order the heap reuses its slots. */
    int reused = 0;
    for (int i = 0; i < 1000 && !reused; i++) {
        reused = emalloc(100) == p;
    }
    printf("after %d\n", reused);
}

static void realloc_of_a_bad_pointer(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(40);
    efree(p);
    char *q = erealloc(p, 80); /* reported; a fresh block instead */
    memset(q, 1, 80);
    printf("after %zu\n", zend_mem_block_size(q));
}

static const bad_case bad_cases[] = {
    {"double free (small)", double_free_small},
    {"double free (large)", double_free_large},
    {"double free (huge)", double_free_huge},
    {"interior pointer", interior_pointer},
    {"foreign pointer", foreign_pointer},
    {"another heap's block", another_heaps_block},
    {"overflow past the end", overflow_past_the_end},
    {"underflow before the start", underflow_before_the_start},
    {"use after free", use_after_free},
    {"realloc of a bad pointer", realloc_of_a_bad_pointer},
};

static child_result run_bad_case(int i)
{
    return run_child(bad_cases[i].run, NULL, NULL);
}

static void check_report(const child_result *r, const char *name, const char *const *lines, const char *out)
{
    int ok = r->exited && r->status == 0;
    for (const char *const *l = lines; *l; l++) {
        ok &= strstr(r->err, *l) != NULL;
    }
    ok &= strcmp(r->out, out) == 0;
    CHECK(ok);
    if (!ok) {
        fprintf(stderr, "  case %s: exited=%d status=%d signal=%d\n  stdout: [%s]\n  stderr:\n%s", name, r->exited,
                r->status, r->signal, r->out, r->err);
    }
}

static void test_bad_pointers_are_reported_and_skipped(void)
{
    char head[256];
    {
        child_result r = run_bad_case(0);
        /* The report names the caller (the second efree's line) and the block. */
        snprintf(head, sizeof head, "%s(", __FILE__);
        const char *lines[] = {DASHES, head, " status:\n", "Beginning:  \tFreed\n", "    Start:\tUnknown\n",
                               "      End:\tUnknown\n", NULL};
        check_report(&r, "double free small", lines, "after 7\n");
    }
    {
        child_result r = run_bad_case(1);
        const char *lines[] = {"Beginning:  \tFreed\n", NULL};
        check_report(&r, "double free large", lines, "after\n");
    }
    {
        child_result r = run_bad_case(2);
        const char *lines[] = {"Beginning:  \tFreed\n", NULL};
        check_report(&r, "double free huge", lines, "after\n");
    }
    {
        child_result r = run_bad_case(3);
        const char *lines[] = {"Invalid pointer: (not the start of a block)\n", NULL};
        check_report(&r, "interior", lines, "after 100\n");
    }
    {
        child_result r = run_bad_case(4);
        const char *lines[] = {"Invalid pointer: (not owned by this heap)\n", NULL};
        check_report(&r, "foreign", lines, "after\n");
    }
    {
        child_result r = run_bad_case(5);
        const char *lines[] = {"Invalid pointer: (owned by another heap)\n", NULL};
        check_report(&r, "another heap", lines, "after\n");
    }
    {
        child_result r = run_bad_case(6);
        const char *lines[] = {"Beginning:  \tOK (allocated on " __FILE__ ":",
                               ", 10 bytes)\n    Start:\tOK\n      End:\tOverflown (magic=0x1C0FFE61 instead of "
                               "0x1C0FFEE5)\n          \t1 byte(s) overflown\n" DASHES,
                               NULL};
        check_report(&r, "overflow", lines, "after 0\n");
    }
    {
        child_result r = run_bad_case(7);
        const char *lines[] = {"    Start:\tOverflown (magic=0x0000CC84 instead of 0x2A8FCC84)\n          \t2 byte(s) "
                               "overflown\n      End:\tOK\n",
                               NULL};
        check_report(&r, "underflow", lines, "after\n");
    }
    {
        child_result r = run_bad_case(8);
        const char *lines[] = {"Beginning:  \tFreed, then written to (1 byte(s) changed after the free on " __FILE__ ":",
                               ", 100 bytes)\n", NULL};
        check_report(&r, "use after free", lines, "after 1\n");
    }
    {
        child_result r = run_bad_case(9);
        const char *lines[] = {"Beginning:  \tFreed\n", NULL};
        check_report(&r, "realloc of a bad pointer", lines, "after 80\n");
    }
}

/* ---- Frees from other threads, and tracking switched off --------------------------------- */

static void *efree_there(void *p) { efree(p); return NULL; }
static void efree_elsewhere(void *p)
{
    pthread_t t;
    if (pthread_create(&t, NULL, efree_there, p) != 0 || pthread_join(t, NULL) != 0) {
        abort();
    }
}

/* p, q, p from another thread: p waits on the remote list (its header says so) when it comes
 * again, and the freeing thread reports it before the list is touched. */
static void remote_double_free_apart(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(100), *q = emalloc(100);
    efree_elsewhere(p);
    efree_elsewhere(q);
    efree_elsewhere(p);
    printf("after\n");
}

/* Inside a tracked block, from another thread: nothing is linked through it. */
static void remote_interior_free(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(100);
    efree_elsewhere(p + 8);
    printf("after\n");
}

/* A tracking heap's fresh runs carry no freed marks; switched off, its free slots get them, so
 * a slot never handed out (here: the next one of a run made while tracking, a tracked 64-byte
 * block taking a 128-byte slot) is caught when freed, even through the constant-size free. */
static void free_never_handed_out_after_tracking(void *arg)
{
    (void)arg;
    make_tracking();
    efree(emalloc(64));
    CHECK_EQ(zend_mm_set_tracking(NULL, 0), SUCCESS);
    char *a = emalloc(128);
    efree_size(a + 128, 128);
    printf("after\n");
}

static void test_bad_frees_from_other_threads_and_after_tracking_are_caught(void)
{
    static const struct {
        void (*run)(void *);
        const char *says;
    } cases[] = {
        {remote_double_free_apart, "double free: the block was freed already (freed again from another thread)"},
        {remote_interior_free, "not the start of a block"},
        {free_never_handed_out_after_tracking, "double free: the block was the last one freed in its size class"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        child_result r = run_child(cases[i].run, NULL, NULL);
        CHECK(!r.exited && r.signal == SIGABRT);
        CHECK_CONTAINS(r.err, "zend_mm_heap corrupted");
        CHECK_CONTAINS(r.err, cases[i].says);
        CHECK(strstr(r.out, "after") == NULL);
    }
}

/* A block freed from another thread is not live: tracking may be switched on and off. */
static void switch_tracking_after_frees_elsewhere(void *arg)
{
    (void)arg;
    start_memory_manager();
    efree_elsewhere(emalloc(100));
    printf("%d ", zend_mm_set_tracking(NULL, 1) == SUCCESS);
    efree_elsewhere(emalloc(100));
    printf("%d\n", zend_mm_set_tracking(NULL, 0) == SUCCESS);
}

static void test_tracking_switches_once_the_last_block_was_freed_elsewhere(void)
{
    child_result r = run_child(switch_tracking_after_frees_elsewhere, NULL, NULL);
    CHECK(r.exited && r.status == 0);
    CHECK(strcmp(r.out, "1 1\n") == 0);
}

static void test_checks_report_sites_and_guards(void)
{
    zend_mm_heap *heap = zend_mm_startup();
    zend_mm_heap *old = zend_mm_set_heap(heap);
    CHECK_EQ(zend_mm_set_tracking(heap, 1), SUCCESS);
    CHECK_EQ(zend_mm_is_tracking(heap), 1);
    char *p = emalloc(10);
    CHECK_EQ(zend_mem_block_size(p), 10); /* the requested size, as PHP 5.3's debug build */
    CHECK_EQ(zend_mm_set_tracking(heap, 0), FAILURE); /* not while blocks are live */
    CHECK_EQ(mem_block_check(p, 1), 1);
    /* Growth keeps contents and the block's tracking. */
    memcpy(p, "0123456789", 10);
    p = erealloc(p, 5000);
    CHECK(memcmp(p, "0123456789", 10) == 0);
    CHECK_EQ(zend_mem_block_size(p), 5000);
    p = erealloc(p, 3 << 20);
    CHECK(memcmp(p, "0123456789", 10) == 0);
    p = erealloc(p, 3);
    CHECK(memcmp(p, "012", 3) == 0);
    CHECK_EQ(zend_mem_block_size(p), 3);
    CHECK_EQ(full_mem_check(1), 0);
    p[3] = 0; /* one past the end */
    CHECK_EQ(mem_block_check(p, 1), 0);
    CHECK_EQ(full_mem_check(1), 1);
    p[3] = (char)0xE5; /* the guard's first byte again */
    CHECK_EQ(full_mem_check(1), 0);
    efree(p);
    CHECK_EQ(zend_memory_usage(0), 0);
    CHECK_EQ(zend_mm_set_tracking(heap, 0), SUCCESS);
    zend_mm_stats st;
    CHECK_EQ(zend_mm_get_stats(heap, &st), SUCCESS);
    CHECK_EQ(st.counting, 0); /* tracking's counters went with it */
    CHECK_EQ(zend_mem_block_size(p = emalloc(10)), 16); /* bin size again */
    efree(p);
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
}

static void test_a_valid_block_report(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = emalloc(42);
    printf("%d\n", mem_block_check(p, 0));
}

static void test_mem_block_check_prints_the_allocation_site(void)
{
    child_result r = run_child(test_a_valid_block_report, NULL, NULL);
    const char *lines[] = {DASHES, " status:\n", "Beginning:  \tOK (allocated on " __FILE__ ":",
                           ", 42 bytes)\n    Start:\tOK\n      End:\tOK\n" DASHES, NULL};
    check_report(&r, "valid block", lines, "1\n");
}

/* The location-only entry points the emalloc(), erealloc() and efree() macros call hand the
 * caller's site on: the block names where it was made and resized, and a double free where it
 * happened. */
static void sites_through_the_macros_entry_points(void *arg)
{
    (void)arg;
    make_tracking();
    char *p = _emalloc_at(42, "made_here.c", 101);
    printf("%d\n", mem_block_check(p, 0));
    p = _erealloc_at(p, 5000, "grown_here.c", 202);
    printf("%d\n", mem_block_check(p, 0));
    _efree_at(p, "freed_here.c", 303);
    _efree_at(p, "freed_again_here.c", 404);
    printf("after\n");
}

static void test_the_macros_entry_points_carry_the_site(void)
{
    child_result r = run_child(sites_through_the_macros_entry_points, NULL, NULL);
    const char *lines[] = {"Beginning:  \tOK (allocated on made_here.c:101, 42 bytes)\n",
                           "Beginning:  \tOK (allocated on grown_here.c:202, 5000 bytes)\n",
                           "freed_again_here.c(404)", "Beginning:  \tFreed\n", NULL};
    check_report(&r, "location entry points", lines, "1\n1\nafter\n");
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--probe") == 0) {
        return probe(argv[2]);
    }
    RUN(test_leak_report_is_php_53s);
    RUN(test_leak_report_names_the_script);
    RUN(test_no_report_without_tracking_silently_or_when_disabled);
    RUN(test_a_message_handler_gets_phps_protocol);
    RUN(test_bad_debug_value_is_refused);
    RUN(test_stats_count_what_was_done);
    RUN(test_tracking_stats_name_the_top_sites);
    RUN(test_stats_environment_prints_json_that_parses);
    RUN(test_fault_injection_fails_the_allocation_after_the_nth);
    RUN(test_max_allocs_api);
    RUN(test_bad_pointers_are_reported_and_skipped);
    RUN(test_checks_report_sites_and_guards);
    RUN(test_the_macros_entry_points_carry_the_site);
    RUN(test_mem_block_check_prints_the_allocation_site);
    RUN(test_bad_frees_from_other_threads_and_after_tracking_are_caught);
    RUN(test_tracking_switches_once_the_last_block_was_freed_elsewhere);
    return test_summary();
}
