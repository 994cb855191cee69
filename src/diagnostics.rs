//! Diagnostics: fatal errors, heap corruption and the messages they print (zend_alloc.c's
//! `zend_mm_safe_error`, `zend_mm_panic`, `zend_out_of_memory`).
//!
//! Owns the slot for the error handler an embedding program installs and every text the library
//! prints. Texts are PHP's, byte for byte; a corruption report adds a line of its own after PHP's
//! (the call, the pointer, what is wrong, the caller's location). Nothing here allocates: messages are formatted into stack
//! buffers and written with `write(2)`, so the error path works when memory is what ran out. It
//! knows no heap: the heap marks itself as reporting (`heap::api::raise`) before it calls
//! [`report_fatal`], and holds no borrow of itself while the handler runs.
//!
//! Fatal errors are raised only from frames that hold no values with destructors, because the error
//! handler may `longjmp` over them (as PHP's bailout does).

use core::ffi::{CStr, c_char, c_int, c_void};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicPtr, Ordering};

/// PHP's `E_ERROR`, the type every fatal error is reported with.
pub(crate) const E_ERROR: c_int = 1;

/// Where an allocation came from and what to do when it cannot be satisfied.
#[derive(Clone, Copy)]
pub struct Site {
    /// The caller's C file (`__FILE__` via `ZEND_FILE_LINE_CC`), or null.
    pub file: *const c_char,
    pub line: u32,
    /// Where the caller's caller was, when the call was relayed (`ZEND_FILE_LINE_ORIG_*`), or null.
    pub orig_file: *const c_char,
    pub orig_line: u32,
    /// Return null instead of raising a fatal error (`erealloc_recoverable`, internal allocations).
    pub may_fail: bool,
}

impl Site {
    pub const fn new(file: *const c_char, line: u32) -> Site {
        Site {
            file,
            line,
            orig_file: core::ptr::null(),
            orig_line: 0,
            may_fail: false,
        }
    }

    /// This site, relayed from `orig_file`:`orig_line` (kept by block tracking).
    pub const fn relayed(self, orig_file: *const c_char, orig_line: u32) -> Site {
        Site {
            orig_file,
            orig_line,
            ..self
        }
    }

    pub const fn may_fail(self) -> Site {
        Site {
            may_fail: true,
            ..self
        }
    }
}

/// The fatal errors an allocation can end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// The memory limit would be exceeded.
    Limit { limit: usize, tried: usize },
    /// The allocation after the last one `ZEND_MM_MAX_ALLOCS` allows: reported as the limit error,
    /// but a handler that returns ends the process with status 121 (PHP's fault injection).
    AllocsExhausted { limit: usize, tried: usize },
    /// The storage (or the C library) returned no memory.
    OutOfMemory { allocated: usize, tried: usize },
    /// `nmemb * size + offset` does not fit in `size_t`.
    Overflow3 {
        nmemb: usize,
        size: usize,
        offset: usize,
    },
    /// `size + add` does not fit in `size_t` (rounding a huge block up to pages).
    Overflow2 { size: usize, add: usize },
    /// A string function was given a NULL string.
    NullString { function: &'static str },
}

impl Fatal {
    /// Whether reporting this error suspends the memory limit (PHP 8's `zend_mm_safe_error` errors:
    /// the limit and out of memory; the others go straight to `zend_error`).
    pub fn suspends_limit(&self) -> bool {
        matches!(
            self,
            Fatal::Limit { .. } | Fatal::AllocsExhausted { .. } | Fatal::OutOfMemory { .. }
        )
    }

    /// The exit status when the handler returns (PHP's `ZEND_MM_MAX_ALLOCS_EXIT_STATUS` for
    /// injected faults, 255 for real errors).
    pub fn exit_status(&self) -> c_int {
        match self {
            Fatal::AllocsExhausted { .. } => 121,
            _ => 255,
        }
    }
}

/// An address in the calling frame. The stack grows down: a deeper frame has a smaller mark.
#[inline(always)]
pub fn stack_mark() -> usize {
    let here = 0u8;
    core::ptr::addr_of!(here).addr()
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fatal::Limit { limit, tried } | Fatal::AllocsExhausted { limit, tried } => {
                write!(
                    f,
                    "Allowed memory size of {limit} bytes exhausted (tried to allocate {tried} bytes)"
                )
            }
            Fatal::OutOfMemory { allocated, tried } => {
                write!(
                    f,
                    "Out of memory (allocated {allocated} bytes) (tried to allocate {tried} bytes)"
                )
            }
            Fatal::Overflow3 {
                nmemb,
                size,
                offset,
            } => {
                write!(
                    f,
                    "Possible integer overflow in memory allocation ({nmemb} * {size} + {offset})"
                )
            }
            Fatal::Overflow2 { size, add } => {
                write!(
                    f,
                    "Possible integer overflow in memory allocation ({size} + {add})"
                )
            }
            Fatal::NullString { function } => write!(f, "{function}(): the string is NULL"),
        }
    }
}

