/*
 * User storage (PHP 5.3's zend_mm_mem_handlers through zend_mm_startup_ex): a heap that runs
 * entirely on a static arena, every segment coming from and going back to it; storage failures;
 * startup argument errors; compaction.
 */
#include "test.h"

#include <setjmp.h>

/* ---- An arena storage: 4 KiB units of a static array, first fit ---- */

#define ARENA_UNITS 16384 /* 64 MiB */
#define UNIT 4096
static unsigned char arena[ARENA_UNITS * UNIT] __attribute__((aligned(4096)));
static unsigned char unit_used[ARENA_UNITS];

static struct {
    void *params_seen;
    int inits, dtors, compacts, allocs, frees, reallocs;
    size_t outstanding;     /* segments handed out and not yet returned */
    size_t misalign;        /* offset of returned segments from a unit boundary (0 or 16) */
    size_t capacity_units;  /* the arena pretends to be this small */
    int fail_first_alloc;
} arena_state;

static zend_mm_storage arena_storage;

static zend_mm_storage *arena_init(void *params)
{
    arena_state.params_seen = params;
    arena_state.inits++;
    arena_storage.data = params;
    return &arena_storage;
}

static void arena_dtor(zend_mm_storage *storage)
{
    (void)storage;
    arena_state.dtors++;
}

static void arena_compact(zend_mm_storage *storage)
{
    (void)storage;
    arena_state.compacts++;
}

static size_t units_for(size_t size)
{
    return (size + arena_state.misalign + UNIT - 1) / UNIT;
}

static zend_mm_segment *arena_alloc(zend_mm_storage *storage, size_t size)
{
    (void)storage;
    if (arena_state.fail_first_alloc) {
        arena_state.fail_first_alloc = 0;
        return NULL;
    }
    size_t need = units_for(size), run = 0;
    size_t limit = arena_state.capacity_units ? arena_state.capacity_units : ARENA_UNITS;
    for (size_t i = 0; i < limit; i++) {
        run = unit_used[i] ? 0 : run + 1;
        if (run == need) {
            size_t first = i + 1 - need;
            memset(unit_used + first, 1, need);
            arena_state.allocs++;
            arena_state.outstanding++;
            return (zend_mm_segment *)(arena + first * UNIT + arena_state.misalign);
        }
    }
    return NULL;
}

static void arena_free(zend_mm_storage *storage, zend_mm_segment *segment)
{
    (void)storage;
    /* The heap keeps the segment's size in its header, as PHP 5.3's storages expect. */
    size_t first = ((unsigned char *)segment - arena) / UNIT;
    memset(unit_used + first, 0, units_for(segment->size));
    arena_state.frees++;
    arena_state.outstanding--;
}

static zend_mm_segment *arena_realloc(zend_mm_storage *storage, zend_mm_segment *segment, size_t size)
{
    zend_mm_segment *fresh = arena_alloc(storage, size);
    if (fresh) {
        memcpy(fresh, segment, segment->size < size ? segment->size : size);
        arena_free(storage, segment);
        arena_state.reallocs++;
    }
    return fresh;
}

static const zend_mm_mem_handlers arena_handlers = {"arena", arena_init, arena_dtor, arena_compact,
                                                    arena_alloc, arena_realloc, arena_free};
/* The same arena without a realloc handler: the heap moves huge blocks itself. */
static const zend_mm_mem_handlers arena_handlers_no_realloc = {"arena", arena_init, arena_dtor, arena_compact,
                                                               arena_alloc, NULL, arena_free};

static int in_arena(const void *p)
{
    return (const unsigned char *)p >= arena && (const unsigned char *)p < arena + sizeof arena;
}

static void reset_arena(size_t misalign)
{
    memset(&arena_state, 0, sizeof arena_state);
    memset(unit_used, 0, sizeof unit_used);
    arena_state.misalign = misalign;
}

