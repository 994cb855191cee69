//! The storage layer: where segments come from (PHP 5.3's `zend_mm_mem_handlers`).
//!
//! Owns the built-in storage managers and the [`Storage`] handle the heap talks to. Every storage —
//! built-in or supplied by C through `zend_mm_startup_ex` — is a PHP handler table; the built-ins
//! are written against the [`SegmentSource`] trait and turned into handler tables by
//! [`handlers_for`], so a test (or Miri) can plug in a storage of its own the same way.
//!
//! Invariants: the heap writes `zend_mm_segment.size` (the size it asked for) into every segment it
//! gets before handing it back to `_realloc`/`_free`; a storage is destroyed (`dtor`) only after its
//! last segment went back to it.

mod malloc;
mod mmap;

use core::ffi::{CStr, c_void};
use core::ptr;

use crate::ffi::types::{zend_mm_mem_handlers, zend_mm_segment, zend_mm_storage};

/// A source of segments, implemented by the built-in storage managers.
///
/// All methods are associated functions: a storage manager is process-wide state (a libc heap, an
/// open `/dev/zero`), as in PHP.
pub trait SegmentSource {
    /// The name `ZEND_MM_MEM_TYPE` selects this storage by.
    const NAME: &'static CStr;
    /// The storage instance `init` returns.
    fn instance() -> *mut zend_mm_storage;
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
}

/// Alignment the built-in storages give a block of `size` bytes: segments (sizes that are powers of
/// two) are aligned to their size, so that `p & !(size - 1)` finds a block's segment; anything else
/// (huge blocks) to a page.
pub fn alignment_for(size: usize) -> usize {
    if size.is_power_of_two() && size >= crate::sizes::ZEND_MM_PAGE_SIZE {
        size
    } else {
        crate::sizes::ZEND_MM_PAGE_SIZE
    }
}

/// The PHP handler table for a [`SegmentSource`].
pub const fn handlers_for<S: SegmentSource>() -> zend_mm_mem_handlers {
    zend_mm_mem_handlers {
        name: S::NAME.as_ptr(),
        init: Some(init_tramp::<S>),
        dtor: Some(dtor_tramp::<S>),
        compact: Some(compact_tramp::<S>),
        _alloc: Some(alloc_tramp::<S>),
        _realloc: Some(realloc_tramp::<S>),
        _free: Some(free_tramp::<S>),
    }
}

unsafe extern "C" fn init_tramp<S: SegmentSource>(_params: *mut c_void) -> *mut zend_mm_storage {
    if S::open() {
        S::instance()
    } else {
        ptr::null_mut()
    }
}

unsafe extern "C" fn dtor_tramp<S: SegmentSource>(_storage: *mut zend_mm_storage) {
    S::close();
}

unsafe extern "C" fn compact_tramp<S: SegmentSource>(_storage: *mut zend_mm_storage) {
    S::compact();
}

unsafe extern "C" fn alloc_tramp<S: SegmentSource>(
    _storage: *mut zend_mm_storage,
    size: usize,
) -> *mut zend_mm_segment {
    let p = S::alloc(size);
    advise_huge_pages(p, size);
    p.cast()
}

/// # Safety
/// `segment` must be a live segment of this storage whose header holds its size.
unsafe extern "C" fn realloc_tramp<S: SegmentSource>(
    _storage: *mut zend_mm_storage,
    segment: *mut zend_mm_segment,
    size: usize,
) -> *mut zend_mm_segment {
    // SAFETY: the heap keeps the allocated size in the segment header (module invariant).
    let old_size = unsafe { (*segment).size };
    // SAFETY: `segment` was allocated by `S` with `old_size` bytes (caller contract).
    let p = unsafe { S::realloc(segment.cast(), old_size, size) };
    advise_huge_pages(p, size);
    p.cast()
}

/// # Safety
/// `segment` must be a live segment of this storage whose header holds its size.
unsafe extern "C" fn free_tramp<S: SegmentSource>(
    _storage: *mut zend_mm_storage,
    segment: *mut zend_mm_segment,
) {
    // SAFETY: the heap keeps the allocated size in the segment header (module invariant).
    let size = unsafe { (*segment).size };
    // SAFETY: `segment` was allocated by `S` with `size` bytes (caller contract).
    unsafe { S::free(segment.cast(), size) }
}

