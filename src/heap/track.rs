//! Block tracking: PHP 5.3's debug build, switched on at run time (`ZEND_MM_DEBUG=1`,
//! `zend_mm_set_tracking`).
//!
//! Owns the header in front of every block of a tracking heap, the walk that finds the live ones,
//! and what they make possible: the leak report at request end, `mem_block_check`/`full_mem_check`
//! reports that name where a block came from, and a check of every pointer handed to `efree`,
//! `erealloc` and `zend_mem_block_size` (a bad one is reported with the caller's location and the
//! operation is skipped, as in PHP 5.3).
//!
//! A tracked block of `size` bytes is one block of the heap's own of `size + OVERHEAD` bytes:
//!
//! ```text
//! [ Tracked: chain | file, orig file | lines | size | magic | start guard ][ caller's bytes ][ end guard ]
//! ```
//!
//! Invariants:
//! - a tracking heap serves every block through here (its fast paths decline, as for a custom
//!   heap), so each of its blocks has a header;
//! - a header's magic is [`VALID`] while its block is live, [`REMOTE`] while it waits on the
//!   heap's remote list after a free from another thread, and [`FREED`] after it was freed (the
//!   free list's link overwrites the first word only, never the magic); no free slot of a small
//!   run reads [`VALID`] (a fresh run's slots are cleared), so the live blocks are found by
//!   walking the heap's runs, as PHP walks its chunks for the leak report;
//! - the first [`POISON_LIMIT`] bytes of a freed block hold [`POISON`] until it is handed out
//!   again, which is when a small block's poison is checked (large and huge blocks go back to
//!   the page pool or storage and are not checked).
//!
//! Pointers are checked before anything is read through them: the heap's `lookup` must find the
//! start of one of its blocks `HEADER` bytes before, big enough for a header, so checking a wild
//! pointer reports it instead of crashing.

use core::ffi::{CStr, c_char};
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use super::Heap;
use super::error::Refusal;
use super::route::{Block, Lookup};
use crate::diagnostics::{
    BLOCK_REPORT_DASHES, Call, LeakEvent, LeakInfo, Site, eprint, file_text,
    print_block_report_head,
};
use crate::region_map;
use crate::segment::small_bin;
use crate::sizes::{BIN_SIZE, BINS, ZEND_MM_PAGE_SIZE, bin_of, is_small};

/// PHP 5.3's block magics.
const VALID: u32 = 0x7312_F8DC;
const FREED: u32 = 0x9995_4317;
/// A block freed from another thread, waiting on its heap's remote list: a second free of it
/// (from any thread) is caught before the list is touched. The owner makes it [`VALID`] again
/// just before it frees the block itself.
const REMOTE: u32 = 0x3B1E_F4EE;
/// A leaked block already counted in a report's group.
const LEAK: u32 = 0x6C5E_8F2D;
/// A block being resized: if the heap moves it, the copy left behind must not read as live, nor
/// as a freed block whose poison is checked (it was not poisoned).
const MOVING: u32 = 0x4D0E_D0FF;
/// The guards' contents: before the block (repeated), and after it.
const START_MAGIC: u32 = 0x2A8F_CC84;
const END_MAGIC: u32 = 0x1C0F_FEE5;
/// What freed blocks are filled with (PHP 5.3's value), and how much of each.
const POISON: u8 = 0x5A;
const POISON_LIMIT: usize = 32;

/// The header in front of a tracked block.
#[repr(C)]
pub(super) struct Tracked {
    /// The leak report's chain of live blocks while it runs; the remote list's link while a free
    /// from another thread waits for the heap's own (see `remote`); a free slot's list link once
    /// freed.
    chain: *mut Tracked,
    /// Where the block was allocated (or last reallocated); where it was freed once it is.
    file: *const c_char,
    orig_file: *const c_char,
    line: u32,
    orig_line: u32,
    /// The size the caller asked for.
    size: usize,
    magic: u32,
    /// Written over by code that writes before the block.
    start_guard: [u32; START_GUARD_WORDS],
}

const START_GUARD_WORDS: usize = 1;
/// Bytes in front of a tracked block.
const HEADER: usize = size_of::<Tracked>();
/// Bytes of the end guard.
const END_GUARD: usize = size_of::<u32>();
/// What tracking adds to every block.
const OVERHEAD: usize = HEADER + END_GUARD;

// The caller's bytes keep the alignment of the heap's blocks; the magic lies past the first word.
const _: () = assert!(HEADER == 48 && HEADER % 16 == 0);
const _: () = assert!(POISON_LIMIT == 4 * size_of::<u64>());
const _: () = assert!(core::mem::offset_of!(Tracked, magic) >= size_of::<usize>());

/// What the start of a block says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beginning {
    Ok,
    Freed,
    Unknown(u32),
}

/// What a guard says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    Ok,
    /// Not checked: the block is not a live one.
    Unknown,
    /// Written over: what is there instead of the magic, and how many of the guard's bytes changed
    /// (`all`: every one, so more may have been).
    Overflown {
        found: u32,
        expected: u32,
        bytes: usize,
        all: bool,
    },
}

