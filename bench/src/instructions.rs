//! `bench instructions`: instructions per operation of the micro suites' hot paths, counted by
//! callgrind. Wall clock on a shared 2-core machine moves by tens of percent from run to run;
//! instruction counts of the same binary on the same input move by well under one percent,
//! whatever else the machine is doing, so they can gate a change in CI.
//!
//! Each case runs in its own process under `valgrind --tool=callgrind`, with collection on only
//! inside [`measured_region`], so building the corpus, compiling the policy and the process's
//! start-up are not counted. The count is divided by the operations the case performed.
//!
//! `--baseline FILE` compares with a saved run and fails when a case costs more than
//! `--max-regression` percent over it; `--json FILE` writes this run (a baseline is such a
//! file). A baseline is only meaningful for the same compiler and target: rebuild it when the
//! toolchain changes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::BytesMut;
use policy_engine::mask::corpus;
use policy_engine::mask::{MaskStats, ValueKind};
use policy_engine::policy::compile_sources;
use policy_engine::{Action, Dialect, Identity, Scratch, workload};
use serde_json::{Value, json};

/// Cases, in report order.
const CASES: &[&str] = &[
    "policy_decide_under_1kb",
    "policy_decide_10kb",
    "mask_cell_no_pii",
    "mask_cell_pii_5pct",
    "mask_cell_secrets_only",
    "mask_stream_no_pii",
    "mask_stream_pii_5pct",
    "codec_frontend_simple_query",
    "codec_frontend_extended_batch",
    "codec_backend_one_row_answer",
    "codec_backend_ten_column_rows",
    "codec_backend_rows_rewritten",
    "pg_round_trip_select",
    "pg_rows_masked",
];

#[derive(Debug, clap::Args)]
pub struct InstructionsArgs {
    /// Write this run's counts here (the format `--baseline` reads).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Compare with this earlier run and fail on a regression.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Largest accepted increase over the baseline, in percent.
    #[arg(long, default_value_t = 3.0)]
    pub max_regression: f64,
    /// Run only the cases whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
}

/// Collection runs only inside this function (`--toggle-collect`). Never inlined, so callgrind
/// sees its entry and exit.
#[inline(never)]
fn measured_region(work: &mut dyn FnMut() -> u64) -> u64 {
    work()
}

/// Runs one case (the child side, under callgrind) and prints the operations it performed.
pub fn case(name: &str) -> anyhow::Result<()> {
    let ops = match name {
        "policy_decide_under_1kb" => policy(|len| len < 1024, 20)?,
        "policy_decide_10kb" => policy(|len| len >= 1024, 20)?,
        "mask_cell_no_pii" => mask_cells(0, 0)?,
        "mask_cell_pii_5pct" => mask_cells(5, 0)?,
        "mask_cell_secrets_only" => mask_cells(5, 1)?,
        "mask_stream_no_pii" => mask_stream(0)?,
        "mask_stream_pii_5pct" => mask_stream(5)?,
        n if n.starts_with("codec_") => codec(n.trim_start_matches("codec_"))?,
        "pg_round_trip_select" => pg_round_trip(2000)?,
        "pg_rows_masked" => pg_rows_masked()?,
        _ => bail!("unknown case {name}"),
    };
    #[expect(clippy::print_stdout, reason = "the parent reads the count")]
    {
        println!("{{\"ops\":{ops}}}");
    }
    Ok(())
}

/// Decisions over the bench corpus's statements whose length `keep` accepts, `rounds` times.
fn policy(keep: fn(usize) -> bool, rounds: u64) -> anyhow::Result<u64> {
    let policy =
        Arc::new(compile_sources(&workload::sources(100)).map_err(|e| anyhow::anyhow!("{e}"))?);
    let identity = Identity {
        subject: "bench".into(),
        groups: vec!["engineering".into(), "team-3".into()],
        ..Identity::default()
    };
    let session = policy.session_unchecked("orders-db", &identity);
    let statements: Vec<String> = workload::corpus()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| keep(s.len()))
        .collect();
    let mut scratch = Scratch::new();
    let mut decide_all = || {
        for sql in &statements {
            let action = Action::Sql {
                dialect: Dialect::Postgres,
                text: sql,
            };
            std::hint::black_box(session.decide(&action, &mut scratch));
        }
        statements.len() as u64
    };
    decide_all(); // warm-up: scratch growth
    Ok(measured_region(&mut || {
        (0..rounds).map(|_| decide_all()).sum()
    }))
}

