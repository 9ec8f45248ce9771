"""The driver checklist for psycopg 3, synchronous then asynchronous.

Connection from the libpq environment: PGHOST (a directory for a Unix socket), PGPORT, PGUSER,
PGDATABASE, and PGPASSWORD, PGSSLMODE, PGSSLROOTCERT when set. Every statement uses
server-side binding and, with prepare_threshold=0, is prepared on the server at its first use.
Prints one line per check and exits 1 if any failed.
"""

import asyncio
import datetime
import decimal
import io
import os
import sys
import threading
import uuid

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

RUN = uuid.uuid4().hex[:12]
ROWS = 100_000
FAILED = []


def report(name, fn):
    try:
        fn()
        print(f"ok   {name}", flush=True)
    except Exception as e:  # every failure is reported, then the next check runs
        FAILED.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)


async def areport(name, coro_fn):
    try:
        await coro_fn()
        print(f"ok   {name}", flush=True)
    except Exception as e:
        FAILED.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


PARAMS = (
    7,
    2**40 + 1,
    "héllo 'quoted'",
    decimal.Decimal("12345.6789"),
    True,
    datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc),
    b"\x00\x01\xfe\xff",
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {"a": [1, 2, None], "b": "x"},
    None,
)
TYPES_SQL = (
    "SELECT %s::int4, %s::int8, %s::text, %s::numeric, %s::bool, %s::timestamptz, "
    "%s::bytea, %s::uuid, %s::jsonb, %s::text"
)


def check_row(row):
    expected = list(PARAMS)
    got = list(row)
    got[6] = bytes(got[6])
    expect(got == expected, f"round trip gave {got!r}, sent {expected!r}")


def params():
    p = list(PARAMS)
    p[8] = Jsonb(p[8])
    return p


def sleeping(watch, pid):
    """Waits (on the server's own view) until backend `pid` is inside pg_sleep."""
    for _ in range(2000):
        row = watch.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row and row[0] == "PgSleep":
            return
        watch.execute("SELECT pg_sleep(0.005)")
    raise AssertionError(f"backend {pid} never reached pg_sleep")


# ---- synchronous -------------------------------------------------------------------------