/// What a pointer handed to a tracking heap is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspection {
    Null,
    /// Not in this heap's memory, nor in any other heap's.
    Foreign,
    /// A pointer into another heap's memory.
    OtherHeap,
    /// Inside this heap, but not where a tracked block starts.
    NotABlock,
    /// Where a block started whose pages were given back.
    FreedPages,
    /// A tracked block (live or freed), and what its header and guards say.
    Block {
        beginning: Beginning,
        start: Guard,
        end: Guard,
        /// From the header: where it was allocated (or freed) and the requested size.
        file: *const c_char,
        line: u32,
        size: usize,
    },
}

impl Inspection {
    /// Whether the pointer is a live tracked block with both guards intact.
    pub fn is_valid(&self) -> bool {
        matches!(
            self,
            Inspection::Block {
                beginning: Beginning::Ok,
                start: Guard::Ok,
                end: Guard::Ok,
                ..
            }
        )
    }
}

/// The header of the tracked block whose caller's bytes start at `p`.
fn header_of(p: *const u8) -> *mut Tracked {
    p.wrapping_sub(HEADER).cast::<Tracked>().cast_mut()
}

/// Where the tracked block whose caller's bytes start at `p` begins in its heap's memory: its
/// header.
pub(super) fn block_start_of(p: *mut u8) -> *mut u8 {
    header_of(p).cast()
}

/// Whether the header of the tracked block at `p` says it is live.
///
/// # Safety
/// A block of a tracking heap begins at [`block_start_of`]`(p)`.
pub(super) unsafe fn header_says_live(p: *const u8) -> bool {
    // SAFETY: a block's header (caller contract).
    unsafe { (*header_of(p)).magic == VALID }
}

/// The size the caller asked for of the live tracked block at `p`.
///
/// # Safety
/// A live block of a tracking heap begins at [`block_start_of`]`(p)`.
pub(super) unsafe fn requested_size_of(p: *const u8) -> usize {
    // SAFETY: a live block's header (caller contract); its size is set before it is handed out.
    unsafe { (*header_of(p)).size }
}

