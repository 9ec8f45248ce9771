//! When metrics records are written, and which invocation a request belongs to.
//!
//! Classic Lambda runs one invocation at a time, and the INVOKE event names it: everything the
//! extension does from one INVOKE to the next belongs to that invocation, and its record is
//! written when the next INVOKE (or SHUTDOWN) arrives. Writing then costs the finished
//! invocation nothing, and the record is stamped with the time that invocation started.
//! Lambda Managed Instances deliver no INVOKE to extensions and run invocations side by side,
//! so there a record covers a fixed interval, written by a timer (the environment is never
//! frozen). <https://docs.aws.amazon.com/lambda/latest/dg/lambda-managed-instances.html>

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::Span;
use warmpool::protocol::{Invocation, Stats};

use crate::config::Observability;
use crate::emf::{self, Phase};
use crate::lifecycle::now_ms;
use crate::logging::invocation_span;
use crate::metrics::Meter;

/// Where records go: a line each.
pub type Sink = Box<dyn Fn(&str) + Send + Sync>;

/// The window a record will cover.
#[derive(Debug)]
struct Window {
    phase: Phase,
    started_ms: u64,
    /// The classic invocation in progress, and its span.
    invocation: Option<(Arc<Invocation>, Span)>,
}

/// The extension's counters and how they are reported.
pub struct Telemetry {
    meter: Arc<Meter>,
    settings: Observability,
    sink: Sink,
    window: Mutex<Window>,
    invocations: AtomicU64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Records go to stdout, where Lambda's log capture picks them up.
    pub fn new(meter: Arc<Meter>, settings: Observability) -> Telemetry {
        Telemetry::with_sink(
            meter,
            settings,
            Box::new(|line| {
                // One write of the whole line under stdout's lock, so it never interleaves
                // with a log line.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }),
        )
    }

    /// Records go to `sink` (tests collect them).
    pub fn with_sink(meter: Arc<Meter>, settings: Observability, sink: Sink) -> Telemetry {
        Telemetry {
            meter,
            settings,
            sink,
            window: Mutex::new(Window {
                phase: Phase::Init,
                started_ms: now_ms(),
                invocation: None,
            }),
            invocations: AtomicU64::new(0),
        }
    }

    /// INVOKE events seen (classic Lambda).
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The settings.
    pub fn settings(&self) -> &Observability {
        &self.settings
    }

    /// A classic INVOKE: writes the record of what came before (the previous invocation, or
    /// Init), and starts counting for this one. Returns the invocation's span.
    pub fn on_invoke(&self, request_id: &str, trace_id: &str) -> Span {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let span = invocation_span(request_id, trace_id);
        let ids = Arc::new(Invocation {
            request_id: request_id.to_owned(),
            trace_id: trace_id.to_owned(),
        });
        let next = Window {
            phase: Phase::Invoke,
            started_ms: now_ms(),
            invocation: Some((ids, span.clone())),
        };
        self.rotate(next);
        span
    }

    /// A metrics interval ended (Managed Instances, local mode): writes its record.
    pub fn on_interval(&self) {
        self.rotate(Window {
            phase: Phase::Interval,
            started_ms: now_ms(),
            invocation: None,
        });
    }

    /// SHUTDOWN: writes the record of the last window. What happens after it (closing
    /// connections) is in the SHUTDOWN log line.
    pub fn on_shutdown(&self) {
        self.rotate(Window {
            phase: Phase::Shutdown,
            started_ms: now_ms(),
            invocation: None,
        });
    }

    /// The classic invocation in progress, for requests from sessions that named none.
    pub fn current(&self) -> Option<(Arc<Invocation>, Span)> {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .invocation
            .clone()
    }

    /// The counters `Client::stats` answers with: those of the invocation the session named, or
    /// else the current window's (on classic Lambda, the invocation in progress).
    pub fn stats(&self, named: Option<&Invocation>) -> Stats {
        if let Some(i) = named.filter(|i| !i.request_id.is_empty()) {
            return self.meter.invocation(&i.request_id).snapshot(&i.request_id);
        }
        let request_id = self
            .current()
            .map(|(i, _)| i.request_id.clone())
            .unwrap_or_default();
        self.meter.window(&request_id)
    }

    fn rotate(&self, next: Window) {
        let ended = std::mem::replace(
            &mut *self.window.lock().unwrap_or_else(|p| p.into_inner()),
            next,
        );
        let request_id = ended
            .invocation
            .as_ref()
            .map(|(i, _)| i.request_id.clone())
            .unwrap_or_default();
        let stats = self.meter.take_window(&request_id);
        if !self.settings.metrics {
            return;
        }
        let ids = ended.invocation.as_ref().map(|(i, _)| &**i);
        let record = emf::record(
            &emf::Record {
                namespace: &self.settings.namespace,
                function_name: &self.settings.function_name,
                timestamp_ms: ended.started_ms,
                phase: if ended.phase == Phase::Shutdown {
                    // Nothing follows SHUTDOWN; a window that ends there is an interval.
                    Phase::Interval
                } else {
                    ended.phase
                },
                request_id: ids.map(|i| i.request_id.as_str()),
                trace_id: ids.map(|i| i.trace_id.as_str()),
                fleet: self.settings.fleet_metrics,
            },
            &stats,
        );
        (self.sink)(&record.to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::config::{defaults, LogFormat};
    use crate::metrics::Event;

    fn settings(metrics: bool) -> Observability {
        Observability {
            log_format: LogFormat::Json,
            metrics,
            namespace: defaults::METRICS_NAMESPACE.into(),
            metrics_interval: Duration::from_secs(60),
            slow_pool_wait: Duration::from_millis(100),
            function_name: "orders".into(),
            fleet_metrics: false,
        }
    }

    fn collecting(metrics: bool) -> (Telemetry, Arc<Mutex<Vec<Value>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let t = Telemetry::with_sink(
            Arc::new(Meter::new(8)),
            settings(metrics),
            Box::new(move |l| sink.lock().unwrap().push(serde_json::from_str(l).unwrap())),
        );
        (t, lines)
    }

    #[test]
    fn each_invocation_gets_its_own_record_written_at_the_next_event() {
        let (t, lines) = collecting(true);
        t.meter().add(Event::ConnectionCreated);
        t.on_invoke("r1", "Root=1-a");
        let query = Event::Query {
            rows: 2,
            time: Duration::from_millis(3),
        };
        t.meter().add(query);
        t.meter().add(query);
        assert_eq!(t.stats(None).queries, 2);
        assert_eq!(t.stats(None).request_id, "r1");
        t.on_invoke("r2", "");
        t.meter().add(Event::Error("57014"));
        t.on_shutdown();

        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        for l in lines.iter() {
            warmpool_tests::emf::validate(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        }
        assert_eq!(lines[0]["Phase"], "Init");
        assert_eq!(lines[0]["ConnectionsCreated"], 1.0);
        assert!(lines[0].get("RequestId").is_none());
        assert_eq!(lines[1]["Phase"], "Invoke");
        assert_eq!(lines[1]["RequestId"], "r1");
        assert_eq!(lines[1]["TraceId"], "Root=1-a");
        assert_eq!(lines[1]["Queries"], 2.0);
        assert_eq!(lines[1]["Rows"], 4.0);
        assert_eq!(lines[1]["DatabaseTime"], 6.0);
        assert_eq!(lines[2]["RequestId"], "r2");
        assert_eq!(lines[2]["Errors_57"], 1.0);
        assert_eq!(lines[2]["Queries"], 0.0);
    }

    #[tokio::test]
    async fn a_named_invocation_has_its_own_counters() {
        let (t, _) = collecting(true);
        let named = Invocation {
            request_id: "lmi-1".into(),
            trace_id: String::new(),
        };
        let counters = t.meter().invocation("lmi-1");
        Meter::scoped(Some(counters), async {
            t.meter().add(Event::PoolWait(Duration::from_micros(40)));
        })
        .await;
        t.meter().add(Event::PoolWait(Duration::from_micros(60)));
        let s = t.stats(Some(&named));
        assert_eq!((s.request_id.as_str(), s.pool_wait_us), ("lmi-1", 40));
        let w = t.stats(None);
        assert_eq!((w.request_id.as_str(), w.pool_wait_us), ("", 100));
    }

    #[test]
    fn metrics_off_writes_nothing_but_still_counts() {
        let (t, lines) = collecting(false);
        t.on_invoke("r1", "");
        t.meter().add(Event::CacheHit);
        assert_eq!(t.stats(None).cache_hits, 1);
        t.on_interval();
        assert!(lines.lock().unwrap().is_empty());
    }
}
