//! The heap (zend_alloc.c "Heap" and "Initialization"): one request-scoped memory manager.
//!
//! Owns the [`Heap`] struct and its life: creation on a storage, request-end and full shutdown.
//! The heap's other parts are its submodules, each an `impl Heap` over the fields defined here
//! (private to this module and its children):
//!
//! | module | part |
//! |---|---|
//! | [`api`] | the operations the C skin calls, on a raw heap pointer: custom handlers, errors |
//! | [`fast`] | the fast paths, the table of aligned segments, the sentinel heap |
//! | [`route`] | routing to small/large/huge, `locate` (what a pointer is), realloc |
//! | [`pages`] | page runs across segments: class lists, the segment cache, mapping segments |
//! | [`small`], [`large`], [`huge`] | the three block kinds |
//! | [`gc`] | giving back free runs and cached memory (`zend_mm_gc`) |
//! | [`accounting`] | usage, peaks, the memory limit |
//! | [`error`] | refusals, the error-report state, the reserve |
//! | [`custom`] | custom handlers, `USE_ZEND_ALLOC=0` |
//! | [`remote`] | frees from other threads, heaps of exited threads |
//! | [`check`] | block status and whole-heap checks |
//! | [`stats`] | statistics: counters per bin and block kind, allocation sites, text and JSON |
//! | [`track`] | block tracking (PHP 5.3's debug build at run time): headers, guards, leak report |
//!
//! The heap struct lives in the header of its first ("main") segment, as in PHP 7+, so creating a
//! heap needs nothing but one segment from its storage, and a request-end shutdown keeps the heap
//! at the same address.
//!
//! Invariants:
//! - every segment on `segments` belongs to this heap (owner `self`) and is registered in the
//!   region map; so are the main segment (not on the list) and the cached ones, which have every
//!   page free;
//! - a segment is on the class list of its longest free run, or on none when it has no free page
//!   or is cached (see [`pages`]);
//! - `free_slots[b]` is a list of free slots of bin `b` inside small runs of this heap's segments;
//! - `fast_segments` names only live default-sized segments of this heap aligned to their size (or the
//!   empty segment), each at the entry of its segment number;
//! - `size`, `real_size` and the peaks follow [`accounting`]'s rules.
//!
//! Allocation paths return `Result<*mut u8, Refusal>`: the core never raises a fatal error itself.
//! [`api`] turns a refusal into PHP's fatal error (or NULL for callers that may fail) after every
//! borrow of the heap has ended, so an error handler that calls back into the heap never meets a
//! live `&mut Heap`.

mod accounting;
pub mod api;
mod check;
mod custom;
mod error;
mod fast;
mod gc;
mod huge;
mod large;
mod pages;
mod remote;
mod route;
mod small;
mod stats;
mod track;

use core::ptr;

use crate::list::{CountedList, List};
use crate::region_map::{self, OWNER_ALIGN, Region};
use crate::segment::{self, AllSegments, ByClass, Segment};
use crate::sizes::{
    BIN_SIZE, BIN_SLOTS, MAX_BIN_PAGES, MIN_SEGMENT_SIZE, ZEND_MM_PAGE_SIZE, ZEND_MM_SEG_SIZE,
};
use crate::storage::Storage;

pub use check::BlockStatus;
pub use custom::{CustomHandlers, FreeFn, MallocFn, ReallocFn};
pub use error::Refusal;
pub use fast::SENTINEL;
use fast::{FAST_SEGMENTS, no_segment};
use huge::{CachedHugeList, HugeList};
use large::RunCache;
use pages::{CLASS_WORDS, NUM_CLASSES};
use small::FreeSlot;
pub use stats::{BinStats, BlockStats, HeapStats, SiteStats, print_stats};
pub use track::{print_report, report_leaks};

