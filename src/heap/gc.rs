//! Garbage collection (PHP's `zend_mm_gc`, `gc_mem_caches()`).
//!
//! Owns the operation that gives back memory the heap holds without using it: runs whose small
//! slots are all free go back to their segment, and the segments (and huge blocks) the heap keeps
//! cached for reuse go back to storage. The first part also runs on its own, without request
//! ends, as a heap grows (see `pages::COLLECT_RUNS_MIN_PAGES`). It walks the free lists, not the
//! pages: pass 1 counts free slots per run in the run's first page-map entry, pass 2 unlinks the
//! slots of complete runs and frees those runs, pass 3 clears the counters of the runs that stay. Segments emptied by the
//! walk are given up only after it (a list may still lead into them), in one pass over the
//! segment list.
//!
//! The free lists are written through user pointers, so the walk trusts none of them: every slot
//! must start a slot of a run of its bin in a segment of this heap, and no run may be counted more
//! free slots than it has (a list that loops, or names a slot twice, is caught there). Either
//! failure is heap corruption; the walk is bounded by the slots the heap has.

use super::route::{Block, Lookup};
use super::small::FreeSlot;
use super::{Heap, NO_REQUEST_ENDS};
use crate::diagnostics;
use crate::segment::{
    PAGE_KIND_MASK, PAGE_SMALL, SMALL_COUNTER_MASK, SMALL_COUNTER_SHIFT, Segment,
};
use crate::sizes::{BINS, HEAP_BINS, ZEND_MM_PAGE_SIZE};

/// Memory an abandoned heap keeps for the next thread to adopt it (two default segments): below
/// it, the new thread reuses what the old one left. Trimming every exiting thread's heap took the
/// thread-churn benchmark (`tchurn`: waves of 16 short-lived threads, each with a segment or two)
/// from 93 to 396 ms (medians of 5 alternated runs), for a peak RSS growth of 9.4-11.4 MiB
/// against 14.5-16.4.
const ABANDONED_SLACK: usize = 4 << 20;

impl Heap {
    /// Frees every small run whose slots are all free, returns cached segments and huge blocks
    /// to storage, and hands the free pages of the segments that stay back to the system (they
    /// stay the heap's: the next blocks there fault them in again); returns the bytes given back
    /// to storage (PHP counts the runs only: it has no caches to empty mid-request).
    pub fn gc(&mut self) -> usize {
        self.trim().0
    }

    /// [`Heap::gc`]: the bytes given back to storage, and those of free pages handed back to the
    /// system (`malloc_trim` reports both).
    pub fn trim(&mut self) -> (usize, usize) {
        if self.is_custom() {
            return (0, 0);
        }
        let given = self.flush_run_cache() * ZEND_MM_PAGE_SIZE
            + self.collect_free_runs()
            + self.release_cached_segments()
            + self.release_cached_huge();
        (given, self.purge_all_free_pages())
    }

    /// For the heap of a thread that exited with blocks live, about to be abandoned: gives back
    /// what it holds unused ([`Heap::trim`]) when that is more than [`ABANDONED_SLACK`]. An
    /// abandoned heap runs no slow path until a thread adopts it, so the timed purge of its caches
    /// does not run meanwhile: a thread that did a big job and left one block behind (a stdio
    /// buffer) would keep the job's memory for as long as no new thread starts.
    pub fn trim_for_abandonment(&mut self) {
        if self.usage(true).saturating_sub(self.usage(false)) > ABANDONED_SLACK {
            self.trim();
        }
    }

    /// Frees every small run whose slots are all free (to its segment's free pages; a segment
    /// that empties goes to the cache); returns the bytes of those runs.
    pub(super) fn collect_free_runs(&mut self) -> usize {
        self.collect_free_runs_counted().0
    }

