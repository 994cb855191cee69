//! The operating system's memory calls: `mmap`, `mremap`, `munmap`, `madvise`, and the C library's
//! `posix_memalign`/`free`.
//!
//! Owns nothing but the wrappers: each returns null (or does nothing) on failure instead of an
//! error code, rounds lengths to pages where the kernel wants them, and keeps the `libc` calls (and
//! their `unsafe`) in one place. The storages above decide what to map and when.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicU8, Ordering};

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

/// The calling thread's `errno`: why the last failing system call failed.
fn last_error() -> i32 {
    // SAFETY: the thread's own errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno` (back to what a caller had before a call that failed on the
/// way to an answer).
fn set_last_error(value: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = value };
}

/// Resizes a mapping, moving it if the kernel must. Null on failure, the mapping intact. A range
/// that pages moved into from elsewhere ([`move_pages`]) is several mappings to the kernel, which
/// resizes only one: such a range grows by moving all its pages onto a fresh mapping (of `fd`, as
/// [`map`]) of the new size, which Linux does across mappings since 6.17 (before, the resize is
/// refused and the caller copies). `errno` stays as it was: the refusals on the way are the
/// library's business, not the program's (a `realloc` that succeeds leaves `errno` alone).
///
/// # Safety
/// `p` must be a live mapping of `old_size` bytes made by [`map`] or [`remap`] (or pieces of such
/// mappings that meet).
pub unsafe fn remap(p: *mut u8, old_size: usize, new_size: usize, fd: i32) -> *mut u8 {
    let (old, new) = (page_round(old_size), page_round(new_size));
    let saved = last_error();
    // SAFETY: `p` is a live mapping of `old_size` bytes (caller contract).
    let q = unsafe { libc::mremap(p.cast(), old, new, libc::MREMAP_MAYMOVE) };
    if q != libc::MAP_FAILED {
        return q.cast();
    }
    let spans_mappings = last_error() == libc::EFAULT;
    set_last_error(saved);
    if new <= old || !spans_mappings {
        return ptr::null_mut();
    }
    let fresh = map(new, fd, false);
    if !fresh.is_null() {
        // SAFETY: `p..p + old` is ours (caller contract) and `fresh` our own new mapping; after
        // the move `p` is gone, as after a moving `mremap`.
        unsafe {
            if move_pages(p, old, fresh) {
                return fresh;
            }
            unmap(fresh, new);
        }
    }
    set_last_error(saved);
    ptr::null_mut()
}

/// Moves the pages of `from..from + len` (whole pages) onto `to..to + len`, replacing what was
/// mapped there; the range at `from` is unmapped after. The pages keep their contents and stay
/// resident: nothing is copied or faulted in. False if the kernel refused (a range of several
/// mappings, before Linux 6.17), with nothing changed, `errno` included.
///
/// # Safety
/// Both ranges must be parts of private mappings made by [`map`] that do not overlap; nothing may
/// use `from..from + len` after, nor the old contents at `to`.
pub unsafe fn move_pages(from: *mut u8, len: usize, to: *mut u8) -> bool {
    let saved = last_error();
    // SAFETY: both ranges are ours (caller contract); with MREMAP_FIXED the kernel replaces the
    // mapping at `to` and leaves `from` unmapped, or changes nothing when it fails.
    let q = unsafe {
        libc::mremap(
            from.cast(),
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to.cast::<libc::c_void>(),
        )
    };
    set_last_error(saved);
    q != libc::MAP_FAILED
}

/// Whether the kernel moves a range of pages that spans several mappings in one [`move_pages`]
/// (Linux 6.17 and later), asked once per process by trying it on three pages of its own. A
/// range pages moved into is several mappings to the kernel, so moving or growing it later needs
/// this: without it, the heap moves no pages (growing such a block would copy it).
pub fn moves_across_mappings() -> bool {
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;
    static ANSWER: AtomicU8 = AtomicU8::new(UNKNOWN);
    match ANSWER.load(Ordering::Relaxed) {
        YES => return true,
        NO => return false,
        _ => {}
    }
    let works = probe_moves_across_mappings();
    ANSWER.store(if works { YES } else { NO }, Ordering::Relaxed);
    works
}

/// Tries [`move_pages`] on a range of two mappings (a page of one and a page moved in from
/// another); whether the pages arrived.
fn probe_moves_across_mappings() -> bool {
    let page = ZEND_MM_PAGE_SIZE;
    let (two, one, target) = (
        map(2 * page, -1, false),
        map(page, -1, false),
        map(2 * page, -1, false),
    );
    // SAFETY: our own fresh mappings; each is unmapped once, by a move or here.
    unsafe {
        if !two.is_null() && !one.is_null() && !target.is_null() {
            two.write(1);
            one.write(2);
            if move_pages(one, page, two.add(page)) {
                let works = move_pages(two, 2 * page, target);
                if !works {
                    unmap(two, 2 * page);
                }
                let works = works && target.read() == 1 && target.add(page).read() == 2;
                unmap(target, 2 * page);
                return works;
            }
        }
        for (p, len) in [(two, 2 * page), (one, page), (target, 2 * page)] {
            if !p.is_null() {
                unmap(p, len);
            }
        }
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = ZEND_MM_PAGE_SIZE;

    /// `pages` fresh pages, page `i` holding `first + i` in its first byte.
    fn numbered(pages: usize, first: u8) -> *mut u8 {
        let p = map(pages * PAGE, -1, false);
        assert!(!p.is_null());
        for i in 0..pages {
            // SAFETY: inside the fresh mapping.
            unsafe { p.add(i * PAGE).write(first + i as u8) };
        }
        p
    }

    fn first_bytes(p: *mut u8, pages: usize) -> Vec<u8> {
        // SAFETY: the caller's mapped pages.
        (0..pages)
            .map(|i| unsafe { p.add(i * PAGE).read() })
            .collect()
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn moved_pages_keep_their_contents_and_a_range_made_of_them_still_grows() {
        let host = numbered(4, 10);
        let guest = numbered(2, 20);
        // SAFETY: our own mappings; `guest` is gone after the move.
        assert!(unsafe { move_pages(guest, 2 * PAGE, host.add(PAGE)) });
        assert_eq!(first_bytes(host, 4), [10, 20, 21, 13]);
        // `host` is three mappings to the kernel now; growing it must keep every page, and the
        // kernel's refusal on the way is not the program's errno.
        set_last_error(libc::EILSEQ);
        // SAFETY: `host` is 4 live pages of ours.
        let grown = unsafe { remap(host, 4 * PAGE, 64 * PAGE, -1) };
        assert_eq!(last_error(), libc::EILSEQ);
        if moves_across_mappings() {
            assert!(!grown.is_null(), "grown by moving the pieces");
        }
        let kept = if grown.is_null() { host } else { grown };
        assert_eq!(first_bytes(kept, 4), [10, 20, 21, 13]);
        // SAFETY: as above; the grown range's new pages are writable.
        unsafe {
            if !grown.is_null() {
                kept.add(63 * PAGE).write(1);
            }
            unmap(kept, if grown.is_null() { 4 } else { 64 } * PAGE);
        }
    }
}
