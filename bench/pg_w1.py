"""W1 from Python (psycopg 3): one point select by primary key per invocation, three ways.

- endpoint: a module-level connection to warmpool's PostgreSQL-protocol endpoint (Unix socket),
  opened once and reused by every invocation, as the README tells functions to do;
- connect: a connection straight to PostgreSQL opened and closed in every invocation (TLS and
  SCRAM each time), what a function without a pooler and without a module-level connection does;
- static: a module-level connection straight to PostgreSQL, opened once.

Usage: python pg_w1.py INVOCATIONS ROUNDS ROWS. The direct connections take libpq's PG*
variables (host, port, user, password, database, sslmode=verify-full, sslrootcert); the
endpoint's socket directory and database come from WP_ENDPOINT_DIR and WP_ENDPOINT_DB. The
scenarios take turns in ROUNDS rounds, in rotating order, so that bursts of other work on the
machine touch each alike. Prints one JSON object: each scenario's invocation times in
microseconds, and psycopg's and libpq's versions.
"""

import json
import os
import random
import sys
import time

import psycopg

W1 = "SELECT id, name, balance FROM bench_accounts WHERE id = %s"


def invoke(conn, rows):
    row = conn.execute(W1, (random.randint(1, rows),)).fetchone()
    if row is None:
        raise RuntimeError("W1 found no row")


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

    def via_endpoint():
        invoke(module_endpoint, rows)

    def connect_each_time():
        with psycopg.connect(autocommit=True) as conn:
            invoke(conn, rows)

    def via_static():
        invoke(module_direct, rows)

    scenarios = [
        ("endpoint", via_endpoint),
        ("connect", connect_each_time),
        ("static", via_static),
    ]
    samples = {name: [] for name, _ in scenarios}
    errors = {name: 0 for name, _ in scenarios}
    # A few unmeasured invocations first: the module-level connections' statements get
    # prepared (psycopg prepares a statement on its fifth use), as in a warm environment.
    for name, f in scenarios:
        if name != "connect":
            for _ in range(10):
                f()
    for r in range(rounds):
        order = scenarios[r % 3 :] + scenarios[: r % 3]
        for name, f in order:
            for _ in range(invocations):
                start = time.perf_counter_ns()
                try:
                    f()
                except psycopg.Error as e:
                    errors[name] += 1
                    print(f"{name}: {type(e).__name__}", file=sys.stderr)
                    continue
                samples[name].append((time.perf_counter_ns() - start) / 1000.0)
    module_endpoint.close()
    module_direct.close()
    json.dump(
        {
            "psycopg": psycopg.__version__,
            "libpq": psycopg.pq.version(),
            "samples_us": samples,
            "errors": errors,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
