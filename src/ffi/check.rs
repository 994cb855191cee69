//! `_mem_block_check` and `_full_mem_check` (PHP 5.3's debug checks, available in every build; on a
//! heap that tracks its blocks they print PHP 5.3's reports with allocation sites and guards).

use core::ffi::{c_char, c_int, c_void};

use super::site;
use crate::diagnostics::{BLOCK_REPORT_DASHES, eprint, file_text, print_block_report_head};
use crate::heap::{BlockStatus, print_report};
use crate::runtime;

/// Checks one pointer of the current heap: 1 if it is a live block, 0 otherwise. Unless `silent`,
/// prints PHP 5.3's block status report to stderr.
#[unsafe(no_mangle)]
pub extern "C" fn _mem_block_check(
    ptr: *mut c_void,
    silent: c_int,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> c_int {
    let heap = runtime::current();
    let site = site(
        __zend_filename,
        __zend_lineno,
        __zend_orig_filename,
        __zend_orig_lineno,
    );
    // PHP 5.3's codes: 0 and 3 print, 1 and 2 do not.
    let prints = silent == 0 || silent == 3;
    // SAFETY: the current heap is live.
    if !heap.is_null() && unsafe { (*heap).is_tracking() && !(*heap).is_custom() } {
        // SAFETY: as above.
        let inspection = unsafe { (*heap).inspect(ptr.cast()) };
        if prints {
            print_report(ptr.cast(), &inspection, site);
        }
        return c_int::from(inspection.is_valid());
    }
    let status = if ptr.is_null() {
        BlockStatus::Null
    } else if heap.is_null() {
        BlockStatus::Foreign
    } else {
        // SAFETY: the current heap is live.
        unsafe { (*heap).block_status(ptr.cast()) }
    };
    if prints {
        print_block_report_head(ptr.cast(), &site);
        match status {
            BlockStatus::Null => eprint(format_args!("NULL\n")),
            BlockStatus::Foreign => {
                eprint(format_args!("Invalid pointer: (not owned by this heap)\n"))
            }
            BlockStatus::NotABlock => eprint(format_args!(
                "Invalid pointer: (not the start of a block)\n"
            )),
            BlockStatus::Freed => eprint(format_args!("{:>10}\tFreed\n", "Beginning:  ")),
            BlockStatus::Live(size) => {
                eprint(format_args!("{:>10}\tOK ({size} bytes)\n", "Beginning:  "))
            }
        }
        eprint(format_args!("{BLOCK_REPORT_DASHES}"));
    }
    c_int::from(matches!(status, BlockStatus::Live(_)))
}

/// Checks the whole current heap (page maps, free lists, counters) and returns the number of
/// problems found. Prints PHP 5.3's report frame to stderr, and each problem unless `silent`.
#[unsafe(no_mangle)]
pub extern "C" fn _full_mem_check(
    silent: c_int,
    __zend_filename: *const c_char,
    __zend_lineno: u32,
    __zend_orig_filename: *const c_char,
    __zend_orig_lineno: u32,
) -> c_int {
    let heap = runtime::current();
    // SAFETY: the current heap is live.
    if heap.is_null() || unsafe { (*heap).is_custom() } {
        return 0;
    }
    let (file, line) = (file_text(__zend_filename), __zend_lineno);
    let dashes = "------------------------------------------------\n";
    eprint(format_args!("{dashes}Full Memory Check at {file}:{line}\n"));
    // SAFETY: the current heap is live.
    let heap = unsafe { &*heap };
    let mut errors = heap.check_all(&mut |args| {
        if silent == 0 {
            eprint(args);
        }
    });
    if heap.is_tracking() {
        let site = site(
            __zend_filename,
            __zend_lineno,
            __zend_orig_filename,
            __zend_orig_lineno,
        );
        errors += heap.check_tracked(site, silent != 0);
    }
    eprint(format_args!(
        "End of full memory check {file}:{line} ({errors} errors)\n{dashes}"
    ));
    errors as c_int
}
