//! The C library's allocator: `libzend_alloc_preload.so` (this crate built with the `preload`
//! feature, see `preload/Cargo.toml`), for `LD_PRELOAD`. The semantics are [`crate::malloc`]'s; this
//! skin adds what is C's: the exported names (glibc's internal `__libc_*` ones too, which some
//! programs call), `errno` (`ENOMEM` on every failure, `EINVAL` for a bad alignment, kept by
//! `free`), `realloc(p, 0)` freeing, and glibc's statistics structs.

use core::ffi::{c_int, c_void};
use core::ptr;

use crate::malloc;
use crate::sizes::ZEND_MM_PAGE_SIZE;

fn set_errno(value: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = value };
}

fn errno() -> c_int {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// `p`, with `errno = ENOMEM` if it is null.
#[inline(always)]
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// Allocates `size` bytes.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    let p = malloc::alloc_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_slow(size)
}

#[cold]
#[inline(never)]
fn malloc_slow(size: usize) -> *mut c_void {
    or_enomem(malloc::alloc_slow(size))
}

/// Frees `p` (NULL: nothing); `errno` is kept.
///
/// # Safety
/// `p` is NULL or a live block of this allocator (or of the one before it); not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: caller contract.
    if unsafe { malloc::free_fast(p.cast()) } {
        return;
    }
    // The slow path may unmap memory, which may set errno.
    let saved = errno();
    // SAFETY: caller contract.
    unsafe { malloc::free_slow(p.cast()) };
    set_errno(saved);
}

/// `nmemb * size` zeroed bytes; NULL and `ENOMEM` on overflow.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        Some(total) => or_enomem(malloc::alloc_zeroed(total)),
        None => or_enomem(ptr::null_mut()),
    }
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
    // SAFETY: caller contract.
    or_enomem(unsafe { malloc::realloc(p.cast(), size) })
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
        None => or_enomem(ptr::null_mut()),
    }
}

/// `size` bytes aligned to `align`, rounded up to a power of two of at least 16 (glibc's leniency).
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.max(malloc::MIN_ALIGN).checked_next_power_of_two() {
        Some(align) => or_enomem(malloc::alloc_aligned(align, size)),
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
    let p = malloc::alloc_aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: caller contract.
    unsafe { *out = p.cast() };
    0
}

/// `size` bytes, page aligned.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    or_enomem(malloc::alloc_aligned(ZEND_MM_PAGE_SIZE, size))
}

/// `size` rounded up to whole pages (one page for 0), page aligned.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(ZEND_MM_PAGE_SIZE) {
        Some(size) => or_enomem(malloc::alloc_aligned(ZEND_MM_PAGE_SIZE, size)),
        None => or_enomem(ptr::null_mut()),
    }
}

/// Bytes usable at `p` (0 for NULL).
///
/// # Safety
/// `p` is NULL or a live block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: caller contract.
    unsafe { malloc::usable_size(p.cast()) }
}

/// Gives cached memory of the calling thread's heap and of exited threads' heaps back to the
/// system; 1 if any went back.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    let _ = pad;
    c_int::from(malloc::trim())
}

/// Accepted and ignored (glibc's tuning parameters do not apply); 1, success.
#[unsafe(no_mangle)]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    let _ = (param, value);
    1
}

/// glibc's statistics, from the calling thread's heap: `arena` bytes taken from the system,
/// `uordblks` handed out, `fordblks` the rest.
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> libc::mallinfo2 {
    let (real, used) = malloc::usage();
    // SAFETY: a plain C struct; all zeroes is valid.
    let mut m: libc::mallinfo2 = unsafe { core::mem::zeroed() };
    m.arena = real;
    m.uordblks = used;
    m.fordblks = real.saturating_sub(used);
    m
}

/// [`mallinfo2`] in `int`s (saturated).
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> libc::mallinfo {
    let (real, used) = malloc::usage();
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
    let (real, used) = malloc::usage();
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
