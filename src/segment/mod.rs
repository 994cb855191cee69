//! Segments (zend_alloc.c "Chunks"): the memory a heap gets from its storage, cut into 4 KiB pages.
//!
//! Owns the segment header and its page allocator. A segment is one storage allocation of the heap's
//! segment size. Its header sits at the start: the segment struct (PHP 5.3's `zend_mm_segment`
//! first, so storages can read the size), the page map at the fixed offset [`MAP_OFFSET`], the page
//! bitmap, and in the heap's first segment the heap itself. Pages are numbered from the page that
//! holds the segment's first byte; the pages the header covers (and, when the storage returned
//! memory that is not page aligned, the partial first page) are never handed out. For a segment
//! aligned to its size, a pointer's page is `(p - base) >> 12` and its map entry sits at
//! `base + MAP_OFFSET + 4 * page`: the free fast path reads it with no other lookup.
//!
//! Invariants:
//! - `bitmap` bit i is set iff page i is in use (by the header, a small run or a large block);
//! - `map[i]` describes page i: the first page of a small run names its bin, the other pages of the
//!   run point back to the first; the first page of a large run holds its page count, and so does
//!   the first page of a freed large run the heap keeps whole (`PAGE_CACHED`); every other
//!   page (header pages included) is of kind `FREE`, so a pointer into it is not a block; in a
//!   heap without request ends (the preload library), a free page that may be resident says so
//!   (`PAGE_UNPURGED` or `PAGE_AGED`), and then `dirty_since` is not 0 (a reset keeps the marks
//!   while it is not); other heaps write the marks and never read them;
//! - `free_pages` and `longest_free` are exact;
//! - `owner` is the owning heap's id (the region map's owner, checked on every free).
//!
//! The heap's bookkeeping in the header (its list links, class and creation number) is the heap's
//! to keep; this module only stores it. Fields are private: the heap reads and writes them through
//! methods.
//!
//! Ownership is per segment so that frees from other threads can be added without a redesign: a
//! free whose segment belongs to another thread's heap is, today, heap corruption (PHP's rule); it
//! can instead push the block onto a list kept in this header for the owner to drain, as mimalloc
//! does per page. The header has room for such fields (its size is computed, not fixed).

mod bitmap;

use core::ptr;

use crate::list::{Field, Links};
use crate::region_map::Owner;
use crate::sizes::{PAGE_SHIFT, ZEND_MM_PAGE_SIZE};
use crate::storage::Allocation;
use bitmap::PageBitmap;

/// Page-map entry kinds (top two bits).
pub(crate) const PAGE_FREE: u32 = 0;
pub(crate) const PAGE_LARGE: u32 = 1 << 30;
pub(crate) const PAGE_SMALL: u32 = 2 << 30;
/// A freed large run the heap keeps whole for reuse (its run cache): page count in the low bits,
/// as [`PAGE_LARGE`]'s; its pages stay in use.
pub(crate) const PAGE_CACHED: u32 = 3 << 30;
// Map entries are cleared with `write_bytes`, byte by byte.
const _: () = assert!(PAGE_FREE == 0);
/// In a free page's entry: the page was freed since the last purge pass, so it may be resident (see
/// [`Segment::purge_free_pages`]). Pages inside a large run keep what their entries held while
/// free: only the bitmap tells a free page.
pub(crate) const PAGE_UNPURGED: u32 = 1;
/// In a free page's entry: the page was free, and may be resident, at the last purge pass.
pub(crate) const PAGE_AGED: u32 = 2;
pub(crate) const PAGE_KIND_MASK: u32 = 3 << 30;
/// Large runs: page count in the low bits of the first page's entry.
pub(crate) const LARGE_PAGES_MASK: u32 = (1 << 30) - 1;

