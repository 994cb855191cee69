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
//! A freed huge block stays cached (up to [`HUGE_CACHE`] of them) until the request ends: the next
//! huge request reuses its pages, already faulted in, instead of mapping fresh ones (each page of
//! fresh memory costs a page fault on first touch, about as much as the block's whole use). A
//! cached block serves any request it is big enough for; a smaller one grows through the storage.
//!
//! Invariants: every live huge block of a heap is on its `huge_list`, every cached one on
//! `huge_cached` (with `data` null, so a stale pointer to it is caught); both are registered in the
//! region map (as [`Region::Huge`]); `HUGE_HEADER + size <= raw.size` (the storage
//! allocation may be larger than the block it serves).

use core::ptr;

use crate::diagnostics::{Fatal, Site};
use crate::ffi::types::zend_mm_segment;
use crate::heap::Heap;
use crate::region_map::{self, Region};
use crate::sizes::{ZEND_MM_PAGE_SIZE, align_up};

/// Bytes in front of every huge block: its header, padded to a page.
pub(crate) const HUGE_HEADER: usize = ZEND_MM_PAGE_SIZE;

/// Freed huge blocks a heap keeps for reuse during a request.
pub(crate) const HUGE_CACHE: usize = 4;

#[repr(C)]
pub struct HugeBlock {
    /// What the storage sees: the allocation size (header included).
    pub raw: zend_mm_segment,
    pub heap: *mut Heap,
    pub prev: *mut HugeBlock,
    pub next: *mut HugeBlock,
    /// Block size: the request rounded up to whole pages.
    pub size: usize,
    /// The block handed to the caller (null while cached).
    pub data: *mut u8,
    /// This header's own address, with the provenance of the whole storage allocation (a pointer
    /// derived from `&self` covers the header struct only).
    base: *mut u8,
}

const _: () = assert!(size_of::<HugeBlock>() <= HUGE_HEADER);

impl HugeBlock {
    fn base(&self) -> *mut u8 {
        self.base
    }

    fn end(&self) -> usize {
        self.base() as usize + self.raw.size
    }
}

impl Heap {
    /// Block size and storage size for a huge request, or the overflow error PHP reports.
    fn huge_sizes(size: usize) -> Result<(usize, usize), Fatal> {
        align_up(size, ZEND_MM_PAGE_SIZE)
            .and_then(|block| Some((block, block.checked_add(HUGE_HEADER)?)))
            .ok_or(Fatal::Overflow2 {
                size,
                add: ZEND_MM_PAGE_SIZE,
            })
    }

    /// Whether `grow` more bytes from storage fit under the limit, collecting garbage once if not.
    fn huge_fits_limit(&mut self, grow: usize) -> bool {
        if self.within_limit(grow) {
            return true;
        }
        self.gc();
        self.within_limit(grow)
    }

    /// Fails a huge request: null when the caller may fail, PHP's fatal error otherwise.
    fn huge_failure(&mut self, site: Site, fatal: Fatal) -> *mut u8 {
        if site.may_fail {
            return ptr::null_mut();
        }
        self.fatal(site, fatal)
    }

    /// A huge block of `size` bytes (PHP's `zend_mm_alloc_huge`).
    pub fn alloc_huge(&mut self, size: usize, site: Site) -> *mut u8 {
        let (block_size, total) = match Self::huge_sizes(size) {
            Ok(sizes) => sizes,
            Err(fatal) => return self.huge_failure(site, fatal),
        };
        let block = match self.take_cached_huge(total) {
            Some(block) => block,
            None => match self.map_huge(total, size, site) {
                Some(block) => block,
                None => return ptr::null_mut(),
            },
        };
        // SAFETY: a registered huge block of this heap, on no list.
        let data = unsafe {
            (*block).size = block_size;
            (*block).data = (*block).base().add(HUGE_HEADER);
            (*block).data
        };
        self.link_huge(block);
        self.count_alloc(block_size);
        data
    }

