//! The memory manager API: heap lifecycle, accounting, the limit, custom handlers, storage.

use core::ffi::{CStr, c_char, c_int, c_void};

use super::types::{
    zend_mm_custom_free_t, zend_mm_custom_malloc_t, zend_mm_custom_realloc_t,
    zend_mm_error_handler_t, zend_mm_heap, zend_mm_mem_handlers, zend_mm_storage,
};
use super::{FAILURE, SUCCESS, checked_heap, foreign, known_heap, user_storage};
use crate::diagnostics::{self, misuse, startup_error};
use crate::heap::{CustomHandlers, Heap, api};
use crate::runtime;
use crate::sizes::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};

/// The calling thread's current heap, made if needed, entered from the calling frame: borrowed
/// for one call of the caller's (nothing here calls out).
fn current<'a>() -> &'a mut Heap {
    // SAFETY: a live heap, used by this thread only while it is current; the borrow ends with the
    // caller's statement, and no operation it is used for calls out of the library.
    unsafe { &mut *api::enter(runtime::ensure_current()) }
}

/// `heap` checked (see [`checked_heap`]) and borrowed for one call of the caller's.
fn checked<'a>(heap: *mut Heap, function: &str) -> &'a mut Heap {
    // SAFETY: a checked live heap; as in [`current`].
    unsafe { &mut *checked_heap(heap, function) }
}

/// Starts the memory manager for the calling thread: makes its heap if it has none.
#[unsafe(no_mangle)]
pub extern "C" fn start_memory_manager() {
    runtime::ensure_current();
}

/// Ends a request on the calling thread's heap (`full_shutdown` 0): every block is released at
/// once and the heap stays ready for the next request. With `full_shutdown` set, the heap and all
/// its memory go back to storage (a later allocation starts a new heap).
#[unsafe(no_mangle)]
pub extern "C" fn shutdown_memory_manager(silent: c_int, full_shutdown: c_int) {
    let heap = runtime::current();
    if !heap.is_null() {
        // SAFETY: the current heap is live.
        unsafe { zend_mm_shutdown(heap, full_shutdown, silent) };
    }
}

/// Whether the calling thread's heap is the Zend heap (not custom handlers).
#[unsafe(no_mangle)]
pub extern "C" fn is_zend_mm() -> c_int {
    c_int::from(!current().is_custom())
}

/// Whether `ptr` points into memory of the calling thread's heap (a segment or a huge block). 0 on
/// a custom heap, whose blocks are not the heap's, and for another thread's heap.
#[unsafe(no_mangle)]
pub extern "C" fn is_zend_ptr(ptr: *const c_void) -> c_int {
    let heap = runtime::current_or_own();
    // SAFETY: the current heap is live.
    c_int::from(!heap.is_null() && unsafe { !(*heap).is_custom() && (*heap).owns(ptr.cast()) })
}

/// Bytes handed out by the calling thread's heap (`real_usage` 0), or taken from storage.
#[unsafe(no_mangle)]
pub extern "C" fn zend_memory_usage(real_usage: c_int) -> usize {
    let heap = current();
    heap.collect_remote_frees();
    heap.usage(real_usage != 0)
}

/// Peak of `zend_memory_usage(real_usage)` since the request started or the last reset.
#[unsafe(no_mangle)]
pub extern "C" fn zend_memory_peak_usage(real_usage: c_int) -> usize {
    current().peak_usage(real_usage != 0)
}

/// Restarts both peaks from the current usage.
#[unsafe(no_mangle)]
pub extern "C" fn zend_memory_reset_peak_usage() {
    current().reset_peak();
}

/// Sets the calling thread's memory limit. FAILURE (-1) when the limit is below the memory in
/// use even after dropping cached segments; SUCCESS (0) otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn zend_set_memory_limit(memory_limit: usize) -> c_int {
    match current().set_limit(memory_limit) {
        Ok(()) => SUCCESS,
        Err(_) => FAILURE,
    }
}