// Small runs: every page's entry has the kind and the bin in its top 7 bits (its *class*), and in
// bits 12..15 the page's place in its run XORed with bits 12..15 of the page's address, so that
// `(p ^ entry) & RUN_OFFSET_MASK` is `p`'s byte offset into its run (the entry's low 12 bits are
// zero). The first page's entry also holds the free-slot counter of `zend_mm_gc`.
const SMALL_BIN_SHIFT: u32 = 25;
const SMALL_BIN_MASK: u32 = 0x1f << SMALL_BIN_SHIFT;
const SMALL_PLACE_SHIFT: u32 = crate::sizes::PAGE_SHIFT;
const SMALL_PLACE_MASK: u32 = 0x7 << SMALL_PLACE_SHIFT;
/// Byte offsets into a run: an offset into a page and the page's place in the run.
const RUN_OFFSET_MASK: usize = (SMALL_PLACE_MASK | (ZEND_MM_PAGE_SIZE as u32 - 1)) as usize;
pub(crate) const SMALL_COUNTER_SHIFT: u32 = 15;
pub(crate) const SMALL_COUNTER_MASK: u32 = 0x3ff << SMALL_COUNTER_SHIFT;
/// A page-map entry's class: its kind and, for small runs, its bin.
pub(crate) const PAGE_CLASS_SHIFT: u32 = SMALL_BIN_SHIFT;
const PAGE_CLASSES: usize = 1 << (32 - PAGE_CLASS_SHIFT);
/// The class of bin 0's pages; bin `b`'s is `SMALL_CLASS_BASE + b`.
pub(crate) const SMALL_CLASS_BASE: usize = (PAGE_SMALL >> PAGE_CLASS_SHIFT) as usize;
const _: () = {
    assert!(crate::sizes::MAX_BIN_PAGES <= (SMALL_PLACE_MASK >> SMALL_PLACE_SHIFT) + 1);
    assert!(SMALL_PLACE_MASK & SMALL_COUNTER_MASK == 0);
    assert!(SMALL_COUNTER_MASK & (SMALL_BIN_MASK | PAGE_KIND_MASK) == 0);
    assert!(SMALL_BIN_MASK & PAGE_KIND_MASK == 0);
    assert!(crate::sizes::HEAP_BINS <= 1 << 5);
    // Every bin's slot count fits the gc counter.
    let mut i = 0;
    while i < crate::sizes::HEAP_BINS {
        assert!(crate::sizes::BINS[i].count <= SMALL_COUNTER_MASK >> SMALL_COUNTER_SHIFT);
        i += 1;
    }
    // A large run's class is never a small one (segments have fewer than 2^25 pages).
    assert!((PAGE_LARGE | LARGE_PAGES_MASK) >> PAGE_CLASS_SHIFT < SMALL_CLASS_BASE as u32 + 32);
    assert!(((crate::sizes::MAX_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE) as u32) < 1 << PAGE_CLASS_SHIFT);
};

/// The entry of page `place` (0 for the first) of a small run of `bin` whose page is at `addr`.
pub(crate) fn small_entry(bin: usize, place: usize, addr: usize) -> u32 {
    let place = (place ^ (addr >> SMALL_PLACE_SHIFT)) as u32 & 0x7;
    PAGE_SMALL | (bin as u32) << SMALL_BIN_SHIFT | place << SMALL_PLACE_SHIFT
}

/// The bin of a small run's page entry, or `None` for any other entry.
#[inline(always)]
pub(crate) fn small_bin(info: u32) -> Option<usize> {
    (info & PAGE_KIND_MASK == PAGE_SMALL)
        .then_some(((info & SMALL_BIN_MASK) >> SMALL_BIN_SHIFT) as usize)
}

/// The place in its run of the small run's page at `addr` whose entry is `info`.
pub(crate) fn small_place(info: u32, addr: usize) -> usize {
    (((info & SMALL_PLACE_MASK) >> SMALL_PLACE_SHIFT) as usize ^ (addr >> SMALL_PLACE_SHIFT)) & 0x7
}

/// `p`'s byte offset into the small run whose page (the one holding `p`) has entry `info`.
#[inline(always)]
pub(crate) fn run_offset(p: *const u8, info: u32) -> usize {
    (p as usize ^ info as usize) & RUN_OFFSET_MASK
}

/// Per page class: for a small bin, its slot check (see `sizes::SLOT_MAGIC`); for every other class
/// a check nothing passes.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct SlotCheck {
    magic: u32,
    limit: u32,
}

/// The slot checks of the bins from `first_bin` on, by page class.
const fn slot_checks(first_bin: usize) -> [SlotCheck; PAGE_CLASSES] {
    let mut t = [SlotCheck { magic: 0, limit: 0 }; PAGE_CLASSES];
    let mut bin = first_bin;
    while bin < crate::sizes::HEAP_BINS {
        t[SMALL_CLASS_BASE + bin] = SlotCheck {
            magic: crate::sizes::SLOT_MAGIC[bin],
            limit: crate::sizes::SLOT_LIMIT[bin],
        };
        bin += 1;
    }
    t
}

// `const`s: the library addresses constants directly, statics through the GOT.
const SLOT_CHECKS: [SlotCheck; PAGE_CLASSES] = slot_checks(0);
/// Without the 8-byte bin, whose slots have no room for a free mark beside their link.
const WIDE_SLOT_CHECKS: [SlotCheck; PAGE_CLASSES] = slot_checks(1);

