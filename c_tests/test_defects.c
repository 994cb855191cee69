/*
 * Regression tests for the defects an independent review, adversarial tests and PHP's own test
 * suite found (one test per defect, named after what must hold). Each of them failed on the
 * library before its fix. make test runs this binary once per storage (ZEND_MM_MEM_TYPE).
 *
 * Behaviour that ends a process (corruption aborts, fatal errors, hangs) runs in child processes;
 * a child that could hang arms alarm() first, so a hang shows as SIGALRM instead of a stuck test.
 */
#include "test.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>

/* Generous: a child that has not finished by then is stuck, not slow. */
#define HANG_GUARD_SECONDS 60

/* ---------------------------------------------------------------------------------------------- */
/* The memory limit after an error handler bails out (defect 1)                                   */

static jmp_buf bailout;
static int reporting_in_handler, handled_count;
static char handled_message[256];
static size_t handler_alloc;

static void bailing_handler(int type, const char *file, uint32_t line, const char *message)
{
    (void)type;
    (void)file;
    (void)line;
    handled_count++;
    snprintf(handled_message, sizeof handled_message, "%s", message);
    reporting_in_handler = zend_alloc_in_memory_limit_error_reporting();
    if (handler_alloc) {
        /* The handler may allocate beyond the limit while a limit error is reported. */
        char *note = emalloc(handler_alloc);
        note[handler_alloc - 1] = 1;
        efree(note);
    }
    longjmp(bailout, 1);
}

static int limit_error(void)
{
    return strstr(handled_message, "Allowed memory size of ") == handled_message;
}

static void test_the_limit_is_back_once_the_handler_bailed_out(void)
{
    shutdown_memory_manager(1, 0);
    zend_mm_set_error_handler(bailing_handler);
    CHECK(zend_set_memory_limit(8 << 20) == SUCCESS);
    handler_alloc = 3 << 20;
    handled_count = 0;
    if (setjmp(bailout) == 0) {
        emalloc((size_t)1 << 30);
        CHECK(!"a 1 GiB block under an 8 MiB limit");
    }
    CHECK(limit_error());
    CHECK(reporting_in_handler);
    /* Out of the handler: the report is over and the limit applies again at once. */
    CHECK(!zend_alloc_in_memory_limit_error_reporting());
    if (setjmp(bailout) == 0) {
        char *p = emalloc((size_t)1 << 30);
        p[0] = 1;
        CHECK(!"a 1 GiB block after the bailout");
    }
    CHECK_EQ(handled_count, 2);
    CHECK(limit_error());
    CHECK(!zend_alloc_in_memory_limit_error_reporting());
    zend_mm_set_error_handler(NULL);
    shutdown_memory_manager(1, 0);
    zend_set_memory_limit((size_t)-1);
}

static void test_only_memory_errors_suspend_the_limit(void)
{
    zend_mm_set_error_handler(bailing_handler);
    handler_alloc = 0;
    if (setjmp(bailout) == 0) {
        safe_emalloc((size_t)1 << 62, 8, 0);
    }
    CHECK_CONTAINS(handled_message, "Possible integer overflow in memory allocation");
    CHECK(!reporting_in_handler);
    if (setjmp(bailout) == 0) {
        estrdup(NULL);
    }
    CHECK_CONTAINS(handled_message, "estrdup(): the string is NULL");
    CHECK(!reporting_in_handler);
    CHECK(!zend_alloc_in_memory_limit_error_reporting());
    zend_mm_set_error_handler(NULL);
}

static void test_a_hundred_thousand_bailouts_cost_no_memory(void)
{
    shutdown_memory_manager(1, 0);
    zend_mm_set_error_handler(bailing_handler);
    CHECK(zend_set_memory_limit(8 << 20) == SUCCESS);
    handler_alloc = 1 << 20;
    handled_count = 0;
    size_t real_after_first = 0;
    int limit_errors = 0, rearmed = 0;
    for (volatile int i = 0; i < 100000; i++) {
        if (setjmp(bailout) == 0) {
            emalloc((size_t)64 << 20);
        }
        limit_errors += limit_error();
        rearmed += !zend_alloc_in_memory_limit_error_reporting();
        if (i == 0) {
            real_after_first = zend_memory_usage(1);
        }
    }
    CHECK_EQ(handled_count, 100000);
    CHECK_EQ(limit_errors, 100000);
    CHECK_EQ(rearmed, 100000);
    CHECK_EQ(zend_memory_usage(1), real_after_first);
    CHECK_EQ(full_mem_check(1), 0);
    zend_mm_set_error_handler(NULL);
    shutdown_memory_manager(1, 0);
    zend_set_memory_limit((size_t)-1);
}

/* ---------------------------------------------------------------------------------------------- */
/* Pointer queries and frees racing with another thread's unmapping (defects 2 and 11)             */

typedef struct {
    _Atomic(uintptr_t) published; /* the block the owner has live (or just freed) */
    atomic_int done;
    int rounds;
} churn_state;

/* Allocates a huge block, frees it and hands its memory back to storage at once (zend_mm_gc drops
 * the cache of freed huge blocks), publishing each block; now and then a large block and a request
 * end, which unmaps segments. */
static void *unmapping_owner(void *arg)
{
    churn_state *s = arg;
    zend_mm_heap *heap = zend_mm_get_heap();
    for (int i = 0; i < s->rounds; i++) {
        char *p = emalloc(i % 64 == 63 ? (size_t)1 << 20 : (size_t)3 << 20);
        p[0] = 1;
        atomic_store(&s->published, (uintptr_t)p);
        efree(p);
        zend_mm_gc(heap);
        if (i % 256 == 255) {
            shutdown_memory_manager(1, 0);
        }
    }
    atomic_store(&s->done, 1);
    return NULL;
}

