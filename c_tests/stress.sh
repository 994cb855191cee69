#!/bin/sh
# Hunts flaky C tests: runs every C test binary many times while CPU hogs keep the machine busy, and
# reports each failing run with its output.
#
#   usage: c_tests/stress.sh [-n RUNS] [-j HOGS] [-e VAR=value]... [-K] [binary...]
#
#   -n RUNS   runs per binary (default 30, or $STRESS_RUNS)
#   -j HOGS   busy processes beside the tests (default: the number of CPUs, at least 2; 0: none)
#   -e VAR=value  run the binaries with this variable set (repeatable), e.g. -e ZEND_MM_MEM_TYPE=mmap_anon
#   -K        count failures of tests named *KNOWN_DEFECT* as failures too (by default a run whose
#             only failures are those known-defect tests passes, and is counted apart)
#   binary    test binaries to run (default: every c_tests/build/test_* executable, shared and .static)
#
# Run it from the repository root after `make c-tests` has built the binaries (test_php_parity finds
# its probe at c_tests/build/php_probe). A run fails when the binary exits non-zero or its last line
# is not "N passed, 0 failed" (unless, without -K, its only failures are known-defect tests); each
# failing run's output is kept in c_tests/build/stress/ and printed. The exit status is 0 only when
# every run of every binary passed. The hogs are ended (by their process ids) when the script
# exits, however it exits.
set -u

runs=${STRESS_RUNS:-30}
hogs=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
[ "$hogs" -lt 2 ] && hogs=2
envs=""
strict=0
while getopts hn:j:e:K opt; do
    case $opt in
    n) runs=$OPTARG ;;
    j) hogs=$OPTARG ;;
    e) envs="$envs $OPTARG" ;;
    K) strict=1 ;;
    h) sed -n '4,12p' "$0"; exit 0 ;;
    *) sed -n '4,12p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

if [ $# -eq 0 ]; then
    for b in c_tests/build/test_*; do
        [ -f "$b" ] && [ -x "$b" ] && set -- "$@" "$b"
    done
fi
if [ $# -eq 0 ]; then
    echo "stress.sh: no test binaries in c_tests/build (run make c-tests first)" >&2
    exit 2
fi

outdir=c_tests/build/stress
mkdir -p "$outdir"
rm -f "$outdir"/*.log

hog_pids=""
stop_hogs() {
    for p in $hog_pids; do
        kill "$p" 2>/dev/null
    done
    for p in $hog_pids; do
        wait "$p" 2>/dev/null
    done
    hog_pids=""
}
trap 'stop_hogs' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
i=0
while [ "$i" -lt "$hogs" ]; do
    # A busy loop in a shell of its own: `kill <pid>` ends it.
    sh -c 'while :; do :; done' &
    hog_pids="$hog_pids $!"
    i=$((i + 1))
done

echo "stress: $runs runs of $# binaries, $hogs CPU hogs${envs:+, env$envs}"
total_failed=0
# Whether a failing run's only failures are known-defect tests: its summary line's failure count
# equals the number of its FAIL lines, and every one of those names a *KNOWN_DEFECT test.
only_known_defects() {
    [ "$strict" -eq 0 ] || return 1
    want=$(tail -n 1 "$1" | sed -nE 's/^[0-9]+ passed, ([0-9]+) failed$/\1/p')
    [ -n "$want" ] || return 1
    [ "$(grep -c '^FAIL \[' "$1")" -eq "$want" ] || return 1
    [ "$(grep -c '^FAIL \[[A-Za-z0-9_]*KNOWN_DEFECT\]' "$1")" -eq "$want" ]
}

known_runs=0
for bin in "$@"; do
    name=$(basename "$bin")
    failed=0
    known=0
    run=1
    while [ "$run" -le "$runs" ]; do
        log="$outdir/$name.$run.log"
        # shellcheck disable=SC2086 # $envs is a list of words
        env $envs "$bin" > "$log" 2>&1
        status=$?
        last=$(tail -n 1 "$log")
        if [ "$status" -eq 0 ] && echo "$last" | grep -Eq '^[0-9]+ passed, 0 failed$'; then
            rm -f "$log"
        elif [ "$status" -eq 1 ] && only_known_defects "$log"; then
            known=$((known + 1))
            rm -f "$log"
        else
            failed=$((failed + 1))
            echo "---- $name run $run: exit status $status, output ($log):"
            cat "$log"
            echo "----"
        fi
        run=$((run + 1))
    done
    if [ "$known" -ne 0 ]; then
        printf '%-40s %d of %d runs failed (%d more failed only known-defect tests)\n' "$name" "$failed" "$runs" "$known"
    else
        printf '%-40s %d of %d runs failed\n' "$name" "$failed" "$runs"
    fi
    total_failed=$((total_failed + failed))
    known_runs=$((known_runs + known))
done
if [ "$total_failed" -ne 0 ]; then
    echo "stress: $total_failed failing runs; their output is in $outdir/"
    exit 1
fi
if [ "$known_runs" -ne 0 ]; then
    echo "stress: every run passed but for the known-defect tests (-K counts them)"
else
    echo "stress: every run passed"
fi
