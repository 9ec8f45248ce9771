//! Warm state against a real PostgreSQL and the real extension: statements prepared as each
//! connection opens, warm-up data sets, the state store and the query result cache.

use std::time::Duration;

use serde_json::json;
use warmpool::{CacheOutcome, CachePolicy, SqlState};
use warmpool_tests::{Extension, LambdaEnv, PgServer};

const LOG_WAIT: Duration = Duration::from_secs(30);

/// Lines of the server's log that mention `marker` and `what` (`parse`, `execute`).
fn logged(pg: &PgServer, what: &str, marker: &str) -> usize {
    std::fs::read_to_string(pg.log_path())
        .unwrap()
        .lines()
        .filter(|l| l.contains(what) && l.contains(marker))
        .count()
}

/// Runs `f` until it returns `Some`, for a state the extension reaches in the background.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::task::yield_now().await;
    }
}

async fn seed_countries(pg: &PgServer) {
    pg.tokio_client()
        .await
        .batch_execute(
            "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
             INSERT INTO countries VALUES ('FR', 'France'), ('JP', 'Japan'), ('PE', 'Peru');",
        )
        .await
        .unwrap();
}

async fn terminate_warmpool_backends(pg: &PgServer) {
    let direct = pg.tokio_client().await;
    direct
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'warmpool'",
            &[],
        )
        .await
        .unwrap();
    eventually("the backends are gone", async || {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn configured_statements_cost_no_parse_even_on_replacement_connections() {
    let pg = PgServer::start();
    pg.set_config("log_min_duration_statement", "0");
    let marker = "marker_prep_51c2";
    let sql = format!("SELECT $1::int4 AS {marker}");
    let mut ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_MAX_SIZE", "1"),
            (
                "WARMPOOL_PREPARE",
                &json!([sql, "SELECT 1 AS other_9d"]).to_string(),
            ),
            // Every checkout checks the connection, so a killed one is replaced at once.
            ("WARMPOOL_CHECK_AFTER_IDLE_MS", "0"),
        ],
    );
    ext.wait_for_log("pool warmed", LOG_WAIT);
    assert_eq!(
        logged(&pg, "parse", marker),
        1,
        "prepared when the connection opened"
    );

    let c = ext.client().await;
    for i in 0..5i32 {
        assert_eq!(
            c.query_one(sql.as_str(), &[&i])
                .await
                .unwrap()
                .get::<_, i32>(0),
            i
        );
    }
    // A new function process: its own client-side cache is empty, so it sends Prepare again,
    // and the extension's statement cache answers it.
    let fresh = ext.client().await;
    fresh.query_one(sql.as_str(), &[&7i32]).await.unwrap();
    assert_eq!(logged(&pg, "execute", marker), 6);
    assert_eq!(
        logged(&pg, "parse", marker),
        1,
        "no Parse for the function's executions"
    );

    // The connection dies; its replacement prepares the statements as it opens.
    terminate_warmpool_backends(&pg).await;
    assert_eq!(
        fresh
            .query_one(sql.as_str(), &[&8i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        8
    );
    assert_eq!(
        logged(&pg, "parse", marker),
        2,
        "once more, by the replacement at connect"
    );
    assert_eq!(logged(&pg, "execute", marker), 7);
}

#[tokio::test]
async fn a_statement_the_server_refuses_does_not_refuse_the_connection() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[("WARMPOOL_PREPARE", r#"["SELECT * FROM no_such_table_4e"]"#)],
    );
    let c = ext.client().await;
    assert_eq!(
        c.query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    let e = c
        .query("SELECT * FROM no_such_table_4e", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
    assert!(
        ext.logs().contains("could not be prepared"),
        "{}",
        ext.logs()
    );
}

#[tokio::test]
async fn warm_up_rows_are_read_once_and_served_from_memory() {
    let pg = PgServer::start();
    seed_countries(&pg).await;
    pg.set_config("log_min_duration_statement", "0");
    let mut ext = Extension::start(
        &pg,
        &[(
            "WARMPOOL_WARMUP",
            r#"{"countries": "SELECT code, name FROM countries ORDER BY code /* warm_7a */"}"#,
        )],
    );
    ext.wait_for_log("warm-up data loaded", LOG_WAIT);
    pg.tokio_client()
        .await
        .execute("UPDATE countries SET name = 'changed'", &[])
        .await
        .unwrap();
    for _ in 0..3 {
        let c = ext.client().await;
        let rows = c.warm("countries").await.unwrap();
        let names: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            names,
            [("FR", "France"), ("JP", "Japan"), ("PE", "Peru")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(rows[0].columns()[1].name(), "name");
    }
    assert_eq!(logged(&pg, "execute", "warm_7a"), 1, "read once, at Init");

    let c = ext.client().await;
    let e = c.warm("cities").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_OBJECT));
    assert!(e.to_string().contains("countries"), "{e}");
    assert!(c.ping().await.is_ok(), "the session goes on");
}

#[tokio::test]
async fn a_failing_warm_up_query_is_retried_in_the_background() {
    let pg = PgServer::start();
    let mut ext = Extension::start(
        &pg,
        &[
            (
                "WARMPOOL_WARMUP",
                r#"{"countries": "SELECT code FROM countries ORDER BY code"}"#,
            ),
            ("WARMPOOL_WARMUP_TIMEOUT_MS", "200"),
        ],
    );
    ext.wait_for_log("warm-up query failed", LOG_WAIT);
    ext.wait_for_log("not all loaded within WARMPOOL_WARMUP_TIMEOUT_MS", LOG_WAIT);
    let c = ext.client().await;
    // Still failing: a read runs the query once and reports the database's error.
    let e = c.warm("countries").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
    seed_countries(&pg).await;
    ext.wait_for_log("warm-up data set loaded", LOG_WAIT);
    assert_eq!(c.warm("countries").await.unwrap().len(), 3);
}

#[tokio::test]
async fn warm_up_rows_past_their_ttl_are_refreshed_in_the_background() {
    let pg = PgServer::start();
    seed_countries(&pg).await;
    let mut ext = Extension::start(
        &pg,
        &[(
            "WARMPOOL_WARMUP",
            r#"{"countries": {"sql": "SELECT name FROM countries ORDER BY code", "ttl_ms": 1}}"#,
        )],
    );
    ext.wait_for_log("warm-up data loaded", LOG_WAIT);
    let c = ext.client().await;
    pg.tokio_client()
        .await
        .execute(
            "UPDATE countries SET name = 'renamed' WHERE code = 'FR'",
            &[],
        )
        .await
        .unwrap();
    eventually("the refreshed rows are served", async || {
        let rows = c.warm("countries").await.unwrap();
        (rows[0].get::<_, String>(0) == "renamed").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_warm_up_query_does_not_hold_lambda_init() {
    let pg = PgServer::start();
    let env = LambdaEnv::classic(
        &pg,
        &[
            (
                "WARMPOOL_WARMUP",
                r#"{"missing": "SELECT * FROM no_such_table_b2"}"#,
            ),
            ("WARMPOOL_WARMUP_TIMEOUT_MS", "300"),
        ],
    );
    env.call(json!({"action": "setup"})).await;
    assert_eq!(env.lambda.init_count(), 1);
    let output = env.output();
    assert!(output.contains("warm-up query failed"), "{output}");
    assert!(output.contains("not all loaded within"), "{output}");
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Token {
    value: String,
    scopes: Vec<String>,
}

#[tokio::test]
async fn state_store_outlives_clients_and_keeps_values_out_of_logs() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let a = ext.client().await;
    let store = a.state();
    assert_eq!(store.get("missing").await.unwrap(), None);
    store.put("idem:42", &b"done"[..], None).await.unwrap();
    let token = Token {
        value: "hunter2-token-value".into(),
        scopes: vec!["read".into()],
    };
    store.put_json("token-key-zq", &token, None).await.unwrap();
    drop(a);

    // Another function process, same environment.
    let b = ext.client().await;
    let store = b.state();
    assert_eq!(
        store.get("idem:42").await.unwrap().as_deref(),
        Some(&b"done"[..])
    );
    assert_eq!(
        store.get_json::<Token>("token-key-zq").await.unwrap(),
        Some(token)
    );
    // Reads served from the store are counted as state hits of the invocation; misses are not.
    let invocation = b.with_invocation("state-hit-count", None);
    assert!(invocation.state().get("idem:42").await.unwrap().is_some());
    assert!(invocation.state().get("never-put").await.unwrap().is_none());
    let stats = invocation.stats().await.unwrap();
    assert_eq!(stats.state_hits, 1, "{stats:?}");
    // A value of another shape is a clear error.
    let e = store.get_json::<u64>("token-key-zq").await.unwrap_err();
    assert!(e.to_string().contains("stored value"), "{e}");

    // Compare-and-set: a counter, then a delete by CAS.
    assert!(store
        .compare_and_set_json("n", None, Some(&1), None)
        .await
        .unwrap());
    assert!(!store
        .compare_and_set_json("n", None, Some(&1), None)
        .await
        .unwrap());
    assert!(store
        .compare_and_set_json("n", Some(&1), Some(&2), None)
        .await
        .unwrap());
    assert!(!store
        .compare_and_set_json("n", Some(&1), Some(&3), None)
        .await
        .unwrap());
    assert_eq!(store.get_json::<i32>("n").await.unwrap(), Some(2));
    assert!(store
        .compare_and_set_json::<i32>("n", Some(&2), None, None)
        .await
        .unwrap());
    assert_eq!(store.get("n").await.unwrap(), None);

    assert!(store.delete("idem:42").await.unwrap());
    assert!(!store.delete("idem:42").await.unwrap());

    // A time to live.
    store
        .put("short", &b"x"[..], Some(Duration::from_millis(1)))
        .await
        .unwrap();
    eventually("the value expires", async || {
        store.get("short").await.unwrap().is_none().then_some(())
    })
    .await;

    let logs = ext.logs();
    assert!(
        !logs.contains("hunter2") && !logs.contains("token-key-zq"),
        "{logs}"
    );
}

#[tokio::test]
async fn state_store_evicts_least_recently_used_and_refuses_what_can_never_fit() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_STATE_MAX_BYTES", "4000")]);
    let c = ext.client().await;
    let store = c.state();
    for i in 0..100 {
        store
            .put(&format!("k{i}"), vec![b'v'; 100], None)
            .await
            .unwrap();
    }
    assert_eq!(store.get("k0").await.unwrap(), None, "evicted");
    assert!(store.get("k99").await.unwrap().is_some(), "kept");

    let e = store.put("big", vec![0u8; 5000], None).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED));
    assert!(e.to_string().contains("WARMPOOL_STATE_MAX_BYTES"), "{e}");
    assert!(
        store.get("k99").await.unwrap().is_some(),
        "a refused put evicts nothing"
    );
    store.put("after", &b"ok"[..], None).await.unwrap();
}

#[tokio::test]
async fn query_cache_hits_misses_expiry_and_eviction() {
    let pg = PgServer::start();
    seed_countries(&pg).await;
    pg.set_config("log_min_duration_statement", "0");
    let ext = Extension::start(&pg, &[("WARMPOOL_QUERY_CACHE_MAX_BYTES", "2000")]);
    let c = ext.client().await;
    let sql = "SELECT name FROM countries WHERE code = $1 /* cached_3f */";
    let hour = Duration::from_secs(3600);
    let name = |rows: Vec<warmpool::Row>| rows[0].get::<_, String>(0);

    let (rows, outcome) = c.query_cached_outcome(sql, &[&"FR"], hour).await.unwrap();
    assert_eq!(
        (name(rows), outcome),
        ("France".to_owned(), CacheOutcome::Miss)
    );
    pg.tokio_client()
        .await
        .execute("UPDATE countries SET name = 'changed'", &[])
        .await
        .unwrap();
    // Another client (another invocation's process) gets the cached rows.
    let other = ext.client().await;
    let (rows, outcome) = other
        .query_cached_outcome(sql, &[&"FR"], hour)
        .await
        .unwrap();
    assert_eq!(
        (name(rows), outcome),
        ("France".to_owned(), CacheOutcome::Hit)
    );
    assert_eq!(logged(&pg, "execute", "cached_3f"), 1);
    // The hit is counted for the invocation that read it, and no query for it.
    let invocation = other.with_invocation("cache-hit-count", None);
    let (_, outcome) = invocation
        .query_cached_outcome(sql, &[&"FR"], hour)
        .await
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    let stats = invocation.stats().await.unwrap();
    assert_eq!((stats.cache_hits, stats.queries), (1, 0), "{stats:?}");

    // Other parameters, another key.
    let (_, outcome) = c.query_cached_outcome(sql, &[&"JP"], hour).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);

    // Expiry: a 1 ms time to live passes, and the next read goes to the database.
    let ms = Duration::from_millis(1);
    c.query_cached(sql, &[&"PE"], ms).await.unwrap();
    let rows = eventually("the result expires", async || {
        let (rows, outcome) = c.query_cached_outcome(sql, &[&"PE"], ms).await.unwrap();
        (outcome == CacheOutcome::Miss).then_some(rows)
    })
    .await;
    assert_eq!(name(rows), "changed");

    // Eviction: the budget holds only a few results, least recently used go first.
    for i in 0..20 {
        let code = format!("X{i}");
        c.query_cached(sql, &[&code], hour).await.unwrap();
    }
    let (_, outcome) = c.query_cached_outcome(sql, &[&"FR"], hour).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Miss, "evicted");
    let (_, outcome) = c.query_cached_outcome(sql, &[&"X19"], hour).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Hit, "recent results stay");
}