#[repr(C)]
pub struct Heap {
    /// Non-zero when allocation is forwarded to custom handlers (kept first, as in PHP 7+, where
    /// extensions read it).
    use_custom_heap: i32,
    /// Non-zero while a memory-limit or out-of-memory error is being reported: the limit is not
    /// enforced meanwhile (PHP 8's `heap->overflow`).
    overflow: i32,
    /// The peak of the bytes handed out (bin sizes, whole pages, page-rounded huge sizes), and how
    /// far the bytes handed out now are below it (see `accounting`).
    peak: usize,
    headroom: isize,
    segment_size: usize,
    /// Free slots per bin (indexed by bin; the entries past the last bin stay empty).
    free_slots: [*mut FreeSlot; BIN_SLOTS],
    /// `BIN_SIZE`, copied here so the fast paths address it from the heap pointer they hold
    /// (a constant table costs one more instruction to address in a shared library); 16 bits
    /// are enough and leave the header page room for the remote lists.
    bin_size: [u16; BIN_SLOTS],
    /// This heap's default-sized segments that are aligned to their size, by segment number
    /// modulo `FAST_SEGMENTS`; the empty segment where there is none. The free fast path finds a
    /// pointer's segment here without the region map.
    fast_segments: [*mut Segment; FAST_SEGMENTS],
    /// Bytes taken from storage (segments, cached ones included, and huge blocks), and its peak.
    real_size: usize,
    real_peak: usize,
    limit: usize,
    /// The largest block served from pages of a segment; bigger ones are huge blocks.
    max_large_size: usize,
    /// The segment holding this struct; never cached or released before the heap goes.
    main: *mut Segment,
    /// Every live segment but the main one.
    segments: List<Segment, AllSegments>,
    /// Live segments, the main one included, and the peak since the request began.
    segments_count: usize,
    peak_segments_count: usize,
    /// Without request ends: pages held by small runs, and the segment count at which the heap
    /// next frees those whose slots are all free before it takes a segment (see [`pages`]).
    small_run_pages: usize,
    collect_runs_at: u32,
    /// Without request ends: the time (low 32 bits of `os::monotonic_ms`) from which the next
    /// idle-run collection may run (see [`Heap::collect_idle_runs`]; its other two fields sit in
    /// the padding after the flags below: the main segment's header page has no byte to spare).
    idle_runs_at: u32,
    /// Without request ends: the time (`os::monotonic_ms`) from which something cached may go back
    /// to storage (`u64::MAX`: nothing cached may go yet; see [`pages`]).
    purge_at: u64,
    /// Freed large runs kept whole, by page count (see [`large`]).
    run_cache: RunCache,
    /// Segments by class of their longest free run (see [`pages`]).
    class_lists: [List<Segment, ByClass>; NUM_CLASSES],
    class_bits: [u64; CLASS_WORDS],
    /// Empty segments kept for reuse, the most recently emptied first.
    cached: CountedList<Segment, ByClass>,
    /// How many segments the next request is expected to need: the peak of recent requests,
    /// decaying by [`EXPECTATION_DECAY`] per request. It decides how many segments stay cached.
    expected_segments: f64,
    next_num: u64,
    /// Requests ended (`shutdown` without `full`): the clock of the idle policy. The request under
    /// way is number `requests + 1`.
    requests: u64,
    /// Live huge blocks, and freed ones kept for reuse until the request ends.
    huge_blocks: HugeList,
    huge_cached: CachedHugeList,
    storage: Storage,
    /// Real peak above which a request end asks the storage to compact (0: never).
    compact_size: usize,
    /// Memory held back for the error path (PHP 5.3's reserve), and its requested size.
    reserve: *mut u8,
    reserve_size: usize,
    custom: CustomHandlers,
    /// Made custom by `USE_ZEND_ALLOC=0`: the heap's own memory is never used, and usage and peaks
    /// read 0, as for PHP's heap then (an empty struct in front of `malloc`).
    libc_only: bool,
    /// Every block carries a tracking header (see [`track`]).
    tracking: bool,
    /// Fault injection: allocations each request may make (`u64::MAX`: unlimited), how many are
    /// left in this one, and whether one was refused for it.
    allocs_hit: bool,
    /// Without request ends: slow paths left before the clock is read for an idle-run collection,
    /// and the wait after one in units of `PURGE_DELAY_MS`.
    idle_runs_countdown: u16,
    idle_runs_wait: u16,
    max_allocs: u64,
    allocs_left: u64,
    /// Counters while the heap keeps statistics (see [`stats`]); null otherwise.
    stats: *mut stats::StatsArea,
    /// While `overflow` is set: the stack mark of the `raise` that set it. A call into the library
    /// from a shallower frame means the error handler is over (it longjmped out).
    report_mark: usize,
}

