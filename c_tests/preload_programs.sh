#!/bin/sh
# Real programs on the preload library: each runs without and with
# LD_PRELOAD=<libzend_alloc_preload.so>, and the two runs must give the same result.
#   usage: preload_programs.sh <libzend_alloc_preload.so> <scratch dir>
# - CPython (Debian's /usr/bin/python3) running a set of its own regression tests
#   (libpython3.11-testsuite), PYTHONMALLOC=malloc so every object comes from malloc;
# - the PHP CLI with USE_ZEND_ALLOC=0 (PHP's engine then allocates with malloc) running a script.
#   `-n`: no php.ini, so no shared extension is loaded; PHP dlopens extensions with RTLD_DEEPBIND,
#   which binds their malloc to glibc's and mixes two allocators in one process (jemalloc and
#   mimalloc crash there the same way);
# - gcc compiling a C file (the object files must be identical);
# - sort on 300,000 lines.
# Prints one line per program, then "N passed, N failed".
set -u
lib=$1 dir=$2
mkdir -p "$dir"
passed=0 failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1"; failed=$((failed + 1)); }

# CPython's regression tests: the same tests must pass with and without the library.
PY_TESTS="test_list test_dict test_set test_tuple test_unicode test_bytes test_json test_re \
test_threading test_queue test_collections test_itertools test_string test_struct test_heapq \
test_bisect test_array test_deque test_zlib test_pickle test_weakref test_gc test_sort \
test_functools test_operator test_enum test_dataclasses test_textwrap test_statistics"
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import test.libregrtest' 2>/dev/null; then
    for run in plain preload; do
        if [ $run = preload ]; then pre=$lib; else pre=; fi
        PYTHONMALLOC=malloc LD_PRELOAD=$pre /usr/bin/python3 -m test -j2 $PY_TESTS \
            > "$dir/python-$run.out" 2>&1
        echo "exit $?" >> "$dir/python-$run.out"
        grep -E '^(Tests result|All [0-9]+ tests|[0-9]+ tests? (OK|failed|skipped)|exit)' "$dir/python-$run.out" \
            > "$dir/python-$run.sum"
    done
    if cmp -s "$dir/python-plain.sum" "$dir/python-preload.sum" && grep -q '^Tests result: SUCCESS' "$dir/python-preload.sum"; then
        ok "python3 -m test ($(echo $PY_TESTS | wc -w) test modules)"
    else
        bad "python3 -m test: results differ"; diff "$dir/python-plain.sum" "$dir/python-preload.sum"
        tail -30 "$dir/python-preload.out"
    fi
else
    bad "python3: /usr/bin/python3 with libpython3.11-testsuite is missing"
fi

# The PHP CLI, its engine on malloc.
cat > "$dir/script.php" <<'PHP'
<?php
$a = [];
for ($i = 0; $i < 300000; $i++) { $a[] = str_repeat(chr(65 + $i % 26), $i % 700); }
$h = [];
foreach ($a as $k => $v) { $h[md5($v . $k)] = strlen($v); }
ksort($h);
$s = '';
foreach (array_slice($h, 0, 5000, true) as $k => $v) { $s .= "$k=$v;"; }
echo count($a), ' ', count($h), ' ', md5($s), ' ', md5(serialize(array_slice($a, 0, 2000))), "\n";
$objs = [];
for ($i = 0; $i < 100000; $i++) { $o = new stdClass; $o->n = $i; $o->s = "v$i"; $objs[$i % 1000] = $o; }
echo json_encode(array_map(fn($o) => $o->s, array_slice($objs, 0, 5))), "\n";
PHP
if command -v php >/dev/null; then
    USE_ZEND_ALLOC=0 php -n "$dir/script.php" > "$dir/php-plain.out" 2>&1
    USE_ZEND_ALLOC=0 LD_PRELOAD=$lib php -n "$dir/script.php" > "$dir/php-preload.out" 2>&1
    if cmp -s "$dir/php-plain.out" "$dir/php-preload.out" && [ -s "$dir/php-plain.out" ]; then
        ok "php -n (USE_ZEND_ALLOC=0): $(head -c 60 "$dir/php-plain.out")"
    else
        bad "php: outputs differ"; cat "$dir/php-preload.out" | head -20
    fi
else
    bad "php: the php CLI is missing (php8.2-cli)"
fi

# gcc: the same object file.
src=$(dirname "$0")/test_preload.c
gcc -O2 -c "$src" -o "$dir/gcc-plain.o" && LD_PRELOAD=$lib gcc -O2 -c "$src" -o "$dir/gcc-preload.o"
if [ $? -eq 0 ] && cmp -s "$dir/gcc-plain.o" "$dir/gcc-preload.o"; then
    ok "gcc -O2 -c test_preload.c"
else
    bad "gcc: object files differ or the compile failed"
fi

# sort: the same order.
awk 'BEGIN { srand(7); for (i = 0; i < 300000; i++) printf "%d %s\n", int(rand() * 1e9), substr("abcdefghijklmnopqrstuvwxyz", i % 26 + 1) }' > "$dir/lines"
sort "$dir/lines" > "$dir/sort-plain.out"
LD_PRELOAD=$lib sort "$dir/lines" > "$dir/sort-preload.out"
if cmp -s "$dir/sort-plain.out" "$dir/sort-preload.out"; then
    ok "sort (300,000 lines)"
else
    bad "sort: outputs differ"
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
