//! The heap (zend_alloc.c "Heap" and "Initialization"): one request-scoped memory manager.
//!
//! Owns the segments of one heap, the routing of each request to the small, large or huge paths,
//! realloc, the segment cache and the request lifecycle (`zend_mm_shutdown`). The paths themselves
//! live in `small`, `large` and `huge`; the counters and the memory limit in `accounting`.
//!
//! The heap struct lives in the header of its first ("main") segment, as in PHP 7+, so creating a
//! heap needs nothing but one segment from its storage, and a request-end shutdown keeps the heap
//! at the same address.
//!
//! Invariants:
//! - every segment in `all` belongs to this heap (`segment.heap == self`) and is registered in the
//!   region map; cached segments are registered too and have every page free;
//! - a segment is on the class list of its longest free run (`class_of(longest_free)`), or on none
//!   when it has no free page or is cached; `class_bits` has a bit set exactly for non-empty lists;
//! - `free_slots[b]` is a list of free slots of bin `b` inside small runs of this heap's segments;
//! - `fast_segments` names only live segments of this heap that are aligned to their size (or
//!   `NO_SEGMENT`), each at the entry of its segment number;
//! - `size`, `real_size` and the peaks follow `accounting`'s rules.
//!
//! Fast paths (`alloc_small_fast`, `free_small_fast`, `realloc_in_place_fast`) serve the common
//! small cases with no lookup beyond `fast_segments`; whatever they decline goes to the full paths,
//! which check ownership through the region map before touching any metadata.

use core::cell::UnsafeCell;
use core::ptr;

use crate::custom::CustomHandlers;
use crate::diagnostics::{self, Fatal, Site};
use crate::huge::HugeBlock;
use crate::region_map::{self, Region};
use crate::segment::{
    MAP_OFFSET, NO_CLASS, PAGE_CLASS_SHIFT, PAGE_KIND_MASK, PAGE_LARGE, SMALL_CLASS_BASE, Segment,
    small_bin, starts_slot,
};
use crate::sizes::{
    BIN_SIZE, BIN_SLOTS, MAX_SEGMENT_SIZE, PAGE_SHIFT, ZEND_MM_MAX_SMALL_SIZE, ZEND_MM_PAGE_SIZE,
    bin_of, keeps_bin,
};
use crate::storage::Storage;

/// A free slot of a small bin: the next free slot of the same bin.
#[repr(C)]
pub struct FreeSlot {
    pub next: *mut FreeSlot,
}

/// Segment classes by longest free run: one per length below 16 pages (every bin run and the
/// commonest large blocks are exact), then 4 per power of two.
pub(crate) const NUM_CLASSES: usize = class_of((MAX_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE) as u32) + 1;
const CLASS_WORDS: usize = NUM_CLASSES.div_ceil(64);

/// The class list for a segment whose longest free run is `len` (>= 1) pages.
pub(crate) const fn class_of(len: u32) -> usize {
    if len < 16 {
        len as usize
    } else {
        let log = 31 - len.leading_zeros();
        16 + (log as usize - 4) * 4 + ((len >> (log - 2)) & 3) as usize
    }
}

/// The smallest longest-free-run a segment on class list `class` can have.
pub(crate) const fn class_floor(class: usize) -> u32 {
    if class < 16 {
        class as u32
    } else {
        let log = (class - 16) / 4 + 4;
        ((4 + (class - 16) % 4) as u32) << (log - 2)
    }
}

const _: () = {
    assert!(class_of(15) == 15 && class_of(16) == 16 && class_floor(16) == 16);
    assert!(class_of(511) == 16 + 4 * 4 + 3 && class_floor(class_of(511)) == 448);
    assert!(class_floor(class_of(100)) <= 100 && class_floor(class_of(100) + 1) > 100);
};

#[cfg(test)]
#[test]
fn every_run_length_falls_in_the_class_whose_floor_it_meets() {
    for len in 1..=(MAX_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE) as u32 {
        let class = class_of(len);
        assert!(class < NUM_CLASSES);
        assert!(
            class_floor(class) <= len && (class + 1 == NUM_CLASSES || class_floor(class + 1) > len)
        );
    }
}

/// Why [`Heap::alloc_pages`] found no run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPages {
    /// The limit or the storage said no, and the caller may fail.
    Failed,
    /// A fresh segment has fewer pages than asked for (it was not page aligned).
    TooShort,
}

/// Kinds of block a pointer can name, found by [`Heap::locate`].
pub enum Block {
    Small {
        seg: *mut Segment,
        bin: usize,
    },
    Large {
        seg: *mut Segment,
        page: usize,
        pages: usize,
    },
    Huge(*mut HugeBlock),
}

