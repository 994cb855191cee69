//! The fast paths: small allocations and frees, and reallocations that keep their block, served
//! with no lookup beyond the heap's table of aligned segments.
//!
//! Owns that table (`fast_segments`), the empty segment its free entries point at, and the
//! sentinel heap a thread without a usable heap sees. The table serves heaps with the default
//! segment size (PHP's 2 MiB chunk) only, so a pointer's entry is found with constant shifts and
//! masks, as PHP finds its chunk; a heap with other segments keeps its table empty and every
//! fast path declines for it (its slow paths serve everything). No error can happen here: null or false
//! sends the caller to the slow path, which handles everything (and the sentinel makes every fast
//! path decline).

use core::cell::UnsafeCell;
use core::ptr;

use super::Heap;
use crate::segment::{
    LARGE_PAGES_MASK, MAP_OFFSET, PAGE_CLASS_SHIFT, PAGE_KIND_MASK, PAGE_LARGE, SMALL_CLASS_BASE,
    Segment, small_bin, starts_slot_of, starts_wide_slot,
};
use crate::sizes;
use crate::sizes::{
    BIN_SLOTS, FAST_SIZE_TO_BIN, FAST_TABLE_SKIPS_BIN_0, PAGE_SHIFT, ZEND_MM_PAGE_SIZE,
    ZEND_MM_SEG_SIZE, is_small, keeps_bin,
};
use crate::storage::Storage;

/// Entries of the fast table: segment numbers modulo this.
pub(super) const FAST_SEGMENTS: usize = 64;
/// The segments the fast table serves: the default size.
const FAST_SEGMENT_SIZE: usize = ZEND_MM_SEG_SIZE;
const FAST_SEGMENT_SHIFT: u32 = FAST_SEGMENT_SIZE.trailing_zeros();
const _: () = assert!(FAST_SEGMENT_SIZE.is_power_of_two() && FAST_SEGMENTS.is_power_of_two());

/// Bytes of a default segment's header the fast path may read: up to the end of its page map.
const NO_SEGMENT_BYTES: usize = MAP_OFFSET + 4 * (FAST_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE);

/// What an empty fast-table entry points at: zeroed memory as large as a default segment's header,
/// so the fast path may read "its" page map (all free pages, so the fast path declines) without a
/// null check. In `.bss`: it costs no memory.
#[repr(C, align(64))]
struct NoSegment(UnsafeCell<[u8; NO_SEGMENT_BYTES]>);

// SAFETY: never written; read as zeroes by any thread.
unsafe impl Sync for NoSegment {}

static NO_SEGMENT: NoSegment = NoSegment(UnsafeCell::new([0; NO_SEGMENT_BYTES]));

pub(super) fn no_segment() -> *mut Segment {
    NO_SEGMENT.0.get().cast()
}

/// The heap the fast paths of a thread without a usable heap see: no free slot in any bin and no
/// segment (its segment size is 0), so every fast path declines and the slow path decides.
#[repr(transparent)]
pub struct SentinelHeap(UnsafeCell<Heap>);

// SAFETY: the fast paths only read the sentinel, and every read declines; nothing writes it.
unsafe impl Sync for SentinelHeap {}

impl SentinelHeap {
    pub const fn get(&self) -> *mut Heap {
        self.0.get()
    }
}

pub static SENTINEL: SentinelHeap = SentinelHeap(UnsafeCell::new(Heap::blank(
    NO_SEGMENT.0.get().cast(),
    0,
    Storage::NONE,
)));

impl Heap {
    /// Pops a free slot for `size` bytes if `size` is small, above 8 bytes, and its bin has one.
    /// The 8-byte bin is the slow path's: its slots have no room for a free mark beside their
    /// link, and every other bin's mark is in the same place (see `small::mark_of`).
    #[inline(always)]
    pub fn alloc_small_fast(&mut self, size: usize) -> *mut u8 {
        if !is_small(size) || (!FAST_TABLE_SKIPS_BIN_0 && size <= sizes::BIN_SIZE[0]) {
            return ptr::null_mut();
        }
        // The 8-byte bin's sizes name a slot that never holds a block, where there is one.
        let bin = FAST_SIZE_TO_BIN[size] as usize;
        // SAFETY: the table's entries are bins or that slot, all below `BIN_SLOTS`.
        unsafe { core::hint::assert_unchecked(bin < BIN_SLOTS) };
        // SAFETY: not bin 0: the table names no other for these sizes.
        unsafe { self.pop_unmarked_wide_slot_of(bin, self.bin_size[bin] as usize) }
    }