/// Whether `p`, in a page whose entry is `info`, starts a slot of a small run: any other page
/// kind, an interior, misaligned or run-tail pointer fails. One table load, a multiply and a
/// compare, with no branch on the page kind.
#[inline(always)]
pub(crate) fn starts_slot(p: *const u8, info: u32) -> bool {
    let check = SLOT_CHECKS[(info >> PAGE_CLASS_SHIFT) as usize];
    crate::sizes::starts_slot(check.magic, check.limit, run_offset(p, info))
}

/// [`starts_slot`] for the fast paths, which leave the 8-byte bin to the slow paths: its slots
/// fail too, at the same cost.
#[inline(always)]
pub(crate) fn starts_wide_slot(p: *const u8, info: u32) -> bool {
    let check = WIDE_SLOT_CHECKS[(info >> PAGE_CLASS_SHIFT) as usize];
    crate::sizes::starts_slot(check.magic, check.limit, run_offset(p, info))
}

/// A page-map entry's class bits (its kind and, for small runs, its bin).
const CLASS_MASK: u32 = !0 << PAGE_CLASS_SHIFT;

/// Whether the block at byte `offset` of a segment aligned to at least 64 KiB, in a page whose
/// entry is `info`, starts a slot of a small run of `bin`: the check of the size-specialised
/// frees. The offset (not the address) keeps the entry's class bits clear of address bits, so for a
/// constant `bin` whose size is a power of two the check is one masked compare: such a run has no
/// tail, its slots start exactly where the offset's low bits are zero, and the entry's low 12 bits
/// are zero. Other bins take the class compare and the multiply of [`starts_slot`].
#[inline(always)]
pub(crate) fn starts_slot_of(offset: usize, info: u32, bin: usize) -> bool {
    let size = crate::sizes::BIN_SIZE[bin] as u32;
    let class = ((SMALL_CLASS_BASE + bin) as u32) << PAGE_CLASS_SHIFT;
    // Offsets into a segment stay below the class bits (segments have fewer than 2^25 bytes in
    // this check's use: the default size).
    let low = offset as u32;
    if size.is_power_of_two() {
        return (info ^ low) & (CLASS_MASK | (size - 1)) == class;
    }
    // The class bits equal to `class` and a slot's start, in one check: with the class xored out,
    // a page of another class leaves high bits that no slot index reaches (see
    // `sizes::SLOT_MAGIC_WIDE`): an instruction fewer than comparing the class bits apart.
    let n = (info ^ low ^ class) & (CLASS_MASK | RUN_OFFSET_MASK as u32);
    (n as u64).wrapping_mul(crate::sizes::SLOT_MAGIC_WIDE[bin]) < crate::sizes::SLOT_LIMIT_WIDE[bin]
}
const _: () = {
    assert!(
        RUN_OFFSET_MASK < 1 << 16
            && (crate::sizes::ZEND_MM_SEG_SIZE as u32) < 1 << PAGE_CLASS_SHIFT
    );
    // Power-of-two bins fill their runs exactly (no tail slot a pointer could start).
    let mut bin = 0;
    while bin < crate::sizes::HEAP_BINS {
        let b = crate::sizes::BINS[bin];
        if b.size.is_power_of_two() {
            assert!(b.size as usize <= ZEND_MM_PAGE_SIZE);
            assert!(b.size * b.count == b.pages * ZEND_MM_PAGE_SIZE as u32);
        }
        bin += 1;
    }
};

/// A millisecond clock's reading as a segment keeps it: the low 32 bits, odd, so never 0 (which
/// means "no stamp"); comparisons of two stamps are off by a millisecond at most.
fn stamp(now_ms: u64) -> u32 {
    now_ms as u32 | 1
}

/// Marker for "not in any class list".
pub(crate) const NO_CLASS: u32 = u32::MAX;
/// Its 16-bit form in the segment header.
const NO_CLASS_16: u16 = u16::MAX;
// The header's page count fits its 16 bits for every segment size (a misaligned start adds one).
const _: () = assert!(header_pages(crate::sizes::MAX_SEGMENT_SIZE, 1 << 20) < u16::MAX as usize);

#[repr(C)]
pub struct Segment {
    /// The storage allocation, its header first (what the storage reads).
    alloc: Allocation,
    /// The owning heap's id.
    owner: Owner,
    /// Pages numbered in the map (the segment size over the page size).
    page_count: u32,
    /// Pages at the start that the header occupies.
    header_pages: u16,
    /// The heap's class list this segment is on ([`NO_CLASS`] if none), as a `u16`.
    class: u16,
    free_pages: u32,
    /// Longest run of free pages.
    longest_free: u32,
    /// The heap's request count (its low 32 bits) when the segment last served a request.
    last_used: u32,
    /// When the current wait of free pages that may be resident began: the first free since the
    /// last purge pass, or that pass if pages still wait (milliseconds, low 32 bits, never 0); 0 if
    /// no free page may be resident (see [`Segment::purge_free_pages`]).
    dirty_since: u32,
    /// Creation ordinal: younger segments have larger numbers.
    num: u64,
    /// On the heap's list of live segments.
    all: Links<Segment>,
    /// On one of the heap's class lists, or its cache.
    by_class: Links<Segment>,
    /// When pages were last freed (milliseconds, low 32 bits), while `dirty_since` is not 0.
    last_freed: u32,
}

