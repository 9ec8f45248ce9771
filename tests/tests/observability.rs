//! Logs, metrics and per-invocation stats, end to end: the real extension in the local Lambda
//! with the example `orders` function, and in local mode.

use std::time::Duration;

use serde_json::{json, Value};
use warmpool::SqlState;
use warmpool_tests::{emf, logs, Extension, LambdaEnv, PgServer};

/// A guard for waiting on output: not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

/// What the extension wrote on stdout, in order.
fn extension_stdout(env: &LambdaEnv) -> Vec<String> {
    env.lambda
        .output()
        .into_iter()
        .filter(|l| {
            l.process.contains("extension:warmpool") && l.stream == local_lambda::Stream::Stdout
        })
        .map(|l| l.line)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_lambda_logs_json_with_request_ids_and_one_metrics_record_per_invocation() {
    let pg = PgServer::start();
    // Every thaw checks the idle connection, so one killed during a freeze is replaced (and
    // logged) inside the next invocation.
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_CHECK_AFTER_IDLE_MS", "0")]);
    env.call(json!({"action": "setup"})).await;

    let inv = env.invoke(json!({"action": "stats", "queries": 3})).await;
    let stats = match &inv.outcome {
        local_lambda::Outcome::Ok(v) => v.clone(),
        other => panic!("{other:?}\n{}", env.output()),
    };
    assert_eq!(stats["request_id"], inv.request_id.as_str(), "{stats}");
    assert_eq!(stats["queries"], 3, "{stats}");
    assert_eq!(stats["rows"], 3, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");

    // A value that must never reach the logs, though the log level is debug.
    let secret_param = "param-value-6f1c";
    env.call(json!({"action": "create", "customer": secret_param, "item": "lamp", "qty": 1}))
        .await;
    // A statement that fails: counted under its SQLSTATE class.
    let failed = env
        .invoke(json!({"action": "create", "customer": "ada", "item": "lamp", "qty": 0}))
        .await;
    assert!(!failed.outcome.is_ok(), "qty 0 breaks the CHECK constraint");

    // A connection killed during a freeze: its replacement is logged in the next invocation.
    let pid: i64 = env.call(json!({"action": "backend"})).await["pid"]
        .as_i64()
        .unwrap();
    assert!(env.lambda.is_frozen());
    let admin = pg.tokio_client().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&(pid as i32)])
        .await
        .unwrap();
    let after = env.invoke(json!({"action": "backend"})).await;
    assert!(after.outcome.is_ok(), "{:?}", after.outcome);
    let last = env.invoke(json!({"action": "noop"})).await;
    assert!(last.outcome.is_ok());

    let report = env.lambda.shutdown().await;
    assert!(report.extension("warmpool").is_some());
    env.lambda
        .wait_for_output("extension:warmpool", "SHUTDOWN: connections closed", GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let stdout = extension_stdout(&env);
    let all = stdout.join("\n");
    assert!(
        !all.contains(secret_param),
        "a statement parameter was logged:\n{all}"
    );
    assert!(
        !all.contains(pg.password()),
        "the password was logged:\n{all}"
    );
    // Every line on stdout is JSON: a log line or a metrics record.
    for line in &stdout {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{all}"));
        assert!(
            v.get("_aws").is_some() || (v.get("message").is_some() && v.get("level").is_some()),
            "neither a log line nor a metrics record: {line}"
        );
    }
    let lines = logs::json_lines(&all);
    let find = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(message)))
            .collect()
    };
    let init = find("Init: warm connections open");
    assert_eq!(init.len(), 1, "{all}");
    assert_eq!(init[0]["opened"], 1);
    assert!(init[0]["elapsed_ms"].is_u64());
    let replaced = find("replacing a connection");
    assert!(
        replaced
            .iter()
            .any(|l| l["requestId"] == after.request_id.as_str()),
        "the replacement after the thaw carries the invocation's request id:\n{all}"
    );
    let invoke_lines = find("INVOKE");
    assert!(
        invoke_lines
            .iter()
            .any(|l| l["requestId"] == inv.request_id.as_str()
                && l["traceId"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Root="))),
        "the INVOKE line carries the request and trace ids:\n{all}"
    );
    let summary = find("SHUTDOWN: connections closed");
    assert_eq!(summary.len(), 1, "{all}");
    assert_eq!(summary[0]["dropped"], 0);
    assert_eq!(summary[0]["invocations"], 7);

    // One metrics record for Init and one per invocation, each valid EMF.
    let records = logs::metric_records(&all);
    for r in &records {
        emf::validate(r).unwrap_or_else(|e| panic!("{e}: {r}"));
    }
    assert_eq!(records[0]["Phase"], "Init", "{records:?}");
    let invokes: Vec<&Value> = records.iter().filter(|r| r["Phase"] == "Invoke").collect();
    assert_eq!(invokes.len(), 7, "{records:?}");
    let r = invokes
        .iter()
        .find(|r| r["RequestId"] == inv.request_id.as_str())
        .unwrap_or_else(|| panic!("no record for {}: {records:?}", inv.request_id));
    assert!(
        r["TraceId"]
            .as_str()
            .is_some_and(|t| t.starts_with("Root=")),
        "{r}"
    );
    // A request can reach the extension a moment before its INVOKE event does, and is then
    // counted in the previous invocation's record; the totals are exact. Statements: setup 1,
    // stats 3, create 2, the failed create 1, backend 1 + 1, noop 0.
    let sum = |name: &str| -> f64 {
        records
            .iter()
            .map(|r| r.get(name).and_then(Value::as_f64).unwrap_or(0.0))
            .sum()
    };
    assert_eq!(sum("Queries"), 9.0, "{records:?}");
    assert_eq!(summary[0]["queries"], 9);
    assert_eq!(sum("Errors_23"), 1.0, "{records:?}");
    assert_eq!(sum("Errors"), 1.0, "{records:?}");
    assert_eq!(sum("ConnectionsReplaced"), 1.0, "{records:?}");
    assert_eq!(summary[0]["connections_replaced"], 1);
    // At least the warm connection and a replacement (the pool may also grow while a failed
    // transaction's connection is being rolled back); the records add up to the totals.
    assert!(sum("ConnectionsCreated") >= 2.0, "{records:?}");
    assert_eq!(
        Some(sum("ConnectionsCreated")),
        summary[0]["connections_created"].as_f64(),
        "{records:?}"
    );
    assert_eq!(
        records[0]["ConnectionsCreated"], 1.0,
        "warmed during Init: {records:?}"
    );
    assert!(records
        .iter()
        .all(|r| r["FunctionName"].as_str().is_some_and(|f| !f.is_empty())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_count_each_concurrent_invocation_apart_and_write_interval_records() {
    let pg = PgServer::start();
    // Every request logs its pool wait, so each invocation has lines of its own.
    let env = LambdaEnv::managed_instances(
        &pg,
        &[
            ("WARMPOOL_METRICS_INTERVAL_MS", "200"),
            ("WARMPOOL_SLOW_POOL_WAIT_MS", "0"),
        ],
        4,
    );
    let runs = (1..=4u32).map(|n| env.invoke(json!({"action": "stats", "queries": n})));
    let results = futures_util::future::join_all(runs).await;
    for (n, inv) in (1..=4u64).zip(&results) {
        let v = match &inv.outcome {
            local_lambda::Outcome::Ok(v) => v,
            other => panic!("{other:?}\n{}", env.output()),
        };
        assert_eq!(v["request_id"], inv.request_id.as_str(), "{v}");
        assert_eq!(
            v["queries"], n,
            "each invocation counts only its own statements: {v}"
        );
    }
    // The interval timer writes records while the environment runs.
    env.lambda
        .wait_for_output("extension:warmpool", "\"Phase\":\"Interval\"", GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    env.lambda.shutdown().await;
    env.lambda
        .wait_for_output("extension:warmpool", "SHUTDOWN: connections closed", GUARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let all = extension_stdout(&env).join("\n");
    let records = logs::metric_records(&all);
    for r in &records {
        emf::validate(r).unwrap_or_else(|e| panic!("{e}: {r}"));
        assert!(
            r.get("RequestId").is_none(),
            "interval records name no invocation: {r}"
        );
    }
    let queries: f64 = records.iter().map(|r| r["Queries"].as_f64().unwrap()).sum();
    assert_eq!(
        queries, 10.0,
        "every statement is in exactly one record: {records:?}"
    );
    // Log lines written for a named invocation carry its id even without INVOKE events.
    let lines = logs::json_lines(&all);
    assert!(
        results.iter().all(|inv| lines
            .iter()
            .any(|l| l["requestId"] == inv.request_id.as_str())),
        "every invocation has log lines with its request id:\n{all}"
    );
}

#[tokio::test]
async fn a_named_invocation_tags_log_lines_and_counts_errors_without_logging_values() {
    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[("WARMPOOL_SLOW_POOL_WAIT_MS", "0")]);
    ext.wait_for_log("pool warmed", GUARD);
    let base = ext.client().await;
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let client = base.with_invocation("req-42", Some(trace));
    let secret = "value-9d2e-never-logged";
    let e = client
        .query_one("SELECT $1::text::int", &[&secret])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    assert!(
        e.to_string().contains(secret),
        "the client does see the message: {e}"
    );
    let n: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);

    let stats = client.stats().await.unwrap();
    assert_eq!(stats.request_id, "req-42");
    assert_eq!(stats.queries, 2, "{stats:?}");
    assert_eq!(stats.rows, 1, "{stats:?}");
    assert_eq!(stats.errors, vec![("22".to_owned(), 1)], "{stats:?}");
    assert!(
        stats.pool_wait_us > 0 || stats.database_time_us > 0,
        "{stats:?}"
    );

    // Another invocation on the same sessions starts from zero; the plain client names none.
    let other = base.with_invocation("req-43", None).stats().await.unwrap();
    assert_eq!((other.request_id.as_str(), other.queries), ("req-43", 0));
    let plain = base.stats().await.unwrap();
    assert_eq!(plain.request_id, "", "{plain:?}");

    let line = ext.wait_for_log("waited long for a database connection", GUARD);
    assert!(line.contains("requestId=req-42"), "{line}");
    assert!(line.contains(&format!("traceId={trace}")), "{line}");
    let out = ext.stdout();
    assert!(
        !out.contains(secret),
        "a parameter or a message quoting it was logged:\n{out}"
    );
    assert!(!out.contains(pg.password()), "{out}");
    let refused = logs::json_lines(&out)
        .into_iter()
        .find(|l| l["message"] == "the database refused a statement")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(refused["code"], "22P02");
    assert_eq!(refused["requestId"], "req-42");
}

#[tokio::test]
async fn text_format_stays_readable_in_local_mode() {
    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[("WARMPOOL_LOG_FORMAT", "text")]);
    let line = ext.wait_for_log("pool warmed", GUARD);
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    assert!(line.contains("INFO") && line.contains("opened=1"), "{line}");
}

/// A client chooses its request id: in the text format, a line break in it must not start a
/// line of its own (a forged ERROR), nor an escape sequence reach the reader's terminal.
#[tokio::test]
async fn text_format_escapes_control_characters_a_client_sends() {
    let pg = PgServer::start();
    let mut ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_LOG_FORMAT", "text"),
            ("WARMPOOL_SLOW_POOL_WAIT_MS", "0"),
        ],
    );
    ext.wait_for_log("pool warmed", GUARD);
    let forged = "req-7\n2026-12-02T00:00:00.000000Z ERROR warmpool_extension: forged \x1b[31mred";
    let client = ext
        .client()
        .await
        .with_invocation(forged, Some("\x1b]0;title\x07"));
    let n: i32 = client.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(n, 3);
    // Logged inside the invocation's span, so the line carries its ids.
    let line = ext.wait_for_log("waited long for a database connection", GUARD);
    assert!(
        line.contains(r"request_id=req-7\n2026-12-02T00:00:00.000000Z ERROR warmpool_extension: forged \u{1b}[31mred"),
        "{line}"
    );
    assert!(line.contains(r"trace_id=\u{1b}]0;title\u{7}"), "{line}");
    let out = ext.stdout();
    assert!(!out.contains('\x1b'), "a raw ESC byte was logged:\n{out}");
    for l in out.lines() {
        assert!(
            !l.starts_with("2026-12-02T00:00:00"),
            "a client forged a log line: {l}\n{out}"
        );
        assert!(
            !l.contains("forged") || l.contains("request_id=req-7"),
            "{l}"
        );
    }
}

#[tokio::test]
async fn statement_logging_shows_parameters_only_when_turned_on() {
    let pg = PgServer::start();
    let marker = "param-5c1e-logged-on-request";
    let mut outputs = Vec::new();
    for on in ["false", "true"] {
        let mut ext = Extension::start(
            &pg,
            &[("WARMPOOL_LOG", "debug"), ("WARMPOOL_LOG_STATEMENTS", on)],
        );
        let client = ext.client().await;
        let v: String = client
            .query_one("SELECT $1::text", &[&marker])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, marker);
        drop(client);
        assert!(ext.terminate().success());
        ext.wait_for_log("connections closed", GUARD);
        outputs.push(ext.stdout());
    }
    assert!(
        !outputs[0].contains(marker),
        "a parameter was logged by default:\n{}",
        outputs[0]
    );
    assert!(
        outputs[1].contains("executing statement") && outputs[1].contains(marker),
        "WARMPOOL_LOG_STATEMENTS=true did not log the statement and its parameters:\n{}",
        outputs[1]
    );
}

