#!/usr/bin/env python3
"""PHP 8.2 scripts on the stock CLI and on the CLI built on zend_alloc (make php), side by side.

Interleaved rounds (the order of the two CLIs alternates), median wall time and median peak RSS
per script, ratios library / stock (below 1 is better for the library). Writes results/php.md,
and every round's numbers to build/php.json (run.py draws them in its chart).

    python3 bench/php.py --stock <php> --lib <php> [--rounds 7]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(php, script):
    """Wall seconds and peak RSS (KiB) of one run; the output is checked, not kept."""
    start = time.perf_counter()
    proc = subprocess.Popen([php, "-n", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{php} {script}: exit {proc.returncode}\n{out.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stock", required=True, help="stock PHP CLI (release build)")
    ap.add_argument("--lib", required=True, help="PHP CLI on zend_alloc (release build)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "php.md"))
    args = ap.parse_args()

    zend = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(args.stock))), "Zend")
    scripts = [
        ("Zend/bench.php", os.path.join(zend, "bench.php")),
        ("Zend/micro_bench.php", os.path.join(zend, "micro_bench.php")),
        ("templates.php", os.path.join(HERE, "php", "templates.php")),
        ("arrays.php", os.path.join(HERE, "php", "arrays.php")),
    ]
    clis = {"stock": args.stock, "lib": args.lib}
    data = {(name, cli): ([], []) for name, _ in scripts for cli in clis}
    outputs = {}
    for r in range(args.rounds):
        order = ["stock", "lib"] if r % 2 == 0 else ["lib", "stock"]
        for name, path in scripts:
            for cli in order:
                wall, rss, out = run(clis[cli], path)
                data[(name, cli)][0].append(wall)
                data[(name, cli)][1].append(rss)
                # bench.php and micro_bench.php print timings; the others print a checksum.
                if not name.startswith("Zend/"):
                    if outputs.setdefault(name, out) != out:
                        sys.exit(f"{name}: the two CLIs print different results")
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    lines = [
        "# PHP 8.2 on zend_alloc",
        "",
        f"Release builds (`make php`), `php -n <script>`, {args.rounds} interleaved rounds, medians; "
        "ratio = library / stock (below 1: the library is faster or smaller). Peak RSS of the whole process.",
        "",
        "| script | stock s | library s | time ratio | stock peak RSS MiB | library peak RSS MiB | RSS ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    time_ratios, rss_ratios = [], []
    for name, _ in scripts:
        ts, ms = (statistics.median(data[(name, "stock")][i]) for i in (0, 1))
        tl, ml = (statistics.median(data[(name, "lib")][i]) for i in (0, 1))
        time_ratios.append(tl / ts)
        rss_ratios.append(ml / ms)
        lines.append(f"| {name} | {ts:.3f} | {tl:.3f} | {tl / ts:.3f} | {ms / 1024:.1f} | {ml / 1024:.1f} | {ml / ms:.3f} |")
    geo = lambda xs: statistics.geometric_mean(xs)
    lines.append(f"| geometric mean | | | {geo(time_ratios):.3f} | | | {geo(rss_ratios):.3f} |")
    lines.append("")
    lines.append(f"Machine: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}.")
    text = "\n".join(lines) + "\n"
    # Every round, for run.py's chart (whiskers from the fastest to the slowest round).
    os.makedirs(os.path.join(HERE, "build"), exist_ok=True)
    with open(os.path.join(HERE, "build", "php.json"), "w") as f:
        json.dump({"rounds": args.rounds, "date": time.strftime('%Y-%m-%d'),
                   "scripts": {name: {cli: {"wall": data[(name, cli)][0], "rss_kib": data[(name, cli)][1]}
                                      for cli in clis} for name, _ in scripts}}, f, indent=1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
