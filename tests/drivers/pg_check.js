// The driver checklist for node-postgres (`pg`), with `pg-copy-streams` for COPY.
//
// Connection from the libpq environment, which `pg` reads itself: PGHOST (a directory for a
// Unix socket), PGPORT, PGUSER, PGDATABASE, and PGPASSWORD when set. Prints one line per check
// and exits 1 if any failed.
'use strict';

const crypto = require('node:crypto');
const net = require('node:net');
const { pipeline } = require('node:stream/promises');
const { Readable, Writable } = require('node:stream');
const pg = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');

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

async function untilSleeping(watch, pid) {
  for (let i = 0; i < 2000; i++) {
    const r = await watch.query('SELECT wait_event FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (r.rows[0] && r.rows[0].wait_event === 'PgSleep') return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`backend ${pid} never reached pg_sleep`);
}

// A CancelRequest (protocol 3.0) on a new connection, as libpq sends it: `pg` has no cancel of
// its own.
function sendCancelRequest(pid, secret) {
  const host = process.env.PGHOST || '/tmp';
  const port = Number(process.env.PGPORT || 5432);
  const options = host.startsWith('/') ? { path: `${host}/.s.PGSQL.${port}` } : { host, port };
  return new Promise((resolve, reject) => {
    const socket = net.connect(options, () => {
      const msg = Buffer.alloc(16);
      msg.writeInt32BE(16, 0);
      msg.writeInt32BE(80877102, 4);
      msg.writeInt32BE(pid, 8);
      msg.writeInt32BE(secret, 12);
      socket.end(msg);
    });
    socket.on('error', reject);
    socket.on('close', resolve);
    socket.resume();
  });
}

async function main() {
  const conn = new pg.Client();
  const other = new pg.Client();
  await conn.connect();
  await other.connect();
  const t = `drv_pg_${RUN}`;
  await conn.query(`CREATE TABLE ${t} (id int PRIMARY KEY, v text, CONSTRAINT ${t}_v_key UNIQUE (v))`);

  const checks = [
    ['types, text', async () => {
      const ts = new Date('2024-02-29T12:34:56.789Z');
      const sent = [7, '1099511627777', "héllo 'quoted'", '12345.6789', true, ts,
        Buffer.from([0, 1, 0xfe, 0xff]), '12345678-1234-5678-1234-567812345678',
        { a: [1, 2, null], b: 'x' }, null];
      const r = await conn.query({
        text: 'SELECT $1::int4 AS a, $2::int8 AS b, $3::text AS c, $4::numeric AS d, $5::bool AS e, ' +
          '$6::timestamptz AS f, $7::bytea AS g, $8::uuid AS h, $9::jsonb AS i, $10::text AS j',
        values: sent,
        rowMode: 'array',
      });
      const got = r.rows[0];
      expect(got[0] === 7 && got[1] === '1099511627777' && got[2] === sent[2] && got[3] === sent[3], `scalars ${JSON.stringify(got)}`);
      expect(got[4] === true && got[5].getTime() === ts.getTime(), `bool/timestamptz ${got[4]} ${got[5]}`);
      expect(Buffer.isBuffer(got[6]) && got[6].equals(sent[6]), `bytea ${got[6]}`);
      expect(got[7] === sent[7] && JSON.stringify(got[8]) === JSON.stringify(sent[8]) && got[9] === null, `uuid/json/null ${JSON.stringify(got.slice(7))}`);
    }],
    ['unique violation 23505', async () => {
      await conn.query(`INSERT INTO ${t} VALUES (1, 'one')`);
      try {
        await conn.query(`INSERT INTO ${t} VALUES ($1, $2)`, [2, 'one']);
      } catch (e) {
        expect(e.code === '23505', `code ${e.code}`);
        expect(e.constraint === `${t}_v_key`, `constraint ${e.constraint}`);
        return;
      }
      throw new Error('no error');
    }],
    ['commit and rollback', async () => {
      await conn.query('BEGIN');
      await conn.query(`INSERT INTO ${t} VALUES (10, 'committed')`);
      await conn.query('COMMIT');
      await conn.query('BEGIN');
      await conn.query(`INSERT INTO ${t} VALUES (11, 'rolled back')`);
      await conn.query('ROLLBACK');
      const r = await conn.query(`SELECT id FROM ${t} WHERE id >= 10 ORDER BY id`);
      expect(JSON.stringify(r.rows.map((x) => x.id)) === '[10]', `ids ${JSON.stringify(r.rows)}`);
    }],
    ['prepared statement reused 100 times', async () => {
      const name = `reuse_${RUN}`;
      let total = 0;
      for (let i = 0; i < 100; i++) {
        const r = await conn.query({ name, text: 'SELECT $1::int4 * 2 AS v', values: [i] });
        total += r.rows[0].v;
      }
      expect(total === 9900, `sum ${total}`);
      const r = await conn.query('SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name = $1', [name]);
      expect(r.rows[0].n === 1, `${r.rows[0].n} server-side statements named ${name}`);
    }],
    ['100000 rows streamed', async () => {
      // A cursor read in batches: `pg` itself buffers a whole result.
      await conn.query('BEGIN');
      await conn.query(`DECLARE c_${RUN} NO SCROLL CURSOR FOR SELECT i FROM generate_series(1, ${ROWS}) AS i`);
      let n = 0;
      let sum = 0;
      for (;;) {
        const r = await conn.query({ text: `FETCH 5000 FROM c_${RUN}`, rowMode: 'array' });
        if (r.rows.length === 0) break;
        for (const row of r.rows) { n++; sum += row[0]; }
      }
      await conn.query('COMMIT');
      expect(n === ROWS && sum === ROWS * (ROWS + 1) / 2, `${n} rows, sum ${sum}`);
    }],
    ['COPY FROM STDIN and TO STDOUT', async () => {
      const c = `drv_pg_copy_${RUN}`;
      await conn.query(`CREATE TABLE ${c} (id int, name text)`);
      const lines = [];
      for (let i = 0; i < 1000; i++) lines.push(`${i}\tn${i}\n`);
      const into = conn.query(copyFrom(`COPY ${c} FROM STDIN`));
      await pipeline(Readable.from(lines), into);
      expect(into.rowCount === 1000, `copied ${into.rowCount}`);
      const chunks = [];
      await pipeline(conn.query(copyTo(`COPY (SELECT * FROM ${c} ORDER BY id) TO STDOUT`)), new Writable({
        write(chunk, _enc, done) { chunks.push(chunk); done(); },
      }));
      const out = Buffer.concat(chunks).toString().split('\n').filter((l) => l);
      expect(out.length === 1000 && out[7] === '7\tn7', `${out.length} lines, ${out[7]}`);
    }],
    ['LISTEN/NOTIFY', async () => {
      const ch = `ch_${RUN}`;
      const got = new Promise((resolve) => conn.once('notification', (m) => resolve(m)));
      await conn.query(`LISTEN ${ch}`);
      await other.query('SELECT pg_notify($1, $2)', [ch, 'from other']);
      const m = await withTimeout(got, 10000, 'notification');
      expect(m.channel === ch && m.payload === 'from other', `notification ${JSON.stringify(m)}`);
      await conn.query(`UNLISTEN ${ch}`);
    }],
    ['SET search_path held', async () => {
      const s = `sp_${RUN}`;
      await conn.query(`CREATE SCHEMA ${s}; CREATE TABLE ${s}.only_here (v int); INSERT INTO ${s}.only_here VALUES (42)`);
      await conn.query(`SET search_path TO ${s}, public`);
      for (let i = 0; i < 3; i++) {
        const r = await conn.query('SELECT v FROM only_here');
        expect(r.rows[0].v === 42, 'value');
      }
      const r = await conn.query('SHOW search_path');
      expect(r.rows[0].search_path === `${s}, public`, `search_path ${r.rows[0].search_path}`);
      await conn.query('RESET search_path');
      await conn.query(`DROP SCHEMA ${s} CASCADE`);
    }],
    // Last: PostgreSQL's postmaster signals a cancelled backend twice (its pid, then its process
    // group), and on a busy machine the second SIGINT can land on the statement after the
    // cancelled one, a COPY waiting for data above all.
    ['cancel of pg_sleep(30) 57014', async () => {
      // The server's own pid: behind a pooler the key the driver holds is the pooler's.
      const pid = (await conn.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      const running = conn.query('SELECT pg_sleep(30)').then(() => null, (e) => e);
      await untilSleeping(other, pid);
      await sendCancelRequest(conn.processID, conn.secretKey);
      const e = await running;
      expect(e && e.code === '57014', `got ${e && (e.code + ' ' + e.message)}`);
      const r = await conn.query('SELECT 1 AS one');
      expect(r.rows[0].one === 1, 'session unusable after cancel');
    }],
  ];

  for (const [name, fn] of checks) {
    try {
      await fn();
      console.log(`ok   pg: ${name}`);
    } catch (e) {
      failed.push(name);
      console.log(`FAIL pg: ${name}: ${e && e.stack ? e.stack.split('\n')[0] : e}`);
    }
  }
  await other.query(`DROP TABLE IF EXISTS ${t}, drv_pg_copy_${RUN}`);
  await conn.end();
  await other.end();
  if (failed.length) {
    console.log(`${failed.length} check(s) failed`);
    process.exitCode = 1;
  }
}

main().catch((e) => {
  console.log(`FAIL pg: ${e && e.stack}`);
  process.exitCode = 1;
});