static void query_while_another_thread_unmaps(void *arg)
{
    (void)arg;
    churn_state s = {0, 0, 20000};
    pthread_t owner;
    emalloc(1); /* this thread has a heap of its own */
    pthread_create(&owner, NULL, unmapping_owner, &s);
    long queries = 0, claimed = 0;
    while (!atomic_load(&s.done)) {
        char *p = (char *)atomic_load(&s.published);
        if (!p) {
            continue;
        }
        claimed += is_zend_ptr(p + 4096) + is_zend_ptr(p + 65536);
        queries += 2;
        if (queries % 64 == 0) {
            claimed += mem_block_check(p, 1);
            queries++;
        }
    }
    pthread_join(owner, NULL);
    printf("queried %d claimed %ld\n", queries > 0, claimed);
}

static void test_pointer_queries_never_touch_another_threads_memory(void)
{
    child_result r = run_child(query_while_another_thread_unmaps, NULL, NULL);
    CHECK_EXIT(r, 0, "");
    CHECK_CONTAINS(r.out, "queried 1 claimed 0\n"); /* never this thread's memory, never a fault */
}

/* A block the owner freed and whose memory went back to storage; the owner then stays idle, so
 * the address is not reused. */
static void *free_and_publish(void *arg)
{
    churn_state *s = arg;
    char *p = emalloc((size_t)3 << 20);
    p[0] = 1;
    efree(p);
    zend_mm_gc(zend_mm_get_heap());
    atomic_store(&s->published, (uintptr_t)p);
    while (!atomic_load(&s->done)) {
        usleep(1000);
    }
    return NULL;
}

static void free_another_threads_stale_block(void *arg)
{
    (void)arg;
    churn_state s = {0, 0, 0};
    pthread_t owner;
    emalloc(1); /* this thread has a heap of its own */
    pthread_create(&owner, NULL, free_and_publish, &s);
    char *p;
    while (!(p = (char *)atomic_load(&s.published))) {
        usleep(1000);
    }
    efree(p); /* aborts: no heap's block any more */
}

static void test_freeing_another_threads_stale_block_is_diagnosed(void)
{
    child_result r = run_child(free_another_threads_stale_block, NULL, NULL);
    CHECK_CORRUPTED(r);
}

/* ---------------------------------------------------------------------------------------------- */
/* fork while another thread makes and destroys heaps (defect 5)                                    */

static atomic_int stop_heaps;

static void *heap_maker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_heaps)) {
        zend_mm_heap *h = zend_mm_startup();
        void *p = zend_mm_alloc(h, 5000);
        void *q = zend_mm_alloc(h, (size_t)3 << 20);
        zend_mm_free(h, p);
        zend_mm_free(h, q);
        zend_mm_shutdown(h, 1, 1);
    }
    return NULL;
}

static void test_a_forked_child_never_waits_for_a_lock(void)
{
    pthread_t maker;
    atomic_store(&stop_heaps, 0);
    pthread_create(&maker, NULL, heap_maker, NULL);
    int clean = 0, forks = 2000;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(HANG_GUARD_SECONDS);
            zend_mm_heap *h = zend_mm_startup();
            void *p = zend_mm_alloc(h, (size_t)3 << 20);
            zend_mm_free(h, p);
            zend_mm_shutdown(h, 1, 1);
            efree(emalloc(100));
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        clean += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    atomic_store(&stop_heaps, 1);
    pthread_join(maker, NULL);
    CHECK_EQ(clean, forks);
}

/* ---------------------------------------------------------------------------------------------- */
/* Custom heaps own no pointer (defect 7)                                                          */

static void test_a_custom_heap_owns_no_pointer(void)
{
    zend_mm_heap *heap = zend_mm_get_heap();
    CHECK(is_zend_ptr(heap));
    zend_mm_set_custom_handlers(heap, malloc, free, realloc);
    CHECK(!is_zend_ptr(heap));
    char *p = emalloc(10);
    CHECK(!is_zend_ptr(p));
    efree(p);
    zend_mm_set_custom_handlers(heap, NULL, NULL, NULL);
    CHECK(is_zend_ptr(heap));
}

static int probe_libc_heap(void)
{
    char *p = emalloc(10);
    int owned = is_zend_ptr(p) || is_zend_ptr(zend_mm_get_heap());
    efree(p);
    printf("owned %d\n", owned);
    return 0;
}

static void test_use_zend_alloc_0_owns_no_pointer(void)
{
    const char *const env[] = {"USE_ZEND_ALLOC=0", NULL};
    child_result r = run_self("libc_heap", env);
    CHECK_EXIT(r, 0, "");
    CHECK_CONTAINS(r.out, "owned 0\n");
}

static void *efree_and_realloc_elsewhere(void *arg)
{
    char **blocks = arg;
    efree(blocks[0]);
    blocks[1] = erealloc(blocks[1], 300);
    return NULL;
}

/* With USE_ZEND_ALLOC=0 every block is the C library's: a thread that has not used the library
 * yet may free or resize another thread's blocks, as with malloc. */
static int probe_libc_blocks_elsewhere(void)
{
    char *blocks[2] = {emalloc(100), emalloc(100)};
    strcpy(blocks[1], "kept");
    pthread_t t;
    if (pthread_create(&t, NULL, efree_and_realloc_elsewhere, blocks) != 0 || pthread_join(t, NULL) != 0) {
        return 2;
    }
    printf("%s\n", blocks[1]);
    efree(blocks[1]);
    return 0;
}

static void test_use_zend_alloc_0_blocks_are_freed_from_any_thread(void)
{
    const char *const env[] = {"USE_ZEND_ALLOC=0", NULL};
    child_result r = run_self("libc_blocks_elsewhere", env);
    CHECK_EXIT(r, 0, "");
    CHECK_CONTAINS(r.out, "kept\n");
}

/* ---------------------------------------------------------------------------------------------- */
/* Frees that do not name a block (defect 10)                                                      */

static void *keep(size_t size)
{
    return emalloc(size); /* a neighbour kept live, so a run is not freshly empty */
}

