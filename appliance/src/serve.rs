//! Runs a loaded configuration: services (policy, identity, recorder), signals, data plane,
//! admin listener, shutdown. Shared by `run` and `demo` so the demo exercises exactly what
//! production runs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dataplane::config::Config;
use dataplane::grants::{GRANTS_FILE, GrantStore};
use dataplane::identity::now_unix;
use dataplane::identity::{JwksRefresher, KeyStore, RefresherThread, Verifier};
use dataplane::reviews::{Notifier, NotifyConfig, ReviewRegistry};
use dataplane::runtime::{DriverChoice, Gateway, ShutdownHandle, StartError};
use dataplane::services::{PolicyStore, Services, load_mask_key};
use recorder::{Recorder, Table};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::cmd::{EXIT_CONFIG, EXIT_RUNTIME};

/// The recorder as the admin thread and shutdown share it.
type SharedRecorder = Arc<Mutex<Option<Recorder>>>;

/// Builds the recorder's own config from `[recorder]` and `[gateway] recordings`.
fn recorder_config(config: &Config) -> recorder::RecorderConfig {
    let r = &config.recorder;
    recorder::RecorderConfig {
        dir: config.gateway.recordings.clone(),
        flush_interval: r.flush_interval,
        segment_max_bytes: r.segment_max_bytes,
        segment_max_age: r.segment_max_age,
        retention_age: r.retention_age.unwrap_or_default(),
        retention_bytes: r.retention_bytes.unwrap_or_default(),
        on_full: match r.on_full {
            dataplane::config::OnFull::FailClosed => recorder::OnFull::FailClosed,
            dataplane::config::OnFull::Block => recorder::OnFull::Block,
        },
        ..recorder::RecorderConfig::default()
    }
}

/// Everything started before the workers: what they share, and what must be stopped after.
struct Started {
    services: Arc<Services>,
    recorder: SharedRecorder,
    refresher: Option<RefresherThread>,
}

fn start_services(config: &Config) -> Result<Started, (u8, String)> {
    let cfg = |e: String| (EXIT_CONFIG, e);
    let key = load_mask_key(
        config.gateway.mask_key_file.as_deref(),
        &config.gateway.recordings,
    )
    .map_err(|e| cfg(e.to_string()))?;
    let policy =
        PolicyStore::load(&config.gateway.policies, key).map_err(|e| cfg(e.to_string()))?;
    tracing::info!(dir = %config.gateway.policies.display(), version = %policy.current().version, "policy loaded");
    let (verifier, refresher, grace) = match &config.identity {
        None => {
            tracing::warn!("no [identity] configured: postgres connections refuse every caller");
            (None, None, std::time::Duration::ZERO)
        }
        Some(icfg) => {
            let keys = Arc::new(KeyStore::new());
            let mut refresher = JwksRefresher::new(icfg.clone(), Arc::clone(&keys));
            let n = refresher
                .refresh_now()
                .map_err(|e| cfg(format!("[identity]: cannot load the issuer's keys: {e}")))?;
            tracing::info!(issuer = %icfg.issuer, keys = n, "identity keys loaded");
            let verifier = Verifier::with_refresh(icfg.clone(), keys, refresher.handle());
            let thread = refresher.spawn().map_err(|e| {
                (
                    EXIT_RUNTIME,
                    format!("cannot start the jwks refresher: {e}"),
                )
            })?;
            (Some(verifier), Some(thread), icfg.session_grace())
        }
    };
    // One producer per worker, plus one for the control plane (review events).
    let (recorder, mut producers) =
        Recorder::start(recorder_config(config), config.gateway.workers + 1)
            .map_err(|e| (EXIT_RUNTIME, format!("cannot start the recorder: {e}")))?;
    let control = producers.pop();
    let grants_path = config.gateway.recordings.join(GRANTS_FILE);
    let grants = GrantStore::load(&grants_path, now_unix()).map_err(|e| cfg(e.to_string()))?;
    let (notifier, queue) = Notifier::new(NotifyConfig::default());
    let reviews = ReviewRegistry::new(control, Some(notifier), Arc::new(grants));
    let services =
        Arc::new(Services::new(policy, verifier, grace, producers).with_reviews(reviews));
    let weak = Arc::downgrade(&services);
    queue
        .spawn(move |job, outcome| {
            if let Some(s) = weak.upgrade() {
                s.reviews.notified(job, outcome);
            }
        })
        .map_err(|e| (EXIT_RUNTIME, format!("cannot start the notifier: {e}")))?;
    Ok(Started {
        services,
        recorder: Arc::new(Mutex::new(Some(recorder))),
        refresher,
    })
}

