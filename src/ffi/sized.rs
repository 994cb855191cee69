//! Size-specialised entry points, two families per small bin:
//!
//! - `_emalloc_8` … `_emalloc_3072`, `_emalloc_large`, `_emalloc_huge`, `_efree_8` … `_efree_3072`,
//!   `_efree_large`, `_efree_huge`: PHP 8 release builds' entry points. PHP's release
//!   `zend_alloc.h` turns `emalloc(sizeof(x))` and `efree_size(p, sizeof(x))` into these calls when
//!   the size is a compile-time constant, so an engine built against PHP 8's header links to them
//!   directly. They take no location parameters (release ABI).
//! - `_emalloc_at_8(size, file, line)` … and `_efree_at_8(ptr, file, line)` …: what this library's
//!   own header calls for constant sizes (`__builtin_constant_p`), with the caller's location as
//!   every other entry point takes it and the exact size, so the debug mode names the site of these
//!   blocks and guards their exact ends too.
//!
//! Each one is the general entry point with the size fixed: the bin's size is an immediate, and the
//! free checks that the block is a slot of that bin (PHP's `_efree_N` trusts the caller's size; a
//! wrong size here goes to the general free, which frees or reports the block by what it is).
//!
//! The C header declares them in `cbindgen.toml` (they are made by a macro cbindgen cannot see);
//! `c_tests/check_symbols.sh` keeps the two lists equal.

use core::ffi::{c_char, c_void};
use core::ptr;

use super::alloc::{_efree, _emalloc, emalloc_slow};
use crate::runtime;
use crate::sizes::BIN_SIZE;

/// `emalloc(size)` for a size whose bin is known, called from `file`:`line`: the fast path pops
/// the bin's free list with no bin lookup. `size` is what the caller asked for (what the debug
/// mode tracks and guards); one above the bin's size goes to the general path.
#[inline(always)]
fn emalloc_bin(bin: usize, size: usize, file: *const c_char, line: u32) -> *mut c_void {
    if size <= BIN_SIZE[bin] {
        // SAFETY: the fast heap is this thread's live current heap or the sentinel.
        let p = unsafe { (*runtime::fast()).alloc_bin_fast(bin) };
        if !p.is_null() {
            return p.cast();
        }
    }
    emalloc_slow(size, file, line, ptr::null(), 0)
}

/// `efree` of a block the caller says is of `bin`, called from `file`:`line`: the fast path checks
/// that it is (a block of another bin, or no block, goes to `_efree`, which frees or reports it
/// by what it is).
///
/// # Safety
/// As `_efree`.
#[inline(always)]
unsafe fn efree_bin(ptr: *mut c_void, bin: usize, file: *const c_char, line: u32) {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).free_bin_fast(ptr.cast(), bin) } {
        return;
    }
    // SAFETY: forwarded caller contract.
    unsafe { efree_other(ptr, file, line) }
}

/// What [`efree_bin`]'s fast path declines, out of line so the fast path needs no stack frame.
///
/// # Safety
/// As `_efree`.
#[cold]
#[inline(never)]
unsafe fn efree_other(ptr: *mut c_void, file: *const c_char, line: u32) {
    // SAFETY: forwarded caller contract.
    unsafe { _efree(ptr, file, line, ptr::null(), 0) }
}

/// Defines `_emalloc_<size>`, `_efree_<size>`, `_emalloc_at_<size>` and `_efree_at_<size>` for
/// each bin, in bin order, and checks the sizes against the bin table.
macro_rules! sized_entry_points {
    ($(($bin:expr, $size:literal, $alloc:ident, $free:ident, $alloc_at:ident, $free_at:ident)),* $(,)?) => {
        $(
            const _: () = assert!(BIN_SIZE[$bin] == $size);

            #[doc = concat!("`emalloc(", stringify!($size), ")` for PHP 8 release builds.")]
            #[unsafe(no_mangle)]
            pub extern "C" fn $alloc() -> *mut c_void {
                emalloc_bin($bin, $size, ptr::null(), 0)
            }

            #[doc = concat!("`efree` of a block of `", stringify!($size), "` bytes for PHP 8 release builds.")]
            ///
            /// # Safety
            /// `ptr` must not be used after this call.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $free(ptr: *mut c_void) {
                // SAFETY: caller contract, as for `_efree`.
                unsafe { efree_bin(ptr, $bin, ptr::null(), 0) }
            }

            #[doc = concat!("`emalloc(size)` for a constant `size` of at most ", stringify!($size), " bytes (and above the")]
            /// next smaller bin's), called from `file`:`line`; a larger `size` is served as by
            /// `_emalloc`.
            #[unsafe(no_mangle)]
            pub extern "C" fn $alloc_at(size: usize, file: *const c_char, line: u32) -> *mut c_void {
                emalloc_bin($bin, size, file, line)
            }

            #[doc = concat!("`efree_size(ptr, ", stringify!($size), ")` called from `file`:`line`.")]
            ///
            /// # Safety
            /// `ptr` must not be used after this call; `file` is null or a C string.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $free_at(ptr: *mut c_void, file: *const c_char, line: u32) {
                // SAFETY: caller contract, as for `_efree`.
                unsafe { efree_bin(ptr, $bin, file, line) }
            }
        )*
        const _: () = assert!([$($size),*].len() == crate::sizes::ZEND_MM_BINS);
    };
}

