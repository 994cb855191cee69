//! Heaps that stand for memory the library did not make.
//!
//! PHP lets a caller turn any zeroed block into a heap by giving it custom handlers: PHP's
//! `zend_mm_set_custom_handlers` writes the handlers into that memory, and `zend_mm_set_heap` then
//! makes it current (PHP's own `ext/zend_test` does this with `malloc(4096)`). The library never
//! writes into memory it did not hand out, so it makes a heap of its own that forwards to the
//! handlers and remembers which foreign address stands for it. Every heap argument from C is
//! translated through this table after the region map said it is not a heap the library made.
//!
//! Invariant: a slot's heap is published before its address, and its address is withdrawn before
//! its heap, so a lookup never sees an address without its heap.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::heap::Heap;
use crate::runtime;

/// How many foreign addresses can stand for heaps at once.
pub(super) const CAPACITY: usize = 16;

struct Slot {
    address: AtomicUsize,
    heap: AtomicPtr<Heap>,
}

static SLOTS: [Slot; CAPACITY] = [const {
    Slot {
        address: AtomicUsize::new(0),
        heap: AtomicPtr::new(ptr::null_mut()),
    }
}; CAPACITY];

/// The heap that stands for `address`, or null if none does.
pub(super) fn lookup(address: usize) -> *mut Heap {
    for slot in &SLOTS {
        if address != 0 && slot.address.load(Ordering::Acquire) == address {
            return slot.heap.load(Ordering::Acquire);
        }
    }
    ptr::null_mut()
}

/// The heap that stands for `address`, made (from the process options) if none does yet. Null if
/// every slot is taken or no heap can be made.
pub(super) fn adopt(address: usize) -> *mut Heap {
    let found = lookup(address);
    if !found.is_null() {
        return found;
    }
    // Two threads adopting one address must end with one heap: the second looks again under the
    // lock. Adoptions are rare (a heap handed over with custom handlers), so a spin lock will do.
    while ADOPTING
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let heap = adopt_locked(address);
    ADOPTING.store(false, Ordering::Release);
    heap
}

/// Held while an address is being adopted.
static ADOPTING: AtomicBool = AtomicBool::new(false);

/// [`adopt`] under its lock.
fn adopt_locked(address: usize) -> *mut Heap {
    let found = lookup(address);
    if !found.is_null() {
        return found;
    }
    let heap = runtime::new_default_heap(false);
    if heap.is_null() {
        return heap;
    }
    for slot in &SLOTS {
        if slot
            .heap
            .compare_exchange(ptr::null_mut(), heap, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            slot.address.store(address, Ordering::Release);
            return heap;
        }
    }
    // SAFETY: the heap was just made and nothing refers to it.
    unsafe { Heap::shutdown(heap, true) };
    ptr::null_mut()
}

/// Forgets the foreign address that stands for `heap` (it was shut down for good).
pub(super) fn release(heap: *mut Heap) {
    for slot in &SLOTS {
        if slot.heap.load(Ordering::Acquire) == heap {
            slot.address.store(0, Ordering::Release);
            slot.heap.store(ptr::null_mut(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_adopting_one_address_get_one_heap() {
        const THREADS: usize = 4;
        for round in 0..20usize {
            // An address no heap stands for (never dereferenced).
            let address = 0x7e57_0000_0000 + round * 4096;
            let barrier = std::sync::Barrier::new(THREADS);
            let heaps: std::vec::Vec<usize> = std::thread::scope(|s| {
                let workers: std::vec::Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            adopt(address).addr()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            assert!(heaps[0] != 0);
            assert!(
                heaps.iter().all(|&h| h == heaps[0]),
                "round {round}: {heaps:x?}"
            );
            let heap = lookup(address);
            assert_eq!(heap.addr(), heaps[0]);
            release(heap);
            assert!(lookup(address).is_null());
            // SAFETY: the stand-in was just forgotten and no thread uses it.
            unsafe { Heap::shutdown(heap, true) };
        }
    }
}
