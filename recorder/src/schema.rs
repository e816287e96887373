//! The Arrow schema of the four tables and the builders that turn records into record batches.
//!
//! Column order and types are a contract with auditors' saved queries: add columns at the end
//! and bump [`SCHEMA_VERSION`]; never rename or retype. This module does not write files.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BinaryBuilder, ListBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
    UInt16Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::records::{CommandRecord, FrameRecord, ReviewEvent, SessionEnd, SessionInfo};

/// Value of every row's `schema_version` column.
pub const SCHEMA_VERSION: u16 = 2;

/// One of the recorded tables; also the directory and file-name prefix on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Sessions,
    Commands,
    Frames,
    Reviews,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Sessions,
        Table::Commands,
        Table::Frames,
        Table::Reviews,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Commands => "commands",
            Table::Frames => "frames",
            Table::Reviews => "reviews",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The column that places a row in time (for `recordings list` ranges).
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Sessions => "started_at",
            _ => "ts",
        }
    }

    /// The table's Arrow schema.
    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: OnceLock<[SchemaRef; 4]> = OnceLock::new();
        let all = SCHEMAS.get_or_init(|| Table::ALL.map(build_schema));
        match self {
            Table::Sessions => all[0].clone(),
            Table::Commands => all[1].clone(),
            Table::Frames => all[2].clone(),
            Table::Reviews => all[3].clone(),
        }
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn list_of_strings() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn build_schema(table: Table) -> SchemaRef {
    let f = Field::new;
    let fields = match table {
        Table::Sessions => vec![
            f("schema_version", DataType::UInt16, false),
            f("session_id", DataType::Utf8, false),
            f("worker", DataType::UInt16, false),
            f("connection", DataType::Utf8, false),
            f("protocol", DataType::Utf8, false),
            f("subject", DataType::Utf8, false),
            f("email", DataType::Utf8, true),
            f("groups", list_of_strings(), false),
            f("client_addr", DataType::Utf8, false),
            f("upstream", DataType::Utf8, false),
            f("started_at", ts(), false),
            f("ended_at", ts(), true),
            f("bytes_in", DataType::UInt64, false),
            f("bytes_out", DataType::UInt64, false),
            f("outcome", DataType::Utf8, false),
            f("outcome_reason", DataType::Utf8, true),
            f("policy_version", DataType::Utf8, false),
        ],
        Table::Commands => vec![
            f("schema_version", DataType::UInt16, false),
            f("session_id", DataType::Utf8, false),
            f("connection", DataType::Utf8, false),
            f("protocol", DataType::Utf8, false),
            f("subject", DataType::Utf8, false),
            f("seq", DataType::UInt64, false),
            f("ts", ts(), false),
            f("action", DataType::Utf8, false),
            f("text", DataType::Utf8, true),
            f("decision", DataType::Utf8, false),
            f("rule_id", DataType::Utf8, true),
            f("review_id", DataType::Utf8, true),
            f("approvers", list_of_strings(), false),
            f("duration_us", DataType::UInt64, false),
            f("rows", DataType::UInt64, true),
            f("bytes", DataType::UInt64, false),
            f("masked_values", DataType::UInt64, false),
            f("error", DataType::Utf8, true),
            f("policy_version", DataType::Utf8, false),
        ],
        Table::Frames => vec![
            f("schema_version", DataType::UInt16, false),
            f("session_id", DataType::Utf8, false),
            f("seq", DataType::UInt64, false),
            f("ts", ts(), false),
            f("direction", DataType::Utf8, false),
            f("payload", DataType::Binary, false),
        ],
        Table::Reviews => vec![
            f("schema_version", DataType::UInt16, false),
            f("review_id", DataType::Utf8, false),
            f("session_id", DataType::Utf8, true),
            f("command_seq", DataType::UInt64, true),
            f("ts", ts(), false),
            f("event", DataType::Utf8, false),
            f("connection", DataType::Utf8, false),
            f("requester", DataType::Utf8, false),
            f("actor", DataType::Utf8, true),
            f("text", DataType::Utf8, true),
            f("reason", DataType::Utf8, true),
        ],
    };
    Arc::new(Schema::new(fields))
}

fn ts_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

fn append_list(b: &mut ListBuilder<StringBuilder>, items: &[Arc<str>]) {
    for item in items {
        b.values().append_value(item);
    }
    b.append(true);
}

