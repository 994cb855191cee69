//! Small blocks (zend_alloc.c "Small Runs"): requests up to 3072 bytes, served from bins.
//!
//! Owns the per-bin free lists and the runs behind them. A run is 1-7 pages of one bin, cut into
//! equal slots; free slots form a LIFO list per bin (the next pointer lives in the slot). A new run
//! is threaded in address order, so consecutive allocations of one bin return adjacent blocks, as
//! in PHP.
//!
//! Invariant: a slot is on `free_slots[bin]` iff it is free; its run's first page-map entry names
//! `bin`.

use super::pages::NoPages;
use super::{Heap, NO_REQUEST_ENDS, Refusal};
use crate::segment::small_entry;
use crate::sizes::{BINS, ZEND_MM_PAGE_SIZE};

/// A free slot of a small bin: the next free slot of the same bin.
#[repr(C)]
pub(super) struct FreeSlot {
    pub(super) next: *mut FreeSlot,
}

impl Heap {
    /// Pops a slot of `bin` (PHP's `zend_mm_alloc_small`).
    #[inline(always)]
    pub(super) fn alloc_small(&mut self, bin: usize) -> Result<*mut u8, Refusal> {
        let p = self.pop_free_slot(bin);
        if p.is_null() {
            return self.alloc_small_slow(bin);
        }
        Ok(p)
    }

    /// Pops the first free slot of `bin` and counts it; null if the list is empty.
    #[inline(always)]
    pub(super) fn pop_free_slot(&mut self, bin: usize) -> *mut u8 {
        self.pop_free_slot_of(bin, self.bin_size[bin] as usize)
    }

    /// [`Heap::pop_free_slot`] with the bin's size given (an immediate where `bin` is constant).
    #[inline(always)]
    pub(super) fn pop_free_slot_of(&mut self, bin: usize, bytes: usize) -> *mut u8 {
        let slot = self.free_slots[bin];
        if !slot.is_null() {
            // SAFETY: free-list slots are free slots of this heap holding the next link.
            self.free_slots[bin] = unsafe { (*slot).next };
            self.count_alloc(bytes);
        }
        slot.cast()
    }

    /// The first free slot of `bin`'s list (the one the next allocation takes); null if none.
    pub(super) fn free_slot_head(&self, bin: usize) -> *mut FreeSlot {
        self.free_slots[bin]
    }

    /// Makes `first` the head of `bin`'s free list.
    ///
    /// # Safety
    /// `first` must start a list of free slots of `bin`, linked through their first words, that
    /// holds the bin's whole list (the caller counts what it added).
    pub(super) unsafe fn set_free_slot_head(&mut self, bin: usize, first: *mut FreeSlot) {
        self.free_slots[bin] = first;
    }

    /// The slot size of `bin` in this heap.
    pub(super) fn bin_size(&self, bin: usize) -> usize {
        self.bin_size[bin] as usize
    }

    /// Pushes slot `p` back on `bin`'s list (PHP's `zend_mm_free_small`). A slot that is already
    /// the head of the list is being freed twice (the commonest double free: free, then free
    /// again): pushing it would make it its own successor, so it is left alone and false returned
    /// (the caller reports it, naming the call).
    ///
    /// # Safety
    /// `p` must start a slot of a small run of `bin` in a live segment of this heap.
    #[inline(always)]
    #[must_use]
    pub(super) unsafe fn free_small(&mut self, p: *mut u8, bin: usize) -> bool {
        // SAFETY: forwarded caller contract.
        unsafe { self.free_small_of(p, bin, self.bin_size[bin] as usize) }
    }

    /// [`Heap::free_small`] with the bin's size given (an immediate where `bin` is constant).
    ///
    /// # Safety
    /// As [`Heap::free_small`]; `bytes` is `bin`'s size.
    #[inline(always)]
    #[must_use]
    pub(super) unsafe fn free_small_of(&mut self, p: *mut u8, bin: usize, bytes: usize) -> bool {
        let slot = p.cast::<FreeSlot>();
        let head = self.free_slots[bin];
        if slot == head {
            return false;
        }
        // SAFETY: `p` is a slot of this heap's bin `bin` (caller contract): its memory is ours.
        unsafe { (*slot).next = head };
        self.free_slots[bin] = slot;
        self.count_free(bytes);
        true
    }

    /// Takes a fresh run for `bin`, threads all slots but the first onto the free list and returns
    /// the first.
    #[cold]
    #[inline(never)]
    pub(super) fn alloc_small_slow(&mut self, bin: usize) -> Result<*mut u8, Refusal> {
        // Blocks other threads freed may refill the bin: first its own remote list (taken whole),
        // then the general one.
        if self.collect_remote_bin(bin) | self.collect_remote_list() {
            let p = self.pop_free_slot(bin);
            if !p.is_null() {
                return Ok(p);
            }
        }
        let info = BINS[bin];
        let (seg, page) = match self.alloc_pages(info.pages as usize) {
            Ok(run) => run,
            Err(NoPages::Refused(refusal)) => return Err(refusal),
            // Cannot happen: every segment size leaves room for the longest bin run after
            // alignment losses (checked at compile time in `heap`).
            Err(NoPages::TooShort) => return Err(Refusal::OutOfMemory),
        };
        if NO_REQUEST_ENDS {
            self.small_run_pages += info.pages as usize;
        }
        // SAFETY: `alloc_pages` returned a run of `info.pages` pages of a live segment of ours.
        let s = unsafe { &mut *seg };
        for i in 0..info.pages as usize {
            s.map_set(
                page + i,
                small_entry(bin, i, s.page_addr(page + i) as usize),
            );
        }
        let run = s.page_addr(page);
        let size = info.size as usize;
        debug_assert!(size * info.count as usize <= info.pages as usize * ZEND_MM_PAGE_SIZE);
        // Thread slots 1..count in address order, ending the list with whatever it held (nothing:
        // the slow path runs only when the list is empty).
        let mut next = self.free_slots[bin];
        for i in (1..info.count as usize).rev() {
            let slot = run.wrapping_add(i * size).cast::<FreeSlot>();
            // SAFETY: slot i lies inside the run just taken.
            unsafe { (*slot).next = next };
            next = slot;
        }
        self.free_slots[bin] = next;
        if self.is_tracking() {
            // SAFETY: a fresh run of `bin` of this heap.
            unsafe { self.clear_stale_headers(run, bin) };
        }
        self.count_alloc(size);
        Ok(run)
    }
}
