//! `bench e2e postgres`: the end-to-end comparison. Starts a throwaway PostgreSQL with
//! pgbench data, PgBouncer, and the gateway three times (full inspection on every core, full
//! inspection on one core, pure TCP relay), then measures every target interleaved
//! (A B C D E A B C D E ..., `--reps` times) so that a noisy neighbour hurts all alike:
//!
//! - closed loop, 8 connections, `pgbench -S`-style selects: the maximum;
//! - open loop at fixed fractions of the slowest target's maximum (same rates for all);
//! - 1 connection, closed loop: the latency a lone client sees (added latency = gateway minus
//!   direct, paired per repetition);
//!
//! with the proxy's CPU seconds per 1,000 queries beside every throughput, then the gateway's
//! memory per idle connection. Reports medians with min/max over repetitions, checks the
//! goals, and writes `bench/results/<date>-<machine>.json` plus SVG plots.
//!
//! It does not build anything: it runs the release binaries next to its own executable.

mod measure;
mod peers;
mod svg;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use measure::{Endpoint, Run, Shape};
use peers::GatewayMode;

/// What to compare against.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Protocol {
    /// PostgreSQL: direct, gateway (full, relay), PgBouncer.
    Postgres,
    /// HTTP (gateway vs nginx): not available until the gateway's HTTP module exists.
    Http,
}

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Which protocol's comparison to run.
    #[arg(value_enum)]
    pub protocol: Protocol,
    /// Interleaved repetitions (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Short runs (1 s per measurement, 2 repetitions unless `--reps` is given).
    #[arg(long)]
    pub quick: bool,
    /// Seconds per closed-loop measurement (open-loop and 1-client runs take the same).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Idle connections opened for the memory probe.
    #[arg(long, default_value_t = 600)]
    pub idle: usize,
    /// Directory for the JSON and SVG files (default: `bench/results` of this checkout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the memory-per-idle-session probe: `--reps` fresh gateways, nothing written.
    /// For checking a memory change without the hour of load runs.
    #[arg(long)]
    pub memory_only: bool,
}

/// Open-loop rates, as fractions of the slowest target's closed-loop maximum.
const FRACTIONS: [f64; 3] = [0.25, 0.5, 0.75];
/// Connections in the closed-loop maximum and the open-loop runs.
const CLIENTS: u32 = 8;

/// One measured target.
struct Target {
    name: &'static str,
    what: String,
    endpoint: Endpoint,
    closed: Vec<Run>,
    open: Vec<Vec<Run>>,
    single: Vec<Run>,
}

fn say(msg: &str) {
    #[expect(clippy::print_stdout, reason = "progress of a long benchmark")]
    {
        println!("{msg}");
    }
}

