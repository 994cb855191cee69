//! Segments (zend_alloc.c "Chunks"): the memory a heap gets from its storage, cut into 4 KiB pages.
//!
//! Owns the segment header and its page allocator. A segment is one storage allocation of the heap's
//! segment size. Its header sits at the start (PHP 5.3's `zend_mm_segment` first, so storages can
//! read the size) and is followed by the page bitmap and the page map; the page grid starts at the
//! first page boundary after the header. Storage memory need not be aligned: an unaligned segment
//! simply has one page fewer.
//!
//! Invariants:
//! - `bitmap` bit i is set iff page i is in use (by a small run, a large block or the reserve);
//! - `map[i]` describes page i: the first page of a small run names its bin, the other pages of the
//!   run point back to the first; the first page of a large run holds its page count; every other
//!   page is `FREE`, so a pointer into it is not a block;
//! - `free_pages` and `longest_free` are exact;
//! - `heap` is the owning heap (the segment's owner, checked on every free).
//!
//! Ownership is per segment so that frees from other threads can be added without a redesign: a
//! free whose segment belongs to another thread's heap is, today, heap corruption (PHP's rule); it
//! can instead push the block onto a list kept in this header for the owner to drain, as mimalloc
//! does per page. The header has room for such fields (its size is computed, not fixed).

use core::ptr;

use crate::bitmap::PageBitmap;
use crate::ffi::types::zend_mm_segment;
use crate::heap::Heap;
use crate::sizes::{PAGE_SHIFT, ZEND_MM_PAGE_SIZE, align_up};

/// Page-map entry kinds (top two bits).
pub(crate) const PAGE_FREE: u32 = 0;
pub(crate) const PAGE_LARGE: u32 = 1 << 30;
pub(crate) const PAGE_SMALL: u32 = 2 << 30;
pub(crate) const PAGE_SMALL_CONT: u32 = 3 << 30;
pub(crate) const PAGE_KIND_MASK: u32 = 3 << 30;
/// Large runs: page count in the low bits.
pub(crate) const LARGE_PAGES_MASK: u32 = (1 << 30) - 1;
/// Small runs: bin in bits 0..5; continuation pages: offset to the first page in bits 8..11; first
/// pages: free-slot counter used by `zend_mm_gc` in bits 8..20.
pub(crate) const SMALL_BIN_MASK: u32 = 0x1f;
pub(crate) const SMALL_OFFSET_SHIFT: u32 = 8;
pub(crate) const SMALL_COUNTER_SHIFT: u32 = 8;
pub(crate) const SMALL_COUNTER_MASK: u32 = 0xfff << SMALL_COUNTER_SHIFT;

/// Marker for "not in any class list".
pub(crate) const NO_CLASS: u32 = u32::MAX;

#[repr(C)]
pub struct Segment {
    /// What the storage sees: the allocation size (and an unused link, NULL).
    pub raw: zend_mm_segment,
    /// The owning heap.
    pub heap: *mut Heap,
    /// Address of page 0 (page aligned).
    pub first_page: *mut u8,
    /// Pages in the grid.
    pub pages: u32,
    pub free_pages: u32,
    /// Longest run of free pages.
    pub longest_free: u32,
    /// The heap's class list this segment is on ([`NO_CLASS`] if none).
    pub class: u32,
    /// Creation ordinal: younger segments have larger numbers.
    pub num: u64,
    /// Every live segment of the heap, main segment first.
    pub all_prev: *mut Segment,
    pub all_next: *mut Segment,
    /// The class list (or the cache list).
    pub class_prev: *mut Segment,
    pub class_next: *mut Segment,
    pub bitmap: *mut u64,
    pub map: *mut u32,
    /// `zend_mm_gc`'s list of segments it emptied.
    pub gc_next: *mut Segment,
    pub gc_emptied: bool,
}

/// Bytes of header for a segment of `size` bytes, with `extra` bytes (the heap struct of a main
/// segment) after the segment struct. Sized for the most pages the segment can have.
pub(crate) const fn header_bytes(size: usize, extra: usize) -> usize {
    let max_pages = size / ZEND_MM_PAGE_SIZE;
    let fixed = size_of::<Segment>() + extra;
    let fixed = fixed.div_ceil(8) * 8;
    fixed + PageBitmap::words_for(max_pages) * 8 + max_pages * 4
}

/// Pages of a page-aligned segment of `size` bytes that no large block can use (its header).
pub(crate) const fn header_pages(size: usize, extra: usize) -> usize {
    header_bytes(size, extra).div_ceil(ZEND_MM_PAGE_SIZE)
}

/// The longest large block, in pages, a heap with `segment_size` segments serves from a segment.
pub(crate) const fn max_large_pages(segment_size: usize) -> usize {
    segment_size / ZEND_MM_PAGE_SIZE - header_pages(segment_size, 0)
}

const _: () = {
    // The default segment keeps PHP's 511 pages, even the main one holding the heap.
    let seg = crate::sizes::ZEND_MM_SEG_SIZE;
    assert!(header_pages(seg, size_of::<Heap>()) == 1);
    assert!(max_large_pages(seg) * ZEND_MM_PAGE_SIZE == crate::sizes::ZEND_MM_MAX_LARGE_SIZE);
    // Every allowed segment size leaves room for the longest bin run after alignment losses.
    assert!(
        max_large_pages(crate::sizes::MIN_SEGMENT_SIZE)
            - header_pages(crate::sizes::MIN_SEGMENT_SIZE, size_of::<Heap>())
            >= crate::sizes::MAX_BIN_PAGES as usize
    );
};

