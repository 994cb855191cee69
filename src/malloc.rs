//! The C library's allocator semantics on the Zend heap, in Rust terms: what the preload library's
//! `malloc` family (`ffi::malloc`) and the Rust global allocator ([`crate::global_alloc`]) serve.
//!
//! Each thread allocates from its own heap, as `emalloc` does; no request ever ends. A block freed
//! by a thread that does not use its heap goes onto that heap's remote list (see `heap::remote`),
//! and a thread that exits with live blocks leaves its heap abandoned until they are freed or a
//! new thread takes it over (`runtime::retire`): the first use of this module switches the process
//! to these semantics.
//!
//! Blocks of 16 bytes and more are 16-aligned (the sizes are rounded up to bins whose slots are
//! 16-aligned); any power-of-two alignment up to a page comes from a bin whose slots are aligned
//! enough or whole pages. Failures return null (never PHP's fatal error). A pointer no heap owns
//! (made by the allocator this one stands in front of, or by it for an alignment above a page)
//! goes to that allocator: the next one in the symbol search order for the preload library, the C
//! library's for a Rust program.

use core::ptr;

use crate::diagnostics::{Call, Site};
use crate::heap::{Heap, api};
use crate::region_map::{self, Region};
use crate::runtime;
use crate::sizes::{BIN_SIZE, ZEND_MM_MAX_SMALL_SIZE, ZEND_MM_PAGE_SIZE, bin_of, is_small};

/// The alignment of blocks of 16 bytes and more (glibc's `MALLOC_ALIGNMENT` on x86-64).
pub(crate) const MIN_ALIGN: usize = 16;
/// The largest power-of-two bin: its slots, like those of every smaller power-of-two bin, start at
/// multiples of their size (runs are page aligned and these sizes divide the page).
const LARGEST_POW2_BIN: usize = 2048;

/// Every allocation may fail: null, never PHP's fatal error.
const SITE: Site = Site::new(ptr::null(), 0).may_fail();
// The calls errors are reported against: constants, so a free does not build one on its way.
const FREE: Call = Call::new("free", SITE);
const REALLOC: Call = Call::new("realloc", SITE);
const USABLE_SIZE: Call = Call::new("malloc_usable_size", SITE);

/// The size a request of `n` bytes is served with: 16-aligned blocks of 16 bytes or more (glibc's
/// smallest has 24 usable bytes). The 8-byte bin is not used: the fast paths leave it to the slow
/// ones (its slots have no room for the free mark beside their link).
#[inline(always)]
fn padded(n: usize) -> Option<usize> {
    if n <= MIN_ALIGN {
        Some(MIN_ALIGN)
    } else {
        n.checked_add(MIN_ALIGN - 1).map(|v| v & !(MIN_ALIGN - 1))
    }
}

/// The bin serving a small request of `n` bytes: the smallest whose size is at least `n` padded
/// (16-aligned bins from 16 bytes on), so the fast path needs no padding arithmetic.
const MALLOC_BINS: [u8; ZEND_MM_MAX_SMALL_SIZE + 1] = {
    let mut t = [0u8; ZEND_MM_MAX_SMALL_SIZE + 1];
    let mut n = 0;
    while n <= ZEND_MM_MAX_SMALL_SIZE {
        let want = if n <= MIN_ALIGN {
            MIN_ALIGN
        } else {
            (n + MIN_ALIGN - 1) & !(MIN_ALIGN - 1)
        };
        let mut bin = 0;
        while BIN_SIZE[bin] < want {
            bin += 1;
        }
        t[n] = bin as u8;
        n += 1;
    }
    t
};
const _: () = {
    // Every bin a padded request lands in has 16-aligned slots, and none is bin 0 (the fast path's
    // contract).
    let mut n = 0;
    while n <= ZEND_MM_MAX_SMALL_SIZE {
        assert!(BIN_SIZE[MALLOC_BINS[n] as usize] % MIN_ALIGN == 0 && MALLOC_BINS[n] != 0);
        n += 1;
    }
};

/// `n` bytes (16-aligned from 16 bytes on) from the calling thread's heap; null on failure.
#[inline(always)]
pub fn alloc(n: usize) -> *mut u8 {
    let p = alloc_fast(n);
    if !p.is_null() {
        return p;
    }
    alloc_slow(n)
}

