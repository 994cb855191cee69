//! Statistics: what a heap holds and what it did (per bin, large and huge blocks, segments,
//! requests, usage), and with tracking the allocation sites that hold the most memory or allocate
//! the most.
//!
//! Owns the counters and the snapshot. Counting is on for heaps made with `ZEND_MM_STATS` set,
//! for heaps that track their blocks, or after `zend_mm_set_stats` on an empty heap; a counting
//! heap's fast paths decline (as a tracking heap's), so the counters sit on the slow paths only and
//! a heap that does not count pays nothing. The counters live in one storage allocation of their
//! own (not in the heap struct, which fills its page; not counted in the real usage), kept across
//! request ends and given back with the heap.
//!
//! What the snapshot does not count it reads off the heap: live blocks and runs per bin (the runs
//! in the page maps minus the free lists), large and huge blocks, segments. Invariant: while
//! `stats` is set, every allocation and free of the heap passes [`Heap::count_alloc_stats`] /
//! [`Heap::count_free_stats`] (a move by realloc counts as both).

use core::ffi::c_char;
use core::fmt::{self, Write};
use core::ptr;

use super::Heap;
use super::route::Block;
use super::small::FreeSlot;
use super::track::HeapInUse;
use crate::diagnostics::{MsgBuf, Site, file_text, write_fd};
use crate::options::{self, StatsOutput};
use crate::segment::{PAGE_KIND_MASK, PAGE_LARGE, small_bin};
use crate::sizes::{BIN_SIZE, BINS, HEAP_BINS, ZEND_MM_BINS, ZEND_MM_PAGE_SIZE, bin_of, is_small};
use crate::storage::Allocation;

/// Sites a heap counts allocations for; the rest are counted together.
const SITES: usize = 512;
/// Sites a snapshot lists, by live bytes and by allocations.
pub const TOP_SITES: usize = 10;

/// One bin's statistics.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct BinStats {
    /// Slot size.
    pub size: usize,
    pub live: usize,
    /// Most blocks live at once (while counting).
    pub peak_live: usize,
    pub allocs: u64,
    pub frees: u64,
    /// Runs of pages holding the bin's slots.
    pub runs: usize,
}

/// Large or huge blocks' statistics.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct BlockStats {
    pub live: usize,
    /// Bytes of the live blocks (whole pages).
    pub bytes: usize,
    pub peak_live: usize,
    pub allocs: u64,
    pub frees: u64,
    /// Freed blocks kept for reuse (huge blocks only).
    pub cached: usize,
}

/// An allocation site's share.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteStats {
    /// `__FILE__` of the call (NULL when the call passed none).
    pub file: *const c_char,
    pub line: u32,
    /// Live blocks from here and their requested bytes.
    pub blocks: usize,
    pub bytes: usize,
    /// Allocations made here while counting.
    pub allocs: u64,
}

impl SiteStats {
    const NONE: SiteStats = SiteStats {
        file: ptr::null(),
        line: 0,
        blocks: 0,
        bytes: 0,
        allocs: 0,
    };
}

/// A heap's statistics (`zend_mm_get_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeapStats {
    /// 1 if the counters (allocations, frees, peaks, sites) were kept, 0 if only what the heap
    /// holds now is known.
    pub counting: i32,
    /// 1 if the heap tracks its blocks (then the site lists are filled).
    pub tracking: i32,
    /// Request ends the heap has been through.
    pub requests: u64,
    pub usage: usize,
    pub peak: usize,
    pub real_usage: usize,
    pub real_peak: usize,
    pub segments: usize,
    pub segments_cached: usize,
    pub segments_peak: usize,
    /// PHP's bins. (The preload library's two larger bins count under large blocks, as blocks of
    /// their sizes are in PHP.)
    pub bins: [BinStats; ZEND_MM_BINS],
    pub large: BlockStats,
    pub huge: BlockStats,
    /// Sites by live bytes, then by allocations; unused entries have a NULL file and line 0.
    pub top_by_bytes: [SiteStats; TOP_SITES],
    pub top_by_allocs: [SiteStats; TOP_SITES],
}

#[derive(Clone, Copy, Default)]
struct Counters {
    allocs: u64,
    frees: u64,
    live: usize,
    peak_live: usize,
}

