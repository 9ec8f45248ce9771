// W1 and W2 from Node.js (node-postgres, `pg.Client`), per invocation, three ways each: what
// bench/pg_w.py does from Python.
//
// - endpoint: a module-level client of warmpool's PostgreSQL-protocol endpoint (Unix socket),
//   connected once and reused by every invocation;
// - connect: a client straight to PostgreSQL, connected and ended in every invocation (TLS and
//   SCRAM each time);
// - static: a module-level client straight to PostgreSQL, connected once.
//
// W1 is one point select by primary key; W2 is a transaction of three point selects and one
// insert into bench_events (BEGIN, the four statements, COMMIT: six round trips).
//
// Usage: node pg_w.js INVOCATIONS ROUNDS ROWS, with NODE_PATH naming the node_modules that holds
// `pg`. The direct clients take host, port, user, password and database from libpq's PG*
// variables, as node-postgres does by itself; node-postgres does not read PGSSLROOTCERT, so the
// CA file it names is passed as `ssl.ca`, and Node's TLS checks the chain and the host name
// (`rejectUnauthorized` stays true: libpq's sslmode=verify-full). SCRAM binds to the TLS channel
// when the server offers it, as libpq does by default (`channel_binding=prefer`). The endpoint's
// socket directory and database come from WP_ENDPOINT_DIR and WP_ENDPOINT_DB. Prints one JSON
// object shaped as pg_w.py's.

'use strict'

const fs = require('fs')
const pg = require('pg')

const SELECT = 'SELECT id, name, balance FROM bench_accounts WHERE id = $1'
const INSERT = 'INSERT INTO bench_events (account_id, amount) VALUES ($1, $2)'
const W2_SELECTS = 3
const WARMUP = 10

function randint(lo, hi) {
  return lo + Math.floor(Math.random() * (hi - lo + 1))
}

// Named statements: node-postgres parses each once per client and then only binds, as psycopg
// does after a statement's fifth use.
async function select(client, rows) {
  const res = await client.query({ name: 'wp_select', text: SELECT, values: [randint(1, rows)] })
  if (res.rows.length !== 1) {
    throw new Error('a point select found no row')
  }
  return res.rows[0]
}

async function w1(client, rows) {
  await select(client, rows)
}

async function w2(client, rows) {
  await client.query('BEGIN')
  try {
    const first = await select(client, rows)
    for (let i = 1; i < W2_SELECTS; i++) {
      await select(client, rows)
    }
    await client.query({ name: 'wp_insert', text: INSERT, values: [first.id, randint(1, 100)] })
    await client.query('COMMIT')
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {})
    throw e
  }
}

function directConfig() {
  const ca = process.env.PGSSLROOTCERT
  if (!ca || process.env.PGSSLMODE !== 'verify-full') {
    throw new Error('the direct connection wants PGSSLMODE=verify-full and PGSSLROOTCERT')
  }
  return { ssl: { ca: fs.readFileSync(ca) }, enableChannelBinding: true }
}

async function main() {
  const [invocations, rounds, rows] = process.argv.slice(2, 5).map((a) => parseInt(a, 10))
  const direct = directConfig()
  const endpoint = {
    host: process.env.WP_ENDPOINT_DIR,
    port: 5432,
    database: process.env.WP_ENDPOINT_DB,
    // Not a role of the database: the extension logs in with its own credentials.
    user: 'any_function',
    ssl: false,
  }
  const moduleEndpoint = new pg.Client(endpoint)
  await moduleEndpoint.connect()
  const moduleDirect = new pg.Client(direct)
  await moduleDirect.connect()

  const scenarios = [
    ['endpoint', (work) => work(moduleEndpoint, rows)],
    [
      'connect',
      async (work) => {
        const client = new pg.Client(direct)
        await client.connect()
        try {
          await work(client, rows)
        } finally {
          await client.end()
        }
      },
    ],
    ['static', (work) => work(moduleDirect, rows)],
  ]
  const workloads = [
    ['w1', w1],
    ['w2', w2],
  ]
  const samples = {}
  const errors = {}
  for (const [w] of workloads) {
    samples[w] = {}
    errors[w] = {}
    for (const [name] of scenarios) {
      samples[w][name] = []
      errors[w][name] = 0
    }
  }
  // Unmeasured invocations first, as pg_w.py's: the module-level clients' statements are
  // prepared and the JIT has seen the code, as in a warm environment.
  for (const [, work] of workloads) {
    for (const [name, f] of scenarios) {
      if (name !== 'connect') {
        for (let i = 0; i < WARMUP; i++) {
          await f(work)
        }
      }
    }
  }
  for (let r = 0; r < rounds; r++) {
    const order = scenarios.slice(r % 3).concat(scenarios.slice(0, r % 3))
    for (const [w, work] of workloads) {
      for (const [name, f] of order) {
        for (let i = 0; i < invocations; i++) {
          const start = process.hrtime.bigint()
          try {
            await f(work)
          } catch (e) {
            errors[w][name] += 1
            process.stderr.write(`${w} ${name}: ${e.code || e.name}\n`)
            continue
          }
          samples[w][name].push(Number(process.hrtime.bigint() - start) / 1000)
        }
      }
    }
  }
  await moduleEndpoint.end()
  await moduleDirect.end()
  const version = require('pg/package.json').version
  process.stdout.write(
    JSON.stringify({
      driver: `pg ${version}, Node.js ${process.versions.node}`,
      warmup_w2: 2 * WARMUP,
      samples_us: samples,
      errors,
    })
  )
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`)
  process.exit(1)
})