static void free_interior(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree(a + 32); }
static void free_misaligned(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree(a + 3); }
static void realloc_interior(void *arg) { (void)arg; char *a = emalloc(64); erealloc(a + 8, 60); }
static void block_size_interior(void *arg) { (void)arg; char *a = emalloc(64); zend_mem_block_size(a + 8); }
static void free_page_boundary_of_multipage_run(void *arg)
{
    (void)arg;
    /* 320-byte slots fill runs of 5 pages; a page boundary inside the run is not a slot. */
    shutdown_memory_manager(1, 0);
    char *first = emalloc(320); /* the first slot of a fresh run */
    efree(first + 4096);        /* the run's second page: 4096 is no multiple of 320 */
}

static void free_run_tail(void *arg)
{
    (void)arg;
    /* 170 slots of 24 bytes fill 4080 bytes of a one-page run: the last 16 are no slot. */
    shutdown_memory_manager(1, 0);
    char *first = emalloc(24);
    uintptr_t page = (uintptr_t)first & ~(uintptr_t)4095;
    efree((void *)(page + 4080));
}

/* The size-specialised frees (efree_size() with a constant size, and PHP's release ABI) check the
 * block as efree() does. */
static void sized_free_interior(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree_size(a + 32, 64); }
static void sized_free_page_boundary(void *arg)
{
    (void)arg;
    shutdown_memory_manager(1, 0);
    char *first = emalloc(320);
    efree_size(first + 4096, 320);
}
static void sized_double_free(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree_size(a, 64); efree_size(a, 64); }
static void release_abi_free_interior(void *arg) { (void)arg; char *a = emalloc(96); keep(96); _efree_96(a + 48); }

static void double_free(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree(a); efree(a); }

/* A double free that is not the head of its list (b was freed in between) is not caught at once;
 * what walks the list later must report it instead of looping. */
static void double_free_then_gc(void *arg)
{
    (void)arg;
    alarm(HANG_GUARD_SECONDS);
    char *a = emalloc(64), *b = emalloc(64);
    keep(64);
    efree(a);
    efree(b);
    /* A write after free over the second word, where a freed block says it is free: the second
     * free of `a` passes (it is not the list's head either), and only a walk of the list finds
     * it twice. */
    memset(a + 8, 0, 8);
    efree(a);
    zend_mm_gc(zend_mm_get_heap());
    puts("gc returned");
}


/* Freed last, then written over where a freed block says it is free, then freed again: the free
 * takes it (nothing says it is free), so the list holds it twice. The allocation that pops it the
 * second time finds its mark cleared by the first and stops: one hand-out, never two. */
static void double_free_over_mark_at_head(void *arg)
{
    (void)arg;
    char *a = emalloc(64);
    keep(64);
    efree(a);
    memset(a + 8, 0, 8);
    efree(a);
    char *first = emalloc(64), *second = emalloc(64);
    printf("handed out %s\n", first == second ? "twice" : "once");
}

static void double_free_then_limit(void *arg)
{
    (void)arg;
    alarm(HANG_GUARD_SECONDS);
    char *a = emalloc(64), *b = emalloc(64);
    keep(64);
    efree(a);
    efree(b);
    efree(a);
    zend_set_memory_limit(zend_memory_usage(1));
    for (;;) {
        emalloc(100000); /* over the limit: the limit path collects garbage first */
    }
}

static void test_frees_that_name_no_block_are_corruption(void)
{
    void (*cases[])(void *) = {
        free_interior,     free_misaligned,      realloc_interior,       block_size_interior,
        free_run_tail,     free_page_boundary_of_multipage_run, double_free, double_free_then_gc,
        double_free_over_mark_at_head, double_free_then_limit, sized_free_interior,
        sized_free_page_boundary, sized_double_free, release_abi_free_interior,
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        child_result r = run_child(cases[i], NULL, NULL);
        CHECK_CORRUPTED(r);
        if (!(!r.exited && r.signal == SIGABRT)) {
            fprintf(stderr, "  (case %zu)\n", i);
        }
    }
}

/* A freed large block of a few pages is kept whole for the next block of its length, its list links
 * in its first bytes. A program that writes a freed block there must get a report, never a crash
 * or a block handed out twice. Each case frees two 3-page blocks (the list: b, then a). */
#define THREE_PAGES (3 * 4096 - 64)
static void large_link_overwritten(void *arg)
{
    (void)arg;
    char *a = emalloc(THREE_PAGES), *b = emalloc(THREE_PAGES);
    keep(64);
    efree(a);
    efree(b);
    memset(b, 0x5a, 16); /* b's links: a wild pointer */
    emalloc(THREE_PAGES);
    emalloc(THREE_PAGES);
    puts("both handed out");
}
static void large_back_link_overwritten(void *arg)
{
    (void)arg;
    char *a = emalloc(THREE_PAGES), *b = emalloc(THREE_PAGES);
    keep(64);
    efree(a);
    efree(b);
    memcpy(a + sizeof(void *), &a, sizeof a); /* a's back link names a itself, not b */
    emalloc(THREE_PAGES);
    puts("handed out");
}
static void large_link_cleared_then_gc(void *arg)
{
    (void)arg;
    alarm(HANG_GUARD_SECONDS);
    char *a = emalloc(THREE_PAGES), *b = emalloc(THREE_PAGES);
    keep(64);
    efree(a);
    efree(b);
    memset(b, 0, 16); /* b's list ends at b: a is lost */
    emalloc(THREE_PAGES);
    zend_mm_gc(zend_mm_get_heap());
    puts("gc returned");
}

static void test_freed_large_blocks_written_after_free_are_corruption(void)
{
    void (*cases[])(void *) = { large_link_overwritten, large_back_link_overwritten,
                                large_link_cleared_then_gc };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        child_result r = run_child(cases[i], NULL, NULL);
        CHECK_CORRUPTED(r);
        if (!(!r.exited && r.signal == SIGABRT)) {
            fprintf(stderr, "  (case %zu)\n", i);
        }
    }
}

