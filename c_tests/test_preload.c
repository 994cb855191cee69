/*
 * The preload library (libzend_alloc_preload.so) as the process's malloc: glibc's semantics for
 * every function of the family, blocks that move between threads, threads that exit with live
 * blocks, fork, and pointers from the allocator it replaced.
 *
 * Plain C against <stdlib.h>, not linked to the library: `make test` runs it under
 * LD_PRELOAD=.../libzend_alloc_preload.so (with ZEND_ALLOC_PRELOAD_EXPECTED=1, which makes it check
 * that the library is the one serving malloc) and also without it, on glibc's allocator, so every
 * expectation here is glibc's own behaviour.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
        }                                                                                          \
    } while (0)

/* Keeps the compiler from reasoning about the allocator's results (it knows malloc's semantics). */
static void *volatile sink;
static size_t opaque(size_t n)
{
    __asm__ volatile("" : "+r"(n));
    return n;
}

static int aligned(const void *p, size_t a)
{
    return ((uintptr_t)p & (a - 1)) == 0;
}

static void test_the_library_serves_malloc(void)
{
    if (!getenv("ZEND_ALLOC_PRELOAD_EXPECTED")) {
        return;
    }
    const char *names[] = {"malloc", "free", "calloc", "realloc", "posix_memalign", "memalign", "aligned_alloc",
                           "valloc", "pvalloc", "malloc_usable_size", "reallocarray", "__libc_malloc", "__libc_free"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        Dl_info info;
        void *f = dlsym(RTLD_DEFAULT, names[i]);
        int ours = f && dladdr(f, &info) && info.dli_fname && strstr(info.dli_fname, "libzend_alloc_preload.so");
        CHECK(ours);
        if (!ours) {
            fprintf(stderr, "  %s comes from %s\n", names[i], f && dladdr(f, &info) ? info.dli_fname : "nowhere");
        }
    }
    CHECK(dlsym(RTLD_DEFAULT, "_emalloc") == NULL); /* PHP's API stays in libzend_alloc */
}

