//! Huge blocks (zend_alloc.c "Huge Runs"): requests too big for a segment, each with a storage
//! allocation of its own.
//!
//! Owns the huge-block header, the heap's list of huge blocks and its cache of freed ones. A huge
//! block is one storage allocation: a header page (the storage-visible `zend_mm_segment` first,
//! then the owner and the list links) followed by the block, whose size is the request rounded up
//! to whole pages. With the built-in storages the block is therefore page aligned. Resizing goes
//! through the storage's `_realloc` (`mremap` for the mmap storages), so growing and shrinking
//! never copy in user space.
//!
//! A freed huge block stays cached (up to [`HUGE_CACHE`] of them, [`HUGE_CACHE_BYTES`] together),
//! also across request ends, until it has served no request for [`IDLE_REQUESTS`] request ends
//! (without request ends, as the C library's malloc: until it has been idle for
//! `PURGE_DELAY_MS`): the next huge request reuses its
//! pages, already faulted in, instead of mapping fresh ones (each page of fresh memory costs a page
//! fault on first touch, about as much as the block's whole use). On a storage that can cut its
//! allocations (the built-in ones: private mappings), a request takes the smallest cached block big
//! enough, and the rest past the request, when it could serve a huge request of its own, is cut off
//! and stays cached with its pages resident; a freed block joins the cached blocks it meets in
//! memory, so pieces of one mapping come together again (mimalloc reuses the rest of a span the
//! same way). Discarding that rest instead cost a page fault per page at the next bigger request:
//! 52k faults against 18k on the `hugereq` benchmark. On another storage a cached block serves a
//! request it is big enough for, the one whose resident pages are closest to the request first,
//! and the pages past the request go back to the kernel. A block too small is grown only by a
//! storage that moves pages (`mremap`), never through a copying one (that would copy its dead
//! contents): the request then maps a fresh block. Cached blocks count in the real usage, and
//! `zend_mm_gc`, the limit and `zend_set_memory_limit` give them back.
//!
//! Memory moves between the two caches (on a storage that moves pages: `mmap_anon` and
//! `mmap_zero`). A huge block that needs fresh pages takes whole cached segments' pages instead
//! (`Heap::recycle_cached_segments`; whole segments of them, its storage rounded up to whole
//! segments when the cache has enough), and a new segment takes the tail of the biggest cached
//! huge block: the pages move with `mremap`, resident, so neither kind faults in fresh memory while
//! the other holds idle pages. Without it a program's peak held both: `hugereq` under the preload
//! library peaked at 38.3 MiB RSS (glibc 29.1), with it 33.0 at the same speed; `phpmix` 37.4 →
//! 33.1; the `emalloc` heap on `mmap_anon`, 34.6 → 30.9.
//!
//! Invariants: every live huge block of a heap is on its `huge_blocks` list, every cached one on
//! `huge_cached` (with `data` null, so a stale pointer to it is caught); both are registered in the
//! region map (as a huge region, one registration per block: a cut or a join registers the parts
//! afresh); `HUGE_HEADER + size <=` the allocation's size (the storage allocation may be larger
//! than the block it serves); a cut or joined allocation is one the storage's `splits` accepts;
//! pages moved out of a cached block shorten its allocation, which stays at least a segment long.

use core::ptr;

use super::pages::purge_time;
use super::{Heap, IDLE_REQUESTS, NO_REQUEST_ENDS, PURGE_DELAY_MS, Refusal};
use crate::diagnostics;
use crate::list::{CountedList, Field, Links, List};
use crate::region_map::{self, Region};
use crate::sizes::{ZEND_MM_PAGE_SIZE, align_up};
use crate::storage::Allocation;

/// Bytes in front of every huge block: its header, padded to a page.
const HUGE_HEADER: usize = ZEND_MM_PAGE_SIZE;

/// Freed huge blocks a heap keeps for reuse during a request.
const HUGE_CACHE: usize = 3;
/// Storage bytes the cached huge blocks may hold together; a freed block that would take them
/// past this goes back to storage, and no join makes a cached block bigger. Without a bound,
/// blocks freed side by side joined into one cached block of any size (3 GB after a thousand
/// 3 MB blocks), held resident, and every join and cut registered it again in the region map, a
/// slot per 32 KiB: freeing and reallocating a thousand 3 MB blocks took 4.8 s instead of 0.09.
/// (glibc maps blocks above 32 MiB afresh each time.)
const HUGE_CACHE_BYTES: usize = 64 << 20;

#[repr(C)]
pub(super) struct HugeBlock {
    /// The storage allocation, its header first (what the storage reads).
    alloc: Allocation,
    links: Links<HugeBlock>,
    /// Block size: the request rounded up to whole pages.
    size: usize,
    /// The block handed to the caller (null while cached).
    data: *mut u8,
    /// The heap's request count when the block last served a request.
    last_used: u64,
    /// How many bytes from `data` on may hold something other than zeros since the block was
    /// handed out: all of them but in a block made of fresh zeroed storage (see
    /// [`Heap::zero_new_block`]).
    dirty: usize,
}

const _: () = assert!(size_of::<HugeBlock>() <= HUGE_HEADER);

/// A heap's list of live huge blocks, and of cached ones.
pub(super) type HugeList = List<HugeBlock, HugeLinks>;
pub(super) type CachedHugeList = CountedList<HugeBlock, HugeLinks>;

pub(super) struct HugeLinks;

impl Field<HugeBlock> for HugeLinks {
    unsafe fn links(item: *mut HugeBlock) -> *mut Links<HugeBlock> {
        // SAFETY: `item` is a live huge block (caller contract).
        unsafe { &raw mut (*item).links }
    }
}

impl HugeBlock {
    /// The block handed out (null while cached).
    pub(super) fn data(&self) -> *mut u8 {
        self.data
    }

    /// Where a freed (cached) block's data started: the same place a block there would start.
    pub(super) fn cached_data(&self) -> *mut u8 {
        self.alloc.base().wrapping_add(HUGE_HEADER)
    }

    /// Block size: the request rounded up to whole pages.
    pub(super) fn size(&self) -> usize {
        self.size
    }
}

/// Block size and storage size for a huge request.
fn huge_sizes(size: usize) -> Result<(usize, usize), Refusal> {
    align_up(size, ZEND_MM_PAGE_SIZE)
        .and_then(|block| Some((block, block.checked_add(HUGE_HEADER)?)))
        .ok_or(Refusal::Overflow)
}

impl Heap {
    /// Whether `grow` more bytes from storage fit under the limit, collecting garbage once if not.
    fn huge_fits_limit(&mut self, grow: usize) -> bool {
        if self.within_limit(grow) {
            return true;
        }
        self.gc();
        self.within_limit(grow)
    }

    /// A huge block of `size` bytes (PHP's `zend_mm_alloc_huge`).
    pub(super) fn alloc_huge(&mut self, size: usize) -> Result<*mut u8, Refusal> {
        let (block_size, total) = huge_sizes(size)?;
        let (block, dirty) = match self.take_cached_huge(total) {
            Some(taken) => taken,
            None => self.map_huge(total)?,
        };
        // SAFETY: a registered huge block of this heap, on no list.
        let data = unsafe {
            (*block).size = block_size;
            (*block).dirty = dirty.min(block_size);
            (*block).data = (*block).alloc.base().add(HUGE_HEADER);
            self.huge_blocks.push_front(block);
            (*block).data
        };
        self.count_alloc(block_size);
        Ok(data)
    }

