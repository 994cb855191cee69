#!/usr/bin/env python3
"""Runs the allocator benchmarks (driver.c, built by the Makefile) and reports them.

    run.py                  full run: interleaved rounds of every workload x allocator, callgrind
                            instruction counts; writes results/latest.md and results/latest.svg
                            and prints the tables
    run.py --smoke          every workload x available allocator at tiny scale; checks checksums
                            only (never timings); last line "N passed, N failed"
    run.py --callgrind-only only the instruction counts, printed

Every allocator runs as its own process (the PHP driver and ours export the same symbols; the
malloc peers are LD_PRELOADed), so rounds interleave processes: round r runs every workload on
every allocator, in an order rotated each round, before round r+1 starts. Machine noise then
hits all allocators alike, and the median over rounds drops the outliers.

Standard library only.
"""
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

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
]

FAST = [
    ("pair", "`p = alloc(n); free(p)`, n = 64 unknown to the compiler (the general entry points)"),
    ("batch", "64 × `alloc(n)`, then 64 × `free` in reverse (LIFO)"),
    ("sized", "a constant size: zend `emalloc(64)`, `efree_size(p, 64)`, which its header turns into "
              "`_emalloc_at_64(64, file, line)`, `_efree_at_64(p, file, line)`; php `_emalloc_64()`, "
              "`_efree_64(p)`, what PHP's release header makes of the same (malloc peers: `malloc(64)`, `free`)"),
]

SMOKE_SCALE = 0.002


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

def smoke(allocs):
    """Correctness only: every workload on every allocator, checksums equal across allocators."""
    passed = failed = 0

    def report(ok, what, detail=""):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)

    for w, _ in WORKLOADS:
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


# ---- Timed run -----------------------------------------------------------------------------

def timed(allocs, rounds, scale):
    """{workload: {alloc: [result dicts, one per round] or None for n/a}}; checksum mismatches fail."""
    data = {w: {a.name: [] for a in allocs} for w, _ in WORKLOADS}
    for r in range(rounds):
        # Rotate the order each round, so no allocator always runs first (or right after another).
        order = allocs[r % len(allocs):] + allocs[:r % len(allocs)]
        for w, _ in WORKLOADS:
            print(f"round {r + 1}/{rounds}: {w:8s} " + " ".join(a.name for a in order), file=sys.stderr, flush=True)
            for a in order:
                res = run_driver(a, *driver_args(a, w, scale))
                if res is None:
                    data[w][a.name] = None
                else:
                    data[w][a.name].append(res)
    bad = []
    for w, per in data.items():
        sums = {(name, res["checksum"]) for name, runs in per.items() if runs for res in runs}
        if len({c for _, c in sums}) > 1:
            bad.append(f"{w}: " + ", ".join(f"{n}={c}" for n, c in sorted(sums)))
    if bad:
        raise RunError("checksum mismatch between allocators (an allocator corrupted memory):\n  "
                       + "\n  ".join(bad))
    return data


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


def ratios(summary, names):
    """Per workload: zend/php and zend/best peer (with the peer's name)."""
    out = {}
    for w, _ in WORKLOADS:
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


