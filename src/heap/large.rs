//! Large blocks (zend_alloc.c "Large Runs"): requests above 3072 bytes that fit in a segment,
//! served as runs of whole pages (page aligned).
//!
//! Owns page-run allocation, release, and in-place resizing: a large block shrinks by giving its
//! tail pages back and grows in place when the pages after it are free.

use super::pages::NoPages;
use super::{Heap, Refusal};
use crate::segment::{PAGE_LARGE, Segment};
use crate::sizes::{ZEND_MM_PAGE_SIZE, pages_for};

impl Heap {
    /// A page-aligned run of whole pages for `size` bytes (PHP's `zend_mm_alloc_large`).
    pub(super) fn alloc_large(&mut self, size: usize) -> Result<*mut u8, Refusal> {
        let pages = pages_for(size);
        let (seg, page) = match self.alloc_pages(pages) {
            Ok(run) => run,
            Err(NoPages::Refused(refusal)) => return Err(refusal),
            // A fresh segment came up a page short (unaligned storage): a huge block serves the
            // request, with the same block size.
            Err(NoPages::TooShort) => return self.alloc_huge(size),
        };
        // SAFETY: a run just taken from a live segment of ours.
        let s = unsafe { &mut *seg };
        s.map_set(page, PAGE_LARGE | pages as u32);
        self.count_alloc(pages * ZEND_MM_PAGE_SIZE);
        Ok(s.page_addr(page))
    }

    /// Frees a large block of `pages` pages starting at `page` of `seg`.
    ///
    /// # Safety
    /// A large run of `pages` pages must start at `page` of `seg`, a live segment of this heap.
    pub(super) unsafe fn free_large(&mut self, seg: *mut Segment, page: usize, pages: usize) {
        // SAFETY: caller contract.
        unsafe {
            (*seg).free_pages(page, pages);
            self.count_free(pages * ZEND_MM_PAGE_SIZE);
            self.segment_pages_freed(seg);
        }
    }

    /// Resizes the large block at `page` of `seg` to `size` bytes (still a large size) without
    /// moving it, if the pages allow; false if it must move.
    ///
    /// # Safety
    /// As [`Heap::free_large`].
    pub(super) unsafe fn resize_large_in_place(
        &mut self,
        seg: *mut Segment,
        page: usize,
        pages: usize,
        size: usize,
    ) -> bool {
        let new_pages = pages_for(size);
        if new_pages == pages {
            return true;
        }
        // SAFETY: a live segment of this heap (caller contract).
        let s = unsafe { &mut *seg };
        if new_pages < pages {
            let tail = pages - new_pages;
            s.map_set(page, PAGE_LARGE | new_pages as u32);
            s.free_pages(page + new_pages, tail);
            self.count_free(tail * ZEND_MM_PAGE_SIZE);
        } else {
            let extra = new_pages - pages;
            if !s.pages_free(page + pages, extra) {
                return false;
            }
            s.take_pages_at(page + pages, extra);
            s.map_set(page, PAGE_LARGE | new_pages as u32);
            self.count_alloc(extra * ZEND_MM_PAGE_SIZE);
        }
        // SAFETY: as above.
        unsafe { self.reclassify(seg) };
        true
    }
}
