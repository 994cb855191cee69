//! The `malloc` storage: segments from the C library's heap (PHP 5.3's default storage).
//!
//! Blocks are aligned as the mmap storages align them (`posix_memalign`): segments to their size,
//! huge blocks to a page; a `realloc` that comes back unaligned is redone aligned. `compact` calls
//! `malloc_trim`, which gives the C library's free memory back to the system.

use core::ffi::CStr;

use super::{SegmentSource, alignment_for};
use crate::os;

pub struct MallocStorage;

impl SegmentSource for MallocStorage {
    const NAME: &'static CStr = c"malloc";

    fn alloc(size: usize) -> *mut u8 {
        os::c_alloc_aligned(size, alignment_for(size))
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: `p` came from this storage (caller contract).
        let q = unsafe { os::c_realloc(p, new_size) };
        if q.is_null() || q.addr() % alignment_for(new_size) == 0 {
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
            os::c_free(q);
        }
        aligned
    }

    unsafe fn free(p: *mut u8, _size: usize) {
        // SAFETY: `p` came from this storage (caller contract).
        unsafe { os::c_free(p) }
    }

    fn compact() {
        os::c_trim();
    }
}
