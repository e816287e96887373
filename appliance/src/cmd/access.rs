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
    /// List live grants (needs `grants.approve`).
    List {
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
        AccessCommand::List { admin } => admin.call("GET", "/api/grants", None).map(|v| {
            let mut out = String::from("SUBJECT          CONNECTION       EXPIRES (unix)  REVIEW        APPROVERS\n");
            for g in v
                .get("grants")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = |k: &str| g.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let approvers = g
                    .get("approvers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{:<16} {:<16} {:<15} {:<13} {approvers}\n",
                    f("subject"),
                    f("connection"),
                    g.get("expires_at").and_then(Value::as_i64).unwrap_or(0),
                    f("review_id"),
                ));
            }
            out
        }),
    })
}