sized_entry_points!(
    (0, 8, _emalloc_8, _efree_8, _emalloc_at_8, _efree_at_8),
    (1, 16, _emalloc_16, _efree_16, _emalloc_at_16, _efree_at_16),
    (2, 24, _emalloc_24, _efree_24, _emalloc_at_24, _efree_at_24),
    (3, 32, _emalloc_32, _efree_32, _emalloc_at_32, _efree_at_32),
    (4, 40, _emalloc_40, _efree_40, _emalloc_at_40, _efree_at_40),
    (5, 48, _emalloc_48, _efree_48, _emalloc_at_48, _efree_at_48),
    (6, 56, _emalloc_56, _efree_56, _emalloc_at_56, _efree_at_56),
    (7, 64, _emalloc_64, _efree_64, _emalloc_at_64, _efree_at_64),
    (8, 80, _emalloc_80, _efree_80, _emalloc_at_80, _efree_at_80),
    (9, 96, _emalloc_96, _efree_96, _emalloc_at_96, _efree_at_96),
    (
        10,
        112,
        _emalloc_112,
        _efree_112,
        _emalloc_at_112,
        _efree_at_112
    ),
    (
        11,
        128,
        _emalloc_128,
        _efree_128,
        _emalloc_at_128,
        _efree_at_128
    ),
    (
        12,
        160,
        _emalloc_160,
        _efree_160,
        _emalloc_at_160,
        _efree_at_160
    ),
    (
        13,
        192,
        _emalloc_192,
        _efree_192,
        _emalloc_at_192,
        _efree_at_192
    ),
    (
        14,
        224,
        _emalloc_224,
        _efree_224,
        _emalloc_at_224,
        _efree_at_224
    ),
    (
        15,
        256,
        _emalloc_256,
        _efree_256,
        _emalloc_at_256,
        _efree_at_256
    ),
    (
        16,
        320,
        _emalloc_320,
        _efree_320,
        _emalloc_at_320,
        _efree_at_320
    ),
    (
        17,
        384,
        _emalloc_384,
        _efree_384,
        _emalloc_at_384,
        _efree_at_384
    ),
    (
        18,
        448,
        _emalloc_448,
        _efree_448,
        _emalloc_at_448,
        _efree_at_448
    ),
    (
        19,
        512,
        _emalloc_512,
        _efree_512,
        _emalloc_at_512,
        _efree_at_512
    ),
    (
        20,
        640,
        _emalloc_640,
        _efree_640,
        _emalloc_at_640,
        _efree_at_640
    ),
    (
        21,
        768,
        _emalloc_768,
        _efree_768,
        _emalloc_at_768,
        _efree_at_768
    ),
    (
        22,
        896,
        _emalloc_896,
        _efree_896,
        _emalloc_at_896,
        _efree_at_896
    ),
    (
        23,
        1024,
        _emalloc_1024,
        _efree_1024,
        _emalloc_at_1024,
        _efree_at_1024
    ),
    (
        24,
        1280,
        _emalloc_1280,
        _efree_1280,
        _emalloc_at_1280,
        _efree_at_1280
    ),
    (
        25,
        1536,
        _emalloc_1536,
        _efree_1536,
        _emalloc_at_1536,
        _efree_at_1536
    ),
    (
        26,
        1792,
        _emalloc_1792,
        _efree_1792,
        _emalloc_at_1792,
        _efree_at_1792
    ),
    (
        27,
        2048,
        _emalloc_2048,
        _efree_2048,
        _emalloc_at_2048,
        _efree_at_2048
    ),
    (
        28,
        2560,
        _emalloc_2560,
        _efree_2560,
        _emalloc_at_2560,
        _efree_at_2560
    ),
    (
        29,
        3072,
        _emalloc_3072,
        _efree_3072,
        _emalloc_at_3072,
        _efree_at_3072
    ),
);

/// `emalloc(size)` for a constant size above 3072 bytes, for PHP 8 release builds (the header
/// of this library maps `_emalloc_large` to `_emalloc`, as PHP's debug builds do).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE(1)
#[unsafe(no_mangle)]
pub extern "C" fn _emalloc_large(size: usize) -> *mut c_void {
    _emalloc(size, ptr::null(), 0, ptr::null(), 0)
}

/// `emalloc(size)` for a constant size above 2 MiB - 4 KiB, for PHP 8 release builds.
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE(1)
#[unsafe(no_mangle)]
pub extern "C" fn _emalloc_huge(size: usize) -> *mut c_void {
    _emalloc(size, ptr::null(), 0, ptr::null(), 0)
}

/// `efree_size(ptr, size)` of a large block, for PHP 8 release builds; `size` is not needed.
///
/// # Safety
/// `ptr` must not be used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _efree_large(ptr: *mut c_void, size: usize) {
    let _ = size;
    // SAFETY: caller contract, as for `_efree`.
    unsafe { _efree(ptr, ptr::null(), 0, ptr::null(), 0) }
}

/// `efree_size(ptr, size)` of a huge block, for PHP 8 release builds; `size` is not needed.
///
/// # Safety
/// `ptr` must not be used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _efree_huge(ptr: *mut c_void, size: usize) {
    let _ = size;
    // SAFETY: caller contract, as for `_efree`.
    unsafe { _efree(ptr, ptr::null(), 0, ptr::null(), 0) }
}
