"""An orders function for the python3.x runtimes, on psycopg 3, that reaches PostgreSQL through
warmpool's endpoint: the extension serves PostgreSQL's protocol on /tmp/.s.PGSQL.5432, so the
function connects with host=/tmp and holds no database credentials of its own.

The connection is opened at Init and used by every invocation. Between invocations Lambda
freezes the environment; if the server ended the connection behind it meanwhile (its
idle_session_timeout, a failover), the extension opens a new one and restores this session's
SETs and prepared statements on it before the next statement, so the function sees nothing.

Events ("action" picks one):
- {"action": "setup"} creates the table.
- {"action": "create", "customer": "ada", "item": "widget", "qty": 2} inserts an order and
  counts the customer's orders, in one transaction.
- {"action": "get", "id": 1} reads an order, with a prepared statement.
- {"action": "count"} counts the orders.
- {"action": "backend"} returns the server process id behind the connection, the settings made
  at Init and the statements prepared on it.
"""

import os

import psycopg

# Where the extension serves PostgreSQL's protocol; the extension reads the same variables.
SOCKET_DIR = os.environ.get("WARMPOOL_PG_SOCKET_DIR", "/tmp")
PORT = os.environ.get("WARMPOOL_PG_PORT", "5432")
# The database the extension's pool serves (PGDATABASE configures the extension too).
DBNAME = os.environ["PGDATABASE"]


def connect():
    # Every parameter is given: the function's environment also holds the extension's PGHOST,
    # PGPORT and PGSSLMODE, which are meant for the database server and which libpq would read
    # for any parameter left out. The socket is local and the extension authenticates the
    # function by the socket's owner, so no password and no TLS; the user name is not checked.
    # autocommit: a statement outside an explicit transaction must not leave one open while
    # the environment is frozen, as that would hold the server connection's locks and snapshot.
    conn = psycopg.connect(
        host=SOCKET_DIR,
        port=PORT,
        dbname=DBNAME,
        user="orders",
        sslmode="disable",
        autocommit=True,
    )
    conn.execute("SET application_name = 'orders-python'")
    conn.execute("SET statement_timeout = '5s'")
    return conn


conn = connect()


def db():
    """The connection, opened again if it was closed: the extension ends a session that lost
    its server connection and cannot go on on a new one (one frozen in the middle of a
    transaction, or while the database refused connections)."""
    global conn
    if conn.closed:
        conn = connect()
    return conn


def handler(event, context):
    action = event.get("action")
    if action == "setup":
        db().execute(
            """CREATE TABLE IF NOT EXISTS orders (
                id bigserial PRIMARY KEY,
                customer text NOT NULL,
                item text NOT NULL,
                qty int NOT NULL CHECK (qty > 0),
                created_at timestamptz NOT NULL DEFAULT now())"""
        )
        return {"ok": True}
    if action == "create":
        c = db()
        with c.transaction():
            (order_id,) = c.execute(
                "INSERT INTO orders (customer, item, qty) VALUES (%s, %s, %s) RETURNING id",
                (event["customer"], event["item"], event["qty"]),
            ).fetchone()
            (count,) = c.execute(
                "SELECT count(*) FROM orders WHERE customer = %s", (event["customer"],)
            ).fetchone()
        return {"id": order_id, "customer_orders": count}
    if action == "get":
        # prepare=True: parsed and planned once per connection, then run by name.
        row = (
            db()
            .execute(
                "SELECT customer, item, qty FROM orders WHERE id = %s",
                (event["id"],),
                prepare=True,
            )
            .fetchone()
        )
        if row is None:
            return {"id": event["id"], "found": False}
        customer, item, qty = row
        return {"id": event["id"], "customer": customer, "item": item, "qty": qty}
    if action == "count":
        (n,) = db().execute("SELECT count(*) FROM orders").fetchone()
        return {"orders": n}
    if action == "backend":
        pid, application_name, statement_timeout = (
            db()
            .execute(
                "SELECT pg_backend_pid(), current_setting('application_name'), "
                "current_setting('statement_timeout')"
            )
            .fetchone()
        )
        prepared = [
            name
            for (name,) in db().execute(
                "SELECT name FROM pg_prepared_statements ORDER BY name"
            )
        ]
        return {
            "pid": pid,
            "application_name": application_name,
            "statement_timeout": statement_timeout,
            "prepared": prepared,
            "request_id": context.aws_request_id,
        }
    raise ValueError(f"unknown action {action!r}")
