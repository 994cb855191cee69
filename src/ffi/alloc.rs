//! `_emalloc`, `_efree`, `_erealloc` & co.: request memory from the calling thread's current heap.

use core::ffi::{c_char, c_int, c_void};
use core::ptr;

use super::{raise_on_current, safe_address, site};
use crate::diagnostics::{Call, Fatal, Site};
use crate::heap::{Heap, api};
use crate::region_map::{self, Region};
use crate::runtime;
use crate::sizes::BIN_SIZE;

/// The current heap, made if the thread has none, entered from the calling frame.
#[inline(always)]
fn heap_for(size: usize, site: Site) -> *mut Heap {
    let heap = runtime::current_or_create(size, site);
    // SAFETY: a live heap, used by this thread only while it is current.
    unsafe { api::enter(heap) }
}

/// The current heap (the thread's own one after `zend_mm_set_heap(NULL)`) for `call`'s operation
/// on an existing block, entered from the calling frame. A thread without a heap gets its own
/// first: with `USE_ZEND_ALLOC=0` that heap hands the block to the C library (any thread may free
/// another's `malloc` block), and otherwise it reports the block as no heap's, as any heap would.
#[inline(always)]
fn heap_of_block(call: &Call) -> *mut Heap {
    let mut heap = runtime::current_or_own();
    if heap.is_null() {
        heap = runtime::current_or_create(0, call.site);
    }
    // SAFETY: a live heap, used by this thread only while it is current.
    unsafe { api::enter(heap) }
}

/// Allocates `size` bytes from the current request heap; never returns NULL (the memory limit and
/// out-of-memory end in a fatal error). `emalloc(0)` returns a valid 8-byte block.
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE(1)
#[unsafe(no_mangle)]
pub extern "C" fn _emalloc(
    size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    emalloc_from(
        size,
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    )
}

/// `_emalloc` without the original caller's location: what the `emalloc()` macro calls, so a call
/// site passes three arguments, not five (the location is a relayed caller's only in the `_rel`
/// forms, which call `_emalloc`).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE(1)
#[unsafe(no_mangle)]
pub extern "C" fn _emalloc_at(
    size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
) -> *mut c_void {
    emalloc_from(size, __zend_filename, __zend_lineno, ptr::null(), 0)
}

/// The body of `_emalloc` and `_emalloc_at`: the fast path, else the slow one.
#[inline(always)]
fn emalloc_from(
    size: usize,
    file: *const c_char,
    line: u32,
    orig_file: *const c_char,
    orig_line: u32,
) -> *mut c_void {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    let p = unsafe { (*runtime::fast()).alloc_small_fast(size) };
    if !p.is_null() {
        return p.cast();
    }
    emalloc_slow(size, file, line, orig_file, orig_line)
}

/// Everything `_emalloc`'s fast path declines: making the heap, refilling a bin, large and huge
/// blocks, custom handlers, errors.
#[cold]
#[inline(never)]
pub(super) fn emalloc_slow(
    size: usize,
    file: *const c_char,
    line: u32,
    orig_file: *const c_char,
    orig_line: u32,
) -> *mut c_void {
    // The 8-byte bin, which the fast path leaves out (its slots' free mark is in their link).
    if size <= BIN_SIZE[0] {
        // SAFETY: the fast heap is this thread's live current heap or the sentinel.
        let p = unsafe { (*runtime::fast()).alloc_bin_fast(0) };
        if !p.is_null() {
            return p.cast();
        }
    }
    emalloc_other(size, file, line, orig_file, orig_line)
}

/// What [`emalloc_slow`] does not serve at once, out of line so that the 8-byte bin's pop builds
/// no stack frame.
#[cold]
#[inline(never)]
fn emalloc_other(
    size: usize,
    file: *const c_char,
    line: u32,
    orig_file: *const c_char,
    orig_line: u32,
) -> *mut c_void {
    let site = site(file, line, orig_file, orig_line);
    // SAFETY: the current heap, not borrowed here.
    unsafe { api::emalloc(heap_for(size, site), size, site) }.cast()
}

