//! The C library's allocator, served by the Zend heap: `libzend_alloc_preload.so` (this crate built
//! with the `preload` feature, see `preload/Cargo.toml`), for `LD_PRELOAD`.
//!
//! Each thread allocates from its own heap, as `emalloc` does; no request ever ends. A block freed
//! by a thread that does not use its heap goes onto that heap's remote list (see `heap::remote`),
//! and a thread that exits with live blocks leaves its heap abandoned until they are freed or a
//! new thread takes it over (`runtime::retire`).
//!
//! glibc's semantics where PHP's differ: 16-byte alignment for requests of 16 bytes and more (the
//! sizes are rounded up to bins whose slots are 16-aligned), NULL with `errno = ENOMEM` on every
//! failure (never the fatal error), `realloc(p, 0)` frees and returns NULL, `free` keeps `errno`.
//! A pointer no heap owns (from the C library's allocator before this one took over, or from
//! `memalign` with an alignment above a page, which is forwarded there) goes to the next
//! allocator's function of the same name (`dlsym(RTLD_NEXT)`, resolved on first need).

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::diagnostics::Site;
use crate::heap::{Heap, api};
use crate::region_map;
use crate::runtime;
use crate::sizes::{ZEND_MM_MAX_SMALL_SIZE, ZEND_MM_PAGE_SIZE};

/// The alignment of blocks of 16 bytes and more (glibc's `MALLOC_ALIGNMENT` on x86-64).
const MIN_ALIGN: usize = 16;
/// The largest power-of-two bin: its slots, like those of every smaller power-of-two bin, start at
/// multiples of their size (runs are page aligned and these sizes divide the page).
const LARGEST_POW2_BIN: usize = 2048;
/// A request this large is served from whole pages (page aligned), whatever the bins.
const FIRST_LARGE: usize = ZEND_MM_MAX_SMALL_SIZE + 1;

/// Every allocation may fail: NULL and `ENOMEM`, never PHP's fatal error.
const SITE: Site = Site::new(ptr::null(), 0).may_fail();

fn set_errno(value: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = value };
}

fn errno() -> c_int {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// The size a request of `n` bytes is served with: 16-aligned blocks from 16 bytes on.
#[inline(always)]
fn padded(n: usize) -> Option<usize> {
    if n <= 8 {
        Some(8)
    } else {
        n.checked_add(MIN_ALIGN - 1).map(|v| v & !(MIN_ALIGN - 1))
    }
}

/// `size` bytes from the calling thread's heap; NULL and `ENOMEM` on failure.
#[inline(always)]
fn alloc(size: usize) -> *mut u8 {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    let p = unsafe { (*runtime::fast()).alloc_small_fast(size) };
    if !p.is_null() {
        return p;
    }
    alloc_slow(size)
}

#[cold]
#[inline(never)]
fn alloc_slow(size: usize) -> *mut u8 {
    let heap = runtime::current_or_create(size, SITE);
    let p = if heap.is_null() {
        ptr::null_mut()
    } else {
        // SAFETY: the thread's live heap, entered here.
        unsafe { api::emalloc(api::enter(heap), size, SITE) }
    };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// The heap owning `p` and whether it is the calling thread's; `None` if no heap owns it.
fn owner(p: *const u8) -> Option<(region_map::Owner, *mut Heap)> {
    let owner = region_map::owner_of(p.addr());
    if owner == 0 {
        return None;
    }
    let heap = runtime::current_or_own();
    // SAFETY: a non-null current heap is live.
    let mine = !heap.is_null() && unsafe { (*heap).is_id(owner) };
    Some((owner, if mine { heap } else { ptr::null_mut() }))
}

/// The next allocator's function `name`, looked up once.
fn next(slot: &AtomicPtr<c_void>, name: &core::ffi::CStr) -> *mut c_void {
    let mut f = slot.load(Ordering::Acquire);
    if f.is_null() {
        // SAFETY: a symbol lookup; dlsym may allocate, which this allocator serves.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        slot.store(f, Ordering::Release);
    }
    f
}

static NEXT_FREE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static NEXT_REALLOC: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static NEXT_USABLE_SIZE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static NEXT_MEMALIGN: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// Frees a block no heap owns through the next allocator (leaked if there is none).
fn free_foreign(p: *mut c_void) {
    let f = next(&NEXT_FREE, c"free");
    if !f.is_null() {
        // SAFETY: the next allocator's `free`, for a pointer it may have made.
        unsafe { core::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void)>(f)(p) };
    }
}

/// Allocates `size` bytes.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    match padded(size) {
        Some(size) => alloc(size).cast(),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Frees `p` (NULL: nothing); `errno` is kept.
///
/// # Safety
/// `p` is NULL or a live block of this allocator (or of the one before it); not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).free_small_fast(p.cast()) } {
        return;
    }
    // SAFETY: forwarded caller contract.
    unsafe { free_slow(p) }
}

