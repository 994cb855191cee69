//! The runtime: per-thread heaps (PHP's ZTS model: `AG(mm_heap)` per thread).
//!
//! Owns the calling thread's *current* heap (what `emalloc` uses; `zend_mm_set_heap` changes it)
//! and its *own* default heap, made on first use from the process options and released in full
//! when the thread exits, and the thread-local slots that hold them ([`tls`]). Heaps take no locks:
//! a heap is used by one thread at a time.

mod tls;

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::diagnostics::{self, Fatal, Site};
use crate::heap::{Heap, SENTINEL, api};
use crate::options::{self, StatsOutput};
use crate::storage::Storage;

/// The calling thread's current heap, or null if it has none yet.
#[inline(always)]
pub fn current() -> *mut Heap {
    // SAFETY: this thread's own slots.
    unsafe { (*tls::slots()).current }
}

/// The calling thread's current heap; after `zend_mm_set_heap(NULL)`, its own heap again (made
/// current), so blocks of the own heap stay usable. Null if the thread has neither.
pub fn current_or_own() -> *mut Heap {
    let heap = current();
    if !heap.is_null() {
        return heap;
    }
    // SAFETY: this thread's own slots.
    let own = unsafe { (*tls::slots()).own };
    if !own.is_null() {
        set_current(own);
    }
    own
}

/// The heap the fast paths use: the current heap, or the sentinel (whose fast paths always
/// decline) when there is none or it forwards to custom handlers.
#[inline(always)]
pub fn fast() -> *mut Heap {
    tls::fast()
}

/// The calling thread's current heap, made (as its own default heap) if it has none. Raises the
/// out-of-memory error if the storage cannot provide the first segment.
#[inline(always)]
pub fn current_or_create(tried: usize, site: Site) -> *mut Heap {
    let heap = current();
    if heap.is_null() {
        adopt_own(tried, site)
    } else {
        heap
    }
}

/// Points the fast paths at the current heap, unless it is missing, custom or tracking.
fn refresh_fast() {
    let slots = tls::slots();
    // SAFETY: this thread's own slots; a non-null current heap is live.
    unsafe {
        let current = (*slots).current;
        (*slots).fast = if !current.is_null() && (*current).takes_fast_paths() {
            current
        } else {
            SENTINEL.get()
        };
    }
}

/// Makes `heap` the calling thread's current heap; returns the previous one.
pub fn set_current(heap: *mut Heap) -> *mut Heap {
    // SAFETY: this thread's own slots.
    let old = unsafe { core::mem::replace(&mut (*tls::slots()).current, heap) };
    refresh_fast();
    old
}

/// Tells the thread that `heap` switched to or from custom handlers. Only the calling thread's
/// fast path follows at once: a heap is used by one thread at a time, and another thread using it
/// meanwhile is a race PHP has too.
pub fn heap_changed(heap: *mut Heap) {
    if heap == current() {
        refresh_fast();
    }
}

/// Forgets `heap` wherever this thread refers to it (it was shut down for good).
pub fn forget(heap: *mut Heap) {
    let slots = tls::slots();
    // SAFETY: this thread's own slots.
    unsafe {
        if (*slots).current == heap {
            (*slots).current = ptr::null_mut();
        }
        if (*slots).own == heap {
            (*slots).own = ptr::null_mut();
            set_exit_hook(ptr::null_mut());
        }
    }
    refresh_fast();
}

/// A new heap from the process options, or null if storage fails. It keeps no reserve: as in PHP 8,
/// the error handler gets headroom from the suspended limit, and the first segment keeps all its
/// pages for blocks. `per_thread` applies
/// `USE_ZEND_ALLOC` (read for thread heaps, as PHP's `alloc_globals_ctor` does, not for
/// `zend_mm_startup`).
pub fn new_default_heap(per_thread: bool) -> *mut Heap {
    let opts = options::get();
    // As the C library's allocator, the `malloc` storage would call itself.
    let ops = if PRELOAD && ptr::eq(opts.storage, crate::storage::BUILTIN[0]) {
        crate::storage::BUILTIN[1]
    } else {
        opts.storage
    };
    let Some(storage) = Storage::open_builtin(ops, opts.huge_pages) else {
        diagnostics::storage_init_failed(crate::storage::builtin_name(ops));
    };
    // SAFETY: the storage is ours; the segment size was validated by the options.
    let heap = unsafe { Heap::create(storage, opts.segment_size, 0, opts.compact_size) };
    if heap.is_null() {
        return heap;
    }
    // SAFETY: the heap was just made; nothing else refers to it, and it has no block.
    unsafe {
        apply_diagnostic_options(heap);
        if per_thread {
            (*heap).set_thread_heap();
            // `USE_ZEND_ALLOC=0` would send the C library's allocator to itself.
            if !opts.use_zend_alloc && !PRELOAD {
                (*heap).use_libc_only();
            }
        }
    }
    heap
}

