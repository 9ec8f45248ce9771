"""The driver checklist for asyncpg (binary format, every statement prepared).

Connection from the libpq environment: PGHOST (a directory for a Unix socket), PGPORT, PGUSER,
PGDATABASE, and PGPASSWORD, PGSSLMODE, PGSSLROOTCERT when set. Prints one line per check and
exits 1 if any failed.
"""

import asyncio
import datetime
import decimal
import io
import json
import os
import struct
import sys
import uuid

import asyncpg

RUN = uuid.uuid4().hex[:12]
ROWS = 100_000
FAILED = []


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


async def report(name, fn):
    try:
        await fn()
        print(f"ok   asyncpg: {name}", flush=True)
    except Exception as e:
        FAILED.append(name)
        print(f"FAIL asyncpg: {name}: {type(e).__name__}: {e}", flush=True)


async def until_sleeping(watch, pid):
    for _ in range(2000):
        if await watch.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid) == "PgSleep":
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never reached pg_sleep")


async def send_cancel_request(pid, secret):
    """A CancelRequest (protocol 3.0) on a new connection, as libpq sends it."""
    host = os.environ.get("PGHOST", "/tmp")
    port = int(os.environ.get("PGPORT", "5432"))
    if host.startswith("/"):
        reader, writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
    else:
        reader, writer = await asyncio.open_connection(host, port)
    writer.write(struct.pack("!iiii", 16, 80877102, pid, secret))
    await writer.drain()
    await reader.read()  # the server closes the connection once it has read the request
    writer.close()


async def main():
    conn = await asyncpg.connect()
    other = await asyncpg.connect()
    t = f"drv_asyncpg_{RUN}"
    await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text, CONSTRAINT {t}_v_key UNIQUE (v))")

    async def types():
        sent = [
            7,
            2**40 + 1,
            "héllo 'quoted'",
            decimal.Decimal("12345.6789"),
            True,
            datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc),
            b"\x00\x01\xfe\xff",
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            json.dumps({"a": [1, 2, None], "b": "x"}),
            None,
        ]
        row = await conn.fetchrow(
            "SELECT $1::int4, $2::int8, $3::text, $4::numeric, $5::bool, $6::timestamptz, "
            "$7::bytea, $8::uuid, $9::jsonb, $10::text",
            *sent,
        )
        got = list(row)
        got[8] = json.loads(got[8])
        sent[8] = json.loads(sent[8])
        expect(got == sent, f"round trip gave {got!r}, sent {sent!r}")

    async def unique_violation():
        await conn.execute(f"INSERT INTO {t} VALUES (1, 'one')")
        try:
            await conn.execute(f"INSERT INTO {t} VALUES (2, 'one')")
        except asyncpg.UniqueViolationError as e:
            expect(e.sqlstate == "23505", f"sqlstate {e.sqlstate}")
            expect(e.constraint_name == f"{t}_v_key", f"constraint {e.constraint_name}")
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
        ids = [r[0] for r in await conn.fetch(f"SELECT id FROM {t} WHERE id >= 10 ORDER BY id")]
        expect(ids == [10], f"ids {ids}")
        expect(not conn.is_in_transaction(), "still in a transaction")

    async def prepared_reuse():
        sql = "SELECT $1::int8 * 2 AS reuse_probe"
        stmt = await conn.prepare(sql)
        total = 0
        for i in range(100):
            total += await stmt.fetchval(i)
        expect(total == 9900, f"sum {total}")
        n = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", sql)
        expect(n == 1, f"{n} server-side statements for the reused query")

    async def stream_rows():
        n = s = 0
        async with conn.transaction():
            # A portal read 1000 rows per Execute.
            async for r in conn.cursor("SELECT i FROM generate_series(1, $1) AS i", ROWS, prefetch=1000):
                n += 1
                s += r[0]
        expect(n == ROWS and s == ROWS * (ROWS + 1) // 2, f"{n} rows, sum {s}")

    async def cancel():
        # The server's own pid: behind a pooler the key the driver holds is the pooler's.
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        task = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
        await until_sleeping(other, pid)
        # asyncpg answers a cancelled task with a CancelRequest on a connection of its own and
        # reads the session back to ReadyForQuery; the 57014 it gets stays inside the driver,
        # so the server's side is checked instead: the backend left pg_sleep and the session
        # still answers on the same backend.
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("not cancelled")
        expect(await asyncio.wait_for(conn.fetchval("SELECT pg_backend_pid()"), 10) == pid, "backend changed")
        state = await other.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid)
        expect(state != "PgSleep", "still sleeping")
        # And the 57014 as a query sees it: a CancelRequest sent with the key the session was
        # given (asyncpg keeps it in its protocol object).
        task = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
        await until_sleeping(other, pid)
        await send_cancel_request(conn._protocol.backend_pid, conn._protocol.backend_secret)
        try:
            await task
        except asyncpg.QueryCanceledError as e:
            expect(e.sqlstate == "57014", f"sqlstate {e.sqlstate}")
        else:
            raise AssertionError("not cancelled")

    async def copy():
        c = f"drv_asyncpg_copy_{RUN}"
        await conn.execute(f"CREATE TABLE {c} (id int, name text)")
        res = await conn.copy_records_to_table(c, records=[(i, f"n{i}") for i in range(1000)])
        expect(res == "COPY 1000", res)
        text = io.BytesIO(b"".join(f"{i}\tt{i}\n".encode() for i in range(1000, 1500)))
        res = await conn.copy_to_table(c, source=text)
        expect(res == "COPY 500", res)
        out = io.BytesIO()
        res = await conn.copy_from_query(f"SELECT * FROM {c} ORDER BY id", output=out)
        lines = out.getvalue().decode().splitlines()
        expect(res == "COPY 1500" and len(lines) == 1500 and lines[1001] == "1001\tt1001", f"{res}, {lines[1001]!r}")

    async def listen_notify():
        ch = f"ch_{RUN}"
        got = asyncio.get_running_loop().create_future()
        await conn.add_listener(ch, lambda _c, _pid, _ch, payload: got.done() or got.set_result(payload))
        await other.execute(f"NOTIFY {ch}, 'from other'")
        payload = await asyncio.wait_for(got, 10)
        expect(payload == "from other", payload)

    async def search_path():
        s = f"sp_{RUN}"
        await conn.execute(f"CREATE SCHEMA {s}; CREATE TABLE {s}.only_here (v int); INSERT INTO {s}.only_here VALUES (42)")
        await conn.execute(f"SET search_path TO {s}, public")
        for _ in range(3):
            expect(await conn.fetchval("SELECT v FROM only_here") == 42, "value")
        expect(await conn.fetchval("SHOW search_path") == f"{s}, public", "search_path")
        await conn.execute("RESET search_path")
        await conn.execute(f"DROP SCHEMA {s} CASCADE")

    for name, fn in [
        ("types, binary", types),
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
        await report(name, fn)
    await other.execute(f"DROP TABLE IF EXISTS {t}, drv_asyncpg_copy_{RUN}")
    await conn.close()
    await other.close()
    if FAILED:
        print(f"{len(FAILED)} check(s) failed", flush=True)
        sys.exit(1)


asyncio.run(main())