    /// A fresh huge block of `total` storage bytes, registered and counted in `real_size`; `None`
    /// after a fatal error was raised (or when the caller may fail).
    fn map_huge(&mut self, total: usize, size: usize, site: Site) -> Option<*mut HugeBlock> {
        if !self.huge_fits_limit(total) {
            let limit = self.limit;
            self.huge_failure(site, Fatal::Limit { limit, tried: size });
            return None;
        }
        let base = self.storage_alloc(total, size, site)?;
        let block = base.cast::<HugeBlock>();
        // SAFETY: `base` holds `total` fresh bytes; the header fits in the first page.
        unsafe {
            block.write(HugeBlock {
                raw: zend_mm_segment {
                    size: total,
                    next_segment: ptr::null_mut(),
                },
                heap: self,
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                size: 0,
                data: ptr::null_mut(),
                base,
            })
        };
        if !region_map::register(
            base as usize,
            base as usize + total,
            Region::Huge(block),
            self,
        ) {
            // SAFETY: never handed out.
            unsafe { self.storage.free(base) };
            let allocated = self.real_size;
            self.huge_failure(
                site,
                Fatal::OutOfMemory {
                    allocated,
                    tried: size,
                },
            );
            return None;
        }
        self.count_storage(total);
        Some(block)
    }

    /// A cached huge block resized (if needed) to serve `total` storage bytes, off the cache.
    fn take_cached_huge(&mut self, total: usize) -> Option<*mut HugeBlock> {
        // The tightest cached block that is big enough, else the biggest one (to grow).
        let mut best: *mut HugeBlock = ptr::null_mut();
        let mut block = self.huge_cached;
        let mut best_capacity = 0;
        while !block.is_null() {
            // SAFETY: cached huge blocks are registered blocks of this heap.
            let capacity = unsafe { (*block).raw.size };
            let better = if capacity >= total {
                best_capacity < total || capacity < best_capacity
            } else {
                best_capacity < total && capacity > best_capacity
            };
            if better {
                best = block;
                best_capacity = capacity;
            }
            // SAFETY: as above.
            block = unsafe { (*block).next };
        }
        if best.is_null() {
            return None;
        }
        self.unlink_cached_huge(best);
        // Reuse as it is unless it is too small: shrinking would give back pages that are already
        // faulted in, to fault them in again for the next bigger request. (The cache is small and
        // emptied at request end, so the idle tail is bounded.)
        if best_capacity >= total {
            return Some(best);
        }
        if !self.huge_fits_limit(total - best_capacity) {
            self.release_huge(best);
            return None;
        }
        let resized = self.resize_huge_storage(best, total);
        if resized.is_null() {
            self.release_huge(best);
        }
        (!resized.is_null()).then_some(resized)
    }

    /// Resizes a huge block's storage allocation (moving it if the storage must), keeping the
    /// region map and `real_size` right; null (the block intact) if the storage refuses. List links
    /// are the caller's business.
    fn resize_huge_storage(&mut self, block: *mut HugeBlock, total: usize) -> *mut HugeBlock {
        // SAFETY: a registered huge block of this heap.
        let (base, old_total) = unsafe { ((*block).base(), (*block).raw.size) };
        region_map::unregister(base as usize, base as usize + old_total);
        // SAFETY: `base` is a live storage segment of this heap whose header holds its size.
        let new_base = unsafe { self.storage.realloc(base, total) };
        let (base, total) = if new_base.is_null() {
            (base, old_total)
        } else {
            (new_base, total)
        };
        let block = base.cast::<HugeBlock>();
        // SAFETY: the header at `base` is live (kept or moved with the allocation); it records
        // where it now is.
        unsafe { (*block).base = base };
        if !region_map::register(
            base as usize,
            base as usize + total,
            Region::Huge(block),
            self,
        ) {
            // Out of the mappable address space after a move: nothing sensible can continue.
            crate::diagnostics::heap_corrupted();
        }
        if new_base.is_null() {
            return ptr::null_mut();
        }
        self.real_size -= old_total;
        self.count_storage(total);
        block
    }

