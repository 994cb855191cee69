//! Large blocks (zend_alloc.c "Large Runs"): requests above 3072 bytes that fit in a segment,
//! served as runs of whole pages (page aligned).
//!
//! Owns page-run allocation, release, and in-place resizing: a large block shrinks by giving its
//! tail pages back and grows in place when the pages after it are free.
//!
//! Also owns the run cache: a freed large block of up to [`RUN_CACHE_CLASSES`] pages is kept whole
//! on a list of its page count, so the next run of that length is a list pop instead of a search
//! of the segments' page bitmaps (whose cost grows with fragmentation; malloc peers serve these
//! sizes from per-size lists too). Invariants of a cached run:
//! - its pages stay marked used in the bitmap; its first page's map entry is [`PAGE_CACHED`] with
//!   the page count, so freeing or resizing it again is reported as for freed pages;
//! - its first bytes hold its [`CachedRun`] links; it is on exactly the list of its page count;
//! - `run_cache.pages` is the sum of the cached runs' pages, at most [`RUN_CACHE_MAX_PAGES`];
//! - it is counted as freed in the usage, and still in the real size (its segment keeps it).
//!
//! Cached runs go back to their segments' free pages when no segment has a run for a request
//! (before a segment is taken), when a growing block needs the pages, on `zend_mm_gc`, and at
//! request end with everything else. A tracking heap caches nothing: its freed blocks keep their
//! headers and poison.

use core::ptr;

use super::pages::NoPages;
use super::route::Lookup;
use super::{Heap, Refusal};
use crate::diagnostics;
use crate::segment::{LARGE_PAGES_MASK, PAGE_CACHED, PAGE_KIND_MASK, PAGE_LARGE, Segment};
use crate::sizes::{ZEND_MM_PAGE_SIZE, pages_for};

/// Page counts the run cache keeps lists for: 1 to this (64 KiB with 4 KiB pages). Longer blocks
/// are rarer per byte, and their search is a smaller share of their cost.
pub(super) const RUN_CACHE_CLASSES: usize = 16;
/// At most this many pages are cached in all (512 KiB): the cache pins them in their segments.
const RUN_CACHE_MAX_PAGES: usize = 128;

/// The links a cached run holds in its first bytes. They live in freed memory, which a program
/// may write after freeing it: every run reached through them is checked against the page map
/// before it is used or written.
#[repr(C)]
struct CachedRun {
    next: *mut CachedRun,
    prev: *mut CachedRun,
}

const _: () = assert!(size_of::<CachedRun>() <= ZEND_MM_PAGE_SIZE);

/// The heap's lists of cached runs, by page count (see the module doc).
pub(super) struct RunCache {
    heads: [*mut CachedRun; RUN_CACHE_CLASSES],
    pages: usize,
}

impl RunCache {
    pub(super) const fn new() -> RunCache {
        RunCache {
            heads: [ptr::null_mut(); RUN_CACHE_CLASSES],
            pages: 0,
        }
    }

    /// Pages held by cached runs.
    pub(super) fn pages(&self) -> usize {
        self.pages
    }
}

/// A cached run's links were found overwritten.
#[cold]
#[inline(never)]
fn run_links_corrupted(run: *const CachedRun, pages: usize) -> ! {
    diagnostics::heap_corrupted(format_args!(
        "the list of freed {pages}-page blocks kept for reuse holds {:#x}, which is no such block \
         of this heap (a block was written after it was freed)",
        run.addr()
    ))
}

