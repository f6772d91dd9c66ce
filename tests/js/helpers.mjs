// Shared plumbing for the supabase-js interop suite: the required environment, HS256 JWT
// minting with node:crypto, Postgres fixtures (one fresh table per test), supabase-js clients
// built the way apps build them, and recorders that wait for an expected event or fail after
// a timeout. Nothing here sleeps for correctness.

import assert from 'node:assert/strict'
import { createHmac, randomBytes } from 'node:crypto'
import http from 'node:http'
import net from 'node:net'

import { createClient } from '@supabase/supabase-js'
import pg from 'pg'
import WebSocket from 'ws'

/** How long to wait for an event that must arrive. */
const TIMEOUT_MS = 5_000
/** supabase-js reports TIMED_OUT after 10 s without a join reply; wait a little longer. */
const JOIN_TIMEOUT_MS = 11_000

/** `commit_timestamp` as Supabase sends it: UTC, milliseconds, literal Z. */
const COMMIT_TIMESTAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

const REQUIRED_ENV = {
  ROWCAST_URL: 'base URL of a running rowcast gateway, e.g. http://127.0.0.1:41234',
  DATABASE_URL: 'a fresh, already-migrated Postgres database for this run',
  JWT_SECRET: "the gateway's HS256 JWT secret",
}

/** Reads the required variables; throws naming every missing one. These tests never skip. */
function requireEnv(env = process.env) {
  const missing = Object.keys(REQUIRED_ENV).filter((name) => !env[name])
  if (missing.length > 0) {
    const lines = missing.map((name) => `  ${name}: ${REQUIRED_ENV[name]}`)
    throw new Error(
      `rowcast JS interop tests cannot run: missing environment variable(s)\n${lines.join('\n')}\n` +
        'Set them (the Rust test harness does) and run `node --test tests/js/`. These tests never skip.'
    )
  }
  return Object.fromEntries(Object.keys(REQUIRED_ENV).map((name) => [name, env[name]]))
}

const ENV = requireEnv()

// ---------------------------------------------------------------------------------------------
// JWTs

const base64url = (value) => Buffer.from(JSON.stringify(value)).toString('base64url')

/** An HS256 JWT signed with JWT_SECRET, with `extra` claims (e.g. app_metadata); `aud` is set only for `authenticated`. */
export function token({ sub, role = 'authenticated', expSeconds = 3600, extra = {} } = {}) {
  const iat = Math.floor(Date.now() / 1000)
  const claims = {
    ...extra,
    ...(sub !== undefined && { sub }),
    role,
    ...(role === 'authenticated' && { aud: 'authenticated' }),
    iat,
    exp: iat + expSeconds,
  }
  const unsigned = `${base64url({ alg: 'HS256', typ: 'JWT' })}.${base64url(claims)}`
  const signature = createHmac('sha256', ENV.JWT_SECRET).update(unsigned).digest('base64url')
  return `${unsigned}.${signature}`
}

/** The project's anon key: a JWT with role anon, valid for an hour. */
export const ANON_KEY = token({ role: 'anon' })
/** The project's service key. */
export const SERVICE_KEY = token({ role: 'service_role' })

/** A fresh user id, so no two tests can see each other's users. */
export const newUserId = () => `user-${unique()}`

const unique = () => randomBytes(4).toString('hex')

// ---------------------------------------------------------------------------------------------
// Postgres

export const openPool = () => new pg.Pool({ connectionString: ENV.DATABASE_URL, max: 4 })

const COLUMNS = `id bigserial primary key, user_id text not null, title text,
  done boolean not null default false, n int, meta jsonb, created_at timestamptz default now()`

const ENABLE = {
  owner: (qualified) => `select rowcast.enable('${qualified}', owner_column => 'user_id')`,
  public: (qualified) => `select rowcast.enable('${qualified}', public => true)`,
  disabled: null,
}

