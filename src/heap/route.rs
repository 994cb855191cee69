//! Routing (zend_alloc.c's `zend_mm_alloc_heap`, `zend_mm_free_heap`, `zend_mm_realloc_heap`):
//! which path serves a request, and what a pointer handed back names.
//!
//! Owns the one pointer classification every slow path uses ([`Heap::lookup`]): the region map
//! vouches for the pointer's owner before any metadata is read through it, then the segment's page
//! map says whether it starts a block. `locate` (free, realloc, block size), the checks and the
//! garbage collector all build on it.

use core::ptr;

use super::huge::HugeBlock;
use super::{Heap, Refusal};
use crate::diagnostics::{self, BadPointer, Call};
use crate::region_map::{self, Region};
use crate::segment::{
    LARGE_PAGES_MASK, PAGE_CACHED, PAGE_FREE, PAGE_KIND_MASK, PAGE_LARGE, Segment, run_offset,
    small_bin, starts_slot,
};
use crate::sizes::{
    BIN_SIZE, BINS, MAX_SMALL_SIZE, ZEND_MM_PAGE_SIZE, bin_of, is_small, keeps_bin,
};

/// A live block of this heap (as far as the metadata tells), found by [`Heap::locate`].
#[derive(Clone, Copy)]
pub(super) enum Block {
    Small {
        seg: *mut Segment,
        page: usize,
        bin: usize,
    },
    Large {
        seg: *mut Segment,
        page: usize,
        pages: usize,
    },
    Huge(*mut HugeBlock),
}

/// What a pointer names in this heap.
#[derive(Clone, Copy)]
pub(super) enum Lookup {
    /// The start of a block (of a small run's slot: free or not, the page map cannot tell).
    Block(Block),
    /// Inside a free page (past the header) of a segment of this heap.
    FreePage { seg: *mut Segment, page: usize },
    /// The start of a freed huge block the heap keeps for reuse.
    CachedHuge,
    /// Inside this heap's memory, but not at a block's start nor in a free page.
    NotABlock,
    /// Not in this heap's memory.
    Foreign,
}

impl Heap {
    /// Classifies `p` against this heap's metadata, trusting nothing before the region map vouches
    /// for its owner.
    #[inline(always)]
    pub(super) fn lookup(&self, p: *const u8) -> Lookup {
        // The fast table names this heap's aligned default segments: a pointer inside one needs no
        // region map.
        let seg = match self.fast_segment_of(p) {
            Some(seg) => seg,
            None => match region_map::find_owned(p.addr(), self.id()) {
                Region::Segment(base) => base.cast::<Segment>(),
                Region::Huge(base) => return self.lookup_huge(p, base.cast()),
                Region::Unowned => return Lookup::Foreign,
            },
        };
        // SAFETY: a live segment of this heap (the region map vouches for the owner).
        let s = unsafe { &*seg };
        let Some(page) = s.page_of(p.addr()) else {
            return Lookup::NotABlock;
        };
        let info = s.map_get(page);
        if let Some(bin) = small_bin(info) {
            return if starts_slot(p, info) {
                Lookup::Block(Block::Small { seg, page, bin })
            } else {
                Lookup::NotABlock
            };
        }
        match info & PAGE_KIND_MASK {
            PAGE_LARGE if p.addr() % ZEND_MM_PAGE_SIZE == 0 => Lookup::Block(Block::Large {
                seg,
                page,
                pages: (info & LARGE_PAGES_MASK) as usize,
            }),
            // Pages after a large run's first have free entries too: the bitmap tells them apart.
            PAGE_FREE if page >= s.header_pages() && !s.page_used(page) => {
                Lookup::FreePage { seg, page }
            }
            // A freed large run the heap keeps whole: freed pages to the caller.
            PAGE_CACHED if p.addr() % ZEND_MM_PAGE_SIZE == 0 => Lookup::FreePage { seg, page },
            _ => Lookup::NotABlock,
        }
    }

    #[cold]
    fn lookup_huge(&self, p: *const u8, block: *mut HugeBlock) -> Lookup {
        // SAFETY: a live huge block of this heap (the region map vouches for the owner).
        // SAFETY: as above.
        let (data, cached_data) = unsafe { ((*block).data(), (*block).cached_data()) };
        if data.cast_const() == p {
            Lookup::Block(Block::Huge(block))
        } else if data.is_null() && cached_data.cast_const() == p {
            Lookup::CachedHuge
        } else {
            Lookup::NotABlock
        }
    }

    /// The block `p` names in this heap; "zend_mm_heap corrupted" (naming `call`) for any pointer
    /// that is not the start of a live block of this heap as far as the metadata tells.
    #[inline(always)]
    pub(super) fn locate(&self, p: *mut u8, call: &Call) -> Block {
        match self.lookup(p) {
            Lookup::Block(block) => block,
            found => self.report_bad_pointer(p, found, call),
        }
    }

