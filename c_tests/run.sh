#!/bin/sh
# Runs one C test binary, keeps its full output in c_tests/build/<label>.log, and prints the label
# with the test's summary line ("N passed, N failed"); on failure also the lines that say why.
#   usage: run.sh <label> [VAR=value ...] <binary> [args...]
set -u
label=$1
shift
log="c_tests/build/$label.log"
env "$@" > "$log" 2>&1
status=$?
printf '%-58s %s\n' "$label" "$(tail -n 1 "$log")"
if [ $status -ne 0 ]; then
    grep -E 'FAIL|expected|got|child|stderr|Fatal error' "$log" | head -40
    echo "$label failed (exit status $status); full output in $log"
fi
exit $status
