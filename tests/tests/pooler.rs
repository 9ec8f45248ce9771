//! Several extensions behind one PgBouncer in transaction mode, each with statements of its own
//! and parameter counts of its own, under concurrent load: never a wrong result.
//!
//! A pooler in transaction mode hands each transaction (each request outside one) whichever
//! server connection is free. A statement prepared by name on one server is then bound on
//! another. Before PgBouncer 1.21 (Debian 12 ships 1.18) nothing tracks that: if the other
//! server holds a statement of the same name, prepared by another client, it runs that one.
//! warmpool names its statements with a random prefix per connection, so the name finds
//! nothing and the request fails with an error that names the two fixes; with
//! `WARMPOOL_PREPARED_STATEMENTS=unnamed` nothing is kept on a server and nothing fails.
//!
//! Every result is checked, and every row the table holds at the end must be one a client
//! wrote and was told was written, and every such row must be there.

use std::collections::BTreeSet;

use warmpool_tests::pgbouncer::Options;
use warmpool_tests::{Extension, PgBouncer, PgServer};

const ENVIRONMENTS: i32 = 4;
const TASKS_PER_ENVIRONMENT: i32 = 2;
const ROUNDS: i32 = 60;

/// What one environment's tasks saw.
#[derive(Default)]
struct Seen {
    ok: usize,
    errors: Vec<String>,
    /// Rows the client was told it wrote: (environment, key, value).
    written: BTreeSet<(i32, i32, i32)>,
}

