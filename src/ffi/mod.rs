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

use core::ffi::c_char;

use crate::diagnostics::{self, Site};
use crate::heap::Heap;
use crate::region_map::{self, Region};

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
    let owner = match region_map::find(heap as usize) {
        region @ Region::Segment(_) => region.owner(),
        _ => core::ptr::null_mut(),
    };
    if owner != heap {
        diagnostics::misuse(function, "not a zend_mm_heap");
    }
    // SAFETY: `heap` is the live heap of a live segment; heaps are used by one thread at a time.
    unsafe { &mut *heap }
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
