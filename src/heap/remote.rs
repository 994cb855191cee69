//! Frees from other threads, and heaps whose thread is gone.
//!
//! A heap is used by one thread at a time, so a block freed by a thread that is not using the
//! block's heap cannot go on the heap's lists. It goes onto one of the heap's *remote lists*
//! instead: lock-free stacks threaded through the freed blocks themselves (their first word), which
//! the owning thread takes whole, with one swap, on a slow path (mimalloc's `xthread_free`). The
//! fast paths never look at them.
//!
//! A small block goes onto its bin's remote list, once the freeing thread has checked in the
//! block's segment that it starts a slot of that bin. The list is then a ready free list of the
//! bin: when the bin's own list runs dry, the owner makes the remote list its free list with no
//! walk (walking it cost a dependent cache miss per block, a quarter of the time of a server loop
//! that frees most blocks on other threads). Its head word carries the block count beside the
//! address, so one compare-and-swap keeps list and count together and the owner counts the bytes
//! without visiting a block. Every other block (large, huge, or one the check does not place) goes
//! onto the general remote list, which the owner walks, freeing each block as if it were freed
//! there, with every check of a local free.
//!
//! Owns [`Shared`], the part of a heap other threads may touch: it lives beside the `Heap` struct
//! in the main segment's header, not inside it, because the owner holds `&mut Heap` while it runs.
//! Another thread reaches it from the heap's owner id in the region map, which stays valid while
//! any block of the heap is live.
//!
//! Also owns the list of *abandoned* heaps: the heap of a thread that exited with live blocks stays
//! (other threads may still free them, onto its remote list) until a new thread adopts it or a
//! thread exit finds it empty and releases it. The list is a lock-free stack whose only removal is
//! taking it whole, so nothing can be left locked by a `fork` and no ABA can arise.
//!
//! Invariants: a block is on at most one remote list, and only while its owner has not collected
//! it; a heap is on the abandoned list only while no thread uses it.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::Heap;
use super::huge::HugeBlock;
use super::route::Block;
use super::small::{FREED_MARK, FreeSlot, is_marked, mark_of};
use crate::diagnostics::{self, BadPointer, Call, Site};
use crate::region_map::{self, Owner, Region};
use crate::segment::{
    LARGE_PAGES_MASK, PAGE_CACHED, PAGE_FREE, PAGE_KIND_MASK, PAGE_LARGE, Segment, run_offset,
    small_bin, starts_slot,
};
use crate::sizes::{BIN_SIZE, HEAP_BINS, ZEND_MM_PAGE_SIZE};

/// Bins with a remote list of their own: those of slots up to 1792 bytes. The three largest bins
/// use the general list: the main segment's header page has room for this many lists beside the
/// page map and the heap, and blocks that size are few per byte freed.
const REMOTE_BINS: usize = 27;
const _: () = assert!(REMOTE_BINS <= HEAP_BINS && BIN_SIZE[REMOTE_BINS - 1] == 1792);

/// A bin's remote list head word: the first block's address in the low bits, the block count
/// above them. Blocks at higher addresses go onto the general list.
const COUNT_SHIFT: u32 = 48;
const ADDRESS_MASK: usize = (1 << COUNT_SHIFT) - 1;
/// A bin's remote list holds at most this many blocks; further ones go onto the general list.
const MAX_BIN_COUNT: usize = usize::MAX >> COUNT_SHIFT;
const _: () = assert!(
    usize::BITS == 64,
    "bin remote lists pack a count above 48-bit addresses"
);

/// What other threads may touch of a heap.
#[repr(C)]
pub(super) struct Shared {
    /// Blocks freed by other threads, each holding the next in its first word.
    remote: AtomicPtr<u8>,
    /// Per bin, its small blocks freed by other threads, as a head word (see [`COUNT_SHIFT`]).
    bins: [AtomicUsize; REMOTE_BINS],
    /// The next heap on the abandoned list while this one is on it.
    next_abandoned: AtomicPtr<Heap>,
    /// For a thread's own heap, whose blocks other threads may free, its segment size (their frees
    /// read the segments' page maps with it) with [`TRACKS`] set while the heap tracks its blocks;
    /// 0 for other heaps. Set before any block exists, changed only while none does.
    thread_segment_size: AtomicUsize,
}

/// In `thread_segment_size`: the heap tracks its blocks, so a block freed from another thread is
/// linked through its tracking header, not its first word, which for a block under 8 bytes holds
/// its end guard. (Segment sizes are powers of two, far above this bit.)
const TRACKS: usize = 1;
const _: () = assert!(crate::sizes::MIN_SEGMENT_SIZE > TRACKS);

