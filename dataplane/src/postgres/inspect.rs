//! The sans-IO core of an authenticated PostgreSQL session: decides every client message
//! against the session's policy before it may be forwarded, masks result values as they come
//! back, and builds one audit record per statement.
//!
//! The driver feeds it client frames ([`Inspector::on_client`]) and server frames
//! ([`Inspector::on_backend`]) and does what it says; it never touches a socket, and it does not
//! order replies (the [`super::sequencer::ResponseSequencer`] does) or follow the protocol
//! state (the [`super::client_session::ClientSession`] does).
//!
//! Records: a statement to be forwarded is first announced to the recorder
//! ([`CommandEvent::Started`], with its text, decision and rule) and forwarded only if the
//! recorder took it, so nothing reaches the server without a queued record and a full queue
//! refuses statements instead of letting them run unrecorded. When the server answers, the
//! same record comes back completed (rows from CommandComplete, duration, masked values) as
//! [`CommandEvent::Finished`]; the recorder keeps one row per statement. Refused statements
//! are recorded at once, finished.
//!
//! A statement whose verdict is `review` is not decided here: [`ClientVerdict::Hold`] hands
//! it to the driver, which holds it until the review ends and then calls
//! [`Inspector::release`] or [`Inspector::refuse_hold`].
//!
//! Masking follows the latest RowDescription. A DataRow whose columns are unknown (a client
//! that executes without describing) is masked with the session-wide detectors only, and a
//! hit then becomes NULL rather than replacement text, since the column's type is unknown.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use policy_engine::mask::{
    ColumnMask, MaskOutcome, MaskStats, SessionMasker, StreamMasker, ValueKind,
};
use policy_engine::sql::ResultSources;
use policy_engine::{
    Action, Dialect, ReviewSpec, Scratch, SessionPolicy, StatementKind, StringLiterals, Verdict,
};
use recorder::{CommandRecord, Decision as RecDecision, Micros, SessionInfo};

use super::backend::{BackendFrame, BackendMessage, NoticeFields};
use super::frontend::FrontendMessage;
use super::rewrite::{self, BinaryCopyRewriter, CellEdit};
use super::statement::{CommandTag, ResultShapes, StatementTracker};
use super::{Limits, PgError};
use crate::identity::{Identity, UnixSeconds, now_unix};
use crate::metrics::StageTimes;
use crate::services::PolicySnapshot;

/// Rule id recorded when no rule matched and the connection's default decided.
pub const DEFAULT_RULE: &str = "default";

/// Strings every audit record carries, made once per process: the default rule's id, each
/// statement kind's name and the empty approver list. Building them per record was an
/// allocation each, several per statement.
struct SharedNames {
    default_rule: Arc<str>,
    kinds: [Arc<str>; StatementKind::ALL.len()],
    no_approvers: Arc<[Arc<str>]>,
}

static SHARED_NAMES: LazyLock<SharedNames> = LazyLock::new(|| SharedNames {
    default_rule: DEFAULT_RULE.into(),
    kinds: StatementKind::ALL.map(|k| k.name().into()),
    no_approvers: Arc::from(Vec::new()),
});

fn default_rule() -> Arc<str> {
    Arc::clone(&SHARED_NAMES.default_rule)
}

fn kind_name(kind: StatementKind) -> Arc<str> {
    match SHARED_NAMES.kinds.get(kind as usize) {
        Some(name) => Arc::clone(name),
        None => kind.name().into(),
    }
}

/// Error of a statement announced to the recorder and then not forwarded, because the
/// recorder refused a later statement of the same query string.
const AUDIT_REFUSED: &str = "not executed: the audit recorder refused the query string";

/// Rule id recorded for a COPY out refused because column masking rules apply.
pub const COPY_OUT_RULE: &str = "copy-out-with-column-masks";

/// Why such a COPY is refused, for the client and the record.
const COPY_OUT_REFUSED: &str = "COPY ... TO is refused: column masking rules apply to this session \
     and COPY data carries no column names to apply them to; use SELECT";

/// A `COPY ... TO` (or a COPY whose direction could not be read): its data leaves without
/// column names. `COPY ... FROM` is classified as an insert as well.
fn copies_out(st: &policy_engine::Statement) -> bool {
    st.kinds.contains(StatementKind::Copy) && !st.kinds.contains(StatementKind::Insert)
}

/// Largest statement text kept in one audit record; longer text is cut (the statement still
/// runs whole). Bounds what one statement can cost the recorder.
pub const MAX_RECORDED_TEXT: usize = 64 * 1024;

/// What the inspector hands to the recorder. The callback returns whether the recorder took
/// it; a refused `Started` means the statement must not be forwarded.
#[derive(Debug)]
pub enum CommandEvent {
    /// Decided and about to be forwarded: queue it before the bytes leave.
    Started(CommandRecord),
    /// Finished (answered, refused or abandoned): its `commands` row.
    Finished(CommandRecord),
}

/// The callback through which records leave the inspector.
pub type RecordFn<'a> = dyn FnMut(CommandEvent) -> bool + 'a;

/// What the driver does with one client message.
#[derive(Debug)]
pub enum ClientVerdict {
    /// Forward the raw bytes upstream.
    Forward,
    /// Do not forward; answer with this error (the session continues).
    Refuse(PgError),
    /// Do not forward; answer with this FATAL error and close.
    Fatal(PgError),
    /// Do not forward yet: the statement waits for a review. The driver registers it, stops
    /// reading client messages, and finishes it with [`Inspector::release`] or
    /// [`Inspector::refuse_hold`].
    Hold(Hold),
}

/// A statement (simple Query, or the Parse of a named statement) held for review.
#[derive(Debug)]
pub struct Hold {
    /// The rule that asked for review.
    pub rule: Arc<str>,
    pub spec: ReviewSpec,
    /// The whole statement text, as approvers see it.
    pub text: Arc<str>,
    /// `seq` of the command record the held statement gets first.
    pub command_seq: u64,
    parts: Vec<Part>,
    parse_name: Option<Bytes>,
    sql: Bytes,
}

/// The review that let a statement run: its id and approvers, for the command records.
type Approval = (Arc<str>, Arc<[Arc<str>]>);