/* The line after "zend_mm_heap corrupted" names the call, the pointer, what was wrong and the
 * caller's file:line. Each child prints the pointer it hands over, the block it belongs to (or
 * NULL) and the line of the call (on the same source line) before the call aborts it. */
static void told(const void *p, const void *block, int line)
{
    printf("%p %p %d\n", p, block, line);
    fflush(stdout);
}

/* A freed small block keeps its list's link in its first word and its free mark in its second (an
 * 8-byte block: the mark in its link). A program that writes a freed block there must never get
 * the memory the link then names, nor the block twice: the allocation that would hand it out
 * reports it. Each child frees a, then b (the list: b, a), writes over b, and prints the address
 * the report must name before the allocation that stops it. */
static char chosen[256]; /* what a link made to point elsewhere names: no free block */
static void small_link_to_chosen_memory(void *arg)
{
    size_t size = *(const size_t *)arg;
    char *a = emalloc(size), *b = emalloc(size);
    keep(size);
    efree(a);
    efree(b);
    void *to = chosen;
    memcpy(b, &to, sizeof to);
    /* A wider slot still carries its mark: b goes out, then the list names `chosen`. An 8-byte
     * slot's link lost its mark: b itself is stopped. */
    if (size > 8) {
        CHECK(emalloc(size) == b);
    }
    told(size > 8 ? (void *)chosen : (void *)b, NULL, __LINE__);
    void *c = emalloc(size);
    printf("handed out %p\n", c);
}
static void small_link_to_chosen_memory_64(void *arg)
{
    (void)arg;
    char *a = emalloc(64), *b = emalloc(64);
    keep(64);
    efree_size(a, 64);
    efree_size(b, 64);
    void *to = chosen;
    memcpy(b, &to, sizeof to);
    CHECK(emalloc(64) == b);
    told(chosen, NULL, __LINE__);
    void *c = emalloc(64);
    printf("handed out %p\n", c);
}
static void small_block_written_over(void *arg)
{
    size_t size = *(const size_t *)arg;
    char *a = emalloc(size), *b = emalloc(size);
    keep(size);
    efree(a);
    efree(b);
    memcpy(b, "a string written after free", size < 28 ? size : 28);
    told(b, NULL, __LINE__);
    void *c = emalloc(size);
    printf("handed out %p\n", c);
}

/* A program that stores a small number into the first field of a block it freed (a count, a
 * length) leaves the slot's mark alone: b goes out, and the list then names that number, which no
 * slot can be; popping it would read that address. */
static void small_link_written_with_a_number(void *arg)
{
    size_t size = *(const size_t *)arg;
    char *a = emalloc(size), *b = emalloc(size);
    keep(size);
    efree(a);
    efree(b);
    size_t count = 1 + size % 4000;
    memcpy(b, &count, sizeof count);
    CHECK(emalloc(size) == b);
    told((void *)count, NULL, __LINE__);
    void *c = emalloc(size);
    printf("handed out %p\n", c);
}

/* The same number deeper in the list, then a second free of a block past it: the free looks for
 * the block on its list, and the walk ends at the number instead of reading memory there. */
static void small_link_written_with_a_number_then_double_free(void *arg)
{
    size_t size = *(const size_t *)arg;
    char *a = emalloc(size), *b = emalloc(size), *c = emalloc(size);
    keep(size);
    efree(a);
    efree(b);
    efree(c);
    size_t count = 2;
    memcpy(b, &count, sizeof count);
    efree(a);
    told((void *)count, NULL, __LINE__);
    for (int i = 0; i < 4; i++) {
        printf("handed out %p\n", emalloc(size));
    }
}

static void test_freed_small_blocks_written_after_free_are_corruption(void)
{
    static const size_t sizes[] = { 8, 16, 64, 1000, 3072 };
    static const char format[] = "the free list of %zu-byte blocks leads to %p, which is no freed block of "
                                 "that size (a block was written after it was freed, or past its end)";
    /* An 8-byte block's link carries its mark: a number written there is caught at the block
     * itself, which the first two cases cover. */
    void (*cases[])(void *) = { small_link_to_chosen_memory, small_block_written_over,
                                small_link_written_with_a_number,
                                small_link_written_with_a_number_then_double_free };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            if (c >= 2 && sizes[i] == 8) {
                continue;
            }
            child_result r = run_child(cases[c], (void *)&sizes[i], NULL);
            void *p = NULL, *block = NULL;
            int line = -1;
            char want[512];
            CHECK(sscanf(r.out, "%p %p %d", &p, &block, &line) == 3);
            snprintf(want, sizeof want, format, sizes[i] == 1000 ? (size_t)1024 : sizes[i], p);
            CHECK_CORRUPTED_AS(r, want);
            if (strstr(r.out, "handed out")) {
                fprintf(stderr, "  (case %zu, %zu bytes)\n", c, sizes[i]);
            }
        }
    }
    child_result r = run_child(small_link_to_chosen_memory_64, NULL, NULL);
    char want[512];
    snprintf(want, sizeof want, format, (size_t)64, (void *)chosen);
    CHECK_CORRUPTED_AS(r, want);
}

static void told_free_interior(void *arg) { (void)arg; char *a = emalloc(64); keep(64); told(a + 32, a, __LINE__); efree(a + 32); }
static void told_realloc_interior(void *arg) { (void)arg; char *a = emalloc(64); keep(64); told(a + 8, a, __LINE__); erealloc(a + 8, 60); }
static void told_block_size_interior(void *arg) { (void)arg; char *a = emalloc(64); told(a + 8, a, __LINE__); zend_mem_block_size(a + 8); }
static void told_double_free(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree(a); told(a, NULL, __LINE__); efree(a); }
/* Frees a block on a thread of its own; the line of that efree. */
static const int efree_elsewhere_line = __LINE__ + 1;
static void *efree_there(void *p) { efree(p); return NULL; }
static void efree_elsewhere(void *p)
{
    pthread_t t;
    if (pthread_create(&t, NULL, efree_there, p) != 0 || pthread_join(t, NULL) != 0) {
        abort();
    }
}

