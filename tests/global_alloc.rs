//! The Zend heap as this test binary's global allocator (`zend_alloc::ZendAlloc`): everything the
//! test harness and the tests allocate comes from it. Threads hand blocks to each other, resize
//! and free them, exit with live blocks; every block is checked against what was written.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: zend_alloc::ZendAlloc = zend_alloc::ZendAlloc;

fn payload(seed: usize) -> Vec<u8> {
    let len = match seed % 10 {
        0 => 5000 + seed % 30000,
        1 => (2 << 20) + seed % 4096,
        _ => 1 + seed % 300,
    };
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i)) as u8)
        .collect()
}

fn valid(seed: usize, v: &[u8]) -> bool {
    v.iter()
        .enumerate()
        .all(|(i, &b)| b == seed.wrapping_mul(31).wrapping_add(i) as u8)
}

#[test]
fn blocks_move_between_threads() {
    let (tx, rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(64);
    let producers: Vec<_> = (0..3)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..1500 {
                    let seed = t * 100_000 + i;
                    tx.send((seed, payload(seed))).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumer = thread::spawn(move || {
        let mut bad = 0;
        for (seed, mut v) in rx {
            bad += usize::from(!valid(seed, &v));
            if seed % 3 == 0 {
                v.extend_from_slice(&[1, 2, 3]); // grown on another thread than the one that made it
                v.shrink_to_fit();
            }
        }
        bad
    });
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 0);
}

#[test]
fn threads_exit_with_live_blocks() {
    let mut kept: Vec<(usize, Vec<u8>)> = Vec::new();
    for generation in 0..20 {
        let handle = thread::spawn(move || {
            (0..200)
                .map(|i| {
                    let seed = generation * 1000 + i;
                    (seed, payload(seed))
                })
                .collect::<Vec<_>>()
        });
        kept.extend(handle.join().unwrap());
        if generation % 4 == 3 {
            kept.retain(|(seed, _)| seed % 2 == 0);
        }
    }
    assert!(kept.iter().all(|(seed, v)| valid(*seed, v)));
}

#[test]
fn alignments_and_zeroed_memory() {
    for align in [1usize, 2, 4, 8, 16, 32, 64, 256, 4096, 8192, 65536] {
        for size in [1usize, 7, 8, 16, 24, 100, 3000, 5000, 70000] {
            let layout = std::alloc::Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero-sized layout; the block is freed with it.
            unsafe {
                let p = std::alloc::alloc_zeroed(layout);
                assert!(
                    !p.is_null() && p as usize % align == 0,
                    "{size} bytes at {align}"
                );
                assert!((0..size).all(|i| *p.add(i) == 0));
                p.write_bytes(0xa5, size);
                let q = std::alloc::realloc(p, layout, size * 3);
                assert!(!q.is_null() && q as usize % align == 0);
                assert!((0..size).all(|i| *q.add(i) == 0xa5));
                std::alloc::dealloc(
                    q,
                    std::alloc::Layout::from_size_align(size * 3, align).unwrap(),
                );
            }
        }
    }
}

#[test]
fn maps_and_strings() {
    let mut m: HashMap<String, Vec<usize>> = HashMap::new();
    for i in 0..50_000 {
        m.entry(format!("key{}", i % 5000)).or_default().push(i);
    }
    assert_eq!(m.len(), 5000);
    assert!(m.values().all(|v| v.len() == 10));
    let joined: String = m.keys().take(100).map(String::as_str).collect();
    assert!(joined.len() > 300);
}
