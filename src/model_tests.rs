//! Seeded property tests: random alloc / realloc / free / gc / request-end sequences against a model.
//!
//! After every operation the heap must agree with the model: live blocks never overlap, keep their
//! contents, have PHP's block size and alignment, `size` is the sum of live block sizes, `real_size`
//! stays under the limit, and (periodically) the heap's own consistency check finds nothing.
//! Sequences run on every built-in storage, on an unaligned `std::alloc` storage of the test's own,
//! and with several segment sizes.

use core::ffi::CStr;
use std::alloc::{Layout, alloc, dealloc, realloc};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::heap::Heap;
use crate::sizes::{BIN_SIZE, MAX_SMALL_SIZE, ZEND_MM_PAGE_SIZE, bin_of, is_small, keeps_bin};
use crate::storage::{self, SegmentSource, Storage, StorageOps};

/// A storage on Rust's global allocator whose segments start `MISALIGN` bytes into a page (the
/// storage API promises 16-byte alignment only), to exercise the heap on addresses no mmap storage
/// would return; with `MISALIGN` 0, aligned as the built-in storages align. It also serves Miri,
/// which has no mmap.
pub(crate) struct StdStorage<const MISALIGN: usize>;

/// The offsets the tests use: the least, an odd number of 16-byte units, half a page, past half a
/// page, and the most a storage may return.
const MISALIGN: usize = 16;
type Unaligned = StdStorage<MISALIGN>;

impl<const MISALIGN: usize> StdStorage<MISALIGN> {
    pub(crate) fn ops() -> &'static StorageOps {
        &<Self as SegmentSource>::OPS
    }

    fn layout(size: usize) -> Layout {
        let align = if MISALIGN == 0 {
            storage::alignment_for(size)
        } else {
            ZEND_MM_PAGE_SIZE
        };
        Layout::from_size_align(size + MISALIGN, align).unwrap()
    }
}

impl<const MISALIGN: usize> SegmentSource for StdStorage<MISALIGN> {
    const NAME: &'static CStr = c"std";

    fn alloc(size: usize) -> *mut u8 {
        // SAFETY: a non-zero layout.
        let p = unsafe { alloc(Self::layout(size)) };
        if p.is_null() {
            p
        } else {
            p.wrapping_add(MISALIGN)
        }
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: `p - MISALIGN` was allocated with `layout(old_size)`.
        let q = unsafe {
            realloc(
                p.wrapping_sub(MISALIGN),
                Self::layout(old_size),
                new_size + MISALIGN,
            )
        };
        if q.is_null() {
            q
        } else {
            q.wrapping_add(MISALIGN)
        }
    }

    unsafe fn free(p: *mut u8, size: usize) {
        // SAFETY: `p - MISALIGN` was allocated with `layout(size)`.
        unsafe { dealloc(p.wrapping_sub(MISALIGN), Self::layout(size)) }
    }
}

/// Storage calls counted per counting storage (`CountingStorage<ID>` uses row `ID`): allocations,
/// resizes, frees. Each test that counts has an `ID` of its own (tests run in parallel).
pub(crate) static STORAGE_CALLS: [[AtomicUsize; 3]; 4] =
    [const { [const { AtomicUsize::new(0) }; 3] }; 4];

/// Bytes each counting storage was asked to discard (row `ID`, as [`STORAGE_CALLS`]).
pub(crate) static STORAGE_DISCARDED: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// The aligned test storage, counting its calls in `STORAGE_CALLS[ID]`; with `KEEPS`, it claims
/// that resizes keep pages (as `mremap` does; the test storage copies, which only costs time).
pub(crate) struct CountingStorage<const ID: usize, const KEEPS: bool = false>;

