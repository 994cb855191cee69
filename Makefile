# zend_alloc: build, demo, tests.
#
#   make            build libzend_alloc.so / .a (release) and the header
#   make demo       build and run the demo (a few PHP-like requests)
#   make test       everything: header drift, lint, Rust tests, C tests (.so and .a, every storage)
#   make install    header, libraries, pkg-config and CMake files into PREFIX (see README, "Installing")
#   make uninstall  removes what make install put (same variables)
#   make bench      benchmarks against PHP's allocator and the malloc peers (see bench/)
#   make php        PHP 8.2 CLIs, stock and on this library, release and debug (php/, php/build)
#   make php-test   PHP's whole test suite with both CLIs of each flavour, compared

CARGO   ?= cargo
CC      = gcc
CXX     = g++
RELEASE := target/release
LIB_SO  := $(RELEASE)/libzend_alloc.so
LIB_A   := $(RELEASE)/libzend_alloc.a
LIB_PRELOAD := $(RELEASE)/libzend_alloc_preload.so
HEADER  := include/zend_alloc.h
OUT     := c_tests/build
WARN    := -Wall -Wextra -Werror
CFLAGS  ?= -O2 -g
# Link against the shared library without installing it.
LINK_SO := -L$(RELEASE) -lzend_alloc -Wl,-rpath,$(abspath $(RELEASE))
# What the static library needs from the system.
LINK_A  := $(LIB_A) -lpthread -ldl -lm
STORAGES := malloc mmap_anon mmap_zero
# Cargo.toml's version (of its [package] section) and its major part, the SONAME's number.
VERSION := $(shell sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))

C_TESTS := test_api test_storage test_threads test_php_parity test_growth test_defects test_debug

.PHONY: php php-test php-ci all build deps demo test check-header lint rust-test miri c-test-bins c-tests preload-tests valgrind-tests stress symbols headers bench clean install uninstall install-test

# What the tests and benchmarks compare against (Debian packages): PHP 8.2's allocator, the
# malloc peers, valgrind for instruction counts; what the install test builds with; and the real
# programs the preload library is tested on (c_tests/preload_programs.sh).
DEPS := libphp8.2-embed libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 valgrind \
	php8.2-cli python3.11 libpython3.11-testsuite gcc g++ clang cmake pkg-config \
	git perl sqlite3 nodejs xz-utils

all: build

build:
	$(CARGO) build --release
	$(CARGO) build --release -p zend_alloc_preload
	@# build.rs makes this link too; made again for a cargo configured with a separate build-dir.
	@ln -sf libzend_alloc.so $(RELEASE)/libzend_alloc.so.$(SOMAJOR)

$(OUT):
	@mkdir -p $(OUT)