/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
unsafe fn free_slow(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    let saved = errno();
    match owner(p.cast()) {
        None => free_foreign(p),
        // SAFETY: the calling thread's live heap; the caller gives `p` up.
        Some((_, heap)) if !heap.is_null() => unsafe {
            api::efree(api::enter(heap), p.cast(), SITE)
        },
        // SAFETY: a live block of another thread's heap, given up by the caller.
        Some((owner, _)) => unsafe { Heap::free_remote(owner, p.cast()) },
    }
    set_errno(saved);
}

/// `nmemb * size` zeroed bytes; NULL and `ENOMEM` on overflow.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    let Some(total) = nmemb.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let p = malloc(total);
    if !p.is_null() {
        // SAFETY: a fresh block of at least `total` bytes.
        unsafe { ptr::write_bytes(p.cast::<u8>(), 0, total) };
    }
    p
}

/// Resizes `p` to `size` bytes (glibc: NULL `p` allocates; size 0 frees and returns NULL). On
/// failure NULL, `ENOMEM`, and `p` intact.
///
/// # Safety
/// `p` is NULL or a live block; after a non-NULL result (or a size of 0) it is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: caller contract.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    let Some(padded) = padded(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).realloc_in_place_fast(p.cast(), padded) } {
        return p;
    }
    // SAFETY: forwarded caller contract.
    unsafe { realloc_slow(p, padded) }
}

/// # Safety
/// As [`realloc`], with `p` non-null and `size` padded.
#[cold]
#[inline(never)]
unsafe fn realloc_slow(p: *mut c_void, size: usize) -> *mut c_void {
    let new = match owner(p.cast()) {
        None => {
            let f = next(&NEXT_REALLOC, c"realloc");
            if f.is_null() {
                ptr::null_mut()
            } else {
                type Realloc = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
                // SAFETY: the next allocator's `realloc`, for a pointer it made.
                return unsafe { core::mem::transmute::<*mut c_void, Realloc>(f)(p, size) };
            }
        }
        // SAFETY: the calling thread's live heap; `p` is its block.
        Some((_, heap)) if !heap.is_null() => unsafe {
            api::erealloc(api::enter(heap), p.cast(), size, size, SITE)
        },
        Some((owner, _)) => {
            // SAFETY: a live block of another thread's heap (caller contract).
            let usable = unsafe { Heap::remote_usable_size(owner, p.cast()) }.unwrap_or(0);
            let new = alloc(size);
            if !new.is_null() {
                // SAFETY: distinct live blocks, each at least this long.
                unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), new, usable.min(size)) };
                // SAFETY: the caller gives the old block up.
                unsafe { Heap::free_remote(owner, p.cast()) };
            }
            new
        }
    };
    if new.is_null() {
        set_errno(libc::ENOMEM);
    }
    new.cast()
}

/// `realloc(p, nmemb * size)`, NULL and `ENOMEM` on overflow.
///
/// # Safety
/// As [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        // SAFETY: caller contract.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// A block of `size` bytes aligned to `align` (a power of two).
fn alloc_aligned(align: usize, size: usize) -> *mut c_void {
    if align <= MIN_ALIGN {
        return malloc(size.max(MIN_ALIGN));
    }
    if align > ZEND_MM_PAGE_SIZE {
        // Beyond what pages give: the next allocator's, which `free` recognises as foreign.
        let f = next(&NEXT_MEMALIGN, c"memalign");
        if f.is_null() {
            set_errno(libc::ENOMEM);
            return ptr::null_mut();
        }
        type Memalign = unsafe extern "C" fn(usize, usize) -> *mut c_void;
        // SAFETY: the next allocator's `memalign`.
        return unsafe { core::mem::transmute::<*mut c_void, Memalign>(f)(align, size) };
    }
    let want = size.max(align);
    if want <= LARGEST_POW2_BIN {
        // A power-of-two bin at least `align` wide: its slots are aligned to their size.
        return malloc(want.next_power_of_two());
    }
    // Whole pages, page aligned.
    malloc(size.max(FIRST_LARGE))
}

/// The alignment glibc's `memalign` uses for `align`: at least 16, rounded up to a power of two.
fn lenient(align: usize) -> Option<usize> {
    align.max(MIN_ALIGN).checked_next_power_of_two()
}

/// `size` bytes aligned to `align` (rounded up to a power of two, as glibc does).
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match lenient(align) {
        Some(align) => alloc_aligned(align, size),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// C11's `aligned_alloc`, as lenient as glibc's.
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

/// Stores `size` bytes aligned to `align` at `*out`: `EINVAL` unless `align` is a power of two
/// and a multiple of `sizeof(void *)` (`*out` untouched), `ENOMEM` if there is no memory.
///
/// # Safety
/// `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = alloc_aligned(align, size);
    set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: caller contract.
    unsafe { *out = p };
    0
}

