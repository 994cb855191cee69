#!/bin/sh
# Real programs on the preload library: each runs without and with
# LD_PRELOAD=<libzend_alloc_preload.so>, and the two runs must give the same result.
#   usage: preload_programs.sh <libzend_alloc_preload.so> <scratch dir>
# - CPython (Debian's /usr/bin/python3) running a set of its own regression tests
#   (libpython3.11-testsuite), PYTHONMALLOC=malloc so every object comes from malloc;
# - the PHP CLI with USE_ZEND_ALLOC=0 (PHP's engine then allocates with malloc) running a script,
#   without php.ini (`-n`) and again with shared extensions loaded: PHP dlopens them with
#   RTLD_DEEPBIND, which would bind their malloc to glibc's (jemalloc, mimalloc and tcmalloc crash
#   there); the library's dlopen drops the flag;
# - a library opened with RTLD_DEEPBIND by another library, by a name only that library's RUNPATH
#   finds: blocks cross between it and the program, and the search path is the caller's;
# - gcc compiling a C file (the object files must be identical);
# - sort on 300,000 lines; xz on 4 threads (blocks freed by other threads than their own);
# - git, perl, sqlite3, Node.js with worker threads, CPython forking while threads allocate, and
#   rustc generating code on several threads, then the threaded program it built.
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
# test_threading's interrupt_main tests need SIGINT's default action; a shell started in the
# background (`&`, nohup) has SIGINT ignored, sh cannot undo that, and Python keeps it ignored. So
# python3 first restores the default, then runs the tests in its place (exec).
sigint_default='import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.executable, [sys.executable] + sys.argv[1:])'
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import test.libregrtest' 2>/dev/null; then
    for run in plain preload; do
        if [ $run = preload ]; then pre=$lib; else pre=; fi
        PYTHONMALLOC=malloc LD_PRELOAD=$pre /usr/bin/python3 -c "$sigint_default" -m test -j2 $PY_TESTS \
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

# The rest run the same way: a program's output (and exit status) without and with the library
# must be equal, and not empty.
same() { # name, command... (run by sh -c in $dir)
    name=$1
    shift
    (cd "$dir" && sh -c "$*") > "$dir/same-plain.out" 2>&1
    echo "exit $?" >> "$dir/same-plain.out"
    (cd "$dir" && LD_PRELOAD=$lib sh -c "$*") > "$dir/same-preload.out" 2>&1
    echo "exit $?" >> "$dir/same-preload.out"
    if cmp -s "$dir/same-plain.out" "$dir/same-preload.out" && grep -q '^exit 0$' "$dir/same-plain.out"; then
        ok "$name: $(head -1 "$dir/same-plain.out" | head -c 60)"
    else
        bad "$name: outputs differ"
        diff "$dir/same-plain.out" "$dir/same-preload.out" | head -10
    fi
}

# xz on 4 threads, compressing and decompressing: its threads free blocks they did not allocate
# (xz 5.4.1, counted by an interposer: the decompression workers free 56 blocks and allocate none;
# the compression workers allocate 28 and free none); the output must be the same bytes.
if command -v xz >/dev/null; then
    same "xz -T4 (threaded compression, round trip)" \
        'cat lines lines | xz -T4 -3 --block-size=256KiB | tee lines.xz | md5sum && xz -T4 -dc lines.xz | md5sum'
else
    bad "xz: the xz CLI is missing (xz-utils)"
fi

# PHP with shared extensions (each dlopened with RTLD_DEEPBIND); pdo.so frees a block the engine
# made at startup.
cat > "$dir/ext.php" <<'PHP'
<?php
echo count(PDO::getAvailableDrivers()), ' ', cal_days_in_month(CAL_GREGORIAN, 2, 2024), ' ',
    ctype_digit('12345') ? 'digits' : 'no', ' ', count(token_get_all('<?php echo 1 + 2;')), "\n";
