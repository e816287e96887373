//! Which SQL a client message carries, which prepared statements and portals exist, and how many
//! rows a command touched.
//!
//! A Parse is decided once, when its text is known; later Bind/Execute messages only name it.
//! [`StatementTracker`] remembers, per session, what the driver attached to each named statement
//! (typically the decision and rule) and which portal came from which statement, so an Execute
//! can be recorded against the right text. It does not split multi-statement strings (that is
//! the policy lexer's job) and it does not see upstream errors: a Parse the server rejects stays
//! tracked until closed or replaced, which is harmless because Execute of it fails upstream.

use std::collections::HashMap;

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
        let Some(source) = self.statements.get(statement).cloned() else {
            return Ok(None);
        };
        if !self.portals.contains_key(&portal) && self.portals.len() >= self.max_portals {
            return Err(PgError::client(format!(
                "more than {} open portals in one session",
                self.max_portals
            )));
        }
        self.portals.insert(
            portal,
            Portal {
                statement: statement.clone(),
                source,
            },
        );
        Ok(self.statements.get(statement))
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