pub fn run(args: &E2eArgs) -> anyhow::Result<()> {
    if matches!(args.protocol, Protocol::Http) {
        bail!("`e2e http` needs the gateway's HTTP module, which this build does not have yet");
    }
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("no directory for the bench binary")?;
    let loadgen = bin_dir.join("portcullis-loadgen");
    for b in [bin_dir.join("portcullis"), loadgen.clone()] {
        if !b.is_file() {
            bail!(
                "{} not found: build first with `cargo build --release -p appliance -p loadgen -p bench`",
                b.display()
            );
        }
    }
    let reps = if args.quick && args.reps == 5 {
        2
    } else {
        args.reps.max(1)
    };
    let secs = if args.quick { 1 } else { args.seconds.max(1) };
    let idle_n = if args.quick {
        args.idle.min(50)
    } else {
        args.idle
    };
    let idle_n = idle_n.min(peers::PG_MAX_CONNECTIONS as usize - 20);
    let warm = Duration::from_millis(if args.quick { 300 } else { 1000 });
    let dur = Duration::from_secs(secs);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let ticks = measure::clock_ticks();
    let work = peers::Scratch::new("portcullis-e2e")?;

    say("starting PostgreSQL (initdb, pgbench -i)...");
    let pg = peers::Postgres::start()?;
    let db = pg.database();
    if args.memory_only {
        return memory_only(bin_dir, &pg, cores, idle_n, reps);
    }
    say("starting PgBouncer and the gateways...");
    let bouncer = peers::pgbouncer(&pg)?;
    let (full, token) = peers::gateway(bin_dir, &pg, GatewayMode::Full, cores, true)?;
    let (relay, _) = peers::gateway(bin_dir, &pg, GatewayMode::Relay, cores, true)?;
    let (one_core, unpinned) = if cores > 1 {
        (
            Some(peers::gateway(bin_dir, &pg, GatewayMode::Full, 1, true)?),
            Some(peers::gateway(
                bin_dir,
                &pg,
                GatewayMode::Full,
                cores,
                false,
            )?),
        )
    } else {
        (None, None)
    };
    let pw = peers::PG_PASSWORD.to_owned();
    let ep = |port, secret: &str, pid| Endpoint {
        port,
        secret: secret.to_owned(),
        pid,
    };
    let mut targets = vec![
        Target::new(
            "direct",
            "PostgreSQL, no proxy".into(),
            ep(pg.port, &pw, None),
        ),
        Target::new(
            "gateway_full",
            format!(
                "gateway, full inspection ({} rules, masking, recording), {cores} workers",
                policy_rule_count()
            ),
            ep(full.port, &token, Some(full.pid())),
        ),
        Target::new(
            "gateway_relay",
            format!("gateway, pure TCP relay, {cores} workers"),
            ep(relay.port, &pw, Some(relay.pid())),
        ),
        Target::new(
            "pgbouncer",
            "PgBouncer, session pooling".into(),
            ep(bouncer.port, &pw, Some(bouncer.pid())),
        ),
    ];
    if let Some((g, t)) = &one_core {
        targets.push(Target::new(
            "gateway_full_1core",
            "gateway, full inspection, 1 worker".into(),
            ep(g.port, t, Some(g.pid())),
        ));
    }
    if let Some((g, t)) = &unpinned {
        targets.push(Target::new(
            "gateway_full_unpinned",
            format!("gateway, full inspection, {cores} workers not pinned to cores"),
            ep(g.port, t, Some(g.pid())),
        ));
    }
    let closed_shape = Shape {
        connections: CLIENTS,
        threads: u32::try_from(cores).unwrap_or(2),
        rate: None,
        warmup: warm,
        duration: dur,
    };

    // Calibration: the open-loop rates come from the slowest target's maximum, so every
    // target is measured at the same offered loads.
    say("calibrating open-loop rates...");
    let mut slowest = f64::INFINITY;
    for t in &targets {
        let r = measure::load(&loadgen, &work.0, &t.endpoint, db, closed_shape, ticks)?;
        say(&format!("  {:<20} {:>9.0} q/s", t.name, r.throughput));
        slowest = slowest.min(r.throughput);
    }
    let rates: Vec<f64> = FRACTIONS.iter().map(|f| (f * slowest).max(10.0)).collect();

    for rep in 0..reps {
        say(&format!("repetition {}/{reps}", rep + 1));
        for t in &mut targets {
            let closed = measure::load(&loadgen, &work.0, &t.endpoint, db, closed_shape, ticks)?;
            let mut open = Vec::new();
            for rate in &rates {
                let shape = Shape {
                    rate: Some(*rate),
                    ..closed_shape
                };
                open.push(measure::load(
                    &loadgen,
                    &work.0,
                    &t.endpoint,
                    db,
                    shape,
                    ticks,
                )?);
            }
            let single = measure::load(
                &loadgen,
                &work.0,
                &t.endpoint,
                db,
                Shape {
                    connections: 1,
                    threads: 1,
                    ..closed_shape
                },
                ticks,
            )?;
            say(&format!(
                "  {:<20} {:>9.0} q/s  cpu {:>7} s/1k  1-client p50 {:>6.0} µs p99 {:>6.0} µs  errors {}",
                t.name,
                closed.throughput,
                closed
                    .cpu_s_per_1k
                    .map_or("-".into(), |c| format!("{c:.4}")),
                single.p50_us,
                single.p99_us,
                closed.errors + single.errors,
            ));
            t.closed.push(closed);
            t.open.push(open);
            t.single.push(single);
        }
    }

    // Memory per idle session, twice. On the gateway that served the load runs, as before:
    // new sessions reuse memory the load freed without growing the RSS, which flatters the
    // figure. Then on a gateway started for the probe, past a quarter of the sessions opened
    // first to take the one-time growth: the marginal cost of one more idle session, the
    // figure the goal is checked against.
    let warm = idle_n / 4;
    say(&format!(
        "opening {idle_n} idle sessions through the loaded gateway, then through a fresh one..."
    ));
    let idle_after_load = measure::idle_memory(full.port, full.pid(), &token, 0, idle_n)?;
    let (fresh, fresh_token) = peers::gateway(bin_dir, &pg, GatewayMode::Full, cores, true)?;
    let idle_bytes =
        measure::idle_memory(fresh.port, fresh.pid(), &fresh_token, warm, idle_n - warm)?;
    drop(fresh);
    let histograms = admin_get(&full.dir.0, "/api/histograms").unwrap_or(Value::Null);

    let report = report(
        &targets,
        &rates,
        reps,
        secs,
        (idle_n, idle_bytes, idle_after_load),
        histograms,
        &pg,
        cores,
    );
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&out_dir)?;
    // A second run on the same day and machine gets `-2`, `-3`, ...: an earlier run's
    // results are never overwritten.
    let base = format!("{}-{}-e2e-postgres", today(), machine_name());
    let stem = (1..)
        .map(|n: u32| {
            if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            }
        })
        .find(|s| !out_dir.join(format!("{s}.json")).exists())
        .unwrap_or(base);
    let json_path = out_dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(
        out_dir.join(format!("{stem}-throughput.svg")),
        throughput_svg(&targets),
    )?;
    std::fs::write(
        out_dir.join(format!("{stem}-latency.svg")),
        latency_svg(&targets, &rates),
    )?;
    say(&serde_json::to_string_pretty(
        report.get("summary").unwrap_or(&Value::Null),
    )?);
    say(&format!("wrote {} and the SVG plots", json_path.display()));
    Ok(())
}

