//! The storage layer: where segments come from (PHP 5.3's `zend_mm_mem_handlers`).
//!
//! Owns the storage handle the heap talks to ([`Storage`]: a table of Rust functions and the
//! storage's own state), the header every storage allocation starts with ([`SegmentHeader`], C's
//! `zend_mm_segment`), and the built-in storages `malloc`, `mmap_anon` and `mmap_zero`, written
//! against the [`SegmentSource`] trait so a test (or Miri) can plug in a storage of its own the same
//! way. A storage written in C (`zend_mm_startup_ex`) is a [`StorageOps`] table in `ffi` that
//! forwards to its C handlers: this layer never calls a C function table.
//!
//! Invariants: the heap's size (what it asked for) is in the header of every allocation it hands
//! back to `realloc`/`free` ([`Storage`] writes it); every allocation is at least
//! [`STORAGE_ALIGN`]-aligned (checked: a storage that breaks it ends the process with a message); a
//! storage is closed only after its last allocation went back to it.

mod malloc;
mod mmap;

use core::ffi::{CStr, c_void};
use core::ptr;

use crate::diagnostics;
use crate::os;
use crate::sizes::{STORAGE_ALIGN, ZEND_MM_PAGE_SIZE};

/// The header at the start of every storage allocation (`struct _zend_mm_segment`, PHP 5.3's
/// layout): the size the heap asked for, which storages read when they free or resize, and an
/// unused link.
#[repr(C)]
pub struct SegmentHeader {
    pub size: usize,
    pub next_segment: *mut SegmentHeader,
}

/// A storage allocation as a segment or huge block holds it: the header storages read, and the
/// allocation's address with the provenance of all of it (a pointer derived from the holder's
/// `&self` covers only the holder's struct).
#[repr(C)]
pub struct Allocation {
    header: SegmentHeader,
    base: *mut u8,
}

impl Allocation {
    /// The allocation of `size` bytes at `base`, fresh from [`Storage::alloc`].
    pub fn new(base: *mut u8, size: usize) -> Allocation {
        Allocation {
            header: SegmentHeader {
                size,
                next_segment: ptr::null_mut(),
            },
            base,
        }
    }

    /// The start: what the storage returned.
    #[inline(always)]
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Bytes taken from the storage.
    #[inline(always)]
    pub fn size(&self) -> usize {
        self.header.size
    }

    /// One past the last byte.
    pub fn end(&self) -> usize {
        self.base.addr() + self.header.size
    }

    /// Records that the storage resized the allocation (and maybe moved it) to `size` bytes at
    /// `base`.
    pub fn moved(&mut self, base: *mut u8, size: usize) {
        self.base = base;
        self.header.size = size;
    }
}

