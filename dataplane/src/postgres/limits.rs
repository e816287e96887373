//! Named limits for every size a PostgreSQL peer controls.
//!
//! Each decoder checks a length against these before it buffers or allocates, so a peer that
//! announces a huge message gets a typed error instead of memory. The defaults follow the server
//! where it has a limit of its own; this module does not enforce per-session byte budgets (rows
//! or bytes returned per statement are policy, counted by the driver).

/// Largest startup-phase packet (StartupMessage, SSLRequest, CancelRequest). The server uses the
/// same 10 000 bytes (`MAX_STARTUP_PACKET_LENGTH`): a startup packet is a handful of parameters.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Largest tagged message the server accepts (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB minus one). The
/// gateway buffers a whole message before it decides on it, so deployments usually lower this.
pub const PG_MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

/// Largest message that is only a few fields (Sync, Describe, Close, Execute, authentication
/// exchanges). The server caps these at 10 000 bytes too (`PQ_SMALL_MESSAGE_LIMIT`).
pub const MAX_SMALL_MESSAGE: usize = 10_000;

/// Most parameters in a StartupMessage. Real clients send fewer than twenty.
pub const MAX_STARTUP_PARAMS: usize = 64;

/// Most parameters in a Parse or Bind: the protocol counts them in an `Int16`.
pub const MAX_BIND_PARAMS: usize = u16::MAX as usize;

/// Most columns in a RowDescription or DataRow (`MaxTupleAttributeNumber` on the server).
pub const MAX_COLUMNS: usize = 1664;

/// Most SASL mechanisms an upstream may offer before we call it a protocol violation.
pub const MAX_SASL_MECHANISMS: usize = 16;

/// Most fields in an ErrorResponse or NoticeResponse (the protocol defines about twenty codes).
pub const MAX_NOTICE_FIELDS: usize = 64;

/// Most named prepared statements and portals tracked per session, so a client cannot grow the
/// gateway's tables without bound.
pub const MAX_PREPARED_STATEMENTS: usize = 10_000;

/// Most open portals tracked per session.
pub const MAX_PORTALS: usize = 10_000;

/// The configurable limits one session runs with. Constants above are the defaults and the
/// ceilings; a configuration may only lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest startup-phase packet, length word included.
    pub max_startup_packet: usize,
    /// Largest tagged message, length word included, tag excluded.
    pub max_message_len: usize,
    /// Most startup parameters.
    pub max_startup_params: usize,
    /// Most Parse/Bind parameters.
    pub max_bind_params: usize,
    /// Most columns per row.
    pub max_columns: usize,
    /// Most tracked prepared statements.
    pub max_prepared_statements: usize,
    /// Most tracked portals.
    pub max_portals: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_startup_packet: MAX_STARTUP_PACKET,
            max_message_len: PG_MAX_MESSAGE_LEN,
            max_startup_params: MAX_STARTUP_PARAMS,
            max_bind_params: MAX_BIND_PARAMS,
            max_columns: MAX_COLUMNS,
            max_prepared_statements: MAX_PREPARED_STATEMENTS,
            max_portals: MAX_PORTALS,
        }
    }
}

impl Limits {
    /// The defaults with a lower message ceiling; values above [`PG_MAX_MESSAGE_LEN`] are clamped
    /// because no server would accept them either.
    pub fn with_max_message_len(max_message_len: usize) -> Self {
        Self {
            max_message_len: max_message_len.min(PG_MAX_MESSAGE_LEN),
            ..Self::default()
        }
    }
}

/// Largest PasswordMessage / SASL response from a client. The token is a JWT, a few kilobytes;
/// the server allows 65 535 bytes for the same message (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const MAX_AUTH_MESSAGE: usize = 65_535;