/// `--memory-only`: the fresh-gateway idle probe of a full run, `reps` times, each on a
/// gateway started for it, printed and not written.
fn memory_only(
    bin_dir: &Path,
    pg: &peers::Postgres,
    cores: usize,
    idle_n: usize,
    reps: usize,
) -> anyhow::Result<()> {
    let warm = idle_n / 4;
    let mut kib = Vec::with_capacity(reps);
    for rep in 0..reps {
        let (fresh, token) = peers::gateway(bin_dir, pg, GatewayMode::Full, cores, true)?;
        let bytes = measure::idle_memory(fresh.port, fresh.pid(), &token, warm, idle_n - warm)?;
        drop(fresh);
        say(&format!(
            "  repetition {}/{reps}: {:.1} KiB per idle session",
            rep + 1,
            bytes / 1024.0
        ));
        kib.push(bytes / 1024.0);
    }
    say(&format!(
        "memory per idle session, fresh gateway, {} sessions past {warm}: {}",
        idle_n - warm,
        serde_json::to_string(&stats(kib))?
    ));
    Ok(())
}

impl Target {
    fn new(name: &'static str, what: String, endpoint: Endpoint) -> Target {
        Target {
            name,
            what,
            endpoint,
            closed: Vec::new(),
            open: Vec::new(),
            single: Vec::new(),
        }
    }
}

fn policy_rule_count() -> String {
    format!(
        "example policies + {} generated rules",
        peers::GENERATED_RULES
    )
}

