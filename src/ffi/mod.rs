//! The C skin: every `extern "C"` export and every C-named type lives here.
//!
//! Each export converts its C arguments (file/line pairs, `int` flags, raw pointers) into the core's
//! Rust types, checks what C could get wrong (NULL heaps, unknown heaps), and calls into
//! `heap::api` (on raw heap pointers: see there for re-entry), `runtime` and `diagnostics`. The C
//! types are defined here ([`types`]), as aliases of core types where the core has the same thing;
//! [`user_storage`] is the only caller of a C storage's handler table. One ABI serves every client: every allocation function takes PHP's
//! debug parameters (`ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC`), whether or not the caller was
//! built with `ZEND_DEBUG`.

// PHP's API (libzend_alloc), or with the `preload` feature the C library's (libzend_alloc_preload).
#[cfg(not(feature = "preload"))]
pub mod types;

#[cfg(not(feature = "preload"))]
mod alloc;
#[cfg(not(feature = "preload"))]
mod check;
/// cbindgen:ignore
#[cfg(all(feature = "preload", target_arch = "x86_64", target_os = "linux"))]
mod dlopen;
mod foreign;
#[cfg(not(feature = "preload"))]
mod heap_api;
#[cfg(not(feature = "preload"))]
mod leaks;
/// cbindgen:ignore
#[cfg(feature = "preload")]
mod malloc;
#[cfg(not(feature = "preload"))]
mod manager;
#[cfg(not(feature = "preload"))]
mod persistent;
#[cfg(not(feature = "preload"))]
mod sized;
#[cfg(not(feature = "preload"))]
mod user_storage;

use core::ffi::c_char;

use crate::diagnostics::{self, Site};
use crate::heap::{Heap, api};
use crate::region_map;
use crate::runtime;

/// PHP's `SUCCESS` / `FAILURE`.
pub(crate) const SUCCESS: core::ffi::c_int = 0;
pub(crate) const FAILURE: core::ffi::c_int = -1;

/// The caller's location, with the relayed origin block tracking records.
#[inline(always)]
fn site(file: *const c_char, line: u32, orig_file: *const c_char, orig_line: u32) -> Site {
    Site::new(file, line).relayed(orig_file, orig_line)
}

/// The heap behind a `zend_mm_heap *` from C, after checking it is one (a heap lives in the header
/// of its main segment, which names it as owner, or is the library's stand-in for foreign memory
/// given custom handlers: see [`foreign`]), entered from the calling frame. Anything else ends with
/// a message naming `function`.
fn checked_heap(heap: *mut Heap, function: &str) -> *mut Heap {
    let known = known_heap(heap, function);
    if known.is_null() {
        diagnostics::misuse(function, "not a zend_mm_heap");
    }
    // SAFETY: `known` is the live heap of a live segment; heaps are used by one thread at a time.
    unsafe { api::enter(known) }
}

/// The heap `heap` is or stands for, or null if it is neither a heap nor a foreign stand-in.
/// Never reads through `heap`.
fn known_heap(heap: *mut Heap, function: &str) -> *mut Heap {
    if heap.is_null() {
        diagnostics::misuse(function, "the heap is NULL");
    }
    if region_map::owner_of(heap.addr()) == heap.addr() {
        heap
    } else {
        foreign::lookup(heap.addr())
    }
}

/// `nmemb * size + offset`, or PHP's overflow error.
#[inline]
fn safe_address(nmemb: usize, size: usize, offset: usize, site: Site) -> usize {
    match nmemb.checked_mul(size).and_then(|n| n.checked_add(offset)) {
        Some(n) => n,
        None => raise_on_current(
            site,
            diagnostics::Fatal::Overflow3 {
                nmemb,
                size,
                offset,
            },
        ),
    }
}

/// Raises `fatal` for the calling thread's current heap (if it has one).
#[cold]
fn raise_on_current(site: Site, fatal: diagnostics::Fatal) -> ! {
    // SAFETY: no destructors are live; the current heap (if any) is live and not borrowed.
    unsafe { api::raise(runtime::current(), site, fatal) }
}
