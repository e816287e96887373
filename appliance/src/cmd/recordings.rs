//! `portcullis recordings list` and `portcullis replay`: argument parsing and printing only;
//! reading is `recorder::read`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use recorder::read::{self, SegmentState};

/// Where recordings live unless `--dir` says otherwise (the `[recorder]` default).
const DEFAULT_DIR: &str = "/var/lib/portcullis/recordings";

#[derive(Debug, clap::Subcommand)]
pub enum RecordingsCommand {
    /// List Arrow segments: table, state, rows, time range, size.
    List {
        /// Recordings directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Session id to replay (32 hex digits, as in the `session_id` column).
    pub session: String,
    /// Recordings directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

pub fn run(cmd: RecordingsCommand) -> ExitCode {
    match cmd {
        RecordingsCommand::List { dir } => match read::list_segments(&dir) {
            Ok(segs) => {
                let mut out = String::from(
                    "TABLE     STATE   ROWS      FIRST                        LAST                         BYTES       PARQUET  PATH\n",
                );
                for s in segs {
                    let t = |m: Option<recorder::Micros>| {
                        m.map_or_else(|| "-".into(), read::format_micros)
                    };
                    out.push_str(&format!(
                        "{:<9} {:<7} {:<9} {:<28} {:<28} {:<11} {:<8} {}\n",
                        s.table.name(),
                        if s.state == SegmentState::Live {
                            "live"
                        } else {
                            "sealed"
                        },
                        s.rows,
                        t(s.first),
                        t(s.last),
                        s.bytes,
                        if s.has_parquet { "yes" } else { "no" },
                        s.path.display()
                    ));
                }
                print_out(&out)
            }
            Err(e) => fail(&e),
        },
    }
}

pub fn replay(args: ReplayArgs) -> ExitCode {
    match read::session_timeline(&args.dir, &args.session) {
        Ok(t) if t.session.is_none() && t.commands.is_empty() && t.frames.is_empty() => {
            eprintln!(
                "no recording of session `{}` under `{}`",
                args.session,
                args.dir.display()
            );
            ExitCode::FAILURE
        }
        Ok(t) => print_out(&t.render()),
        Err(e) => fail(&e),
    }
}

fn print_out(text: &str) -> ExitCode {
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn fail(e: &recorder::RecorderError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
