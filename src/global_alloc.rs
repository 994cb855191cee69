//! [`ZendAlloc`]: the Zend heap as a Rust program's global allocator.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: zend_alloc::ZendAlloc = zend_alloc::ZendAlloc;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     std::thread::spawn(move || drop(v)).join().unwrap(); // freed on another thread
//! }
//! ```
//!
//! Every thread allocates from its own heap with `malloc` semantics ([`crate::malloc`]): a block
//! may be freed or resized on any thread, and a thread that exits leaves its live blocks to the
//! others. `Layout` alignments up to a page come from the heap (power-of-two bins, whole pages);
//! larger ones from the C library's allocator.

use core::alloc::{GlobalAlloc, Layout};

use crate::malloc;

/// The Zend heap as a [`GlobalAlloc`]; set it with `#[global_allocator]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZendAlloc;

/// Whether `layout` is served by a plain allocation: every block is 8-aligned, and 16-aligned from
/// 16 bytes on.
fn plain(layout: Layout) -> bool {
    layout.align() <= 8
        || (layout.align() <= malloc::MIN_ALIGN && layout.size() >= malloc::MIN_ALIGN)
}

// SAFETY: blocks come from the heaps, are at least `layout.size()` bytes, aligned to
// `layout.align()` (plain blocks by the bins' alignment, others by `alloc_aligned`), and stay
// valid until freed, from any thread.
unsafe impl GlobalAlloc for ZendAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout) {
            malloc::alloc(layout.size())
        } else {
            malloc::alloc_aligned(layout.align(), layout.size())
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` is a live block of this allocator (GlobalAlloc contract).
        unsafe { malloc::free(ptr) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout) {
            malloc::alloc_zeroed(layout.size())
        } else {
            let p = malloc::alloc_aligned(layout.align(), layout.size());
            if !p.is_null() {
                // SAFETY: a fresh block of at least `layout.size()` bytes.
                unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align());
        if plain(layout) && new.is_ok_and(plain) {
            // SAFETY: a live block of this allocator; `new_size` is non-zero (GlobalAlloc contract).
            return unsafe { malloc::realloc(ptr, new_size) };
        }
        // An alignment the plain path may not keep: a new aligned block and a copy.
        // SAFETY: a valid layout (GlobalAlloc contract: `new_size` rounded up fits `isize`).
        let new =
            unsafe { self.alloc(Layout::from_size_align_unchecked(new_size, layout.align())) };
        if !new.is_null() {
            // SAFETY: distinct live blocks, each at least this long; the old one is given up.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                malloc::free(ptr);
            }
        }
        new
    }
}