/// The list of a heap's live segments.
pub struct AllSegments;

impl Field<Segment> for AllSegments {
    unsafe fn links(item: *mut Segment) -> *mut Links<Segment> {
        // SAFETY: `item` is a live segment (caller contract).
        unsafe { &raw mut (*item).all }
    }
}

/// A heap's class lists and its cache of empty segments (a segment is on one at most).
pub struct ByClass;

impl Field<Segment> for ByClass {
    unsafe fn links(item: *mut Segment) -> *mut Links<Segment> {
        // SAFETY: `item` is a live segment (caller contract).
        unsafe { &raw mut (*item).by_class }
    }
}

/// Offset of the page map from the segment's start.
pub(crate) const MAP_OFFSET: usize = size_of::<Segment>();
const _: () = assert!(MAP_OFFSET % 8 == 0);

/// Offset of the page bitmap from the segment's start.
/// The number of the page holding `p` in the segment whose header is at `base`, counted as its
/// page map counts (from the page the header starts in); huge for an address before it.
fn page_number_at(base: *const u8, p: usize) -> usize {
    p.wrapping_sub(base.addr() - base.addr() % ZEND_MM_PAGE_SIZE) >> PAGE_SHIFT
}

const fn bitmap_offset(size: usize) -> usize {
    (MAP_OFFSET + 4 * (size / ZEND_MM_PAGE_SIZE)).div_ceil(8) * 8
}

/// Bytes of header for a segment of `size` bytes, with `extra` bytes (the heap struct of a main
/// segment) after the bitmap.
pub(crate) const fn header_bytes(size: usize, extra: usize) -> usize {
    bitmap_offset(size) + PageBitmap::words_for(size / ZEND_MM_PAGE_SIZE) * 8 + extra
}

/// Where the heap struct goes in a main segment of `size` bytes (8-aligned).
pub(crate) const fn heap_offset(size: usize) -> usize {
    header_bytes(size, 0)
}

/// Pages of a page-aligned segment of `size` bytes that no large block can use (its header).
pub(crate) const fn header_pages(size: usize, extra: usize) -> usize {
    header_bytes(size, extra).div_ceil(ZEND_MM_PAGE_SIZE)
}

/// The longest large block, in pages, a heap with `segment_size` segments serves from a segment
/// whose storage address is page aligned.
pub(crate) const fn max_large_pages(segment_size: usize) -> usize {
    usable_pages_at(0, segment_size)
}

/// Pages a segment of `size` bytes (not a main one) at address `base` can give to blocks: every page
/// past its header. Pages are numbered from `base`'s page, so a header that ends far enough into a
/// page (the storage's address was far into one) covers one page more.
pub(crate) const fn usable_pages_at(base: usize, size: usize) -> usize {
    let into_page = base % ZEND_MM_PAGE_SIZE;
    size / ZEND_MM_PAGE_SIZE - (into_page + header_bytes(size, 0)).div_ceil(ZEND_MM_PAGE_SIZE)
}

const _: () = {
    let seg = crate::sizes::ZEND_MM_SEG_SIZE;
    assert!(max_large_pages(seg) * ZEND_MM_PAGE_SIZE == crate::sizes::ZEND_MM_MAX_LARGE_SIZE);
    // A storage address far into a page costs at most one page.
    assert!(usable_pages_at(ZEND_MM_PAGE_SIZE - 16, seg) + 1 == max_large_pages(seg));
};

