//! The `mmap_anon` and `mmap_zero` storages: segments mapped straight from the kernel.
//!
//! `mmap_anon` uses anonymous private mappings; `mmap_zero` private mappings of `/dev/zero` (one file
//! descriptor, opened by the first heap that uses it and closed after the last one; kept in one
//! atomic word with its count of users, so no lock is ever held and a `fork` from any thread leaves
//! the child nothing to wait for). Segments (their
//! sizes are powers of two) are aligned to their size, as PHP aligns its chunks: the heap's free fast
//! path relies on it, and the kernel can back them with transparent huge pages. Growing and shrinking
//! use `mremap`.

use core::ffi::CStr;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{SegmentSource, StaticStorage, alignment_for, handlers_for};
use crate::ffi::types::{zend_mm_mem_handlers, zend_mm_storage};
use crate::sizes::ZEND_MM_PAGE_SIZE;

/// Maps `size` bytes from `fd` (-1: anonymous), aligned as [`alignment_for`] says. Null on failure.
fn map_aligned(size: usize, fd: i32) -> *mut u8 {
    let flags = if fd < 0 {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
    } else {
        libc::MAP_PRIVATE
    };
    let map = |len: usize| {
        // SAFETY: a fresh private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            ptr::null_mut()
        } else {
            p.cast::<u8>()
        }
    };
    let unmap = |p: *mut u8, len: usize| {
        if len > 0 {
            // SAFETY: `p..p+len` is part of a mapping made here and not handed out.
            unsafe { libc::munmap(p.cast(), len) };
        }
    };
    let align = alignment_for(size);
    let p = map(size);
    if p.is_null() || (p as usize) % align == 0 {
        return p;
    }
    // Misaligned: map enough to contain an aligned block, then trim the head and the tail.
    unmap(p, size);
    let Some(len) = size.checked_add(align - ZEND_MM_PAGE_SIZE) else {
        return ptr::null_mut();
    };
    let p = map(len);
    if p.is_null() {
        return p;
    }
    let head = (align - (p as usize) % align) % align;
    unmap(p, head);
    // SAFETY: head + size <= len, all inside the mapping.
    let aligned = unsafe { p.add(head) };
    // SAFETY: as above.
    unmap(unsafe { aligned.add(size) }, len - head - size);
    aligned
}

fn page_round(n: usize) -> usize {
    n.div_ceil(ZEND_MM_PAGE_SIZE) * ZEND_MM_PAGE_SIZE
}

/// # Safety
/// `p` must be a mapping of `old_size` bytes made by [`map_aligned`].
unsafe fn remap(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
    // SAFETY: `p` is a live mapping of `old_size` bytes (caller contract).
    let q = unsafe {
        libc::mremap(
            p.cast(),
            page_round(old_size),
            page_round(new_size),
            libc::MREMAP_MAYMOVE,
        )
    };
    if q == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        q.cast()
    }
}

/// # Safety
/// `p` must be a mapping of `size` bytes made by [`map_aligned`] or [`remap`].
unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: `p` is a live mapping of `size` bytes (caller contract).
    unsafe { libc::munmap(p.cast(), page_round(size)) };
}

pub struct MmapAnon;

pub(super) static ANON_HANDLERS: zend_mm_mem_handlers = handlers_for::<MmapAnon>();
static ANON_INSTANCE: StaticStorage = StaticStorage::new(&ANON_HANDLERS);

impl SegmentSource for MmapAnon {
    const NAME: &'static CStr = c"mmap_anon";

    fn instance() -> *mut zend_mm_storage {
        ANON_INSTANCE.get()
    }

    fn alloc(size: usize) -> *mut u8 {
        map_aligned(size, -1)
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded caller contract.
        unsafe { remap(p, old_size, new_size) }
    }

    unsafe fn free(p: *mut u8, size: usize) {
        // SAFETY: forwarded caller contract.
        unsafe { unmap(p, size) }
    }
}

pub struct MmapZero;

pub(super) static ZERO_HANDLERS: zend_mm_mem_handlers = handlers_for::<MmapZero>();
static ZERO_INSTANCE: StaticStorage = StaticStorage::new(&ZERO_HANDLERS);

/// `/dev/zero`'s descriptor (low 32 bits) and how many heaps use it (high 32 bits); 0 when no heap
/// does. Changed by compare-and-swap only.
static DEV_ZERO: AtomicU64 = AtomicU64::new(0);

fn dev_zero_state(users: u64, fd: i32) -> u64 {
    users << 32 | fd as u32 as u64
}

/// The open descriptor; only meaningful while the caller's heap counts as a user.
fn dev_zero_fd() -> i32 {
    let state = DEV_ZERO.load(Ordering::Acquire);
    if state >> 32 == 0 {
        -1
    } else {
        state as u32 as i32
    }
}

impl SegmentSource for MmapZero {
    const NAME: &'static CStr = c"mmap_zero";

    fn instance() -> *mut zend_mm_storage {
        ZERO_INSTANCE.get()
    }

    fn open() -> bool {
        loop {
            let state = DEV_ZERO.load(Ordering::Acquire);
            let users = state >> 32;
            if users > 0 {
                let more = dev_zero_state(users + 1, state as u32 as i32);
                if DEV_ZERO
                    .compare_exchange(state, more, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            // SAFETY: opening a device file by a static C string path.
            let fd = unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            if fd < 0 {
                return false;
            }
            if DEV_ZERO
                .compare_exchange(
                    state,
                    dev_zero_state(1, fd),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return true;
            }
            // Another heap opened it first: use theirs.
            // SAFETY: our own descriptor, never published.
            unsafe { libc::close(fd) };
        }
    }

    fn close() {
        loop {
            let state = DEV_ZERO.load(Ordering::Acquire);
            let (users, fd) = (state >> 32, state as u32 as i32);
            if users == 0 {
                return;
            }
            let fewer = if users == 1 {
                0
            } else {
                dev_zero_state(users - 1, fd)
            };
            if DEV_ZERO
                .compare_exchange(state, fewer, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if users == 1 {
                    // SAFETY: the descriptor was opened by `open` and no heap uses it any more.
                    unsafe { libc::close(fd) };
                }
                return;
            }
        }
    }

    fn alloc(size: usize) -> *mut u8 {
        let fd = dev_zero_fd();
        if fd < 0 {
            return ptr::null_mut();
        }
        map_aligned(size, fd)
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded caller contract.
        unsafe { remap(p, old_size, new_size) }
    }

    unsafe fn free(p: *mut u8, size: usize) {
        // SAFETY: forwarded caller contract.
        unsafe { unmap(p, size) }
    }
}
