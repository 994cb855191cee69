/*
 * broken.c - a deliberately wrong allocator, preloaded into bench_malloc by the smoke test to show
 * that the driver's checks catch one: a fast allocator that returns overlapping blocks must fail.
 *
 * Bump allocation from one lazily reserved mapping; free does nothing; every 1000th malloc hands
 * out the previous block again while it is still live. Single-threaded use only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define ARENA_SIZE (1ul << 34) /* address space only (MAP_NORESERVE); pages come on first touch */

static char *top, *end;
static void *last;
static size_t last_size;
static unsigned long count;

/* Every block is preceded by its size (realloc and malloc_usable_size need it). */
static void *bump(size_t n, size_t align)
{
    if (!top) {
        void *a = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (a == MAP_FAILED)
            return NULL;
        top = a;
        end = top + ARENA_SIZE;
    }
    if (align < 16)
        align = 16;
    uintptr_t p = ((uintptr_t)top + sizeof(size_t) + align - 1) & ~(uintptr_t)(align - 1);
    if (n > (uintptr_t)end - p) {
        errno = ENOMEM;
        return NULL;
    }
    ((size_t *)p)[-1] = n;
    top = (char *)(p + n);
    return (void *)p;
}

void *malloc(size_t n)
{
    if (++count % 1000 == 0 && last && last_size >= n)
        return last; /* the bug */
    last = bump(n, 16);
    last_size = n;
    return last;
}

void free(void *p)
{
    (void)p;
}

void *calloc(size_t nmemb, size_t size)
{
    if (size && nmemb > SIZE_MAX / size)
        return NULL;
    return bump(nmemb * size, 16); /* fresh mapping: already zero */
}

void *realloc(void *p, size_t n)
{
    void *q = bump(n, 16);
    if (p && q) {
        size_t old = ((size_t *)p)[-1];
        memcpy(q, p, old < n ? old : n);
    }
    return q;
}

void *memalign(size_t align, size_t n)
{
    return bump(n, align);
}

void *aligned_alloc(size_t align, size_t n)
{
    return bump(n, align);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    *out = bump(n, align);
    return *out ? 0 : ENOMEM;
}

size_t malloc_usable_size(void *p)
{
    return p ? ((size_t *)p)[-1] : 0;
}