/// A source of segments, implemented by the built-in storage managers.
///
/// All methods are associated functions: a storage manager is process-wide state (a libc heap, an
/// open `/dev/zero`), as in PHP.
pub trait SegmentSource {
    /// The name `ZEND_MM_MEM_TYPE` selects this storage by.
    const NAME: &'static CStr;
    /// Whether [`SegmentSource::realloc`] of a block that is not a segment moves its pages
    /// without copying them (see [`StorageOps::resize_keeps_pages`]).
    const RESIZE_KEEPS_PAGES: bool = false;
    /// Whether an allocation of `size` bytes may be a piece of a huge block's allocation cut into
    /// page-aligned pieces (each then freed, resized or discarded on its own), or the join of
    /// pieces that meet in memory (see [`StorageOps::splits`]). `None`: never.
    const SPLITS: Option<fn(size: usize) -> bool> = None;
    /// Whether a fresh allocation of `size` bytes reads as zeros (see [`StorageOps::fresh_zeroed`]).
    fn fresh_zeroed(size: usize) -> bool {
        let _ = size;
        false
    }
    /// This source as the heap calls it.
    const OPS: StorageOps = StorageOps {
        name: source_name::<Self>,
        open: Self::open,
        close: source_close::<Self>,
        compact: source_compact::<Self>,
        alloc: source_alloc::<Self>,
        realloc: Some(source_realloc::<Self>),
        free: source_free::<Self>,
        discard: source_discard::<Self>,
        resize_keeps_pages: Self::RESIZE_KEEPS_PAGES,
        splits: Self::SPLITS,
        fresh_zeroed: Self::fresh_zeroed,
        moves_pages: Self::moves_pages,
        move_pages: source_move_pages::<Self>,
    };
    /// Prepares the storage for one more heap; false if it cannot be used.
    fn open() -> bool {
        true
    }
    /// Undoes one [`SegmentSource::open`].
    fn close() {}
    /// `size` bytes, at least 16-byte aligned, or null.
    fn alloc(size: usize) -> *mut u8;
    /// Resizes `p` (allocated with `old_size` bytes) to `new_size`, moving it if needed; null on
    /// failure with `p` untouched.
    ///
    /// # Safety
    /// `p` must come from this source's `alloc`/`realloc` with `old_size` bytes and not be freed.
    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8;
    /// Returns `p`.
    ///
    /// # Safety
    /// `p` must come from this source's `alloc`/`realloc` with `size` bytes and not be freed.
    unsafe fn free(p: *mut u8, size: usize);
    /// Gives cached memory back to the system.
    fn compact() {}
    /// Hands the whole pages of `p + keep..p + len` back to the system, if the source can: the
    /// heap no longer needs their contents (the dead tail of a huge block, a segment's free
    /// pages). Nothing by default.
    ///
    /// # Safety
    /// `p` must be a live allocation of this source at least `len` bytes long whose bytes in
    /// `keep..len` nobody needs.
    unsafe fn discard(p: *mut u8, keep: usize, len: usize) {
        let _ = (p, keep, len);
    }
    /// Whether [`SegmentSource::move_pages`] can move pages on this system (see
    /// [`StorageOps::moves_pages`]); never by default.
    fn moves_pages() -> bool {
        false
    }
    /// Moves the pages of `from..from + len` onto `to..to + len`, as [`StorageOps::move_pages`]
    /// says; false (nothing changed) by default.
    ///
    /// # Safety
    /// As [`StorageOps::move_pages`].
    unsafe fn move_pages(from: *mut u8, len: usize, to: *mut u8, whole: bool) -> bool {
        let _ = (from, len, to, whole);
        false
    }
}

