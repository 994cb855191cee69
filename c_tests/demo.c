/*
 * A short demo: five PHP-like requests on the request heap, with the memory each one used.
 *
 * Each request builds a symbol table of small "zvals", some strings grown by erealloc, a few
 * large buffers and, now and then, a huge one; then the request ends and
 * shutdown_memory_manager(1, 0) releases everything at once.
 */
#include <stdio.h>
#include <string.h>

#include "zend_alloc.h"

/* `bytes` with a unit a reader takes in at a glance: B, KiB or MiB (1 KiB = 1024 bytes). */
static const char *human(size_t bytes, char *buf, size_t size)
{
    if (bytes < 1024) {
        snprintf(buf, size, "%zu B", bytes);
    } else if (bytes < 1024 * 1024) {
        snprintf(buf, size, "%.1f KiB", (double)bytes / 1024);
    } else {
        snprintf(buf, size, "%.1f MiB", (double)bytes / (1024 * 1024));
    }
    return buf;
}

typedef struct bucket {
    struct bucket *next;
    char *key;
    void *value;
} bucket;

static void request(int n)
{
    /* A hash table of small entries, like a script's variables. */
    bucket **table = ecalloc(1024, sizeof(bucket *));
    for (int i = 0; i < 20000 * n; i++) {
        char key[32];
        snprintf(key, sizeof key, "var_%d", i);
        bucket *b = emalloc(sizeof *b);
        b->key = estrdup(key);
        b->value = emalloc(16 + (size_t)(i % 48));
        b->next = table[i % 1024];
        table[i % 1024] = b;
        if (i % 3 == 0) { /* unset() */
            table[i % 1024] = b->next;
            efree(b->value);
            efree(b->key);
            efree(b);
        }
    }
    /* Output buffering: a string grown piece by piece. */
    size_t len = 0, cap = 64;
    char *out = emalloc(cap);
    for (int i = 0; i < 10000 * n; i++) {
        const char *piece = "<li>item</li>";
        size_t plen = strlen(piece);
        if (len + plen + 1 > cap) {
            cap *= 2;
            out = erealloc(out, cap);
        }
        memcpy(out + len, piece, plen);
        len += plen;
    }
    /* A few large buffers (file reads) and, in the last request, a huge one. */
    for (int i = 0; i < 4; i++) {
        efree(emalloc(100000 * (size_t)n));
    }
    if (n == 5) {
        char *image = emalloc(8 * 1024 * 1024);
        image[0] = 1;
    }
    char used[32], used_peak[32], real[32], real_peak[32];
    printf("request %d: in use %8s (peak %8s), from the system %8s (peak %8s)\n", n,
           human(zend_memory_usage(0), used, sizeof used), human(zend_memory_peak_usage(0), used_peak, sizeof used_peak),
           human(zend_memory_usage(1), real, sizeof real), human(zend_memory_peak_usage(1), real_peak, sizeof real_peak));
    /* No frees for what is left: the end of the request releases it all at once. */
    shutdown_memory_manager(1, 0);
}

int main(void)
{
    char used[32], real[32];
    start_memory_manager();
    zend_mm_storage *storage = zend_mm_get_storage(zend_mm_get_heap());
    printf("zend_alloc demo: five PHP-like requests on the request heap (storage '%s')\n"
           "  in use           = what the program's live blocks take (zend_memory_usage(0))\n"
           "  from the system  = what the heap holds from the storage: segments and huge blocks "
           "(zend_memory_usage(1))\n"
           "  peak             = the highest value during the request\n"
           "request n sets 20000 x n variables (a third of them unset again), writes 10000 x n pieces of\n"
           "output (13 bytes each) and reads 4 files of 100000 x n bytes; request 5 also holds an 8 MiB image\n",
           storage->handlers->name);
    printf("before the first request: in use %s, from the system %s\n", human(zend_memory_usage(0), used, sizeof used),
           human(zend_memory_usage(1), real, sizeof real));
    for (int n = 1; n <= 5; n++) {
        request(n);
    }
    printf("after the last request: in use %s, from the system %s (what the heap keeps for the next request)\n",
           human(zend_memory_usage(0), used, sizeof used), human(zend_memory_usage(1), real, sizeof real));
    shutdown_memory_manager(1, 1);
    return 0;
}
