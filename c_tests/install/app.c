/*
 * A user's first program against an installed zend_alloc, built with
 *   cc app.c $(pkg-config --cflags --libs zend_alloc)
 * by test_install.sh: allocates and frees through PHP's macros, and checks that the header it was
 * compiled with and the library it runs with are the same version (and, given -DEXPECTED_VERSION,
 * the version pkg-config reported).
 */
#include <stdio.h>
#include <string.h>

#include <zend_alloc.h>

static int passed = 0;
static int failed = 0;

static void check(int ok, const char *what)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL: %s\n", what);
    }
}

int main(void)
{
    char *s;
    int *v;
    size_t i;
    int sum = 0;

    printf("header %s, library %s\n", ZEND_ALLOC_VERSION, zend_alloc_version());
    check(strcmp(zend_alloc_version(), ZEND_ALLOC_VERSION) == 0, "zend_alloc_version() == ZEND_ALLOC_VERSION");
#ifdef EXPECTED_VERSION
    check(strcmp(ZEND_ALLOC_VERSION, EXPECTED_VERSION) == 0, "ZEND_ALLOC_VERSION == the package's version");
#endif

    start_memory_manager();
    s = estrdup("hello");
    check(s != NULL && strcmp(s, "hello") == 0, "estrdup");
    v = (int *)ecalloc(100, sizeof(int));
    for (i = 0; i < 100; i++) {
        v[i] = (int)i;
    }
    v = (int *)erealloc(v, 10000 * sizeof(int));
    for (i = 0; i < 100; i++) {
        sum += v[i];
    }
    check(sum == 4950, "erealloc keeps the contents");
    check(zend_memory_usage(0) > 0, "zend_memory_usage counts the blocks");
    efree(v);
    efree(s);
    shutdown_memory_manager(0, 1);

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