/// A small block for `n` bytes if its bin has a free slot; null otherwise (not a failure).
#[inline(always)]
pub fn alloc_fast(n: usize) -> *mut u8 {
    // The bins above PHP's (the preload library's) take the slow path: one compare here, and those
    // blocks are rare beside the bytes a program writes into them.
    if n > ZEND_MM_MAX_SMALL_SIZE {
        return ptr::null_mut();
    }
    // SAFETY: the fast heap is this thread's live current heap or the sentinel; no entry of the
    // table is bin 0 (checked at compile time).
    unsafe { (*runtime::fast()).alloc_small_fast_in(MALLOC_BINS[n] as usize) }
}

/// Everything [`alloc_fast`] declines; null on failure.
#[cold]
#[inline(never)]
pub fn alloc_slow(n: usize) -> *mut u8 {
    let Some(size) = padded(n) else {
        return ptr::null_mut();
    };
    runtime::use_malloc_semantics();
    let heap = runtime::current_or_create(size, SITE);
    if heap.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: the thread's live heap, entered here.
    unsafe { api::emalloc(api::enter(heap), size, SITE) }
}

/// `n` zeroed bytes; null on failure.
pub fn alloc_zeroed(n: usize) -> *mut u8 {
    let p = alloc(n);
    if !p.is_null() {
        // SAFETY: the block of at least `n` bytes the thread's heap (the fast heap, after an
        // allocation) handed out last.
        unsafe { (*runtime::fast()).zero_new_block(p, n) };
    }
    p
}

/// The heap owning `p`, the region holding it, and the heap if it is the calling thread's (null
/// if not); `None` if no heap owns `p`.
fn owner(p: *const u8) -> Option<(region_map::Owner, Region, *mut Heap)> {
    let (owner, region) = region_map::owner_and_region(p.addr());
    if owner == 0 {
        return None;
    }
    let heap = runtime::current_or_own();
    // SAFETY: a non-null current heap is live.
    let mine = !heap.is_null() && unsafe { (*heap).is_id(owner) };
    Some((owner, region, if mine { heap } else { ptr::null_mut() }))
}

/// Frees `p` (null: nothing).
///
/// # Safety
/// `p` is null or a live block of this allocator (or of the one behind it); not used afterwards.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded caller contract.
    if unsafe { !free_fast(p) } {
        // SAFETY: as above.
        unsafe { free_slow(p) }
    }
}

/// Frees `p` if it is a small block of the calling thread's heap in one of its aligned segments
/// (the common case, which makes no system call); false otherwise, `p` untouched.
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub unsafe fn free_fast(p: *mut u8) -> bool {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    unsafe { (*runtime::fast()).free_small_fast(p) }
}

/// Everything [`free_fast`] declines.
///
/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
pub unsafe fn free_slow(p: *mut u8) {
    if p.is_null() {
        return;
    }
    // A large block of the thread's heap in an aligned segment: no region-map lookup.
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).free_large_fast(p) } {
        return;
    }
    match owner(p) {
        // SAFETY: not a block of any heap: the allocator behind this one made it.
        None => unsafe { foreign::free(p.cast()) },
        // SAFETY: the calling thread's live heap; the caller gives `p` up.
        Some((_, _, heap)) if !heap.is_null() => unsafe { api::efree(api::enter(heap), p, &FREE) },
        // SAFETY: a live block of another thread's heap, in `region`, given up by the caller.
        Some((owner, region, _)) => unsafe { Heap::free_remote_in(owner, region, p, &FREE) },
    }
}

/// Resizes `p` (non-null) to `n` bytes (non-zero); null on failure, `p` intact then.
///
/// # Safety
/// `p` is a live block; after a non-null result it is not used again.
pub unsafe fn realloc(p: *mut u8, n: usize) -> *mut u8 {
    let Some(size) = padded(n) else {
        return ptr::null_mut();
    };
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).realloc_in_place_fast(p, size) } {
        return p;
    }
    // SAFETY: forwarded caller contract.
    unsafe { realloc_slow(p, size) }
}

