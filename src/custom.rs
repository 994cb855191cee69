//! Custom heaps (zend_alloc.c's `ZEND_MM_CUSTOM`): a heap whose allocations are forwarded to
//! `malloc`/`free`/`realloc`-like handlers (`zend_mm_set_custom_handlers`, `USE_ZEND_ALLOC=0`).
//!
//! Owns the handler triple and the forwarding. While a heap is custom its segments stay as they
//! are (usage counters freeze), block sizes read 0 and `zend_mm_gc` collects nothing, as in PHP.
//! Invariant: `Heap::use_custom_heap != 0` iff all three handlers are set.

use core::ffi::c_void;

use crate::diagnostics::{Fatal, Site};
use crate::ffi::types::{zend_mm_custom_free_t, zend_mm_custom_malloc_t, zend_mm_custom_realloc_t};
use crate::heap::Heap;

#[derive(Clone, Copy)]
pub struct CustomHandlers {
    pub malloc: zend_mm_custom_malloc_t,
    pub free: zend_mm_custom_free_t,
    pub realloc: zend_mm_custom_realloc_t,
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
    /// Installs custom handlers; all three NULL switches back to the heap's own allocator.
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

    /// The custom handlers in effect (all `None` when the heap is not custom).
    pub fn custom_handlers(&self) -> CustomHandlers {
        self.custom
    }

    /// `emalloc` on a custom heap. A handler that returns NULL for a non-zero size is out of memory.
    #[cold]
    pub fn custom_alloc(&mut self, size: usize, site: Site) -> *mut u8 {
        let Some(malloc) = self.custom.malloc else {
            return core::ptr::null_mut();
        };
        // SAFETY: calling the installed handler as its malloc-like contract allows.
        let p = unsafe { malloc(size) }.cast::<u8>();
        if p.is_null() && size != 0 && !site.may_fail {
            self.fatal(
                site,
                Fatal::OutOfMemory {
                    allocated: self.real_size,
                    tried: size,
                },
            );
        }
        p
    }

    /// `efree` on a custom heap.
    #[cold]
    pub fn custom_free(&mut self, p: *mut u8) {
        if let Some(free) = self.custom.free {
            // SAFETY: `p` came from the custom malloc/realloc (caller contract of efree).
            unsafe { free(p.cast::<c_void>()) }
        }
    }

    /// `erealloc` on a custom heap.
    #[cold]
    pub fn custom_realloc(&mut self, p: *mut u8, size: usize, site: Site) -> *mut u8 {
        let Some(realloc) = self.custom.realloc else {
            return core::ptr::null_mut();
        };
        // SAFETY: `p` came from the custom malloc/realloc (caller contract of erealloc).
        let q = unsafe { realloc(p.cast(), size) }.cast::<u8>();
        if q.is_null() && size != 0 && !site.may_fail {
            self.fatal(
                site,
                Fatal::OutOfMemory {
                    allocated: self.real_size,
                    tried: size,
                },
            );
        }
        q
    }
}
