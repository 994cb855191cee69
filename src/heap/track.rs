//! Block tracking: PHP 5.3's debug build, switched on at run time (`ZEND_MM_DEBUG=1`,
//! `zend_mm_set_tracking`).
//!
//! Owns the header in front of every block of a tracking heap, the list of its live blocks, and
//! what they make possible: the leak report at request end, `mem_block_check`/`full_mem_check`
//! reports that name where a block came from, and a check of every pointer handed to `efree`,
//! `erealloc` and `zend_mem_block_size` (a bad one is reported with the caller's location and the
//! operation is skipped, as in PHP 5.3).
//!
//! A tracked block of `size` bytes is one block of the heap's own of `size + OVERHEAD` bytes:
//!
//! ```text
//! [ Tracked: links | file, orig file | lines | size | magic | start guard ][ caller's bytes ][ end guard ]
//! ```
//!
//! Invariants:
//! - a tracking heap serves every block through here (its fast paths decline, as for a custom
//!   heap), so each of its blocks has a header, and each live one is on `tracked`;
//! - a header's magic is [`VALID`] while its block is live and [`FREED`] after it was freed (the
//!   free list's link overwrites the first word only, never the magic);
//! - the first [`POISON_LIMIT`] bytes of a freed block hold [`POISON`] until it is handed out
//!   again, which is when a small block's poison is checked (large and huge blocks go back to
//!   the page pool or storage and are not checked).
//!
//! Pointers are checked before anything is read through them: the heap's `lookup` must find the
//! start of one of its blocks `HEADER` bytes before, big enough for a header, so checking a wild
//! pointer reports it instead of crashing.

use core::ffi::{CStr, c_char};
use core::ptr;

use super::Heap;
use super::error::Refusal;
use super::route::{Block, Lookup};
use crate::diagnostics::{LeakEvent, LeakInfo, Site, eprint};
use crate::list::{Field, Links, List};
use crate::region_map;
use crate::sizes::{BIN_SIZE, BINS, ZEND_MM_MAX_SMALL_SIZE, ZEND_MM_PAGE_SIZE, bin_of};

/// PHP 5.3's block magics.
const VALID: u32 = 0x7312_F8DC;
const FREED: u32 = 0x9995_4317;
/// A leaked block already counted in a report's group.
const LEAK: u32 = 0x6C5E_8F2D;
/// A block being resized: if the heap moves it, the copy left behind must not read as live, nor
/// as a freed block whose poison is checked (it was not poisoned).
const MOVING: u32 = 0x4D0E_D0FF;
/// The guards' contents: before the block (three copies), and after it.
const START_MAGIC: u32 = 0x2A8F_CC84;
const END_MAGIC: u32 = 0x1C0F_FEE5;
/// What freed blocks are filled with (PHP 5.3's value), and how much of each.
const POISON: u8 = 0x5A;
const POISON_LIMIT: usize = 256;

/// The header in front of a tracked block.
#[repr(C)]
pub(super) struct Tracked {
    /// On the heap's list of live tracked blocks; the first word is a free slot's link once freed.
    links: Links<Tracked>,
    /// Where the block was allocated (or last reallocated); where it was freed once it is.
    file: *const c_char,
    orig_file: *const c_char,
    line: u32,
    orig_line: u32,
    /// The size the caller asked for.
    size: usize,
    magic: u32,
    /// Written over by code that writes before the block.
    start_guard: [u32; 3],
}

/// Bytes in front of a tracked block.
const HEADER: usize = size_of::<Tracked>();
/// Bytes of the end guard.
const END_GUARD: usize = size_of::<u32>();
/// What tracking adds to every block.
const OVERHEAD: usize = HEADER + END_GUARD;

// The caller's bytes keep the alignment of the heap's blocks; the magic lies past the first word.
const _: () = assert!(HEADER == 64 && HEADER % 16 == 0);
const _: () = assert!(core::mem::offset_of!(Tracked, magic) >= size_of::<usize>());

/// The heap's list of live tracked blocks.
pub(super) type TrackedList = List<Tracked, TrackedLinks>;

pub(super) struct TrackedLinks;