/// Applies the process options for diagnostics to a new heap: tracking (`ZEND_MM_DEBUG`), fault
/// injection (`ZEND_MM_MAX_ALLOCS`), statistics (`ZEND_MM_STATS`, printed for the main thread's
/// heap at process exit too).
///
/// # Safety
/// `heap` must be a live heap with no block, not borrowed.
pub unsafe fn apply_diagnostic_options(heap: *mut Heap) {
    let opts = options::get();
    // SAFETY: a live empty heap (caller contract); a refusal leaves it as it was.
    unsafe {
        let _ = (*heap).set_tracking(opts.track);
        (*heap).set_max_allocs(opts.max_allocs);
        if opts.stats != StatsOutput::Off {
            let _ = (*heap).set_counting(true);
        }
    }
    if opts.stats != StatsOutput::Off {
        register_stats_at_exit();
    }
}

/// Prints the statistics of the exiting thread's heap at process exit (once registered).
fn register_stats_at_exit() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn print_at_exit() {
        let heap = current_or_own();
        if !heap.is_null() {
            // SAFETY: this thread's live heap, not borrowed while `exit` runs handlers.
            unsafe { (*heap).print_stats_as_configured() };
        }
    }
    if !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: registering a plain C function.
        unsafe { libc::atexit(print_at_exit) };
    }
}

/// Makes the thread's own heap current again, or makes it first.
#[cold]
#[inline(never)]
fn adopt_own(tried: usize, site: Site) -> *mut Heap {
    // SAFETY: this thread's own slots.
    let own = unsafe { (*tls::slots()).own };
    if !own.is_null() {
        set_current(own);
        return own;
    }
    let mut heap = ptr::null_mut();
    if malloc_semantics() {
        heap = adopt_abandoned();
    }
    if heap.is_null() {
        heap = new_default_heap(true);
    }
    if heap.is_null() {
        if site.may_fail {
            return heap;
        }
        // SAFETY: no heap to mark; nothing with a destructor is live here.
        unsafe {
            api::raise(
                ptr::null_mut(),
                site,
                Fatal::OutOfMemory {
                    allocated: 0,
                    tried,
                },
            )
        }
    }
    // SAFETY: this thread's own slots.
    unsafe { (*tls::slots()).own = heap };
    set_current(heap);
    set_exit_hook(heap);
    heap
}

/// Makes sure the calling thread has a current heap (`start_memory_manager`).
pub fn ensure_current() -> *mut Heap {
    current_or_create(0, Site::new(ptr::null(), 0))
}

/// The thread-exit key plus one (0: not made yet). Made without a lock: a thread that loses the
/// race deletes its own key.
static EXIT_KEY: AtomicUsize = AtomicUsize::new(0);

fn exit_key() -> libc::pthread_key_t {
    let known = EXIT_KEY.load(Ordering::Acquire);
    if known != 0 {
        return (known - 1) as libc::pthread_key_t;
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: creating a key with a destructor that only shuts a heap down.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } != 0 {
        diagnostics::startup_error(format_args!(
            "Cannot create the thread exit hook of zend_alloc\n"
        ));
    }
    match EXIT_KEY.compare_exchange(0, key as usize + 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => key,
        Err(theirs) => {
            // SAFETY: our key was never used.
            unsafe { libc::pthread_key_delete(key) };
            (theirs - 1) as libc::pthread_key_t
        }
    }
}

/// Arranges for `heap` (the thread's own heap, or nothing) to be released when the thread exits.
fn set_exit_hook(heap: *mut Heap) {
    // SAFETY: the key exists; the value is only read by `thread_exit`.
    unsafe { libc::pthread_setspecific(exit_key(), heap.cast()) };
}

/// Destructor passes the C library runs at thread exit (POSIX: at least 4).
fn destructor_passes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_THREAD_DESTRUCTOR_ITERATIONS) };
    if n >= 1 { n as usize } else { 4 }
}

