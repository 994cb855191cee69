#!/usr/bin/env python3
"""Runs the allocator benchmarks (driver.c, built by the Makefile) and reports them.

    run.py                  full run: interleaved rounds of every workload x allocator, callgrind
                            instruction counts; writes results/latest.md and results/latest.svg
                            and prints the tables
    run.py --smoke          every workload x available allocator at tiny scale; checks checksums
                            only (never timings); last line "N passed, N failed"
    run.py --callgrind-only only the instruction counts, printed
    run.py --render build/raw.json [--out results]
                            no run: rewrite latest.md and latest.svg from a run's raw numbers
    run.py --workloads programs,churn   only these workloads / programs (groups: drivers, programs)

Two groups: the allocator workloads of driver.c (ns per operation, every allocator), and real
programs (CPython's regression tests, a PHP script, gcc) timed whole under each malloc
(glibc, the LD_PRELOADed peers, zend-preload) through spawn.c.

Every allocator runs as its own process (the PHP driver and ours export the same symbols; the
malloc peers are LD_PRELOADed), so rounds interleave processes: round r runs every workload on
every allocator, in an order rotated each round, before round r+1 starts. Machine noise then
hits all allocators alike, and the median over rounds drops the outliers.

Standard library only.
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from xml.etree import ElementTree

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(HERE, "build")
RESULTS = os.path.join(HERE, "results")
LIBDIR = "/usr/lib/x86_64-linux-gnu"


class Allocator:
    def __init__(self, name, binary, lib_tag, needs=None, package=None, preload=False, extra_env=None):
        self.name = name
        self.extra_env = extra_env or {}  # variables the allocator runs with (zend+debug: tracking)
        self.binary = os.path.join(BUILD, binary)
        self.lib_tag = lib_tag  # the driver reports which library provides the allocator: must contain this
        self.needs = needs  # library file the allocator comes from (None: always there)
        self.package = package  # Debian package that installs `needs`
        self.preload = preload  # run the malloc driver with LD_PRELOAD=needs

    def missing(self):
        """Why this allocator cannot run here, or None."""
        if self.needs and not os.path.exists(self.needs):
            return f"{self.needs} not found (Debian package {self.package})"
        if not os.path.exists(self.binary):
            return f"{self.binary} not built (make -C bench bins)"
        return None

    def env(self):
        env = dict(os.environ)
        # PHP's allocator switches itself to malloc under USE_ZEND_ALLOC=0; a stray preload would
        # replace malloc for everyone.
        for var in ("LD_PRELOAD", "USE_ZEND_ALLOC", "USE_ZEND_ALLOC_HUGE_PAGES", "ZEND_MM_MEM_TYPE",
                    "ZEND_MM_SEG_SIZE", "ZEND_MM_COMPACT", "ZEND_MM_DEBUG", "ZEND_MM_STATS",
                    "ZEND_MM_MAX_ALLOCS", "ZEND_ALLOC_PRINT_LEAKS"):
            env.pop(var, None)
        if self.preload:
            env["LD_PRELOAD"] = self.needs
        env.update(self.extra_env)
        return env


ALLOCATORS = [
    Allocator("zend", "bench_zend", "libzend_alloc"),
    # The same library with block tracking on (PHP 5.3's debug build at run time): what it costs.
    Allocator("zend+debug", "bench_zend", "libzend_alloc", extra_env={"ZEND_MM_DEBUG": "1"}),
    Allocator("php", "bench_php", "libphp", "/usr/lib/libphp8.2.so", "libphp8.2-embed"),
    Allocator("glibc", "bench_malloc", "libc.so"),
    Allocator("jemalloc", "bench_malloc", "libjemalloc", f"{LIBDIR}/libjemalloc.so.2", "libjemalloc2", True),
    Allocator("mimalloc", "bench_malloc", "libmimalloc", f"{LIBDIR}/libmimalloc.so.2", "libmimalloc2.0", True),
    Allocator("tcmalloc", "bench_malloc", "libtcmalloc", f"{LIBDIR}/libtcmalloc_minimal.so.4",
              "libtcmalloc-minimal4", True),
    # This library as the process's malloc: the malloc driver under LD_PRELOAD, as the peers.
    Allocator("zend-preload", "bench_malloc", "libzend_alloc_preload",
              os.path.join(ROOT, "target", "release", "libzend_alloc_preload.so"), None, True),
]
PEERS = ("glibc", "jemalloc", "mimalloc", "tcmalloc")
# The fewest rounds of a run whose results replace the committed ones.
FULL_RUN_ROUNDS = 5
# Workloads where PHP's allocator unmaps memory mid-request: reported apart in the means.
UNMAPPING = ("phpmix", "large")


def driver_args(alloc, workload, scale):
    """The driver's arguments and environment for one row: `name@storage` runs workload `name`,
    with zend on that built-in storage (ZEND_MM_MEM_TYPE); the default storage is malloc."""
    name, _, storage = workload.partition("@")
    env = alloc.env()
    if storage and alloc.name.startswith("zend"):
        env["ZEND_MM_MEM_TYPE"] = storage
    return [name, str(scale)], env

# Names as driver.c knows them; the descriptions' counts are driver.c's at scale 1.
WORKLOADS = [
    ("churn", "small-size churn: sizes 8..256 B, a random slot of a 4096-block live set replaced 4M times"),
    ("phpmix", "PHP-like mix over a 2000-block live set: 75% 8..64 B, 21% 65 B..3 KiB, "
               "4% 4 KiB..512 KiB, 1 in 20000 2..6 MiB; 1M replacements"),
    ("request", "200 requests of 20000 operations: 50% allocate (PHP mix, no huge), 42% free, "
                "8% grow by realloc; the request ends with ~1/6 of its blocks live "
                "(zend/php: shutdown_memory_manager(1, 0); malloc: free them one by one)"),
    ("hugereq", "request cycles as `request`, with one allocation in 5000 a huge block of 2..6 MiB "
                "(about two per request; the real peak passes ZEND_MM_COMPACT's 2 MiB)"),
    ("hugereq@mmap_anon", "`hugereq` with zend on the mmap_anon storage (the others as in `hugereq`)"),
    ("hugereq@mmap_zero", "`hugereq` with zend on the mmap_zero storage (the others as in `hugereq`)"),
    ("strings", "string building: one buffer grown by 1..64 B reallocs to 1 MiB, 64 times"),
    ("lifo", "LIFO bursts: allocate 64..2047 blocks of 8..512 B, free in reverse order; 6000 bursts"),
    ("large", "large blocks: 4 KiB..1 MiB (log-uniform) over a 64-block live set, 40k replacements"),
    ("pages", "page-sized churn: 4 KiB..300 KiB (log-uniform) over a 128-block live set, "
              "200k replacements"),
    ("threads", "2 threads, each running the churn workload on its own heap (wall time over all "
                "operations of both; php: n/a, its NTS heap is not thread safe)"),
    ("xthread", "producer/consumer: one thread allocates 2M blocks (70% 8..128 B, 25% ..2 KiB, "
                "5% ..64 KiB) and stamps them, another checks and frees them, through a 1024-slot ring "
                "(every free is of another thread's block; php: n/a)"),
    ("larson", "server loop (after larson): 4 threads replace random blocks of 8..1000 B in 8192 shared "
               "slots, 20000 per round and thread; the threads' slot ranges rotate every round, so most "
               "blocks are freed by another thread than the one that made them; 40 rounds (php: n/a)"),
    ("tchurn", "thread churn: 60 waves of 16 short-lived threads; each frees the 256 blocks its "
               "predecessor of the wave before handed on, replaces random slots of a 512-slot set 2000 "
               "times (90% 8..264 B, 10% ..16 KiB), hands 256 blocks on, frees the rest and exits; "
               "thread start and exit inside the clock (zend, php: n/a, a thread's heap ends with it)"),
]

FAST = [
    ("pair", "`p = alloc(n); free(p)`, n = 64 unknown to the compiler (the general entry points)"),
    ("batch", "64 × `alloc(n)`, then 64 × `free` in reverse (LIFO)"),
    ("sized", "a constant size: zend `emalloc(64)`, `efree_size(p, 64)`, which its header turns into "
              "`_emalloc_at_64(64, file, line)`, `_efree_at_64(p, file, line)`; php `_emalloc_64()`, "
              "`_efree_64(p)`, what PHP's release header makes of the same (malloc peers: `malloc(64)`, `free`)"),
]

SMOKE_SCALE = 0.002


# ---- Programs ------------------------------------------------------------------------------
# Whole programs under each malloc (glibc, and the LD_PRELOADed peers and zend-preload), timed
# from outside by spawn.c. Each program's output must equal its output on glibc; a program that
# fails or differs under an allocator is reported and not timed.

SPAWN = os.path.join(BUILD, "spawn")
PYTHON3 = "/usr/bin/python3"  # Debian's, whose test package libpython3.11-testsuite holds the tests
# CPython regression tests that allocate much and depend neither on the network nor on timing;
# about 2-3 s together on one core.
PY_TESTS = ["test_dict", "test_list", "test_tuple", "test_re", "test_collections", "test_sort",
            "test_heapq", "test_functools"]
PHP_REQUESTS = 40  # requests of bench/php/requests.php at scale 1 (about 1 s)


class Program:
    def __init__(self, name, desc, tool, package, command, digest):
        self.name = name
        self.desc = desc
        self.tool = tool  # what must be installed, and from which Debian package
        self.package = package
        self.command = command  # (scale, scratch dir) -> (argv, extra environment)
        self.digest = digest  # (output bytes, scratch dir) -> what must be equal across allocators

    def missing(self):
        if not shutil.which(self.tool[0]):
            return f"{self.tool[0]} not found (Debian package {self.package})"
        if len(self.tool) > 1 and subprocess.run([self.tool[0], "-c", self.tool[1]],
                                                 capture_output=True).returncode != 0:
            return f"{self.tool[0]} cannot {self.tool[1]!r} (Debian package {self.package})"
        return None


def _py_modules(scale):
    """How many of PY_TESTS a run at `scale` uses (2 at smoke scale)."""
    return max(2, min(len(PY_TESTS), round(len(PY_TESTS) * scale)))


def _php_requests(scale):
    return max(1, round(PHP_REQUESTS * scale))


def _python_command(scale, _tmp):
    n = _py_modules(scale)
    # PYTHONMALLOC=malloc: every object from malloc (not pymalloc's arenas); fixed seeds keep
    # each run's allocations the same.
    return ([PYTHON3, "-m", "test", "--randseed", "1", *PY_TESTS[:n]],
            {"PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0"})


def _python_digest(out, _tmp):
    # The summary only: the log carries durations and load averages.
    keep = ("== Tests result", "All ", "Total tests", "Total test files", "Result:")
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith(keep)]
    return "\n".join(lines)


def _php_command(scale, _tmp):
    # -n: no php.ini, so no shared extension is dlopened (PHP uses RTLD_DEEPBIND, which would bind
    # an extension's malloc to glibc's beside the preloaded one); USE_ZEND_ALLOC=0: the engine
    # allocates with malloc.
    return (["php", "-n", os.path.join(HERE, "php", "requests.php"), str(_php_requests(scale))],
            {"USE_ZEND_ALLOC": "0"})


def _gcc_command(scale, tmp):
    # At smoke scale a small file: the smoke run checks that gcc works, not how fast.
    src = os.path.join(HERE, "driver.c" if scale >= 0.1 else "broken.c")
    if os.path.exists(os.path.join(tmp, "out.o")):
        os.unlink(os.path.join(tmp, "out.o"))  # a run's digest must be its own object file
    return ["gcc", "-O2", "-DALLOC_MALLOC", "-c", src, "-o", os.path.join(tmp, "out.o")], {}


def _gcc_digest(out, tmp):
    with open(os.path.join(tmp, "out.o"), "rb") as f:
        return out.decode(errors="replace") + hashlib.sha256(f.read()).hexdigest()


PROGRAMS = [
    Program("python-tests",
            f"`python3 -m test` on {len(PY_TESTS)} of CPython's regression test modules ({', '.join(PY_TESTS)}), "
            "`PYTHONMALLOC=malloc`, fixed seeds; the test summary must match",
            (PYTHON3, "import test.libregrtest, test.test_dict"), "libpython3.11-testsuite",
            _python_command, _python_digest),
    Program("php-requests",
            f"`USE_ZEND_ALLOC=0 php -n bench/php/requests.php {PHP_REQUESTS}`: PHP 8.2's engine on malloc, "
            "requests that decode JSON, build objects and arrays, render a page, serialize a session; "
            "the printed checksum must match",
            ("php",), "php8.2-cli", _php_command, lambda out, _tmp: out.decode(errors="replace")),
    Program("gcc",
            "`gcc -O2 -c bench/driver.c` (1000 lines of C); the object file must be identical",
            ("gcc",), "gcc", _gcc_command, _gcc_digest),
]


def malloc_level(allocs):
    """The allocators a whole program can run on: glibc and the LD_PRELOADed ones."""
    return [a for a in allocs if a.name == "glibc" or a.preload]


def run_program(prog, alloc, scale, tmp):
    """One run under `alloc`: (spawn's key=value report as a dict, output digest, None), or, if the
    program exited with a non-zero status, (report, None, the end of its output)."""
    argv, extra = prog.command(scale, tmp)
    env = alloc.env()
    # spawn.c moves BENCH_PRELOAD to LD_PRELOAD in the program only.
    pre = env.pop("LD_PRELOAD", None)
    if pre:
        env["BENCH_PRELOAD"] = pre
    env.update(extra)
    report = os.path.join(tmp, "spawn.report")
    proc = subprocess.run([SPAWN, report, *argv], env=env, cwd=tmp, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RunError(f"{prog.name} {alloc.name}: spawn failed: {proc.stdout.decode(errors='replace')[-500:]}")
    with open(report) as f:
        res = {k: int(v) for k, v in (kv.split("=", 1) for kv in f.read().split())}
    # The dynamic loader only warns when a preload cannot be loaded, and the program runs on glibc.
    if b"cannot be preloaded" in proc.stdout:
        raise RunError(f"{prog.name} {alloc.name}: LD_PRELOAD did not take effect: "
                       f"{proc.stdout.decode(errors='replace')[:300]}")
    if res["status"] != 0:
        return res, None, proc.stdout.decode(errors="replace")[-400:].strip()
    return res, prog.digest(proc.stdout, tmp), None


def check_programs(progs, allocs, scale, tmp, quiet=False):
    """Runs every program once under every malloc-level allocator (untimed; a warm-up for the
    timed rounds) and compares each output with glibc's.
    Returns ({program: {alloc: None if fine, else why not}}, {program: glibc's digest})."""
    status, refs = {}, {}
    for p in progs:
        status[p.name] = {}
        for a in sorted(allocs, key=lambda a: a.name != "glibc"):  # glibc first: the reference
            if not quiet:
                print(f"check: {p.name} {a.name}", file=sys.stderr, flush=True)
            res, digest, err = run_program(p, a, scale, tmp)
            if err is not None:
                last = err.splitlines()[-1] if err else ""
                status[p.name][a.name] = f"exit status {res['status']}" + (f": {last}" if last else "")
            elif a.name == "glibc":
                refs[p.name] = digest
                status[p.name][a.name] = None
            elif p.name not in refs:
                status[p.name][a.name] = "no glibc run to compare with"
            elif digest != refs[p.name]:
                status[p.name][a.name] = "output differs from glibc's"
            else:
                status[p.name][a.name] = None
    return status, refs


class RunError(Exception):
    pass


def run_driver(alloc, args, env=None, expect_rc=0):
    """Runs one driver process; returns its key=value line as a dict (or None for n/a)."""
    proc = subprocess.run([alloc.binary, *args], env=env or alloc.env(), capture_output=True, text=True)
    if proc.returncode != expect_rc:
        raise RunError(f"{alloc.name} {' '.join(args)}: exit status {proc.returncode}: "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    if expect_rc != 0:
        return proc
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RunError(f"{alloc.name} {' '.join(args)}: no output")
    res = dict(kv.split("=", 1) for kv in lines[-1].split())
    if res.get("status") == "na":
        return None
    if alloc.lib_tag not in res.get("lib", ""):
        raise RunError(f"{alloc.name}: allocator came from {res.get('lib')!r}, expected {alloc.lib_tag}"
                       " (did LD_PRELOAD take effect?)")
    return res


def available(allocators):
    ok = []
    for a in allocators:
        why = a.missing()
        if why:
            print(f"note: {a.name} skipped: {why}", file=sys.stderr)
        else:
            ok.append(a)
    if not any(a.name == "zend" for a in ok):
        sys.exit("bench: the zend driver is missing; build it with make -C bench bins")
    return ok


# ---- Smoke ---------------------------------------------------------------------------------

def smoke(allocs, workloads, progs):
    """Correctness only: every workload on every allocator, checksums equal across allocators;
    every program once on every malloc-level allocator, output equal to glibc's."""
    passed = failed = 0

    def report(ok, what, detail=""):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)

    for w in workloads:
        sums = {}
        for a in allocs:
            try:
                res = run_driver(a, *driver_args(a, w, SMOKE_SCALE))
            except RunError as e:
                report(False, f"{w} {a.name}", str(e))
                continue
            if res is None:
                print(f"n/a  {w} {a.name}")
                continue
            sums[a.name] = res["checksum"]
            ref = sums.get("zend", res["checksum"])
            report(res["checksum"] == ref, f"{w} {a.name}",
                   "" if res["checksum"] == ref else f"checksum {res['checksum']} != zend's {ref}")
    # Programs at their smallest size (python: 2 test modules, php: 1 request, gcc: a small file).
    # A peer that fails a program is its own problem (noted); glibc (the reference) and this
    # library must pass.
    if progs:
        with tempfile.TemporaryDirectory() as tmp:
            status, _ = check_programs(progs, malloc_level(allocs), SMOKE_SCALE, tmp, quiet=True)
            for p, per in status.items():
                for name, why in per.items():
                    if why and name in PEERS and name != "glibc":
                        print(f"note {p} {name}: {why}")
                    else:
                        report(why is None, f"{p} {name}", why or "")
            program_self_tests(progs, allocs, tmp, report)
    report_self_test(report)
    if not workloads:
        print(f"{passed} passed, {failed} failed")
        return failed == 0
    # The fast-path loops that callgrind measures also run, natively.
    for kind, _ in FAST:
        for a in allocs:
            try:
                run_driver(a, [f"fast-{kind}", "10000"])
                report(True, f"fast-{kind} {a.name}")
            except RunError as e:
                report(False, f"fast-{kind} {a.name}", str(e))
    # The checks themselves: an allocator that hands out overlapping blocks must be caught.
    broken = os.path.join(BUILD, "broken.so")
    malloc = next(a for a in ALLOCATORS if a.name == "glibc")  # bench_malloc is always built
    env = dict(malloc.env(), LD_PRELOAD=broken)
    try:
        proc = run_driver(malloc, ["churn", str(SMOKE_SCALE)], env=env, expect_rc=3)
        report("CORRUPTION" in proc.stderr, "a wrong allocator (broken.so) is caught")
    except RunError as e:
        report(False, "a wrong allocator (broken.so) is caught", str(e))
    print(f"{passed} passed, {failed} failed")
    return failed == 0


def program_self_tests(progs, allocs, tmp, report):
    """The programs group's own checks: a program crashing under an allocator, or printing
    something else than under glibc, is caught; the peak RSS is the program's, not the runner's."""
    glibc = next(a for a in allocs if a.name == "glibc")
    broken = Allocator("broken", "bench_malloc", "", os.path.join(BUILD, "broken.so"), None, True)
    prog = progs[0]  # each of them crashes on overlapping blocks (a segfault, an internal compiler error)
    status, _ = check_programs([prog], [glibc, broken], SMOKE_SCALE, tmp, quiet=True)
    why = status[prog.name]["broken"] or ""
    report(why.startswith("exit status"), f"{prog.name} crashing under broken.so is caught", why or "not caught")
    # A program whose output names its preload differs between glibc and any preload.
    echo = Program("echo-preload", "", ("sh",), "dash", lambda _s, _t: (["sh", "-c", 'echo "$LD_PRELOAD"'], {}),
                   lambda out, _t: out)
    status, _ = check_programs([echo], [glibc, broken], SMOKE_SCALE, tmp, quiet=True)
    why = status[echo.name]["broken"] or ""
    report(why == "output differs from glibc's", "a program's differing output is caught", why or "not caught")
    # Linux carries ru_maxrss across exec: a child of this (now large) process would report at
    # least its size; spawn.c's must not.
    ballast = bytearray(96 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    true = Program("true", "", ("true",), "coreutils", lambda _s, _t: (["true"], {}), lambda out, _t: out)
    res, _, _ = run_program(true, glibc, SMOKE_SCALE, tmp)
    del ballast
    report(res["maxrss_kib"] < 32 << 10, "a program's peak RSS excludes the runner's",
           f"`true` reported {res['maxrss_kib']} KiB")


def report_self_test(report):
    """The report from made-up numbers: the markdown and the chart show every workload and program
    in absolute units, each round's range as a whisker, n/a and failed rows as such, and the
    chart is well-formed SVG."""
    def runs(ns):  # one round per value, ops = 1000
        return [{"ops": "1000", "ns": str(n * 1000), "cpu_ns": str(n * 1000), "checksum": "1",
                 "rss_base_kib": "0", "rss_peak_kib": "1024", "rss_end_kib": "1024"} for n in ns]
    prog = lambda ws, failed=None: {"runs": [] if failed else [
        {"wall_ns": int(w * 1e9), "cpu_ns": int(w * 1e9), "maxrss_kib": 2048} for w in ws], "failed": failed}
    raw = {"machine": {"cpu": "cpu", "cores": 1, "kernel": "k", "versions": "", "cc": "cc", "commit": "c",
                       "date": "d", "load": "l"},
           "names": ["zend", "php", "glibc", "zend-preload"], "rounds": 3, "scale": 1.0, "callgrind": None,
           "runs": {"churn": {"zend": runs([7, 8, 30]), "php": runs([9, 9, 9]), "glibc": runs([17, 18, 19]),
                              "zend-preload": runs([8, 8, 8])},
                    "threads": {"zend": runs([5, 5, 5]), "php": None, "glibc": runs([9, 10, 11]),
                                "zend-preload": runs([4, 5, 6])}},
           "programs": {"gcc": {"glibc": prog([1.0, 1.1, 1.2]), "zend-preload": prog([], "exit status 139")}}}
    with tempfile.TemporaryDirectory() as tmp:
        md = write_report(raw, tmp)
        try:
            root = ElementTree.parse(os.path.join(tmp, "latest.svg")).getroot()
        except ElementTree.ParseError as e:
            report(False, "the chart is well-formed SVG", str(e))
            return
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    circles = [c for c in root.iter("{http://www.w3.org/2000/svg}circle")]
    titles = [c.find("{http://www.w3.org/2000/svg}title").text for c in circles]
    want = ["churn zend: median 8.00 ns/op, rounds 7.00..30.0", "churn glibc: median 18.0 ns/op, rounds 17.0..19.0",
            "threads zend-preload: median 5.00 ns/op, rounds 4.00..6.00", "gcc glibc: median 1.10 s, rounds 1.00..1.20"]
    report(all(w in titles for w in want) and len(circles) == 8 + len(php_script_rows()[0]) * 2
           and "n/a" in texts and "failed" in texts and any(t.startswith("churn") for t in texts),
           "the chart: absolute medians, min-max whiskers, n/a and failed rows",
           "" if all(w in titles for w in want) else f"got {titles}")
    report("| gcc | 1.100 | failed | n/a | n/a | n/a |" in md and "| churn | 8.0 | 9.0 | 18.0 | 8.0 |" in md,
           "the tables: programs with failures, workloads in ns/op")


# ---- Timed run -----------------------------------------------------------------------------

def timed(allocs, rounds, scale, workloads, progs):
    """Returns (data, programs): data = {workload: {alloc: [result dicts, one per round] or None
    for n/a}}; programs = {program: {alloc: {"runs": [spawn reports], "failed": why or None}}}.
    Checksum mismatches between allocators fail the run; a program failing under an allocator is
    recorded and no longer run there."""
    data = {w: {a.name: [] for a in allocs} for w in workloads}
    pdata, refs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if progs:
            status, refs = check_programs(progs, malloc_level(allocs), scale, tmp)
            pdata = {p: {n: {"runs": [], "failed": why} for n, why in per.items()} for p, per in status.items()}
        for r in range(rounds):
            # Rotate the order each round, so no allocator always runs first (or right after another).
            order = allocs[r % len(allocs):] + allocs[:r % len(allocs)]
            for w in workloads:
                print(f"round {r + 1}/{rounds}: {w:8s} " + " ".join(a.name for a in order), file=sys.stderr, flush=True)
                for a in order:
                    res = run_driver(a, *driver_args(a, w, scale))
                    if res is None:
                        data[w][a.name] = None
                    else:
                        data[w][a.name].append(res)
            for p in progs:
                print(f"round {r + 1}/{rounds}: {p.name} " + " ".join(a.name for a in malloc_level(order)),
                      file=sys.stderr, flush=True)
                for a in malloc_level(order):
                    slot = pdata[p.name][a.name]
                    if slot["failed"]:
                        continue
                    res, digest, err = run_program(p, a, scale, tmp)
                    if err is not None or digest != refs.get(p.name):
                        slot["failed"] = (f"round {r + 1}: exit status {res['status']}" if err is not None
                                          else f"round {r + 1}: output differs from glibc's")
                        slot["runs"] = []
                    else:
                        slot["runs"].append(res)
    bad = []
    for w, per in data.items():
        sums = {(name, res["checksum"]) for name, runs in per.items() if runs for res in runs}
        if len({c for _, c in sums}) > 1:
            bad.append(f"{w}: " + ", ".join(f"{n}={c}" for n, c in sorted(sums)))
    if bad:
        raise RunError("checksum mismatch between allocators (an allocator corrupted memory):\n  "
                       + "\n  ".join(bad))
    return data, pdata


def summarize_programs(pdata):
    """Per program x allocator: median wall and CPU seconds, median peak RSS (MiB), the spread
    (interquartile range / median) and every round's wall time; or {"failed": why}."""
    out = {}
    for p, per in pdata.items():
        out[p] = {}
        for name, slot in per.items():
            runs = slot["runs"]
            if slot["failed"] or not runs:
                out[p][name] = {"failed": slot["failed"] or "not run"}
                continue
            wall = [r["wall_ns"] / 1e9 for r in runs]
            med = statistics.median(wall)
            q = statistics.quantiles(wall, n=4) if len(wall) > 1 else [med, med, med]
            out[p][name] = {
                "s": med,
                "cpu_s": statistics.median(r["cpu_ns"] / 1e9 for r in runs),
                "rss_mib": statistics.median(r["maxrss_kib"] / 1024 for r in runs),
                "spread": (q[2] - q[0]) / med,
                "rounds": wall,
            }
    return out


def summarize(data):
    """Medians per workload x allocator: ns/op, spread, RSS growth (MiB)."""
    out = {}
    for w, per in data.items():
        out[w] = {}
        for name, runs in per.items():
            if not runs:
                out[w][name] = None
                continue
            nsop = [int(r["ns"]) / int(r["ops"]) for r in runs]
            med = statistics.median(nsop)
            # Interquartile range: unlike max - min, one round disturbed by a neighbour barely moves it.
            q = statistics.quantiles(nsop, n=4) if len(nsop) > 1 else [med, med, med]
            out[w][name] = {
                "ns_op": med,
                "cpu_ns_op": statistics.median(int(r["cpu_ns"]) / int(r["ops"]) for r in runs),
                "spread": (q[2] - q[0]) / med,
                "rss_mib": statistics.median(
                    (int(r["rss_peak_kib"]) - int(r["rss_base_kib"])) / 1024 for r in runs),
                "rss_end_mib": statistics.median(
                    (int(r["rss_end_kib"]) - int(r["rss_base_kib"])) / 1024 for r in runs),
                "rounds": nsop,
            }
    return out


# ---- Callgrind -----------------------------------------------------------------------------

def callgrind(allocs, pairs=200000):
    """Instructions per alloc+free pair in the fast-path loops, loop overhead subtracted.

    Only instructions executed inside bench_pair / bench_batch (and everything they call) are
    counted (--toggle-collect); the empty loop of the same shape (no allocator calls) is measured
    the same way and subtracted. What remains is the call sequence (argument setup, call, PLT
    stub) and the allocator's alloc and free."""
    if not shutil.which("valgrind"):
        print("note: valgrind not installed (Debian package valgrind): no instruction counts", file=sys.stderr)
        return None

    def count(alloc, mode):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "callgrind.out")
            fn = "bench_" + mode.replace("fast-", "").replace("-", "_")
            cmd = ["valgrind", "--tool=callgrind", f"--toggle-collect={fn}", f"--callgrind-out-file={out}",
                   alloc.binary, mode, str(pairs)]
            proc = subprocess.run(cmd, env=alloc.env(), capture_output=True, text=True)
            if proc.returncode != 0:
                raise RunError(f"callgrind {alloc.name} {mode}: {proc.stderr.strip()[-500:]}")
            res = dict(kv.split("=", 1) for kv in proc.stdout.split())
            if alloc.lib_tag not in res.get("lib", ""):
                raise RunError(f"callgrind {alloc.name}: allocator came from {res.get('lib')!r}")
            with open(out) as f:
                totals = [int(line.split()[1]) for line in f if line.startswith("totals:")]
            # The driver prints how many pairs it ran (a batch loop rounds to a multiple of 64).
            return totals[0], int(res["checksum"], 16)

    result = {}
    empty = {}
    for a in allocs:
        print(f"callgrind: {a.name}", file=sys.stderr, flush=True)
        result[a.name] = {}
        for kind, _ in FAST:
            # The empty loop depends only on the binary (preloaded peers share bench_malloc's).
            key = (a.binary, kind)
            if key not in empty:
                ir, n = count(a, f"fast-{kind}-empty")
                empty[key] = ir / n
            ir, n = count(a, f"fast-{kind}")
            result[a.name][kind] = {"raw": ir / n, "net": ir / n - empty[key], "loop": empty[key]}
    return result


# ---- Report --------------------------------------------------------------------------------

def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    debian = ""
    if os.path.exists("/etc/debian_version"):
        with open("/etc/debian_version") as f:
            debian = f", Debian {f.read().strip()}"
    versions = []
    for label, pkg in (("glibc", "libc6"), ("PHP", "libphp8.2-embed"), ("jemalloc", "libjemalloc2"),
                       ("mimalloc", "libmimalloc2.0"), ("tcmalloc", "libtcmalloc-minimal4"),
                       ("valgrind", "valgrind")):
        v = sh(["dpkg-query", "-W", "-f=${Version}", pkg])
        if v:
            versions.append(f"{label} {v}")
    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    if commit and sh(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"]):
        commit += " + uncommitted changes"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": f"Linux {platform.release()}{debian}",
        "versions": ", ".join(versions),
        "cc": (sh(["gcc", "--version"]).splitlines() or [""])[0],
        "commit": commit or "unknown",
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def present(summary):
    """The workloads a run measured (a run may select some; an older raw.json lacks newer ones)."""
    return [(w, d) for w, d in WORKLOADS if w in summary]


def ratios(summary, names):
    """Per workload: zend/php and zend/best peer (with the peer's name)."""
    out = {}
    for w, _ in present(summary):
        s = summary[w]
        zend = s.get("zend")
        php = s.get("php")
        peers = [(s[p]["ns_op"], p) for p in PEERS if p in names and s.get(p)]
        best = min(peers) if peers else None
        out[w] = {
            "php": zend["ns_op"] / php["ns_op"] if zend and php else None,
            "peer": (zend["ns_op"] / best[0], best[1]) if zend and best else None,
        }
    return out


def fmt(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_mib(x):
    """MiB with one decimal, two below 10 MiB (a ratio of two small values needs them)."""
    return fmt(x, 2 if x is not None and abs(x) < 10 else 1)


def rss_ratio(s, name, against):
    """`name`'s peak RSS growth over the smallest of `against` on one workload, with that one's
    name when there are several ("n/a" if either is missing or the smallest is not above zero)."""
    if not s.get(name):
        return "n/a"
    peers = [(s[a]["rss_mib"], a) for a in against if s.get(a)]
    if not peers or min(peers)[0] <= 0:
        return "n/a"
    lean, who = min(peers)
    return fmt(s[name]["rss_mib"] / lean, 2) + (f" ({who})" if len(against) > 1 else "")


def program_sections(psum, rounds, scale):
    """The programs group: whole-process wall time and peak RSS per malloc, with this library's
    preload shim against the peers as in the zend-preload table."""
    L = []
    names = [a.name for a in ALLOCATORS if a.name in next(iter(psum.values()))]
    cell = lambda v, key, digits: fmt(v[key], digits) if "failed" not in v else "failed"
    L.append(f"## Real programs (wall time in s, median of {rounds} rounds; lower is better)")
    L.append("")
    L.append("Whole programs under each malloc: glibc's own, the peers and this library's shim "
             "(`zend-preload`) through `LD_PRELOAD`. Wall time of the process from start to exit; the first run of "
             "every program under every allocator is an untimed check (and warm-up) whose output must equal glibc's. "
             "A program that fails or prints something else under an allocator is marked *failed* there and not timed.")
    L.append("")
    head = ["program", *names, "preload / best peer", "preload / mimalloc", "preload / glibc", "spread"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    per = {}
    for p, s in psum.items():
        pre = s.get("zend-preload")
        ok = {n: v["s"] for n, v in s.items() if "failed" not in v}
        peers = [(ok[n], n) for n in PEERS if n in ok]
        cols = ["n/a", "n/a", "n/a"]
        if pre and "zend-preload" in ok and peers:
            best = min(peers)
            rel = lambda n: ok["zend-preload"] / ok[n] if n in ok else None
            per[p] = (ok["zend-preload"] / best[0], rel("mimalloc"), rel("glibc"))
            cols = [f"{per[p][0]:.2f} ({best[1]})", fmt(per[p][1], 2), fmt(per[p][2], 2)]
        spread = max((s[n]["spread"] for n in ok), default=0)
        L.append(f"| {p} | " + " | ".join(cell(s[n], "s", 3) if n in s else "n/a" for n in names)
                 + " | " + " | ".join(cols) + f" | {spread:.0%} |")
    if per:
        gms = [geomean([v[i] for v in per.values() if v[i]]) for i in range(3)]
        L.append("| **geometric mean** | " + " | ".join([""] * len(names))
                 + f" | **{fmt(gms[0], 2)}** | **{fmt(gms[1], 2)}** | **{fmt(gms[2], 2)}** | |")
    L.append("")
    failures = [(p, n, v["failed"]) for p, s in psum.items() for n, v in s.items() if "failed" in v]
    for p, n, why in failures:
        L.append(f"- *failed*: {p} under {n}: {why}")
    if failures:
        L.append("")
    for key, digits, text in (
            ("cpu_s", 3, "CPU time (user + system of the program and its children, s, median of rounds; "
                         "less stretched than wall time when the shared machine is busy):"),
            ("rss_mib", 1, "Peak RSS (MiB, `ru_maxrss` of the program's process tree, median of rounds; "
                           "`bench/spawn.c` forks the program from a small process, so the runner's size is not in "
                           "it):")):
        L.append(text)
        L.append("")
        L.append("| program | " + " | ".join(names) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * len(names)) + "|")
        for p, s in psum.items():
            L.append(f"| {p} | " + " | ".join(cell(s[n], key, digits) if n in s else "n/a" for n in names) + " |")
        L.append("")
    if scale != 1:
        L.append(f"At scale {scale:g}: python-tests runs the first {_py_modules(scale)} test modules, "
                 f"php-requests {_php_requests(scale)} request(s){', gcc compiles broken.c' if scale < 0.1 else ''}.")
        L.append("")
    for prog in PROGRAMS:
        if prog.name in psum:
            L.append(f"- **{prog.name}**: {prog.desc}.")
    L.append("")
    return L


def markdown(m, summary, rat, cg, names, missing, rounds, scale, psum=None):
    L = []
    L.append("# Allocator benchmark: zend_alloc vs PHP 8.2's allocator vs malloc peers")
    L.append("")
    L.append(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['kernel']}; {m['load']}")
    L.append(f"- Peers: {m['versions']}")
    L.append(f"- Compiler: {m['cc']}; zend_alloc commit {m['commit']}")
    L.append(f"- Date: {m['date']}; {rounds} interleaved rounds, scale {scale:g}; "
             "generated by `make -C bench` (bench/run.py)")
    for name, why in missing:
        L.append(f"- Not measured: {name} ({why})")
    L.append("")
    if summary:
        L.append(f"## Time per operation (ns/op, median of {rounds} rounds; lower is better)")
        L.append("")
        L.append("An operation is one alloc, free or realloc of the trace (blocks still live at a request end count "
                 "as frees, however the allocator releases them). The time includes the driver's stamping and "
                 "checking of every block, the same for every allocator. Ratios below 1 mean zend_alloc is faster.")
        L.append("")
        head = ["workload", *names, "zend/php", "zend/best peer", "spread"]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for w, _ in present(summary):
            s = summary[w]
            cells = [fmt(s[n]["ns_op"]) if s.get(n) else "n/a" for n in names]
            r = rat[w]
            peer = f"{r['peer'][0]:.2f} ({r['peer'][1]})" if r["peer"] else "n/a"
            spread = max((s[n]["spread"] for n in names if s.get(n)), default=0)
            L.append(f"| {w} | " + " | ".join(cells) + f" | {fmt(r['php'], 2)} | {peer} | {spread:.0%} |")
        for label, rows in (("geometric mean", [w for w, _ in present(summary)]),
                            (f"without {' and '.join(UNMAPPING)}", [w for w, _ in present(summary) if w not in UNMAPPING])):
            gm_php = geomean([rat[w]["php"] for w in rows])
            gm_peer = geomean([rat[w]["peer"][0] for w in rows if rat[w]["peer"]])
            L.append(f"| **{label}** | " + " | ".join([""] * len(names))
                     + f" | **{fmt(gm_php, 2)}** | **{fmt(gm_peer, 2)}** | |")
        L.append("")
        L.append("*spread*: the largest interquartile range / median over the rounds among the allocators of that row. "
                 "*best peer*: the fastest of glibc, jemalloc, mimalloc and tcmalloc on that workload. "
                 f"The second mean leaves out {' and '.join(UNMAPPING)}, where PHP unmaps memory mid-request "
                 "(its ratio there says more about that than about allocation).")
        if "zend+debug" in names:
            L.append("")
            L.append("*zend+debug*: zend_alloc with `ZEND_MM_DEBUG=1` (every block tracked: sites, guards, "
                     "checked frees, poisoned freed blocks). What that costs, per workload:")
            L.append("")
            L.append("| workload | zend+debug / zend |")
            L.append("|---|---:|")
            for w, _ in present(summary):
                s = summary[w]
                r = s["zend+debug"]["ns_op"] / s["zend"]["ns_op"] if s.get("zend+debug") and s.get("zend") else None
                L.append(f"| {w} | {fmt(r, 2)} |")
        if "zend-preload" in names:
            L.append("")
            L.append("*zend-preload*: this library as the process's malloc (`libzend_alloc_preload.so`, the malloc "
                     "driver under `LD_PRELOAD` as the peers; no request ends, blocks freed one by one). Against "
                     "the malloc peers:")
            L.append("")
            L.append("| workload | preload / best peer | preload / mimalloc | preload / glibc |")
            L.append("|---|---:|---:|---:|")
            per = {}
            for w, _ in present(summary):
                s = summary[w]
                pre = s.get("zend-preload")
                peers = [(s[p]["ns_op"], p) for p in PEERS if p in names and s.get(p)]
                if not pre or not peers:
                    L.append(f"| {w} | n/a | n/a | n/a |")
                    continue
                best = min(peers)
                rel = lambda p: pre["ns_op"] / s[p]["ns_op"] if s.get(p) else None
                per[w] = (pre["ns_op"] / best[0], rel("mimalloc"), rel("glibc"))
                L.append(f"| {w} | {per[w][0]:.2f} ({best[1]}) | {fmt(per[w][1], 2)} | {fmt(per[w][2], 2)} |")
            gms = [geomean([v[i] for v in per.values() if v[i]]) for i in range(3)]
            L.append(f"| **geometric mean** | **{fmt(gms[0], 2)}** | **{fmt(gms[1], 2)}** | **{fmt(gms[2], 2)}** |")
        L.append("")
    if psum:
        L.extend(program_sections(psum, rounds, scale))
    if summary:
        L.append(f"## CPU time per operation (ns/op, median of {rounds} rounds)")
        L.append("")
        L.append("The process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`, every thread) over the same runs: not "
                 "stretched while the shared machine runs something else, but it counts the kernel's work "
                 "(page faults, `mmap`) as wall time does.")
        L.append("")
        L.append("| workload | " + " | ".join(names) + " | zend/php |")
        L.append("|" + "|".join(["---"] + ["---:"] * (len(names) + 1)) + "|")
        for w, _ in present(summary):
            s = summary[w]
            cells = [fmt(s[n]["cpu_ns_op"]) if s.get(n) else "n/a" for n in names]
            zp = s["zend"]["cpu_ns_op"] / s["php"]["cpu_ns_op"] if s.get("zend") and s.get("php") else None
            L.append(f"| {w} | " + " | ".join(cells) + f" | {fmt(zp, 2)} |")
        L.append("")
        for title, key, text in (
                ("Peak RSS growth", "rss_mib",
                 "Peak resident set (`VmHWM`) at the end of the run minus the resident set just before the "
                 "allocator's first use (the trace and the driver's tables are resident by then): the "
                 "allocator's peak footprint, its metadata and caches included."),
                ("RSS held at the end", "rss_end_mib",
                 "Resident set after the run's last request end (zend, php: `shutdown_memory_manager(1, 0)`) "
                 "or last free (malloc peers) minus the resident set before the allocator's first use: what "
                 "the allocator keeps between requests.")):
            L.append(f"## {title} (MiB, median of rounds)")
            L.append("")
            L.append(text)
            L.append("")
            ratios = key == "rss_mib"
            extra = " zend/php | preload / leanest peer |" if ratios else ""
            L.append("| workload | " + " | ".join(names) + " |" + extra)
            L.append("|" + "|".join(["---"] + ["---:"] * (len(names) + (2 if ratios else 0))) + "|")
            for w, _ in present(summary):
                s = summary[w]
                row = f"| {w} | " + " | ".join(fmt_mib(s[n][key]) if s.get(n) else "n/a" for n in names) + " |"
                if ratios:
                    row += f" {rss_ratio(s, 'zend', ['php'])} | {rss_ratio(s, 'zend-preload', PEERS)} |"
                L.append(row)
            L.append("")
            if ratios:
                L.append("Values under 10 MiB have two decimals, so that the ratios of the small rows can be checked "
                         "from the table. *leanest peer*: the smallest peak of glibc, jemalloc, mimalloc and tcmalloc "
                         "on that workload.")
                L.append("")
        L.append("## Instructions per 64-byte alloc + free pair (callgrind)")
        L.append("")
        if cg is None:
            L.append("Not measured: valgrind is not installed (Debian package valgrind).")
        else:
            L.append("Counted with `valgrind --tool=callgrind --toggle-collect=<loop>` over 200000 pairs after a warm-up, "
                     "minus the instructions of the same loop with the allocator calls removed. What remains is the "
                     "call sequence (argument setup, call, PLT stub where there is one) plus the allocator's alloc and "
                     "free; zend's `emalloc`/`efree` macros pass the file/line arguments as users' code does, and its "
                     "header declares the functions `noplt` (called through the GOT, no PLT stub). Deterministic, "
                     "unlike wall time. Raw counts (loop included) in parentheses.")
            L.append("")
            cnames = [n for n in names if n in cg]
            L.append("| loop | " + " | ".join(cnames) + " | zend/php |")
            L.append("|" + "|".join(["---"] + ["---:"] * (len(cnames) + 1)) + "|")
            for kind, desc in FAST:
                cells = [f"{cg[n][kind]['net']:.1f} ({cg[n][kind]['raw']:.1f})" for n in cnames]
                zp = (cg["zend"][kind]["net"] / cg["php"][kind]["net"]) if "php" in cg else None
                L.append(f"| {kind}: {desc} | " + " | ".join(cells) + f" | {fmt(zp, 2)} |")
        L.append("")
        L.append("## Workloads")
        L.append("")
        L.append(f"Sizes and counts at scale 1{'' if scale == 1 else f' (this run: scale {scale:g})'}.")
        L.append("")
        for w, desc in present(summary):
            L.append(f"- **{w}**: {desc}.")
        L.append("")
        L.append("Each workload's trace (operation, slot, size) is generated before timing from a fixed seed, so every "
                 "allocator executes the same operations and only their execution is timed. Every block gets a stamp "
                 "(its first 8 bytes, one byte per further 4 KiB page, its last byte) that is checked before it is "
                 "freed or resized, strings are hashed and compared with a reference; the bytes read back form a "
                 "checksum that must be equal for every allocator. Each allocator runs as a separate process; "
                 "jemalloc, mimalloc and tcmalloc are the malloc driver under `LD_PRELOAD`, and the driver checks "
                 "which library actually provides `malloc`.")
        L.append("")
    return "\n".join(L)


COLORS = {"zend": "#d62728", "zend+debug": "#ff9896", "zend-preload": "#8c564b", "php": "#7f7f7f", "glibc": "#1f77b4", "jemalloc": "#2ca02c",
          "mimalloc": "#9467bd", "tcmalloc": "#ff7f0e"}


def php_script_rows():
    """The PHP-script rows of php.py (stock PHP CLI against PHP on this library) for the chart:
    [(script, {"php": (median, min, max), "zend": ...})] in seconds, from build/php.json (every
    round, written by php.py) or else from results/php.md (medians only: no whiskers)."""
    raw = os.path.join(BUILD, "php.json")
    if os.path.exists(raw):
        with open(raw) as f:
            d = json.load(f)
        return [(name, {who: (statistics.median(v["wall"]), min(v["wall"]), max(v["wall"]))
                        for who, v in (("php", per["stock"]), ("zend", per["lib"]))})
                for name, per in d["scripts"].items()], d["rounds"]
    rows = []
    try:
        with open(os.path.join(RESULTS, "php.md")) as f:
            for line in f:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) == 7 and cells[0].endswith(".php"):
                    st, lib = float(cells[1]), float(cells[2])
                    rows.append((cells[0], {"php": (st, st, st), "zend": (lib, lib, lib)}))
    except (OSError, ValueError):
        return [], None
    return rows, None


def nice_ticks(lo, hi):
    """Tick values for a log axis over [lo, hi]: 1-2-5 steps, or every integer step when the
    range is too narrow for three of those."""
    for mults in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                 for m in mults if lo <= m * 10 ** e <= hi]
        if len(ticks) >= 3:
            return ticks
    return ticks


def short(v):
    """A value with three significant digits, thousands as k: 8.44, 41.7, 882, 26.5k, 0.384."""
    if v >= 10000:
        return f"{v / 1000:.0f}k" if v >= 100000 else f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.{2 if v < 10 else 1}f}" if v >= 1 else f"{v:.3f}"


def tick_label(t):
    return f"{t / 1000:g}k" if t >= 1000 else f"{t:g}"


def svg(m, summary, names, rounds, psum=None, php_rows=None):
    """One panel per workload, program and PHP script: each allocator's median (dot) and the
    min-max range of its rounds (whisker), in absolute units on a log axis of the panel's own."""
    panels = []  # (section, title, unit, [(label, median, min, max) or (label, None, text)])
    for w, _ in present(summary):
        rows = []
        for n in names:
            v = summary[w].get(n)
            rows.append((n, v["ns_op"], min(v["rounds"]), max(v["rounds"])) if v else (n, None, "n/a"))
        panels.append(("Allocator workloads (bench/driver.c), ns per operation", w, "ns/op", rows))
    for p, per in (psum or {}).items():
        rows = [(n, None, "failed") if "failed" in v else (n, v["s"], min(v["rounds"]), max(v["rounds"]))
                for n, v in per.items()]
        panels.append(("Real programs under each malloc (LD_PRELOAD), wall seconds", p, "s", rows))
    php_rows, php_rounds = php_rows or ([], None)
    for script, per in php_rows:
        rows = [("stock PHP" if who == "php" else "PHP on zend", *per[who]) for who in ("php", "zend")]
        panels.append(("PHP 8.2 scripts: stock CLI vs CLI built on this library (php.py), wall seconds",
                       script, "s", rows))
    color = {"stock PHP": COLORS["php"], "PHP on zend": COLORS["zend"]}

    W, cols = 1020, 3
    pw = W / cols
    row_h, name_w, val_w = 15, 82, 44
    top = 96
    o = []
    y = top
    section = None
    col = 0
    row_top = y
    row_max_h = 0
    for sec, title, unit, rows in panels:
        ph = 24 + row_h * len(rows) + 20
        if sec != section or col == cols:
            y = row_top + row_max_h + (0 if section is None else 8)
            col, row_max_h = 0, 0
            if sec != section:
                o.append(f'<text x="12" y="{y + 16}" font-size="14" font-weight="bold">{sec}</text>')
                y += 26
                section = sec
            row_top = y
        x0 = col * pw
        col += 1
        row_max_h = max(row_max_h, ph)
        px0, px1 = x0 + name_w, x0 + pw - val_w  # the axis
        vals = [v for r in rows if r[1] is not None for v in r[1:]]
        o.append(f'<text x="{x0 + 12}" y="{row_top + 14}" font-size="13" font-weight="bold">{title}'
                 f'<tspan dx="5" font-weight="normal" fill="#555">({unit})</tspan></text>')
        if not vals:
            continue
        lo, hi = min(vals), max(vals)
        # At least a factor 2.5 across the panel, so that a few percent do not look like a lot.
        mid = math.sqrt(lo * hi)
        span = max(hi / lo * 1.25, 2.5)
        lo, hi = mid / math.sqrt(span), mid * math.sqrt(span)
        X = lambda v: px0 + (px1 - px0) * (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        y_rows = row_top + 24
        y_axis = y_rows + row_h * len(rows) + 2
        ticks = nice_ticks(lo, hi)
        placed = []
        # Labels where they fit: powers of ten first, then 2 and 5, then the rest.
        for t in sorted(ticks, key=lambda t: {1: 0, 2: 1, 5: 1}.get(round(t / 10 ** math.floor(math.log10(t)), 6), 2)):
            if all(abs(X(t) - X(u)) > 30 for u in placed):
                placed.append(t)
        for t in ticks:
            o.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{y_rows - 2}" y2="{y_axis}" stroke="#e2e2e2"/>')
            if t in placed:
                o.append(f'<text x="{X(t):.1f}" y="{y_axis + 12}" text-anchor="middle" font-size="10" '
                         f'fill="#555">{tick_label(t)}</text>')
        o.append(f'<line x1="{px0}" x2="{px1}" y1="{y_axis}" y2="{y_axis}" stroke="#999"/>')
        best = min(r[1] for r in rows if r[1] is not None)
        for i, r in enumerate(rows):
            cy = y_rows + row_h * i + row_h / 2
            label = r[0]
            c = color.get(label, COLORS.get(label, "#333"))
            o.append(f'<text x="{px0 - 6}" y="{cy + 4:.1f}" text-anchor="end" font-size="11">{label}</text>')
            if r[1] is None:
                o.append(f'<text x="{px0 + 4}" y="{cy + 4:.1f}" font-size="10" '
                         f'fill="{"#c00" if r[2] == "failed" else "#888"}">{r[2]}</text>')
                continue
            med, mn, mx = r[1:]
            o.append(f'<line x1="{X(mn):.1f}" x2="{X(mx):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{c}" stroke-width="1.5"/>')
            for e in (mn, mx):
                o.append(f'<line x1="{X(e):.1f}" x2="{X(e):.1f}" y1="{cy - 3:.1f}" y2="{cy + 3:.1f}" stroke="{c}" stroke-width="1.5"/>')
            o.append(f'<circle cx="{X(med):.1f}" cy="{cy:.1f}" r="3.6" fill="{c}">'
                     f'<title>{title} {label}: median {short(med)} {unit}, rounds {short(mn)}..{short(mx)}</title></circle>')
            weight = ' font-weight="bold"' if med == best else ""
            o.append(f'<text x="{X(mx) + 5:.1f}" y="{cy + 4:.1f}" font-size="10"{weight}>{short(med)}</text>')
    H = row_top + row_max_h + 46
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H:.0f}" viewBox="0 0 {W} {H:.0f}" '
            'font-family="Helvetica, Arial, sans-serif">',
            f'<rect width="{W}" height="{H:.0f}" fill="white"/>',
            f'<text x="{W / 2}" y="26" text-anchor="middle" font-size="17" font-weight="bold">'
            'Time per operation / per run, absolute (lower is better)</text>',
            f'<text x="{W / 2}" y="47" text-anchor="middle" font-size="12" fill="#444">'
            f'Dot: median of {rounds} interleaved rounds; whisker: fastest to slowest round; bold: the fastest of the '
            'panel.</text>',
            f'<text x="{W / 2}" y="63" text-anchor="middle" font-size="12" fill="#444">'
            'Each panel has its own logarithmic axis, at least a factor 2.5 wide: equal distances are equal ratios.</text>',
            f'<text x="{W / 2}" y="79" text-anchor="middle" font-size="12" fill="#444">'
            f'{m["cpu"]}, {m["cores"]} cores, {m["kernel"]}; {m["date"]}. Tables: latest.md, php.md.</text>']
    foot = []
    if any(title in ("threads", "xthread", "larson", "tchurn") for _, title, _, _ in panels):
        foot.append("php: n/a on the threaded workloads (its NTS heap is not thread safe).")
    if any(title == "tchurn" for _, title, _, _ in panels):
        foot.append("zend: n/a on tchurn (a thread's emalloc heap ends with the thread).")
    if php_rows and php_rounds is None:
        foot.append("PHP scripts: medians from results/php.md (no per-round data, so no whiskers).")
    elif php_rows:
        foot.append(f"PHP scripts: {php_rounds} rounds (php.py).")
    o.append(f'<text x="12" y="{H - 16:.0f}" font-size="11" fill="#444">{" ".join(foot)}</text>')
    return "\n".join(head + o + ["</svg>"]) + "\n"


def select(spec):
    """--workloads: comma-separated workload and program names, or the groups `drivers` (every
    workload of driver.c) and `programs`. Returns (workload names, Program objects)."""
    if not spec:
        return [w for w, _ in WORKLOADS], list(PROGRAMS)
    want = set(spec.split(","))
    known = {w for w, _ in WORKLOADS} | {p.name for p in PROGRAMS} | {"drivers", "programs"}
    if want - known:
        sys.exit(f"bench: unknown workloads {', '.join(sorted(want - known))}; known: {', '.join(sorted(known))}")
    return ([w for w, _ in WORKLOADS if w in want or "drivers" in want],
            [p for p in PROGRAMS if p.name in want or "programs" in want])


def write_report(raw, out_dir):
    """Writes latest.md and latest.svg from a run's raw data (what raw.json holds), returns the markdown."""
    runs = raw["runs"]
    # An older raw.json lacks the run's parameters: it was a full run with its allocators in order.
    names = raw.get("names") or list(next(iter(runs.values())).keys())
    rounds = raw.get("rounds") or max(len(r) for per in runs.values() for r in per.values() if r)
    summary = summarize(runs)
    psum = summarize_programs(raw.get("programs") or {})
    md = markdown(raw["machine"], summary, ratios(summary, names), raw.get("callgrind"), names,
                  raw.get("missing", []), rounds, raw.get("scale", 1.0), psum)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "latest.svg"), "w") as f:
        f.write(svg(raw["machine"], summary, names, rounds, psum, php_script_rows()))
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny scale, checksums only, no timing")
    ap.add_argument("--callgrind-only", action="store_true", help="only the instruction counts")
    ap.add_argument("--rounds", type=int, default=11, help="interleaved rounds; medians are reported")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every workload's size")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--only", help="comma-separated allocators (zend is always included, and glibc "
                    "when programs run)")
    ap.add_argument("--workloads", help="comma-separated workloads and programs, or the groups "
                    "`drivers` and `programs` (default: all)")
    ap.add_argument("--render", metavar="RAW_JSON", help="no run: rewrite latest.md and latest.svg from a "
                    "run's raw.json (to build/, or --out)")
    ap.add_argument("--out", help="with --render: the directory to write to (e.g. bench/results)")
    args = ap.parse_args()

    if args.render:
        with open(args.render) as f:
            raw = json.load(f)
        out_dir = args.out or BUILD
        write_report(raw, out_dir)
        print(f"wrote {os.path.join(out_dir, 'latest.md')} and latest.svg", file=sys.stderr)
        return
    workloads, progs = select(args.workloads)
    chosen = ALLOCATORS
    if args.only:
        # Programs are checked against their output on glibc.
        keep = set(args.only.split(",")) | {"zend"} | ({"glibc"} if progs else set())
        chosen = [a for a in ALLOCATORS if a.name in keep]
    missing = [(a.name, a.missing()) for a in chosen if a.missing()]
    allocs = available(chosen)
    for p in list(progs):
        why = p.missing()
        if why:
            print(f"note: program {p.name} skipped: {why}", file=sys.stderr)
            missing.append((f"program {p.name}", why))
            progs.remove(p)
    if progs and not os.path.exists(SPAWN):
        sys.exit(f"bench: {SPAWN} is missing; build it with make -C bench bins")
    if args.smoke:
        sys.exit(0 if smoke(allocs, workloads, progs) else 1)
    try:
        if args.callgrind_only:
            cg = callgrind(allocs)
            if cg:
                for name, kinds in cg.items():
                    print(name, " ".join(f"{k}: {v['net']:.1f} net ({v['raw']:.1f} raw)" for k, v in kinds.items()))
            return
        load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
        data, pdata = timed(allocs, args.rounds, args.scale, workloads, progs)
        # The instruction counts belong to the driver's allocators: not measured for programs alone.
        cg = None if args.no_callgrind or not workloads else callgrind(allocs)
    except RunError as e:
        sys.exit(f"bench: FAILED: {e}")
    m = machine()
    m["load"] = f"1-minute load average {load_before:.2f} before the timed rounds, {os.getloadavg()[0]:.2f} after"
    raw = {"machine": m, "names": [a.name for a in allocs], "rounds": args.rounds, "scale": args.scale,
           "missing": missing, "callgrind": cg, "runs": data, "programs": pdata}
    # Only a full run (default rounds and scale, every allocator and workload) replaces the
    # committed results; a quick one (`ARGS="--rounds 1"`) goes to build/.
    full = (args.rounds >= FULL_RUN_ROUNDS and args.scale == 1.0 and not args.only
            and not args.workloads)
    out_dir = RESULTS if full else BUILD
    md = write_report(raw, out_dir)
    # Every round's numbers, for a closer look or a re-render (build/ is not committed).
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, "raw.json"), "w") as f:
        json.dump(dict(raw, summary=summarize(data), program_summary=summarize_programs(pdata)), f, indent=1)
    print(md)
    print(f"wrote {os.path.relpath(out_dir, ROOT)}/latest.md and latest.svg"
          + ("" if full else " (not a full run: the committed results are left alone)"), file=sys.stderr)


if __name__ == "__main__":
    main()