// The heap's address is its owner id in the region map, whose low bit tags huge blocks.
const _: () = assert!(align_of::<Heap>() >= OWNER_ALIGN);
// Every bin size fits the heap's 16-bit copy of the table.
const _: () = assert!(crate::sizes::MAX_SMALL_SIZE <= u16::MAX as usize);
const _: () = {
    // The default segment keeps PHP's 511 pages, even the main one holding the heap.
    assert!(segment::header_pages(ZEND_MM_SEG_SIZE, remote::HEAP_BYTES) == 1);
    // Every allowed segment size leaves room for the longest bin run after alignment losses.
    assert!(
        segment::max_large_pages(MIN_SEGMENT_SIZE)
            - segment::header_pages(MIN_SEGMENT_SIZE, remote::HEAP_BYTES)
            >= MAX_BIN_PAGES as usize
    );
};

/// Per request, the expected segment count decays by this factor towards the latest peak.
const EXPECTATION_DECAY: f64 = 0.98;

/// Cached memory (segments, huge blocks) that served no request for this many request ends goes
/// back to storage.
const IDLE_REQUESTS: u32 = 8;

/// As the C library's allocator (the preload library) no request ever ends: the caches of emptied
/// segments and freed huge blocks are trimmed by age instead, on the allocation slow paths.
const NO_REQUEST_ENDS: bool = cfg!(feature = "preload");

/// Without request ends: cached memory idle for longer than this many milliseconds goes back to
/// storage at the next slow path.
const PURGE_DELAY_MS: u32 = 100;

/// Without request ends: a segment's free pages go back to the system (`MADV_DONTNEED` with the
/// built-in storages) once pages have been free in it for this many milliseconds.
const PURGE_PAGES_DELAY_MS: u32 = 100;

impl Heap {
    /// A heap with no segment, no block and no limit; `create` fills in the rest.
    const fn blank(no_segment: *mut Segment, segment_size: usize, storage: Storage) -> Heap {
        Heap {
            use_custom_heap: 0,
            overflow: 0,
            peak: 0,
            headroom: 0,
            segment_size,
            free_slots: [ptr::null_mut(); BIN_SLOTS],
            bin_size: {
                let mut t = [0u16; BIN_SLOTS];
                let mut b = 0;
                while b < BIN_SLOTS {
                    t[b] = BIN_SIZE[b] as u16;
                    b += 1;
                }
                t
            },
            fast_segments: [no_segment; FAST_SEGMENTS],
            real_size: 0,
            real_peak: 0,
            limit: usize::MAX >> 1,
            max_large_size: 0,
            main: ptr::null_mut(),
            segments: List::new(),
            segments_count: 0,
            peak_segments_count: 0,
            small_run_pages: 0,
            collect_runs_at: pages::COLLECT_RUNS_FIRST,
            idle_runs_countdown: pages::IDLE_RUNS_CHECK_EVERY,
            idle_runs_wait: 1,
            idle_runs_at: 0,
            purge_at: u64::MAX,
            run_cache: RunCache::new(),
            class_lists: [const { List::new() }; NUM_CLASSES],
            class_bits: [0; CLASS_WORDS],
            cached: CountedList::new(),
            expected_segments: 1.0,
            next_num: 1,
            requests: 0,
            huge_blocks: HugeList::new(),
            huge_cached: CachedHugeList::new(),
            storage,
            compact_size: 0,
            reserve: ptr::null_mut(),
            reserve_size: 0,
            custom: CustomHandlers::NONE,
            libc_only: false,
            tracking: false,
            max_allocs: u64::MAX,
            allocs_left: u64::MAX,
            allocs_hit: false,
            stats: ptr::null_mut(),
            report_mark: 0,
        }
    }