impl Segment {
    /// Lays a segment out over `size` bytes at `base` (fresh from storage) for the heap `owner`,
    /// reserving `extra` bytes after the bitmap, and returns it with every page past the header
    /// free.
    ///
    /// # Safety
    /// `base` must point to `size` writable bytes (at least 16-byte aligned) that nothing else uses,
    /// with the provenance of all of them; `size` a power of two within the segment bounds.
    pub unsafe fn init(
        base: *mut u8,
        size: usize,
        owner: Owner,
        extra: usize,
        num: u64,
    ) -> *mut Segment {
        let seg = base.cast::<Segment>();
        let page0 = base.wrapping_sub(base.addr() % ZEND_MM_PAGE_SIZE);
        let page_count = size / ZEND_MM_PAGE_SIZE;
        let header_end = base.addr() + header_bytes(size, extra);
        let header_pages = (header_end - page0.addr()).div_ceil(ZEND_MM_PAGE_SIZE);
        // SAFETY: the header lies within the segment (header_bytes < size, checked by callers'
        // size bounds) and nothing else references this memory yet.
        unsafe {
            seg.write(Segment {
                alloc: Allocation::new(base, size),
                owner,
                page_count: page_count as u32,
                header_pages: header_pages as u16,
                class: NO_CLASS_16,
                free_pages: 0,
                longest_free: 0,
                num,
                last_used: 0,
                dirty_since: 0,
                all: Links::NONE,
                by_class: Links::NONE,
                last_freed: 0,
            });
            (*seg).reset();
        }
        seg
    }

    /// Marks every page past the header free again (for a segment taken back from the cache or a
    /// reset main one).
    pub fn reset(&mut self) {
        let (pages, header) = (self.page_count as usize, self.header_pages as usize);
        let mut bitmap = self.bitmap();
        bitmap.reset();
        bitmap.set_range(0, header);
        // SAFETY: the map has `page_count` entries.
        unsafe { ptr::write_bytes(self.map(), 0, pages) };
        if self.dirty_since != 0 {
            // Pages freed and not handed back yet stay known as such.
            for page in header..pages {
                self.map_set(page, PAGE_FREE | PAGE_UNPURGED);
            }
        }
        self.free_pages = (pages - header) as u32;
        self.longest_free = self.free_pages;
    }

    /// Pages blocks can use.
    pub fn usable_pages(&self) -> u32 {
        self.page_count - self.header_pages as u32
    }

    /// The page map, at [`MAP_OFFSET`], with the provenance of the whole allocation.
    #[inline(always)]
    fn map(&self) -> *mut u32 {
        self.alloc.base().wrapping_add(MAP_OFFSET).cast()
    }

    /// The page bitmap's words, after the map, with the provenance of the whole allocation.
    #[inline(always)]
    fn bitmap_words(&self) -> *mut u64 {
        let offset = bitmap_offset(self.page_count as usize * ZEND_MM_PAGE_SIZE);
        self.alloc.base().wrapping_add(offset).cast()
    }