/// Allocates `nmemb * size + offset` bytes; a product or sum that does not fit is a fatal error
/// ("Possible integer overflow in memory allocation").
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC
#[unsafe(no_mangle)]
pub extern "C" fn _safe_emalloc(
    nmemb: usize,
    size: usize,
    offset: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    let total = safe_address(nmemb, size, offset, site);
    // SAFETY: the current heap, not borrowed here.
    unsafe { api::emalloc(heap_for(total, site), total, site) }.cast()
}

/// Frees a block of the current heap. NULL is a no-op; a pointer the heap does not own ends with
/// "zend_mm_heap corrupted" and abort().
///
/// # Safety
/// `ptr` must not be used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _efree(
    ptr: *mut c_void,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) {
    efree_from(
        ptr,
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
}

/// `_efree` without the original caller's location: what the `efree()` macro calls.
///
/// # Safety
/// As `_efree`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _efree_at(
    ptr: *mut c_void,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
) {
    efree_from(ptr, __zend_filename, __zend_lineno, ptr::null(), 0);
}

/// The body of `_efree` and `_efree_at`: the fast path, else the slow one.
#[inline(always)]
fn efree_from(
    ptr: *mut c_void,
    file: *const c_char,
    line: u32,
    orig_file: *const c_char,
    orig_line: u32,
) {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).free_small_fast(ptr.cast()) } {
        return;
    }
    efree_slow(ptr, file, line, orig_file, orig_line);
}

/// Everything `_efree`'s fast path declines: NULL, large and huge blocks, unaligned segments,
/// custom handlers, and every pointer that is not a block of the current heap.
#[cold]
#[inline(never)]
fn efree_slow(
    ptr: *mut c_void,
    file: *const c_char,
    line: u32,
    orig_file: *const c_char,
    orig_line: u32,
) {
    if ptr.is_null() {
        return;
    }
    // Large blocks and the 8-byte bin's (left out of the fast path) of the thread's heap.
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).free_large_or_narrow_fast(ptr.cast()) } {
        return;
    }
    efree_other(ptr, file, line, orig_file, orig_line)
}

/// What [`efree_slow`] does not free at once, out of line so that its quick cases build no stack
/// frame: other heaps' blocks, custom handlers, tracked blocks, errors.
#[cold]
#[inline(never)]
fn efree_other(
    ptr: *mut c_void,
    file: *const c_char,
    line: u32,
    orig_file: *const c_char,
    orig_line: u32,
) {
    let call = Call::new("efree", site(file, line, orig_file, orig_line));
    if let Some((owner, region)) = other_heaps_block(ptr.cast()) {
        // SAFETY: the caller gives up a live block of `owner`'s, in `region`.
        return unsafe { Heap::free_remote_in(owner, region, ptr.cast(), &call) };
    }
    // SAFETY: the current heap, not borrowed here; the caller gives `ptr` up.
    unsafe { api::efree(heap_of_block(&call), ptr.cast(), &call) }
}

/// The thread heap that `p` belongs to, and `p`'s region, if the calling thread is not using that
/// heap (another thread's own heap, most likely): such a block is freed or resized through that
/// heap's remote lists. Not while the current heap forwards to custom handlers, which get every
/// call.
fn other_heaps_block(p: *const u8) -> Option<(region_map::Owner, Region)> {
    let heap = runtime::current_or_own();
    // SAFETY: a non-null current heap is live.
    if !heap.is_null() && unsafe { (*heap).in_fast_segment(p) } {
        return None; // the common case, told without the region map
    }
    let (owner, region) = region_map::owner_and_region(p.addr());
    if owner == 0 {
        return None;
    }
    // SAFETY: a non-null current heap is live; the owner of a registered region is a live heap.
    let elsewhere = heap.is_null() || unsafe { !(*heap).is_id(owner) && !(*heap).is_custom() };
    // SAFETY: as above.
    (elsewhere && unsafe { Heap::takes_remote_frees(owner) }).then_some((owner, region))
}