    /// Zeroes the first `n` bytes of `p`, a block this heap handed out a moment ago (with nothing
    /// allocated or resized since), except what reads as zeros already: the pages of a huge block
    /// made of fresh zeroed storage. A `calloc` of a big block then faults in only the pages its
    /// program touches, as under glibc; writing zeros over them faulted in every one (a Python
    /// `bytes(100_000_000)` took 51 ms of CPU under the preload library, none under glibc).
    ///
    /// # Safety
    /// `p` is a block of at least `n` bytes, handed out by the last allocation of this heap (or of
    /// another: then it is written whole).
    pub unsafe fn zero_new_block(&self, p: *mut u8, n: usize) {
        let mut dirty = n;
        // A custom heap's handler may have made the block any way it liked.
        if n > ZEND_MM_PAGE_SIZE && !self.is_custom() {
            let block = self.huge_blocks.head();
            // SAFETY: a non-null head is a live huge block of this heap.
            if !block.is_null() && unsafe { (*block).data } == p {
                // SAFETY: as above.
                dirty = unsafe { (*block).dirty }.min(n);
            }
        }
        // SAFETY: `p` holds at least `n` bytes (caller contract).
        unsafe { ptr::write_bytes(p, 0, dirty) };
    }

    /// A fresh huge block of `total` storage bytes, registered and counted in the real usage, and
    /// how many bytes of its data (from the start) may not be zeros: pages moved in from cached
    /// segments come first, the storage's own pages after them.
    fn map_huge(&mut self, total: usize) -> Result<(*mut HugeBlock, usize), Refusal> {
        if !self.huge_fits_limit(total) {
            return Err(Refusal::Limit);
        }
        self.shed_cached_segments(total);
        let total = self.recycling_size(0, total);
        let base = self.map_region(total, Region::Huge)?;
        // SAFETY: `base` holds `total` fresh bytes nothing uses yet.
        let recycled = unsafe { self.recycle_cached_segments(base, total) };
        self.count_storage_in_place_of(recycled, total);
        let dirty = if self.storage.fresh_zeroed(total) {
            recycled.saturating_sub(HUGE_HEADER)
        } else {
            usize::MAX
        };
        let block = base.cast::<HugeBlock>();
        // SAFETY: as above; the header fits in the first page.
        unsafe {
            block.write(HugeBlock {
                alloc: Allocation::new(base, total),
                links: Links::NONE,
                size: 0,
                data: ptr::null_mut(),
                last_used: 0,
                dirty: usize::MAX,
            })
        };
        Ok((block, dirty))
    }

    /// The cached huge block with at least `total` storage bytes whose resident pages (its last
    /// user's size) are closest to `total`, off the cache. When
    /// none is big enough, the biggest is grown if the storage moves pages without copying them
    /// (`mremap`: only the new pages cost a fault); otherwise it goes back to storage (growing
    /// would copy its dead contents) and the request maps a fresh block in its place, so the cache
    /// does not hold dead memory beside it. With the block, how many bytes of its data (from the
    /// start) may not be zeros: all of them, but for a grown block whose new pages are fresh.
    fn take_cached_huge(&mut self, total: usize) -> Option<(*mut HugeBlock, usize)> {
        if self.storage.may_split() {
            if let Some(block) = self.take_cached_piece(total) {
                return Some((block, usize::MAX));
            }
        }
        let mut fitting: Option<(*mut HugeBlock, usize, usize)> = None;
        let mut biggest: Option<(*mut HugeBlock, usize)> = None;
        // SAFETY: cached huge blocks are registered blocks of this heap.
        for block in unsafe { self.huge_cached.iter() } {
            // SAFETY: as above.
            let (capacity, used) = unsafe { ((*block).alloc.size(), (*block).size + HUGE_HEADER) };
            // Among the blocks big enough, the one whose resident pages (what its last user had)
            // are closest to the request: the fewest pages to discard or to fault in.
            let misfit = used.abs_diff(total);
            if capacity >= total && fitting.is_none_or(|(_, _, m)| misfit < m) {
                fitting = Some((block, used, misfit));
            }
            if biggest.is_none_or(|(_, c)| capacity > c) {
                biggest = Some((block, capacity));
            }
        }
        if let Some((block, used, _)) = fitting {
            // SAFETY: `block` is on the cache list; off it, it is on no list.
            unsafe { self.huge_cached.remove(block) };
            // Pages its last user had past this request hold dead bytes: resident, they would
            // only swell the footprint (a request's peak RSS), so the storage takes them back.
            if total < used {
                // SAFETY: a live allocation of this storage, its last user's `used` bytes within
                // its capacity; nothing past `total` is needed.
                unsafe { self.storage.discard(block.cast(), total, used) };
            }
            return Some((block, usize::MAX));
        }
        let (block, capacity) = biggest?;
        // SAFETY: as above.
        unsafe { self.huge_cached.remove(block) };
        if self.storage.resize_keeps_pages() && self.huge_fits_limit(total - capacity) {
            // The pages it grows by are fresh, as a new block's.
            self.shed_cached_segments(total - capacity);
            // SAFETY: as above.
            let (grown, written) = unsafe { self.resize_huge_storage(block, total) };
            if !grown.is_null() {
                // Only what it held before, and pages moved in from cached segments, may hold
                // something (a 4 MiB block freed, then a 248 MiB `calloc`, wrote all 248).
                let fresh = self.storage.fresh_zeroed(total);
                let dirty = if fresh {
                    written - HUGE_HEADER
                } else {
                    usize::MAX
                };
                return Some((grown, dirty));
            }
        }
        // SAFETY: as above (the storage left it intact if it refused to grow it).
        unsafe { self.release_huge(block) };
        None
    }

    /// With a storage that splits: the cached block with the least capacity of at least `total`
    /// (the best fit, so big blocks stay for big requests), off the cache. When the rest past
    /// `total` could serve a huge request of its own it is cut off and stays cached with its pages
    /// as they are: the next request takes them without a fault, where discarding them (what
    /// happens without splitting) costs a fault per page when a bigger request comes. None when no
    /// cached block is big enough.
    fn take_cached_piece(&mut self, total: usize) -> Option<*mut HugeBlock> {
        let mut best: Option<(*mut HugeBlock, usize)> = None;
        // SAFETY: cached huge blocks are registered blocks of this heap.
        for block in unsafe { self.huge_cached.iter() } {
            // SAFETY: as above.
            let capacity = unsafe { (*block).alloc.size() };
            if capacity >= total && best.is_none_or(|(_, c)| capacity < c) {
                best = Some((block, capacity));
            }
        }
        let (block, capacity) = best?;
        // SAFETY: `block` is on the cache list; off it, it is on no list, and the list has room
        // for the rest again.
        unsafe {
            self.huge_cached.remove(block);
            if capacity - total >= self.segment_size + ZEND_MM_PAGE_SIZE
                && self.storage.splits(capacity)
            {
                // A storage may refuse a piece's size (the malloc storage, a power of two): then
                // the block keeps one page more.
                let keep = [total, total + ZEND_MM_PAGE_SIZE]
                    .into_iter()
                    .find(|&keep| {
                        self.storage.splits(keep) && self.storage.splits(capacity - keep)
                    });
                if let Some(keep) = keep {
                    let rest = self.split_huge(block, keep);
                    self.huge_cached.push_front(rest);
                }
            }
        }
        Some(block)
    }

