//! Small blocks (zend_alloc.c "Small Runs"): requests up to 3072 bytes, served from bins.
//!
//! Owns the per-bin free lists and the runs behind them. A run is 1-7 pages of one bin, cut into
//! equal slots; free slots form a LIFO list per bin (the next pointer lives in the slot). A new run
//! is threaded in address order, so consecutive allocations of one bin return adjacent blocks, as
//! in PHP.
//!
//! Invariants: a slot is on `free_slots[bin]` iff it is free; its run's first page-map entry names
//! `bin`. In a heap that does not track its blocks, a handed-out slot does not hold [`FREED_MARK`]
//! in its second word unless its program wrote it there, and every free slot does, on a list since
//! its run was made or freed since (16 bytes or more). An 8-byte slot has no second word: its link
//! carries [`NARROW_LINK_TAG`] instead (see [`FreeSlot::link_for`]), on the bins' lists and on
//! their remote lists alike. The heads in `free_slots` are plain pointers. Such a heap hands out
//! no slot without its mark (see [`Heap::pop_unmarked_slot_of`]).

use core::ptr;

use super::pages::NoPages;
use super::{Heap, NO_REQUEST_ENDS, Refusal};
use crate::diagnostics::{self, BadPointer, Call};
use crate::segment::small_entry;
use crate::sizes::{BINS, HEAP_BINS, ZEND_MM_PAGE_SIZE};

/// A free slot of a small bin: the next free slot of the same bin. In an 8-byte slot the link may
/// carry [`NARROW_LINK_TAG`]: read it through [`FreeSlot::next_of`].
#[repr(C)]
pub(super) struct FreeSlot {
    pub(super) next: *mut FreeSlot,
}

/// What the top 16 bits of an 8-byte free slot's link hold (64-bit targets): the slot's free mark,
/// as [`FREED_MARK`] is the wider slots'. No user-space pointer has them set, so a link is tagged
/// and untagged without loss, and a freed slot tells itself from a live one whose program wrote
/// other bytes there; a live one whose first word happens to carry the tag costs a walk of the
/// bin's list when it is freed. It catches the 8-byte double frees the head check misses (`p`,
/// `q`, `p`).
const NARROW_LINK_TAG: usize = if usize::BITS == 64 {
    (0xF4EE_u64 << 48) as usize
} else {
    0
};
const LINK_TAG_BITS: usize = if usize::BITS == 64 {
    (0xFFFF_u64 << 48) as usize
} else {
    0
};

/// Whether `word`, an 8-byte slot's first, carries [`NARROW_LINK_TAG`].
#[inline(always)]
const fn tagged(word: usize) -> bool {
    NARROW_LINK_TAG != 0 && word & LINK_TAG_BITS == NARROW_LINK_TAG
}

/// Whether `word`, the first of a free 8-byte slot on a list, carries the slot's mark (every one
/// does where links have room for the tag).
#[inline(always)]
const fn has_narrow_mark(word: usize) -> bool {
    NARROW_LINK_TAG == 0 || tagged(word)
}

/// The slot a tagged link names.
#[inline(always)]
fn untag(link: *mut FreeSlot) -> *mut FreeSlot {
    link.map_addr(|a| a & !LINK_TAG_BITS)
}

/// Whether `bytes`-byte slots have no room for [`FREED_MARK`] beside their link (the 8-byte bin on
/// 64-bit targets): their link carries [`NARROW_LINK_TAG`].
#[inline(always)]
const fn narrow(bytes: usize) -> bool {
    bytes <= size_of::<usize>()
}

impl FreeSlot {
    /// The link a freed `bytes`-byte slot holds to `next`: tagged for a narrow slot whose `next`
    /// has room for the tag.
    #[inline(always)]
    pub(super) fn link_for(next: *mut FreeSlot, bytes: usize) -> *mut FreeSlot {
        if narrow(bytes) && next.addr() & LINK_TAG_BITS == 0 {
            next.map_addr(|a| a | NARROW_LINK_TAG)
        } else {
            next
        }
    }

