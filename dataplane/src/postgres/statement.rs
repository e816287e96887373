//! Which SQL a client message carries, which prepared statements and portals exist, and how many
//! rows a command touched.
//!
//! A Parse is decided once, when its text is known; later Bind/Execute messages only name it.
//! [`StatementTracker`] remembers, per session, what the driver attached to each named statement
//! (typically the decision and rule) and which portal came from which statement, so an Execute
//! can be recorded against the right text. It does not split multi-statement strings (that is
//! the policy lexer's job) and it does not see upstream errors: a Parse the server rejects stays
//! tracked until closed or replaced, which is harmless because Execute of it fails upstream.
//!
//! [`ResultShapes`] remembers the result columns of named statements, learned from the
//! RowDescription that answered a Describe, so rows of a later Execute the client did not
//! describe (JDBC reuses the metadata it cached) are still masked by column rules.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::error::PgError;
use super::frontend::{FrontendMessage, Target};
use super::limits::Limits;

/// The SQL text a message carries, for classification: Query and Parse only.
pub fn sql_text(message: &FrontendMessage) -> Option<&Bytes> {
    match message {
        FrontendMessage::Query { sql } | FrontendMessage::Parse { sql, .. } => Some(sql),
        _ => None,
    }
}

/// A prepared statement as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<T> {
    /// Its SQL text.
    pub sql: Bytes,
    /// What the driver attached at Parse time (decision, rule, classification).
    pub meta: T,
}

/// A portal: a bound statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal<T> {
    /// Name of the statement it was bound from.
    pub statement: Bytes,
    /// A copy of the statement, so closing the statement does not orphan the portal (the server
    /// keeps portals alive the same way).
    pub source: Statement<T>,
}

/// Prepared statements and portals of one session, bounded by [`Limits`].
#[derive(Debug, Clone)]
pub struct StatementTracker<T> {
    statements: HashMap<Bytes, Statement<T>>,
    portals: HashMap<Bytes, Portal<T>>,
    max_statements: usize,
    max_portals: usize,
}

impl<T: Clone> StatementTracker<T> {
    /// An empty tracker.
    pub fn new(limits: &Limits) -> Self {
        Self {
            statements: HashMap::new(),
            portals: HashMap::new(),
            max_statements: limits.max_prepared_statements,
            max_portals: limits.max_portals,
        }
    }

    /// Records a Parse. The unnamed statement is replaced silently, as on the server.
    pub fn parse(&mut self, name: Bytes, sql: Bytes, meta: T) -> Result<(), PgError> {
        if !self.statements.contains_key(&name) && self.statements.len() >= self.max_statements {
            return Err(PgError::client(format!(
                "more than {} prepared statements in one session",
                self.max_statements
            )));
        }
        // Named statements live until closed: copy them out of the read buffer they were
        // decoded from, which a slice would keep alive with them. The unnamed one is replaced
        // by the next Parse, so it keeps its slice and costs no copy per statement.
        let (name, sql) = if name.is_empty() {
            (name, sql)
        } else {
            (Bytes::copy_from_slice(&name), Bytes::copy_from_slice(&sql))
        };
        self.statements.insert(name, Statement { sql, meta });
        Ok(())
    }

    /// A statement by name.
    pub fn statement(&self, name: &[u8]) -> Option<&Statement<T>> {
        self.statements.get(name)
    }

    /// Records a Bind; returns the statement it binds, or `None` when the statement is unknown
    /// (the driver lets the server report that).
    pub fn bind(
        &mut self,
        portal: Bytes,
        statement: &Bytes,
    ) -> Result<Option<&Statement<T>>, PgError> {
        // The statement's name is the map's own key, copied out of its read buffer in `parse`.
        let Some((statement, source)) = self
            .statements
            .get_key_value(statement)
            .map(|(k, v)| (k.clone(), v.clone()))
        else {
            return Ok(None);
        };
        if !self.portals.contains_key(&portal) && self.portals.len() >= self.max_portals {
            return Err(PgError::client(format!(
                "more than {} open portals in one session",
                self.max_portals
            )));
        }
        // Copied for the reason given in `parse`.
        let portal = if portal.is_empty() {
            portal
        } else {
            Bytes::copy_from_slice(&portal)
        };
        let found = self.statements.get(&statement);
        self.portals.insert(portal, Portal { statement, source });
        Ok(found)
    }

    /// The portal an Execute names.
    pub fn portal(&self, name: &[u8]) -> Option<&Portal<T>> {
        self.portals.get(name)
    }