/// Non-zero while a memory-limit or out-of-memory error is being reported (the limit is suspended):
/// from inside the error handler, not after it returned or longjmped out.
#[unsafe(no_mangle)]
pub extern "C" fn zend_alloc_in_memory_limit_error_reporting() -> c_int {
    let heap = runtime::current();
    // SAFETY: the current heap is live.
    c_int::from(!heap.is_null() && unsafe { (*api::enter(heap)).in_error_report() })
}

/// A new heap on the storage selected by `ZEND_MM_MEM_TYPE` with `ZEND_MM_SEG_SIZE` segments.
/// NULL (after a message) if the storage cannot provide the first segment.
#[unsafe(no_mangle)]
pub extern "C" fn zend_mm_startup() -> *mut zend_mm_heap {
    let heap = runtime::new_default_heap(false);
    if heap.is_null() {
        report_no_heap(crate::storage::builtin_name(crate::options::get().storage));
    }
    heap
}

fn report_no_heap(storage: &CStr) {
    diagnostics::eprint(format_args!(
        "Cannot allocate heap for zend_mm storage [{}]\n",
        storage.to_str().unwrap_or("?")
    ));
}

/// A new heap whose segments come from `handlers` (PHP 5.3's storage managers): `init(params)`
/// makes the storage, segments are `block_size` bytes (a power of two, 64K to 1G), and
/// `reserve_size` bytes are held back for the error path. `internal` is accepted for PHP 5.3
/// compatibility: the heap always lives inside its first segment. Returns NULL (after a message) if
/// the storage has no memory for the first segment; a bad `block_size` or a reserve that cannot be
/// set aside ends the process with status 255, and NULL handlers or a table without `init`,
/// `_alloc` and `_free` abort (misuse, as elsewhere).
///
/// # Safety
/// `handlers` must point to a handler table that outlives the heap; its functions must behave as
/// `zend_mm_mem_handlers` documents.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_startup_ex(
    handlers: *const zend_mm_mem_handlers,
    block_size: usize,
    reserve_size: usize,
    internal: c_int,
    params: *mut c_void,
) -> *mut zend_mm_heap {
    let _ = internal;
    if handlers.is_null() {
        misuse("zend_mm_startup_ex", "the storage handlers are NULL");
    }
    // SAFETY: a handler table (caller contract).
    let h = unsafe { &*handlers };
    let name = if h.name.is_null() {
        c"(unnamed)"
    } else {
        // SAFETY: a handler name is a C string (caller contract).
        unsafe { CStr::from_ptr(h.name) }
    };
    let (Some(_), Some(_), Some(_)) = (h.init, h._alloc, h._free) else {
        misuse(
            "zend_mm_startup_ex",
            "the storage handlers need init, _alloc and _free",
        )
    };
    if !block_size.is_power_of_two() {
        startup_error(format_args!("'block_size' must be a power of two\n"));
    }
    if block_size < MIN_SEGMENT_SIZE {
        startup_error(format_args!("'block_size' is too small (at least 64K)\n"));
    }
    if block_size > MAX_SEGMENT_SIZE {
        startup_error(format_args!("'block_size' is too large (at most 1G)\n"));
    }
    // SAFETY: a handler table with init, _alloc and _free (checked) that outlives the heap
    // (caller contract).
    let Some(storage) = (unsafe { user_storage::open(handlers, params) }) else {
        diagnostics::storage_init_failed(name);
    };
    let compact = crate::options::get().compact_size;
    // SAFETY: the storage is used by this heap only; block_size was checked.
    let heap = unsafe { Heap::create(storage, block_size, reserve_size, compact) };
    if heap.is_null() {
        report_no_heap(name);
    // SAFETY: a live heap, just made.
    } else if unsafe { !(*heap).has_reserve() } {
        // PHP 5.3 allocates the reserve at startup too, and fails there when it cannot.
        startup_error(format_args!(
            "Cannot set aside the reserve of {} bytes for zend_mm storage [{}]\n",
            reserve_size,
            name.to_str().unwrap_or("?")
        ));
    } else {
        // SAFETY: the heap was just made and has no block.
        unsafe { runtime::apply_diagnostic_options(heap) };
    }
    heap
}

