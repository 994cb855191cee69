//! The `malloc` storage: segments from the C library's heap (PHP 5.3's default storage).
//!
//! Blocks are aligned as the mmap storages align them (`posix_memalign`): segments to their size,
//! huge blocks to a page. The C library is asked for nothing but aligned blocks and frees, so the
//! host program's own `malloc` keeps its settings (no `mallopt`, no `malloc_trim`):
//! - a free first hands the block's pages back to the kernel (`MADV_DONTNEED` on all but the page
//!   the C library writes its bookkeeping into). The C library keeps freed blocks in its heap
//!   when it stopped mapping blocks this size (glibc raises its mmap threshold after the first
//!   mapped block is freed); without this, memory the heap gave back would stay resident, and the
//!   memory limit would not bound the process's memory. The heap frees a segment only when it
//!   means to give the memory back (it caches what it expects to reuse), so nothing is faulted in
//!   again for nothing;
//! - a resize allocates the new block aligned, copies, and frees the old one: one copy (the C
//!   library's `realloc` may copy, and then the block would need a second copy to be aligned);
//! - `compact` does nothing (PHP 5.3's `zend_mm_mem_dummy_compact`): trimming the C library's
//!   heap at request end handed back pages the next request faulted in again.

use core::ffi::CStr;

use super::{SegmentSource, alignment_for};
use crate::os;
use crate::sizes::ZEND_MM_PAGE_SIZE;

pub struct MallocStorage;

impl SegmentSource for MallocStorage {
    const NAME: &'static CStr = c"malloc";

    fn alloc(size: usize) -> *mut u8 {
        os::c_alloc_aligned(size, alignment_for(size))
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        let new = Self::alloc(new_size);
        if !new.is_null() {
            // SAFETY: both blocks hold at least min(old, new) bytes; `p` came from this storage
            // with `old_size` bytes and is not used after the free (caller contract).
            unsafe {
                core::ptr::copy_nonoverlapping(p, new, old_size.min(new_size));
                Self::free(p, old_size);
            }
        }
        new
    }

    unsafe fn free(p: *mut u8, size: usize) {
        // SAFETY: `p` came from this storage with `size` bytes and is being freed (caller
        // contract): its contents are not needed. The first page stays: the C library writes
        // its free-list links there.
        unsafe {
            os::discard(p, ZEND_MM_PAGE_SIZE, size);
            os::c_free(p);
        }
    }
}
