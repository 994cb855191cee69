//! Custom heaps (zend_alloc.c's `ZEND_MM_CUSTOM`): a heap whose allocations are forwarded to
//! `malloc`/`free`/`realloc`-like handlers (`zend_mm_set_custom_handlers`, `USE_ZEND_ALLOC=0`).
//!
//! Owns the handler triple and the forwarding. While a heap is custom its segments stay as they
//! are (usage counters freeze), block sizes read 0 and `zend_mm_gc` collects nothing, as in PHP.
//! The forwarding functions take the heap as a raw pointer and hold no borrow of it while a
//! handler runs: a handler may call back into the library.
//!
//! Invariant: `use_custom_heap != 0` iff all three handlers are set.

use core::ffi::c_void;
use core::ptr;

use super::{Heap, Refusal, api};
use crate::diagnostics::Site;

/// A `malloc`-like handler.
pub type MallocFn = unsafe extern "C" fn(size: usize) -> *mut c_void;
/// A `free`-like handler.
pub type FreeFn = unsafe extern "C" fn(ptr: *mut c_void);
/// A `realloc`-like handler.
pub type ReallocFn = unsafe extern "C" fn(ptr: *mut c_void, size: usize) -> *mut c_void;

#[derive(Clone, Copy)]
pub struct CustomHandlers {
    pub malloc: Option<MallocFn>,
    pub free: Option<FreeFn>,
    pub realloc: Option<ReallocFn>,
}

/// `zend_mm_set_custom_handlers` got some handlers but not all three.
#[derive(Clone, Copy, Debug)]
pub struct IncompleteHandlers;

impl CustomHandlers {
    pub const NONE: CustomHandlers = CustomHandlers {
        malloc: None,
        free: None,
        realloc: None,
    };

    /// The C library's allocator (`USE_ZEND_ALLOC=0`).
    pub const LIBC: CustomHandlers = CustomHandlers {
        malloc: Some(libc::malloc),
        free: Some(libc::free),
        realloc: Some(libc::realloc),
    };

    fn is_none(&self) -> bool {
        self.malloc.is_none() && self.free.is_none() && self.realloc.is_none()
    }

    fn is_complete(&self) -> bool {
        self.malloc.is_some() && self.free.is_some() && self.realloc.is_some()
    }
}

impl Heap {
    /// Installs custom handlers; all three `None` switches back to the heap's own allocator.
    pub fn set_custom(&mut self, handlers: CustomHandlers) -> Result<(), IncompleteHandlers> {
        if handlers.is_none() {
            self.custom = CustomHandlers::NONE;
            self.use_custom_heap = 0;
            self.libc_only = false;
            Ok(())
        } else if handlers.is_complete() {
            self.custom = handlers;
            self.use_custom_heap = 1;
            Ok(())
        } else {
            Err(IncompleteHandlers)
        }
    }

    /// `USE_ZEND_ALLOC=0`: forwards to the C library and reports no usage, as PHP's heap then.
    pub fn use_libc_only(&mut self) {
        let _ = self.set_custom(CustomHandlers::LIBC);
        self.libc_only = true;
    }

    /// The custom handlers in effect (all `None` when the heap is not custom).
    pub fn custom_handlers(&self) -> CustomHandlers {
        self.custom
    }
}

/// `emalloc` on a custom heap. A handler that returns NULL for a non-zero size is out of memory.
///
/// # Safety
/// As [`api::emalloc`].
#[cold]
pub(super) unsafe fn alloc(heap: *mut Heap, size: usize, site: Site) -> *mut u8 {
    // SAFETY: live heap (caller contract); the borrow ends here.
    let Some(malloc) = (unsafe { (*heap).custom.malloc }) else {
        return ptr::null_mut();
    };
    // SAFETY: the installed handler, called as its malloc-like contract allows.
    let p = unsafe { malloc(size) }.cast::<u8>();
    if p.is_null() && size != 0 {
        // SAFETY: forwarded caller contract.
        return unsafe { api::refused(heap, Refusal::OutOfMemory, size, site) };
    }
    p
}

/// `efree` on a custom heap.
///
/// # Safety
/// As [`api::efree`].
#[cold]
pub(super) unsafe fn free(heap: *mut Heap, p: *mut u8) {
    // SAFETY: live heap (caller contract); the borrow ends here.
    if let Some(free) = unsafe { (*heap).custom.free } {
        // SAFETY: `p` came from the custom malloc/realloc (caller contract of efree).
        unsafe { free(p.cast()) }
    }
}

/// `erealloc` on a custom heap.
///
/// # Safety
/// As [`api::erealloc`].
#[cold]
pub(super) unsafe fn realloc(heap: *mut Heap, p: *mut u8, size: usize, site: Site) -> *mut u8 {
    // SAFETY: live heap (caller contract); the borrow ends here.
    let Some(realloc) = (unsafe { (*heap).custom.realloc }) else {
        return ptr::null_mut();
    };
    // SAFETY: `p` came from the custom malloc/realloc (caller contract of erealloc).
    let q = unsafe { realloc(p.cast(), size) }.cast::<u8>();
    if q.is_null() && size != 0 {
        // SAFETY: forwarded caller contract.
        return unsafe { api::refused(heap, Refusal::OutOfMemory, size, site) };
    }
    q
}
