// An orders function for the nodejs runtimes, on node-postgres (`pg`), that reaches PostgreSQL
// through warmpool's endpoint: the extension serves PostgreSQL's protocol on
// /tmp/.s.PGSQL.5432, so the function connects with host /tmp and holds no database credentials
// of its own.
//
// The connection is opened at Init and used by every invocation. Between invocations Lambda
// freezes the environment; if the server ended the connection behind it meanwhile (its
// idle_session_timeout, a failover), the extension opens a new one and restores this session's
// SETs and prepared statements on it before the next statement, so the function sees nothing.
//
// Events (`action` picks one):
// - {"action": "setup"} creates the table.
// - {"action": "create", "customer": "ada", "item": "widget", "qty": 2} inserts an order and
//   counts the customer's orders, in one transaction.
// - {"action": "get", "id": 1} reads an order, with a named (prepared) statement.
// - {"action": "count"} counts the orders.
// - {"action": "backend"} returns the server process id behind the connection, the settings
//   made at Init and the statements prepared on it.

'use strict';

const { Client } = require('pg');

// Where the extension serves PostgreSQL's protocol; the extension reads the same variables.
const SOCKET_DIR = process.env.WARMPOOL_PG_SOCKET_DIR || '/tmp';
const PORT = Number(process.env.WARMPOOL_PG_PORT || 5432);

async function connect() {
  // Every parameter is given: the function's environment also holds the extension's PGHOST,
  // PGPORT and PGSSLMODE, which are meant for the database server and which `pg` would read for
  // any parameter left out. The socket is local and the extension authenticates the function by
  // the socket's owner, so no password and no TLS; the user name is not checked.
  const client = new Client({
    host: SOCKET_DIR,
    port: PORT,
    // The database the extension's pool serves (PGDATABASE configures the extension too).
    database: process.env.PGDATABASE,
    user: 'orders',
    ssl: false,
  });
  // Without a listener, a connection ended while no query runs would crash the process. The
  // extension ends a session that lost its server connection and cannot go on on a new one
  // (one frozen in the middle of a transaction, or while the database refused connections).
  client.on('error', (err) => console.error('database connection lost:', err.message));
  try {
    await client.connect();
    await client.query("SET application_name = 'orders-node'");
    await client.query("SET statement_timeout = '5s'");
  } catch (err) {
    await client.end().catch(() => {});
    throw err;
  }
  return client;
}

// The connection, as a promise: opened at Init, and again on first use after it ended.
let current;

function db() {
  if (current === undefined) {
    const opening = connect();
    current = opening;
    const forget = () => {
      if (current === opening) current = undefined;
    };
    opening.then((client) => client.on('end', forget), forget);
  }
  return current;
}

// At Init. A failure here is not fatal: the first invocation opens it again and reports why.
db().catch((err) => console.error('cannot connect at Init:', err.message));

exports.handler = async (event, context) => {
  const client = await db();
  switch (event.action) {
    case 'setup':
      await client.query(`CREATE TABLE IF NOT EXISTS orders (
        id bigserial PRIMARY KEY,
        customer text NOT NULL,
        item text NOT NULL,
        qty int NOT NULL CHECK (qty > 0),
        created_at timestamptz NOT NULL DEFAULT now())`);
      return { ok: true };
    case 'create': {
      await client.query('BEGIN');
      try {
        const inserted = await client.query(
          'INSERT INTO orders (customer, item, qty) VALUES ($1, $2, $3) RETURNING id',
          [event.customer, event.item, event.qty],
        );
        const counted = await client.query(
          'SELECT count(*)::int AS n FROM orders WHERE customer = $1',
          [event.customer],
        );
        await client.query('COMMIT');
        // bigserial comes back as a string: int8 can exceed what a JavaScript number holds.
        return { id: Number(inserted.rows[0].id), customer_orders: counted.rows[0].n };
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        throw err;
      }
    }
    case 'get': {
      // A name: parsed and planned once per connection, then run by name.
      const { rows } = await client.query({
        name: 'order-by-id',
        text: 'SELECT customer, item, qty FROM orders WHERE id = $1',
        values: [event.id],
      });
      if (rows.length === 0) return { id: event.id, found: false };
      return { id: event.id, ...rows[0] };
    }
    case 'count': {
      const { rows } = await client.query('SELECT count(*)::int AS n FROM orders');
      return { orders: rows[0].n };
    }
    case 'backend': {
      const { rows } = await client.query(
        `SELECT pg_backend_pid() AS pid,
                current_setting('application_name') AS application_name,
                current_setting('statement_timeout') AS statement_timeout`,
      );
      const prepared = await client.query('SELECT name FROM pg_prepared_statements ORDER BY name');
      return {
        ...rows[0],
        prepared: prepared.rows.map((r) => r.name),
        request_id: context.awsRequestId,
      };
    }
    default:
      throw new Error(`unknown action ${JSON.stringify(event.action)}`);
  }
};
