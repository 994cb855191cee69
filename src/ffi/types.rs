//! The C types of PHP 5.3's `zend_alloc.h`, field for field.
//!
//! These are the only structs C code sees. `zend_mm_heap` stays opaque; the storage types keep PHP
//! 5.3's layout because user storage handlers are written against it. Where the core has the same
//! thing, the C type is an alias of the core type (`zend_mm_heap` of the heap, `zend_mm_segment` of
//! the storage header, the handler typedefs of the core's function types), never the other way
//! round. The forward typedefs (`zend_mm_heap`, `zend_mm_storage`) come from `cbindgen.toml`,
//! because the handler table and the storage struct refer to each other.

#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_long, c_void};

/// `zend_mm_is_custom_heap()` values, as PHP 7+ names them.
pub const ZEND_MM_CUSTOM_HEAP_NONE: c_int = 0;
pub const ZEND_MM_CUSTOM_HEAP_STD: c_int = 1;

/// The heap: opaque to C (PHP keeps `struct _zend_mm_heap` private too).
pub type zend_mm_heap = crate::heap::Heap;

/// Header the heap keeps at the start of every block of memory it gets from a storage.
///
/// The heap writes `size` (the number of bytes it asked the storage for) before it calls the
/// storage's `_realloc` or `_free`, so handlers can read the size there as PHP's `mmap_anon` does.
pub type zend_mm_segment = crate::storage::SegmentHeader;

/// `init(params)`: sets the storage up; returns its state or NULL when it cannot be used.
pub type zend_mm_storage_init_t =
    Option<unsafe extern "C" fn(params: *mut c_void) -> *mut zend_mm_storage>;
/// `dtor(storage)`: releases what `init` set up; called once, after the last segment was freed.
pub type zend_mm_storage_dtor_t = Option<unsafe extern "C" fn(storage: *mut zend_mm_storage)>;
/// `compact(storage)`: gives cached memory back to the system (called at request end when the
/// request's real peak passed the `ZEND_MM_COMPACT` threshold).
pub type zend_mm_storage_compact_t = Option<unsafe extern "C" fn(storage: *mut zend_mm_storage)>;
/// `_alloc(storage, size)`: `size` bytes, at least 16-byte aligned, or NULL.
pub type zend_mm_storage_alloc_t = Option<
    unsafe extern "C" fn(storage: *mut zend_mm_storage, size: usize) -> *mut zend_mm_segment,
>;
/// `_realloc(storage, segment, size)`: resizes a segment, moving it if needed (contents kept up to the
/// smaller size); NULL on failure, leaving the segment as it was.
pub type zend_mm_storage_realloc_t = Option<
    unsafe extern "C" fn(
        storage: *mut zend_mm_storage,
        segment: *mut zend_mm_segment,
        size: usize,
    ) -> *mut zend_mm_segment,
>;
/// `_free(storage, segment)`: returns a segment; its size is in `segment->size`.
pub type zend_mm_storage_free_t =
    Option<unsafe extern "C" fn(storage: *mut zend_mm_storage, segment: *mut zend_mm_segment)>;

/// A storage manager: where segments come from (PHP 5.3's `zend_mm_mem_handlers`).
#[repr(C)]
pub struct _zend_mm_mem_handlers {
    pub name: *const c_char,
    pub init: zend_mm_storage_init_t,
    pub dtor: zend_mm_storage_dtor_t,
    pub compact: zend_mm_storage_compact_t,
    pub _alloc: zend_mm_storage_alloc_t,
    pub _realloc: zend_mm_storage_realloc_t,
    pub _free: zend_mm_storage_free_t,
}
pub type zend_mm_mem_handlers = _zend_mm_mem_handlers;

// SAFETY: a handler table is read-only data (a name and function pointers) once it is handed to
// the library; sharing it between threads only reads it.
unsafe impl Sync for _zend_mm_mem_handlers {}

/// A storage instance: its handlers and whatever state `init` keeps in `data`.
#[repr(C)]
pub struct _zend_mm_storage {
    pub handlers: *const zend_mm_mem_handlers,
    pub data: *mut c_void,
}
pub type zend_mm_storage = _zend_mm_storage;

