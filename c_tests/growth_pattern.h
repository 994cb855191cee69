/*
 * growth_pattern.h - the "growing block among side blocks" pattern (defects issue, item 9).
 *
 * One block grows by `step` bytes per realloc up to `target` bytes; every `every` steps a block of
 * `side` bytes is allocated and kept. This is what PHP's compiler does in zend_add_literal (the
 * literal table grows by 16 zvals = 256 bytes per erealloc) while it allocates 64 KiB arena blocks
 * (Zend/tests/runtime_compile_time_binary_operands.phpt).
 *
 * Included by growth_probe.c (built twice: against PHP 8.2's allocator and against this library)
 * and by test_growth.c, each defining first the A_* macros for its allocator.
 */
#ifndef GROWTH_PATTERN_H
#define GROWTH_PATTERN_H

#include <stdio.h>
#include <string.h>

typedef struct {
    size_t usage, real, peak, real_peak; /* zend_memory_usage / zend_memory_peak_usage at the end */
    size_t side_blocks;
} growth_result;

/* Runs the pattern in the current request and leaves every block allocated (the caller ends the
 * request). Writes every byte the growing block gains and the first byte of each page of each side
 * block, as the compiler would, so RSS reflects what is used. */
static void growth_run(size_t step, size_t side, unsigned every, size_t target, growth_result *r)
{
    unsigned char *p = NULL;
    size_t size = 0, n = 0;
    unsigned i = 0;
    while (size + step <= target) {
        p = (unsigned char *)A_REALLOC(p, size + step);
        memset(p + size, (int)(i & 0xff), step);
        size += step;
        if (++i % every == 0) {
            unsigned char *q = (unsigned char *)A_ALLOC(side);
            for (size_t off = 0; off < side; off += 4096) {
                q[off] = 1;
            }
            n++;
        }
    }
    /* the content survived every move */
    for (size_t k = 0; k < size; k += step) {
        if (p[k] != (unsigned char)((k / step) & 0xff)) {
            fprintf(stderr, "growth_run: content lost at byte %zu\n", k);
            r->side_blocks = (size_t)-1;
            return;
        }
    }
    r->usage = A_USAGE(0);
    r->real = A_USAGE(1);
    r->peak = A_PEAK(0);
    r->real_peak = A_PEAK(1);
    r->side_blocks = n;
}

/* A field of /proc/self/status in KiB ("VmHWM:", "VmRSS:"), or 0. */
static size_t growth_status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t v = 0, len = strlen(field);
    if (!f) {
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, len) == 0) {
            v = (size_t)strtoull(line + len, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

#endif /* GROWTH_PATTERN_H */
