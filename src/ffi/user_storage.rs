//! Storages as C sees them: PHP 5.3's `zend_mm_mem_handlers` tables.
//!
//! Owns both directions. A storage written in C (`zend_mm_startup_ex`) becomes a core
//! [`Storage`] whose operations call its handler table: this is the only place the library calls
//! a C storage handler. The built-in storages get C handler tables of their own, so that
//! `zend_mm_get_storage` can hand C a `zend_mm_storage` for any heap (PHP 5.3 programs read its
//! name, or pass its table to `zend_mm_startup_ex`).

use core::ffi::{CStr, c_void};
use core::ptr;

use super::types::{zend_mm_mem_handlers, zend_mm_segment, zend_mm_storage};
use crate::options;
use crate::os;
use crate::storage::{BUILTIN, Storage, StorageOps};

/// The C storage behind an instance pointer.
///
/// # Safety
/// `instance` must be a live `zend_mm_storage` whose table outlives it.
unsafe fn table(instance: *mut c_void) -> &'static zend_mm_mem_handlers {
    // SAFETY: caller contract.
    unsafe { &*(*instance.cast::<zend_mm_storage>()).handlers }
}

/// A C storage's operations; `instance` is its `zend_mm_storage`.
static C_OPS: StorageOps = StorageOps {
    realloc: Some(c_realloc),
    ..C_OPS_NO_REALLOC
};

/// The same for a table whose `_realloc` is NULL (the heap allocates, copies and frees instead).
static C_OPS_NO_REALLOC: StorageOps = StorageOps {
    name: c_name,
    open: || true,
    close: c_close,
    compact: c_compact,
    alloc: c_alloc,
    realloc: None,
    free: c_free,
    // A C storage's memory may be anything (a file, a fixed arena): its pages stay as they are.
    discard: keep_pages,
    // Unknown: a C storage's `_realloc` may copy.
    resize_keeps_pages: false,
    splits: None,
    // Unknown: a C storage's memory may hold anything.
    fresh_zeroed: |_| false,
    moves_pages: || false,
    move_pages: |_, _, _, _, _| false,
};

/// A C storage's `discard`: nothing.
fn keep_pages(_: *mut c_void, _: *mut u8, _: usize, _: usize) {}

/// # Safety
/// `instance` must be a live C storage.
unsafe fn c_name(instance: *mut c_void) -> &'static CStr {
    // SAFETY: caller contract.
    let name = unsafe { table(instance) }.name;
    if name.is_null() {
        c"(unnamed)"
    } else {
        // SAFETY: a non-null handler name is a C string that lives as long as the table.
        unsafe { CStr::from_ptr(name) }
    }
}

/// # Safety
/// `instance` must be a live C storage with no live allocation.
unsafe fn c_close(instance: *mut c_void) {
    // SAFETY: caller contract; the table's own handler with its own instance.
    if let Some(dtor) = unsafe { table(instance) }.dtor {
        // SAFETY: as above.
        unsafe { dtor(instance.cast()) }
    }
}

/// # Safety
/// `instance` must be a live C storage.
unsafe fn c_compact(instance: *mut c_void) {
    // SAFETY: caller contract.
    if let Some(compact) = unsafe { table(instance) }.compact {
        // SAFETY: the table's own handler with its own instance.
        unsafe { compact(instance.cast()) }
    }
}

/// # Safety
/// `instance` must be a live C storage.
unsafe fn c_alloc(instance: *mut c_void, size: usize) -> *mut u8 {
    // SAFETY: caller contract.
    match unsafe { table(instance) }._alloc {
        // SAFETY: the table's own handler with its own instance.
        Some(alloc) => unsafe { alloc(instance.cast(), size) }.cast(),
        None => ptr::null_mut(),
    }
}

/// # Safety
/// `instance` must be a live C storage, `p` a live allocation of it whose header holds its size.
unsafe fn c_realloc(instance: *mut c_void, p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: caller contract.
    match unsafe { table(instance) }._realloc {
        // SAFETY: the table's own handler with its own instance and allocation.
        Some(realloc) => unsafe { realloc(instance.cast(), p.cast(), size) }.cast(),
        None => ptr::null_mut(),
    }
}

/// # Safety
/// As [`c_realloc`]; `p` is gone after.
unsafe fn c_free(instance: *mut c_void, p: *mut u8) {
    // SAFETY: caller contract.
    if let Some(free) = unsafe { table(instance) }._free {
        // SAFETY: the table's own handler with its own instance and allocation.
        unsafe { free(instance.cast(), p.cast()) }
    }
}

/// Opens the C storage `handlers` describes: calls its `init(params)` and sets the handlers of
/// the storage it returns (as PHP 5.3 does). `None` if `init` returns NULL.
///
/// # Safety
/// `handlers` must be a table with `init`, `_alloc` and `_free` that outlives the storage, its
/// functions behaving as `zend_mm_mem_handlers` documents.
pub unsafe fn open(handlers: *const zend_mm_mem_handlers, params: *mut c_void) -> Option<Storage> {
    // SAFETY: caller contract.
    let table = unsafe { &*handlers };
    let init = table.init?;
    // SAFETY: the embedder's init handler (caller contract).
    let raw: *mut zend_mm_storage = unsafe { init(params) };
    if raw.is_null() {
        return None;
    }
    // SAFETY: a live storage fresh from init.
    unsafe { (*raw).handlers = handlers };
    let ops = if table._realloc.is_some() {
        &C_OPS
    } else {
        &C_OPS_NO_REALLOC
    };
    // SAFETY: the instance is the C storage these operations expect, live until closed.
    Some(unsafe { Storage::from_instance(ops, raw.cast()) })
}

