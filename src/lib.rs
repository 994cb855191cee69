//! zend_alloc: PHP's Zend memory manager in Rust, as a C library.
//!
//! The modules form a stack: each uses only modules listed below it (`tests/layers.rs` checks
//! that no import runs upwards, and that only `ffi` names C types). From the top:
//!
//! | module | owns | may use |
//! |---|---|---|
//! | [`ffi`] | every `extern "C"` export and C type; calls C storage tables (`user_storage`) | all |
//! | [`ZendAlloc`] (`global_alloc`) | the Rust global allocator | malloc |
//! | `malloc` | the C library's allocator semantics on the thread heaps (preload library, `ZendAlloc`) | runtime, heap, region_map, diagnostics, sizes |
//! | [`runtime`] | the thread's current and own heaps, TLS slots, thread-exit hook | heap, options, storage, diagnostics |
//! | [`heap`] | `Heap`: routing, fast paths, small/large/huge blocks, page classes, segment cache, gc, accounting and limit, custom handlers, checks, block tracking and the leak report, statistics; the re-entry-safe interface (`heap::api`) | segment, region_map, storage, list, options, diagnostics, sizes |
//! | [`segment`] | `Segment`: header, page map, page bitmap | storage (header), region_map (owner ids), list, sizes |
//! | [`options`] | the environment variables, parsed once | storage (built-in names), diagnostics, sizes |
//! | [`storage`] | the storage handle and trait, the allocation header, `malloc`/`mmap_anon`/`mmap_zero` | os, diagnostics, sizes |
//! | [`region_map`] | address → region (kind, header, owner id) | os, sizes |
//! | [`diagnostics`] | fatal errors, messages, the error handler slot | — |
//! | [`os`] | `mmap`/`mremap`/`madvise`, the C library's allocator | sizes |
//! | [`list`] | the intrusive doubly linked list | — |
//! | [`sizes`] | page size, segment bounds, the 30 small size classes | — |
//!
//! Glossary: a *segment* is one allocation from storage (PHP 7's "chunk", PHP 5.3's "segment"),
//! cut into 4 KiB *pages*; a *run* is a sequence of pages serving one small bin or one large block;
//! a *huge* block has a storage allocation of its own.

// The shipped libraries are built with `panic = "abort"` (Cargo.toml profiles): no unwinding may
// cross the C boundary. (Test builds unwind, so this cannot be a compile-time guard; since Rust
// 1.81 a panic escaping an `extern "C"` function aborts anyway.)

// The preload library leaves PHP's API out, and with it the callers of much of the core.
#![cfg_attr(feature = "preload", allow(dead_code, unused_imports))]

pub(crate) mod diagnostics;
pub mod ffi;
mod global_alloc;
pub(crate) mod heap;
pub(crate) mod list;
pub(crate) mod malloc;
pub(crate) mod options;
pub(crate) mod os;
pub(crate) mod region_map;
pub(crate) mod runtime;
pub(crate) mod segment;
pub mod sizes;
pub(crate) mod storage;

pub use global_alloc::ZendAlloc;

#[cfg(test)]
mod model_tests;