static void test_glibc_edge_cases(void)
{
    void *a = malloc(opaque(0)), *b = malloc(opaque(0));
    CHECK(a != NULL && b != NULL && a != b);
    free(a);
    free(b);
    void *p = malloc(opaque(100));
    errno = 0;
    CHECK(realloc(p, opaque(0)) == NULL); /* frees p */
    p = realloc(NULL, opaque(0));
    CHECK(p != NULL);
    free(p);
    errno = 0;
    CHECK(calloc(opaque(SIZE_MAX / 2), opaque(3)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(opaque(SIZE_MAX)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(opaque(SIZE_MAX - 4096)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(realloc(NULL, opaque(SIZE_MAX - 10)) == NULL && errno == ENOMEM);
    p = malloc(opaque(64));
    errno = 0;
    void *q = realloc(p, opaque(SIZE_MAX - 10));
    CHECK(q == NULL && errno == ENOMEM);
    sink = q;
    free(sink == NULL ? p : q); /* intact after the failed realloc */
    errno = 0;
    CHECK(reallocarray(NULL, opaque(SIZE_MAX / 2), opaque(3)) == NULL && errno == ENOMEM);
    void *untouched = &passed;
    void *out = untouched;
    CHECK(posix_memalign(&out, opaque(3), 16) == EINVAL && out == untouched);
    CHECK(posix_memalign(&out, opaque(4), 16) == EINVAL && out == untouched);
    CHECK(posix_memalign(&out, opaque(24), 16) == EINVAL && out == untouched);
    CHECK(posix_memalign(&out, opaque(64), 100) == 0 && aligned(out, 64));
    free(out);
    p = memalign(opaque(24), 100); /* rounded up to 32 */
    CHECK(p != NULL && aligned(p, 32));
    free(p);
    p = aligned_alloc(opaque(64), opaque(10)); /* size not a multiple: glibc accepts */
    CHECK(p != NULL && aligned(p, 64));
    free(p);
    p = valloc(opaque(100));
    CHECK(p != NULL && aligned(p, 4096));
    free(p);
    p = pvalloc(opaque(100));
    CHECK(p != NULL && aligned(p, 4096) && malloc_usable_size(p) >= 4096);
    free(p);
    errno = 1234;
    free(malloc(opaque(10)));
    free(malloc(opaque(100000)));
    free(malloc(opaque(5 << 20)));
    free(NULL);
    CHECK(errno == 1234); /* free keeps errno */
    CHECK(mallopt(M_ARENA_MAX, 2) == 1);
    malloc_trim(0);
}

static void test_alignment_and_usable_size(void)
{
    int bad = 0;
    for (size_t n = 1; n <= 4200; n += (n < 300 ? 1 : 37)) {
        char *p = malloc(opaque(n));
        bad += p == NULL || (n >= 16 && !aligned(p, 16)) || !aligned(p, 8) || malloc_usable_size(p) < n;
        memset(p, 0x5a, n);
        free(p);
    }
    CHECK(bad == 0);
    for (size_t align = 8; align <= 65536; align *= 2) {
        size_t sizes[] = {1, align - 1, align, align + 1, 100, 3000, 5000, 70000};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            void *p = NULL;
            int rc = posix_memalign(&p, align, sizes[i]);
            bad += rc != 0 || !aligned(p, align) || malloc_usable_size(p) < sizes[i];
            if (rc == 0) {
                memset(p, 1, sizes[i]);
                p = realloc(p, sizes[i] * 2 + 1); /* stays usable, moves as it likes */
                bad += p == NULL;
                free(p);
            }
            char *q = aligned_alloc(align, sizes[i]);
            bad += q == NULL || !aligned(q, align);
            free(q);
        }
    }
    CHECK(bad == 0);
}

static void test_contents_survive_realloc_and_calloc_zeroes(void)
{
    size_t sizes[] = {1, 24, 100, 3000, 3100, 20000, 1 << 20, 3 << 20, 40, 7};
    unsigned char *p = NULL;
    size_t have = 0;
    int bad = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        p = realloc(p, sizes[i]);
        size_t keep = have < sizes[i] ? have : sizes[i];
        for (size_t j = 0; j < keep; j++) {
            bad += p[j] != (unsigned char)(j * 7);
        }
        for (size_t j = 0; j < sizes[i]; j++) {
            p[j] = (unsigned char)(j * 7);
        }
        have = sizes[i];
    }
    free(p);
    CHECK(bad == 0);
    for (int round = 0; round < 2; round++) {
        for (size_t n = 8; n < 300000; n = n * 3 + 1) {
            unsigned char *d = malloc(n);
            memset(d, 0xff, n); /* dirty memory, freed, then asked for zeroed */
            free(d);
            unsigned char *z = calloc(1, n);
            for (size_t j = 0; j < n; j++) {
                bad += z[j] != 0;
            }
            free(z);
        }
    }
    CHECK(bad == 0);
    /* Huge blocks: reused whole, cut from a bigger freed one, or made of freed segments' pages. */
    size_t huge[] = {3 << 20, (5 << 20) + 123, 9 << 20, 4 << 20};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        unsigned char *d = malloc(huge[i]);
        memset(d, 0xee, huge[i]);
        free(d);
        unsigned char *z = calloc(huge[i], 1);
        for (size_t j = 0; j < huge[i]; j += 512) {
            bad += z[j] != 0 || z[j + 511] != 0;
        }
        free(z);
    }
    enum { PIECES = 200 };
    unsigned char *pieces[PIECES];
    for (int i = 0; i < PIECES; i++) {
        pieces[i] = malloc(100000);
        memset(pieces[i], 0xdd, 100000);
    }
    for (int i = 0; i < PIECES; i++) {
        free(pieces[i]);
    }
    /* A freed huge block too small for the next request is grown, with the freed segments' pages
     * moved in behind its old ones: both hold what their last users wrote. */
    unsigned char *small_huge = malloc(3 << 20);
    memset(small_huge, 0xcc, 3 << 20);
    free(small_huge);
    unsigned char *z = calloc(1, 16 << 20);
    for (size_t j = 0; j < (16 << 20); j += 256) {
        bad += z[j] != 0 || z[j + 255] != 0;
    }
    free(z);
    CHECK(bad == 0);
    struct mallinfo2 mi = mallinfo2();
    CHECK(mi.arena >= mi.uordblks);
}

/* A buffer grown a page at a time (a log, a string built by appends) and shrunk by thirds keeps
 * its bytes: the library gives a growing huge block room to grow into, so most of these calls
 * resize in place. */
static void test_a_buffer_grown_a_page_at_a_time_keeps_its_bytes(void)
{
    const size_t page = 4096, from = 2 << 20, to = 48 << 20;
    unsigned char *p = malloc(from);
    size_t n = from, bad = 0, short_blocks = 0;
    for (size_t i = 0; i < n; i += page) {
        p[i] = (unsigned char)(i / page);
    }
    while (n < to) {
        p = realloc(p, n + page);
        short_blocks += malloc_usable_size(p) < n + page;
        p[n] = (unsigned char)(n / page);
        n += page;
    }
    for (size_t i = 0; i < n; i += page) {
        bad += p[i] != (unsigned char)(i / page);
    }
    while (n > from) {
        n -= n / 3 / page * page;
        p = realloc(p, n);
        bad += p[n - page] != (unsigned char)((n - page) / page);
    }
    free(p);
    CHECK(short_blocks == 0);
    CHECK(bad == 0);
}

/* Blocks of the allocator the library replaced (glibc's, reached through libc.so.6 itself) are
 * freed, resized and measured by it. */
static void test_pointers_of_the_replaced_allocator(void)
{
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    CHECK(libc != NULL);
    if (!libc) {
        return;
    }
    void *(*libc_malloc)(size_t) = (void *(*)(size_t))dlsym(libc, "malloc");
    CHECK(libc_malloc != NULL);
    char *p = libc_malloc(100);
    strcpy(p, "made by glibc");
    CHECK(malloc_usable_size(p) >= 100);
    p = realloc(p, 5000);
    CHECK(p != NULL && strcmp(p, "made by glibc") == 0);
    free(p);
    p = memalign(1 << 16, 100);
    CHECK(p != NULL && aligned(p, 1 << 16));
    free(p);
}

/* ---- threads ---- */

enum { RING = 256, PRODUCERS = 3, CONSUMERS = 3, PER_PRODUCER = 60000 };

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    void *slots[RING];
    int head, count, producers_left;
    long bad;
} ring;

static size_t size_for(unsigned seed)
{
    switch (seed % 16) {
    case 0:
        return 5000 + seed % 60000;
    case 1:
        return seed % 7 == 0 ? (size_t)(2 + seed % 3) << 20 : 300 + seed % 2000;
    default:
        return 1 + seed % 256;
    }
}