/// A `zend_mm_storage` that lives in a static and may be handed to C as `*mut`.
#[repr(transparent)]
pub struct StaticStorage(core::cell::UnsafeCell<zend_mm_storage>);

// SAFETY: the library never writes a built-in storage instance after initialisation; C code that
// writes one through `zend_mm_get_storage` takes the responsibility PHP gives it.
unsafe impl Sync for StaticStorage {}

impl StaticStorage {
    pub const fn new(handlers: &'static zend_mm_mem_handlers) -> Self {
        StaticStorage(core::cell::UnsafeCell::new(zend_mm_storage {
            handlers,
            data: ptr::null_mut(),
        }))
    }

    pub fn get(&'static self) -> *mut zend_mm_storage {
        self.0.get()
    }
}

/// The built-in storage managers in `ZEND_MM_MEM_TYPE` order; the first is the default.
pub static BUILTIN: [&zend_mm_mem_handlers; 3] = [
    &malloc::HANDLERS,
    &mmap::ANON_HANDLERS,
    &mmap::ZERO_HANDLERS,
];

/// The built-in storage called `name`, if any.
pub fn builtin_by_name(name: &[u8]) -> Option<&'static zend_mm_mem_handlers> {
    BUILTIN.iter().copied().find(|h| {
        // SAFETY: built-in handler names are static C strings.
        unsafe { CStr::from_ptr(h.name) }.to_bytes() == name
    })
}

/// The heap's handle on its storage: a `zend_mm_storage` and the handler table behind it.
///
/// Every call goes through PHP's handler table, so user storages and built-ins behave alike.
#[derive(Clone, Copy)]
pub struct Storage {
    raw: *mut zend_mm_storage,
}

impl Storage {
    /// No storage (the sentinel heap's).
    pub const NONE: Storage = Storage {
        raw: ptr::null_mut(),
    };

    /// Wraps a storage returned by `handlers.init`.
    ///
    /// # Safety
    /// `raw` must be a live storage whose handler table has non-null `_alloc` and `_free`.
    pub unsafe fn from_raw(raw: *mut zend_mm_storage) -> Storage {
        Storage { raw }
    }

    pub fn raw(self) -> *mut zend_mm_storage {
        self.raw
    }

    fn handlers(self) -> &'static zend_mm_mem_handlers {
        // SAFETY: `raw` is live and its handler table outlives it (from_raw contract).
        unsafe { &*(*self.raw).handlers }
    }

    /// The storage's name as given by its handler table.
    pub fn name(self) -> &'static CStr {
        let name = self.handlers().name;
        if name.is_null() {
            c"(unnamed)"
        } else {
            // SAFETY: a non-null handler name is a C string that lives as long as the table.
            unsafe { CStr::from_ptr(name) }
        }
    }

    /// Ends the process with a message if the storage returned memory that is not aligned as the
    /// storage API promises (the heap's headers and the region map rely on it).
    fn check_alignment(self, p: *mut zend_mm_segment) {
        if p as usize % crate::region_map::REGION_ALIGN != 0 {
            crate::diagnostics::startup_error(format_args!(
                "zend_mm storage [{}] returned {:p}, which is not {}-byte aligned\n",
                self.name().to_str().unwrap_or("?"),
                p,
                crate::region_map::REGION_ALIGN
            ));
        }
    }

    /// Asks the storage for `size` bytes; writes the segment header on success.
    pub fn alloc(self, size: usize) -> *mut u8 {
        let Some(alloc) = self.handlers()._alloc else {
            return ptr::null_mut();
        };
        // SAFETY: calling the storage's own allocation handler with its own instance.
        let seg = unsafe { alloc(self.raw, size) };
        if !seg.is_null() {
            self.check_alignment(seg);
            // SAFETY: a storage returns at least `size` (>= 16) writable bytes.
            unsafe {
                (*seg).size = size;
                (*seg).next_segment = ptr::null_mut();
            }
        }
        seg.cast()
    }

    /// Resizes a segment through `_realloc`; without one (a user storage may leave it NULL) the
    /// heap falls back to alloc + copy + free. Null on failure, the old segment intact.
    ///
    /// # Safety
    /// `p` must be a live segment of this storage whose header holds its size.
    pub unsafe fn realloc(self, p: *mut u8, new_size: usize) -> *mut u8 {
        let seg: *mut zend_mm_segment = p.cast();
        let new = match self.handlers()._realloc {
            // SAFETY: `p` is a live segment of this storage (caller contract).
            Some(realloc) => unsafe { realloc(self.raw, seg, new_size) },
            None => {
                let new: *mut zend_mm_segment = self.alloc(new_size).cast();
                if !new.is_null() {
                    // SAFETY: both blocks are live and at least min(old, new) bytes long.
                    unsafe {
                        let old_size = (*seg).size;
                        ptr::copy_nonoverlapping(p, new.cast(), old_size.min(new_size));
                        self.free(p);
                    }
                }
                new
            }
        };
        if !new.is_null() {
            self.check_alignment(new);
            // SAFETY: `new` is a live segment of `new_size` bytes.
            unsafe { (*new).size = new_size };
        }
        new.cast()
    }

    /// Returns a segment to the storage.
    ///
    /// # Safety
    /// `p` must be a live segment of this storage whose header holds its size; it is gone after.
    pub unsafe fn free(self, p: *mut u8) {
        if let Some(free) = self.handlers()._free {
            // SAFETY: `p` is a live segment of this storage (caller contract).
            unsafe { free(self.raw, p.cast()) }
        }
    }

    /// Lets the storage give cached memory back to the system.
    pub fn compact(self) {
        if let Some(compact) = self.handlers().compact {
            // SAFETY: calling the storage's own handler with its own instance.
            unsafe { compact(self.raw) }
        }
    }

    /// Destroys the storage instance (after its last segment was freed).
    ///
    /// # Safety
    /// No segment of this storage may be live, and the storage must not be used afterwards.
    pub unsafe fn destroy(self) {
        if let Some(dtor) = self.handlers().dtor {
            // SAFETY: the storage is no longer used (caller contract).
            unsafe { dtor(self.raw) }
        }
    }
}

