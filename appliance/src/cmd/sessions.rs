//! `portcullis sessions list|kill`: live sessions through the admin API.

use std::process::ExitCode;

use serde_json::Value;

use super::reviews::{AdminArgs, finish};

#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// List live sessions.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a live session (the client gets "terminated by an administrator").
    Kill {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn run(cmd: SessionsCommand) -> ExitCode {
    finish(match cmd {
        SessionsCommand::List { admin, json } => {
            admin.call("GET", "/api/sessions", None).map(|v| {
                if json {
                    return format!("{v}\n");
                }
                let mut out = String::from(
                    "ID                                CONNECTION       PROTOCOL  SUBJECT          CLIENT                 HELD\n",
                );
                for s in v
                    .get("sessions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    out.push_str(&format!(
                        "{:<33} {:<16} {:<9} {:<16} {:<22} {}\n",
                        f("id"),
                        f("connection"),
                        f("protocol"),
                        f("subject"),
                        f("client_addr"),
                        f("held_review")
                    ));
                }
                out
            })
        }
        SessionsCommand::Kill { id, admin } => admin
            .call("POST", &format!("/api/sessions/{id}/kill"), None)
            .map(|_| format!("session {id}: killed\n")),
    })
}