    fn bitmap(&mut self) -> PageBitmap<'_> {
        let pages = self.page_count as usize;
        // SAFETY: the bitmap has words_for(page_count) words (init) and is only reached through
        // this exclusive borrow of the segment.
        let words = unsafe {
            core::slice::from_raw_parts_mut(self.bitmap_words(), PageBitmap::words_for(pages))
        };
        PageBitmap::new(words, pages)
    }

    /// Whether page `i` is in use (the header's pages are).
    pub fn page_used(&self, i: usize) -> bool {
        // SAFETY: i < page_count (callers' invariant) and the bitmap has that many bits.
        unsafe { *self.bitmap_words().add(i / 64) & (1 << (i % 64)) != 0 }
    }

    /// The storage allocation the segment is.
    #[inline(always)]
    pub fn allocation(&self) -> &Allocation {
        &self.alloc
    }

    /// The owning heap's id.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Pages numbered in the map.
    pub fn page_count(&self) -> usize {
        self.page_count as usize
    }

    /// Pages the header occupies.
    pub fn header_pages(&self) -> usize {
        self.header_pages as usize
    }

    /// Free pages.
    pub fn free_page_count(&self) -> usize {
        self.free_pages as usize
    }

    /// The longest run of free pages.
    #[inline(always)]
    pub fn longest_free(&self) -> u32 {
        self.longest_free
    }

    /// The heap's class list the segment is on ([`NO_CLASS`] if none).
    pub fn class(&self) -> u32 {
        if self.class == NO_CLASS_16 {
            NO_CLASS
        } else {
            u32::from(self.class)
        }
    }

    pub fn set_class(&mut self, class: u32) {
        debug_assert!(class == NO_CLASS || class < u32::from(NO_CLASS_16));
        self.class = class as u16;
    }

    /// Creation ordinal: younger segments have larger numbers.
    pub fn num(&self) -> u64 {
        self.num
    }

    /// Request ends since the segment last served a request, the heap's request count being
    /// `now` (counts compared modulo 2^32).
    pub fn idle_for(&self, now: u64) -> u32 {
        (now as u32).wrapping_sub(self.last_used)
    }

    /// Records that the segment serves request `request` of its heap.
    pub fn set_last_used(&mut self, request: u64) {
        self.last_used = request as u32;
    }

    /// Whether free pages may be resident (freed since the system last got them back).
    #[cfg(test)]
    fn has_unpurged(&self) -> bool {
        self.dirty_since != 0
    }

    /// Records that pages were freed at `now_ms` (a millisecond clock); true if none waited before
    /// (the caller schedules a purge pass `delay` from now, see [`Segment::purge_free_pages`]).
    pub fn note_unpurged(&mut self, now_ms: u64) -> bool {
        let now = stamp(now_ms);
        self.last_freed = now;
        if self.dirty_since == 0 {
            self.dirty_since = now;
            return true;
        }
        false
    }

    /// Marks every free page as possibly resident, as a free of it would (pages moved in from
    /// elsewhere); the caller notes the segment.
    pub fn mark_free_pages_unpurged(&mut self) {
        let map = self.map();
        self.bitmap().for_each_free_run(|start, len| {
            for page in start..start + len {
                // SAFETY: a free run lies within the map.
                unsafe { *map.add(page) |= PAGE_UNPURGED };
            }
            true
        });
    }

    /// A purge pass at `now_ms`, for free pages that may be resident. Pages go back to the system
    /// once free for at least `delay_ms`, so a program that frees and reuses pages within the delay
    /// keeps them resident:
    /// - no page was freed for `delay_ms`: every such page goes back;
    /// - else, `delay_ms` after the last pass (or the first free since): the pages that were
    ///   free at that pass ([`PAGE_AGED`]) go back, those freed since ([`PAGE_UNPURGED`]) age
    ///   and wait for the next pass;
    /// - else nothing is due yet.
    ///
    /// `discard(start, end)` gets the byte offsets from the segment's start of each range to hand
    /// back (a range may include pages handed back before, never a page in use or one that stays).
    /// Returns when the next pass is due, if pages still wait.
    pub fn purge_free_pages(
        &mut self,
        now_ms: u64,
        delay_ms: u32,
        discard: impl FnMut(usize, usize),
    ) -> Option<u64> {
        if self.dirty_since == 0 {
            return None;
        }
        let now = stamp(now_ms);
        let waited = now.wrapping_sub(self.dirty_since);
        let all = now.wrapping_sub(self.last_freed) >= delay_ms;
        if !all && waited < delay_ms {
            return Some(now_ms + u64::from(delay_ms - waited));
        }
        let goes = if all {
            PAGE_AGED | PAGE_UNPURGED
        } else {
            PAGE_AGED
        };
        if self.hand_back(goes, discard) {
            self.dirty_since = now;
            Some(now_ms + u64::from(delay_ms))
        } else {
            self.dirty_since = 0;
            None
        }
    }

    /// Hands back every free page that may be resident at once (`zend_mm_gc`, `malloc_trim`),
    /// as [`Segment::purge_free_pages`] does for pages free long enough.
    pub fn purge_all_free_pages(&mut self, discard: impl FnMut(usize, usize)) {
        self.hand_back(PAGE_AGED | PAGE_UNPURGED, discard);
        self.dirty_since = 0;
    }

    /// Calls `discard` with the byte ranges of free pages whose entries have a bit of `goes`
    /// (cleared), each range as long as it gets without a page that stays (a range may include
    /// pages handed back before); pages freed since the last pass that stay age. Whether some did.
    fn hand_back(&mut self, goes: u32, mut discard: impl FnMut(usize, usize)) -> bool {
        let page0 = self.alloc.base().addr() & !(ZEND_MM_PAGE_SIZE - 1);
        let first = page0.wrapping_sub(self.alloc.base().addr());
        let offset = |page: usize| first.wrapping_add(page * ZEND_MM_PAGE_SIZE);
        let map = self.map();
        let mut waiting = false;
        self.bitmap().for_each_free_run(|start, len| {
            // The pending range of pages that go back: first and last.
            let mut range: Option<(usize, usize)> = None;
            for page in start..start + len {
                // SAFETY: a free run lies within the map.
                let entry = unsafe { &mut *map.add(page) };
                if *entry & goes != 0 {
                    *entry = PAGE_FREE;
                    range = Some(range.map_or((page, page), |(low, _)| (low, page)));
                } else if *entry & PAGE_UNPURGED != 0 {
                    *entry = PAGE_FREE | PAGE_AGED;
                    waiting = true;
                    if let Some((low, high)) = range.take() {
                        discard(offset(low), offset(high + 1));
                    }
                }
            }
            if let Some((low, high)) = range {
                discard(offset(low), offset(high + 1));
            }
            true
        });
        waiting
    }

    /// Address of page 0: the segment's start rounded down to a page (with the provenance of the
    /// whole allocation).
    #[inline(always)]
    fn page0(&self) -> *mut u8 {
        let base = self.alloc.base();
        base.wrapping_sub(base.addr() % ZEND_MM_PAGE_SIZE)
    }

    #[inline(always)]
    pub fn page_addr(&self, page: usize) -> *mut u8 {
        self.page0().wrapping_add(page << PAGE_SHIFT)
    }

    /// The page `p` lies in, if it lies in the segment's pages.
    #[inline(always)]
    pub fn page_of(&self, p: usize) -> Option<usize> {
        let page = p.wrapping_sub(self.page0().addr()) >> PAGE_SHIFT;
        if page < self.page_count as usize {
            Some(page)
        } else {
            None
        }
    }

    /// The page-map entry of the page holding `p` in the segment of `size` bytes whose header is
    /// at `base`, read through that address alone: another thread's free or resize of a live block
    /// reads it while the segment's owner may be borrowing the `Segment` mutably, so it takes no
    /// reference to it. `None` past the segment's last whole page.
    ///
    /// # Safety
    /// `base` must be a live segment of `size` bytes containing `p`, and the entry must not change
    /// meanwhile (the entry of a live block's page does not).
    pub unsafe fn map_entry_at(base: *const u8, size: usize, p: usize) -> Option<u32> {
        let page = page_number_at(base, p);
        if page >= size / ZEND_MM_PAGE_SIZE {
            return None;
        }
        // SAFETY: the map follows the header struct with one entry per whole page (`init`).
        Some(unsafe { base.add(MAP_OFFSET).cast::<u32>().add(page).read() })
    }

    /// Whether the page holding `p` is in use by the page bitmap of the segment whose header is at
    /// `base`, read as [`Segment::map_entry_at`] reads its entry (the word is loaded atomically: the
    /// owner may change its other pages' bits meanwhile).
    ///
    /// # Safety
    /// `base` must be a live segment containing `p` among its pages (`map_entry_at` found an
    /// entry), and the page's bit must not change meanwhile (it does not inside a live block).
    pub unsafe fn page_used_at(base: *const u8, p: usize) -> bool {
        let segment = base.cast::<Segment>();
        let page = page_number_at(base, p);
        // SAFETY: a live segment's header (caller contract); its page count is set once, at init.
        let pages = unsafe { ptr::addr_of!((*segment).page_count).read() } as usize;
        let word = base
            .wrapping_add(bitmap_offset(pages * ZEND_MM_PAGE_SIZE))
            .cast::<u64>()
            .wrapping_add(page / 64);
        // SAFETY: the bitmap has a bit for each of the segment's pages (`init`), 8-aligned; no
        // thread writes it but through this atomic view or its owner's word writes.
        let bits = unsafe { core::sync::atomic::AtomicU64::from_ptr(word.cast_mut()) }
            .load(core::sync::atomic::Ordering::Relaxed);
        bits & (1 << (page % 64)) != 0
    }

    #[inline(always)]
    pub fn map_get(&self, page: usize) -> u32 {
        debug_assert!(page < self.page_count as usize);
        // SAFETY: page < page_count (callers get pages from page_of or their own runs).
        unsafe { *self.map().add(page) }
    }

    #[inline(always)]
    pub fn map_set(&mut self, page: usize, info: u32) {
        debug_assert!(page < self.page_count as usize);
        // SAFETY: as map_get.
        unsafe { *self.map().add(page) = info }
    }

    /// The first page of the small run that page `page` belongs to (`page` itself if it is not in
    /// a small run).
    pub fn small_run_start(&self, page: usize) -> usize {
        let info = self.map_get(page);
        if small_bin(info).is_some() {
            page - small_place(info, self.page_addr(page) as usize)
        } else {
            page
        }
    }

    /// Takes the best-fitting run of `n` free pages; `None` if the segment has no such run.
    pub fn alloc_pages(&mut self, n: usize) -> Option<usize> {
        if n > self.longest_free as usize {
            return None;
        }
        let fit = self.bitmap().best_fit(n)?;
        self.take_pages(fit.start, n);
        self.longest_free = match fit.longest_after_taking(n) {
            Some(longest) => longest as u32,
            // The search stopped early: only taking from the longest run can shorten it.
            None if fit.len < self.longest_free as usize => self.longest_free,
            None => self.bitmap().longest_free_run() as u32,
        };
        Some(fit.start)
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

    /// Gives back `n` pages from `start`; their map entries say free and not handed back to the
    /// system yet ([`PAGE_UNPURGED`]).
    pub fn free_pages(&mut self, start: usize, n: usize) {
        debug_assert!(start >= self.header_pages as usize && start + n <= self.page_count as usize);
        self.bitmap().clear_range(start, n);
        for page in start..start + n {
            self.map_set(page, PAGE_FREE | PAGE_UNPURGED);
        }
        self.free_pages += n as u32;
        let run = self.bitmap().free_run_around(start) as u32;
        self.longest_free = self.longest_free.max(run);
    }

    /// Whether no page past the header is in use.
    pub fn is_empty(&self) -> bool {
        self.free_pages == self.usable_pages()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{Layout, alloc, dealloc};

    const SIZE: usize = 64 * 1024;
    const P: usize = ZEND_MM_PAGE_SIZE;

    const DELAY: u32 = 10;

    /// The ranges (in pages) a purge pass over `seg` at `now` hands back, and when the next is due.
    fn purge(seg: &mut Segment, now: u64) -> (Vec<(usize, usize)>, Option<u64>) {
        let mut ranges = Vec::new();
        let due = seg.purge_free_pages(now, DELAY, |start, end| ranges.push((start / P, end / P)));
        (ranges, due)
    }

    /// Frees `n` pages from `start` at `now`.
    fn free(seg: &mut Segment, start: usize, n: usize, now: u64) -> bool {
        seg.free_pages(start, n);
        seg.note_unpurged(now)
    }

    #[test]
    fn pages_go_back_to_the_system_once_free_for_the_delay() {
        let layout = Layout::from_size_align(SIZE, SIZE).unwrap();
        // SAFETY: a non-zero layout; freed at the end.
        let base = unsafe { alloc(layout) };
        assert!(!base.is_null());
        // SAFETY: `SIZE` fresh bytes, aligned to their size.
        let seg = unsafe { &mut *Segment::init(base, SIZE, 0x1000, 0, 1) };
        assert_eq!(seg.header_pages(), 1);
        let none: Vec<(usize, usize)> = Vec::new();
        let a = seg.alloc_pages(3).unwrap();
        let b = seg.alloc_pages(2).unwrap();
        let c = seg.alloc_pages(4).unwrap();
        assert_eq!((a, b, c), (1, 4, 6));
        assert_eq!(
            purge(seg, 0),
            (none.clone(), None),
            "fresh pages were never freed"
        );
        assert!(free(seg, a, 3, 101), "the first free schedules a pass");
        assert!(!free(seg, c, 4, 101));
        assert_eq!(purge(seg, 105), (none.clone(), Some(111)), "not due yet");
        // Nothing freed for the delay: every freed page goes back, one range per free run
        // (10..16 never held anything).
        assert_eq!(purge(seg, 111), (vec![(1, 4), (6, 10)], None));
        assert!(!seg.has_unpurged());
        assert_eq!(purge(seg, 201), (none.clone(), None), "handed back already");
        // Frees go on: the pages free at a pass go back at the next, those freed since wait.
        assert!(free(seg, b, 2, 201));
        let d = seg.alloc_pages(2).unwrap();
        assert_eq!(d, 1, "the best fit: the 3-page run");
        assert!(!free(seg, d, 2, 205));
        assert_eq!(
            purge(seg, 211),
            (none.clone(), Some(221)),
            "freed too recently: they age"
        );
        assert_eq!(
            purge(seg, 221),
            (vec![(1, 6)], None),
            "over page 3, handed back before"
        );
        // Pages taken again before a pass are not handed back.
        let y = seg.alloc_pages(10).unwrap();
        let z = seg.alloc_pages(3).unwrap();
        assert_eq!((y, z), (1, 11));
        assert!(free(seg, y, 3, 301));
        assert!(!free(seg, y + 4, 6, 309));
        assert_eq!(purge(seg, 311), (none.clone(), Some(321)));
        let taken = seg.alloc_pages(3).unwrap();
        assert_eq!(taken, y, "taken again, aged");
        assert!(!free(seg, taken, 3, 313));
        assert!(!free(seg, y + 3, 1, 315));
        assert!(!free(seg, z, 3, 315));
        // A range of aged pages stops at pages freed since the last pass.
        assert_eq!(
            purge(seg, 321),
            (vec![(5, 11)], Some(331)),
            "y's first pages were freed at 313"
        );
        assert_eq!(purge(seg, 331), (vec![(1, 14)], None));
        assert!(seg.is_empty());
        // A reset segment whose freed pages wait keeps them waiting.
        let w = seg.alloc_pages(4).unwrap();
        assert!(free(seg, w, 4, 401));
        seg.alloc_pages(6).unwrap();
        seg.reset();
        assert_eq!(purge(seg, 411), (vec![(1, 16)], None));
        // SAFETY: allocated above with `layout`; the segment is not used again.
        unsafe { dealloc(base, layout) };
    }
}