/// Where a block freed onto a general remote list holds the next one: its first word, or for a
/// heap that tracks its blocks ([`TRACKS`]), its tracking header's link.
fn remote_link(p: *mut u8, tracks: bool) -> *mut *mut u8 {
    if tracks {
        super::track::link_of(p)
    } else {
        p.cast()
    }
}

/// Where a heap's [`Shared`] lies: right after the `Heap` struct.
pub(super) const SHARED_OFFSET: usize = size_of::<Heap>();
const _: () = assert!(SHARED_OFFSET % align_of::<Shared>() == 0);

/// Bytes the main segment's header holds for a heap: the struct and its shared part.
pub(super) const HEAP_BYTES: usize = SHARED_OFFSET + size_of::<Shared>();

impl Shared {
    pub(super) const fn new() -> Shared {
        Shared {
            remote: AtomicPtr::new(ptr::null_mut()),
            bins: [const { AtomicUsize::new(0) }; REMOTE_BINS],
            next_abandoned: AtomicPtr::new(ptr::null_mut()),
            thread_segment_size: AtomicUsize::new(0),
        }
    }
}

/// The shared part of the heap `owner` names.
///
/// # Safety
/// `owner` must be the id of a live heap (its address, exposed when it was made).
unsafe fn shared_of<'a>(owner: Owner) -> &'a Shared {
    let p = ptr::with_exposed_provenance::<Shared>(owner + SHARED_OFFSET);
    // SAFETY: a live heap's shared part (caller contract); only touched through atomics.
    unsafe { &*p }
}

impl Shared {
    /// What other threads' frees read of a thread heap: its segment size (0 for a heap that takes
    /// no remote frees) and whether it tracks its blocks.
    fn thread_word(&self) -> (usize, bool) {
        let word = self.thread_segment_size.load(Ordering::Relaxed);
        (word & !TRACKS, word & TRACKS != 0)
    }
}

/// Heaps of exited threads that still have live blocks.
static ABANDONED: AtomicPtr<Heap> = AtomicPtr::new(ptr::null_mut());

impl Heap {
    /// This heap's shared part.
    fn shared(&self) -> &Shared {
        // SAFETY: this heap is live; its shared part was written when it was made.
        unsafe { shared_of(self.id()) }
    }

    /// Makes this heap a thread's own heap: its blocks may be freed from any thread (explicit heaps'
    /// blocks are freed through their heap, as in PHP).
    pub fn set_thread_heap(&mut self) {
        self.publish_thread_word();
    }

    /// Stores what other threads' frees read of this thread heap: its segment size, and whether
    /// it tracks its blocks.
    fn publish_thread_word(&mut self) {
        let tracks = if self.is_tracking() { TRACKS } else { 0 };
        self.shared()
            .thread_segment_size
            .store(self.segment_size | tracks, Ordering::Relaxed);
    }

    /// After tracking was switched on or off (with no block live): other threads' frees of this
    /// heap's blocks, if it is a thread heap, link them as the new mode reads them.
    pub(super) fn tracking_changed(&mut self) {
        if self.shared().thread_segment_size.load(Ordering::Relaxed) != 0 {
            self.publish_thread_word();
        }
    }

    /// Whether the heap `owner` takes frees from other threads.
    ///
    /// # Safety
    /// `owner` must be the id of a live heap.
    pub unsafe fn takes_remote_frees(owner: Owner) -> bool {
        // SAFETY: caller contract.
        unsafe { shared_of(owner) }
            .thread_segment_size
            .load(Ordering::Relaxed)
            != 0
    }

    /// Frees `p`, a block of the heap `owner` that the calling thread does not use: onto that
    /// heap's remote list, for its thread to collect. A block that is already the head of the
    /// list is being freed twice and is reported as handed to `call`.
    ///
    /// # Safety
    /// `owner` must be the heap the region map names for `p`, and `p` a live block of it that no
    /// one uses after this call (then the heap, and the block's memory, outlive the call).
    pub unsafe fn free_remote(owner: Owner, p: *mut u8, call: &Call) {
        let region = region_map::find_owned(p.addr(), owner);
        // SAFETY: caller contract; the region map's region of `p`.
        unsafe { Heap::free_remote_in(owner, region, p, call) }
    }

