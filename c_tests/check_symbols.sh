#!/bin/sh
# Symbol parity: the functions the shared library exports, the prototypes in the generated header
# and the list kept in c_tests/exports.txt must be the same set; the static library must define
# every one of them too.
#   usage: check_symbols.sh <libzend_alloc.so> <libzend_alloc.a> <zend_alloc.h> <exports.txt>
set -eu
so=$1 a=$2 header=$3 list=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

nm -D --defined-only "$so" | awk '$2 == "T" { print $3 }' | sort -u > "$tmp/so"
# Prototypes: every "ZEND_API <type> <name>(" outside preprocessor lines, declarations joined
# onto one line.
grep -v '^[[:space:]]*#' "$header" | tr '\n' ' ' | grep -oE 'ZEND_API[^;{}(]*\(' \
    | sed -E 's/.*[ *]([A-Za-z_][A-Za-z0-9_]*)[ ]*\($/\1/' | sort -u > "$tmp/header"
sort -u "$list" > "$tmp/list"
# readelf, not nm: nm's LLVM plugin (if installed) chokes on the embedded bitcode of LTO objects.
readelf -sW "$a" | awk '$5 == "GLOBAL" && $4 == "FUNC" && $7 != "UND" { print $8 }' | sort -u > "$tmp/a_all"
comm -12 "$tmp/a_all" "$tmp/list" > "$tmp/a"

status=0
compare() {
    if ! diff -u "$tmp/$1" "$tmp/$2" > "$tmp/diff"; then
        echo "symbol check: $3 differ:"
        cat "$tmp/diff"
        status=1
    fi
}
compare list so "c_tests/exports.txt and the exports of $so"
compare list header "c_tests/exports.txt and the prototypes of $header"
compare list a "c_tests/exports.txt and the functions defined by $a"
count=$(wc -l < "$tmp/list")
if [ $status -eq 0 ]; then
    echo "symbol check: $count functions agree (shared library, static library, header, list)"
    echo "1 passed, 0 failed"
else
    echo "0 passed, 1 failed"
fi
exit $status