$a = [];
for ($i = 0; $i < 100000; $i++) { $a[] = str_repeat('x', $i % 500); }
echo md5(implode(',', array_map('strlen', $a))), "\n";
PHP
if command -v php >/dev/null; then
    same "php with shared extensions (RTLD_DEEPBIND)" \
        'USE_ZEND_ALLOC=0 php -n -d extension=pdo -d extension=calendar -d extension=ctype -d extension=tokenizer ext.php'
else
    bad "php: the php CLI is missing (php8.2-cli)"
fi

# A library that another library opens with RTLD_DEEPBIND, by a name only the opener's RUNPATH
# finds: the library's free takes the program's blocks and the program frees the library's.
mkdir -p "$dir/deep/inner"
cat > "$dir/deep/inner.c" <<'C'
#include <stdlib.h>
#include <string.h>
void inner_free(void *p) { free(p); }
char *inner_copy(const char *s) { return strdup(s); }
C
cat > "$dir/deep/outer.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
void *outer_open(void)
{
    void *h = dlopen("libzt_inner.so", RTLD_NOW | RTLD_DEEPBIND);
    if (!h) printf("dlopen: %s\n", dlerror());
    return h;
}
C
cat > "$dir/deep/main.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
    (void)argc;
    void *outer = dlopen(argv[1], RTLD_NOW);
    void *(*open_inner)(void) = outer ? (void *(*)(void))dlsym(outer, "outer_open") : NULL;
    void *inner = open_inner ? open_inner() : NULL;
    if (!inner) { puts("no inner library"); return 1; }
    void (*inner_free)(void *) = (void (*)(void *))dlsym(inner, "inner_free");
    char *(*inner_copy)(const char *) = (char *(*)(const char *))dlsym(inner, "inner_copy");
    unsigned long n = 0;
    for (int i = 0; i < 10000; i++) {
        char *mine = malloc(100 + i % 3000);
        memset(mine, 'a', 10);
        mine[10] = 0;
        char *theirs = inner_copy(mine);
        n += strlen(theirs);
        inner_free(mine);
        free(theirs);
    }
    printf("%lu\n", n);
    return 0;
}
C
if cc -shared -fPIC "$dir/deep/inner.c" -o "$dir/deep/inner/libzt_inner.so" &&
    cc -shared -fPIC "$dir/deep/outer.c" -Wl,-rpath,'$ORIGIN/inner' -ldl -o "$dir/deep/libzt_outer.so" &&
    cc "$dir/deep/main.c" -ldl -o "$dir/deep/main"; then
    same "RTLD_DEEPBIND library found by its opener's RUNPATH" "deep/main ./deep/libzt_outer.so"
else
    bad "RTLD_DEEPBIND test: the test libraries did not build"
fi

# git: a repository made, committed to twice, repacked and checked.
if command -v git >/dev/null; then
    same git 'rm -rf repo && git init -q repo && cd repo && cp ../lines . &&
        git add lines && git -c user.name=t -c user.email=t@t commit -qm one &&
        sed s/a/A/ lines > l2 && mv l2 lines && git -c user.name=t -c user.email=t@t commit -qam two &&
        git diff --stat HEAD~1 && git gc -q && git fsck --full 2>&1 | wc -l && git rev-list --count HEAD &&
        git cat-file -p HEAD:lines | md5sum'
else
    bad "git: missing"
fi

# perl: hashes, sorting, regular expressions, deletion.
cat > "$dir/script.pl" <<'PERL'
my %h; my @a;
for my $i (1..200000) { $h{"k$i"} = [$i, "v" x ($i % 50)]; push @a, "s$i" if $i % 3; }
my $n = 0; for my $k (sort keys %h) { $n += length($h{$k}[1]); }
my $s = join(",", map { uc } grep { /7/ } @a);
delete $h{"k$_"} for 1..100000;
print "$n ", length($s), " ", scalar(@a), " ", scalar(keys %h), "\n";
PERL
if command -v perl >/dev/null; then same perl 'perl script.pl'; else bad "perl: missing"; fi