    /// This heap's id in the region map: its address.
    #[inline(always)]
    fn id(&self) -> region_map::Owner {
        ptr::from_ref(self).addr()
    }

    /// Whether `owner` (a region map owner) is this heap.
    pub fn is_id(&self, owner: region_map::Owner) -> bool {
        self.id() == owner
    }

    /// Creates a heap on `storage`: maps its main segment and builds the heap inside it. Null if the
    /// storage has no memory for the first segment; the storage is closed then.
    ///
    /// # Safety
    /// `storage` must be open and used by this heap only from now on. `segment_size` must be a
    /// power of two within the segment bounds.
    pub unsafe fn create(
        storage: Storage,
        segment_size: usize,
        reserve_size: usize,
        compact_size: usize,
    ) -> *mut Heap {
        let base = storage.alloc(segment_size);
        if base.is_null() {
            // SAFETY: nothing of the storage is live.
            unsafe { storage.close() };
            return ptr::null_mut();
        }
        let heap_at = base
            .wrapping_add(segment::heap_offset(segment_size))
            .cast::<Heap>();
        // SAFETY: `base` holds `segment_size` fresh bytes; the heap struct goes after the segment's
        // bitmap, inside the header `init` accounts for with `extra`.
        let main =
            unsafe { Segment::init(base, segment_size, heap_at.addr(), remote::HEAP_BYTES, 0) };
        // SAFETY: as above: `heap_at` is inside the main segment's header, 8-aligned.
        unsafe {
            heap_at.write(Heap {
                real_size: segment_size,
                real_peak: segment_size,
                // What a segment at the main one's place in its page can serve (PHP's 511 pages
                // when the storage is page aligned); lowered if a later segment comes up shorter.
                max_large_size: segment::usable_pages_at(base.addr(), segment_size)
                    * ZEND_MM_PAGE_SIZE,
                main,
                segments_count: 1,
                peak_segments_count: 1,
                compact_size,
                reserve_size,
                ..Heap::blank(no_segment(), segment_size, storage)
            })
        };
        // SAFETY: the shared part follows the heap inside the same header (`HEAP_BYTES`). Other
        // threads reach it from the heap's address, so that address's provenance is exposed.
        unsafe {
            heap_at
                .cast::<u8>()
                .add(remote::SHARED_OFFSET)
                .cast::<remote::Shared>()
                .write(remote::Shared::new());
        }
        let _ = heap_at.expose_provenance();
        // SAFETY: the heap was just written.
        let heap = unsafe { &mut *heap_at };
        // SAFETY: `main` is the segment just laid out.
        let main_end = unsafe { (*main).allocation().end() };
        if !region_map::register(base.addr(), main_end, Region::Segment(base), heap.id()) {
            // SAFETY: the segment was never handed out; nothing else of the storage is live.
            unsafe {
                storage.free(base);
                storage.close();
            }
            return ptr::null_mut();
        }
        // SAFETY: the main segment is live and on no list.
        unsafe { heap.reclassify(main) };
        heap.remember_fast(main);
        heap.fill_reserve();
        heap_at
    }