/// What was decided for a prepared statement at Parse time.
#[derive(Debug, Clone)]
struct Meta {
    kind: Arc<str>,
    decision: RecDecision,
    rule: Option<Arc<str>>,
    /// Set when the Parse was held and approved.
    approval: Option<Approval>,
    sources: Sources,
}

/// One statement of a query string as recorded: kind, text, decision, rule id, and what its
/// result columns read when that is not just their own names.
type Part = (Arc<str>, Bytes, RecDecision, Option<Arc<str>>, Sources);

/// What a statement's result columns read besides their own names (`SELECT ssn AS x`), so
/// column rules follow them; `None` when names alone decide or no column rule applies.
type Sources = Option<Arc<ResultSources>>;

/// A forwarded statement waiting for the server's answer.
#[derive(Debug)]
struct Pending {
    record: CommandRecord,
    started: Instant,
    /// The ReadyForQuery (counted from the session start) that closes its batch.
    sync_no: u64,
    /// From an Execute (its batch ends at a Sync), not a simple Query.
    extended: bool,
    /// A simple Query's statement: what its result columns read (an Execute's rows take
    /// their columns from the Describe of its statement).
    sources: Sources,
}

#[derive(Debug, Clone)]
struct Column {
    mask: ColumnMask,
    kind: ValueKind,
}

/// The columns of one result, shared between the current result, the described statements
/// and the description cache.
type Columns = Arc<[Column]>;

/// Longest RowDescription (tag and length included) whose columns are kept for the next
/// identical one. Resolving columns matches every column name against every column rule's
/// globs; a session repeating the same query (the common case: an application's handful of
/// statements) would otherwise pay that and two allocations per result. Wider descriptions
/// are resolved each time rather than kept: the cache lives as long as the session, idle
/// or not.
const MAX_CACHED_DESCRIPTION: usize = 1024;

/// Most declarations (`DECLARE ... CURSOR`, `PREPARE`, `CREATE VIEW`) whose renames a session
/// remembers for the results that come later; past it the oldest is forgotten. Bounds what a
/// session can make the gateway keep.
const MAX_DECLARED_SOURCES: usize = 64;

/// One authenticated session's inspection state.
#[derive(Debug)]
pub struct Inspector {
    info: Arc<SessionInfo>,
    policy: Arc<SessionPolicy>,
    snapshot: Arc<PolicySnapshot>,
    masker: SessionMasker,
    identity: Arc<Identity>,
    grace: Duration,
    /// When the session was admitted only by a just-in-time grant: the grant's end, after
    /// which the session's next statement ends it.
    access_until: Option<UnixSeconds>,
    limits: Limits,
    statements: StatementTracker<Meta>,
    /// Columns of described statements, for rows of an Execute described in an earlier batch.
    shapes: ResultShapes<Columns>,
    columns: Option<Columns>,
    /// The last RowDescription resolved (as received) and its columns; the session's masker
    /// never changes, so the same description resolves to the same columns.
    described: Option<(Box<[u8]>, Columns)>,
    /// What the result columns of the cursors, SQL prepared statements and views this
    /// session declared read (at most [`MAX_DECLARED_SOURCES`], the latest kept).
    declared_sources: VecDeque<Arc<ResultSources>>,
    unknown_column: ColumnMask,
    /// How the answer to the last fast-path call forwarded may be masked.
    fastpath_result: ValueKind,
    copy_out: Option<StreamMasker>,
    /// Binary COPY-out: column types unknown, so a detector hit becomes NULL.
    copy_out_binary: Option<BinaryCopyRewriter>,
    /// The server is in COPY FROM STDIN.
    copy_in: bool,
    /// The session ran LISTEN (or NOTIFY/UNLISTEN): the server may speak while the client is
    /// quiet, so the driver keeps reading the server between round trips.
    listening: bool,
    /// The server's `standard_conforming_strings`, as its ParameterStatus messages report it
    /// (at login and whenever it changes): with it off a backslash escapes in every `'...'`,
    /// which moves where strings, and so statements, end.
    standard_strings: bool,
    /// The server's `client_encoding` keeps every ASCII byte a character of its own. In SJIS,
    /// BIG5, GBK, UHC, GB18030 and JOHAB the second byte of a character may be `\`: the
    /// server, which decodes before it parses, then sees no backslash where the gateway does.
    ascii_safe_encoding: bool,
    pending: VecDeque<Pending>,
    syncs_forwarded: u64,
    ready_seen: u64,
    seq: u64,
    stats: MaskStats,
    cell: Vec<u8>,
    masked_total: u64,
    /// Policy and masking time of the current round trip, taken by the driver's clock.
    pub stage_times: StageTimes,
}

impl Inspector {
    pub fn new(
        info: Arc<SessionInfo>,
        policy: Arc<SessionPolicy>,
        snapshot: Arc<PolicySnapshot>,
        identity: Arc<Identity>,
        grace: Duration,
        limits: Limits,
    ) -> Inspector {
        let policy_identity = policy_identity(&identity);
        let active = snapshot
            .policy
            .mask_rules_for(&info.connection, &policy_identity);
        let masker = snapshot.masks.session(&active);
        let unknown_column = masker.column("");
        Inspector {
            info,
            policy,
            snapshot,
            masker,
            identity,
            grace,
            access_until: None,
            statements: StatementTracker::new(&limits),
            shapes: ResultShapes::new(&limits),
            limits,
            columns: None,
            described: None,
            declared_sources: VecDeque::new(),
            unknown_column,
            fastpath_result: ValueKind::Other,
            copy_out: None,
            copy_out_binary: None,
            copy_in: false,
            listening: false,
            standard_strings: true,
            ascii_safe_encoding: true,
            pending: VecDeque::new(),
            syncs_forwarded: 0,
            ready_seen: 0,
            seq: 0,
            stats: MaskStats::default(),
            cell: Vec::new(),
            masked_total: 0,
            stage_times: StageTimes::default(),
        }
    }