impl Heap {
    /// A page-aligned run of whole pages for `size` bytes (PHP's `zend_mm_alloc_large`).
    pub(super) fn alloc_large(&mut self, size: usize) -> Result<*mut u8, Refusal> {
        let pages = pages_for(size);
        // A freed large run of exactly this length, kept whole. Only large blocks take one: a
        // small bin's run stays until the request ends, and placed in a freed block's hole it keeps
        // that segment from emptying (1.1 MiB more peak on the `request` benchmark).
        let taken = match self.take_cached_run(pages) {
            Some(run) => {
                // A slow path, as `alloc_pages` (which purges too) is.
                self.purge_idle_caches();
                Ok(run)
            }
            None => self.alloc_pages(pages),
        };
        let (seg, page) = match taken {
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
        self.count_free(pages * ZEND_MM_PAGE_SIZE);
        // SAFETY: caller contract.
        unsafe {
            if !self.cache_run(seg, page, pages) {
                (*seg).free_pages(page, pages);
                self.segment_pages_freed(seg);
            }
        }
    }

    /// Keeps the freed run of `pages` pages at `page` of `seg` on the run cache, if it takes it.
    ///
    /// # Safety
    /// As [`Heap::free_large`]; the run's usage is already counted as freed.
    unsafe fn cache_run(&mut self, seg: *mut Segment, page: usize, pages: usize) -> bool {
        if pages > RUN_CACHE_CLASSES
            || self.run_cache.pages + pages > RUN_CACHE_MAX_PAGES
            || self.tracking
        {
            return false;
        }
        // SAFETY: a live segment of this heap (caller contract).
        let s = unsafe { &mut *seg };
        s.map_set(page, PAGE_CACHED | pages as u32);
        let run = s.page_addr(page).cast::<CachedRun>();
        let head = self.run_cache.heads[pages - 1];
        // SAFETY: the run's first page is ours and unused (the block was freed); the head, if any,
        // is a cached run, checked when it became the head.
        unsafe {
            run.write(CachedRun {
                next: head,
                prev: ptr::null_mut(),
            });
            if !head.is_null() {
                (*head).prev = run;
            }
        }
        self.run_cache.heads[pages - 1] = run;
        self.run_cache.pages += pages;
        true
    }

    /// The segment and page of `run`, which a list of cached `pages`-page runs holds; heap
    /// corruption unless the page map says a cached run of that length starts there.
    fn cached_run_at(&self, run: *mut CachedRun, pages: usize) -> (*mut Segment, usize) {
        if let Lookup::FreePage { seg, page } = self.lookup(run.cast()) {
            // SAFETY: the lookup found a live segment of this heap.
            if unsafe { (*seg).map_get(page) } == PAGE_CACHED | pages as u32 {
                return (seg, page);
            }
        }
        run_links_corrupted(run, pages)
    }

    /// A cached run of exactly `pages` pages, taken off the cache (its pages stay in use; the
    /// caller writes its map entry).
    #[inline]
    pub(super) fn take_cached_run(&mut self, pages: usize) -> Option<(*mut Segment, usize)> {
        let run = *self.run_cache.heads.get(pages.wrapping_sub(1))?;
        if run.is_null() {
            return None;
        }
        let found = self.cached_run_at(run, pages);
        // SAFETY: a cached run of this heap (checked above).
        unsafe { self.unlink_cached_run(run, pages) };
        Some(found)
    }

    /// Takes `run` (of `pages` pages) off its list, after checking that its neighbours are
    /// cached runs that link back to it.
    ///
    /// # Safety
    /// `run` must be a cached run of `pages` pages of this heap (its page-map entry says so).
    unsafe fn unlink_cached_run(&mut self, run: *mut CachedRun, pages: usize) {
        // SAFETY: a cached run's first page is ours (caller contract); its neighbours are read
        // and written only once the page map vouches for them.
        unsafe {
            let CachedRun { next, prev } = run.read();
            if prev.is_null() {
                if self.run_cache.heads[pages - 1] != run {
                    run_links_corrupted(run, pages);
                }
            } else {
                self.cached_run_at(prev, pages);
                if (*prev).next != run {
                    run_links_corrupted(prev, pages);
                }
            }
            if !next.is_null() {
                self.cached_run_at(next, pages);
                if (*next).prev != run {
                    run_links_corrupted(next, pages);
                }
                (*next).prev = prev;
            }
            if prev.is_null() {
                self.run_cache.heads[pages - 1] = next;
            } else {
                (*prev).next = next;
            }
        }
        self.run_cache.pages -= pages;
    }

    /// Gives the cached run at `page` of `seg` (its map entry `entry` is [`PAGE_CACHED`]) back to
    /// the segment's free pages.
    ///
    /// # Safety
    /// `seg` must be a live segment of this heap and `entry` its map entry at `page`.
    unsafe fn release_cached_run(&mut self, seg: *mut Segment, page: usize, entry: u32) {
        let pages = (entry & LARGE_PAGES_MASK) as usize;
        // SAFETY: a cached run starts at `page` (caller contract).
        unsafe {
            self.unlink_cached_run((*seg).page_addr(page).cast(), pages);
            (*seg).free_pages(page, pages);
            self.note_unpurged(seg);
        }
    }

    /// Gives every cached run back to its segment's free pages (segments that empty go to the
    /// segment cache); the pages given back.
    pub(super) fn flush_run_cache(&mut self) -> usize {
        let flushed = self.run_cache.pages;
        for pages in 1..=RUN_CACHE_CLASSES {
            while let Some((seg, page)) = self.take_cached_run(pages) {
                // SAFETY: a run just taken off the cache, in a live segment of this heap.
                unsafe {
                    (*seg).free_pages(page, pages);
                    self.segment_pages_freed(seg);
                }
            }
        }
        if self.run_cache.pages != 0 {
            // A list ended early: some run's link was overwritten with a null.
            diagnostics::heap_corrupted(format_args!(
                "{} pages of freed blocks kept for reuse are on no list (a block was written \
                 after it was freed)",
                self.run_cache.pages
            ));
        }
        flushed
    }

    /// Forgets every cached run: the request ended and every segment was reset.
    pub(super) fn forget_run_cache(&mut self) {
        self.run_cache = RunCache::new();
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
        if new_pages > pages {
            // A cached run right after the block goes back to the free pages it may grow into.
            let next = page + pages;
            // SAFETY: a live segment of this heap (caller contract).
            let entry = unsafe { (next < (*seg).page_count()).then(|| (*seg).map_get(next)) };
            if let Some(entry) = entry.filter(|e| e & PAGE_KIND_MASK == PAGE_CACHED) {
                // SAFETY: a cached run starts at `next` of this live segment.
                unsafe { self.release_cached_run(seg, next, entry) };
            }
        }
        // SAFETY: a live segment of this heap (caller contract).
        let s = unsafe { &mut *seg };
        if new_pages < pages {
            let tail = pages - new_pages;
            s.map_set(page, PAGE_LARGE | new_pages as u32);
            s.free_pages(page + new_pages, tail);
            self.count_free(tail * ZEND_MM_PAGE_SIZE);
            // SAFETY: as above.
            unsafe { self.note_unpurged(seg) };
        } else {
            let extra = new_pages - pages;
            if !s.pages_free(page + pages, extra) {
                // SAFETY: as above (a cached run may have gone back to its free pages).
                unsafe { self.reclassify(seg) };
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

#[cfg(test)]
mod tests {
    use super::super::{BlockStatus, test_heap};
    use super::*;

    const PAGE: usize = ZEND_MM_PAGE_SIZE;

    fn assert_consistent(h: &Heap) {
        let mut problems = Vec::new();
        let errors = h.check_all(&mut |args| problems.push(args.to_string()));
        assert_eq!(errors, 0, "heap check: {problems:?}");
    }

    #[test]
    fn a_freed_large_block_is_kept_for_its_page_count() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let _a = h.alloc(3 * PAGE).unwrap();
        let b = h.alloc(5 * PAGE).unwrap();
        let _guard = h.alloc(PAGE).unwrap();
        let used = h.usage(false);
        h.free(b);
        assert_eq!(h.usage(false), used - 5 * PAGE, "counted as freed");
        assert_eq!(h.block_status(b), BlockStatus::Freed);
        assert_eq!(h.run_cache.pages(), 5);
        assert_consistent(h);
        // A best fit would put 3 pages in b's 5-page hole; the hole is kept for 5 pages instead.
        let c = h.alloc(3 * PAGE).unwrap();
        assert_ne!(c, b);
        assert_eq!(h.alloc(5 * PAGE).unwrap(), b);
        assert_eq!(h.run_cache.pages(), 0);
        assert_consistent(h);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn only_large_blocks_take_cached_runs() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        // 3 pages: a large block's, and a 3072-byte bin's run.
        let b = h.alloc(3 * PAGE).unwrap();
        let _guard = h.alloc(PAGE).unwrap();
        h.free(b);
        assert_eq!(h.run_cache.pages(), 3);
        // A new bin run stays until the request ends: it is placed by the segments' free pages,
        // not in the cached hole.
        let small = h.alloc(3072).unwrap();
        assert!(!(b.addr()..b.addr() + 3 * PAGE).contains(&small.addr()));
        assert_eq!(h.run_cache.pages(), 3);
        assert_eq!(h.alloc(3 * PAGE).unwrap(), b);
        assert_consistent(h);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn cached_runs_go_back_before_a_segment_is_taken() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let main_seg = h.main.addr()..h.main.addr() + h.segment_size;
        let blocks: Vec<_> = (0..200).map(|_| h.alloc(2 * PAGE).unwrap()).collect();
        assert!(blocks.iter().all(|b| main_seg.contains(&b.addr())));
        // The last 60 blocks are cached (120 pages), next to the segment's free tail.
        for &b in &blocks[140..] {
            h.free(b);
        }
        assert_eq!(h.run_cache.pages(), 120);
        // No free run is 200 pages long until the cached runs join the tail.
        let long = h.alloc(200 * PAGE).unwrap();
        assert!(main_seg.contains(&long.addr()), "served without a segment");
        assert_eq!(h.segments_held(), 1);
        assert_eq!(h.run_cache.pages(), 0);
        assert_consistent(h);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_block_grows_in_place_over_a_cached_neighbour() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let a = h.alloc(2 * PAGE).unwrap();
        let b = h.alloc(3 * PAGE).unwrap();
        let _guard = h.alloc(PAGE).unwrap();
        assert_eq!(b.addr(), a.addr() + 2 * PAGE);
        h.free(b);
        assert_eq!(h.run_cache.pages(), 3);
        assert_eq!(h.realloc(a, 4 * PAGE, 0), Ok(a), "grown in place");
        assert_eq!(h.run_cache.pages(), 0);
        assert_eq!(h.block_status(a), BlockStatus::Live(4 * PAGE));
        assert_consistent(h);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_page_run_serves_any_size_as_whole_aligned_pages() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        for (size, pages) in [(1, 1), (100, 1), (3000, 1), (PAGE, 1), (PAGE + 1, 2)] {
            let used = h.usage(false);
            let p = h.alloc_page_run(size).unwrap();
            assert_eq!(p.addr() % PAGE, 0, "{size} bytes");
            assert_eq!(h.block_size(p), pages * PAGE, "{size} bytes");
            assert_eq!(h.usage(false), used + pages * PAGE, "{size} bytes");
            assert_consistent(h);
            h.free(p);
            assert_eq!(h.usage(false), used, "{size} bytes");
        }
        assert_consistent(h);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn gc_and_request_end_empty_the_run_cache() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let cache_some = || {
            let blocks: Vec<_> = (1..=8).map(|n| h().alloc(n * PAGE).unwrap()).collect();
            for b in blocks {
                h().free(b);
            }
            assert_eq!(h().run_cache.pages(), 36);
        };
        cache_some();
        assert!(h().gc() >= 36 * PAGE);
        assert_eq!(h().run_cache.pages(), 0);
        assert_eq!(h().usage(false), 0);
        assert_consistent(h());
        cache_some();
        // SAFETY: a live heap of this thread, not borrowed; its blocks were freed.
        unsafe { Heap::shutdown(heap, false) };
        assert_eq!(h().run_cache.pages(), 0);
        assert_consistent(h());
        let p = h().alloc(3 * PAGE).unwrap();
        assert_eq!(h().block_status(p), BlockStatus::Live(3 * PAGE));
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }
}