    /// [`Heap::collect_free_runs`], also returning the free slots it walked (what it cost).
    pub(super) fn collect_free_runs_counted(&mut self) -> (usize, usize) {
        self.collect_remote_frees();
        let mut walked = 0;
        // Pass 1: count free slots per run.
        self.for_each_free_slot_run(|s, first, bin| {
            walked += 1;
            let entry = s.map_get(first);
            if (entry & SMALL_COUNTER_MASK) >> SMALL_COUNTER_SHIFT >= BINS[bin].count {
                diagnostics::heap_corrupted(format_args!(
                    "the free list of {}-byte blocks holds more slots of one run than it has \
                     (found collecting garbage; a block was freed twice)",
                    BINS[bin].size
                ));
            }
            s.map_set(first, entry + (1 << SMALL_COUNTER_SHIFT))
        });
        // Pass 2: unlink the slots of complete runs and free those runs.
        let mut collected_pages = 0;
        for (bin, info) in BINS.iter().enumerate() {
            let mut link: *mut *mut FreeSlot = &mut self.free_slots[bin];
            // The head is a plain pointer; a kept slot's link carries its tag.
            let mut at_head = true;
            loop {
                // SAFETY: `link` points at the list head or at the `next` field of a kept slot.
                let slot = unsafe { FreeSlot::next_of(link.cast()) };
                if slot.is_null() {
                    break;
                }
                let (seg, first) = self.run_of(slot.cast(), bin);
                // SAFETY: free-list slots lie in live segments of this heap (checked in pass 1).
                let entry = unsafe { (*seg).map_get(first) };
                let complete = entry & PAGE_KIND_MASK == PAGE_SMALL
                    && (entry & SMALL_COUNTER_MASK) >> SMALL_COUNTER_SHIFT == info.count;
                // A run freed earlier in this pass reads as free pages now.
                let freed_already = entry & PAGE_KIND_MASK != PAGE_SMALL;
                if !complete && !freed_already {
                    // SAFETY: a kept slot; advance to its link field.
                    link = unsafe { &mut (*slot).next };
                    at_head = false;
                    continue;
                }
                // SAFETY: unlinking a slot; its memory stays mapped until the walk ends.
                let next = unsafe { FreeSlot::next_of(slot) };
                let next = if at_head {
                    next
                } else {
                    FreeSlot::link_for(next, info.size as usize)
                };
                // SAFETY: `link` is the head or a kept slot's link field (as above).
                unsafe { *link = next };
                if complete {
                    // SAFETY: a live segment of this heap; the run is all free slots. Emptied
                    // segments stay filed (under their new class) until the walk ends.
                    unsafe {
                        (*seg).free_pages(first, info.pages as usize);
                        self.reclassify(seg);
                        self.note_unpurged(seg);
                    }
                    collected_pages += info.pages as usize;
                }
            }
        }
        // Pass 3: clear the counters of the runs that stay.
        self.for_each_free_slot_run(|s, first, _| {
            s.map_set(first, s.map_get(first) & !SMALL_COUNTER_MASK)
        });
        // Give up the segments the walk emptied.
        // SAFETY: the live list holds live non-main segments of this heap; an emptied one moves
        // to the cache after the iterator passed it.
        unsafe {
            for seg in self.segments.iter() {
                if (*seg).is_empty() {
                    self.segment_pages_freed(seg);
                }
            }
        }
        if NO_REQUEST_ENDS {
            self.small_run_pages -= collected_pages;
        }
        (collected_pages * ZEND_MM_PAGE_SIZE, walked)
    }

    /// The segment and first page of the run holding free slot `p` (a run pass 2 freed reads as
    /// free pages, and then `p`'s own page is named); heap corruption unless `p` lies in a small
    /// run or a free page of a segment of this heap.
    fn run_of(&self, p: *mut u8, bin: usize) -> (*mut Segment, usize) {
        match self.lookup(p) {
            Lookup::Block(Block::Small { seg, page, .. }) => {
                // SAFETY: a live segment of this heap.
                (seg, unsafe { (*seg).small_run_start(page) })
            }
            Lookup::FreePage { seg, page } => (seg, page),
            _ => not_a_free_slot(p, bin),
        }
    }

