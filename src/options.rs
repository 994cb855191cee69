//! Options: every environment variable the library reads, in one table, parsed once.
//!
//! Owns the parsing rules (PHP 5.3's `zend_atoi`: decimal, `0x` hex or `0` octal, then an optional
//! `k`/`m`/`g` suffix) and the startup errors: PHP's exact texts where PHP has one, a clear message
//! otherwise, always exit status 255. Values are read with `getenv` into the stack; nothing here
//! allocates. PHP reads them again for every thread; this library reads them once per process.

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_char};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::diagnostics::startup_error;
use crate::sizes::{DEFAULT_COMPACT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, ZEND_MM_SEG_SIZE};
use crate::storage::{self, StorageOps};

/// The options every default heap is made with.
#[derive(Clone, Copy)]
pub struct Options {
    pub storage: &'static StorageOps,
    pub segment_size: usize,
    pub compact_size: usize,
    pub use_zend_alloc: bool,
    /// Ask for transparent huge pages on segments and huge blocks.
    pub huge_pages: bool,
    /// Heaps track their blocks (PHP 5.3's debug build): sites, guards, leak reports.
    pub track: bool,
    /// A non-silent request end of a tracking heap reports its leaks.
    pub print_leaks: bool,
    /// Allocations a request may make before the next one fails (`u64::MAX`: no limit).
    pub max_allocs: u64,
    /// Heaps keep statistics and print them when destroyed and at process exit.
    pub stats: StatsOutput,
}

/// Where `ZEND_MM_STATS` sends statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsOutput {
    Off,
    Text,
    Json,
}

impl Options {
    /// The options with no variable set.
    pub fn defaults() -> Options {
        Options {
            storage: storage::BUILTIN[0],
            segment_size: ZEND_MM_SEG_SIZE,
            compact_size: DEFAULT_COMPACT_SIZE,
            use_zend_alloc: true,
            huge_pages: false,
            track: false,
            print_leaks: true,
            max_allocs: u64::MAX,
            stats: StatsOutput::Off,
        }
    }
}

/// One environment variable: its name, default, meaning (the README's table mirrors these) and
/// how its value changes the options.
pub struct EnvVar {
    pub name: &'static CStr,
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "documentation: a test holds the README to it")
    )]
    pub default: &'static str,
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "documentation: a test holds the README to it")
    )]
    pub doc: &'static str,
    apply: fn(&mut Options, &[u8]) -> Result<(), OptionError>,
}

