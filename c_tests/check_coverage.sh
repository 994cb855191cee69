#!/bin/sh
# Coverage of the C API by the C tests: every function the library exports is called by some test
# binary (it is among their imported symbols), and every macro the header defines is used in some
# test source.
#   usage: check_coverage.sh <exports.txt> <zend_alloc.h> <test binaries linked to the .so>...
set -eu
list=$1 header=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for bin in "$@"; do
    nm -D --undefined-only "$bin" | awk '{ print $2 }'
done | sed 's/@.*//' | sort -u > "$tmp/called"
missing_fns=$(sort -u "$list" | comm -23 - "$tmp/called")

# Macros: every "#define NAME" of the header except its include guard.
grep -E '^[[:space:]]*#[[:space:]]*define[[:space:]]+[A-Za-z_]' "$header" \
    | sed -E 's/^[[:space:]]*#[[:space:]]*define[[:space:]]+([A-Za-z_][A-Za-z0-9_]*).*/\1/' \
    | grep -vx 'ZEND_ALLOC_H' | sort -u > "$tmp/macros"
missing_macros=""
for m in $(cat "$tmp/macros"); do
    if ! cat c_tests/*.c | grep -qw -- "$m"; then
        missing_macros="$missing_macros $m"
    fi
done

status=0
if [ -n "$missing_fns" ]; then
    echo "coverage: exported functions no C test calls:" $missing_fns
    status=1
fi
if [ -n "$missing_macros" ]; then
    echo "coverage: header macros no C test uses:$missing_macros"
    status=1
fi
if [ $status -eq 0 ]; then
    echo "coverage: the C tests call all $(wc -l < "$list") exported functions and use all $(wc -l < "$tmp/macros") header macros"
    echo "1 passed, 0 failed"
else
    echo "0 passed, 1 failed"
fi
exit $status