/// Prometheus lines for the policy and the recorder, appended to the data plane's.
fn render_services(services: &Services, recorder: &SharedRecorder, out: &mut String) {
    services.policy.render_metrics(out);
    let guard = recorder.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(r) = guard.as_ref() else { return };
    let st = r.stats();
    let _ = writeln!(
        out,
        "# HELP portcullis_recorder_rows_written_total Rows written per audit table.\n# TYPE portcullis_recorder_rows_written_total counter"
    );
    for t in Table::ALL {
        let _ = writeln!(
            out,
            "portcullis_recorder_rows_written_total{{table=\"{}\"}} {}",
            t.name(),
            st.rows(t)
        );
    }
    let _ = writeln!(
        out,
        "# HELP portcullis_recorder_queue_full_total Times a worker found its record queue full.\n# TYPE portcullis_recorder_queue_full_total counter\nportcullis_recorder_queue_full_total {}\n# HELP portcullis_recorder_refused_total Records refused (fail closed).\n# TYPE portcullis_recorder_refused_total counter\nportcullis_recorder_refused_total {}\n# HELP portcullis_recorder_queued Records waiting for the writer.\n# TYPE portcullis_recorder_queued gauge\nportcullis_recorder_queued {}\n# HELP portcullis_recorder_segments_sealed_total Segments sealed to Parquet.\n# TYPE portcullis_recorder_segments_sealed_total counter\nportcullis_recorder_segments_sealed_total {}\n# HELP portcullis_recorder_seal_errors_total Sealing failures.\n# TYPE portcullis_recorder_seal_errors_total counter\nportcullis_recorder_seal_errors_total {}\n# HELP portcullis_recorder_writer_failed 1 when the writer thread has failed.\n# TYPE portcullis_recorder_writer_failed gauge\nportcullis_recorder_writer_failed {}",
        st.queue_full_events,
        st.refused,
        st.queued,
        st.segments_sealed,
        st.seal_errors,
        u8::from(st.writer_failed)
    );
}

/// Flushes and seals the recordings, then stops the refresher.
fn stop_services(started: Started) {
    let recorder = started
        .recorder
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(r) = recorder {
        match r.shutdown() {
            Ok(()) => tracing::info!("recordings flushed and sealed"),
            Err(e) => tracing::error!(error = %e, "recorder shutdown failed"),
        }
    }
    if let Some(t) = started.refresher {
        t.shutdown();
    }
}

/// Starts everything, calls `started` with the running gateway and the admin address, then
/// blocks until a shutdown signal has been handled and every worker has drained.
pub fn serve(
    config: &Config,
    driver: DriverChoice,
    started: impl FnOnce(&Gateway, SocketAddr),
) -> ExitCode {
    let started_services = match start_services(config) {
        Ok(s) => s,
        Err((code, e)) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(code);
        }
    };
    let services = Arc::clone(&started_services.services);
    let reload = Arc::clone(&services);
    // Signals are registered before any worker starts, so an early SIGTERM is a clean
    // shutdown rather than the default abrupt exit.
    let pending = Arc::new(AtomicBool::new(false));
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let early = pending.clone();
    let signal_thread_handle: Arc<std::sync::Mutex<Option<ShutdownHandle>>> = Arc::default();
    let slot = signal_thread_handle.clone();
    let spawned = std::thread::Builder::new()
        .name("portcullis-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                match sig {
                    // New sessions get the new policy; live ones keep theirs. A bad policy is
                    // logged and the running one stays.
                    SIGHUP => match reload.policy.reload() {
                        Ok(version) => tracing::info!(%version, "SIGHUP: policy reloaded"),
                        Err(e) => tracing::error!(
                            "SIGHUP: policy reload rejected, keeping the running policy: {e}"
                        ),
                    },
                    _ if stopping => {
                        tracing::warn!(
                            signal = sig,
                            "second shutdown signal: exiting without waiting for the drain"
                        );
                        std::process::exit(i32::from(EXIT_RUNTIME));
                    }
                    _ => {
                        stopping = true;
                        tracing::info!(
                            signal = sig,
                            "shutdown requested: no new connections, draining sessions"
                        );
                        early.store(true, Ordering::Release);
                        if let Ok(guard) = slot.lock()
                            && let Some(h) = guard.as_ref()
                        {
                            h.shutdown();
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the signal thread");
        return ExitCode::from(EXIT_RUNTIME);
    }

    let gateway = match Gateway::start(config, driver, Arc::clone(&services)) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            stop_services(started_services);
            // A connection this build cannot serve is a config problem, not a runtime one.
            let code = match e {
                StartError::UnsupportedProtocol { .. } | StartError::Route(_) => EXIT_CONFIG,
                _ => EXIT_RUNTIME,
            };
            return ExitCode::from(code);
        }
    };
    let handle = gateway.shutdown_handle();
    if let Ok(mut guard) = signal_thread_handle.lock() {
        *guard = Some(handle.clone());
    }
    // A signal that arrived while the workers were starting found no handle yet.
    if pending.load(Ordering::Acquire) {
        handle.shutdown();
    }

    let extra_services = Arc::clone(&services);
    let extra_recorder = Arc::clone(&started_services.recorder);
    let extra: crate::admin::ExtraMetrics =
        Arc::new(move |out: &mut String| render_services(&extra_services, &extra_recorder, out));
    let admin = match crate::admin::spawn(
        config.gateway.admin,
        crate::admin_api::routes(
            crate::histograms::routes(
                crate::admin::base_router(gateway.metrics(), extra),
                gateway.metrics(),
            ),
            &services,
        ),
    ) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(addr = %config.gateway.admin, error = %e, "cannot bind the admin listener");
            handle.shutdown();
            let _ = gateway.wait();
            stop_services(started_services);
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let drivers: Vec<&str> = gateway.drivers().iter().map(|d| d.as_str()).collect();
    tracing::info!(admin = %admin, workers = drivers.len(), drivers = ?drivers, "portcullis ready");
    started(&gateway, admin);

    let waited = gateway.wait();
    stop_services(started_services);
    match waited {
        Ok(()) => {
            tracing::info!("all workers stopped; exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