pub static ENV_VARS: [EnvVar; 9] = [
    EnvVar {
        name: c"ZEND_MM_MEM_TYPE",
        default: "malloc",
        doc: "storage for segments: `malloc`, `mmap_anon` or `mmap_zero` (exact name)",
        apply: |o, v| {
            o.storage = storage::builtin_by_name(v).ok_or(OptionError::UnknownStorage)?;
            Ok(())
        },
    },
    EnvVar {
        name: c"ZEND_MM_SEG_SIZE",
        default: "2M",
        doc: "segment size: a power of two from 64K to 1G, in `zend_atoi` syntax (`262144`, `256k`, `0x40000`)",
        apply: |o, v| {
            let n = number(v)?;
            if n <= 0 || (n as u64).count_ones() != 1 {
                return Err(OptionError::SegSizeNotPowerOfTwo(n));
            }
            if (n as u64) < MIN_SEGMENT_SIZE as u64 {
                return Err(OptionError::SegSizeTooSmall(n));
            }
            if (n as u64) > MAX_SEGMENT_SIZE as u64 {
                return Err(OptionError::SegSizeTooLarge(n));
            }
            o.segment_size = n as usize;
            Ok(())
        },
    },
    EnvVar {
        name: c"ZEND_MM_COMPACT",
        default: "2M",
        doc: "at request end, call the storage's `compact` handler if the request's real peak passed this many bytes (`0`: never); the built-in storages' does nothing, as they give memory back when the heap does",
        apply: |o, v| {
            let n = number(v)?;
            o.compact_size = usize::try_from(n).map_err(|_| OptionError::Negative)?;
            Ok(())
        },
    },
    EnvVar {
        name: c"USE_ZEND_ALLOC",
        default: "1",
        doc: "`0` sends `emalloc`/`efree`/`erealloc` of thread heaps straight to the C library's `malloc`/`free`/`realloc`",
        apply: |o, v| {
            o.use_zend_alloc = flag(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: c"USE_ZEND_ALLOC_HUGE_PAGES",
        default: "0",
        doc: "non-zero asks the kernel for transparent huge pages on the built-in storages' segments and huge blocks (`madvise(MADV_HUGEPAGE)` on their whole pages), as PHP 8 does for its own chunks",
        apply: |o, v| {
            o.huge_pages = flag(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: c"ZEND_MM_DEBUG",
        default: "0",
        doc: "`1` makes every heap created afterwards track its blocks (PHP 5.3's debug build at run time): the allocation site of each block, guards before and after it, every `efree`/`erealloc`/`zend_mem_block_size` pointer checked and a bad one reported and skipped, freed blocks poisoned, a leak report at each non-silent request end",
        apply: |o, v| {
            o.track = flag(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: c"ZEND_ALLOC_PRINT_LEAKS",
        default: "1",
        doc: "`0` keeps a tracking heap's request end from reporting leaks",
        apply: |o, v| {
            o.print_leaks = flag(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: c"ZEND_MM_MAX_ALLOCS",
        default: "unset",
        doc: "fault injection (PHP 8.2.36's): in each request, the allocation after this many raises the memory-limit error, and the process exits with status 121 if the error handler returns",
        apply: |o, v| {
            let n = number(v)?;
            o.max_allocs = u64::try_from(n).map_err(|_| OptionError::Negative)?;
            Ok(())
        },
    },
    EnvVar {
        name: c"ZEND_MM_STATS",
        default: "0",
        doc: "`1` (text) or `json` (one line per heap): every heap keeps statistics (per bin, large and huge blocks, segments, requests; with `ZEND_MM_DEBUG=1` the top allocation sites) and prints them to stderr when it is destroyed and, for the main thread's heap, at process exit",
        apply: |o, v| {
            o.stats = match v {
                b"json" => StatsOutput::Json,
                _ => match flag(v) {
                    Ok(true) => StatsOutput::Text,
                    Ok(false) => StatsOutput::Off,
                    Err(OptionError::NotASwitch) => return Err(OptionError::NotAStatsOutput),
                    Err(e) => return Err(e),
                },
            };
            Ok(())
        },
    },
];

/// The options, once read: published by the first thread to read them. No thread ever waits for
/// another (a thread that finds the publication under way uses its own reading of the same
/// environment), so a `fork` at any moment leaves the child nothing to wait for.
struct Published {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<Options>>,
}

const UNREAD: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

// SAFETY: `value` is written once, by the thread that moved `state` from UNREAD to WRITING, and
// read only after `state` is READY (release/acquire).
unsafe impl Sync for Published {}

static OPTIONS: Published = Published {
    state: AtomicU8::new(UNREAD),
    value: UnsafeCell::new(MaybeUninit::uninit()),
};

/// The process's options (read from the environment on first use; a bad value ends the process).
pub fn get() -> Options {
    if OPTIONS.state.load(Ordering::Acquire) == READY {
        // SAFETY: READY: written once and never again.
        return unsafe { (*OPTIONS.value.get()).assume_init() };
    }
    let options = read(getenv);
    if OPTIONS
        .state
        .compare_exchange(UNREAD, WRITING, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        // SAFETY: this thread alone moved the state to WRITING; nobody reads before READY.
        unsafe { (*OPTIONS.value.get()).write(options) };
        OPTIONS.state.store(READY, Ordering::Release);
    }
    options
}

fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv with a C string; the value stays valid while the environment is not changed.
    let v: *const c_char = unsafe { libc::getenv(name.as_ptr()) };
    if v.is_null() {
        None
    } else {
        // SAFETY: getenv returns a C string.
        Some(unsafe { CStr::from_ptr(v) }.to_bytes())
    }
}

/// What is wrong with a number.
#[derive(Debug, PartialEq, Eq)]
pub enum NumberError {
    NotANumber,
    TooLarge,
}

/// PHP's `zend_atoi`, strictly: optional whitespace and sign, digits in base 10, 16 (`0x`) or 8
/// (leading `0`), then at most one `k`/`m`/`g` suffix (any case) and nothing else.
pub fn parse_zend_atoi(s: &[u8]) -> Result<i64, NumberError> {
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let (radix, start) = match (s.get(i), s.get(i + 1)) {
        (Some(b'0'), Some(b'x' | b'X')) => (16, i + 2),
        (Some(b'0'), Some(c)) if c.is_ascii_digit() => (8, i + 1),
        _ => (10, i),
    };
    let mut end = start;
    let mut value: i64 = 0;
    while let Some(d) = s.get(end).and_then(|c| (*c as char).to_digit(radix)) {
        value = value
            .checked_mul(radix as i64)
            .and_then(|v| v.checked_add(d as i64))
            .ok_or(NumberError::TooLarge)?;
        end += 1;
    }
    if end == start {
        return Err(NumberError::NotANumber);
    }
    let factor: i64 = match &s[end..] {
        [] => 1,
        [b'k' | b'K'] => 1 << 10,
        [b'm' | b'M'] => 1 << 20,
        [b'g' | b'G'] => 1 << 30,
        _ => return Err(NumberError::NotANumber),
    };
    let value = value.checked_mul(factor).ok_or(NumberError::TooLarge)?;
    Ok(if negative { -value } else { value })
}

/// A switch. PHP reads these with `atol`: a number, non-zero meaning on, and any word reads as 0.
/// Accepted here: a decimal integer (non-zero: on, as in PHP), and `no`, `off` or `false` (any
/// case) for off, which PHP reads as 0 too. Anything else is an error, not a silent 0: `yes`,
/// `on` or `true` would switch the option off in PHP, the opposite of what they say, and `1k` or
/// `0x1` are no switch values.
fn flag(v: &[u8]) -> Result<bool, OptionError> {
    let t = v.trim_ascii();
    if [&b"no"[..], b"off", b"false"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
    {
        return Ok(false);
    }
    let digits = t.strip_prefix(b"-").or(t.strip_prefix(b"+")).unwrap_or(t);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(OptionError::NotASwitch);
    }
    // Zero or not is all a switch needs (PHP's atol saturates on overflow: still non-zero).
    Ok(digits.iter().any(|&d| d != b'0'))
}

fn number(v: &[u8]) -> Result<i64, OptionError> {
    parse_zend_atoi(v).map_err(|e| match e {
        NumberError::NotANumber => OptionError::NotANumber,
        NumberError::TooLarge => OptionError::OutOfRange,
    })
}

/// What is wrong with an environment value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionError {
    UnknownStorage,
    NotANumber,
    OutOfRange,
    Negative,
    /// The value given, in bytes.
    SegSizeNotPowerOfTwo(i64),
    SegSizeTooSmall(i64),
    SegSizeTooLarge(i64),
    /// A switch's value is neither an integer nor a word for off.
    NotASwitch,
    /// `ZEND_MM_STATS` is neither a switch nor `json`.
    NotAStatsOutput,
}

/// `n` bytes in the largest unit that divides it (`64K`, `1G`), as the variables are written.
struct Bytes(usize);

impl core::fmt::Display for Bytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let n = self.0;
        match [(30, 'G'), (20, 'M'), (10, 'K')]
            .into_iter()
            .find(|&(shift, _)| n != 0 && n % (1 << shift) == 0)
        {
            Some((shift, unit)) => write!(f, "{}{unit}", n >> shift),
            None => write!(f, "{n}"),
        }
    }
}

/// What `ZEND_MM_SEG_SIZE` accepts, after each of its errors.
fn seg_size_rule(f: &mut core::fmt::Formatter<'_>, value: &str, n: i64) -> core::fmt::Result {
    writeln!(
        f,
        " (got '{value}' = {n} bytes; it takes a power of two from {} to {} bytes, written as \
         262144, 256k, 0x40000 or 2M)",
        Bytes(MIN_SEGMENT_SIZE),
        Bytes(MAX_SEGMENT_SIZE)
    )
}

/// A bad value, the variable it was given to, and the message it gets.
pub struct BadValue<'a> {
    pub var: &'static CStr,
    pub value: &'a [u8],
    pub error: OptionError,
}

impl core::fmt::Display for BadValue<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let var = self.var.to_str().unwrap_or("?");
        let value = core::str::from_utf8(self.value).unwrap_or("(not UTF-8)");
        match self.error {
            OptionError::UnknownStorage => {
                writeln!(f, "Wrong or unsupported zend_mm storage type '{value}'")?;
                writeln!(f, "  supported types:")?;
                for ops in storage::BUILTIN {
                    let name = storage::builtin_name(ops);
                    writeln!(f, "    '{}'", name.to_str().unwrap_or("?"))?;
                }
                Ok(())
            }
            OptionError::NotANumber => {
                writeln!(
                    f,
                    "{var} must be a number (optionally followed by k, m or g), got '{value}'"
                )
            }
            OptionError::OutOfRange => writeln!(f, "{var} is out of range: '{value}'"),
            OptionError::Negative => writeln!(f, "{var} must not be negative, got '{value}'"),
            // PHP 5.3's texts, then the value and the rule.
            OptionError::SegSizeNotPowerOfTwo(n) => {
                write!(f, "ZEND_MM_SEG_SIZE must be a power of two")?;
                seg_size_rule(f, value, n)
            }
            OptionError::SegSizeTooSmall(n) => {
                write!(f, "ZEND_MM_SEG_SIZE is too small")?;
                seg_size_rule(f, value, n)
            }
            OptionError::SegSizeTooLarge(n) => {
                write!(f, "ZEND_MM_SEG_SIZE is too large")?;
                seg_size_rule(f, value, n)
            }
            OptionError::NotASwitch => writeln!(
                f,
                "{var} is a switch: 1 for on or 0 for off (no, off and false mean 0 too), got '{value}'"
            ),
            OptionError::NotAStatsOutput => writeln!(
                f,
                "{var} takes 1 (text), json or 0 (off; no, off and false too), got '{value}'"
            ),
        }
    }
}

/// Parses the options from an environment (`getenv` in production, a table in tests); a bad value
/// ends the process with its message and status 255.
pub fn read<'a>(env: impl Fn(&CStr) -> Option<&'a [u8]>) -> Options {
    match try_read(env) {
        Ok(o) => o,
        Err(bad) => startup_error(format_args!("{bad}")),
    }
}