    /// Pops a free slot of `bin`, a bin number from a size table, if it has one (the malloc fast
    /// path). Masked into the slot arrays, whose entries past the last bin stay empty, so it needs
    /// no bounds check.
    ///
    /// # Safety
    /// `bin` (masked) is not bin 0, whose slots the fast paths leave to the slow ones.
    #[inline(always)]
    pub unsafe fn alloc_small_fast_in(&mut self, bin: usize) -> *mut u8 {
        let bin = bin & (BIN_SLOTS - 1);
        // SAFETY: not bin 0 (caller contract).
        unsafe { self.pop_unmarked_wide_slot_of(bin, self.bin_size[bin] as usize) }
    }

    /// Pops a free slot of `bin` if it has one (the size-specialised entry points' fast path).
    #[inline(always)]
    pub fn alloc_bin_fast(&mut self, bin: usize) -> *mut u8 {
        self.pop_unmarked_slot_of(bin, sizes::BIN_SIZE[bin])
    }

    /// The fast-table entry for the default-sized segment containing `addr`.
    #[inline(always)]
    fn fast_index(addr: usize) -> usize {
        (addr >> FAST_SEGMENT_SHIFT) & (FAST_SEGMENTS - 1)
    }

    /// The segment, page and page-map entry of `p` if it lies in one of this heap's aligned
    /// segments (the fast table), without the region map.
    #[inline(always)]
    fn fast_lookup(&self, p: *mut u8) -> Option<(*mut Segment, usize, u32)> {
        let offset = p.addr() & (FAST_SEGMENT_SIZE - 1);
        // The segment `p` would lie in, made from `p` rather than from the table: the read of its
        // page map then waits for `p` only, and the CPU issues it beside the table's load (behind
        // the compare's predicted branch), as PHP's free masks the address. The compare is for
        // equality, so what is read is a segment of this heap, or the empty segment (zeroes) in
        // the one case an empty entry matches: the empty segment starting a 2 MiB boundary and
        // `p` pointing into it.
        let seg = p.wrapping_sub(offset);
        if self.fast_segments[Self::fast_index(p.addr())].addr() != seg.addr() {
            return None;
        }
        // Compared as a page number (not a byte offset), so the map entry's address is one scaled
        // index.
        let page = offset >> PAGE_SHIFT;
        // SAFETY: `seg` is a live default-sized segment of this heap aligned to its size (the
        // table's entry, at the same address), or the empty segment; `page` is below a default
        // segment's page count, so the entry is inside its map (the empty segment's zeroes cover
        // that much).
        let info = unsafe { seg.add(MAP_OFFSET).cast::<u32>().add(page).read() };
        Some((seg.cast(), page, info))
    }

    /// The segment of the fast table that `p` lies in, if any (a live segment of this heap).
    #[inline(always)]
    pub(super) fn fast_segment_of(&self, p: *const u8) -> Option<*mut Segment> {
        let seg = self.fast_segments[Self::fast_index(p.addr())];
        let inside = p.addr().wrapping_sub(seg.addr()) < FAST_SEGMENT_SIZE;
        (inside && seg != no_segment()).then_some(seg)
    }

    /// Whether `p` lies in one of this heap's aligned default segments (the fast table): then it
    /// is this heap's, told without the region map.
    pub fn in_fast_segment(&self, p: *const u8) -> bool {
        self.fast_segment_of(p).is_some()
    }

