//! The region map: which heap region, if any, contains an address.
//!
//! Owns a process-wide radix map from addresses to the regions the heaps got from storage (segments
//! and huge blocks). It is what lets `efree` find a block's segment in O(1) whatever addresses the
//! storage returned (segments need not be aligned), and what lets every entry point reject a pointer
//! the library does not own *before* reading any metadata through it: a foreign pointer is answered
//! with "zend_mm_heap corrupted", never a SIGSEGV.
//!
//! Layout: the address space (48 bits) is cut into 32 KiB granules. Regions are at least 32 KiB, so
//! a granule meets at most two regions: the one containing its first byte and the one containing its
//! last byte. Each granule's slot records both, with the bound that decides between them. Slots live
//! in lazily mapped leaves (8 GiB of address space each) under a static root.
//!
//! Invariants: a slot names a region only while that region is registered; a region registers before
//! any of its blocks is handed out and unregisters before its memory goes back to storage. Readers
//! take no lock; each slot half has one writer at a time (the region covering that byte).

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::heap::Heap;
use crate::huge::HugeBlock;
use crate::segment::Segment;

/// log2 of the granule: no region (segment or huge block) is smaller than this.
pub(crate) const GRANULE_SHIFT: u32 = 15;
const ADDRESS_BITS: u32 = 48;
const LEAF_BITS: u32 = 18;
const ROOT_BITS: u32 = ADDRESS_BITS - GRANULE_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

const _: () = assert!(crate::sizes::MIN_SEGMENT_SIZE >= 1 << GRANULE_SHIFT);

/// Tag bit on a region pointer in a slot: set for huge blocks, clear for segments.
const TAG_HUGE: usize = 1;

/// The region an address lies in, as the map records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// No heap owns the address.
    Unowned,
    Segment(*mut Segment),
    Huge(*mut HugeBlock),
}

impl Region {
    fn tagged(self) -> usize {
        match self {
            Region::Unowned => 0,
            Region::Segment(seg) => seg as usize,
            Region::Huge(block) => block as usize | TAG_HUGE,
        }
    }

    #[inline(always)]
    fn from_tagged(tagged: usize) -> Region {
        if tagged & TAG_HUGE != 0 {
            Region::Huge((tagged & !TAG_HUGE) as *mut HugeBlock)
        } else if tagged != 0 {
            Region::Segment(tagged as *mut Segment)
        } else {
            Region::Unowned
        }
    }

    /// The heap the region belongs to; null for [`Region::Unowned`].
    pub fn owner(self) -> *mut Heap {
        match self {
            Region::Unowned => ptr::null_mut(),
            // SAFETY: the map names live segments and huge blocks only (module invariant).
            Region::Segment(seg) => unsafe { (*seg).heap },
            // SAFETY: as above.
            Region::Huge(block) => unsafe { (*block).heap },
        }
    }
}

const _: () = assert!(align_of::<Segment>() > TAG_HUGE && align_of::<HugeBlock>() > TAG_HUGE);

#[repr(C)]
struct Slot {
    /// Tagged region containing the granule's first byte, and that region's end.
    first: AtomicUsize,
    first_end: AtomicUsize,
    /// Tagged region containing the granule's last byte, and that region's start.
    last: AtomicUsize,
    last_start: AtomicUsize,
}

type Leaf = [Slot; LEAF_LEN];

static ROOT: [AtomicPtr<Leaf>; 1 << ROOT_BITS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; 1 << ROOT_BITS];

#[inline(always)]
fn granule(addr: usize) -> usize {
    addr >> GRANULE_SHIFT
}

/// The slot of granule `g`, if its leaf exists.
#[inline(always)]
fn slot(g: usize) -> Option<&'static Slot> {
    let root = ROOT.get(g >> LEAF_BITS)?;
    let leaf = root.load(Ordering::Acquire);
    if leaf.is_null() {
        return None;
    }
    // SAFETY: leaves are never unmapped; the index is masked into range.
    Some(unsafe { &(*leaf)[g & (LEAF_LEN - 1)] })
}

