//! The diagnostics' C side: the leak report's message handler (PHP's adapter forwards to
//! `zend_message_dispatcher`) and the script name the default handler prints, block tracking's
//! switch for one heap, and the statistics.
//!
//! Without a handler, the messages are printed to stderr as PHP 5.3's `php_message_handler_for_zend`
//! prints them ([`diagnostics::print_leak_event`]).

use core::ffi::{CStr, c_char, c_int, c_long, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

use super::checked_heap;
use super::types::{
    ZMSG_LOG_SCRIPT_NAME, ZMSG_MEMORY_LEAK_DETECTED, ZMSG_MEMORY_LEAK_REPEATED,
    ZMSG_MEMORY_LEAKS_GRAND_TOTAL, zend_mm_heap, zend_mm_message_handler_t, zend_mm_stats,
};
use crate::diagnostics::{self, LeakEvent};
use crate::heap::{Heap, print_stats, report_leaks};
use crate::{options, runtime};

type MessageHandler = unsafe extern "C" fn(message: c_long, data: *const c_void);

static MESSAGE_HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
static SCRIPT_NAME: AtomicPtr<c_char> = AtomicPtr::new(core::ptr::null_mut());

fn message_handler() -> Option<MessageHandler> {
    let raw = MESSAGE_HANDLER.load(Ordering::Acquire);
    if raw.is_null() {
        None
    } else {
        // SAFETY: the slot holds only null or values of this exact function pointer type.
        Some(unsafe { core::mem::transmute::<*mut (), MessageHandler>(raw) })
    }
}

/// Installs the handler that receives leak reports (`ZMSG_*` messages) instead of stderr; NULL
/// restores the default. Returns the previous handler. Process-wide.
#[unsafe(no_mangle)]
pub extern "C" fn zend_mm_set_message_handler(
    handler: zend_mm_message_handler_t,
) -> zend_mm_message_handler_t {
    let new = handler.map_or(core::ptr::null_mut(), |f| f as *mut ());
    let old = MESSAGE_HANDLER.swap(new, Ordering::AcqRel);
    if old.is_null() {
        None
    } else {
        // SAFETY: as in `message_handler`.
        Some(unsafe { core::mem::transmute::<*mut (), MessageHandler>(old) })
    }
}

/// Sets the script name the default handler prints in leak reports (`-` when NULL or never set).
/// The string is not copied: it must stay valid until it is replaced.
#[unsafe(no_mangle)]
pub extern "C" fn zend_mm_set_script_name(name: *const c_char) {
    SCRIPT_NAME.store(name.cast_mut(), Ordering::Release);
}

fn script_name() -> &'static CStr {
    let name = SCRIPT_NAME.load(Ordering::Acquire);
    if name.is_null() {
        c"-"
    } else {
        // SAFETY: the embedder keeps the string valid while it is set (documented above).
        unsafe { CStr::from_ptr(name) }
    }
}

/// Sends one leak-report message to the installed handler, or prints it.
fn dispatch(event: &LeakEvent<'_>) {
    let Some(handler) = message_handler() else {
        diagnostics::print_leak_event(event, script_name());
        return;
    };
    let total;
    let (message, data): (c_long, *const c_void) = match *event {
        LeakEvent::ScriptName => (ZMSG_LOG_SCRIPT_NAME, core::ptr::null()),
        LeakEvent::Leak(leak) => (ZMSG_MEMORY_LEAK_DETECTED, core::ptr::from_ref(leak).cast()),
        LeakEvent::Repeated(n) => (ZMSG_MEMORY_LEAK_REPEATED, core::ptr::without_provenance(n)),
        LeakEvent::Total(n) => {
            total = n;
            (
                ZMSG_MEMORY_LEAKS_GRAND_TOTAL,
                core::ptr::from_ref(&total).cast(),
            )
        }
    };
    // SAFETY: the embedder's handler, called with PHP's protocol; `data` lives through the call.
    unsafe { handler(message, data) };
}

