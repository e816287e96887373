//! PostgreSQL protocol: everything of the gateway's PostgreSQL module that does not touch a
//! socket.
//!
//! - [`frontend`] / [`backend`]: incremental, zero-copy decoders for both directions (and the
//!   few encoders the gateway needs as a client of the upstream);
//! - [`client_session`]: the client-side state machine (startup, TLS answer, token, COPY,
//!   skip-to-Sync);
//! - [`upstream_auth`]: authenticating to the upstream with the held credential;
//! - [`reply`]: what the gateway itself writes to clients; [`error`]: typed errors and their one
//!   SQLSTATE each;
//! - [`rewrite`]: DataRow re-encoding for masking; [`statement`]: SQL text, prepared statements,
//!   portals, row counts; [`limits`]: every peer-controlled size;
//! - [`cancel`]: the gateway's own cancel keys, routable to the owning core;
//! - [`fastpath`]: which fast-path function calls can be decided, as what SQL;
//! - [`sequencer`]: keeps the gateway's own replies in order among pipelined upstream replies;
//! - [`fuzzing`]: entry points for fuzz targets and smoke tests.
//!
//! - [`inspect`]: the sans-IO core of an authenticated session (decide, mask, record);
//! - [`route`]: a `postgres` connection entry built from the config (TLS, held credential);
//! - [`driver`]: the socket driver, one monoio task per connection, a thin loop over the rest.

mod codec;

pub mod backend;
pub mod cancel;
mod channel_binding;
pub mod client_session;
pub mod driver;
pub mod error;
pub mod fastpath;
pub mod frontend;
pub mod fuzzing;
mod hold;
pub mod inspect;
pub mod limits;
pub mod reply;
pub mod rewrite;
pub mod route;
pub mod sequencer;
pub mod statement;
pub mod upstream_auth;

pub use error::{PgError, Side};
pub use limits::Limits;