/* A mixed workload on the current heap; every block must come from the arena. */
static void workload(void)
{
    static void *blocks[3000];
    int ok_range = 1, ok_data = 1;
    for (int i = 0; i < 3000; i++) {
        size_t size = (size_t)(i * 37 % 3000) + (i % 100 == 0 ? 20000 : 0) + (i % 1000 == 0 ? 3000000 : 0);
        blocks[i] = emalloc(size);
        memset(blocks[i], i & 0xff, size < 64 ? size : 64);
        ok_range &= in_arena(blocks[i]);
    }
    for (int i = 0; i < 3000; i += 2) {
        efree(blocks[i]);
    }
    char *s = NULL;
    for (int i = 1; i <= 40; i++) {
        s = erealloc(s, (size_t)i * 100000); /* grows through large into huge blocks */
        s[0] = 'x';
        ok_range &= in_arena(s);
    }
    s = erealloc(s, 2500000); /* huge shrink */
    ok_data &= s[0] == 'x';
    efree(s);
    for (int i = 1; i < 3000; i += 2) {
        ok_data &= ((unsigned char *)blocks[i])[0] == (unsigned char)(i & 0xff);
        if (i % 7 == 0) {
            efree(blocks[i]);
        }
    }
    CHECK(ok_range);
    CHECK(ok_data);
}

static void run_heap_on_arena(const zend_mm_mem_handlers *handlers, size_t misalign)
{
    reset_arena(misalign);
    int params = 42;
    zend_mm_heap *heap = zend_mm_startup_ex(handlers, 256 * 1024, 0, 1, &params);
    CHECK(heap != NULL);
    CHECK(arena_state.inits == 1 && arena_state.params_seen == &params);
    CHECK(in_arena(heap));
    zend_mm_storage *storage = zend_mm_get_storage(heap);
    CHECK(storage == &arena_storage && storage->handlers == handlers && storage->data == &params);
    CHECK_EQ(arena_state.outstanding, 1); /* the first segment holds the heap */

    zend_mm_heap *old = zend_mm_set_heap(heap);
    CHECK_EQ(zend_memory_usage(1), 256 * 1024);
    for (int request = 0; request < 3; request++) {
        workload();
        CHECK(full_mem_check(1) == 0);
        shutdown_memory_manager(1, 0); /* request end: the heap stays, segments are cached */
        CHECK(zend_mm_get_heap() == heap);
        CHECK_EQ(zend_memory_usage(0), 0);
    }
    /* Large blocks stay page aligned whatever the storage returns. */
    void *large = emalloc(10000);
    CHECK(((uintptr_t)large % 4096) == 0);
    efree(large);
    CHECK(arena_state.allocs > 10);
    if (handlers->_realloc) {
        CHECK(arena_state.reallocs > 0);
    }
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
    CHECK_EQ(arena_state.outstanding, 0); /* every segment went back */
    CHECK_EQ(arena_state.frees, arena_state.allocs);
    CHECK_EQ(arena_state.dtors, 1);
    size_t used = 0;
    for (size_t i = 0; i < ARENA_UNITS; i++) {
        used += unit_used[i];
    }
    CHECK_EQ(used, 0);
}

static void test_heap_on_an_aligned_arena(void) { run_heap_on_arena(&arena_handlers, 0); }
static void test_heap_on_an_unaligned_arena(void) { run_heap_on_arena(&arena_handlers, 16); }
static void test_storage_without_realloc(void) { run_heap_on_arena(&arena_handlers_no_realloc, 16); }

/* ---- Storage failures ---- */

static void exhaust_the_arena(void *arg)
{
    (void)arg;
    reset_arena(0);
    arena_state.capacity_units = 1024; /* 4 MiB */
    zend_mm_heap *heap = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 0, 0, NULL);
    zend_mm_set_heap(heap);
    printf("line %d\n", __LINE__ + 3);
    fflush(stdout);
    for (;;) {
        emalloc(100000);
    }
}

