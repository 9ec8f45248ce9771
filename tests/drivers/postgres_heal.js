// Healing through warmpool's endpoint, as Postgres.js sees it: the same two steps as
// asyncpg_heal.py, paused for the test between `PID <n>` (printed) and `GO` (read).
'use strict';
const postgres = require('postgres');
const readline = require('readline');

const RUN = Math.random().toString(16).slice(2, 14);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function connect() {
  return postgres({
    host: process.env.PGHOST,
    port: Number(process.env.PGPORT),
    user: process.env.PGUSER,
    database: process.env.PGDATABASE,
    ssl: false,
    max: 1,
    onnotice: () => {},
  });
}

async function pause(pid) {
  console.log(`PID ${pid}`);
  const { value } = await lines.next();
  if ((value || '').trim() !== 'GO') throw new Error('no GO from the test');
}

async function main() {
  let failed = false;
  const sql = connect();
  const schema = `heal_${RUN}`;
  await sql.unsafe(`CREATE SCHEMA ${schema}; CREATE TABLE ${schema}.t (a int); INSERT INTO ${schema}.t VALUES (42)`);
  await sql.unsafe(`SET search_path TO ${schema}, public`);
  const read = () => sql`SELECT a, current_setting('search_path') AS path, pg_backend_pid() AS pid FROM t`;
  const [first] = await read();
  await pause(first.pid);
  try {
    const [r] = await read();
    if (r.a !== 42) throw new Error(`a = ${r.a}`);
    if (r.path !== `${schema}, public`) throw new Error(`search_path ${r.path}`);
    if (r.pid === first.pid) throw new Error('the same server connection');
    console.log('ok   postgres: healed with its SET and prepared statement');
  } catch (e) {
    failed = true;
    console.log(`FAIL postgres: heal: ${e.message}`);
  }

  const other = connect();
  await other.unsafe(`CREATE TABLE ${schema}.tx (a int)`);
  try {
    let err = null;
    await other.begin(async (tx) => {
      await tx.unsafe(`INSERT INTO ${schema}.tx VALUES (1)`);
      const [{ pid }] = await tx`SELECT pg_backend_pid() AS pid`;
      await pause(pid);
    }).catch((e) => { err = e; });
    // The extension answers FATAL 08006 naming the open transaction and closes the session;
    // Postgres.js reports that or the closed connection, either way an error.
    if (!err) throw new Error('the COMMIT was reported done');
    if (!['08006', 'CONNECTION_CLOSED'].includes(err.code)) throw new Error(`${err.code} ${err.message}`);
    const [{ n }] = await sql.unsafe(`SELECT count(*)::int AS n FROM ${schema}.tx`);
    if (n !== 0) throw new Error(`${n} rows committed`);
    console.log('ok   postgres: an open transaction ends with 08006 and commits nothing');
  } catch (e) {
    failed = true;
    console.log(`FAIL postgres: transaction: ${e.message}`);
  }
  await sql.end({ timeout: 5 });
  await other.end({ timeout: 1 }).catch(() => {});
  process.exit(failed ? 1 : 0);
}

main().catch((e) => { console.log(`FAIL postgres: ${e.stack}`); process.exit(1); });