/// `size` bytes, page aligned.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_aligned(ZEND_MM_PAGE_SIZE, size)
}

/// `size` rounded up to whole pages (one page for 0), page aligned.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(ZEND_MM_PAGE_SIZE) {
        Some(size) => alloc_aligned(ZEND_MM_PAGE_SIZE, size),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Bytes usable at `p` (0 for NULL).
///
/// # Safety
/// `p` is NULL or a live block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    match owner(p.cast()) {
        None => {
            let f = next(&NEXT_USABLE_SIZE, c"malloc_usable_size");
            if f.is_null() {
                return 0;
            }
            type UsableSize = unsafe extern "C" fn(*mut c_void) -> usize;
            // SAFETY: the next allocator's function, for a pointer it made.
            unsafe { core::mem::transmute::<*mut c_void, UsableSize>(f)(p) }
        }
        // SAFETY: the calling thread's live heap.
        Some((_, heap)) if !heap.is_null() => unsafe { (*api::enter(heap)).block_size(p.cast()) },
        // SAFETY: a live block of another thread's heap (caller contract).
        Some((owner, _)) => unsafe { Heap::remote_usable_size(owner, p.cast()) }.unwrap_or(0),
    }
}

/// Gives cached memory of the calling thread's heap back to the system; 1 if any went back.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    let _ = pad;
    let heap = runtime::current_or_own();
    if heap.is_null() {
        return 0;
    }
    // SAFETY: the thread's live heap.
    c_int::from(unsafe { (*api::enter(heap)).gc() } > 0)
}

/// Accepted and ignored (glibc's tuning parameters do not apply); 1, success.
#[unsafe(no_mangle)]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    let _ = (param, value);
    1
}

/// The calling thread's heap in glibc's terms: `arena` bytes taken from the system, `uordblks`
/// handed out, `fordblks` the rest.
fn info() -> (usize, usize) {
    let heap = runtime::current_or_own();
    if heap.is_null() {
        return (0, 0);
    }
    // SAFETY: the thread's live heap.
    unsafe {
        let h = &mut *api::enter(heap);
        h.settle();
        (h.usage(true), h.usage(false))
    }
}

/// glibc's statistics, from the calling thread's heap.
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> libc::mallinfo2 {
    let (real, used) = info();
    // SAFETY: a plain C struct; all zeroes is valid.
    let mut m: libc::mallinfo2 = unsafe { core::mem::zeroed() };
    m.arena = real;
    m.uordblks = used;
    m.fordblks = real.saturating_sub(used);
    m
}

/// glibc's statistics in `int`s (saturated).
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> libc::mallinfo {
    let (real, used) = info();
    let int = |v: usize| c_int::try_from(v).unwrap_or(c_int::MAX);
    // SAFETY: a plain C struct; all zeroes is valid.
    let mut m: libc::mallinfo = unsafe { core::mem::zeroed() };
    m.arena = int(real);
    m.uordblks = int(used);
    m.fordblks = int(real.saturating_sub(used));
    m
}

/// Prints the calling thread's heap's numbers to stderr.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    let (real, used) = info();
    let mut buf = crate::diagnostics::MsgBuf::<160>::new();
    let _ = core::fmt::Write::write_fmt(
        &mut buf,
        format_args!(
            "zend_alloc: this thread's heap: {used} bytes in use, {real} from the system\n"
        ),
    );
    // SAFETY: writes the formatted bytes to stderr.
    unsafe { libc::write(2, buf.as_bytes().as_ptr().cast(), buf.as_bytes().len()) };
}

// The C library's internal names and old aliases: some programs call them directly, and a block
// they make must be one `free` knows.

#[unsafe(no_mangle)]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc(size)
}

/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: caller contract.
    unsafe { free(p) }
}

/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: caller contract.
    unsafe { free(p) }
}

/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_cfree(p: *mut c_void) {
    // SAFETY: caller contract.
    unsafe { free(p) }
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_calloc(nmemb: usize, size: usize) -> *mut c_void {
    calloc(nmemb, size)
}

/// # Safety
/// As [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: caller contract.
    unsafe { realloc(p, size) }
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    valloc(size)
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc(size)
}

/// # Safety
/// As [`posix_memalign`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __posix_memalign(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    // SAFETY: caller contract.
    unsafe { posix_memalign(out, align, size) }
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_mallinfo() -> libc::mallinfo {
    mallinfo()
}

#[unsafe(no_mangle)]
pub extern "C" fn __libc_mallopt(param: c_int, value: c_int) -> c_int {
    mallopt(param, value)
}
