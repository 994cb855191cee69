//! `dlopen` without `RTLD_DEEPBIND`, for the preload library (x86-64 Linux).
//!
//! A library opened with `RTLD_DEEPBIND` looks up its symbols in its own dependencies first, so its
//! `malloc` and `free` are the C library's, not this library's: blocks cross between the two
//! allocators (PHP loads its extensions that way, and `pdo.so` then frees a block the engine made
//! with glibc's `free`: a crash; every preloaded malloc crashes the same way). The exported `dlopen`
//! clears the flag and jumps to the next `dlopen`: a jump, not a call, so the C library still sees
//! the program's own return address and searches the caller's library path, as it does without
//! this library. The one change: such a library's symbols bind as everyone else's.

use core::ffi::{c_char, c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::diagnostics;

/// The next `dlopen` (the C library's), found on the first call.
static NEXT_DLOPEN: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// Finds the next `dlopen`; called by the trampoline on its first use (with the caller's
/// arguments saved), never returns null.
extern "C" fn next_dlopen() -> *mut c_void {
    // SAFETY: a symbol lookup by a constant name.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlopen".as_ptr()) };
    if f.is_null() {
        diagnostics::startup_error(format_args!(
            "zend_alloc: no dlopen after the preload library to pass dlopen calls on to\n"
        ));
    }
    NEXT_DLOPEN.store(f, Ordering::Release);
    f
}

/// `dlopen(file, flags)` with `RTLD_DEEPBIND` cleared, handed on to the next `dlopen`. On the first
/// call the next `dlopen` is looked up with both arguments saved (three pushes keep the stack 16-byte
/// aligned at the call); then the flag is cleared (flags are in `esi`) and control jumps on with the
/// caller's return address in place.
///
/// # Safety
/// As the C library's `dlopen`.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn dlopen(file: *const c_char, flags: c_int) -> *mut c_void {
    core::arch::naked_asm!(
        "mov rax, qword ptr [rip + {next}]",
        "test rax, rax",
        "jnz 2f",
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {find}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "2:",
        "and esi, {keep}",
        "jmp rax",
        next = sym NEXT_DLOPEN,
        find = sym next_dlopen,
        keep = const !libc::RTLD_DEEPBIND,
    )
}