/** A table with rows as typed JSON (Postgres' own `to_jsonb`), the shape the gateway must send. */
export class Table {
  constructor(pool, name) {
    this.pool = pool
    this.name = name
  }

  /**
   * Creates `public.<kind>_<random>` and enables capture: `owner` (owner column user_id),
   * `public` (everyone, anon included) or `disabled` (not enabled at all).
   */
  static async create(pool, kind, { replicaIdentityFull = false } = {}) {
    assert.ok(kind in ENABLE, `unknown table kind ${kind}`)
    const table = new Table(pool, `${kind}_${unique()}`)
    const qualified = `public.${table.name}`
    await pool.query(`create table ${qualified} (${COLUMNS})`)
    if (replicaIdentityFull) await pool.query(`alter table ${qualified} replica identity full`)
    if (ENABLE[kind]) await pool.query(ENABLE[kind](qualified))
    return table
  }

  /** Inserts one row and returns it as `to_jsonb` sees it. */
  async insert(row) {
    const { names, values } = columnsOf(row)
    const params = names.map((_, i) => `$${i + 1}`).join(', ')
    return this.#one(
      `insert into public.${this.name} as r (${names.join(', ')}) values (${params}) returning to_jsonb(r) as row`,
      values
    )
  }

  /** Updates row `id` with `patch` and returns the new row as `to_jsonb` sees it. */
  async update(id, patch) {
    const { names, values } = columnsOf(patch)
    const sets = names.map((name, i) => `${name} = $${i + 2}`).join(', ')
    return this.#one(
      `update public.${this.name} as r set ${sets} where id = $1 returning to_jsonb(r) as row`,
      [id, ...values]
    )
  }

  async delete(id) {
    await this.pool.query(`delete from public.${this.name} where id = $1`, [id])
  }

  async #one(sql, values) {
    const { rows } = await this.pool.query(sql, values)
    assert.equal(rows.length, 1, `expected one row from: ${sql}`)
    return rows[0].row
  }
}

function columnsOf(row) {
  const names = Object.keys(row)
  // Objects go in as JSON text; node-postgres would turn a top-level array into a pg array.
  const values = names.map((name) =>
    row[name] !== null && typeof row[name] === 'object' ? JSON.stringify(row[name]) : row[name]
  )
  return { names, values }
}

// ---------------------------------------------------------------------------------------------
// supabase-js clients

/**
 * supabase-js as an app builds it. Node 20 has no global WebSocket, so realtime-js needs
 * `transport` (its documented option); `vsn` picks the serializer ('1.0.0' or '2.0.0',
 * default 2.0.0); `url` another address than ROWCAST_URL. Every client is torn down when test `t` ends so the process can exit.
 */
function newClient(t, key, { vsn, accessToken, url = ENV.ROWCAST_URL } = {}) {
  const client = createClient(url, key, {
    auth: { persistSession: false, autoRefreshToken: false },
    ...(accessToken && { accessToken }),
    realtime: { transport: WebSocket, params: {}, ...(vsn && { vsn }) },
  })
  t.after(() => client.removeAllChannels())
  return client
}

/** A backend or signed-out app: the key alone (anon or service), no session. */
export function keyClient(t, key, options) {
  return newClient(t, key, options)
}

/**
 * An app whose auth provider hands supabase-js the user's JWT through the `accessToken`
 * callback (null while signed out). Returns the client and `setToken(jwt)`, which does what
 * supabase-js does on sign-in or token refresh: `realtime.setAuth(jwt)`, pushing
 * `access_token` to every joined channel.
 */
export async function userClient(t, jwt, options) {
  const session = { jwt }
  const client = newClient(t, ANON_KEY, { ...options, accessToken: async () => session.jwt })
  // supabase-js 2.109 resolves the callback asynchronously: a channel subscribed in the same
  // tick as createClient joins with no access_token, and the token is never pushed afterwards
  // (it already equals the cached value when the join reply arrives). An app's first await
  // lets it resolve; so do we.
  await client.realtime.setAuth()
  const setToken = (next) => {
    session.jwt = next
    return client.realtime.setAuth(next)
  }
  return { client, setToken }
}

