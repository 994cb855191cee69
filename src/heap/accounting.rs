//! Accounting and the memory limit (zend_alloc.c's `ZEND_MM_STAT` / `ZEND_MM_LIMIT` parts).
//!
//! Owns the rules behind `zend_memory_usage`, the peaks and `zend_set_memory_limit`:
//! - the usage grows by the block size of every block handed out (bin size, whole pages,
//!   page-rounded huge size) and shrinks by the same when it is freed; internal blocks (the
//!   reserve) are not counted;
//! - it is kept as `peak` and `headroom`, the distance from the usage up to the peak (usage is
//!   `peak - headroom`, and `headroom >= 0` after every operation): a free adds to the headroom
//!   and touches nothing else, an allocation subtracts and, only when that goes below zero (a new
//!   peak), moves the peak up. One field written per free and one compare per allocation, where
//!   keeping usage and peak would need a compare on one of the two;
//! - `real_size` counts every byte taken from storage: segments (cached ones too) and huge blocks
//!   with their header page;
//! - the limit is checked only when memory is taken from storage, as in PHP 8, and not while a
//!   fatal error is being reported (the handler may need memory);
//! - with fault injection (`ZEND_MM_MAX_ALLOCS`, `zend_mm_set_max_allocs`) each request may make
//!   that many allocations; the next one is refused as if the limit were reached.

use core::ptr;

use super::Heap;

/// `zend_set_memory_limit` refused the new limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitBelowUsage;

impl Heap {
    /// Counts `bytes` handed out (a new peak moves the peak up).
    #[inline(always)]
    pub(super) fn count_alloc(&mut self, bytes: usize) {
        // Stored first and caught up out of line, so the common case is one subtract from memory
        // and a sign test.
        self.headroom = self.headroom.wrapping_sub(bytes as isize);
        if self.headroom < 0 {
            // A new peak: the usage went `-headroom` bytes above the old one. Read back from
            // memory, so the subtract above needs no copy of its result.
            // SAFETY: a read of a field of `self`.
            let headroom = unsafe { ptr::read_volatile(&self.headroom) };
            self.peak = self.peak.wrapping_sub(headroom as usize);
            self.headroom = 0;
        }
    }

    /// Counts `bytes` given back.
    #[inline(always)]
    pub(super) fn count_free(&mut self, bytes: usize) {
        self.headroom = self.headroom.wrapping_add(bytes as isize);
    }

    /// Bytes handed out and not freed (`zend_memory_usage(0)`).
    pub(super) fn used(&self) -> usize {
        self.peak.wrapping_sub(self.headroom as usize)
    }

    /// Sets the usage and its peak (`peak >= used`).
    pub(super) fn set_usage(&mut self, used: usize, peak: usize) {
        debug_assert!(peak >= used);
        self.peak = peak;
        self.headroom = (peak - used) as isize;
    }

    /// Counts `taken` bytes newly taken from storage, updating the real peak, in place of `released`
    /// bytes that left it (or moved into them) at the same time: the released ones go first, so
    /// the real peak never holds both.
    pub(super) fn count_storage_in_place_of(&mut self, released: usize, taken: usize) {
        self.real_size = self.real_size - released + taken;
        self.real_peak = self.real_peak.max(self.real_size);
    }

    /// Whether taking `grow` more bytes from storage stays within the limit (always while a fatal
    /// error is being reported).
    pub(super) fn within_limit(&self, grow: usize) -> bool {
        self.overflow != 0 || grow <= self.limit.saturating_sub(self.real_size)
    }

    /// `zend_memory_usage(real)`.
    pub fn usage(&self, real: bool) -> usize {
        if self.libc_only {
            0
        } else if real {
            self.real_size
        } else {
            self.used()
        }
    }

    /// `zend_memory_peak_usage(real)`.
    pub fn peak_usage(&self, real: bool) -> usize {
        if self.libc_only {
            0
        } else if real {
            self.real_peak
        } else {
            self.peak
        }
    }

    /// `zend_memory_reset_peak_usage()`: the peaks restart from the current usage.
    pub fn reset_peak(&mut self) {
        self.set_usage(self.used(), self.used());
        self.real_peak = self.real_size;
    }

    /// `zend_set_memory_limit(limit)` with PHP 8's rules: a limit below the current real usage is
    /// accepted only if dropping cached memory (segments, huge blocks) gets usage under it (it is
    /// dropped then: the cached huge blocks first, then segments one by one).
    pub fn set_limit(&mut self, limit: usize) -> Result<(), LimitBelowUsage> {
        if limit < self.real_size {
            // Freed large runs kept whole may be all that holds a segment.
            self.flush_run_cache();
            let cached_bytes = self.cached_segment_bytes() + self.cached_huge_bytes();
            if limit < self.real_size - cached_bytes {
                return Err(LimitBelowUsage);
            }
            if self.real_size > limit {
                self.release_cached_huge();
            }
            while self.real_size > limit {
                self.drop_one_cached_segment();
            }
        }
        self.limit = limit;
        // A new limit ends any error report in progress: the limit applies again.
        self.overflow = 0;
        Ok(())
    }

    /// The memory limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sets the allocations each request may make (`u64::MAX`: no limit), starting now.
    pub fn set_max_allocs(&mut self, max: u64) {
        self.max_allocs = max;
        self.allocs_left = max;
        self.allocs_hit = false;
    }

    /// Whether an allocation was refused for fault injection.
    pub fn max_allocs_hit(&self) -> bool {
        self.allocs_hit
    }

    /// Counts one allocation against the fault-injection budget; false if none is left (the
    /// allocation must fail).
    #[inline(always)]
    pub fn take_alloc_budget(&mut self) -> bool {
        if self.max_allocs == u64::MAX {
            return true;
        }
        if self.allocs_left == 0 {
            self.allocs_hit = true;
            return false;
        }
        self.allocs_left -= 1;
        true
    }
}