impl<const ID: usize, const KEEPS: bool> CountingStorage<ID, KEEPS> {
    pub(crate) fn ops() -> &'static StorageOps {
        &<Self as SegmentSource>::OPS
    }

    /// Bytes the heap asked this storage to discard so far.
    pub(crate) fn discarded() -> usize {
        STORAGE_DISCARDED[ID].load(Ordering::Relaxed)
    }

    /// (allocations, resizes, frees) so far.
    pub(crate) fn calls() -> (usize, usize, usize) {
        let [a, r, f] = &STORAGE_CALLS[ID];
        let load = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        (load(a), load(r), load(f))
    }
}

impl<const ID: usize, const KEEPS: bool> SegmentSource for CountingStorage<ID, KEEPS> {
    const NAME: &'static CStr = c"counting";
    const RESIZE_KEEPS_PAGES: bool = KEEPS;

    fn alloc(size: usize) -> *mut u8 {
        STORAGE_CALLS[ID][0].fetch_add(1, Ordering::Relaxed);
        StdStorage::<0>::alloc(size)
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        STORAGE_CALLS[ID][1].fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded caller contract (the blocks come from `StdStorage<0>`).
        unsafe { StdStorage::<0>::realloc(p, old_size, new_size) }
    }

    unsafe fn free(p: *mut u8, size: usize) {
        STORAGE_CALLS[ID][2].fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded caller contract.
        unsafe { StdStorage::<0>::free(p, size) }
    }

    unsafe fn discard(_: *mut u8, keep: usize, len: usize) {
        assert!(keep <= len);
        STORAGE_DISCARDED[ID].fetch_add(len - keep, Ordering::Relaxed);
    }
}

/// xorshift64*: a small, seeded, reproducible generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A request size with PHP's mix: mostly small, some large, a few huge.
    fn size(&mut self, segment_size: usize) -> usize {
        match self.below(100) {
            0..=79 => self.below(257) as usize,
            80..=91 => self.below(MAX_SMALL_SIZE as u64 + 1) as usize,
            92..=98 => MAX_SMALL_SIZE + 1 + self.below(segment_size as u64) as usize,
            _ => segment_size + self.below(3 * segment_size as u64) as usize,
        }
    }
}

/// What PHP says the block for `size` is.
fn expected_block_size(size: usize) -> usize {
    if is_small(size) {
        BIN_SIZE[bin_of(size)]
    } else {
        size.div_ceil(4096) * 4096
    }
}

struct Block {
    size: usize,
    seed: u8,
    /// The heap's block size: [`expected_block_size`] of the request, or the old bin's size for a
    /// small block that a realloc kept in place.
    block: usize,
}

/// The model: live blocks by address.
struct Model {
    live: BTreeMap<usize, Block>,
}

fn stamp(p: *mut u8, size: usize, seed: u8) {
    // Stamp the ends and a few bytes in between: enough to catch overlap and lost data.
    for off in [0, size / 3, size / 2, size.saturating_sub(1)] {
        if off < size {
            // SAFETY: `off` is inside the live block of `size` bytes.
            unsafe { p.add(off).write(seed.wrapping_add(off as u8)) };
        }
    }
}

fn stamped(p: *const u8, size: usize, seed: u8) -> bool {
    [0, size / 3, size / 2, size.saturating_sub(1)]
        .iter()
        .all(|&off| {
            // SAFETY: `off` is inside the live block of `size` bytes.
            off >= size || unsafe { p.add(off).read() } == seed.wrapping_add(off as u8)
        })
}

impl Model {
    fn check_new_block(&self, heap: &Heap, p: *mut u8, size: usize, expected: usize) {
        let start = p as usize;
        let block = heap.block_size(p);
        assert_eq!(block, expected, "block size for {size}");
        let end = start + block;
        if let Some((&prev, b)) = self.live.range(..start).next_back() {
            assert!(
                prev + heap_block(b) <= start,
                "{start:#x} overlaps the block at {prev:#x}"
            );
        }
        if let Some((&next, _)) = self.live.range(start..).next() {
            assert!(
                end <= next,
                "{start:#x}+{block} overlaps the block at {next:#x}"
            );
        }
        assert_eq!(start % 8, 0);
        if is_small(size) && block % 16 == 0 {
            assert_eq!(start % 16, 0, "bin {block} blocks are 16-aligned");
        }
    }

