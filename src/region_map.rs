//! The region map: which heap region, if any, contains an address, and which heap owns it.
//!
//! Owns a process-wide radix map from addresses to the regions the heaps got from storage (segments
//! and huge blocks). It knows regions by kind, header address and owner id only, and imports no
//! heap type: the heap casts what it gets back. It is what lets `efree` find a block's segment in O(1) whatever addresses the
//! storage returned (segments need not be aligned), and what lets every entry point reject a pointer
//! the library does not own *before* reading any metadata through it: a foreign pointer is answered
//! with "zend_mm_heap corrupted", never a SIGSEGV.
//!
//! Layout: the address space (48 bits) is cut into 32 KiB granules. Regions are at least 32 KiB, so
//! a granule meets at most two regions: the one containing its first byte and the one containing its
//! last byte. Each granule's slot has a *half* for each: a word with the region's address, the bound
//! that decides between the halves and a generation count, and a word with the owning heap (tagged
//! for huge blocks). Slots live in lazily mapped leaves (8 GiB of address space each) under a static
//! root.
//!
//! Another thread may release its regions at any moment, so a lookup never dereferences a region:
//! the owner comes from the slot itself, and [`find_owned`] hands out a region only to the heap
//! that owns it — the one heap whose thread can release it, and which is the caller.
//!
//! Invariants: a slot names a region only while that region is registered; a region registers before
//! any of its blocks is handed out and unregisters before its memory goes back to storage. Each half
//! has one writer at a time (the region covering that byte). A writer stores the owner before the
//! region word and bumps the generation on every registration; a reader takes the pair only if the
//! region word reads the same before and after the owner, so the two always describe one
//! registration. Readers take no lock and never wait for a writer (a `fork` can leave nothing held).

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::os;
use crate::sizes::{MIN_SEGMENT_SIZE, STORAGE_ALIGN};

/// log2 of the granule: no region (segment or huge block) is smaller than this.
pub(crate) const GRANULE_SHIFT: u32 = 15;
const ADDRESS_BITS: u32 = 48;
const LEAF_BITS: u32 = 18;
const ROOT_BITS: u32 = ADDRESS_BITS - GRANULE_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

const _: () = assert!(MIN_SEGMENT_SIZE >= 1 << GRANULE_SHIFT);

/// Regions start and end on this alignment (the storage API's), so a bound inside a granule fits in
/// [`BOUND_BITS`] bits.
const REGION_ALIGN: usize = STORAGE_ALIGN;
const ALIGN_SHIFT: u32 = REGION_ALIGN.trailing_zeros();

// A region word: generation (low bits), bound within the granule in `REGION_ALIGN` units, then the
// region's address shifted right by `ALIGN_SHIFT`. Zero address bits: no region.
const GEN_BITS: u32 = 8;
const BOUND_BITS: u32 = GRANULE_SHIFT - ALIGN_SHIFT + 1;
const ADDR_SHIFT: u32 = GEN_BITS + BOUND_BITS;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const BOUND_MASK: u64 = (1 << BOUND_BITS) - 1;
const _: () = assert!(ADDR_SHIFT + (ADDRESS_BITS - ALIGN_SHIFT) <= 64);

/// Tag bit on the owner word: set for huge blocks, clear for segments.
const TAG_HUGE: usize = 1;
/// Owner ids (heap addresses) are multiples of this, leaving the tag bit free.
pub(crate) const OWNER_ALIGN: usize = TAG_HUGE << 1;

/// An owner: the address of the heap that registered a region (only compared, never dereferenced
/// here).
pub type Owner = usize;

/// The region an address lies in: its kind and its header (the start of the storage allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// No heap owns the address (or, from [`find_owned`], not the asking heap).
    Unowned,
    Segment(*mut u8),
    Huge(*mut u8),
}

/// What a slot half says: the region's header address, its owner and its kind. Only addresses:
/// nothing here may be dereferenced unless the owner is the caller's heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    base: usize,
    owner: usize,
    huge: bool,
}

#[repr(C)]
struct Half {
    word: AtomicU64,
    owner: AtomicUsize,
}

#[repr(C)]
struct Slot {
    /// The region containing the granule's first byte (bound: its end).
    first: Half,
    /// The region containing the granule's last byte (bound: its start).
    last: Half,
}

type Leaf = [Slot; LEAF_LEN];

static ROOT: [AtomicPtr<Leaf>; 1 << ROOT_BITS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; 1 << ROOT_BITS];

#[inline(always)]
fn granule(addr: usize) -> usize {
    addr >> GRANULE_SHIFT
}

