//! Sizes and size classes (PHP's `zend_alloc_sizes.h`).
//!
//! Owns the constants every other module sizes itself by: the page size, the segment size bounds, and
//! the one table of the small size classes ("bins"). Its first 30 are PHP 8's, number for number, so
//! block sizes and `zend_memory_usage()` deltas match PHP's; the preload library (the process's
//! `malloc`, no PHP contract on sizes) adds two more above PHP's 3072 bytes (see [`HEAP_BINS`]).
//! Compile-time checks below keep the table self-consistent (each run of pages holds exactly `count`
//! slots, sizes ascend, every slot of a bin whose size is a multiple of 16 is 16-aligned).

/// The allocation unit inside a segment; large blocks are whole runs of pages.
pub const ZEND_MM_PAGE_SIZE: usize = 4096;
/// log2 of `ZEND_MM_PAGE_SIZE`.
pub(crate) const PAGE_SHIFT: u32 = 12;
/// Alignment every block has at least (PHP's `ZEND_MM_ALIGNMENT` on x86-64).
pub const ZEND_MM_ALIGNMENT: usize = 8;
/// log2 of `ZEND_MM_ALIGNMENT`.
pub const ZEND_MM_ALIGNMENT_LOG2: usize = 3;
/// Segment size when `ZEND_MM_SEG_SIZE` is not set: PHP 7+'s 2 MiB chunk.
pub(crate) const ZEND_MM_SEG_SIZE: usize = 2 * 1024 * 1024;
/// The default segment size under PHP 8's name.
pub const ZEND_MM_CHUNK_SIZE: usize = 2 * 1024 * 1024;
/// Smallest request size class.
pub const ZEND_MM_MIN_SMALL_SIZE: usize = 8;
/// Bytes of bookkeeping per block: none (PHP's release value; engine code sizes requests by it).
pub const ZEND_MM_OVERHEAD: usize = 0;
/// Smallest segment: a header page, the longest small-bin run (7 pages) and a page lost when the
/// storage returns memory that is not page aligned, rounded up to a power of two.
pub(crate) const MIN_SEGMENT_SIZE: usize = 64 * 1024;
/// Largest segment: the largest power of two PHP's `zend_atoi` (an `int`) can express.
pub(crate) const MAX_SEGMENT_SIZE: usize = 1024 * 1024 * 1024;
/// Largest request PHP serves from a bin; larger requests get whole pages. (The preload library's
/// heaps have two bins more.)
pub const ZEND_MM_MAX_SMALL_SIZE: usize = 3072;
/// Largest request served as a page run of a default-sized segment (511 pages); larger requests are
/// huge blocks with storage of their own. With another segment size (`ZEND_MM_SEG_SIZE`) the bound
/// moves with it.
pub const ZEND_MM_MAX_LARGE_SIZE: usize = 2 * 1024 * 1024 - 4096;
/// Alignment every storage allocation has at least (the storage API's promise, as in PHP 5.3).
pub(crate) const STORAGE_ALIGN: usize = 16;
/// Number of PHP's small size classes.
pub const ZEND_MM_BINS: usize = 30;
/// Number of small size classes of this build's heaps: PHP's, and for the preload library two more
/// (5120 and 6144 bytes). As the process's `malloc`, blocks a little over a page are common
/// (SQLite's page cache holds 4096-byte pages with a header in ~4.3 KB blocks, Node.js buffers of
/// 4200 bytes); as page runs they took two pages each, about twice glibc's memory. With these bins
/// no block from 3073 to 8192 bytes takes more than 4/3 of its size. Requests from 3073 to 4096
/// bytes stay one page (see [`is_small`]): a bin of 4096-byte slots would hold the same memory,
/// and the page map has room for two more bins only. PHP's API keeps PHP's bins: its block sizes
/// and usage figures are part of its contract.
pub(crate) const HEAP_BINS: usize = if cfg!(feature = "preload-sizes") {
    ZEND_MM_BINS + 2
} else {
    ZEND_MM_BINS
};
/// Largest request this build's heaps serve from a bin.
pub(crate) const MAX_SMALL_SIZE: usize = BINS[HEAP_BINS - 1].size as usize;