impl Field<Tracked> for TrackedLinks {
    unsafe fn links(item: *mut Tracked) -> *mut Links<Tracked> {
        // SAFETY: `item` is a live header (caller contract).
        unsafe { &raw mut (*item).links }
    }
}

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

/// The caller's bytes of the block with header `t`.
fn data_of(t: *mut Tracked) -> *mut u8 {
    t.cast::<u8>().wrapping_add(HEADER)
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
    if changed == 0 {
        return Guard::Ok;
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

fn file_text<'a>(file: *const c_char) -> &'a str {
    if file.is_null() {
        return "Unknown";
    }
    // SAFETY: file names are C strings.
    unsafe { CStr::from_ptr(file) }.to_str().unwrap_or("?")
}

/// Prints PHP 5.3's block status report (`zend_mm_check_ptr`) for `p`, checked at `site`.
pub fn print_report(p: *const u8, inspection: &Inspection, site: Site) {
    let dashes = "---------------------------------------\n";
    eprint(format_args!("{dashes}"));
    eprint(format_args!(
        "{}({}) : Block 0x{:08x} status:\n",
        file_text(site.file),
        site.line,
        p.addr()
    ));
    if !site.orig_file.is_null() {
        eprint(format_args!(
            "{}({}) : Actual location (location was relayed)\n",
            file_text(site.orig_file),
            site.orig_line
        ));
    }
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
    eprint(format_args!("{dashes}"));
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

    /// Whether the fast paths may serve this heap: neither custom nor tracking.
    #[inline(always)]
    pub fn takes_fast_paths(&self) -> bool {
        !self.is_custom() && !self.tracking
    }

    /// Switches tracking on or off; only while the heap has no live block.
    pub fn set_tracking(&mut self, on: bool) -> Result<(), HeapInUse> {
        if on == self.tracking {
            return Ok(());
        }
        if self.size != 0 || !self.tracked.is_empty() {
            return Err(HeapInUse);
        }
        self.tracking = on;
        Ok(())
    }

    /// Forgets every tracked block (the request's blocks are released at once).
    pub(super) fn forget_tracked(&mut self) {
        self.tracked = List::new();
    }

    /// What `p` is to this heap.
    pub fn inspect(&self, p: *const u8) -> Inspection {
        self.inspect_block(p).0
    }

    /// What `p` is to this heap, and the heap's block holding its header if there is one.
    fn inspect_block(&self, p: *const u8) -> (Inspection, Option<Block>) {
        if p.is_null() {
            return (Inspection::Null, None);
        }
        let base = p.wrapping_sub(HEADER);
        let block = match self.lookup(base) {
            Lookup::Block(block) => block,
            Lookup::FreePage { .. } if base.addr() % ZEND_MM_PAGE_SIZE == 0 => {
                return (Inspection::FreedPages, None);
            }
            Lookup::CachedHuge => return (Inspection::FreedPages, None),
            Lookup::Foreign => {
                let owner = region_map::owner_of(p.addr());
                let other = owner != 0 && owner != self.id();
                return (
                    if other {
                        Inspection::OtherHeap
                    } else {
                        Inspection::Foreign
                    },
                    None,
                );
            }
            _ => return (Inspection::NotABlock, None),
        };
        let capacity = match block {
            Block::Small { bin, .. } => BIN_SIZE[bin],
            Block::Large { pages, .. } => pages * ZEND_MM_PAGE_SIZE,
            // SAFETY: a live huge block of this heap (the lookup vouches for it).
            Block::Huge(huge) => unsafe { (*huge).size() },
        };
        if capacity < OVERHEAD {
            return (Inspection::NotABlock, None);
        }
        let t = base.cast::<Tracked>();
        // SAFETY: the start of a block of this heap at least a header long.
        let (magic, file, line, size) = unsafe { ((*t).magic, (*t).file, (*t).line, (*t).size) };
        let beginning = match magic {
            VALID if size <= capacity - OVERHEAD => Beginning::Ok,
            FREED => Beginning::Freed,
            _ => Beginning::Unknown(magic),
        };
        let (start, end) = if beginning == Beginning::Ok {
            // SAFETY: both guards lie inside the block (`size + OVERHEAD <= capacity`).
            unsafe {
                (
                    check_guard((&raw const (*t).start_guard).cast(), 12, START_MAGIC),
                    check_guard(p.add(size), END_GUARD, END_MAGIC),
                )
            }
        } else {
            (Guard::Unknown, Guard::Unknown)
        };
        let inspection = Inspection::Block {
            beginning,
            start,
            end,
            file,
            line,
            size,
        };
        (inspection, Some(block))
    }

    /// Writes a fresh header and guards for a block of `size` bytes at `base`, and lists it.
    ///
    /// # Safety
    /// `base` must be a block of this heap of at least `size + OVERHEAD` bytes, not listed.
    unsafe fn start_tracking(&mut self, base: *mut u8, size: usize, site: Site) -> *mut u8 {
        let t = base.cast::<Tracked>();
        // SAFETY: the block is ours and long enough (caller contract).
        unsafe {
            t.write(Tracked {
                links: Links::NONE,
                file: site.file,
                orig_file: site.orig_file,
                line: site.line,
                orig_line: site.orig_line,
                size,
                magic: VALID,
                start_guard: [START_MAGIC; 3],
            });
            data_of(t)
                .add(size)
                .cast::<u32>()
                .write_unaligned(END_MAGIC);
            self.tracked.push_front(t);
        }
        data_of(t)
    }

    /// Clears the magic of every slot of a fresh small run: whatever the pages held before (other
    /// blocks' headers among them) must not read as a freed block whose poison is checked.
    ///
    /// # Safety
    /// `run` must be a fresh run of `bin` of this heap (its slots free, but the first).
    pub(super) unsafe fn clear_stale_headers(&mut self, run: *mut u8, bin: usize) {
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

    /// A tracked block of `size` bytes (the requested size is what `zend_mem_block_size` answers).
    pub(super) fn alloc_tracked(&mut self, size: usize, site: Site) -> Result<*mut u8, Refusal> {
        let total = size.checked_add(OVERHEAD).ok_or(Refusal::Overflow)?;
        // A small block that comes off its free list was freed here: its poison must be intact.
        let reused =
            total <= ZEND_MM_MAX_SMALL_SIZE && !self.free_slot_head(bin_of(total)).is_null();
        let base = self.alloc(total)?;
        if reused {
            // SAFETY: a slot of this heap at least `total` bytes long, freed by `free_tracked`.
            unsafe { check_poison(base.cast(), BIN_SIZE[bin_of(total)], site) };
        }
        // SAFETY: a fresh block of `total` bytes, on no list.
        Ok(unsafe { self.start_tracking(base, size, site) })
    }

    /// Frees the tracked block at `p`; a pointer that is not one is reported and left alone.
    pub(super) fn free_tracked(&mut self, p: *mut u8, site: Site) {
        if p.is_null() {
            return;
        }
        let (inspection, block) = self.inspect_block(p);
        let Some(block) = block.filter(|_| inspection.is_valid()) else {
            print_report(p, &inspection, site);
            return;
        };
        let t = header_of(p);
        // SAFETY: a valid tracked block: listed, its header and `size` bytes ours.
        unsafe {
            self.tracked.remove(t);
            (*t).magic = FREED;
            (*t).file = site.file;
            (*t).line = site.line;
            (*t).orig_file = site.orig_file;
            (*t).orig_line = site.orig_line;
            ptr::write_bytes(p, POISON, (*t).size.min(POISON_LIMIT));
            // The block `inspect_block` found, still live.
            self.free_block(t.cast(), block);
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
        let inspection = self.inspect(p);
        if !inspection.is_valid() {
            print_report(p, &inspection, site);
            return self.alloc_tracked(size, site);
        }
        let total = size.checked_add(OVERHEAD).ok_or(Refusal::Overflow)?;
        let t = header_of(p);
        // SAFETY: a valid tracked block (checked above).
        let old_size = unsafe {
            self.tracked.remove(t);
            (*t).magic = MOVING;
            (*t).size
        };
        let was_small = old_size + OVERHEAD <= ZEND_MM_MAX_SMALL_SIZE;
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
                        (*t).file = site.file;
                        (*t).line = site.line;
                        ptr::write_bytes(p, POISON, old_size.min(POISON_LIMIT));
                    }
                }
                let moved = base.cast::<Tracked>();
                // SAFETY: the block now at `base` holds the header and `total` bytes.
                unsafe {
                    (*moved).magic = VALID;
                    (*moved).file = site.file;
                    (*moved).line = site.line;
                    (*moved).orig_file = site.orig_file;
                    (*moved).orig_line = site.orig_line;
                    (*moved).size = size;
                    data_of(moved)
                        .add(size)
                        .cast::<u32>()
                        .write_unaligned(END_MAGIC);
                    self.tracked.push_front(moved);
                }
                Ok(data_of(moved))
            }
            Err(refusal) => {
                // SAFETY: untouched on a refusal.
                unsafe {
                    (*t).magic = VALID;
                    self.tracked.push_front(t);
                }
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
        // SAFETY: the list holds live tracked blocks of this heap.
        for t in unsafe { self.tracked.iter() } {
            let p = data_of(t);
            let inspection = self.inspect(p);
            if !inspection.is_valid() {
                errors += 1;
                if !silent {
                    print_report(p, &inspection, site);
                }
            }
        }
        errors
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
    // Four words per step while all match (the common case: nothing was written).
    while i + 4 * WORD <= n && (word(i) | word(i + 8) | word(i + 16) | word(i + 24)) == 0 {
        i += 4 * WORD;
    }
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
    // SAFETY: the slot is at least a header long (caller contract: capacity >= total > HEADER).
    let (magic, size, file, line) = unsafe { ((*t).magic, (*t).size, (*t).file, (*t).line) };
    if magic != FREED || size > capacity - OVERHEAD {
        return;
    }
    let p = data_of(t);
    // SAFETY: the poisoned bytes lie in the slot (`size + OVERHEAD <= capacity`).
    let changed = unsafe { changed_bytes(p, size.min(POISON_LIMIT)) };
    if changed == 0 {
        return;
    }
    let dashes = "---------------------------------------\n";
    eprint(format_args!("{dashes}"));
    eprint(format_args!(
        "{}({}) : Block 0x{:08x} status:\n",
        file_text(site.file),
        site.line,
        p.addr()
    ));
    eprint(format_args!(
        "{:>10}\tFreed, then written to ({changed} byte(s) changed after the free on {}:{line}, {size} bytes)\n",
        "Beginning:  ",
        file_text(file)
    ));
    eprint(format_args!("{dashes}"));
}

/// Reports every live tracked block of `heap` as a leak through `sink`, in allocation order, one
/// group per file and line (PHP's `zend_mm_check_leaks`); returns the total.
///
/// The list is detached from the heap first and no borrow of the heap is held while `sink` runs,
/// so a message handler may allocate (its blocks go on the heap's fresh list); it must not free
/// the blocks it is told about.
///
/// # Safety
/// `heap` must be a live heap used by this thread only and not borrowed by the caller.
pub unsafe fn report_leaks(heap: *mut Heap, sink: &mut dyn FnMut(&LeakEvent<'_>)) -> u32 {
    // SAFETY: live, unborrowed heap (caller contract); the borrow ends with the statement.
    let list = unsafe { core::mem::take(&mut (*heap).tracked) };
    // SAFETY: the detached list holds live tracked blocks; nothing frees them meanwhile.
    let oldest = unsafe { list.iter() }.last();
    let mut total: u32 = 0;
    let mut t = oldest.unwrap_or(ptr::null_mut());
    while !t.is_null() {
        // SAFETY: as above; `prev` is the next younger block.
        let younger = unsafe { TrackedList::prev(t) };
        // SAFETY: as above.
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
            let mut q = younger;
            while !q.is_null() {
                // SAFETY: as above.
                unsafe {
                    if (*q).magic != LEAK && same_site((*q).file, (*q).line, h.file, h.line) {
                        (*q).magic = LEAK;
                        repeated += 1;
                    }
                    q = TrackedList::prev(q);
                }
            }
            total = total.saturating_add(1 + repeated as u32);
            if repeated > 0 {
                sink(&LeakEvent::Repeated(repeated));
            }
        }
        t = younger;
    }
    if total > 0 {
        sink(&LeakEvent::Total(total));
    }
    total
}
