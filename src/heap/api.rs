//! The heap's interface (zend_alloc.c "Interface"): what the C skin calls for `_emalloc`, `_efree`,
//! `_erealloc`, `_zend_mem_block_size` and their `_zend_mm_*` twins.
//!
//! Owns re-entry safety. Every function takes the heap as a raw pointer, borrows it only for a
//! statement at a time, and holds no borrow while it calls out: to a custom handler, or to the
//! error handler a refusal raises. A handler that calls back into the library (PHP's bailout code
//! frees memory; an embedder's handler may allocate) therefore never meets a live `&mut Heap`.
//! Here too the refusals of the allocation paths become PHP's fatal errors, or NULL for callers
//! that may fail (`erealloc_recoverable`).
//!
//! The safety contract of every function here: `heap` is a live heap, used by the calling thread
//! only, and not borrowed by the caller.

use core::ptr;

use super::{Heap, Refusal, custom};
use crate::diagnostics::{self, Call, Fatal, Site};
use crate::sizes::MAX_SMALL_SIZE;

/// Marks the library as entered for `heap` from the calling frame: an error report this call is
/// not nested in has ended (see [`Heap::end_finished_report`]).
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn enter(heap: *mut Heap) -> *mut Heap {
    // SAFETY: live, unborrowed heap (caller contract).
    unsafe { (*heap).end_finished_report(diagnostics::stack_mark()) };
    heap
}

/// Allocates `size` bytes.
///
/// # Safety
/// See the module documentation.
#[inline(always)]
pub unsafe fn emalloc(heap: *mut Heap, size: usize, site: Site) -> *mut u8 {
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    if unsafe { !(*heap).take_alloc_budget() } {
        // SAFETY: forwarded caller contract.
        return unsafe { allocs_exhausted(heap, size, site) };
    }
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    if unsafe { (*heap).is_custom() } {
        // SAFETY: forwarded caller contract.
        return unsafe { custom::alloc(heap, size, site) };
    }
    // SAFETY: as above.
    let result = unsafe {
        if (*heap).is_tracking() {
            (*heap).alloc_tracked(size, site)
        } else {
            (*heap).alloc(size)
        }
    };
    match result {
        Ok(p) => p,
        // SAFETY: forwarded caller contract; the borrow has ended.
        Err(refusal) => unsafe { refused(heap, refusal, size, site) },
    }
}

/// Allocates a page-aligned block of whole pages for `size` bytes, however small (see
/// [`Heap::alloc_page_run`]). A custom or tracking heap serves it as `emalloc` does a large size
/// (a tracked block starts after its header, so only the run is page aligned there).
///
/// # Safety
/// See the module documentation.
pub unsafe fn emalloc_pages(heap: *mut Heap, size: usize, site: Site) -> *mut u8 {
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    if unsafe { (*heap).is_custom() || (*heap).is_tracking() } {
        // SAFETY: forwarded caller contract.
        return unsafe { emalloc(heap, size.max(MAX_SMALL_SIZE + 1), site) };
    }
    // SAFETY: as above.
    if unsafe { !(*heap).take_alloc_budget() } {
        // SAFETY: forwarded caller contract.
        return unsafe { allocs_exhausted(heap, size, site) };
    }
    // SAFETY: as above.
    match unsafe { (*heap).alloc_page_run(size) } {
        Ok(p) => p,
        // SAFETY: forwarded caller contract; the borrow has ended.
        Err(refusal) => unsafe { refused(heap, refusal, size, site) },
    }
}

/// Frees `p`, handed to `call` (null is a no-op; a pointer that is not a block of the heap aborts
/// with a report naming the call, or is reported and skipped on a tracking heap).
///
/// # Safety
/// See the module documentation; `p` must not be used afterwards.
#[inline(always)]
pub unsafe fn efree(heap: *mut Heap, p: *mut u8, call: &Call) {
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    if unsafe { (*heap).is_custom() } {
        // SAFETY: forwarded caller contract.
        return unsafe { custom::free(heap, p) };
    }
    // SAFETY: as above.
    unsafe {
        if (*heap).is_tracking() {
            (*heap).free_tracked(p, call.site)
        } else {
            (*heap).free_for(p, call)
        }
    }
}

/// Resizes `p`, handed to `call`, to `size` bytes, copying at most `copy_size`; null `p`
/// allocates. On a refusal with `call.site.may_fail`, null and `p` intact.
///
/// # Safety
/// See the module documentation; `p` must not be used after a successful call.
pub unsafe fn erealloc(
    heap: *mut Heap,
    p: *mut u8,
    size: usize,
    copy_size: usize,
    call: &Call,
) -> *mut u8 {
    let site = call.site;
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    if unsafe { !(*heap).take_alloc_budget() } {
        // SAFETY: forwarded caller contract.
        return unsafe { allocs_exhausted(heap, size, site) };
    }
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    if unsafe { (*heap).is_custom() } {
        // SAFETY: forwarded caller contract.
        return unsafe { custom::realloc(heap, p, size, site) };
    }
    // SAFETY: as above.
    let result = unsafe {
        if (*heap).is_tracking() {
            (*heap).realloc_tracked(p, size, copy_size, site)
        } else {
            (*heap).realloc_for(p, size, copy_size, call)
        }
    };
    match result {
        Ok(q) => q,
        // SAFETY: forwarded caller contract; the borrow has ended.
        Err(refusal) => unsafe { refused(heap, refusal, size, site) },
    }
}