/* A block's stamp: its size in its first bytes (from 16 bytes on), the seed in its last byte. */
static void stamp(unsigned char *p, size_t n, unsigned seed)
{
    if (n >= 16) {
        memcpy(p, &n, sizeof n);
        p[8] = (unsigned char)(seed >> 8);
    }
    p[n - 1] = (unsigned char)seed;
}

static int stamped(const unsigned char *p, size_t n, unsigned seed)
{
    size_t m = n;
    if (n >= 16) {
        memcpy(&m, p, sizeof m);
        if (p[8] != (unsigned char)(seed >> 8)) {
            return 0;
        }
    }
    return m == n && p[n - 1] == (unsigned char)seed;
}

typedef struct {
    ring *r;
    unsigned seed;
} worker;

static void *producer(void *arg)
{
    worker *w = arg;
    ring *r = w->r;
    for (int i = 0; i < PER_PRODUCER; i++) {
        unsigned seed = w->seed + (unsigned)i * 2654435761u;
        size_t n = size_for(seed);
        unsigned char *p = malloc(n + sizeof(unsigned) + sizeof(size_t));
        memcpy(p, &seed, sizeof seed);
        memcpy(p + sizeof seed, &n, sizeof n);
        stamp(p + sizeof seed + sizeof n, n, seed);
        pthread_mutex_lock(&r->lock);
        while (r->count == RING) {
            pthread_cond_wait(&r->changed, &r->lock);
        }
        r->slots[(r->head + r->count++) % RING] = p;
        pthread_cond_broadcast(&r->changed);
        pthread_mutex_unlock(&r->lock);
        /* Some blocks of its own, freed on this thread. */
        free(malloc(size_for(seed + 1)));
    }
    pthread_mutex_lock(&r->lock);
    r->producers_left--;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static void *consumer(void *arg)
{
    worker *w = arg;
    ring *r = w->r;
    long bad = 0;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        while (r->count == 0 && r->producers_left > 0) {
            pthread_cond_wait(&r->changed, &r->lock);
        }
        if (r->count == 0) {
            pthread_mutex_unlock(&r->lock);
            break;
        }
        unsigned char *p = r->slots[r->head];
        r->head = (r->head + 1) % RING;
        r->count--;
        pthread_cond_broadcast(&r->changed);
        pthread_mutex_unlock(&r->lock);
        unsigned seed;
        size_t n;
        memcpy(&seed, p, sizeof seed);
        memcpy(&n, p + sizeof seed, sizeof n);
        bad += !stamped(p + sizeof seed + sizeof n, n, seed);
        if (seed % 5 == 0) {
            p = realloc(p, n / 2 + 40); /* a block of another thread resized here */
            bad += p == NULL;
        }
        free(p);
    }
    pthread_mutex_lock(&r->lock);
    r->bad += bad;
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static void test_blocks_freed_on_other_threads(void)
{
    ring r = {.lock = PTHREAD_MUTEX_INITIALIZER, .changed = PTHREAD_COND_INITIALIZER, .producers_left = PRODUCERS};
    pthread_t t[PRODUCERS + CONSUMERS];
    worker w[PRODUCERS + CONSUMERS];
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
        w[i] = (worker){&r, (unsigned)i * 977u};
        pthread_create(&t[i], NULL, i < PRODUCERS ? producer : consumer, &w[i]);
    }
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK(r.bad == 0);
}

/* Threads that exit with live blocks, which later threads (and this one) free. */
enum { GENERATIONS = 30, KEPT = 200 };
static void *kept[GENERATIONS][KEPT];

static void *leave_blocks(void *arg)
{
    int g = (int)(intptr_t)arg;
    if (g > 0) {
        for (int i = 0; i < KEPT; i += 2) { /* half the previous generation's, freed here */
            free(kept[g - 1][i]);
            kept[g - 1][i] = NULL;
        }
    }
    for (int i = 0; i < KEPT; i++) {
        size_t n = size_for((unsigned)(g * KEPT + i));
        kept[g][i] = malloc(n);
        stamp(kept[g][i], n, (unsigned)(g * KEPT + i));
    }
    return NULL;
}

static void test_threads_exit_with_live_blocks(void)
{
    for (int g = 0; g < GENERATIONS; g++) {
        pthread_t t;
        pthread_create(&t, NULL, leave_blocks, (void *)(intptr_t)g);
        pthread_join(t, NULL);
    }
    int bad = 0;
    for (int g = 0; g < GENERATIONS; g++) {
        for (int i = 0; i < KEPT; i++) {
            if (kept[g][i]) {
                size_t n = size_for((unsigned)(g * KEPT + i));
                bad += !stamped(kept[g][i], n, (unsigned)(g * KEPT + i));
                free(kept[g][i]);
            }
        }
    }
    CHECK(bad == 0);
}

static volatile int stop_churn;

static void *churn(void *arg)
{
    (void)arg;
    unsigned seed = 1;
    void *live[64] = {0};
    while (!stop_churn) {
        seed = seed * 1103515245u + 12345u;
        int i = (int)(seed >> 8) % 64;
        free(live[i]);
        live[i] = malloc(size_for(seed));
    }
    for (int i = 0; i < 64; i++) {
        free(live[i]);
    }
    return NULL;
}