/// A fixed buffer that `write!` formats into, truncating (and always leaving room for a NUL).
pub struct MsgBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> MsgBuf<N> {
    pub const fn new() -> Self {
        MsgBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text as a C string (the buffer keeps a NUL after it).
    pub fn as_c_ptr(&self) -> *const c_char {
        self.buf.as_ptr().cast()
    }
}

impl<const N: usize> Default for MsgBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for MsgBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        self.buf[self.len] = 0;
        Ok(())
    }
}

/// Writes `bytes` to standard error, retrying short writes.
pub fn write_stderr(bytes: &[u8]) {
    write_fd(2, bytes);
}

/// Writes `bytes` to file descriptor `fd`, retrying short writes (gives up on an error).
pub fn write_fd(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing a valid byte slice to a file descriptor.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Formats a line into a stack buffer and writes it to standard error.
pub fn eprint(args: fmt::Arguments<'_>) {
    let mut msg = MsgBuf::<1024>::new();
    let _ = msg.write_fmt(args);
    write_stderr(msg.as_bytes());
}

/// One leaked block, as PHP's leak report hands it to the message handler (`zend_leak_info`, PHP
/// 5.3's field order).
#[repr(C)]
pub struct LeakInfo {
    pub addr: *mut c_void,
    /// The size the caller asked for.
    pub size: usize,
    pub filename: *const c_char,
    pub lineno: u32,
    /// Where the allocation was relayed from (`ZEND_FILE_LINE_ORIG_*`); null if it was not.
    pub orig_filename: *const c_char,
    pub orig_lineno: u32,
}

/// What a leak report says, in order: per group of leaks from one file and line, the script name,
/// the first block and the count of the others; at the end, the total (PHP's `ZMSG_*` messages).
pub enum LeakEvent<'a> {
    ScriptName,
    Leak(&'a LeakInfo),
    Repeated(usize),
    Total(u32),
}

/// A file name (a C string) for a report: `Unknown` for null.
pub fn file_text<'a>(s: *const c_char) -> &'a str {
    if s.is_null() {
        return "Unknown";
    }
    // SAFETY: file names come from `__FILE__` (C string literals) or the embedder's C strings.
    unsafe { CStr::from_ptr(s) }.to_str().unwrap_or("?")
}

/// The dashes that open and close PHP 5.3's block status report.
pub const BLOCK_REPORT_DASHES: &str = "---------------------------------------\n";

/// Opens PHP 5.3's block status report for `p`, checked at `site`: the dashes, the block line and
/// the relayed location if there is one.
pub fn print_block_report_head(p: *const u8, site: &Site) {
    eprint(format_args!("{BLOCK_REPORT_DASHES}"));
    eprint(format_args!(
        "{}({}) : Block 0x{:08x} status:\n",
        file_text(site.file),
        site.line,
        p.addr()
    ));
    if !site.orig_file.is_null() {
        eprint(format_args!(
            "{}({}) : Actual location (location was relayed)\n",
            file_text(site.orig_file),
            site.orig_line
        ));
    }
}

/// Prints one leak-report message as PHP 5.3's message handler does (`main.c`), to stderr.
/// `script` is the script name (`-` when unset).
pub fn print_leak_event(event: &LeakEvent<'_>, script: &CStr) {
    let script = script.to_str().unwrap_or("?");
    match *event {
        LeakEvent::ScriptName => {
            let mut stamp = [0 as c_char; 64];
            // SAFETY: `time`, `localtime_r` and `asctime_r` with valid buffers (asctime_r needs 26
            // bytes).
            let text = unsafe {
                let now = libc::time(core::ptr::null_mut());
                let mut tm: libc::tm = core::mem::zeroed();
                if libc::localtime_r(&now, &mut tm).is_null()
                    || libc::asctime_r(&tm, stamp.as_mut_ptr()).is_null()
                {
                    None
                } else {
                    CStr::from_ptr(stamp.as_ptr()).to_str().ok()
                }
            };
            match text {
                Some(t) => eprint(format_args!("[{}]  Script:  '{script}'\n", t.trim_end())),
                None => eprint(format_args!("[null]  Script:  '{script}'\n")),
            }
        }
        LeakEvent::Leak(leak) => {
            eprint(format_args!(
                "{}({}) :  Freeing 0x{:08X} ({} bytes), script={script}\n",
                file_text(leak.filename),
                leak.lineno,
                leak.addr.addr(),
                leak.size
            ));
            if !leak.orig_filename.is_null() {
                eprint(format_args!(
                    "{}({}) : Actual location (location was relayed)\n",
                    file_text(leak.orig_filename),
                    leak.orig_lineno
                ));
            }
        }
        LeakEvent::Repeated(n) => eprint(format_args!(
            "Last leak repeated {n} time{}\n",
            if n > 1 { "s" } else { "" }
        )),
        LeakEvent::Total(n) => eprint(format_args!("=== Total {n} memory leaks detected ===\n")),
    }
}

/// The embedder's fatal error handler: error type (`E_ERROR`), the caller's file and line, PHP's
/// message. It may `longjmp` out; if it returns, the process exits.
pub type ErrorHandler =
    unsafe extern "C" fn(error_type: c_int, file: *const c_char, line: u32, message: *const c_char);

static ERROR_HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// The handler a slot value stands for.
fn handler_from(raw: *mut ()) -> Option<ErrorHandler> {
    if raw.is_null() {
        None
    } else {
        // SAFETY: the slot holds only null or values of this exact function pointer type.
        Some(unsafe { core::mem::transmute::<*mut (), ErrorHandler>(raw) })
    }
}

/// Installs the process-wide fatal error handler; returns the previous one.
pub fn set_error_handler(handler: Option<ErrorHandler>) -> Option<ErrorHandler> {
    let new = handler.map_or(core::ptr::null_mut(), |f| f as *mut ());
    handler_from(ERROR_HANDLER.swap(new, Ordering::AcqRel))
}

fn error_handler() -> Option<ErrorHandler> {
    handler_from(ERROR_HANDLER.load(Ordering::Acquire))
}

/// The file name to report for `site` (PHP says "Unknown" when it has none).
fn site_file(site: &Site) -> &CStr {
    if site.file.is_null() {
        c"Unknown"
    } else {
        // SAFETY: the ZEND_FILE_LINE_* macros pass `__FILE__`, a C string literal.
        unsafe { CStr::from_ptr(site.file) }
    }
}

/// Reports a fatal error: hands PHP's message to the error handler, or prints
/// `Fatal error: <message> in <file> on line <line>` and exits with status 255.
///
/// # Safety
/// The caller's frames must hold no values with destructors and no borrow of a heap: the handler
/// may `longjmp` over them, or call back into the library.
#[cold]
#[inline(never)]
pub unsafe fn report_fatal(site: Site, fatal: Fatal) -> ! {
    let mut msg = MsgBuf::<256>::new();
    let _ = write!(msg, "{fatal}");
    let file = site_file(&site);
    if let Some(handler) = error_handler() {
        // SAFETY: calling the embedder's handler with valid C strings; it may longjmp away.
        unsafe {
            handler(
                E_ERROR,
                file.as_ptr(),
                if site.file.is_null() { 0 } else { site.line },
                msg.as_c_ptr(),
            )
        };
    } else {
        let line = if site.file.is_null() { 0 } else { site.line };
        let file = core::str::from_utf8(file.to_bytes()).unwrap_or("Unknown");
        let msg = core::str::from_utf8(msg.as_bytes()).unwrap_or("");
        eprint(format_args!(
            "\nFatal error: {msg} in {file} on line {line}\n"
        ));
    }
    // SAFETY: terminating the process.
    unsafe { libc::exit(fatal.exit_status()) }
}

/// The library call a pointer was handed to, for the corruption report: the function the caller
/// used and where it was called from (a null `site.file` when the call carried no location).
#[derive(Clone, Copy)]
pub struct Call {
    pub function: &'static str,
    pub site: Site,
    /// What to say instead of the location when the call carried none.
    pub no_site: &'static str,
}

impl Call {
    pub const fn new(function: &'static str, site: Site) -> Call {
        Call {
            function,
            site,
            no_site: "the call carried no file:line",
        }
    }

    /// A block another thread freed, found bad when its heap collects it: that thread's location
    /// is not kept.
    pub const REMOTE: Call = Call {
        function: "efree",
        site: Site::new(core::ptr::null(), 0),
        no_site: "freed from another thread; the location of that call is not kept",
    };

    /// A block the library itself frees or measures (tests, internal moves).
    pub const INTERNAL: Call = Call {
        function: "zend_mm_free",
        site: Site::new(core::ptr::null(), 0),
        no_site: "an internal call",
    };
}

/// What is wrong with a pointer handed to the library, as far as the heap can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPointer {
    /// No heap's memory: never allocated here, or its memory went back to the system.
    NoHeapsMemory,
    /// Memory of another heap (`owner`) that the call cannot free from this thread.
    OtherHeap { owner: usize },
    /// `offset` bytes into the `size`-byte block at `block`.
    Interior {
        block: usize,
        offset: usize,
        size: usize,
    },
    /// Inside this heap's memory but at no block's start (a run's tail, a page inside a block).
    NotABlock,
    /// Inside pages that are free: the block was freed already.
    FreedPages,
    /// A huge block that was freed already (kept for reuse).
    FreedHuge,
    /// The small block was just freed (it heads its bin's free list).
    DoubleFree,
    /// The small block was freed before, and other blocks of its size after it (it is on its
    /// bin's free list).
    OnFreeList,
    /// The block is already on the list of blocks other threads freed.
    DoubleRemoteFree,
    /// Freed from another thread, the small block was free already (its free mark says so).
    FreedAlready,
}

