//! The `malloc` storage: segments from the C library's heap (PHP 5.3's default storage).
//!
//! Blocks are aligned as the mmap storages align them (`posix_memalign`): segments to their size,
//! huge blocks to a page; a `realloc` that comes back unaligned is redone aligned. `compact` calls `malloc_trim`, which gives the C library's free memory back to
//! the system.

use core::ffi::CStr;

use super::{SegmentSource, StaticStorage, alignment_for, handlers_for};
use crate::ffi::types::{zend_mm_mem_handlers, zend_mm_storage};

pub struct MallocStorage;

pub(super) static HANDLERS: zend_mm_mem_handlers = handlers_for::<MallocStorage>();
static INSTANCE: StaticStorage = StaticStorage::new(&HANDLERS);

impl SegmentSource for MallocStorage {
    const NAME: &'static CStr = c"malloc";

    fn instance() -> *mut zend_mm_storage {
        INSTANCE.get()
    }

    fn alloc(size: usize) -> *mut u8 {
        let mut p: *mut libc::c_void = core::ptr::null_mut();
        // SAFETY: plain libc allocation into a local out-pointer.
        if unsafe { libc::posix_memalign(&mut p, alignment_for(size), size) } != 0 {
            return core::ptr::null_mut();
        }
        p.cast()
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: `p` came from this storage (caller contract).
        let q: *mut u8 = unsafe { libc::realloc(p.cast(), new_size).cast() };
        if q.is_null() || (q as usize) % alignment_for(new_size) == 0 {
            return q;
        }
        // The C library moved the block to an unaligned place: move it once more, aligned. If no
        // aligned block can be had, the unaligned one still works (the heap copes with any address).
        let aligned = Self::alloc(new_size);
        if aligned.is_null() {
            return q;
        }
        // SAFETY: both blocks hold at least min(old, new) bytes; `q` is not used after the free.
        unsafe {
            core::ptr::copy_nonoverlapping(q, aligned, old_size.min(new_size));
            libc::free(q.cast());
        }
        aligned
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