    /// A parameter the server reported (at login, or later in a ParameterStatus).
    pub fn server_parameter(&mut self, name: &[u8], value: &[u8]) {
        if name == b"standard_conforming_strings" {
            self.standard_strings = value == b"on";
        } else if name == b"client_encoding" {
            self.ascii_safe_encoding = !UNSAFE_CLIENT_ENCODINGS
                .iter()
                .any(|e| value.eq_ignore_ascii_case(e));
        }
    }

    /// How the next statement's plain strings read. While a forwarded statement is still
    /// unanswered it may be the one changing the setting (`SET`, `set_config`, a function
    /// that calls it), and the server will read the next statement after it runs: until the
    /// answer, a text that reads differently either way is refused rather than guessed.
    fn string_literals(&self) -> StringLiterals {
        if !self.pending.is_empty() {
            StringLiterals::Either
        } else if self.standard_strings {
            StringLiterals::Standard
        } else {
            StringLiterals::Backslash
        }
    }

    /// The session every record of this inspector belongs to.
    pub fn session(&self) -> &Arc<SessionInfo> {
        &self.info
    }

    /// Values masked so far in this session.
    pub fn masked_total(&self) -> u64 {
        self.masked_total
    }

    /// Decides one client message. `record` queues records and says whether the recorder took
    /// them; `recorder_accepting` says whether new statements may be prepared.
    pub fn on_client(
        &mut self,
        message: &FrontendMessage,
        scratch: &mut Scratch,
        recorder_accepting: bool,
        record: &mut RecordFn<'_>,
    ) -> ClientVerdict {
        let verdict = self.decide_client(message, scratch, recorder_accepting, record);
        if matches!(verdict, ClientVerdict::Forward) {
            self.shapes.forwarded(message, &self.statements);
        }
        verdict
    }