static void test_storage_exhaustion_is_out_of_memory(void)
{
    child_result r = run_child(exhaust_the_arena, NULL, NULL);
    char want[256];
    snprintf(want, sizeof want,
             "\nFatal error: Out of memory (allocated 4194304 bytes) (tried to allocate 100000 bytes) in %s on line %d\n",
             __FILE__, atoi(r.out + 5));
    CHECK_EXIT(r, 255, want);
}

static void no_first_segment(void *arg)
{
    (void)arg;
    reset_arena(0);
    arena_state.fail_first_alloc = 1;
    zend_mm_heap *heap = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 0, 0, NULL);
    printf("heap %s dtors %d outstanding %zu\n", heap ? "made" : "NULL", arena_state.dtors, arena_state.outstanding);
}

static void test_no_first_segment_gives_null(void)
{
    child_result r = run_child(no_first_segment, NULL, NULL);
    CHECK_EXIT(r, 0, "Cannot allocate heap for zend_mm storage [arena]\n");
    CHECK(strcmp(r.out, "heap NULL dtors 1 outstanding 0\n") == 0);
}

static zend_mm_storage *failing_init(void *params)
{
    (void)params;
    return NULL;
}

static const zend_mm_mem_handlers broken_handlers = {"broken", failing_init, arena_dtor, arena_compact,
                                                     arena_alloc, arena_realloc, arena_free};
static const zend_mm_mem_handlers incomplete_handlers = {"incomplete", arena_init, NULL, NULL, NULL, NULL, NULL};

static void startup_with(void *arg)
{
    switch ((int)(intptr_t)arg) {
    case 0: zend_mm_startup_ex(&broken_handlers, 256 * 1024, 0, 0, NULL); break;
    case 1: zend_mm_startup_ex(&arena_handlers, 3000 * 1024, 0, 0, NULL); break;
    case 2: zend_mm_startup_ex(&arena_handlers, 32 * 1024, 0, 0, NULL); break;
    case 3: zend_mm_startup_ex(&arena_handlers, (size_t)2 << 30, 0, 0, NULL); break;
    case 4: zend_mm_startup_ex(NULL, 256 * 1024, 0, 0, NULL); break;
    default: zend_mm_startup_ex(&incomplete_handlers, 256 * 1024, 0, 0, NULL); break;
    }
}

static void test_startup_argument_errors(void)
{
    child_result r = run_child(startup_with, (void *)0, NULL);
    CHECK_EXIT(r, 255, "Cannot initialize zend_mm storage [broken]\n");
    r = run_child(startup_with, (void *)1, NULL);
    CHECK_EXIT(r, 255, "'block_size' must be a power of two\n");
    r = run_child(startup_with, (void *)2, NULL);
    CHECK_EXIT(r, 255, "'block_size' is too small (at least 64K)\n");
    r = run_child(startup_with, (void *)3, NULL);
    CHECK_EXIT(r, 255, "'block_size' is too large (at most 1G)\n");
    r = run_child(startup_with, (void *)4, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_startup_ex: the storage handlers are NULL\n");
    r = run_child(startup_with, (void *)5, NULL);
    CHECK_SIGNAL(r, SIGABRT, "zend_mm_startup_ex: the storage handlers need init, _alloc and _free\n");
}

/* ---- The reserve ---- */

/* One-page blocks that fit before the heap needs a second segment. */
static int pages_in_first_segment(zend_mm_heap *heap)
{
    zend_mm_heap *old = zend_mm_set_heap(heap);
    size_t real = zend_memory_usage(1);
    int n = 0;
    while (zend_memory_usage(1) == real) {
        emalloc(4096);
        n++;
    }
    zend_mm_set_heap(old);
    return n - 1;
}

static jmp_buf bailout;
static size_t real_in_handler_before, real_in_handler_after;

static void handler(int type, const char *file, uint32_t line, const char *message)
{
    (void)type, (void)file, (void)line, (void)message;
    real_in_handler_before = zend_memory_usage(1);
    emalloc(4096);
    emalloc(4096);
    real_in_handler_after = zend_memory_usage(1);
    longjmp(bailout, 1);
}

static void test_reserve_is_held_back_for_the_error_handler(void)
{
    reset_arena(0);
    zend_mm_heap *plain = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 0, 0, NULL);
    zend_mm_heap *reserving = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 8192, 0, NULL);
    zend_mm_heap *old = zend_mm_set_heap(reserving);
    CHECK_EQ(zend_memory_usage(0), 0); /* the reserve is not usage */
    zend_mm_set_heap(old);
    CHECK_EQ(pages_in_first_segment(plain), pages_in_first_segment(reserving) + 2);

    /* At the limit, the reserve's pages are what the handler allocates from. */
    zend_mm_shutdown(reserving, 0, 1);
    old = zend_mm_set_heap(reserving);
    zend_set_memory_limit(zend_memory_usage(1));
    zend_mm_error_handler_t previous = zend_mm_set_error_handler(handler);
    if (setjmp(bailout) == 0) {
        for (;;) {
            emalloc(4096);
        }
    }
    zend_mm_set_error_handler(previous);
    CHECK_EQ(real_in_handler_after, real_in_handler_before); /* no new segment was needed */
    zend_mm_set_heap(old);
    zend_mm_shutdown(plain, 1, 1);
    zend_mm_shutdown(reserving, 1, 1);
    CHECK_EQ(arena_state.outstanding, 0);
}

