//! Page runs across segments (zend_alloc.c's `zend_mm_alloc_pages` and chunk management).
//!
//! Owns the heap's segments as a set: the class lists that find a segment with a long enough free
//! run, the cache of emptied segments, mapping new segments from storage and giving them back.
//!
//! Segments are filed by the length of their longest free run: one class per length below 16
//! pages (every bin run and the commonest large blocks are exact), then 4 per power of two up to
//! 512 pages, then one per power of two (runs that long exist only in larger segments).
//! `class_bits` has a bit set exactly for the non-empty class lists. A segment is on the list of
//! its class, or on none when it has no free page or is cached.

use core::ptr;

use super::{
    EXPECTATION_DECAY, Heap, IDLE_REQUESTS, NO_REQUEST_ENDS, PURGE_DELAY_MS, PURGE_PAGES_DELAY_MS,
    Refusal,
};
use crate::diagnostics;
use crate::list::List;
use crate::region_map::{self, Region};
use crate::segment::{
    LARGE_PAGES_MASK, NO_CLASS, PAGE_KIND_MASK, PAGE_LARGE, PAGE_SMALL, Segment, small_bin,
    small_place,
};
use crate::sizes::{BINS, MAX_SEGMENT_SIZE, ZEND_MM_PAGE_SIZE};

/// Segment classes by longest free run.
pub(super) const NUM_CLASSES: usize = class_of((MAX_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE) as u32) + 1;
// A segment keeps its class in 16 bits, `u16::MAX` meaning none.
const _: () = assert!(NUM_CLASSES < u16::MAX as usize);
pub(super) const CLASS_WORDS: usize = NUM_CLASSES.div_ceil(64);

/// The class list for a segment whose longest free run is `len` (>= 1) pages: one class per length
/// below 16, four per power of two up to a default segment's 512 pages, then one per power of two
/// (only segments larger than the default have such runs; fewer classes keep the heap's lists
/// inside the main segment's first page).
const fn class_of(len: u32) -> usize {
    let log = 31 - len.leading_zeros();
    if len < 16 {
        len as usize
    } else if log < COARSE_LOG {
        16 + (log as usize - 4) * 4 + ((len >> (log - 2)) & 3) as usize
    } else {
        FIRST_COARSE_CLASS + (log - COARSE_LOG) as usize
    }
}

/// Runs of `1 << COARSE_LOG` pages and longer have one class per power of two.
const COARSE_LOG: u32 = 9;
const FIRST_COARSE_CLASS: usize = 16 + (COARSE_LOG as usize - 4) * 4;

/// The smallest longest-free-run a segment on class list `class` can have.
const fn class_floor(class: usize) -> u32 {
    if class < 16 {
        class as u32
    } else if class < FIRST_COARSE_CLASS {
        let log = (class - 16) / 4 + 4;
        ((4 + (class - 16) % 4) as u32) << (log - 2)
    } else {
        1 << (COARSE_LOG + (class - FIRST_COARSE_CLASS) as u32)
    }
}

const _: () = {
    assert!(class_of(15) == 15 && class_of(16) == 16 && class_floor(16) == 16);
    assert!(class_of(511) == 16 + 4 * 4 + 3 && class_floor(class_of(511)) == 448);
    assert!(class_floor(class_of(100)) <= 100 && class_floor(class_of(100) + 1) > 100);
    assert!(class_of(512) == class_of(511) + 1 && class_floor(class_of(512)) == 512);
    assert!(class_of(1023) == class_of(512) && class_floor(class_of(1024)) == 1024);
    // Every class's floor is in its class, and the next class starts above it.
    let mut c = 1;
    while c < NUM_CLASSES {
        assert!(class_of(class_floor(c)) == c && class_floor(c) > class_floor(c - 1));
        c += 1;
    }
};

/// Why [`Heap::alloc_pages`] found no run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NoPages {
    /// The limit or the storage said no.
    Refused(Refusal),
    /// A fresh segment has fewer pages than asked for (it was not page aligned).
    TooShort,
}

/// Without request ends (see [`NO_REQUEST_ENDS`]) a segment cached for longer than
/// [`PURGE_DELAY_MS`] goes back to storage (the most recent [`PURGE_KEEP`] stay), and never more
/// than [`PURGE_MAX_CACHED`] stay cached. (mimalloc purges after a delay too.)
const PURGE_KEEP: usize = 2;
const PURGE_MAX_CACHED: usize = 64;

/// Without request ends nothing frees the small runs whose slots are all free (PHP frees them at
/// request end and in `zend_mm_gc`), so a bin that once peaked keeps its runs while other blocks
/// take new segments. Before a new segment is taken, the heap frees such runs when its small runs
/// hold at least this many pages and its segments grew by a quarter (at least 2) since the last
/// time: the walk costs in proportion to the free slots, and growth pays for it.
pub(super) const COLLECT_RUNS_MIN_PAGES: usize = 256;
/// The segment count at which a heap first looks (see [`COLLECT_RUNS_MIN_PAGES`]).
pub(super) const COLLECT_RUNS_FIRST: u32 = 4;