/// With `USE_ZEND_ALLOC_HUGE_PAGES`, asks the kernel to back the whole pages of a block a built-in
/// storage just gave out with transparent huge pages. PHP 8 does the same for the chunks it maps
/// itself, never for a user storage's memory, hence here and not in [`Storage::alloc`]. A hint:
/// failure (no THP in the kernel) changes nothing.
fn advise_huge_pages(p: *mut u8, size: usize) {
    if p.is_null() || !crate::options::get().huge_pages {
        return;
    }
    let page = crate::sizes::ZEND_MM_PAGE_SIZE;
    let start = p.addr().next_multiple_of(page);
    let end = (p.addr() + size) & !(page - 1);
    if end > start {
        // SAFETY: the range lies inside a live segment the storage just gave this heap; madvise
        // with MADV_HUGEPAGE changes no contents.
        unsafe {
            libc::madvise(p.with_addr(start).cast(), end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(h: &zend_mm_mem_handlers) -> Storage {
        // SAFETY: built-in init handlers take no parameters.
        let raw = unsafe { h.init.unwrap()(ptr::null_mut()) };
        assert!(!raw.is_null());
        // SAFETY: built-in tables have every handler.
        unsafe { Storage::from_raw(raw) }
    }

    #[test]
    fn builtins_are_found_by_exact_name() {
        assert!(builtin_by_name(b"malloc").is_some());
        assert!(builtin_by_name(b"mmap_anon").is_some());
        assert!(builtin_by_name(b"mmap_zero").is_some());
        assert!(builtin_by_name(b"mmap").is_none());
        assert!(builtin_by_name(b"MALLOC").is_none());
        // SAFETY: static C string.
        assert_eq!(unsafe { CStr::from_ptr(BUILTIN[0].name) }, c"malloc");
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
                s.destroy();
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
            unsafe { s.destroy() };
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "needs mmap and libc")]
    fn mmap_storages_give_zeroed_memory() {
        for h in [&mmap::ANON_HANDLERS, &mmap::ZERO_HANDLERS] {
            let s = open(h);
            let p = s.alloc(2 << 20);
            // SAFETY: live segment of this storage.
            unsafe {
                assert_eq!(p.add(4096).read(), 0, "fresh mappings are zeroed");
                s.free(p);
                s.destroy();
            }
        }
    }
}