    /// The next slot after `slot` on its list: its link without the tag.
    ///
    /// # Safety
    /// `slot` is a free slot of this heap's (its first word is its link).
    #[inline(always)]
    pub(super) unsafe fn next_of(slot: *mut FreeSlot) -> *mut FreeSlot {
        // SAFETY: caller contract.
        let link = unsafe { (*slot).next };
        if tagged(link.addr()) {
            untag(link)
        } else {
            link
        }
    }
}

/// Whether the `bytes`-byte slot at `p` carries its free mark: [`FREED_MARK`] in its second word,
/// or for a narrow slot [`NARROW_LINK_TAG`] in its link. Either may be a live block's own bytes:
/// the bin's list tells. Never under Miri (see [`is_marked`]).
///
/// # Safety
/// `p` starts a slot of `bytes` bytes of this heap's.
#[inline(always)]
pub(super) unsafe fn slot_marked(p: *mut u8, bytes: usize) -> bool {
    if narrow(bytes) {
        // SAFETY: the slot's only word (caller contract); see `is_marked` for Miri.
        !cfg!(miri) && tagged(unsafe { p.cast::<usize>().read() })
    } else {
        // SAFETY: a word of the slot (caller contract).
        unsafe { is_marked(mark_of(p, bytes)) }
    }
}

/// What the second word of a freed slot holds (glibc's tcache key, in spirit): every free of a heap
/// that does not track its blocks writes it, every allocation of one clears it, so a block whose
/// second word holds it when freed is on a free list already unless its program wrote exactly this
/// there; the bin's lists tell which. It catches the double frees the head check misses (`p`, `q`,
/// `p`), which otherwise hand one block out twice. A kernel address, so no link or pointer into
/// the heap looks like it, and a sign-extended 32-bit immediate, so the check and the write are
/// one instruction each. (An 8-byte slot's only word is its link, which carries
/// [`NARROW_LINK_TAG`] instead.)
pub(super) const FREED_MARK: usize = 0xFFFF_FFFF_F4EE_D0FF;
const _: () = assert!(FREED_MARK as i64 == FREED_MARK as u32 as i32 as i64);

/// No slot lies below this address: no system maps the first page of the address space (Linux
/// refuses it below `vm.mmap_min_addr`, 4096 or more). A list head below it is no slot but a
/// small number written over a freed block's link (a count, a length, a flag: a program writing
/// a field of a block it freed). Popping it would read that address, a fault; the pops decline
/// it as they decline a head without its mark, with the test they make for an empty list.
pub(super) const NO_SLOT_BELOW: usize = 4096;

/// The word of the `bytes`-byte slot at `p` where a freed slot holds [`FREED_MARK`]: its second,
/// beside the link in its first, so a free and an allocation touch one cache line of the block.
/// (The last word, where the mark was before, lies a line further in most blocks over 64 bytes: a
/// miss per free and per allocation where the program had not touched the block's end: a server
/// loop, `larson` under the preload library, took 23% more CPU time.) An 8-byte slot's only word
/// is its link.
#[inline(always)]
pub(super) fn mark_of(p: *mut u8, bytes: usize) -> *mut usize {
    let offset = if bytes > size_of::<usize>() {
        size_of::<usize>()
    } else {
        0
    };
    p.wrapping_add(offset).cast()
}