impl Counters {
    fn alloc(&mut self) {
        self.allocs += 1;
        self.live += 1;
        self.peak_live = self.peak_live.max(self.live);
    }

    fn free(&mut self) {
        self.frees += 1;
        self.live = self.live.saturating_sub(1);
    }
}

#[derive(Clone, Copy)]
struct SiteCount {
    file: *const c_char,
    line: u32,
    allocs: u64,
}

/// The counters, in a storage allocation of their own.
#[repr(C)]
pub(super) struct StatsArea {
    /// The storage allocation, its header first (what the storage reads).
    alloc: Allocation,
    bins: [Counters; ZEND_MM_BINS],
    large: Counters,
    huge: Counters,
    /// Allocations per site (open addressing on file and line); `other` counts the overflow.
    sites: [SiteCount; SITES],
    other_sites: u64,
    /// The entry of the last site counted (a site often allocates many times in a row).
    last_site: usize,
    /// Started by tracking (for its site lists), not asked for: it stops with tracking.
    for_tracking_only: bool,
}

impl StatsArea {
    /// The counters of `bin`: its own for PHP's bins, the large blocks' for the preload library's
    /// two above a page (blocks of those sizes are large in PHP).
    #[inline(always)]
    fn bin_counters(&mut self, bin: usize) -> &mut Counters {
        if HEAP_BINS == ZEND_MM_BINS || bin < ZEND_MM_BINS {
            &mut self.bins[bin]
        } else {
            &mut self.large
        }
    }
}