    /// Cuts a huge block's allocation after `keep` bytes: the block keeps the first `keep`, and the
    /// rest becomes a freed huge block of its own (returned, on no list, as old as the block).
    ///
    /// # Safety
    /// The storage must split the block's allocation into `keep` bytes and the rest; `block` must be
    /// a registered, freed huge block of this heap on no list whose allocation is longer than
    /// `keep` by at least a segment; `keep` is a multiple of the page size and at least
    /// [`HUGE_HEADER`].
    unsafe fn split_huge(&mut self, block: *mut HugeBlock, keep: usize) -> *mut HugeBlock {
        // SAFETY: caller contract.
        let (base, size, last_used) = unsafe {
            (
                (*block).alloc.base(),
                (*block).alloc.size(),
                (*block).last_used,
            )
        };
        // Both parts register afresh: the region map knows one region per registration.
        region_map::unregister(base.addr(), base.addr() + size);
        // SAFETY: `keep < size`: the rest starts inside the allocation, and its first page holds
        // dead bytes of the freed block, now the rest's header.
        let rest = unsafe {
            (*block).alloc.moved(base, keep);
            let rest_base = base.add(keep);
            let rest = rest_base.cast::<HugeBlock>();
            rest.write(HugeBlock {
                alloc: Allocation::new(rest_base, size - keep),
                links: Links::NONE,
                size: 0,
                data: ptr::null_mut(),
                last_used,
                dirty: usize::MAX,
            });
            rest
        };
        self.register_huge(block);
        self.register_huge(rest);
        rest
    }

    /// Joins a freed huge block with the cached blocks whose allocations meet it in memory (the
    /// pieces `split_huge` cut, freed again), taking them off the cache; the joined block, on no
    /// list. A storage that splits frees and resizes any page range, so the joined allocation is
    /// one to it; a resize the kernel refuses (`mremap` of a range two mappings make) is answered
    /// as any refused resize.
    ///
    /// # Safety
    /// `block` must be a registered, freed huge block of this heap on no list.
    unsafe fn join_cached_neighbours(&mut self, mut block: *mut HugeBlock) -> *mut HugeBlock {
        // SAFETY: cached huge blocks are registered blocks of this heap; one taken off the list is
        // on no list, and the iterator has passed it.
        unsafe {
            for cached in self.huge_cached.iter() {
                let (low, high) = if (*cached).alloc.end() == (*block).alloc.base().addr() {
                    (cached, block)
                } else if (*block).alloc.end() == (*cached).alloc.base().addr() {
                    (block, cached)
                } else {
                    continue;
                };
                let (base, low_size, high_size) = (
                    (*low).alloc.base(),
                    (*low).alloc.size(),
                    (*high).alloc.size(),
                );
                let storage = self.storage;
                if low_size + high_size > HUGE_CACHE_BYTES
                    || ![low_size, high_size, low_size + high_size]
                        .into_iter()
                        .all(|size| storage.splits(size))
                {
                    continue;
                }
                self.huge_cached.remove(cached);
                region_map::unregister(base.addr(), base.addr() + low_size);
                region_map::unregister((*high).alloc.base().addr(), (*high).alloc.end());
                (*low).alloc.moved(base, low_size + high_size);
                (*low).last_used = (*low).last_used.max((*high).last_used);
                self.register_huge(low);
                block = low;
            }
        }
        block
    }

    /// Registers a huge block's whole allocation in the region map again (after a split, a join or
    /// a move of its tail).
    fn register_huge(&self, block: *mut HugeBlock) {
        // SAFETY: a huge block of this heap (callers).
        let (base, size) = unsafe { ((*block).alloc.base(), (*block).alloc.size()) };
        self.reregister(base, size, Region::Huge(base));
    }

    /// Resizes a huge block's storage allocation (moving it if the storage must), keeping the
    /// region map and `real_size` right; null (the block intact) if the storage refuses. With the
    /// block, how many bytes of the allocation (from its start) may hold something: its old size
    /// and the pages moved in from cached segments after it (the rest of a grown one is the
    /// storage's new pages).
    ///
    /// # Safety
    /// `block` must be a registered huge block of this heap on no list (so no neighbour keeps a
    /// link to where it was).
    unsafe fn resize_huge_storage(
        &mut self,
        block: *mut HugeBlock,
        total: usize,
    ) -> (*mut HugeBlock, usize) {
        // SAFETY: caller contract.
        let (base, old_total) = unsafe { ((*block).alloc.base(), (*block).alloc.size()) };
        let total = if total > old_total {
            old_total
                + self.recycling_size(
                    old_total,
                    grown_total(old_total, total, NO_REQUEST_ENDS) - old_total,
                )
        } else {
            total
        };
        region_map::unregister(base.addr(), base.addr() + old_total);
        // SAFETY: `base` is a live allocation of our storage whose header holds its size.
        let new_base = unsafe { self.storage.realloc(base, total) };
        let (base, total) = if new_base.is_null() {
            (base, old_total)
        } else {
            (new_base, total)
        };
        let block = base.cast::<HugeBlock>();
        // SAFETY: the header at `base` is live (kept, or moved with the allocation); it records
        // where it now is.
        unsafe { (*block).alloc.moved(base, total) };
        if !region_map::register(
            base.addr(),
            base.addr() + total,
            Region::Huge(base),
            self.id(),
        ) {
            // Out of the mappable address space after a move: nothing sensible can continue.
            diagnostics::heap_corrupted(format_args!(
                "the huge block moved to {:#x} is outside what the region map covers",
                base.addr()
            ));
        }
        if new_base.is_null() {
            return (ptr::null_mut(), old_total);
        }
        let recycled = if total > old_total {
            // SAFETY: the pages past the old size are fresh and nobody's yet.
            unsafe { self.recycle_cached_segments(base.add(old_total), total - old_total) }
        } else {
            0
        };
        self.count_storage_in_place_of(old_total + recycled, total);
        (block, total.min(old_total + recycled))
    }