/// `addr`'s offset into its granule in `REGION_ALIGN` units.
#[inline(always)]
fn units_into_granule(addr: usize) -> u64 {
    ((addr & ((1 << GRANULE_SHIFT) - 1)) >> ALIGN_SHIFT) as u64
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

/// A fresh zeroed leaf, or null.
fn map_leaf() -> *mut Leaf {
    // The leaf lives as long as the process: readers may hold references into it. Most of it
    // is never touched, so it reserves no swap.
    #[cfg(not(miri))]
    {
        os::map(size_of::<Leaf>(), -1, true).cast()
    }
    #[cfg(miri)]
    {
        // Miri has no lazily committed mappings; a zeroed allocation serves, and is leaked.
        let layout = std::alloc::Layout::new::<Leaf>();
        // SAFETY: a non-zero-sized layout.
        unsafe { std::alloc::alloc_zeroed(layout).cast() }
    }
}

/// Gives back a leaf that was never published.
fn unmap_leaf(leaf: *mut Leaf) {
    #[cfg(not(miri))]
    // SAFETY: `leaf` is our own mapping of a whole leaf, never published.
    unsafe {
        os::unmap(leaf.cast(), size_of::<Leaf>())
    };
    #[cfg(miri)]
    // SAFETY: allocated by `map_leaf` with this layout, never published.
    unsafe {
        std::alloc::dealloc(leaf.cast(), std::alloc::Layout::new::<Leaf>())
    };
}

/// The slot of granule `g`, mapping its leaf if needed; `None` if the address is out of range or
/// the leaf cannot be mapped.
fn slot_or_create(g: usize) -> Option<&'static Slot> {
    let root = ROOT.get(g >> LEAF_BITS)?;
    if root.load(Ordering::Acquire).is_null() {
        let fresh = map_leaf();
        if fresh.is_null() {
            return None;
        }
        if root
            .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread installed a leaf first.
            unmap_leaf(fresh);
        }
    }
    slot(g)
}

impl Half {
    /// Names `base` (owned by `owner`, `TAG_HUGE` included) with `bound`, under a new generation.
    fn set(&self, base: usize, owner: usize, bound: u64) {
        let generation = (self.word.load(Ordering::Relaxed) + 1) & GEN_MASK;
        self.owner.store(owner, Ordering::Release);
        let word = ((base >> ALIGN_SHIFT) as u64) << ADDR_SHIFT | bound << GEN_BITS | generation;
        self.word.store(word, Ordering::Release);
    }

    /// Names nothing (keeping the generation).
    fn clear(&self) {
        let generation = self.word.load(Ordering::Relaxed) & GEN_MASK;
        self.word.store(generation, Ordering::Release);
    }

    /// The region word and owner of one registration, or `None` if the half is empty.
    #[inline(always)]
    fn read(&self) -> Option<(u64, usize)> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            if word >> ADDR_SHIFT == 0 {
                return None;
            }
            let owner = self.owner.load(Ordering::Acquire);
            // The owner belongs to this registration unless the word changed meanwhile (a writer
            // stores the owner first and every registration has a new generation).
            if self.word.load(Ordering::Relaxed) == word {
                return Some((word, owner));
            }
        }
    }
}

fn entry(word: u64, owner: usize) -> Entry {
    Entry {
        base: ((word >> ADDR_SHIFT) as usize) << ALIGN_SHIFT,
        owner: owner & !TAG_HUGE,
        huge: owner & TAG_HUGE != 0,
    }
}

/// Records that `[start, end)` is `region`, owned by `owner`. False if the range is outside the
/// mappable address space or not aligned as regions are.
pub fn register(start: usize, end: usize, region: Region, owner: Owner) -> bool {
    debug_assert!(end - start >= 1 << GRANULE_SHIFT);
    debug_assert!(owner % OWNER_ALIGN == 0);
    let (base, tag) = match region {
        Region::Unowned => return false,
        Region::Segment(base) => (base.expose_provenance(), 0),
        Region::Huge(base) => (base.expose_provenance(), TAG_HUGE),
    };
    if end > 1 << ADDRESS_BITS || start % REGION_ALIGN != 0 || end % REGION_ALIGN != 0 {
        return false;
    }
    let owner = owner | tag;
    let (first_g, last_g) = (granule(start), granule(end - 1));
    // Map every leaf first so a failure leaves nothing half registered.
    for g in first_g..=last_g {
        if slot_or_create(g).is_none() {
            return false;
        }
    }
    for g in first_g..=last_g {
        let Some(s) = slot(g) else { return false };
        let (g_start, g_end) = (g << GRANULE_SHIFT, (g + 1) << GRANULE_SHIFT);
        if start <= g_start {
            let bound = if end >= g_end {
                1 << (GRANULE_SHIFT - ALIGN_SHIFT)
            } else {
                units_into_granule(end)
            };
            s.first.set(base, owner, bound);
        }
        if end >= g_end {
            let bound = if start <= g_start {
                0
            } else {
                units_into_granule(start)
            };
            s.last.set(base, owner, bound);
        }
    }
    true
}

/// Forgets the region registered for `[start, end)`.
pub fn unregister(start: usize, end: usize) {
    for g in granule(start)..=granule(end - 1) {
        let Some(s) = slot(g) else { continue };
        let (g_start, g_end) = (g << GRANULE_SHIFT, (g + 1) << GRANULE_SHIFT);
        if start <= g_start {
            s.first.clear();
        }
        if end >= g_end {
            s.last.clear();
        }
    }
}