/// Parses the options, or says which value is wrong.
pub fn try_read<'a>(env: impl Fn(&CStr) -> Option<&'a [u8]>) -> Result<Options, BadValue<'a>> {
    let mut options = Options::defaults();
    for var in &ENV_VARS {
        if let Some(value) = env(var.name) {
            (var.apply)(&mut options, value).map_err(|error| BadValue {
                var: var.name,
                value,
                error,
            })?;
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &'static str)]) -> Result<Options, String> {
        let vars: Vec<(String, &'static str)> =
            vars.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        try_read(|name| {
            let name = name.to_str().unwrap();
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn readme_lists_every_variable_as_the_table_says() {
        // Compiled in, so the test also runs under Miri's file isolation.
        let readme = include_str!("../README.md");
        for var in &ENV_VARS {
            let row = format!(
                "| `{}` | `{}` | {} |",
                var.name.to_str().unwrap(),
                var.default,
                var.doc
            );
            assert!(readme.contains(&row), "README.md lacks the row:\n{row}");
        }
    }

    #[test]
    fn zend_atoi_accepts_php_syntax() {
        assert_eq!(parse_zend_atoi(b"262144"), Ok(262144));
        assert_eq!(parse_zend_atoi(b"256k"), Ok(262144));
        assert_eq!(parse_zend_atoi(b"1M"), Ok(1 << 20));
        assert_eq!(parse_zend_atoi(b"1g"), Ok(1 << 30));
        assert_eq!(parse_zend_atoi(b"0x100k"), Ok(262144));
        assert_eq!(parse_zend_atoi(b"0400"), Ok(256));
        assert_eq!(parse_zend_atoi(b"  +64K"), Ok(65536));
        assert_eq!(parse_zend_atoi(b"-2M"), Ok(-(2 << 20)));
        assert_eq!(parse_zend_atoi(b"0"), Ok(0));
    }

    #[test]
    fn zend_atoi_rejects_garbage_and_overflow() {
        assert_eq!(parse_zend_atoi(b""), Err(NumberError::NotANumber));
        assert_eq!(parse_zend_atoi(b"abc"), Err(NumberError::NotANumber));
        assert_eq!(parse_zend_atoi(b"12xyzk"), Err(NumberError::NotANumber));
        assert_eq!(parse_zend_atoi(b"1MB"), Err(NumberError::NotANumber));
        assert_eq!(parse_zend_atoi(b"0x"), Err(NumberError::NotANumber));
        assert_eq!(
            parse_zend_atoi(b"99999999999999999999"),
            Err(NumberError::TooLarge)
        );
        assert_eq!(
            parse_zend_atoi(b"9999999999999g"),
            Err(NumberError::TooLarge)
        );
    }

    #[test]
    fn defaults() {
        let o = with(&[]).unwrap();
        assert_eq!(o.segment_size, 2 << 20);
        assert_eq!(o.compact_size, 2 << 20);
        assert!(o.use_zend_alloc);
        assert_eq!(storage::builtin_name(o.storage), c"malloc");
    }

    #[test]
    fn every_value_error_has_its_message() {
        assert_eq!(
            with(&[("ZEND_MM_MEM_TYPE", "shm")]).err().unwrap(),
            "Wrong or unsupported zend_mm storage type 'shm'\n  supported types:\n    'malloc'\n    'mmap_anon'\n    'mmap_zero'\n"
        );
        let rule = "it takes a power of two from 64K to 1G bytes, written as 262144, 256k, \
                    0x40000 or 2M)\n";
        assert_eq!(
            with(&[("ZEND_MM_SEG_SIZE", "3M")]).err().unwrap(),
            format!("ZEND_MM_SEG_SIZE must be a power of two (got '3M' = 3145728 bytes; {rule}")
        );
        assert_eq!(
            with(&[("ZEND_MM_SEG_SIZE", "-2M")]).err().unwrap(),
            format!("ZEND_MM_SEG_SIZE must be a power of two (got '-2M' = -2097152 bytes; {rule}")
        );
        assert_eq!(
            with(&[("ZEND_MM_SEG_SIZE", "0")]).err().unwrap(),
            format!("ZEND_MM_SEG_SIZE must be a power of two (got '0' = 0 bytes; {rule}")
        );
        assert_eq!(
            with(&[("ZEND_MM_SEG_SIZE", "32k")]).err().unwrap(),
            format!("ZEND_MM_SEG_SIZE is too small (got '32k' = 32768 bytes; {rule}")
        );
        assert_eq!(
            with(&[("ZEND_MM_SEG_SIZE", "2g")]).err().unwrap(),
            format!("ZEND_MM_SEG_SIZE is too large (got '2g' = 2147483648 bytes; {rule}")
        );
        assert!(
            with(&[("ZEND_MM_SEG_SIZE", "lots")])
                .err()
                .unwrap()
                .starts_with("ZEND_MM_SEG_SIZE must be a number")
        );
        assert!(
            with(&[("ZEND_MM_SEG_SIZE", "1e99")])
                .err()
                .unwrap()
                .contains("'1e99'")
        );
        assert!(
            with(&[("ZEND_MM_COMPACT", "-1")])
                .err()
                .unwrap()
                .starts_with("ZEND_MM_COMPACT must not be negative")
        );
        for bad in ["yes", "on", "true", "1k", "0x1", "", "1.5", "-"] {
            assert_eq!(
                with(&[("USE_ZEND_ALLOC", bad)]).err().unwrap(),
                format!(
                    "USE_ZEND_ALLOC is a switch: 1 for on or 0 for off (no, off and false mean 0 \
                     too), got '{bad}'\n"
                )
            );
        }
        assert_eq!(
            with(&[("ZEND_MM_DEBUG", "enabled")]).err().unwrap(),
            "ZEND_MM_DEBUG is a switch: 1 for on or 0 for off (no, off and false mean 0 too), \
             got 'enabled'\n"
        );
        assert_eq!(
            with(&[("ZEND_MM_STATS", "xml")]).err().unwrap(),
            "ZEND_MM_STATS takes 1 (text), json or 0 (off; no, off and false too), got 'xml'\n"
        );
    }

    #[test]
    fn switches_read_as_php_reads_them() {
        // PHP's atol: non-zero numbers are on; words read as 0, and the words for off are taken.
        for (value, on) in [
            ("0", false),
            ("1", true),
            ("2", true),
            ("-1", true),
            ("00", false),
            (" 1 ", true),
            ("99999999999999999999999", true),
            ("no", false),
            ("OFF", false),
            ("False", false),
        ] {
            let o = with(&[("USE_ZEND_ALLOC", value), ("ZEND_MM_DEBUG", value)]).unwrap();
            assert_eq!((o.use_zend_alloc, o.track), (on, on), "{value:?}");
        }
        let stats = |v| with(&[("ZEND_MM_STATS", v)]).unwrap().stats;
        assert_eq!(stats("json"), StatsOutput::Json);
        assert_eq!(stats("1"), StatsOutput::Text);
        assert_eq!(stats("off"), StatsOutput::Off);
    }

    #[test]
    fn accepted_values() {
        let o = with(&[
            ("ZEND_MM_SEG_SIZE", "256k"),
            ("ZEND_MM_MEM_TYPE", "mmap_zero"),
            ("USE_ZEND_ALLOC", "0"),
        ])
        .unwrap();
        assert_eq!(o.segment_size, 256 << 10);
        assert!(!o.use_zend_alloc);
        assert_eq!(storage::builtin_name(o.storage), c"mmap_zero");
        assert_eq!(
            with(&[("ZEND_MM_SEG_SIZE", "64k")]).unwrap().segment_size,
            65536
        );
        assert_eq!(
            with(&[("ZEND_MM_SEG_SIZE", "1G")]).unwrap().segment_size,
            1 << 30
        );
    }
}
