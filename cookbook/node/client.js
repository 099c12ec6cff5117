// The cookbook's node-postgres client: pg.Pool with pg's own settings, against PostgreSQL.
//
//   node client.js busy|idle defaults|recommended
//
// Busy: `SELECT 1` every second; idle: a query whose answer takes an hour (pg_sleep), the
// idle read of ruby-pg issue 509, as cookbook/clients/psycopg_client.py. The service is
// TCPECHO_LAB_HOST and TCPECHO_LAB_PORT; the values are cookbook/clients/common.py's.
//
// Node has no API for TCP_USER_TIMEOUT, so nothing bounds a request in flight but the
// kernel's retransmission budget (tcp_retries2) or pg's own query_timeout, a timer that
// rejects the query whatever the socket does. keepAlive calls socket.setKeepAlive(true,
// keepAliveInitialDelayMillis) once connected: SO_KEEPALIVE and TCP_KEEPIDLE, and libuv
// (>= 1.35) sets TCP_KEEPINTVL 1 and TCP_KEEPCNT 10 with them, which no option changes.
'use strict'

const { Pool } = require('pg')

const KEEPALIVE_IDLE_MS = 10000 // common.KEEPALIVE_IDLE_S
const QUERY_TIMEOUT_MS = 5000 // common.USER_TIMEOUT_MS: the bound a request in flight gets
const REQUEST_INTERVAL_MS = 1000 // common.REQUEST_INTERVAL_S
// A query meant to take an hour gets its own query_timeout above that, or the pool's 5 s
// would end it: query_timeout bounds every query, slow or stuck alike.
const LONG_QUERY_TIMEOUT_MS = 3700 * 1000

const SETTINGS = {
  defaults: {},
  recommended: {
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_IDLE_MS,
    query_timeout: QUERY_TIMEOUT_MS,
  },
}

function usage () {
  process.stderr.write('usage: client.js busy|idle defaults|recommended\n')
  process.exit(2)
}

function failed (error) {
  process.stderr.write(`connection failed: ${error.code || error.name}: ${error.message}\n`)
  process.exit(1)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function run (mode, settings) {
  const pool = new Pool({
    host: process.env.TCPECHO_LAB_HOST || '127.0.0.1',
    port: Number(process.env.TCPECHO_LAB_PORT || '5432'),
    user: 'postgres',
    database: 'postgres',
    max: 1, // one connection, the one the lab watches
    ...SETTINGS[settings],
  })
  // An idle pooled client's error (its socket closed) is emitted on the pool.
  pool.on('error', failed)
  if (mode === 'idle') {
    await pool.query({ text: 'SELECT pg_sleep(3600)', query_timeout: LONG_QUERY_TIMEOUT_MS })
    return
  }
  for (;;) {
    await pool.query('SELECT 1')
    await sleep(REQUEST_INTERVAL_MS)
  }
}

function main () {
  const [mode, settings] = process.argv.slice(2)
  if (process.argv.length !== 4 || !['busy', 'idle'].includes(mode) ||
      !Object.hasOwn(SETTINGS, settings)) {
    usage()
  }
  run(mode, settings).then(() => process.exit(0), failed)
}

main()