    /// Frees a huge block (PHP's `zend_mm_free_huge`): cached for reuse while the cache has room,
    /// returned to storage otherwise.
    ///
    /// # Safety
    /// `block` must be a live huge block of this heap.
    pub(super) unsafe fn free_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: caller contract.
        unsafe {
            self.huge_blocks.remove(block);
            self.count_free((*block).size);
            self.cache_huge(block);
        }
    }

    /// Keeps a huge block that was just freed (on no list) for reuse while the cache has room;
    /// returns it to storage otherwise.
    ///
    /// # Safety
    /// `block` must be a registered huge block of this heap on no list.
    unsafe fn cache_huge(&mut self, mut block: *mut HugeBlock) {
        // SAFETY: caller contract; the cache holds cached blocks of this heap.
        unsafe {
            if self.storage.may_split() {
                block = self.join_cached_neighbours(block);
            }
            if self.huge_cached.len() < HUGE_CACHE
                && self.cached_huge_bytes() + (*block).alloc.size() <= HUGE_CACHE_BYTES
            {
                (*block).data = ptr::null_mut();
                if NO_REQUEST_ENDS {
                    // Trimmed by age: stamped with the time it was freed.
                    let now = crate::os::monotonic_ms();
                    (*block).last_used = now;
                    self.purge_due(purge_time(now, 0));
                    self.purge_idle_caches_at(now);
                } else {
                    // It served the request under way.
                    (*block).last_used = self.requests + 1;
                }
                self.huge_cached.push_front(block);
            } else {
                self.release_huge(block);
            }
        }
    }

    /// Returns a huge block to storage.
    ///
    /// # Safety
    /// `block` must be a registered huge block of this heap that no list references.
    unsafe fn release_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: caller contract.
        unsafe {
            let alloc = &(*block).alloc;
            let base = alloc.base();
            self.real_size -= alloc.size();
            region_map::unregister(base.addr(), alloc.end());
            self.storage.free(base);
        }
    }

    /// Without request ends: gives back the cached huge blocks freed more than [`PURGE_DELAY_MS`]
    /// ago (`now` in the milliseconds of `os::monotonic_ms`, as the cache stamps), so a program
    /// that freed big blocks long ago does not keep their memory.
    pub(super) fn purge_cached_huge(&mut self, now: u64) {
        // SAFETY: cached huge blocks are registered blocks of this heap; removed, one is on no
        // list, and the iterator has passed it.
        unsafe {
            for block in self.huge_cached.iter() {
                if now.saturating_sub((*block).last_used) > u64::from(PURGE_DELAY_MS) {
                    self.huge_cached.remove(block);
                    self.release_huge(block);
                } else {
                    let idle = now.saturating_sub((*block).last_used) as u32;
                    self.purge_due(purge_time(now, idle));
                }
            }
        }
    }

    /// How many fresh bytes to map for `fresh` bytes a huge block needs: with a storage that moves
    /// pages and enough cached segments to fill them, whole segments' worth, so every page of the
    /// block comes from a cached segment (resident already) and none is faulted in beside them; the
    /// few pages past the request stay with the block, for its growth or, once freed, for a cut.
    /// Not where the block's storage, the `kept` bytes it has already and these, would come to a
    /// size the storage would not cut (the `malloc` storage's powers of two, which it takes from
    /// the C library): such a block could not give its tail to a segment later, and growing it
    /// copies it out of the C library's heap.
    ///
    /// A block growing by a power of two of segments on the `malloc` storage (its total a size
    /// the storage maps) takes them whole in a heap's first request only: there it cut `phpmix`'s
    /// peak RSS from 34.7 to 32.3 MiB with fewer page faults (12.3k against 12.9k), where between
    /// requests it took `hugereq` from 31.8 to 35.0 MiB.
    fn recycling_size(&self, kept: usize, fresh: usize) -> usize {
        let whole = fresh.next_multiple_of(self.segment_size);
        if self.storage.moves_pages()
            && self.cached.len() * self.segment_size >= whole
            && self.storage.splits(kept + whole)
            && (kept == 0 || self.requests == 0 || self.storage.splits(whole))
        {
            whole
        } else {
            fresh
        }
    }

    /// With a storage that moves pages: moves the pages of the last `len` bytes of the biggest
    /// cached huge block onto `to` (a new segment), so the segment takes memory the heap holds
    /// resident anyway instead of faulting in fresh pages beside the cache; the bytes moved (`len`
    /// or 0), no longer the block's, which is that much shorter, and still at least a segment long
    /// (a shorter rest could serve no huge request: then nothing moves). The caller counts them out
    /// of the real usage.
    ///
    /// # Safety
    /// `to..to + len` must lie in a live allocation of this heap's storage whose bytes there
    /// nobody needs, page aligned; `len` a multiple of the page size.
    pub(super) unsafe fn recycle_cached_huge(&mut self, to: *mut u8, len: usize) -> usize {
        if !self.storage.moves_pages() {
            return 0;
        }
        // SAFETY: cached huge blocks are registered blocks of this heap.
        let biggest = unsafe { self.huge_cached.iter() }
            // SAFETY: as above.
            .max_by_key(|&block| unsafe { (*block).alloc.size() });
        let Some(block) = biggest else {
            return 0;
        };
        // SAFETY: a cached block of this heap; while it is off the region map nothing can reach
        // it, and on failure it is registered again as it was.
        unsafe {
            let (base, capacity) = ((*block).alloc.base(), (*block).alloc.size());
            // Only a storage allocation that may be cut can lose its tail (the `malloc`
            // storage's own mappings: a block the C library gave must stay whole).
            let Some(keep) = capacity.checked_sub(len).filter(|&k| {
                k >= self.segment_size && self.storage.splits(capacity) && self.storage.splits(k)
            }) else {
                return 0;
            };
            region_map::unregister(base.addr(), base.addr() + capacity);
            let moved = self.storage.move_pages(base.add(keep), len, to, false);
            if moved {
                (*block).alloc.moved(base, keep);
                (*block).size = (*block).size.min(keep - HUGE_HEADER);
            }
            self.register_huge(block);
            if moved { len } else { 0 }
        }
    }

    /// Storage bytes held by cached huge blocks.
    pub(super) fn cached_huge_bytes(&self) -> usize {
        // SAFETY: cached huge blocks are registered blocks of this heap.
        unsafe { self.huge_cached.iter() }
            // SAFETY: as above.
            .map(|block| unsafe { (*block).alloc.size() })
            .sum()
    }

    /// Returns every cached huge block to storage; the bytes given back.
    pub(super) fn release_cached_huge(&mut self) -> usize {
        let released = self.cached_huge_bytes();
        // SAFETY: cached huge blocks are registered blocks of this heap; popped, one is on no list.
        unsafe {
            while !self.huge_cached.is_empty() {
                let block = self.huge_cached.pop_front();
                self.release_huge(block);
            }
        }
        released
    }

    /// Request end: every live huge block is freed into the cache (while it has room), and cached
    /// blocks idle for [`IDLE_REQUESTS`] request ends go back to storage.
    pub(super) fn end_request_huge_blocks(&mut self) {
        let now = self.requests + 1;
        // SAFETY: the lists hold registered huge blocks of this heap; popped or removed, one is on
        // no list.
        unsafe {
            while !self.huge_blocks.is_empty() {
                let block = self.huge_blocks.pop_front();
                self.count_free((*block).size);
                self.cache_huge(block);
            }
            for block in self.huge_cached.iter() {
                if now - (*block).last_used >= u64::from(IDLE_REQUESTS) {
                    self.huge_cached.remove(block);
                    self.release_huge(block);
                }
            }
        }
    }

    /// Frees every huge block, cached ones included (the heap is being destroyed).
    pub(super) fn release_huge_blocks(&mut self) {
        // SAFETY: the list holds live huge blocks of this heap; popped, one is on no list.
        unsafe {
            while !self.huge_blocks.is_empty() {
                let block = self.huge_blocks.pop_front();
                self.count_free((*block).size);
                self.release_huge(block);
            }
        }
        self.release_cached_huge();
    }

    /// Resizes a huge block (PHP's `zend_mm_realloc_huge`): in place while its storage is big
    /// enough (and not more than twice too big), through the storage while it stays huge, by
    /// moving when it becomes large or small.
    ///
    /// # Safety
    /// `block` must be a live huge block of this heap.
    pub(super) unsafe fn realloc_huge(
        &mut self,
        block: *mut HugeBlock,
        size: usize,
        copy_size: usize,
    ) -> Result<*mut u8, Refusal> {
        // SAFETY: caller contract.
        let (old_size, capacity, data) =
            unsafe { ((*block).size, (*block).alloc.size(), (*block).data) };
        if size <= self.max_large_size {
            // SAFETY: `data` is the live block, `old_size` bytes long.
            return unsafe { self.move_block(data, old_size, size, copy_size) };
        }
        let (new_size, new_total) = huge_sizes(size)?;
        if new_total <= capacity && new_total >= capacity / 2 {
            let old_total = old_size + HUGE_HEADER;
            // SAFETY: as above; the storage already holds the new size, and the bytes past it
            // are dead (the storage takes back the pages of a shrunk block's tail).
            unsafe {
                (*block).size = new_size;
                (*block).dirty = usize::MAX;
                if new_total < old_total {
                    self.storage.discard(block.cast(), new_total, old_total);
                }
            }
            self.count_free(old_size);
            self.count_alloc(new_size);
            return Ok(data);
        }
        if new_total > capacity && !self.huge_fits_limit(new_total - capacity) {
            return Err(Refusal::Limit);
        }
        // Off the list while the storage may move it, so no neighbour keeps a stale link.
        // SAFETY: as above: a live block on the live list; off it, it may be resized.
        let moved = unsafe {
            self.huge_blocks.remove(block);
            self.resize_huge_storage(block, new_total).0
        };
        if moved.is_null() {
            // SAFETY: the storage left the block intact; `data` is still `old_size` bytes.
            unsafe {
                self.huge_blocks.push_front(block);
                return self.move_block(data, old_size, size, copy_size);
            }
        }
        // SAFETY: the storage kept the header (it copies the allocation when it moves it).
        unsafe {
            (*moved).size = new_size;
            (*moved).dirty = usize::MAX;
            (*moved).data = (*moved).alloc.base().add(HUGE_HEADER);
            self.huge_blocks.push_front(moved);
        }
        self.count_free(old_size);
        self.count_alloc(new_size);
        // SAFETY: as above.
        Ok(unsafe { (*moved).data })
    }
}

