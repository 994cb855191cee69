/*
 * The header's macro layer: every wrapper macro is used once and its result checked. Written in
 * C89 (declarations first) so that `make headers` builds and runs it with gcc and clang as C89,
 * C99, C11 and C17 and with g++ and clang++ as C++98 to C++20, each with -pedantic, the conversion
 * and shadowing warnings and -Werror.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zend_alloc.h"

static int passed = 0, failed = 0;
#define CHECK(cond) do { if (cond) { passed++; } else { failed++; fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } } while (0)

/* Functions in PHP's style take the location parameters and relay them. */
static void *relay_alloc(size_t size ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC)
{
    (void)__zend_orig_filename;
    (void)__zend_orig_lineno;
    return emalloc_rel(size);
}

static int relays(ZEND_FILE_LINE_D ZEND_FILE_LINE_ORIG_DC)
{
    int ok = 1;
    char *p, *s, *n, *pd, *pn, *es, *en;
    int *z;
    void *pm, *pc, *ps, *em, *ec, *sp, *hp;
    zend_mm_heap *heap;
    (void)__zend_orig_filename;
    (void)__zend_orig_lineno;
    p = (char *)safe_emalloc_rel(2, 8, 4);
    ok &= zend_mem_block_size_rel(p) == 24;
    p = (char *)erealloc_rel(p, 100);
    ok &= zend_mem_block_size_rel(p) == 112;
    p = (char *)erealloc2_rel(p, 200, 10);
    p = (char *)erealloc_recoverable_rel(p, 300);
    ok &= p != NULL;
    p = (char *)safe_erealloc_rel(p, 3, 100, 0);
    ok &= zend_mem_block_size_rel(p) == 320;
    efree_rel(p);
    z = (int *)ecalloc_rel(4, sizeof(int));
    ok &= z[0] == 0 && z[3] == 0;
    efree_size_rel(z, 4 * sizeof(int));
    s = estrdup_rel("relay");
    n = estrndup_rel("relayed", 5);
    ok &= strcmp(s, "relay") == 0 && strcmp(n, "relay") == 0;
    efree(s);
    efree(n);

    pm = pemalloc_rel(10, 1);
    pc = pecalloc_rel(2, 5, 1);
    ps = safe_pemalloc_rel(2, 5, 0, 1);
    pm = perealloc_rel(pm, 20, 1);
    pc = perealloc2_rel(pc, 30, 10, 1);
    ps = perealloc_recoverable_rel(ps, 40, 1);
    ps = safe_perealloc_rel(ps, 5, 10, 0, 1);
    pd = pestrdup_rel("p", 1);
    pn = pestrndup_rel("pq", 1, 1);
    ok &= pm && pc && ps && strcmp(pd, "p") == 0 && strcmp(pn, "p") == 0;
    pefree_rel(pm, 1);
    pefree_rel(pc, 1);
    pefree_rel(ps, 1);
    pefree_rel(pd, 1);
    pefree_rel(pn, 1);

    em = pemalloc_rel(10, 0);
    ok &= is_zend_ptr(em);
    pefree_rel(em, 0);
    ec = pecalloc_rel(2, 2, 0);
    ec = perealloc_rel(ec, 50, 0);
    ec = perealloc2_rel(ec, 60, 50, 0);
    ec = perealloc_recoverable_rel(ec, 70, 0);
    ec = safe_perealloc_rel(ec, 2, 40, 0, 0);
    pefree_rel(ec, 0);
    es = pestrdup_rel("e", 0);
    en = pestrndup_rel("ef", 1, 0);
    sp = safe_pemalloc_rel(3, 3, 3, 0);
    ok &= is_zend_ptr(es) && is_zend_ptr(en) && is_zend_ptr(sp);
    efree(es);
    efree(en);
    efree(sp);

    heap = zend_mm_startup();
    hp = zend_mm_alloc_rel(heap, 10);
    hp = zend_mm_realloc_rel(heap, hp, 100);
    hp = zend_mm_realloc2_rel(heap, hp, 200, 100);
    ok &= zend_mm_block_size_rel(heap, hp) == 224;
    zend_mm_free_rel(heap, hp);
    zend_mm_shutdown(heap, 1, 1);
    return ok;
}