def markdown(m, summary, rat, cg, names, missing, rounds, scale):
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
    L.append(f"## Time per operation (ns/op, median of {rounds} rounds; lower is better)")
    L.append("")
    L.append("An operation is one alloc, free or realloc of the trace (blocks still live at a request end count "
             "as frees, however the allocator releases them). The time includes the driver's stamping and "
             "checking of every block, the same for every allocator. Ratios below 1 mean zend_alloc is faster.")
    L.append("")
    head = ["workload", *names, "zend/php", "zend/best peer", "spread"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for w, _ in WORKLOADS:
        s = summary[w]
        cells = [fmt(s[n]["ns_op"]) if s.get(n) else "n/a" for n in names]
        r = rat[w]
        peer = f"{r['peer'][0]:.2f} ({r['peer'][1]})" if r["peer"] else "n/a"
        spread = max((s[n]["spread"] for n in names if s.get(n)), default=0)
        L.append(f"| {w} | " + " | ".join(cells) + f" | {fmt(r['php'], 2)} | {peer} | {spread:.0%} |")
    for label, rows in (("geometric mean", [w for w, _ in WORKLOADS]),
                        (f"without {' and '.join(UNMAPPING)}", [w for w, _ in WORKLOADS if w not in UNMAPPING])):
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
        for w, _ in WORKLOADS:
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
        for w, _ in WORKLOADS:
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
    L.append(f"## CPU time per operation (ns/op, median of {rounds} rounds)")
    L.append("")
    L.append("The process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`, every thread) over the same runs: not "
             "stretched while the shared machine runs something else, but it counts the kernel's work "
             "(page faults, `mmap`) as wall time does.")
    L.append("")
    L.append("| workload | " + " | ".join(names) + " | zend/php |")
    L.append("|" + "|".join(["---"] + ["---:"] * (len(names) + 1)) + "|")
    for w, _ in WORKLOADS:
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
        L.append("| workload | " + " | ".join(names) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * len(names)) + "|")
        for w, _ in WORKLOADS:
            s = summary[w]
            L.append(f"| {w} | " + " | ".join(fmt(s[n][key]) if s.get(n) else "n/a" for n in names) + " |")
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
    for w, desc in WORKLOADS:
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