/// Shuts `heap` down: with `full_shutdown`, everything returns to storage and the heap is gone;
/// otherwise only its blocks are released (request end). Unless `silent`, a heap that tracks its
/// blocks reports those still live as leaks first (`ZEND_MM_DEBUG`).
///
/// # Safety
/// `heap` must be a live heap; none of its blocks may be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_shutdown(
    heap: *mut zend_mm_heap,
    full_shutdown: c_int,
    silent: c_int,
) {
    let heap = checked_heap(heap, "zend_mm_shutdown");
    if full_shutdown != 0 {
        foreign::release(heap);
    }
    // SAFETY: a checked live heap, not borrowed here.
    unsafe { super::leaks::report_if_tracking(heap, silent != 0) };
    if full_shutdown != 0 {
        runtime::forget(heap);
    }
    // SAFETY: a checked live heap; the caller gives up its blocks.
    unsafe { Heap::shutdown(heap, full_shutdown != 0) };
}

/// Makes `new_heap` the calling thread's current heap (what `emalloc` uses); returns the previous
/// one. NULL goes back to the thread's own heap on the next allocation.
///
/// # Safety
/// `new_heap` must be NULL or a live heap not used by another thread meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_set_heap(new_heap: *mut zend_mm_heap) -> *mut zend_mm_heap {
    let heap = if new_heap.is_null() {
        new_heap
    } else {
        checked_heap(new_heap, "zend_mm_set_heap")
    };
    runtime::set_current(heap)
}

/// The calling thread's current heap (made if needed).
#[unsafe(no_mangle)]
pub extern "C" fn zend_mm_get_heap() -> *mut zend_mm_heap {
    runtime::ensure_current()
}

/// The storage instance `heap` gets its segments from.
///
/// # Safety
/// `heap` must be a live heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_get_storage(heap: *mut zend_mm_heap) -> *mut zend_mm_storage {
    user_storage::c_storage(checked(heap, "zend_mm_get_storage").storage())
}

/// Frees every small run whose blocks are all free, gives cached segments and huge blocks back to
/// storage and the free pages of the segments that stay back to the system; returns the bytes
/// given back to storage (0 on custom heaps).
///
/// # Safety
/// `heap` must be a live heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_gc(heap: *mut zend_mm_heap) -> usize {
    checked(heap, "zend_mm_gc").gc()
}

/// Whether `heap` (NULL: the current heap) forwards to custom handlers.
///
/// # Safety
/// `heap` must be NULL or a live heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_is_custom_heap(heap: *mut zend_mm_heap) -> c_int {
    let h = if heap.is_null() {
        current()
    } else {
        checked(heap, "zend_mm_is_custom_heap")
    };
    c_int::from(h.is_custom())
}

/// Sends `heap`'s allocations to `_malloc`/`_free`/`_realloc`; three NULLs switch back to the
/// heap's own allocator. A partial set is refused (message, abort). As in PHP, `heap` may also be
/// memory of the caller's (PHP's `ext/zend_test` passes `malloc(4096)`): the library then makes a
/// heap that stands for that address (up to 16 such addresses at once) and never writes into it;
/// `zend_mm_set_heap` and every heap function accept the address, and `zend_mm_get_heap` returns
/// the stand-in.
///
/// # Safety
/// `heap` must be a live heap or the address of caller memory; the handlers must behave like
/// malloc, free and realloc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_set_custom_handlers(
    heap: *mut zend_mm_heap,
    _malloc: zend_mm_custom_malloc_t,
    _free: zend_mm_custom_free_t,
    _realloc: zend_mm_custom_realloc_t,
) {
    let heap = heap_for_handlers(heap, _malloc.is_some());
    // SAFETY: a live heap (made or checked above), borrowed for this call only.
    let h = unsafe { &mut *heap };
    if h.set_custom(CustomHandlers {
        malloc: _malloc,
        free: _free,
        realloc: _realloc,
    })
    .is_err()
    {
        misuse(
            "zend_mm_set_custom_handlers",
            "malloc, free and realloc must all be set, or all be NULL",
        );
    }
    runtime::heap_changed(heap);
}