/// Allocates `nmemb * size` zeroed bytes (overflow is a fatal error).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC ZEND_ATTRIBUTE_ALLOC_SIZE2(1, 2)
#[unsafe(no_mangle)]
pub extern "C" fn _ecalloc(
    nmemb: usize,
    size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    let total = safe_address(nmemb, size, 0, site);
    let heap = heap_for(total, site);
    // SAFETY: the current heap, not borrowed here.
    let p = unsafe { api::emalloc(heap, total, site) };
    if !p.is_null() {
        // SAFETY: `p` is the block of at least `total` bytes the heap handed out last.
        unsafe { (*heap).zero_new_block(p, total) };
    }
    p.cast()
}

/// Resizes `ptr` to `size` bytes, keeping its contents up to the smaller size. NULL `ptr` allocates.
/// With `allow_failure` non-zero (`erealloc_recoverable`) a failure returns NULL and leaves `ptr`
/// intact instead of raising a fatal error.
///
/// # Safety
/// `ptr` must be NULL or a live block of the current heap; it must not be used after a successful
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _erealloc(
    ptr: *mut c_void,
    size: usize,
    allow_failure: c_int,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).realloc_in_place_fast(ptr.cast(), size) } {
        return ptr;
    }
    erealloc_declined(
        ptr,
        size,
        allow_failure,
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    )
}

/// [`_erealloc`]'s declined calls, out of line so its fast path needs no stack frame.
#[cold]
#[inline(never)]
fn erealloc_declined(
    ptr: *mut c_void,
    size: usize,
    allow_failure: c_int,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let mut site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    if allow_failure != 0 {
        site = site.may_fail();
    }
    erealloc_slow(ptr, size, size, Call::new("erealloc", site))
}

/// `_erealloc` as the `erealloc()` macro calls it: no failure allowed, no original caller's
/// location, so a call site passes four arguments in registers instead of seven (the seventh on the
/// stack).
///
/// # Safety
/// As `_erealloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _erealloc_at(
    ptr: *mut c_void,
    size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
) -> *mut c_void {
    // SAFETY: the fast heap is this thread's live current heap or the sentinel.
    if unsafe { (*runtime::fast()).realloc_in_place_fast(ptr.cast(), size) } {
        return ptr;
    }
    erealloc_at_slow(ptr, size, __zend_filename, __zend_lineno)
}

/// [`_erealloc_at`]'s declined calls, out of line so its fast path needs no stack frame.
#[cold]
#[inline(never)]
fn erealloc_at_slow(ptr: *mut c_void, size: usize, file: *const c_char, line: u32) -> *mut c_void {
    erealloc_declined(ptr, size, 0, file, line, ptr::null(), 0)
}

/// Everything `_erealloc`'s fast path declines: moves, growth, shrinking, NULL, huge blocks,
/// custom handlers, errors.
#[cold]
#[inline(never)]
fn erealloc_slow(ptr: *mut c_void, size: usize, copy_size: usize, call: Call) -> *mut c_void {
    if let Some((owner, _)) = other_heaps_block(ptr.cast()) {
        // SAFETY: the caller's live block of `owner`'s.
        return unsafe { erealloc_remote(owner, ptr, size, copy_size, &call) };
    }
    let heap = heap_for(size, call.site);
    // SAFETY: the current heap, not borrowed here; `ptr` is the caller's block.
    unsafe { api::erealloc(heap, ptr.cast(), size, copy_size, &call) }.cast()
}