    /// Reports `p`, which `lookup` found to be `found` (no live block), as handed to `call`.
    #[cold]
    #[inline(never)]
    pub(super) fn report_bad_pointer(&self, p: *const u8, found: Lookup, call: &Call) -> ! {
        let what = match found {
            Lookup::FreePage { .. } => BadPointer::FreedPages,
            Lookup::CachedHuge => BadPointer::FreedHuge,
            Lookup::Foreign => match region_map::owner_of(p.addr()) {
                0 => BadPointer::NoHeapsMemory,
                owner => BadPointer::OtherHeap { owner },
            },
            Lookup::Block(_) | Lookup::NotABlock => self.enclosing_block(p),
        };
        diagnostics::bad_pointer(call, p, what)
    }

    /// For a pointer inside this heap's memory that starts no block: the block it points into,
    /// when the metadata tells (a small slot, a large run's first page, a huge block).
    fn enclosing_block(&self, p: *const u8) -> BadPointer {
        let seg = match self.fast_segment_of(p) {
            Some(seg) => seg,
            None => match region_map::find_owned(p.addr(), self.id()) {
                Region::Segment(base) => base.cast::<Segment>(),
                Region::Huge(base) => {
                    // SAFETY: a live huge block of this heap (the region map vouches for it).
                    let (data, size) = unsafe {
                        let block = base.cast::<HugeBlock>();
                        ((*block).data().addr(), (*block).size())
                    };
                    return match p.addr().checked_sub(data) {
                        Some(offset) if data != 0 && offset < size => BadPointer::Interior {
                            block: data,
                            offset,
                            size,
                        },
                        _ => BadPointer::NotABlock,
                    };
                }
                Region::Unowned => return BadPointer::NotABlock,
            },
        };
        // SAFETY: a live segment of this heap (the region map vouches for the owner).
        let s = unsafe { &*seg };
        let Some(page) = s.page_of(p.addr()) else {
            return BadPointer::NotABlock;
        };
        let info = s.map_get(page);
        if let Some(bin) = small_bin(info) {
            let size = BIN_SIZE[bin];
            let in_run = run_offset(p, info);
            if in_run / size >= BINS[bin].count as usize {
                return BadPointer::NotABlock; // the run's tail, past its last slot
            }
            let offset = in_run % size;
            return BadPointer::Interior {
                block: p.addr() - offset,
                offset,
                size,
            };
        }
        // A large run: its first page's entry names it; the pages after it read as free pages in
        // use, so look back for the entry.
        for first in (s.header_pages()..=page).rev() {
            let entry = s.map_get(first);
            if entry & PAGE_KIND_MASK == PAGE_LARGE {
                let pages = (entry & LARGE_PAGES_MASK) as usize;
                if first + pages <= page {
                    break;
                }
                let block = s.page_addr(first).addr();
                return BadPointer::Interior {
                    block,
                    offset: p.addr() - block,
                    size: pages * ZEND_MM_PAGE_SIZE,
                };
            }
            if entry & PAGE_KIND_MASK != PAGE_FREE || !s.page_used(first) {
                break;
            }
        }
        BadPointer::NotABlock
    }

    /// Allocates `size` bytes (PHP's `zend_mm_alloc_heap`).
    #[inline(always)]
    pub fn alloc(&mut self, size: usize) -> Result<*mut u8, Refusal> {
        // Without request ends this is a slow path (the preload library's fast path is its own).
        self.collect_idle_runs();
        let p = if is_small(size) {
            self.alloc_small(bin_of(size))
        } else {
            self.alloc_big(size)
        }?;
        if self.is_counting() {
            self.count_alloc_stats(size);
        }
        Ok(p)
    }

    /// A page-aligned run of whole pages for `size` bytes, even a size a bin would serve (the
    /// preload library's page-aligned `memalign`: its heaps have bins above a page, whose slots
    /// are not all page aligned). Counted as a large block.
    pub fn alloc_page_run(&mut self, size: usize) -> Result<*mut u8, Refusal> {
        let p = self.alloc_big(size)?;
        if self.is_counting() {
            self.count_alloc_stats(size.max(MAX_SMALL_SIZE + 1));
        }
        Ok(p)
    }

    #[inline(never)]
    fn alloc_big(&mut self, size: usize) -> Result<*mut u8, Refusal> {
        // Pages other threads freed may serve it (small blocks on the bins' remote lists free no
        // pages: they wait for their bins).
        self.collect_remote_list();
        if size <= self.max_large_size {
            self.alloc_large(size)
        } else {
            self.alloc_huge(size)
        }
    }

    /// Frees `p` (PHP's `zend_mm_free_heap`); null is a no-op. For the library's own blocks: a
    /// caller's pointer goes through [`Heap::free_for`].
    #[inline(always)]
    pub fn free(&mut self, p: *mut u8) {
        self.free_for(p, &Call::INTERNAL)
    }

    /// Frees `p`, handed to `call` (named if `p` is no live block of this heap); null is a no-op.
    #[inline(always)]
    pub fn free_for(&mut self, p: *mut u8, call: &Call) {
        if p.is_null() {
            return;
        }
        let block = self.locate(p, call);
        // SAFETY: `locate` vouches for the block: a live block of this heap.
        unsafe { self.free_block(p, block, call) }
    }