static void test_fork_while_threads_allocate(void)
{
    pthread_t t[2];
    stop_churn = 0;
    for (int i = 0; i < 2; i++) {
        pthread_create(&t[i], NULL, churn, NULL);
    }
    int clean = 0, forks = 200;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            void *p[100];
            for (int j = 0; j < 100; j++) {
                p[j] = malloc(size_for((unsigned)j * 31u));
            }
            for (int j = 0; j < 100; j++) {
                free(p[j]);
            }
            pthread_t c;
            pthread_create(&c, NULL, leave_blocks, (void *)0);
            pthread_join(c, NULL);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        clean += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    stop_churn = 1;
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    CHECK(clean == forks);
}

/* The process's resident set, in bytes (/proc/self/statm). */
static size_t resident_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2) {
            resident = 0;
        }
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* The program idles for 300 ms (a lower bound on how long what it freed has been free, not a
 * race), then goes on: an allocation of `size` bytes, a slow path. */
static void idle_then_allocate(size_t size)
{
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
    void *later = malloc(opaque(size));
    CHECK(later != NULL);
    free(later);
}

/* A long-running program that once freed big blocks gets their memory back: glibc unmaps them at
 * once; the library keeps a few freed huge blocks for reuse, and gives back those idle for 100 ms
 * at its next slow path (a sleep of 300 ms is a lower bound on the idle time, not a race). */
static void test_freed_big_blocks_go_back_after_a_while(void)
{
    enum { BIG = 16 << 20, COUNT = 3 };
    void *big[COUNT];
    size_t before = resident_bytes();
    for (int i = 0; i < COUNT; i++) {
        big[i] = malloc(opaque(BIG));
        CHECK(big[i] != NULL);
        if (big[i]) {
            memset(big[i], 0x5a, BIG);
        }
    }
    CHECK(resident_bytes() >= (size_t)COUNT * BIG); /* they are resident while in use */
    for (int i = 0; i < COUNT; i++) {
        free(big[i]);
    }
    idle_then_allocate(64 << 10);
    size_t after = resident_bytes();
    CHECK(after < before + BIG);
    if (after >= before + BIG) {
        fprintf(stderr, "  resident %zu KiB before, %zu KiB after freeing %d blocks of %d KiB\n", before >> 10,
                after >> 10, COUNT, BIG >> 10);
    }
}

/* Allocates `n` blocks of `size` bytes into `blocks` and writes every byte (resident); false, and a
 * failed check, if one allocation fails. */
static int fill_blocks(void **blocks, int n, size_t size)
{
    for (int i = 0; i < n; i++) {
        blocks[i] = malloc(opaque(size));
        if (!blocks[i]) {
            CHECK(blocks[i] != NULL);
            return 0;
        }
        memset(blocks[i], 0x3c, size);
    }
    return 1;
}

/* Pages of `p..p + len` (page aligned inward) that are resident. */
static size_t resident_pages_of(void *p, size_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t end = ((uintptr_t)p + len) & ~(uintptr_t)(page - 1);
    if (end <= start) {
        return 0;
    }
    size_t pages = (end - start) / page, count = 0;
    unsigned char *map = malloc(pages);
    if (map && mincore((void *)start, end - start, map) == 0) {
        for (size_t i = 0; i < pages; i++) {
            count += map[i] & 1;
        }
    }
    free(map);
    return count;
}

/* A long-running program that freed most of its page-sized blocks, while the others stay live
 * around them, gets the freed pages back: the library hands a segment's free pages to the kernel
 * once they have been free for 100 ms, at its next slow path (glibc keeps such chunks in its heap;
 * the check is the library's only). Freed memory is probed with mincore, which reads no byte. */
static void test_freed_pages_among_live_blocks_go_back_after_a_while(void)
{
    enum { N = 400, SIZE = 100 << 10 };
    static unsigned char *blocks[N];
    if (!fill_blocks((void **)blocks, N, SIZE)) {
        return;
    }
    for (int i = 0; i < N; i++) {
        if (i % 8 != 0) {
            free(blocks[i]);
        }
    }
    idle_then_allocate(20 << 10);
    size_t freed_resident = 0, live_resident = 0, freed_pages = 0;
    for (int i = 0; i < N; i++) {
        size_t pages = resident_pages_of(blocks[i], SIZE);
        if (i % 8 != 0) {
            freed_resident += pages;
            freed_pages += SIZE / 4096;
        } else {
            live_resident += pages;
        }
    }
    int intact = 1;
    for (int i = 0; i < N; i += 8) {
        intact &= blocks[i][0] == 0x3c && blocks[i][SIZE - 1] == 0x3c;
        free(blocks[i]);
    }
    CHECK(intact);
    CHECK(live_resident >= (size_t)(N / 8) * (SIZE / 4096 - 1));
    if (getenv("ZEND_ALLOC_PRELOAD_EXPECTED")) {
        CHECK(freed_resident < freed_pages / 20);
        if (freed_resident >= freed_pages / 20) {
            fprintf(stderr, "  %zu of %zu freed pages resident after 300 ms\n", freed_resident, freed_pages);
        }
    }
}

