// The driver checklist for Postgres.js (`postgres`), which prepares every statement and reads
// results in its own parser.
//
// Connection from the libpq environment: PGHOST (a directory for a Unix socket), PGPORT,
// PGUSER, PGDATABASE, and PGPASSWORD when set. Prints one line per check and exits 1 if any
// failed.
'use strict';

const crypto = require('node:crypto');
const { pipeline } = require('node:stream/promises');
const { Readable, Writable } = require('node:stream');
const postgres = require('postgres');

const RUN = crypto.randomBytes(6).toString('hex');
const ROWS = 100000;
const failed = [];

function expect(cond, what) {
  if (!cond) throw new Error(what);
}

function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function connect() {
  const host = process.env.PGHOST || '/tmp';
  const port = Number(process.env.PGPORT || 5432);
  const where = host.startsWith('/') ? { path: `${host}/.s.PGSQL.${port}` } : { host, port };
  // One connection, so that session state (SET, a transaction) is seen by the next statement.
  return postgres({ ...where, max: 1, onnotice: () => {} });
}

async function main() {
  const sql = connect();
  const other = connect();
  const t = `drv_postgresjs_${RUN}`;
  await sql.unsafe(`CREATE TABLE ${t} (id int PRIMARY KEY, v text, CONSTRAINT ${t}_v_key UNIQUE (v))`);

  const checks = [
    ['types', async () => {
      const ts = new Date('2024-02-29T12:34:56.789Z');
      const bytes = Buffer.from([0, 1, 0xfe, 0xff]);
      const doc = { a: [1, 2, null], b: 'x' };
      const [r] = await sql`
        SELECT ${7}::int4 AS a, ${'1099511627777'}::int8 AS b, ${"héllo 'quoted'"}::text AS c,
               ${'12345.6789'}::numeric AS d, ${true}::bool AS e, ${ts}::timestamptz AS f,
               ${bytes}::bytea AS g, ${'12345678-1234-5678-1234-567812345678'}::uuid AS h,
               ${sql.json(doc)}::jsonb AS i, ${null}::text AS j`;
      expect(r.a === 7 && r.b === '1099511627777' && r.c === "héllo 'quoted'" && r.d === '12345.6789', `scalars ${JSON.stringify(r)}`);
      expect(r.e === true && r.f instanceof Date && r.f.getTime() === ts.getTime(), `bool/timestamptz ${r.e} ${r.f}`);
      expect(Buffer.isBuffer(r.g) && r.g.equals(bytes), `bytea ${r.g}`);
      expect(r.h === '12345678-1234-5678-1234-567812345678' && JSON.stringify(r.i) === JSON.stringify(doc) && r.j === null, `uuid/json/null ${JSON.stringify([r.h, r.i, r.j])}`);
    }],
    ['unique violation 23505', async () => {
      await sql`INSERT INTO ${sql(t)} VALUES (1, 'one')`;
      try {
        await sql`INSERT INTO ${sql(t)} VALUES (${2}, ${'one'})`;
      } catch (e) {
        expect(e.code === '23505', `code ${e.code}`);
        expect(e.constraint_name === `${t}_v_key`, `constraint ${e.constraint_name}`);
        return;
      }
      throw new Error('no error');
    }],
    ['commit and rollback', async () => {
      await sql.begin((tx) => tx`INSERT INTO ${sql(t)} VALUES (10, 'committed')`);
      const rolledBack = await sql.begin(async (tx) => {
        await tx`INSERT INTO ${sql(t)} VALUES (11, 'rolled back')`;
        throw new Error('roll back');
      }).then(() => false, (e) => e.message === 'roll back');
      expect(rolledBack, 'the transaction did not end in its own error');
      const rows = await sql`SELECT id FROM ${sql(t)} WHERE id >= 10 ORDER BY id`;
      expect(JSON.stringify(rows.map((x) => x.id)) === '[10]', `ids ${JSON.stringify(rows)}`);
    }],
    ['prepared statement reused 100 times', async () => {
      let total = 0;
      for (let i = 0; i < 100; i++) {
        const [r] = await sql`SELECT ${i}::int4 * 2 AS reuse_probe`;
        total += r.reuse_probe;
      }
      expect(total === 9900, `sum ${total}`);
      const [r] = await sql`SELECT count(*)::int AS n FROM pg_prepared_statements WHERE statement LIKE ${'%reuse_probe%'}`;
      expect(r.n === 1, `${r.n} server-side statements for the reused query`);
    }],
    ['100000 rows streamed', async () => {
      // A portal read 1000 rows per Execute.
      let n = 0;
      let sum = 0;
      for await (const rows of sql`SELECT i FROM generate_series(1, ${ROWS}::int) AS i`.cursor(1000)) {
        for (const r of rows) { n++; sum += r.i; }
      }
      expect(n === ROWS && sum === ROWS * (ROWS + 1) / 2, `${n} rows, sum ${sum}`);
    }],
    ['COPY FROM STDIN and TO STDOUT', async () => {
      const c = `drv_postgresjs_copy_${RUN}`;
      await sql.unsafe(`CREATE TABLE ${c} (id int, name text)`);
      const lines = [];
      for (let i = 0; i < 1000; i++) lines.push(`${i}\tn${i}\n`);
      await pipeline(Readable.from(lines), await sql.unsafe(`COPY ${c} FROM STDIN`).writable());
      const [{ n }] = await sql`SELECT count(*)::int AS n FROM ${sql(c)}`;
      expect(n === 1000, `copied ${n}`);
      const chunks = [];
      await pipeline(await sql.unsafe(`COPY (SELECT * FROM ${c} ORDER BY id) TO STDOUT`).readable(), new Writable({
        write(chunk, _enc, done) { chunks.push(chunk); done(); },
      }));
      const out = Buffer.concat(chunks).toString().split('\n').filter((l) => l);
      expect(out.length === 1000 && out[7] === '7\tn7', `${out.length} lines, ${out[7]}`);
    }],
    ['LISTEN/NOTIFY', async () => {
      // Postgres.js listens on a connection of its own; the notification comes from another.
      const ch = `ch_${RUN}`;
      let resolve;
      const got = new Promise((r) => { resolve = r; });
      const listening = await other.listen(ch, (payload) => resolve(payload));
      await sql.notify(ch, 'from other');
      const payload = await withTimeout(got, 10000, 'notification');
      expect(payload === 'from other', `payload ${payload}`);
      await listening.unlisten();
    }],
    ['SET search_path held', async () => {
      const s = `sp_${RUN}`;
      await sql.unsafe(`CREATE SCHEMA ${s}; CREATE TABLE ${s}.only_here (v int); INSERT INTO ${s}.only_here VALUES (42)`);
      await sql.unsafe(`SET search_path TO ${s}, public`);
      for (let i = 0; i < 3; i++) {
        const [r] = await sql`SELECT v FROM only_here`;
        expect(r.v === 42, 'value');
      }
      const [r] = await sql`SHOW search_path`;
      expect(r.search_path === `${s}, public`, `search_path ${r.search_path}`);
      await sql`RESET search_path`;
      await sql.unsafe(`DROP SCHEMA ${s} CASCADE`);
    }],
    // Last: PostgreSQL's postmaster signals a cancelled backend twice (its pid, then its process
    // group), and on a busy machine the second SIGINT can land on the statement after the
    // cancelled one, a COPY waiting for data above all.
    ['cancel of pg_sleep(30) 57014', async () => {
      const [{ pid }] = await sql`SELECT pg_backend_pid() AS pid`;
      const q = sql`SELECT pg_sleep(30)`;
      const running = q.execute().then(() => null, (e) => e);
      for (let i = 0; ; i++) {
        expect(i < 2000, `backend ${pid} never reached pg_sleep`);
        const [r] = await other`SELECT wait_event FROM pg_stat_activity WHERE pid = ${pid}`;
        if (r && r.wait_event === 'PgSleep') break;
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      q.cancel();
      const e = await running;
      expect(e && e.code === '57014', `got ${e && (e.code + ' ' + e.message)}`);
      const [again] = await sql`SELECT pg_backend_pid() AS pid`;
      expect(again.pid === pid, 'another session after cancel');
    }],
  ];

  for (const [name, fn] of checks) {
    try {
      await fn();
      console.log(`ok   postgres: ${name}`);
    } catch (e) {
      failed.push(name);
      console.log(`FAIL postgres: ${name}: ${e && e.stack ? e.stack.split('\n')[0] : e}`);
    }
  }
  await other.unsafe(`DROP TABLE IF EXISTS ${t}, drv_postgresjs_copy_${RUN}`);
  await sql.end();
  await other.end();
  if (failed.length) {
    console.log(`${failed.length} check(s) failed`);
    process.exitCode = 1;
  }
}

main().catch((e) => {
  console.log(`FAIL postgres: ${e && e.stack}`);
  process.exitCode = 1;
});