    /// Removes a random live block from the model.
    fn take_random(&mut self, rng: &mut Rng) -> (usize, Block) {
        let nth = rng.below(self.live.len() as u64) as usize;
        let key = *self.live.keys().nth(nth).unwrap();
        (key, self.live.remove(&key).unwrap())
    }

    fn usage(&self) -> usize {
        self.live.values().map(heap_block).sum()
    }
}

fn heap_block(b: &Block) -> usize {
    b.block
}

/// A heap on `ops` with `segment_size` segments.
fn new_heap(ops: &'static StorageOps, segment_size: usize) -> *mut Heap {
    let storage = Storage::open_builtin(ops, false).expect("the storage opens");
    // SAFETY: the storage is ours; the segment size is valid.
    let heap = unsafe { Heap::create(storage, segment_size, 0, 0) };
    assert!(!heap.is_null());
    heap
}

fn run(ops: &'static StorageOps, segment_size: usize, seed: u64, steps: usize) {
    let heap_ptr = new_heap(ops, segment_size);
    // SAFETY: a live heap used by this thread only.
    let heap = unsafe { &mut *heap_ptr };
    let limit = 40 * segment_size;
    heap.set_limit(limit).unwrap();
    let mut rng = Rng(seed | 1);
    let mut model = Model {
        live: BTreeMap::new(),
    };
    for step in 0..steps {
        match rng.below(100) {
            0..=44 => {
                let size = rng.size(segment_size);
                let Ok(p) = heap.alloc(size) else {
                    // Only the limit may refuse, and only when storage would be needed: a segment,
                    // or a huge block with its header page.
                    let need = segment_size.max(expected_block_size(size) + 4096);
                    assert!(
                        heap.usage(true) + need > limit,
                        "refused {size} bytes below the limit"
                    );
                    continue;
                };
                let block = expected_block_size(size);
                model.check_new_block(heap, p, size, block);
                let seed = rng.next() as u8;
                stamp(p, size, seed);
                model.live.insert(p as usize, Block { size, seed, block });
            }
            45..=79 if !model.live.is_empty() => {
                let (key, b) = model.take_random(&mut rng);
                assert!(
                    stamped(key as *const u8, b.size, b.seed),
                    "contents of {key:#x} survived"
                );
                heap.free(key as *mut u8);
            }
            80..=96 if !model.live.is_empty() => {
                let (key, b) = model.take_random(&mut rng);
                let size = rng.size(segment_size);
                let Ok(q) = heap.realloc(key as *mut u8, size, size) else {
                    // Refused by the limit: the old block is intact.
                    assert!(stamped(key as *const u8, b.size, b.seed));
                    model.live.insert(key, b);
                    continue;
                };
                // PHP 8.2 keeps a small block in place down to the next smaller bin's size.
                let old_bin = is_small(b.block).then(|| bin_of(b.block));
                let block = match old_bin {
                    Some(bin) if keeps_bin(bin, size) => {
                        assert_eq!(q as usize, key, "{} -> {size} stays in place", b.block);
                        b.block
                    }
                    _ => expected_block_size(size),
                };
                model.check_new_block(heap, q, size, block);
                // The kept prefix moved along; restamp the whole new block.
                let kept = b.size.min(size);
                if kept > 0 {
                    // SAFETY: `q` holds at least `kept` bytes.
                    assert_eq!(unsafe { q.read() }, b.seed, "first byte kept by realloc");
                }
                let seed = rng.next() as u8;
                stamp(q, size, seed);
                model.live.insert(q as usize, Block { size, seed, block });
            }
            97 => {
                heap.gc();
            }
            98 if step % 7 == 0 => {
                // SAFETY: the model forgets every block with the request. (The pointer is derived
                // from `heap`, which stays usable after the call.)
                unsafe { Heap::shutdown(&raw mut *heap, false) };
                model.live.clear();
                heap.set_limit(limit).unwrap();
            }
            _ => {}
        }
        assert_eq!(heap.usage(false), model.usage(), "usage after step {step}");
        assert!(
            heap.usage(true) <= limit || heap.in_error_report(),
            "real usage under the limit"
        );
        if step % 500 == 0 {
            let mut problems = Vec::new();
            let errors = heap.check_all(&mut |args| problems.push(args.to_string()));
            assert_eq!(errors, 0, "heap check at step {step}: {problems:?}");
        }
    }
    for (&key, b) in &model.live {
        assert!(stamped(key as *const u8, b.size, b.seed));
    }
    // SAFETY: the model's blocks die with the heap.
    unsafe { Heap::shutdown(heap_ptr, true) };
}