/* The same for the pages of small blocks: once 1023 in 1024 of 12.8 MB of 64-byte blocks are freed,
 * a bigger request makes the library free the runs whose slots are all free (before it takes
 * another segment), and those pages go back to the kernel after a while too; the pages the blocks
 * were in then hold little more than the blocks still live. In a process of its own (this program
 * again, `small-runs` as its argument), so that no earlier test's memory is in the way and none of
 * its own is left to the tests after it. It prints how many of those pages are resident. */
static int freed_small_runs_child(void)
{
    enum { N = 200000, SIZE = 64, KEEP = 1024, BIG = 8 };
    static unsigned char *small[N];
    unsigned char *big[BIG];
    for (int i = 0; i < N; i++) {
        small[i] = malloc(opaque(SIZE));
        if (!small[i]) {
            return 1;
        }
        memset(small[i], 0x5a, SIZE);
    }
    for (int i = 0; i < N; i++) {
        if (i % KEEP != 0) {
            free(small[i]);
        }
    }
    for (int i = 0; i < BIG; i++) {
        big[i] = malloc(opaque(1 << 20));
        sink = big[i];
    }
    idle_then_allocate(20 << 10);
    /* The pages the blocks were in, each counted once (consecutive blocks share pages). */
    size_t pages = 0, resident = 0;
    uintptr_t last = 0;
    for (int i = 0; i < N; i++) {
        uintptr_t page = (uintptr_t)small[i] & ~(uintptr_t)4095;
        if (page != last) {
            pages++;
            resident += resident_pages_of((void *)page, 4096);
            last = page;
        }
    }
    int intact = 1;
    for (int i = 0; i < N; i += KEEP) {
        intact &= small[i][0] == 0x5a && small[i][SIZE - 1] == 0x5a;
    }
    printf("%zu %zu %d\n", pages, resident, intact);
    return 0;
}

/* Runs this program again with `mode` as its argument (the library reads its variables once) and
 * checks what it printed: the pages its freed blocks were in (at least `min_pages`), how many are
 * resident (under a quarter, with the library), and whether its kept blocks are intact. */
static void check_pages_went_back(const char *mode, size_t min_pages, const char *what)
{
    fflush(NULL);
    int out[2];
    if (pipe(out) != 0) {
        CHECK(0);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        execl("/proc/self/exe", "test_preload", mode, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[128] = "";
    ssize_t got = read(out[0], line, sizeof line - 1);
    close(out[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    size_t pages = 0, resident = 0;
    int intact = 0;
    CHECK(got > 0 && sscanf(line, "%zu %zu %d", &pages, &resident, &intact) == 3);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(intact);
    CHECK(pages >= min_pages);
    if (getenv("ZEND_ALLOC_PRELOAD_EXPECTED")) {
        CHECK(resident < pages / 4);
        if (resident >= pages / 4) {
            fprintf(stderr, "  %s: %zu of %zu pages resident\n", what, resident, pages);
        }
    }
}

static void test_freed_small_runs_go_back_after_a_while(void)
{
    check_pages_went_back("small-runs", 200000 * 64 / 4096, "freed 64-byte blocks after 300 ms");
}

/* A program that freed many blocks a little over a page and then only allocates what it has
 * freed takes no new memory, so nothing else frees their runs: the allocation slow paths look for
 * runs whose slots are all free on a clock (at most 6.4 s apart after walks that found little),
 * and their pages go back as other free pages do. In a process of its own (`over-page-runs`). */
static int compare_addresses(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return (x > y) - (x < y);
}

static int freed_over_page_runs_child(void)
{
    enum { N = 6000, SIZE = 4200, KEEP = 64 };
    static unsigned char *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(opaque(SIZE));
        if (!blocks[i]) {
            return 1;
        }
        memset(blocks[i], 0x5a, SIZE);
    }
    for (int i = 0; i < N; i++) {
        if (i % KEEP != 0) {
            free(blocks[i]);
        }
    }
    /* The pages the blocks were in, each once. */
    static uintptr_t page_of[N * 3];
    size_t count = 0;
    for (int i = 0; i < N; i++) {
        uintptr_t first = (uintptr_t)blocks[i] & ~(uintptr_t)4095;
        for (uintptr_t page = first; page < (uintptr_t)blocks[i] + SIZE; page += 4096) {
            page_of[count++] = page;
        }
    }
    qsort(page_of, count, sizeof *page_of, compare_addresses);
    /* Rounds of 300 ms idle and some allocations of that size until the pages are back (one on
     * glibc, which keeps them). */
    int rounds = getenv("ZEND_ALLOC_PRELOAD_EXPECTED") ? 30 : 1;
    size_t pages = 0, resident = 0;
    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < 200; i++) {
            void *again = malloc(opaque(5000));
            sink = again; /* kept: the compiler drops a malloc freed unused */
            free(again);
        }
        idle_then_allocate(20 << 10);
        pages = resident = 0;
        for (size_t i = 0; i < count; i++) {
            if (i == 0 || page_of[i] != page_of[i - 1]) {
                pages++;
                resident += resident_pages_of((void *)page_of[i], 4096);
            }
        }
        if (resident < pages / 4) {
            break;
        }
    }
    int intact = 1;
    for (int i = 0; i < N; i += KEEP) {
        intact &= blocks[i][0] == 0x5a && blocks[i][SIZE - 1] == 0x5a;
    }
    printf("%zu %zu %d\n", pages, resident, intact);
    return 0;
}

static void test_freed_over_page_runs_go_back_after_a_while(void)
{
    check_pages_went_back("over-page-runs", 6000 * 4200 / 4096, "freed 4200-byte blocks");
}

/* With the debug mode (ZEND_MM_DEBUG=1: every block tracked) malloc_usable_size answers for a
 * block of the calling thread and of another thread, at least what was asked for, and writing
 * that much stays inside the block (the free checks its end guard). In a process of its own (this
 * program again, `debug-usable` as its argument): the library reads its variables once. */
static void *debug_other_block;
static void *debug_make_other(void *arg)
{
    (void)arg;
    debug_other_block = malloc(opaque(100));
    return NULL;
}
static int debug_usable_child(void)
{
    size_t sizes[] = {1, 100, 3000, 5000, 3 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = malloc(opaque(sizes[i]));
        size_t usable = malloc_usable_size(p);
        if (usable < sizes[i]) {
            return 1;
        }
        memset(p, 0x5a, usable);
        free(p);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, debug_make_other, NULL) != 0 || pthread_join(t, NULL) != 0) {
        return 2;
    }
    size_t usable = malloc_usable_size(debug_other_block);
    if (usable < 100) {
        return 3;
    }
    memset(debug_other_block, 0x5a, usable);
    free(debug_other_block);
    /* A tracked block starts after its header: aligned requests are still aligned. */
    for (size_t align = 32; align <= 8192; align *= 2) {
        size_t asked[] = {1, 100, 3000, 5000, 70000};
        for (size_t i = 0; i < sizeof asked / sizeof *asked; i++) {
            void *p = NULL;
            if (posix_memalign(&p, align, asked[i]) != 0 || !aligned(p, align) ||
                malloc_usable_size(p) < asked[i]) {
                return 4;
            }
            memset(p, 0x5a, asked[i]);
            p = realloc(p, asked[i] * 2);
            free(p);
        }
    }
    puts("ok");
    return 0;
}