/// Median, min and max of `v` (NaN-free input assumed; NaNs sort last).
fn stats(mut v: Vec<f64>) -> Value {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let median = match v.len() % 2 {
        1 => v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
        _ => {
            let a = v.get(v.len() / 2 - 1).copied().unwrap_or(f64::NAN);
            let b = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
            (a + b) / 2.0
        }
    };
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "median": r(median),
        "min": r(v.first().copied().unwrap_or(f64::NAN)),
        "max": r(v.last().copied().unwrap_or(f64::NAN)),
        "spread_pct": r(100.0 * (v.last().copied().unwrap_or(0.0) - v.first().copied().unwrap_or(0.0)) / median.abs().max(f64::MIN_POSITIVE)),
        "samples": v.iter().map(|x| r(*x)).collect::<Vec<_>>(),
    })
}

fn median(v: Vec<f64>) -> f64 {
    stats(v)
        .get("median")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn run_stats(runs: &[Run]) -> Value {
    let col = |f: fn(&Run) -> f64| stats(runs.iter().map(f).collect());
    json!({
        "throughput_qps": col(|r| r.throughput),
        "cpu_s_per_1k_queries": col(|r| r.cpu_s_per_1k.unwrap_or(f64::NAN)),
        "loadgen_cpu_s_per_1k_queries": col(|r| r.loadgen_cpu_s_per_1k.unwrap_or(f64::NAN)),
        "machine_cpu_s_per_1k_queries": col(|r| r.machine_cpu_s_per_1k.unwrap_or(f64::NAN)),
        "machine_busy_cores": col(|r| r.machine_busy_cores.unwrap_or(f64::NAN)),
        "p50_us": col(|r| r.p50_us),
        "p90_us": col(|r| r.p90_us),
        "p99_us": col(|r| r.p99_us),
        "p99_9_us": col(|r| r.p999_us),
        "max_us": col(|r| r.max_us),
        "errors": runs.iter().map(|r| r.errors).sum::<u64>(),
    })
}

/// Per-repetition ratio `a / b` of closed-loop throughput, then the median: pairing runs of
/// the same repetition cancels slow drifts of a shared machine.
fn paired(a: &Target, b: &Target, f: fn(&Run) -> f64) -> Vec<f64> {
    a.closed
        .iter()
        .zip(&b.closed)
        .map(|(x, y)| f(x) / f(y))
        .collect()
}

fn find<'a>(targets: &'a [Target], name: &str) -> Option<&'a Target> {
    targets.iter().find(|t| t.name == name)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site assembling the report"
)]
fn report(
    targets: &[Target],
    rates: &[f64],
    reps: usize,
    secs: u64,
    (idle_n, idle_bytes, idle_after_load): (usize, f64, f64),
    histograms: Value,
    pg: &peers::Postgres,
    cores: usize,
) -> Value {
    let mut per_target = serde_json::Map::new();
    for t in targets {
        let open: Vec<Value> = rates
            .iter()
            .enumerate()
            .map(|(i, rate)| {
                let runs: Vec<Run> = t.open.iter().filter_map(|o| o.get(i).cloned()).collect();
                let last = runs
                    .last()
                    .map(|r| r.percentiles.clone())
                    .unwrap_or_default();
                json!({
                    "rate_qps": rate.round(),
                    "fraction_of_slowest_max": FRACTIONS.get(i),
                    "stats": run_stats(&runs),
                    "percentiles_us_last_rep": last,
                })
            })
            .collect();
        per_target.insert(
            t.name.into(),
            json!({
                "what": t.what,
                "closed_loop_8_clients": run_stats(&t.closed),
                "open_loop": open,
                "one_client": run_stats(&t.single),
            }),
        );
    }
    let mut summary = serde_json::Map::new();
    let mut goals = Vec::new();
    let (direct, full, relay, bouncer) = (
        find(targets, "direct"),
        find(targets, "gateway_full"),
        find(targets, "gateway_relay"),
        find(targets, "pgbouncer"),
    );
    let tp = |r: &Run| r.throughput;
    let mut goal = |name: &str, value: f64, want: f64, at_least: bool, unit: &str| {
        let met = if at_least {
            value >= want
        } else {
            value <= want
        };
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        goals.push(json!({
            "goal": name,
            "measured": r(value),
            "target": want,
            "unit": unit,
            "met": met,
            "gap": if met { 0.0 } else { r(value - want) },
        }));
    };
    if let (Some(f), Some(d)) = (full, direct) {
        let v = paired(f, d, tp);
        goal(
            "full inspection / direct throughput (8 clients)",
            median(v.clone()),
            0.6,
            true,
            "ratio",
        );
        summary.insert("full_over_direct".into(), stats(v));
        let (added, added99) = added_latency(f, d);
        goal(
            "added latency, 1 client, p50",
            median(added.clone()),
            70.0,
            false,
            "µs",
        );
        goal(
            "added latency, 1 client, p99",
            median(added99.clone()),
            150.0,
            false,
            "µs",
        );
        summary.insert("added_latency_1_client_p50_us".into(), stats(added));
        summary.insert("added_latency_1_client_p99_us".into(), stats(added99));
    }
    if let (Some(u), Some(d)) = (find(targets, "gateway_full_unpinned"), direct) {
        let (added, added99) = added_latency(u, d);
        goal(
            "added latency, 1 client, p50 (workers not pinned)",
            median(added.clone()),
            70.0,
            false,
            "µs",
        );
        goal(
            "added latency, 1 client, p99 (workers not pinned)",
            median(added99.clone()),
            150.0,
            false,
            "µs",
        );
        summary.insert(
            "added_latency_1_client_p50_us_unpinned".into(),
            stats(added),
        );
        summary.insert(
            "added_latency_1_client_p99_us_unpinned".into(),
            stats(added99),
        );
    }
    summary.insert("cpu_per_query_closed_loop".into(), cpu_budget(targets));
    if let (Some(f), Some(b)) = (full, bouncer) {
        let v = paired(f, b, tp);
        goal(
            "full inspection / PgBouncer throughput (8 clients)",
            median(v.clone()),
            1.2,
            true,
            "ratio",
        );
        summary.insert("full_over_pgbouncer".into(), stats(v));
    }
    if let (Some(f), Some(r)) = (full, relay) {
        let v = paired(f, r, tp);
        goal(
            "full inspection / pure relay throughput (8 clients)",
            median(v.clone()),
            0.85,
            true,
            "ratio",
        );
        summary.insert("full_over_relay".into(), stats(v));
    }
    if let (Some(f), Some(one)) = (full, find(targets, "gateway_full_1core")) {
        summary.insert("full_n_cores_over_1_core".into(), stats(paired(f, one, tp)));
    }
    goal(
        "memory per idle connection (fresh gateway, marginal)",
        idle_bytes / 1024.0,
        64.0,
        false,
        "KiB",
    );
    summary.insert(
        "idle_connection_kib".into(),
        json!((idle_bytes / 1024.0 * 10.0).round() / 10.0),
    );
    summary.insert(
        "idle_connection_kib_after_load".into(),
        json!((idle_after_load / 1024.0 * 10.0).round() / 10.0),
    );
    json!({
        "suite": "e2e-postgres",
        "date": today(),
        "machine": machine(cores),
        "note": "load generator, proxies and PostgreSQL share the same cores; anything else running on the machine shows in machine_busy_cores and the spread. Medians of interleaved repetitions; min/max and spread_pct show the noise.",
        "postgres": pg.version,
        "parameters": {
            "repetitions": reps,
            "seconds_per_run": secs,
            "clients": CLIENTS,
            "workload": "pgbench -S style: SELECT abalance FROM pgbench_accounts WHERE aid = <random 1..100000>, simple protocol, portcullis-loadgen",
            "open_loop_rates_qps": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "idle_connections": idle_n,
            "pgbench_scale": peers::PGBENCH_SCALE,
            "command": "cargo run --release -p bench -- e2e postgres",
        },
        "summary": summary,
        "goals": goals,
        "targets": per_target,
        "gateway_histograms_after_run": histograms,
    })
}