fn site_slot(file: *const c_char, line: u32) -> usize {
    let h = (file.addr() as u64 ^ (u64::from(line) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 40) as usize % SITES
}

impl Heap {
    /// Whether the heap keeps counters.
    pub fn is_counting(&self) -> bool {
        !self.stats.is_null()
    }

    /// Starts (or stops) counting; starting needs an empty heap. False if the storage has no
    /// memory for the counters.
    pub fn set_counting(&mut self, on: bool) -> Result<bool, HeapInUse> {
        if on == self.is_counting() {
            if on {
                // Asked for now: it outlives the tracking that may have started it.
                // SAFETY: a live stats area of this heap.
                unsafe { (*self.stats).for_tracking_only = false };
            }
            return Ok(true);
        }
        if !on {
            self.release_stats();
            return Ok(true);
        }
        if self.used() != 0 {
            return Err(HeapInUse);
        }
        let bytes = size_of::<StatsArea>().next_multiple_of(ZEND_MM_PAGE_SIZE);
        let base = self.storage.alloc(bytes);
        if base.is_null() {
            return Ok(false);
        }
        let area = base.cast::<StatsArea>();
        // SAFETY: `bytes` fresh bytes of our storage, enough for the area.
        unsafe {
            area.write(StatsArea {
                alloc: Allocation::new(base, bytes),
                bins: [Counters::default(); ZEND_MM_BINS],
                large: Counters::default(),
                huge: Counters::default(),
                sites: [SiteCount {
                    file: ptr::null(),
                    line: 0,
                    allocs: 0,
                }; SITES],
                other_sites: 0,
                last_site: 0,
                for_tracking_only: false,
            })
        };
        self.stats = area;
        Ok(true)
    }

    /// Counting for tracking's site lists: started with tracking unless already on, stopped with it
    /// unless it was asked for (`ZEND_MM_STATS`, `zend_mm_set_stats`). Without memory for the
    /// counters, tracking goes without site lists.
    pub(super) fn count_for_tracking(&mut self, on: bool) {
        if on {
            if !self.is_counting() && self.set_counting(true) == Ok(true) {
                // SAFETY: the stats area just made.
                unsafe { (*self.stats).for_tracking_only = true };
            }
        // SAFETY: a live stats area of this heap when counting.
        } else if self.is_counting() && unsafe { (*self.stats).for_tracking_only } {
            self.release_stats();
        }
    }

    /// Gives the counters back to storage.
    pub(super) fn release_stats(&mut self) {
        let area = core::mem::replace(&mut self.stats, ptr::null_mut());
        if !area.is_null() {
            // SAFETY: the area is a live allocation of our storage; nothing refers to it now.
            unsafe { self.storage.free((*area).alloc.base()) };
        }
    }

    /// Request end: no block is live any more.
    pub(super) fn end_request_stats(&mut self) {
        if self.stats.is_null() {
            return;
        }
        // SAFETY: a live stats area of this heap.
        let area = unsafe { &mut *self.stats };
        for c in area
            .bins
            .iter_mut()
            .chain([&mut area.large, &mut area.huge])
        {
            c.live = 0;
        }
    }

    /// Counts a block of `size` bytes just handed out.
    #[inline]
    pub(super) fn count_alloc_stats(&mut self, size: usize) {
        if let Some(c) = self.counters_for_size(size) {
            c.alloc();
        }
    }

    /// Counts a block of `bin` just handed out.
    #[inline(always)]
    pub(super) fn count_small_alloc_stats(&mut self, bin: usize) {
        if !self.stats.is_null() {
            // SAFETY: a live stats area of this heap.
            unsafe { (*self.stats).bin_counters(bin).alloc() };
        }
    }

    /// Counts the freeing of `block`.
    #[inline]
    pub(super) fn count_free_stats(&mut self, block: Block) {
        if self.stats.is_null() {
            return;
        }
        // SAFETY: a live stats area of this heap.
        let area = unsafe { &mut *self.stats };
        match block {
            Block::Small { bin, .. } => area.bin_counters(bin).free(),
            Block::Large { .. } => area.large.free(),
            Block::Huge(_) => area.huge.free(),
        }
    }

    fn counters_for_size(&mut self, size: usize) -> Option<&mut Counters> {
        if self.stats.is_null() {
            return None;
        }
        let large = size <= self.max_large_size;
        // SAFETY: a live stats area of this heap.
        let area = unsafe { &mut *self.stats };
        Some(if is_small(size) {
            area.bin_counters(bin_of(size))
        } else if large {
            &mut area.large
        } else {
            &mut area.huge
        })
    }

    /// Counts an allocation at `site` (tracking heaps).
    pub(super) fn count_site(&mut self, site: Site) {
        if self.stats.is_null() {
            return;
        }
        // SAFETY: a live stats area of this heap.
        let area = unsafe { &mut *self.stats };
        let last = &mut area.sites[area.last_site];
        if last.allocs != 0 && last.file == site.file && last.line == site.line {
            last.allocs += 1;
            return;
        }
        let mut i = site_slot(site.file, site.line);
        for _ in 0..SITES {
            let s = &mut area.sites[i];
            if s.allocs == 0 {
                *s = SiteCount {
                    file: site.file,
                    line: site.line,
                    allocs: 1,
                };
                area.last_site = i;
                return;
            }
            if s.file == site.file && s.line == site.line {
                s.allocs += 1;
                area.last_site = i;
                return;
            }
            i = (i + 1) % SITES;
        }
        area.other_sites += 1;
    }

    /// Live blocks and runs per bin, read off the page maps and free lists.
    fn small_census(&self) -> ([usize; HEAP_BINS], [usize; HEAP_BINS]) {
        let mut slots = [0usize; HEAP_BINS];
        let mut runs = [0usize; HEAP_BINS];
        self.each_run(&mut |info, _, _| {
            if let Some(bin) = small_bin(info) {
                runs[bin] += 1;
                slots[bin] += BINS[bin].count as usize;
            }
        });
        let mut live = slots;
        for (bin, live) in live.iter_mut().enumerate() {
            let mut slot = self.free_slot_head(bin);
            let mut free = 0;
            // Bounded: a corrupted list cannot hold more slots than the runs have.
            while !slot.is_null() && free < slots[bin] {
                free += 1;
                // SAFETY: free slots hold their next link.
                slot = unsafe { FreeSlot::next_of(slot.cast::<FreeSlot>()) };
            }
            *live -= free;
        }
        (live, runs)
    }

    /// Prints the statistics as `ZEND_MM_STATS` says (to stderr; nothing when it is unset).
    pub fn print_stats_as_configured(&self) {
        let json = match options::get().stats {
            StatsOutput::Off => return,
            StatsOutput::Text => false,
            StatsOutput::Json => true,
        };
        print_stats(&self.stats(), self, 2, json);
    }

    /// The heap's statistics now.
    pub fn stats(&self) -> HeapStats {
        let (live, runs) = self.small_census();
        let mut s = HeapStats {
            counting: i32::from(self.is_counting()),
            tracking: i32::from(self.is_tracking()),
            requests: self.requests,
            usage: self.usage(false),
            peak: self.peak_usage(false),
            real_usage: self.usage(true),
            real_peak: self.peak_usage(true),
            segments: self.segments_count,
            segments_cached: self.cached.len(),
            segments_peak: self.peak_segments_count,
            bins: [BinStats::default(); ZEND_MM_BINS],
            large: BlockStats::default(),
            huge: BlockStats::default(),
            top_by_bytes: [SiteStats::NONE; TOP_SITES],
            top_by_allocs: [SiteStats::NONE; TOP_SITES],
        };
        for (bin, b) in s.bins.iter_mut().enumerate() {
            b.size = BIN_SIZE[bin];
            b.live = live[bin];
            b.runs = runs[bin];
        }
        // The preload library's bins above PHP's: large blocks in PHP's terms.
        for (bin, live) in live.iter().enumerate().skip(ZEND_MM_BINS) {
            s.large.live += live;
            s.large.bytes += live * BIN_SIZE[bin];
        }
        let reserve = self.reserve;
        self.each_run(&mut |info, addr, pages| {
            if info & PAGE_KIND_MASK == PAGE_LARGE && addr != reserve {
                s.large.live += 1;
                s.large.bytes += pages * ZEND_MM_PAGE_SIZE;
            }
        });
        // SAFETY: the huge lists hold huge blocks of this heap.
        for block in unsafe { self.huge_blocks.iter() } {
            s.huge.live += 1;
            // SAFETY: as above.
            s.huge.bytes += unsafe { (*block).size() };
        }
        s.huge.cached = self.huge_cached.len();
        if !self.stats.is_null() {
            // SAFETY: a live stats area of this heap.
            let area = unsafe { &*self.stats };
            for (b, c) in s.bins.iter_mut().zip(area.bins.iter()) {
                (b.allocs, b.frees, b.peak_live) = (c.allocs, c.frees, c.peak_live);
            }
            for (k, c) in [(&mut s.large, &area.large), (&mut s.huge, &area.huge)] {
                (k.allocs, k.frees, k.peak_live) = (c.allocs, c.frees, c.peak_live);
            }
            if self.is_tracking() {
                self.top_sites(area, &mut s);
            }
        }
        s
    }

    /// Fills the site lists: live blocks and bytes per site from the tracked blocks, allocations
    /// from the counters.
    fn top_sites(&self, area: &StatsArea, s: &mut HeapStats) {
        let mut table = [SiteStats::NONE; SITES];
        for c in area.sites.iter().filter(|c| c.allocs > 0) {
            let i = self.site_index(&mut table, c.file, c.line);
            if let Some(i) = i {
                table[i].allocs = c.allocs;
            }
        }
        self.each_tracked_site(&mut |file, line, size| {
            if let Some(i) = self.site_index(&mut table, file, line) {
                table[i].blocks += 1;
                table[i].bytes += size;
            }
        });
        let used = |t: &SiteStats| t.blocks > 0 || t.allocs > 0;
        top_by(&table, &mut s.top_by_bytes, |t| {
            (used(t) && t.bytes > 0).then_some(t.bytes as u64)
        });
        top_by(&table, &mut s.top_by_allocs, |t| {
            (used(t) && t.allocs > 0).then_some(t.allocs)
        });
    }

    /// The entry of `table` for a site (made if new); None when the table is full.
    fn site_index(
        &self,
        table: &mut [SiteStats; SITES],
        file: *const c_char,
        line: u32,
    ) -> Option<usize> {
        let mut i = site_slot(file, line);
        for _ in 0..SITES {
            let t = &mut table[i];
            if t.blocks == 0 && t.allocs == 0 && t.file.is_null() && t.line == 0 {
                t.file = file;
                t.line = line;
                return Some(i);
            }
            if t.file == file && t.line == line {
                return Some(i);
            }
            i = (i + 1) % SITES;
        }
        None
    }
}

/// The `TOP_SITES` entries of `table` with the largest `key` (entries whose key is None are left
/// out), largest first.
fn top_by(
    table: &[SiteStats],
    out: &mut [SiteStats; TOP_SITES],
    key: impl Fn(&SiteStats) -> Option<u64>,
) {
    let mut n = 0;
    for t in table {
        let Some(k) = key(t) else { continue };
        // Insertion into the sorted prefix, dropping the smallest when full.
        let mut i = n.min(TOP_SITES - 1);
        if n == TOP_SITES && key(&out[i]).unwrap_or(0) >= k {
            continue;
        }
        while i > 0 && key(&out[i - 1]).unwrap_or(0) < k {
            out[i] = out[i - 1];
            i -= 1;
        }
        out[i] = *t;
        n = (n + 1).min(TOP_SITES);
    }
}

/// Writes formatted text to a file descriptor through a stack buffer, line by line.
struct FdWriter {
    fd: i32,
    buf: MsgBuf<4096>,
}

impl FdWriter {
    fn flush(&mut self) {
        write_fd(self.fd, self.buf.as_bytes());
        self.buf = MsgBuf::new();
    }
}

impl Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.buf.as_bytes().len() + s.len() >= 4000 {
            self.flush();
        }
        if s.len() >= 4000 {
            write_fd(self.fd, s.as_bytes());
            return Ok(());
        }
        self.buf.write_str(s)
    }
}