/// The thread's exit hook. The heap goes last: other keys' destructors (made after ours, so run
/// after ours in each pass) may still free its blocks, so each pass but the final one sets the key
/// again, with the pass counted in the pointer's low bits, and the C library runs another pass.
unsafe extern "C" fn thread_exit(value: *mut c_void) {
    const PASS_MASK: usize = align_of::<Heap>() - 1;
    let heap = value.map_addr(|a| a & !PASS_MASK).cast::<Heap>();
    if heap.is_null() {
        return;
    }
    let pass = value.addr() & PASS_MASK;
    if pass + 1 < destructor_passes().min(PASS_MASK + 1) {
        // SAFETY: the key exists; setting it during a pass makes the C library run another.
        unsafe { libc::pthread_setspecific(exit_key(), value.map_addr(|a| a + 1)) };
        return;
    }
    forget(heap);
    // SAFETY: the exiting thread's own heap, in the last destructor pass; no thread uses it now.
    unsafe { retire(heap) };
}

/// The preload library: the heaps are the C library's allocator from the start.
const PRELOAD: bool = cfg!(feature = "preload");

/// Whether the heaps serve `malloc` semantics (the preload library, the Rust global allocator):
/// no request ever ends, so a thread's blocks outlive it.
static MALLOC_SEMANTICS: AtomicBool = AtomicBool::new(PRELOAD);

/// Switches the process to `malloc` semantics (see [`MALLOC_SEMANTICS`]).
pub fn use_malloc_semantics() {
    if !MALLOC_SEMANTICS.load(Ordering::Relaxed) {
        MALLOC_SEMANTICS.store(true, Ordering::Relaxed);
    }
}

fn malloc_semantics() -> bool {
    MALLOC_SEMANTICS.load(Ordering::Relaxed)
}

/// Lets a heap whose thread exited go. With PHP's semantics its blocks go with it (request memory
/// of a thread that is gone, as PHP's `alloc_globals_dtor` releases it). As the process's `malloc`,
/// it is abandoned instead (other threads may hold and free its blocks; what it holds unused
/// beyond two segments goes back first, see [`Heap::trim_for_abandonment`]) and released once they
/// are all freed: the abandoned heaps that are empty by now, this one included, go now.
///
/// This heap joins the list before the pass over it, not after: the pass settles it with the
/// others and puts the heaps it keeps back one by one, in reverse order. Measured on `tchurn`
/// (waves of 16 threads, each freeing the 256 blocks its exited predecessor handed on; counts of
/// 976 thread starts): threads that found no heap to take 6-17 instead of 44-51, heaps released
/// 2-11 instead of 41-48, so page faults and time fell (see the README). Measured worse: keeping
/// the list's order and giving a starting thread the heap retired last, or the one retired
/// first, or an empty one; keeping up to 2, 4 or 8 emptied heaps for starting threads.
///
/// # Safety
/// `heap` must be live and used by no thread from now on.
unsafe fn retire(heap: *mut Heap) {
    // SAFETY: forwarded caller contract.
    unsafe {
        if !malloc_semantics() || (*heap).is_custom() {
            return Heap::shutdown(heap, true);
        }
        (*heap).trim_for_abandonment();
        Heap::abandon(heap);
    }
    release_empty_abandoned();
}

/// `malloc_trim` for the heaps no thread uses: releases those whose blocks were all freed and
/// gives back what the others hold unused ([`Heap::trim`]); whether any memory went back. A thread
/// that starts meanwhile finds no heap to adopt and makes one.
pub fn trim_abandoned() -> bool {
    pass_over_abandoned(true)
}

/// Releases the abandoned heaps whose blocks were all freed; puts the others back.
fn release_empty_abandoned() {
    pass_over_abandoned(false);
}

/// Releases the abandoned heaps whose blocks were all freed and puts the others back, trimmed
/// first if `trim`; whether any memory went back.
fn pass_over_abandoned(trim: bool) -> bool {
    let mut any = false;
    let mut heap = Heap::take_abandoned();
    while !heap.is_null() {
        // SAFETY: taken from the abandoned list: live, and no other thread uses it.
        unsafe {
            let next = (*heap).next_abandoned();
            if (*heap).settle_abandoned() {
                Heap::shutdown(heap, true);
                any = true;
            } else {
                if trim {
                    let (given, handed_back) = (*heap).trim();
                    any |= given + handed_back > 0;
                }
                Heap::abandon(heap);
            }
            heap = next;
        }
    }
    any
}

/// An abandoned heap for a new thread to take as its own, if there is one (`malloc` mode).
fn adopt_abandoned() -> *mut Heap {
    let taken = Heap::take_abandoned();
    if taken.is_null() {
        return taken;
    }
    // SAFETY: taken from the abandoned list: live, and no other thread uses them.
    unsafe {
        let mut rest = (*taken).next_abandoned();
        while !rest.is_null() {
            let next = (*rest).next_abandoned();
            Heap::abandon(rest);
            rest = next;
        }
        (*taken).collect_remote_frees();
    }
    taken
}