    /// Frees `p` if it is a small block in one of this heap's aligned segments, of a bin above the
    /// 8-byte one; false otherwise (including pointers that do not start a slot, and a slot freed
    /// already: marked, or the last one freed in its bin; the slow path reports them).
    #[inline(always)]
    pub fn free_small_fast(&mut self, p: *mut u8) -> bool {
        let Some((_, _, info)) = self.fast_lookup(p) else {
            return false;
        };
        // The slot check fails for every page that is not part of a small run, and for the
        // 8-byte bin's.
        if !starts_wide_slot(p, info) {
            return false;
        }
        let bin = (info >> PAGE_CLASS_SHIFT) as usize - SMALL_CLASS_BASE;
        // SAFETY: only the classes of small runs of bins 1 and up pass the check; bins are below 32.
        unsafe { core::hint::assert_unchecked(bin != 0 && bin < BIN_SLOTS) };
        // The mark says whether the block is free already; the compare with the list's head adds
        // only a block freed last whose mark a write after free went over, which the allocation
        // that pops it a second time reports (its mark cleared by the first), so natively it is
        // left out (two instructions). Under Miri, where no block reads as marked, it stays.
        let check_head = cfg!(miri);
        // SAFETY: `p` starts a slot of bin `bin` (not bin 0) in a live segment of this heap
        // (checked above). A double free declines: the slow path reports it with the caller's
        // location.
        unsafe { self.free_small_marked_of(p, bin, self.bin_size[bin] as usize, check_head) }
    }

    /// Frees `p` if it is a small block of `bin` in one of this heap's aligned segments; false
    /// otherwise (a block of another bin too: the slow path frees it by what it is, or reports it). The
    /// size-specialised entry points' fast path: the slot check's constants are the bin's. The
    /// general free's slow path takes it for the 8-byte bin, which its fast path leaves out.
    #[inline(always)]
    pub fn free_bin_fast(&mut self, p: *mut u8, bin: usize) -> bool {
        let Some((seg, _, info)) = self.fast_lookup(p) else {
            return false;
        };
        // Fast-table segments are aligned to their size (2 MiB).
        if !starts_slot_of(p.addr().wrapping_sub(seg.addr()), info, bin) {
            return false;
        }
        // A constant compare: `bin` is one in every caller.
        if bin == 0 {
            // SAFETY: `p` starts a slot of the 8-byte bin in a live segment of this heap (checked
            // above). A double free declines.
            return unsafe { self.free_narrow_marked(p) };
        }
        // SAFETY: `p` starts a slot of bin `bin` (not bin 0) in a live segment of this heap
        // (checked above). A double free declines, as in `free_small_fast`.
        unsafe { self.free_small_marked_of(p, bin, sizes::BIN_SIZE[bin], false) }
    }

    /// Frees `p` if it is a large block in one of this heap's aligned segments; false otherwise.
    pub fn free_large_fast(&mut self, p: *mut u8) -> bool {
        let Some((seg, page, info)) = self.fast_lookup(p) else {
            return false;
        };
        self.free_large_at(p, seg, page, info)
    }

    /// [`Heap::free_large_fast`], and for a block of the 8-byte bin (which the general free's
    /// fast path leaves out) [`Heap::free_bin_fast`], with one lookup: the general free's slow
    /// path tries them first.
    #[inline(always)]
    pub fn free_large_or_narrow_fast(&mut self, p: *mut u8) -> bool {
        let Some((seg, page, info)) = self.fast_lookup(p) else {
            return false;
        };
        if self.free_large_at(p, seg, page, info) {
            return true;
        }
        // Fast-table segments are aligned to their size (2 MiB).
        // SAFETY: when the check passes, `p` starts a slot of the 8-byte bin in a live segment
        // of this heap. A double free declines.
        starts_slot_of(p.addr().wrapping_sub(seg.addr()), info, 0)
            && unsafe { self.free_narrow_marked(p) }
    }

    /// Frees `p` if it starts the large run whose first page `page` of `seg` has map entry `info`
    /// (a fast-table lookup); false if it is no large block's start.
    #[inline(always)]
    fn free_large_at(&mut self, p: *mut u8, seg: *mut Segment, page: usize, info: u32) -> bool {
        // The segment is page aligned: `p` starts its page when it is page aligned.
        if info & PAGE_KIND_MASK != PAGE_LARGE || p.addr() % ZEND_MM_PAGE_SIZE != 0 {
            return false;
        }
        let pages = (info & LARGE_PAGES_MASK) as usize;
        // SAFETY: a large run of `pages` pages of a live segment of this heap starts at `p`.
        unsafe { self.free_large(seg, page, pages) };
        true
    }

