//! The fleet connection budget (`WARMPOOL_FLEET_MAX_CONNECTIONS`): many environments of one
//! function share one number of database connections, against a real TLS PostgreSQL.
//!
//! Environments are either local Lambda environments (frozen with SIGSTOP between invocations,
//! as Lambda does) or extension processes driven straight through the client, where a test
//! needs to hold a transaction or a statement open at a moment of its choosing.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::Semaphore;
use warmpool::SqlState;
use warmpool_tests::fleet::{
    application_name, application_name_of, connections_named, wait_in_state_longer_than,
    wait_until, FleetSampler, Running,
};
use warmpool_tests::{Extension, LambdaEnv, PgServer};

/// What the extension logs for each idle connection it terminates to make room.
const TOOK_A_SLOT: &str = "took a connection slot from an idle fleet connection";
/// What the extension logs each time the budget refuses a new connection.
const BUDGET_FULL: &str = "the fleet's connection budget is full; waiting for a slot";
/// Steal threshold for every test: short, so that frozen environments' connections become
/// takeable within a test; the thaw check runs at or below it, as the setting requires.
const STEAL_IDLE_MS: u32 = 300;
const CHECK_AFTER_IDLE_MS: &str = "200";

/// The orders table, created over a direct connection as the application role.
async fn create_orders_table(pg: &PgServer) {
    pg.tokio_client()
        .await
        .batch_execute(
            "CREATE TABLE orders (
                id bigserial PRIMARY KEY,
                customer text NOT NULL,
                item text NOT NULL,
                qty int NOT NULL CHECK (qty > 0),
                created_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
}

/// The settings of one member of fleet `fleet` with a budget of `budget` connections and a pool
/// of one connection.
fn fleet_settings(fleet: &str, budget: u32) -> Vec<(String, String)> {
    [
        ("WARMPOOL_FLEET_NAME", fleet.to_string()),
        ("WARMPOOL_FLEET_MAX_CONNECTIONS", budget.to_string()),
        ("WARMPOOL_FLEET_STEAL_IDLE_MS", STEAL_IDLE_MS.to_string()),
        (
            "WARMPOOL_CHECK_AFTER_IDLE_MS",
            CHECK_AFTER_IDLE_MS.to_string(),
        ),
        ("WARMPOOL_MAX_SIZE", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// An extension process in fleet `fleet`, opening no connection until asked, and willing to
/// wait long for a slot so that a test sees waits end in success rather than in its timeout.
///
/// Outside Lambda the extension is never frozen, and its maintenance checks idle connections
/// every `WARMPOOL_CHECK_AFTER_IDLE_MS`, so they never idle long enough to be taken; tests
/// freeze a process ([`Extension::freeze`]) where Lambda would freeze its environment.
fn fleet_extension(pg: &PgServer, fleet: &str, budget: u32) -> Extension {
    let mut vars = fleet_settings(fleet, budget);
    vars.push(("WARMPOOL_WARM_SIZE".into(), "0".into()));
    vars.push(("WARMPOOL_WAIT_TIMEOUT_MS".into(), "10000".into()));
    vars.push(("WARMPOOL_RETRY_BUDGET_MS".into(), "10000".into()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Extension::start(pg, &vars)
}

/// Passes when `result` is a success, or the budget's own refusal: 53300 naming the setting.
fn assert_ok_or_budget_refusal<T: std::fmt::Debug>(
    who: &str,
    result: &Result<T, warmpool::Error>,
    logs: &str,
) {
    if let Err(e) = result {
        let db = e.fields();
        assert!(
            e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS)
                && db.is_some_and(|d| d.message().contains("WARMPOOL_FLEET_MAX_CONNECTIONS")),
            "{who}: the only error allowed is 53300 naming WARMPOOL_FLEET_MAX_CONNECTIONS, got \
             {e:?}; log:\n{logs}"
        );
    }
}

/// How many connections `ext` has opened and had admitted.
fn opened(ext: &Extension) -> usize {
    ext.logs().matches("opened a database connection").count()
}

/// How many refusals `ext` has logged.
fn refusals(ext: &Extension) -> usize {
    ext.logs().matches(BUDGET_FULL).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_environments_share_a_budget_of_ten() {
    const FLEET: &str = "orders-fleet";
    const BUDGET: u32 = 10;
    const ENVIRONMENTS: usize = 40;
    const AT_ONCE: usize = 8;
    const PASSES: usize = 3;

    let pg = PgServer::start();
    create_orders_table(&pg).await;
    let envs = LambdaEnv::many_classic(&pg, ENVIRONMENTS, |_| {
        let mut vars = fleet_settings(FLEET, BUDGET);
        vars.push(("WARMPOOL_WARM_SIZE".into(), "1".into()));
        // Below the function timeout, so a wait for a slot ends inside the invocation.
        vars.push(("WARMPOOL_WAIT_TIMEOUT_MS".into(), "8000".into()));
        vars
    });
    let name = application_name(FLEET);
    let running = Arc::new(Running::default());
    let sampler = FleetSampler::start(&pg, &name, running.clone()).await;
    let gate = Semaphore::new(AT_ONCE);

    // Init, in parallel but never more than AT_ONCE at a time: each Init opens its warm
    // connection under the budget (or stops at the first refusal), then the environment freezes.
    let inits = envs.iter().enumerate().map(|(i, env)| {
        let (gate, running) = (&gate, &running);
        async move {
            let _permit = gate.acquire().await.unwrap();
            let _running = running.enter();
            (i, env.lambda.init().await)
        }
    });
    for (i, init) in join_all(inits).await {
        if let Err(e) = init {
            panic!("Init of environment {i} failed: {e}\n{}", envs[i].output());
        }
    }

    // Several passes over every environment, never more than AT_ONCE running at once: most find
    // their connection taken while frozen and open a new one, taking the slot of another
    // frozen environment's idle connection.
    let mut failures = Vec::new();
    for pass in 0..PASSES {
        let calls = envs.iter().enumerate().map(|(i, env)| {
            let (gate, running) = (&gate, &running);
            let payload = if (i + pass) % 2 == 0 {
                json!({"action": "count"})
            } else {
                json!({"action": "create", "customer": format!("c{i}"), "item": "lamp", "qty": 1})
            };
            async move {
                let _permit = gate.acquire().await.unwrap();
                let _running = running.enter();
                (i, env.invoke(payload).await)
            }
        });
        for (i, inv) in join_all(calls).await {
            if !inv.outcome.is_ok() {
                failures.push(format!("pass {pass}, environment {i}: {}", inv.outcome));
            }
        }
    }
    let samples = sampler.stop().await;

    assert!(
        failures.is_empty(),
        "every invocation succeeds:\n{}\nfirst failing environment's output:\n{}",
        failures.join("\n"),
        envs.iter()
            .enumerate()
            .find(|(i, _)| failures
                .iter()
                .any(|f| f.contains(&format!("environment {i}:"))))
            .map(|(_, e)| e.output())
            .unwrap_or_default()
    );

    // The bound. The server lists three kinds of fleet connection: admitted ones not
    // terminated (A), ones not admitted yet (O: opening, being admitted, or closing after a
    // refusal), and terminated ones whose backend has not exited yet (T).
    // - A <= BUDGET. An admission holds the fleet's lock and counts everything listed,
    //   C = A + O + T with itself in O. It stays if C <= BUDGET (then A grows to at most C), or
    //   if it terminates C - BUDGET idle admitted connections (then A becomes
    //   BUDGET + 1 - O - T <= BUDGET); otherwise it closes and terminates nothing.
    // - O <= the environments running. With WARMPOOL_MAX_SIZE=1 an environment opens one
    //   connection at a time, and only while it runs (Init or an invocation): a frozen process
    //   opens nothing. A refused connection is closed before the retry, a backoff later.
    // - A taking slots leaves the count as it was: the victims go from A to T as the taker goes
    //   from O to A. T then drains as the victims exit, which an idle backend does as soon as
    //   it gets the signal (the admission waits up to 1 s for it on PostgreSQL 14 and later).
    // So a sample must show at most BUDGET + the environments running, compared with the most
    // that ran at once while it was taken; except for a moment while a backend that was told to
    // go (taken, or closed after a refusal) has not left the server's list yet, which on a
    // loaded machine can outlast a sample. Those moments pass; a connection admitted over the
    // budget would not: it stays while its environment sits frozen, until another admission
    // takes it, at least STEAL_IDLE_MS later. So the bound may be exceeded only in runs of
    // samples shorter than LINGER.
    const LINGER: Duration = Duration::from_millis(150);
    assert!(!samples.is_empty(), "the sampler took readings");
    let over = |s: &warmpool_tests::fleet::Sample| s.connections > BUDGET as i64 + s.running as i64;
    let mut runs: Vec<(Duration, Vec<(i64, usize)>)> = Vec::new();
    let mut start: Option<usize> = None;
    for (i, s) in samples.iter().enumerate() {
        match (over(s), start) {
            (true, None) => start = Some(i),
            (false, Some(first)) => {
                let run = &samples[first..i];
                runs.push((
                    s.at - run[0].at,
                    run.iter().map(|s| (s.connections, s.running)).collect(),
                ));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        // Still over at the last sample: it never came back under.
        runs.push((
            Duration::MAX,
            samples[first..]
                .iter()
                .map(|s| (s.connections, s.running))
                .collect(),
        ));
    }
    let max_seen = samples.iter().map(|s| s.connections).max().unwrap();
    let lasting: Vec<_> = runs.iter().filter(|(d, _)| *d >= LINGER).collect();
    assert!(
        lasting.is_empty(),
        "the fleet stayed over {BUDGET} + the environments running for {LINGER:?} or more; \
         (connections, running) at the start of the first such run: {:?} (max seen {max_seen}; \
         {} short runs over it)",
        &lasting[0].1[..lasting[0].1.len().min(10)],
        runs.len() - lasting.len()
    );
    eprintln!(
        "{} of {} samples over {BUDGET} + the environments running, in {} runs of at most {:?}",
        runs.iter().map(|(_, r)| r.len()).sum::<usize>(),
        samples.len(),
        runs.len(),
        runs.iter().map(|(d, _)| *d).max().unwrap_or_default()
    );
    assert!(
        samples.iter().all(|s| s.running <= AT_ONCE),
        "never more than {AT_ONCE} environments ran at once"
    );
    // Without a budget, forty environments would each keep their warm connection.
    assert!(
        max_seen <= (BUDGET as usize + AT_ONCE) as i64,
        "max seen {max_seen}"
    );

    let taken: usize = envs
        .iter()
        .map(|e| e.extension_lines(TOOK_A_SLOT).len())
        .sum();
    assert!(
        taken > 0,
        "forty environments on a budget of ten took idle connections' slots"
    );
    eprintln!(
        "max {max_seen} fleet connections seen over {} samples; {taken} slots taken",
        samples.len()
    );

    // Frozen, every environment has at most its one connection, and together no more than the
    // budget once the terminated backends have exited.
    let direct = pg.tokio_client().await;
    wait_until("the frozen fleet holds no more than its budget", || async {
        connections_named(&direct, &name).await <= BUDGET as i64
    })
    .await;

    // Each slot taken is counted in the metrics too: each environment writes a record per
    // Init and invocation, the last one at SHUTDOWN.
    join_all(envs.iter().map(|e| e.lambda.shutdown())).await;
    let mut logged = 0;
    let mut counted = 0.0;
    for env in &envs {
        logged += env.extension_lines(TOOK_A_SLOT).len();
        let records = warmpool_tests::logs::metric_records(&env.extension_lines("_aws").join("\n"));
        counted += records
            .iter()
            .filter_map(|r| r["FleetSlotsTaken"].as_f64())
            .sum::<f64>();
    }
    assert_eq!(
        counted, logged as f64,
        "FleetSlotsTaken counts every slot taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_environments_than_slots_wait_for_one() {
    const FLEET: &str = "busy-fleet";
    const BUDGET: u32 = 2;
    let pg = PgServer::start();
    let exts: Vec<Extension> = (0..4)
        .map(|_| fleet_extension(&pg, FLEET, BUDGET))
        .collect();
    let name = application_name(FLEET);

    // Every statement waits on a lock the test holds, so the first two connections stay busy
    // (running a statement, never idle) until the test lets them go.
    let direct = pg.tokio_client().await;
    direct
        .batch_execute("SELECT pg_advisory_lock(7)")
        .await
        .unwrap();
    let mut calls = Vec::new();
    for ext in &exts {
        let client = ext.client().await;
        calls.push(tokio::spawn(async move {
            client
                .query_one(
                    "SELECT pg_backend_pid(), pg_advisory_xact_lock_shared(7)::text",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i32>(0))
        }));
    }

    // Two run their statement; the other two are refused and wait.
    wait_until("two statements wait on the lock", || async {
        direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock' \
                   AND query LIKE '%pg_advisory_xact_lock_shared(7)%'",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 2
    })
    .await;
    // The two running are the two whose connection was admitted; the other two were refused
    // (maybe the first two too, opening all at once, before their retry) and wait.
    wait_until("two environments opened a connection", || async {
        exts.iter().filter(|e| opened(e) > 0).count() == 2
    })
    .await;
    let holders: Vec<usize> = (0..exts.len()).filter(|&i| opened(&exts[i]) > 0).collect();
    wait_until("the other two were refused", || async {
        (0..exts.len())
            .filter(|i| !holders.contains(i))
            .all(|i| refusals(&exts[i]) > 0)
    })
    .await;

    // The busy ones finish and their environments freeze, as after an invocation: their
    // connections go idle and can be taken.
    direct
        .batch_execute("SELECT pg_advisory_unlock(7)")
        .await
        .unwrap();
    let mut results: Vec<_> = calls.into_iter().map(Some).collect();
    let mut frozen = Vec::new();
    for &i in &holders {
        let pid = results[i].take().unwrap().await.unwrap();
        assert!(pid.is_ok(), "environment {i}, which had a slot: {pid:?}");
        frozen.push(exts[i].freeze());
    }
    let mut succeeded = holders.len();
    for (i, call) in results.into_iter().enumerate() {
        let Some(call) = call else { continue };
        let result = call.await.unwrap();
        assert_ok_or_budget_refusal(&format!("environment {i}"), &result, &exts[i].logs());
        succeeded += usize::from(result.is_ok());
    }
    for i in (0..exts.len()).filter(|i| !holders.contains(i)) {
        let stats = exts[i].client().await.stats().await.unwrap();
        assert_eq!(
            stats.fleet_waits, 1,
            "environment {i} waited once: {stats:?}"
        );
    }
    eprintln!("{succeeded} of 4 environments ran their statement; the others got 53300");
    // Still frozen, the first two hold nothing that could be opening; the terminated
    // connections are gone once their backends exit.
    wait_until("the fleet holds no more than its budget", || async {
        connections_named(&direct, &name).await <= BUDGET as i64
    })
    .await;
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_are_never_taken() {
    const FLEET: &str = "careful-fleet";
    const BUDGET: u32 = 2;
    let pg = PgServer::start();
    let direct = pg.tokio_client().await;
    let in_tx = fleet_extension(&pg, FLEET, BUDGET);
    let running = fleet_extension(&pg, FLEET, BUDGET);
    let newcomer = fleet_extension(&pg, FLEET, BUDGET);

    // One connection inside a transaction, idle there.
    let tx_client = in_tx.client().await;
    let tx = tx_client.transaction().await.unwrap();
    let tx_pid: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // One connection running a statement, blocked on a lock the test holds.
    direct
        .batch_execute("SELECT pg_advisory_lock(8)")
        .await
        .unwrap();
    let stmt_client = running.client().await;
    let statement = tokio::spawn(async move {
        stmt_client
            .query_one(
                "SELECT pg_backend_pid(), pg_advisory_xact_lock(8)::text",
                &[],
            )
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    let name = application_name(FLEET);
    let waiting = std::cell::Cell::new(None);
    wait_until("the statement waits on the lock", || async {
        let row = direct
            .query_opt(
                "SELECT pid FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock' \
                   AND query LIKE '%pg_advisory_xact_lock(8)%'",
                &[&name],
            )
            .await
            .unwrap();
        waiting.set(row.map(|r| r.get::<_, i32>(0)));
        waiting.get().is_some()
    })
    .await;
    let stmt_pid = waiting.get().unwrap();

    // Both have been in their state longer than the steal threshold: only their state protects
    // them from here on.
    wait_in_state_longer_than(&direct, tx_pid, "idle in transaction", STEAL_IDLE_MS).await;
    wait_in_state_longer_than(&direct, stmt_pid, "active", STEAL_IDLE_MS).await;

    // A third environment needs a connection: the budget is full of busy ones, so it waits.
    let newcomer_client = newcomer.client().await;
    let wants = tokio::spawn(async move {
        newcomer_client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    wait_until("the newcomer is refused twice, or takes a slot", || async {
        refusals(&newcomer) >= 2 || newcomer.logs().contains(TOOK_A_SLOT)
    })
    .await;
    for pid in [tx_pid, stmt_pid] {
        assert_eq!(
            application_name_of(&direct, pid).await.as_deref(),
            Some(name.as_str()),
            "backend {pid} survived; newcomer's log:\n{}",
            newcomer.logs()
        );
    }

    // The transaction goes on, on the same connection, and commits.
    let same: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(same, tx_pid, "the transaction kept its connection");
    tx.commit().await.unwrap();
    drop(tx_client);
    // The statement completes.
    direct
        .batch_execute("SELECT pg_advisory_unlock(8)")
        .await
        .unwrap();
    assert_eq!(statement.await.unwrap().unwrap(), stmt_pid);

    // Both environments freeze, as after an invocation; their idle connections can now be
    // taken, and the newcomer gets its slot.
    let _frozen = (in_tx.freeze(), running.freeze());
    let got = wants.await.unwrap();
    assert_ok_or_budget_refusal("the newcomer", &got, &newcomer.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleets_keep_to_their_own() {
    let pg = PgServer::start();
    let direct = pg.tokio_client().await;
    let (x_name, y_name) = (application_name("fleet-x"), application_name("fleet-y"));
    let x1 = fleet_extension(&pg, "fleet-x", 1);
    let y1 = fleet_extension(&pg, "fleet-y", 1);
    let y2 = fleet_extension(&pg, "fleet-y", 1);

    let pid_of = |client: warmpool::Client| async move {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let x1_client = x1.client().await;
    let x_pid = pid_of(x1_client.clone()).await;
    // Fleet y's first connection fits its own budget of one, though fleet x holds one.
    let y1_pid = pid_of(y1.client().await).await;
    assert_eq!(
        application_name_of(&direct, x_pid).await.as_deref(),
        Some(x_name.as_str())
    );
    assert_eq!(
        application_name_of(&direct, y1_pid).await.as_deref(),
        Some(y_name.as_str())
    );
    assert_eq!(refusals(&y1), 0, "{}", y1.logs());

    // Both environments freeze between invocations, and their connections idle past the
    // threshold: either could be taken, if fleets were mixed up.
    let x1_frozen = x1.freeze();
    let _y1_frozen = y1.freeze();
    wait_in_state_longer_than(&direct, x_pid, "idle", STEAL_IDLE_MS).await;
    wait_in_state_longer_than(&direct, y1_pid, "idle", STEAL_IDLE_MS).await;

    // Fleet y's second environment needs its fleet's only slot: it takes y1's.
    let y2_pid = pid_of(y2.client().await).await;
    assert_eq!(
        application_name_of(&direct, y2_pid).await.as_deref(),
        Some(y_name.as_str())
    );
    let took = y2
        .logs()
        .lines()
        .filter(|l| l.contains(TOOK_A_SLOT))
        .map(String::from)
        .collect::<Vec<_>>();
    assert_eq!(took.len(), 1, "one slot taken: {took:?}");
    assert!(
        took[0].contains(&format!("pid={y1_pid}")),
        "fleet y took its own connection ({y1_pid}), not fleet x's ({x_pid}): {took:?}"
    );
    assert_eq!(
        application_name_of(&direct, x_pid).await.as_deref(),
        Some(x_name.as_str()),
        "fleet x's connection is untouched"
    );
    drop(x1_frozen);
    assert_eq!(pid_of(x1_client).await, x_pid, "and still serves fleet x");
    assert!(!x1.logs().contains(TOOK_A_SLOT));
    let stats = y2.client().await.stats().await.unwrap();
    assert_eq!(stats.fleet_slots_taken, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_budget_nothing_changes() {
    let pg = PgServer::start();
    // Every statement the server runs goes to its log, so the budget's lock would show there.
    pg.set_config("log_statement", "all");
    create_orders_table(&pg).await;
    // The function has a name (the fleet's default name), but no budget is set.
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_WARM_SIZE", "1")]);
    let pid = env.call(json!({"action": "backend"})).await["pid"]
        .as_i64()
        .unwrap() as i32;
    env.call(json!({"action": "count"})).await;
    let direct = pg.tokio_client().await;
    assert_eq!(
        application_name_of(&direct, pid).await.as_deref(),
        Some("warmpool"),
        "the pool's usual application_name"
    );
    let names: Vec<String> = direct
        .query("SELECT application_name FROM pg_stat_activity", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("warmpool:")),
        "no fleet mark: {names:?}"
    );
    let server_log = std::fs::read_to_string(pg.log_path()).unwrap();
    assert!(
        server_log.contains("SELECT pg_backend_pid()"),
        "the server logs every statement"
    );
    assert!(
        !server_log.contains("pg_advisory_xact_lock"),
        "no budget lock taken:\n{server_log}"
    );
    let output = env.output();
    assert!(
        !output.contains(TOOK_A_SLOT) && !output.contains(BUDGET_FULL),
        "{output}"
    );
    env.lambda.shutdown().await;

    // The same check sees the budget when it is on.
    let ext = fleet_extension(&pg, "on", 5);
    let pid: i32 = ext
        .client()
        .await
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        application_name_of(&direct, pid).await.as_deref(),
        Some("warmpool:on")
    );
    let server_log = std::fs::read_to_string(pg.log_path()).unwrap();
    assert!(
        server_log.contains("pg_advisory_xact_lock"),
        "the budget's lock shows in the server log"
    );
}

/// An environment whose Init finds the fleet full, with nothing to take, starts anyway, even
/// with `WARMPOOL_INIT_REQUIRE_DATABASE`: its warm connections shrink to what the budget allows
/// (none here), and its invocations run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_fleet_does_not_fail_an_environments_init() {
    const FLEET: &str = "full-at-init";
    let pg = PgServer::start();
    // The budget's one slot, held inside a transaction: never taken.
    let holder = fleet_extension(&pg, FLEET, 1);
    let client = holder.client().await;
    let tx = client.transaction().await.unwrap();
    tx.query_one("SELECT 1", &[]).await.unwrap();

    let mut vars = fleet_settings(FLEET, 1);
    vars.push(("WARMPOOL_WARM_SIZE".into(), "1".into()));
    vars.push(("WARMPOOL_INIT_REQUIRE_DATABASE".into(), "true".into()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let env = LambdaEnv::classic(&pg, &vars);
    // Init runs with the first invocation; one that failed would fail the invocation too.
    env.call(json!({"action": "noop"})).await;
    let shrunk = env.extension_lines("allowed fewer warm connections than WARMPOOL_WARM_SIZE");
    assert_eq!(shrunk.len(), 1, "{}", env.output());
    assert!(
        env.extension_lines("Init: warm connections open").len() == 1,
        "{}",
        env.output()
    );
    tx.rollback().await.unwrap();
}