impl fmt::Display for BadPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BadPointer::NoHeapsMemory => f.write_str(
                "not memory of any heap (never allocated here, or freed and given back already)",
            ),
            BadPointer::OtherHeap { owner } => {
                write!(
                    f,
                    "a block of another heap (zend_mm_heap {owner:#x}), not of this one"
                )
            }
            BadPointer::Interior {
                block,
                offset,
                size,
            } => write!(
                f,
                "not the start of a block: {offset} bytes into the {size}-byte block at {block:#x}"
            ),
            BadPointer::NotABlock => {
                f.write_str("not the start of a block (inside the heap's memory, between blocks)")
            }
            BadPointer::FreedPages => f.write_str("double free: the pages there are free already"),
            BadPointer::FreedHuge => f.write_str("double free: the huge block was freed already"),
            BadPointer::DoubleFree => {
                f.write_str("double free: the block was the last one freed in its size class")
            }
            BadPointer::OnFreeList => f.write_str(
                "double free: the block is on its size class's free list already (freed before, \
                 other blocks of its size freed since)",
            ),
            BadPointer::FreedAlready => f.write_str(
                "double free: the block was freed already (freed again from another thread)",
            ),
            BadPointer::DoubleRemoteFree => {
                f.write_str("double free: the block was just freed from another thread")
            }
        }
    }
}