/// What the map records for `addr`, or `None` if no heap owns it.
#[inline(always)]
fn lookup(addr: usize) -> Option<Entry> {
    let s = slot(granule(addr))?;
    let units = units_into_granule(addr);
    if let Some((word, owner)) = s.first.read()
        && units < (word >> GEN_BITS) & BOUND_MASK
    {
        return Some(entry(word, owner));
    }
    lookup_last(s, units)
}

#[inline(never)]
fn lookup_last(s: &Slot, units: u64) -> Option<Entry> {
    let (word, owner) = s.last.read()?;
    (units >= (word >> GEN_BITS) & BOUND_MASK).then(|| entry(word, owner))
}

/// The owner of the region that contains `addr`; 0 if none. Only an address: it may be compared,
/// not dereferenced (another thread may be releasing that heap).
#[inline(always)]
pub fn owner_of(addr: usize) -> Owner {
    lookup(addr).map_or(0, |e| e.owner)
}

/// The region containing `addr` if `heap` owns it; [`Region::Unowned`] otherwise (no region, or
/// another heap's). The caller must be the one thread using `heap`: then the region stays live until
/// the caller itself releases it.
#[inline(always)]
pub fn find_owned(addr: usize, owner: Owner) -> Region {
    match lookup(addr) {
        Some(e) if e.owner == owner => region(e),
        _ => Region::Unowned,
    }
}

/// The owner of the region that contains `addr` (0 if none) and the region, in one lookup. The
/// region may be dereferenced only as [`find_owned`]'s, or where the caller knows a live block of
/// that owner lies in it.
#[inline(always)]
pub fn owner_and_region(addr: usize) -> (Owner, Region) {
    lookup(addr).map_or((0, Region::Unowned), |e| (e.owner, region(e)))
}

#[inline(always)]
fn region(e: Entry) -> Region {
    let base: *mut u8 = ptr::with_exposed_provenance_mut(e.base);
    if e.huge {
        Region::Huge(base)
    } else {
        Region::Segment(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(n: usize) -> Owner {
        n * 64
    }

    #[test]
    fn unaligned_neighbours_share_a_granule() {
        // Two 64 KiB regions back to back, starting mid-granule, in an address range of our own.
        let base = 0x7100_0000_0000usize + 1008;
        let (a, b) = (base, base + 0x10000);
        let seg = Region::Segment(ptr::without_provenance_mut(a));
        let huge = Region::Huge(ptr::without_provenance_mut(b));
        let (ha, hb) = (heap(1), heap(2));
        assert!(register(a, a + 0x10000, seg, ha));
        assert!(register(b, b + 0x10000, huge, hb));
        assert_eq!(owner_of(a - 1), 0);
        assert_eq!(find_owned(a, ha), seg);
        assert_eq!(find_owned(a + 0xffff, ha), seg);
        assert_eq!(
            find_owned(a + 0xffff, hb),
            Region::Unowned,
            "another heap's"
        );
        assert_eq!(owner_of(a + 0xffff), ha);
        assert_eq!(find_owned(b, hb), huge);
        assert_eq!(find_owned(b + 0xffff, hb), huge);
        assert_eq!(owner_of(b + 0x10000), 0);
        unregister(a, a + 0x10000);
        assert_eq!(owner_of(a + 5), 0);
        assert_eq!(find_owned(b + 5, hb), huge);
        unregister(b, b + 0x10000);
        assert_eq!(owner_of(b + 5), 0);
    }

    #[test]
    fn addresses_outside_the_map_are_nobodys() {
        assert_eq!(owner_of(0), 0);
        assert_eq!(owner_of(usize::MAX), 0);
        assert_eq!(owner_of(1 << 50), 0);
        let seg = Region::Segment(ptr::without_provenance_mut(0x1000));
        assert!(!register(
            (1 << 48) - 0x8000,
            (1 << 48) + 0x8000,
            seg,
            heap(1)
        ));
        let at = 0x7200_0000_0008usize;
        assert!(!register(at, at + 0x10000, seg, heap(1)), "not 16-aligned");
    }

    #[test]
    fn a_reader_never_pairs_one_registration_with_another_owner() {
        // One thread registers and unregisters two regions of different owners over the same
        // granules; the other reads: every pair it sees is one of the two registrations.
        let base = 0x7300_0000_0000usize + 2048;
        let (ra, rb) = (base, base + 16);
        let (ha, hb) = (heap(3), heap(4));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..if cfg!(miri) { 6 } else { 200_000 } {
                    let (r, h) = if i % 2 == 0 { (ra, ha) } else { (rb, hb) };
                    let seg = Region::Segment(ptr::without_provenance_mut(r));
                    assert!(register(r, r + 0x20000, seg, h));
                    unregister(r, r + 0x20000);
                }
                stop.store(true, Ordering::Release);
            });
            while !stop.load(Ordering::Acquire) {
                if let Some(e) = lookup(base + 0x8000) {
                    assert!(
                        (e.base, e.owner) == (ra, ha) || (e.base, e.owner) == (rb, hb),
                        "{e:?}"
                    );
                }
                if cfg!(miri) {
                    // Miri runs one thread at a time: let the writer go on.
                    std::thread::yield_now();
                }
            }
        });
    }
}