# sqlite3: a table of 200,000 rows, an index, grouping and sorting.
cat > "$dir/script.sql" <<'SQL'
create table t(a integer, b text);
with recursive c(x) as (select 1 union all select x + 1 from c where x < 200000)
insert into t select (x * 7919) % 100003, printf('row%08d', x) from c;
create index ia on t(a);
select count(*), sum(a), max(b) from t;
select a, count(*) from t group by a order by count(*) desc, a limit 3;
SQL
if command -v sqlite3 >/dev/null; then
    same sqlite3 'rm -f db.sqlite && sqlite3 db.sqlite < script.sql'
else
    bad "sqlite3: missing"
fi

# Node.js: four worker threads (V8 isolates with their own threads) allocating at once, their
# results posted back to the main thread.
cat > "$dir/workers.js" <<'JS'
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
if (isMainThread) {
  const results = [];
  for (let i = 0; i < 4; i++) {
    new Worker(__filename, { workerData: i }).on('message', (m) => {
      results[i] = m;
      if (results.filter((x) => x !== undefined).length === 4) console.log(results.join(' '));
    });
  }
} else {
  let a = [], s = 0;
  for (let i = 0; i < 200000; i++) {
    a.push({ k: 'w' + workerData + ':' + i, v: new Array(i % 20).fill(i) });
    if (a.length > 5000) a = a.slice(2500);
  }
  for (const o of a) s += o.v.length + o.k.length;
  parentPort.postMessage(s + JSON.stringify(a.slice(0, 100)).length);
}
JS
if command -v node >/dev/null; then same "node (4 worker threads)" 'node workers.js'; else bad "node: missing (nodejs)"; fi

# CPython forking worker processes while two threads allocate: the children's allocator must work.
cat > "$dir/fork.py" <<'PY'
import multiprocessing as mp, threading
def work(n):
    d = {i: 'x' * (i % 200) for i in range(n)}
    return sum(len(v) for v in d.values())
def churn(stop):
    while not stop.is_set():
        [bytes(i % 500) for i in range(2000)]
if __name__ == '__main__':
    mp.set_start_method('fork')
    stop = threading.Event()
    threads = [threading.Thread(target=churn, args=(stop,)) for _ in range(2)]
    for t in threads: t.start()
    with mp.Pool(3) as pool: print(sum(pool.map(work, [50000 + i * 1000 for i in range(12)])))
    stop.set()
    for t in threads: t.join()
PY
same "python3 fork while threads allocate" 'PYTHONMALLOC=malloc /usr/bin/python3 fork.py'

# rustc: LLVM generating code on several threads at once (16 codegen units) must write the same
# binary; that binary (threads sending strings over a channel, the receiver freeing them) must
# print the same with and without the library.
cat > "$dir/prog.rs" <<'RUST'
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::thread;

fn main() {
    let (tx, rx) = mpsc::channel::<Vec<String>>();
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                for round in 0..50 {
                    let batch = (0..200).map(|i| format!("{t}:{round}:{}", i * 7919 % 1000));
                    tx.send(batch.collect()).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for batch in rx {
        for s in batch {
            *counts.entry(s.rsplit(':').next().unwrap().to_string()).or_default() += 1;
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    let sorted: BTreeMap<_, _> = counts.into_iter().collect();
    let total: usize = sorted.values().sum();
    println!("{} keys, {} strings, first {:?}", sorted.len(), total, sorted.iter().next());
}
RUST
if command -v rustc >/dev/null; then
    if (cd "$dir" && rustc -O -C codegen-units=16 prog.rs -o rust-plain &&
        LD_PRELOAD=$lib rustc -O -C codegen-units=16 prog.rs -o rust-preload) &&
        cmp -s "$dir/rust-plain" "$dir/rust-preload"; then
        ok "rustc -O -C codegen-units=16 (threaded code generation)"
    else
        bad "rustc: the binaries differ or the compile failed"
    fi
    same "a Rust program built by rustc (threads, a channel)" ./rust-plain
else
    bad "rustc: missing"
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