    fn link_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: `block` is a huge block of this heap on no list; the list holds live ones.
        unsafe { push_front(&mut self.huge_list, block) };
    }

    fn unlink_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: `block` is on the live list.
        unsafe { unlink(&mut self.huge_list, block) };
    }

    fn unlink_cached_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: `block` is on the cache list.
        unsafe { unlink(&mut self.huge_cached, block) };
        self.huge_cached_count -= 1;
    }

    /// Frees a huge block (PHP's `zend_mm_free_huge`): cached for reuse while the cache has room,
    /// returned to storage otherwise.
    pub fn free_huge(&mut self, block: *mut HugeBlock) {
        self.unlink_huge(block);
        // SAFETY: a live huge block of this heap, now off the list.
        self.count_free(unsafe { (*block).size });
        if self.huge_cached_count < HUGE_CACHE {
            // SAFETY: as above; it joins the cache list, whose members are cached blocks.
            unsafe {
                (*block).data = ptr::null_mut();
                push_front(&mut self.huge_cached, block);
            }
            self.huge_cached_count += 1;
        } else {
            self.release_huge(block);
        }
    }

    /// Returns a huge block (on no list) to storage.
    fn release_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: a registered huge block of this heap that no list references.
        unsafe {
            self.real_size -= (*block).raw.size;
            region_map::unregister((*block).base() as usize, (*block).end());
            self.storage.free((*block).base());
        }
    }

    /// Storage bytes held by cached huge blocks.
    pub fn cached_huge_bytes(&self) -> usize {
        let mut bytes = 0;
        let mut block = self.huge_cached;
        while !block.is_null() {
            // SAFETY: cached huge blocks are registered blocks of this heap.
            unsafe {
                bytes += (*block).raw.size;
                block = (*block).next;
            }
        }
        bytes
    }

    /// Returns every cached huge block to storage; the bytes given back.
    pub fn release_cached_huge(&mut self) -> usize {
        let mut released = 0;
        while !self.huge_cached.is_null() {
            let block = self.huge_cached;
            self.unlink_cached_huge(block);
            // SAFETY: a registered huge block of this heap.
            released += unsafe { (*block).raw.size };
            self.release_huge(block);
        }
        released
    }

    /// Frees every huge block, cached ones included (request end).
    pub fn release_huge_blocks(&mut self) {
        while !self.huge_list.is_null() {
            let block = self.huge_list;
            self.unlink_huge(block);
            // SAFETY: a live huge block of this heap, now off the list.
            self.count_free(unsafe { (*block).size });
            self.release_huge(block);
        }
        self.release_cached_huge();
    }

    /// Resizes a huge block (PHP's `zend_mm_realloc_huge`): in place while its storage is big
    /// enough (and not more than twice too big), through the storage while it stays huge, by
    /// moving when it becomes large or small.
    pub fn realloc_huge(
        &mut self,
        block: *mut HugeBlock,
        size: usize,
        copy_size: usize,
        site: Site,
    ) -> *mut u8 {
        // SAFETY: `locate` found a live huge block of this heap.
        let (old_size, capacity, data) =
            unsafe { ((*block).size, (*block).raw.size, (*block).data) };
        if size <= self.max_large_size {
            return self.move_block(data, old_size, size, copy_size, site);
        }
        let (new_size, new_total) = match Self::huge_sizes(size) {
            Ok(sizes) => sizes,
            Err(fatal) => return self.huge_failure(site, fatal),
        };
        if new_total <= capacity && new_total >= capacity / 2 {
            // SAFETY: as above; the storage already holds the new size.
            unsafe { (*block).size = new_size };
            self.count_free(old_size);
            self.count_alloc(new_size);
            return data;
        }
        if new_total > capacity && !self.huge_fits_limit(new_total - capacity) {
            let limit = self.limit;
            return self.huge_failure(site, Fatal::Limit { limit, tried: size });
        }
        // Off the list while the storage may move it, so no neighbour keeps a stale link.
        self.unlink_huge(block);
        let moved = self.resize_huge_storage(block, new_total);
        if moved.is_null() {
            self.link_huge(block);
            return self.move_block(data, old_size, size, copy_size, site);
        }
        // SAFETY: the storage kept the header (it copies the segment when it moves it).
        unsafe {
            (*moved).size = new_size;
            (*moved).data = (*moved).base().add(HUGE_HEADER);
        }
        self.link_huge(moved);
        self.count_free(old_size);
        self.count_alloc(new_size);
        // SAFETY: as above.
        unsafe { (*moved).data }
    }
}

/// Puts `block` at the front of the doubly linked list that starts at `head`.
///
/// # Safety
/// `block` is a huge block on no list; every member of the list is a valid huge block.
unsafe fn push_front(head: &mut *mut HugeBlock, block: *mut HugeBlock) {
    // SAFETY: the caller guarantees `block` and the current front are valid huge blocks.
    unsafe {
        (*block).prev = ptr::null_mut();
        (*block).next = *head;
        if !head.is_null() {
            (**head).prev = block;
        }
    }
    *head = block;
}

/// Takes `block` off the doubly linked list that starts at `head`.
///
/// # Safety
/// `block` is a member of that list, and so are its neighbours.
unsafe fn unlink(head: &mut *mut HugeBlock, block: *mut HugeBlock) {
    // SAFETY: the caller guarantees `block` and its neighbours are valid list members.
    unsafe {
        let b = &*block;
        if b.prev.is_null() {
            *head = b.next;
        } else {
            (*b.prev).next = b.next;
        }
        if !b.next.is_null() {
            (*b.next).prev = b.prev;
        }
    }
}
