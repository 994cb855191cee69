//! Page bitmaps (zend_alloc.c "Bitmask"): one bit per page of a segment, set = page in use.
//!
//! Owns the run arithmetic the segment's page allocator needs: find the best-fitting free run, the
//! longest free run, mark and clear runs. Bits past the last page are kept set, so no search ever
//! returns a page the segment does not have.

/// A run found by [`PageBitmap::best_fit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fit {
    pub start: usize,
    pub len: usize,
    /// The longest and second longest runs seen (equal when two runs tie); exact for the whole
    /// bitmap when `complete`, since the search then saw every run.
    pub longest: usize,
    pub second: usize,
    pub complete: bool,
}

impl Fit {
    /// The longest free run once `n` pages of this fit are taken, if the search tells.
    pub fn longest_after_taking(&self, n: usize) -> Option<usize> {
        if !self.complete {
            return None;
        }
        Some(if self.len == self.longest {
            self.second.max(self.len - n)
        } else {
            self.longest
        })
    }
}

/// A view of a segment's page bitmap.
pub struct PageBitmap<'a> {
    words: &'a mut [u64],
    pages: usize,
}

const ONES: u64 = u64::MAX;

impl<'a> PageBitmap<'a> {
    /// Wraps `words` as the bitmap of a segment with `pages` pages.
    pub fn new(words: &'a mut [u64], pages: usize) -> Self {
        debug_assert!(words.len() * 64 >= pages);
        PageBitmap { words, pages }
    }

    /// Words needed for `pages` pages.
    pub const fn words_for(pages: usize) -> usize {
        pages.div_ceil(64)
    }

    /// Marks every page free, and the bits past the end as used.
    pub fn reset(&mut self) {
        self.words.fill(0);
        let tail = self.pages % 64;
        if tail != 0 {
            let last = self.words.len() - 1;
            self.words[last] = ONES << tail;
        }
        for w in self.words.iter_mut().skip(self.pages.div_ceil(64)) {
            *w = ONES;
        }
    }

    /// Marks `len` pages from `start` used.
    pub fn set_range(&mut self, start: usize, len: usize) {
        self.apply(start, len, |w, m| *w |= m);
    }

    /// Marks `len` pages from `start` free.
    pub fn clear_range(&mut self, start: usize, len: usize) {
        self.apply(start, len, |w, m| *w &= !m);
    }