/// A program that frees many small blocks and then allocates from what it freed takes no new
/// segment, so the growth trigger above never fires and those runs stay resident (100,000 freed
/// 4200-byte blocks kept 504 MB). So the allocation slow paths also look on a clock: every this
/// many slow paths they read it, and at most once per wait (from [`PURGE_DELAY_MS`]) they free
/// the runs whose slots are all free. Their pages then go back to the system as other free pages
/// do. A walk costs in proportion to the free slots: after one over more than
/// [`IDLE_RUNS_CHEAP_WALK`] slots that freed less than an eighth of the small runs the wait
/// doubles, up to [`IDLE_RUNS_MAX_WAIT`] times, so slots that cannot be freed (a live block in
/// every run) cost a walk every 6.4 s, not every 100 ms.
pub(super) const IDLE_RUNS_CHECK_EVERY: u16 = 16;
const IDLE_RUNS_MAX_WAIT: u16 = 64;
const IDLE_RUNS_CHEAP_WALK: usize = 4096;

/// How far [`Heap::file_by_age`] walks a class list to put a segment behind the older ones.
const AGE_ORDER_WALK: usize = 16;

/// When something idle for `idle` ms at `now` may go back to storage (see [`PURGE_DELAY_MS`]).
pub(super) fn purge_time(now: u64, idle: u32) -> u64 {
    (now + u64::from(PURGE_DELAY_MS) + 1).saturating_sub(u64::from(idle))
}

impl Heap {
    /// Takes a run of `pages` pages from some segment of this heap, mapping a new segment if no
    /// existing one has room (after collecting garbage once when the limit is in the way).
    pub(super) fn alloc_pages(&mut self, pages: usize) -> Result<(*mut Segment, usize), NoPages> {
        self.purge_idle_caches();
        let mut gc_done = false;
        loop {
            if let Some(seg) = self.segment_with_run(pages) {
                // SAFETY: class lists hold live segments of this heap.
                if let Some(page) = unsafe { (*seg).alloc_pages(pages) } {
                    // SAFETY: as above.
                    unsafe { self.reclassify(seg) };
                    return Ok((seg, page));
                }
            }
            if self.run_cache.pages() != 0 {
                // Cached runs may join free neighbours into a long enough run.
                self.flush_run_cache();
                continue;
            }
            if NO_REQUEST_ENDS
                && self.segments_count >= self.collect_runs_at as usize
                && self.small_run_pages >= COLLECT_RUNS_MIN_PAGES
            {
                self.collect_runs_at =
                    (self.segments_count + (self.segments_count / 4).max(2)) as u32;
                // Runs whose last slots wait on other bins' remote lists are free too.
                self.collect_remote_frees();
                if self.collect_free_runs() > 0 {
                    continue;
                }
            }
            let seg = if !self.cached.is_empty() {
                self.take_cached_segment()
            } else if self.within_limit(self.segment_size) {
                self.map_segment().map_err(NoPages::Refused)?
            } else if !gc_done {
                gc_done = true;
                self.gc();
                continue;
            } else {
                return Err(NoPages::Refused(Refusal::Limit));
            };
            // SAFETY: a live segment just linked into this heap.
            let s = unsafe { &mut *seg };
            let Some(page) = s.alloc_pages(pages) else {
                // The storage returned this segment further into a page than the first one: it
                // has a page fewer. Blocks that long become huge from now on, and the segment
                // goes back to the cache instead of staying linked for nothing.
                self.max_large_size = self
                    .max_large_size
                    .min(s.usable_pages() as usize * ZEND_MM_PAGE_SIZE);
                // SAFETY: as above.
                unsafe { self.segment_pages_freed(seg) };
                return Err(NoPages::TooShort);
            };
            // SAFETY: as above.
            unsafe { self.reclassify(seg) };
            return Ok((seg, page));
        }
    }