/// `zend_mem_block_size`: the usable size of `p`, handed to `call` (on a tracking heap the
/// requested size, as in PHP 5.3's debug build); 0 for null and on custom heaps, which keep no
/// sizes.
///
/// # Safety
/// See the module documentation.
pub unsafe fn block_size(heap: *mut Heap, p: *mut u8, call: &Call) -> usize {
    // SAFETY: live heap (caller contract).
    let h = unsafe { &*heap };
    if h.is_custom() {
        0
    } else if h.is_tracking() {
        h.tracked_size(p, call.site)
    } else {
        h.block_size_for(p, call)
    }
}

/// What a refused request of `tried` bytes ends in: null when the caller may fail, PHP's fatal
/// error otherwise.
///
/// # Safety
/// See the module documentation; the caller's frames must hold no values with destructors.
#[cold]
pub unsafe fn refused(heap: *mut Heap, refusal: Refusal, tried: usize, site: Site) -> *mut u8 {
    if site.may_fail {
        return ptr::null_mut();
    }
    // SAFETY: live heap (caller contract).
    let fatal = unsafe { (*heap).fatal_for(refusal, tried) };
    // SAFETY: forwarded caller contract.
    unsafe { raise(heap, site, fatal) }
}

/// The allocation fault injection refuses: null when the caller may fail, otherwise the limit
/// error, which ends the process with status 121 if the handler returns.
///
/// # Safety
/// As [`refused`].
#[cold]
unsafe fn allocs_exhausted(heap: *mut Heap, tried: usize, site: Site) -> *mut u8 {
    if site.may_fail {
        return ptr::null_mut();
    }
    // SAFETY: live heap (caller contract).
    let limit = unsafe { (*heap).limit() };
    // SAFETY: forwarded caller contract.
    unsafe { raise(heap, site, Fatal::AllocsExhausted { limit, tried }) }
}

/// Raises `fatal`. `heap` (if not null) is marked as reporting first, so for limit and
/// out-of-memory errors the handler may allocate beyond the memory limit; its reserve is given
/// back for the same reason.
///
/// # Safety
/// `heap` must be null or as the module documentation says; the caller's frames must hold no
/// values with destructors (the handler may `longjmp` over them).
#[cold]
#[inline(never)]
pub unsafe fn raise(heap: *mut Heap, site: Site, fatal: Fatal) -> ! {
    if !heap.is_null() {
        // SAFETY: live, unborrowed heap (caller contract); the borrow ends before the handler runs.
        unsafe { (*heap).begin_error_report(&fatal, diagnostics::stack_mark()) };
    }
    // SAFETY: no borrow of the heap is live; no destructors (caller contract).
    unsafe { diagnostics::report_fatal(site, fatal) }
}

#[cfg(test)]
mod tests {
    use core::ffi::c_void;
    use core::sync::atomic::{AtomicPtr, Ordering};

    use super::*;
    use crate::heap::CustomHandlers;
    use crate::storage::Storage;

    static HEAP: AtomicPtr<Heap> = AtomicPtr::new(ptr::null_mut());

    /// A custom `malloc` that calls back into its own heap, as a tracking handler might: it
    /// switches the heap back to its own allocator and allocates there. Under Miri this fails if
    /// the caller still held a `&mut Heap` across the call.
    unsafe extern "C" fn reentrant_malloc(size: usize) -> *mut c_void {
        let heap = HEAP.load(Ordering::Relaxed);
        // SAFETY: the test's live heap; `api` holds no borrow of it while a handler runs.
        unsafe {
            (*heap).set_custom(CustomHandlers::NONE).unwrap();
            emalloc(heap, size, Site::new(ptr::null(), 0)).cast()
        }
    }

    unsafe extern "C" fn unused_free(_: *mut c_void) {}

    unsafe extern "C" fn unused_realloc(_: *mut c_void, _: usize) -> *mut c_void {
        ptr::null_mut()
    }

    #[test]
    fn a_custom_handler_may_call_back_into_its_heap() {
        let storage =
            Storage::open_builtin(crate::model_tests::StdStorage::<0>::ops(), false).unwrap();
        // SAFETY: a fresh storage; the smallest segment size (cheap under Miri).
        let heap = unsafe { Heap::create(storage, 64 << 10, 0, 0) };
        HEAP.store(heap, Ordering::Relaxed);
        // SAFETY: a live heap of this thread; each borrow ends with its statement.
        unsafe {
            (*heap)
                .set_custom(CustomHandlers {
                    malloc: Some(reentrant_malloc),
                    free: Some(unused_free),
                    realloc: Some(unused_realloc),
                })
                .unwrap();
            let p = emalloc(heap, 100, Site::new(ptr::null(), 0));
            assert!(!(*heap).is_custom(), "the handler switched the heap back");
            let here = Call::new("efree", Site::new(ptr::null(), 0));
            assert_eq!(block_size(heap, p, &here), 112, "a block of the heap's own");
            efree(heap, p, &here);
            assert_eq!((*heap).usage(false), 0);
            Heap::shutdown(heap, true);
        }
    }
}
