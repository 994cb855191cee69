// The C++ side of the install test: built by CMake through find_package(zend_alloc) (see
// CMakeLists.txt), against the shared or the static library.
#include <zend_alloc.h>

#include <cstdio>
#include <cstring>
#include <string>

int main()
{
    int passed = 0, failed = 0;
    auto check = [&](bool ok, const char *what) {
        if (ok) {
            passed++;
        } else {
            failed++;
            std::fprintf(stderr, "FAIL: %s\n", what);
        }
    };

    std::printf("header %s, library %s\n", ZEND_ALLOC_VERSION, zend_alloc_version());
    check(std::strcmp(zend_alloc_version(), ZEND_ALLOC_VERSION) == 0, "zend_alloc_version() == ZEND_ALLOC_VERSION");
    check(std::string(ZEND_ALLOC_VERSION) == EXPECTED_VERSION, "ZEND_ALLOC_VERSION == the CMake package's version");

    start_memory_manager();
    char *name = static_cast<char *>(emalloc(32));
    std::strcpy(name, "zend_alloc");
    name = static_cast<char *>(erealloc(name, 1 << 20));
    check(std::strcmp(name, "zend_alloc") == 0, "erealloc keeps the contents");
    efree(name);
    check(zend_memory_usage(0) == 0, "nothing in use after efree");
    shutdown_memory_manager(0, 1);

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
