//! Heap checking (PHP 5.3's `mem_block_check` / `full_mem_check`).
//!
//! Owns the slow, thorough questions: what is the status of this pointer, and is the whole heap
//! consistent (page bitmaps against page maps, free lists against runs, counters against blocks).
//! Nothing here trusts a pointer before the region map vouches for it, so checking a wild pointer
//! reports it instead of crashing.

use core::fmt;
use core::ptr;

use super::Heap;
use super::route::{Block, Lookup};
use super::small::{FreeSlot, NO_SLOT_BELOW};
use crate::region_map::{self, Region};
use crate::segment::{
    LARGE_PAGES_MASK, PAGE_CACHED, PAGE_FREE, PAGE_KIND_MASK, PAGE_LARGE, PAGE_SMALL, Segment,
    small_bin, small_place,
};
use crate::sizes::{BIN_SIZE, BINS, HEAP_BINS, ZEND_MM_PAGE_SIZE};

/// What a pointer is, as far as the heap can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStatus {
    Null,
    /// Not in any segment or huge block of this heap.
    Foreign,
    /// Inside this heap but not at the start of a block.
    NotABlock,
    /// The start of a block that is free.
    Freed,
    /// A live block of this usable size.
    Live(usize),
}

impl Heap {
    /// The status of `p` in this heap. Walks a free list for small blocks: meant for checks, not
    /// for hot paths.
    pub fn block_status(&self, p: *const u8) -> BlockStatus {
        if p.is_null() {
            return BlockStatus::Null;
        }
        match self.lookup(p) {
            Lookup::Block(Block::Small { bin, .. }) => {
                if self.on_free_list(bin, p) {
                    BlockStatus::Freed
                } else {
                    BlockStatus::Live(BIN_SIZE[bin])
                }
            }
            Lookup::Block(Block::Large { pages, .. }) => {
                BlockStatus::Live(pages * ZEND_MM_PAGE_SIZE)
            }
            // SAFETY: a live huge block of this heap (the lookup vouches for it).
            Lookup::Block(Block::Huge(block)) => BlockStatus::Live(unsafe { (*block).size() }),
            // Pages are page aligned: a free page's start is where a freed block began.
            Lookup::FreePage { .. } if p.addr() % ZEND_MM_PAGE_SIZE == 0 => BlockStatus::Freed,
            Lookup::CachedHuge => BlockStatus::Freed,
            Lookup::FreePage { .. } | Lookup::NotABlock => BlockStatus::NotABlock,
            Lookup::Foreign => BlockStatus::Foreign,
        }
    }

    /// Whether `p` is on `bin`'s free list (see [`Heap::free_list`]).
    pub(super) fn on_free_list(&self, bin: usize, p: *const u8) -> bool {
        self.free_list(bin)
            .any(|slot| slot.cast_const().cast() == p)
    }

    /// The slots on `bin`'s free list, no more than the heap's memory can hold (a corrupted list
    /// may loop), and none from a link written over with a small number (the list ends there, as
    /// the allocation that reaches it stops). A slot's link is read before the slot is yielded:
    /// the caller may write into it.
    pub(super) fn free_list(&self, bin: usize) -> impl Iterator<Item = *mut FreeSlot> + use<> {
        let mut slot = self.free_slots[bin];
        let mut budget = self.real_size / BIN_SIZE[0] + 1;
        core::iter::from_fn(move || {
            if slot.addr() < NO_SLOT_BELOW || budget == 0 {
                return None;
            }
            budget -= 1;
            let this = slot;
            // SAFETY: free slots hold their next link.
            slot = unsafe { FreeSlot::next_of(this) };
            Some(this)
        })
    }

    /// Checks the whole heap; reports each problem through `report` and returns how many it found.
    pub fn check_all(&self, report: &mut dyn FnMut(fmt::Arguments<'_>)) -> usize {
        let mut errors = 0;
        let mut error = |args: fmt::Arguments<'_>| {
            errors += 1;
            report(args);
        };
        let mut used_bytes = 0usize;
        let mut used_slots = [0usize; HEAP_BINS];
        // SAFETY: the main segment and the live list's are live segments of this heap.
        for seg in core::iter::once(self.main).chain(unsafe { self.segments.iter() }) {
            // SAFETY: as above.
            let s = unsafe { &*seg };
            used_bytes += self.check_segment(s, &mut used_slots, &mut error);
        }
        // SAFETY: cached segments are live segments of this heap.
        for seg in unsafe { self.cached.iter() } {
            // SAFETY: as above.
            if unsafe { !(*seg).is_empty() } {
                error(format_args!("cached segment {:p} has pages in use\n", seg));
            }
        }
        for (bin, slots) in used_slots.iter().enumerate() {
            let mut free = 0usize;
            let mut slot: *mut FreeSlot = self.free_slots[bin];
            while !slot.is_null() {
                match self.block_status(slot.cast()) {
                    BlockStatus::Freed => {}
                    other => {
                        error(format_args!(
                            "free list of bin {bin} holds {:p} ({other:?})\n",
                            slot
                        ));
                        break;
                    }
                }
                free += 1;
                if free > *slots {
                    error(format_args!(
                        "free list of bin {bin} is longer than its runs (a loop?)\n"
                    ));
                    break;
                }
                // SAFETY: free slots hold their next link (checked above).
                slot = unsafe { FreeSlot::next_of(slot) };
            }
            used_bytes += slots.saturating_sub(free) * BIN_SIZE[bin];
        }
        // SAFETY: the huge list holds live huge blocks of this heap.
        for block in unsafe { self.huge_blocks.iter() } {
            // SAFETY: as above.
            let b = unsafe { &*block };
            if region_map::find_owned(b.data().addr(), self.id()) != Region::Huge(block.cast()) {
                error(format_args!(
                    "huge block {:p} is not registered to this heap\n",
                    b.data()
                ));
            }
            used_bytes += b.size();
        }
        let reserve = self.reserve_bytes();
        if used_bytes != self.used() + reserve {
            error(format_args!(
                "usage is {} bytes but the blocks in use add up to {}\n",
                self.used(),
                used_bytes - reserve
            ));
        }
        errors
    }

