/*
 * Threads (PHP's ZTS model): each thread has its own heap, made on first use and released when the
 * thread exits; start/shutdown_memory_manager act on the calling thread's heap; a live block freed
 * or resized by another thread is freed by its own heap (on that heap's next slow path); an
 * explicit heap may move between threads.
 */
#include "test.h"

#include <pthread.h>

typedef struct {
    zend_mm_heap *heap;
    size_t usage_after;
    int ok;
    pthread_barrier_t *alive; /* when set: wait here twice, see test_threads_have_their_own_heaps */
} thread_report;

static void *churn(void *arg)
{
    thread_report *report = arg;
    void *live[512] = {0};
    report->ok = 1;
    report->heap = zend_mm_get_heap();
    for (int i = 0; i < 200000; i++) {
        int slot = (i * 7919) % 512;
        if (live[slot]) {
            report->ok &= ((unsigned char *)live[slot])[0] == (unsigned char)slot;
            efree(live[slot]);
        }
        live[slot] = emalloc((size_t)(i % 500) + 1);
        ((unsigned char *)live[slot])[0] = (unsigned char)slot;
    }
    for (int slot = 0; slot < 512; slot++) {
        efree(live[slot]);
    }
    char *big = emalloc(3000000);
    big[0] = 1;
    report->usage_after = zend_memory_usage(0); /* only the huge block is left */
    report->ok &= full_mem_check(1) == 0;
    if (report->alive) {
        pthread_barrier_wait(report->alive); /* every report is written ... */
        pthread_barrier_wait(report->alive); /* ... and compared before any thread exits */
    }
    return NULL; /* exits without freeing `big`: the heap goes with the thread */
}

/* The heaps' addresses are compared while both threads are alive: a heap is released when its
 * thread exits, so a thread that started after the other one ended could get the very same address
 * (the comparison used to fail that way on a busy machine). The threads wait on a barrier with this
 * thread until the comparison is done. */
static void test_threads_have_their_own_heaps(void)
{
    pthread_t t[2];
    thread_report r[2];
    pthread_barrier_t alive;
    pthread_barrier_init(&alive, NULL, 3);
    void *mine = emalloc(100);
    size_t my_usage = zend_memory_usage(0);
    for (int i = 0; i < 2; i++) {
        r[i].alive = &alive;
        pthread_create(&t[i], NULL, churn, &r[i]);
    }
    pthread_barrier_wait(&alive); /* both threads have their heaps and are still running */
    int distinct = r[0].heap != r[1].heap && r[0].heap != zend_mm_get_heap() && r[1].heap != zend_mm_get_heap();
    pthread_barrier_wait(&alive); /* now they may exit */
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    pthread_barrier_destroy(&alive);
    CHECK(r[0].ok && r[1].ok);
    CHECK(distinct);
    CHECK_EQ(r[0].usage_after, 3002368);
    CHECK_EQ(r[1].usage_after, 3002368);
    CHECK_EQ(zend_memory_usage(0), my_usage); /* untouched by the other threads */
    efree(mine);
}

static void *leave_memory_behind(void *arg)
{
    (void)arg;
    for (int i = 0; i < 64; i++) {
        char *p = emalloc(1 << 20);
        memset(p, 1, 1 << 20);
    }
    return NULL;
}

static void test_thread_exit_releases_the_heap(void)
{
    /* Each thread leaves 64 MiB behind; without release at exit, 20 threads would keep 1.25 GiB. */
    long before = rss_kib();
    for (int i = 0; i < 20; i++) {
        pthread_t t;
        pthread_create(&t, NULL, leave_memory_behind, NULL);
        pthread_join(t, NULL);
    }
    long after = rss_kib();
    if (!(after < before + 16 * 1024)) {
        fprintf(stderr, "  RSS before %ld KiB, after 20 threads %ld KiB\n", before, after);
    }
    CHECK(after < before + 16 * 1024);
}

static void *requests_in_a_thread(void *arg)
{
    int *ok = arg;
    start_memory_manager();
    zend_mm_heap *heap = zend_mm_get_heap();
    *ok = 1;
    for (int request = 0; request < 50; request++) {
        for (int i = 0; i < 1000; i++) {
            emalloc((size_t)i);
        }
        *ok &= zend_memory_usage(0) > 0;
        shutdown_memory_manager(1, 0);
        *ok &= zend_memory_usage(0) == 0 && zend_mm_get_heap() == heap;
    }
    shutdown_memory_manager(1, 1);
    *ok &= emalloc(10) != NULL; /* a fresh heap after a full shutdown */
    return NULL;
}

