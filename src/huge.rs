//! Huge blocks (zend_alloc.c "Huge Runs"): requests too big for a segment, each with a storage
//! allocation of its own.
//!
//! Owns the huge-block header and the heap's list of huge blocks. A huge block is one storage
//! allocation: a header page (the storage-visible `zend_mm_segment` first, then the owner and the
//! list links) followed by the block, whose size is the request rounded up to whole pages. With the
//! mmap storages the block is therefore page aligned. Resizing goes through the storage's
//! `_realloc` (`mremap` for the mmap storages), so growing and shrinking never copy in user space.
//!
//! Invariants: every huge block of a heap is on its `huge_list` and registered in the region map
//! (tagged [`region_map::TAG_HUGE`]); `raw.size == HUGE_HEADER + size`.

use core::ptr;

use crate::diagnostics::{Fatal, Site};
use crate::ffi::types::zend_mm_segment;
use crate::heap::Heap;
use crate::region_map;
use crate::sizes::{ZEND_MM_PAGE_SIZE, align_up};

/// Bytes in front of every huge block: its header, padded to a page.
pub(crate) const HUGE_HEADER: usize = ZEND_MM_PAGE_SIZE;

#[repr(C)]
pub struct HugeBlock {
    /// What the storage sees: the allocation size (header included).
    pub raw: zend_mm_segment,
    pub heap: *mut Heap,
    pub prev: *mut HugeBlock,
    pub next: *mut HugeBlock,
    /// Block size: the request rounded up to whole pages.
    pub size: usize,
    /// The block handed to the caller.
    pub data: *mut u8,
}

const _: () = assert!(size_of::<HugeBlock>() <= HUGE_HEADER);

impl HugeBlock {
    fn base(&self) -> *mut u8 {
        (self as *const HugeBlock).cast_mut().cast()
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
        if self.overflow != 0 || grow <= self.limit.saturating_sub(self.real_size) {
            return true;
        }
        self.gc();
        grow <= self.limit.saturating_sub(self.real_size)
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
        if !self.huge_fits_limit(total) {
            return self.huge_failure(
                site,
                Fatal::Limit {
                    limit: self.limit,
                    tried: size,
                },
            );
        }
        let Some(base) = self.storage_alloc(total, size, site) else {
            return ptr::null_mut();
        };
        let block = base.cast::<HugeBlock>();
        let data = base.wrapping_add(HUGE_HEADER);
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
                size: block_size,
                data,
            })
        };
        if !region_map::register(
            base as usize,
            base as usize + total,
            block as usize | region_map::TAG_HUGE,
        ) {
            // SAFETY: never handed out.
            unsafe { self.storage.free(base) };
            return self.huge_failure(
                site,
                Fatal::OutOfMemory {
                    allocated: self.real_size,
                    tried: size,
                },
            );
        }
        self.link_huge(block);
        self.real_size += total;
        self.real_peak = self.real_peak.max(self.real_size);
        self.count_alloc(block_size);
        data
    }

    fn link_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: `block` and the list members are live huge blocks of this heap.
        unsafe {
            (*block).prev = ptr::null_mut();
            (*block).next = self.huge_list;
            if !self.huge_list.is_null() {
                (*self.huge_list).prev = block;
            }
        }
        self.huge_list = block;
    }

    fn unlink_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: `block` and its neighbours are live huge blocks of this heap.
        unsafe {
            let b = &*block;
            if b.prev.is_null() {
                self.huge_list = b.next;
            } else {
                (*b.prev).next = b.next;
            }
            if !b.next.is_null() {
                (*b.next).prev = b.prev;
            }
        }
    }

    /// Returns a huge block's storage (PHP's `zend_mm_free_huge`).
    pub fn free_huge(&mut self, block: *mut HugeBlock) {
        self.unlink_huge(block);
        // SAFETY: a live huge block of this heap, now off the list.
        let (size, total) = unsafe { ((*block).size, (*block).raw.size) };
        self.release_huge(block);
        self.size -= size;
        self.real_size -= total;
    }

    fn release_huge(&mut self, block: *mut HugeBlock) {
        // SAFETY: a live huge block of this heap that no list references.
        unsafe {
            region_map::unregister((*block).base() as usize, (*block).end());
            self.storage.free((*block).base());
        }
    }

    /// Frees every huge block (request end).
    pub fn release_huge_blocks(&mut self) {
        while !self.huge_list.is_null() {
            self.free_huge(self.huge_list);
        }
    }

    /// Resizes a huge block (PHP's `zend_mm_realloc_huge`): in storage while it stays huge, by
    /// moving when it becomes large or small.
    pub fn realloc_huge(
        &mut self,
        block: *mut HugeBlock,
        size: usize,
        copy_size: usize,
        site: Site,
    ) -> *mut u8 {
        // SAFETY: `locate` found a live huge block of this heap.
        let (old_size, old_total, data) =
            unsafe { ((*block).size, (*block).raw.size, (*block).data) };
        if size <= self.max_large_pages * ZEND_MM_PAGE_SIZE {
            return self.move_block(data, old_size, size, copy_size, site);
        }
        let (new_size, new_total) = match Self::huge_sizes(size) {
            Ok(sizes) => sizes,
            Err(fatal) => return self.huge_failure(site, fatal),
        };
        if new_size == old_size {
            return data;
        }
        if new_size > old_size && !self.huge_fits_limit(new_total - old_total) {
            return self.huge_failure(
                site,
                Fatal::Limit {
                    limit: self.limit,
                    tried: size,
                },
            );
        }
        // SAFETY: as above.
        let base = unsafe { (*block).base() };
        region_map::unregister(base as usize, base as usize + old_total);
        // SAFETY: `base` is a live storage segment of this heap whose header holds its size.
        let new_base = unsafe { self.storage.realloc(base, new_total) };
        if new_base.is_null() {
            region_map::register(
                base as usize,
                base as usize + old_total,
                block as usize | region_map::TAG_HUGE,
            );
            return self.move_block(data, old_size, size, copy_size, site);
        }
        let moved = new_base.cast::<HugeBlock>();
        // SAFETY: the storage kept the header (it copies the segment when it moves it).
        unsafe {
            (*moved).size = new_size;
            (*moved).data = new_base.wrapping_add(HUGE_HEADER);
            if !(*moved).prev.is_null() {
                (*(*moved).prev).next = moved;
            } else {
                self.huge_list = moved;
            }
            if !(*moved).next.is_null() {
                (*(*moved).next).prev = moved;
            }
        }
        if !region_map::register(
            new_base as usize,
            new_base as usize + new_total,
            moved as usize | region_map::TAG_HUGE,
        ) {
            // Out of the mappable address space: nothing sensible can continue.
            crate::diagnostics::heap_corrupted();
        }
        self.real_size = self.real_size - old_total + new_total;
        self.real_peak = self.real_peak.max(self.real_size);
        self.size = self.size - old_size + new_size;
        self.peak = self.peak.max(self.size);
        // SAFETY: as above.
        unsafe { (*moved).data }
    }
}