fn steps() -> usize {
    if cfg!(miri) { 30 } else { 6000 }
}

/// Segment sizes the model runs with: under Miri only the smallest (every byte of a segment is
/// tracked there, and a 2 MiB segment costs minutes).
fn segment_sizes() -> &'static [usize] {
    if cfg!(miri) {
        &[64 << 10]
    } else {
        &[2 << 20, 64 << 10]
    }
}

#[test]
#[cfg_attr(miri, ignore = "the built-in storages need mmap and libc")]
fn random_sequences_on_every_builtin_storage() {
    for (i, ops) in storage::BUILTIN.iter().enumerate() {
        run(ops, 2 << 20, 0x5eed_0000 + i as u64, steps());
    }
}

#[test]
fn random_sequences_on_unaligned_storage() {
    for seed in 1..4 {
        for &segment_size in segment_sizes() {
            run(Unaligned::ops(), segment_size, seed, steps());
        }
    }
}

#[test]
fn random_sequences_on_storages_misaligned_by_any_amount() {
    let storages = [
        StdStorage::<48>::ops(),
        StdStorage::<2048>::ops(),
        StdStorage::<2064>::ops(),
        StdStorage::<4080>::ops(),
    ];
    for (i, ops) in storages.into_iter().enumerate() {
        for (j, &segment_size) in segment_sizes().iter().enumerate() {
            run(ops, segment_size, 40 + 10 * j as u64 + i as u64, steps());
        }
    }
}

/// A segment that starts far into a page has one page fewer than the longest large block of an
/// aligned one: such blocks must become huge, not map a segment each that stays linked and unused.
#[test]
#[cfg_attr(
    miri,
    ignore = "2 MiB segments take many minutes under Miri; the misaligned model runs cover the path"
)]
fn the_longest_large_block_on_a_storage_far_into_a_page_keeps_memory_bounded() {
    for ops in [
        StdStorage::<2048>::ops(),
        StdStorage::<4080>::ops(),
        StdStorage::<16>::ops(),
    ] {
        let heap_ptr = new_heap(ops, 2 << 20);
        // SAFETY: a live heap used by this thread only.
        let heap = unsafe { &mut *heap_ptr };
        heap.set_limit(32 << 20).unwrap();
        let longest = crate::sizes::ZEND_MM_MAX_LARGE_SIZE;
        let kept = heap.alloc(longest).expect("under the limit");
        for _ in 0..200 {
            let p = heap.alloc(longest).expect("refused under the limit");
            assert_eq!(heap.block_size(p), longest);
            heap.free(p);
        }
        assert!(heap.segments_held() <= 3, "segments pile up");
        let errors = heap.check_all(&mut |_| {});
        assert_eq!(errors, 0);
        heap.free(kept);
        // SAFETY: no block of the heap is live.
        unsafe { Heap::shutdown(heap_ptr, true) };
    }
}

