//! Persistent allocation: the C library's heap, with PHP's failure handling (`pemalloc(…, 1)` and
//! friends). A failed allocation prints "Out of memory" and exits with status 1, as PHP's
//! `zend_out_of_memory()` does; a size overflow is the usual fatal error.

use core::ffi::{c_char, c_void};

use super::{raise_on_current, safe_address};
use crate::diagnostics::{self, Fatal, Site};

/// Where persistent allocations report errors from: PHP gives these functions no file/line.
const PERSISTENT: Site = Site::new(core::ptr::null(), 0);

fn non_null(p: *mut c_void) -> *mut c_void {
    if p.is_null() {
        diagnostics::persistent_out_of_memory();
    }
    p
}

/// `malloc(len)`, or "Out of memory" and exit(1).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE(1)
#[unsafe(no_mangle)]
pub extern "C" fn __zend_malloc(len: usize) -> *mut c_void {
    // SAFETY: plain libc allocation.
    non_null(unsafe { libc::malloc(len) })
}

/// `calloc(nmemb, len)` with an overflow check, or "Out of memory" and exit(1).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE2(1, 2)
#[unsafe(no_mangle)]
pub extern "C" fn __zend_calloc(nmemb: usize, len: usize) -> *mut c_void {
    safe_address(nmemb, len, 0, PERSISTENT);
    // SAFETY: plain libc allocation.
    non_null(unsafe { libc::calloc(nmemb, len) })
}

/// `realloc(p, len)`, or "Out of memory" and exit(1) (a NULL result for `len` 0 is a free).
///
/// # Safety
/// `p` must be NULL or a live block of the C library's heap.
/// cbindgen:postfix=ZEND_ATTRIBUTE_ALLOC_SIZE(2)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __zend_realloc(p: *mut c_void, len: usize) -> *mut c_void {
    // SAFETY: `p` is NULL or from the C library (caller contract).
    let q = unsafe { libc::realloc(p, len) };
    if len == 0 { q } else { non_null(q) }
}

/// `strdup(s)`, or "Out of memory" and exit(1).
///
/// # Safety
/// `s` must be a NUL-terminated string (NULL is a fatal error).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __zend_strdup(s: *const c_char) -> *mut c_char {
    if s.is_null() {
        raise_on_current(
            PERSISTENT,
            Fatal::NullString {
                function: "pestrdup",
            },
        );
    }
    // SAFETY: `s` is a C string (caller contract).
    non_null(unsafe { libc::strdup(s) }.cast()).cast()
}

/// Copies `length` bytes of `s` plus a NUL into the C library's heap.
///
/// # Safety
/// `s` must have `length` readable bytes (NULL only with `length` 0).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_strndup(s: *const c_char, length: usize) -> *mut c_char {
    if s.is_null() && length != 0 {
        raise_on_current(
            PERSISTENT,
            Fatal::NullString {
                function: "zend_strndup",
            },
        );
    }
    let total = safe_address(1, length, 1, PERSISTENT);
    let p = __zend_malloc(total).cast::<u8>();
    // SAFETY: `p` has `length + 1` bytes; `s` has `length` readable bytes.
    unsafe {
        if length != 0 {
            core::ptr::copy_nonoverlapping(s.cast::<u8>(), p, length);
        }
        *p.add(length) = 0;
    }
    p.cast()
}

/// `malloc(nmemb * size + offset)` with an overflow check, or "Out of memory" and exit(1).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC
#[unsafe(no_mangle)]
pub extern "C" fn _safe_malloc(nmemb: usize, size: usize, offset: usize) -> *mut c_void {
    __zend_malloc(safe_address(nmemb, size, offset, PERSISTENT))
}

/// `realloc(ptr, nmemb * size + offset)` with an overflow check, or "Out of memory" and exit(1).
///
/// # Safety
/// `ptr` must be NULL or a live block of the C library's heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _safe_realloc(
    ptr: *mut c_void,
    nmemb: usize,
    size: usize,
    offset: usize,
) -> *mut c_void {
    let total = safe_address(nmemb, size, offset, PERSISTENT);
    // SAFETY: forwarded caller contract.
    unsafe { __zend_realloc(ptr, total) }
}