    fn decide_client(
        &mut self,
        message: &FrontendMessage,
        scratch: &mut Scratch,
        recorder_accepting: bool,
        record: &mut RecordFn<'_>,
    ) -> ClientVerdict {
        match message {
            FrontendMessage::Query { sql } => {
                self.on_sql(sql, None, scratch, recorder_accepting, record)
            }
            FrontendMessage::Parse { statement, sql, .. } => self.on_sql(
                sql,
                Some(statement.clone()),
                scratch,
                recorder_accepting,
                record,
            ),
            FrontendMessage::Bind(bind) => {
                match self.statements.bind(bind.portal.clone(), &bind.statement) {
                    Ok(_) => ClientVerdict::Forward,
                    Err(e) => ClientVerdict::Fatal(e),
                }
            }
            FrontendMessage::Execute { portal, .. } => {
                if let Some(v) = self.expiry_check(record) {
                    return v;
                }
                if !recorder_accepting {
                    return ClientVerdict::Refuse(PgError::AuditUnavailable);
                }
                let (text, meta) = match self.statements.portal(portal) {
                    Some(p) => (Some(p.source.sql.clone()), Some(p.source.meta.clone())),
                    None => (None, None),
                };
                let meta = meta.unwrap_or(Meta {
                    kind: "execute".into(),
                    decision: RecDecision::Allow,
                    rule: None,
                    approval: None,
                    sources: None,
                });
                let mut r = self.new_record(meta.kind, text, meta.decision, meta.rule);
                if let Some((id, approvers)) = meta.approval {
                    r.review_id = Some(id);
                    r.approvers = approvers;
                }
                if !record(CommandEvent::Started(r.clone())) {
                    return ClientVerdict::Refuse(PgError::AuditUnavailable);
                }
                self.pending.push_back(Pending {
                    record: r,
                    started: Instant::now(),
                    sync_no: self.syncs_forwarded + 1,
                    extended: true,
                    sources: None,
                });
                ClientVerdict::Forward
            }
            FrontendMessage::Sync => {
                // During COPY FROM STDIN the server ignores Sync (see `CopyInResponse` below).
                if !self.copy_in {
                    self.syncs_forwarded += 1;
                }
                ClientVerdict::Forward
            }
            FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                self.copy_in = false;
                ClientVerdict::Forward
            }
            FrontendMessage::Close { target, name } => {
                self.statements.close(*target, name);
                ClientVerdict::Forward
            }
            FrontendMessage::FunctionCall { function_oid } => {
                // Decided as the SQL form of the call; see `fastpath`.
                if let Some(name) = super::fastpath::function_name(*function_oid) {
                    let sql = Bytes::from(super::fastpath::equivalent_sql(name));
                    let verdict = self.on_sql(&sql, None, scratch, recorder_accepting, record);
                    // libpq never pipelines fast-path calls; a client that does gets its later
                    // call's result kind applied, which can only withhold more, or rewrite bytes
                    // of its own integer result.
                    self.fastpath_result = super::fastpath::result_kind(name);
                    return verdict;
                }
                let r = self.new_record(
                    "function_call".into(),
                    None,
                    RecDecision::Deny,
                    Some(DEFAULT_RULE.into()),
                );
                record(CommandEvent::Finished(r));
                ClientVerdict::Refuse(PgError::StatementDenied {
                    rule: DEFAULT_RULE.into(),
                    message: format!(
                        "fast-path call of function OID {function_oid} refused: only the \
                         built-in large-object functions may be called this way; use SQL"
                    ),
                })
            }
            _ => ClientVerdict::Forward,
        }
    }

    /// The session was admitted only by a just-in-time grant ending at `until`: it ends
    /// with the grant.
    pub fn end_access_at(&mut self, until: UnixSeconds) {
        self.access_until = Some(until);
    }

    fn expiry_check(&mut self, record: &mut RecordFn<'_>) -> Option<ClientVerdict> {
        let now = now_unix();
        if self.access_until.is_some_and(|until| now >= until) {
            let mut r = self.new_record("grant_expired".into(), None, RecDecision::Deny, None);
            r.error = Some(GRANT_EXPIRED.into());
            record(CommandEvent::Finished(r));
            return Some(ClientVerdict::Fatal(PgError::AccessDenied {
                reason: GRANT_EXPIRED.into(),
            }));
        }
        if !self.identity.expired(now, self.grace) {
            return None;
        }
        let mut r = self.new_record("token_expired".into(), None, RecDecision::Deny, None);
        r.error = Some("token expired: reconnect with a fresh token".into());
        record(CommandEvent::Finished(r));
        Some(ClientVerdict::Fatal(PgError::TokenExpired))
    }

    fn on_sql(
        &mut self,
        sql: &Bytes,
        parse_name: Option<Bytes>,
        scratch: &mut Scratch,
        recorder_accepting: bool,
        record: &mut RecordFn<'_>,
    ) -> ClientVerdict {
        if let Some(v) = self.expiry_check(record) {
            return v;
        }
        let Ok(text) = std::str::from_utf8(sql) else {
            let mut r =
                self.new_record("unknown".into(), Some(sql.clone()), RecDecision::Deny, None);
            r.error = Some("statement text is not utf-8".into());
            record(CommandEvent::Finished(r));
            return ClientVerdict::Refuse(PgError::StatementDenied {
                rule: DEFAULT_RULE.into(),
                message: "the statement text is not valid utf-8, so it cannot be checked".into(),
            });
        };
        if (!self.ascii_safe_encoding || !self.pending.is_empty()) && backslash_after_multibyte(sql)
        {
            let mut r =
                self.new_record("unknown".into(), Some(sql.clone()), RecDecision::Deny, None);
            r.error =
                Some("a backslash after a multibyte character, client_encoding unsafe".into());
            record(CommandEvent::Finished(r));
            return ClientVerdict::Refuse(PgError::StatementDenied {
                rule: DEFAULT_RULE.into(),
                message: "a backslash right after a non-ASCII character can be part of that \
                          character in the session's client_encoding (SJIS, BIG5, GBK, ...), \
                          which would move where a string ends: put a space between them"
                    .into(),
            });
        }
        let decide_began = Instant::now();
        scratch.set_string_literals(self.string_literals());
        let decision = self.policy.decide(
            &Action::Sql {
                dialect: Dialect::Postgres,
                text,
            },
            scratch,
        );
        self.stage_times.add_policy(decide_began);
        let overall = decision.verdict;
        let overall_rule: Arc<str> = decision
            .rule
            .map_or_else(default_rule, policy_engine::policy::RuleId::shared);
        // Only a refusal shows the message; an allowed statement does not copy it.
        let overall_message = if overall == Verdict::Deny {
            decision.message.unwrap_or("refused by policy").to_owned()
        } else {
            String::new()
        };
        let review_spec = decision.review.cloned();
        let rules = self.snapshot.policy.rules();
        // One record per statement, each with its own verdict and rule.
        let statements = scratch.sql().statements();
        let follow_columns = self.masker.has_column_rules();
        let mut parts: Vec<Part> = Vec::with_capacity(statements.len().max(1));
        let results = scratch.statement_results();
        for (i, st) in statements.iter().enumerate() {
            self.listening |= st.kinds.contains(StatementKind::Notify);
            let (verdict, rule) = results.get(i).map_or((overall, None), |r| {
                (
                    r.verdict,
                    r.rule
                        .and_then(|idx| rules.get(idx as usize))
                        .map(|rule| rule.id.shared()),
                )
            });
            let start = st.span.start as usize;
            let end = (st.span.end as usize).min(sql.len());
            let piece = if start <= end {
                sql.slice(start..end)
            } else {
                sql.clone()
            };
            // Read off the tokens the decision already made; nothing is built for a statement
            // whose result columns are plain columns.
            let tokens = scratch.sql().tokens(st);
            let sources = follow_columns
                .then(|| ResultSources::from_tokens(text, tokens))
                .filter(|s| !s.is_empty())
                .map(Arc::new);
            if let Some(s) = &sources
                && declares_a_result(text, tokens)
            {
                if self.declared_sources.len() >= MAX_DECLARED_SOURCES {
                    self.declared_sources.pop_front();
                }
                self.declared_sources.push_back(Arc::clone(s));
            }
            parts.push((
                kind_name(st.primary_kind()),
                piece,
                rec_decision(verdict),
                Some(rule.unwrap_or_else(default_rule)),
                sources,
            ));
        }
        if parts.is_empty() {
            parts.push((
                "empty".into(),
                sql.clone(),
                rec_decision(overall),
                Some(Arc::clone(&overall_rule)),
                None,
            ));
        }
        if overall != Verdict::Deny
            && self.masker.has_column_rules()
            && statements.iter().any(copies_out)
        {
            let error: Arc<str> = COPY_OUT_REFUSED.into();
            for (kind, piece, _, _, _) in parts {
                let mut r = self.new_record(
                    kind,
                    Some(piece),
                    RecDecision::Deny,
                    Some(COPY_OUT_RULE.into()),
                );
                r.error = Some(Arc::clone(&error));
                record(CommandEvent::Finished(r));
            }
            return ClientVerdict::Refuse(PgError::StatementDenied {
                rule: COPY_OUT_RULE.into(),
                message: COPY_OUT_REFUSED.into(),
            });
        }

        if overall == Verdict::Review
            && let Some(spec) = review_spec
        {
            return ClientVerdict::Hold(Hold {
                rule: overall_rule,
                spec,
                text: text.into(),
                command_seq: self.seq + 1,
                parts,
                parse_name,
                sql: sql.clone(),
            });
        }
        match overall {
            Verdict::Deny | Verdict::Review => {
                let error: Arc<str> = if overall == Verdict::Deny {
                    format!("denied by rule `{overall_rule}`").into()
                } else {
                    format!("requires review by rule `{overall_rule}`").into()
                };
                for (kind, piece, decision, rule, _) in parts {
                    let mut r = self.new_record(kind, Some(piece), decision, rule);
                    r.error = Some(Arc::clone(&error));
                    record(CommandEvent::Finished(r));
                }
                let e = if overall == Verdict::Deny {
                    PgError::StatementDenied {
                        rule: overall_rule.to_string(),
                        message: overall_message,
                    }
                } else {
                    // A review verdict without review settings cannot be approved by anyone.
                    PgError::ReviewRefused {
                        message: format!(
                            "rule `{overall_rule}` requires review but names no approvers"
                        ),
                    }
                };
                ClientVerdict::Refuse(e)
            }
            Verdict::Allow | Verdict::Observe => {
                if !recorder_accepting {
                    return ClientVerdict::Refuse(PgError::AuditUnavailable);
                }
                self.admit(parts, parse_name, sql, overall, None, record)
            }
        }
    }

    /// Lets a decided statement through: a Parse remembers its decision for the Execute that
    /// records it; a Query's records are announced to the recorder (all or none) and then
    /// wait for the server's answer.
    fn admit(
        &mut self,
        parts: Vec<Part>,
        parse_name: Option<Bytes>,
        sql: &Bytes,
        overall: Verdict,
        approval: Option<Approval>,
        record: &mut RecordFn<'_>,
    ) -> ClientVerdict {
        match parse_name {
            Some(name) => {
                // Recorded when a portal of it is executed.
                let (kind, decision, rule, sources) = parts
                    .into_iter()
                    .next()
                    .map(|(k, _, d, r, s)| (k, d, r, s))
                    .unwrap_or(("unknown".into(), rec_decision(overall), None, None));
                let meta = Meta {
                    kind,
                    decision,
                    rule,
                    approval,
                    sources,
                };
                if let Err(e) = self.statements.parse(name, sql.clone(), meta) {
                    return ClientVerdict::Fatal(e);
                }
            }
            None => {
                let started = Instant::now();
                let sync_no = self.syncs_forwarded + 1;
                // The records go straight into the pending queue (no list of their own per
                // query), and are announced from there; a refusal takes them back out.
                let first = self.pending.len();
                for (kind, piece, decision, rule, sources) in parts {
                    let mut r = self.new_record(kind, Some(piece), decision, rule);
                    if let Some((id, approvers)) = &approval {
                        r.review_id = Some(Arc::clone(id));
                        r.approvers = Arc::clone(approvers);
                    }
                    self.pending.push_back(Pending {
                        record: r,
                        started,
                        sync_no,
                        extended: false,
                        sources,
                    });
                }
                let announced = (first..self.pending.len())
                    .take_while(|&i| {
                        self.pending
                            .get(i)
                            .is_some_and(|p| record(CommandEvent::Started(p.record.clone())))
                    })
                    .count();
                if first + announced < self.pending.len() {
                    // Close the ones already announced: none of them runs.
                    let refused: Vec<Pending> = self.pending.drain(first..).collect();
                    for p in refused.into_iter().take(announced) {
                        let mut r = p.record;
                        r.error = Some(AUDIT_REFUSED.into());
                        record(CommandEvent::Finished(r));
                    }
                    return ClientVerdict::Refuse(PgError::AuditUnavailable);
                }
                self.syncs_forwarded = sync_no;
            }
        }
        ClientVerdict::Forward
    }

    /// The held statement was approved: forward it (the driver sends the held bytes
    /// unchanged) with its records carrying the review id and approvers.
    pub fn release(
        &mut self,
        hold: Hold,
        message: &FrontendMessage,
        review_id: Arc<str>,
        approvers: &[Arc<str>],
        recorder_accepting: bool,
        record: &mut RecordFn<'_>,
    ) -> ClientVerdict {
        if let Some(v) = self.expiry_check(record) {
            return v;
        }
        if !recorder_accepting {
            return ClientVerdict::Refuse(PgError::AuditUnavailable);
        }
        let approval = (review_id, Arc::from(approvers.to_vec()));
        let verdict = self.admit(
            hold.parts,
            hold.parse_name,
            &hold.sql,
            Verdict::Review,
            Some(approval),
            record,
        );
        if matches!(verdict, ClientVerdict::Forward) {
            self.shapes.forwarded(message, &self.statements);
        }
        verdict
    }

    /// The held statement was not approved: records it with `message` and returns the error
    /// the client gets. It never reaches the server.
    pub fn refuse_hold(
        &mut self,
        hold: Hold,
        review_id: Option<Arc<str>>,
        message: String,
        record: &mut RecordFn<'_>,
    ) -> PgError {
        let error: Arc<str> = message.as_str().into();
        for (kind, piece, decision, rule, _) in hold.parts {
            let mut r = self.new_record(kind, Some(piece), decision, rule);
            r.review_id = review_id.clone();
            r.error = Some(Arc::clone(&error));
            record(CommandEvent::Finished(r));
        }
        PgError::ReviewRefused { message }
    }

    fn new_record(
        &mut self,
        action: Arc<str>,
        text: Option<Bytes>,
        decision: RecDecision,
        rule_id: Option<Arc<str>>,
    ) -> CommandRecord {
        self.seq += 1;
        let text = text.map(|t| {
            if t.len() > MAX_RECORDED_TEXT {
                t.slice(..MAX_RECORDED_TEXT)
            } else {
                t
            }
        });
        CommandRecord {
            session: Arc::clone(&self.info),
            seq: self.seq,
            at: Micros::now(),
            action,
            text,
            decision,
            rule_id,
            review_id: None,
            approvers: Arc::clone(&SHARED_NAMES.no_approvers),
            duration_us: 0,
            rows: None,
            bytes: 0,
            masked_values: 0,
            error: None,
        }
    }

    /// Handles one server frame: appends what the client must receive (the raw frame, or its
    /// masked form) to `out`, and completes records.
    pub fn on_backend(
        &mut self,
        frame: &BackendFrame,
        out: &mut BytesMut,
        record: &mut RecordFn<'_>,
    ) -> Result<(), PgError> {
        match &frame.message {
            BackendMessage::RowDescription(fields) => {
                // Column rules follow a masked column under an alias or inside an expression
                // (`SELECT ssn AS x`, `upper(email)`): the described statement's select list
                // says what each result column reads.
                // Cursors, SQL-level prepared statements and temporary views declared in the
                // session return their rows later, to a FETCH, EXECUTE or SELECT whose own text
                // does not show the renames: theirs count for every later result.
                let sources = self.described_sources();
                let by_name_only = sources.is_none() && self.declared_sources.is_empty();
                let columns = match &self.described {
                    Some((raw, columns)) if by_name_only && **raw == *frame.raw => {
                        Arc::clone(columns)
                    }
                    _ => {
                        let declared = &self.declared_sources;
                        let columns: Columns = rewrite::columns(fields)
                            .into_iter()
                            .map(|c| Column {
                                mask: if by_name_only {
                                    self.masker.column(&c.name)
                                } else {
                                    let name = c.name.as_str();
                                    let read = sources
                                        .iter()
                                        .chain(declared.iter())
                                        .flat_map(move |s| s.sources(name));
                                    self.masker.column_from(name, read)
                                },
                                kind: if c.rewritable {
                                    ValueKind::Text
                                } else {
                                    ValueKind::Other
                                },
                            })
                            .collect();
                        // Keyed by the description's bytes alone, so only columns that the
                        // names alone decided may be reused.
                        if by_name_only && frame.raw.len() <= MAX_CACHED_DESCRIPTION {
                            self.described =
                                Some((frame.raw.to_vec().into(), Arc::clone(&columns)));
                        }
                        columns
                    }
                };
                self.shapes.on_row_description(&columns);
                self.columns = Some(columns);
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::NoData => {
                self.shapes.on_no_data();
                self.columns = None;
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::DataRow(row) => {
                if let Some(p) = self.current_mut() {
                    p.record.bytes = p.record.bytes.saturating_add(frame.raw.len() as u64);
                }
                if self.masker.is_empty() {
                    out.extend_from_slice(&frame.raw);
                    return Ok(());
                }
                if self.columns.is_none() {
                    self.columns = self.shapes.executing().cloned();
                }
                let columns = self
                    .columns
                    .as_ref()
                    .filter(|c| c.len() == usize::from(row.column_count));
                let (before, mask_began) = (self.stats.total(), Instant::now());
                let masker = &self.masker;
                let stats = &mut self.stats;
                let cell = &mut self.cell;
                let unknown = &self.unknown_column;
                // Columns unknown (never described) while column rules apply: the rules cannot
                // be matched, so every value is withheld rather than risk a masked column
                // leaving as is (fail closed; detectors alone would miss e.g. a name column).
                let blind = columns.is_none() && masker.has_column_rules();
                let mut edit = |i: usize, value: Option<&[u8]>| {
                    let Some(value) = value else {
                        return CellEdit::Keep;
                    };
                    if blind {
                        stats.add_withheld();
                        return CellEdit::Null;
                    }
                    let (mask, kind) = match columns.and_then(|c| c.get(i)) {
                        Some(c) => (&c.mask, c.kind),
                        None => (unknown, ValueKind::Other),
                    };
                    if mask.is_empty() {
                        return CellEdit::Keep;
                    }
                    cell.clear();
                    match masker.mask_value(mask, kind, value, cell, stats) {
                        MaskOutcome::Unchanged => CellEdit::Keep,
                        MaskOutcome::Null => CellEdit::Null,
                        MaskOutcome::Rewritten => CellEdit::Replace(Cow::Owned(cell.clone())),
                    }
                };
                // Cells are masked up to the first one that changes. Most rows have none, and
                // they leave as the frame they came in, without being encoded again; a row
                // that changes is re-encoded from that cell on, each cell masked once.
                let first = row
                    .values_ref()
                    .enumerate()
                    .map(|(i, value)| (i, edit(i, value)))
                    .find(|(_, e)| !matches!(e, CellEdit::Keep));
                match first {
                    None => out.extend_from_slice(&frame.raw),
                    Some((k, first)) => {
                        let mut first = Some(first);
                        rewrite::rewrite_data_row(row, &self.limits, out, |i, value| {
                            match i.cmp(&k) {
                                Ordering::Less => CellEdit::Keep,
                                // Taken once; withheld rather than sent as is if not.
                                Ordering::Equal => first.take().unwrap_or(CellEdit::Null),
                                Ordering::Greater => edit(i, value),
                            }
                        })?;
                    }
                }
                self.stage_times.add_masking(mask_began);
                let masked = self.stats.total().saturating_sub(before);
                self.masked_total = self.masked_total.saturating_add(masked);
                if let Some(p) = self.current_mut() {
                    p.record.masked_values = p.record.masked_values.saturating_add(masked);
                }
            }
            BackendMessage::CopyInResponse(_) => {
                // libpq's extended-protocol COPY sends Sync behind the Execute; the server,
                // copying, ignores it and ends the batch at the Sync after CopyDone.
                self.copy_in = true;
                if let Some(p) = self.current_mut().filter(|p| p.extended) {
                    let sync_no = p.sync_no;
                    self.syncs_forwarded = self.syncs_forwarded.min(sync_no.saturating_sub(1));
                }
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::CopyOutResponse(c) | BackendMessage::CopyBothResponse(c) => {
                if !self.masker.is_empty() && c.format == 1 {
                    self.copy_out_binary = Some(BinaryCopyRewriter::new());
                } else if !self.masker.is_empty() {
                    self.copy_out = Some(self.masker.stream());
                }
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::CopyData(data) if self.copy_out_binary.is_some() => {
                let (masker, unknown, cell) = (&self.masker, &self.unknown_column, &mut self.cell);
                let before = self.stats.total();
                let stats = &mut self.stats;
                if let Some(rw) = &mut self.copy_out_binary {
                    rw.push(data, &self.limits, out, |_, v| {
                        cell.clear();
                        match masker.mask_value(unknown, ValueKind::Other, v, cell, stats) {
                            MaskOutcome::Unchanged => CellEdit::Keep,
                            MaskOutcome::Null | MaskOutcome::Rewritten => CellEdit::Null,
                        }
                    })?;
                }
                self.count_masked(before);
            }
            BackendMessage::CopyData(data) => match &mut self.copy_out {
                Some(stream) => {
                    self.cell.clear();
                    let before = self.stats.total();
                    stream.push(data, &mut self.cell, &mut self.stats);
                    self.count_masked(before);
                    copy_data(out, &self.cell);
                }
                None => out.extend_from_slice(&frame.raw),
            },
            BackendMessage::CopyDone => {
                self.copy_out_binary = None;
                if let Some(mut stream) = self.copy_out.take() {
                    self.cell.clear();
                    let before = self.stats.total();
                    stream.finish(&mut self.cell, &mut self.stats);
                    self.count_masked(before);
                    copy_data(out, &self.cell);
                }
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::FunctionCallResponse(value) => {
                // The one result of a fast-path call (for `loread`, large-object bytes): no
                // column to match, so only detectors apply, as for a value of an undescribed
                // column in binary COPY; binary values stay valid when rewritten.
                let before = self.stats.total();
                let masked = match value {
                    Some(v) if !self.masker.is_empty() => {
                        self.cell.clear();
                        let outcome = self.masker.mask_value(
                            &self.unknown_column,
                            self.fastpath_result,
                            v,
                            &mut self.cell,
                            &mut self.stats,
                        );
                        match outcome {
                            MaskOutcome::Unchanged => None,
                            MaskOutcome::Null => Some(None),
                            MaskOutcome::Rewritten => Some(Some(&self.cell[..])),
                        }
                    }
                    _ => None,
                };
                match masked {
                    Some(v) => rewrite::function_call_response(v, &self.limits, out)?,
                    None => out.extend_from_slice(&frame.raw),
                }
                self.count_masked(before);
                if let Some(p) = self.current_mut() {
                    p.record.bytes = p.record.bytes.saturating_add(frame.raw.len() as u64);
                }
                self.finish_current(None, None, record);
            }
            BackendMessage::CommandComplete { tag } => {
                self.shapes.on_execute_end();
                let rows = CommandTag::rows_in(tag);
                self.finish_current(rows, None, record);
                self.columns = None;
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::PortalSuspended => {
                self.shapes.on_execute_end();
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::EmptyQueryResponse => {
                self.shapes.on_execute_end();
                self.finish_current(None, None, record);
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::ErrorResponse(fields) => {
                self.shapes.on_error();
                self.copy_in = false;
                let before = self.stats.total();
                let message = self.mask_notice(b'E', fields, &frame.raw, out);
                self.count_masked(before);
                let error: Arc<str> = format!("{} {message}", fields.code()).into();
                self.finish_current(None, Some(error), record);
                self.columns = None;
                self.copy_out = None;
                self.copy_out_binary = None;
            }
            BackendMessage::NoticeResponse(fields) => {
                let before = self.stats.total();
                self.mask_notice(b'N', fields, &frame.raw, out);
                self.count_masked(before);
            }
            // A payload can carry row data (`pg_notify('orders', NEW.email)` in a trigger).
            BackendMessage::NotificationResponse {
                process_id,
                channel,
                payload,
            } if !self.masker.is_empty() => {
                let mut text = Vec::new();
                self.mask_text(payload, &mut text);
                super::reply::framed(out, b'A', |b| {
                    b.put_u32(*process_id);
                    super::reply::put_cstr(b, channel);
                    super::reply::put_cstr(b, &text);
                });
            }
            BackendMessage::ParameterStatus { name, value } => {
                self.server_parameter(name, value);
                out.extend_from_slice(&frame.raw);
            }
            BackendMessage::ReadyForQuery(status) => {
                self.shapes.on_ready();
                self.ready_seen += 1;
                // Statements of this batch the server never reached (an earlier one failed).
                while self
                    .pending
                    .front()
                    .is_some_and(|p| p.sync_no <= self.ready_seen)
                {
                    self.finish_current(
                        None,
                        Some("not executed: an earlier statement of its batch failed".into()),
                        record,
                    );
                }
                self.columns = None;
                self.copy_out = None;
                self.copy_out_binary = None;
                if *status == super::reply::TransactionStatus::Idle {
                    self.statements.transaction_ended();
                }
                out.extend_from_slice(&frame.raw);
            }
            _ => out.extend_from_slice(&frame.raw),
        }
        Ok(())
    }

    /// Appends an ErrorResponse or NoticeResponse (`tag`) for the client, masked: an error
    /// quotes values (`invalid input syntax for type integer: "4111 1111 1111 1111"`, `Key
    /// (email)=(jane@example.com) already exists`), so `SELECT card::int FROM cards` would
    /// otherwise show a value its column rule masks. Its text fields go through the session's
    /// detectors; with column rules in force, the quoted value of a data exception or
    /// integrity violation (SQLSTATE classes 22 and 23), which no detector may recognise, is
    /// withheld along with its detail and context. Names and codes pass unchanged. Returns
    /// the primary message as sent, for the audit record.
    fn mask_notice(
        &mut self,
        tag: u8,
        fields: &NoticeFields,
        raw: &[u8],
        out: &mut BytesMut,
    ) -> String {
        if self.masker.is_empty() {
            out.extend_from_slice(raw);
            return fields.message();
        }
        let code = fields.code();
        let withhold =
            self.masker.has_column_rules() && (code.starts_with("22") || code.starts_with("23"));
        let mut message = String::new();
        let mut text = Vec::new();
        super::reply::framed(out, tag, |b| {
            for (c, v) in fields.iter() {
                text.clear();
                match c {
                    b'M' if withhold => match v.iter().position(|&x| x == b'"') {
                        Some(q) => {
                            text.extend_from_slice(v.get(..q).unwrap_or_default());
                            text.extend_from_slice(WITHHELD_VALUE);
                        }
                        None => self.mask_text(&v, &mut text),
                    },
                    b'D' | b'W' | b'q' if withhold => text.extend_from_slice(WITHHELD_DETAIL),
                    b'M' | b'D' | b'H' | b'W' | b'q' => self.mask_text(&v, &mut text),
                    _ => text.extend_from_slice(&v),
                }
                if c == b'M' {
                    message = String::from_utf8_lossy(&text).into_owned();
                }
                b.put_u8(c);
                super::reply::put_cstr(b, &text);
            }
            b.put_u8(0);
        });
        message
    }

    /// `v` through the session-wide detectors into `text`.
    fn mask_text(&mut self, v: &[u8], text: &mut Vec<u8>) {
        let outcome = self.masker.mask_value(
            &self.unknown_column,
            ValueKind::Text,
            v,
            text,
            &mut self.stats,
        );
        match outcome {
            MaskOutcome::Unchanged => text.extend_from_slice(v),
            MaskOutcome::Rewritten => {}
            MaskOutcome::Null => text.extend_from_slice(b"[MASKED]"),
        }
    }

    /// The server owes a ReadyForQuery for a batch forwarded whole (a simple Query or a Sync),
    /// and needs nothing more from the client to send it: not in COPY FROM STDIN, not in a
    /// COPY in both directions.
    pub fn awaiting_ready(&self) -> bool {
        self.syncs_forwarded > self.ready_seen && !self.copy_in && !self.in_copy_out()
    }

    /// Nothing suggests the server will speak before the client does: no COPY under way and
    /// no LISTEN in this session. (The driver also needs every forwarded byte answered.)
    pub fn server_quiet(&self) -> bool {
        !self.listening && !self.copy_in && !self.in_copy_out()
    }

    fn in_copy_out(&self) -> bool {
        self.copy_out.is_some() || self.copy_out_binary.is_some()
    }

    /// ReadyForQuery messages handled so far: the driver's clock ends a round trip on each.
    pub fn ready_seen(&self) -> u64 {
        self.ready_seen
    }

    fn count_masked(&mut self, before: u64) {
        let masked = self.stats.total().saturating_sub(before);
        self.masked_total = self.masked_total.saturating_add(masked);
        if let Some(p) = self.current_mut() {
            p.record.masked_values = p.record.masked_values.saturating_add(masked);
        }
    }

    /// What the result columns of the statement a RowDescription describes read: the
    /// prepared statement of the Describe it answers, else the simple Query statement being
    /// answered.
    fn described_sources(&self) -> Sources {
        if let Some(name) = self.shapes.describing() {
            return self
                .statements
                .statement(name)
                .and_then(|s| s.meta.sources.clone());
        }
        let next = self.ready_seen + 1;
        self.pending
            .front()
            .filter(|p| p.sync_no <= next)
            .and_then(|p| p.sources.clone())
    }

    /// The statement the server is answering now: the oldest pending one of the batch whose
    /// ReadyForQuery comes next (a pending statement of a later pipelined batch is not it).
    fn current_mut(&mut self) -> Option<&mut Pending> {
        let next = self.ready_seen + 1;
        self.pending.front_mut().filter(|p| p.sync_no <= next)
    }

    fn finish_current(
        &mut self,
        rows: Option<u64>,
        error: Option<Arc<str>>,
        record: &mut RecordFn<'_>,
    ) {
        if self.current_mut().is_none() {
            return;
        }
        let Some(mut p) = self.pending.pop_front() else {
            return;
        };
        p.record.rows = rows;
        p.record.error = error;
        p.record.duration_us = u64::try_from(p.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        record(CommandEvent::Finished(p.record));
    }

    /// Records every statement still waiting for an answer (the session is ending).
    pub fn abandon(&mut self, reason: &str, record: &mut RecordFn<'_>) {
        let reason: Arc<str> = reason.into();
        while let Some(mut p) = self.pending.pop_front() {
            p.record.error = Some(Arc::clone(&reason));
            p.record.duration_us =
                u64::try_from(p.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            record(CommandEvent::Finished(p.record));
        }
    }
}

/// What replaces a quoted value in an error message when column rules are in force.
const WITHHELD_VALUE: &[u8] = b"\"[value withheld: masking rules apply to this session]\"";
/// What replaces an error's detail and context then.
const WITHHELD_DETAIL: &[u8] = b"[withheld: masking rules apply to this session]";

/// Client encodings PostgreSQL accepts whose multibyte characters can end in an ASCII byte
/// (`\` among them), as the server names them in ParameterStatus.
const UNSAFE_CLIENT_ENCODINGS: &[&[u8]] = &[
    b"SJIS",
    b"SHIFT_JIS_2004",
    b"BIG5",
    b"GBK",
    b"UHC",
    b"GB18030",
    b"JOHAB",
];

/// Whether a backslash follows a non-ASCII byte: in an unsafe client encoding that backslash
/// may be the second byte of a character, and the server would not see it escape the quote
/// after it (`E'\u{3041}\' ; DROP TABLE t; --'`). Outside the E-strings and backslash-escaping
/// strings it cannot move anything, but telling those apart would take a second lexer here;
/// the pattern is rare enough in real text to refuse whole.
fn backslash_after_multibyte(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', sql).any(|i| i > 0 && sql.get(i - 1).is_some_and(|&b| b >= 0x80))
}

/// Why a session admitted by a just-in-time grant ends when the grant does.
const GRANT_EXPIRED: &str = "the just-in-time grant for this connection has expired: request a new one with `portcullis access request`";

/// The policy engine's view of a verified identity.
pub fn policy_identity(identity: &Identity) -> policy_engine::Identity {
    policy_engine::Identity {
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        groups: identity.groups.clone(),
        kind: match identity.kind {
            crate::identity::IdentityKind::Human => policy_engine::IdentityKind::Human,
            crate::identity::IdentityKind::Service => policy_engine::IdentityKind::Service,
        },
    }
}

/// A statement whose select list returns its rows later, to another statement: `DECLARE c
/// CURSOR FOR SELECT ...` (then `FETCH`), `PREPARE p AS SELECT ...` (then `EXECUTE`),
/// `CREATE VIEW v AS SELECT ...` (then `SELECT ... FROM v`).
fn declares_a_result(text: &str, tokens: &[policy_engine::sql::lexer::Token]) -> bool {
    tokens.first().is_some_and(|t| {
        let word = text
            .as_bytes()
            .get(t.start as usize..t.end as usize)
            .unwrap_or_default();
        [&b"declare"[..], b"prepare", b"create"]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
    })
}

fn rec_decision(v: Verdict) -> RecDecision {
    match v {
        Verdict::Allow => RecDecision::Allow,
        Verdict::Observe => RecDecision::Observe,
        Verdict::Review => RecDecision::Review,
        Verdict::Deny => RecDecision::Deny,
    }
}

/// Appends a CopyData message carrying `data` (nothing when `data` is empty).
fn copy_data(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.put_u8(b'd');
    out.put_u32(u32::try_from(data.len().saturating_add(4)).unwrap_or(u32::MAX));
    out.put_slice(data);
}

#[cfg(test)]
mod tests;