impl Segment {
    /// Lays a segment out over `size` bytes at `base` (fresh from storage) for `heap`, reserving
    /// `extra` bytes after the header struct, and returns it with every page free.
    ///
    /// # Safety
    /// `base` must point to `size` writable bytes (at least 16-byte aligned) that nothing else uses.
    pub unsafe fn init(
        base: *mut u8,
        size: usize,
        heap: *mut Heap,
        extra: usize,
        num: u64,
    ) -> *mut Segment {
        let seg = base.cast::<Segment>();
        let after_struct = base as usize + (size_of::<Segment>() + extra).div_ceil(8) * 8;
        let max_pages = size / ZEND_MM_PAGE_SIZE;
        let bitmap = after_struct as *mut u64;
        let map = (after_struct + PageBitmap::words_for(max_pages) * 8) as *mut u32;
        let header_end = base as usize + header_bytes(size, extra);
        let first_page = align_up(header_end, ZEND_MM_PAGE_SIZE).unwrap_or(usize::MAX);
        let pages = (base as usize + size).saturating_sub(first_page) / ZEND_MM_PAGE_SIZE;
        // SAFETY: the header lies within the segment (header_bytes < size, checked by callers'
        // size bounds) and nothing else references this memory yet.
        unsafe {
            seg.write(Segment {
                raw: zend_mm_segment {
                    size,
                    next_segment: ptr::null_mut(),
                },
                heap,
                first_page: first_page as *mut u8,
                pages: pages as u32,
                free_pages: pages as u32,
                longest_free: pages as u32,
                class: NO_CLASS,
                num,
                all_prev: ptr::null_mut(),
                all_next: ptr::null_mut(),
                class_prev: ptr::null_mut(),
                class_next: ptr::null_mut(),
                bitmap,
                map,
                gc_next: ptr::null_mut(),
                gc_emptied: false,
            });
            (*seg).reset();
        }
        seg
    }

    /// Marks every page free again (for a segment taken back from the cache or a reset main one).
    pub fn reset(&mut self) {
        let pages = self.pages as usize;
        self.bitmap().reset();
        // SAFETY: the map has room for `pages` entries (init).
        unsafe { ptr::write_bytes(self.map, 0, pages) };
        self.free_pages = self.pages;
        self.longest_free = self.pages;
    }

    fn bitmap(&mut self) -> PageBitmap<'_> {
        let pages = self.pages as usize;
        // SAFETY: the bitmap has words_for(max pages) >= words_for(pages) words (init) and is only
        // reached through this exclusive borrow of the segment.
        let words =
            unsafe { core::slice::from_raw_parts_mut(self.bitmap, PageBitmap::words_for(pages)) };
        PageBitmap::new(words, pages)
    }

    /// Start address of the segment (what the storage returned).
    #[inline(always)]
    pub fn base(&self) -> *mut u8 {
        (self as *const Segment).cast_mut().cast()
    }

    /// One past the segment's last byte.
    pub fn end(&self) -> usize {
        self.base() as usize + self.raw.size
    }

    #[inline(always)]
    pub fn page_addr(&self, page: usize) -> *mut u8 {
        self.first_page.wrapping_add(page << PAGE_SHIFT)
    }

    /// The page `p` lies in, if it lies in the page grid.
    #[inline(always)]
    pub fn page_of(&self, p: usize) -> Option<usize> {
        let page = p.wrapping_sub(self.first_page as usize) >> PAGE_SHIFT;
        if page < self.pages as usize {
            Some(page)
        } else {
            None
        }
    }

    #[inline(always)]
    pub fn map_get(&self, page: usize) -> u32 {
        debug_assert!(page < self.pages as usize);
        // SAFETY: page < pages (callers get pages from page_of or their own runs).
        unsafe { *self.map.add(page) }
    }

    #[inline(always)]
    pub fn map_set(&mut self, page: usize, info: u32) {
        debug_assert!(page < self.pages as usize);
        // SAFETY: as map_get.
        unsafe { *self.map.add(page) = info }
    }

    /// Takes the best-fitting run of `n` free pages; `None` if the segment has no such run.
    pub fn alloc_pages(&mut self, n: usize) -> Option<usize> {
        if n > self.longest_free as usize {
            return None;
        }
        let (start, run) = self.bitmap().best_fit(n)?;
        self.take_pages(start, n);
        if run == self.longest_free as usize {
            self.longest_free = self.bitmap().longest_free_run() as u32;
        }
        Some(start)
    }

    fn take_pages(&mut self, start: usize, n: usize) {
        self.bitmap().set_range(start, n);
        self.free_pages -= n as u32;
    }

    /// Whether the `n` pages from `start` are free.
    pub fn pages_free(&mut self, start: usize, n: usize) -> bool {
        self.bitmap().is_free(start, n)
    }

    /// Takes the `n` free pages from `start` (known free: see [`Segment::pages_free`]).
    pub fn take_pages_at(&mut self, start: usize, n: usize) {
        let around = self.bitmap().free_run_around(start);
        self.take_pages(start, n);
        if around == self.longest_free as usize {
            self.longest_free = self.bitmap().longest_free_run() as u32;
        }
    }

    /// Gives back `n` pages from `start` and clears their map entries.
    pub fn free_pages(&mut self, start: usize, n: usize) {
        debug_assert!(start + n <= self.pages as usize);
        self.bitmap().clear_range(start, n);
        // SAFETY: the run lies within the map (start + n <= pages).
        unsafe { ptr::write_bytes(self.map.add(start), PAGE_FREE as u8, n) };
        self.free_pages += n as u32;
        let run = self.bitmap().free_run_around(start) as u32;
        self.longest_free = self.longest_free.max(run);
    }

    /// Whether no page is in use.
    pub fn is_empty(&self) -> bool {
        self.free_pages == self.pages
    }
}
