//! The protocol-neutral request model: who is asking, on which connection, to do what.
//!
//! The data plane builds these from decoded frames and hands them over as typed facts; the
//! policy engine never sees raw protocol bytes. Everything borrows from the caller's buffers.

/// Whether the caller is a person or an automation agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    #[default]
    Human,
    Service,
}

/// A verified caller identity (from an OIDC token).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub kind: IdentityKind,
}

/// SQL dialect of the target, which decides how text is lexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    #[default]
    Postgres,
    Mysql,
}

impl std::str::FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "postgres" | "postgresql" | "pg" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::Mysql),
            other => Err(format!(
                "unknown dialect `{other}`: use `postgres` or `mysql`"
            )),
        }
    }
}

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// A query string (one or more statements).
    Sql { dialect: Dialect, text: &'a str },
    Http {
        method: &'a str,
        host: &'a str,
        path: &'a str,
    },
    Kubernetes {
        verb: &'a str,
        resource: &'a str,
        subresource: Option<&'a str>,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    },
    /// A shell command line run over SSH (`None` command means an interactive shell).
    Ssh { command: &'a str },
    /// A raw TCP connection: only access rules and match-anything rules apply.
    TcpConnect,
}

/// A complete request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub identity: &'a Identity,
    pub connection: &'a str,
    pub action: Action<'a>,
}
