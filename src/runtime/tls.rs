//! The calling thread's heap slots, in thread-local storage that costs one load to read.
//!
//! Owns three pointers per thread: `fast`, the heap the allocation fast paths use (the current heap,
//! or the static [`crate::heap::SENTINEL`] when there is none or it is custom or tracking, so the fast paths
//! need no null check); `current` (`AG(mm_heap)`, null until made); and `own`, the thread's default
//! heap. The runtime module above keeps them consistent.
//!
//! On x86-64 Linux the slots are an initial-exec TLS symbol read with inline assembly: a Rust
//! `thread_local!` in a shared library goes through a call to `__tls_get_addr` on every access,
//! which was a fifth of the cost of an `emalloc` + `efree` pair. Elsewhere `thread_local!` serves
//! (the `portable-tls` feature selects it on x86-64 too, so `make test` exercises it).

use crate::heap::Heap;

/// One thread's heap slots.
#[repr(C)]
pub struct ThreadHeaps {
    pub fast: *mut Heap,
    pub current: *mut Heap,
    pub own: *mut Heap,
}

#[cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "portable-tls"),
    not(miri)
))]
mod imp {
    use super::ThreadHeaps;
    use crate::heap::Heap;

    // The slots, initialised to { &SENTINEL, NULL, NULL } in every thread. Hidden: visible to every
    // object of the library, exported by none.
    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl zend_alloc_thread_heaps",
        ".hidden zend_alloc_thread_heaps",
        ".type zend_alloc_thread_heaps, @tls_object",
        ".size zend_alloc_thread_heaps, 24",
        "zend_alloc_thread_heaps:",
        ".quad {sentinel}",
        ".quad 0",
        ".quad 0",
        ".popsection",
        sentinel = sym crate::heap::SENTINEL,
    );

    /// The fast-path heap: one load from the thread pointer.
    #[inline(always)]
    pub fn fast() -> *mut Heap {
        let heap: *mut Heap;
        // SAFETY: reads this thread's slot through the initial-exec TLS sequence; the symbol is a
        // 24-byte TLS object defined above.
        unsafe {
            core::arch::asm!(
                "movq zend_alloc_thread_heaps@GOTTPOFF(%rip), {heap}",
                "movq %fs:({heap}), {heap}",
                heap = out(reg) heap,
                options(att_syntax, nostack, preserves_flags, readonly),
            );
        }
        heap
    }

    /// This thread's slots.
    #[inline(always)]
    pub fn slots() -> *mut ThreadHeaps {
        let slots: *mut ThreadHeaps;
        // SAFETY: computes the address of this thread's copy of the TLS object defined above.
        unsafe {
            core::arch::asm!(
                "movq zend_alloc_thread_heaps@GOTTPOFF(%rip), {slots}",
                "addq %fs:0, {slots}",
                slots = out(reg) slots,
                options(att_syntax, nostack, pure, readonly),
            );
        }
        slots
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "portable-tls"),
    not(miri)
)))]
mod imp {
    use core::cell::UnsafeCell;

    use super::ThreadHeaps;
    use crate::heap::Heap;

    thread_local! {
        static SLOTS: UnsafeCell<ThreadHeaps> = const {
            UnsafeCell::new(ThreadHeaps {
                fast: crate::heap::SENTINEL.get(),
                current: core::ptr::null_mut(),
                own: core::ptr::null_mut(),
            })
        };
    }

    #[inline(always)]
    pub fn fast() -> *mut Heap {
        // SAFETY: this thread's own slots.
        SLOTS.with(|s| unsafe { (*s.get()).fast })
    }

    #[inline(always)]
    pub fn slots() -> *mut ThreadHeaps {
        SLOTS.with(UnsafeCell::get)
    }
}

pub use imp::{fast, slots};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_starts_with_the_sentinel_and_its_own_slots() {
        let here = slots() as usize;
        assert_eq!(fast(), crate::heap::SENTINEL.get());
        let there = std::thread::spawn(|| {
            assert_eq!(fast(), crate::heap::SENTINEL.get());
            // SAFETY: this thread's own slots.
            unsafe {
                assert!((*slots()).current.is_null() && (*slots()).own.is_null());
                (*slots()).fast = core::ptr::null_mut();
            }
            assert!(fast().is_null());
            slots() as usize
        })
        .join()
        .unwrap();
        assert_ne!(here, there);
        assert_eq!(fast(), crate::heap::SENTINEL.get());
    }
}