/// Whether a request of `size` bytes is served from a bin: up to PHP's 3072 bytes, and for the
/// preload library also above a page up to [`MAX_SMALL_SIZE`] (between, one page). One compare in
/// PHP's build, where the second range is empty.
#[cfg(feature = "preload-sizes")]
#[inline(always)]
pub(crate) const fn is_small(size: usize) -> bool {
    size <= ZEND_MM_MAX_SMALL_SIZE || (size > ZEND_MM_PAGE_SIZE && size <= MAX_SMALL_SIZE)
}
/// Whether a request of `size` bytes is served from a bin (PHP's build: up to 3072 bytes).
#[cfg(not(feature = "preload-sizes"))]
#[inline(always)]
pub(crate) const fn is_small(size: usize) -> bool {
    size <= MAX_SMALL_SIZE
}
/// Default storage compaction threshold (PHP 5.3's `ZEND_MM_COMPACT` default).
pub(crate) const DEFAULT_COMPACT_SIZE: usize = 2 * 1024 * 1024;

/// One small size class: `count` slots of `size` bytes fill `pages` pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bin {
    pub size: u32,
    pub count: u32,
    pub pages: u32,
}

const fn bin(size: u32, count: u32, pages: u32) -> Bin {
    Bin { size, count, pages }
}

/// This build's bins: PHP's `ZEND_MM_BINS_INFO` (slot size, slots per run, pages per run), then the
/// preload library's own.
pub(crate) const BINS: [Bin; HEAP_BINS] = {
    let mut t = [bin(0, 0, 0); HEAP_BINS];
    let mut i = 0;
    while i < HEAP_BINS {
        t[i] = ALL_BINS[i];
        i += 1;
    }
    t
};

/// Every bin any build has: PHP's 30, then the two only the preload library uses.
const ALL_BINS: [Bin; ZEND_MM_BINS + 2] = [
    bin(8, 512, 1),
    bin(16, 256, 1),
    bin(24, 170, 1),
    bin(32, 128, 1),
    bin(40, 102, 1),
    bin(48, 85, 1),
    bin(56, 73, 1),
    bin(64, 64, 1),
    bin(80, 51, 1),
    bin(96, 42, 1),
    bin(112, 36, 1),
    bin(128, 32, 1),
    bin(160, 25, 1),
    bin(192, 21, 1),
    bin(224, 18, 1),
    bin(256, 16, 1),
    bin(320, 64, 5),
    bin(384, 32, 3),
    bin(448, 9, 1),
    bin(512, 8, 1),
    bin(640, 32, 5),
    bin(768, 16, 3),
    bin(896, 9, 2),
    bin(1024, 8, 2),
    bin(1280, 16, 5),
    bin(1536, 8, 3),
    bin(1792, 16, 7),
    bin(2048, 8, 4),
    bin(2560, 8, 5),
    bin(3072, 4, 3),
    bin(5120, 4, 5),
    bin(6144, 2, 3),
];

/// Longest run of pages any bin uses.
pub(crate) const MAX_BIN_PAGES: u32 = 7;