/// # Safety
/// As [`realloc`], with `size` padded.
#[cold]
#[inline(never)]
unsafe fn realloc_slow(p: *mut u8, size: usize) -> *mut u8 {
    match owner(p) {
        // SAFETY: the allocator behind this one made `p`.
        None => unsafe { foreign::realloc(p.cast(), size) }.cast(),
        // SAFETY: the calling thread's live heap; `p` is its block.
        Some((_, _, heap)) if !heap.is_null() => unsafe {
            api::erealloc(api::enter(heap), p, size, size, &REALLOC)
        },
        Some((owner, _, _)) => {
            let new = alloc(size);
            if !new.is_null() {
                // SAFETY: a live block of another thread's heap, given up by the caller; `new`
                // is a fresh block of `size` bytes.
                unsafe { Heap::move_from_remote(owner, p, new, size, &REALLOC) };
            }
            new
        }
    }
}

/// A block of `n` bytes aligned to `align` (a power of two); null on failure.
pub fn alloc_aligned(align: usize, n: usize) -> *mut u8 {
    if align <= MIN_ALIGN {
        return alloc(n.max(MIN_ALIGN));
    }
    if align > ZEND_MM_PAGE_SIZE {
        // Beyond what pages give: the allocator behind this one's, which `free` knows as foreign.
        return foreign::memalign(align, n).cast();
    }
    let size = n.max(MIN_ALIGN);
    runtime::use_malloc_semantics();
    let heap = runtime::current_or_create(size, SITE);
    if heap.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: the thread's live heap.
    if unsafe { (*heap).is_tracking() } {
        // A tracked block (`ZEND_MM_DEBUG=1`) starts after its header: 16-aligned only, whatever
        // its slot or pages. The allocator behind this one aligns it (untracked).
        return foreign::memalign(align, n).cast();
    }
    let want = n.max(align);
    if want <= LARGEST_POW2_BIN {
        // A power-of-two bin at least `align` wide: its slots are aligned to their size.
        return alloc(want.next_power_of_two());
    }
    if is_small(n) {
        // The bin `n` lands in, if its slots are aligned enough: they start at multiples of its
        // size in page-aligned runs (2560: 512, 3072 and 5120: 1024, 6144: 2048).
        let bin = if n <= ZEND_MM_MAX_SMALL_SIZE {
            MALLOC_BINS[n] as usize
        } else {
            bin_of(n.next_multiple_of(MIN_ALIGN))
        };
        let slot = BIN_SIZE[bin];
        if align <= slot & slot.wrapping_neg() {
            return alloc(n);
        }
    } else {
        // Whole pages, page aligned.
        return alloc(n);
    }
    // A run of whole pages all the same: the bin's slots are not aligned enough.
    // SAFETY: the thread's live heap, entered here.
    unsafe { api::emalloc_pages(api::enter(heap), size, SITE) }
}

/// Bytes usable at `p` (0 for null).
///
/// # Safety
/// `p` is null or a live block.
#[cfg_attr(not(feature = "preload"), allow(dead_code))] // the preload library's
pub unsafe fn usable_size(p: *mut u8) -> usize {
    if p.is_null() {
        return 0;
    }
    match owner(p) {
        // SAFETY: the allocator behind this one made `p`.
        None => unsafe { foreign::usable_size(p.cast()) },
        // SAFETY: the calling thread's live heap.
        // A tracking heap (ZEND_MM_DEBUG=1) answers the size asked for, as `zend_mem_block_size`.
        Some((_, _, heap)) if !heap.is_null() => unsafe {
            api::block_size(api::enter(heap), p, &USABLE_SIZE)
        },
        // SAFETY: a live block of another thread's heap (caller contract).
        Some((owner, _, _)) => unsafe { Heap::remote_usable_size(owner, p) }.unwrap_or(0),
    }
}

/// Gives cached memory of the calling thread's heap and of the heaps of exited threads back, and
/// hands their free pages back to the system (as glibc's `malloc_trim` does with free pages inside
/// its arenas); whether any went back. Heaps of other live threads are theirs alone: they give
/// back on their own slow paths.
#[cfg_attr(not(feature = "preload"), allow(dead_code))] // the preload library's
pub fn trim() -> bool {
    let abandoned = runtime::trim_abandoned();
    let heap = runtime::current_or_own();
    if heap.is_null() {
        return abandoned;
    }
    // SAFETY: the thread's live heap.
    let (given, handed_back) = unsafe { (*api::enter(heap)).trim() };
    given + handed_back > 0 || abandoned
}

