//! Metrics as CloudWatch Embedded Metric Format records: one JSON object per line on stdout,
//! which CloudWatch Logs turns into metrics with no agent and no API call.
//! <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use serde_json::{json, Map, Value};
use warmpool::protocol::Stats;

/// The specification's limit of metrics per directive.
pub const MAX_METRICS: usize = 100;

/// Metrics that are in every record; the per-class error counts follow them.
const FIXED: &[(&str, &str)] = &[
    ("Queries", "Count"),
    ("Rows", "Count"),
    ("DatabaseTime", "Milliseconds"),
    ("PoolWaitTime", "Milliseconds"),
    ("ConnectionsCreated", "Count"),
    ("ConnectionsReplaced", "Count"),
    ("CacheHits", "Count"),
    ("StateHits", "Count"),
    ("Errors", "Count"),
];

/// The fleet budget's metrics, in records of environments that have one.
const FLEET: &[(&str, &str)] = &[
    ("FleetSlotsTaken", "Count"),
    ("FleetWaits", "Count"),
    ("FleetWaitTime", "Milliseconds"),
    ("FleetRefusals", "Count"),
];

/// What a record covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// From start to the first invocation: warm-up, and the function's own Init.
    Init,
    /// One invocation (classic Lambda).
    Invoke,
    /// A fixed interval (Lambda Managed Instances, local mode).
    Interval,
    /// From the last record to SHUTDOWN.
    Shutdown,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Init => "Init",
            Phase::Invoke => "Invoke",
            Phase::Interval => "Interval",
            Phase::Shutdown => "Shutdown",
        }
    }
}

/// One record's context.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The CloudWatch namespace (`WARMPOOL_METRICS_NAMESPACE`).
    pub namespace: &'a str,
    /// The `FunctionName` dimension.
    pub function_name: &'a str,
    /// When the period the record covers began, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// What the record covers.
    pub phase: Phase,
    /// The invocation's request id, for an Invoke record.
    pub request_id: Option<&'a str>,
    /// Whether the fleet budget's metrics are in the record.
    pub fleet: bool,
    /// The invocation's X-Ray trace header, when traced.
    pub trace_id: Option<&'a str>,
}