/// Clears the mark of the slot at `slot` (its second word, see [`mark_of`]) if it holds
/// [`FREED_MARK`] and says whether it did; leaves it as it is otherwise. On x86-64 the test and
/// the clear are one instruction, an `xor` with the mark's immediate (compiled from Rust, a copy
/// of the word is kept for the other case: three more).
///
/// # Safety
/// `slot` must be valid for reads and writes of two words.
#[inline(always)]
unsafe fn take_wide_mark(slot: *mut u8) -> bool {
    const _: () = assert!(size_of::<usize>() == 8 || !cfg!(target_arch = "x86_64"));
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: the slot's second word is valid for reads and writes (caller contract); the `xor`
    // touches it alone and the flags, and the label undoes it.
    unsafe {
        core::arch::asm!(
            "xor qword ptr [{slot} + 8], {key}",
            "jne {other}",
            slot = in(reg) slot,
            key = const FREED_MARK as i64,
            other = label {
                let mark = mark_of(slot, 2 * size_of::<usize>());
                // SAFETY: as above: the word back as it was.
                unsafe { mark.write(mark.read() ^ FREED_MARK) };
                return false;
            },
            options(nostack),
        );
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    // SAFETY: as above.
    unsafe {
        let mark = mark_of(slot, 2 * size_of::<usize>());
        if mark.read() != FREED_MARK {
            return false;
        }
        mark.write(0);
        true
    }
}

/// Whether the word at `mark` holds [`FREED_MARK`]. The word is a block's second one: bytes its
/// program may never have written, which Rust's abstract machine calls uninitialized (a reallocation
/// copies them as they are). The hardware reads them as whatever they are, but Miri rejects the
/// read, so under Miri no block reads as marked and the double-free checks rest on the head check
/// and the walks (the native tests cover the mark).
///
/// # Safety
/// `mark` must be a word of a slot of this heap's.
#[inline(always)]
pub(super) unsafe fn is_marked(mark: *const usize) -> bool {
    // SAFETY: a word of a slot of ours (caller contract).
    !cfg!(miri) && unsafe { mark.read() } == FREED_MARK
}

impl Heap {
    /// Pops a slot of `bin` (PHP's `zend_mm_alloc_small`).
    #[inline(always)]
    pub(super) fn alloc_small(&mut self, bin: usize) -> Result<*mut u8, Refusal> {
        let p = self.pop_slot_to_hand_out(bin);
        if p.is_null() {
            return self.alloc_small_slow(bin);
        }
        Ok(p)
    }

    /// Pops a slot of `bin` to hand out on a slow path (any heap): its mark cleared unless the heap
    /// tracks its blocks (whose headers say what is live, and whose freed bytes hold poison). A
    /// list head without the mark ends the process (see [`Heap::pop_unmarked_slot_of`]).
    fn pop_slot_to_hand_out(&mut self, bin: usize) -> *mut u8 {
        if self.tracking {
            return self.pop_free_slot(bin);
        }
        let p = self.pop_unmarked_slot_of(bin, self.bin_size[bin] as usize);
        if p.is_null() && !self.free_slots[bin].is_null() {
            self.report_unmarked_head(bin);
        }
        p
    }

    /// Pops the first free slot of `bin` in a heap that does not track its blocks, clearing its
    /// mark so the block reads as live; null if the list is empty, and null with the list left
    /// as it is if its head carries no mark or is below [`NO_SLOT_BELOW`]. Every slot on such a
    /// list carries one, so a head without it is memory that is no free block of this heap's: a
    /// freed block written over (its mark, or its predecessor's link), or a link made to point
    /// elsewhere, the first step of making an allocation return chosen memory. The fast paths
    /// decline it and the slow path reports it, before the block is handed out.
    #[inline(always)]
    pub(super) fn pop_unmarked_slot_of(&mut self, bin: usize, bytes: usize) -> *mut u8 {
        if !narrow(bytes) {
            // SAFETY: `bytes` is not narrow: a bin above the first, whose slots keep their mark
            // in their second word.
            return unsafe { self.pop_unmarked_wide_slot_of(bin, bytes) };
        }
        let slot = self.free_slots[bin];
        // An empty list, or a small number where a link was.
        if slot.addr() < NO_SLOT_BELOW {
            return ptr::null_mut();
        }
        // SAFETY: the list's head, a slot of ours unless the list was written over (then the
        // memory it names is read as PHP's lists would read it).
        let link = unsafe { (*slot).next };
        if !has_narrow_mark(link.addr()) {
            return ptr::null_mut();
        }
        self.free_slots[bin] = untag(link);
        self.count_alloc(bytes);
        // SAFETY: a slot of `bytes` bytes just handed out: its memory is ours.
        unsafe { mark_of(slot.cast(), bytes).write(0) };
        slot.cast()
    }

    /// [`Heap::pop_unmarked_slot_of`] for the allocation fast paths, which never pop the 8-byte
    /// bin: every slot they hand out has its mark in its second word, with no test of the size.
    /// `bin` may name a slot past the last bin, whose list is always empty.
    ///
    /// # Safety
    /// `bin` is not bin 0; `bytes` is its size.
    #[inline(always)]
    pub(super) unsafe fn pop_unmarked_wide_slot_of(&mut self, bin: usize, bytes: usize) -> *mut u8 {
        let slot = self.free_slots[bin];
        // An empty list, or a small number where a link was.
        if slot.addr() < NO_SLOT_BELOW {
            return ptr::null_mut();
        }
        // SAFETY: the list's head, a slot of ours of 16 bytes or more (caller contract) unless
        // the list was written over (then the memory it names is read as PHP's lists would read
        // it).
        unsafe {
            if !take_wide_mark(slot.cast()) {
                return ptr::null_mut();
            }
            self.free_slots[bin] = (*slot).next;
        }
        self.count_alloc(bytes);
        slot.cast()
    }

    /// Ends the process: the head of `bin`'s free list carries no free mark
    /// (see [`Heap::pop_unmarked_slot_of`]).
    #[cold]
    #[inline(never)]
    fn report_unmarked_head(&self, bin: usize) -> ! {
        diagnostics::heap_corrupted(format_args!(
            "the free list of {}-byte blocks leads to {:#x}, which is no freed block of that size \
             (a block was written after it was freed, or past its end)",
            self.bin_size[bin],
            self.free_slots[bin].addr()
        ))
    }

    /// Pops the first free slot of `bin` and counts it; null if the list is empty.
    #[inline(always)]
    pub(super) fn pop_free_slot(&mut self, bin: usize) -> *mut u8 {
        self.pop_free_slot_of(bin, self.bin_size[bin] as usize)
    }

    /// [`Heap::pop_free_slot`] with the bin's size given (an immediate where `bin` is constant).
    #[inline(always)]
    pub(super) fn pop_free_slot_of(&mut self, bin: usize, bytes: usize) -> *mut u8 {
        if !narrow(bytes) {
            return self.pop_wide_free_slot_of(bin, bytes);
        }
        let slot = self.free_slots[bin];
        if !slot.is_null() {
            // SAFETY: free-list slots are free slots of this heap holding the next link.
            self.free_slots[bin] = unsafe { FreeSlot::next_of(slot) };
            self.count_alloc(bytes);
        }
        slot.cast()
    }

    /// [`Heap::pop_free_slot_of`] for a bin whose links carry no tag (`bytes` is not narrow, or
    /// `bin` names a slot past the last bin, whose list is empty).
    #[inline(always)]
    fn pop_wide_free_slot_of(&mut self, bin: usize, bytes: usize) -> *mut u8 {
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

    /// Writes [`FREED_MARK`] into every slot on the bins' free lists (tracking just went off: a
    /// tracking heap's free slots do not carry it).
    pub(super) fn mark_all_free_slots(&mut self) {
        for bin in 0..HEAP_BINS {
            let bytes = self.bin_size(bin);
            // An 8-byte slot's mark would be its link.
            if bytes < 2 * size_of::<usize>() {
                continue;
            }
            for slot in self.free_list(bin) {
                // SAFETY: a free slot of this heap's bin `bin`; its second word is not its link.
                unsafe { mark_of(slot.cast(), bytes).write(FREED_MARK) };
            }
        }
    }

    /// The slot size of `bin` in this heap.
    pub(super) fn bin_size(&self, bin: usize) -> usize {
        self.bin_size[bin] as usize
    }

    /// Pushes slot `p` back on `bin`'s list (PHP's `zend_mm_free_small`). A slot that is already
    /// the head of the list is being freed twice (the commonest double free: free, then free
    /// again): pushing it would make it its own successor, so it is left alone and false returned
    /// (the caller reports it, naming the call). For a tracking heap, whose blocks (header and
    /// guard included) are never 8-byte slots: the link carries no tag ([`Heap::free_small_of`]
    /// tags it).
    ///
    /// # Safety
    /// `p` must start a slot of a small run of `bin` in a live segment of this heap.
    #[inline(always)]
    #[must_use]
    pub(super) unsafe fn free_small(&mut self, p: *mut u8, bin: usize) -> bool {
        // SAFETY: forwarded caller contract.
        unsafe { self.push_free_slot(p, bin, self.bin_size[bin] as usize, false) }
    }

    /// [`Heap::free_small_of`] for a heap that does not track its blocks and a bin other than the
    /// 8-byte one, with the [`FREED_MARK`] check: false, with nothing done, for a block whose
    /// second word holds the mark (the slow path looks whether it is on a free list), and with
    /// `check_head` for the block at the head of its bin's list: freed last, even if a write after
    /// that free went over its mark (the fast paths ask for it only under Miri, where no block
    /// reads as marked: natively the allocation that pops such a block twice reports it).
    ///
    /// # Safety
    /// As [`Heap::free_small`]; `bin` is not bin 0 and `bytes` is its size.
    #[inline(always)]
    #[must_use]
    pub(super) unsafe fn free_small_marked_of(
        &mut self,
        p: *mut u8,
        bin: usize,
        bytes: usize,
        check_head: bool,
    ) -> bool {
        // SAFETY: every bin but the first has slots of 16 bytes or more (caller contract).
        unsafe { core::hint::assert_unchecked(bin != 0 && bytes > size_of::<usize>()) };
        let slot = p.cast::<FreeSlot>();
        let mark = mark_of(p, bytes);
        let head = self.free_slots[bin];
        // SAFETY: `p` starts a slot of `bytes` bytes of this heap (caller contract).
        unsafe {
            if is_marked(mark) || (check_head && slot == head) {
                return false;
            }
            mark.write(FREED_MARK);
            (*slot).next = head;
        }
        self.free_slots[bin] = slot;
        self.count_free(bytes);
        true
    }

    /// [`Heap::free_small_marked_of`] for the 8-byte bin: false, with nothing done, for a slot
    /// whose link carries the tag (the slow path looks whether it is on a free list) or that
    /// heads the bin's list.
    ///
    /// # Safety
    /// `p` starts a slot of the 8-byte bin of this heap, which does not track its blocks.
    #[inline(always)]
    #[must_use]
    pub(super) unsafe fn free_narrow_marked(&mut self, p: *mut u8) -> bool {
        let bytes = BINS[0].size as usize;
        // SAFETY: a slot of `bytes` bytes of this heap (caller contract).
        if unsafe { slot_marked(p, bytes) } {
            return false;
        }
        // SAFETY: as above.
        unsafe { self.free_small_of(p, 0, bytes) }
    }

    /// Whether the small block `p` of `bin` carries [`FREED_MARK`] (a heap that does not track
    /// its blocks): it may be free.
    pub(super) fn marked_free(&self, p: *mut u8, bin: usize) -> bool {
        // SAFETY: `p` starts a slot of `bin` of this heap (callers: a located block).
        !self.tracking && unsafe { slot_marked(p, self.bin_size[bin] as usize) }
    }

    /// [`Heap::marked_free`] for a block the caller knows is not of the 8-byte bin: every other
    /// bin keeps the mark in the same place.
    ///
    /// # Safety
    /// `p` starts a slot of a bin other than bin 0 of this heap.
    #[inline(always)]
    pub(super) unsafe fn marked_free_wide(&self, p: *mut u8) -> bool {
        // SAFETY: a slot of 16 bytes or more of this heap (caller contract).
        !self.tracking && unsafe { is_marked(mark_of(p, 2 * size_of::<usize>())) }
    }

    /// Frees the small block `p` of `bin` on the slow path, reporting it as handed to `call` if it
    /// is free already: at the head of its bin's list, or (its second word holding [`FREED_MARK`])
    /// anywhere on that list or on the bin's remote lists.
    ///
    /// # Safety
    /// As [`Heap::free_small`].
    pub(super) unsafe fn free_small_checked(&mut self, p: *mut u8, bin: usize, call: &Call) {
        if self.tracking {
            // Tracked blocks carry their own state (their header's magic).
            // SAFETY: forwarded caller contract.
            if unsafe { !self.free_small(p, bin) } {
                diagnostics::bad_pointer(call, p, BadPointer::DoubleFree);
            }
            return;
        }
        let bytes = self.bin_size[bin] as usize;
        let mark = mark_of(p, bytes);
        if self.free_slots[bin].cast() == p {
            diagnostics::bad_pointer(call, p, BadPointer::DoubleFree);
        }
        // SAFETY: `p` starts a slot of `bytes` bytes of this heap (caller contract).
        if unsafe { slot_marked(p, bytes) } {
            // Blocks other threads freed join the lists first: `p` may be among them.
            self.collect_remote_bin(bin);
            self.collect_remote_list();
            if self.on_free_list(bin, p) {
                diagnostics::bad_pointer(call, p, BadPointer::OnFreeList);
            }
            // The program wrote the mark's value there itself.
        }
        // SAFETY: as above.
        unsafe { mark.write(FREED_MARK) };
        // SAFETY: forwarded caller contract.
        if unsafe { !self.free_small_of(p, bin, bytes) } {
            diagnostics::bad_pointer(call, p, BadPointer::DoubleFree);
        }
    }

    /// [`Heap::free_small`] with the bin's size given (an immediate where `bin` is constant).
    ///
    /// # Safety
    /// As [`Heap::free_small`]; `bytes` is `bin`'s size.
    #[inline(always)]
    #[must_use]
    pub(super) unsafe fn free_small_of(&mut self, p: *mut u8, bin: usize, bytes: usize) -> bool {
        // SAFETY: forwarded caller contract.
        unsafe { self.push_free_slot(p, bin, bytes, narrow(bytes)) }
    }

    /// Pushes `p` on `bin`'s list unless it heads it already (false), its link tagged if `tag`.
    ///
    /// # Safety
    /// As [`Heap::free_small_of`].
    #[inline(always)]
    unsafe fn push_free_slot(&mut self, p: *mut u8, bin: usize, bytes: usize, tag: bool) -> bool {
        let slot = p.cast::<FreeSlot>();
        let head = self.free_slots[bin];
        if slot == head {
            return false;
        }
        let link = if tag {
            FreeSlot::link_for(head, bytes)
        } else {
            head
        };
        // SAFETY: `p` is a slot of this heap's bin `bin` (caller contract): its memory is ours.
        unsafe { (*slot).next = link };
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
            let p = self.pop_slot_to_hand_out(bin);
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
        // the slow path runs only when the list is empty). Each carries the mark as a freed slot
        // does, so a free of a slot never handed out is caught as a double free (it is on the
        // list), and the constant-size free may skip the head check.
        let marks = !self.is_tracking();
        let mut next = self.free_slots[bin];
        for i in (1..info.count as usize).rev() {
            let slot = run.wrapping_add(i * size);
            // SAFETY: slot i lies inside the run just taken. The mark goes first: an 8-byte
            // slot's mark is its link.
            unsafe {
                if marks {
                    mark_of(slot, size).write(FREED_MARK);
                }
                (*slot.cast::<FreeSlot>()).next = if marks {
                    FreeSlot::link_for(next, size)
                } else {
                    next
                };
            }
            next = slot.cast();
        }
        self.free_slots[bin] = next;
        if self.is_tracking() {
            // SAFETY: a fresh run of `bin` of this heap.
            unsafe { self.clear_stale_headers(run, bin) };
        } else {
            // SAFETY: the run's first slot, ours; its pages may hold a mark from an earlier use.
            unsafe { mark_of(run, size).write(0) };
        }
        self.count_alloc(size);
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{same_blocks, test_heap};
    use super::*;

    fn errors(h: &Heap) -> usize {
        h.check_all(&mut |args| eprint!("{args}"))
    }

    #[test]
    fn a_freed_eight_byte_slot_carries_its_mark_in_its_link() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let blocks: Vec<*mut u8> = (0..3).map(|_| h().alloc(8).unwrap()).collect();
        // SAFETY: slots of the 8-byte bin of this heap, live or freed.
        let marked = |p: *mut u8| unsafe { slot_marked(p, 8) };
        assert!(blocks.iter().all(|&p| !marked(p)), "handed out unmarked");
        h().free(blocks[0]);
        h().free(blocks[1]);
        // Under Miri no slot reads as marked (see `is_marked`).
        assert_eq!(marked(blocks[0]), !cfg!(miri), "freed, not at the head");
        assert_eq!(marked(blocks[1]), !cfg!(miri), "freed, at the head");
        assert!(!marked(blocks[2]));
        assert!(h().on_free_list(0, blocks[0]) && h().on_free_list(0, blocks[1]));
        // The list still hands them back in LIFO order, as plain pointers.
        assert_eq!(h().alloc(8).unwrap(), blocks[1]);
        assert_eq!(h().alloc(8).unwrap(), blocks[0]);
        assert!(
            !marked(blocks[0]) && !marked(blocks[1]),
            "unmarked when handed out again"
        );
        assert_eq!(errors(h()), 0);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn live_eight_byte_blocks_holding_the_tag_are_freed_as_live() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let blocks: Vec<*mut u8> = (0..600).map(|_| h().alloc(8).unwrap()).collect();
        for &p in &blocks {
            // A program's bytes that read as a tagged link (to a slot of the list, even).
            // SAFETY: a live 8-byte block.
            unsafe { p.cast::<usize>().write(NARROW_LINK_TAG | blocks[0].addr()) };
        }
        for &p in blocks.iter().rev() {
            h().free(p);
        }
        assert_eq!(errors(h()), 0);
        let again: Vec<*mut u8> = (0..600).map(|_| h().alloc(8).unwrap()).collect();
        assert_eq!(
            again, blocks,
            "every freed block comes back once, in LIFO order"
        );
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn gc_keeps_the_eight_byte_list_whole_and_marked() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let per_run = BINS[0].count as usize;
        // Three runs' worth; then all of the middle run freed (gc takes it back) and every other
        // block of the first and last (gc keeps them, relinked around the middle run's).
        let blocks: Vec<*mut u8> = (0..3 * per_run).map(|_| h().alloc(8).unwrap()).collect();
        let freed: Vec<*mut u8> = blocks
            .iter()
            .enumerate()
            .filter(|&(i, _)| (per_run..2 * per_run).contains(&i) || i % 2 == 0)
            .map(|(_, &p)| p)
            .collect();
        for &p in &freed {
            h().free(p);
        }
        let real = h().usage(true);
        h().gc();
        assert!(h().usage(true) <= real);
        assert_eq!(errors(h()), 0);
        let kept: Vec<*mut u8> = freed
            .iter()
            .copied()
            .filter(|&p| !(blocks[per_run]..=blocks[2 * per_run - 1]).contains(&p))
            .collect();
        for &p in &kept {
            assert!(h().on_free_list(0, p));
            // SAFETY: a free slot of the 8-byte bin.
            let marked = unsafe { slot_marked(p, 8) };
            assert_eq!(marked, !cfg!(miri), "still marked after gc");
        }
        let again: Vec<*mut u8> = (0..kept.len()).map(|_| h().alloc(8).unwrap()).collect();
        assert!(same_blocks(&again, &kept), "the kept free slots, each once");
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_list_head_without_its_mark_is_never_handed_out() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let bin = 5;
        let bytes = BINS[bin].size as usize;
        let (a, b) = (h().alloc(bytes).unwrap(), h().alloc(bytes).unwrap());
        h().free(a);
        h().free(b);
        // A write after free over b's second word (where its mark is). Raw accesses only: the
        // heap reads the word too.
        let mark = b.wrapping_add(8).cast::<usize>();
        // SAFETY: b is a free slot of ours; the word is restored below.
        unsafe { mark.write(0x6f77_206f_6c6c_6568) };
        // SAFETY: `bin` is not bin 0.
        assert!(unsafe { h().alloc_small_fast_in(bin) }.is_null());
        assert!(h().alloc_small_fast(bytes).is_null());
        assert!(h().alloc_bin_fast(bin).is_null());
        assert_eq!(h().free_slot_head(bin).cast(), b, "the list as it was");
        // SAFETY: as above.
        unsafe {
            assert_eq!(mark.read(), 0x6f77_206f_6c6c_6568, "the word as it was");
            mark.write(FREED_MARK);
        }
        assert_eq!(h().alloc_small_fast(bytes), b);
        assert_eq!(h().alloc_bin_fast(bin), a);
        assert_eq!(errors(h()), 0);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_link_written_over_is_caught_before_the_memory_it_names_is_handed_out() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        // Memory a program wants an allocation to return: zeroed, so it carries no mark.
        let mut target = [0usize; 8];
        let target = target.as_mut_ptr().cast::<u8>();
        for (bin, bytes) in [(5, BINS[5].size as usize), (0, 8)] {
            let (a, b) = (h().alloc(bytes).unwrap(), h().alloc(bytes).unwrap());
            h().free(a);
            h().free(b);
            // SAFETY: b is a free slot of ours: its link, made to name `target`.
            unsafe { b.cast::<*mut u8>().write(target) };
            if bin != 0 {
                // The wide slot's mark is intact: b goes out, then the list ends at `target`.
                assert_eq!(h().alloc_bin_fast(bin), b);
                assert_eq!(h().free_slot_head(bin).cast(), target);
            } else {
                // The narrow slot's link lost its tag: b itself reads as no free slot.
                assert_eq!(h().free_slot_head(bin).cast(), b);
            }
            assert!(h().alloc_bin_fast(bin).is_null(), "bin {bin}");
            // SAFETY: `bin` is 5, not bin 0, where it is asked.
            assert!(bin == 0 || unsafe { h().alloc_small_fast_in(bin) }.is_null());
            assert!(h().alloc_small_fast(bytes).is_null() || bin == 0);
            // SAFETY: a zeroed array of ours.
            assert!(unsafe { (0..8).all(|i| target.cast::<usize>().add(i).read() == 0) });
            // Repaired, so the heap can end: the list as it was before the write.
            let head = if bin == 0 { b } else { a };
            // SAFETY: the list's heads are ours to set; `a` (and b) are free slots of `bin`.
            unsafe {
                if bin == 0 {
                    b.cast::<*mut FreeSlot>()
                        .write(FreeSlot::link_for(a.cast(), bytes));
                }
                h().set_free_slot_head(bin, head.cast());
            }
            assert_eq!(errors(h()), 0);
        }
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_link_written_with_a_small_number_is_never_followed() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let (bin, bytes) = (5, BINS[5].size as usize);
        let (a, b) = (h().alloc(bytes).unwrap(), h().alloc(bytes).unwrap());
        h().free(a);
        h().free(b);
        // A count stored into the first field of a freed block: its mark stays.
        // SAFETY: b is a free slot of ours.
        unsafe { b.cast::<usize>().write(17) };
        assert_eq!(h().alloc_bin_fast(bin), b);
        assert_eq!(h().free_slot_head(bin).addr(), 17);
        // Every fast pop declines the number without reading memory there.
        assert!(h().alloc_bin_fast(bin).is_null());
        // SAFETY: `bin` is not bin 0.
        assert!(unsafe { h().alloc_small_fast_in(bin) }.is_null());
        assert!(h().alloc_small_fast(bytes).is_null());
        assert_eq!(h().free_slot_head(bin).addr(), 17, "the list as it was");
        // Repaired, so the heap can end: `a` is still a free slot of `bin`.
        // SAFETY: the list's heads are ours to set.
        unsafe { h().set_free_slot_head(bin, a.cast()) };
        h().free(b);
        assert_eq!(errors(h()), 0);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }
}
