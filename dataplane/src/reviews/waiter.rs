//! The one-shot hand-off between the control plane (which decides a review) and the worker
//! task holding the request (which awaits the decision).
//!
//! A mutex-guarded slot with the outcome and the waiting task's waker: the decider stores the
//! outcome and wakes; the worker's future polls the slot. monoio wakers may be woken from any
//! thread (the `sync` feature sends them back to the owning core), so the worker's core never
//! blocks and never spins. The lock is held for a pointer swap only.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use super::Outcome;

#[derive(Debug, Default)]
struct State {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
}

/// The shared half kept by the registry.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    state: Mutex<State>,
}

impl Slot {
    /// Stores the outcome (the first one wins) and wakes the waiter.
    pub(crate) fn resolve(&self, outcome: Outcome) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.outcome.is_some() {
                return;
            }
            st.outcome = Some(outcome);
            st.waker.take()
        };
        // Woken outside the lock: a wake may run the task inline on this thread's runtime.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What the held request awaits. Resolves once with the review's [`Outcome`].
#[derive(Debug)]
pub struct Waiter {
    pub(crate) slot: Arc<Slot>,
}

impl Waiter {
    /// The outcome if it is already decided, without waiting.
    pub fn try_outcome(&self) -> Option<Outcome> {
        self.slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outcome
            .clone()
    }
}

impl Future for Waiter {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut st = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(o) = &st.outcome {
            return Poll::Ready(o.clone());
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