/// 1-client p50 and p99 of `t` minus those of `direct`, paired per repetition.
fn added_latency(t: &Target, direct: &Target) -> (Vec<f64>, Vec<f64>) {
    let diff = |f: fn(&Run) -> f64| -> Vec<f64> {
        t.single
            .iter()
            .zip(&direct.single)
            .map(|(a, b)| f(a) - f(b))
            .collect()
    };
    (diff(|r| r.p50_us), diff(|r| r.p99_us))
}

/// Where the machine's CPU goes per query in the closed-loop runs, medians over repetitions,
/// in µs: the whole machine, the proxy, the load generator, and the rest (PostgreSQL, the
/// kernel's network work not billed to a process, anything else running). When every core is
/// busy, throughput is the cores divided by the whole-machine figure, so a proxy's cost shows
/// twice: its own time, and what it adds to the others' (more wake-ups, smaller batches).
fn cpu_budget(targets: &[Target]) -> Value {
    let mut out = serde_json::Map::new();
    for t in targets {
        let m = |f: fn(&Run) -> Option<f64>| {
            median(t.closed.iter().map(|r| f(r).unwrap_or(f64::NAN)).collect())
        };
        let machine = m(|r| r.machine_cpu_s_per_1k) * 1000.0;
        let proxy = m(|r| r.cpu_s_per_1k) * 1000.0;
        let loadgen = m(|r| r.loadgen_cpu_s_per_1k) * 1000.0;
        let proxy_known = if proxy.is_finite() { proxy } else { 0.0 };
        let r = |x: f64| {
            if x.is_finite() {
                json!((x * 10.0).round() / 10.0)
            } else {
                Value::Null
            }
        };
        out.insert(
            t.name.into(),
            json!({
                "machine_us": r(machine),
                "busy_cores": r(m(|r| r.machine_busy_cores)),
                "proxy_us": r(proxy),
                "loadgen_us": r(loadgen),
                "rest_us": r(machine - proxy_known - loadgen),
            }),
        );
    }
    Value::Object(out)
}