# Installs the missing packages of $(DEPS) (needs root); does nothing when all are there.
deps:
	@missing=$$(for p in $(DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "deps: all of $(DEPS) are installed"; \
	fi

demo: build | $(OUT)
	$(CC) -std=c99 $(WARN) $(CFLAGS) -Iinclude c_tests/demo.c $(LINK_SO) -o $(OUT)/demo
	$(OUT)/demo

test: check-header lint rust-test c-tests
	@echo "make test: all passed"

# The committed header must be what the sources generate.
check-header:
	ZEND_ALLOC_HEADER=check $(CARGO) build --release

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release -p zend_alloc_preload -- -D warnings

# The unit and property tests, then again with the portable thread-local slots (what targets other
# than x86-64 Linux use: the portable-tls feature) in a target directory of their own. Of their own
# because cargo does not put a hash in the names of libzend_alloc.so and .a: built with the feature
# in target/release, they would replace the libraries the C tests link. The price: the first run
# there builds the dependencies (cbindgen's among them) once more.
rust-test:
	$(CARGO) test --release
	$(CARGO) test
	@[ -d target/portable-tls/release ] || echo "rust-test: first run with the portable-tls feature: building the dependencies once in target/portable-tls (a target directory of its own keeps target/release's libzend_alloc.so and .a as they are)"
	$(CARGO) test --release --features portable-tls --target-dir target/portable-tls
	$(CARGO) test --release --features preload-sizes --lib --target-dir target/preload-sizes
	$(MAKE) --no-print-directory miri

# The unit and model tests Miri can run (those on the std::alloc storages; the ones that need mmap
# are ignored under Miri) under Stacked Borrows. The region map's exposed provenance is deliberate.
MIRI_TESTS := model_tests region_map bitmap segment::tests tls diagnostics sizes options storage list heap::
miri:
	MIRIFLAGS="-Zmiri-permissive-provenance" $(CARGO) +nightly miri test --lib -- $(MIRI_TESTS)

# The C test binaries, each linked against the shared and the static library.
c-test-bins: build | $(OUT)
	@set -e; for t in $(C_TESTS); do \
		$(CC) -std=c99 $(WARN) $(CFLAGS) -Iinclude c_tests/$$t.c $(LINK_SO) -lpthread -ldl -o $(OUT)/$$t; \
		$(CC) -std=c99 $(WARN) $(CFLAGS) -Iinclude c_tests/$$t.c $(LINK_A) -o $(OUT)/$$t.static; \
	done

# The behaviour and storage suites (shared library builds) under valgrind's memcheck: no invalid
# access or uninitialised value in the test or in the children it forks (c_tests/valgrind.sh says
# how children and intended aborts are judged). A shell fragment: c-tests runs it with its other
# runs, valgrind-tests on its own.
VALGRIND_TESTS := test_api test_storage test_debug
VALGRIND_RUNS = for t in $(VALGRIND_TESTS); do \
		c_tests/run.sh $$t-valgrind c_tests/valgrind.sh $(OUT)/$$t || fail=1; \
	done

valgrind-tests: c-test-bins
	@fail=0; $(VALGRIND_RUNS); exit $$fail

# Every C test against the shared and the static library; the behaviour suite once per storage
# manager and with other segment sizes; the behaviour and storage suites under valgrind; the
# symbol, header and coverage checks, the demo, the README's example and the benchmark harness at a tiny scale
# (correctness only, no timing). Every step goes ahead even when an earlier one failed, and the
# target fails at the end if any did.
c-tests: c-test-bins symbols headers $(OUT)/php_probe $(OUT)/growth_probe_php | $(OUT)
	@fail=0; \
	$(MAKE) --no-print-directory preload-tests || fail=1; \
	$(MAKE) --no-print-directory install-test || fail=1; \
	for s in $(STORAGES); do \
		c_tests/run.sh test_api-$$s ZEND_MM_MEM_TYPE=$$s $(OUT)/test_api || fail=1; \
		c_tests/run.sh test_defects-$$s ZEND_MM_MEM_TYPE=$$s $(OUT)/test_defects || fail=1; \
	done; \
	c_tests/run.sh test_defects-static $(OUT)/test_defects.static || fail=1; \
	c_tests/run.sh test_api-static-256k ZEND_MM_SEG_SIZE=256k $(OUT)/test_api.static || fail=1; \
	c_tests/run.sh test_api-static-mmap_anon-64k ZEND_MM_MEM_TYPE=mmap_anon ZEND_MM_SEG_SIZE=64k $(OUT)/test_api.static || fail=1; \
	c_tests/run.sh test_api-static-mmap_zero-16M ZEND_MM_MEM_TYPE=mmap_zero ZEND_MM_SEG_SIZE=16M $(OUT)/test_api.static || fail=1; \
	for t in test_storage test_threads test_php_parity test_growth test_debug; do \
		c_tests/run.sh $$t $(OUT)/$$t || fail=1; \
		c_tests/run.sh $$t-static $(OUT)/$$t.static || fail=1; \
	done; \
	$(VALGRIND_RUNS); \
	c_tests/check_coverage.sh c_tests/exports.txt $(HEADER) $(addprefix $(OUT)/,$(C_TESTS) test_macros_c99) || fail=1; \
	$(MAKE) --no-print-directory demo || fail=1; \
	c_tests/run.sh readme_example c_tests/readme_example.sh README.md $(OUT)/readme_example || fail=1; \
	$(MAKE) --no-print-directory -C bench smoke || fail=1; \
	if [ $$fail -ne 0 ]; then echo "c-tests: FAILED (see above)"; fi; \
	exit $$fail

# The preload library: its exports are c_tests/preload_exports.txt (the malloc family, none of
# PHP's API) and it reaches its thread heap through initial-exec TLS (c_tests/check_preload_tls.sh);
# test_preload on glibc's allocator (every expectation is glibc's behaviour), then three times under
# LD_PRELOAD (threads, fork: races get three chances; valgrind would replace the allocator under
# test with its own); then real programs (c_tests/preload_programs.sh).
preload-tests: build | $(OUT)
	@fail=0; \
	nm -D --defined-only $(LIB_PRELOAD) | awk '$$2 == "T" { print $$3 }' | LC_ALL=C sort > $(OUT)/preload_exports; \
	if diff -u c_tests/preload_exports.txt $(OUT)/preload_exports; then \
		echo "preload symbols: $$(wc -l < $(OUT)/preload_exports) functions, as listed"; \
	else echo "preload symbols: FAILED (c_tests/preload_exports.txt against the library)"; fail=1; fi; \
	c_tests/check_preload_tls.sh $(LIB_PRELOAD) || fail=1; \
	$(CC) -std=gnu11 $(WARN) $(CFLAGS) c_tests/test_preload.c -lpthread -ldl -o $(OUT)/test_preload || fail=1; \
	c_tests/run.sh test_preload-glibc $(OUT)/test_preload || fail=1; \
	for run in 1 2 3; do \
		c_tests/run.sh test_preload-$$run ZEND_ALLOC_PRELOAD_EXPECTED=1 LD_PRELOAD=$(abspath $(LIB_PRELOAD)) \
			$(OUT)/test_preload || fail=1; \
	done; \
	c_tests/run.sh preload_programs c_tests/preload_programs.sh $(abspath $(LIB_PRELOAD)) $(OUT)/programs || fail=1; \
	exit $$fail

# Runs every C test binary 30 times beside CPU hogs and reports the failing runs (flaky tests);
# c_tests/stress.sh -h for its options. Not part of `make test`: it takes 15 to 25 minutes.
stress: c-test-bins headers $(OUT)/php_probe
	c_tests/stress.sh

# PHP 8.2's own allocator (Debian's libphp8.2-embed) in a process of its own: its symbols clash
# with ours. test_php_parity compares the two.
$(OUT)/php_probe: c_tests/php_probe.c c_tests/parity_scenarios.h | $(OUT)
	$(CC) -std=c99 $(WARN) $(CFLAGS) c_tests/php_probe.c -L/usr/lib -lphp8.2 -o $@

# The growth pattern (c_tests/growth_pattern.h) on PHP 8.2's allocator: test_growth bounds this
# library's real memory by what it measures. (c_tests/growth_probe.c built without -DPHP_SIDE runs
# the same pattern on this library, for measuring by hand.)
$(OUT)/growth_probe_php: c_tests/growth_probe.c c_tests/growth_pattern.h | $(OUT)
	$(CC) -std=c99 $(WARN) $(CFLAGS) -DPHP_SIDE c_tests/growth_probe.c -L/usr/lib -lphp8.2 -o $@

# Exports, header prototypes and c_tests/exports.txt agree.
symbols: build
	c_tests/check_symbols.sh $(LIB_SO) $(LIB_A) $(HEADER) c_tests/exports.txt

# The header compiles cleanly with every compiler and standard of the matrix below, and its macro
# layer works from each: c_tests/test_macros.c (written in C89) is built and run as C with gcc and
# clang, as C++ with g++ and clang++, each with HEADER_WARN (-Wstrict-prototypes for C only: g++
# rejects it for C++). The gcc C99 build (test_macros_c99) is also the one the coverage check reads.
HEADER_WARN := -Wall -Wextra -Wconversion -Wsign-conversion -Wshadow -pedantic -Werror
HEADER_CCS := gcc clang
HEADER_C_STDS := c89 c99 c11 c17
HEADER_CXXS := g++ clang++
HEADER_CXX_STDS := c++98 c++03 c++11 c++14 c++17 c++20
# emalloc(10) and efree_size(p, 16) in test_macros.c must reach the size class's entry points
# (the __builtin_constant_p routing) in every mode: the binary imports them.
HEADER_ROUTED = for f in _emalloc_at_16 _efree_at_16; do \
		nm -D --undefined-only $$bin | grep -q " $$f$$" || { echo "headers: $$bin does not call $$f"; fail=1; }; \
	done
headers: build | $(OUT)
	@fail=0; \
	for cc in $(HEADER_CCS); do for std in $(HEADER_C_STDS); do \
		bin=$(OUT)/test_macros_$$(echo $$cc | sed 's/^gcc$$//; s/^clang$$/clang_/')$$std; \
		if $$cc -std=$$std $(HEADER_WARN) -Wstrict-prototypes $(CFLAGS) -Iinclude c_tests/test_macros.c $(LINK_SO) -o $$bin; then \
			c_tests/run.sh test_macros-$$cc-$$std $$bin || fail=1; \
			$(HEADER_ROUTED); \
		else echo "headers: $$cc -std=$$std: FAILED"; fail=1; fi; \
	done; done; \
	for cxx in $(HEADER_CXXS); do for std in $(HEADER_CXX_STDS); do \
		bin=$(OUT)/test_macros_$$(echo $$cxx | sed 's/^g++$$//; s/^clang++$$/clang_/')$$(echo $$std | tr + x); \
		if $$cxx -std=$$std $(HEADER_WARN) $(CFLAGS) -Iinclude -x c++ c_tests/test_macros.c -x none $(LINK_SO) -o $$bin; then \
			c_tests/run.sh test_macros-$$cxx-$$std $$bin || fail=1; \
			$(HEADER_ROUTED); \
		else echo "headers: $$cxx -std=$$std: FAILED"; fail=1; fi; \
	done; done; \
	exit $$fail

bench: build
	$(MAKE) -C bench

# ---- Installation ----
# make install [PREFIX=/usr/local] [LIBDIR=$(PREFIX)/lib] [INCLUDEDIR=$(PREFIX)/include] [DESTDIR=]
# installs what `make` built (it does not build: run `make` first, as yourself):
#   INCLUDEDIR/zend_alloc.h
#   LIBDIR/libzend_alloc.so.$(VERSION), its SONAME link .so.$(SOMAJOR) and the .so link for -lzend_alloc
#   LIBDIR/libzend_alloc.a, LIBDIR/libzend_alloc_preload.so (for LD_PRELOAD)
#   LIBDIR/pkgconfig/zend_alloc.pc, LIBDIR/cmake/zend_alloc/zend_alloc-config{,-version}.cmake
# DESTDIR stages the tree elsewhere (for packages); the files name only the final paths. The .pc
# file names LIBDIR and INCLUDEDIR relative to ${prefix} when they lie under PREFIX, and the CMake
# files relative to themselves, so an installed tree can be moved as a whole.
PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DESTDIR    ?=
PKG_DIR    := target/packaging
CMAKE_DIR   = $(LIBDIR)/cmake/zend_alloc
INSTALLED_LIBS = libzend_alloc.so.$(VERSION) libzend_alloc.so.$(SOMAJOR) libzend_alloc.so libzend_alloc.a \
	libzend_alloc_preload.so
INSTALLED_FILES = $(INCLUDEDIR)/zend_alloc.h $(addprefix $(LIBDIR)/,$(INSTALLED_LIBS)) \
	$(LIBDIR)/pkgconfig/zend_alloc.pc $(CMAKE_DIR)/zend_alloc-config.cmake \
	$(CMAKE_DIR)/zend_alloc-config-version.cmake
# The templates' placeholders (packaging/*.in).
PACKAGING_SED = -e 's|@VERSION@|$(VERSION)|g' -e 's|@SOMAJOR@|$(SOMAJOR)|g' \
	-e 's|@PREFIX@|$(PREFIX)|g' \
	-e 's|@LIBDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))|g' \
	-e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|g' \
	-e 's|@CMAKE_TO_LIBDIR@|$(shell realpath -m --relative-to=$(CMAKE_DIR) $(LIBDIR))|g' \
	-e 's|@CMAKE_TO_INCLUDEDIR@|$(shell realpath -m --relative-to=$(CMAKE_DIR) $(INCLUDEDIR))|g'

install:
	@for f in $(HEADER) $(LIB_SO) $(LIB_A) $(LIB_PRELOAD); do \
		[ -e $$f ] || { echo "install: $$f is missing: run make first"; exit 1; }; \
	done
	@for d in "$(PREFIX)" "$(LIBDIR)" "$(INCLUDEDIR)"; do \
		case "$$d" in /*) ;; *) echo "install: PREFIX, LIBDIR and INCLUDEDIR must be absolute ($$d)"; exit 1;; esac; \
	done
	@mkdir -p $(PKG_DIR)
	sed $(PACKAGING_SED) packaging/zend_alloc.pc.in > $(PKG_DIR)/zend_alloc.pc
	sed $(PACKAGING_SED) packaging/zend_alloc-config.cmake.in > $(PKG_DIR)/zend_alloc-config.cmake
	sed $(PACKAGING_SED) packaging/zend_alloc-config-version.cmake.in > $(PKG_DIR)/zend_alloc-config-version.cmake
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(CMAKE_DIR)
	install -m 644 $(HEADER) $(DESTDIR)$(INCLUDEDIR)/zend_alloc.h
	install -m 755 $(LIB_SO) $(DESTDIR)$(LIBDIR)/libzend_alloc.so.$(VERSION)
	ln -sf libzend_alloc.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libzend_alloc.so.$(SOMAJOR)
	ln -sf libzend_alloc.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/libzend_alloc.so
	install -m 644 $(LIB_A) $(DESTDIR)$(LIBDIR)/libzend_alloc.a
	install -m 755 $(LIB_PRELOAD) $(DESTDIR)$(LIBDIR)/libzend_alloc_preload.so
	install -m 644 $(PKG_DIR)/zend_alloc.pc $(DESTDIR)$(LIBDIR)/pkgconfig/zend_alloc.pc
	install -m 644 $(PKG_DIR)/zend_alloc-config.cmake $(PKG_DIR)/zend_alloc-config-version.cmake $(DESTDIR)$(CMAKE_DIR)

# Removes the files install puts and the CMake package's own directory; directories other
# packages share (lib, include, lib/pkgconfig, lib/cmake) stay.
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))
	@if [ -d $(DESTDIR)$(CMAKE_DIR) ]; then rmdir --ignore-fail-on-non-empty $(DESTDIR)$(CMAKE_DIR); fi

# make install and uninstall into temporary trees, a C program built with pkg-config and a C++
# program with CMake against the installed files, and one linked against a plain cargo build
# (c_tests/install/test_install.sh; about 10 s, a minute the first time: it builds the crate's
# dependencies in target/plain).
install-test: build | $(OUT)
	@MAKE="$(MAKE)" CARGO="$(CARGO)" CC="$(CC)" c_tests/run.sh install c_tests/install/test_install.sh

# PHP 8.2 itself on this library: php/zend_alloc.c replaces Zend/zend_alloc.c (php/php.sh fetches
# Debian's source package, builds the trees in php/build and prints the CLIs' paths).
php: build
	php/php.sh build release debug

# PHP's run-tests.php over the whole tree with the stock and the library CLI of each flavour; the
# summary lists every test whose result differs. Fails if a test fails only on the library.
php-test: php
	@fail=0; for f in release debug; do php/php.sh test $$f || fail=1; done; exit $$fail

# What CI runs: the release CLIs on Zend/tests (about 4,000 tests).
php-ci: build
	php/php.sh build release
	php/php.sh test release Zend/tests

clean:
	$(CARGO) clean
	rm -rf $(OUT)