    /// Whether `p` can stay in place at `size` bytes because its block stays the same (the same bin,
    /// or the same number of pages of a large block) and it lies in one of this heap's aligned
    /// segments: PHP's in-place cases that need no metadata change. False sends the caller to the
    /// slow path.
    #[inline(always)]
    pub fn realloc_in_place_fast(&mut self, p: *mut u8, size: usize) -> bool {
        let Some((_, _, info)) = self.fast_lookup(p) else {
            return false;
        };
        if let Some(bin) = small_bin(info) {
            // A freed block (at the head of its bin's free list, or marked) goes to the slow path,
            // which reports it if it is on a list; so does the 8-byte bin's, which has no room for
            // the mark.
            let bin = bin & (BIN_SLOTS - 1);
            return keeps_bin(bin, size)
                && starts_wide_slot(p, info)
                && self.free_slot_head(bin).cast() != p
                // SAFETY: `p` starts a slot of `bin`, not bin 0, of this heap (checked above).
                && !unsafe { self.marked_free_wide(p) };
        }
        match info & PAGE_KIND_MASK {
            PAGE_LARGE => {
                let bytes = (info & LARGE_PAGES_MASK) as usize * ZEND_MM_PAGE_SIZE;
                p.addr() % ZEND_MM_PAGE_SIZE == 0
                    && size <= bytes
                    && size > bytes - ZEND_MM_PAGE_SIZE
                    && !is_small(size)
            }
            _ => false,
        }
    }

    /// Enters `seg` in the fast table if it is a default-sized segment aligned to its size (a newer
    /// segment takes the place of an older one with the same number).
    pub(super) fn remember_fast(&mut self, seg: *mut Segment) {
        if self.segment_size == FAST_SEGMENT_SIZE && seg.addr() % FAST_SEGMENT_SIZE == 0 {
            self.fast_segments[Self::fast_index(seg.addr())] = seg;
        }
    }