    /// [`Heap::free_remote`] with `p`'s region known (from the region-map lookup that found the
    /// owner).
    ///
    /// # Safety
    /// As [`Heap::free_remote`]; `region` is what the region map holds for `p`.
    pub unsafe fn free_remote_in(owner: Owner, region: Region, p: *mut u8, call: &Call) {
        // SAFETY: the owner of a live block is a live heap (caller contract).
        let shared = unsafe { shared_of(owner) };
        let (segment_size, tracks) = shared.thread_word();
        // Nothing is written before the owner's metadata says a block starts there.
        // SAFETY: as above.
        let small = match unsafe { remote_block_start(region, segment_size, tracks, p) } {
            Ok(small) => small,
            Err(what) => diagnostics::bad_pointer(call, p, what),
        };
        // A tracked block never starts a slot (its header does): it goes to the general list.
        if let Some(bin) = small.filter(|_| !tracks) {
            // A small block whose second word holds the mark is free already: on its owner's
            // lists, or on a remote one (all handed-out blocks have it cleared; see `small`).
            let mark = mark_of(p, BIN_SIZE[bin]);
            // SAFETY: the block's memory, given up by the caller.
            if unsafe { is_marked(mark) } {
                diagnostics::bad_pointer(call, p, BadPointer::FreedAlready);
            }
            // Marked on any list, so the owner's own free of it meanwhile is caught too.
            // SAFETY: as above.
            unsafe { mark.write(FREED_MARK) };
            if bin < REMOTE_BINS && push_on_bin(&shared.bins[bin], p, BIN_SIZE[bin], call) {
                return;
            }
        }
        // SAFETY: a tracked block starts at its header (checked above).
        if tracks && !unsafe { super::track::claim_remote_free(p) } {
            diagnostics::bad_pointer(call, p, BadPointer::FreedAlready);
        }
        let list = &shared.remote;
        let link = remote_link(p, tracks);
        let mut head = list.load(Ordering::Relaxed);
        loop {
            if head == p {
                diagnostics::bad_pointer(call, p, BadPointer::DoubleRemoteFree);
            }
            // SAFETY: the block is live and given up by the caller: its link word (its first, or
            // its tracking header's) is ours.
            unsafe { link.write(head) };
            match list.compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Bytes from `p` to the end of its block, `p` being a live block of the heap `owner` that
    /// the calling thread does not use (a resize from another thread copies that much at most);
    /// `None` if the metadata names no block there.
    ///
    /// # Safety
    /// As [`Heap::free_remote`], except that the caller keeps the block: while it is live, its
    /// region and the metadata read here (its own page-map entry, its huge header) do not change.
    pub unsafe fn remote_usable_size(owner: Owner, p: *const u8) -> Option<usize> {
        // SAFETY: a live heap (caller contract).
        let (segment_size, tracks) = unsafe { shared_of(owner) }.thread_word();
        let region = region_map::find_owned(p.addr(), owner);
        if tracks {
            // A tracked block: the size asked for (past it lies the end guard). Its header is
            // read only once the metadata says a block starts there.
            // SAFETY: as above; `p` is a live block of the owner's, in `region`.
            return unsafe { remote_block_start(region, segment_size, true, p.cast_mut()) }
                .ok()
                // SAFETY: a live tracked block (checked above): its header is its own.
                .map(|_| unsafe { super::track::requested_size_of(p) });
        }
        match region {
            Region::Segment(base) => {
                // SAFETY: a live segment of `owner`'s holding `p` (caller contract); only the
                // block's own map entry is read.
                let info = unsafe { Segment::map_entry_at(base, segment_size, p.addr()) }?;
                if let Some(bin) = small_bin(info) {
                    let size = BIN_SIZE[bin];
                    return Some(size - run_offset(p, info) % size);
                }
                (info & PAGE_KIND_MASK == PAGE_LARGE).then(|| {
                    (info & LARGE_PAGES_MASK) as usize * ZEND_MM_PAGE_SIZE
                        - p.addr() % ZEND_MM_PAGE_SIZE
                })
            }
            Region::Huge(base) => {
                // SAFETY: a live huge block (caller contract); its size and start are fixed
                // while it is live.
                let block = unsafe { &*base.cast::<HugeBlock>() };
                let end = block.data().addr() + block.size();
                (p.addr() >= block.data().addr() && p.addr() < end).then(|| end - p.addr())
            }
            Region::Unowned => None,
        }
    }

    /// The second half of a resize from another thread: copies `p`, a live block of the heap
    /// `owner` that the calling thread does not use, into `new` (at most `limit` bytes, never past
    /// `p`'s block) and frees `p` onto its heap's remote list. A `p` the metadata names no block
    /// for is reported ("heap corrupted", naming `call`).
    ///
    /// # Safety
    /// As [`Heap::free_remote`] for `p`; `new` is a live block of at least `limit` bytes.
    pub unsafe fn move_from_remote(
        owner: Owner,
        p: *mut u8,
        new: *mut u8,
        limit: usize,
        call: &Call,
    ) {
        let region = region_map::find_owned(p.addr(), owner);
        // SAFETY: a live block of `owner`'s (caller contract), in `region`.
        let (segment_size, tracks) = unsafe { shared_of(owner) }.thread_word();
        // Nothing is read past the block, nor written, before the metadata says one starts there.
        // SAFETY: as above.
        let start = unsafe { remote_block_start(region, segment_size, tracks, p) };
        if let Err(what) = start {
            diagnostics::bad_pointer(call, p, what);
        }
        // SAFETY: as above.
        let Some(usable) = (unsafe { Heap::remote_usable_size(owner, p) }) else {
            diagnostics::bad_pointer(call, p, BadPointer::NotABlock);
        };
        // SAFETY: distinct live blocks (of different heaps), each at least this long (caller
        // contract, `usable`).
        unsafe { ptr::copy_nonoverlapping(p, new, usable.min(limit)) };
        // SAFETY: the caller gives `p` up; `region` is the region map's for it.
        unsafe { Heap::free_remote_in(owner, region, p, call) };
    }

    /// Frees the blocks other threads freed since the last call; whether there were any (heap
    /// numbers read after this are up to date).
    pub fn collect_remote_frees(&mut self) -> bool {
        let mut any = false;
        for bin in 0..REMOTE_BINS {
            any |= self.collect_remote_bin(bin);
        }
        self.collect_remote_list() || any
    }

    /// Takes `bin`'s remote list onto the bin's free list; whether it held any block. With the
    /// fast paths on, the list is spliced in whole (walked only to find its end when the bin's
    /// own list is not empty); otherwise each block is freed as a local free would be (tracked,
    /// counted in the statistics).
    pub(super) fn collect_remote_bin(&mut self, bin: usize) -> bool {
        let Some(word) = self.shared().bins.get(bin) else {
            return false; // a bin without a list of its own
        };
        if word.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let head = word.swap(0, Ordering::Acquire);
        let first: *mut FreeSlot = ptr::with_exposed_provenance_mut(head & ADDRESS_MASK);
        if !self.takes_fast_paths() {
            // SAFETY: the list's blocks are blocks of this heap given up by their callers, each
            // holding the next in its first word.
            unsafe { self.free_remote_chain(first.cast()) };
            return true;
        }
        let count = head >> COUNT_SHIFT;
        let own = self.free_slot_head(bin);
        if !own.is_null() {
            // The walk goes as far as the count says: a list that a block freed twice made into a
            // loop is reported, not followed forever.
            let mut last = first;
            let mut seen = 1;
            // SAFETY: as above; the list ends with null after `count` blocks unless corrupted,
            // and a link is followed only while both say there is a next block.
            unsafe {
                while seen < count && !FreeSlot::next_of(last).is_null() {
                    last = FreeSlot::next_of(last);
                    seen += 1;
                }
                if seen != count || !FreeSlot::next_of(last).is_null() {
                    remote_list_corrupted(bin, count);
                }
                (*last).next = FreeSlot::link_for(own, self.bin_size(bin));
            }
        }
        // SAFETY: the blocks start free slots of `bin` (checked by the threads that freed them),
        // linked as a free list ends with the bin's own list.
        unsafe { self.set_free_slot_head(bin, first) };
        self.count_free(count * self.bin_size(bin));
        true
    }

    /// Frees the blocks of the general remote list; whether there were any.
    pub(super) fn collect_remote_list(&mut self) -> bool {
        let list = &self.shared().remote;
        if list.load(Ordering::Relaxed).is_null() {
            return false;
        }
        let p = list.swap(ptr::null_mut(), Ordering::Acquire);
        // SAFETY: the list's blocks were given up by their callers, each holding the next.
        unsafe { self.free_remote_chain(p) };
        true
    }

    /// Frees every block of a remote list starting at `p` as a local free would.
    ///
    /// # Safety
    /// `p` is null or a block taken off a remote list of this heap, holding the next in its first
    /// word, and so on.
    unsafe fn free_remote_chain(&mut self, mut p: *mut u8) {
        // (Tracking changes only while no block is live, so no block waits here from before.)
        let tracks = self.is_tracking();
        while !p.is_null() {
            // SAFETY: blocks on the remote list hold the next one in their link word (an 8-byte
            // slot's tagged, as on the bins' lists).
            let next = unsafe { FreeSlot::next_of(remote_link(p, tracks).cast()) }.cast::<u8>();
            if self.is_tracking() {
                // SAFETY: a tracked block of this heap, off the remote list.
                unsafe { super::track::settle_remote_free(p) };
                self.free_tracked(p, Site::new(ptr::null(), 0));
            } else {
                let block = self.locate(p, &Call::REMOTE);
                if let Block::Small { bin, .. } = block {
                    // Marked by the thread that freed it; freed here as a local free, which
                    // marks it again (and would take the mark for a double free).
                    // SAFETY: a located small block of this heap: its slot is ours.
                    unsafe { mark_of(p, self.bin_size(bin)).write(0) };
                }
                // SAFETY: `locate` vouches for the block.
                unsafe { self.free_block(p, block, &Call::REMOTE) };
            }
            p = next;
        }
    }

    /// Forgets the blocks on the remote list: every block of the heap is being released at once.
    pub(super) fn discard_remote_frees(&mut self) {
        let shared = self.shared();
        shared.remote.store(ptr::null_mut(), Ordering::Relaxed);
        for word in &shared.bins {
            word.store(0, Ordering::Relaxed);
        }
    }

    /// Puts `heap`, which no thread uses any more, on the abandoned list.
    ///
    /// # Safety
    /// `heap` must be live and used by no thread from now on.
    pub unsafe fn abandon(heap: *mut Heap) {
        // SAFETY: live heap (caller contract).
        let shared = unsafe { (*heap).shared() };
        let mut head = ABANDONED.load(Ordering::Relaxed);
        loop {
            shared.next_abandoned.store(head, Ordering::Relaxed);
            match ABANDONED.compare_exchange_weak(head, heap, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Takes every abandoned heap; the caller owns them (each linked to the next, see
    /// [`Heap::next_abandoned`]) and puts back the ones it keeps no use for.
    pub fn take_abandoned() -> *mut Heap {
        if ABANDONED.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        ABANDONED.swap(ptr::null_mut(), Ordering::Acquire)
    }

    /// The heap after this one in a list from [`Heap::take_abandoned`].
    pub fn next_abandoned(&self) -> *mut Heap {
        self.shared().next_abandoned.load(Ordering::Relaxed)
    }

    /// Collects what other threads freed into this abandoned heap; whether it now has no live
    /// block (then nothing can reach it any more and it may be released).
    pub fn settle_abandoned(&mut self) -> bool {
        self.collect_remote_frees();
        self.used() == 0
    }
}

/// A bin's remote list was found longer or shorter than the blocks pushed onto it.
#[cold]
#[inline(never)]
fn remote_list_corrupted(bin: usize, count: usize) -> ! {
    diagnostics::heap_corrupted(format_args!(
        "the list of {count} blocks of {} bytes that other threads freed does not end after them \
         (a block was freed twice, or written after it was freed)",
        BIN_SIZE[bin]
    ))
}

/// What `p`, freed or resized from a thread that does not use its heap, is by the owner's metadata,
/// read before anything is written through `p`: the bin of the small run whose slot its block
/// starts (`None` for the start of a large run or of a huge block's data), or why it is no block
/// the owner handed out (an interior pointer, pages that are free, a huge block's tail). The
/// block starts at `p`, or at its tracking header in front of `p` for a heap that `tracks` its
/// blocks, whose magic must then say live.
///
/// # Safety
/// As [`Heap::free_remote_in`]: `region` is what the region map holds for `p` (a region of the
/// owner, of `segment_size`-byte segments); for a live block, its segment, its page's map entry
/// and its huge header do not change while this runs.
unsafe fn remote_block_start(
    region: Region,
    segment_size: usize,
    tracks: bool,
    p: *mut u8,
) -> Result<Option<usize>, BadPointer> {
    let start = if tracks {
        super::track::block_start_of(p)
    } else {
        p
    };
    let small = match region {
        Region::Segment(base) => {
            // SAFETY: a live segment of the owner's (caller contract); only the map is read.
            let info = unsafe { Segment::map_entry_at(base, segment_size, start.addr()) }
                .ok_or(BadPointer::NotABlock)?;
            if let Some(bin) = small_bin(info) {
                if !starts_slot(start, info) {
                    return Err(BadPointer::NotABlock);
                }
                Some(bin)
            } else {
                match info & PAGE_KIND_MASK {
                    PAGE_LARGE if start.addr() % ZEND_MM_PAGE_SIZE == 0 => None,
                    PAGE_CACHED if start.addr() % ZEND_MM_PAGE_SIZE == 0 => {
                        return Err(BadPointer::FreedPages);
                    }
                    // The pages after a large run's first have free entries too.
                    // SAFETY: `start` lies in the segment's pages (it has an entry).
                    PAGE_FREE if !unsafe { Segment::page_used_at(base, start.addr()) } => {
                        return Err(BadPointer::FreedPages);
                    }
                    _ => return Err(BadPointer::NotABlock),
                }
            }
        }
        Region::Huge(base) => {
            let block = base.cast::<HugeBlock>();
            // SAFETY: the header of a huge block of the owner's (caller contract).
            let (data, cached_data) = unsafe { ((*block).data(), (*block).cached_data()) };
            if data != start {
                // A freed huge block the owner keeps for reuse has no data, only where it was.
                return Err(if data.is_null() && cached_data == start {
                    BadPointer::FreedHuge
                } else {
                    BadPointer::NotABlock
                });
            }
            None
        }
        Region::Unowned => return Err(BadPointer::NoHeapsMemory),
    };
    // SAFETY: `start` begins a block of the owner's (checked above), whose header this is.
    if tracks && !unsafe { super::track::header_says_live(p) } {
        return Err(BadPointer::FreedAlready);
    }
    // A bin remote list's head word packs the address with a count.
    Ok(small.filter(|_| p.addr() <= ADDRESS_MASK))
}

/// Pushes `p`, a slot of `bytes` bytes, onto the bin remote list `word`; false if the list is full.
/// A block that is already the head of the list is being freed twice and is reported as handed to
/// `call`. An 8-byte slot's link carries its free mark, as on its owner's list, so the owner's own
/// free of it meanwhile is caught.
fn push_on_bin(word: &AtomicUsize, p: *mut u8, bytes: usize, call: &Call) -> bool {
    let addr = p.expose_provenance();
    let mut head = word.load(Ordering::Relaxed);
    loop {
        if head & ADDRESS_MASK == addr {
            diagnostics::bad_pointer(call, p, BadPointer::DoubleRemoteFree);
        }
        let count = head >> COUNT_SHIFT;
        if count == MAX_BIN_COUNT {
            return false;
        }
        let next: *mut FreeSlot = ptr::with_exposed_provenance_mut(head & ADDRESS_MASK);
        // SAFETY: the block is live and given up by the caller: its first word is ours.
        unsafe {
            p.cast::<*mut FreeSlot>()
                .write(FreeSlot::link_for(next, bytes))
        };
        let new = addr | (count + 1) << COUNT_SHIFT;
        match word.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => head = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{same_blocks, test_heap};
    use super::*;
    use crate::sizes::BINS;

    /// A heap as a thread's own heap is made: one whose blocks other threads may free.
    fn thread_heap() -> *mut Heap {
        let heap = test_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        unsafe { (*heap).set_thread_heap() };
        heap
    }

    /// Sends raw pointers to another thread (the test hands the blocks over, as a C program would).
    struct Blocks(std::vec::Vec<usize>);

    /// Starts a thread that frees `blocks` of the heap `owner`, in order.
    fn spawn_freeing(owner: Owner, blocks: &[*mut u8]) -> std::thread::JoinHandle<()> {
        let handed = Blocks(blocks.iter().map(|p| p.expose_provenance()).collect());
        std::thread::spawn(move || {
            let handed = handed;
            for &addr in &handed.0 {
                // SAFETY: live blocks of `owner`, given up here and used by no one after.
                unsafe {
                    Heap::free_remote(
                        owner,
                        ptr::with_exposed_provenance_mut(addr),
                        &Call::INTERNAL,
                    )
                };
            }
        })
    }

    /// Frees `blocks` of the heap `owner` on a thread of their own, in order.
    fn free_elsewhere(owner: Owner, blocks: &[*mut u8]) {
        spawn_freeing(owner, blocks).join().unwrap();
    }

    #[test]
    fn a_tracked_block_of_a_few_bytes_freed_from_another_thread_keeps_its_end_guard() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        h.set_tracking(true).unwrap();
        let base = h.used();
        let site = Site::new(c"remote.rs".as_ptr(), 1);
        // Blocks shorter than a pointer have their end guard inside the first word: a link written
        // there would read as an overflow when the owner frees them, and the block would stay.
        let blocks: std::vec::Vec<*mut u8> = (1..=9)
            .chain([100, 5000])
            .map(|size| h.alloc_tracked(size, site).unwrap())
            .collect();
        free_elsewhere(h.id(), &blocks);
        assert!(h.collect_remote_frees());
        assert_eq!(h.used(), base, "every block freed, none reported and kept");
        h.set_tracking(false).unwrap();
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_block_another_thread_freed_is_no_leak_at_request_end() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        h().set_tracking(true).unwrap();
        let site = Site::new(c"remote.rs".as_ptr(), 2);
        let blocks = [h().alloc_tracked(40, site).unwrap()];
        free_elsewhere(h().id(), &blocks);
        // The owner has not looked at its remote lists: the report must.
        // SAFETY: a live heap of this thread, not borrowed.
        let leaks = unsafe { super::super::report_leaks(heap, &mut |_| {}) };
        assert_eq!(leaks, 0);
        h().set_tracking(false).unwrap();
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_bin_that_runs_dry_takes_the_blocks_other_threads_freed_of_it() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        let base = h.used();
        // Two whole runs of the 64-byte bin: its free list is empty afterwards.
        let per_run = BINS[7].count as usize;
        let blocks: std::vec::Vec<*mut u8> =
            (0..2 * per_run).map(|_| h.alloc(64).unwrap()).collect();
        assert!(h.free_slot_head(7).is_null());
        let real = h.real_size;
        free_elsewhere(h.id(), &blocks);
        assert_eq!(
            h.used(),
            base + 2 * per_run * 64,
            "nothing counted before the owner looks"
        );
        // The bin's slow path takes its remote list whole: the last block freed comes first, then
        // every other one, and no new run is made.
        let again: std::vec::Vec<*mut u8> =
            (0..2 * per_run).map(|_| h.alloc(64).unwrap()).collect();
        assert_eq!(again[0], blocks[2 * per_run - 1]);
        assert!(
            same_blocks(&again, &blocks),
            "each freed block comes back once"
        );
        assert_eq!(h.real_size, real);
        assert_eq!(h.used(), base + 2 * per_run * 64);
        for p in again {
            h.free(p);
        }
        assert_eq!(h.used(), base);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn eight_byte_blocks_freed_here_and_elsewhere_share_one_list() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        let base = h.used();
        let per_run = BINS[0].count as usize;
        let blocks: std::vec::Vec<*mut u8> = (0..per_run).map(|_| h.alloc(8).unwrap()).collect();
        // Every other block freed here, the rest by another thread (onto the bin's remote list),
        // then the remote list spliced onto the local one: every link decoded on the way.
        let (here, elsewhere): (std::vec::Vec<_>, std::vec::Vec<_>) =
            blocks.iter().enumerate().partition(|&(i, _)| i % 2 == 0);
        let here: std::vec::Vec<*mut u8> = here.into_iter().map(|(_, &p)| p).collect();
        let elsewhere: std::vec::Vec<*mut u8> = elsewhere.into_iter().map(|(_, &p)| p).collect();
        for &p in &here {
            h.free(p);
        }
        free_elsewhere(h.id(), &elsewhere);
        assert!(h.collect_remote_frees());
        assert_eq!(h.used(), base);
        assert_eq!(h.check_all(&mut |args| eprint!("{args}")), 0);
        for &p in &blocks {
            assert!(h.on_free_list(0, p));
        }
        let again: std::vec::Vec<*mut u8> = (0..per_run).map(|_| h.alloc(8).unwrap()).collect();
        assert!(
            same_blocks(&again, &blocks),
            "each freed block comes back once"
        );
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn blocks_freed_by_several_threads_while_their_owner_collects_all_come_back_once() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        let base = h.used();
        let n = if cfg!(miri) { 90 } else { 9000 };
        // Small blocks of several bins (their lists), a bin without a list and large blocks (the
        // general list).
        let size = |i: usize| [16, 56, 200, 1500, 2500, 5000][i % 6];
        let blocks: std::vec::Vec<*mut u8> = (0..n).map(|i| h.alloc(size(i)).unwrap()).collect();
        let owner = h.id();
        let threads: std::vec::Vec<_> = blocks
            .chunks(n / 3)
            .map(|part| spawn_freeing(owner, part))
            .collect();
        // The owner takes what is there while the threads free (however they interleave).
        while !threads.iter().all(|t| t.is_finished()) {
            h.collect_remote_frees();
            std::thread::yield_now();
        }
        for t in threads {
            t.join().unwrap();
        }
        h.collect_remote_frees();
        assert_eq!(h.used(), base, "every block counted back");
        // Every list is well formed: allocating the same sizes again hands out each slot once.
        let mut again: std::vec::Vec<*mut u8> = (0..n).map(|i| h.alloc(size(i)).unwrap()).collect();
        again.sort();
        again.dedup();
        assert_eq!(again.len(), n);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_full_collection_joins_remote_lists_to_lists_that_are_not_empty() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        let base = h.used();
        let mine: std::vec::Vec<*mut u8> = (0..10).map(|_| h.alloc(64).unwrap()).collect();
        let theirs: std::vec::Vec<*mut u8> = (0..10).map(|_| h.alloc(64).unwrap()).collect();
        for &p in &mine {
            h.free(p);
        }
        free_elsewhere(h.id(), &theirs);
        assert!(!h.free_slot_head(7).is_null());
        assert!(h.collect_remote_frees());
        assert_eq!(h.used(), base);
        // Both sets are on the bin's list: the next 20 allocations return exactly them.
        let again: std::vec::Vec<*mut u8> = (0..20).map(|_| h.alloc(64).unwrap()).collect();
        let expected: std::vec::Vec<*mut u8> = mine.iter().chain(&theirs).copied().collect();
        assert!(same_blocks(&again, &expected));
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_full_bin_list_sends_further_blocks_to_the_general_list() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        let base = h.used();
        let n = if cfg!(miri) { 300 } else { MAX_BIN_COUNT + 50 };
        let blocks: std::vec::Vec<*mut u8> = (0..n).map(|_| h.alloc(16).unwrap()).collect();
        free_elsewhere(h.id(), &blocks);
        let counted = h.shared().bins[1].load(Ordering::Relaxed) >> COUNT_SHIFT;
        assert_eq!(counted, n.min(MAX_BIN_COUNT));
        assert_eq!(
            h.shared().remote.load(Ordering::Relaxed).is_null(),
            n <= MAX_BIN_COUNT,
            "the blocks past a full list go onto the general one"
        );
        assert!(h.collect_remote_frees());
        assert_eq!(h.used(), base);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_counting_heap_frees_blocks_from_its_bin_lists_one_by_one() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        h.set_counting(true).unwrap();
        let base = h.used();
        let blocks: std::vec::Vec<*mut u8> = (0..5).map(|_| h.alloc(40).unwrap()).collect();
        free_elsewhere(h.id(), &blocks);
        assert_eq!(h.shared().bins[4].load(Ordering::Relaxed) >> COUNT_SHIFT, 5);
        assert!(h.collect_remote_frees());
        assert_eq!(h.used(), base);
        let bin = h.stats().bins[4];
        assert_eq!(
            (bin.size, bin.frees, bin.live),
            (40, 5, 0),
            "each free counted"
        );
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn blocks_freed_on_another_thread_are_collected_by_their_heap() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone.
        let h = unsafe { &mut *heap };
        let base = h.used();
        let sizes = [8usize, 100, 3000, 5000, 40000, 3 << 20];
        let blocks: std::vec::Vec<*mut u8> = (0..24)
            .map(|i| h.alloc(sizes[i % sizes.len()]).unwrap())
            .collect();
        free_elsewhere(h.id(), &blocks);
        assert!(h.used() > base, "not collected before the owner looks");
        assert!(h.collect_remote_frees());
        assert_eq!(h.used(), base);
        assert!(!h.collect_remote_frees(), "the list is empty again");
        // The slots are the heap's again: the last small block freed comes back first.
        let again = h.alloc(8).unwrap();
        assert!(blocks.contains(&again));
        h.free(again);
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn an_abandoned_heap_is_taken_whole_and_settles_when_empty() {
        let heap = thread_heap();
        // SAFETY: a live heap of this thread, borrowed alone until it is abandoned.
        let p = unsafe { (*heap).alloc(100) }.unwrap();
        // SAFETY: no thread uses the heap from here on.
        unsafe { Heap::abandon(heap) };
        let mut found = false;
        let mut taken = Heap::take_abandoned();
        while !taken.is_null() {
            // SAFETY: taken from the abandoned list: live, and this thread's alone now.
            let next = unsafe { (*taken).next_abandoned() };
            if taken == heap {
                found = true;
                // SAFETY: as above.
                let h = unsafe { &mut *taken };
                assert!(!h.settle_abandoned(), "a live block keeps it");
                h.free(p);
                assert!(h.settle_abandoned());
                // SAFETY: empty and unreachable.
                unsafe { Heap::shutdown(taken, true) };
            } else {
                // Another test's heap: put it back.
                // SAFETY: taken from the list, used by no thread.
                unsafe { Heap::abandon(taken) };
            }
            taken = next;
        }
        assert!(found);
    }
}
