//! Statement kinds (what a statement does, as policy names it) and small sets of them.
//!
//! A statement can have several kinds at once (`WITH d AS (DELETE ...) SELECT` is both a delete
//! and a select); rules match when any of their kinds is in the statement's set.

/// What a statement does. Names are the `match.statement` values, in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    /// `COPY ... TO PROGRAM` / `FROM PROGRAM`: runs a shell command on the database host.
    CopyProgram,
    /// Server-side file access: `COPY ... TO '/file'`, `SELECT ... INTO OUTFILE`, `LOAD DATA INFILE`.
    CopyFile,
    Create,
    Alter,
    Drop,
    Truncate,
    Grant,
    Revoke,
    /// Creates, alters or drops roles and users.
    Role,
    Set,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`: changes who the session acts as.
    SetRole,
    /// `ALTER SYSTEM`: rewrites server configuration.
    AlterSystem,
    Show,
    Explain,
    Transaction,
    Call,
    /// `DO` blocks: anonymous procedural code.
    Do,
    Prepare,
    Execute,
    Lock,
    Maintenance,
    Notify,
    Use,
    Load,
    /// Calls to functions that act on the server itself (`pg_terminate_backend`, `lo_import`,
    /// `set_config`, `pg_read_file`, MySQL `LOAD_FILE`, `KILL`, ...).
    AdminFunction,
    /// Session-state statements: cursors, `DISCARD`, `DEALLOCATE`.
    Session,
    /// Not recognised, unterminated, or content not visible here (`EXECUTE`, `CALL`, `DO`).
    Unknown,
}

impl StatementKind {
    pub const ALL: [StatementKind; 33] = [
        Self::Select,
        Self::Insert,
        Self::Update,
        Self::Delete,
        Self::Merge,
        Self::Copy,
        Self::CopyProgram,
        Self::CopyFile,
        Self::Create,
        Self::Alter,
        Self::Drop,
        Self::Truncate,
        Self::Grant,
        Self::Revoke,
        Self::Role,
        Self::Set,
        Self::SetRole,
        Self::AlterSystem,
        Self::Show,
        Self::Explain,
        Self::Transaction,
        Self::Call,
        Self::Do,
        Self::Prepare,
        Self::Execute,
        Self::Lock,
        Self::Maintenance,
        Self::Notify,
        Self::Use,
        Self::Load,
        Self::AdminFunction,
        Self::Session,
        Self::Unknown,
    ];

    /// The policy-file name of this kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::Copy => "copy",
            Self::CopyProgram => "copy_program",
            Self::CopyFile => "copy_file",
            Self::Create => "create",
            Self::Alter => "alter",
            Self::Drop => "drop",
            Self::Truncate => "truncate",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Role => "role",
            Self::Set => "set",
            Self::SetRole => "set_role",
            Self::AlterSystem => "alter_system",
            Self::Show => "show",
            Self::Explain => "explain",
            Self::Transaction => "transaction",
            Self::Call => "call",
            Self::Do => "do",
            Self::Prepare => "prepare",
            Self::Execute => "execute",
            Self::Lock => "lock",
            Self::Maintenance => "maintenance",
            Self::Notify => "notify",
            Self::Use => "use",
            Self::Load => "load",
            Self::AdminFunction => "admin_function",
            Self::Session => "session",
            Self::Unknown => "unknown",
        }
    }

    /// Parses a policy-file name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Danger rank used to pick a statement's primary kind: higher is more dangerous.
    fn rank(self) -> u8 {
        match self {
            Self::Unknown => 100,
            Self::CopyProgram => 95,
            Self::AlterSystem => 94,
            Self::AdminFunction => 93,
            Self::SetRole => 92,
            Self::Role => 91,
            Self::Grant | Self::Revoke => 90,
            Self::CopyFile => 89,
            Self::Load => 88,
            Self::Do => 87,
            Self::Drop => 86,
            Self::Truncate => 85,
            Self::Alter => 84,
            Self::Delete => 80,
            Self::Merge => 79,
            Self::Update => 78,
            Self::Call | Self::Execute => 77,
            Self::Create => 70,
            Self::Insert => 60,
            Self::Copy => 65,
            Self::Lock => 50,
            Self::Prepare => 45,
            Self::Maintenance => 40,
            Self::Set => 35,
            Self::Notify => 30,
            Self::Select => 20,
            Self::Session => 22,
            Self::Explain => 25,
            Self::Use => 11,
            Self::Show => 10,
            Self::Transaction => 5,
        }
    }
}

impl std::fmt::Display for StatementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of statement kinds, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u64);

impl KindSet {
    pub const EMPTY: KindSet = KindSet(0);

    pub fn insert(&mut self, k: StatementKind) {
        self.0 |= 1u64 << (k as u8);
    }

    pub fn contains(self, k: StatementKind) -> bool {
        self.0 & (1u64 << (k as u8)) != 0
    }

    pub fn intersects(self, other: KindSet) -> bool {
        self.0 & other.0 != 0
    }

    /// One bit per kind, bit `k as u8` for kind `k`.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Kinds in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = StatementKind> {
        StatementKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// The most dangerous kind in the set (`Unknown` for an empty set).
    pub fn primary(self) -> StatementKind {
        // Most statements have one kind: its bit names it, with no walk over every kind
        // (the gateway asks for each statement's primary kind to record it).
        if self.0.is_power_of_two()
            && let Some(&k) = StatementKind::ALL.get(self.0.trailing_zeros() as usize)
            && k as u8 as u32 == self.0.trailing_zeros()
        {
            return k;
        }
        self.iter()
            .max_by_key(|k| k.rank())
            .unwrap_or(StatementKind::Unknown)
    }
}

impl FromIterator<StatementKind> for KindSet {
    fn from_iter<T: IntoIterator<Item = StatementKind>>(iter: T) -> Self {
        let mut s = KindSet::EMPTY;
        for k in iter {
            s.insert(k);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_kind_of_a_single_kind_is_that_kind_and_of_several_the_most_dangerous() {
        for k in StatementKind::ALL {
            let mut set = KindSet::EMPTY;
            set.insert(k);
            assert_eq!(set.primary(), k);
            for other in StatementKind::ALL {
                let mut both = set;
                both.insert(other);
                let expected = if other.rank() > k.rank() { other } else { k };
                assert_eq!(both.primary().rank(), expected.rank(), "{k:?} + {other:?}");
            }
        }
        assert_eq!(KindSet::EMPTY.primary(), StatementKind::Unknown);
    }
}