const _: () = {
    let mut i = 0;
    while i < ALL_BINS.len() {
        let b = ALL_BINS[i];
        // A run holds exactly `count` slots and wastes less than one slot.
        assert!(b.size * b.count <= b.pages * ZEND_MM_PAGE_SIZE as u32);
        assert!(b.size * (b.count + 1) > b.pages * ZEND_MM_PAGE_SIZE as u32);
        assert!(b.size % ZEND_MM_ALIGNMENT as u32 == 0);
        assert!(b.pages >= 1 && b.pages <= MAX_BIN_PAGES);
        // The gc counter in the page map has 12 bits.
        assert!(b.count < 4096);
        if i > 0 {
            assert!(ALL_BINS[i - 1].size < b.size);
        }
        // The bins above PHP's serve only 16-aligned blocks (the preload library's).
        assert!(i < ZEND_MM_BINS || b.size % 16 == 0);
        i += 1;
    }
    assert!(BINS[0].size as usize == 8);
    assert!(ALL_BINS[ZEND_MM_BINS - 1].size as usize == ZEND_MM_MAX_SMALL_SIZE);
    assert!(MAX_SMALL_SIZE >= ZEND_MM_MAX_SMALL_SIZE);
    // The preload library's bins start above the page its requests from 3073 bytes take, and the
    // largest keeps the waste of the sizes up to two pages at a third.
    assert!(ALL_BINS[ZEND_MM_BINS].size as usize > ZEND_MM_PAGE_SIZE);
    assert!(ALL_BINS[ZEND_MM_BINS + 1].size as usize * 4 >= 2 * ZEND_MM_PAGE_SIZE * 3);
    assert!(ZEND_MM_MAX_SMALL_SIZE * 4 >= ZEND_MM_PAGE_SIZE * 3);
    assert!(1 << PAGE_SHIFT == ZEND_MM_PAGE_SIZE);
    assert!(1 << ZEND_MM_ALIGNMENT_LOG2 == ZEND_MM_ALIGNMENT);
    assert!(MIN_SEGMENT_SIZE.is_power_of_two() && MAX_SEGMENT_SIZE.is_power_of_two());
    assert!(MIN_SEGMENT_SIZE >= (2 + MAX_BIN_PAGES as usize) * ZEND_MM_PAGE_SIZE);
    assert!(ZEND_MM_CHUNK_SIZE == ZEND_MM_SEG_SIZE);
    assert!(ZEND_MM_MAX_LARGE_SIZE == ZEND_MM_SEG_SIZE - ZEND_MM_PAGE_SIZE);
};

/// Bin index for every request size 0..=[`MAX_SMALL_SIZE`]: `SIZE_TO_BIN[size]`. A table lookup
/// replaces PHP's bit arithmetic, indexed by the size itself (3 KiB: two instructions fewer than
/// rounding to 8-byte steps first; the allocation fast path reads its variant below). (A `const`, not a `static`: the
/// library reaches constants directly, statics through the GOT.)
pub(crate) const SIZE_TO_BIN: [u8; MAX_SMALL_SIZE + 1] = size_to_bin_table();

/// The allocation fast path's bin for every request size: [`SIZE_TO_BIN`]'s, except that where the
/// heaps have a slot past their last bin (PHP's build: 30 bins in 32 slots), the 8-byte bin's sizes
/// name that slot, which never holds a block, so they fall to the slow path with no compare of
/// their own (the fast paths leave that bin to the slow ones). The preload library's heaps use
/// every slot: there the fast path compares the size.
pub(crate) const FAST_SIZE_TO_BIN: [u8; MAX_SMALL_SIZE + 1] = {
    let mut table = size_to_bin_table();
    if FAST_TABLE_SKIPS_BIN_0 {
        let mut size = 0;
        while size <= BINS[0].size as usize {
            table[size] = (BIN_SLOTS - 1) as u8;
            size += 1;
        }
    }
    table
};
/// Whether [`FAST_SIZE_TO_BIN`] sends the 8-byte bin's sizes to an empty slot.
pub(crate) const FAST_TABLE_SKIPS_BIN_0: bool = HEAP_BINS < BIN_SLOTS;
const _: () = {
    let mut size = BINS[0].size as usize + 1;
    while size <= MAX_SMALL_SIZE {
        assert!(FAST_SIZE_TO_BIN[size] != 0 && FAST_SIZE_TO_BIN[size] == SIZE_TO_BIN[size]);
        size += 1;
    }
};