/* The relay of an origin, as PHP's helpers that sit between two relaying functions do. */
static size_t origin_relay(ZEND_FILE_LINE_D, ZEND_FILE_LINE_ORIG_D)
{
    void *p = relay_alloc(3 ZEND_FILE_LINE_RELAY_CC ZEND_FILE_LINE_ORIG_RELAY_CC);
    void *q = relay_alloc(4, ZEND_FILE_LINE_ORIG_RELAY_C, ZEND_FILE_LINE_RELAY_C);
    size_t size = zend_mem_block_size(p);
    efree(p);
    efree(q);
    return size;
}

/* The attribute macros, on declarations as PHP writes them. */
ZEND_API void *ZEND_FASTCALL attributed_alloc(size_t size) ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE(1);
ZEND_API void *attributed_calloc(size_t n, size_t size) ZEND_ATTRIBUTE_ALLOC_SIZE2(1, 2);
static int report(const char *fmt, ...) ZEND_ATTRIBUTE_FORMAT(printf, 1, 2);
ZEND_ATTRIBUTE_DEPRECATED void old_api(void);
static ZEND_NORETURN void never_returns(void);

ZEND_API void *ZEND_FASTCALL attributed_alloc(size_t size) { return emalloc(size); }
ZEND_API void *attributed_calloc(size_t n, size_t size) { return ecalloc(n, size); }
static int report(const char *fmt, ...) { return fmt != NULL; }
void old_api(void) {}
static void never_returns(void) { abort(); }

static size_t attributed(size_t n)
{
    ZEND_ATTRIBUTE_UNUSED int unused = 0;
    void *a = attributed_alloc(n);
    void *b = attributed_calloc(1, n);
    size_t size = zend_mem_block_size(a);
    efree(a);
    efree(b);
    if (!report("%lu", (unsigned long)size)) {
        never_returns();
    }
    return size;
}

static void TSRMLS_FETCH_test(TSRMLS_D)
{
    TSRMLS_FETCH();
}

static size_t usage(int real TSRMLS_DC)
{
    return zend_memory_usage(real);
}

