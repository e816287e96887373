//! Per-worker, per-connection counters, latency histograms and their Prometheus text rendering.
//!
//! Each worker writes only its own counters (relaxed atomics on cache lines it alone writes);
//! the admin thread reads them all when scraped. There is no merge step on the data path. The
//! latency histograms ([`latency`]) sit behind a per-(worker, connection) mutex that only the
//! owning worker and the scraper touch; the module says why. This module does not serve HTTP:
//! the admin listener calls [`Metrics::render`] and [`Metrics::latency`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub mod latency;

pub use latency::{CommandClock, Latency, LatencySet, StageTimes};

/// Why a session or an accept failed, as counted in `portcullis_errors_total{kind=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The upstream actively refused the connection (RST).
    UpstreamRefused,
    /// No route, host down, DNS gave nothing usable.
    UpstreamUnreachable,
    /// The upstream did not complete the handshake within `connect_timeout`.
    UpstreamConnectTimeout,
    /// Reading from or writing to the upstream failed mid-session.
    UpstreamIo,
    /// Reading from or writing to the client failed mid-session.
    ClientIo,
    /// No bytes either way for `idle_timeout`.
    IdleTimeout,
    /// `accept` itself failed (e.g. out of file descriptors).
    Accept,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::UpstreamRefused,
        ErrorKind::UpstreamUnreachable,
        ErrorKind::UpstreamConnectTimeout,
        ErrorKind::UpstreamIo,
        ErrorKind::ClientIo,
        ErrorKind::IdleTimeout,
        ErrorKind::Accept,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UpstreamRefused => "upstream_refused",
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamConnectTimeout => "upstream_connect_timeout",
            ErrorKind::UpstreamIo => "upstream_io",
            ErrorKind::ClientIo => "client_io",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Accept => "accept",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one connection on one worker. Aligned to its own cache lines so two workers
/// never write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ConnCounters {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub rejected: AtomicU64,
    pub bytes_client_to_upstream: AtomicU64,
    pub bytes_upstream_to_client: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Written once per command by the owning worker, copied by the scraper.
    latency: latency::LatencySlot,
}

impl ConnCounters {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn error(&self, kind: ErrorKind) {
        if let Some(c) = self.errors.get(kind.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors
            .get(kind.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Name, type, help text and reader of one per-connection series.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ConnCounters) -> u64,
);

/// One worker's counters: one [`ConnCounters`] per configured connection, in config order.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Set once every listener of this worker accepts.
    pub listening: AtomicBool,
    pub connections: Vec<ConnCounters>,
}

/// All counters of the process.
#[derive(Debug)]
pub struct Metrics {
    connection_names: Vec<String>,
    pub workers: Vec<WorkerMetrics>,
}

impl Metrics {
    pub fn new(workers: usize, connection_names: Vec<String>) -> Metrics {
        let workers = (0..workers)
            .map(|_| WorkerMetrics {
                listening: AtomicBool::new(false),
                connections: connection_names
                    .iter()
                    .map(|_| ConnCounters::default())
                    .collect(),
            })
            .collect();
        Metrics {
            connection_names,
            workers,
        }
    }

    /// True once every worker listens on every connection.
    pub fn ready(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.listening.load(Ordering::Acquire))
    }

    /// The counters in Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let series: [Series; 5] = [
            (
                "portcullis_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                |c| c.accepted.load(Ordering::Relaxed),
            ),
            (
                "portcullis_connections_active",
                "gauge",
                "Sessions currently open.",
                |c| c.active.load(Ordering::Relaxed),
            ),
            (
                "portcullis_connections_rejected_total",
                "counter",
                "Client connections closed at accept because a connection limit was reached.",
                |c| c.rejected.load(Ordering::Relaxed),
            ),
            (
                "portcullis_bytes_client_to_upstream_total",
                "counter",
                "Bytes read from clients and written to upstreams.",
                |c| c.bytes_client_to_upstream.load(Ordering::Relaxed),
            ),
            (
                "portcullis_bytes_upstream_to_client_total",
                "counter",
                "Bytes read from upstreams and written to clients.",
                |c| c.bytes_upstream_to_client.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            self.each(|worker, conn, c| {
                let _ = writeln!(
                    out,
                    "{name}{{worker=\"{worker}\",connection=\"{conn}\"}} {}",
                    get(c)
                );
            });
        }
        let name = "portcullis_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Session and accept failures by kind.\n# TYPE {name} counter"
        );
        self.each(|worker, conn, c| {
            for kind in ErrorKind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{worker=\"{worker}\",connection=\"{conn}\",kind=\"{}\"}} {}",
                    kind.as_str(),
                    c.errors(kind)
                );
            }
        });
        let name = "portcullis_worker_listening";
        let _ = writeln!(
            out,
            "# HELP {name} 1 once the worker listens on every connection.\n# TYPE {name} gauge"
        );
        for (i, w) in self.workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{i}\"}} {}",
                u8::from(w.listening.load(Ordering::Acquire))
            );
        }
        latency::render_prometheus(&self.latency(), &mut out);
        out
    }

    /// Each worker's latency histograms, merged over its connections (`None`: no sample yet).
    pub fn latency(&self) -> Vec<Option<LatencySet>> {
        self.workers
            .iter()
            .map(|w| {
                w.connections
                    .iter()
                    .filter_map(ConnCounters::latency_snapshot)
                    .reduce(|mut a, b| {
                        a.merge(&b);
                        a
                    })
            })
            .collect()
    }

    fn each(&self, mut f: impl FnMut(usize, &str, &ConnCounters)) {
        for (wi, w) in self.workers.iter().enumerate() {
            for (name, c) in self.connection_names.iter().zip(&w.connections) {
                // Connection names are validated to `[a-z0-9_-]`, so they need no escaping.
                f(wi, name, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series() {
        let m = Metrics::new(2, vec!["web".into()]);
        let c = &m.workers[1].connections[0];
        ConnCounters::add(&c.accepted, 3);
        c.error(ErrorKind::UpstreamRefused);
        let text = m.render();
        assert!(
            text.contains(
                "portcullis_connections_accepted_total{worker=\"1\",connection=\"web\"} 3"
            )
        );
        assert!(
            text.contains(
                "portcullis_connections_accepted_total{worker=\"0\",connection=\"web\"} 0"
            )
        );
        assert!(text.contains(
            "portcullis_errors_total{worker=\"1\",connection=\"web\",kind=\"upstream_refused\"} 1"
        ));
        assert!(!m.ready());
        for w in &m.workers {
            w.listening.store(true, Ordering::Release);
        }
        assert!(m.ready());
    }
}