const fn size_to_bin_table() -> [u8; MAX_SMALL_SIZE + 1] {
    let mut table = [0u8; MAX_SMALL_SIZE + 1];
    let mut size = 0;
    let mut b = 0;
    while size < table.len() {
        // The smallest bin whose size is >= size (size 0 maps to bin 0).
        while (BINS[b].size as usize) < size {
            b += 1;
        }
        table[size] = b as u8;
        size += 1;
    }
    table
}

/// The bin serving a request of `size` bytes; `size` must be at most [`MAX_SMALL_SIZE`].
#[inline(always)]
pub fn bin_of(size: usize) -> usize {
    debug_assert!(size <= MAX_SMALL_SIZE);
    let bin = SIZE_TO_BIN[size] as usize;
    // SAFETY: every entry of the table is a bin (checked at compile time below); saying so spares
    // the fast path a bounds check on the bin-indexed arrays.
    unsafe { core::hint::assert_unchecked(bin < HEAP_BINS) };
    bin
}

const _: () = {
    let mut size = 0;
    while size <= MAX_SMALL_SIZE {
        assert!((SIZE_TO_BIN[size] as usize) < HEAP_BINS);
        size += 1;
    }
};

/// Bin-indexed arrays have this many entries: a bin read from a page-map entry (5 bits) indexes
/// them without a bounds check; the entries past the last bin are never used.
pub(crate) const BIN_SLOTS: usize = 32;
const _: () = assert!(HEAP_BINS <= BIN_SLOTS && BIN_SLOTS == 1 << 5);

/// Slot size of each bin as `usize`, for the fast paths (0 past the last bin).
pub(crate) const BIN_SIZE: [usize; BIN_SLOTS] = {
    let mut t = [0usize; BIN_SLOTS];
    let mut i = 0;
    while i < HEAP_BINS {
        t[i] = BINS[i].size as usize;
        i += 1;
    }
    t
};

/// For a byte offset `n` into a run of bin `b` (`n` below the run's pages, so below 2^15),
/// `n * SLOT_MAGIC[b]` (wrapping, 32 bits) is below `SLOT_LIMIT[b]` exactly when `n` is the start
/// of one of the run's slots: a multiple of the slot size below `count` slots. With
/// `c = ceil(2^32 / size)`, `n = k * size + r` gives `n * c = r * c + k * e` where
/// `e = size * c - 2^32 < size`: at least `c` (and no wrap) when `r > 0`, and `k * e` otherwise, so
/// one compare checks the remainder and the index. (Power-of-two sizes have `e = 0` and runs
/// without a tail: the limit is 1.) One multiply tells a slot from an interior, misaligned or
/// run-tail pointer on every free, before anything is written.
pub(crate) const SLOT_MAGIC: [u32; BIN_SLOTS] = slot_check_table().0;
pub(crate) const SLOT_LIMIT: [u32; BIN_SLOTS] = slot_check_table().1;

/// Run offsets are below this bound (the longest run's bytes), which the slot check relies on.
const RUN_OFFSET_BOUND: u64 = 1 << 15;
const _: () = assert!(MAX_BIN_PAGES as u64 * ZEND_MM_PAGE_SIZE as u64 <= RUN_OFFSET_BOUND);

const fn slot_check_table() -> ([u32; BIN_SLOTS], [u32; BIN_SLOTS]) {
    // Entries past the last bin stay 0: nothing passes (a page map naming such a bin is corrupt).
    let (mut magic, mut limit) = ([0u32; BIN_SLOTS], [0u32; BIN_SLOTS]);
    let mut i = 0;
    while i < HEAP_BINS {
        let (size, count) = (BINS[i].size as u64, BINS[i].count as u64);
        let c = (1u64 << 32).div_ceil(size);
        let e = size * c - (1 << 32);
        // Slots give below `count * e`; a remainder gives at least `c` without wrapping, which
        // needs `c > e * (k + 1)` for every index `k` an offset can have.
        assert!(e < size && count * size < c);
        assert!(e * (RUN_OFFSET_BOUND / size + 1) < c);
        magic[i] = c as u32;
        limit[i] = if e == 0 { 1 } else { (count * e) as u32 };
        i += 1;
    }
    (magic, limit)
}