/// The `zend_mm_storage` C sees for `storage`: a C storage's own, or a built-in's static one (null
/// for a storage neither, such as a test's).
pub fn c_storage(storage: Storage) -> *mut zend_mm_storage {
    let ops = storage.ops();
    if ptr::eq(ops, &C_OPS) || ptr::eq(ops, &C_OPS_NO_REALLOC) {
        return storage.instance().cast();
    }
    BUILTIN
        .iter()
        .position(|&builtin| ptr::eq(builtin, ops))
        .map_or(ptr::null_mut(), |i| BUILTIN_STORAGES[i].0.get())
}

/// A built-in's `zend_mm_storage`, in a static C may write through.
#[repr(transparent)]
struct StaticStorage(core::cell::UnsafeCell<zend_mm_storage>);

// SAFETY: the library never writes a built-in's storage struct; C code that writes one through
// `zend_mm_get_storage` takes the responsibility PHP gives it.
unsafe impl Sync for StaticStorage {}

static BUILTIN_STORAGES: [StaticStorage; 3] = [
    builtin_storage(&BUILTIN_TABLES[0]),
    builtin_storage(&BUILTIN_TABLES[1]),
    builtin_storage(&BUILTIN_TABLES[2]),
];

const fn builtin_storage(handlers: &'static zend_mm_mem_handlers) -> StaticStorage {
    StaticStorage(core::cell::UnsafeCell::new(zend_mm_storage {
        handlers,
        data: ptr::null_mut(),
    }))
}

/// The built-ins' C handler tables, in [`BUILTIN`] order.
static BUILTIN_TABLES: [zend_mm_mem_handlers; 3] = [
    builtin_table::<0>(c"malloc"),
    builtin_table::<1>(c"mmap_anon"),
    builtin_table::<2>(c"mmap_zero"),
];

const _: () = assert!(BUILTIN.len() == 3);

#[test]
fn builtin_tables_are_named_as_the_builtins() {
    for (ops, table) in BUILTIN.iter().zip(&BUILTIN_TABLES) {
        // SAFETY: the tables' names are static C strings.
        assert_eq!(crate::storage::builtin_name(ops), unsafe {
            CStr::from_ptr(table.name)
        });
    }
}

const fn builtin_table<const I: usize>(name: &'static CStr) -> zend_mm_mem_handlers {
    zend_mm_mem_handlers {
        name: name.as_ptr(),
        init: Some(builtin_init::<I>),
        dtor: Some(builtin_dtor::<I>),
        compact: Some(builtin_compact::<I>),
        _alloc: Some(builtin_alloc::<I>),
        _realloc: Some(builtin_realloc::<I>),
        _free: Some(builtin_free::<I>),
    }
}

/// What built-in `I` gave C (`size` bytes at `p`): advised for huge pages when asked to be.
fn advised(p: *mut u8, size: usize) -> *mut zend_mm_segment {
    if options::get().huge_pages {
        os::advise_huge_pages(p, size);
    }
    p.cast()
}

unsafe extern "C" fn builtin_init<const I: usize>(_params: *mut c_void) -> *mut zend_mm_storage {
    if (BUILTIN[I].open)() {
        BUILTIN_STORAGES[I].0.get()
    } else {
        ptr::null_mut()
    }
}

unsafe extern "C" fn builtin_dtor<const I: usize>(_storage: *mut zend_mm_storage) {
    // SAFETY: built-ins ignore their instance; C closes what its init opened.
    unsafe { (BUILTIN[I].close)(ptr::null_mut()) }
}

unsafe extern "C" fn builtin_compact<const I: usize>(_storage: *mut zend_mm_storage) {
    // SAFETY: built-ins ignore their instance.
    unsafe { (BUILTIN[I].compact)(ptr::null_mut()) }
}

unsafe extern "C" fn builtin_alloc<const I: usize>(
    _storage: *mut zend_mm_storage,
    size: usize,
) -> *mut zend_mm_segment {
    // SAFETY: built-ins ignore their instance.
    advised(unsafe { (BUILTIN[I].alloc)(ptr::null_mut(), size) }, size)
}

/// # Safety
/// `segment` must be a live allocation of this built-in whose header holds its size.
unsafe extern "C" fn builtin_realloc<const I: usize>(
    _storage: *mut zend_mm_storage,
    segment: *mut zend_mm_segment,
    size: usize,
) -> *mut zend_mm_segment {
    let Some(realloc) = BUILTIN[I].realloc else {
        return ptr::null_mut();
    };
    // SAFETY: caller contract; built-ins ignore their instance.
    advised(
        unsafe { realloc(ptr::null_mut(), segment.cast(), size) },
        size,
    )
}

/// # Safety
/// As [`builtin_realloc`]; the segment is gone after.
unsafe extern "C" fn builtin_free<const I: usize>(
    _storage: *mut zend_mm_storage,
    segment: *mut zend_mm_segment,
) {
    // SAFETY: caller contract; built-ins ignore their instance.
    unsafe { (BUILTIN[I].free)(ptr::null_mut(), segment.cast()) }
}
