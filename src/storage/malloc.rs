//! The `malloc` storage: segments from the C library's heap (PHP 5.3's default storage).
//!
//! Segments are plain `malloc` blocks, so they are only 16-byte aligned; the heap copes with that
//! (it aligns its page grid inside the segment). `compact` calls `malloc_trim`, which gives the
//! C library's free memory back to the system.

use core::ffi::CStr;

use super::{SegmentSource, StaticStorage, handlers_for};
use crate::ffi::types::{zend_mm_mem_handlers, zend_mm_storage};

pub struct MallocStorage;

pub(super) static HANDLERS: zend_mm_mem_handlers = handlers_for::<MallocStorage>();
static INSTANCE: StaticStorage = StaticStorage::new(&HANDLERS);

impl SegmentSource for MallocStorage {
    const NAME: &'static CStr = c"malloc";

    fn handlers() -> &'static zend_mm_mem_handlers {
        &HANDLERS
    }

    fn instance() -> *mut zend_mm_storage {
        INSTANCE.get()
    }

    fn alloc(size: usize) -> *mut u8 {
        // SAFETY: plain libc allocation.
        unsafe { libc::malloc(size).cast() }
    }

    unsafe fn realloc(p: *mut u8, _old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: `p` came from `malloc`/`realloc` (caller contract).
        unsafe { libc::realloc(p.cast(), new_size).cast() }
    }

    unsafe fn free(p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `malloc`/`realloc` (caller contract).
        unsafe { libc::free(p.cast()) }
    }

    fn compact() {
        // SAFETY: malloc_trim only releases free memory of the C library's heap.
        unsafe { libc::malloc_trim(0) };
    }
}