    /// Ends a request (`full == false`): releases every block at once, at a cost proportional to
    /// segments, and leaves the heap ready at the same address with a cache of segments sized by
    /// recent demand. `full == true` returns everything to storage, the heap itself included.
    ///
    /// # Safety
    /// `heap` must be live and not borrowed; no block of it may be used afterwards, and after a full
    /// shutdown not the heap either.
    pub unsafe fn shutdown(heap: *mut Heap, full: bool) {
        // SAFETY: live heap (caller contract).
        let h = unsafe { &mut *heap };
        h.release_reserve();
        if full {
            h.print_stats_as_configured();
            h.release_stats();
            h.release_huge_blocks();
            // SAFETY: forwarded caller contract.
            unsafe { Heap::destroy(heap) };
            return;
        }
        // Blocks other threads freed are released with the rest.
        h.discard_remote_frees();
        h.end_request_huge_blocks();
        h.forget_run_cache();
        h.end_request_segments();
        h.requests += 1;
        // SAFETY: the main segment is live.
        unsafe {
            (*h.main).reset();
            h.reclassify(h.main);
        }
        h.free_slots = [ptr::null_mut(); BIN_SLOTS];
        h.set_usage(0, 0);
        h.real_size = (h.cached.len() + 1) * h.segment_size + h.cached_huge_bytes();
        h.real_peak = h.real_size;
        h.segments_count = 1;
        h.peak_segments_count = 1;
        h.overflow = 0;
        h.allocs_left = h.max_allocs;
        h.end_request_stats();
        h.fill_reserve();
    }

    /// Returns every segment to storage, the main one (and with it the heap) last, then closes the
    /// storage.
    ///
    /// # Safety
    /// As [`Heap::shutdown`] with `full`.
    unsafe fn destroy(heap: *mut Heap) {
        // SAFETY: live heap (caller contract).
        let h = unsafe { &mut *heap };
        let storage = h.storage;
        h.release_all_segments();
        let main = h.main;
        // From here on the heap struct is gone with its segment.
        // SAFETY: the main segment is live and nothing references it after this; it was the last
        // allocation of the storage.
        unsafe {
            let alloc = (*main).allocation();
            let base = alloc.base();
            region_map::unregister(base.addr(), alloc.end());
            storage.free(base);
            storage.close();
        }
    }

    /// Whether allocation is forwarded to custom handlers.
    #[inline(always)]
    pub fn is_custom(&self) -> bool {
        self.use_custom_heap != 0
    }

    /// The storage this heap's segments come from.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Segments the heap holds, live and cached (for tests that bound memory).
    #[cfg(test)]
    pub(crate) fn segments_held(&self) -> usize {
        self.segments_count + self.cached.len()
    }

    /// Whether `p` points into memory of this heap (any segment or huge block).
    pub fn owns(&self, p: *const u8) -> bool {
        region_map::owner_of(p.addr()) == self.id()
    }
}

#[cfg(test)]
fn test_heap() -> *mut Heap {
    // Aligned as the built-in storages align, on Rust's allocator (Miri has no mmap).
    test_heap_on(crate::model_tests::StdStorage::<0>::ops(), 2 << 20)
}

/// Whether `got` holds exactly the blocks of `want`, each once, in any order.
#[cfg(test)]
fn same_blocks(got: &[*mut u8], want: &[*mut u8]) -> bool {
    let (mut got, mut want) = (got.to_vec(), want.to_vec());
    got.sort();
    want.sort();
    got == want
}

/// How many pages of `p..p + len` (page aligned, at most 256 pages) are resident.
#[cfg(test)]
fn resident_pages(p: *mut u8, len: usize) -> usize {
    let mut map = [0u8; 256];
    let pages = len / ZEND_MM_PAGE_SIZE;
    assert!(pages <= map.len() && p.addr() % ZEND_MM_PAGE_SIZE == 0);
    // SAFETY: `map` has a byte per page of the range, which the caller has mapped.
    assert_eq!(unsafe { libc::mincore(p.cast(), len, map.as_mut_ptr()) }, 0);
    map[..pages].iter().filter(|&&b| b & 1 != 0).count()
}

#[cfg(test)]
fn test_heap_on(ops: &'static crate::storage::StorageOps, segment_size: usize) -> *mut Heap {
    let storage = Storage::open_builtin(ops, false).unwrap();
    // SAFETY: a fresh storage, a valid segment size.
    let heap = unsafe { Heap::create(storage, segment_size, 0, 0) };
    assert!(!heap.is_null());
    heap
}