/// A session id as 32 lowercase hex digits, without going through `format!`.
fn session_hex(id: crate::records::SessionId) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let mut v = id.0;
    for slot in out.iter_mut().rev() {
        // The mask keeps the index below 16.
        *slot = HEX.get((v & 0xf) as usize).copied().unwrap_or(b'0');
        v >>= 4;
    }
    out
}

/// Appends a session id as 32 hex digits.
fn append_session_id(b: &mut StringBuilder, id: crate::records::SessionId) {
    // Hex digits are ASCII.
    b.append_value(std::str::from_utf8(&session_hex(id)).unwrap_or_default());
}

/// The hex form of the last session id written: consecutive commands of one worker mostly
/// belong to the same session, so the 32-digit conversion is done once per run of rows.
#[derive(Debug, Default)]
struct LastSessionId {
    id: Option<crate::records::SessionId>,
    hex: String,
}

impl LastSessionId {
    fn hex(&mut self, id: crate::records::SessionId) -> &str {
        if self.id != Some(id) {
            self.hex.clear();
            self.hex
                .push_str(std::str::from_utf8(&session_hex(id)).unwrap_or_default());
            self.id = Some(id);
        }
        &self.hex
    }
}

/// Builders for the `sessions` table.
#[derive(Debug)]
pub(crate) struct SessionsBuilder {
    schema_version: UInt16Builder,
    session_id: StringBuilder,
    worker: UInt16Builder,
    connection: StringBuilder,
    protocol: StringBuilder,
    subject: StringBuilder,
    email: StringBuilder,
    groups: ListBuilder<StringBuilder>,
    client_addr: StringBuilder,
    upstream: StringBuilder,
    started_at: TimestampMicrosecondBuilder,
    ended_at: TimestampMicrosecondBuilder,
    bytes_in: UInt64Builder,
    bytes_out: UInt64Builder,
    outcome: StringBuilder,
    outcome_reason: StringBuilder,
    policy_version: StringBuilder,
    rows: usize,
}

impl SessionsBuilder {
    pub(crate) fn new() -> Self {
        Self {
            schema_version: UInt16Builder::new(),
            session_id: StringBuilder::new(),
            worker: UInt16Builder::new(),
            connection: StringBuilder::new(),
            protocol: StringBuilder::new(),
            subject: StringBuilder::new(),
            email: StringBuilder::new(),
            groups: ListBuilder::new(StringBuilder::new()),
            client_addr: StringBuilder::new(),
            upstream: StringBuilder::new(),
            started_at: ts_builder(),
            ended_at: ts_builder(),
            bytes_in: UInt64Builder::new(),
            bytes_out: UInt64Builder::new(),
            outcome: StringBuilder::new(),
            outcome_reason: StringBuilder::new(),
            policy_version: StringBuilder::new(),
            rows: 0,
        }
    }

    /// Appends a session row; `end` is `None` for a session still open at shutdown.
    pub(crate) fn append(&mut self, s: &SessionInfo, end: Option<&SessionEnd>) {
        self.append_with(s, end, None);
    }

    /// Appends the row of a session that was open when the gateway stopped without shutting
    /// down (the crash snapshot): no end time, outcome `error`, and `reason`.
    pub(crate) fn append_interrupted(&mut self, s: &SessionInfo, reason: &str) {
        self.append_with(s, None, Some(reason));
    }

