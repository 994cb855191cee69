#!/bin/sh
# The README's C example, as a reader would use it: the block after `<!-- example: app.c -->`
# is compiled as C (gcc, C99) and as C++ (g++, C++11) against the built shared library, both
# binaries run, and their output must be the block after `<!-- example: output -->`.
#   usage: readme_example.sh README.md <build dir>
set -u
readme=$1
out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
# The first fenced block after the marker line.
block() {
    awk -v mark="<!-- example: $1 -->" '
        $0 == mark { found = 1; next }
        found && /^```/ { if (inside) exit; inside = 1; next }
        inside { print }' "$readme"
}
block app.c > "$out/app.c"
block output > "$out/expected"
passed=0
failed=0
check() {
    if [ "$1" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $2"; fi
}
[ -s "$out/app.c" ] && [ -s "$out/expected" ]
check $? "README.md has the example and its output (markers <!-- example: app.c/output -->)"
link="-L$root/target/release -lzend_alloc -Wl,-rpath,$root/target/release"
# shellcheck disable=SC2086 # $link is several words
gcc -std=c99 -Wall -Wextra -Werror -pedantic -I"$root/include" "$out/app.c" $link -o "$out/app"
check $? "the example compiles as C99"
# shellcheck disable=SC2086
g++ -std=c++11 -Wall -Wextra -Werror -pedantic -I"$root/include" -x c++ "$out/app.c" -x none $link -o "$out/app_cxx"
check $? "the example compiles as C++11"
for bin in app app_cxx; do
    if [ -x "$out/$bin" ] && "$out/$bin" > "$out/$bin.out" 2>&1 && diff -u "$out/expected" "$out/$bin.out"; then
        check 0 ""
    else
        check 1 "$bin prints what the README says it prints"
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