int main(void)
{
    char *p, *s, *n, *e1, *e2, *e3, *e4, *e5, *pd, *pn, *qd, *qn;
    const char *none = NULL;
    int *z;
    void *large, *huge, *pm, *pc, *ps, *q, *qc, *qs, *hp, *r;
    zend_mm_heap *heap;

    start_memory_manager(TSRMLS_C);
    TSRMLS_FETCH_test(TSRMLS_C);
    CHECK(usage(1 TSRMLS_CC) >= ZEND_MM_CHUNK_SIZE || usage(1 TSRMLS_CC) > 0);

    p = (char *)emalloc(10);
    CHECK(zend_mem_block_size(p) == 16);
    p = (char *)erealloc(p, 20);
    p = (char *)erealloc2(p, 30, 20);
    p = (char *)erealloc_recoverable(p, 40);
    CHECK(zend_mem_block_size(p) == 40);
    p = (char *)safe_erealloc(p, 10, 10, 4);
    CHECK(zend_mem_block_size(p) == 112);
    efree(p);
    p = (char *)safe_emalloc(3, 5, 1);
    efree_size(p, 16);
    z = (int *)ecalloc(8, sizeof(int));
    CHECK(z[0] == 0 && z[7] == 0);
    efree(z);

    large = emalloc_large(5000);
    CHECK(zend_mem_block_size(large) == 8192);
    efree_large(large);
    huge = emalloc_huge(3 * 1024 * 1024);
    CHECK(zend_mem_block_size(huge) == 3 * 1024 * 1024);
    efree_huge(huge);
    /* The size-specialised names PHP 8 code may call directly. */
    large = _emalloc_large(9000 ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
    huge = _emalloc_huge(4 * 1024 * 1024 ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
    CHECK(zend_mem_block_size(large) == 12288 && zend_mem_block_size(huge) == 4 * 1024 * 1024);
    _efree_large(large ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
    _efree_huge(huge ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
    CHECK(zend_mm_is_custom_heap(zend_mm_get_heap()) == ZEND_MM_CUSTOM_HEAP_NONE);
    zend_mm_set_custom_handlers(zend_mm_get_heap(), malloc, free, realloc);
    CHECK(zend_mm_is_custom_heap(zend_mm_get_heap()) == ZEND_MM_CUSTOM_HEAP_STD);
    zend_mm_set_custom_handlers(zend_mm_get_heap(), NULL, NULL, NULL);

    s = estrdup("zend");
    n = estrndup("zendalloc", 4);
    CHECK(strcmp(s, "zend") == 0 && strcmp(n, "zend") == 0);
    efree(s);
    efree(n);
    e1 = safe_estrdup(none);
    e2 = safe_estrndup(none, 3);
    e3 = safe_estrdup("x");
    e4 = safe_estrndup("xy", 1);
    e5 = STR_EMPTY_ALLOC();
    CHECK(e1[0] == '\0' && e2[0] == '\0' && strcmp(e3, "x") == 0 && strcmp(e4, "x") == 0 && e5[0] == '\0');
    efree(e1);
    efree(e2);
    efree(e3);
    efree(e4);
    efree(e5);

    pm = pemalloc(10, 1);
    pc = pecalloc(3, 3, 1);
    ps = safe_pemalloc(2, 3, 4, 1);
    pm = perealloc(pm, 100, 1);
    pc = perealloc2(pc, 100, 9, 1);
    ps = safe_perealloc(ps, 2, 50, 0, 1);
    ps = perealloc_recoverable(ps, 200, 1);
    pd = pestrdup("dup", 1);
    pn = pestrndup("dupe", 3, 1);
    CHECK(!is_zend_ptr(pm) && !is_zend_ptr(pd) && strcmp(pd, "dup") == 0 && strcmp(pn, "dup") == 0);
    pefree(pm, 1);
    pefree(pc, 1);
    pefree_size(ps, 200, 1);
    free(pd);
    free(pn);
    q = pemalloc(10, 0);
    q = perealloc(q, 20, 0);
    q = perealloc2(q, 30, 20, 0);
    q = perealloc_recoverable(q, 40, 0);
    q = safe_perealloc(q, 2, 30, 0, 0);
    CHECK(is_zend_ptr(q) && zend_mem_block_size(q) == 64);
    pefree_size(q, 64, 0);
    qc = pecalloc(2, 8, 0);
    qs = safe_pemalloc(2, 8, 0, 0);
    qd = pestrdup("e", 0);
    qn = pestrndup("ef", 1, 0);
    CHECK(is_zend_ptr(qc) && is_zend_ptr(qs) && is_zend_ptr(qd) && is_zend_ptr(qn));
    pefree(qc, 0);
    pefree(qs, 0);
    pefree(qd, 0);
    pefree(qn, 0);

    heap = zend_mm_startup();
    hp = zend_mm_alloc(heap, 100);
    hp = zend_mm_realloc(heap, hp, 1000);
    hp = zend_mm_realloc2(heap, hp, 2000, 1000);
    CHECK(zend_mm_block_size(heap, hp) == 2048);
    zend_mm_free(heap, hp);
    zend_mm_shutdown(heap, 1, 1);

    CHECK(relays(ZEND_FILE_LINE_C ZEND_FILE_LINE_EMPTY_CC));
    r = relay_alloc(5 ZEND_FILE_LINE_CC ZEND_FILE_LINE_EMPTY_CC);
    CHECK(zend_mem_block_size(r) == 8);
    efree(r);
    CHECK(origin_relay(ZEND_FILE_LINE_C, ZEND_FILE_LINE_EMPTY_C) == 8);
    CHECK(attributed(24) == 24);

    CHECK(ZEND_MM_ALIGNED_SIZE(13) == 16 && ZEND_MM_ALIGNED_SIZE_EX(13, 32) == 32 && (ZEND_MM_ALIGNMENT_MASK & 15) == 8);
    CHECK(SUCCESS == 0 && FAILURE == -1 && E_ERROR == 1 && ZEND_MM_OVERHEAD == 0);
    CHECK(ZEND_MM_MAX_SMALL_SIZE == 3072 && ZEND_MM_MAX_LARGE_SIZE == 2093056 && ZEND_MM_PAGE_SIZE == 4096);
    CHECK(ZEND_MM_MIN_SMALL_SIZE == 8 && ZEND_MM_ALIGNMENT == 8 && ZEND_MM_ALIGNMENT_LOG2 == 3);
    CHECK(mem_block_check(NULL, 1) == 0);
    CHECK(full_mem_check(1) == 0);
    shutdown_memory_manager(1, 1);

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