    fn append_with(
        &mut self,
        s: &SessionInfo,
        end: Option<&SessionEnd>,
        interrupted: Option<&str>,
    ) {
        self.schema_version.append_value(SCHEMA_VERSION);
        append_session_id(&mut self.session_id, s.id);
        self.worker.append_value(s.worker);
        self.connection.append_value(&s.connection);
        self.protocol.append_value(s.protocol);
        self.subject.append_value(&s.subject);
        self.email.append_option(s.email.as_deref());
        append_list(&mut self.groups, &s.groups);
        self.client_addr.append_value(&s.client_addr);
        self.upstream.append_value(&s.upstream);
        self.started_at.append_value(s.started_at.0);
        match end {
            Some(e) => {
                self.ended_at.append_value(e.ended_at.0);
                self.bytes_in.append_value(e.bytes_in);
                self.bytes_out.append_value(e.bytes_out);
                self.outcome.append_value(e.outcome.as_str());
                self.outcome_reason.append_option(e.reason.as_deref());
            }
            None => {
                self.ended_at.append_null();
                self.bytes_in.append_value(0);
                self.bytes_out.append_value(0);
                let outcome = match interrupted {
                    Some(_) => crate::records::Outcome::Error,
                    None => crate::records::Outcome::Open,
                };
                self.outcome.append_value(outcome.as_str());
                self.outcome_reason.append_option(interrupted);
            }
        }
        self.policy_version.append_value(&s.policy_version);
        self.rows += 1;
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.schema_version.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.worker.finish()),
            Arc::new(self.connection.finish()),
            Arc::new(self.protocol.finish()),
            Arc::new(self.subject.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.groups.finish()),
            Arc::new(self.client_addr.finish()),
            Arc::new(self.upstream.finish()),
            Arc::new(self.started_at.finish()),
            Arc::new(self.ended_at.finish()),
            Arc::new(self.bytes_in.finish()),
            Arc::new(self.bytes_out.finish()),
            Arc::new(self.outcome.finish()),
            Arc::new(self.outcome_reason.finish()),
            Arc::new(self.policy_version.finish()),
        ];
        RecordBatch::try_new(Table::Sessions.schema(), cols)
    }
}

/// Builders for the `commands` table.
#[derive(Debug)]
pub(crate) struct CommandsBuilder {
    schema_version: UInt16Builder,
    session_id: StringBuilder,
    connection: StringBuilder,
    protocol: StringBuilder,
    subject: StringBuilder,
    seq: UInt64Builder,
    at: TimestampMicrosecondBuilder,
    action: StringBuilder,
    text: StringBuilder,
    decision: StringBuilder,
    rule_id: StringBuilder,
    review_id: StringBuilder,
    approvers: ListBuilder<StringBuilder>,
    duration_us: UInt64Builder,
    rows_col: UInt64Builder,
    bytes: UInt64Builder,
    masked_values: UInt64Builder,
    error: StringBuilder,
    policy_version: StringBuilder,
    last_session: LastSessionId,
    rows: usize,
}

impl CommandsBuilder {
    pub(crate) fn new() -> Self {
        Self {
            schema_version: UInt16Builder::new(),
            session_id: StringBuilder::new(),
            connection: StringBuilder::new(),
            protocol: StringBuilder::new(),
            subject: StringBuilder::new(),
            seq: UInt64Builder::new(),
            at: ts_builder(),
            action: StringBuilder::new(),
            text: StringBuilder::new(),
            decision: StringBuilder::new(),
            rule_id: StringBuilder::new(),
            review_id: StringBuilder::new(),
            approvers: ListBuilder::new(StringBuilder::new()),
            duration_us: UInt64Builder::new(),
            rows_col: UInt64Builder::new(),
            bytes: UInt64Builder::new(),
            masked_values: UInt64Builder::new(),
            error: StringBuilder::new(),
            policy_version: StringBuilder::new(),
            last_session: LastSessionId::default(),
            rows: 0,
        }
    }

    pub(crate) fn append(&mut self, c: &CommandRecord) {
        let s = &c.session;
        self.schema_version.append_value(SCHEMA_VERSION);
        self.session_id.append_value(self.last_session.hex(s.id));
        self.connection.append_value(&s.connection);
        self.protocol.append_value(s.protocol);
        self.subject.append_value(&s.subject);
        self.seq.append_value(c.seq);
        self.at.append_value(c.at.0);
        self.action.append_value(&c.action);
        match &c.text {
            // Valid UTF-8 (nearly always) is checked by the fast validator and copied once;
            // only invalid text pays for the lossy conversion.
            Some(t) => match std::str::from_utf8(t) {
                Ok(valid) => self.text.append_value(valid),
                Err(_) => self.text.append_value(String::from_utf8_lossy(t)),
            },
            None => self.text.append_null(),
        }
        self.decision.append_value(c.decision.as_str());
        self.rule_id.append_option(c.rule_id.as_deref());
        self.review_id.append_option(c.review_id.as_deref());
        append_list(&mut self.approvers, &c.approvers);
        self.duration_us.append_value(c.duration_us);
        self.rows_col.append_option(c.rows);
        self.bytes.append_value(c.bytes);
        self.masked_values.append_value(c.masked_values);
        self.error.append_option(c.error.as_deref());
        self.policy_version.append_value(&s.policy_version);
        self.rows += 1;
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.schema_version.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.connection.finish()),
            Arc::new(self.protocol.finish()),
            Arc::new(self.subject.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.at.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.decision.finish()),
            Arc::new(self.rule_id.finish()),
            Arc::new(self.review_id.finish()),
            Arc::new(self.approvers.finish()),
            Arc::new(self.duration_us.finish()),
            Arc::new(self.rows_col.finish()),
            Arc::new(self.bytes.finish()),
            Arc::new(self.masked_values.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.policy_version.finish()),
        ];
        RecordBatch::try_new(Table::Commands.schema(), cols)
    }
}