    /// Records a Close.
    pub fn close(&mut self, target: Target, name: &[u8]) {
        match target {
            Target::Statement => {
                self.statements.remove(name);
            }
            Target::Portal => {
                self.portals.remove(name);
            }
        }
    }

    /// Portals live until the transaction ends: call on ReadyForQuery with status idle.
    pub fn transaction_ended(&mut self) {
        self.portals.clear();
    }

    /// Number of tracked statements.
    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    /// Number of open portals.
    pub fn portal_count(&self) -> usize {
        self.portals.len()
    }
}

/// A parsed CommandComplete tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag {
    /// The command word(s), e.g. `SELECT`, `INSERT`, `CREATE TABLE`.
    pub command: String,
    /// Rows affected or returned, for commands that report them.
    pub rows: Option<u64>,
}

impl CommandTag {
    /// Parses a tag such as `SELECT 5`, `INSERT 0 3`, `UPDATE 2`, `COPY 10`, `CREATE TABLE`.
    pub fn parse(tag: &[u8]) -> Self {
        let text = String::from_utf8_lossy(tag);
        let mut words: Vec<&str> = text.split(' ').collect();
        let counts_rows = matches!(
            words.first().copied(),
            Some("SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY")
        );
        let rows = if counts_rows && words.len() >= 2 {
            words.last().and_then(|w| w.parse::<u64>().ok())
        } else {
            None
        };
        if rows.is_some() {
            words.pop();
            // `INSERT oid rows`: the oid is always 0 nowadays and is not part of the command.
            if words.first() == Some(&"INSERT") && words.len() == 2 {
                words.pop();
            }
        }
        Self {
            command: words.join(" "),
            rows,
        }
    }

    /// The row count of a tag, as `parse(tag).rows` gives it, without building the command
    /// words: the data path needs only the count, once per statement.
    pub fn rows_in(tag: &[u8]) -> Option<u64> {
        let first = tag.split(|&b| b == b' ').next()?;
        if !matches!(
            first,
            b"SELECT" | b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"FETCH" | b"MOVE" | b"COPY"
        ) {
            return None;
        }
        let last = tag.rsplit(|&b| b == b' ').next()?;
        if last.len() == tag.len() {
            // One word: no count.
            return None;
        }
        std::str::from_utf8(last).ok()?.parse().ok()
    }
}

/// Most forwarded Describe/Execute/Sync/Query messages [`ResultShapes`] follows at once; past it
/// the oldest are forgotten (rows then fall back to detector-only masking, never to less).
pub const MAX_AWAITED_ANSWERS: usize = 100_000;

/// What the next answers from the server belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Awaiting {
    /// A Describe of this statement (directly, or of a portal bound from it).
    Describe(Option<Bytes>),
    /// An Execute of a portal bound from this statement.
    Execute(Option<Bytes>),
    /// A Sync: the server's ReadyForQuery ends the batch.
    Sync,
    /// A simple Query: its own RowDescriptions, up to ReadyForQuery.
    Simple,
}

/// Result columns (`C`, whatever the caller derives from a RowDescription) per named statement,
/// and which Execute the server is answering, so rows can be matched to a RowDescription seen
/// in an earlier batch. Sans-IO: the caller reports forwarded client messages and server
/// messages in order. Bounded by [`MAX_AWAITED_ANSWERS`] and `Limits::max_prepared_statements`.
#[derive(Debug, Clone)]
pub struct ResultShapes<C> {
    awaiting: VecDeque<Awaiting>,
    shapes: HashMap<Bytes, C>,
    max_shapes: usize,
}

impl<C: Clone> ResultShapes<C> {
    /// Nothing known yet.
    pub fn new(limits: &Limits) -> Self {
        Self {
            awaiting: VecDeque::new(),
            shapes: HashMap::new(),
            max_shapes: limits.max_prepared_statements,
        }
    }

    /// A client message was forwarded upstream; `statements` already reflects it.
    pub fn forwarded<T: Clone>(
        &mut self,
        message: &FrontendMessage,
        statements: &StatementTracker<T>,
    ) {
        let portal_statement = |name: &[u8]| statements.portal(name).map(|p| p.statement.clone());
        let next = match message {
            FrontendMessage::Parse { statement, .. } => {
                // New text under this name: its old shape no longer applies.
                self.shapes.remove(statement);
                return;
            }
            FrontendMessage::Close {
                target: Target::Statement,
                name,
            } => {
                self.shapes.remove(name);
                return;
            }
            FrontendMessage::Describe {
                target: Target::Statement,
                name,
            } => Awaiting::Describe(Some(name.clone())),
            FrontendMessage::Describe {
                target: Target::Portal,
                name,
            } => Awaiting::Describe(portal_statement(name)),
            FrontendMessage::Execute { portal, .. } => Awaiting::Execute(portal_statement(portal)),
            FrontendMessage::Sync => Awaiting::Sync,
            FrontendMessage::Query { .. } | FrontendMessage::FunctionCall { .. } => {
                Awaiting::Simple
            }
            _ => return,
        };
        if self.awaiting.len() >= MAX_AWAITED_ANSWERS {
            self.awaiting.pop_front();
        }
        self.awaiting.push_back(next);
    }