/// The slot check of [`SLOT_MAGIC`] in 64 bits, for any 32-bit `n`: with `c = ceil(2^64 / size)`
/// and `e = size * c - 2^64`, `n * c` (wrapping) is below `SLOT_LIMIT_WIDE[b]` exactly when `n` is
/// a multiple of the size below `count` slots, however large `n` is (the argument above, where
/// `(k + 1) * e < c` now holds for every `k` below `2^32 / size`). So a value whose high bits are
/// set fails it too: the size-specialised frees fold their class compare into it. Power-of-two
/// bins have `e = 0`, no bound on the index, and limit 0: they use a masked compare instead.
pub(crate) const SLOT_MAGIC_WIDE: [u64; BIN_SLOTS] = wide_slot_check_table().0;
pub(crate) const SLOT_LIMIT_WIDE: [u64; BIN_SLOTS] = wide_slot_check_table().1;

const fn wide_slot_check_table() -> ([u64; BIN_SLOTS], [u64; BIN_SLOTS]) {
    let (mut magic, mut limit) = ([0u64; BIN_SLOTS], [0u64; BIN_SLOTS]);
    let mut i = 0;
    while i < HEAP_BINS {
        let (size, count) = (BINS[i].size as u128, BINS[i].count as u128);
        let c = (1u128 << 64).div_ceil(size);
        let e = size * c - (1 << 64);
        // No wrap for any 32-bit value, and every slot index below the smallest remainder's.
        assert!(e < size && ((1u128 << 32) / size + 1) * e < c && count * e < c);
        if e > 0 {
            magic[i] = c as u64;
            limit[i] = (count * e) as u64;
        }
        i += 1;
    }
    (magic, limit)
}

/// Whether byte offset `n` (below the run's pages) into a run of `bin` starts a slot.
#[inline(always)]
pub(crate) fn starts_slot(magic: u32, limit: u32, n: usize) -> bool {
    (n as u32).wrapping_mul(magic) < limit
}

/// Whether a block of `bin` still serves `size` bytes after a resize, as PHP keeps it in place:
/// `size` fits the bin and is at least the next smaller bin's size (PHP 8.2 moves a block only
/// when it would fit a smaller bin with room to spare: 100 -> 96 keeps the 112-byte block). The
/// preload library's bins above a page keep only sizes above it: a block of 3073 to 4096 bytes is
/// one page, so 5000 -> 3500 moves (in place it would hold 5120 bytes for 3500).
#[inline(always)]
pub fn keeps_bin(bin: usize, size: usize) -> bool {
    size <= BIN_SIZE[bin]
        && (bin == 0 || size >= BIN_SIZE[bin - 1])
        && (HEAP_BINS == ZEND_MM_BINS || bin < ZEND_MM_BINS || size > ZEND_MM_PAGE_SIZE)
}