/// Builders for the `frames` table.
#[derive(Debug)]
pub(crate) struct FramesBuilder {
    schema_version: UInt16Builder,
    session_id: StringBuilder,
    seq: UInt64Builder,
    at: TimestampMicrosecondBuilder,
    direction: StringBuilder,
    payload: BinaryBuilder,
    rows: usize,
}

impl FramesBuilder {
    pub(crate) fn new() -> Self {
        Self {
            schema_version: UInt16Builder::new(),
            session_id: StringBuilder::new(),
            seq: UInt64Builder::new(),
            at: ts_builder(),
            direction: StringBuilder::new(),
            payload: BinaryBuilder::new(),
            rows: 0,
        }
    }

    pub(crate) fn append(&mut self, f: &FrameRecord) {
        self.schema_version.append_value(SCHEMA_VERSION);
        append_session_id(&mut self.session_id, f.session.id);
        self.seq.append_value(f.seq);
        self.at.append_value(f.at.0);
        self.direction.append_value(f.direction.as_str());
        self.payload.append_value(&f.payload);
        self.rows += 1;
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.schema_version.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.at.finish()),
            Arc::new(self.direction.finish()),
            Arc::new(self.payload.finish()),
        ];
        RecordBatch::try_new(Table::Frames.schema(), cols)
    }
}

/// Builders for the `reviews` table.
#[derive(Debug)]
pub(crate) struct ReviewsBuilder {
    schema_version: UInt16Builder,
    review_id: StringBuilder,
    session_id: StringBuilder,
    command_seq: UInt64Builder,
    at: TimestampMicrosecondBuilder,
    event: StringBuilder,
    connection: StringBuilder,
    requester: StringBuilder,
    actor: StringBuilder,
    text: StringBuilder,
    reason: StringBuilder,
    rows: usize,
}

impl ReviewsBuilder {
    pub(crate) fn new() -> Self {
        Self {
            schema_version: UInt16Builder::new(),
            review_id: StringBuilder::new(),
            session_id: StringBuilder::new(),
            command_seq: UInt64Builder::new(),
            at: ts_builder(),
            event: StringBuilder::new(),
            connection: StringBuilder::new(),
            requester: StringBuilder::new(),
            actor: StringBuilder::new(),
            text: StringBuilder::new(),
            reason: StringBuilder::new(),
            rows: 0,
        }
    }

    pub(crate) fn append(&mut self, r: &ReviewEvent) {
        self.schema_version.append_value(SCHEMA_VERSION);
        self.review_id.append_value(&r.review_id);
        match r.session_id {
            Some(id) => append_session_id(&mut self.session_id, id),
            None => self.session_id.append_null(),
        }
        self.command_seq.append_option(r.command_seq);
        self.at.append_value(r.at.0);
        self.event.append_value(r.event.as_str());
        self.connection.append_value(&r.connection);
        self.requester.append_value(&r.requester);
        self.actor.append_option(r.actor.as_deref());
        self.text.append_option(r.text.as_deref());
        self.reason.append_option(r.reason.as_deref());
        self.rows += 1;
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.schema_version.finish()),
            Arc::new(self.review_id.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.command_seq.finish()),
            Arc::new(self.at.finish()),
            Arc::new(self.event.finish()),
            Arc::new(self.connection.finish()),
            Arc::new(self.requester.finish()),
            Arc::new(self.actor.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.reason.finish()),
        ];
        RecordBatch::try_new(Table::Reviews.schema(), cols)
    }
}