    /// The prepared statement whose Describe the server answers next, if that is what it
    /// answers next.
    pub fn describing(&self) -> Option<&Bytes> {
        match self.awaiting.front() {
            Some(Awaiting::Describe(statement)) => statement.as_ref(),
            _ => None,
        }
    }

    /// The server sent a RowDescription, summarised as `columns`: remembered for the statement
    /// being described, if any.
    pub fn on_row_description(&mut self, columns: &C) {
        if let Some(Awaiting::Describe(statement)) = self.awaiting.front() {
            if let Some(name) = statement
                && (self.shapes.contains_key(name) || self.shapes.len() < self.max_shapes)
            {
                self.shapes.insert(name.clone(), columns.clone());
            }
            self.awaiting.pop_front();
        }
    }

    /// The server answered a Describe with NoData.
    pub fn on_no_data(&mut self) {
        if let Some(Awaiting::Describe(_)) = self.awaiting.front() {
            self.awaiting.pop_front();
        }
    }

    /// Columns for rows that arrive without a RowDescription in their batch: those of the
    /// statement whose portal is executing, when it was described before.
    pub fn executing(&self) -> Option<&C> {
        match self.awaiting.front() {
            Some(Awaiting::Execute(Some(name))) => self.shapes.get(name),
            _ => None,
        }
    }

    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    pub fn on_execute_end(&mut self) {
        if let Some(Awaiting::Execute(_)) = self.awaiting.front() {
            self.awaiting.pop_front();
        }
    }

    /// An ErrorResponse: in extended mode the server skips to Sync, and so does this.
    pub fn on_error(&mut self) {
        while let Some(Awaiting::Describe(_) | Awaiting::Execute(_)) = self.awaiting.front() {
            self.awaiting.pop_front();
        }
    }