/// A storage's operations. `instance` is the storage's own state: null for the built-ins, the C
/// storage struct for one written in C.
pub struct StorageOps {
    /// The storage's name (for messages).
    pub name: unsafe fn(instance: *mut c_void) -> &'static CStr,
    /// Prepares one more use of a built-in storage; false if it cannot be used. (A C storage is
    /// opened by its own `init` before its handle exists.)
    pub open: fn() -> bool,
    /// Ends one use; after the last allocation went back.
    pub close: unsafe fn(instance: *mut c_void),
    /// Gives cached memory back to the system.
    pub compact: unsafe fn(instance: *mut c_void),
    /// `size` bytes (at least 16-aligned) or null.
    pub alloc: unsafe fn(instance: *mut c_void, size: usize) -> *mut u8,
    /// Resizes a live allocation whose header holds its current size, moving it if needed; null on
    /// failure, the allocation intact. `None`: the heap allocates, copies and frees instead.
    pub realloc: Option<unsafe fn(instance: *mut c_void, p: *mut u8, size: usize) -> *mut u8>,
    /// Returns a live allocation whose header holds its size.
    pub free: unsafe fn(instance: *mut c_void, p: *mut u8),
    /// Hands the pages of a live allocation from `keep` up to `len` back to the system, or does
    /// nothing (see [`SegmentSource::discard`]).
    pub discard: unsafe fn(instance: *mut c_void, p: *mut u8, keep: usize, len: usize),
    /// `realloc` of a block that is not a segment (a huge block) moves or extends its pages
    /// without copying them (`mremap`): growing a block whose contents are dead then costs only
    /// the new pages.
    pub resize_keeps_pages: bool,
    /// Whether an allocation of a size may be cut into page-aligned pieces that are then freed,
    /// resized and discarded on their own, or be the join of pieces that meet in memory (private
    /// mappings:
    /// `munmap`, `madvise` and `mremap` take any page range; a resize of a joined piece the kernel
    /// refuses is answered as any refused resize). Lets the huge-block cache serve a smaller
    /// request from a bigger freed block and keep the rest for the next one, as mimalloc reuses the
    /// rest of a span.
    pub splits: Option<fn(size: usize) -> bool>,
    /// Whether a fresh allocation of `size` bytes reads as zeros (fresh private mappings do): a
    /// zeroed block made of such memory (`calloc`) is not written, so its pages are not faulted
    /// in before the program touches them.
    pub fresh_zeroed: fn(size: usize) -> bool,
    /// Whether `move_pages` can move pages here (asked once, when a heap opens the storage): only
    /// storages whose allocations split may say yes.
    pub moves_pages: fn() -> bool,
    /// Moves the whole pages of `from..from + len`, all of one allocation (`whole`) or its tail,
    /// onto `to..to + len` inside another live allocation, replacing what was there, without
    /// copying or faulting them in (`mremap` onto a fixed address). After it, the source range
    /// belongs to no allocation: a whole allocation is gone (the storage gave back whatever of it
    /// stays), a tail's allocation is shorter by `len` (its header then says the new size: the
    /// caller's business). False: refused, nothing changed. Lets the heap give memory one kind of
    /// cache holds (emptied segments, freed huge blocks) to the other kind, resident, instead of
    /// keeping the one and faulting fresh pages in for the other.
    pub move_pages: unsafe fn(
        instance: *mut c_void,
        from: *mut u8,
        len: usize,
        to: *mut u8,
        whole: bool,
    ) -> bool,
}

impl StorageOps {
    /// Whether a heap opening this storage may move pages with it: only a storage whose
    /// allocations split, and only if its `moves_pages` says so on this system.
    fn moves_pages_here(&self) -> bool {
        self.splits.is_some() && (self.moves_pages)()
    }
}

fn source_name<S: SegmentSource + ?Sized>(_: *mut c_void) -> &'static CStr {
    S::NAME
}

fn source_close<S: SegmentSource + ?Sized>(_: *mut c_void) {
    S::close()
}

fn source_compact<S: SegmentSource + ?Sized>(_: *mut c_void) {
    S::compact()
}

fn source_alloc<S: SegmentSource + ?Sized>(_: *mut c_void, size: usize) -> *mut u8 {
    S::alloc(size)
}

/// # Safety
/// `p` must be a live allocation of `S` whose header holds its size.
unsafe fn source_realloc<S: SegmentSource + ?Sized>(
    _: *mut c_void,
    p: *mut u8,
    size: usize,
) -> *mut u8 {
    // SAFETY: the heap keeps the allocated size in the header (module invariant).
    let old_size = unsafe { (*p.cast::<SegmentHeader>()).size };
    // SAFETY: `p` was allocated by `S` with `old_size` bytes (caller contract).
    unsafe { S::realloc(p, old_size, size) }
}

/// # Safety
/// `p` must be a live allocation of `S` whose header holds its size.
unsafe fn source_free<S: SegmentSource + ?Sized>(_: *mut c_void, p: *mut u8) {
    // SAFETY: the heap keeps the allocated size in the header (module invariant).
    let size = unsafe { (*p.cast::<SegmentHeader>()).size };
    // SAFETY: `p` was allocated by `S` with `size` bytes (caller contract).
    unsafe { S::free(p, size) }
}

/// # Safety
/// As [`SegmentSource::discard`].
unsafe fn source_discard<S: SegmentSource + ?Sized>(
    _: *mut c_void,
    p: *mut u8,
    keep: usize,
    len: usize,
) {
    // SAFETY: forwarded caller contract.
    unsafe { S::discard(p, keep, len) }
}