static void test_request_lifecycle_per_thread(void)
{
    pthread_t t[2];
    int ok[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&t[i], NULL, requests_in_a_thread, &ok[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK(ok[0] && ok[1]);
}

/* Small, large and huge blocks, each stamped with its index over its first stamp_len bytes. */
static size_t remote_size(int i)
{
    return i % 10 == 9 ? (size_t)3 << 20 : i % 5 == 4 ? 20000 : (size_t)(16 + i * 8);
}

static size_t stamp_len(int i)
{
    return remote_size(i) < 100 ? remote_size(i) : 100;
}

/* What a worker thread does to blocks of the main thread's heap. */
typedef struct {
    char **blocks;
    int count;
    int with_heap; /* the worker makes a heap of its own first */
    int ok;
} remote_work;

static void *free_them(void *arg)
{
    remote_work *w = arg;
    if (w->with_heap) {
        efree(emalloc(10));
    }
    for (int i = 0; i < w->count; i++) {
        efree(w->blocks[i]);
    }
    return NULL;
}

static void *grow_them(void *arg)
{
    remote_work *w = arg;
    w->ok = 1;
    for (int i = 0; i < w->count; i++) {
        char *q = erealloc(w->blocks[i], 6000);
        w->ok &= q[0] == (char)i && q[stamp_len(i) - 1] == (char)i && is_zend_ptr(q);
        efree(q);
    }
    return NULL;
}

static void test_cross_thread_free_and_realloc_are_performed(void)
{
    enum { N = 200 };
    char *blocks[N];
    for (int with_heap = 0; with_heap < 2; with_heap++) {
        size_t before = zend_memory_usage(0);
        for (int i = 0; i < N; i++) {
            blocks[i] = emalloc(remote_size(i));
            memset(blocks[i], i, stamp_len(i));
        }
        CHECK(zend_memory_usage(0) > before);
        remote_work w = {blocks, N, with_heap, 0};
        pthread_t t;
        pthread_create(&t, NULL, free_them, &w);
        pthread_join(t, NULL);
        /* Collected by this thread's heap (a usage query collects first). */
        CHECK_EQ(zend_memory_usage(0), before);
        /* The slots are this heap's again. */
        char *again = emalloc(16);
        CHECK(again == blocks[0]);
        efree(again);
    }
    size_t before = zend_memory_usage(0);
    for (int i = 0; i < N; i++) {
        blocks[i] = emalloc(remote_size(i));
        memset(blocks[i], i, stamp_len(i));
    }
    remote_work w = {blocks, N, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, grow_them, &w);
    pthread_join(t, NULL);
    CHECK(w.ok);
    CHECK_EQ(zend_memory_usage(0), before);
}

/* 8-byte blocks (whose free lists carry the free mark in their links) freed by another thread while
 * their own thread frees and allocates more of them: whatever the interleaving, no free is taken
 * for a double free, and every freed block comes back exactly once. */
enum { SMALL8_N = 4000 };
static volatile size_t eight_bytes = 8;

static void *free_even(void *arg)
{
    char **blocks = arg;
    for (int i = 0; i < SMALL8_N; i += 2) {
        efree(blocks[i]);
    }
    return NULL;
}

static int compare_pointers(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (char *const *)a, y = (uintptr_t) * (char *const *)b;
    return (x > y) - (x < y);
}

static void test_eight_byte_blocks_freed_here_and_elsewhere_at_once(void)
{
    static char *blocks[SMALL8_N], *again[SMALL8_N], *extra[SMALL8_N / 2];
    size_t before = zend_memory_usage(0);
    for (int i = 0; i < SMALL8_N; i++) {
        blocks[i] = emalloc(eight_bytes);
        memcpy(blocks[i], &i, sizeof i);
    }
    pthread_t t;
    pthread_create(&t, NULL, free_even, blocks);
    /* Meanwhile: the odd ones freed here, and as many new blocks made, then freed here too. */
    int stamps_kept = 1;
    for (int i = 1; i < SMALL8_N; i += 2) {
        int stamp;
        memcpy(&stamp, blocks[i], sizeof stamp);
        stamps_kept &= stamp == i;
        efree(blocks[i]);
        extra[i / 2] = emalloc(eight_bytes);
    }
    pthread_join(t, NULL);
    CHECK(stamps_kept);
    for (int i = 0; i < SMALL8_N / 2; i++) {
        efree(extra[i]);
    }
    CHECK_EQ(zend_memory_usage(0), before);
    /* All the blocks are free: as many allocations hand out distinct blocks, the original ones
     * among them (the extra ones took slots the frees gave back, or fresh ones). */
    for (int i = 0; i < SMALL8_N; i++) {
        again[i] = emalloc(eight_bytes);
    }
    qsort(again, SMALL8_N, sizeof *again, compare_pointers);
    int distinct = 1;
    for (int i = 1; i < SMALL8_N; i++) {
        distinct &= again[i] != again[i - 1];
    }
    CHECK(distinct);
    CHECK_EQ(full_mem_check(1), 0);
    for (int i = 0; i < SMALL8_N; i++) {
        efree(again[i]);
    }
    CHECK_EQ(zend_memory_usage(0), before);
}

static void *free_twice(void *p)
{
    efree(p);
    efree(p);
    return NULL;
}

/* arg: the block size. 100 bytes goes onto its bin's remote list, 3000 bytes (a bin without a
 * list of its own) and 5000 bytes (a large block) onto the heap's general one. */
static void free_twice_from_another_thread(void *arg)
{
    pthread_t t;
    void *p = emalloc(*(size_t *)arg);
    pthread_create(&t, NULL, free_twice, p);
    pthread_join(t, NULL);
}

static void test_cross_thread_double_free_is_corruption(void)
{
    static size_t sizes[] = {100, 3000, 5000};
    for (int i = 0; i < 3; i++) {
        child_result r = run_child(free_twice_from_another_thread, &sizes[i], NULL);
        CHECK_CORRUPTED(r);
    }
}

/* The blocks to free (p, q, p), and whether to clear p's free mark after its first free (a write
 * after free where a freed block says it is free). */
typedef struct {
    char *b[2];
    int clear_mark;
} p_q_p;

static const int free_p_q_p_line = __LINE__ + 9;
static void *free_p_q_p(void *arg)
{
    p_q_p *x = arg;
    efree(x->b[0]);
    if (x->clear_mark) {
        memset(x->b[0] + 8, 0, 8); /* where a freed slot says it is free */
    }
    efree(x->b[1]);
    efree(x->b[0]);
    return NULL;
}

/* A block freed twice from another thread with another free in between: the second free finds it
 * marked free. */
static void free_twice_apart_from_another_thread(void *arg)
{
    p_q_p x = {{emalloc(100), emalloc(100)}, *(int *)arg};
    pthread_t t;
    printf("%p\n", (void *)x.b[0]);
    fflush(stdout);
    pthread_create(&t, NULL, free_p_q_p, &x);
    pthread_join(t, NULL);
    (void)zend_memory_usage(0);
}

static void test_cross_thread_double_free_apart_is_corruption(void)
{
    int clear_mark = 0;
    child_result r = run_child(free_twice_apart_from_another_thread, &clear_mark, NULL);
    void *p = NULL;
    char want[256];
    CHECK(sscanf(r.out, "%p", &p) == 1);
    snprintf(want, sizeof want,
             "efree(%p): double free: the block was freed already (freed again from another thread) "
             "(called at %s:%d)",
             p, __FILE__, free_p_q_p_line);
    CHECK_CORRUPTED_AS(r, want);
    /* With that word written over, the block goes onto the remote list twice: the owner finds the
     * list looping when it takes it (a usage query takes every list). */
    clear_mark = 1;
    r = run_child(free_twice_apart_from_another_thread, &clear_mark, NULL);
    CHECK_CORRUPTED_AS(r, "the list of 3 blocks of 112 bytes that other threads freed does not end "
                          "after them (a block was freed twice, or written after it was freed)");
}

typedef struct {
    zend_mm_heap *heap;
    void *block;
    int ok;
} handover;

static void *first_user(void *arg)
{
    handover *h = arg;
    h->heap = zend_mm_startup();
    zend_mm_set_heap(h->heap);
    h->block = estrdup("made by the first thread");
    zend_mm_set_heap(NULL);
    return NULL;
}

static void *second_user(void *arg)
{
    handover *h = arg;
    zend_mm_heap *own = zend_mm_set_heap(h->heap);
    h->ok = strcmp(h->block, "made by the first thread") == 0;
    h->block = erealloc(h->block, 10000);
    efree(h->block);
    h->ok &= zend_memory_usage(0) == 0;
    zend_mm_set_heap(own);
    zend_mm_shutdown(h->heap, 1, 1);
    return NULL;
}

static void test_explicit_heap_moves_between_threads(void)
{
    handover h = {0};
    pthread_t t;
    pthread_create(&t, NULL, first_user, &h);
    pthread_join(t, NULL);
    pthread_create(&t, NULL, second_user, &h);
    pthread_join(t, NULL);
    CHECK(h.ok);
}

int main(void)
{
    start_memory_manager();
    RUN(test_threads_have_their_own_heaps);
    RUN(test_thread_exit_releases_the_heap);
    RUN(test_request_lifecycle_per_thread);
    RUN(test_cross_thread_free_and_realloc_are_performed);
    RUN(test_cross_thread_double_free_is_corruption);
    RUN(test_cross_thread_double_free_apart_is_corruption);
    RUN(test_eight_byte_blocks_freed_here_and_elsewhere_at_once);
    RUN(test_explicit_heap_moves_between_threads);
    return test_summary();
}