/// A string as a JSON string literal.
struct Json<'a>(&'a str);

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// Prints `s` (of the heap at `heap`) to `fd`: as text, or as one line of JSON.
pub fn print_stats(s: &HeapStats, heap: *const Heap, fd: i32, json: bool) {
    let mut w = FdWriter {
        fd,
        buf: MsgBuf::new(),
    };
    let _ = if json {
        write_json(&mut w, s, heap)
    } else {
        write_text(&mut w, s, heap)
    };
    w.flush();
}

fn write_text(w: &mut FdWriter, s: &HeapStats, heap: *const Heap) -> fmt::Result {
    writeln!(
        w,
        "zend_alloc heap {heap:p}: {} requests; usage {} bytes (peak {}), real {} (peak {}); segments {} live, {} cached, {} peak{}",
        s.requests,
        s.usage,
        s.peak,
        s.real_usage,
        s.real_peak,
        s.segments,
        s.segments_cached,
        s.segments_peak,
        if s.counting == 0 {
            " (not counting: no allocation counts)"
        } else {
            ""
        }
    )?;
    writeln!(
        w,
        "  bin   size     live     peak       allocs        frees   runs"
    )?;
    for (i, b) in s.bins.iter().enumerate() {
        if b.live == 0 && b.allocs == 0 && b.runs == 0 {
            continue;
        }
        writeln!(
            w,
            "  {i:3} {:6} {:8} {:8} {:12} {:12} {:6}",
            b.size, b.live, b.peak_live, b.allocs, b.frees, b.runs
        )?;
    }
    for (name, k) in [("large", &s.large), ("huge", &s.huge)] {
        write!(
            w,
            "  {name}: {} live ({} bytes), peak {}, {} allocs, {} frees",
            k.live, k.bytes, k.peak_live, k.allocs, k.frees
        )?;
        if name == "huge" {
            write!(w, ", {} cached", k.cached)?;
        }
        writeln!(w)?;
    }
    for (title, list) in [
        ("live bytes", &s.top_by_bytes),
        ("allocations", &s.top_by_allocs),
    ] {
        if list[0].file.is_null() && list[0].line == 0 {
            continue;
        }
        writeln!(w, "  top sites by {title}:")?;
        for t in list
            .iter()
            .take_while(|t| !(t.file.is_null() && t.line == 0))
        {
            writeln!(
                w,
                "    {}:{}  {} blocks, {} bytes live, {} allocs",
                file_text(t.file),
                t.line,
                t.blocks,
                t.bytes,
                t.allocs
            )?;
        }
    }
    Ok(())
}

