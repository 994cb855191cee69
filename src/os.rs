//! The operating system's memory calls: `mmap`, `mremap`, `munmap`, `madvise`, and the C library's
//! `posix_memalign`/`free`.
//!
//! Owns nothing but the wrappers: each returns null (or does nothing) on failure instead of an
//! error code, rounds lengths to pages where the kernel wants them, and keeps the `libc` calls (and
//! their `unsafe`) in one place. The storages above decide what to map and when.

use core::ffi::c_void;
use core::ptr;

use crate::sizes::ZEND_MM_PAGE_SIZE;

/// `n` rounded up to whole pages.
pub fn page_round(n: usize) -> usize {
    n.div_ceil(ZEND_MM_PAGE_SIZE) * ZEND_MM_PAGE_SIZE
}

/// A fresh private read-write mapping of `len` bytes: anonymous when `fd` is negative, else of
/// `fd` (`/dev/zero`). `no_reserve` maps without reserving swap (for sparse tables). Null on failure.
pub fn map(len: usize, fd: i32, no_reserve: bool) -> *mut u8 {
    let mut flags = libc::MAP_PRIVATE;
    if fd < 0 {
        flags |= libc::MAP_ANONYMOUS;
    }
    if no_reserve {
        flags |= libc::MAP_NORESERVE;
    }
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
        p.cast()
    }
}

/// Unmaps `len` bytes (rounded up to pages) at `p`; nothing for an empty range.
///
/// # Safety
/// `p..p + len` must be part of a mapping made by [`map`] (or [`remap`]) that nothing uses any more.
pub unsafe fn unmap(p: *mut u8, len: usize) {
    if len > 0 {
        // SAFETY: the range is ours and unused (caller contract).
        unsafe { libc::munmap(p.cast(), page_round(len)) };
    }
}

/// Maps `size` bytes aligned to `align` (a power of two, at least a page): maps `size` and keeps
/// it if the kernel happened to align it, else maps enough to contain an aligned block and trims
/// the head and the tail. Null on failure.
pub fn map_aligned(size: usize, align: usize, fd: i32) -> *mut u8 {
    let p = map(size, fd, false);
    if p.is_null() || p.addr() % align == 0 {
        return p;
    }
    // SAFETY: our own fresh mapping.
    unsafe { unmap(p, size) };
    let Some(len) = size.checked_add(align - ZEND_MM_PAGE_SIZE) else {
        return ptr::null_mut();
    };
    let p = map(len, fd, false);
    if p.is_null() {
        return p;
    }
    let head = (align - p.addr() % align) % align;
    let aligned = p.wrapping_add(head);
    // SAFETY: the head and the tail are parts of our fresh mapping outside the block kept.
    unsafe {
        unmap(p, head);
        unmap(aligned.wrapping_add(size), len - head - size);
    }
    aligned
}

/// Resizes a mapping, moving it if the kernel must. Null on failure, the mapping intact.
///
/// # Safety
/// `p` must be a live mapping of `old_size` bytes made by [`map`] or [`remap`].
pub unsafe fn remap(p: *mut u8, old_size: usize, new_size: usize) -> *mut u8 {
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

/// Asks the kernel to back the whole pages of `p..p + size` with transparent huge pages. A hint:
/// failure (no THP in the kernel) changes nothing.
pub fn advise_huge_pages(p: *mut u8, size: usize) {
    let start = p.addr().next_multiple_of(ZEND_MM_PAGE_SIZE);
    let end = (p.addr() + size) & !(ZEND_MM_PAGE_SIZE - 1);
    if !p.is_null() && end > start {
        // SAFETY: MADV_HUGEPAGE changes no contents; on a range that is not mapped it fails.
        unsafe { libc::madvise(p.with_addr(start).cast(), end - start, libc::MADV_HUGEPAGE) };
    }
}

/// `/dev/zero` opened for reading and writing (close-on-exec); negative on failure.
pub fn open_dev_zero() -> i32 {
    // SAFETY: opening a device file by a static C string path.
    unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }
}

/// Closes a descriptor this library opened.
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor changes no memory; the callers own `fd`.
    unsafe { libc::close(fd) };
}

/// Gives the whole pages strictly inside `p + keep..p + len` back to the kernel
/// (`MADV_DONTNEED`): their contents are lost, their addresses stay valid (zero pages on the next
/// touch). The first `keep` bytes stay as they are.
///
/// # Safety
/// `p..p + len` must be memory of the caller's whose contents past `keep` nobody needs.
pub unsafe fn discard(p: *mut u8, keep: usize, len: usize) {
    let start = (p.addr() + keep).next_multiple_of(ZEND_MM_PAGE_SIZE);
    let end = (p.addr() + len) & !(ZEND_MM_PAGE_SIZE - 1);
    if end > start {
        // SAFETY: whole pages of the caller's memory whose contents are not needed (caller
        // contract).
        unsafe { libc::madvise(p.with_addr(start).cast(), end - start, libc::MADV_DONTNEED) };
    }
}

/// `posix_memalign`: `size` bytes aligned to `align` from the C library's heap, or null.
pub fn c_alloc_aligned(size: usize, align: usize) -> *mut u8 {
    let mut p: *mut c_void = ptr::null_mut();
    // SAFETY: plain libc allocation into a local out-pointer.
    if unsafe { libc::posix_memalign(&mut p, align, size) } != 0 {
        return ptr::null_mut();
    }
    p.cast()
}

/// The C library's `free`.
///
/// # Safety
/// `p` must be null or a live block of the C library's heap, not used afterwards.
pub unsafe fn c_free(p: *mut u8) {
    // SAFETY: caller contract.
    unsafe { libc::free(p.cast()) }
}

/// Milliseconds of a monotonic clock (coarse: a few milliseconds of resolution, no system call).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the coarse monotonic clock needs no privilege.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}
