/*
 * growth_probe.c - runs the growth pattern (growth_pattern.h) once and prints what it costs.
 *
 * Built twice from this one source, because PHP's allocator and this library export the same
 * names and cannot share a process:
 *
 *   gcc -std=c99 -Wall -Wextra -Werror -DPHP_SIDE c_tests/growth_probe.c -L/usr/lib -lphp8.2 \
 *       -o c_tests/build/growth_probe_php                       # PHP 8.2's allocator (libphp8.2-embed)
 *   gcc -std=c99 -Wall -Wextra -Werror -Iinclude c_tests/growth_probe.c -Ltarget/release -lzend_alloc \
 *       -Wl,-rpath,$PWD/target/release -o c_tests/build/growth_probe   # this library
 *
 *   growth_probe [step side every target]     (defaults: 256 65536 8 2300000)
 *
 * Output, one line:
 *   growth <step> <side> <every> <target> <side_blocks> <usage> <real> <peak> <real_peak> <rss_kib>
 * usage/real: zend_memory_usage(0)/(1) at the end; peak/real_peak: zend_memory_peak_usage(0)/(1);
 * rss_kib: VmHWM at the end minus VmRSS before the allocator's first use (KiB).
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef PHP_SIDE
/* PHP 8.2's allocator, release ABI (no location parameters); no PHP headers. */
void *_emalloc(size_t size);
void _efree(void *ptr);
void *_erealloc(void *ptr, size_t size);
size_t zend_memory_usage(bool real_usage);
size_t zend_memory_peak_usage(bool real_usage);
void start_memory_manager(void);
void shutdown_memory_manager(bool silent, bool full_shutdown);
#define A_ALLOC(n)      _emalloc(n)
#define A_REALLOC(p, n) _erealloc((p), (n))
#define WHO "php"
#else
#include "zend_alloc.h"
#define A_ALLOC(n)      emalloc(n)
#define A_REALLOC(p, n) erealloc((p), (n))
#define WHO "zend"
#endif
#define A_USAGE(real) zend_memory_usage(real)
#define A_PEAK(real)  zend_memory_peak_usage(real)

#include "growth_pattern.h"

int main(int argc, char **argv)
{
    size_t step = argc > 1 ? strtoull(argv[1], NULL, 0) : 256;
    size_t side = argc > 2 ? strtoull(argv[2], NULL, 0) : 65536;
    unsigned every = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 0) : 8;
    size_t target = argc > 4 ? strtoull(argv[4], NULL, 0) : 2300000;
    growth_result r = {0};
#ifdef PHP_SIDE
    unsetenv("USE_ZEND_ALLOC");
    unsetenv("USE_ZEND_ALLOC_HUGE_PAGES");
#endif
    size_t rss0 = growth_status_kib("VmRSS:");
    start_memory_manager();
    growth_run(step, side, every ? every : 1, target, &r);
    size_t hwm = growth_status_kib("VmHWM:");
    if (r.side_blocks == (size_t)-1) {
        return 1;
    }
    printf("growth %zu %zu %u %zu %zu %zu %zu %zu %zu %zu\n", step, side, every, target, r.side_blocks, r.usage,
           r.real, r.peak, r.real_peak, hwm - rss0);
    fflush(stdout);
    shutdown_memory_manager(1, 0);
    return 0;
}