def sync_checks():
    conn = psycopg.connect(prepare_threshold=0, autocommit=True)
    other = psycopg.connect(autocommit=True)
    t = f"drv_psycopg_{RUN}"
    conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text, CONSTRAINT {t}_v_key UNIQUE (v))")

    def types_text():
        check_row(conn.execute(TYPES_SQL, params()).fetchone())

    def types_binary():
        with conn.cursor(binary=True) as cur:
            check_row(cur.execute(TYPES_SQL, params()).fetchone())

    def unique_violation():
        conn.execute(f"INSERT INTO {t} VALUES (1, 'one')")
        try:
            conn.execute(f"INSERT INTO {t} VALUES (2, 'one')")
        except errors.UniqueViolation as e:
            expect(e.sqlstate == "23505", f"sqlstate {e.sqlstate}")
            expect(e.diag.constraint_name == f"{t}_v_key", f"constraint {e.diag.constraint_name}")
            return
        raise AssertionError("no error")

    def commit_rollback():
        with conn.transaction():
            conn.execute(f"INSERT INTO {t} VALUES (10, 'committed')")
        try:
            with conn.transaction():
                conn.execute(f"INSERT INTO {t} VALUES (11, 'rolled back')")
                raise LookupError
        except LookupError:
            pass
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {t} WHERE id >= 10 ORDER BY id")]
        expect(ids == [10], f"ids {ids}")
        expect(conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "not idle")

    def prepared_reuse():
        total = 0
        for i in range(100):
            total += conn.execute("SELECT %s::int8 * 2 AS reuse_probe", (i,)).fetchone()[0]
        expect(total == 9900, f"sum {total}")
        n = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ("%reuse_probe%",),
        ).fetchone()[0]
        expect(n == 1, f"{n} server-side statements for the reused query")

    def stream_rows():
        n = s = 0
        with conn.cursor() as cur:
            # Single-row mode: rows are handed over as they arrive, never all held.
            for (i,) in cur.stream("SELECT i FROM generate_series(1, %s) AS i", (ROWS,)):
                n += 1
                s += i
        expect(n == ROWS and s == ROWS * (ROWS + 1) // 2, f"{n} rows, sum {s}")
        with conn.transaction():
            with conn.cursor(name=f"c_{RUN}") as cur:
                cur.itersize = 5000
                cur.execute("SELECT i FROM generate_series(1, %s) AS i", (ROWS,))
                n = sum(1 for _ in cur)
        expect(n == ROWS, f"server-side cursor gave {n} rows")

    def cancel():
        outcome = {}

        def run():
            try:
                conn.execute("SELECT pg_sleep(30)")
                outcome["error"] = None
            except Exception as e:
                outcome["error"] = e

        # The server's own pid: behind a pooler the key the driver holds is the pooler's.
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        th = threading.Thread(target=run)
        th.start()
        sleeping(other, pid)
        conn.cancel_safe()
        th.join()
        e = outcome["error"]
        expect(isinstance(e, errors.QueryCanceled), f"got {e!r}")
        expect(e.sqlstate == "57014", f"sqlstate {e.sqlstate}")
        expect(conn.execute("SELECT 1").fetchone()[0] == 1, "session unusable after cancel")

    def copy():
        c = f"drv_psycopg_copy_{RUN}"
        conn.execute(f"CREATE TABLE {c} (id int, name text, data bytea)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {c} (id, name, data) FROM STDIN") as cp:
                for i in range(1000):
                    cp.write_row((i, f"n{i}\ttab", bytes([i % 256])))
            expect(cur.rowcount == 1000, f"copied {cur.rowcount}")
            out = io.BytesIO()
            with cur.copy(f"COPY (SELECT * FROM {c} ORDER BY id) TO STDOUT") as cp:
                for block in cp:
                    out.write(block)
            lines = out.getvalue().decode().splitlines()
            expect(len(lines) == 1000, f"{len(lines)} lines out")
            expect(lines[3] == "3\tn3\\ttab\t\\\\x03", f"line {lines[3]!r}")
            with cur.copy(f"COPY {c} TO STDOUT (FORMAT binary)") as cp:
                cp.set_types(["int4", "text", "bytea"])
                rows = list(cp.rows())
            expect(len(rows) == 1000 and bytes(rows[5][2]) == b"\x05", "binary COPY rows")

    def listen_notify():
        ch = f"ch_{RUN}"
        conn.execute(f"LISTEN {ch}")
        other.execute("SELECT pg_notify(%s, %s)", (ch, "from other"))
        conn.execute(f"NOTIFY {ch}, 'from self'")
        got = [n.payload for n in conn.notifies(timeout=10, stop_after=2)]
        expect(sorted(got) == ["from other", "from self"], f"notifications {got}")
        conn.execute(f"UNLISTEN {ch}")

    def search_path():
        s = f"sp_{RUN}"
        conn.execute(f"CREATE SCHEMA {s}")
        conn.execute(f"CREATE TABLE {s}.only_here (v int)")
        conn.execute(f"INSERT INTO {s}.only_here VALUES (42)")
        conn.execute(f"SET search_path TO {s}, public")
        for _ in range(3):
            expect(conn.execute("SELECT v FROM only_here").fetchone()[0] == 42, "value")
        expect(conn.execute("SHOW search_path").fetchone()[0] == f"{s}, public", "search_path")
        conn.execute("RESET search_path")
        conn.execute(f"DROP SCHEMA {s} CASCADE")

    for name, fn in [
        ("types, text", types_text),
        ("types, binary", types_binary),
        ("unique violation 23505", unique_violation),
        ("commit and rollback", commit_rollback),
        ("prepared statement reused 100 times", prepared_reuse),
        ("100000 rows streamed", stream_rows),
        ("COPY FROM STDIN and TO STDOUT", copy),
        ("LISTEN/NOTIFY", listen_notify),
        ("SET search_path held", search_path),
        # Last: PostgreSQL's postmaster signals a cancelled backend twice (its pid, then its
        # process group), and on a busy machine the second SIGINT can land on the statement
        # after the cancelled one, a COPY waiting for data above all.
        ("cancel of pg_sleep(30) 57014", cancel),
    ]:
        report(f"psycopg sync: {name}", fn)
    other.execute(f"DROP TABLE IF EXISTS {t}, drv_psycopg_copy_{RUN}")
    conn.close()
    other.close()


# ---- asynchronous ------------------------------------------------------------------------


async def async_checks():
    conn = await psycopg.AsyncConnection.connect(prepare_threshold=0, autocommit=True)
    other = await psycopg.AsyncConnection.connect(autocommit=True)
    t = f"drv_apsycopg_{RUN}"
    await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text, CONSTRAINT {t}_v_key UNIQUE (v))")

    async def types_text():
        cur = await conn.execute(TYPES_SQL, params())
        check_row(await cur.fetchone())

    async def types_binary():
        cur = await conn.execute(TYPES_SQL, params(), binary=True)
        check_row(await cur.fetchone())

    async def unique_violation():
        await conn.execute(f"INSERT INTO {t} VALUES (1, 'one')")
        try:
            await conn.execute(f"INSERT INTO {t} VALUES (2, 'one')")
        except errors.UniqueViolation as e:
            expect(e.sqlstate == "23505", f"sqlstate {e.sqlstate}")
            expect(e.diag.constraint_name == f"{t}_v_key", f"constraint {e.diag.constraint_name}")
            return
        raise AssertionError("no error")

    async def commit_rollback():
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {t} VALUES (10, 'committed')")
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {t} VALUES (11, 'rolled back')")
                raise LookupError
        except LookupError:
            pass
        cur = await conn.execute(f"SELECT id FROM {t} WHERE id >= 10 ORDER BY id")
        ids = [r[0] for r in await cur.fetchall()]
        expect(ids == [10], f"ids {ids}")

    async def prepared_reuse():
        total = 0
        for i in range(100):
            cur = await conn.execute("SELECT %s::int8 * 2 AS areuse_probe", (i,))
            total += (await cur.fetchone())[0]
        expect(total == 9900, f"sum {total}")
        cur = await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ("%areuse_probe%",),
        )
        n = (await cur.fetchone())[0]
        expect(n == 1, f"{n} server-side statements for the reused query")

    async def stream_rows():
        n = 0
        async with conn.transaction():
            async with conn.cursor(name=f"ac_{RUN}") as cur:
                cur.itersize = 5000
                await cur.execute("SELECT i FROM generate_series(1, %s) AS i", (ROWS,))
                async for _ in cur:
                    n += 1
        expect(n == ROWS, f"server-side cursor gave {n} rows")

    async def cancel():
        pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
        task = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
        for _ in range(2000):
            cur = await other.execute(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
            )
            row = await cur.fetchone()
            if row and row[0] == "PgSleep":
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("never reached pg_sleep")
        await conn.cancel_safe()
        try:
            await task
        except errors.QueryCanceled as e:
            expect(e.sqlstate == "57014", f"sqlstate {e.sqlstate}")
        else:
            raise AssertionError("not cancelled")
        cur = await conn.execute("SELECT 1")
        expect((await cur.fetchone())[0] == 1, "session unusable after cancel")

    async def copy():
        c = f"drv_apsycopg_copy_{RUN}"
        await conn.execute(f"CREATE TABLE {c} (id int, name text)")
        async with conn.cursor() as cur:
            async with cur.copy(f"COPY {c} FROM STDIN") as cp:
                for i in range(1000):
                    await cp.write_row((i, f"n{i}"))
            n = 0
            async with cur.copy(f"COPY (SELECT * FROM {c} ORDER BY id) TO STDOUT") as cp:
                async for row in cp.rows():
                    n += 1
            expect(n == 1000, f"{n} rows out")

    async def listen_notify():
        ch = f"ach_{RUN}"
        await conn.execute(f"LISTEN {ch}")
        await other.execute("SELECT pg_notify(%s, %s)", (ch, "from other"))
        got = [n.payload async for n in conn.notifies(timeout=10, stop_after=1)]
        expect(got == ["from other"], f"notifications {got}")
        await conn.execute(f"UNLISTEN {ch}")

    async def search_path():
        s = f"asp_{RUN}"
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(f"CREATE TABLE {s}.only_here (v int)")
        await conn.execute(f"INSERT INTO {s}.only_here VALUES (42)")
        await conn.execute(f"SET search_path TO {s}, public")
        for _ in range(3):
            cur = await conn.execute("SELECT v FROM only_here")
            expect((await cur.fetchone())[0] == 42, "value")
        await conn.execute("RESET search_path")
        await conn.execute(f"DROP SCHEMA {s} CASCADE")

    for name, fn in [
        ("types, text", types_text),
        ("types, binary", types_binary),
        ("unique violation 23505", unique_violation),
        ("commit and rollback", commit_rollback),
        ("prepared statement reused 100 times", prepared_reuse),
        ("100000 rows streamed", stream_rows),
        ("COPY FROM STDIN and TO STDOUT", copy),
        ("LISTEN/NOTIFY", listen_notify),
        ("SET search_path held", search_path),
        # Last: PostgreSQL's postmaster signals a cancelled backend twice (its pid, then its
        # process group), and on a busy machine the second SIGINT can land on the statement
        # after the cancelled one, a COPY waiting for data above all.
        ("cancel of pg_sleep(30) 57014", cancel),
    ]:
        await areport(f"psycopg async: {name}", fn)
    await other.execute(f"DROP TABLE IF EXISTS {t}, drv_apsycopg_copy_{RUN}")
    await conn.close()
    await other.close()


if __name__ == "__main__":
    sync_checks()
    asyncio.run(async_checks())
    if FAILED:
        print(f"{len(FAILED)} check(s) failed", flush=True)
        sys.exit(1)