#[repr(C)]
pub struct Heap {
    /// Non-zero when allocation is forwarded to custom handlers (kept first, as in PHP 7+, where
    /// extensions read it).
    pub use_custom_heap: i32,
    /// Non-zero while a memory-limit or out-of-memory error is being reported: the limit is not
    /// enforced meanwhile (PHP 8's `heap->overflow`).
    pub overflow: i32,
    /// Bytes handed out (bin sizes, whole pages, page-rounded huge sizes), and its peak.
    pub size: usize,
    pub peak: usize,
    pub segment_size: usize,
    /// `2^(64 - FAST_BITS - log2(segment_size))`: an address times this, shifted right by
    /// `64 - FAST_BITS`, is its segment number modulo `FAST_SEGMENTS` (one multiply instead of a
    /// variable shift and a mask).
    pub fast_multiplier: usize,
    /// Free slots per bin (indexed by bin; the entries past the last bin stay empty).
    pub free_slots: [*mut FreeSlot; BIN_SLOTS],
    /// `BIN_SIZE`, copied here so the fast paths address it from the heap pointer they hold
    /// (a constant table costs one more instruction to address in a shared library).
    pub bin_size: [usize; BIN_SLOTS],
    /// This heap's segments that are aligned to their size, by segment number modulo
    /// `FAST_SEGMENTS` ([`Heap::fast_index`]); [`NO_SEGMENT`] where there is none. The free fast
    /// path finds a pointer's segment here without the region map.
    pub fast_segments: [*mut Segment; FAST_SEGMENTS],
    /// Bytes taken from storage (segments, cached ones included, and huge blocks), and its peak.
    pub real_size: usize,
    pub real_peak: usize,
    pub limit: usize,
    /// The largest block served from pages of a segment; bigger ones are huge blocks.
    pub max_large_size: usize,
    pub main: *mut Segment,
    pub segments_count: usize,
    pub peak_segments_count: usize,
    pub class_heads: [*mut Segment; NUM_CLASSES],
    pub class_bits: [u64; CLASS_WORDS],
    /// Empty segments kept for reuse (linked through `class_next`).
    pub cached: *mut Segment,
    pub cached_count: usize,
    /// How many segments the next request is expected to need: the peak of recent requests,
    /// decaying by [`EXPECTATION_DECAY`] per request. It decides how many segments stay cached.
    pub expected_segments: f64,
    pub next_num: u64,
    pub huge_list: *mut HugeBlock,
    /// Freed huge blocks kept for reuse until the request ends (`huge::HUGE_CACHE` at most).
    pub huge_cached: *mut HugeBlock,
    pub huge_cached_count: usize,
    pub storage: Storage,
    /// Real peak above which a request end asks the storage to compact (0: never).
    pub compact_size: usize,
    /// Memory held back for the error path (PHP 5.3's reserve), and its requested size.
    pub reserve: *mut u8,
    pub reserve_size: usize,
    pub custom: CustomHandlers,
    /// Made custom by `USE_ZEND_ALLOC=0`: the heap's own memory is never used, and usage and peaks
    /// read 0, as for PHP's heap then (an empty struct in front of `malloc`).
    pub libc_only: bool,
    /// While `overflow` is set: the stack mark of the `raise` that set it. A call into the library
    /// from a shallower frame means the error handler is over (it longjmped out).
    pub report_mark: usize,
}

/// Per request, the expected segment count decays by this factor towards the latest peak.
pub(crate) const EXPECTATION_DECAY: f64 = 0.98;

/// Entries of [`Heap::fast_segments`].
const FAST_BITS: u32 = 6;
pub(crate) const FAST_SEGMENTS: usize = 1 << FAST_BITS;

/// What an empty [`Heap::fast_segments`] entry points at: zeroed memory as large as the biggest
/// segment's header, so the fast path may read "its" page map (all free pages, so the fast path
/// declines) without a null check. In `.bss`: it costs no memory.
#[repr(C, align(64))]
pub struct NoSegment(UnsafeCell<[u8; MAP_OFFSET + 4 * (MAX_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE)]>);

// SAFETY: never written; read as zeroes by any thread.
unsafe impl Sync for NoSegment {}

pub(crate) static NO_SEGMENT: NoSegment = NoSegment(UnsafeCell::new(
    [0; MAP_OFFSET + 4 * (MAX_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE)],
));