fn write_json(w: &mut FdWriter, s: &HeapStats, heap: *const Heap) -> fmt::Result {
    write!(
        w,
        "{{\"heap\":\"{heap:p}\",\"counting\":{},\"tracking\":{},\"requests\":{},\"usage\":{},\"peak\":{},\"real_usage\":{},\"real_peak\":{},\"segments\":{{\"live\":{},\"cached\":{},\"peak\":{}}},\"bins\":[",
        s.counting != 0,
        s.tracking != 0,
        s.requests,
        s.usage,
        s.peak,
        s.real_usage,
        s.real_peak,
        s.segments,
        s.segments_cached,
        s.segments_peak
    )?;
    for (i, b) in s.bins.iter().enumerate() {
        write!(
            w,
            "{}{{\"size\":{},\"live\":{},\"peak_live\":{},\"allocs\":{},\"frees\":{},\"runs\":{}}}",
            if i == 0 { "" } else { "," },
            b.size,
            b.live,
            b.peak_live,
            b.allocs,
            b.frees,
            b.runs
        )?;
    }
    write!(w, "]")?;
    for (name, k) in [("large", &s.large), ("huge", &s.huge)] {
        write!(
            w,
            ",\"{name}\":{{\"live\":{},\"bytes\":{},\"peak_live\":{},\"allocs\":{},\"frees\":{},\"cached\":{}}}",
            k.live, k.bytes, k.peak_live, k.allocs, k.frees, k.cached
        )?;
    }
    for (name, list) in [
        ("top_by_bytes", &s.top_by_bytes),
        ("top_by_allocs", &s.top_by_allocs),
    ] {
        write!(w, ",\"{name}\":[")?;
        for (i, t) in list
            .iter()
            .take_while(|t| !(t.file.is_null() && t.line == 0))
            .enumerate()
        {
            write!(
                w,
                "{}{{\"file\":{},\"line\":{},\"blocks\":{},\"bytes\":{},\"allocs\":{}}}",
                if i == 0 { "" } else { "," },
                Json(file_text(t.file)),
                t.line,
                t.blocks,
                t.bytes,
                t.allocs
            )?;
        }
        write!(w, "]")?;
    }
    writeln!(w, "}}")
}