/// `mask_value` over every cell of 2,000 rows of 8 cells; detector rule 0 = all, 1 = secrets.
fn mask_cells(pii_percent: u64, rule: usize) -> anyhow::Result<u64> {
    let engine = corpus::throughput_engine()?;
    let session = engine.session(&[rule]);
    let cells = corpus::cell_values(&corpus::rows(1, 2000, 8, pii_percent));
    let col = session.column("note");
    let mut out = Vec::with_capacity(1 << 16);
    let mut stats = MaskStats::default();
    Ok(measured_region(&mut || {
        for v in &cells {
            out.clear();
            let _ = std::hint::black_box(session.mask_value(
                &col,
                ValueKind::Text,
                v,
                &mut out,
                &mut stats,
            ));
        }
        cells.len() as u64
    }))
}

/// The same rows as one tab-separated stream through `StreamMasker` in 16 KiB pieces; one
/// operation is one byte.
fn mask_stream(pii_percent: u64) -> anyhow::Result<u64> {
    let engine = corpus::throughput_engine()?;
    let session = engine.session(&[0]);
    let stream = corpus::tsv_stream(&corpus::rows(1, 2000, 8, pii_percent));
    let mut out = Vec::with_capacity(stream.len() * 2);
    let mut stats = MaskStats::default();
    Ok(measured_region(&mut || {
        let mut m = session.stream();
        for piece in stream.chunks(16 * 1024) {
            m.push(piece, &mut out, &mut stats);
        }
        m.finish(&mut out, &mut stats);
        stream.len() as u64
    }))
}

/// One `bench codecs` case over 2,000 shapes; one operation is one frame.
fn codec(name: &str) -> anyhow::Result<u64> {
    let cases = crate::codecs::cases(2000);
    let c = cases
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("no codec case {name}"))?;
    let limits = dataplane::postgres::Limits::default();
    let mut out = BytesMut::with_capacity(c.stream.len() * 2);
    Ok(measured_region(&mut || {
        crate::codecs::pass(c, &limits, &mut out)
    }))
}

/// An inspector in full inspection against the e2e policy (example policies and 100
/// generated rules, their masking rules and custom detector), recording into nothing, and a
/// helper decoding one backend frame.
fn bench_inspector() -> anyhow::Result<(
    dataplane::postgres::inspect::Inspector,
    dataplane::postgres::Limits,
)> {
    use dataplane::identity::{Identity as Caller, IdentityKind};
    use dataplane::postgres::inspect::{Inspector, policy_identity};
    use dataplane::services::PolicySnapshot;
    use policy_engine::AccessContext;
    use policy_engine::mask::MaskEngine;
    use recorder::{Micros, SessionId, SessionInfo};

    let limits = dataplane::postgres::Limits::default();
    let policy =
        Arc::new(compile_sources(&workload::sources(100)).map_err(|e| anyhow::anyhow!("{e}"))?);
    let specs: Vec<_> = policy.mask_specs().cloned().collect();
    let masks = MaskEngine::compile(&specs, policy.detector_specs(), b"bench-key")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot = Arc::new(PolicySnapshot {
        policy: Arc::clone(&policy),
        masks,
        version: "bench".into(),
    });
    let caller = Arc::new(Caller {
        subject: "bench".into(),
        email: Some("bench@corp.example".into()),
        groups: vec!["engineering".into()],
        kind: IdentityKind::Human,
        expires_at: i64::MAX,
        issuer: "portcullis-local".into(),
    });
    let session = Arc::new(
        policy
            .session_with(
                "orders-db",
                &policy_identity(&caller),
                &AccessContext::default(),
            )
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    );
    let info = Arc::new(SessionInfo {
        id: SessionId(1),
        worker: 0,
        connection: "orders-db".into(),
        protocol: "postgres",
        subject: "bench".into(),
        email: None,
        groups: Arc::from(Vec::new()),
        client_addr: "127.0.0.1:1".into(),
        upstream: "127.0.0.1:2".into(),
        started_at: Micros(0),
        policy_version: "bench".into(),
    });
    let inspector = Inspector::new(
        info,
        session,
        snapshot,
        caller,
        std::time::Duration::ZERO,
        limits,
    );
    Ok((inspector, limits))
}

