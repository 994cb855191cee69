#!/bin/sh
# PHP 8.2 on zend_alloc: fetch PHP's source, build stock and on-library CLIs, run PHP's test suite
# with both and compare.
#
#   php/php.sh build [release|debug]...   build stock and library CLIs of each flavour (both if none)
#   php/php.sh test  [release|debug] [run-tests.php arguments, e.g. Zend/tests]
#   php/php.sh path  <stock|lib> <release|debug>   print the CLI's path
#
# Environment: PHP_BUILD_DIR (default php/build: source cache and build trees, outside target/),
# PHP_DEB_VERSION (Debian source package version), PHP_ZTS=1 (thread-safe builds, own trees),
# PHP_JOBS (parallel make/test jobs, default: number of CPUs).
#
# The library tree is PHP's tree with Zend/zend_alloc.c replaced by php/zend_alloc.c and linked to
# target/release/libzend_alloc.a whose C API is renamed to zend_alloc_lib_* (the size-specialised
# release entry points keep their names: PHP's engine calls them directly).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build=${PHP_BUILD_DIR:-$here/build}
deb_version=${PHP_DEB_VERSION:-8.2.32-1~deb12u1}
jobs=${PHP_JOBS:-$(nproc)}
zts=${PHP_ZTS:-0}
suffix=$([ "$zts" = 1 ] && echo -zts || echo)
case $build in /*) ;; *) build=$(pwd)/$build ;; esac

say() { echo "php.sh: $*" >&2; }

# Debian's source package of PHP 8.2: the upstream tarball is all we use. Adds a deb-src line for
# the machine's suites when apt has none.
fetch_source() {
    tarball=$(ls "$build"/src/php8.2_*.orig.tar.xz 2>/dev/null | head -n 1 || true)
    [ -n "$tarball" ] && return 0
    mkdir -p "$build/src"
    if [ -z "$(apt-cache showsrc php8.2 2>/dev/null)" ]; then
        say "adding deb-src entries for apt"
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            grep -q '^Types: deb$' "$f" || continue
            sed 's/^Types: deb$/Types: deb-src/' "$f" > "${f%.sources}-src.sources"
        done
        if [ -f /etc/apt/sources.list ]; then
            grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/php-src.list || true
        fi
        apt-get update -qq
    fi
    (cd "$build/src" && { apt-get source --download-only "php8.2=$deb_version" \
        || apt-get source --download-only php8.2; }) >&2
    tarball=$(ls "$build"/src/php8.2_*.orig.tar.xz | head -n 1)
}

# What the build needs (the upstream tarball has configure and the generated parsers).
install_deps() {
    command -v cc >/dev/null && command -v make >/dev/null && command -v pkg-config >/dev/null \
        && command -v objcopy >/dev/null && return 0
    say "installing build tools"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config binutils >&2
}

# The static library with its C API renamed.
renamed_library() {
    lib=$build/libzend_alloc_php.a
    (cd "$root" && cargo build --release --quiet)
    grep -vE '^_e(malloc|free)_([0-9]+|large|huge)$' "$root/c_tests/exports.txt" \
        | awk '{ print $1 " zend_alloc_lib_" $1 }' > "$build/renamed-symbols.txt"
    objcopy --redefine-syms="$build/renamed-symbols.txt" "$root/target/release/libzend_alloc.a" "$lib.tmp"
    mv "$lib.tmp" "$lib"
}

tree_of() { echo "$build/$1-$2$suffix"; }

build_one() {
    variant=$1 flavour=$2
    tree=$(tree_of "$variant" "$flavour")
    if [ ! -f "$tree/configure" ]; then
        say "unpacking $tarball into $tree"
        rm -rf "$tree.tmp" && mkdir -p "$tree.tmp"
        tar -xJf "$tarball" -C "$tree.tmp" --strip-components=1
        mv "$tree.tmp" "$tree"
    fi
    libs=""
    if [ "$variant" = lib ]; then
        cmp -s "$here/zend_alloc.c" "$tree/Zend/zend_alloc.c" || cp "$here/zend_alloc.c" "$tree/Zend/zend_alloc.c"
        libs="$build/libzend_alloc_php.a -lpthread -ldl -lm"
        rm -f "$tree/sapi/cli/php" # relink against the current library
    fi
    opts="--disable-all --enable-cli --disable-cgi --disable-phpdbg --enable-zend-test"
    [ "$flavour" = debug ] && opts="$opts --enable-debug"
    [ "$zts" = 1 ] && opts="$opts --enable-zts"
    if [ ! -f "$tree/Makefile" ] || [ "$(cat "$tree/.zend_alloc-configure" 2>/dev/null)" != "$opts $libs" ]; then
        say "configuring $variant $flavour$suffix"
        (cd "$tree" && LIBS="$libs" ./configure $opts >configure.log 2>&1) || {
            tail -n 30 "$tree/configure.log" >&2
            return 1
        }
        echo "$opts $libs" > "$tree/.zend_alloc-configure"
    fi
    say "building $variant $flavour$suffix"
    (cd "$tree" && make -j"$jobs" >make.log 2>&1) || {
        grep -E 'error|Error' "$tree/make.log" | tail -n 30 >&2
        return 1
    }
    echo "$tree/sapi/cli/php"
}

flavours() {
    if [ $# -eq 0 ]; then echo release debug; else echo "$@"; fi
}

# The whole file is read before anything runs (editing it during a run is then harmless).
main() {
    cmd=${1:-build}
    [ $# -gt 0 ] && shift
    case $cmd in
    build)
        fetch_source
        install_deps
        renamed_library
        for flavour in $(flavours "$@"); do
            for variant in stock lib; do
                build_one "$variant" "$flavour"
            done
        done
        ;;
    path)
        echo "$(tree_of "$1" "$2")/sapi/cli/php"
        ;;
    test)
        flavour=${1:-release}
        [ $# -gt 0 ] && shift
        out=$build/results-$flavour$suffix
        mkdir -p "$out"
        for variant in stock lib; do
            tree=$(tree_of "$variant" "$flavour")
            [ -x "$tree/sapi/cli/php" ] || { say "no $variant $flavour CLI: run php/php.sh build $flavour"; exit 1; }
            say "run-tests.php with the $variant $flavour$suffix CLI"
            (cd "$tree" && TEST_PHP_EXECUTABLE="$tree/sapi/cli/php" NO_INTERACTION=1 \
                "$tree/sapi/cli/php" -n run-tests.php -q -j"$jobs" --no-progress -W "$out/$variant.txt" "$@" \
                > "$out/$variant.log" 2>&1) || true
        done
        "$(tree_of stock "$flavour")/sapi/cli/php" -n "$here/compare.php" "$out/stock.txt" "$out/lib.txt" "$flavour$suffix" \
            "$(tree_of stock "$flavour")" "$(tree_of lib "$flavour")"
        ;;
    *)
        echo "usage: php/php.sh build|test|path ..." >&2
        exit 2
        ;;
    esac
}

main "$@"
exit