static void test_usable_size_in_the_debug_mode(void)
{
    if (!getenv("ZEND_ALLOC_PRELOAD_EXPECTED")) {
        return; /* glibc has no debug mode of ours */
    }
    int out[2];
    CHECK(pipe(out) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        dup2(out[1], STDERR_FILENO);
        setenv("ZEND_MM_DEBUG", "1", 1);
        execl("/proc/self/exe", "test_preload", "debug-usable", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char text[4096] = "";
    size_t got = 0;
    ssize_t n;
    while (got < sizeof text - 1 && (n = read(out[0], text + got, sizeof text - 1 - got)) > 0) {
        got += (size_t)n;
    }
    close(out[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(strstr(text, "ok\n") != NULL);
    CHECK(strstr(text, "Overflown") == NULL && strstr(text, "corrupted") == NULL);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        fprintf(stderr, "  debug-usable child: status %d, output:\n%s\n", status, text);
    }
}

/* Memory that held many small blocks serves other sizes once they are freed: glibc merges the
 * freed chunks; the library frees its small runs whose slots are all free before it takes more
 * segments. The resident set after both phases stays near one phase's size, not their sum. */
static void test_freed_small_blocks_serve_other_sizes(void)
{
    enum { SMALL = 48, NSMALL = 300000, LARGE = 64 << 10, NLARGE = 220 }; /* 14.4 MB a phase */
    static void *small[NSMALL], *large[NLARGE];
    /* Free memory earlier tests left resident goes back first (glibc and this library both hand
     * free pages to the kernel in malloc_trim), so the small phase's pages are fresh ones. */
    malloc_trim(0);
    size_t before = resident_bytes();
    if (!fill_blocks(small, NSMALL, SMALL)) {
        return;
    }
    size_t small_phase = resident_bytes() - before;
    for (int i = 0; i < NSMALL; i++) {
        free(small[i]);
    }
    if (!fill_blocks(large, NLARGE, LARGE)) {
        return;
    }
    size_t both = resident_bytes() - before;
    CHECK(small_phase >= (size_t)NSMALL * SMALL);
    CHECK(both < small_phase + small_phase / 2);
    if (both >= small_phase + small_phase / 2) {
        fprintf(stderr, "  resident growth %zu KiB after the small blocks, %zu KiB after the large ones\n",
                small_phase >> 10, both >> 10);
    }
    for (int i = 0; i < NLARGE; i++) {
        free(large[i]);
    }
}

/* A thread that fills `n` small blocks, frees all but its first (a buffer it leaves behind, as a
 * thread that printed leaves stdio's) and exits. */
typedef struct {
    int n;
    unsigned char *left_behind;
    size_t peak; /* resident growth at the thread's peak */
    size_t before;
} job_t;

static void *job_blocks[300000];

static void *small_job(void *arg)
{
    job_t *job = arg;
    void **blocks = job_blocks;
    if (job->n > (int)(sizeof job_blocks / sizeof *job_blocks) || !fill_blocks(blocks, job->n, 48)) {
        return NULL;
    }
    size_t now = resident_bytes();
    job->peak = now > job->before ? now - job->before : 0;
    job->left_behind = blocks[0];
    for (int i = 1; i < job->n; i++) {
        free(blocks[i]);
    }
    return NULL;
}

static size_t run_job(job_t *job)
{
    memset(job_blocks, 0, sizeof job_blocks); /* resident before, not counted */
    job->before = resident_bytes();
    pthread_t t;
    if (pthread_create(&t, NULL, small_job, job) != 0) {
        CHECK(!"pthread_create");
        return 0;
    }
    pthread_join(t, NULL);
    CHECK(job->left_behind != NULL && job->peak >= (size_t)job->n * 48);
    size_t now = resident_bytes();
    return now > job->before ? now - job->before : 0;
}

/* What an exited thread freed goes back although it left a block behind: the library gives back
 * what an exiting thread's heap holds unused beyond two segments (glibc keeps its arena's pages
 * until malloc_trim), and malloc_trim from any thread gives back the rest of the exited threads'
 * heaps (as glibc's trims every arena). The block left behind keeps its bytes and is freed last. */
static void test_an_exited_threads_freed_memory_goes_back(void)
{
    malloc_trim(0);
    job_t big = {.n = 300000}; /* 14.4 MB of blocks */
    size_t after_exit = run_job(&big);
    if (getenv("ZEND_ALLOC_PRELOAD_EXPECTED")) {
        CHECK(after_exit < big.peak / 4);
        if (after_exit >= big.peak / 4) {
            fprintf(stderr, "  exited thread: peak %zu KiB, %zu KiB resident after its exit\n",
                    big.peak >> 10, after_exit >> 10);
        }
    }
    malloc_trim(0); /* glibc's next thread would reuse the resident pages of the arena */
    job_t small = {.n = 40000}; /* 1.9 MB: an exiting heap keeps that much */
    run_job(&small);
    malloc_trim(0);
    size_t now = resident_bytes(), after_trim = now > small.before ? now - small.before : 0;
    CHECK(after_trim < small.peak / 4);
    if (after_trim >= small.peak / 4) {
        fprintf(stderr, "  exited thread: peak %zu KiB, %zu KiB resident after malloc_trim\n",
                small.peak >> 10, after_trim >> 10);
    }
    unsigned char *left[] = {big.left_behind, small.left_behind};
    unsigned char expect[48];
    memset(expect, 0x3c, sizeof expect);
    for (int i = 0; i < 2; i++) {
        if (left[i]) {
            CHECK(memcmp(left[i], expect, sizeof expect) == 0);
            free(left[i]);
        }
    }
}

/* Runs `fn` in a child process with stderr silenced; whether the child was killed by SIGABRT. */
static int aborts_in_child(void (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        fn();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

/* The compiler must not see the second free of a block (it warns, and may assume it away). */
static void *volatile freed;

static void *free_it(void *p)
{
    free(p);
    return NULL;
}

static void free_twice_with_another_free_between(void)
{
    char *p = malloc(opaque(100)), *q = malloc(opaque(100));
    sink = q; /* q's malloc and free stay */
    freed = p;
    free(p);
    free(q);
    free(freed);
}

static void free_twice_from_another_thread(void)
{
    char *p = malloc(opaque(100)), *q = malloc(opaque(100));
    pthread_t t;
    sink = q;
    freed = p;
    free(p);
    free(q);
    if (pthread_create(&t, NULL, free_it, freed) == 0) {
        pthread_join(t, NULL);
    }
}

/* Blocks a little over a page (SQLite's page cache: 4096-byte pages with a header; Node.js
 * buffers) take at most a third more than asked for, as in glibc, not a second page; a small
 * page-aligned block still takes one page. Such blocks keep their bytes through reallocs among
 * those sizes and frees on another thread. */
enum { OVER_PAGE = 600 };
static unsigned char *over_page[OVER_PAGE];

static size_t over_page_size(int i)
{
    return 3073 + (size_t)i * 7919 % (8192 - 3073 + 1);
}

static void *free_over_page_evens(void *arg)
{
    (void)arg;
    for (int i = 0; i < OVER_PAGE; i += 2) {
        free(over_page[i]);
        over_page[i] = NULL;
    }
    return NULL;
}

static void test_blocks_a_little_over_a_page_take_at_most_a_third_more(void)
{
    size_t edges[] = {3073, 4096, 4097, 4200, 4400, 5120, 5121, 6144, 6145, 8192};
    int bad = 0;
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        unsigned char *p = malloc(opaque(edges[i]));
        size_t usable = malloc_usable_size(p);
        bad += p == NULL || !aligned(p, 16) || usable < edges[i] || 3 * usable > 4 * edges[i];
        if (bad) {
            fprintf(stderr, "  malloc(%zu): %zu usable bytes\n", edges[i], usable);
        }
        memset(p, 0x77, usable);
        free(p);
    }
    CHECK(bad == 0);
    for (int i = 0; i < OVER_PAGE; i++) {
        size_t n = over_page_size(i);
        over_page[i] = malloc(opaque(n));
        bad += over_page[i] == NULL || 3 * malloc_usable_size(over_page[i]) > 4 * n;
        stamp(over_page[i], n, (unsigned)i);
    }
    CHECK(bad == 0);
    for (int i = 1; i < OVER_PAGE; i += 2) { /* resized among the sizes over a page */
        size_t n = over_page_size(i), m = over_page_size(i + 7);
        bad += !stamped(over_page[i], n, (unsigned)i);
        over_page[i] = realloc(over_page[i], m);
        bad += over_page[i] == NULL || (m < n ? 0 : !stamped(over_page[i], n, (unsigned)i));
        stamp(over_page[i], m, (unsigned)i);
    }
    CHECK(bad == 0);
    for (int i = 0; i < OVER_PAGE; i += 2) {
        bad += !stamped(over_page[i], over_page_size(i), (unsigned)i);
    }
    pthread_t t;
    pthread_create(&t, NULL, free_over_page_evens, NULL);
    pthread_join(t, NULL);
    for (int i = 0; i < OVER_PAGE; i += 2) { /* the freed slots serve again */
        over_page[i] = malloc(over_page_size(i));
        stamp(over_page[i], over_page_size(i), (unsigned)i + 1);
    }
    for (int i = 0; i < OVER_PAGE; i++) {
        size_t n = over_page_size(i % 2 ? i + 7 : i);
        bad += !stamped(over_page[i], n, (unsigned)i + (i % 2 == 0));
        free(over_page[i]);
    }
    CHECK(bad == 0);
    /* Aligned to what those bins' slots have (a multiple of their size in a page-aligned run). */
    size_t aligned_asks[][2] = {{1024, 5000}, {2048, 5200}, {2048, 6144}, {512, 2500}, {1024, 3000}};
    for (size_t i = 0; i < sizeof aligned_asks / sizeof aligned_asks[0]; i++) {
        void *p = NULL;
        size_t align = aligned_asks[i][0], n = aligned_asks[i][1];
        CHECK(posix_memalign(&p, opaque(align), opaque(n)) == 0 && aligned(p, align));
        size_t usable = malloc_usable_size(p);
        CHECK(usable >= n && 3 * usable <= 4 * n);
        if (3 * usable > 4 * n) {
            fprintf(stderr, "  posix_memalign(%zu, %zu): %zu usable bytes\n", align, n, usable);
        }
        memset(p, 3, usable);
        free(p);
    }
    /* Shrunk below the bins above a page, a block moves to the page those sizes take. */
    unsigned char *shrunk = malloc(opaque(5000));
    stamp(shrunk, 3500, 35);
    shrunk = realloc(shrunk, opaque(3500));
    CHECK(shrunk != NULL && stamped(shrunk, 3500, 35) && 3 * malloc_usable_size(shrunk) <= 4 * 3500);
    free(shrunk);
    size_t small[] = {1, 100, 3000, 4096};
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
        void *p = memalign(opaque(4096), small[i]);
        size_t usable = malloc_usable_size(p);
        CHECK(p != NULL && aligned(p, 4096) && usable >= small[i] && usable <= 4096 + 64);
        memset(p, 1, usable);
        free(p);
    }
}

/* A freed block's link made to name other memory (a write after free; the first step of making
 * malloc return memory of the writer's choosing) is caught before that memory is handed out. */
static char chosen_memory[256] __attribute__((aligned(64)));

static void link_made_to_name_other_memory(void)
{
    char *p = malloc(opaque(64)), *q = malloc(opaque(64));
    sink = p;
    freed = q;
    free(p);
    free(q);
    void *to = chosen_memory;
    memcpy(freed, &to, sizeof to);
    sink = malloc(opaque(64));
    sink = malloc(opaque(64));
    sink = malloc(opaque(64));
}

/* A count stored into the first field of a freed block: the list then names a small number,
 * which the allocation stops at instead of reading memory there. */
static void link_written_with_a_number(void)
{
    char *p = malloc(opaque(64)), *q = malloc(opaque(64));
    sink = p;
    freed = q;
    free(p);
    free(q);
    size_t count = 3;
    memcpy(freed, &count, sizeof count);
    sink = malloc(opaque(64));
    sink = malloc(opaque(64));
    sink = malloc(opaque(64));
}

/* A block freed twice (p, q, p) is caught, as glibc's tcache catches it: the process aborts
 * instead of handing the block out twice. Freed again from another thread, glibc misses it (the
 * block is not in that thread's tcache); this library finds it marked free. */
static void test_double_frees_abort(void)
{
    CHECK(aborts_in_child(free_twice_with_another_free_between));
    if (getenv("ZEND_ALLOC_PRELOAD_EXPECTED")) {
        CHECK(aborts_in_child(free_twice_from_another_thread));
        CHECK(aborts_in_child(link_made_to_name_other_memory));
        CHECK(aborts_in_child(link_written_with_a_number));
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "small-runs")) {
        return freed_small_runs_child();
    }
    if (argc > 1 && !strcmp(argv[1], "debug-usable")) {
        return debug_usable_child();
    }
    if (argc > 1 && !strcmp(argv[1], "over-page-runs")) {
        return freed_over_page_runs_child();
    }
    test_the_library_serves_malloc();
    test_glibc_edge_cases();
    test_alignment_and_usable_size();
    test_contents_survive_realloc_and_calloc_zeroes();
    test_a_buffer_grown_a_page_at_a_time_keeps_its_bytes();
    test_pointers_of_the_replaced_allocator();
    test_blocks_freed_on_other_threads();
    test_threads_exit_with_live_blocks();
    test_fork_while_threads_allocate();
    test_freed_big_blocks_go_back_after_a_while();
    test_freed_pages_among_live_blocks_go_back_after_a_while();
    test_freed_small_runs_go_back_after_a_while();
    test_freed_over_page_runs_go_back_after_a_while();
    test_freed_small_blocks_serve_other_sizes();
    test_an_exited_threads_freed_memory_goes_back();
    test_blocks_a_little_over_a_page_take_at_most_a_third_more();
    test_double_frees_abort();
    test_usable_size_in_the_debug_mode();
    sink = NULL;
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
