#!/bin/sh
# The library as a user gets it: `make install` into temporary prefixes, then programs built against
# the installed copy the two usual ways, then `make uninstall`; and a program linked against a plain
# `cargo build`, which must run without the Makefile's help (build.rs makes the SONAME link).
#   usage: c_tests/install/test_install.sh    (from the repository root, after `make build`)
# Environment: MAKE, CARGO, CC (defaults make, cargo, gcc). Ends with "N passed, N failed".
#
#   1. PREFIX=<tmp>/prefix: a C program built with `pkg-config --cflags --libs zend_alloc` (and one
#      linked statically with `pkg-config --static`), a C++ program built by CMake through
#      find_package(zend_alloc) with the shared and the static target; a version request of another
#      major version is refused.
#   2. DESTDIR=<tmp>/stage with PREFIX=/usr/local and LIBDIR, INCLUDEDIR elsewhere: exactly the
#      expected files, no trace of DESTDIR in them, and the staged tree used where it lies (pkg-config
#      through PKG_CONFIG_SYSROOT_DIR, CMake through zend_alloc_DIR and the package's relative paths).
#   3. `make uninstall` with the same variables leaves no file in either tree.
#   4. `cargo build` into target/plain (debug profile; its own directory so target/release is not
#      disturbed, and kept, so later runs rebuild only this crate): the SONAME link is removed and
#      the crate cleaned first, so the link the program then runs through is the one cargo's build
#      made.
set -u
# The trees below are given explicitly: nothing from the caller's environment or make command line
# (a PREFIX, LIBDIR or DESTDIR there would reach the sub-makes) may redirect an install.
unset PREFIX LIBDIR INCLUDEDIR DESTDIR MAKEFLAGS MFLAGS MAKEOVERRIDES
MAKE=${MAKE:-make}
CARGO=${CARGO:-cargo}
CC=${CC:-gcc}
root=$(pwd)
here=c_tests/install
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

# check <what> <command...>: runs the command, output kept in $tmp/log and shown on failure.
check() {
    what=$1
    shift
    if "$@" > "$tmp/log" 2>&1; then
        passed=$((passed + 1))
        echo "ok: $what"
    else
        failed=$((failed + 1))
        echo "FAIL: $what"
        sed 's/^/    /' "$tmp/log" | tail -n 40
    fi
}

version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
major=${version%%.*}
cflags="-std=c99 -Wall -Wextra -Werror -pedantic"

# The files an install makes, relative to the root of the tree it was given.
expected_files() { # <libdir> <includedir>
    printf '%s\n' "$2/zend_alloc.h" "$1/libzend_alloc.so.$version" "$1/libzend_alloc.so.$major" \
        "$1/libzend_alloc.so" "$1/libzend_alloc.a" "$1/libzend_alloc_preload.so" \
        "$1/pkgconfig/zend_alloc.pc" "$1/cmake/zend_alloc/zend_alloc-config.cmake" \
        "$1/cmake/zend_alloc/zend_alloc-config-version.cmake" | sort
}
files_in() { # <dir>: every non-directory below it, relative to it
    (cd "$1" && find . ! -type d | sed 's|^\.||' | sort)
}
soname_of() {
    readelf -d "$1" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'
}
run_cmake_app() { # <build dir> <prefix path> [cmake args...]: configures, builds, runs both apps
    dir=$1 prefix_path=$2
    shift 2
    cmake -S "$here" -B "$dir" -DCMAKE_PREFIX_PATH="$prefix_path" "$@" &&
        cmake --build "$dir" &&
        "$dir/app" && "$dir/app_static" && ! readelf -d "$dir/app_static" | grep -q 'libzend_alloc'
}

# ---- 1. Installed into a prefix -----------------------------------------------------------------
prefix=$tmp/prefix
check "make install PREFIX=$prefix" $MAKE --no-print-directory install PREFIX="$prefix"
expected_files /lib /include > "$tmp/expected"
files_in "$prefix" > "$tmp/installed"
check "the installed files are the expected ones" diff -u "$tmp/expected" "$tmp/installed"
check "libzend_alloc.so.$version has the SONAME libzend_alloc.so.$major" \
    test "$(soname_of "$prefix/lib/libzend_alloc.so.$version")" = "libzend_alloc.so.$major"
