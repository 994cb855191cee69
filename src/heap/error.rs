//! Errors (zend_alloc.c's `zend_mm_safe_error` state): why an allocation was refused, what the
//! heap does while a fatal error is reported, and PHP 5.3's reserve.
//!
//! Owns the refusal an allocation path returns, its translation into PHP's fatal error, the
//! `overflow` flag with the stack mark that ends it, and the reserve. Raising the error (calling
//! the handler) is [`super::api`]'s, done once no borrow of the heap is live.

use core::ptr;

use super::Heap;
use crate::diagnostics::Fatal;
use crate::sizes::ZEND_MM_PAGE_SIZE;

/// Why the heap could not serve a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The memory limit would be exceeded.
    Limit,
    /// The storage (or a custom handler) had no memory.
    OutOfMemory,
    /// Rounding the size up to whole pages overflows.
    Overflow,
}

impl Heap {
    /// PHP's fatal error for a request of `tried` bytes this heap refused.
    pub fn fatal_for(&self, refusal: Refusal, tried: usize) -> Fatal {
        match refusal {
            Refusal::Limit => Fatal::Limit {
                limit: self.limit,
                tried,
            },
            Refusal::OutOfMemory => Fatal::OutOfMemory {
                allocated: self.real_size,
                tried,
            },
            Refusal::Overflow => Fatal::Overflow2 {
                size: tried,
                add: ZEND_MM_PAGE_SIZE,
            },
        }
    }

    /// Sets the error-path reserve aside (not counted as usage).
    pub(super) fn fill_reserve(&mut self) {
        if self.reserve_size == 0 || !self.reserve.is_null() {
            return;
        }
        let (used, peak) = (self.used(), self.peak);
        self.reserve = self.alloc(self.reserve_size).unwrap_or(ptr::null_mut());
        self.unmark_untracked(self.reserve);
        self.set_usage(used, peak);
    }

    /// Gives the reserve back so an error handler has memory to work with.
    pub(super) fn release_reserve(&mut self) {
        let p = core::mem::replace(&mut self.reserve, ptr::null_mut());
        if !p.is_null() {
            // The reserve is not usage: its free leaves usage and peak alone.
            let (used, peak) = (self.used(), self.peak);
            self.free(p);
            self.set_usage(used, peak);
        }
    }

    /// Whether the reserve is set aside (or none was asked for).
    pub fn has_reserve(&self) -> bool {
        self.reserve_size == 0 || !self.reserve.is_null()
    }

    /// Bytes of the reserve, if it is set aside.
    pub(super) fn reserve_bytes(&self) -> usize {
        if self.reserve.is_null() {
            0
        } else {
            self.block_size(self.reserve)
        }
    }

    /// Entered when `fatal` is about to be reported for this heap from the frame marked `mark`.
    /// Limit and out-of-memory errors suspend the limit while the handler runs, as in PHP 8 (the
    /// handler may need memory); the first report's mark is kept through nested ones.
    pub(super) fn begin_error_report(&mut self, fatal: &Fatal, mark: usize) {
        self.end_finished_report(mark);
        if fatal.suspends_limit() && self.overflow == 0 {
            self.overflow = 1;
            self.report_mark = mark;
        }
        self.release_reserve();
    }

    /// Called on entry to the library from the frame marked `entry_mark`: if that frame is
    /// shallower than the `raise` of the error being reported, the handler has returned or
    /// longjmped out (PHP's bailout), and the limit applies again. (PHP re-arms it in
    /// `zend_mm_safe_error`'s catch block; a longjmp from a C handler passes no code of ours, so the
    /// next call from outside the handler is the first moment the library can tell.)
    #[inline(always)]
    pub fn end_finished_report(&mut self, entry_mark: usize) {
        if self.overflow != 0 && entry_mark > self.report_mark {
            self.overflow = 0;
        }
    }

    /// Whether a memory-limit or out-of-memory error is being reported (the limit is suspended).
    pub fn in_error_report(&self) -> bool {
        self.overflow != 0
    }
}