/* Freed twice from other threads with another free of its size between: the second free finds
 * the block marked free (a bin with remote lists, and one without: 3000-byte blocks). */
static void told_remote_double_free_later(void *arg)
{
    size_t size = *(size_t *)arg;
    char *a = emalloc(size), *b = emalloc(size);
    keep(size);
    efree_elsewhere(a);
    efree_elsewhere(b);
    told(a, NULL, efree_elsewhere_line);
    efree_elsewhere(a);
}

/* Freed from another thread, then by its own thread: found on the lists once the remote frees
 * are collected. */
static void told_remote_then_local_free(void *arg)
{
    size_t size = *(size_t *)arg;
    char *a = emalloc(size);
    keep(size);
    efree_elsewhere(a);
    told(a, NULL, __LINE__); efree(a);
}

/* Slots of a fresh run that were never handed out are free: freeing one (here, from a size
 * class's fresh run after a request end) is a double free, never a second copy on the list. */
#define SLOT_112 112
static void told_free_never_handed_out(void *arg)
{
    (void)arg;
    shutdown_memory_manager(1, 0);
    char *a = emalloc(100);
    told(a + 2 * SLOT_112, NULL, __LINE__); efree(a + 2 * SLOT_112);
}
static void told_realloc_never_handed_out(void *arg)
{
    (void)arg;
    shutdown_memory_manager(1, 0);
    char *a = emalloc(100);
    told(a + 2 * SLOT_112, NULL, __LINE__); a = erealloc(a + 2 * SLOT_112, 100);
}
/* The next slot to be handed out, freed through the constant-size path (which has no head check). */
static void told_sized_free_never_handed_out(void *arg)
{
    (void)arg;
    shutdown_memory_manager(1, 0);
    char *a = emalloc(64);
    told(a + 64, NULL, __LINE__); efree_size(a + 64, 64);
}
/* The same from another thread: reported there, before the block is linked anywhere. */
static void told_remote_free_never_handed_out(void *arg)
{
    (void)arg;
    shutdown_memory_manager(1, 0);
    char *a = emalloc(100);
    told(a + 2 * SLOT_112, NULL, efree_elsewhere_line);
    efree_elsewhere(a + 2 * SLOT_112);
}

/* A pointer that starts no block, freed from another thread: reported by that thread before
 * anything is written through it (the remote list's link would land in a live block, or past a
 * huge block's end). arg: {size, offset}. */
static void told_remote_free_inside(void *arg)
{
    const size_t *at = arg;
    char *a = emalloc(at[0]);
    keep(64);
    told(a + at[1], NULL, efree_elsewhere_line);
    efree_elsewhere(a + at[1]);
}
static const int erealloc_elsewhere_line = __LINE__ + 1;
static void *erealloc_there(void *p) { return erealloc(p, 5000); }
static void told_remote_realloc_inside(void *arg)
{
    (void)arg;
    char *a = emalloc(1000);
    keep(1000);
    told(a + 16, NULL, erealloc_elsewhere_line);
    pthread_t t;
    if (pthread_create(&t, NULL, erealloc_there, a + 16) != 0 || pthread_join(t, NULL) != 0) {
        abort();
    }
}

/* Freed twice with another free of its size between: not the list's head, its free mark says. */
static void told_double_free_later(void *arg) { (void)arg; char *a = emalloc(64), *b = emalloc(64); keep(64); efree(a); efree(b); told(a, NULL, __LINE__); efree(a); }
/* erealloc of a block just freed: to a bigger bin, and within its own bin (which would hand the
 * freed block back as if it were live). */
static void told_realloc_freed(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree(a); told(a, NULL, __LINE__); a = erealloc(a, 200); }
static void told_realloc_freed_same_bin(void *arg) { (void)arg; char *a = emalloc(64); keep(64); efree(a); told(a, NULL, __LINE__); a = erealloc(a, 60); }
/* The same with another block freed after it: not the list's head, its free mark says. */
static void told_realloc_freed_later(void *arg) { (void)arg; char *a = emalloc(64), *b = emalloc(64); keep(64); efree(a); efree(b); told(a, NULL, __LINE__); a = erealloc(a, 60); }
/* The same for 8-byte blocks, whose only word is the list's link (which carries their mark): a
 * size known only at run time, and the constant-size calls. */
static volatile size_t eight = 8;
static void told_double_free_later_8(void *arg) { (void)arg; char *a = emalloc(eight), *b = emalloc(eight); keep(8); efree(a); efree(b); told(a, NULL, __LINE__); efree(a); }
static void told_sized_double_free_later_8(void *arg) { (void)arg; char *a = emalloc(8), *b = emalloc(8); keep(8); efree_size(a, 8); efree_size(b, 8); told(a, NULL, __LINE__); efree_size(a, 8); }
static void told_realloc_freed_later_8(void *arg) { (void)arg; char *a = emalloc(eight), *b = emalloc(eight); keep(8); efree(a); efree(b); told(a, NULL, __LINE__); a = erealloc(a, 6); }
static void told_free_never_handed_out_8(void *arg)
{
    (void)arg;
    shutdown_memory_manager(1, 0);
    char *a = emalloc(eight);
    told(a + 2 * 8, NULL, __LINE__); efree(a + 2 * 8);
}
static void told_release_abi(void *arg) { (void)arg; char *a = emalloc(96); keep(96); told(a + 48, a, 0); _efree_96(a + 48); }
static void told_large_double_free(void *arg) { (void)arg; char *a = emalloc(5000); keep(5000); efree(a); told(a, NULL, __LINE__); efree(a); }
static void told_large_interior(void *arg) { (void)arg; char *a = emalloc(5000); keep(5000); told(a + 100, a, __LINE__); efree(a + 100); }
static void told_large_second_page(void *arg) { (void)arg; char *a = emalloc(9000); keep(9000); told(a + 4096, a, __LINE__); efree(a + 4096); }
static void told_malloc_pointer(void *arg) { (void)arg; char *m = malloc(64); told(m, NULL, __LINE__); efree(m); }
static void told_other_heap(void *arg)
{
    (void)arg;
    zend_mm_heap *h = zend_mm_startup();
    char *p = zend_mm_alloc(h, 64);
    told(p, h, __LINE__); efree(p);
}