/// One leaked block, as the leak report hands it to the message handler (PHP 5.3's
/// `zend_leak_info`, field for field): the block, the size asked for, where it was allocated, and
/// where that call was relayed from (`orig_filename` NULL if it was not).
pub type zend_leak_info = crate::diagnostics::LeakInfo;

/// PHP's message numbers (`zend.h`) the leak report sends to a message handler: the script name
/// (`data` NULL), a leaked block (`data` a `const zend_leak_info *`), the number of further leaks
/// from the same file and line (`data` the count itself, cast to a pointer), the total (`data` a
/// `const uint32_t *`).
pub const ZMSG_MEMORY_LEAK_DETECTED: c_long = 4;
pub const ZMSG_MEMORY_LEAK_REPEATED: c_long = 5;
pub const ZMSG_LOG_SCRIPT_NAME: c_long = 6;
pub const ZMSG_MEMORY_LEAKS_GRAND_TOTAL: c_long = 7;

/// One bin's statistics: slot size, live blocks, most live at once, allocations, frees, runs.
pub type zend_mm_bin_stats = crate::heap::BinStats;
/// Large or huge blocks' statistics (`cached`: freed huge blocks kept for reuse).
pub type zend_mm_block_stats = crate::heap::BlockStats;
/// An allocation site's live blocks and bytes and its allocations (tracking heaps).
pub type zend_mm_site_stats = crate::heap::SiteStats;
/// A heap's statistics (`zend_mm_get_stats`). Without counting (`counting` 0) allocation counts
/// and peaks read 0; the site lists need tracking.
pub type zend_mm_stats = crate::heap::HeapStats;

/// Receives the leak report's messages (PHP's `zend_message_dispatcher` signature).
pub type zend_mm_message_handler_t =
    Option<unsafe extern "C" fn(message: c_long, data: *const c_void)>;

/// Handler for fatal errors (memory limit, out of memory, size overflow).
///
/// `type` is `E_ERROR`; `filename`/`lineno` are the C location passed with the allocation
/// (`"Unknown"`/0 when none was); `message` is PHP's text. The handler may `longjmp` out, as PHP's
/// bailout does; it must not return (the process exits with status 255 if it does).
pub type zend_mm_error_handler_t = Option<
    unsafe extern "C" fn(
        error_type: c_int,
        filename: *const c_char,
        lineno: u32,
        message: *const c_char,
    ),
>;

/// `malloc`-like custom allocation function (`zend_mm_set_custom_handlers`).
pub type zend_mm_custom_malloc_t = Option<unsafe extern "C" fn(size: usize) -> *mut c_void>;
/// `free`-like custom release function.
pub type zend_mm_custom_free_t = Option<unsafe extern "C" fn(ptr: *mut c_void)>;
/// `realloc`-like custom resize function.
pub type zend_mm_custom_realloc_t =
    Option<unsafe extern "C" fn(ptr: *mut c_void, size: usize) -> *mut c_void>;

// The handler typedefs spell their signatures out for the C header; they are the core's types.
const _: () = {
    use crate::diagnostics::ErrorHandler;
    use crate::heap::{FreeFn, MallocFn, ReallocFn};
    let _: fn(zend_mm_error_handler_t) -> Option<ErrorHandler> = |h| h;
    let _: fn(zend_mm_custom_malloc_t) -> Option<MallocFn> = |h| h;
    let _: fn(zend_mm_custom_free_t) -> Option<FreeFn> = |h| h;
    let _: fn(zend_mm_custom_realloc_t) -> Option<ReallocFn> = |h| h;
};

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<zend_mm_segment>() == 2 * size_of::<usize>());
    assert!(size_of::<zend_mm_mem_handlers>() == 7 * size_of::<usize>());
    assert!(size_of::<zend_mm_storage>() == 2 * size_of::<usize>());
    assert!(offset_of!(zend_leak_info, lineno) == 2 * size_of::<usize>() + size_of::<usize>());
    assert!(offset_of!(zend_leak_info, orig_filename) == 4 * size_of::<usize>());
};
