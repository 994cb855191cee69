//! `_zend_mm_alloc` & co.: the same operations on an explicit heap (from `zend_mm_startup`).
//! A NULL or unknown heap pointer is reported and aborts; a block of another heap is heap
//! corruption.

use core::ffi::{c_char, c_void};

use super::{checked_heap, site};
use crate::diagnostics::Call;
use crate::ffi::types::zend_mm_heap;
use crate::heap::api;

/// Allocates `size` bytes from `heap`.
///
/// # Safety
/// `heap` must come from `zend_mm_startup()` or `zend_mm_startup_ex()`, not be shut down, and be
/// used by one thread at a time.
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE(2)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _zend_mm_alloc(
    heap: *mut zend_mm_heap,
    size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    let heap = checked_heap(heap, "zend_mm_alloc");
    // SAFETY: a checked live heap, not borrowed here.
    unsafe { api::emalloc(heap, size, site) }.cast()
}

/// Frees a block of `heap` (NULL is a no-op).
///
/// # Safety
/// `heap` must come from `zend_mm_startup()` or `zend_mm_startup_ex()`, not be shut down, and be
/// used by one thread at a time; `p` must be NULL or a live block of `heap` and must not be used
/// afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _zend_mm_free(
    heap: *mut zend_mm_heap,
    p: *mut c_void,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) {
    let heap = checked_heap(heap, "zend_mm_free");
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    // SAFETY: a checked live heap, not borrowed here; the caller gives `p` up.
    unsafe { api::efree(heap, p.cast(), &Call::new("zend_mm_free", site)) }
}

/// Resizes a block of `heap` (NULL `p` allocates).
///
/// # Safety
/// `heap` must come from `zend_mm_startup()` or `zend_mm_startup_ex()`, not be shut down, and be
/// used by one thread at a time; `p` must be NULL or a live block of `heap` and must not be used
/// after a successful call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _zend_mm_realloc(
    heap: *mut zend_mm_heap,
    p: *mut c_void,
    size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    let heap = checked_heap(heap, "zend_mm_realloc");
    // SAFETY: a checked live heap, not borrowed here.
    unsafe {
        api::erealloc(
            heap,
            p.cast(),
            size,
            size,
            &Call::new("zend_mm_realloc", site),
        )
    }
    .cast()
}

/// Resizes a block of `heap`, copying at most `copy_size` bytes.
///
/// # Safety
/// `heap` must come from `zend_mm_startup()` or `zend_mm_startup_ex()`, not be shut down, and be
/// used by one thread at a time; `p` must be NULL or a live block of `heap` and must not be used
/// after a successful call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _zend_mm_realloc2(
    heap: *mut zend_mm_heap,
    p: *mut c_void,
    size: usize,
    copy_size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    let heap = checked_heap(heap, "zend_mm_realloc2");
    // SAFETY: a checked live heap, not borrowed here.
    unsafe {
        api::erealloc(
            heap,
            p.cast(),
            size,
            copy_size,
            &Call::new("zend_mm_realloc2", site),
        )
    }
    .cast()
}

/// Usable size of a block of `heap` (0 for NULL and on custom heaps).
///
/// # Safety
/// `heap` must come from `zend_mm_startup()` or `zend_mm_startup_ex()`, not be shut down, and be
/// used by one thread at a time; `p` must be NULL or a block of `heap`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _zend_mm_block_size(
    heap: *mut zend_mm_heap,
    p: *mut c_void,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> usize {
    let heap = checked_heap(heap, "zend_mm_block_size");
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    // SAFETY: a checked live heap, not borrowed here.
    unsafe { api::block_size(heap, p.cast(), &Call::new("zend_mm_block_size", site)) }
}