/* ---- The segment cache ---- */

/* One request that needs `segments` segments at its peak (one large block fills each, the first
 * segment's included). */
static void request_of(int segments)
{
    size_t block = 256 * 1024 - 2 * 4096;
    for (int i = 0; i < segments; i++) {
        emalloc(block);
    }
    shutdown_memory_manager(1, 0);
}

static void test_segment_cache_follows_recent_requests(void)
{
    reset_arena(0);
    zend_mm_heap *heap = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 0, 0, NULL);
    zend_mm_heap *old = zend_mm_set_heap(heap);
    /* Requests whose peak wobbles between 6 and 9 segments: once the cache has seen 9, it keeps
     * them and no request maps a segment again. */
    for (int i = 0; i < 10; i++) {
        request_of(i % 2 ? 9 : 6);
    }
    int allocs = arena_state.allocs;
    for (int i = 0; i < 20; i++) {
        request_of(i % 3 ? 6 : 9);
    }
    CHECK_EQ(arena_state.allocs, allocs);

    /* Within a request, segments emptied and needed again are reused, not unmapped. */
    void *blocks[9];
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 8; i++) {
            blocks[i] = emalloc(256 * 1024 - 2 * 4096);
        }
        for (int i = 0; i < 8; i++) {
            efree(blocks[i]);
        }
    }
    CHECK_EQ(arena_state.allocs, allocs);
    shutdown_memory_manager(1, 0);

    /* After a spike, small requests let the cache shrink back. */
    request_of(40);
    CHECK(arena_state.outstanding >= 40);
    for (int i = 0; i < 300; i++) {
        request_of(2);
    }
    CHECK(arena_state.outstanding <= 3);
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
    CHECK_EQ(arena_state.outstanding, 0);
}