    fn apply(&mut self, start: usize, len: usize, f: impl Fn(&mut u64, u64)) {
        debug_assert!(start + len <= self.pages);
        let (mut i, end) = (start, start + len);
        while i < end {
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                ONES
            } else {
                ((1u64 << n) - 1) << bit
            };
            f(&mut self.words[i / 64], mask);
            i += n;
        }
    }

    /// Whether all `len` pages from `start` are free (false if the range leaves the segment).
    pub fn is_free(&self, start: usize, len: usize) -> bool {
        start + len <= self.pages && self.next_used(start) >= start + len
    }

    /// Whether page `i` is in use.
    pub fn is_used(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// First used page at or after `i`, or `pages`.
    fn next_used(&self, i: usize) -> usize {
        let mut w = i / 64;
        if w >= self.words.len() {
            return self.pages;
        }
        let mut bits = self.words[w] & (ONES << (i % 64));
        loop {
            if bits != 0 {
                return (w * 64 + bits.trailing_zeros() as usize).min(self.pages);
            }
            w += 1;
            if w >= self.words.len() {
                return self.pages;
            }
            bits = self.words[w];
        }
    }

    /// Calls `f(start, len)` for each free run, in address order, until it returns false.
    ///
    /// Walks the words once. In each, a run starts at a free page whose predecessor is used and
    /// ends at a used page whose predecessor is free: two masks, whose bits alternate in address
    /// order, so each run costs one `trailing_zeros` per end; full words inside a run (or between
    /// runs) cost a few bit operations.
    pub fn for_each_free_run(&self, mut f: impl FnMut(usize, usize) -> bool) {
        // The start of the run the walk is in, if any.
        let mut run_start = None;
        for (w, &used) in self.words.iter().enumerate() {
            let base = w * 64;
            let free = !used;
            // Bit i: page i - 1 (of this word, or the last of the one before) is free.
            let after_free = free << 1 | u64::from(run_start.is_some());
            let mut starts = free & !after_free;
            let mut ends = used & after_free;
            loop {
                if let Some(start) = run_start {
                    if ends == 0 {
                        break;
                    }
                    let end = base + ends.trailing_zeros() as usize;
                    ends &= ends - 1;
                    run_start = None;
                    if !f(start, end - start) {
                        return;
                    }
                }
                if starts == 0 {
                    break;
                }
                run_start = Some(base + starts.trailing_zeros() as usize);
                starts &= starts - 1;
            }
        }
        // Only a bitmap whose pages fill its last word can end inside a run.
        if let Some(start) = run_start {
            f(start, self.pages - start);
        }
    }

    /// The smallest free run of at least `n` pages (lowest address on ties), with what the search
    /// learnt about the longest runs.
    pub fn best_fit(&self, n: usize) -> Option<Fit> {
        let mut fit = Fit {
            start: 0,
            len: usize::MAX,
            longest: 0,
            second: 0,
            complete: true,
        };
        self.for_each_free_run(|start, len| {
            if len >= n && len < fit.len {
                fit.start = start;
                fit.len = len;
            }
            if len > fit.longest {
                fit.second = fit.longest;
                fit.longest = len;
            } else if len > fit.second {
                fit.second = len;
            }
            // An exact fit cannot be beaten.
            fit.complete = fit.len != n;
            fit.complete
        });
        (fit.len != usize::MAX).then_some(fit)
    }

    /// Length of the longest free run.
    pub fn longest_free_run(&self) -> usize {
        let mut longest = 0;
        self.for_each_free_run(|_, len| {
            longest = longest.max(len);
            true
        });
        longest
    }

    /// Last used page before `i`, if any.
    fn prev_used(&self, i: usize) -> Option<usize> {
        let mut w = i / 64;
        let mut bits = self.words[w] & ((1u64 << (i % 64)) - 1);
        loop {
            if bits != 0 {
                return Some(w * 64 + 63 - bits.leading_zeros() as usize);
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            bits = self.words[w];
        }
    }

    /// Length of the free run containing page `i` (which must be free).
    pub fn free_run_around(&self, i: usize) -> usize {
        debug_assert!(!self.is_used(i));
        let start = self.prev_used(i).map_or(0, |j| j + 1);
        self.next_used(i) - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pages: usize) -> Vec<u64> {
        let mut v = vec![0; PageBitmap::words_for(pages)];
        PageBitmap::new(&mut v, pages).reset();
        v
    }

    #[test]
    fn best_fit_prefers_the_smallest_then_the_lowest_run() {
        let mut w = map(511);
        let mut b = PageBitmap::new(&mut w, 511);
        let at = |b: &PageBitmap<'_>, n| b.best_fit(n).map(|f| (f.start, f.len));
        assert_eq!(at(&b, 1), Some((0, 511)));
        assert_eq!(at(&b, 512), None);
        b.set_range(0, 10);
        b.set_range(13, 100); // free run 10..13 (3 pages)
        b.set_range(120, 5); // free run 113..120 (7 pages), 125..511
        assert_eq!(at(&b, 3), Some((10, 3)));
        assert_eq!(at(&b, 2), Some((10, 3)));
        assert_eq!(at(&b, 4), Some((113, 7)));
        assert_eq!(at(&b, 8), Some((125, 386)));
        // What the search learns of the longest run after taking from the fit.
        let f = b.best_fit(8).unwrap();
        assert_eq!((f.longest, f.second, f.complete), (386, 7, true));
        assert_eq!(f.longest_after_taking(8), Some(378));
        assert_eq!(f.longest_after_taking(380), Some(7));
        assert_eq!(b.best_fit(4).unwrap().longest_after_taking(4), Some(386));
        assert_eq!(
            b.best_fit(3).unwrap().longest_after_taking(3),
            None,
            "stopped at the exact fit"
        );
        assert_eq!(b.longest_free_run(), 386);
        assert_eq!(b.free_run_around(11), 3);
        assert_eq!(b.free_run_around(300), 386);
        assert!(b.is_free(125, 386));
        assert!(!b.is_free(125, 387));
        b.clear_range(0, 10);
        assert_eq!(b.free_run_around(0), 13);
    }

    #[test]
    fn bits_past_the_end_are_never_free() {
        let mut w = map(70);
        let mut b = PageBitmap::new(&mut w, 70);
        assert_eq!(b.longest_free_run(), 70);
        b.set_range(0, 70);
        assert_eq!(b.best_fit(1), None);
        assert_eq!(b.longest_free_run(), 0);
        b.clear_range(64, 6);
        assert_eq!(b.best_fit(1).map(|f| (f.start, f.len)), Some((64, 6)));
    }

    #[test]
    fn runs_across_word_boundaries() {
        let mut w = map(512);
        let mut b = PageBitmap::new(&mut w, 512);
        b.set_range(60, 130);
        assert!(b.is_used(60) && b.is_used(189) && !b.is_used(190) && !b.is_used(59));
        assert_eq!(b.best_fit(60).map(|f| (f.start, f.len)), Some((0, 60)));
        assert_eq!(b.free_run_around(200), 512 - 190);
        b.clear_range(60, 130);
        assert_eq!(b.free_run_around(130), 512);
    }

    /// The free runs of a bitmap, page by page: what the word-wise walk must agree with.
    fn runs_by_page(b: &PageBitmap<'_>) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < b.pages {
            if b.is_used(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.pages && !b.is_used(i) {
                i += 1;
            }
            runs.push((start, i - start));
        }
        runs
    }

    #[test]
    fn the_word_walk_finds_the_runs_a_page_walk_finds() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for pages in [1, 63, 64, 65, 128, 500, 511, 512] {
            let mut w = map(pages);
            let mut b = PageBitmap::new(&mut w, pages);
            for _ in 0..400 {
                let start = next(pages);
                let len = 1 + next(pages - start).min(70);
                if next(2) == 0 {
                    b.set_range(start, len);
                } else {
                    b.clear_range(start, len);
                }
                let runs = runs_by_page(&b);
                let mut walked = Vec::new();
                b.for_each_free_run(|s, l| {
                    walked.push((s, l));
                    true
                });
                assert_eq!(walked, runs, "{pages} pages");
                let longest = runs.iter().map(|r| r.1).max().unwrap_or(0);
                assert_eq!(b.longest_free_run(), longest);
                let n = 1 + next(pages);
                let best = runs.iter().filter(|r| r.1 >= n).min_by_key(|r| r.1);
                let fit = b.best_fit(n);
                assert_eq!(fit.map(|f| (f.start, f.len)), best.copied());
                // A search that saw every run knows the two longest.
                if let Some(f) = fit.filter(|f| f.complete) {
                    let mut lens: Vec<usize> = runs.iter().map(|r| r.1).collect();
                    lens.sort_unstable_by(|a, b| b.cmp(a));
                    assert_eq!(
                        (f.longest, f.second),
                        (lens[0], lens.get(1).copied().unwrap_or(0))
                    );
                }
            }
        }
    }
}
