//! The `malloc` storage: segments from the C library's heap (PHP 5.3's default storage).
//!
//! Segments (powers of two) come from `posix_memalign`, aligned to their size as the mmap storages
//! align them. Huge blocks (any other size) are mapped straight from the kernel, as glibc maps big
//! blocks itself: they go back to the system when freed and grow with `mremap`, without a copy
//! (through the C library, a block `realloc` moves comes back off its page and needed a second
//! copy, and growing a dead cached block copied its garbage). The host program's own `malloc`
//! keeps its settings (no `mallopt`, no `malloc_trim`):
//! - freeing a segment first hands its pages to the kernel (`MADV_DONTNEED` on all but the page
//!   the C library writes its links into). glibc keeps freed blocks in its heap once it stopped
//!   mapping blocks that size (it raises its mmap threshold after the first mapped block is
//!   freed); without this, memory the heap gave back would stay resident, and the memory limit
//!   would not bound the process's memory. The heap frees a segment only when it means to give
//!   the memory back (it caches what it expects to reuse), so nothing is faulted in again for
//!   nothing;
//! - `compact` does nothing (PHP 5.3's `zend_mm_mem_dummy_compact`): trimming the C library's
//!   heap at request end handed back pages the next request faulted in again;
//! - cached segments and cached huge blocks give each other their pages, resident, as on the mmap
//!   storages: a whole segment's pages leave its block with `MREMAP_DONTUNMAP` (the block stays
//!   mapped, zero-filled, for the C library, and is freed), a mapped huge block's tail moves onto
//!   a segment's block. Only where the kernel leaves a moved range mapped (Linux 5.7, not under
//!   valgrind); elsewhere the heap gives cached segments back instead. On `hugereq` (median of 5):
//!   peak RSS 37.4 to 31.8 MiB, 20.8k page faults instead of 23.9k, CPU 138.6 against 141.1 ms.

use core::ffi::CStr;

use super::{SegmentSource, alignment_for};
use crate::os;
use crate::sizes::ZEND_MM_PAGE_SIZE;

pub struct MallocStorage;

/// Whether a block of `size` bytes is mapped (a huge block) rather than taken from the C library
/// (a segment).
fn mapped(size: usize) -> bool {
    !size.is_power_of_two()
}

impl SegmentSource for MallocStorage {
    const NAME: &'static CStr = c"malloc";
    const RESIZE_KEEPS_PAGES: bool = true;
    /// Only mapped blocks, and only into mapped blocks: `free` and `realloc` tell mapped blocks
    /// from the C library's by their size.
    const SPLITS: Option<fn(usize) -> bool> = Some(mapped);

    /// Mapped blocks only: the C library's blocks hold what their last user left.
    fn fresh_zeroed(size: usize) -> bool {
        mapped(size)
    }

    unsafe fn discard(p: *mut u8, keep: usize, len: usize) {
        // SAFETY: pages of a live allocation of ours whose contents are dead (caller contract);
        // the C library keeps nothing inside an allocation it handed out.
        unsafe { os::discard(p, keep, len) }
    }

    /// Where the kernel leaves a moved range mapped (Linux 5.7; not under valgrind): the C
    /// library's blocks must stay mapped.
    fn moves_pages() -> bool {
        os::moves_pages_leaving_source()
    }

    unsafe fn move_pages(from: *mut u8, len: usize, to: *mut u8, whole: bool) -> bool {
        if whole && !mapped(len) {
            // A segment, the C library's block: its pages leave it mapped (zero-filled), and the
            // block goes back to the C library.
            // SAFETY: a live block of ours whose contents nobody needs and a range of ours
            // (caller contract); the C library keeps nothing inside a block it handed out, and
            // reads the block again only once it is freed here.
            unsafe {
                if !os::move_pages_leaving_source(from, len, to) {
                    return false;
                }
                os::c_free(from);
            }
            return true;
        }
        // SAFETY: the tail of a mapped block of ours (caller contract); the target is ours too,
        // a mapped block or the C library's block of one of our segments, which it replaces
        // pages of.
        unsafe { os::move_pages(from, len, to) }
    }

    fn alloc(size: usize) -> *mut u8 {
        if mapped(size) {
            os::map_aligned(size, ZEND_MM_PAGE_SIZE, -1)
        } else {
            os::c_alloc_aligned(size, alignment_for(size))
        }
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        if mapped(old_size) && mapped(new_size) {
            // SAFETY: `p` is a mapping of `old_size` bytes (caller contract, `alloc`).
            return unsafe { os::remap(p, old_size, new_size, -1) };
        }
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
        // contract): its contents are not needed. A segment's first page stays: the C library
        // writes its free-list links there.
        unsafe {
            if mapped(size) {
                os::unmap(p, size);
            } else {
                os::discard(p, ZEND_MM_PAGE_SIZE, size);
                os::c_free(p);
            }
        }
    }
}
