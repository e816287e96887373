//! Keeps replies the gateway writes itself in protocol order with the upstream's replies.
//!
//! A pipelining client may send several messages before reading any answer. When the gateway
//! refuses one of them, its ErrorResponse must reach the client after the upstream's answers to
//! the messages forwarded before it, not in the middle of them. [`ResponseSequencer`] remembers,
//! for each forwarded message, which server message completes its answer, and holds injected
//! replies until everything ahead of them is answered. It also follows the server's
//! skip-to-Sync after an extended-mode error, so an injected error inside an already failed
//! batch is dropped, as the server would report only the first. It does not decide anything and
//! does not touch the bytes of upstream messages.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::backend::BackendMessage;
use super::error::PgError;
use super::frontend::FrontendMessage;

/// Most forwarded-but-unanswered messages per session. A client pipelining beyond this is
/// refused rather than letting the queue grow with whatever it sends.
pub const MAX_PENDING_RESPONSES: usize = 100_000;

/// What completes the answer to one forwarded message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// Simple Query or FunctionCall: everything up to ReadyForQuery.
    UntilReady,
    /// Sync: ReadyForQuery.
    Sync,
    /// Parse.
    ParseComplete,
    /// Bind.
    BindComplete,
    /// Describe: RowDescription or NoData (after ParameterDescription for statements).
    Description,
    /// Execute: CommandComplete, EmptyQueryResponse or PortalSuspended.
    ExecuteEnd,
    /// Close.
    CloseComplete,
    /// A reply of the gateway's own, released when it reaches the front.
    Injected(Bytes),
}

impl Pending {
    fn completed_by(&self, message: &BackendMessage) -> bool {
        matches!(
            (self, message),
            (
                Self::UntilReady | Self::Sync,
                BackendMessage::ReadyForQuery(_)
            ) | (Self::ParseComplete, BackendMessage::ParseComplete)
                | (Self::BindComplete, BackendMessage::BindComplete)
                | (
                    Self::Description,
                    BackendMessage::RowDescription(_) | BackendMessage::NoData
                )
                | (
                    Self::ExecuteEnd,
                    BackendMessage::CommandComplete { .. }
                        | BackendMessage::EmptyQueryResponse
                        | BackendMessage::PortalSuspended
                )
                | (Self::CloseComplete, BackendMessage::CloseComplete)
        )
    }

    /// Extended-mode messages, whose error makes the server skip to Sync.
    fn is_extended(&self) -> bool {
        matches!(
            self,
            Self::ParseComplete
                | Self::BindComplete
                | Self::Description
                | Self::ExecuteEnd
                | Self::CloseComplete
        )
    }
}

/// Orders injected replies among upstream replies for one session.
#[derive(Debug, Default)]
pub struct ResponseSequencer {
    queue: VecDeque<Pending>,
}