/// The slot of granule `g`, mapping its leaf if needed; `None` if the address is out of range or
/// the leaf cannot be mapped.
fn slot_or_create(g: usize) -> Option<&'static Slot> {
    let root = ROOT.get(g >> LEAF_BITS)?;
    if root.load(Ordering::Acquire).is_null() {
        let map = memmap2::MmapOptions::new()
            .len(size_of::<Leaf>())
            .no_reserve_swap()
            .map_anon()
            .ok()?;
        let fresh = map.as_ptr() as *mut Leaf;
        // The leaf lives as long as the process: readers may hold references into it.
        core::mem::forget(map);
        if root
            .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread installed a leaf first; give ours back.
            // SAFETY: `fresh` is our own mapping, never published.
            unsafe { libc::munmap(fresh.cast(), size_of::<Leaf>()) };
        }
    }
    slot(g)
}

/// Records that `[start, end)` belongs to `region`. False if the range is outside the mappable
/// address space.
pub fn register(start: usize, end: usize, region: Region) -> bool {
    debug_assert!(end - start >= 1 << GRANULE_SHIFT && region != Region::Unowned);
    let tagged = region.tagged();
    if end > 1 << ADDRESS_BITS {
        return false;
    }
    let (first_g, last_g) = (granule(start), granule(end - 1));
    // Map every leaf first so a failure leaves nothing half registered.
    for g in first_g..=last_g {
        if slot_or_create(g).is_none() {
            return false;
        }
    }
    for g in first_g..=last_g {
        let Some(s) = slot(g) else { return false };
        let (g_start, g_last) = (g << GRANULE_SHIFT, ((g + 1) << GRANULE_SHIFT) - 1);
        if start <= g_start {
            s.first_end.store(end, Ordering::Relaxed);
            s.first.store(tagged, Ordering::Release);
        }
        if g_last < end {
            s.last_start.store(start, Ordering::Relaxed);
            s.last.store(tagged, Ordering::Release);
        }
    }
    true
}

/// Forgets the region registered for `[start, end)`.
pub fn unregister(start: usize, end: usize) {
    for g in granule(start)..=granule(end - 1) {
        let Some(s) = slot(g) else { continue };
        let (g_start, g_last) = (g << GRANULE_SHIFT, ((g + 1) << GRANULE_SHIFT) - 1);
        if start <= g_start {
            s.first.store(0, Ordering::Release);
        }
        if g_last < end {
            s.last.store(0, Ordering::Release);
        }
    }
}

/// The region containing `addr`.
#[inline(always)]
pub fn find(addr: usize) -> Region {
    Region::from_tagged(lookup(addr))
}

/// The tagged region containing `addr`, or 0 if no heap owns it.
#[inline(always)]
fn lookup(addr: usize) -> usize {
    let Some(s) = slot(granule(addr)) else {
        return 0;
    };
    let first = s.first.load(Ordering::Acquire);
    if first != 0 && addr < s.first_end.load(Ordering::Relaxed) {
        return first;
    }
    lookup_last(s, addr)
}

#[inline(never)]
fn lookup_last(s: &Slot, addr: usize) -> usize {
    let last = s.last.load(Ordering::Acquire);
    if last != 0 && addr >= s.last_start.load(Ordering::Relaxed) {
        last
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_neighbours_share_a_granule() {
        // Two 64 KiB regions back to back, starting mid-granule, in an address range of our own.
        let base = 0x7100_0000_0000usize + 1000;
        let (a, b) = (base, base + 0x10000);
        let seg = Region::Segment(0x1000 as *mut Segment);
        let huge = Region::Huge(0x2000 as *mut HugeBlock);
        assert!(register(a, a + 0x10000, seg));
        assert!(register(b, b + 0x10000, huge));
        assert_eq!(find(a - 1), Region::Unowned);
        assert_eq!(find(a), seg);
        assert_eq!(find(a + 0xffff), seg);
        assert_eq!(find(b), huge);
        assert_eq!(find(b + 0xffff), huge);
        assert_eq!(find(b + 0x10000), Region::Unowned);
        unregister(a, a + 0x10000);
        assert_eq!(find(a + 5), Region::Unowned);
        assert_eq!(find(b + 5), huge);
        unregister(b, b + 0x10000);
        assert_eq!(find(b + 5), Region::Unowned);
    }

    #[test]
    fn addresses_outside_the_map_are_nobodys() {
        assert_eq!(find(0), Region::Unowned);
        assert_eq!(find(usize::MAX), Region::Unowned);
        assert_eq!(find(1 << 50), Region::Unowned);
        let seg = Region::Segment(0x1000 as *mut Segment);
        assert!(!register((1 << 48) - 0x8000, (1 << 48) + 0x8000, seg));
    }
}