/// The calling thread's heap: bytes taken from the system and bytes handed out.
#[cfg_attr(not(feature = "preload"), allow(dead_code))] // the preload library's
pub fn usage() -> (usize, usize) {
    let heap = runtime::current_or_own();
    if heap.is_null() {
        return (0, 0);
    }
    // SAFETY: the thread's live heap.
    unsafe {
        let h = &mut *api::enter(heap);
        h.collect_remote_frees();
        (h.usage(true), h.usage(false))
    }
}

/// The allocator behind this one, for pointers no heap owns.
#[cfg(feature = "preload")]
mod foreign {
    use core::ffi::{CStr, c_void};
    use core::ptr;
    use core::sync::atomic::{AtomicPtr, Ordering};

    /// The next allocator's function `name` (in the symbol search order after this library),
    /// looked up once.
    fn next(slot: &AtomicPtr<c_void>, name: &CStr) -> *mut c_void {
        let mut f = slot.load(Ordering::Acquire);
        if f.is_null() {
            // SAFETY: a symbol lookup; dlsym may allocate, which this allocator serves.
            f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
            slot.store(f, Ordering::Release);
        }
        f
    }

    static FREE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
    static REALLOC: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
    static USABLE_SIZE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
    static MEMALIGN: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

    /// # Safety
    /// `p` is a live block of the next allocator (leaked if there is none).
    pub unsafe fn free(p: *mut c_void) {
        let f = next(&FREE, c"free");
        if !f.is_null() {
            // SAFETY: the next allocator's `free`, for a pointer it made.
            unsafe { core::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void)>(f)(p) };
        }
    }

    /// # Safety
    /// `p` is a live block of the next allocator.
    pub unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
        let f = next(&REALLOC, c"realloc");
        if f.is_null() {
            return ptr::null_mut();
        }
        type Realloc = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
        // SAFETY: the next allocator's `realloc`, for a pointer it made.
        unsafe { core::mem::transmute::<*mut c_void, Realloc>(f)(p, size) }
    }

    /// # Safety
    /// `p` is a live block of the next allocator.
    #[cfg_attr(not(feature = "preload"), allow(dead_code))] // the preload library's
    pub unsafe fn usable_size(p: *mut c_void) -> usize {
        let f = next(&USABLE_SIZE, c"malloc_usable_size");
        if f.is_null() {
            return 0;
        }
        type UsableSize = unsafe extern "C" fn(*mut c_void) -> usize;
        // SAFETY: the next allocator's function, for a pointer it made.
        unsafe { core::mem::transmute::<*mut c_void, UsableSize>(f)(p) }
    }

    pub fn memalign(align: usize, size: usize) -> *mut c_void {
        let f = next(&MEMALIGN, c"memalign");
        if f.is_null() {
            return ptr::null_mut();
        }
        type Memalign = unsafe extern "C" fn(usize, usize) -> *mut c_void;
        // SAFETY: the next allocator's `memalign`.
        unsafe { core::mem::transmute::<*mut c_void, Memalign>(f)(align, size) }
    }
}

/// The allocator behind this one, for pointers no heap owns: the C library's.
#[cfg(not(feature = "preload"))]
mod foreign {
    use core::ffi::c_void;
    use core::ptr;

    /// # Safety
    /// `p` is a live block of the C library's allocator.
    pub unsafe fn free(p: *mut c_void) {
        // SAFETY: caller contract.
        unsafe { libc::free(p) }
    }

    /// # Safety
    /// `p` is a live block of the C library's allocator.
    pub unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
        // SAFETY: caller contract.
        unsafe { libc::realloc(p, size) }
    }

    /// # Safety
    /// `p` is a live block of the C library's allocator.
    pub unsafe fn usable_size(p: *mut c_void) -> usize {
        // SAFETY: caller contract.
        unsafe { libc::malloc_usable_size(p) }
    }

    pub fn memalign(align: usize, size: usize) -> *mut c_void {
        let mut p = ptr::null_mut();
        // SAFETY: a valid out-pointer; `align` is a power of two above a page.
        if unsafe { libc::posix_memalign(&mut p, align, size) } != 0 {
            return ptr::null_mut();
        }
        p
    }
}