/// Claims the live tracked block at `p` for a free from another thread ([`VALID`] to [`REMOTE`],
/// atomically, so of two such frees only one wins); false if its header does not say live.
///
/// # Safety
/// A block of a tracking heap begins at [`block_start_of`]`(p)`.
pub(super) unsafe fn claim_remote_free(p: *mut u8) -> bool {
    // SAFETY: a block's header (caller contract): its magic is an aligned u32 that other threads
    // touch only through this exchange.
    let magic = unsafe { AtomicU32::from_ptr(&raw mut (*header_of(p)).magic) };
    magic
        .compare_exchange(VALID, REMOTE, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// Makes a block taken off the remote list live again for its owner's own free (which checks for
/// [`VALID`]).
///
/// # Safety
/// `p` is a tracked block of the calling thread's heap, taken off its remote list.
pub(super) unsafe fn settle_remote_free(p: *mut u8) {
    let t = header_of(p);
    // SAFETY: the block's header (caller contract); no other thread touches it any more.
    unsafe {
        if (*t).magic == REMOTE {
            (*t).magic = VALID;
        }
    }
}

/// Where a tracked block freed from another thread links to the next one on its heap's remote
/// list: its header's `chain` (the caller's bytes may be shorter than a pointer, with the end
/// guard right after them).
pub(super) fn link_of(p: *mut u8) -> *mut *mut u8 {
    header_of(p)
        .wrapping_byte_add(core::mem::offset_of!(Tracked, chain))
        .cast()
}

/// The caller's bytes of the block with header `t`.
fn data_of(t: *mut Tracked) -> *mut u8 {
    t.cast::<u8>().wrapping_add(HEADER)
}

/// Clears the magic word of every slot of a small run of `bin`.
///
/// # Safety
/// `run` must be a small run of `bin` of a live heap; its slots may be live or free.
unsafe fn clear_run_headers(run: *mut u8, bin: usize) {
    let info = BINS[bin];
    if (info.size as usize) < OVERHEAD {
        return; // no tracked block lives in this bin
    }
    for i in 0..info.count as usize {
        let t = run.wrapping_add(i * info.size as usize).cast::<Tracked>();
        // SAFETY: slot `i` of the run, at least a header long; the magic lies past the free
        // list's link.
        unsafe { (&raw mut (*t).magic).write(0) };
    }
}

/// Records `site` in the header `t` (where its block was allocated, reallocated or freed).
///
/// # Safety
/// `t` must be a header of a block of a live heap.
unsafe fn stamp_site(t: *mut Tracked, site: Site) {
    // SAFETY: caller contract.
    unsafe {
        (*t).file = site.file;
        (*t).line = site.line;
        (*t).orig_file = site.orig_file;
        (*t).orig_line = site.orig_line;
    }
}

/// Poisons the first bytes of a freed block of `size` bytes at `p` (at most [`POISON_LIMIT`]); the
/// usual whole prefix as four word stores, not a `memset` call.
///
/// # Safety
/// `p` must be writable for `size` bytes.
#[inline(always)]
unsafe fn poison(p: *mut u8, size: usize) {
    // SAFETY: writable (caller contract).
    unsafe {
        if size >= POISON_LIMIT {
            let word = u64::from_ne_bytes([POISON; 8]);
            for i in 0..POISON_LIMIT / 8 {
                p.add(8 * i).cast::<u64>().write_unaligned(word);
            }
        } else {
            ptr::write_bytes(p, POISON, size);
        }
    }
}

/// Checks `len` bytes at `at` against `magic` repeated; the guard's state.
///
/// # Safety
/// `at` must be readable for `len` bytes (a multiple of 4).
unsafe fn check_guard(at: *const u8, len: usize, magic: u32) -> Guard {
    // SAFETY: readable (caller contract).
    let intact =
        (0..len / 4).all(|i| unsafe { at.add(4 * i).cast::<u32>().read_unaligned() } == magic);
    if intact {
        return Guard::Ok;
    }
    let expected = magic.to_ne_bytes();
    let mut changed = 0;
    for i in 0..len {
        // SAFETY: readable (caller contract).
        if unsafe { at.add(i).read() } != expected[i % 4] {
            changed += 1;
        }
    }
    // The copy nearest the caller's bytes: the last one before them, the first after.
    // SAFETY: as above.
    let found = unsafe { at.add(len - 4).cast::<u32>().read_unaligned() };
    Guard::Overflown {
        found,
        expected: magic,
        bytes: changed,
        all: changed == len,
    }
}

/// Two allocation sites are the same file and line (file names compared as strings: each
/// translation unit has its own copy of `__FILE__`).
fn same_site(a: *const c_char, a_line: u32, b: *const c_char, b_line: u32) -> bool {
    if a_line != b_line {
        return false;
    }
    if a == b {
        return true;
    }
    // SAFETY: both are C strings (file names the callers passed).
    !a.is_null() && !b.is_null() && unsafe { CStr::from_ptr(a) == CStr::from_ptr(b) }
}

/// Prints PHP 5.3's block status report (`zend_mm_check_ptr`) for `p`, checked at `site`.
pub fn print_report(p: *const u8, inspection: &Inspection, site: Site) {
    print_block_report_head(p, &site);
    let beginning = |text: core::fmt::Arguments<'_>| {
        eprint(format_args!("{:>10}\t{text}\n", "Beginning:  "));
    };
    match *inspection {
        Inspection::Null => eprint(format_args!("NULL\n")),
        Inspection::Foreign => eprint(format_args!("Invalid pointer: (not owned by this heap)\n")),
        Inspection::OtherHeap => eprint(format_args!("Invalid pointer: (owned by another heap)\n")),
        Inspection::NotABlock => eprint(format_args!(
            "Invalid pointer: (not the start of a block)\n"
        )),
        Inspection::FreedPages => beginning(format_args!("Freed")),
        Inspection::Block {
            beginning: b,
            start,
            end,
            file,
            line,
            size,
        } => {
            match b {
                Beginning::Ok => beginning(format_args!(
                    "OK (allocated on {}:{line}, {size} bytes)",
                    file_text(file)
                )),
                Beginning::Freed => beginning(format_args!("Freed")),
                Beginning::Unknown(magic) => beginning(format_args!(
                    "Unknown (magic=0x{magic:08X}, expected=0x{VALID:08X})"
                )),
            }
            print_guard("Start:", start);
            print_guard("End:", end);
        }
    }
    eprint(format_args!("{BLOCK_REPORT_DASHES}"));
}

fn print_guard(name: &str, guard: Guard) {
    eprint(format_args!("{name:>10}\t"));
    match guard {
        Guard::Ok => eprint(format_args!("OK\n")),
        Guard::Unknown => eprint(format_args!("Unknown\n")),
        Guard::Overflown {
            found,
            expected,
            bytes,
            all,
        } => {
            eprint(format_args!(
                "Overflown (magic=0x{found:08X} instead of 0x{expected:08X})\n"
            ));
            if all {
                eprint(format_args!(
                    "{:>10}\tAt least {bytes} bytes overflown\n",
                    ""
                ));
            } else {
                eprint(format_args!("{:>10}\t{bytes} byte(s) overflown\n", ""));
            }
        }
    }
}

/// Tracking cannot be switched while the heap has live blocks (they have no header, or have one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapInUse;

impl Heap {
    /// Whether blocks of this heap carry tracking headers.
    #[inline(always)]
    pub fn is_tracking(&self) -> bool {
        self.tracking
    }

    /// Whether the fast paths may serve this heap: not custom, not tracking, not keeping
    /// statistics, not counting its allocations for fault injection.
    #[inline(always)]
    pub fn takes_fast_paths(&self) -> bool {
        !self.is_custom() && !self.tracking && self.stats.is_null() && self.max_allocs == u64::MAX
    }

    /// Switches tracking on or off; only while the heap has no live block.
    pub fn set_tracking(&mut self, on: bool) -> Result<(), HeapInUse> {
        if on == self.tracking {
            return Ok(());
        }
        // Blocks other threads freed are not live: freed here first, as for a usage query.
        self.collect_remote_frees();
        if self.used() != 0 {
            return Err(HeapInUse);
        }
        self.tracking = on;
        self.tracking_changed();
        if on {
            self.clear_all_stale_headers();
        } else {
            // A tracking heap's free slots carry no mark; the fast paths rely on it from now on.
            self.mark_all_free_slots();
        }
        // The statistics name the sites while tracking is on.
        self.count_for_tracking(on);
        Ok(())
    }

    /// The heap's block holding the tracked block at `p` if `p` is a live tracked block with
    /// both guards intact (the quick yes of [`Heap::inspect`], for every free).
    #[inline(always)]
    fn live_tracked(&self, p: *const u8) -> Option<Block> {
        let base = p.wrapping_sub(HEADER);
        let Lookup::Block(block) = self.lookup(base) else {
            return None;
        };
        let capacity = self.capacity(block);
        if capacity < OVERHEAD {
            return None;
        }
        let t = base.cast::<Tracked>();
        // SAFETY: the start of a block of this heap at least a header long; the end guard lies
        // inside it once `size` is checked against the capacity.
        let intact = unsafe {
            (*t).magic == VALID
                && (*t).size <= capacity - OVERHEAD
                && (*t).start_guard == [START_MAGIC; START_GUARD_WORDS]
                && p.add((*t).size).cast::<u32>().read_unaligned() == END_MAGIC
        };
        intact.then_some(block)
    }

    /// Bytes of a block of this heap.
    fn capacity(&self, block: Block) -> usize {
        match block {
            Block::Small { bin, .. } => BIN_SIZE[bin],
            Block::Large { pages, .. } => pages * ZEND_MM_PAGE_SIZE,
            // SAFETY: a live huge block of this heap (the lookup vouches for it).
            Block::Huge(huge) => unsafe { (*huge).size() },
        }
    }

    /// What `p` is to this heap.
    pub fn inspect(&self, p: *const u8) -> Inspection {
        if p.is_null() {
            return Inspection::Null;
        }
        let base = p.wrapping_sub(HEADER);
        let block = match self.lookup(base) {
            Lookup::Block(block) => block,
            Lookup::FreePage { .. } if base.addr() % ZEND_MM_PAGE_SIZE == 0 => {
                return Inspection::FreedPages;
            }
            Lookup::CachedHuge => return Inspection::FreedPages,
            Lookup::Foreign => {
                let owner = region_map::owner_of(p.addr());
                return if owner != 0 && owner != self.id() {
                    Inspection::OtherHeap
                } else {
                    Inspection::Foreign
                };
            }
            _ => return Inspection::NotABlock,
        };
        let capacity = self.capacity(block);
        if capacity < OVERHEAD {
            return Inspection::NotABlock;
        }
        let t = base.cast::<Tracked>();
        // SAFETY: the start of a block of this heap at least a header long. The other fields are
        // read only behind a known magic (a fresh block's may never have been written).
        let magic = unsafe { (*t).magic };
        let (file, line, size) = if matches!(magic, VALID | FREED | REMOTE) {
            // SAFETY: as above.
            unsafe { ((*t).file, (*t).line, (*t).size) }
        } else {
            (ptr::null(), 0, 0)
        };
        let beginning = match magic {
            VALID if size <= capacity - OVERHEAD => Beginning::Ok,
            FREED | REMOTE => Beginning::Freed,
            _ => Beginning::Unknown(magic),
        };
        let (start, end) = if beginning == Beginning::Ok {
            // SAFETY: both guards lie inside the block (`size + OVERHEAD <= capacity`).
            unsafe {
                (
                    check_guard(
                        (&raw const (*t).start_guard).cast(),
                        4 * START_GUARD_WORDS,
                        START_MAGIC,
                    ),
                    check_guard(p.add(size), END_GUARD, END_MAGIC),
                )
            }
        } else {
            (Guard::Unknown, Guard::Unknown)
        };
        Inspection::Block {
            beginning,
            start,
            end,
            file,
            line,
            size,
        }
    }

    /// Writes a fresh header and guards for a block of `size` bytes at `base`.
    ///
    /// # Safety
    /// `base` must be a block of this heap of at least `size + OVERHEAD` bytes.
    unsafe fn start_tracking(&mut self, base: *mut u8, size: usize, site: Site) -> *mut u8 {
        let t = base.cast::<Tracked>();
        // SAFETY: the block is ours and long enough (caller contract).
        unsafe {
            t.write(Tracked {
                chain: ptr::null_mut(),
                file: site.file,
                orig_file: site.orig_file,
                line: site.line,
                orig_line: site.orig_line,
                size,
                magic: VALID,
                start_guard: [START_MAGIC; START_GUARD_WORDS],
            });
            data_of(t)
                .add(size)
                .cast::<u32>()
                .write_unaligned(END_MAGIC);
        }
        data_of(t)
    }

    /// Clears the magic of every slot of the small runs the heap has (tracking is being switched on:
    /// slots freed meanwhile may hold anything, headers of blocks of an earlier tracking period
    /// among them).
    fn clear_all_stale_headers(&mut self) {
        self.each_run(&mut |info, run, _| {
            if let Some(bin) = small_bin(info) {
                // SAFETY: a small run of `bin` of this heap; only slots' magic words are written.
                unsafe { clear_run_headers(run, bin) };
            }
        });
    }

    /// Clears the magic of every slot of a fresh small run of a tracking heap: whatever the pages
    /// held before (other blocks' headers among them) must not read as a live block, nor as a freed
    /// one whose poison is checked.
    ///
    /// # Safety
    /// `run` must be a fresh run of `bin` of this heap (its slots free, but the first).
    pub(super) unsafe fn clear_stale_headers(&mut self, run: *mut u8, bin: usize) {
        // SAFETY: forwarded caller contract.
        unsafe { clear_run_headers(run, bin) };
    }

    /// A tracked block of `size` bytes (the requested size is what `zend_mem_block_size` answers).
    #[inline(always)]
    pub(super) fn alloc_tracked(&mut self, size: usize, site: Site) -> Result<*mut u8, Refusal> {
        let total = size.checked_add(OVERHEAD).ok_or(Refusal::Overflow)?;
        let base = if is_small(total) {
            // `Heap::alloc`'s small path, with the bin looked up once.
            let bin = bin_of(total);
            let slot = self.pop_free_slot(bin);
            let base = if slot.is_null() {
                self.alloc_small_slow(bin)?
            } else {
                // A slot off its free list was freed here: its poison must be intact.
                // SAFETY: a slot of this heap at least `total` bytes long, freed by
                // `free_tracked`.
                unsafe { check_poison(slot.cast(), BIN_SIZE[bin], site) };
                slot
            };
            self.count_small_alloc_stats(bin);
            base
        } else {
            self.alloc(total)?
        };
        self.count_site(site);
        // SAFETY: a fresh block of `total` bytes.
        Ok(unsafe { self.start_tracking(base, size, site) })
    }

    /// Frees the tracked block at `p`; a pointer that is not one is reported and left alone.
    #[inline(always)]
    pub(super) fn free_tracked(&mut self, p: *mut u8, site: Site) {
        if p.is_null() {
            return;
        }
        let Some(block) = self.live_tracked(p) else {
            print_report(p, &self.inspect(p), site);
            return;
        };
        let t = header_of(p);
        // SAFETY: a valid tracked block: its header and `size` bytes ours.
        unsafe {
            (*t).magic = FREED;
            stamp_site(t, site);
            poison(p, (*t).size);
            // The block `live_tracked` found, still live.
            self.free_block(t.cast(), block, &Call::new("efree", site));
        }
    }

    /// Resizes the tracked block at `p`. A pointer that is not one is reported and, as in PHP 5.3,
    /// a fresh block is allocated instead. On a refusal the block is untouched.
    pub(super) fn realloc_tracked(
        &mut self,
        p: *mut u8,
        size: usize,
        copy_size: usize,
        site: Site,
    ) -> Result<*mut u8, Refusal> {
        if p.is_null() {
            return self.alloc_tracked(size, site);
        }
        if self.live_tracked(p).is_none() {
            print_report(p, &self.inspect(p), site);
            return self.alloc_tracked(size, site);
        }
        let total = size.checked_add(OVERHEAD).ok_or(Refusal::Overflow)?;
        let t = header_of(p);
        // SAFETY: a valid tracked block (checked above).
        let old_size = unsafe {
            (*t).magic = MOVING;
            (*t).size
        };
        let was_small = is_small(old_size + OVERHEAD);
        let keep = HEADER + old_size.min(copy_size).min(size);
        match self.realloc(t.cast(), total, keep) {
            Ok(base) => {
                if base != t.cast() && was_small {
                    // The old slot was just freed and nothing took it since: poison it as
                    // `free_tracked` would. (Large and huge blocks went back to the page pool or
                    // storage; their copies keep the MOVING mark, which no check trusts.)
                    // SAFETY: a slot of a live segment of this heap, `old_size + OVERHEAD` long.
                    unsafe {
                        (*t).magic = FREED;
                        stamp_site(t, site);
                        poison(p, old_size);
                    }
                }
                let moved = base.cast::<Tracked>();
                // SAFETY: the block now at `base` holds the header and `total` bytes.
                unsafe {
                    (*moved).magic = VALID;
                    stamp_site(moved, site);
                    (*moved).size = size;
                    data_of(moved)
                        .add(size)
                        .cast::<u32>()
                        .write_unaligned(END_MAGIC);
                }
                Ok(data_of(moved))
            }
            Err(refusal) => {
                // SAFETY: untouched on a refusal.
                unsafe { (*t).magic = VALID };
                Err(refusal)
            }
        }
    }

    /// The requested size of the tracked block at `p`; a bad pointer is reported and answers 0.
    pub(super) fn tracked_size(&self, p: *mut u8, site: Site) -> usize {
        if p.is_null() {
            return 0;
        }
        match self.inspect(p) {
            Inspection::Block {
                beginning: Beginning::Ok,
                size,
                start: Guard::Ok,
                end: Guard::Ok,
                ..
            } => size,
            inspection => {
                print_report(p, &inspection, site);
                0
            }
        }
    }

    /// Checks every live tracked block; reports each bad one (unless `silent`) and returns how
    /// many there were.
    pub fn check_tracked(&self, site: Site, silent: bool) -> usize {
        let mut errors = 0;
        self.each_tracked(&mut |t| {
            let p = data_of(t);
            let inspection = self.inspect(p);
            if !inspection.is_valid() {
                errors += 1;
                if !silent {
                    print_report(p, &inspection, site);
                }
            }
        });
        errors
    }

    /// Calls `f` with the header of every live tracked block in PHP's leak-report order: huge
    /// blocks, then each segment (the main one first) page by page, a small run slot by slot.
    fn each_tracked(&self, f: &mut dyn FnMut(*mut Tracked)) {
        let mut visit = |t: *mut Tracked, capacity: usize| {
            if capacity < OVERHEAD {
                return;
            }
            // SAFETY: the start of a block of this heap at least a header long; the size is read
            // behind the magic only.
            if unsafe { (*t).magic == VALID && (*t).size <= capacity - OVERHEAD } {
                f(t);
            }
        };
        // SAFETY: the huge list holds live huge blocks of this heap.
        for block in unsafe { self.huge_blocks.iter() } {
            // SAFETY: as above.
            let (data, size) = unsafe { ((*block).data(), (*block).size()) };
            visit(data.cast(), size);
        }
        self.each_run(&mut |info, run, pages| match small_bin(info) {
            Some(bin) => {
                let b = BINS[bin];
                for i in 0..b.count as usize {
                    visit(
                        run.wrapping_add(i * b.size as usize).cast(),
                        b.size as usize,
                    );
                }
            }
            None => visit(run.cast(), pages * ZEND_MM_PAGE_SIZE),
        });
    }

    /// Calls `f(file, line, requested size)` for every live tracked block.
    pub(super) fn each_tracked_site(&self, f: &mut dyn FnMut(*const c_char, u32, usize)) {
        self.each_tracked(&mut |t| {
            // SAFETY: a live tracked block's header.
            let (file, line, size) = unsafe { ((*t).file, (*t).line, (*t).size) };
            f(file, line, size);
        });
    }

    /// Marks the reserve (a block of the heap's own, never tracked) so no walk reads it as a
    /// tracked block whatever the pages held before.
    pub(super) fn unmark_untracked(&mut self, p: *mut u8) {
        if !p.is_null() && self.block_size(p) >= OVERHEAD {
            // SAFETY: a live block of this heap at least a header long.
            unsafe { (&raw mut (*p.cast::<Tracked>()).magic).write(0) };
        }
    }
}

/// How many of the `n` bytes at `p` differ from [`POISON`]: a word at a time while they match.
///
/// # Safety
/// `p` must be readable for `n` bytes.
unsafe fn changed_bytes(p: *const u8, n: usize) -> usize {
    const WORD: usize = size_of::<u64>();
    let poison = u64::from_ne_bytes([POISON; WORD]);
    let word = |i: usize| {
        // SAFETY: callers read below `n` only (caller contract).
        unsafe { p.add(i).cast::<u64>().read_unaligned() ^ poison }
    };
    let mut i = 0;
    while i + WORD <= n && word(i) == 0 {
        i += WORD;
    }
    // SAFETY: as above.
    (i..n)
        .filter(|&j| unsafe { p.add(j).read() } != POISON)
        .count()
}

/// Checks that a small slot freed by `free_tracked` still holds its poison; reports the block if
/// it was written to after the free.
///
/// # Safety
/// `t` must be a slot of `capacity` bytes of a live heap (any contents).
unsafe fn check_poison(t: *mut Tracked, capacity: usize, site: Site) {
    // SAFETY: the slot is at least a header long (caller contract: capacity >= total > HEADER);
    // its other fields are read behind the magic only.
    if unsafe { (*t).magic } != FREED {
        return;
    }
    // SAFETY: as above.
    let (size, file, line) = unsafe { ((*t).size, (*t).file, (*t).line) };
    if size > capacity - OVERHEAD {
        return;
    }
    let p = data_of(t);
    // SAFETY: the poisoned bytes lie in the slot (`size + OVERHEAD <= capacity`).
    if size >= POISON_LIMIT && unsafe { !prefix_changed(p) } {
        return;
    }
    // SAFETY: as above.
    unsafe { report_written_after_free(p, size, file, line, site) };
}

/// Whether any of the first [`POISON_LIMIT`] bytes at `p` lost its poison: four word compares.
///
/// # Safety
/// `p` must be readable for [`POISON_LIMIT`] bytes.
#[inline(always)]
unsafe fn prefix_changed(p: *const u8) -> bool {
    let poison = u64::from_ne_bytes([POISON; 8]);
    // SAFETY: caller contract.
    let word = |i: usize| unsafe { p.add(8 * i).cast::<u64>().read_unaligned() ^ poison };
    (word(0) | word(1) | word(2) | word(3)) != 0
}

/// The rest of [`check_poison`], out of the allocation path: counts the changed bytes of a freed
/// block of `size` bytes at `p` (freed at `file`:`line`) and reports them, if any.
///
/// # Safety
/// `p` must be readable for `size.min(POISON_LIMIT)` bytes.
#[cold]
#[inline(never)]
unsafe fn report_written_after_free(
    p: *mut u8,
    size: usize,
    file: *const c_char,
    line: u32,
    site: Site,
) {
    // SAFETY: caller contract.
    let changed = unsafe { changed_bytes(p, size.min(POISON_LIMIT)) };
    if changed == 0 {
        return;
    }
    print_block_report_head(p, &site);
    eprint(format_args!(
        "{:>10}\tFreed, then written to ({changed} byte(s) changed after the free on {}:{line}, {size} bytes)\n",
        "Beginning:  ",
        file_text(file)
    ));
    eprint(format_args!("{BLOCK_REPORT_DASHES}"));
}

/// Reports every live tracked block of `heap` as a leak through `sink`, in PHP's order (see
/// `each_tracked`), one group per file and line (PHP's `zend_mm_check_leaks`); returns the total.
///
/// The live blocks are chained through their headers first; no borrow of the heap is held while
/// `sink` runs, so a message handler may allocate (its blocks are not in the chain); it must not
/// free the blocks it is told about.
///
/// # Safety
/// `heap` must be a live heap used by this thread only and not borrowed by the caller.
pub unsafe fn report_leaks(heap: *mut Heap, sink: &mut dyn FnMut(&LeakEvent<'_>)) -> u32 {
    // Blocks other threads freed are not leaks: freed here first.
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    unsafe { (*heap).collect_remote_frees() };
    let mut first: *mut Tracked = ptr::null_mut();
    let mut last: *mut Tracked = ptr::null_mut();
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    unsafe {
        (*heap).each_tracked(&mut |t| {
            (*t).chain = ptr::null_mut();
            if last.is_null() {
                first = t;
            } else {
                (*last).chain = t;
            }
            last = t;
        })
    };
    let mut total: u32 = 0;
    let mut t = first;
    while !t.is_null() {
        // SAFETY: chained blocks are live tracked blocks; nothing frees them meanwhile.
        let h = unsafe { &*t };
        if h.magic != LEAK {
            let leak = LeakInfo {
                addr: data_of(t).cast(),
                size: h.size,
                filename: h.file,
                lineno: h.line,
                orig_filename: h.orig_file,
                orig_lineno: h.orig_line,
            };
            sink(&LeakEvent::ScriptName);
            sink(&LeakEvent::Leak(&leak));
            let mut repeated = 0;
            let mut q = h.chain;
            while !q.is_null() {
                // SAFETY: as above.
                unsafe {
                    if (*q).magic != LEAK && same_site((*q).file, (*q).line, h.file, h.line) {
                        (*q).magic = LEAK;
                        repeated += 1;
                    }
                    q = (*q).chain;
                }
            }
            total = total.saturating_add(1 + repeated as u32);
            if repeated > 0 {
                sink(&LeakEvent::Repeated(repeated));
            }
        }
        t = h.chain;
    }
    if total > 0 {
        sink(&LeakEvent::Total(total));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::{api, test_heap};

    fn site(line: u32) -> Site {
        Site::new(c"track.c".as_ptr(), line)
    }

    /// A tracking test heap.
    fn tracking_heap() -> *mut Heap {
        let heap = test_heap();
        // SAFETY: a fresh heap of this thread.
        unsafe { (*heap).set_tracking(true).unwrap() };
        heap
    }

    /// The leak report of `heap` as (event, size or count, line) triples.
    fn report(heap: *mut Heap) -> Vec<(&'static str, usize, u32)> {
        let mut events = Vec::new();
        // SAFETY: a live heap of this thread, not borrowed.
        unsafe {
            report_leaks(heap, &mut |e| {
                events.push(match *e {
                    LeakEvent::ScriptName => ("script", 0, 0),
                    LeakEvent::Leak(l) => ("leak", l.size, l.lineno),
                    LeakEvent::Repeated(n) => ("repeated", n, 0),
                    LeakEvent::Total(n) => ("total", n as usize, 0),
                })
            })
        };
        events
    }

    #[test]
    fn blocks_carry_their_size_and_guards_catch_writes_outside() {
        let heap = tracking_heap();
        // SAFETY: a live tracking heap of this thread; blocks are used within their sizes except
        // where a guard is hit on purpose.
        unsafe {
            let h = &mut *heap;
            let p = h.alloc_tracked(10, site(1)).unwrap();
            assert!(h.inspect(p).is_valid());
            assert_eq!(h.tracked_size(p, site(2)), 10);
            assert_eq!(h.check_tracked(site(3), true), 0);
            p.add(10).write(0); // one past the end
            let Inspection::Block { end, start, .. } = h.inspect(p) else {
                panic!()
            };
            assert_eq!(start, Guard::Ok);
            assert!(matches!(
                end,
                Guard::Overflown {
                    bytes: 1,
                    all: false,
                    ..
                }
            ));
            assert_eq!(h.check_tracked(site(4), true), 1);
            p.add(10).write(0xE5); // the guard's first byte again
            p.sub(1).write(0); // one before the start
            let Inspection::Block { start, .. } = h.inspect(p) else {
                panic!()
            };
            assert!(
                matches!(start, Guard::Overflown { found, bytes: 1, .. } if found == START_MAGIC & 0x00FF_FFFF)
            );
            p.sub(1).write((START_MAGIC >> 24) as u8);
            h.free_tracked(p, site(5));
            let Inspection::Block { beginning, .. } = h.inspect(p) else {
                panic!()
            };
            assert_eq!(beginning, Beginning::Freed);
            assert_eq!(h.usage(false), 0);
            assert_eq!(h.inspect(p.add(8)), Inspection::NotABlock);
            let foreign = [0u8; 128];
            assert_eq!(h.inspect(foreign.as_ptr().add(64)), Inspection::Foreign);
            Heap::shutdown(heap, true);
        }
    }

    #[test]
    fn reallocation_keeps_contents_and_tracks_the_new_size() {
        let heap = tracking_heap();
        // SAFETY: as above.
        unsafe {
            let h = &mut *heap;
            let mut p = h.alloc_tracked(5, site(1)).unwrap();
            p.copy_from(b"hello".as_ptr(), 5);
            for size in [100, 5000, 40, 3] {
                p = h.realloc_tracked(p, size, size, site(2)).unwrap();
                assert!(h.inspect(p).is_valid());
                assert_eq!(h.tracked_size(p, site(3)), size);
                assert_eq!(*p, b'h');
            }
            assert_eq!(core::slice::from_raw_parts(p, 3), b"hel");
            h.free_tracked(p, site(4));
            assert_eq!(h.usage(false), 0);
            Heap::shutdown(heap, true);
        }
    }

    #[test]
    fn the_leak_report_groups_by_site_in_heap_order() {
        let heap = tracking_heap();
        // SAFETY: as above.
        unsafe {
            let h = &mut *heap;
            let a = h.alloc_tracked(100, site(10)).unwrap();
            let b = h.alloc_tracked(100, site(11)).unwrap();
            h.alloc_tracked(100, site(10)).unwrap();
            h.alloc_tracked(20, site(12)).unwrap();
            h.free_tracked(b, site(13));
            let _ = a;
        }
        assert_eq!(
            report(heap),
            [
                // The 100-byte blocks' run was carved first: it lies before the 20-byte one's.
                ("script", 0, 0),
                ("leak", 100, 10),
                ("repeated", 1, 0),
                ("script", 0, 0),
                ("leak", 20, 12),
                ("total", 3, 0),
            ]
        );
        // SAFETY: a live heap of this thread.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn blocks_released_by_a_request_end_are_not_reported_later() {
        let heap = tracking_heap();
        // SAFETY: as above; the request end releases the first two blocks.
        unsafe {
            let h = &mut *heap;
            h.alloc_tracked(100, site(1)).unwrap();
            h.alloc_tracked(100, site(2)).unwrap();
            Heap::shutdown(heap, false);
            (*heap).alloc_tracked(100, site(3)).unwrap();
        }
        assert_eq!(
            report(heap),
            [("script", 0, 0), ("leak", 100, 3), ("total", 1, 0)]
        );
        // SAFETY: a live heap of this thread.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn switching_tracking_on_again_forgets_headers_of_an_earlier_period() {
        let heap = tracking_heap();
        // SAFETY: as above. The first period's blocks are released by a request end; the run an
        // untracked allocation then carves at the same place keeps their headers in its free
        // slots until tracking comes back.
        unsafe {
            let h = &mut *heap;
            h.alloc_tracked(100, site(1)).unwrap();
            h.alloc_tracked(100, site(2)).unwrap();
            Heap::shutdown(heap, false);
            let h = &mut *heap;
            h.set_tracking(false).unwrap();
            let untracked = h.alloc(100 + OVERHEAD).unwrap();
            h.free(untracked);
            h.set_tracking(true).unwrap();
        }
        assert_eq!(report(heap), []);
        // SAFETY: a live heap of this thread.
        unsafe { Heap::shutdown(heap, true) };
    }

    #[test]
    fn counting_started_by_tracking_stops_with_it_unless_asked_for() {
        let heap = tracking_heap();
        // SAFETY: a live, empty heap of this thread.
        unsafe {
            let h = &mut *heap;
            assert!(h.is_counting() && !h.takes_fast_paths());
            h.set_tracking(false).unwrap();
            assert!(
                !h.is_counting() && h.takes_fast_paths(),
                "the fast paths are back"
            );
            assert_eq!(h.set_counting(true), Ok(true));
            h.set_tracking(true).unwrap();
            h.set_tracking(false).unwrap();
            assert!(h.is_counting(), "asked for: it stays");
            h.set_tracking(true).unwrap();
            assert_eq!(h.set_counting(true), Ok(true), "asked for while tracking");
            h.set_tracking(false).unwrap();
            assert!(h.is_counting());
            Heap::shutdown(heap, true);
        }
    }

    #[test]
    fn a_message_handler_may_allocate_while_the_report_runs() {
        let heap = tracking_heap();
        // SAFETY: as above. The sink allocates through the heap's interface, which holds no
        // borrow across it; under Miri this fails if the report still held one.
        unsafe {
            (*heap).alloc_tracked(100, site(1)).unwrap();
            let mut made = Vec::new();
            let total = report_leaks(heap, &mut |_| {
                made.push(api::emalloc(heap, 200, site(2)));
            });
            assert_eq!(total, 1);
            assert_eq!(made.len(), 3, "script name, leak, total");
            for p in made {
                api::efree(heap, p, &Call::new("efree", site(3)));
            }
            Heap::shutdown(heap, true);
        }
    }
}