/// Rounds `n` up to a multiple of `align` (a power of two); `None` on overflow.
#[inline]
pub const fn align_up(n: usize, align: usize) -> Option<usize> {
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Number of pages needed for `size` bytes (no overflow for sizes a segment can hold).
#[inline]
pub const fn pages_for(size: usize) -> usize {
    size.div_ceil(ZEND_MM_PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PHP's own formula (`zend_mm_small_size_to_bin`), used as the reference for the table.
    fn php_small_size_to_bin(size: usize) -> usize {
        if size <= 64 {
            (size - usize::from(size != 0)) >> 3
        } else {
            let t1 = size - 1;
            let t2 = (usize::BITS - t1.leading_zeros()) as usize - 3;
            let t1 = t1 >> t2;
            let t2 = t2 - 3;
            (t2 << 2) + t1
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "exhaustive arithmetic, no unsafe code: too slow under Miri"
    )]
    fn table_matches_php_formula_for_every_size() {
        for size in 0..=ZEND_MM_MAX_SMALL_SIZE {
            assert_eq!(bin_of(size), php_small_size_to_bin(size), "size {size}");
            assert!(BIN_SIZE[bin_of(size)] >= size.max(1));
            if bin_of(size) > 0 {
                assert!(BIN_SIZE[bin_of(size) - 1] < size);
            }
        }
    }

    #[test]
    fn a_block_keeps_its_bin_down_to_the_next_smaller_bins_size() {
        for bin in 1..HEAP_BINS {
            let size = BIN_SIZE[bin];
            // The preload library's bins above a page: down to the page's size plus one.
            let smaller = if bin < ZEND_MM_BINS {
                BIN_SIZE[bin - 1]
            } else {
                BIN_SIZE[bin - 1].max(ZEND_MM_PAGE_SIZE + 1)
            };
            assert!(keeps_bin(bin, size) && keeps_bin(bin, smaller), "bin {bin}");
            assert!(
                !keeps_bin(bin, smaller - 1) && !keeps_bin(bin, size + 1),
                "bin {bin}"
            );
        }
        assert!(keeps_bin(0, 0) && keeps_bin(0, 8) && !keeps_bin(0, 9));
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "exhaustive arithmetic, no unsafe code: too slow under Miri"
    )]
    fn the_slot_check_accepts_exactly_the_slot_starts_of_every_bin() {
        for (bin, info) in BINS.iter().enumerate() {
            let (size, count) = (info.size as usize, info.count as usize);
            for n in 0..info.pages as usize * ZEND_MM_PAGE_SIZE {
                let want = n % size == 0 && n / size < count;
                assert_eq!(
                    starts_slot(SLOT_MAGIC[bin], SLOT_LIMIT[bin], n),
                    want,
                    "bin {bin} offset {n}"
                );
            }
        }
        for bin in (0..BIN_SLOTS).skip(HEAP_BINS) {
            assert!(!starts_slot(SLOT_MAGIC[bin], SLOT_LIMIT[bin], 0));
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "exhaustive arithmetic, no unsafe code: too slow under Miri"
    )]
    fn the_wide_slot_check_also_fails_every_value_with_high_bits() {
        // What the size-specialised frees give it: a run offset below 2^16, and above bit 24 the
        // page class xored with the bin's (zero for a page of the bin's own runs).
        for (bin, info) in BINS.iter().enumerate() {
            let (size, count) = (info.size as u64, info.count as u64);
            if size.is_power_of_two() {
                continue;
            }
            for high in 0..1u64 << 7 {
                for offset in 0..1u64 << 16 {
                    let n = high << 25 | offset;
                    let want = high == 0 && offset % size == 0 && offset / size < count;
                    let got = n.wrapping_mul(SLOT_MAGIC_WIDE[bin]) < SLOT_LIMIT_WIDE[bin];
                    assert_eq!(got, want, "bin {bin} high {high} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn small_sizes_are_those_a_bin_serves_within_a_third() {
        for size in 1..=MAX_SMALL_SIZE + 64 {
            if is_small(size) {
                let block = BIN_SIZE[bin_of(size)];
                assert!(block >= size, "{size}");
                assert!(
                    size <= ZEND_MM_MAX_SMALL_SIZE || 3 * block <= 4 * size,
                    "{size}"
                );
            } else {
                assert!(size > ZEND_MM_MAX_SMALL_SIZE, "{size}");
            }
        }
        assert_eq!(HEAP_BINS > ZEND_MM_BINS, is_small(ZEND_MM_PAGE_SIZE + 1));
        assert!(!is_small(ZEND_MM_PAGE_SIZE) && !is_small(ZEND_MM_MAX_SMALL_SIZE + 1));
    }

    #[test]
    fn align_up_detects_overflow() {
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(usize::MAX - 10, 4096), None);
    }
}