/// The line after `zend_mm_heap corrupted`: `<function>(<pointer>): <what> (called at <file>:<line>)`.
pub fn write_bad_pointer(
    out: &mut impl Write,
    call: &Call,
    p: usize,
    what: BadPointer,
) -> fmt::Result {
    write!(out, "{}({p:#x}): {what} (", call.function)?;
    if call.site.file.is_null() {
        out.write_str(call.no_site)?;
    } else {
        write!(
            out,
            "called at {}:{}",
            file_text(call.site.file),
            call.site.line
        )?;
        if !call.site.orig_file.is_null() {
            write!(
                out,
                ", relayed from {}:{}",
                file_text(call.site.orig_file),
                call.site.orig_line
            )?;
        }
    }
    out.write_str(")")
}

/// PHP's `zend_mm_panic("zend_mm_heap corrupted")` for a pointer handed to `call`: PHP's line, then
/// one naming the call, the pointer, what is wrong with it and the caller's location. Aborts.
#[cold]
#[inline(never)]
pub fn bad_pointer(call: &Call, p: *const u8, what: BadPointer) -> ! {
    let mut msg = MsgBuf::<1024>::new();
    let _ = msg.write_str("zend_mm_heap corrupted\n");
    let _ = write_bad_pointer(&mut msg, call, p.addr(), what);
    let _ = msg.write_str("\n");
    write_stderr(msg.as_bytes());
    std::process::abort()
}

/// PHP's `zend_mm_panic("zend_mm_heap corrupted")` for damage no call is to blame for (found by a
/// walk of the heap's own lists): PHP's line, then `detail`. Aborts.
#[cold]
#[inline(never)]
pub fn heap_corrupted(detail: fmt::Arguments<'_>) -> ! {
    let mut msg = MsgBuf::<1024>::new();
    let _ = msg.write_str("zend_mm_heap corrupted\n");
    let _ = msg.write_fmt(detail);
    let _ = msg.write_str("\n");
    write_stderr(msg.as_bytes());
    std::process::abort()
}