impl ResponseSequencer {
    /// An empty sequencer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of answers still expected (injected replies included).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    fn push(&mut self, pending: Pending) -> Result<(), PgError> {
        if self.queue.len() >= MAX_PENDING_RESPONSES {
            return Err(PgError::client(format!(
                "more than {MAX_PENDING_RESPONSES} pipelined messages awaiting answers"
            )));
        }
        self.queue.push_back(pending);
        Ok(())
    }

    /// Call after forwarding a client message upstream.
    pub fn forwarded(&mut self, message: &FrontendMessage) -> Result<(), PgError> {
        let pending = match message {
            FrontendMessage::Query { .. } | FrontendMessage::FunctionCall { .. } => {
                Pending::UntilReady
            }
            FrontendMessage::Sync => Pending::Sync,
            FrontendMessage::Parse { .. } => Pending::ParseComplete,
            FrontendMessage::Bind(_) => Pending::BindComplete,
            FrontendMessage::Describe { .. } => Pending::Description,
            FrontendMessage::Execute { .. } => Pending::ExecuteEnd,
            FrontendMessage::Close { .. } => Pending::CloseComplete,
            // No answer of their own: COPY messages belong to the Query or Execute in progress.
            FrontendMessage::Flush
            | FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail { .. }
            | FrontendMessage::Terminate
            | FrontendMessage::AuthResponse(_) => return Ok(()),
        };
        self.push(pending)
    }

    /// Queues a reply of the gateway's own (e.g. a denial): written to `out` at once when
    /// nothing is pending ahead of it, otherwise when the upstream has answered what is.
    pub fn inject(&mut self, reply: Bytes, out: &mut BytesMut) -> Result<(), PgError> {
        if self.queue.is_empty() {
            out.extend_from_slice(&reply);
            return Ok(());
        }
        self.push(Pending::Injected(reply))
    }

    /// Call after appending an upstream message's bytes to `out`; releases injected replies
    /// that became due.
    pub fn on_backend(&mut self, message: &BackendMessage, out: &mut BytesMut) {
        if let BackendMessage::ErrorResponse(_) = message {
            if self.queue.front().is_some_and(Pending::is_extended) {
                // The server now ignores everything up to the next Sync, and so do we: nothing
                // forwarded in between will be answered, and a denial queued in between would be
                // a second error for the same batch.
                while self
                    .queue
                    .front()
                    .is_some_and(|p| !matches!(p, Pending::Sync | Pending::UntilReady))
                {
                    self.queue.pop_front();
                }
            }
        } else if self.queue.front().is_some_and(|p| p.completed_by(message)) {
            self.queue.pop_front();
        }
        self.release(out);
    }

    fn release(&mut self, out: &mut BytesMut) {
        while let Some(Pending::Injected(_)) = self.queue.front() {
            if let Some(Pending::Injected(reply)) = self.queue.pop_front() {
                out.extend_from_slice(&reply);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::backend;
    use crate::postgres::frontend::Target;
    use crate::postgres::limits::Limits;
    use crate::postgres::reply::TransactionStatus;

    fn error() -> BackendMessage {
        let mut buf = BytesMut::from(&b"E\0\0\0\x0fC42P01\0Mx\0\0"[..]);
        backend::decode_message(&mut buf, &Limits::default())
            .unwrap()
            .unwrap()
            .message
    }

    fn parse() -> FrontendMessage {
        FrontendMessage::Parse {
            statement: Bytes::new(),
            sql: Bytes::from_static(b"select 1"),
            param_type_count: 0,
        }
    }

    #[test]
    fn injected_error_waits_for_earlier_answers() {
        let mut seq = ResponseSequencer::new();
        let mut out = BytesMut::new();
        seq.forwarded(&parse()).unwrap();
        seq.forwarded(&FrontendMessage::Execute {
            portal: Bytes::new(),
            max_rows: 0,
        })
        .unwrap();
        seq.inject(Bytes::from_static(b"<denied>"), &mut out)
            .unwrap();
        seq.forwarded(&FrontendMessage::Sync).unwrap();
        assert!(out.is_empty());
        out.extend_from_slice(b"<1>");
        seq.on_backend(&BackendMessage::ParseComplete, &mut out);
        assert_eq!(&out[..], b"<1>");
        out.extend_from_slice(b"<C>");
        seq.on_backend(
            &BackendMessage::CommandComplete {
                tag: Bytes::from_static(b"SELECT 1"),
            },
            &mut out,
        );
        assert_eq!(&out[..], b"<1><C><denied>");
        seq.on_backend(
            &BackendMessage::ReadyForQuery(TransactionStatus::Idle),
            &mut out,
        );
        assert_eq!(seq.pending(), 0);
    }

    #[test]
    fn upstream_error_skips_to_sync_and_drops_a_second_error() {
        let mut seq = ResponseSequencer::new();
        let mut out = BytesMut::new();
        seq.forwarded(&parse()).unwrap();
        seq.forwarded(&FrontendMessage::Describe {
            target: Target::Statement,
            name: Bytes::new(),
        })
        .unwrap();
        seq.inject(Bytes::from_static(b"<denied>"), &mut out)
            .unwrap();
        seq.forwarded(&FrontendMessage::Sync).unwrap();
        seq.on_backend(&error(), &mut out);
        assert!(out.is_empty());
        assert_eq!(seq.pending(), 1);
        seq.on_backend(
            &BackendMessage::ReadyForQuery(TransactionStatus::Idle),
            &mut out,
        );
        assert_eq!(seq.pending(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn simple_queries_end_at_ready_for_query_even_after_errors() {
        let mut seq = ResponseSequencer::new();
        let mut out = BytesMut::new();
        seq.forwarded(&FrontendMessage::Query {
            sql: Bytes::from_static(b"select 1; select x"),
        })
        .unwrap();
        seq.inject(Bytes::from_static(b"<denied+Z>"), &mut out)
            .unwrap();
        seq.on_backend(&error(), &mut out);
        assert!(out.is_empty());
        seq.on_backend(
            &BackendMessage::ReadyForQuery(TransactionStatus::Idle),
            &mut out,
        );
        assert_eq!(&out[..], b"<denied+Z>");
    }

    #[test]
    fn nothing_pending_means_immediate() {
        let mut seq = ResponseSequencer::new();
        let mut out = BytesMut::new();
        seq.inject(Bytes::from_static(b"now"), &mut out).unwrap();
        assert_eq!(&out[..], b"now");
    }
}