/* Runs `fn` in a child and checks that the second line is `format` filled in with what the child
 * told: the pointer, the block, this file and the line. */
static void check_told(void (*fn)(void *), const char *format)
{
    child_result r = run_child(fn, NULL, NULL);
    void *p = NULL, *block = NULL;
    int line = -1;
    char want[512];
    CHECK(sscanf(r.out, "%p %p %d", &p, &block, &line) == 3);
    if (strstr(format, "%s")) {
        snprintf(want, sizeof want, format, p, block, __FILE__, line);
    } else {
        snprintf(want, sizeof want, format, p, block);
    }
    CHECK_CORRUPTED_AS(r, want);
}

static void check_told_nothing_before_with(void (*fn)(void *), void *arg, const char *format)
{
    child_result r = run_child(fn, arg, NULL);
    void *p = NULL, *block = NULL;
    int line = -1;
    char want[512];
    CHECK(sscanf(r.out, "%p %p %d", &p, &block, &line) == 3);
    snprintf(want, sizeof want, format, p, __FILE__, line);
    CHECK_CORRUPTED_AS(r, want);
}

static void check_told_nothing_before(void (*fn)(void *), const char *format)
{
    check_told_nothing_before_with(fn, NULL, format);
}

static void test_corruption_names_the_call_the_pointer_and_the_location(void)
{
    check_told(told_free_interior,
               "efree(%p): not the start of a block: 32 bytes into the 64-byte block at %p (called at %s:%d)");
    check_told(told_realloc_interior,
               "erealloc(%p): not the start of a block: 8 bytes into the 64-byte block at %p (called at %s:%d)");
    check_told(told_block_size_interior,
               "zend_mem_block_size(%p): not the start of a block: 8 bytes into the 64-byte block at %p "
               "(called at %s:%d)");
    check_told(told_release_abi,
               "efree(%p): not the start of a block: 48 bytes into the 96-byte block at %p "
               "(the call carried no file:line)");
    check_told(told_large_interior,
               "efree(%p): not the start of a block: 100 bytes into the 8192-byte block at %p (called at %s:%d)");
    check_told(told_large_second_page,
               "efree(%p): not the start of a block: 4096 bytes into the 12288-byte block at %p (called at %s:%d)");
    check_told(told_other_heap, "efree(%p): a block of another heap (zend_mm_heap %p), not of this one "
                                "(called at %s:%d)");
    check_told_nothing_before(told_double_free,
                              "efree(%p): double free: the block was the last one freed in its size class "
                              "(called at %s:%d)");
    check_told_nothing_before(told_double_free_later,
                              "efree(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    check_told_nothing_before(told_realloc_freed,
                              "erealloc(%p): double free: the block was the last one freed in its size class "
                              "(called at %s:%d)");
    check_told_nothing_before(told_realloc_freed_same_bin,
                              "erealloc(%p): double free: the block was the last one freed in its size class "
                              "(called at %s:%d)");
    check_told_nothing_before(told_realloc_freed_later,
                              "erealloc(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    check_told_nothing_before(told_double_free_later_8,
                              "efree(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    check_told_nothing_before(told_sized_double_free_later_8,
                              "efree(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    check_told_nothing_before(told_realloc_freed_later_8,
                              "erealloc(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    check_told_nothing_before(told_free_never_handed_out_8,
                              "efree(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    static const size_t remote_sizes[] = {100, 3000};
    for (size_t i = 0; i < sizeof remote_sizes / sizeof *remote_sizes; i++) {
        size_t size = remote_sizes[i];
        check_told_nothing_before_with(told_remote_double_free_later, (void *)&size,
                                       "efree(%p): double free: the block was freed already (freed again from "
                                       "another thread) (called at %s:%d)");
        check_told_nothing_before_with(told_remote_then_local_free, (void *)&size,
                                       "efree(%p): double free: the block is on its size class's free list "
                                       "already (freed before, other blocks of its size freed since) "
                                       "(called at %s:%d)");
    }
    /* An 8-byte block's remote link carries its mark as its local one does. (A second free of it
     * from another thread is not caught: that thread cannot tell a link from the program's bytes.) */
    static const size_t eight_bytes = 8;
    check_told_nothing_before_with(told_remote_then_local_free, (void *)&eight_bytes,
                                   "efree(%p): double free: the block is on its size class's free list "
                                   "already (freed before, other blocks of its size freed since) "
                                   "(called at %s:%d)");
    check_told_nothing_before(told_free_never_handed_out,
                              "efree(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    check_told_nothing_before(told_realloc_never_handed_out,
                              "erealloc(%p): double free: the block is on its size class's free list already "
                              "(freed before, other blocks of its size freed since) (called at %s:%d)");
    check_told_nothing_before(told_sized_free_never_handed_out,
                              "efree(%p): double free: the block was the last one freed in its size class "
                              "(called at %s:%d)");
    check_told_nothing_before(told_remote_free_never_handed_out,
                              "efree(%p): double free: the block was freed already (freed again from "
                              "another thread) (called at %s:%d)");
    /* Inside a small block, a large block's first and second page, a huge block's second page and
     * its last bytes (the link would cross its end). */
    static const size_t inside[][2] = {
        {1000, 8}, {9000, 100}, {9000, 4096}, {3u << 20, 4096}, {3u << 20, (3u << 20) - 4},
    };
    for (size_t i = 0; i < sizeof inside / sizeof *inside; i++) {
        check_told_nothing_before_with(told_remote_free_inside, (void *)inside[i],
                                       "efree(%p): not the start of a block (inside the heap's memory, "
                                       "between blocks) (called at %s:%d)");
    }
    check_told_nothing_before(told_remote_realloc_inside,
                              "erealloc(%p): not the start of a block (inside the heap's memory, between "
                              "blocks) (called at %s:%d)");
    check_told_nothing_before(told_large_double_free,
                              "efree(%p): double free: the pages there are free already (called at %s:%d)");
    check_told_nothing_before(told_malloc_pointer,
                              "efree(%p): not memory of any heap (never allocated here, or freed and given "
                              "back already) (called at %s:%d)");
    /* Found by a walk of the free lists: no call to blame, the damage is named. */
    child_result r = run_child(double_free_then_gc, NULL, NULL);
    CHECK_CORRUPTED(r);
    CHECK_CONTAINS(r.err, "the free list of 64-byte blocks holds");
    CHECK_CONTAINS(r.err, "(found collecting garbage; a block was freed twice");
}

static void test_every_slot_of_every_bin_frees_and_reallocs(void)
{
    static const size_t bins[] = {8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224,
                                   256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792,
                                   2048, 2560, 3072};
    shutdown_memory_manager(1, 0);
    int wrong = 0;
    for (size_t b = 0; b < sizeof bins / sizeof bins[0]; b++) {
        enum { N = 600 }; /* more than a run of any bin holds */
        static char *p[N];
        for (int i = 0; i < N; i++) {
            p[i] = emalloc(bins[b]);
            wrong += zend_mem_block_size(p[i]) != bins[b];
        }
        for (int i = 0; i < N; i += 2) {
            p[i] = erealloc(p[i], bins[b]); /* stays */
            efree(p[i]);
        }
        for (int i = 1; i < N; i += 2) {
            efree(p[i]);
        }
    }
    CHECK_EQ(wrong, 0);
    CHECK_EQ(zend_memory_usage(0), 0);
    CHECK_EQ(full_mem_check(1), 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Smaller ones (defect 13)                                                                        */

static void free_after_set_heap_null(void *arg)
{
    (void)arg;
    char *p = emalloc(100);
    char *big = emalloc(5000);
    zend_mm_set_heap(NULL);
    printf("size %zu\n", zend_mem_block_size(p));
    efree(p);
    efree(big);
    printf("usage %zu\n", zend_memory_usage(0));
}

static void test_blocks_of_the_own_heap_survive_set_heap_null(void)
{
    child_result r = run_child(free_after_set_heap_null, NULL, NULL);
    CHECK_EXIT(r, 0, "");
    CHECK_CONTAINS(r.out, "size 112\nusage 0\n");
}

static zend_mm_storage misaligned_storage;

static zend_mm_storage *misaligned_init(void *params)
{
    (void)params;
    return &misaligned_storage;
}

static void misaligned_dtor(zend_mm_storage *s) { (void)s; }

static zend_mm_segment *misaligned_alloc(zend_mm_storage *s, size_t size)
{
    (void)s;
    char *p = malloc(size + 64);
    return p ? (zend_mm_segment *)(p + 8) : NULL; /* 8-aligned: less than the API promises */
}

static void misaligned_free(zend_mm_storage *s, zend_mm_segment *seg)
{
    (void)s;
    free((char *)seg - 8);
}

static const zend_mm_mem_handlers misaligned_handlers = {
    "misaligned", misaligned_init, misaligned_dtor, NULL, misaligned_alloc, NULL, misaligned_free,
};

static void start_on_misaligned_storage(void *arg)
{
    (void)arg;
    zend_mm_heap *h = zend_mm_startup_ex(&misaligned_handlers, 256 * 1024, 0, 0, NULL);
    printf("heap %p\n", (void *)h);
}

static void test_a_misaligned_storage_is_named_at_startup(void)
{
    child_result r = run_child(start_on_misaligned_storage, NULL, NULL);
    CHECK(r.exited && r.status == 255);
    CHECK_CONTAINS(r.err, "zend_mm storage [misaligned] returned 0x");
    CHECK_CONTAINS(r.err, "which is not 16-byte aligned\n");
    CHECK(strstr(r.out, "heap") == NULL);
}

static pthread_key_t later_key;
static atomic_int later_destructor_freed;

static void later_destructor(void *block)
{
    efree(block); /* the exiting thread's block: its heap must still be there */
    atomic_store(&later_destructor_freed, 1);
}

static void *thread_with_a_later_key(void *arg)
{
    (void)arg;
    char *p = emalloc(100);
    strcpy(p, "kept");
    pthread_setspecific(later_key, p);
    return NULL;
}

static void free_in_a_later_keys_destructor(void *arg)
{
    (void)arg;
    efree(emalloc(1)); /* the library's exit key exists before ours */
    pthread_key_create(&later_key, later_destructor);
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        atomic_store(&later_destructor_freed, 0);
        pthread_create(&t, NULL, thread_with_a_later_key, NULL);
        pthread_join(t, NULL);
        printf("freed %d\n", atomic_load(&later_destructor_freed));
    }
}

static void test_a_later_keys_destructor_may_free_the_threads_blocks(void)
{
    child_result r = run_child(free_in_a_later_keys_destructor, NULL, NULL);
    CHECK_EXIT(r, 0, "");
    CHECK_CONTAINS(r.out, "freed 1\nfreed 1\nfreed 1\nfreed 1\n");
}

static int probe(const char *mode)
{
    if (strcmp(mode, "libc_heap") == 0) {
        return probe_libc_heap();
    }
    if (strcmp(mode, "libc_blocks_elsewhere") == 0) {
        return probe_libc_blocks_elsewhere();
    }
    fprintf(stderr, "unknown probe %s\n", mode);
    return 2;
}

/* Random bad input, as a program with a memory error hands it over: each child allocates blocks of
 * every kind (small, large, huge), frees some, then passes one bad pointer (inside a block, a
 * flipped address bit, a stack, static or malloc address, a segment's or page's start, a random
 * word) to efree, erealloc, zend_mem_block_size or efree_size, or asks for an absurd size. The
 * answer must be PHP's: a report and an abort, a fatal error, or (a pointer that happens to name a
 * block, a size that fits) nothing; never a fault. */
static uint64_t random_state;
static uint64_t random_next(void)
{
    uint64_t z = (random_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static size_t random_block_size(void)
{
    switch (random_next() % 3) {
    case 0: return 1 + random_next() % 3072;
    case 1: return 3073 + random_next() % (2u << 20);
    default: return (2u << 20) + random_next() % (2u << 20);
    }
}
static char random_static[256];
static void random_bad_pointer(void *arg)
{
    random_state = *(const uint64_t *)arg;
    enum { BLOCKS = 32 };
    char *blocks[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        size_t size = random_block_size();
        blocks[i] = emalloc(size);
        memset(blocks[i], 'a', size < 64 ? size : 64);
    }
    for (int i = 0; i < BLOCKS / 2; i++) {
        int j = (int)(random_next() % BLOCKS);
        if (blocks[j]) {
            efree(blocks[j]);
            blocks[j] = NULL;
        }
    }
    int k = (int)(random_next() % BLOCKS);
    while (!blocks[k]) {
        k = (k + 1) % BLOCKS;
    }
    char *block = blocks[k], on_stack[64];
    uintptr_t at = (uintptr_t)block;
    size_t size = zend_mem_block_size(block);
    char *bad;
    switch (random_next() % 9) {
    case 0: bad = block + 1 + random_next() % (size - 1); break;
    case 1: bad = (char *)(uintptr_t)random_next(); break;
    case 2: bad = (char *)(at ^ ((uintptr_t)1 << (random_next() % 40))); break;
    case 3: bad = on_stack + random_next() % 32; break;
    case 4: bad = random_static + random_next() % 64; break;
    case 5: bad = (char *)((at & ~(uintptr_t)0x1fffff) + random_next() % 0x200000); break;
    case 6: bad = (char *)(at & ~(uintptr_t)0xfff); break;
    case 7: bad = (char *)(at & ~(uintptr_t)0x1fffff); break;
    default: bad = (char *)malloc(100) + (random_next() % 3) * 8; break;
    }
    switch (random_next() % 4) {
    case 0: efree(bad); break;
    case 1: erealloc(bad, random_block_size()); break;
    case 2: zend_mem_block_size(bad); break;
    default: efree_size(bad, 64); break;
    }
}
static size_t random_edge_size(void)
{
    switch (random_next() % 5) {
    case 0: return SIZE_MAX - random_next() % 8192;
    case 1: return ((size_t)1 << (random_next() % 64)) + random_next() % 3 - 1;
    case 2: return (size_t)random_next();
    case 3: return (SIZE_MAX >> 1) + random_next() % 3 - 1;
    default: return random_next() % 5000;
    }
}
static void random_absurd_size(void *arg)
{
    random_state = *(const uint64_t *)arg;
    if (random_next() % 2) {
        zend_set_memory_limit(random_next() % (256u << 20));
    }
    char *p = emalloc(1 + random_next() % 100);
    for (int i = 0; i < 20; i++) {
        size_t a = random_edge_size(), b = random_edge_size(), c = random_edge_size();
        switch (random_next() % 6) {
        case 0: efree(emalloc(a)); break;
        case 1: p = erealloc(p, a); break;
        case 2: efree(ecalloc(a, b)); break;
        case 3: efree(safe_emalloc(a, b, c)); break;
        case 4: p = safe_erealloc(p, a, b, c); break;
        default: p = erealloc2(p, a, random_next() % 8); break;
        }
    }
    efree(p);
}

static void test_random_bad_input_is_answered_never_a_fault(void)
{
    static const char corrupted[] = "zend_mm_heap corrupted\n";
    for (uint64_t seed = 1; seed <= 150; seed++) {
        child_result r = run_child(random_bad_pointer, &seed, NULL);
        int answered = r.exited ? r.status == 0
                                : r.signal == SIGABRT && strncmp(r.err, corrupted, sizeof corrupted - 1) == 0;
        CHECK(answered);
        if (!answered) {
            fprintf(stderr, "  (bad pointer, seed %llu)\n", (unsigned long long)seed);
            report_child(&r, NULL);
        }
    }
    for (uint64_t seed = 1; seed <= 150; seed++) {
        child_result r = run_child(random_absurd_size, &seed, NULL);
        int answered = r.exited && (r.status == 0 || (r.status == 255 && strstr(r.err, "Fatal error: ")));
        CHECK(answered);
        if (!answered) {
            fprintf(stderr, "  (absurd size, seed %llu)\n", (unsigned long long)seed);
            report_child(&r, NULL);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--probe") == 0) {
        return probe(argv[2]);
    }
    start_memory_manager();
    RUN(test_the_limit_is_back_once_the_handler_bailed_out);
    RUN(test_only_memory_errors_suspend_the_limit);
    RUN(test_a_hundred_thousand_bailouts_cost_no_memory);
    RUN(test_pointer_queries_never_touch_another_threads_memory);
    RUN(test_freeing_another_threads_stale_block_is_diagnosed);
    RUN(test_a_forked_child_never_waits_for_a_lock);
    RUN(test_a_custom_heap_owns_no_pointer);
    RUN(test_use_zend_alloc_0_owns_no_pointer);
    RUN(test_use_zend_alloc_0_blocks_are_freed_from_any_thread);
    RUN(test_frees_that_name_no_block_are_corruption);
    RUN(test_freed_large_blocks_written_after_free_are_corruption);
    RUN(test_freed_small_blocks_written_after_free_are_corruption);
    RUN(test_random_bad_input_is_answered_never_a_fault);
    RUN(test_corruption_names_the_call_the_pointer_and_the_location);
    RUN(test_every_slot_of_every_bin_frees_and_reallocs);
    RUN(test_blocks_of_the_own_heap_survive_set_heap_null);
    RUN(test_a_misaligned_storage_is_named_at_startup);
    RUN(test_a_later_keys_destructor_may_free_the_threads_blocks);
    return test_summary();
}