/// A call the library cannot make sense of (a NULL or unknown heap, an incomplete handler set):
/// prints `<function>: <problem>` and aborts, as heap corruption does.
#[cold]
#[inline(never)]
pub fn misuse(function: &str, problem: &str) -> ! {
    eprint(format_args!("{function}: {problem}\n"));
    std::process::abort()
}

/// A storage's `init` returned nothing: PHP 5.3's startup error, exit status 255.
#[cold]
#[inline(never)]
pub fn storage_init_failed(name: &CStr) -> ! {
    startup_error(format_args!(
        "Cannot initialize zend_mm storage [{}]\n",
        name.to_str().unwrap_or("?")
    ))
}

/// PHP's `zend_out_of_memory()`: a persistent (libc) allocation failed.
#[cold]
#[inline(never)]
pub fn persistent_out_of_memory() -> ! {
    write_stderr(b"Out of memory\n");
    // SAFETY: terminating the process.
    unsafe { libc::exit(1) }
}

/// A usage error the library cannot continue from (bad environment, bad arguments at startup):
/// prints `message` and exits with status 255, as PHP's startup errors do.
#[cold]
#[inline(never)]
pub fn startup_error(args: fmt::Arguments<'_>) -> ! {
    eprint(args);
    // SAFETY: terminating the process.
    unsafe { libc::exit(255) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: Fatal) -> String {
        let mut m = MsgBuf::<256>::new();
        write!(m, "{f}").unwrap();
        String::from_utf8(m.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn messages_are_phps() {
        assert_eq!(
            text(Fatal::Limit {
                limit: 2097152,
                tried: 4096
            }),
            "Allowed memory size of 2097152 bytes exhausted (tried to allocate 4096 bytes)"
        );
        assert_eq!(
            text(Fatal::OutOfMemory {
                allocated: 2097152,
                tried: 100
            }),
            "Out of memory (allocated 2097152 bytes) (tried to allocate 100 bytes)"
        );
        assert_eq!(
            text(Fatal::Overflow3 {
                nmemb: 1 << 62,
                size: 8,
                offset: 0
            }),
            "Possible integer overflow in memory allocation (4611686018427387904 * 8 + 0)"
        );
        assert_eq!(
            text(Fatal::Overflow2 {
                size: usize::MAX - 99,
                add: 4096
            }),
            "Possible integer overflow in memory allocation (18446744073709551516 + 4096)"
        );
    }

    fn bad_pointer_line(call: &Call, p: usize, what: BadPointer) -> String {
        let mut m = MsgBuf::<512>::new();
        write_bad_pointer(&mut m, call, p, what).unwrap();
        String::from_utf8(m.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_bad_pointer_is_named_with_its_call_and_location() {
        let here = Site::new(c"app.c".as_ptr(), 12);
        assert_eq!(
            bad_pointer_line(
                &Call::new("efree", here),
                0x7f00_0000_1020,
                BadPointer::Interior {
                    block: 0x7f00_0000_1000,
                    offset: 32,
                    size: 64
                }
            ),
            "efree(0x7f0000001020): not the start of a block: 32 bytes into the 64-byte block at \
             0x7f0000001000 (called at app.c:12)"
        );
        assert_eq!(
            bad_pointer_line(
                &Call::new("erealloc", here.relayed(c"lib.c".as_ptr(), 7)),
                0x1000,
                BadPointer::DoubleFree
            ),
            "erealloc(0x1000): double free: the block was the last one freed in its size class \
             (called at app.c:12, relayed from lib.c:7)"
        );
        assert_eq!(
            bad_pointer_line(
                &Call::new("efree", Site::new(core::ptr::null(), 0)),
                0x2000,
                BadPointer::OtherHeap { owner: 0x3000 }
            ),
            "efree(0x2000): a block of another heap (zend_mm_heap 0x3000), not of this one \
             (the call carried no file:line)"
        );
        assert_eq!(
            bad_pointer_line(&Call::REMOTE, 0x2000, BadPointer::NoHeapsMemory),
            "efree(0x2000): not memory of any heap (never allocated here, or freed and given back \
             already) (freed from another thread; the location of that call is not kept)"
        );
    }

    #[test]
    fn msgbuf_truncates_and_stays_nul_terminated() {
        let mut m = MsgBuf::<8>::new();
        write!(m, "abcdefghijk").unwrap();
        assert_eq!(m.as_bytes(), b"abcdefg");
        // SAFETY: the buffer is NUL-terminated.
        let text = unsafe { CStr::from_ptr(m.as_c_ptr()) };
        assert_eq!(text.to_bytes(), b"abcdefg");
    }
}
