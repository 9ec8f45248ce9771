"""W1 and W2 from Python (psycopg 3), per invocation, three ways each.

- endpoint: a module-level connection to warmpool's PostgreSQL-protocol endpoint (Unix socket),
  opened once and reused by every invocation, as the README tells functions to do;
- connect: a connection straight to PostgreSQL opened and closed in every invocation (TLS and
  SCRAM each time), what a function without a pooler and without a module-level connection does;
- static: a module-level connection straight to PostgreSQL, opened once.

W1 is one point select by primary key; W2 is a transaction of three point selects and one
insert into bench_events (BEGIN, the four statements, COMMIT: six round trips).

Usage: python pg_w.py INVOCATIONS ROUNDS ROWS. The direct connections take libpq's PG*
variables (host, port, user, password, database, sslmode=verify-full, sslrootcert); the
endpoint's socket directory and database come from WP_ENDPOINT_DIR and WP_ENDPOINT_DB. In each
of ROUNDS rounds every workload runs INVOCATIONS invocations of each scenario, the scenarios in
rotating order, so that bursts of other work on the machine touch each alike. Prints one JSON
object: per workload and scenario the invocation times in microseconds and the errors, and
psycopg's and libpq's versions. bench/pg_w.js does the same from Node.js.
"""

import json
import os
import random
import sys
import time

import psycopg

SELECT = "SELECT id, name, balance FROM bench_accounts WHERE id = %s"
INSERT = "INSERT INTO bench_events (account_id, amount) VALUES (%s, %s)"
W2_SELECTS = 3


def select(conn, rows):
    row = conn.execute(SELECT, (random.randint(1, rows),)).fetchone()
    if row is None:
        raise RuntimeError("a point select found no row")
    return row


def w1(conn, rows):
    select(conn, rows)


def w2(conn, rows):
    # On an autocommit connection, transaction() sends BEGIN and COMMIT (ROLLBACK on error).
    with conn.transaction():
        first = select(conn, rows)
        for _ in range(W2_SELECTS - 1):
            select(conn, rows)
        conn.execute(INSERT, (first[0], random.randint(1, 100)))


def main():
    invocations, rounds, rows = (int(a) for a in sys.argv[1:4])
    endpoint = {
        "host": os.environ["WP_ENDPOINT_DIR"],
        "port": 5432,
        "dbname": os.environ["WP_ENDPOINT_DB"],
        # Not a role of the database: the extension logs in with its own credentials.
        "user": "any_function",
        "sslmode": "disable",
        "autocommit": True,
    }
    module_endpoint = psycopg.connect(**endpoint)
    module_direct = psycopg.connect(autocommit=True)

    def via_endpoint(work):
        work(module_endpoint, rows)

    def connect_each_time(work):
        with psycopg.connect(autocommit=True) as conn:
            work(conn, rows)

    def via_static(work):
        work(module_direct, rows)

    scenarios = [
        ("endpoint", via_endpoint),
        ("connect", connect_each_time),
        ("static", via_static),
    ]
    workloads = [("w1", w1), ("w2", w2)]
    samples = {w: {name: [] for name, _ in scenarios} for w, _ in workloads}
    errors = {w: {name: 0 for name, _ in scenarios} for w, _ in workloads}
    # A few unmeasured invocations first: the module-level connections' statements get
    # prepared (psycopg prepares a statement on its fifth use), as in a warm environment.
    for _, work in workloads:
        for name, f in scenarios:
            if name != "connect":
                for _ in range(10):
                    f(work)
    for r in range(rounds):
        order = scenarios[r % 3 :] + scenarios[: r % 3]
        for w, work in workloads:
            for name, f in order:
                for _ in range(invocations):
                    start = time.perf_counter_ns()
                    try:
                        f(work)
                    except psycopg.Error as e:
                        errors[w][name] += 1
                        print(f"{w} {name}: {type(e).__name__}", file=sys.stderr)
                        continue
                    samples[w][name].append((time.perf_counter_ns() - start) / 1000.0)
    module_endpoint.close()
    module_direct.close()
    json.dump(
        {
            "driver": f"psycopg {psycopg.__version__}, libpq {psycopg.pq.version()}",
            "warmup_w2": 2 * 10,
            "samples_us": samples,
            "errors": errors,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
