//! zend_alloc: PHP's Zend memory manager in Rust, as a C library.
//!
//! The crate mirrors the parts of PHP's `zend_alloc.c`:
//!
//! | module | part |
//! |---|---|
//! | [`sizes`] | page size, segment bounds, the 30 small size classes |
//! | [`storage`] | where segments come from: `malloc`, `mmap_anon`, `mmap_zero`, user handlers |
//! | [`region_map`] | which heap region contains an address (ownership checks, O(1) lookups) |
//! | [`bitmap`], [`segment`] | segments and their page allocator |
//! | [`small`], [`large`], [`huge`] | the three block kinds |
//! | [`heap`] | routing, realloc, segment cache, request lifecycle |
//! | [`accounting`] | usage, peaks, the memory limit |
//! | [`gc`] | returning free small runs (`zend_mm_gc`) |
//! | [`custom`] | custom handlers, `USE_ZEND_ALLOC=0` |
//! | [`options`] | the environment variables |
//! | [`thread`], [`tls`] | per-thread heaps |
//! | [`diagnostics`], [`check`] | fatal errors, corruption, heap checks |
//! | [`ffi`] | the C ABI: every export and C type |
//!
//! Glossary: a *segment* is one allocation from storage (PHP 7's "chunk", PHP 5.3's "segment"),
//! cut into 4 KiB *pages*; a *run* is a sequence of pages serving one small bin or one large block;
//! a *huge* block has a storage allocation of its own.

// The shipped libraries are built with `panic = "abort"` (Cargo.toml profiles): no unwinding may
// cross the C boundary. (Test builds unwind, so this cannot be a compile-time guard; since Rust
// 1.81 a panic escaping an `extern "C"` function aborts anyway.)

pub(crate) mod accounting;
pub(crate) mod bitmap;
pub(crate) mod check;
pub(crate) mod custom;
pub(crate) mod diagnostics;
pub mod ffi;
pub(crate) mod gc;
pub(crate) mod heap;
pub(crate) mod huge;
pub(crate) mod large;
pub(crate) mod options;
pub(crate) mod region_map;
pub(crate) mod segment;
pub mod sizes;
pub(crate) mod small;
pub(crate) mod storage;
pub(crate) mod thread;
pub(crate) mod tls;

#[cfg(test)]
mod model_tests;
