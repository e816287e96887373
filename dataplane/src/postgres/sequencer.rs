//! Keeps the gateway's refusals in protocol order with the upstream's replies, and makes the
//! server treat a refused message as the error it is.
//!
//! A pipelining client may send several messages before reading any answer. When the gateway
//! refuses one of them, its ErrorResponse must reach the client after the upstream's answers to
//! the messages forwarded before it, and the server must behave as if that message had failed:
//! an error aborts the current transaction (explicit, or the implicit one of an extended-query
//! batch, whose earlier statements are then rolled back) and makes the server skip to Sync.
//! Answering locally cannot do that, so the refused message is replaced upstream by a probe
//! ([`REFUSAL_PROBE_SQL`]) that fails in the server's parser, and the server's error for the
//! probe is replaced by the gateway's. The transaction status in the next ReadyForQuery is
//! then the server's own, and the error sits exactly where the refused message was.
//!
//! [`ResponseSequencer`] remembers, for each forwarded message, which server message completes
//! its answer, so it knows when an ErrorResponse is the probe's. It follows the server's
//! skip-to-Sync after an extended-mode error, so a probe inside an already failed batch is never
//! answered and the client sees only the first error, as from the server. It does not decide
//! anything and does not touch the bytes of other upstream messages.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::backend::{BackendFrame, BackendMessage};
use super::error::PgError;
use super::frontend::{self, FrontendMessage};
use super::reply::{self, ErrorFields};

/// Most forwarded-but-unanswered messages per session. A client pipelining beyond this is
/// refused rather than letting the queue grow with whatever it sends.
pub const MAX_PENDING_RESPONSES: usize = 100_000;

/// SQL sent upstream in place of a refused statement. A bare identifier is a syntax error in
/// any transaction state (in a failed transaction the server reports that instead, which is an
/// error all the same), so it runs nothing and touches nothing, and the server's log shows why
/// the statement failed. Rejected alternatives: a function call (a user could create a function
/// of that name) and a Sync-level trick (it would end the client's batch early).
pub const REFUSAL_PROBE_SQL: &[u8] = b"portcullis_statement_refused_by_policy";

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
    /// The probe Parse standing for a refused extended-mode message: its ErrorResponse is
    /// replaced by this one.
    RefusedExtended(Bytes),
    /// The probe Query standing for a refused simple Query or FunctionCall: its ErrorResponse
    /// is replaced by this one, then [`Pending::RefusedReady`].
    RefusedSimple(Bytes),
    /// The probe Query's ReadyForQuery, passed on to the client as it is.
    RefusedReady,
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
                | Self::RefusedExtended(_)
        )
    }

    /// Answers that end a skip-to-Sync: the Sync itself, and simple queries (which the server
    /// handles only after the Sync it was waiting for).
    fn ends_skip(&self) -> bool {
        matches!(
            self,
            Self::Sync | Self::UntilReady | Self::RefusedSimple(_) | Self::RefusedReady
        )
    }
}

/// Orders the gateway's refusals among upstream replies for one session.
#[derive(Debug, Default)]
pub struct ResponseSequencer {
    queue: VecDeque<Pending>,
    /// The server is in COPY FROM STDIN: it ignores Sync (and Flush) until CopyDone/CopyFail.
    copy_in: bool,
}