// The documentation of `zend_mm_set_custom_handlers` names the capacity.
const _: () = assert!(foreign::CAPACITY == 16);

/// The heap `zend_mm_set_custom_handlers` works on: `heap` itself, or for memory the library did
/// not make, given handlers, the library's stand-in for it (made on first use: PHP turns any zeroed
/// block into a heap this way; see [`foreign`]).
fn heap_for_handlers(heap: *mut Heap, installing: bool) -> *mut Heap {
    const FUNCTION: &str = "zend_mm_set_custom_handlers";
    let mut known = known_heap(heap, FUNCTION);
    if known.is_null() && installing {
        known = foreign::adopt(heap.addr());
        if known.is_null() {
            misuse(
                FUNCTION,
                "not a zend_mm_heap, and no heap can be made to stand for it (all stand-ins in use, or out of memory)",
            );
        }
    }
    if known.is_null() {
        misuse(FUNCTION, "not a zend_mm_heap");
    }
    // SAFETY: a live heap; heaps are used by one thread at a time.
    unsafe { api::enter(known) }
}

/// Reads `heap`'s custom handlers (NULLs when it has none); NULL out-pointers are skipped.
///
/// # Safety
/// `heap` must be a live heap; non-NULL out-pointers must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_get_custom_handlers(
    heap: *mut zend_mm_heap,
    _malloc: *mut zend_mm_custom_malloc_t,
    _free: *mut zend_mm_custom_free_t,
    _realloc: *mut zend_mm_custom_realloc_t,
) {
    let c = checked(heap, "zend_mm_get_custom_handlers").custom_handlers();
    // SAFETY: non-NULL out-pointers are writable (caller contract).
    unsafe {
        if !_malloc.is_null() {
            *_malloc = c.malloc;
        }
        if !_free.is_null() {
            *_free = c.free;
        }
        if !_realloc.is_null() {
            *_realloc = c.realloc;
        }
    }
}

/// Installs the handler fatal errors go to (memory limit, out of memory, size overflow); returns
/// the previous one. NULL restores the default: print `Fatal error: ... in <file> on line <n>` and
/// exit(255). The handler may longjmp out; if it returns, the process exits with status 255.
#[unsafe(no_mangle)]
pub extern "C" fn zend_mm_set_error_handler(
    handler: zend_mm_error_handler_t,
) -> zend_mm_error_handler_t {
    diagnostics::set_error_handler(handler)
}

/// Fault injection (PHP 8.2.36's `zend_mm_set_max_allocs`): the calling thread's heap allows
/// `max_allocs` more allocations in this request and as many in each later one; the next is
/// refused with the memory-limit error (exit status 121 if the handler returns).
/// `UINT64_MAX` switches it off. `ZEND_MM_MAX_ALLOCS` sets it for every heap.
#[unsafe(no_mangle)]
pub extern "C" fn zend_mm_set_max_allocs(max_allocs: u64) {
    let heap = runtime::ensure_current();
    // SAFETY: the calling thread's live heap, not borrowed elsewhere.
    unsafe { (*heap).set_max_allocs(max_allocs) };
    runtime::heap_changed(heap);
}

/// 1 if fault injection refused an allocation of the calling thread's heap, else 0 (PHP's
/// `zend_mm_max_allocs_hit`, which returns a C99 `bool`).
#[unsafe(no_mangle)]
pub extern "C" fn zend_mm_max_allocs_hit() -> c_int {
    let heap = runtime::current();
    // SAFETY: a live heap of this thread.
    c_int::from(!heap.is_null() && unsafe { (*heap).max_allocs_hit() })
}

/// The version of the library loaded at run time, `"MAJOR.MINOR.PATCH"` (a static string, never
/// NULL). It can differ from `ZEND_ALLOC_VERSION`, the version the header comes from, when a
/// program runs against another build of the shared library than it was compiled with.
#[unsafe(no_mangle)]
pub extern "C" fn zend_alloc_version() -> *const c_char {
    // Cargo.toml's version, as the header's ZEND_ALLOC_VERSION (build.rs fills both in).
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