/// Runs the load through `bouncer` with `env` on every extension; returns what the clients saw
/// and the rows the table holds.
async fn load(
    pg: &PgServer,
    bouncer: &PgBouncer,
    env: &[(&str, &str)],
) -> (Seen, BTreeSet<(i32, i32, i32)>) {
    pg.superuser_psql(&format!(
        "DROP TABLE IF EXISTS log; CREATE TABLE log (env int NOT NULL, k int NOT NULL, v int NOT \
         NULL); GRANT ALL ON log TO {}",
        pg.user()
    ));
    let port = bouncer.port().to_string();
    let mut extensions = Vec::new();
    for _ in 0..ENVIRONMENTS {
        let mut vars = vec![("PGPORT", port.as_str()), ("WARMPOOL_MAX_SIZE", "2")];
        vars.extend_from_slice(env);
        extensions.push(Extension::start(pg, &vars));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (e, ext) in extensions.iter().enumerate() {
        let e = e as i32;
        for t in 0..TASKS_PER_ENVIRONMENT {
            let c = ext.client().await;
            tasks.spawn(async move { run(&c, e, t).await });
        }
    }
    let mut seen = Seen::default();
    for s in tasks.join_all().await {
        seen.ok += s.ok;
        seen.errors.extend(s.errors);
        seen.written.extend(s.written);
    }
    let rows = pg
        .superuser_psql("SELECT env, k, v FROM log")
        .lines()
        .map(|l| {
            let f: Vec<i32> = l.split('|').map(|x| x.trim().parse().unwrap()).collect();
            (f[0], f[1], f[2])
        })
        .collect();
    (seen, rows)
}

/// One task's rounds: a read whose shape and parameter count depend on the environment, and a
/// write whose parameter count does too. Any answer but the right one, or an error, is noted.
async fn run(c: &warmpool::Client, e: i32, t: i32) -> Seen {
    let mut seen = Seen::default();
    for i in 0..ROUNDS {
        let x = t * 10_000 + i;
        // Environments 0 and 2 read one column with one parameter, 1 and 3 two with two.
        let read = if e % 2 == 0 {
            c.query_one(
                format!("SELECT $1::int * {} + {e} AS env{e}", e + 2).as_str(),
                &[&x],
            )
            .await
            .map(|row| {
                let got: i32 = row.get(0);
                (row.columns()[0].name() == format!("env{e}") && got == x * (e + 2) + e)
                    .then_some(())
                    .ok_or(format!(
                        "env {e}: {x} gave {got} in {}",
                        row.columns()[0].name()
                    ))
            })
        } else {
            c.query_one(
                format!("SELECT $1::int - {e} AS a{e}, $2::text AS b{e}").as_str(),
                &[&x, &format!("t{t}")],
            )
            .await
            .map(|row| {
                let (a, b): (i32, String) = (row.get(0), row.get(1));
                (a == x - e && b == format!("t{t}") && row.columns().len() == 2)
                    .then_some(())
                    .ok_or(format!("env {e}: ({x}, t{t}) gave ({a}, {b})"))
            })
        };
        match read {
            Ok(Ok(())) => seen.ok += 1,
            Ok(Err(wrong)) => panic!("a wrong result: {wrong}"),
            Err(err) => seen.errors.push(err.to_string()),
        }
        // Even environments write with two parameters, odd ones with three.
        let v = x * 3 + e;
        let wrote = if e % 2 == 0 {
            c.execute(
                format!("INSERT INTO log (env, k, v) VALUES ({e}, $1, $2)").as_str(),
                &[&x, &v],
            )
            .await
        } else {
            c.execute(
                "INSERT INTO log (env, k, v) VALUES ($1, $2, $3)",
                &[&e, &x, &v],
            )
            .await
        };
        match wrote {
            Ok(1) => {
                seen.ok += 1;
                seen.written.insert((e, x, v));
            }
            Ok(n) => panic!("env {e}: an INSERT reported {n} rows"),
            Err(err) => seen.errors.push(err.to_string()),
        }
    }
    seen
}

/// The table holds exactly the rows clients were told they wrote.
fn assert_rows_match(seen: &Seen, rows: &BTreeSet<(i32, i32, i32)>) {
    let unsent: Vec<_> = rows.difference(&seen.written).collect();
    assert!(
        unsent.is_empty(),
        "rows no client was told it wrote: {unsent:?}"
    );
    let lost: Vec<_> = seen.written.difference(rows).collect();
    assert!(
        lost.is_empty(),
        "writes reported but not in the table: {lost:?}"
    );
}

fn total() -> usize {
    (ENVIRONMENTS * TASKS_PER_ENVIRONMENT * ROUNDS * 2) as usize
}

fn debian() -> Options {
    Options {
        debian: true,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_behind_pgbouncer_1_18_fail_with_the_fix_never_a_wrong_result() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(&pg, &debian());
    let (seen, rows) = load(&pg, &bouncer, &[]).await;
    assert_rows_match(&seen, &rows);
    assert_eq!(seen.ok + seen.errors.len(), total());
    assert!(
        !seen.errors.is_empty(),
        "no statement met a server connection without it: the test does not exercise the \
         pooler"
    );
    for e in &seen.errors {
        assert!(
            e.contains("WARMPOOL_PREPARED_STATEMENTS=unnamed")
                && e.contains("max_prepared_statements"),
            "an error that does not name the fix: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_behind_pgbouncer_1_18_never_fail() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(&pg, &debian());
    let (seen, rows) = load(
        &pg,
        &bouncer,
        &[("WARMPOOL_PREPARED_STATEMENTS", "unnamed")],
    )
    .await;
    assert_eq!(seen.errors, Vec::<String>::new());
    assert_eq!(seen.ok, total());
    assert_rows_match(&seen, &rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_behind_a_pgbouncer_that_tracks_statements_never_fail() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(&pg, &Options::default());
    for mode in ["named", "unnamed"] {
        let (seen, rows) = load(&pg, &bouncer, &[("WARMPOOL_PREPARED_STATEMENTS", mode)]).await;
        assert_eq!(seen.errors, Vec::<String>::new(), "{mode}");
        assert_eq!(seen.ok, total(), "{mode}");
        assert_rows_match(&seen, &rows);
    }
}