check "the links: .so -> .so.$major -> .so.$version" test \
    "$(readlink "$prefix/lib/libzend_alloc.so")-$(readlink "$prefix/lib/libzend_alloc.so.$major")" = \
    "libzend_alloc.so.$major-libzend_alloc.so.$version"

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
check "pkg-config --modversion zend_alloc is $version" test "$(pkg-config --modversion zend_alloc)" = "$version"
check "C program built with pkg-config --cflags --libs runs" sh -c "
    $CC $cflags -DEXPECTED_VERSION='\"$version\"' $here/app.c \$(pkg-config --cflags --libs zend_alloc) \
        -Wl,-rpath,\$(pkg-config --variable=libdir zend_alloc) -o $tmp/app_pc && $tmp/app_pc"
check "... and it runs on the installed libzend_alloc.so.$major" sh -c \
    "ldd $tmp/app_pc | grep -F 'libzend_alloc.so.$major => $prefix/lib/libzend_alloc.so.$major'"
# -l:libzend_alloc.a picks the static library where -lzend_alloc would pick the shared one.
check "C program linked statically with pkg-config --static runs" sh -c "
    $CC $cflags $here/app.c \$(pkg-config --cflags zend_alloc) \
        \$(pkg-config --static --libs zend_alloc | sed 's/-lzend_alloc\\b/-l:libzend_alloc.a/') -o $tmp/app_pc_static &&
    $tmp/app_pc_static && ! readelf -d $tmp/app_pc_static | grep -q libzend_alloc"
unset PKG_CONFIG_PATH

check "C++ programs built by CMake with find_package(zend_alloc) run" run_cmake_app "$tmp/cmake1" "$prefix"
check "find_package(zend_alloc $version) is met" \
    cmake -S "$here" -B "$tmp/cmake2" -DCMAKE_PREFIX_PATH="$prefix" -DZEND_ALLOC_WANT="$version"
check "find_package(zend_alloc $((major + 1)).0) is refused" sh -c "
    ! cmake -S $here -B $tmp/cmake3 -DCMAKE_PREFIX_PATH=$prefix -DZEND_ALLOC_WANT=$((major + 1)).0"

check "make uninstall PREFIX=$prefix" $MAKE --no-print-directory uninstall PREFIX="$prefix"
check "no file left in $prefix" test -z "$(files_in "$prefix")"

# ---- 2. Staged with DESTDIR, other LIBDIR and INCLUDEDIR ----------------------------------------
stage=$tmp/stage
vars="DESTDIR=$stage PREFIX=/usr/local LIBDIR=/usr/local/lib64 INCLUDEDIR=/usr/local/include/zend"
check "make install $vars" $MAKE --no-print-directory install $vars
expected_files /usr/local/lib64 /usr/local/include/zend > "$tmp/expected"
files_in "$stage" > "$tmp/installed"
check "the staged files are the expected ones" diff -u "$tmp/expected" "$tmp/installed"
check "no staged file names DESTDIR" sh -c "! grep -rlF '$stage' $stage"
check "zend_alloc.pc says where the files will be" grep -qx 'includedir=${prefix}/include/zend' \
    "$stage/usr/local/lib64/pkgconfig/zend_alloc.pc"
check "C program built with pkg-config from the staged tree runs" sh -c "
    export PKG_CONFIG_PATH=$stage/usr/local/lib64/pkgconfig PKG_CONFIG_SYSROOT_DIR=$stage &&
    $CC $cflags $here/app.c \$(pkg-config --cflags --libs zend_alloc) -Wl,-rpath,$stage/usr/local/lib64 \
        -o $tmp/app_stage && $tmp/app_stage"
# CMake does not search lib64 on every system: the package's directory is named, as a user would.
check "C++ programs built by CMake from the staged tree run" run_cmake_app "$tmp/cmake4" "" \
    -Dzend_alloc_DIR="$stage/usr/local/lib64/cmake/zend_alloc"
check "make uninstall $vars" $MAKE --no-print-directory uninstall $vars
check "no file left in $stage" test -z "$(files_in "$stage")"

# ---- 3. A plain cargo build ---------------------------------------------------------------------
plain=target/plain
link=$plain/debug/libzend_alloc.so.$major
rm -f "$link"
check "cargo build --target-dir $plain (after cargo clean -p zend_alloc)" sh -c "
    $CARGO clean -q -p zend_alloc --target-dir $plain && $CARGO build -q -p zend_alloc --target-dir $plain"
check "cargo build made $link -> libzend_alloc.so" test "$(readlink "$link")" = libzend_alloc.so
check "C program linked with -lzend_alloc against $plain/debug runs" sh -c "
    $CC $cflags -Iinclude $here/app.c -L$plain/debug -lzend_alloc -Wl,-rpath,$root/$plain/debug \
        -o $tmp/app_plain && $tmp/app_plain"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