/// A notice can quote the statement's values (`RAISE NOTICE 'got %', $1`): it goes to the client
/// that ran the statement, and only its SQLSTATE to the log, even at debug level.
#[tokio::test]
async fn notices_reach_the_client_and_never_the_log() {
    let pg = PgServer::start();
    let direct = pg.tokio_client().await;
    direct
        .batch_execute(
            "CREATE FUNCTION nc_notice(v text) RETURNS int LANGUAGE plpgsql AS $$ \
             BEGIN RAISE NOTICE 'nc_notice got %', v; RAISE WARNING 'nc_warning'; RETURN 1; END $$",
        )
        .await
        .unwrap();
    let ext = Extension::start(&pg, &[]);
    let client = ext.client().await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    client.on_notice(move |n| {
        sink.lock().unwrap().push((
            n.severity().to_owned(),
            n.code().code().to_owned(),
            n.message().to_owned(),
        ))
    });
    let secret = "s3cr3t-param-value-7f1c";
    let n: i32 = client
        .query_one("SELECT nc_notice($1)", &[&secret])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // Inside a transaction, and with a batch of plain SQL.
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT nc_notice('in a transaction')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    client
        .batch_execute("SELECT nc_notice('in a batch')")
        .await
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let expected = |m: &str| {
        (
            "NOTICE".to_owned(),
            "00000".to_owned(),
            format!("nc_notice got {m}"),
        )
    };
    let warning = (
        "WARNING".to_owned(),
        "01000".to_owned(),
        "nc_warning".to_owned(),
    );
    assert_eq!(
        seen,
        vec![
            expected(secret),
            warning.clone(),
            expected("in a transaction"),
            warning.clone(),
            expected("in a batch"),
            warning,
        ]
    );
    let out = ext.stdout();
    assert!(!out.contains(secret), "a notice's text was logged:\n{out}");
    assert!(
        !out.contains("nc_notice got"),
        "a notice's text was logged:\n{out}"
    );
    assert!(
        logs::json_lines(&out)
            .iter()
            .any(|l| l["message"] == "the database sent a notice" && l["code"] == "00000"),
        "the notice's code is logged at debug level:\n{out}"
    );
}