/// One backend message `tag` with `body`, decoded as the gateway decodes it.
fn backend_frame(
    tag: u8,
    body: &[u8],
    limits: &dataplane::postgres::Limits,
) -> anyhow::Result<dataplane::postgres::backend::BackendFrame> {
    use bytes::BufMut;
    let mut raw = BytesMut::new();
    raw.put_u8(tag);
    raw.put_u32(u32::try_from(body.len() + 4)?);
    raw.put_slice(body);
    dataplane::postgres::backend::decode_message(&mut raw, limits)?.context("incomplete frame")
}

/// A RowDescription of the named columns, all of type `oid` (`typlen` bytes, -1: varlena).
fn row_description(columns: &[&str], oid: u32, typlen: i16) -> BytesMut {
    use bytes::BufMut;
    let mut desc = BytesMut::new();
    desc.put_u16(u16::try_from(columns.len()).unwrap_or(u16::MAX));
    for (i, name) in columns.iter().enumerate() {
        desc.put_slice(name.as_bytes());
        desc.put_u8(0);
        desc.put_u32(16_397); // the table's OID and the column's number, as PostgreSQL sends them
        desc.put_i16(i16::try_from(i + 3).unwrap_or(i16::MAX));
        desc.put_u32(oid);
        desc.put_i16(typlen);
        desc.put_i32(-1);
        desc.put_i16(0);
    }
    desc
}

/// A DataRow of text values.
fn data_row(values: &[&[u8]]) -> anyhow::Result<BytesMut> {
    use bytes::BufMut;
    let mut row = BytesMut::new();
    row.put_u16(u16::try_from(values.len())?);
    for v in values {
        row.put_u32(u32::try_from(v.len())?);
        row.put_slice(v);
    }
    Ok(row)
}