/// The storage bytes a huge block growing from `old_total` to `total` gets. As a process's
/// `malloc` (the preload library), a quarter more than it had at least: a buffer grown a page at a
/// time then meets the storage (and the region map, whose update costs a word per 32 KiB of the
/// block) a logarithmic number of times, not once per call: 1 GiB grown by 4 KiB took 20 s, glibc
/// 0.6. The pages past `total` are never touched, so they cost address space only. With PHP's
/// semantics (`amortize` false) the block gets what was asked, as in PHP (whose real usage counts
/// it).
fn grown_total(old_total: usize, total: usize, amortize: bool) -> usize {
    if amortize {
        total.max((old_total + old_total / 4).next_multiple_of(ZEND_MM_PAGE_SIZE))
    } else {
        total
    }
}

#[cfg(test)]
mod tests {
    use super::super::resident_pages;
    use super::*;
    use crate::model_tests::CountingStorage;

    const SEG: usize = 64 << 10;
    const KIB: usize = 1 << 10;

    /// How often a block grown a page at a time from 4 MiB to 1 GiB goes to the storage.
    fn storage_resizes_growing_by_pages(amortize: bool) -> usize {
        let (mut capacity, mut resizes) = (4 << 20, 0);
        let mut total = capacity;
        while total < 1 << 30 {
            total += ZEND_MM_PAGE_SIZE;
            if total > capacity {
                capacity = grown_total(capacity, total, amortize);
                assert!(capacity >= total && capacity % ZEND_MM_PAGE_SIZE == 0);
                resizes += 1;
            }
        }
        resizes
    }

    #[test]
    fn a_malloc_block_grown_a_page_at_a_time_meets_the_storage_rarely() {
        assert!(storage_resizes_growing_by_pages(true) <= 30);
        // PHP's semantics: the block is what was asked for, each time.
        assert_eq!(
            storage_resizes_growing_by_pages(false),
            ((1 << 30) - (4 << 20)) / ZEND_MM_PAGE_SIZE
        );
    }