// ---------------------------------------------------------------------------------------------
// Waiting for events

/** Collects events and waits for one matching a predicate, failing after a timeout. */
export class Recorder {
  items = []
  #waiters = new Set()

  constructor(label) {
    this.label = label
  }

  push = (item) => {
    this.items.push(item)
    for (const waiter of this.#waiters) waiter.offer(item)
  }

  /** Resolves with the first recorded or future item matching `predicate`. */
  waitFor(predicate, { timeout = TIMEOUT_MS, what = 'matching event' } = {}) {
    const seen = this.items.find(predicate)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const waiter = {
        offer: (item) => {
          if (!predicate(item)) return
          this.#waiters.delete(waiter)
          clearTimeout(timer)
          resolve(item)
        },
      }
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter)
        reject(new Error(`${this.label}: no ${what} within ${timeout} ms; got ${this.describe()}`))
      }, timeout)
      this.#waiters.add(waiter)
    })
  }

  describe() {
    const text = JSON.stringify(this.items, (_, v) => (v instanceof Error ? v.message : v))
    return text.length > 1500 ? `${text.slice(0, 1500)}…` : text
  }
}

/**
 * Subscribes channel `name` with one postgres_changes binding per entry of `bindings`
 * (`{table, schema?, event?, filter?, select?}`; `table` a Table or a name, schema default public) plus a `system` listener, and resolves once
 * supabase-js reports SUBSCRIBED. Returns the channel and its recorders: `changes[i]` for
 * binding i, `system`, and `status` (every subscribe-callback status).
 */
export async function subscribe(client, name, bindings) {
  const channel = client.channel(name)
  const changes = bindings.map((_, i) => new Recorder(`${name} binding ${i}`))
  const system = new Recorder(`${name} system`)
  const status = new Recorder(`${name} status`)
  bindings.forEach(({ table, schema = 'public', event = '*', filter, select }, i) => {
    const name = typeof table === 'string' ? table : table.name
    const spec = { event, schema, table: name, ...(filter && { filter }), ...(select && { select }) }
    channel.on('postgres_changes', spec, changes[i].push)
  })
  channel.on('system', {}, system.push)
  channel.subscribe((state, err) => status.push({ state, err }))
  const first = await status.waitFor(() => true, { timeout: JOIN_TIMEOUT_MS, what: 'status' })
  assert.equal(first.state, 'SUBSCRIBED', `${name}: ${first.err?.message ?? 'join failed'}`)
  return { channel, changes, system, status }
}

/** Waits for the gateway's "Subscribed to PostgreSQL" system message on `sub`. */
export async function expectSubscribedToPostgres(sub) {
  const message = await sub.system.waitFor((m) => m.extension === 'postgres_changes', {
    what: 'postgres_changes system message',
  })
  const { extension, status, message: text, channel } = message
  assert.deepEqual(
    { extension, status, message: text, channel },
    {
      extension: 'postgres_changes',
      status: 'ok',
      message: 'Subscribed to PostgreSQL',
      channel: sub.channel.subTopic,
    }
  )
}

/** Waits for a `postgres_changes` system error whose message satisfies `check`. */
export function expectPostgresError(sub, check, what) {
  return sub.system.waitFor(
    (m) => m.extension === 'postgres_changes' && m.status === 'error' && check(m.message),
    { what }
  )
}

/**
 * Repeats `action` every `every` ms until `recorder` holds an item matching `predicate`, for
 * paths where the gateway applies something asynchronously (e.g. a pushed access_token).
 */