#[test]
#[cfg_attr(miri, ignore = "the built-in storages need mmap and libc")]
fn random_sequences_with_other_segment_sizes() {
    for (i, segment_size) in [64 << 10, 256 << 10, 8 << 20].into_iter().enumerate() {
        run(Unaligned::ops(), segment_size, 77 + i as u64, steps());
        run(storage::BUILTIN[1], segment_size, 99 + i as u64, steps());
    }
}

#[test]
#[cfg_attr(miri, ignore = "the built-in storages need mmap and libc")]
fn heaps_on_many_threads_at_once() {
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                run(
                    storage::BUILTIN[(t % 3) as usize],
                    2 << 20,
                    1000 + t,
                    steps(),
                )
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn the_test_storage_really_is_unaligned() {
    let p = Unaligned::alloc(4096);
    assert_eq!(p as usize % ZEND_MM_PAGE_SIZE, MISALIGN);
    // SAFETY: just allocated with this size.
    unsafe { Unaligned::free(p, 4096) };
}

/// The unaligned storage, except that it refuses every resize.
struct NoResizeStorage;

impl SegmentSource for NoResizeStorage {
    const NAME: &'static CStr = c"no_resize";

    fn alloc(size: usize) -> *mut u8 {
        Unaligned::alloc(size)
    }

    unsafe fn realloc(_p: *mut u8, _old_size: usize, _new_size: usize) -> *mut u8 {
        core::ptr::null_mut()
    }

    unsafe fn free(p: *mut u8, size: usize) {
        // SAFETY: forwarded: `p` came from `Unaligned::alloc(size)`.
        unsafe { Unaligned::free(p, size) }
    }
}

/// Huge blocks resized through the storage (moved, or refused and then moved by copying) keep the
/// heap's list of huge blocks whole: the newest block (the list head) and one in the middle.
#[test]
#[cfg_attr(miri, ignore = "the built-in storages need mmap and libc")]
fn huge_blocks_resized_through_storage_stay_on_the_list() {
    const MIB: usize = 1 << 20;
    let every: [&'static StorageOps; 5] = [
        storage::BUILTIN[0],
        storage::BUILTIN[1],
        storage::BUILTIN[2],
        Unaligned::ops(),
        &<NoResizeStorage as SegmentSource>::OPS,
    ];
    for ops in every {
        let heap_ptr = new_heap(ops, 2 * MIB);
        // SAFETY: a live heap used by this thread only.
        let heap = unsafe { &mut *heap_ptr };
        let mut blocks = [(3 * MIB, 1u8), (6 * MIB, 2), (4 * MIB, 3)].map(|(size, seed)| {
            let p = heap.alloc(size).unwrap();
            stamp(p, size, seed);
            (p, size, seed)
        });
        // The head (the newest block) grows past its storage, then a block in the middle shrinks
        // below half of its storage.
        for (i, new_size) in [(2, 12 * MIB), (1, 2 * MIB + 300 * 1024)] {
            let (p, _, seed) = blocks[i];
            let q = heap.realloc(p, new_size, new_size).unwrap();
            assert_eq!(heap.block_size(q), expected_block_size(new_size));
            assert_eq!(
                // SAFETY: `q` holds at least one byte.
                unsafe { q.read() },
                seed,
                "contents kept"
            );
            stamp(q, new_size, seed);
            blocks[i] = (q, new_size, seed);
        }
        let mut problems = Vec::new();
        let errors = heap.check_all(&mut |args| problems.push(args.to_string()));
        assert_eq!(errors, 0, "{problems:?}");
        for (p, size, seed) in blocks {
            assert!(stamped(p, size, seed));
            heap.free(p);
        }
        let errors = heap.check_all(&mut |args| problems.push(args.to_string()));
        assert_eq!(errors, 0, "{problems:?}");
        // The check above also holds the huge list to the usage: no block is left on it.
        assert_eq!(heap.usage(false), 0);
        // SAFETY: no block of the heap is live.
        unsafe { Heap::shutdown(heap_ptr, true) };
    }
}