    /// Frees the block `p` starts, as [`Heap::lookup`] found it; a small block freed twice in a
    /// row is reported as handed to `call`.
    ///
    /// # Safety
    /// `block` must be what `lookup(p)` returned, and the block live.
    #[inline(always)]
    pub(super) unsafe fn free_block(&mut self, p: *mut u8, block: Block, call: &Call) {
        self.count_free_stats(block);
        // SAFETY: a live block of this heap (caller contract).
        unsafe {
            match block {
                Block::Small { bin, .. } => self.free_small_checked(p, bin, call),
                Block::Large { seg, page, pages } => self.free_large(seg, page, pages),
                Block::Huge(block) => self.free_huge(block),
            }
        }
    }

    /// Usable size of the block at `p` (bin size, whole pages, page-rounded huge size); 0 for null.
    /// For the library's own blocks: a caller's pointer goes through [`Heap::block_size_for`].
    pub fn block_size(&self, p: *mut u8) -> usize {
        self.block_size_for(p, &Call::INTERNAL)
    }

    /// [`Heap::block_size`] of `p`, handed to `call` (named if `p` is no live block).
    pub fn block_size_for(&self, p: *mut u8, call: &Call) -> usize {
        if p.is_null() {
            return 0;
        }
        match self.locate(p, call) {
            Block::Small { bin, .. } => BIN_SIZE[bin],
            Block::Large { pages, .. } => pages * ZEND_MM_PAGE_SIZE,
            // SAFETY: `locate` returned a live huge block of this heap.
            Block::Huge(block) => unsafe { (*block).size() },
        }
    }

    /// Resizes `p` to `size` bytes keeping at most `copy_size` bytes of its contents (PHP's
    /// `zend_mm_realloc_heap`). On a refusal `p` is untouched. For the library's own blocks: a
    /// caller's pointer goes through [`Heap::realloc_for`].
    pub fn realloc(
        &mut self,
        p: *mut u8,
        size: usize,
        copy_size: usize,
    ) -> Result<*mut u8, Refusal> {
        self.realloc_for(p, size, copy_size, &Call::INTERNAL)
    }

    /// [`Heap::realloc`] of `p`, handed to `call` (named if `p` is no live block).
    pub fn realloc_for(
        &mut self,
        p: *mut u8,
        size: usize,
        copy_size: usize,
        call: &Call,
    ) -> Result<*mut u8, Refusal> {
        if p.is_null() {
            return self.alloc(size);
        }
        match self.locate(p, call) {
            Block::Small { bin, .. } => {
                // A block freed last in its bin heads the bin's free list: resizing it would hand
                // it out twice (as the new block, or kept, while the list still holds it). One
                // freed earlier is on the list further down (its free mark says it may be).
                if self.free_slot_head(bin).cast() == p {
                    diagnostics::bad_pointer(call, p, BadPointer::DoubleFree);
                }
                if self.marked_free(p, bin) && self.on_free_list(bin, p) {
                    diagnostics::bad_pointer(call, p, BadPointer::OnFreeList);
                }
                if keeps_bin(bin, size) {
                    return Ok(p);
                }
                // SAFETY: a live small block of this heap of its bin's size.
                unsafe { self.move_block(p, BIN_SIZE[bin], size, copy_size) }
            }
            Block::Large { seg, page, pages } => {
                let stays_large = !is_small(size) && size <= self.max_large_size;
                // SAFETY: `locate` found this large run of a live segment of this heap.
                if stays_large && unsafe { self.resize_large_in_place(seg, page, pages, size) } {
                    return Ok(p);
                }
                let old_size = pages * ZEND_MM_PAGE_SIZE;
                // SAFETY: a live large block of this heap of `old_size` bytes.
                unsafe { self.move_block(p, old_size, size, copy_size) }
            }
            // SAFETY: `locate` found a live huge block of this heap.
            Block::Huge(block) => unsafe { self.realloc_huge(block, size, copy_size) },
        }
    }

    /// Moves a block to a new one of `size` bytes (PHP's `zend_mm_realloc_slow`); the transient
    /// double allocation does not count towards the peak.
    ///
    /// # Safety
    /// `p` must be a live block of this heap of at least `old_size` bytes.
    pub(super) unsafe fn move_block(
        &mut self,
        p: *mut u8,
        old_size: usize,
        size: usize,
        copy_size: usize,
    ) -> Result<*mut u8, Refusal> {
        let orig_peak = self.peak;
        let new = self.alloc(size)?;
        let n = old_size.min(size).min(copy_size);
        // SAFETY: both blocks are live, distinct, and at least `n` bytes long (caller contract).
        unsafe { ptr::copy_nonoverlapping(p, new, n) };
        self.free(p);
        self.set_usage(self.used(), orig_peak.max(self.used()));
        Ok(new)
    }
}