static void test_huge_blocks_are_reused_within_a_request(void)
{
    reset_arena(0);
    zend_mm_heap *heap = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 0, 0, NULL);
    zend_mm_heap *old = zend_mm_set_heap(heap);
    char *a = emalloc(3000000);
    memset(a, 1, 3000000);
    int allocs = arena_state.allocs;
    size_t real = zend_memory_usage(1);
    efree(a);
    CHECK_EQ(zend_memory_usage(1), real); /* kept for reuse */
    char *b = emalloc(2900000);           /* close enough in size: the same storage serves it */
    CHECK_EQ(arena_state.allocs, allocs);
    CHECK_EQ(zend_memory_usage(1), real);
    CHECK_EQ(zend_mem_block_size(b), 2900000 + 4096 - 2900000 % 4096);
    CHECK(mem_block_check(a, 1) == (a == b)); /* the old pointer is dead unless it is b */
    b = erealloc(b, 3000000);                 /* grows within the storage it has */
    CHECK_EQ(arena_state.reallocs, 0);
    CHECK_EQ(zend_mem_block_size(b), 3002368);
    efree(b);
    char *c = emalloc(9000000); /* bigger: the cached block grows through the storage */
    CHECK_EQ(arena_state.allocs, allocs + 1);
    CHECK_EQ(arena_state.reallocs, 1);
    c[8999999] = 1;
    efree(c);
    /* A lower limit is met by giving cached memory back. */
    CHECK(zend_set_memory_limit(zend_memory_usage(1) - 1) == SUCCESS);
    CHECK_EQ(zend_memory_usage(1), 256 * 1024);
    zend_set_memory_limit((size_t)-1);
    c = emalloc(9000000);
    efree(c);
    CHECK(zend_mm_gc(heap) >= 9000000); /* gc gives cached memory back */
    CHECK_EQ(zend_memory_usage(1), 256 * 1024);
    emalloc(5000000);
    shutdown_memory_manager(1, 0); /* and so does the end of the request */
    CHECK_EQ(arena_state.outstanding, 1);
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
}

/* ---- Compaction (ZEND_MM_COMPACT) ---- */

static void test_compaction_after_big_requests(void)
{
    reset_arena(0);
    zend_mm_heap *heap = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 0, 0, NULL);
    zend_mm_heap *old = zend_mm_set_heap(heap);
    emalloc(100);
    shutdown_memory_manager(1, 0);
    CHECK_EQ(arena_state.compacts, 0); /* a small request: real peak below the threshold */
    for (int i = 0; i < 40; i++) {
        emalloc(100000);
    }
    shutdown_memory_manager(1, 0);
    CHECK_EQ(arena_state.compacts, 1); /* real peak above the 2M default */
    zend_mm_set_heap(old);
    zend_mm_shutdown(heap, 1, 1);
}

static int probe(const char *mode)
{
    if (strcmp(mode, "compact") == 0) {
        reset_arena(0);
        zend_mm_heap *heap = zend_mm_startup_ex(&arena_handlers, 256 * 1024, 0, 0, NULL);
        zend_mm_set_heap(heap);
        for (int i = 0; i < 12; i++) {
            emalloc(100000); /* a real peak of about 1.5 MiB */
        }
        shutdown_memory_manager(1, 0);
        printf("compacts %d\n", arena_state.compacts);
        return 0;
    }
    return 2;
}

static void test_compaction_threshold_comes_from_the_environment(void)
{
    child_result r = run_self("compact", NULL);
    CHECK(strcmp(r.out, "compacts 0\n") == 0);
    const char *low[] = {"ZEND_MM_COMPACT=1M", NULL};
    r = run_self("compact", low);
    CHECK(strcmp(r.out, "compacts 1\n") == 0);
    const char *never[] = {"ZEND_MM_COMPACT=0", NULL};
    r = run_self("compact", never);
    CHECK(strcmp(r.out, "compacts 0\n") == 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--probe") == 0) {
        return probe(argv[2]);
    }
    RUN(test_heap_on_an_aligned_arena);
    RUN(test_heap_on_an_unaligned_arena);
    RUN(test_storage_without_realloc);
    RUN(test_storage_exhaustion_is_out_of_memory);
    RUN(test_no_first_segment_gives_null);
    RUN(test_startup_argument_errors);
    RUN(test_reserve_is_held_back_for_the_error_handler);
    RUN(test_segment_cache_follows_recent_requests);
    RUN(test_huge_blocks_are_reused_within_a_request);
    RUN(test_compaction_after_big_requests);
    RUN(test_compaction_threshold_comes_from_the_environment);
    return test_summary();
}
