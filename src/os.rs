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
/// resizes only one: such a range grows by moving its pages onto a fresh mapping (of `fd`, as
/// [`map`]) of the new size. `errno` stays as it was: the refusals on the way are the library's
/// business, not the program's (a `realloc` that succeeds leaves `errno` alone).
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
/// resident: nothing is copied or faulted in. False if the kernel refused, with nothing changed,
/// `errno` included.
///
/// A range pages moved into before is several mappings to the kernel. Linux moves such a range in
/// one call since 6.17, and never one of `/dev/zero` mappings; otherwise it answers `EFAULT`, and
/// the range moves a mapping at a time, each found by halving the length until the kernel takes
/// it (a failed `mremap` changes nothing). Once part of the range has moved, a part the kernel
/// still refuses (it could only be out of mappings) is copied and unmapped instead, so the call
/// never stops halfway.
///
/// # Safety
/// `from..from + len` must be part of a private mapping made by [`map`], `to..to + len` part of
/// private anonymous memory (such a mapping, or a block the C library gave); they must not
/// overlap; nothing may use `from..from + len` after, nor the old contents at `to`.
pub unsafe fn move_pages(from: *mut u8, len: usize, to: *mut u8) -> bool {
    let saved = last_error();
    let len = page_round(len);
    let (mut done, mut piece) = (0, len);
    while done < len {
        // SAFETY: parts of both ranges (caller contract); with MREMAP_FIXED the kernel replaces
        // the mapping at the target and leaves the source unmapped, or changes nothing.
        let q = unsafe {
            libc::mremap(
                from.add(done).cast(),
                piece,
                piece,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to.add(done).cast::<libc::c_void>(),
            )
        };
        if q != libc::MAP_FAILED {
            done += piece;
            piece = len - done;
        } else if last_error() == libc::EFAULT && piece > ZEND_MM_PAGE_SIZE {
            piece = (piece / 2).next_multiple_of(ZEND_MM_PAGE_SIZE);
        } else if done == 0 {
            set_last_error(saved);
            return false;
        } else {
            // SAFETY: the rest of both ranges is still mapped (nothing moved it) and ours.
            unsafe {
                ptr::copy_nonoverlapping(from.add(done), to.add(done), len - done);
                unmap(from.add(done), len - done);
            }
            done = len;
        }
    }
    set_last_error(saved);
    true
}

/// Moves the pages of `from..from + len` onto `to..to + len`, as [`move_pages`] does, but leaves
/// the source range mapped, reading as zeros, with no page resident (`MREMAP_DONTUNMAP`, Linux
/// 5.7): for memory another allocator owns, which must stay mapped for it. One call or nothing:
/// false (nothing changed, `errno` kept) where the kernel refuses, as before 5.7, under valgrind,
/// or when the source is several mappings to the kernel (pages were moved into it).
///
/// # Safety
/// `from..from + len` must be private anonymous memory whose contents nobody needs, `to..to + len`
/// part of a private mapping whose old contents nobody needs; they must not overlap; both page
/// aligned.
pub unsafe fn move_pages_leaving_source(from: *mut u8, len: usize, to: *mut u8) -> bool {
    let saved = last_error();
    // SAFETY: both ranges are the caller's (contract); the kernel moves the page tables or changes
    // nothing.
    let q = unsafe {
        libc::mremap(
            from.cast(),
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
            to.cast::<libc::c_void>(),
        )
    };
    set_last_error(saved);
    q != libc::MAP_FAILED
}