/// # Safety
/// As [`StorageOps::move_pages`].
unsafe fn source_move_pages<S: SegmentSource + ?Sized>(
    _: *mut c_void,
    from: *mut u8,
    len: usize,
    to: *mut u8,
    whole: bool,
) -> bool {
    // SAFETY: forwarded caller contract.
    unsafe { S::move_pages(from, len, to, whole) }
}

/// Alignment the built-in storages give a block of `size` bytes: segments (sizes that are powers of
/// two) are aligned to their size, so that `p & !(size - 1)` finds a block's segment; anything else
/// (huge blocks) to a page.
pub fn alignment_for(size: usize) -> usize {
    if size.is_power_of_two() && size >= ZEND_MM_PAGE_SIZE {
        size
    } else {
        ZEND_MM_PAGE_SIZE
    }
}

/// The built-in storages in `ZEND_MM_MEM_TYPE` order; the first is the default.
pub static BUILTIN: [&StorageOps; 3] = [
    &<malloc::MallocStorage as SegmentSource>::OPS,
    &<mmap::MmapAnon as SegmentSource>::OPS,
    &<mmap::MmapZero as SegmentSource>::OPS,
];

/// The name of a built-in storage.
pub fn builtin_name(ops: &StorageOps) -> &'static CStr {
    // SAFETY: built-ins ignore their instance.
    unsafe { (ops.name)(ptr::null_mut()) }
}

/// The built-in storage called `name`, if any.
pub fn builtin_by_name(name: &[u8]) -> Option<&'static StorageOps> {
    BUILTIN
        .iter()
        .copied()
        .find(|ops| builtin_name(ops).to_bytes() == name)
}

/// The heap's handle on its storage.
#[derive(Clone, Copy)]
pub struct Storage {
    ops: &'static StorageOps,
    instance: *mut c_void,
    /// Advise transparent huge pages on what a built-in storage gives out.
    huge_pages: bool,
    /// What the storage's `moves_pages` said when it was opened.
    moves_pages: bool,
}

/// What the sentinel heap's storage does: nothing (it is never asked).
const NO_OPS: StorageOps = StorageOps {
    name: |_| c"none",
    open: || false,
    close: |_| {},
    compact: |_| {},
    alloc: |_, _| ptr::null_mut(),
    realloc: None,
    free: |_, _| {},
    discard: |_, _, _, _| {},
    resize_keeps_pages: false,
    splits: None,
    fresh_zeroed: |_| false,
    moves_pages: || false,
    move_pages: |_, _, _, _, _| false,
};

impl Storage {
    /// No storage (the sentinel heap's).
    pub const NONE: Storage = Storage {
        ops: &NO_OPS,
        instance: ptr::null_mut(),
        huge_pages: false,
        moves_pages: false,
    };

    /// Opens a built-in storage (or a test's [`SegmentSource`]) for one heap; `None` if it cannot
    /// be used. With `huge_pages`, what it gives out is advised for transparent huge pages (PHP 8
    /// does the same for the chunks it maps itself, never for a user storage's memory).
    pub fn open_builtin(ops: &'static StorageOps, huge_pages: bool) -> Option<Storage> {
        (ops.open)().then_some(Storage {
            ops,
            instance: ptr::null_mut(),
            huge_pages,
            moves_pages: ops.moves_pages_here(),
        })
    }

    /// A storage opened elsewhere (a C storage's `init`), with `ops` that know its `instance`.
    ///
    /// # Safety
    /// `instance` must be what `ops` expect, live until [`Storage::close`].
    pub unsafe fn from_instance(ops: &'static StorageOps, instance: *mut c_void) -> Storage {
        Storage {
            ops,
            instance,
            huge_pages: false,
            moves_pages: ops.moves_pages_here(),
        }
    }