impl ResponseSequencer {
    /// An empty sequencer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of answers still expected (refusals included).
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
        if self.copy_in {
            match message {
                // Ignored by the server during the copy: no ReadyForQuery will answer it.
                FrontendMessage::Sync => return Ok(()),
                FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                    self.copy_in = false;
                }
                _ => {}
            }
        }
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

    /// The gateway refused `refused` with `error`: appends the probe that stands for it to
    /// `to_upstream`. A simple Query or FunctionCall becomes a probe Query (the server answers
    /// ErrorResponse and ReadyForQuery); any other message a probe Parse (the server answers
    /// ErrorResponse and skips to Sync, so the driver also discards the client's messages up to
    /// Sync). The client gets `error` in place of the probe's ErrorResponse.
    pub fn refuse(
        &mut self,
        refused: &FrontendMessage,
        error: &ErrorFields,
        to_upstream: &mut BytesMut,
    ) -> Result<(), PgError> {
        let mut denial = BytesMut::new();
        reply::error_response(&mut denial, error);
        let denial = denial.freeze();
        if matches!(
            refused,
            FrontendMessage::Query { .. } | FrontendMessage::FunctionCall { .. }
        ) {
            self.push(Pending::RefusedSimple(denial))?;
            frontend::encode_query(to_upstream, REFUSAL_PROBE_SQL);
        } else {
            self.push(Pending::RefusedExtended(denial))?;
            frontend::encode_parse(to_upstream, REFUSAL_PROBE_SQL);
        }
        Ok(())
    }

    /// Handles the server's answer to a probe: writes the gateway's error in place of the
    /// probe's ErrorResponse, or passes the probe Query's ReadyForQuery on, and returns `true`.
    /// `false`: the frame is not a probe's; mask and forward it, then call
    /// [`ResponseSequencer::on_backend`]. Probe answers never reach the inspector, so they are
    /// not counted as a statement's result.
    pub fn answer_refusal(&mut self, frame: &BackendFrame, out: &mut BytesMut) -> bool {
        // `V` is the severity never translated (9.6+); `S` may be localized.
        let fatal = |message: &BackendMessage| match message {
            BackendMessage::ErrorResponse(fields) => fields
                .get(b'V')
                .or_else(|| fields.get(b'S'))
                .is_some_and(|s| s.as_ref() == b"FATAL" || s.as_ref() == b"PANIC"),
            _ => false,
        };
        match (self.queue.front(), &frame.message) {
            (Some(Pending::RefusedExtended(denial)), BackendMessage::ErrorResponse(_))
                if !fatal(&frame.message) =>
            {
                out.extend_from_slice(denial);
                self.skip_to_sync();
                true
            }
            (Some(Pending::RefusedSimple(denial)), BackendMessage::ErrorResponse(_))
                if !fatal(&frame.message) =>
            {
                out.extend_from_slice(denial);
                if let Some(front) = self.queue.front_mut() {
                    *front = Pending::RefusedReady;
                }
                true
            }
            (Some(Pending::RefusedReady), BackendMessage::ReadyForQuery(_)) => {
                out.extend_from_slice(&frame.raw);
                self.queue.pop_front();
                true
            }
            _ => false,
        }
    }

    /// Call after appending an upstream message's bytes to `out`.
    pub fn on_backend(&mut self, message: &BackendMessage) {
        if let BackendMessage::CopyInResponse(_) = message {
            // An extended-protocol client (libpq's PQexecParams) sends Sync right behind the
            // COPY's Execute, before it knows a copy starts; the server, already copying,
            // ignores it and answers only the Sync after CopyDone. Forget those early Syncs, or
            // every later answer would be matched one Sync too late.
            self.copy_in = true;
            let mut index = 0usize;
            self.queue.retain(|p| {
                index += 1;
                index == 1 || !matches!(p, Pending::Sync)
            });
            return;
        }
        if let BackendMessage::ErrorResponse(_) = message {
            // A copy ends with the server's error, after which Sync counts again.
            self.copy_in = false;
            if self.queue.front().is_some_and(Pending::is_extended) {
                // The server now ignores everything up to the next Sync, and so do we: nothing
                // forwarded in between will be answered, probes included (a batch gets one
                // error, as from the server).
                self.skip_to_sync();
            }
        } else if self.queue.front().is_some_and(|p| p.completed_by(message)) {
            self.queue.pop_front();
        }
    }

    fn skip_to_sync(&mut self) {
        while self.queue.front().is_some_and(|p| !p.ends_skip()) {
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::backend;
    use crate::postgres::error::PgError as Error;
    use crate::postgres::frontend::{self, Target};
    use crate::postgres::limits::Limits;

    fn backend_frames(bytes: &[u8]) -> Vec<BackendFrame> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = backend::decode_message(&mut buf, &Limits::default()).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    fn error(severity: &str, code: &str) -> Vec<u8> {
        let body = format!("S{severity}\0C{code}\0Mx\0\0");
        let mut m = vec![b'E'];
        m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        m.extend_from_slice(body.as_bytes());
        m
    }

    const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
    const COMMAND_COMPLETE: &[u8] = b"C\0\0\0\x0dSELECT 1\0";
    const READY_IDLE: &[u8] = b"Z\0\0\0\x05I";
    const READY_FAILED: &[u8] = b"Z\0\0\0\x05E";

    fn denial() -> ErrorFields {
        Error::StatementDenied {
            rule: "no-drop".into(),
            message: "no".into(),
        }
        .to_error_fields()
    }

    fn denial_bytes() -> Vec<u8> {
        let mut b = BytesMut::new();
        reply::error_response(&mut b, &denial());
        b.to_vec()
    }

    fn parse() -> FrontendMessage {
        FrontendMessage::Parse {
            statement: Bytes::new(),
            sql: Bytes::from_static(b"select 1"),
            param_type_count: 0,
        }
    }

    fn query() -> FrontendMessage {
        FrontendMessage::Query {
            sql: Bytes::from_static(b"drop table t"),
        }
    }

    /// Feeds upstream bytes the way the driver does: probe answers first, the rest forwarded.
    fn feed(seq: &mut ResponseSequencer, upstream: &[u8], out: &mut BytesMut) {
        for f in backend_frames(upstream) {
            if !seq.answer_refusal(&f, out) {
                out.extend_from_slice(&f.raw);
                seq.on_backend(&f.message);
            }
        }
    }

    #[test]
    fn refused_extended_message_becomes_a_probe_parse_and_its_error_the_denial() {
        let mut seq = ResponseSequencer::new();
        let mut up = BytesMut::new();
        seq.forwarded(&parse()).unwrap();
        seq.forwarded(&FrontendMessage::Execute {
            portal: Bytes::new(),
            max_rows: 0,
        })
        .unwrap();
        seq.refuse(&parse(), &denial(), &mut up).unwrap();
        seq.forwarded(&FrontendMessage::Sync).unwrap();
        let mut probe = BytesMut::new();
        frontend::encode_parse(&mut probe, REFUSAL_PROBE_SQL);
        assert_eq!(up, probe, "the probe replaces the refused message upstream");
        assert!(!up.windows(4).any(|w| w == b"drop"));

        // The server answers the earlier messages, fails the probe, and ends the batch.
        let mut upstream = Vec::new();
        upstream.extend_from_slice(PARSE_COMPLETE);
        upstream.extend_from_slice(COMMAND_COMPLETE);
        upstream.extend_from_slice(&error("ERROR", "42601"));
        upstream.extend_from_slice(READY_IDLE);
        let mut out = BytesMut::new();
        feed(&mut seq, &upstream, &mut out);
        let mut want = Vec::new();
        want.extend_from_slice(PARSE_COMPLETE);
        want.extend_from_slice(COMMAND_COMPLETE);
        want.extend_from_slice(&denial_bytes());
        want.extend_from_slice(READY_IDLE);
        assert_eq!(&out[..], &want[..]);
        assert_eq!(seq.pending(), 0);
    }

    #[test]
    fn refused_simple_query_keeps_the_servers_transaction_status() {
        let mut seq = ResponseSequencer::new();
        let mut up = BytesMut::new();
        seq.refuse(&query(), &denial(), &mut up).unwrap();
        let mut probe = BytesMut::new();
        frontend::encode_query(&mut probe, REFUSAL_PROBE_SQL);
        assert_eq!(up, probe);
        let mut upstream = error("ERROR", "42601");
        upstream.extend_from_slice(READY_FAILED);
        let mut out = BytesMut::new();
        feed(&mut seq, &upstream, &mut out);
        let mut want = denial_bytes();
        want.extend_from_slice(READY_FAILED);
        assert_eq!(
            &out[..],
            &want[..],
            "the failed-transaction status reaches the client"
        );
        assert_eq!(seq.pending(), 0);
    }

    #[test]
    fn probe_answers_split_at_every_byte_are_replaced_whole() {
        let mut upstream = Vec::new();
        upstream.extend_from_slice(PARSE_COMPLETE);
        upstream.extend_from_slice(&error("ERROR", "42601"));
        upstream.extend_from_slice(READY_IDLE);
        upstream.extend_from_slice(&error("ERROR", "25P02"));
        upstream.extend_from_slice(READY_FAILED);
        let mut want = Vec::new();
        want.extend_from_slice(PARSE_COMPLETE);
        want.extend_from_slice(&denial_bytes());
        want.extend_from_slice(READY_IDLE);
        want.extend_from_slice(&denial_bytes());
        want.extend_from_slice(READY_FAILED);
        for split in 0..=upstream.len() {
            let mut seq = ResponseSequencer::new();
            let mut up = BytesMut::new();
            seq.forwarded(&parse()).unwrap();
            seq.refuse(&parse(), &denial(), &mut up).unwrap();
            seq.forwarded(&FrontendMessage::Sync).unwrap();
            seq.refuse(&query(), &denial(), &mut up).unwrap();
            let mut buf = BytesMut::new();
            let mut out = BytesMut::new();
            for part in [&upstream[..split], &upstream[split..]] {
                buf.extend_from_slice(part);
                while let Some(f) = backend::decode_message(&mut buf, &Limits::default()).unwrap() {
                    if !seq.answer_refusal(&f, &mut out) {
                        out.extend_from_slice(&f.raw);
                        seq.on_backend(&f.message);
                    }
                }
            }
            assert_eq!(&out[..], &want[..], "split at {split}");
            assert_eq!(seq.pending(), 0, "split at {split}");
        }
    }

    #[test]
    fn upstream_error_before_the_probe_is_the_batchs_only_error() {
        let mut seq = ResponseSequencer::new();
        let mut up = BytesMut::new();
        seq.forwarded(&parse()).unwrap();
        seq.forwarded(&FrontendMessage::Describe {
            target: Target::Statement,
            name: Bytes::new(),
        })
        .unwrap();
        seq.refuse(&parse(), &denial(), &mut up).unwrap();
        seq.forwarded(&FrontendMessage::Sync).unwrap();
        // The server fails the first Parse and skips the probe entirely.
        let mut upstream = error("ERROR", "42P01");
        upstream.extend_from_slice(READY_IDLE);
        let mut out = BytesMut::new();
        feed(&mut seq, &upstream, &mut out);
        assert_eq!(
            &out[..],
            &upstream[..],
            "the server's error alone, no denial"
        );
        assert_eq!(seq.pending(), 0);
    }

    #[test]
    fn a_fatal_error_is_never_replaced() {
        let mut seq = ResponseSequencer::new();
        let mut up = BytesMut::new();
        seq.refuse(&query(), &denial(), &mut up).unwrap();
        let upstream = error("FATAL", "57P01");
        let mut out = BytesMut::new();
        feed(&mut seq, &upstream, &mut out);
        assert_eq!(&out[..], &upstream[..]);
    }

    /// Regression: libpq's extended-protocol COPY FROM STDIN sends a Sync behind the Execute
    /// that the server ignores during the copy; counted, it left a stale Sync in the queue and
    /// the next probe's error reached the client unreplaced (42601 instead of 42501).
    #[test]
    fn syncs_the_server_ignores_during_copy_in_are_not_awaited() {
        let mut seq = ResponseSequencer::new();
        let mut up = BytesMut::new();
        seq.forwarded(&parse()).unwrap();
        seq.forwarded(&FrontendMessage::Execute {
            portal: Bytes::new(),
            max_rows: 0,
        })
        .unwrap();
        seq.forwarded(&FrontendMessage::Sync).unwrap();
        let mut out = BytesMut::new();
        feed(&mut seq, PARSE_COMPLETE, &mut out);
        feed(&mut seq, b"G\0\0\0\x09\0\0\x01\0\0", &mut out);
        seq.forwarded(&FrontendMessage::Sync).unwrap();
        seq.forwarded(&FrontendMessage::CopyDone).unwrap();
        seq.forwarded(&FrontendMessage::Sync).unwrap();
        feed(&mut seq, b"C\0\0\0\x0bCOPY 2\0", &mut out);
        feed(&mut seq, READY_IDLE, &mut out);
        assert_eq!(
            seq.pending(),
            0,
            "one ReadyForQuery answers the copy's batch"
        );
        seq.refuse(&query(), &denial(), &mut up).unwrap();
        let mut upstream = error("ERROR", "42601");
        upstream.extend_from_slice(READY_IDLE);
        let mut out = BytesMut::new();
        feed(&mut seq, &upstream, &mut out);
        let mut want = denial_bytes();
        want.extend_from_slice(READY_IDLE);
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn simple_queries_end_at_ready_for_query_even_after_errors() {
        let mut seq = ResponseSequencer::new();
        seq.forwarded(&FrontendMessage::Query {
            sql: Bytes::from_static(b"select 1; select x"),
        })
        .unwrap();
        let mut upstream = error("ERROR", "42703");
        upstream.extend_from_slice(READY_IDLE);
        let mut out = BytesMut::new();
        feed(&mut seq, &upstream, &mut out);
        assert_eq!(&out[..], &upstream[..]);
        assert_eq!(seq.pending(), 0);
    }
}