fn no_segment() -> *mut Segment {
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

pub(crate) static SENTINEL: SentinelHeap = SentinelHeap(UnsafeCell::new(Heap::blank(
    NO_SEGMENT.0.get().cast(),
    0,
    Storage::NONE,
)));

impl Heap {
    /// A heap with no segment, no block and no limit; `create` fills in the rest.
    const fn blank(no_segment: *mut Segment, segment_size: usize, storage: Storage) -> Heap {
        Heap {
            use_custom_heap: 0,
            overflow: 0,
            size: 0,
            peak: 0,
            segment_size,
            // The sentinel (size 0) gets 0: every address lands on the empty entry 0.
            fast_multiplier: if segment_size == 0 {
                0
            } else {
                1 << (64 - FAST_BITS - segment_size.trailing_zeros())
            },
            free_slots: [ptr::null_mut(); BIN_SLOTS],
            bin_size: BIN_SIZE,
            fast_segments: [no_segment; FAST_SEGMENTS],
            real_size: 0,
            real_peak: 0,
            limit: usize::MAX >> 1,
            max_large_size: 0,
            main: ptr::null_mut(),
            segments_count: 0,
            peak_segments_count: 0,
            class_heads: [ptr::null_mut(); NUM_CLASSES],
            class_bits: [0; CLASS_WORDS],
            cached: ptr::null_mut(),
            cached_count: 0,
            expected_segments: 1.0,
            next_num: 1,
            huge_list: ptr::null_mut(),
            huge_cached: ptr::null_mut(),
            huge_cached_count: 0,
            storage,
            compact_size: 0,
            reserve: ptr::null_mut(),
            reserve_size: 0,
            custom: CustomHandlers::NONE,
            libc_only: false,
            report_mark: 0,
        }
    }

    /// Creates a heap on `storage`: maps its main segment and builds the heap inside it. Null if the
    /// storage has no memory for the first segment.
    ///
    /// # Safety
    /// `storage` must be live and used by this heap only from now on. `segment_size` must be a power
    /// of two within the segment bounds.
    pub unsafe fn create(
        storage: Storage,
        segment_size: usize,
        reserve_size: usize,
        compact_size: usize,
    ) -> *mut Heap {
        let base = storage.alloc(segment_size);
        if base.is_null() {
            return ptr::null_mut();
        }
        let heap_at = base
            .wrapping_add(crate::segment::heap_offset(segment_size))
            .cast::<Heap>();
        // SAFETY: `base` holds `segment_size` fresh bytes; the heap struct goes after the segment's
        // bitmap, inside the header `init` accounts for with `extra`.
        let main = unsafe { Segment::init(base, segment_size, heap_at, size_of::<Heap>(), 0) };
        // SAFETY: as above: `heap_at` is inside the main segment's header, 8-aligned.
        unsafe {
            heap_at.write(Heap {
                real_size: segment_size,
                real_peak: segment_size,
                // What a segment at the main one's place in its page can serve (PHP's 511 pages
                // when the storage is page aligned); lowered if a later segment comes up shorter.
                max_large_size: crate::segment::usable_pages_at(base as usize, segment_size)
                    * ZEND_MM_PAGE_SIZE,
                main,
                segments_count: 1,
                peak_segments_count: 1,
                compact_size,
                reserve_size,
                ..Heap::blank(no_segment(), segment_size, storage)
            })
        };
        // SAFETY: the heap was just written.
        let heap = unsafe { &mut *heap_at };
        // SAFETY: `main` is the segment just laid out.
        let main_end = unsafe { (*main).end() };
        if !region_map::register(base as usize, main_end, Region::Segment(main), heap_at) {
            // SAFETY: the segment was never handed out.
            unsafe { storage.free(base) };
            return ptr::null_mut();
        }
        heap.link_segment(main);
        heap.remember_fast(main);
        heap.fill_reserve();
        heap_at
    }

    // ----------------------------------------------------------------------------------------
    // Fast paths: small blocks only, no error can happen; null/false sends the caller to the slow
    // path, which handles everything (and the sentinel heap makes these decline).

    /// Pops a free slot for `size` bytes if `size` is small and its bin has one.
    #[inline(always)]
    pub fn alloc_small_fast(&mut self, size: usize) -> *mut u8 {
        if size > ZEND_MM_MAX_SMALL_SIZE {
            return ptr::null_mut();
        }
        self.pop_free_slot(bin_of(size))
    }

    /// The entry of [`Heap::fast_segments`] for the segment-sized block containing `addr`.
    #[inline(always)]
    fn fast_index(&self, addr: usize) -> usize {
        addr.wrapping_mul(self.fast_multiplier) >> (usize::BITS - FAST_BITS)
    }

    /// The segment, offset and page-map entry of `p` if it lies in one of this heap's aligned
    /// segments (the fast table), without the region map.
    #[inline(always)]
    fn fast_lookup(&self, p: *mut u8) -> Option<(*mut Segment, usize, u32)> {
        let seg = self.fast_segments[self.fast_index(p as usize)];
        let offset = (p as usize).wrapping_sub(seg as usize);
        if offset >= self.segment_size {
            return None;
        }
        // SAFETY: `seg` is a live segment of this heap aligned to its size, or NO_SEGMENT (whose
        // zeroes cover any page map); `offset` lies inside it, so the entry is inside its map.
        let info = unsafe {
            seg.cast::<u8>()
                .add(MAP_OFFSET + (offset >> PAGE_SHIFT) * 4)
                .cast::<u32>()
                .read()
        };
        Some((seg, offset, info))
    }

    /// Frees `p` if it is a small block in one of this heap's aligned segments; false otherwise
    /// (including pointers that do not start a slot: the slow path reports them).
    #[inline(always)]
    pub fn free_small_fast(&mut self, p: *mut u8) -> bool {
        let Some((_, _, info)) = self.fast_lookup(p) else {
            return false;
        };
        // The slot check fails for every page that is not part of a small run.
        if !starts_slot(p, info) {
            return false;
        }
        let bin = (info >> PAGE_CLASS_SHIFT) as usize - SMALL_CLASS_BASE;
        // SAFETY: only small runs' classes pass the slot check, and their bins are below 32.
        unsafe { core::hint::assert_unchecked(bin < BIN_SLOTS) };
        self.free_small(p, bin);
        true
    }

    /// Frees `p` if it is a large block in one of this heap's aligned segments; false otherwise.
    pub fn free_large_fast(&mut self, p: *mut u8) -> bool {
        let Some((seg, offset, info)) = self.fast_lookup(p) else {
            return false;
        };
        if info & PAGE_KIND_MASK != PAGE_LARGE || offset % ZEND_MM_PAGE_SIZE != 0 {
            return false;
        }
        let pages = (info & crate::segment::LARGE_PAGES_MASK) as usize;
        self.free_large(seg, offset >> PAGE_SHIFT, pages);
        true
    }

    /// Whether `p` can stay in place at `size` bytes because its block stays the same (the same bin,
    /// or the same number of pages of a large block) and it lies in one of this heap's aligned
    /// segments: PHP's in-place cases that need no metadata change. False sends the caller to the
    /// slow path.
    #[inline(always)]
    pub fn realloc_in_place_fast(&mut self, p: *mut u8, size: usize) -> bool {
        let Some((_, offset, info)) = self.fast_lookup(p) else {
            return false;
        };
        if let Some(bin) = small_bin(info) {
            return keeps_bin(bin, size) && starts_slot(p, info);
        }
        match info & PAGE_KIND_MASK {
            PAGE_LARGE => {
                let bytes = (info & crate::segment::LARGE_PAGES_MASK) as usize * ZEND_MM_PAGE_SIZE;
                offset % ZEND_MM_PAGE_SIZE == 0
                    && size <= bytes
                    && size > bytes - ZEND_MM_PAGE_SIZE
                    && size > ZEND_MM_MAX_SMALL_SIZE
            }
            _ => false,
        }
    }

    /// Enters `seg` in the fast table if it is aligned to its size (a newer segment takes the place
    /// of an older one with the same number).
    fn remember_fast(&mut self, seg: *mut Segment) {
        let base = seg as usize;
        if base % self.segment_size == 0 {
            let index = self.fast_index(base);
            self.fast_segments[index] = seg;
        }
    }

    fn forget_fast(&mut self, seg: *mut Segment) {
        let index = self.fast_index(seg as usize);
        let entry = &mut self.fast_segments[index];
        if *entry == seg {
            *entry = no_segment();
        }
    }

    // ----------------------------------------------------------------------------------------
    // Interface: what `_emalloc` & co. call; custom handlers take over when installed.

    #[inline(always)]
    pub fn emalloc(&mut self, size: usize, site: Site) -> *mut u8 {
        if self.use_custom_heap != 0 {
            return self.custom_alloc(size, site);
        }
        self.alloc(size, site)
    }

    #[inline(always)]
    pub fn efree(&mut self, p: *mut u8) {
        if self.use_custom_heap != 0 {
            return self.custom_free(p);
        }
        self.free(p)
    }

    pub fn erealloc(&mut self, p: *mut u8, size: usize, copy_size: usize, site: Site) -> *mut u8 {
        if self.use_custom_heap != 0 {
            return self.custom_realloc(p, size, site);
        }
        self.realloc(p, size, copy_size, site)
    }

    /// `zend_mem_block_size`: 0 for custom heaps, which keep no sizes.
    pub fn mem_block_size(&self, p: *mut u8) -> usize {
        if self.use_custom_heap != 0 {
            return 0;
        }
        self.block_size(p)
    }

    // ----------------------------------------------------------------------------------------
    // Routing

    /// Allocates `size` bytes (PHP's `zend_mm_alloc_heap`). Null only when `site.may_fail`.
    #[inline(always)]
    pub fn alloc(&mut self, size: usize, site: Site) -> *mut u8 {
        if size <= ZEND_MM_MAX_SMALL_SIZE {
            self.alloc_small(bin_of(size), site)
        } else {
            self.alloc_big(size, site)
        }
    }

    #[inline(never)]
    fn alloc_big(&mut self, size: usize, site: Site) -> *mut u8 {
        if size <= self.max_large_size {
            self.alloc_large(size, site)
        } else {
            self.alloc_huge(size, site)
        }
    }

    /// Finds the block `p` names in this heap; panics ("zend_mm_heap corrupted") for any pointer that
    /// is not the start of a live block of this heap as far as the metadata tells.
    #[inline(always)]
    pub fn locate(&self, p: *mut u8) -> Block {
        let seg = match region_map::find_owned(p as usize, self) {
            Region::Segment(seg) => seg,
            Region::Huge(block) => return self.locate_huge(p, block),
            Region::Unowned => diagnostics::heap_corrupted(),
        };
        // SAFETY: a live segment of this heap (the region map vouches for the owner).
        let s = unsafe { &*seg };
        let Some(page) = s.page_of(p as usize) else {
            diagnostics::heap_corrupted()
        };
        let info = s.map_get(page);
        if let Some(bin) = small_bin(info) {
            if !starts_slot(p, info) {
                diagnostics::heap_corrupted();
            }
            return Block::Small { seg, bin };
        }
        match info & PAGE_KIND_MASK {
            PAGE_LARGE if (p as usize) % ZEND_MM_PAGE_SIZE == 0 => Block::Large {
                seg,
                page,
                pages: (info & crate::segment::LARGE_PAGES_MASK) as usize,
            },
            _ => diagnostics::heap_corrupted(),
        }
    }

    #[cold]
    fn locate_huge(&self, p: *mut u8, block: *mut HugeBlock) -> Block {
        // SAFETY: a live huge block of this heap (the region map vouches for the owner).
        let b = unsafe { &*block };
        if b.data != p {
            diagnostics::heap_corrupted();
        }
        Block::Huge(block)
    }

    /// Frees `p` (PHP's `zend_mm_free_heap`); null is a no-op.
    #[inline(always)]
    pub fn free(&mut self, p: *mut u8) {
        if p.is_null() {
            return;
        }
        match self.locate(p) {
            Block::Small { bin, .. } => self.free_small(p, bin),
            Block::Large { seg, page, pages } => self.free_large(seg, page, pages),
            Block::Huge(block) => self.free_huge(block),
        }
    }

    /// Usable size of the block at `p` (bin size, whole pages, page-rounded huge size); 0 for null.
    pub fn block_size(&self, p: *mut u8) -> usize {
        if p.is_null() {
            return 0;
        }
        match self.locate(p) {
            Block::Small { bin, .. } => BIN_SIZE[bin],
            Block::Large { pages, .. } => pages * ZEND_MM_PAGE_SIZE,
            // SAFETY: `locate` returned a live huge block of this heap.
            Block::Huge(block) => unsafe { (*block).size },
        }
    }

    /// Resizes `p` to `size` bytes keeping at most `copy_size` bytes of its contents (PHP's
    /// `zend_mm_realloc_heap`). Null only when `site.may_fail`, and then `p` is untouched.
    pub fn realloc(&mut self, p: *mut u8, size: usize, copy_size: usize, site: Site) -> *mut u8 {
        if p.is_null() {
            return self.alloc(size, site);
        }
        match self.locate(p) {
            Block::Small { bin, .. } => {
                if keeps_bin(bin, size) {
                    return p;
                }
                self.move_block(p, BIN_SIZE[bin], size, copy_size, site)
            }
            Block::Large { seg, page, pages } => {
                if size > ZEND_MM_MAX_SMALL_SIZE
                    && size <= self.max_large_size
                    && self.resize_large_in_place(seg, page, pages, size)
                {
                    return p;
                }
                self.move_block(p, pages * ZEND_MM_PAGE_SIZE, size, copy_size, site)
            }
            Block::Huge(block) => self.realloc_huge(block, size, copy_size, site),
        }
    }

    /// Moves a block to a new one of `size` bytes (PHP's `zend_mm_realloc_slow`); the transient
    /// double allocation does not count towards the peak.
    pub fn move_block(
        &mut self,
        p: *mut u8,
        old_size: usize,
        size: usize,
        copy_size: usize,
        site: Site,
    ) -> *mut u8 {
        let orig_peak = self.peak.max(self.size);
        let new = self.alloc(size, site);
        if new.is_null() {
            return new;
        }
        let n = old_size.min(size).min(copy_size);
        // SAFETY: both blocks are live, distinct, and at least `n` bytes long.
        unsafe { ptr::copy_nonoverlapping(p, new, n) };
        self.free(p);
        self.peak = orig_peak.max(self.size);
        new
    }

    /// Whether `p` points into memory of this heap (any segment or huge block).
    pub fn owns(&self, p: *const u8) -> bool {
        ptr::eq(region_map::owner_of(p as usize), self)
    }

    // ----------------------------------------------------------------------------------------
    // Pages across segments

    /// Takes a run of `pages` pages from some segment of this heap, mapping a new segment if no
    /// existing one has room. Fails only when `site.may_fail`, or when a fresh segment is too short
    /// for `pages` (unaligned storage; only large requests near the maximum meet it).
    pub fn alloc_pages(
        &mut self,
        pages: usize,
        tried: usize,
        site: Site,
    ) -> Result<(*mut Segment, usize), NoPages> {
        let mut gc_done = false;
        loop {
            if let Some(seg) = self.segment_with_run(pages) {
                // SAFETY: class lists hold live segments of this heap.
                let s = unsafe { &mut *seg };
                if let Some(page) = s.alloc_pages(pages) {
                    self.reclassify(seg);
                    return Ok((seg, page));
                }
            }
            let seg = if !self.cached.is_null() {
                self.take_cached_segment()
            } else if self.within_limit(self.segment_size) {
                self.map_segment(tried, site).ok_or(NoPages::Failed)?
            } else if !gc_done {
                gc_done = true;
                self.gc();
                continue;
            } else {
                if site.may_fail {
                    return Err(NoPages::Failed);
                }
                self.fatal(
                    site,
                    Fatal::Limit {
                        limit: self.limit,
                        tried,
                    },
                )
            };
            // SAFETY: a segment just linked into this heap.
            let s = unsafe { &mut *seg };
            let Some(page) = s.alloc_pages(pages) else {
                // The storage returned this segment further into a page than the first one: it
                // has a page fewer. Blocks that long become huge from now on, and the segment
                // goes back to the cache instead of staying linked for nothing.
                self.max_large_size = self
                    .max_large_size
                    .min(s.usable_pages() as usize * ZEND_MM_PAGE_SIZE);
                self.segment_pages_freed(seg);
                return Err(NoPages::TooShort);
            };
            self.reclassify(seg);
            return Ok((seg, page));
        }
    }

    /// A segment whose longest free run has at least `pages` pages, preferring old segments: the
    /// oldest of the first segments of the lists that surely fit (PHP takes the first chunk, in
    /// creation order, with room). Not the tightest fit: a block that moved to grow sits at the
    /// front of the youngest segment, whose free tail is then often the tightest run, while the
    /// holes it left in older segments are longer. Filling that tail first blocks the block's next
    /// in-place growth and makes it move again, into yet another new segment, leaving every hole
    /// behind (7x PHP's real memory for a literal table growing among 64 KiB arena blocks).
    /// Older segments first fill those holes and leave the young tail to the growing block.
    fn segment_with_run(&self, pages: usize) -> Option<*mut Segment> {
        let wanted = pages as u32;
        let class = class_of(wanted);
        // Every segment on a list at or above `first_sure` has a long enough run.
        let first_sure = if class_floor(class) >= wanted {
            class
        } else {
            class + 1
        };
        if let Some(seg) = self.oldest_head_from(first_sure) {
            return Some(seg);
        }
        if first_sure != class {
            // The shared class may still hold a fit; look at a few of its segments only.
            let mut seg = self.class_heads[class];
            let mut probes = 0;
            while !seg.is_null() && probes < 8 {
                // SAFETY: class lists hold live segments of this heap.
                let s = unsafe { &*seg };
                if s.longest_free >= wanted {
                    return Some(seg);
                }
                seg = s.class_next;
                probes += 1;
            }
        }
        None
    }

    /// The oldest of the first segments of the non-empty class lists at or after `from`: one look
    /// per list (at most [`NUM_CLASSES`]), whatever the segment count.
    fn oldest_head_from(&self, from: usize) -> Option<*mut Segment> {
        let mut best: *mut Segment = ptr::null_mut();
        let mut best_num = u64::MAX;
        for w in from / 64..CLASS_WORDS {
            let mut bits = self.class_bits[w];
            if w == from / 64 {
                bits &= u64::MAX << (from % 64);
            }
            while bits != 0 {
                let head = self.class_heads[w * 64 + bits.trailing_zeros() as usize];
                bits &= bits - 1;
                // SAFETY: class lists hold live segments of this heap.
                let num = unsafe { (*head).num };
                if num < best_num {
                    best = head;
                    best_num = num;
                }
            }
        }
        (!best.is_null()).then_some(best)
    }

    /// Puts `seg` on the class list matching its longest free run (none if it has no free page).
    pub fn reclassify(&mut self, seg: *mut Segment) {
        // SAFETY: a live segment of this heap.
        let (longest_free, current) = unsafe { ((*seg).longest_free, (*seg).class) };
        let class = if longest_free == 0 {
            NO_CLASS
        } else {
            class_of(longest_free) as u32
        };
        if class == current {
            return;
        }
        self.unclassify(seg);
        if class != NO_CLASS {
            // SAFETY: as above; borrowed after `unclassify`, which borrows it too.
            let s = unsafe { &mut *seg };
            let c = class as usize;
            let head = self.class_heads[c];
            s.class = class;
            s.class_prev = ptr::null_mut();
            s.class_next = head;
            if !head.is_null() {
                // SAFETY: list members are live segments of this heap.
                unsafe { (*head).class_prev = seg };
            }
            self.class_heads[c] = seg;
            self.class_bits[c / 64] |= 1 << (c % 64);
        }
    }

    /// Takes `seg` off its class list, if it is on one.
    fn unclassify(&mut self, seg: *mut Segment) {
        // SAFETY: a live segment of this heap.
        let s = unsafe { &mut *seg };
        if s.class == NO_CLASS {
            return;
        }
        let c = s.class as usize;
        // SAFETY: list neighbours are live segments of this heap.
        unsafe {
            if s.class_prev.is_null() {
                self.class_heads[c] = s.class_next;
            } else {
                (*s.class_prev).class_next = s.class_next;
            }
            if !s.class_next.is_null() {
                (*s.class_next).class_prev = s.class_prev;
            }
        }
        if self.class_heads[c].is_null() {
            self.class_bits[c / 64] &= !(1 << (c % 64));
        }
        s.class = NO_CLASS;
        s.class_prev = ptr::null_mut();
        s.class_next = ptr::null_mut();
    }

    /// Adds a segment to the list of live segments (after the main one) and to its class list.
    fn link_segment(&mut self, seg: *mut Segment) {
        // SAFETY: `seg` is a live segment of this heap; `main` too.
        unsafe {
            if seg != self.main {
                let main = &mut *self.main;
                (*seg).all_prev = self.main;
                (*seg).all_next = main.all_next;
                if !main.all_next.is_null() {
                    (*main.all_next).all_prev = seg;
                }
                main.all_next = seg;
            }
        }
        self.reclassify(seg);
    }

    fn unlink_segment(&mut self, seg: *mut Segment) {
        self.unclassify(seg);
        // SAFETY: `seg` is a live non-main segment, so it has a predecessor.
        unsafe {
            let s = &mut *seg;
            (*s.all_prev).all_next = s.all_next;
            if !s.all_next.is_null() {
                (*s.all_next).all_prev = s.all_prev;
            }
            s.all_prev = ptr::null_mut();
            s.all_next = ptr::null_mut();
        }
    }

    fn count_new_segment(&mut self) {
        self.segments_count += 1;
        self.peak_segments_count = self.peak_segments_count.max(self.segments_count);
    }

    /// Brings a cached segment back to the live list; the cache must not be empty.
    fn take_cached_segment(&mut self) -> *mut Segment {
        let seg = self.pop_cached();
        self.count_new_segment();
        self.link_segment(seg);
        seg
    }

    /// Maps a new segment from storage (PHP's chunk allocation); on failure collects garbage once
    /// and retries, then raises "Out of memory" (or returns `None` when `site.may_fail`).
    fn map_segment(&mut self, tried: usize, site: Site) -> Option<*mut Segment> {
        let size = self.segment_size;
        let base = self.storage_alloc(size, tried, site)?;
        let num = self.next_num;
        self.next_num += 1;
        // SAFETY: `base` holds `size` fresh bytes from our storage.
        let seg = unsafe { Segment::init(base, size, self, 0, num) };
        if !region_map::register(
            base as usize,
            base as usize + size,
            Region::Segment(seg),
            self,
        ) {
            // SAFETY: never handed out.
            unsafe { self.storage.free(base) };
            return self.out_of_memory(tried, site);
        }
        self.count_storage(size);
        self.count_new_segment();
        self.link_segment(seg);
        self.remember_fast(seg);
        Some(seg)
    }

    /// `size` bytes from storage, retrying once after `gc`; `None` (or a fatal error) on failure.
    pub fn storage_alloc(&mut self, size: usize, tried: usize, site: Site) -> Option<*mut u8> {
        let mut p = self.storage.alloc(size);
        if p.is_null() && self.gc() > 0 {
            p = self.storage.alloc(size);
        }
        if p.is_null() {
            self.out_of_memory(tried, site)
        } else {
            Some(p)
        }
    }

    fn out_of_memory<T>(&mut self, tried: usize, site: Site) -> Option<T> {
        if site.may_fail {
            return None;
        }
        self.fatal(
            site,
            Fatal::OutOfMemory {
                allocated: self.real_size,
                tried,
            },
        )
    }

    /// Raises `fatal` for this heap (see [`diagnostics::raise`]).
    pub fn fatal(&mut self, site: Site, fatal: Fatal) -> ! {
        // SAFETY: `self` is live and consistent; callers hold no values with destructors.
        unsafe { diagnostics::raise(self, site, fatal) }
    }

    /// Called when a segment may have become empty: gives it up (to the cache or the storage)
    /// unless it is the main one, or files it under its new class.
    pub fn segment_pages_freed(&mut self, seg: *mut Segment) {
        // SAFETY: a live segment of this heap.
        if seg != self.main && unsafe { (*seg).is_empty() } {
            self.delete_segment(seg);
        } else {
            self.reclassify(seg);
        }
    }

    /// An empty non-main segment leaves the live list for the cache. Segments go back to storage
    /// at request end (beyond what recent requests needed), in `zend_mm_gc`, and when the limit
    /// or the storage asks for memory: a request whose usage swings reuses its segments instead
    /// of unmapping them and faulting the same memory in again. (PHP's `zend_mm_delete_chunk`
    /// keeps about the average of recent requests and unmaps the rest at once.)
    fn delete_segment(&mut self, seg: *mut Segment) {
        self.unlink_segment(seg);
        self.segments_count -= 1;
        self.push_cached(seg);
    }

    /// Returns every cached segment to storage; the bytes given back.
    pub fn release_cached_segments(&mut self) -> usize {
        let mut released = 0;
        while !self.cached.is_null() {
            self.drop_one_cached_segment();
            released += self.segment_size;
        }
        released
    }

    /// Returns the most recently cached segment to storage.
    pub fn drop_one_cached_segment(&mut self) {
        let seg = self.pop_cached();
        if seg.is_null() {
            return;
        }
        self.real_size -= self.segment_size;
        self.release_segment(seg);
    }

    fn push_cached(&mut self, seg: *mut Segment) {
        // SAFETY: a live segment of this heap, off every list.
        unsafe { (*seg).class_next = self.cached };
        self.cached = seg;
        self.cached_count += 1;
    }

    /// Takes the most recently cached segment off the cache; null if it is empty.
    fn pop_cached(&mut self) -> *mut Segment {
        let seg = self.cached;
        if !seg.is_null() {
            // SAFETY: cached segments are live segments of this heap, linked through `class_next`.
            unsafe {
                self.cached = (*seg).class_next;
                (*seg).class_next = ptr::null_mut();
            }
            self.cached_count -= 1;
        }
        seg
    }

    /// Returns a segment to storage (its accounting is the caller's business).
    fn release_segment(&mut self, seg: *mut Segment) {
        self.forget_fast(seg);
        // SAFETY: a live segment of this heap that no list references any more.
        unsafe {
            let base = (*seg).base();
            region_map::unregister(base as usize, (*seg).end());
            self.storage.free(base);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Reserve

    /// Sets the error-path reserve aside (not counted as usage).
    fn fill_reserve(&mut self) {
        if self.reserve_size == 0 || !self.reserve.is_null() {
            return;
        }
        let (size, peak) = (self.size, self.peak);
        self.reserve = self.alloc(self.reserve_size, Site::INTERNAL);
        self.size = size;
        self.peak = peak;
    }

    /// Gives the reserve back so an error handler has memory to work with.
    fn release_reserve(&mut self) {
        let p = core::mem::replace(&mut self.reserve, ptr::null_mut());
        if !p.is_null() {
            // The reserve is not usage: counted in just for its free, leaving the peak alone.
            let peak = self.peak.max(self.size);
            self.size += self.block_size(p);
            self.free(p);
            self.peak = peak;
        }
    }

    /// Entered when `fatal` is about to be reported for this heap from the frame marked `mark`.
    /// Limit and out-of-memory errors suspend the limit while the handler runs, as in PHP 8 (the
    /// handler may need memory); the first report's mark is kept through nested ones.
    pub fn begin_error_report(&mut self, fatal: &Fatal, mark: usize) {
        self.end_finished_report(mark);
        if fatal.suspends_limit() && self.overflow == 0 {
            self.overflow = 1;
            self.report_mark = mark;
        }
        self.release_reserve();
    }

    /// Called on entry to the library from the frame marked `entry_mark`: if that frame is
    /// shallower than the `raise` of the error being reported, the handler has returned or
    /// longjmped out (PHP's bailout), and the limit applies again. (PHP re-arms it in
    /// `zend_mm_safe_error`'s catch block; a longjmp from a C handler passes no code of ours, so the
    /// next call from outside the handler is the first moment the library can tell.)
    #[inline(always)]
    pub fn end_finished_report(&mut self, entry_mark: usize) {
        if self.overflow != 0 && entry_mark > self.report_mark {
            self.overflow = 0;
        }
    }

    // ----------------------------------------------------------------------------------------
    // Shutdown

    /// Ends a request (`full == false`): releases every block at once, at a cost proportional to
    /// segments, and leaves the heap ready at the same address with a cache of segments sized by
    /// recent demand. `full == true` returns everything to storage, the heap itself included.
    ///
    /// # Safety
    /// `heap` must be live; no block of it may be used afterwards, and after a full shutdown not the
    /// heap either.
    pub unsafe fn shutdown(heap: *mut Heap, full: bool) {
        // SAFETY: live heap (caller contract).
        let h = unsafe { &mut *heap };
        h.release_reserve();
        h.release_huge_blocks();
        if full {
            // SAFETY: forwarded caller contract.
            unsafe { Heap::destroy(heap) };
            return;
        }
        // Every segment but the main one goes to the cache, then the cache is cut to what the next
        // request is expected to need.
        // SAFETY: `main` is live; the all-list holds live segments of this heap.
        let mut seg = unsafe { (*h.main).all_next };
        while !seg.is_null() {
            // SAFETY: as above.
            let next = unsafe { (*seg).all_next };
            h.unlink_segment(seg);
            h.segments_count -= 1;
            // Forget the request's blocks now, so a stale pointer into a cached segment is caught.
            // SAFETY: as above.
            unsafe { (*seg).reset() };
            h.push_cached(seg);
            seg = next;
        }
        // Keep what the next request is expected to need: the peak of recent requests, decaying.
        // A request like the recent ones maps nothing new; after a spike the cache shrinks a
        // little per request. (PHP keeps about the average of recent peaks, so requests whose
        // peak wobbles around it unmap and fault in a segment again and again.)
        h.expected_segments =
            (h.peak_segments_count as f64).max(h.expected_segments * EXPECTATION_DECAY);
        // A little slack over the expectation: a request slightly above the recent peaks then
        // finds its segments still there.
        let keep = (h.expected_segments * 1.125).ceil() as usize;
        while h.cached_count + 1 > keep {
            let seg = h.pop_cached();
            if seg.is_null() {
                break;
            }
            h.release_segment(seg);
        }
        if h.compact_size != 0 && h.real_peak > h.compact_size {
            h.storage.compact();
        }
        // SAFETY: the main segment is live.
        unsafe { (*h.main).reset() };
        h.reclassify(h.main);
        h.free_slots = [ptr::null_mut(); BIN_SLOTS];
        h.size = 0;
        h.peak = 0;
        h.real_size = (h.cached_count + 1) * h.segment_size;
        h.real_peak = h.real_size;
        h.segments_count = 1;
        h.peak_segments_count = 1;
        h.overflow = 0;
        h.fill_reserve();
    }

    /// Returns every segment to storage, the main one (and with it the heap) last, then destroys
    /// the storage.
    ///
    /// # Safety
    /// As [`Heap::shutdown`] with `full`.
    unsafe fn destroy(heap: *mut Heap) {
        // SAFETY: live heap (caller contract).
        let h = unsafe { &mut *heap };
        let storage = h.storage;
        // SAFETY: the all-list holds live segments of this heap.
        let mut seg = unsafe { (*h.main).all_next };
        while !seg.is_null() {
            // SAFETY: as above.
            let next = unsafe { (*seg).all_next };
            h.release_segment(seg);
            seg = next;
        }
        h.release_cached_segments();
        let main = h.main;
        // From here on the heap struct is gone with its segment.
        // SAFETY: the main segment is live and nothing references it after this.
        unsafe {
            let base = (*main).base();
            region_map::unregister(base as usize, (*main).end());
            storage.free(base);
            storage.destroy();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_heap() -> *mut Heap {
        // Aligned as the built-in storages align, on Rust's allocator (Miri has no mmap).
        let handlers = crate::model_tests::StdStorage::<0>::handlers();
        // SAFETY: test init handlers take no parameters.
        let storage = unsafe { Storage::from_raw(handlers.init.unwrap()(ptr::null_mut())) };
        // SAFETY: a fresh storage, a valid segment size.
        unsafe { Heap::create(storage, 2 << 20, 0, 0) }
    }

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
        let heap = new_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let p = h.alloc(64, Site::INTERNAL);
        assert!(!sentinel.free_small_fast(p));
        assert!(!sentinel.free_small_fast(no_segment().cast()));
        assert!(!sentinel.free_large_fast(p));
        assert!(!sentinel.realloc_in_place_fast(p, 64));
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn page_runs_go_to_the_oldest_segment_that_fits() {
        const PAGE: usize = ZEND_MM_PAGE_SIZE;
        let heap = new_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let main_seg = h.main as usize..h.main as usize + h.segment_size;
        // The main segment (511 free pages): a 300-page block, then a 16-page one, 195 pages left.
        let x = h.alloc(300 * PAGE, Site::INTERNAL);
        let side = h.alloc(16 * PAGE, Site::INTERNAL);
        assert!(main_seg.contains(&(x as usize)) && main_seg.contains(&(side as usize)));
        // A 301-page block needs a new segment, and leaves 210 pages behind it there.
        let y = h.alloc(301 * PAGE, Site::INTERNAL);
        assert!(!main_seg.contains(&(y as usize)));
        // The main segment now has a 300-page hole: the next run goes there, although the
        // younger segment's 210 pages fit it more tightly; so the 301-page block grows in place.
        h.free(x);
        let next = h.alloc(16 * PAGE, Site::INTERNAL);
        assert!(
            main_seg.contains(&(next as usize)),
            "the older segment serves the run"
        );
        assert_eq!(h.realloc(y, 302 * PAGE, 0, Site::INTERNAL), y);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn the_free_fast_path_takes_only_small_blocks_of_its_own_aligned_segments() {
        let (a, b) = (new_heap(), new_heap());
        // SAFETY: live heaps of this thread.
        let (ha, hb) = unsafe { (&mut *a, &mut *b) };
        let small = ha.alloc(100, Site::INTERNAL);
        let large = ha.alloc(10000, Site::INTERNAL);
        let huge = ha.alloc(3 << 20, Site::INTERNAL);
        let theirs = hb.alloc(100, Site::INTERNAL);
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
        let usage = ha.size;
        assert!(ha.free_small_fast(small));
        assert_eq!(ha.size, usage - 112);
        assert_eq!(ha.alloc_small_fast(100), small, "the slot is reused first");
        // SAFETY: the Box allocation above.
        drop(unsafe { Box::from_raw(foreign.cast::<[u8; 64]>()) });
        // SAFETY: the heaps die with their blocks.
        unsafe {
            Heap::shutdown(a, true);
            Heap::shutdown(b, true);
        }
    }
}