    /// ReadyForQuery: the batch or simple query at the front is over.
    pub fn on_ready(&mut self) {
        while let Some(a) = self.awaiting.pop_front() {
            if matches!(a, Awaiting::Sync | Awaiting::Simple) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    #[test]
    fn command_tags_give_row_counts() {
        let t = CommandTag::parse(b"SELECT 5");
        assert_eq!((t.command.as_str(), t.rows), ("SELECT", Some(5)));
        let t = CommandTag::parse(b"INSERT 0 3");
        assert_eq!((t.command.as_str(), t.rows), ("INSERT", Some(3)));
        let t = CommandTag::parse(b"CREATE TABLE");
        assert_eq!((t.command.as_str(), t.rows), ("CREATE TABLE", None));
        let t = CommandTag::parse(b"COPY 10");
        assert_eq!(t.rows, Some(10));
        let t = CommandTag::parse(b"SELECT x");
        assert_eq!(t.rows, None);
    }

    proptest::proptest! {
        #[test]
        fn rows_in_agrees_with_parse(
            words in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b"SELECT".to_vec()),
                    proptest::strategy::Just(b"INSERT".to_vec()),
                    proptest::strategy::Just(b"COPY".to_vec()),
                    proptest::strategy::Just(b"CREATE".to_vec()),
                    proptest::strategy::Just(b"0".to_vec()),
                    proptest::strategy::Just(b"+7".to_vec()),
                    proptest::strategy::Just(b"18446744073709551616".to_vec()),
                    proptest::strategy::Just(b"".to_vec()),
                    "[0-9]{1,20}".prop_map(String::into_bytes),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..6),
                ],
                0..5,
            )
        ) {
            let tag = words.join(&b' ');
            proptest::prop_assert_eq!(CommandTag::rows_in(&tag), CommandTag::parse(&tag).rows);
        }
    }

    #[test]
    fn tracker_follows_statements_into_portals_and_enforces_limits() {
        let limits = Limits {
            max_prepared_statements: 2,
            ..Limits::default()
        };
        let mut t: StatementTracker<&'static str> = StatementTracker::new(&limits);
        t.parse(
            Bytes::from_static(b"s1"),
            Bytes::from_static(b"select 1"),
            "allow",
        )
        .unwrap();
        t.parse(
            Bytes::from_static(b""),
            Bytes::from_static(b"select 2"),
            "observe",
        )
        .unwrap();
        assert!(
            t.parse(
                Bytes::from_static(b"s3"),
                Bytes::from_static(b"select 3"),
                "allow"
            )
            .is_err()
        );
        // Replacing an existing name is not growth.
        t.parse(
            Bytes::from_static(b""),
            Bytes::from_static(b"select 4"),
            "allow",
        )
        .unwrap();
        let bound = t
            .bind(Bytes::from_static(b"p"), &Bytes::from_static(b"s1"))
            .unwrap()
            .unwrap();
        assert_eq!(bound.meta, "allow");
        t.close(Target::Statement, b"s1");
        assert_eq!(&t.portal(b"p").unwrap().source.sql[..], b"select 1");
        assert!(
            t.bind(Bytes::from_static(b"q"), &Bytes::from_static(b"s1"))
                .unwrap()
                .is_none()
        );
        t.transaction_ended();
        assert_eq!(t.portal_count(), 0);
        assert_eq!(t.statement_count(), 1);
    }

    fn parse_msg(name: &'static [u8]) -> FrontendMessage {
        FrontendMessage::Parse {
            statement: Bytes::from_static(name),
            sql: Bytes::from_static(b"select email from t"),
            param_type_count: 0,
        }
    }

    /// Regression: rows of an Execute without a Describe in its batch (as JDBC sends a reused
    /// server-prepared statement) had no columns, so column rules did not mask them.
    #[test]
    fn rows_of_an_undescribed_execute_get_the_statements_earlier_shape() {
        let limits = Limits::default();
        let mut st: StatementTracker<()> = StatementTracker::new(&limits);
        let mut shapes: ResultShapes<&'static str> = ResultShapes::new(&limits);
        // Batch 1: Parse S_1, Describe S_1, Sync.
        st.parse(Bytes::from_static(b"S_1"), Bytes::new(), ())
            .unwrap();
        shapes.forwarded(&parse_msg(b"S_1"), &st);
        shapes.forwarded(
            &FrontendMessage::Describe {
                target: Target::Statement,
                name: Bytes::from_static(b"S_1"),
            },
            &st,
        );
        shapes.forwarded(&FrontendMessage::Sync, &st);
        shapes.on_row_description(&"email column");
        shapes.on_ready();
        // Batch 2: Bind "" to S_1, Execute "", Sync: no Describe.
        st.bind(Bytes::new(), &Bytes::from_static(b"S_1")).unwrap();
        let execute = FrontendMessage::Execute {
            portal: Bytes::new(),
            max_rows: 0,
        };
        shapes.forwarded(&execute, &st);
        shapes.forwarded(&FrontendMessage::Sync, &st);
        assert_eq!(shapes.executing(), Some(&"email column"));
        shapes.on_execute_end();
        assert_eq!(shapes.executing(), None);
        shapes.on_ready();
        // Re-parsed under the same name: the old shape is gone.
        shapes.forwarded(&parse_msg(b"S_1"), &st);
        shapes.forwarded(&execute, &st);
        assert_eq!(shapes.executing(), None);
    }

    #[test]
    fn an_error_skips_the_batchs_describes_and_executes() {
        let limits = Limits::default();
        let mut st: StatementTracker<()> = StatementTracker::new(&limits);
        let mut shapes: ResultShapes<u8> = ResultShapes::new(&limits);
        st.parse(Bytes::from_static(b"a"), Bytes::new(), ())
            .unwrap();
        st.parse(Bytes::from_static(b"b"), Bytes::new(), ())
            .unwrap();
        for name in [&b"a"[..], b"b"] {
            shapes.forwarded(
                &FrontendMessage::Describe {
                    target: Target::Statement,
                    name: Bytes::copy_from_slice(name),
                },
                &st,
            );
        }
        shapes.forwarded(&FrontendMessage::Sync, &st);
        shapes.forwarded(
            &FrontendMessage::Describe {
                target: Target::Statement,
                name: Bytes::from_static(b"b"),
            },
            &st,
        );
        shapes.forwarded(&FrontendMessage::Sync, &st);
        // The first Describe fails: the second of that batch is skipped by the server, and
        // the next RowDescription answers the later batch's Describe of `b`.
        shapes.on_error();
        shapes.on_ready();
        shapes.on_row_description(&7);
        shapes.on_ready();
        st.bind(Bytes::new(), &Bytes::from_static(b"b")).unwrap();
        shapes.forwarded(
            &FrontendMessage::Execute {
                portal: Bytes::new(),
                max_rows: 0,
            },
            &st,
        );
        assert_eq!(shapes.executing(), Some(&7));
    }
}