    /// Takes `seg` out of the fast table (it is about to go back to storage).
    pub(super) fn forget_fast(&mut self, seg: *mut Segment) {
        let index = Self::fast_index(seg.addr());
        let entry = &mut self.fast_segments[index];
        if *entry == seg {
            *entry = no_segment();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_heap;
    use super::*;

    #[test]
    fn the_fast_paths_decline_everything_on_the_sentinel() {
        // SAFETY: the sentinel is only read by declining fast paths.
        let sentinel = unsafe { &mut *SENTINEL.get() };
        for size in [0, 1, 64, 3072] {
            assert!(sentinel.alloc_small_fast(size).is_null());
        }
        // efree(NULL) and erealloc(NULL, n) on a thread without a heap (a shift by the sentinel's
        // segment size once overflowed in debug builds).
        assert!(!sentinel.free_small_fast(ptr::null_mut()));
        assert!(!sentinel.realloc_in_place_fast(ptr::null_mut(), 8));
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let p = unsafe { (*heap).alloc(64) }.unwrap();
        assert!(!sentinel.free_small_fast(p));
        assert!(!sentinel.free_small_fast(no_segment().cast()));
        assert!(!sentinel.free_large_fast(p));
        assert!(!sentinel.realloc_in_place_fast(p, 64));
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn the_free_fast_path_takes_only_small_blocks_of_its_own_aligned_segments() {
        let (a, b) = (test_heap(), test_heap());
        // SAFETY: live heaps of this thread, each borrowed alone.
        let (ha, hb) = unsafe { (&mut *a, &mut *b) };
        let small = ha.alloc(100).unwrap();
        let large = ha.alloc(10000).unwrap();
        let huge = ha.alloc(3 << 20).unwrap();
        let theirs = hb.alloc(100).unwrap();
        let foreign = Box::into_raw(Box::new([0u8; 64])).cast::<u8>();
        for p in [
            ptr::null_mut(),
            large,
            huge,
            theirs,
            foreign,
            no_segment().cast::<u8>().wrapping_add(5000),
            small.wrapping_add(1 << 20).wrapping_add(4096 * 300),
        ] {
            assert!(!ha.free_small_fast(p), "{p:?} declined");
        }
        // In place only while the block stays the same: same bin, same page count.
        assert!(ha.realloc_in_place_fast(small, 105));
        assert!(
            ha.realloc_in_place_fast(small, 96),
            "exactly the smaller bin's size: stays, as in PHP 8.2"
        );
        assert!(
            !ha.realloc_in_place_fast(small, 95),
            "fits the smaller bin with room: moves"
        );
        assert!(
            !ha.realloc_in_place_fast(small, 113),
            "grows out of the bin"
        );
        assert!(ha.realloc_in_place_fast(large, 12000));
        assert!(!ha.realloc_in_place_fast(large, 8000), "fewer pages");
        assert!(!ha.realloc_in_place_fast(large, 12289), "more pages");
        assert!(!ha.realloc_in_place_fast(large.wrapping_add(4096), 12000));
        assert!(!ha.realloc_in_place_fast(huge, 3 << 20));
        assert!(!ha.realloc_in_place_fast(theirs, 100));
        assert!(
            !ha.realloc_in_place_fast(ptr::null_mut(), 100),
            "NULL allocates"
        );
        // The specialised free takes a block of its own bin only.
        let bin_112 = crate::sizes::bin_of(112);
        assert!(
            !ha.free_bin_fast(small, bin_112 - 1),
            "another bin's size: declined"
        );
        assert!(
            !ha.free_bin_fast(small.wrapping_add(16), bin_112),
            "not a slot start"
        );
        assert!(!ha.free_bin_fast(large, bin_112) && !ha.free_bin_fast(theirs, bin_112));
        let usage = ha.used();
        assert!(ha.free_bin_fast(small, bin_112));
        assert_eq!(ha.used(), usage - 112);
        assert_eq!(
            ha.alloc_bin_fast(bin_112),
            small,
            "the slot is reused first"
        );
        assert!(ha.free_small_fast(small));
        assert_eq!(ha.used(), usage - 112);
        assert_eq!(ha.alloc_small_fast(100), small, "the slot is reused first");
        // SAFETY: the Box allocation above.
        drop(unsafe { Box::from_raw(foreign.cast::<[u8; 64]>()) });
        // SAFETY: the heaps die with their blocks.
        unsafe {
            Heap::shutdown(a, true);
            Heap::shutdown(b, true);
        }
    }
    #[test]
    fn the_specialised_free_takes_exactly_the_slot_starts_of_its_bin() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        // Under Miri, three interior offsets per block (every slot start is still checked).
        let offsets = |size: usize| -> std::vec::Vec<usize> {
            if cfg!(miri) {
                [8, (size / 2) & !7, size - 8]
                    .into_iter()
                    .filter(|&o| o > 0 && o < size)
                    .collect()
            } else {
                (8..size).step_by(8).collect()
            }
        };
        for bin in 0..sizes::HEAP_BINS {
            let size = sizes::BIN_SIZE[bin];
            // A full run and one slot more: every page of a run, and a second run.
            let blocks: std::vec::Vec<*mut u8> = (0..=sizes::BINS[bin].count)
                .map(|_| h.alloc(size).unwrap())
                .collect();
            for &p in &blocks {
                for off in offsets(size) {
                    assert!(
                        !h.free_bin_fast(p.wrapping_add(off), bin),
                        "bin {bin} +{off}"
                    );
                }
                for other in [bin.wrapping_sub(1), bin + 1, bin ^ 16] {
                    if other < sizes::HEAP_BINS {
                        assert!(!h.free_bin_fast(p, other), "bin {bin} freed as {other}");
                    }
                }
            }
            let usage = h.used();
            for &p in &blocks {
                assert!(h.free_bin_fast(p, bin), "bin {bin}: a slot start");
            }
            // Freed already: declined (the slow path reports it). Not under Miri, which never
            // reads a block as marked (see `small::is_marked`).
            if !cfg!(miri) {
                assert!(!h.free_bin_fast(blocks[0], bin), "bin {bin}: freed twice");
            }
            assert_eq!(h.used(), usage - blocks.len() * size);
        }
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn the_fast_paths_touch_only_a_blocks_first_two_words() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        for size in [16, 24, 64, 200, 1024, 3072] {
            let p = h.alloc_small_fast(size);
            let p = if p.is_null() {
                h.alloc(size).unwrap()
            } else {
                p
            };
            // SAFETY: a block of `size` bytes of ours.
            unsafe { ptr::write_bytes(p, 0xA5, size) };
            assert!(h.free_small_fast(p), "{size}: freed on the fast path");
            // SAFETY: the freed slot's memory is the heap's; the test reads it back.
            let words = unsafe { [p.cast::<usize>().read(), p.cast::<usize>().add(1).read()] };
            assert_eq!(
                words[1],
                super::super::small::FREED_MARK,
                "{size}: marked beside its link"
            );
            // SAFETY: as above.
            let rest = unsafe { core::slice::from_raw_parts(p.add(16), size - 16) };
            assert!(
                rest.iter().all(|&b| b == 0xA5),
                "{size}: nothing past the first two words"
            );
            // (Miri reads no block as marked: see `small::is_marked`.)
            if !cfg!(miri) {
                assert!(
                    !h.free_small_fast(p),
                    "{size}: a second free is the slow path's"
                );
            }
            let q = h.alloc_small_fast(size);
            assert_eq!(q, p, "{size}: the same slot again");
            // SAFETY: a block of ours again.
            let second = unsafe { q.cast::<usize>().add(1).read() };
            assert_ne!(second, words[1], "{size}: unmarked");
            h.free(q);
        }
        // The 8-byte bin's slots have only their link: the fast paths leave them to the slow ones
        // (its run has free slots here, and the fast allocation still declines).
        let p = h.alloc(8).unwrap();
        assert!(!h.free_small_fast(p) && h.alloc_small_fast(8).is_null());
        assert!(h.alloc_small_fast(0).is_null() && h.alloc_small_fast(1).is_null());
        h.free(p);
        // A write after a free over the mark: the block freed last is still no block to resize
        // (the list's head), nor one to hand out (the slow path reports it).
        let p = h.alloc(64).unwrap();
        h.free(p);
        // SAFETY: the freed slot's memory is the heap's; the test plays a write after free.
        let link = unsafe { p.cast::<*mut u8>().read() };
        // SAFETY: as above.
        unsafe { p.cast::<usize>().add(1).write(0) };
        assert!(!h.realloc_in_place_fast(p, 60), "the head of its list");
        assert!(h.alloc_small_fast(64).is_null(), "no mark, not handed out");
        if cfg!(miri) {
            assert!(!h.free_small_fast(p), "the head of its list (under Miri)");
        } else {
            // Natively nothing says it is free, so the fast free takes it again and the list leads
            // to it twice: the allocation hands it out once, then finds its mark cleared.
            assert!(h.free_small_fast(p), "freed again");
            assert_eq!(h.alloc_small_fast(64), p, "handed out once");
            assert!(h.alloc_small_fast(64).is_null(), "not twice");
            // SAFETY: as above: the list's head (`p`, linked to itself) gets its first link back.
            unsafe { p.cast::<*mut u8>().write(link) };
        }
        // SAFETY: as above: the mark put back.
        unsafe {
            p.cast::<usize>()
                .add(1)
                .write(super::super::small::FREED_MARK)
        };
        assert_eq!(h.alloc_small_fast(64), p);
        h.free(p);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn usage_and_peak_follow_allocations_and_frees() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        let base = h.used();
        let a = h.alloc(100).unwrap();
        let b = h.alloc(1000).unwrap();
        assert_eq!((h.used(), h.peak_usage(false)), (base + 1136, base + 1136));
        h.free(b);
        assert_eq!((h.used(), h.peak_usage(false)), (base + 112, base + 1136));
        let c = h.alloc(64).unwrap();
        assert_eq!(
            (h.used(), h.peak_usage(false)),
            (base + 176, base + 1136),
            "below the peak"
        );
        let d = h.alloc(2000).unwrap();
        assert_eq!(
            (h.used(), h.peak_usage(false)),
            (base + 2224, base + 2224),
            "a new peak"
        );
        h.reset_peak();
        h.free(d);
        assert_eq!((h.used(), h.peak_usage(false)), (base + 176, base + 2224));
        h.reset_peak();
        assert_eq!(h.peak_usage(false), base + 176);
        h.free(a);
        h.free(c);
        assert_eq!((h.used(), h.peak_usage(false)), (base, base + 176));
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }
}
