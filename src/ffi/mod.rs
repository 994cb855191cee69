//! The C skin: every `extern "C"` export and every C-named type lives here.
//!
//! Each export converts its C arguments (file/line pairs, `int` flags, raw pointers) into the core's
//! Rust types, checks what C could get wrong (NULL heaps, unknown heaps), and calls into `heap`,
//! `thread` and `diagnostics`. One ABI serves every client: every allocation function takes PHP's
//! debug parameters (`ZEND_FILE_LINE_DC ZEND_FILE_LINE_ORIG_DC`), whether or not the caller was
//! built with `ZEND_DEBUG`.

pub mod types;

mod alloc;
mod check;
mod heap_api;
mod manager;
mod persistent;
mod sized;

use core::ffi::c_char;

use crate::diagnostics::{self, Site};
use crate::heap::Heap;
use crate::region_map;

/// PHP's `SUCCESS` / `FAILURE`.
pub(crate) const SUCCESS: core::ffi::c_int = 0;
pub(crate) const FAILURE: core::ffi::c_int = -1;

#[inline(always)]
fn site(file: *const c_char, line: u32) -> Site {
    Site::new(file, line)
}

/// The heap behind a `zend_mm_heap *` from C, after checking it is one: a heap lives in the header
/// of its main segment, which names it as owner. Anything else ends with a message naming
/// `function`.
fn checked_heap<'a>(heap: *mut Heap, function: &str) -> &'a mut Heap {
    if heap.is_null() {
        diagnostics::misuse(function, "the heap is NULL");
    }
    // The heap lies in its main segment, which it owns.
    if region_map::owner_of(heap as usize) != heap.cast_const() {
        diagnostics::misuse(function, "not a zend_mm_heap");
    }
    // SAFETY: `heap` is the live heap of a live segment; heaps are used by one thread at a time.
    unsafe { entered(heap) }
}

/// `heap` as the library is entered for it from the calling frame: an error report that this call
/// is not nested in has ended (see [`Heap::end_finished_report`]).
///
/// # Safety
/// `heap` must be a live heap, used by the calling thread only while the reference lives.
#[inline(always)]
unsafe fn entered<'a>(heap: *mut Heap) -> &'a mut Heap {
    // SAFETY: caller contract.
    let h = unsafe { &mut *heap };
    h.end_finished_report(diagnostics::stack_mark());
    h
}

/// `nmemb * size + offset`, or PHP's overflow error.
#[inline]
fn safe_address(nmemb: usize, size: usize, offset: usize, site: Site) -> usize {
    match nmemb.checked_mul(size).and_then(|n| n.checked_add(offset)) {
        Some(n) => n,
        // SAFETY: no destructors are live; the current heap (if any) is consistent.
        None => unsafe {
            diagnostics::raise(
                crate::thread::current(),
                site,
                diagnostics::Fatal::Overflow3 {
                    nmemb,
                    size,
                    offset,
                },
            )
        },
    }
}