/// `stats` as one EMF record.
pub fn record(r: &Record<'_>, stats: &Stats) -> Value {
    let mut top = Map::new();
    let ms = |us: u64| us as f64 / 1000.0;
    let values = [
        stats.queries as f64,
        stats.rows as f64,
        ms(stats.database_time_us),
        ms(stats.pool_wait_us),
        stats.connections_created as f64,
        stats.connections_replaced as f64,
        stats.cache_hits as f64,
        stats.state_hits as f64,
        stats.total_errors() as f64,
    ];
    let fleet = [
        stats.fleet_slots_taken as f64,
        stats.fleet_waits as f64,
        ms(stats.fleet_wait_us),
        stats.fleet_refusals as f64,
    ];
    let mut metrics = Vec::new();
    let fleet = FLEET.iter().zip(fleet).filter(|_| r.fleet);
    for ((name, unit), value) in FIXED.iter().zip(values).chain(fleet) {
        metrics.push(json!({"Name": name, "Unit": unit}));
        top.insert((*name).into(), json!(value));
    }
    // There are far fewer SQLSTATE classes than the limit, but a record over it would be
    // rejected whole: the classes past it are left out (the Errors total still counts them).
    for (class, n) in stats.errors.iter().take(MAX_METRICS - metrics.len()) {
        let name = format!("Errors_{class}");
        metrics.push(json!({"Name": name, "Unit": "Count"}));
        top.insert(name, json!(*n as f64));
    }
    top.insert("FunctionName".into(), json!(r.function_name));
    top.insert("Phase".into(), json!(r.phase.as_str()));
    if let Some(id) = r.request_id.filter(|s| !s.is_empty()) {
        top.insert("RequestId".into(), json!(id));
    }
    if let Some(t) = r.trace_id.filter(|s| !s.is_empty()) {
        top.insert("TraceId".into(), json!(t));
    }
    top.insert(
        "_aws".into(),
        json!({
            "Timestamp": r.timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": r.namespace,
                "Dimensions": [["FunctionName"]],
                "Metrics": metrics,
            }],
        }),
    );
    Value::Object(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpool_tests::emf::validate;

    fn context() -> Record<'static> {
        Record {
            namespace: "warmpool",
            function_name: "orders",
            timestamp_ms: 1_764_000_000_000,
            phase: Phase::Invoke,
            request_id: Some("8476a536-e9f4-11e8-9739-2dfe598c3fcd"),
            trace_id: Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"),
            fleet: false,
        }
    }

    #[test]
    fn a_record_with_every_counter_is_valid_emf() {
        let stats = Stats {
            request_id: String::new(),
            queries: 7,
            rows: 12,
            database_time_us: 1500,
            pool_wait_us: 250,
            connections_created: 1,
            connections_replaced: 1,
            cache_hits: 0,
            state_hits: 0,
            errors: vec![("08".into(), 1), ("23".into(), 2)],
            fleet_slots_taken: 2,
            fleet_waits: 1,
            fleet_wait_us: 3000,
            fleet_refusals: 0,
        };
        let v = record(&context(), &stats);
        validate(&v).unwrap_or_else(|e| panic!("{e}: {v}"));
        assert!(
            v.get("FleetSlotsTaken").is_none(),
            "fleet metrics without a fleet budget"
        );
        let v = record(
            &Record {
                fleet: true,
                ..context()
            },
            &stats,
        );
        validate(&v).unwrap_or_else(|e| panic!("{e}: {v}"));
        assert_eq!(v["Queries"], 7.0);
        assert_eq!(v["DatabaseTime"], 1.5);
        assert_eq!(v["PoolWaitTime"], 0.25);
        assert_eq!(v["Errors"], 3.0);
        assert_eq!(v["Errors_23"], 2.0);
        assert_eq!(v["FleetSlotsTaken"], 2.0);
        assert_eq!(v["FleetWaitTime"], 3.0);
        assert_eq!(v["RequestId"], "8476a536-e9f4-11e8-9739-2dfe598c3fcd");
        assert_eq!(v["_aws"]["Timestamp"], 1_764_000_000_000u64);
        // One line, as CloudWatch Logs reads it.
        assert!(!v.to_string().contains('\n'));
    }

    #[test]
    fn an_empty_window_is_valid_with_zeros() {
        let mut r = context();
        r.phase = Phase::Interval;
        r.request_id = None;
        r.trace_id = Some("");
        let v = record(&r, &Stats::default());
        validate(&v).unwrap_or_else(|e| panic!("{e}: {v}"));
        assert_eq!(v["Queries"], 0.0);
        assert!(v.get("RequestId").is_none() && v.get("TraceId").is_none());
    }

    #[test]
    fn error_classes_past_the_metric_limit_are_left_out() {
        let stats = Stats {
            errors: (0..300).map(|i| (format!("{i:02}"), 1)).collect(),
            ..Stats::default()
        };
        let v = record(&context(), &stats);
        validate(&v).unwrap_or_else(|e| panic!("{e}"));
        let metrics = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        assert_eq!(metrics.len(), MAX_METRICS);
        assert_eq!(v["Errors"], 300.0, "the total still counts every error");
    }

    #[test]
    fn the_validator_rejects_what_the_specification_forbids() {
        let good = record(&context(), &Stats::default());
        type Breaks = Box<dyn Fn(&mut Value)>;
        let broken: Vec<(&str, Breaks)> = vec![
            (
                "no _aws",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("_aws"))),
            ),
            (
                "no timestamp",
                Box::new(|v| drop(v["_aws"].as_object_mut().unwrap().remove("Timestamp"))),
            ),
            (
                "bad unit",
                Box::new(|v| {
                    v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Widgets")
                }),
            ),
            (
                "metric missing",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("Queries"))),
            ),
            (
                "dimension missing",
                Box::new(|v| drop(v.as_object_mut().unwrap().remove("FunctionName"))),
            ),
            (
                "dimension not a string",
                Box::new(|v| v["FunctionName"] = json!(3)),
            ),
            (
                "no namespace",
                Box::new(|v| {
                    drop(
                        v["_aws"]["CloudWatchMetrics"][0]
                            .as_object_mut()
                            .unwrap()
                            .remove("Namespace"),
                    )
                }),
            ),
            ("metric not a number", Box::new(|v| v["Rows"] = json!("12"))),
        ];
        for (what, breaks) in broken {
            let mut v = good.clone();
            breaks(&mut v);
            assert!(validate(&v).is_err(), "accepted a record with {what}: {v}");
        }
    }
}
