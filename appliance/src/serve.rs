//! Runs a loaded configuration: signals, data plane, admin listener, shutdown. Shared by
//! `run` and `demo` so the demo exercises exactly what production runs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dataplane::audit::LogAuditHook;
use dataplane::config::Config;
use dataplane::runtime::{DriverChoice, Gateway, ShutdownHandle, StartError};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::cmd::{EXIT_CONFIG, EXIT_RUNTIME};

/// Starts everything, calls `started` with the running gateway and the admin address, then
/// blocks until a shutdown signal has been handled and every worker has drained.
pub fn serve(
    config: &Config,
    driver: DriverChoice,
    started: impl FnOnce(&Gateway, SocketAddr),
) -> ExitCode {
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
                    SIGHUP => tracing::info!(
                        "SIGHUP received: reserved for policy reload, nothing to reload in this build"
                    ),
                    _ if stopping => {
                        tracing::warn!(signal = sig, "second shutdown signal: exiting without waiting for the drain");
                        std::process::exit(i32::from(EXIT_RUNTIME));
                    }
                    _ => {
                        stopping = true;
                        tracing::info!(signal = sig, "shutdown requested: no new connections, draining sessions");
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

    let gateway = match Gateway::start(config, driver, Arc::new(LogAuditHook)) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            // A connection this build cannot serve is a config problem, not a runtime one.
            let code = match e {
                StartError::UnsupportedProtocol { .. } => EXIT_CONFIG,
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

    let admin = match crate::admin::spawn(
        config.gateway.admin,
        crate::admin::base_router(gateway.metrics()),
    ) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(addr = %config.gateway.admin, error = %e, "cannot bind the admin listener");
            handle.shutdown();
            let _ = gateway.wait();
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let drivers: Vec<&str> = gateway.drivers().iter().map(|d| d.as_str()).collect();
    tracing::info!(admin = %admin, workers = drivers.len(), drivers = ?drivers, "portcullis ready");
    started(&gateway, admin);

    match gateway.wait() {
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