#[tokio::test]
async fn query_cache_serves_stale_while_it_revalidates() {
    let pg = PgServer::start();
    seed_countries(&pg).await;
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    let sql = "SELECT name FROM countries WHERE code = $1";
    let policy = CachePolicy::ttl(Duration::from_millis(1))
        .stale_while_revalidate(Duration::from_secs(3600));
    let (_, outcome) = c.query_cached_outcome(sql, &[&"FR"], policy).await.unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    pg.tokio_client()
        .await
        .execute("UPDATE countries SET name = 'renamed'", &[])
        .await
        .unwrap();
    let stale = eventually("a stale answer", async || {
        let (rows, outcome) = c.query_cached_outcome(sql, &[&"FR"], policy).await.unwrap();
        (outcome == CacheOutcome::Stale).then_some(rows)
    })
    .await;
    assert_eq!(
        stale[0].get::<_, String>(0),
        "France",
        "the old rows, at once"
    );
    eventually("the refreshed rows", async || {
        let (rows, outcome) = c.query_cached_outcome(sql, &[&"FR"], policy).await.unwrap();
        assert_ne!(
            outcome,
            CacheOutcome::Miss,
            "inside the window, never a miss"
        );
        (rows[0].get::<_, String>(0) == "renamed").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_run_the_query_once() {
    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "8")]);
    let c = ext.client().await;
    c.batch_execute("CREATE SEQUENCE runs").await.unwrap();
    // The query waits at this lock until every request has arrived.
    let gate = pg.tokio_client().await;
    gate.batch_execute("SELECT pg_advisory_lock(77)")
        .await
        .unwrap();
    let sql = "SELECT nextval('runs'), pg_advisory_xact_lock_shared(77)::text";
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.query_cached_outcome(sql, &[], Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    // One miss runs the query; the five others wait for its result.
    for _ in 0..5 {
        ext.wait_for_log("already being filled", LOG_WAIT);
    }
    gate.batch_execute("SELECT pg_advisory_unlock(77)")
        .await
        .unwrap();
    let mut values = Vec::new();
    for t in tasks {
        let (rows, _) = t.await.unwrap().unwrap();
        values.push(rows[0].get::<_, i64>(0));
    }
    assert_eq!(values, vec![1; 6], "each caller got the one result");
    let runs: i64 = gate
        .query_one("SELECT last_value FROM runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "the query ran {runs} times");
}

#[tokio::test]
async fn state_store_takes_any_bytes_and_returns_the_crates_own_bytes() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    let store = c.state();
    // Whatever a caller has at hand, as in the README: a byte string literal, a slice, a
    // vector, text, `Bytes`.
    store.put("k", b"v1", None).await.unwrap();
    let got: Option<warmpool::Bytes> = store.get("k").await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"v1"[..]));
    store.put("k", &b"v2"[..], None).await.unwrap();
    store.put("k", vec![b'v', b'3'], None).await.unwrap();
    store.put("k", "v4", None).await.unwrap();
    store
        .put("k", warmpool::Bytes::from_static(b"v5"), None)
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v5"[..]));
    assert!(store
        .compare_and_set("k", Some(b"v5"), Some(b"v6"), None)
        .await
        .unwrap());
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v6"[..]));
}