/// Whether [`move_pages_leaving_source`] works here: tried once on two pages of a private
/// mapping of its own, the answer kept.
pub fn moves_pages_leaving_source() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;
    static ANSWER: AtomicU8 = AtomicU8::new(UNKNOWN);
    if cfg!(miri) {
        return false; // Miri has no `mremap` onto a fixed address
    }
    match ANSWER.load(Ordering::Relaxed) {
        YES => return true,
        NO => return false,
        _ => {}
    }
    let p = map(2 * ZEND_MM_PAGE_SIZE, -1, false);
    if p.is_null() {
        return false; // out of memory now: ask again next time
    }
    // SAFETY: both pages are this fresh mapping's, which nothing else uses; it is unmapped whole.
    let works = unsafe {
        p.write(1);
        let moved = move_pages_leaving_source(p, ZEND_MM_PAGE_SIZE, p.add(ZEND_MM_PAGE_SIZE));
        let works = moved && p.read() == 0 && p.add(ZEND_MM_PAGE_SIZE).read() == 1;
        unmap(p, 2 * ZEND_MM_PAGE_SIZE);
        works
    };
    ANSWER.store(if works { YES } else { NO }, Ordering::Relaxed);
    works
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
/// `p..p + len` must be memory of the caller's whose contents in `keep..len` nobody needs.
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

    /// `pages` fresh pages of `fd` (as [`map`]), page `i` holding `first + i` in its first byte.
    fn numbered(pages: usize, first: u8, fd: i32) -> *mut u8 {
        let p = map(pages * PAGE, fd, false);
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

    /// Resident pages of `p..p + pages` (`mincore`).
    fn resident(p: *mut u8, pages: usize) -> usize {
        let mut vec = vec![0u8; pages];
        // SAFETY: a mapped, page-aligned range of ours and a vector of one byte per page.
        let status = unsafe { libc::mincore(p.cast(), pages * PAGE, vec.as_mut_ptr().cast()) };
        assert_eq!(status, 0);
        vec.iter().filter(|&&v| v & 1 != 0).count()
    }

    /// Moves pages into the middle of a mapping, moves the resulting range of three mappings
    /// elsewhere and grows it: every page keeps its contents and stays resident, and `errno`
    /// stays the program's. On `/dev/zero` mappings (whose multi-mapping moves the kernel
    /// refuses) and, before Linux 6.17, anonymous ones, the range moves a mapping at a time.
    fn moves_keep_contents(fd: i32) {
        let host = numbered(4, 10, fd);
        let guest = numbered(2, 20, fd);
        // SAFETY: our own mappings; `guest` is gone after the move.
        assert!(unsafe { move_pages(guest, 2 * PAGE, host.add(PAGE)) });
        assert_eq!(first_bytes(host, 4), [10, 20, 21, 13]);
        // `host` is three mappings to the kernel now.
        let elsewhere = map(4 * PAGE, fd, false);
        assert!(!elsewhere.is_null());
        set_last_error(libc::EILSEQ);
        // SAFETY: `host` is 4 live pages of ours, `elsewhere` a fresh mapping; `host` is gone
        // after.
        assert!(unsafe { move_pages(host, 4 * PAGE, elsewhere) });
        assert_eq!(last_error(), libc::EILSEQ);
        assert_eq!(
            resident(elsewhere, 4),
            4,
            "moved, not copied into fresh pages"
        );
        assert_eq!(first_bytes(elsewhere, 4), [10, 20, 21, 13]);
        // Growing it must keep every page too, and the refusals on the way are not the
        // program's errno.
        // SAFETY: `elsewhere` is 4 live pages of ours.
        let grown = unsafe { remap(elsewhere, 4 * PAGE, 64 * PAGE, fd) };
        assert_eq!(last_error(), libc::EILSEQ);
        assert!(!grown.is_null(), "grown by moving the pieces");
        assert_eq!(first_bytes(grown, 4), [10, 20, 21, 13]);
        // SAFETY: as above; the grown range's new pages are writable.
        unsafe {
            grown.add(63 * PAGE).write(1);
            unmap(grown, 64 * PAGE);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn moved_anonymous_pages_keep_their_contents_and_a_range_made_of_them_still_moves_and_grows() {
        moves_keep_contents(-1);
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn moved_dev_zero_pages_keep_their_contents_and_a_range_made_of_them_still_moves_and_grows() {
        let fd = open_dev_zero();
        assert!(fd >= 0);
        moves_keep_contents(fd);
        close(fd);
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps memory")]
    fn a_move_the_kernel_refuses_at_once_changes_nothing() {
        let (host, guest) = (numbered(2, 10, -1), numbered(1, 20, -1));
        set_last_error(libc::EILSEQ);
        // SAFETY: our own mappings; a target off a page boundary is refused (EINVAL) before
        // anything moves.
        assert!(!unsafe { move_pages(guest, PAGE, host.add(16)) });
        assert_eq!(last_error(), libc::EILSEQ);
        assert_eq!(first_bytes(host, 2), [10, 11]);
        assert_eq!(first_bytes(guest, 1), [20], "the source is still mapped");
        // SAFETY: ours.
        unsafe {
            unmap(host, 2 * PAGE);
            unmap(guest, PAGE);
        }
    }
}