export async function repeatUntil(recorder, predicate, action, { every = 500, timeout = 10_000 } = {}) {
  const deadline = Date.now() + timeout
  for (;;) {
    await action()
    try {
      return await recorder.waitFor(predicate, { timeout: every })
    } catch (err) {
      if (Date.now() >= deadline) throw err
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Payload shapes

/** Matches a change payload for row `id` with `eventType`. */
export const changeOf = (eventType, id) => (p) =>
  p.eventType === eventType && (p.new?.id === id || p.old?.id === id)

/** `EVENT:id` labels, in arrival order, for compact assertions on who saw what. */
export const labels = (recorder) =>
  recorder.items.map((p) => `${p.eventType}:${p.new?.id ?? p.old?.id}`)

/** Titles of new rows, in arrival order. */
export const titles = (recorder) => recorder.items.map((p) => p.new?.title)

/**
 * Asserts a supabase-js change payload exactly: keys, schema, table, eventType, the typed
 * `new`/`old` records and `errors: null`. Timestamps are compared as instants, since the
 * gateway's session time zone may format them differently from ours.
 */
export function assertChange(payload, { table, eventType, newRow = {}, oldRow = {} }) {
  assert.match(payload.commit_timestamp, COMMIT_TIMESTAMP)
  assert.deepEqual(
    { ...payload, new: instants(payload.new), old: instants(payload.old) },
    {
      schema: 'public',
      table: table.name,
      commit_timestamp: payload.commit_timestamp,
      eventType,
      new: instants(newRow),
      old: instants(oldRow),
      errors: null,
    }
  )
}

function instants(row) {
  if (typeof row?.created_at !== 'string') return row
  const at = Date.parse(row.created_at)
  assert.ok(!Number.isNaN(at), `created_at is not a timestamp: ${row.created_at}`)
  return { ...row, created_at: at }
}

// ---------------------------------------------------------------------------------------------
// Rolling deploys: two gateways behind a balancer that follows /ready

const ROLLING_ENV = {
  ROWCAST_NODE1_URL: 'the gateway that will be sent SIGTERM',
  ROWCAST_NODE1_PID: "that gateway's process id",
}

/** The two gateways of a rolling-deploy suite and the first one's pid; throws naming what is missing. */
export function rollingNodes() {
  const missing = Object.keys(ROLLING_ENV).filter((name) => !process.env[name])
  if (missing.length > 0) {
    throw new Error(`the rolling-deploy suites need ${missing.map((n) => `${n} (${ROLLING_ENV[n]})`).join(', ')}; they never skip`)
  }
  return { node1: process.env.ROWCAST_NODE1_URL, node2: process.env.ROWCAST_URL, pid: Number(process.env.ROWCAST_NODE1_PID) }
}

/** GET <base>/ready answers 200 within half a second. */
function isReady(base) {
  return new Promise((resolve) => {
    const req = http.get(`${base}/ready`, { timeout: 500 }, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(false))
  })
}

/**
 * A TCP balancer on a free port that sends each new connection to the first backend whose
 * /ready answers 200; `picks` lists the backend index each connection went to. A new
 * connection first awaits `hold()` (by default nothing), so a test can keep clients away.
 */
export async function balancer(backends, { hold = async () => {} } = {}) {
  const picks = []
  const sockets = new Set()
  const server = net.createServer(async (client) => {
    client.pause()
    sockets.add(client)
    client.on('close', () => sockets.delete(client))
    client.on('error', () => {})
    await hold()
    let chosen = -1
    for (const [i, base] of backends.entries()) {
      if (await isReady(base)) {
        chosen = i
        break
      }
    }
    if (chosen < 0 || client.destroyed) return client.destroy()
    picks.push(chosen)
    const { hostname, port } = new URL(backends[chosen])
    const upstream = net.connect(Number(port), hostname)
    sockets.add(upstream)
    upstream.on('error', () => client.destroy())
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => {
      sockets.delete(upstream)
      client.destroy()
    })
    client.pipe(upstream).pipe(client)
    client.resume()
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const close = () => {
    for (const s of sockets) s.destroy()
    return new Promise((resolve) => server.close(resolve))
  }
  return { url: `http://127.0.0.1:${server.address().port}`, picks, close }
}