    /// Calls `visit` with the segment, first page of the small run and bin of every free slot;
    /// heap corruption unless each slot starts a slot of a run of its bin in this heap.
    fn for_each_free_slot_run(&mut self, mut visit: impl FnMut(&mut Segment, usize, usize)) {
        for bin in 0..HEAP_BINS {
            let mut slot = self.free_slots[bin];
            while !slot.is_null() {
                let Lookup::Block(Block::Small {
                    seg,
                    page,
                    bin: found,
                }) = self.lookup(slot.cast())
                else {
                    not_a_free_slot(slot.cast(), bin)
                };
                if found != bin {
                    not_a_free_slot(slot.cast(), bin);
                }
                // SAFETY: a live segment of this heap (the lookup vouches for it).
                let s = unsafe { &mut *seg };
                let first = s.small_run_start(page);
                visit(s, first, bin);
                // SAFETY: free slots hold their next link.
                slot = unsafe { FreeSlot::next_of(slot) };
            }
        }
    }
}

/// A free list holds `p`, which is no free slot of its bin in this heap.
#[cold]
fn not_a_free_slot(p: *const u8, bin: usize) -> ! {
    diagnostics::heap_corrupted(format_args!(
        "the free list of {}-byte blocks holds {:#x}, which is no slot of that size in this heap \
         (found collecting garbage; a block was freed twice or written after it was freed)",
        BINS[bin].size,
        p.addr()
    ))
}

#[cfg(test)]
mod tests {
    use super::super::resident_pages;
    use super::*;
    use core::ptr;

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn gc_hands_the_free_pages_of_live_segments_back_to_the_system() {
        let ops = crate::storage::builtin_by_name(b"mmap_anon").unwrap();
        let heap = super::super::test_heap_on(ops, 2 << 20);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        // Large blocks past the run cache's page counts, written, then all freed but the last.
        let size = 20 * ZEND_MM_PAGE_SIZE;
        let blocks: Vec<*mut u8> = (0..8).map(|_| h().alloc(size).unwrap()).collect();
        for &p in &blocks {
            // SAFETY: a live block of `size` bytes.
            unsafe { ptr::write_bytes(p, 0x6b, size) };
        }
        for &p in &blocks[..7] {
            h().free(p);
        }
        let freed = || {
            blocks[..7]
                .iter()
                .map(|&p| resident_pages(p, size))
                .sum::<usize>()
        };
        assert_eq!(freed(), 7 * 20, "freed pages stay resident until gc");
        let real = h().usage(true);
        h().gc();
        assert_eq!(freed(), 0, "gc handed them back");
        assert_eq!(h().usage(true), real, "they stay the heap's");
        let last = blocks[7];
        // SAFETY: the live block, `size` bytes.
        let intact = unsafe { core::slice::from_raw_parts(last, size) }
            .iter()
            .all(|&b| b == 0x6b);
        assert!(intact, "the live block keeps its bytes");
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    #[cfg_attr(miri, ignore = "more than 4 MiB of segments: minutes under Miri")]
    fn an_abandoned_heap_gives_back_what_it_holds_unused_beyond_the_slack() {
        const SEG: usize = 2 << 20;
        let heap = super::super::test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let unused = || h().usage(true) - h().usage(false);
        // 400 KiB blocks, five to a segment; each phase frees all but the first it made.
        let size = 100 * ZEND_MM_PAGE_SIZE;
        let phase = |count: usize| {
            let blocks: Vec<*mut u8> = (0..count).map(|_| h().alloc(size).unwrap()).collect();
            for &p in &blocks[1..] {
                h().free(p);
            }
            blocks[0]
        };
        // Up to the slack it keeps what it holds, for the thread that adopts it.
        let first = phase(8);
        let held = h().usage(true);
        assert!(held >= 2 * SEG && unused() <= ABANDONED_SLACK);
        h().trim_for_abandonment();
        assert_eq!(h().usage(true), held, "kept below the slack");
        // Beyond it, what is unused goes: one segment more than the heap's own stays at most.
        let second = phase(30);
        assert!(unused() > ABANDONED_SLACK);
        h().trim_for_abandonment();
        let left = h().usage(true);
        assert!(
            left <= 2 * SEG,
            "{left} bytes held for {}",
            h().usage(false)
        );
        h().free(first);
        h().free(second);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }
}