    /// A segment whose longest free run has at least `pages` pages: the oldest one, as PHP takes
    /// the first chunk, in creation order, with room. Each class list is ordered oldest first
    /// ([`Heap::file_by_age`]), so that is the oldest of the lists' heads that surely fit, or an
    /// older segment of the class shared with shorter runs. Not the tightest fit: a block that
    /// moved to grow sits at the front of the youngest segment, whose free tail is then often the tightest run, while the
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
        let sure = self.oldest_head_from(first_sure);
        if first_sure == class {
            return sure;
        }
        // The shared class may hold an older fit; look at a few of its segments (oldest first)
        // that are older than the sure one.
        // SAFETY: class lists hold live segments of this heap, and `sure` is one.
        let sure_num = sure.map_or(u64::MAX, |seg| unsafe { (*seg).num() });
        // SAFETY: as above.
        unsafe { self.class_lists[class].iter() }
            .take(8)
            // SAFETY: as above.
            .take_while(|&seg| unsafe { (*seg).num() } < sure_num)
            // SAFETY: as above.
            .find(|&seg| unsafe { (*seg).longest_free() } >= wanted)
            .or(sure)
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
                let head = self.class_lists[w * 64 + bits.trailing_zeros() as usize].head();
                bits &= bits - 1;
                // SAFETY: class lists hold live segments of this heap.
                let num = unsafe { (*head).num() };
                if num < best_num {
                    best = head;
                    best_num = num;
                }
            }
        }
        (!best.is_null()).then_some(best)
    }

    /// Puts `seg` on the class list matching its longest free run (none if it has no free page).
    ///
    /// # Safety
    /// `seg` must be a live segment of this heap that is not cached.
    pub(super) unsafe fn reclassify(&mut self, seg: *mut Segment) {
        // SAFETY: a live segment of this heap (caller contract).
        let (longest_free, current) = unsafe { ((*seg).longest_free(), (*seg).class()) };
        let class = if longest_free == 0 {
            NO_CLASS
        } else {
            class_of(longest_free) as u32
        };
        if class == current {
            return;
        }
        // SAFETY: as above.
        unsafe { self.unclassify(seg) };
        if class != NO_CLASS {
            let c = class as usize;
            // SAFETY: as above; it is on no class list now, and the list holds live segments.
            unsafe {
                (*seg).set_class(class);
                self.file_by_age(c, seg);
            }
            self.class_bits[c / 64] |= 1 << (c % 64);
        }
    }

    /// Puts `seg` on class list `class` behind the older segments there, so that a list's head is
    /// its oldest segment. The walk stops after [`AGE_ORDER_WALK`] segments (a list that long
    /// is ordered by age at its front only), so filing costs the same however many segments
    /// share a class.
    ///
    /// # Safety
    /// `seg` must be a live segment of this heap on no class list.
    unsafe fn file_by_age(&mut self, class: usize, seg: *mut Segment) {
        let list = &mut self.class_lists[class];
        // SAFETY: class lists hold live segments of this heap; `seg` is live (caller contract).
        unsafe {
            let num = (*seg).num();
            let mut older: *mut Segment = ptr::null_mut();
            for s in list.iter().take(AGE_ORDER_WALK) {
                if (*s).num() > num {
                    break;
                }
                older = s;
            }
            if older.is_null() {
                list.push_front(seg);
            } else {
                list.insert_after(older, seg);
            }
        }
    }

    /// Takes `seg` off its class list, if it is on one.
    ///
    /// # Safety
    /// `seg` must be a live segment of this heap.
    unsafe fn unclassify(&mut self, seg: *mut Segment) {
        // SAFETY: a live segment of this heap (caller contract).
        let c = unsafe { (*seg).class() };
        if c == NO_CLASS {
            return;
        }
        let list = &mut self.class_lists[c as usize];
        // SAFETY: `seg` is on this list, whose members are live segments of this heap.
        unsafe {
            list.remove(seg);
            (*seg).set_class(NO_CLASS);
        }
        if list.is_empty() {
            self.class_bits[c as usize / 64] &= !(1 << (c % 64));
        }
    }

    /// Adds a segment to the live list and its class list, and counts it.
    ///
    /// # Safety
    /// `seg` must be a live non-main segment of this heap on no list.
    unsafe fn link_segment(&mut self, seg: *mut Segment) {
        // SAFETY: caller contract; the list holds live segments.
        unsafe {
            // It serves the request under way (the one after those ended).
            (*seg).set_last_used(self.requests + 1);
            self.segments.push_front(seg);
            self.reclassify(seg);
        }
        self.segments_count += 1;
        self.peak_segments_count = self.peak_segments_count.max(self.segments_count);
    }

    /// Takes a segment off the live list and its class list, and uncounts it.
    ///
    /// # Safety
    /// `seg` must be a live non-main segment of this heap on the live list.
    unsafe fn unlink_segment(&mut self, seg: *mut Segment) {
        // SAFETY: caller contract.
        unsafe {
            self.unclassify(seg);
            self.segments.remove(seg);
        }
        self.segments_count -= 1;
    }

    /// Brings the most recently cached segment back to the live list; the cache must not be empty.
    fn take_cached_segment(&mut self) -> *mut Segment {
        // SAFETY: cached segments are live segments of this heap, on no other list.
        unsafe {
            let seg = self.cached.pop_front();
            self.link_segment(seg);
            seg
        }
    }

    /// Maps a new segment from storage (PHP's chunk allocation).
    fn map_segment(&mut self) -> Result<*mut Segment, Refusal> {
        let size = self.segment_size;
        let base = self.map_region(size, Region::Segment)?;
        // SAFETY: `base` holds `size` fresh bytes of a new allocation nothing uses yet.
        let recycled = unsafe { self.recycle_cached_huge(base, size) };
        self.count_storage_in_place_of(recycled, size);
        let num = self.next_num;
        self.next_num += 1;
        // SAFETY: `base` holds `size` fresh bytes from our storage.
        let seg = unsafe { Segment::init(base, size, self.id(), 0, num) };
        // SAFETY: a fresh segment of this heap, on no list.
        unsafe {
            if recycled > 0 {
                // Resident pages came in: the purge hands back those blocks do not take.
                (*seg).mark_free_pages_unpurged();
                self.note_unpurged(seg);
            }
            self.link_segment(seg);
        }
        self.remember_fast(seg);
        Ok(seg)
    }

    /// A new region of `size` bytes from storage, registered in the region map as `kind` (before
    /// anything in it is handed out); the caller counts it in the real usage.
    pub(super) fn map_region(
        &mut self,
        size: usize,
        kind: fn(*mut u8) -> Region,
    ) -> Result<*mut u8, Refusal> {
        let base = self.storage_alloc(size)?;
        if !region_map::register(base.addr(), base.addr() + size, kind(base), self.id()) {
            // SAFETY: never handed out.
            unsafe { self.storage.free(base) };
            return Err(Refusal::OutOfMemory);
        }
        Ok(base)
    }

    /// `size` bytes from storage, retrying once after `gc` gave memory back.
    fn storage_alloc(&mut self, size: usize) -> Result<*mut u8, Refusal> {
        let mut p = self.storage.alloc(size);
        if p.is_null() && self.gc() > 0 {
            p = self.storage.alloc(size);
        }
        if p.is_null() {
            Err(Refusal::OutOfMemory)
        } else {
            Ok(p)
        }
    }

    /// Called when pages of a segment were freed: an emptied segment other than the main one goes
    /// to the cache, any other is refiled under its new class.
    ///
    /// An emptied segment is cached rather than unmapped: segments go back to storage at request
    /// end (beyond what recent requests needed), in `zend_mm_gc`, and when the limit or the
    /// storage asks for memory, so a request whose usage swings reuses its segments instead of
    /// unmapping them and faulting the same memory in again. (PHP's `zend_mm_delete_chunk` keeps
    /// about the average of recent requests and unmaps the rest at once.)
    ///
    /// # Safety
    /// `seg` must be a live segment of this heap that is not cached.
    pub(super) unsafe fn segment_pages_freed(&mut self, seg: *mut Segment) {
        // SAFETY: caller contract.
        unsafe { self.note_unpurged(seg) };
        // SAFETY: caller contract.
        unsafe {
            if seg != self.main && (*seg).is_empty() {
                self.unlink_segment(seg);
                if NO_REQUEST_ENDS {
                    // No request end will trim the cache: it is trimmed by age here.
                    let now = crate::os::monotonic_ms();
                    (*seg).set_last_used(now);
                    self.cached.push_front(seg);
                    // The segment this push moved past the most recent ones may go from now on.
                    if let Some(older) = self.cached.iter().nth(PURGE_KEEP) {
                        self.purge_due(purge_time(now, (*older).idle_for(now)));
                    }
                    self.purge_idle_caches_at(now);
                } else {
                    self.cached.push_front(seg);
                }
            } else {
                self.reclassify(seg);
            }
        }
    }

    /// Without request ends: pages of `seg` were freed; they go back to the system once free for
    /// [`PURGE_PAGES_DELAY_MS`] (see [`Heap::purge_free_pages`]).
    ///
    /// # Safety
    /// `seg` must be a live segment of this heap.
    pub(super) unsafe fn note_unpurged(&mut self, seg: *mut Segment) {
        if NO_REQUEST_ENDS {
            let now = crate::os::monotonic_ms();
            // SAFETY: caller contract.
            if unsafe { (*seg).note_unpurged(now) } {
                self.purge_due(now + u64::from(PURGE_PAGES_DELAY_MS));
            }
        }
    }

    /// Without request ends: a purge pass over every segment with free pages that may be resident
    /// (see [`Segment::purge_free_pages`]): pages free for [`PURGE_PAGES_DELAY_MS`] go back to the
    /// system (the storage's `discard`), and the next passes are scheduled. A long-running
    /// program's segments otherwise keep every page they ever held resident: a program that freed
    /// 7 in 8 of 400 blocks of 100 KB kept all 39 MiB resident, as glibc, jemalloc, mimalloc and
    /// tcmalloc do; with this, 300 ms later (at its next allocation), 5.1-5.3 MiB (live: 4.9).
    fn purge_free_pages(&mut self, now: u64) {
        let mut due = u64::MAX;
        self.each_segment_with_discard(|seg, discard| {
            if let Some(at) = seg.purge_free_pages(now, PURGE_PAGES_DELAY_MS, discard) {
                due = due.min(at);
            }
        });
        self.purge_due(due);
    }

    /// Hands every free page that may be resident back to the system at once (`zend_mm_gc`,
    /// `malloc_trim`); the bytes handed back (some may have been handed back before).
    pub(super) fn purge_all_free_pages(&mut self) -> usize {
        let mut bytes = 0;
        self.each_segment_with_discard(|seg, discard| {
            seg.purge_all_free_pages(|start, end| {
                bytes += end - start;
                discard(start, end);
            });
        });
        bytes
    }

    /// Calls `f` with every segment of this heap (live and cached) and the storage's `discard`
    /// for byte ranges of that segment (offsets from its start) whose pages nobody needs.
    fn each_segment_with_discard(
        &mut self,
        mut f: impl FnMut(&mut Segment, &mut dyn FnMut(usize, usize)),
    ) {
        let storage = self.storage;
        let mut visit = |seg: *mut Segment| {
            // SAFETY: a live segment of this heap (the callers below pass only those), whose
            // allocation starts at `base`; `f` discards only its free pages, which nobody needs.
            unsafe {
                let base = (*seg).allocation().base();
                f(&mut *seg, &mut |start, end| {
                    storage.discard(base, start, end)
                });
            }
        };
        visit(self.main);
        // SAFETY: the lists hold live segments of this heap; none is unlinked during the walk.
        unsafe {
            for seg in self.segments.iter() {
                visit(seg);
            }
            for seg in self.cached.iter() {
                visit(seg);
            }
        }
    }

    /// Without request ends: gives back the cached segments and huge blocks idle for longer than
    /// [`PURGE_DELAY_MS`], and the free pages of segments (see [`Heap::purge_free_pages`]). Reads
    /// the clock only while something is cached that may go or a purge is scheduled, so a heap
    /// with nothing waiting pays three compares per slow path. First the idle-run collection's
    /// turn (see [`IDLE_RUNS_CHECK_EVERY`]): the pages it frees join the purge.
    pub(super) fn purge_idle_caches(&mut self) {
        self.collect_idle_runs();
        if NO_REQUEST_ENDS
            && (self.cached.len() > PURGE_KEEP
                || !self.huge_cached.is_empty()
                || self.purge_at != u64::MAX)
        {
            self.purge_idle_caches_at(crate::os::monotonic_ms());
        }
    }

    /// Without request ends, on an allocation slow path: frees the small runs whose slots are all
    /// free when the clock says so (see [`IDLE_RUNS_CHECK_EVERY`]). A decrement and a compare on
    /// most calls.
    #[inline]
    pub(super) fn collect_idle_runs(&mut self) {
        if !NO_REQUEST_ENDS || self.small_run_pages < COLLECT_RUNS_MIN_PAGES {
            return;
        }
        self.idle_runs_countdown -= 1;
        if self.idle_runs_countdown == 0 {
            self.idle_runs_countdown = IDLE_RUNS_CHECK_EVERY;
            self.collect_idle_runs_at(crate::os::monotonic_ms());
        }
    }

    #[cold]
    fn collect_idle_runs_at(&mut self, now: u64) {
        // Compared on 32 bits, wrapping (49 days), as segments keep their stamps.
        let now = now as u32;
        if (now.wrapping_sub(self.idle_runs_at) as i32) < 0 {
            return;
        }
        let before = self.small_run_pages;
        let (_, walked) = self.collect_free_runs_counted();
        let freed = before - self.small_run_pages;
        self.idle_runs_wait = if walked <= IDLE_RUNS_CHEAP_WALK || freed * 8 >= before {
            1
        } else {
            (self.idle_runs_wait * 2).min(IDLE_RUNS_MAX_WAIT)
        };
        self.idle_runs_at = now.wrapping_add(u32::from(self.idle_runs_wait) * PURGE_DELAY_MS);
    }

    /// [`Heap::purge_idle_caches`] at `now`: walks the caches only once something in them is
    /// due (`purge_at`) or the segment cache is over its bound, so a heap whose segments empty and
    /// refill often does not walk them at every slow path.
    pub(super) fn purge_idle_caches_at(&mut self, now: u64) {
        if now >= self.purge_at || self.cached.len() > PURGE_MAX_CACHED {
            self.purge_at = u64::MAX;
            self.purge_cached_segments(now);
            self.purge_cached_huge(now);
            self.purge_free_pages(now);
        }
    }

    /// Something cached may go back to storage from `at` (milliseconds of `os::monotonic_ms`).
    pub(super) fn purge_due(&mut self, at: u64) {
        self.purge_at = self.purge_at.min(at);
    }

    /// Without request ends: gives back the cached segments older than [`PURGE_DELAY_MS`] (keeping
    /// the [`PURGE_KEEP`] most recent) and those beyond [`PURGE_MAX_CACHED`]; `now` in the
    /// milliseconds of `os::monotonic_ms`, as the cache stamps.
    fn purge_cached_segments(&mut self, now: u64) {
        let mut kept = 0;
        // SAFETY: cached segments are live segments of this heap, each released after the iterator
        // passed it.
        for seg in unsafe { self.cached.iter() } {
            // SAFETY: as above.
            let old = unsafe { (*seg).idle_for(now) } > PURGE_DELAY_MS;
            if kept < PURGE_KEEP || (!old && kept < PURGE_MAX_CACHED) {
                if kept >= PURGE_KEEP {
                    // SAFETY: as above.
                    self.purge_due(purge_time(now, unsafe { (*seg).idle_for(now) }));
                }
                kept += 1;
                continue;
            }
            // SAFETY: as above; off the cache, it is on no list.
            unsafe {
                self.cached.remove(seg);
                self.release_segment(seg);
            }
            self.real_size -= self.segment_size;
        }
    }

    /// Bytes held by cached segments.
    pub(super) fn cached_segment_bytes(&self) -> usize {
        self.cached.len() * self.segment_size
    }

    /// Returns every cached segment to storage; the bytes given back.
    pub(super) fn release_cached_segments(&mut self) -> usize {
        let released = self.cached_segment_bytes();
        while !self.cached.is_empty() {
            self.drop_one_cached_segment();
        }
        released
    }

    /// Before a huge block of `bytes` fresh bytes is mapped: returns that many bytes of cached
    /// segments to storage, the most recently emptied first (their pages are resident; a segment
    /// cached long ago may never have been filled). The block's pages are faulted in whatever the
    /// heap keeps; without this a request's resident memory grows by both the block and the
    /// segments kept for requests like the earlier ones (PHP unmaps emptied chunks beyond its
    /// average at once). On `hugereq`: peak RSS 34.7 MiB instead of 40.2 (PHP 33.9), the time
    /// unchanged, 2% more page faults (stalest first: 37.8 MiB). Not before the heap's first
    /// request end: in a long first request (a script) the cache holds only what the request
    /// itself emptied and refills (giving it back cost 4.5% on `phpmix`). Without request ends
    /// the cache is trimmed by age instead. On a storage that moves pages the segments stay for the
    /// block to take their pages ([`Heap::recycle_cached_segments`]).
    pub(super) fn shed_cached_segments(&mut self, bytes: usize) {
        if NO_REQUEST_ENDS || self.requests == 0 || self.storage.moves_pages() {
            return;
        }
        for _ in 0..(bytes / self.segment_size).min(self.cached.len()) {
            self.drop_one_cached_segment();
        }
    }

    /// Returns the cached segment that has served no request for the longest to storage; false
    /// if none is cached.
    fn release_stalest_cached_segment(&mut self) -> bool {
        let now = self.requests + 1;
        // SAFETY: cached segments are live segments of this heap.
        let stalest = unsafe { self.cached.iter() }
            // SAFETY: as above.
            .max_by_key(|&seg| unsafe { (*seg).idle_for(now) });
        let Some(stalest) = stalest else {
            return false;
        };
        // SAFETY: as above; off the cache, it is on no list.
        unsafe {
            self.cached.remove(stalest);
            self.release_segment(stalest);
        }
        self.real_size -= self.segment_size;
        true
    }

    /// With a storage that moves pages: moves the pages of cached segments, the most recently
    /// emptied first (the likeliest to be resident), onto the whole segments' worth of `len` fresh
    /// bytes at `to` (a huge block's new pages), and forgets those segments; the bytes moved, for
    /// the caller to count out of the real usage. The block then takes
    /// memory the heap holds resident anyway instead of faulting in fresh pages beside it (see
    /// [`Heap::recycling_size`]): without request ends nothing else gives cached segments back
    /// before their delay, and with them a request that maps a huge block would otherwise unmap
    /// cached segments and fault the block's pages in.
    ///
    /// # Safety
    /// `to..to + len` must lie in a live allocation of this heap's storage whose bytes there
    /// nobody needs, page aligned.
    pub(super) unsafe fn recycle_cached_segments(&mut self, to: *mut u8, len: usize) -> usize {
        if !self.storage.moves_pages() {
            return 0;
        }
        let size = self.segment_size;
        let mut offset = 0;
        while offset + size <= len && !self.cached.is_empty() {
            // SAFETY: cached segments are live segments of this heap, on no other list; the one
            // taken off goes back if it stays. A segment's allocation is whole (`size` bytes
            // from `base`), and `to + offset` starts `size` bytes of the caller's range.
            let seg = unsafe { self.cached.pop_front() };
            // SAFETY: as above.
            unsafe {
                let base = (*seg).allocation().base();
                region_map::unregister(base.addr(), base.addr() + size);
                if !self.storage.move_pages(base, size, to.add(offset), true) {
                    self.reregister(base, size, Region::Segment(base));
                    self.cached.push_front(seg);
                    break;
                }
            }
            self.forget_fast(seg);
            offset += size;
        }
        offset
    }

    /// Registers a region of this heap that was registered a moment ago (over the same range or
    /// a wider one) again: its leaves in the region map exist, so this cannot fail; if it did, the
    /// map would have lost memory.
    pub(super) fn reregister(&self, base: *mut u8, size: usize, region: Region) {
        if !region_map::register(base.addr(), base.addr() + size, region, self.id()) {
            diagnostics::heap_corrupted(format_args!(
                "the region at {:p} could not be registered again after a split, a join or a move",
                base
            ));
        }
    }

    /// Returns the most recently cached segment to storage.
    pub(super) fn drop_one_cached_segment(&mut self) {
        // SAFETY: cached segments are live segments of this heap.
        let seg = unsafe { self.cached.pop_front() };
        if seg.is_null() {
            return;
        }
        self.real_size -= self.segment_size;
        // SAFETY: a live segment of this heap, now on no list.
        unsafe { self.release_segment(seg) };
    }

    /// Returns a segment to storage (its accounting is the caller's business).
    ///
    /// # Safety
    /// `seg` must be a live segment of this heap that no list references any more.
    unsafe fn release_segment(&mut self, seg: *mut Segment) {
        self.forget_fast(seg);
        // SAFETY: caller contract: nothing refers to the segment after this.
        unsafe {
            let alloc = (*seg).allocation();
            let base = alloc.base();
            region_map::unregister(base.addr(), alloc.end());
            self.storage.free(base);
        }
    }

    /// Request end: every segment but the main one goes to the cache (its blocks forgotten, so a
    /// stale pointer into it is caught). Then the cache gives back
    /// what the next requests are not expected to need:
    /// - every segment that served no request for [`IDLE_REQUESTS`] request ends: after a spike,
    ///   memory goes back within a few requests, while segments that steady requests reuse stay
    ///   (unmapping and faulting them in again is what makes a request cycle slow);
    /// - beyond that, the stalest segments above the expectation: the peak of recent requests,
    ///   decaying, with an eighth of slack, so a request like the recent ones maps nothing new.
    ///   (PHP keeps about the average of recent peaks, so requests whose peak wobbles around it
    ///   unmap and fault in a segment again and again.)
    pub(super) fn end_request_segments(&mut self) {
        let now = self.requests + 1;
        // SAFETY: the live list holds live non-main segments of this heap; each moves to the cache
        // after the iterator passed it.
        unsafe {
            for seg in self.segments.iter() {
                self.unlink_segment(seg);
                (*seg).reset();
                self.cached.push_front(seg);
            }
        }
        // SAFETY: cached segments are live segments of this heap, each released after the iterator
        // passed it.
        for seg in unsafe { self.cached.iter() } {
            // SAFETY: as above.
            if unsafe { (*seg).idle_for(now) } >= IDLE_REQUESTS {
                // SAFETY: as above; off the cache, it is on no list.
                unsafe {
                    self.cached.remove(seg);
                    self.release_segment(seg);
                }
            }
        }
        self.expected_segments =
            (self.peak_segments_count as f64).max(self.expected_segments * EXPECTATION_DECAY);
        let keep = (self.expected_segments * 1.125).ceil() as usize;
        while self.cached.len() + 1 > keep && self.release_stalest_cached_segment() {}
        if self.compact_size != 0 && self.real_peak > self.compact_size {
            self.storage.compact();
        }
    }

    /// Calls `f(map entry, segment page address, pages)` for the first page of every run of every
    /// live segment (the main one first).
    pub(super) fn each_run(&self, f: &mut dyn FnMut(u32, *mut u8, usize)) {
        // SAFETY: the main segment and the live list's are live segments of this heap.
        for seg in core::iter::once(self.main).chain(unsafe { self.segments.iter() }) {
            // SAFETY: as above.
            let s = unsafe { &*seg };
            let mut page = s.header_pages();
            while page < s.page_count() {
                let info = s.map_get(page);
                let addr = s.page_addr(page);
                let pages = match info & PAGE_KIND_MASK {
                    PAGE_LARGE => ((info & LARGE_PAGES_MASK) as usize).max(1),
                    PAGE_SMALL => match small_bin(info) {
                        Some(bin) if small_place(info, addr.addr()) == 0 => {
                            BINS[bin].pages as usize
                        }
                        _ => {
                            page += 1;
                            continue;
                        }
                    },
                    _ => {
                        page += 1;
                        continue;
                    }
                };
                f(info, addr, pages);
                page += pages;
            }
        }
    }

    /// Returns every segment but the main one to storage (the heap is being destroyed).
    pub(super) fn release_all_segments(&mut self) {
        // SAFETY: the live list holds live segments of this heap; each is released after the
        // iterator passed it, and the heap forgets the list.
        unsafe {
            for seg in self.segments.iter() {
                self.release_segment(seg);
            }
        }
        self.segments = List::new();
        self.release_cached_segments();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_heap;
    use super::*;

    #[test]
    fn every_run_length_falls_in_the_class_whose_floor_it_meets() {
        for len in 1..=(MAX_SEGMENT_SIZE / ZEND_MM_PAGE_SIZE) as u32 {
            let class = class_of(len);
            assert!(class < NUM_CLASSES);
            assert!(
                class_floor(class) <= len
                    && (class + 1 == NUM_CLASSES || class_floor(class + 1) > len)
            );
        }
    }

    #[test]
    fn page_runs_go_to_the_oldest_segment_that_fits() {
        const PAGE: usize = ZEND_MM_PAGE_SIZE;
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let main_seg = h.main.addr()..h.main.addr() + h.segment_size;
        // The main segment (511 free pages): a 300-page block, then a 16-page one, 195 pages left.
        let x = h.alloc(300 * PAGE).unwrap();
        let side = h.alloc(16 * PAGE).unwrap();
        assert!(main_seg.contains(&x.addr()) && main_seg.contains(&side.addr()));
        // A 301-page block needs a new segment, and leaves 210 pages behind it there.
        let y = h.alloc(301 * PAGE).unwrap();
        assert!(!main_seg.contains(&y.addr()));
        // The main segment now has a 300-page hole: the next run goes there, although the
        // younger segment's 210 pages fit it more tightly; so the 301-page block grows in place.
        h.free(x);
        let next = h.alloc(16 * PAGE).unwrap();
        assert!(
            main_seg.contains(&next.addr()),
            "the older segment serves the run"
        );
        assert_eq!(h.realloc(y, 302 * PAGE, 0), Ok(y));
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn of_segments_with_equally_long_runs_the_oldest_serves() {
        const SEG: usize = 64 << 10;
        const PAGE: usize = ZEND_MM_PAGE_SIZE;
        let heap = super::super::test_heap_on(crate::model_tests::StdStorage::<0>::ops(), SEG);
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let segment_of = |p: *mut u8| p.with_addr(p.addr() & !(SEG - 1)).cast::<Segment>();
        // SAFETY: the main segment is live.
        let main_free = unsafe { (*h.main).longest_free() } as usize;
        h.alloc(main_free * PAGE).unwrap();
        // Blocks of over half a segment: each takes a new segment and leaves the same run there.
        let half = SEG / PAGE / 2 + 1;
        let older = segment_of(h.alloc(half * PAGE).unwrap());
        let younger = segment_of(h.alloc(half * PAGE).unwrap());
        assert_ne!(older, younger);
        // SAFETY: both are live segments of this heap.
        let left = unsafe { (*older).longest_free() };
        // SAFETY: as above.
        assert_eq!(left, unsafe { (*younger).longest_free() });
        // The younger segment joined that run length's list last; the older one still serves.
        let p = h.alloc(left as usize * PAGE).unwrap();
        assert_eq!(segment_of(p), older, "the older segment serves the run");
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn an_older_segment_in_the_class_shared_with_shorter_runs_serves_before_a_younger_one() {
        const PAGE: usize = ZEND_MM_PAGE_SIZE;
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        let h = unsafe { &mut *heap };
        let seg_size = h.segment_size;
        let segment_of = |p: *mut u8| p.with_addr(p.addr() & !(seg_size - 1)).cast::<Segment>();
        // SAFETY: live segments of this heap (the main one and those blocks are in).
        let longest = |seg: *mut Segment| unsafe { (*seg).longest_free() } as usize;
        h.alloc(longest(h.main) * PAGE).unwrap();
        // The older segment keeps a run of 18 pages, the younger one of 40. Runs of 16 to 19
        // pages share a class, so a 17-page block surely fits only the younger segment's class.
        let mut leave = |run: usize| {
            let seg = segment_of(h.alloc(400 * PAGE).unwrap());
            let rest = h.alloc((longest(seg) - run) * PAGE).unwrap();
            assert_eq!(segment_of(rest), seg);
            assert_eq!(longest(seg), run);
            seg
        };
        let older = leave(18);
        let younger = leave(40);
        assert_ne!(older, younger);
        assert!(class_floor(class_of(18)) < 17 && class_floor(class_of(40)) >= 17);
        let p = h.alloc(17 * PAGE).unwrap();
        assert_eq!(segment_of(p), older, "the older segment serves the run");
        // SAFETY: the heap dies with its blocks.
        unsafe { Heap::shutdown(heap, true) };
    }

    /// Ends a request on `heap` (its blocks die with it).
    fn end_request(heap: *mut Heap) {
        // SAFETY: a live heap of this thread, not borrowed; the tests forget their blocks.
        unsafe { Heap::shutdown(heap, false) };
    }

    #[test]
    fn segments_idle_for_a_few_requests_go_back_and_gc_gives_back_the_rest() {
        const SEG: usize = 64 << 10;
        let heap = super::super::test_heap_on(crate::model_tests::StdStorage::<0>::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        // A big request: 12 segments' worth of large blocks.
        for _ in 0..12 {
            h().alloc(SEG / 2 + 1).unwrap();
        }
        assert!(h().segments_held() >= 12);
        end_request(heap);
        let after_big = h().segments_held();
        assert!(after_big >= 12, "the recent peak stays cached: {after_big}");
        // Small requests use the main segment only: the rest sits idle, and stays for a while.
        for request in 1..=IDLE_REQUESTS {
            h().alloc(100).unwrap();
            end_request(heap);
            let held = h().segments_held();
            if request < IDLE_REQUESTS {
                assert_eq!(held, after_big, "kept through request {request}");
            } else {
                assert_eq!(held, 1, "idle for {IDLE_REQUESTS} requests: given back");
            }
        }
        assert_eq!(h().usage(true), SEG, "the main segment alone");
        // A second spike; zend_mm_gc gives back everything cached at once.
        for _ in 0..6 {
            h().alloc(SEG / 2 + 1).unwrap();
        }
        end_request(heap);
        let cached = h().segments_held() - 1;
        assert!(cached >= 5);
        assert_eq!(h().gc(), cached * SEG);
        assert_eq!((h().segments_held(), h().usage(true)), (1, SEG));
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn a_fresh_huge_block_takes_the_place_of_cached_segments_after_the_first_request() {
        const SEG: usize = 64 << 10;
        let heap = super::super::test_heap_on(crate::model_tests::StdStorage::<0>::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        // The first request: 8 segments' worth of blocks, freed; a huge block leaves the emptied
        // segments cached (the request refills what it emptied).
        let blocks: [*mut u8; 8] = core::array::from_fn(|_| h().alloc(SEG / 2 + 1).unwrap());
        for p in blocks {
            h().free(p);
        }
        // The run cache keeps such blocks whole; back in their segments, the segments empty.
        h().flush_run_cache();
        let held = h().segments_held();
        assert!(h().cached.len() >= 6, "{}", h().cached.len());
        let huge = h().alloc(3 * SEG).unwrap();
        assert_eq!(
            h().segments_held(),
            held,
            "nothing shed in the first request"
        );
        h().free(huge);
        end_request(heap);
        h().release_cached_huge();
        // A later request: its fresh huge block of 3 segments' size gives back 3 cached ones, so
        // the real usage grows by the block alone.
        let held = h().segments_held();
        let real = h().usage(true);
        let huge = h().alloc(3 * SEG + 1).unwrap();
        assert_eq!(h().segments_held(), held - 3);
        assert_eq!(
            h().usage(true),
            real - 3 * SEG + h().block_size(huge) + ZEND_MM_PAGE_SIZE
        );
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn segments_reused_every_request_stay() {
        const SEG: usize = 64 << 10;
        let heap = super::super::test_heap_on(crate::model_tests::StdStorage::<0>::ops(), SEG);
        // SAFETY: a live heap of this thread, borrowed for a statement.
        let h = || unsafe { &mut *heap };
        for _ in 0..3 * IDLE_REQUESTS {
            for _ in 0..4 {
                h().alloc(SEG / 2 + 1).unwrap();
            }
            end_request(heap);
            assert!(
                h().segments_held() >= 4,
                "a steady request keeps its segments"
            );
        }
        // SAFETY: the heap dies.
        unsafe { Heap::shutdown(heap, true) };
    }
}