def svg(m, summary, names, rounds):
    """Grouped bars: ns/op per workload relative to PHP (= 1.0); threads relative to glibc."""
    groups = []
    for w, _ in WORKLOADS:
        s = summary[w]
        base_name = "php" if s.get("php") else "glibc"
        base = s[base_name]["ns_op"] if s.get(base_name) else None
        vals = [(n, s[n]["ns_op"] / base if base and s.get(n) else None) for n in names]
        groups.append((w, base_name, vals))
    top = max((v for _, _, vals in groups for _, v in vals if v), default=1.0)
    ymax = min(max(1.5, math.ceil(top * 1.1 * 2) / 2), 4.0)  # clip outliers at 4x, labelled
    W, H = 1000, 460
    left, right, y0, y1 = 60, 20, 90, 390  # plot area: y0 top, y1 baseline
    gw = (W - left - right) / len(groups)
    bw = min(18.0, (gw - 16) / len(names))
    Y = lambda v: y1 - (y1 - y0) * min(v, ymax) / ymax
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="Helvetica, Arial, sans-serif">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="26" text-anchor="middle" font-size="17" font-weight="bold">'
         'Time per operation relative to PHP 8.2\'s allocator (PHP = 1.0, lower is better)</text>',
         f'<text x="{W / 2}" y="46" text-anchor="middle" font-size="12" fill="#444">'
         f'median of {rounds} interleaved rounds; {m["cpu"]}, {m["cores"]} cores, {m["kernel"]}; {m["date"]}</text>']
    # Legend.
    lx = left
    for n in names:
        o.append(f'<rect x="{lx}" y="60" width="12" height="12" fill="{COLORS.get(n, "#333")}"/>')
        o.append(f'<text x="{lx + 16}" y="70" font-size="12">{n}</text>')
        lx += 30 + 8 * len(n)
    # Grid.
    step = 0.5 if ymax <= 2.5 else 1.0
    v = 0.0
    while v <= ymax + 1e-9:
        o.append(f'<line x1="{left}" x2="{W - right}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.1f}</text>')
        v += step
    o.append(f'<line x1="{left}" x2="{W - right}" y1="{Y(1):.1f}" y2="{Y(1):.1f}" stroke="#333" '
             'stroke-dasharray="5,4"/>')
    # Bars.
    for i, (w, base_name, vals) in enumerate(groups):
        gx = left + i * gw + (gw - bw * len(names)) / 2
        for j, (n, val) in enumerate(vals):
            x = gx + j * bw
            if val is None:
                o.append(f'<text x="{x + bw / 2:.1f}" y="{y1 - 4}" text-anchor="middle" font-size="9" '
                         'fill="#888">n/a</text>')
                continue
            clipped = val > ymax
            o.append(f'<rect x="{x + 1:.1f}" y="{Y(val):.1f}" width="{bw - 2:.1f}" height="{y1 - Y(val):.1f}" '
                     f'fill="{COLORS.get(n, "#333")}"><title>{w} {n}: {val:.2f}</title></rect>')
            # Values read upwards above the bar; a clipped bar carries its value inside, in white.
            weight = ' font-weight="bold"' if clipped or n == "zend" else ""
            if clipped:
                o.append(f'<text transform="translate({x + bw / 2 + 3:.1f},{y0 + 4}) rotate(-90)" font-size="10" '
                         f'text-anchor="end" fill="white"{weight}>{val:.2f}↑</text>')
            else:
                o.append(f'<text transform="translate({x + bw / 2 + 3:.1f},{Y(val) - 4:.1f}) rotate(-90)" '
                         f'font-size="10"{weight}>{val:.2f}</text>')
        label = w if base_name == "php" else f"{w} (glibc = 1)"
        o.append(f'<text x="{left + i * gw + gw / 2:.1f}" y="{y1 + 18}" text-anchor="middle" '
                 f'font-size="13">{label}</text>')
    o.append(f'<line x1="{left}" x2="{W - right}" y1="{y1}" y2="{y1}" stroke="#333"/>')
    o.append(f'<text x="{left}" y="{H - 20}" font-size="11" fill="#444">Bars above {ymax:g} are clipped '
             '(value printed with ↑). threads: PHP\'s NTS heap is not thread safe, so that group is relative '
             'to glibc. Tables: latest.md.</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny scale, checksums only, no timing")
    ap.add_argument("--callgrind-only", action="store_true", help="only the instruction counts")
    ap.add_argument("--rounds", type=int, default=11, help="interleaved rounds; medians are reported")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every workload's size")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--only", help="comma-separated allocators (zend is always included)")
    args = ap.parse_args()

    chosen = ALLOCATORS
    if args.only:
        keep = set(args.only.split(",")) | {"zend"}
        chosen = [a for a in ALLOCATORS if a.name in keep]
    missing = [(a.name, a.missing()) for a in chosen if a.missing()]
    allocs = available(chosen)
    if args.smoke:
        sys.exit(0 if smoke(allocs) else 1)
    try:
        if args.callgrind_only:
            cg = callgrind(allocs)
            if cg:
                for name, kinds in cg.items():
                    print(name, " ".join(f"{k}: {v['net']:.1f} net ({v['raw']:.1f} raw)" for k, v in kinds.items()))
            return
        load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
        data = timed(allocs, args.rounds, args.scale)
        cg = None if args.no_callgrind else callgrind(allocs)
    except RunError as e:
        sys.exit(f"bench: FAILED: {e}")
    names = [a.name for a in allocs]
    summary = summarize(data)
    rat = ratios(summary, names)
    m = machine()
    m["load"] = f"1-minute load average {load_before:.2f} before the timed rounds, {os.getloadavg()[0]:.2f} after"
    md = markdown(m, summary, rat, cg, names, missing, args.rounds, args.scale)
    # Only a full run (default rounds and scale, every allocator) replaces the committed results; a
    # quick one (`ARGS="--rounds 1"`) goes to build/.
    full = args.rounds >= FULL_RUN_ROUNDS and args.scale == 1.0 and not args.only
    out_dir = RESULTS if full else BUILD
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "latest.svg"), "w") as f:
        f.write(svg(m, summary, names, args.rounds))
    # Every round's numbers, for a closer look (build/ is not committed).
    with open(os.path.join(BUILD, "raw.json"), "w") as f:
        json.dump({"machine": m, "summary": summary, "callgrind": cg, "runs": data}, f, indent=1)
    print(md)
    print(f"wrote {os.path.relpath(out_dir, ROOT)}/latest.md and latest.svg"
          + ("" if full else " (not a full run: the committed results are left alone)"), file=sys.stderr)


if __name__ == "__main__":
    main()