/// Reports `heap`'s leaks at a request end that is not silent, when the heap tracks its blocks and
/// `ZEND_ALLOC_PRINT_LEAKS` allows it.
///
/// # Safety
/// `heap` must be a live heap of this thread, not borrowed.
pub(super) unsafe fn report_if_tracking(heap: *mut Heap, silent: bool) {
    // SAFETY: live heap (caller contract); the borrow ends with the statement.
    let tracking = unsafe { (*heap).is_tracking() && !(*heap).is_custom() };
    if silent || !tracking || !options::get().print_leaks {
        return;
    }
    // SAFETY: forwarded caller contract.
    unsafe { report_leaks(heap, &mut dispatch) };
}

/// Switches block tracking (PHP 5.3's debug build) on or off for `heap` (NULL: the current heap).
/// Returns 0 (SUCCESS), or -1 (FAILURE) if the heap has live blocks: switch it at startup or right
/// after a request end. `ZEND_MM_DEBUG=1` switches it on for every heap made afterwards.
///
/// # Safety
/// `heap` must be NULL or a live heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_set_tracking(heap: *mut zend_mm_heap, on: c_int) -> c_int {
    let heap = heap_or_current(heap, "zend_mm_set_tracking");
    // SAFETY: a live heap of this thread, not borrowed elsewhere.
    let switched = unsafe { (*heap).set_tracking(on != 0) };
    runtime::heap_changed(heap);
    if switched.is_ok() {
        super::SUCCESS
    } else {
        super::FAILURE
    }
}

/// Whether `heap` (NULL: the current heap) tracks its blocks: 1 or 0.
///
/// # Safety
/// `heap` must be NULL or a live heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_is_tracking(heap: *mut zend_mm_heap) -> c_int {
    let heap = heap_or_current(heap, "zend_mm_is_tracking");
    // SAFETY: a live heap.
    c_int::from(unsafe { (*heap).is_tracking() })
}

/// The heap behind a C argument: NULL means the calling thread's current heap.
fn heap_or_current(heap: *mut zend_mm_heap, function: &str) -> *mut Heap {
    if heap.is_null() {
        runtime::ensure_current()
    } else {
        checked_heap(heap, function)
    }
}

/// Fills `*stats` with `heap`'s statistics (NULL heap: the current one). Returns 0 (SUCCESS), or
/// -1 (FAILURE) when `stats` is NULL.
///
/// # Safety
/// `heap` must be NULL or a live heap; `stats` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_get_stats(
    heap: *mut zend_mm_heap,
    stats: *mut zend_mm_stats,
) -> c_int {
    if stats.is_null() {
        return super::FAILURE;
    }
    let heap = heap_or_current(heap, "zend_mm_get_stats");
    // SAFETY: a live heap; `stats` is writable (caller contract).
    unsafe { stats.write((*heap).stats()) };
    super::SUCCESS
}

/// Writes `heap`'s statistics (NULL: the current heap) to file descriptor `fd`: as text, or with
/// `json` non-zero as one line of JSON.
///
/// # Safety
/// `heap` must be NULL or a live heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_print_stats(heap: *mut zend_mm_heap, fd: c_int, json: c_int) {
    let heap = heap_or_current(heap, "zend_mm_print_stats");
    // SAFETY: a live heap.
    let stats = unsafe { (*heap).stats() };
    print_stats(&stats, heap, fd, json != 0);
}

/// Starts (`on` non-zero) or stops counting allocations, frees and peaks for `heap` (NULL: the
/// current heap). Starting needs a heap with no live block. Returns 0 (SUCCESS) or -1 (FAILURE).
/// `ZEND_MM_STATS` starts it for every heap.
///
/// # Safety
/// `heap` must be NULL or a live heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn zend_mm_set_stats(heap: *mut zend_mm_heap, on: c_int) -> c_int {
    let heap = heap_or_current(heap, "zend_mm_set_stats");
    // SAFETY: a live heap of this thread, not borrowed elsewhere.
    let done = unsafe { (*heap).set_counting(on != 0) };
    runtime::heap_changed(heap);
    if done == Ok(true) {
        super::SUCCESS
    } else {
        super::FAILURE
    }
}