/// `rounds` times: `query` through the inspector's client side, then `answer` through its
/// server side. Returns the rounds.
fn inspector_rounds(
    query: &dataplane::postgres::frontend::FrontendMessage,
    answer: &[dataplane::postgres::backend::BackendFrame],
    rounds: u64,
) -> anyhow::Result<u64> {
    use dataplane::postgres::inspect::{ClientVerdict, Inspector};
    let (mut inspector, _) = bench_inspector()?;
    let mut scratch = Scratch::new();
    let mut out = BytesMut::with_capacity(1 << 20);
    let mut round = |inspector: &mut Inspector, out: &mut BytesMut| -> anyhow::Result<()> {
        let mut record = |e| {
            drop(std::hint::black_box(e));
            true
        };
        match inspector.on_client(query, &mut scratch, true, &mut record) {
            ClientVerdict::Forward => {}
            other => bail!("the bench query was not forwarded: {other:?}"),
        }
        out.clear();
        for f in answer {
            inspector.on_backend(f, out, &mut record)?;
        }
        Ok(())
    };
    round(&mut inspector, &mut out)?; // warm-up: scratch and buffers grow once
    let mut failed = None;
    let n = measured_region(&mut || {
        for _ in 0..rounds {
            if let Err(e) = round(&mut inspector, &mut out) {
                failed = Some(e);
                return 0;
            }
        }
        rounds
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// The inspector's share of one `pgbench -S` round trip, as the gateway runs it in full
/// inspection: the Query decided against the e2e policy and recorded, then RowDescription,
/// one masked DataRow, CommandComplete and ReadyForQuery. No sockets: what this counts is
/// the per-query work that is the gateway's own, on top of what a pure relay does. One
/// operation is one round trip.
fn pg_round_trip(rounds: u64) -> anyhow::Result<u64> {
    use dataplane::postgres::frontend::FrontendMessage;
    let limits = dataplane::postgres::Limits::default();
    let answer = [
        backend_frame(b'T', &row_description(&["abalance"], 23, 4), &limits)?, // int4
        backend_frame(b'D', &data_row(&[b"2817"])?, &limits)?,
        backend_frame(b'C', b"SELECT 1\0", &limits)?,
        backend_frame(b'Z', b"I", &limits)?,
    ];
    let query = FrontendMessage::Query {
        sql: bytes::Bytes::from_static(b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
    };
    inspector_rounds(&query, &answer, rounds)
}

/// A result set of 2,000 corpus rows (8 text columns, 5 % of cells holding PII) through the
/// inspector's server side under the e2e policy's masking rules, as the PostgreSQL data
/// plane masks it; one operation is one row (its decision and record included, spread over
/// the rows).
fn pg_rows_masked() -> anyhow::Result<u64> {
    use dataplane::postgres::frontend::FrontendMessage;
    const ROWS: usize = 2000;
    let limits = dataplane::postgres::Limits::default();
    let columns = [
        "note", "status", "ref", "detail", "memo", "comment", "info", "remark",
    ];
    let rows = corpus::rows(1, ROWS, columns.len(), 5);
    let mut answer = vec![backend_frame(
        b'T',
        &row_description(&columns, 25, -1),
        &limits,
    )?];
    for row in &rows {
        let values: Vec<&[u8]> = row.iter().map(|c| c.text.as_bytes()).collect();
        answer.push(backend_frame(b'D', &data_row(&values)?, &limits)?);
    }
    answer.push(backend_frame(b'C', b"SELECT 2000\0", &limits)?);
    answer.push(backend_frame(b'Z', b"I", &limits)?);
    let query = FrontendMessage::Query {
        sql: bytes::Bytes::from_static(b"SELECT * FROM customer_notes;"),
    };
    Ok(inspector_rounds(&query, &answer, 1)? * ROWS as u64)
}

/// The total `Ir` of a callgrind output file.
fn callgrind_total(path: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no instruction total in {}", path.display()))
}

pub fn run(args: &InstructionsArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("portcullis-instructions-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let baseline: Option<Value> = match &args.baseline {
        Some(p) => Some(serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => None,
    };
    let mut results = serde_json::Map::new();
    let mut regressions = Vec::new();
    for name in CASES {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let out_file = dir.join(format!("{name}.callgrind"));
        let run = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg("--toggle-collect=*measured_region*")
            .arg(&exe)
            .args(["instruction-case", name])
            .output()
            .context("running valgrind (Debian: apt-get install valgrind)")?;
        if !run.status.success() {
            bail!(
                "{name} under callgrind failed ({}): {}",
                run.status,
                String::from_utf8_lossy(&run.stderr)
            );
        }
        let ops = String::from_utf8_lossy(&run.stdout)
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok()?.get("ops")?.as_u64())
            .with_context(|| format!("{name}: no operation count in its output"))?;
        let total = callgrind_total(&out_file)?;
        let per_op = total as f64 / ops.max(1) as f64;
        let before = baseline.as_ref().and_then(|b| {
            b.get("cases")?
                .get(*name)?
                .get("instructions_per_op")?
                .as_f64()
        });
        let change = before.map(|b| 100.0 * (per_op - b) / b);
        if let Some(c) = change
            && c > args.max_regression
        {
            regressions.push(format!(
                "{name}: {per_op:.1} instructions/op, {c:+.1} % over the baseline"
            ));
        }
        say(&format!(
            "{name:<32} {per_op:>12.1} instructions/op{}",
            change.map_or(String::new(), |c| format!("  ({c:+.1} %)"))
        ));
        results.insert(
            (*name).into(),
            json!({
                "instructions_per_op": (per_op * 10.0).round() / 10.0,
                "ops": ops,
                "instructions": total,
                "baseline_per_op": before,
                "change_pct": change.map(|c| (c * 100.0).round() / 100.0),
            }),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let report = json!({
        "suite": "instructions",
        "date": crate::e2e::today(),
        "tool": "valgrind --tool=callgrind, collection inside measured_region only",
        "command": "cargo run --release -p bench -- instructions --json FILE [--baseline FILE]",
        "max_regression_pct": args.max_regression,
        "cases": results,
    });
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    if !regressions.is_empty() {
        bail!(
            "instruction counts regressed:\n  {}",
            regressions.join("\n  ")
        );
    }
    Ok(())
}

fn say(msg: &str) {
    #[expect(clippy::print_stdout, reason = "progress of the run")]
    {
        println!("{msg}");
    }
}
