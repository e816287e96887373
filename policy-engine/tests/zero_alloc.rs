//! The decide path allocates nothing once the scratch has warmed up. A counting allocator
//! wraps the system one for this test binary only.
#![expect(
    unsafe_code,
    reason = "a GlobalAlloc impl is unsafe by definition; it only counts and delegates"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use policy_engine::policy::compile_sources;
use policy_engine::{Action, Dialect, Identity, Scratch};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    // Only the test thread counts: the harness's other threads may allocate meanwhile.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every method delegates to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decide_does_not_allocate_after_warm_up() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../appliance/examples/policies");
    let policy = Arc::new(policy_engine::Policy::load_dir(&dir).unwrap());
    let _ = compile_sources;
    let id = Identity {
        subject: "alice".into(),
        groups: vec!["engineering".into()],
        ..Identity::default()
    };
    let session = policy.session_unchecked("orders-db", &id);
    let requests = [
        Action::Sql {
            dialect: Dialect::Postgres,
            text: "SELECT * FROM orders WHERE id = 1",
        },
        Action::Sql {
            dialect: Dialect::Postgres,
            text: "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x; SELECT pg_sleep(1)",
        },
        Action::Sql {
            dialect: Dialect::Mysql,
            text: "UPDATE `users` SET a = 'x' WHERE id = 1; /*!50000 DROP TABLE t */",
        },
        Action::Sql {
            dialect: Dialect::Postgres,
            text: "SELECT token FROM public.payment_tokens",
        },
        Action::Http {
            method: "POST",
            host: "billing",
            path: "/v1/refunds",
        },
        Action::Kubernetes {
            verb: "get",
            resource: "secrets",
            subresource: None,
            namespace: Some("x"),
            name: None,
        },
        Action::Ssh {
            command: "ls && rm -rf /",
        },
    ];
    let mut scratch = Scratch::new();
    for _ in 0..3 {
        for r in &requests {
            std::hint::black_box(session.decide(r, &mut scratch));
        }
    }
    let mut verdicts = Vec::with_capacity(requests.len() * 100);
    let mut culprits = Vec::with_capacity(16);
    COUNTING.with(|c| c.set(true));
    for _ in 0..100 {
        for (i, r) in requests.iter().enumerate() {
            let before = ALLOCS.load(Ordering::SeqCst);
            verdicts.push(session.decide(r, &mut scratch).verdict);
            if ALLOCS.load(Ordering::SeqCst) != before && culprits.len() < 16 {
                culprits.push(i);
            }
        }
    }
    COUNTING.with(|c| c.set(false));
    let n = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(
        n,
        0,
        "{n} allocations in {} decisions (requests {culprits:?})",
        verdicts.len()
    );
    assert!(verdicts.contains(&policy_engine::Verdict::Deny));
}
