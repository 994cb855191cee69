//! The `mmap_anon` and `mmap_zero` storages: segments mapped straight from the kernel.
//!
//! `mmap_anon` uses anonymous private mappings; `mmap_zero` private mappings of `/dev/zero` (one file
//! descriptor, opened by the first heap that uses it and closed after the last one; kept in one
//! atomic word with its count of users, so no lock is ever held and a `fork` from any thread leaves
//! the child nothing to wait for). Segments (their
//! sizes are powers of two) are aligned to their size, as PHP aligns its chunks: the heap's free fast
//! path relies on it, and the kernel can back them with transparent huge pages. Growing and shrinking
//! use `mremap`. Both also move pages from one allocation into another (`mremap` onto a fixed
//! address, a mapping at a time where the kernel moves no range of several: see `os::move_pages`).

use core::ffi::CStr;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{SegmentSource, alignment_for};
use crate::os;

pub struct MmapAnon;

impl SegmentSource for MmapAnon {
    const NAME: &'static CStr = c"mmap_anon";
    const RESIZE_KEEPS_PAGES: bool = true;
    const SPLITS: Option<fn(usize) -> bool> = Some(|_| true);

    fn fresh_zeroed(_: usize) -> bool {
        true
    }

    unsafe fn discard(p: *mut u8, keep: usize, len: usize) {
        // SAFETY: private pages of a live mapping of ours whose contents are dead (caller
        // contract).
        unsafe { os::discard(p, keep, len) }
    }

    fn moves_pages() -> bool {
        true
    }

    unsafe fn move_pages(from: *mut u8, len: usize, to: *mut u8, _whole: bool) -> bool {
        // SAFETY: parts of private mappings of ours (caller contract).
        unsafe { os::move_pages(from, len, to) }
    }

    fn alloc(size: usize) -> *mut u8 {
        os::map_aligned(size, alignment_for(size), -1)
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded caller contract.
        unsafe { os::remap(p, old_size, new_size, -1) }
    }

    unsafe fn free(p: *mut u8, size: usize) {
        // SAFETY: forwarded caller contract.
        unsafe { os::unmap(p, size) }
    }
}

pub struct MmapZero;

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
    const RESIZE_KEEPS_PAGES: bool = true;
    const SPLITS: Option<fn(usize) -> bool> = Some(|_| true);

    fn fresh_zeroed(_: usize) -> bool {
        true
    }

    unsafe fn discard(p: *mut u8, keep: usize, len: usize) {
        // SAFETY: private pages of a live mapping of ours whose contents are dead (caller
        // contract).
        unsafe { os::discard(p, keep, len) }
    }

    fn moves_pages() -> bool {
        true
    }

    unsafe fn move_pages(from: *mut u8, len: usize, to: *mut u8, _whole: bool) -> bool {
        // SAFETY: parts of private mappings of ours (caller contract).
        unsafe { os::move_pages(from, len, to) }
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
            let fd = os::open_dev_zero();
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
            os::close(fd);
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
                    // Opened by `open`; no heap uses it any more.
                    os::close(fd);
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
        os::map_aligned(size, alignment_for(size), fd)
    }

    unsafe fn realloc(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded caller contract.
        unsafe { os::remap(p, old_size, new_size, dev_zero_fd()) }
    }

    unsafe fn free(p: *mut u8, size: usize) {
        // SAFETY: forwarded caller contract.
        unsafe { os::unmap(p, size) }
    }
}