#[cfg(test)]
mod tests {
    use core::ffi::CStr;

    use super::*;
    use crate::heap::test_heap;

    fn site(file: &'static CStr, line: u32, allocs: u64, bytes: usize) -> SiteStats {
        SiteStats {
            file: file.as_ptr(),
            line,
            blocks: usize::from(bytes > 0),
            bytes,
            allocs,
        }
    }

    #[test]
    fn top_by_keeps_the_largest_in_order() {
        let table: Vec<SiteStats> = (0..30)
            .map(|i| site(c"a.c", i, (i * 7 % 30) as u64, 0))
            .collect();
        let mut out = [SiteStats::NONE; TOP_SITES];
        top_by(&table, &mut out, |t| (t.allocs > 0).then_some(t.allocs));
        let got: Vec<u64> = out.iter().map(|t| t.allocs).collect();
        assert_eq!(got, [29, 28, 27, 26, 25, 24, 23, 22, 21, 20]);
        let mut few = [SiteStats::NONE; TOP_SITES];
        top_by(&table[..3], &mut few, |t| {
            (t.allocs > 0).then_some(t.allocs)
        });
        assert_eq!((few[0].allocs, few[1].allocs, few[2].line), (14, 7, 0));
        assert!(few[2].file.is_null(), "unused entries stay empty");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut buf = MsgBuf::<64>::new();
        write!(buf, "{}", Json("a\"b\\c\nd")).unwrap();
        assert_eq!(buf.as_bytes(), br#""a\"b\\c\u000ad""#);
    }

    #[test]
    fn counters_follow_allocations_frees_and_request_ends() {
        let heap = test_heap();
        // SAFETY: a live heap of this thread.
        unsafe {
            let h = &mut *heap;
            assert_eq!(h.set_counting(true), Ok(true));
            let p: Vec<*mut u8> = (0..5).map(|_| h.alloc(100).unwrap()).collect();
            let big = h.alloc(10_000).unwrap();
            h.free(p[0]);
            h.free(big);
            let s = h.stats();
            let b = bin_of(100);
            assert_eq!(
                (s.bins[b].allocs, s.bins[b].frees, s.bins[b].live),
                (5, 1, 4)
            );
            assert_eq!((s.bins[b].peak_live, s.bins[b].runs), (5, 1));
            assert_eq!((s.large.allocs, s.large.frees, s.large.live), (1, 1, 0));
            assert_eq!(h.set_counting(true), Ok(true), "already on");
            assert_eq!(h.set_counting(false), Ok(true));
            assert_eq!(h.set_counting(true), Err(HeapInUse), "blocks are live");
            Heap::shutdown(heap, false);
            let h = &mut *heap;
            assert_eq!(h.set_counting(true), Ok(true));
            h.alloc(100).unwrap();
            let s = h.stats();
            assert_eq!((s.requests, s.bins[b].allocs, s.bins[b].live), (1, 1, 1));
            Heap::shutdown(heap, true);
        }
    }
}