/// Resizes a block of another thread's heap: a new block from the current heap, the contents
/// copied, the old block freed onto its heap's remote list.
///
/// # Safety
/// `ptr` must be a live block of the heap `owner`, which the calling thread does not use.
unsafe fn erealloc_remote(
    owner: region_map::Owner,
    ptr: *mut c_void,
    size: usize,
    copy_size: usize,
    call: &Call,
) -> *mut c_void {
    let site = call.site;
    // SAFETY: the current heap, not borrowed here.
    let new = unsafe { api::emalloc(heap_for(size, site), size, site) };
    if !new.is_null() {
        // SAFETY: a live block of `owner`'s, given up by the caller; `new` has `size` bytes.
        unsafe { Heap::move_from_remote(owner, ptr.cast(), new, size.min(copy_size), call) };
    }
    new.cast()
}

/// Like `_erealloc`, but copies at most `copy_size` bytes of the old contents.
///
/// # Safety
/// `ptr` must be NULL or a live block of the current heap; it must not be used after a successful
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _erealloc2(
    ptr: *mut c_void,
    size: usize,
    copy_size: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    erealloc_slow(ptr, size, copy_size, Call::new("erealloc2", site))
}

/// Resizes `ptr` to `nmemb * size + offset` bytes (overflow is a fatal error).
///
/// # Safety
/// `ptr` must be NULL or a live block of the current heap; it must not be used after a successful
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _safe_erealloc(
    ptr: *mut c_void,
    nmemb: usize,
    size: usize,
    offset: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_void {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    let total = safe_address(nmemb, size, offset, site);
    erealloc_slow(ptr, total, total, Call::new("safe_erealloc", site))
}

/// Copies a C string into the current heap.
///
/// # Safety
/// `s` must be a NUL-terminated string (NULL is a fatal error).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _estrdup(
    s: *const c_char,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_char {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    if s.is_null() {
        raise_on_current(
            site,
            Fatal::NullString {
                function: "estrdup",
            },
        );
    }
    // SAFETY: `s` is a C string (caller contract).
    let len = unsafe { libc::strlen(s) };
    // SAFETY: `s` has `len` readable bytes.
    unsafe { copy_string(s, len, site) }
}

/// Copies the first `length` bytes of `s` into the current heap and appends a NUL.
///
/// # Safety
/// `s` must have `length` readable bytes (NULL only with `length` 0).
/// cbindgen:postfix=ZEND_ATTRIBUTE_MALLOC
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _estrndup(
    s: *const c_char,
    length: usize,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> *mut c_char {
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    if s.is_null() && length != 0 {
        raise_on_current(
            site,
            Fatal::NullString {
                function: "estrndup",
            },
        );
    }
    // SAFETY: `s` has `length` readable bytes (caller contract).
    unsafe { copy_string(s, length, site) }
}

/// `length` bytes of `s` plus a NUL, in the current heap.
///
/// # Safety
/// `s` must have `length` readable bytes (it may be NULL when `length` is 0).
unsafe fn copy_string(s: *const c_char, length: usize, site: Site) -> *mut c_char {
    let total = safe_address(1, length, 1, site);
    // SAFETY: the current heap, not borrowed here.
    let p = unsafe { api::emalloc(heap_for(total, site), total, site) };
    if p.is_null() {
        return p.cast();
    }
    // SAFETY: `p` has `length + 1` bytes; `s` has `length` readable bytes.
    unsafe {
        if length != 0 {
            ptr::copy_nonoverlapping(s.cast::<u8>(), p, length);
        }
        *p.add(length) = 0;
    }
    p.cast()
}

/// Usable size of a block of the current heap: its bin size, whole pages, or page-rounded huge
/// size. 0 for NULL and on custom heaps; a foreign pointer ends with "zend_mm_heap corrupted".
///
/// # Safety
/// `ptr` must be NULL or a pointer the caller got from the current heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _zend_mem_block_size(
    ptr: *mut c_void,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> usize {
    if ptr.is_null() {
        return 0;
    }
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    let call = Call::new("zend_mem_block_size", site);
    // SAFETY: the current heap, not borrowed here.
    unsafe { api::block_size(heap_of_block(&call), ptr.cast(), &call) }
}