    #[test]
    fn cached_huge_blocks_serve_later_requests_and_a_copying_storage_never_grows_them() {
        type Counted = CountingStorage<0>;
        let heap = super::super::test_heap_on(Counted::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let end_request = || {
            // SAFETY: as above; the test forgets its blocks with the request.
            unsafe { Heap::shutdown(heap, false) }
        };
        let (allocs, _, _) = Counted::calls();
        // Live at request end: kept for the next request, counted in the real usage.
        h().alloc(200 * KIB).unwrap();
        end_request();
        assert_eq!(h().usage(true), SEG + 200 * KIB + HUGE_HEADER);
        let huge = |kib: usize| kib * KIB + HUGE_HEADER;
        let discarded = Counted::discarded();
        let p = h().alloc(180 * KIB).unwrap();
        assert_eq!(
            Counted::discarded() - discarded,
            huge(200) - huge(180),
            "the reused block's dead tail is discarded"
        );
        let q = h().alloc(400 * KIB).unwrap();
        assert_eq!(
            Counted::calls().0,
            allocs + 2,
            "the 180 KiB block reused the cached one"
        );
        h().free(p);
        h().free(q);
        // Too big for every cached block: mapped fresh, no cached block grown; the biggest cached
        // block (the one growing would have copied) goes back.
        let frees = Counted::calls().2;
        h().alloc(600 * KIB).unwrap();
        assert_eq!(
            Counted::calls(),
            (allocs + 3, 0, frees + 1),
            "no storage resize"
        );
        assert_eq!(h().usage(true), SEG + huge(200) + huge(600));
        // The cached block whose resident pages fit best (the 180 KiB block's 200 KiB storage).
        let discarded = Counted::discarded();
        let r = h().alloc(150 * KIB).unwrap();
        assert_eq!(h().block_size(r), 152 * KIB);
        assert_eq!(
            Counted::discarded() - discarded,
            huge(180) - huge(152),
            "only what the last user had is discarded"
        );
        assert_eq!(Counted::calls().0, allocs + 3);
        end_request();
        // Idle blocks go back after a few requests; zend_mm_gc would give them back at once.
        for _ in 0..IDLE_REQUESTS {
            assert!(h().usage(true) > SEG);
            end_request();
        }
        assert_eq!(h().usage(true), SEG, "idle huge blocks given back");
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn the_cached_block_whose_resident_pages_fit_best_is_reused() {
        type Counted = CountingStorage<3>;
        let heap = super::super::test_heap_on(Counted::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let huge = |kib: usize| kib * KIB + HUGE_HEADER;
        // A: 400 KiB of storage of which its last user had 260 KiB; B: 300 KiB, all used.
        let a = h().alloc(400 * KIB).unwrap();
        h().free(a);
        let a = h().alloc(260 * KIB).unwrap();
        let b = h().alloc(300 * KIB).unwrap();
        h().free(a);
        h().free(b);
        let (allocs, _, _) = Counted::calls();
        let discarded = Counted::discarded();
        // B is the tighter storage, but A's resident pages are closer to 256 KiB.
        assert_eq!(h().alloc(255 * KIB).unwrap(), a);
        assert_eq!(Counted::calls().0, allocs, "reused, not mapped");
        assert_eq!(Counted::discarded() - discarded, huge(260) - huge(256));
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_storage_that_moves_pages_grows_a_cached_block_instead() {
        type Remapping = CountingStorage<2, true>;
        let heap = super::super::test_heap_on(Remapping::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let p = h().alloc(200 * KIB).unwrap();
        h().free(p);
        let (allocs, resizes, frees) = Remapping::calls();
        let q = h().alloc(500 * KIB).unwrap();
        assert_eq!(
            Remapping::calls(),
            (allocs, resizes + 1, frees),
            "grown, not mapped"
        );
        assert_eq!(h().usage(true), SEG + 500 * KIB + HUGE_HEADER);
        h().free(q);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn gc_and_a_lower_limit_give_cached_huge_blocks_back() {
        type Counted = CountingStorage<1>;
        let heap = super::super::test_heap_on(Counted::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let p = h().alloc(200 * KIB).unwrap();
        h().free(p);
        assert_eq!(h().gc(), 200 * KIB + HUGE_HEADER);
        let p = h().alloc(200 * KIB).unwrap();
        h().free(p);
        assert!(
            h().set_limit(SEG).is_ok(),
            "the cache makes way for the limit"
        );
        assert_eq!(h().usage(true), SEG);
        // Over the limit only with the cache: the cache goes, the block is mapped.
        h().set_limit(SEG + 300 * KIB).unwrap();
        let p = h().alloc(100 * KIB).unwrap();
        h().free(p);
        assert!(
            h().alloc(250 * KIB).is_ok(),
            "the cached block went to make room"
        );
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    /// A heap of 64 KiB segments on the built-in storage `name`.
    fn heap_on_builtin(name: &[u8]) -> *mut Heap {
        let ops = crate::storage::builtin_by_name(name).unwrap();
        super::super::test_heap_on(ops, SEG)
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn the_cached_huge_blocks_stay_within_their_byte_bound() {
        for name in [&b"mmap_anon"[..], b"mmap_zero", b"malloc"] {
            let heap = heap_on_builtin(name);
            // SAFETY: a live heap of this thread, borrowed for a statement.
            let h = || unsafe { &mut *heap };
            // A block bigger than the bound goes back to storage when freed.
            let real = h().usage(true);
            h().free(h().alloc(HUGE_CACHE_BYTES + SEG).unwrap());
            assert_eq!(h().cached_huge_bytes(), 0);
            assert_eq!(h().usage(true), real);
            // Two blocks that fit it alone but not together: the second goes back (whether or not
            // it lies beside the first, which it would join).
            let size = HUGE_CACHE_BYTES / 2 + SEG;
            let (a, b) = (h().alloc(size).unwrap(), h().alloc(size).unwrap());
            h().free(a);
            let cached = h().cached_huge_bytes();
            assert!(cached >= size);
            h().free(b);
            assert_eq!(h().cached_huge_bytes(), cached);
            assert_eq!(h().usage(true), real + cached);
            // SAFETY: the heap dies.
            unsafe { Heap::shutdown(heap, true) };
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_splitting_storage_cuts_a_cached_block_for_smaller_requests_and_joins_the_pieces_again() {
        for name in [&b"mmap_anon"[..], b"mmap_zero", b"malloc"] {
            let heap = heap_on_builtin(name);
            // SAFETY: a live heap of this thread, borrowed for a statement.
            let h = || unsafe { &mut *heap };
            let huge = |kib: usize| kib * KIB + HUGE_HEADER;
            let a = h().alloc(600 * KIB).unwrap();
            let real = h().usage(true);
            h().free(a);
            let b = h().alloc(200 * KIB).unwrap();
            assert_eq!(b, a, "the cached block's start serves");
            assert_eq!(
                h().cached_huge_bytes(),
                huge(600) - huge(200),
                "the rest stays cached"
            );
            let c = h().alloc(300 * KIB).unwrap();
            assert_eq!(c.addr(), a.addr() + huge(200), "the rest's start serves");
            assert_eq!(h().cached_huge_bytes(), huge(600) - huge(200) - huge(300));
            assert_eq!(h().usage(true), real, "cutting takes nothing from storage");
            // SAFETY: live blocks of 200 and 300 KiB.
            unsafe {
                ptr::write_bytes(b, 0xb, 200 * KIB);
                ptr::write_bytes(c, 0xc, 300 * KIB);
                assert_eq!(*b.add(200 * KIB - 1), 0xb);
                assert_eq!(*c, 0xc);
            }
            assert_eq!(h().block_size(b), 200 * KIB);
            assert_eq!(h().block_size(c), 300 * KIB);
            h().free(b);
            assert_eq!(h().huge_cached.len(), 2, "the freed pieces do not meet yet");
            h().free(c);
            assert_eq!(
                h().huge_cached.len(),
                1,
                "the piece between them joins all three"
            );
            assert_eq!(h().cached_huge_bytes(), huge(600));
            assert_eq!(
                h().alloc(600 * KIB).unwrap(),
                a,
                "the joined block serves whole"
            );
            assert_eq!(h().usage(true), real);
            // SAFETY: the heap dies.
            unsafe { Heap::shutdown(heap, true) };
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn the_malloc_storage_never_makes_a_piece_it_would_free_the_wrong_way() {
        // It tells mapped blocks from the C library's by size: a power of two is the C library's.
        let heap = heap_on_builtin(b"malloc");
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let huge = |kib: usize| kib * KIB + HUGE_HEADER;
        let a = h().alloc(2000 * KIB).unwrap();
        h().free(a);
        // Cut at huge(976) the rest would be 1 MiB, a power of two: the block keeps a page more.
        let b = h().alloc(976 * KIB).unwrap();
        assert_eq!(b, a);
        assert_eq!(
            h().cached_huge_bytes(),
            huge(2000) - huge(976) - ZEND_MM_PAGE_SIZE
        );
        h().free(b);
        assert_eq!(h().cached_huge_bytes(), huge(2000), "joined again");
        h().release_cached_huge();
        // 1 MiB of storage (a power of two) comes from the C library: never cut.
        let c = h().alloc(1020 * KIB).unwrap();
        h().free(c);
        assert_eq!(h().cached_huge_bytes(), 1024 * KIB);
        h().alloc(200 * KIB).unwrap();
        assert_eq!(h().cached_huge_bytes(), 0, "served whole");
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    /// Large blocks of `size` bytes, written, until the heap took `segments` segments more.
    fn fill_new_segments(heap: *mut Heap, size: usize, segments: usize) -> Vec<*mut u8> {
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let before = h().segments_count;
        let mut blocks = Vec::new();
        while h().segments_count < before + segments {
            let p = h().alloc(size).unwrap();
            // SAFETY: a live block of `size` bytes.
            unsafe { ptr::write_bytes(p, 0x5a, size) };
            blocks.push(p);
        }
        blocks
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_new_huge_block_takes_the_pages_of_cached_segments_and_grows_with_them() {
        huge_block_takes_cached_segments(b"mmap_anon");
        huge_block_takes_cached_segments(b"mmap_zero");
        huge_block_takes_cached_segments(b"malloc");
    }

    fn huge_block_takes_cached_segments(storage: &[u8]) {
        let heap = heap_on_builtin(storage);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let moves = h().storage.moves_pages();
        assert!(moves, "the built-in storages move pages");
        for p in fill_new_segments(heap, 40 * KIB, 3) {
            h().free(p);
        }
        // Freed large runs wait in the run cache; flushed, their segments are empty.
        h().flush_run_cache();
        let cached = h().cached.len();
        assert!(cached >= 3, "emptied segments are cached");
        let (real, peak) = (h().usage(true), h().peak_usage(true));
        // Two segments' worth of storage, its header included.
        let size = 2 * SEG - HUGE_HEADER;
        let p = h().alloc(size).unwrap();
        let base = p.wrapping_sub(HUGE_HEADER);
        if moves {
            assert_eq!(h().cached.len(), cached - 2, "two cached segments moved in");
            assert_eq!(h().usage(true), real, "nothing taken from storage");
            assert_eq!(h().peak_usage(true), peak, "never counted twice");
            assert!(
                resident_pages(base, 2 * SEG) >= 2 * 40 * KIB / ZEND_MM_PAGE_SIZE,
                "the pages the segments' blocks wrote came along, resident"
            );
        } else {
            assert_eq!(h().cached.len(), cached);
            assert_eq!(h().usage(true), real + 2 * SEG);
        }
        // SAFETY: a live block of `size` bytes.
        unsafe {
            for i in 0..size / 8 {
                p.cast::<u64>().add(i).write(i as u64);
            }
        }
        // Grown past what the cache holds: the kernel cannot resize a range that pages moved into
        // in place, so it is moved whole onto a bigger mapping, its contents with it.
        let q = h().realloc(p, 6 * SEG, size).unwrap();
        assert_eq!(h().block_size(q), 6 * SEG);
        // SAFETY: a live block of 6 segments' size whose first `size` bytes were kept.
        unsafe {
            for i in 0..size / 8 {
                assert_eq!(q.cast::<u64>().add(i).read(), i as u64);
            }
            ptr::write_bytes(q, 1, 6 * SEG);
        }
        h().free(q);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    /// Whether all of `p..p + len` reads as zeros.
    fn all_zeros(p: *mut u8, len: usize) -> bool {
        // SAFETY: a live block of at least `len` bytes (callers).
        unsafe { core::slice::from_raw_parts(p, len) }
            .iter()
            .all(|&b| b == 0)
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_zeroed_huge_block_is_written_only_where_its_pages_may_hold_something() {
        for name in [&b"mmap_anon"[..], b"mmap_zero", b"malloc"] {
            let heap = heap_on_builtin(name);
            // SAFETY: a live heap of this thread, borrowed for a statement.
            let h = || unsafe { &mut *heap };
            let size = 3 * SEG;
            // Fresh mapped pages read as zeros: none is faulted in.
            let p = h().alloc(size).unwrap();
            // SAFETY: the block the heap handed out last.
            unsafe { h().zero_new_block(p, size) };
            assert_eq!(
                resident_pages(p, size),
                0,
                "{name:?}: fresh pages untouched"
            );
            assert!(all_zeros(p, size));
            // SAFETY: a live block of `size` bytes.
            unsafe { ptr::write_bytes(p, 0xab, size) };
            h().free(p);
            // The cached block comes back with what its last user wrote: zeroed whole.
            let q = h().alloc(size).unwrap();
            assert_eq!(q, p, "{name:?}: the cached block serves the request");
            // SAFETY: as above.
            unsafe { h().zero_new_block(q, size) };
            assert!(all_zeros(q, size), "{name:?}");
            // SAFETY: as above.
            unsafe { ptr::write_bytes(q, 0xcd, size) };
            h().free(q);
            // Too small for a bigger request, the cached block is grown: its old bytes are zeroed,
            // its new pages are left alone.
            let bigger = 2 * size;
            let r = h().alloc(bigger).unwrap();
            // SAFETY: as above.
            unsafe { h().zero_new_block(r, bigger) };
            let tail = r.wrapping_add(size + SEG);
            assert_eq!(
                resident_pages(tail, bigger - size - SEG),
                0,
                "{name:?}: the grown pages untouched"
            );
            assert!(all_zeros(r, bigger), "{name:?}");
            h().free(r);
            // SAFETY: the heap dies.
            unsafe { Heap::shutdown(heap, true) };
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_zeroed_huge_block_made_of_cached_segments_pages_is_zeroed_there() {
        for name in [&b"mmap_anon"[..], b"mmap_zero"] {
            let heap = heap_on_builtin(name);
            // SAFETY: a live heap of this thread, borrowed for a statement.
            let h = || unsafe { &mut *heap };
            for p in fill_new_segments(heap, 40 * KIB, 2) {
                h().free(p);
            }
            h().flush_run_cache();
            let cached = h().cached.len();
            assert!(cached >= 2);
            // The cached segments' pages (some written by the blocks above) come first, fresh
            // ones after them.
            let size = (cached + 3) * SEG;
            let p = h().alloc(size).unwrap();
            let base = p.wrapping_sub(HUGE_HEADER);
            let moved = (cached - h().cached.len()) * SEG;
            assert_eq!(
                moved,
                cached * SEG,
                "{name:?}: every cached segment moved in"
            );
            // SAFETY: the block the heap handed out last.
            unsafe { h().zero_new_block(p, size) };
            assert_eq!(
                resident_pages(base.wrapping_add(moved), size + HUGE_HEADER - moved),
                0,
                "{name:?}: the fresh pages past the moved ones stay untouched"
            );
            // (Reading maps the fresh pages, to the kernel's zero page: read them last.)
            assert!(all_zeros(p, size), "{name:?}");
            h().free(p);
            // SAFETY: the heap dies.
            unsafe { Heap::shutdown(heap, true) };
        }
    }

    #[test]
    fn a_zeroed_block_of_unknown_memory_is_zeroed_whole() {
        // The test storage gives memory Rust's allocator had: what it holds is unknown. Stand in
        // for a storage that hands out old bytes by writing them.
        let heap = super::super::test_heap_on(crate::model_tests::StdStorage::<0>::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        for size in [100, 5 * KIB, 3 * SEG] {
            let p = h().alloc(size).unwrap();
            // SAFETY: a live block of `size` bytes, the heap's last; then zeroed.
            unsafe {
                ptr::write_bytes(p, 0xee, size);
                h().zero_new_block(p, size);
            }
            assert!(all_zeros(p, size), "{size}");
            h().free(p);
        }
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_new_segment_takes_the_tail_of_a_cached_huge_block() {
        segment_takes_cached_huge_tail(b"mmap_anon");
        segment_takes_cached_huge_tail(b"mmap_zero");
        segment_takes_cached_huge_tail(b"malloc");
    }

    fn segment_takes_cached_huge_tail(storage: &[u8]) {
        let heap = heap_on_builtin(storage);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        let moves = h().storage.moves_pages();
        assert!(moves, "the built-in storages move pages");
        let size = 3 * SEG;
        let p = h().alloc(size).unwrap();
        // SAFETY: a live block of `size` bytes.
        unsafe { ptr::write_bytes(p, 0x77, size) };
        h().free(p);
        let cached = size + HUGE_HEADER;
        assert_eq!(h().cached_huge_bytes(), cached);
        let (real, peak) = (h().usage(true), h().peak_usage(true));
        let blocks = fill_new_segments(heap, 40 * KIB, 1);
        let last = *blocks.last().unwrap();
        if moves {
            assert_eq!(
                h().cached_huge_bytes(),
                cached - SEG,
                "the segment took the block's tail"
            );
            assert_eq!(h().usage(true), real, "nothing taken from storage");
            assert_eq!(h().peak_usage(true), peak, "never counted twice");
            let segment = last.with_addr(last.addr() & !(SEG - 1));
            assert_eq!(
                resident_pages(segment, SEG),
                SEG / ZEND_MM_PAGE_SIZE,
                "the block's written pages came along, resident"
            );
            // The pages no block took are known as free pages that may be resident.
            h().purge_all_free_pages();
            assert_eq!(
                resident_pages(segment, SEG),
                1 + 40 * KIB / ZEND_MM_PAGE_SIZE,
                "the header and the block's pages stay, the free ones went back"
            );
        } else {
            assert_eq!(h().cached_huge_bytes(), cached);
            assert_eq!(h().usage(true), real + SEG);
        }
        // What is left of the cached block still serves a huge request from its start.
        assert_eq!(h().alloc(SEG).unwrap(), p);
        for b in blocks {
            h().free(b);
        }
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_huge_block_the_c_library_gave_is_never_cut() {
        let heap = heap_on_builtin(b"malloc");
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        assert!(
            h().storage.moves_pages(),
            "the built-in storages move pages"
        );
        // A power of two: the `malloc` storage takes it from the C library, not from the kernel.
        let total = 4 * SEG;
        assert!(!h().storage.splits(total));
        let p = h().alloc(total - HUGE_HEADER).unwrap();
        // SAFETY: a live block of that size.
        unsafe { ptr::write_bytes(p, 0x55, total - HUGE_HEADER) };
        h().free(p);
        assert_eq!(h().cached_huge_bytes(), total);
        let blocks = fill_new_segments(heap, 40 * KIB, 1);
        assert_eq!(
            h().cached_huge_bytes(),
            total,
            "the new segment did not take the block's tail"
        );
        assert_eq!(h().alloc(total - HUGE_HEADER).unwrap(), p, "reused whole");
        h().free(p);
        for b in blocks {
            h().free(b);
        }
        // SAFETY: the heap dies; the C library takes its block back whole.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn in_a_first_request_a_block_grown_by_a_power_of_two_of_segments_takes_them_whole() {
        let heap = heap_on_builtin(b"malloc");
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        assert!(
            h().storage.moves_pages(),
            "the built-in storages move pages"
        );
        // One and a half segments more: two whole ones are a power of two, but the block's
        // storage then comes to five segments, a size the storage maps.
        assert!(!h().storage.splits(2 * SEG) && h().storage.splits(5 * SEG));
        let size = 3 * SEG - HUGE_HEADER;
        let grow = |first_request: bool| {
            let p = h().alloc(size).unwrap();
            // SAFETY: a live block of `size` bytes.
            unsafe { ptr::write_bytes(p, 0x33, size) };
            for b in fill_new_segments(heap, 40 * KIB, 3) {
                h().free(b);
            }
            h().flush_run_cache();
            let (cached, real) = (h().cached.len(), h().usage(true));
            assert!(cached >= 3, "emptied segments are cached");
            let q = h().realloc(p, size + SEG + SEG / 2, size).unwrap();
            if first_request {
                assert_eq!(h().cached.len(), cached - 2, "two cached segments moved in");
                assert_eq!(h().usage(true), real, "nothing taken from storage");
            } else {
                // Between requests the cache keeps what the next request refills.
                assert_eq!(h().cached.len(), cached - 1, "one cached segment moved in");
                assert_eq!(h().usage(true), real + SEG / 2);
            }
            // SAFETY: a live block at least `size` bytes long whose first `size` bytes were
            // kept.
            unsafe {
                assert!(
                    core::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|&b| b == 0x33)
                );
            }
            h().free(q);
        };
        grow(true);
        // SAFETY: a live heap whose blocks are all freed.
        unsafe { Heap::shutdown(heap, false) };
        // The huge block cached at the request end goes, so that the new one is mapped.
        h().gc();
        grow(false);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_cached_block_grown_for_a_bigger_request_takes_cached_segments_instead_of_shedding_them() {
        cached_block_grows_into_cached_segments(b"mmap_anon");
        cached_block_grows_into_cached_segments(b"mmap_zero");
        cached_block_grows_into_cached_segments(b"malloc");
    }

    fn cached_block_grows_into_cached_segments(storage: &[u8]) {
        let heap = heap_on_builtin(storage);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        assert!(
            h().storage.moves_pages(),
            "the built-in storages move pages"
        );
        h().free(h().alloc(2 * SEG).unwrap());
        for b in fill_new_segments(heap, 40 * KIB, 4) {
            h().free(b);
        }
        h().flush_run_cache();
        // After a request end, where shedding would apply.
        // SAFETY: the heap's blocks are all freed.
        unsafe { Heap::shutdown(heap, false) };
        let (cached, real) = (h().cached.len(), h().usage(true));
        // (New segments took pages from the cached block's tail: what is left of it.)
        let capacity = h().cached_huge_bytes();
        let growth = (4 * SEG + HUGE_HEADER - capacity).div_ceil(SEG);
        assert!(cached > growth);
        // Too big for the cached block: grown by whole segments.
        let q = h().alloc(4 * SEG).unwrap();
        assert_eq!(
            h().cached.len(),
            cached - growth,
            "cached segments moved in"
        );
        assert_eq!(
            h().usage(true),
            real,
            "nothing taken from storage, nothing shed"
        );
        // SAFETY: a live block of 4 segments.
        unsafe { ptr::write_bytes(q, 3, 4 * SEG) };
        h().free(q);
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }
}
