#!/bin/sh
# Runs one C test binary under valgrind's memcheck and fails if memcheck found an error in it or in
# any process it forked.
#
#   usage: c_tests/valgrind.sh <binary> [args...]      (from the repository root; make valgrind-tests)
#
# - The test's own output (its "N passed, N failed" line included) goes to stdout/stderr as usual;
#   valgrind's report goes to c_tests/build/<binary>.valgrind.log.
# - --trace-children=no: a test that re-executes itself (run_self in test.h) runs that child natively
#   (test.h execs the binary by its real path, which valgrind reports for /proc/self/exe). Forked
#   children (run_child) stay under valgrind, as fork always does, and write to the same log.
# - Some forked children end on purpose by abort() (heap corruption tests) or a fatal error (exit
#   255); the parent judges them, as natively. Valgrind's "Process terminating with default action
#   of signal 6" for them is not an error. What counts: the test's exit status, turned into 1 by
#   --error-exitcode=1 if memcheck found an error in the test process itself, and any
#   "ERROR SUMMARY" with errors in the log (from the test process or any forked child).
# - --leak-check=no: a request heap releases its memory at request end, not block by block, and
#   tests leave blocks to the request end on purpose.
# - c_tests/valgrind.supp is used if it exists (suppressions for code that is not ours, each with a
#   comment saying why); none is needed today.
set -u
if ! command -v valgrind > /dev/null 2>&1; then
    echo "valgrind.sh: valgrind is not installed (make deps installs it)" >&2
    exit 2
fi
bin=$1
mkdir -p c_tests/build
vglog="c_tests/build/$(basename "$bin").valgrind.log"
supp=""
[ -f c_tests/valgrind.supp ] && supp="--suppressions=c_tests/valgrind.supp"
# shellcheck disable=SC2086 # $supp is empty or one word
valgrind --tool=memcheck --error-exitcode=1 --leak-check=no --trace-children=no --log-file="$vglog" $supp "$@"
status=$?
bad=$(grep -c 'ERROR SUMMARY: [1-9]' "$vglog")
if [ "$bad" -ne 0 ]; then
    echo "FAIL [valgrind] memcheck errors in $bad process(es) of $bin; the first ones:" >&2
    grep -E '^==[0-9]+== ' "$vglog" | grep -vE 'Memcheck|Copyright|Using Valgrind|Command:|Parent PID|HEAP SUMMARY|in use at exit|total heap usage|rerun with|ERROR SUMMARY: 0 |^==[0-9]+== $' | head -60 >&2
    echo "valgrind: memcheck errors in $bad process(es); full report in $vglog"
    [ "$status" -eq 0 ] && status=1
fi
exit $status
