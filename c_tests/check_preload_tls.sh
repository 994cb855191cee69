#!/bin/sh
# The preload library reaches its thread heap through initial-exec TLS: the STATIC_TLS flag, and
# no function of the allocator calls __tls_get_addr (which may call malloc). Only the standard
# library's panic machinery does, which never runs (a panic aborts before it could allocate).
#   usage: check_preload_tls.sh <libzend_alloc_preload.so>
set -eu
lib=$1
readelf -d "$lib" | grep -q STATIC_TLS || { echo "preload TLS: FAILED (no STATIC_TLS flag)"; exit 1; }
callers=$(objdump -d --no-show-raw-insn "$lib" | awk '/>:$/ { f = $2 } /call.*__tls_get_addr/ { print f }' \
    | grep -v panicking || true)
if [ -n "$callers" ]; then
    echo "preload TLS: FAILED, these call __tls_get_addr:"
    echo "$callers"
    exit 1
fi
echo "preload TLS: initial-exec (STATIC_TLS; __tls_get_addr only in the panic path)"