fn throughput_svg(targets: &[Target]) -> String {
    let bars: Vec<svg::Bar> = targets
        .iter()
        .map(|t| {
            let v: Vec<f64> = t.closed.iter().map(|r| r.throughput).collect();
            let cpu = median(
                t.closed
                    .iter()
                    .map(|r| r.cpu_s_per_1k.unwrap_or(f64::NAN))
                    .collect(),
            );
            svg::Bar {
                label: t.name.replace('_', " "),
                median: median(v.clone()),
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(0.0, f64::max),
                note: if cpu.is_finite() {
                    format!("{:.1} ms CPU/1k q", cpu * 1000.0)
                } else {
                    "(no proxy)".into()
                },
            }
        })
        .collect();
    svg::bars(
        "pgbench -S style, 8 clients, closed loop: median (min-max)",
        "queries/s",
        &bars,
    )
}

fn latency_svg(targets: &[Target], rates: &[f64]) -> String {
    let mid = rates.len() / 2;
    let mut curves = Vec::new();
    for t in targets {
        if let Some(run) = t.open.last().and_then(|o| o.get(mid)) {
            curves.push(svg::Curve {
                label: t.name.replace('_', " "),
                points: run.percentiles.clone(),
            });
        }
    }
    let rate = rates.get(mid).copied().unwrap_or(0.0);
    svg::percentiles(
        &format!("latency by percentile, open loop at {rate:.0} q/s, 8 clients (last repetition)"),
        &curves,
    )
}

/// `GET path` on the gateway's admin listener, whose address is in its config file.
fn admin_get(gateway_dir: &Path, path: &str) -> anyhow::Result<Value> {
    let config = std::fs::read_to_string(gateway_dir.join("portcullis.toml"))?;
    let addr = config
        .lines()
        .find_map(|l| l.strip_prefix("admin = \""))
        .and_then(|l| l.strip_suffix('"'))
        .context("no admin address in the gateway config")?;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(serde_json::from_str(json)?)
}

fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn machine(cores: usize) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({ "hostname": machine_name(), "cpu": cpu, "cores": cores, "kernel": kernel.trim() })
}

/// Today's UTC date as `YYYY-MM-DD` (civil-from-days, no date crate needed).
pub(crate) fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
