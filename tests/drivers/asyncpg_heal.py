"""Healing through warmpool's endpoint, as asyncpg sees it.

Two steps, each paused for the test, which freezes the extension, ends the session's server
connection and thaws it between the lines `PID <n>` (printed) and `GO` (read):
1. an idle session with a SET and a prepared statement: the statement runs again, with the SET
   in force, on a new server connection;
2. a session with a transaction open: its COMMIT fails (the extension ends the session with
   08006), and nothing is committed.
Connection from the libpq environment. Prints `ok`/`FAIL` lines and exits 1 on any failure.
"""

import asyncio
import os
import sys
import uuid

import asyncpg

RUN = uuid.uuid4().hex[:12]


async def connect():
    return await asyncpg.connect(
        host=os.environ["PGHOST"],
        port=int(os.environ["PGPORT"]),
        user=os.environ["PGUSER"],
        database=os.environ["PGDATABASE"],
        ssl=False,
    )


def pause(pid):
    print(f"PID {pid}", flush=True)
    if sys.stdin.readline().strip() != "GO":
        raise SystemExit("no GO from the test")


async def main():
    failed = False
    conn = await connect()
    schema = f"heal_{RUN}"
    await conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (a int); INSERT INTO {schema}.t VALUES (42)")
    await conn.execute(f"SET search_path TO {schema}, public")
    stmt = await conn.prepare("SELECT a, current_setting('search_path'), pg_backend_pid() FROM t")
    a, path, before = await stmt.fetchrow()
    pause(before)
    try:
        a, path, after = await stmt.fetchrow()
        assert a == 42, a
        assert path == f"{schema}, public", path
        assert after != before, "the same server connection"
        print("ok   asyncpg: healed with its SET and prepared statement", flush=True)
    except Exception as e:
        failed = True
        print(f"FAIL asyncpg: heal: {type(e).__name__}: {e}", flush=True)

    conn2 = await connect()
    await conn2.execute(f"CREATE TABLE {schema}.tx (a int)")
    tx = conn2.transaction()
    await tx.start()
    await conn2.execute(f"INSERT INTO {schema}.tx VALUES (1)")
    pause(await conn2.fetchval("SELECT pg_backend_pid()"))
    try:
        # The extension answers FATAL 08006 naming the open transaction and closes the session;
        # asyncpg reports the closed connection (08003) or the FATAL, either way an error.
        try:
            await tx.commit()
            raise AssertionError("the COMMIT was reported done")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError) as e:
            code = getattr(e, "sqlstate", None)
            assert code in (None, "08006", "08003"), f"{code}: {e}"
        n = await conn.fetchval(f"SELECT count(*) FROM {schema}.tx")
        assert n == 0, f"{n} rows committed"
        print("ok   asyncpg: an open transaction ends with 08006 and commits nothing", flush=True)
    except Exception as e:
        failed = True
        print(f"FAIL asyncpg: transaction: {type(e).__name__}: {e}", flush=True)
    await conn.close()
    sys.exit(1 if failed else 0)


asyncio.run(main())
