//! Masking allocates nothing when nothing matches: counted by a wrapping global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use policy_engine::mask::corpus;
use policy_engine::mask::{MaskEngine, MaskOutcome, MaskSpec, MaskStats, StrategyName, ValueKind};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

#[expect(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; this one only counts and forwards to System"
)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees carry over; counting touches only an atomic and a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; `ptr`/`layout` came from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.load(Ordering::Relaxed) - before)
}

#[test]
fn no_allocation_when_nothing_matches() {
    let spec = MaskSpec {
        connections: vec![],
        groups: vec![],
        columns: vec![],
        fields: vec![],
        detectors: vec!["all".into()],
        strategy: StrategyName::Redact,
        keep: None,
        replacement: None,
    };
    let engine = MaskEngine::compile(&[spec], &[], b"k").unwrap();
    let s = engine.session(&[0]);
    let col = s.column("note");
    let rows = corpus::rows(11, 2000, 8, 0);
    let mut out = Vec::new();
    let mut stats = MaskStats::default();
    let (cells, allocs) = counted(|| {
        let mut n = 0;
        for cell in rows.iter().flatten() {
            assert_eq!(
                s.mask_value(
                    &col,
                    ValueKind::Text,
                    cell.text.as_bytes(),
                    &mut out,
                    &mut stats
                ),
                MaskOutcome::Unchanged
            );
            n += 1;
        }
        n
    });
    assert_eq!(cells, 16000);
    assert_eq!(allocs, 0, "allocations while masking clean cells");

    let lines: Vec<u8> = rows
        .iter()
        .flat_map(|r| {
            r.iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join("\t")
                .into_bytes()
                .into_iter()
                .chain([b'\n'])
        })
        .collect();
    let mut m = s.stream();
    let mut sink = Vec::with_capacity(lines.len() * 2);
    let (_, allocs) = counted(|| {
        for chunk in lines.split_inclusive(|&b| b == b'\n') {
            m.push(chunk, &mut sink, &mut stats);
        }
    });
    assert_eq!(sink, lines);
    assert_eq!(allocs, 0, "allocations while streaming clean lines");
    assert_eq!(stats.total(), 0);

    // Sanity: the counter does count.
    let (_, allocs) = counted(|| {
        s.mask_value(
            &col,
            ValueKind::Text,
            b"jane@example.com",
            &mut Vec::new(),
            &mut stats,
        )
    });
    assert!(allocs > 0);
}
