/*
 * A short demo: five PHP-like requests on the request heap, with the usage and peak of each.
 *
 * Each request builds a symbol table of small "zvals", some strings grown by erealloc, a few
 * large buffers and, now and then, a huge one; then the request ends and
 * shutdown_memory_manager(1, 0) releases everything at once.
 */
#include <stdio.h>
#include <string.h>

#include "zend_alloc.h"

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
    printf("request %d: usage %9zu  peak %9zu  real %9zu  real peak %9zu\n", n, zend_memory_usage(0),
           zend_memory_peak_usage(0), zend_memory_usage(1), zend_memory_peak_usage(1));
    /* No frees for what is left: the end of the request releases it all at once. */
    shutdown_memory_manager(1, 0);
}

int main(void)
{
    start_memory_manager();
    zend_mm_storage *storage = zend_mm_get_storage(zend_mm_get_heap());
    printf("zend_alloc demo: storage '%s', start usage %zu, real %zu\n", storage->handlers->name,
           zend_memory_usage(0), zend_memory_usage(1));
    for (int n = 1; n <= 5; n++) {
        request(n);
    }
    printf("after the last request: usage %zu, real %zu (segments kept for the next request)\n",
           zend_memory_usage(0), zend_memory_usage(1));
    shutdown_memory_manager(1, 1);
    return 0;
}
