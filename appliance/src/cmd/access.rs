//! `portcullis access request`: asks for just-in-time access to a connection. The request is
//! a review; once approvers approve it, the caller may connect until the grant expires.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::reviews::{AdminArgs, finish};

#[derive(Debug, clap::Subcommand)]
pub enum AccessCommand {
    /// Request time-boxed access to a connection whose policy requires a grant.
    Request {
        /// The connection name.
        connection: String,
        /// How long, e.g. 1h or 30m.
        #[arg(long = "for")]
        duration: String,
        /// Why (shown to approvers and recorded).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn run(cmd: AccessCommand) -> ExitCode {
    finish(match cmd {
        AccessCommand::Request {
            connection,
            duration,
            reason,
            admin,
        } => admin
            .call(
                "POST",
                "/api/grants",
                Some(&json!({ "connection": connection, "for": duration, "reason": reason })),
            )
            .map(|v| {
                let id = v.get("id").and_then(Value::as_str).unwrap_or("?");
                format!(
                    "grant request {id} for `{connection}` is pending approval\napprovers run: portcullis reviews approve {id}\n"
                )
            }),
    })
}
