/*
 * php_probe.c - runs the parity scenarios against PHP 8.2's own allocator and prints what it measures.
 *
 * Linked ONLY against Debian's libphp8.2-embed (/usr/lib/libphp8.2.so, a release build, NTS), never
 * against libzend_alloc: both export _emalloc, _efree, ... so they cannot share a process.
 * c_tests/test_php_parity.c runs the same scenarios against libzend_alloc, runs this program and
 * compares the two outputs line by line.
 *
 *   gcc -std=c99 -Wall -Wextra -Werror c_tests/php_probe.c -L/usr/lib -lphp8.2 -o c_tests/build/php_probe
 *
 * Output: one measurement per line, "<kind> <key fields...> <values...>" separated by single
 * spaces; lines starting with '#' are comments; the last line is "end". The field lists are in
 * test_php_parity.c (FIELDS). The scenarios themselves are in parity_scenarios.h, shared with
 * test_php_parity.c.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- PHP 8.2's allocator, release ABI (no location parameters); no PHP headers ---- */
void *_emalloc(size_t size);
void _efree(void *ptr);
void *_erealloc(void *ptr, size_t size);
size_t _zend_mem_block_size(void *ptr);
size_t zend_memory_usage(bool real_usage);
size_t zend_memory_peak_usage(bool real_usage);
void start_memory_manager(void);
void shutdown_memory_manager(bool silent, bool full_shutdown);

#define A_ALLOC(n)       _emalloc(n)
#define A_FREE(p)        _efree(p)
#define A_REALLOC(p, n)  _erealloc((p), (n))
#define A_BLOCK_SIZE(p)  _zend_mem_block_size(p)
#define A_USAGE(real)    zend_memory_usage(real)
#define A_PEAK(real)     zend_memory_peak_usage(real)
/* Request end: every block released, usage and peak back to 0, the first chunk empty again. */
#define A_RESET()        shutdown_memory_manager(1, 0)
/* Gives back the huge blocks kept for later requests: PHP keeps none, so nothing to do. (Calling
 * 8.2's zend_mm_gc here made the next shutdown_memory_manager crash in zend_mm_shutdown.) */
#define A_GC()           ((void)0)

static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

#include "parity_scenarios.h"

/* Stops the optimiser from folding a size into a call it warns about (alloc-size-larger-than). */
static size_t opaque_size(size_t n)
{
    volatile size_t v = n;
    return v;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "overflow-message") == 0) {
        /* PHP's text for a size that overflows when rounded up to pages: PHP writes it to stderr
         * (no engine is started, so zend_error has no handler) and aborts. */
        start_memory_manager();
        _emalloc(opaque_size(SIZE_MAX - 100));
        return 1;
    }
    /* PHP reads these in start_memory_manager(); the comparison is with the default heap. */
    unsetenv("USE_ZEND_ALLOC");
    unsetenv("USE_ZEND_ALLOC_HUGE_PAGES");
    start_memory_manager();
    out("# PHP 8.2 allocator (libphp8.2.so), release ABI");
    run_scenarios();
    out("end");
    fflush(stdout);
    return 0;
}