    pub fn ops(self) -> &'static StorageOps {
        self.ops
    }

    pub fn instance(self) -> *mut c_void {
        self.instance
    }

    /// The storage's name.
    pub fn name(self) -> &'static CStr {
        // SAFETY: `instance` is what the ops expect (constructor contracts).
        unsafe { (self.ops.name)(self.instance) }
    }

    /// Ends the process with a message if the storage returned memory that is not aligned as the
    /// storage API promises (the heap's headers and the region map rely on it).
    fn check_alignment(self, p: *mut u8) {
        if p.addr() % STORAGE_ALIGN != 0 {
            diagnostics::startup_error(format_args!(
                "zend_mm storage [{}] returned {:p}, which is not {}-byte aligned\n",
                self.name().to_str().unwrap_or("?"),
                p,
                STORAGE_ALIGN
            ));
        }
    }

    /// What the storage just gave out (`size` bytes at `p`): checked, advised, headed.
    fn received(self, p: *mut u8, size: usize) -> *mut u8 {
        if !p.is_null() {
            self.check_alignment(p);
            if self.huge_pages {
                os::advise_huge_pages(p, size);
            }
            // SAFETY: a storage returns at least `size` (>= 16) writable bytes.
            unsafe {
                p.cast::<SegmentHeader>().write(SegmentHeader {
                    size,
                    next_segment: ptr::null_mut(),
                })
            };
        }
        p
    }

    /// Asks the storage for `size` bytes; writes the header on success.
    pub fn alloc(self, size: usize) -> *mut u8 {
        // SAFETY: the storage's own operation on its own instance.
        let p = unsafe { (self.ops.alloc)(self.instance, size) };
        self.received(p, size)
    }

    /// Resizes an allocation (without a `realloc` operation: allocate, copy, free). Null on
    /// failure, the old allocation intact.
    ///
    /// # Safety
    /// `p` must be a live allocation of this storage whose header holds its size.
    pub unsafe fn realloc(self, p: *mut u8, new_size: usize) -> *mut u8 {
        let new = match self.ops.realloc {
            // SAFETY: `p` is a live allocation of this storage (caller contract).
            Some(realloc) => unsafe { realloc(self.instance, p, new_size) },
            None => {
                let new = self.alloc(new_size);
                if !new.is_null() {
                    // SAFETY: both blocks are live and at least min(old, new) bytes long.
                    unsafe {
                        let old_size = (*p.cast::<SegmentHeader>()).size;
                        ptr::copy_nonoverlapping(p, new, old_size.min(new_size));
                        self.free(p);
                    }
                }
                new
            }
        };
        self.received(new, new_size)
    }

    /// Returns an allocation to the storage.
    ///
    /// # Safety
    /// `p` must be a live allocation of this storage whose header holds its size; it is gone after.
    pub unsafe fn free(self, p: *mut u8) {
        // SAFETY: `p` is a live allocation of this storage (caller contract).
        unsafe { (self.ops.free)(self.instance, p) }
    }

    /// Lets the storage take back the pages of `p + keep..p + len` (whole pages only); their
    /// contents are lost.
    ///
    /// # Safety
    /// `p` must be a live allocation of this storage at least `len` bytes long whose bytes in
    /// `keep..len` nobody needs.
    pub unsafe fn discard(self, p: *mut u8, keep: usize, len: usize) {
        // SAFETY: forwarded caller contract.
        unsafe { (self.ops.discard)(self.instance, p, keep, len) }
    }

    /// Whether allocations of this storage are ever split or joined (see [`StorageOps::splits`]).
    pub fn may_split(self) -> bool {
        self.ops.splits.is_some()
    }

    /// Whether an allocation of `size` bytes may be a piece of a split or a join (see
    /// [`StorageOps::splits`]).
    pub fn splits(self, size: usize) -> bool {
        self.ops.splits.is_some_and(|splits| splits(size))
    }

    /// Whether resizing a huge block moves its pages without copying them.
    pub fn resize_keeps_pages(self) -> bool {
        self.ops.resize_keeps_pages && self.ops.realloc.is_some()
    }

    /// Whether a fresh allocation of `size` bytes reads as zeros.
    pub fn fresh_zeroed(self, size: usize) -> bool {
        (self.ops.fresh_zeroed)(size)
    }

    /// Whether the storage moves pages between allocations (see [`StorageOps::move_pages`]).
    pub fn moves_pages(self) -> bool {
        self.moves_pages
    }

    /// Moves the pages of `from..from + len` onto `to..to + len` (see [`StorageOps::move_pages`]);
    /// false if the storage cannot or refused, nothing changed.
    ///
    /// # Safety
    /// `from..from + len` must be a whole live allocation of this storage (`whole`) or its tail,
    /// whose contents nobody needs and which nothing uses after a move; `to..to + len` must lie
    /// inside another live allocation of this storage whose bytes there nobody needs; both page
    /// aligned.
    pub unsafe fn move_pages(self, from: *mut u8, len: usize, to: *mut u8, whole: bool) -> bool {
        // SAFETY: forwarded caller contract.
        self.moves_pages && unsafe { (self.ops.move_pages)(self.instance, from, len, to, whole) }
    }

    /// Lets the storage give cached memory back to the system.
    pub fn compact(self) {
        // SAFETY: the storage's own operation on its own instance.
        unsafe { (self.ops.compact)(self.instance) }
    }

    /// Ends this use of the storage (after its last allocation went back).
    ///
    /// # Safety
    /// No allocation of this storage may be live, and the handle must not be used afterwards.
    pub unsafe fn close(self) {
        // SAFETY: the storage is no longer used (caller contract).
        unsafe { (self.ops.close)(self.instance) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(ops: &'static StorageOps) -> Storage {
        Storage::open_builtin(ops, false).expect("built-ins open")
    }

    #[test]
    fn builtins_are_found_by_exact_name() {
        assert!(builtin_by_name(b"malloc").is_some());
        assert!(builtin_by_name(b"mmap_anon").is_some());
        assert!(builtin_by_name(b"mmap_zero").is_some());
        assert!(builtin_by_name(b"mmap").is_none());
        assert!(builtin_by_name(b"MALLOC").is_none());
        assert_eq!(open(BUILTIN[0]).name(), c"malloc");
    }

    #[test]
    #[cfg_attr(miri, ignore = "needs mmap and libc")]
    fn every_builtin_allocates_grows_shrinks_and_frees() {
        for h in BUILTIN {
            let s = open(h);
            let p = s.alloc(3 * 4096);
            assert!(!p.is_null(), "{:?}", s.name());
            assert_eq!(p as usize % 16, 0);
            // SAFETY: 3 pages were just allocated.
            unsafe {
                p.add(100).write(7);
                p.add(3 * 4096 - 1).write(9);
                let q = s.realloc(p, 64 * 4096);
                assert!(!q.is_null());
                assert_eq!(q.add(100).read(), 7);
                assert_eq!(q.add(3 * 4096 - 1).read(), 9);
                q.add(64 * 4096 - 1).write(1);
                let r = s.realloc(q, 2 * 4096);
                assert!(!r.is_null());
                assert_eq!(r.add(100).read(), 7);
                s.free(r);
                s.close();
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "needs mmap and libc")]
    fn builtins_align_segments_to_their_size() {
        for h in BUILTIN {
            let s = open(h);
            let p = s.alloc(2 << 20);
            assert_eq!(p as usize % (2 << 20), 0);
            // SAFETY: live segment of this storage.
            unsafe { s.free(p) };
            let p = s.alloc(256 << 10);
            assert_eq!(p as usize % (256 << 10), 0);
            // SAFETY: live segment of this storage.
            unsafe { s.free(p) };
            let p = s.alloc(3 << 20);
            assert_eq!(p as usize % 4096, 0, "other sizes are page aligned");
            // SAFETY: live segment of this storage.
            unsafe { s.free(p) };
            s.compact();
            // SAFETY: nothing of the storage is live.
            unsafe { s.close() };
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "needs mmap and libc")]
    fn mmap_storages_give_zeroed_memory() {
        for h in [BUILTIN[1], BUILTIN[2]] {
            let s = open(h);
            let p = s.alloc(2 << 20);
            // SAFETY: live segment of this storage.
            unsafe {
                assert_eq!(p.add(4096).read(), 0, "fresh mappings are zeroed");
                s.free(p);
                s.close();
            }
        }
    }
}