    /// Checks one segment; returns the bytes of its large blocks and adds its small slots per bin.
    fn check_segment(
        &self,
        s: &Segment,
        slots: &mut [usize; HEAP_BINS],
        error: &mut dyn FnMut(fmt::Arguments<'_>),
    ) -> usize {
        if s.owner() != self.id() {
            error(format_args!("segment {:p} belongs to another heap\n", s));
        }
        let base = s.allocation().base();
        if region_map::find_owned(base.addr(), self.id()) != Region::Segment(base)
            || base != ptr::from_ref(s).cast_mut().cast()
        {
            error(format_args!("segment {:p} is not registered\n", s));
        }
        let pages = s.page_count();
        let header = s.header_pages();
        let bits = |i: usize| s.page_used(i);
        for i in 0..header {
            if !bits(i) || s.map_get(i) != PAGE_FREE {
                error(format_args!(
                    "segment {:p} header page {i} is not reserved\n",
                    s
                ));
            }
        }
        let (mut used, mut large_bytes, mut page) = (0usize, 0usize, header);
        while page < pages {
            let info = s.map_get(page);
            let run = match info & PAGE_KIND_MASK {
                PAGE_LARGE => {
                    let n = (info & LARGE_PAGES_MASK) as usize;
                    large_bytes += n * ZEND_MM_PAGE_SIZE;
                    n
                }
                // A freed run on the run cache: its pages stay in use, its bytes are not live.
                PAGE_CACHED => (info & LARGE_PAGES_MASK) as usize,
                PAGE_SMALL => {
                    let bin = small_bin(info).unwrap_or(usize::MAX);
                    if small_place(info, s.page_addr(page) as usize) != 0 {
                        error(format_args!(
                            "segment {:p} page {page}: run continuation without a start\n",
                            s
                        ));
                        1
                    } else if bin >= HEAP_BINS {
                        error(format_args!("segment {:p} page {page}: bad bin {bin}\n", s));
                        1
                    } else {
                        for i in 1..BINS[bin].pages as usize {
                            let cont = s.map_get((page + i).min(pages - 1));
                            let addr = s.page_addr(page + i) as usize;
                            if small_bin(cont) != Some(bin) || small_place(cont, addr) != i {
                                error(format_args!(
                                    "segment {:p} page {}: not page {i} of the run at {page}\n",
                                    s,
                                    page + i
                                ));
                            }
                        }
                        slots[bin] += BINS[bin].count as usize;
                        BINS[bin].pages as usize
                    }
                }
                _ => {
                    if bits(page) {
                        error(format_args!(
                            "segment {:p} page {page}: marked used but belongs to no run\n",
                            s
                        ));
                    }
                    page += 1;
                    continue;
                }
            };
            if run == 0 || page + run > pages {
                error(format_args!(
                    "segment {:p} page {page}: run of {run} pages overruns the segment\n",
                    s
                ));
                break;
            }
            for i in page..page + run {
                if !bits(i) {
                    error(format_args!(
                        "segment {:p} page {i}: in a run but marked free\n",
                        s
                    ));
                }
            }
            used += run;
            page += run;
        }
        let (mut longest, mut run) = (0usize, 0usize);
        for i in header..pages {
            run = if bits(i) { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        if longest != s.longest_free() as usize {
            error(format_args!(
                "segment {:p}: longest free run recorded as {} pages, found {longest}\n",
                s,
                s.longest_free()
            ));
        }
        if used + s.free_page_count() != pages - header {
            error(format_args!(
                "segment {:p}: {} free pages recorded, {} found\n",
                s,
                s.free_page_count(),
                pages - header - used
            ));
        }
        large_bytes
    }
}
