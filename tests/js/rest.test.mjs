// Snapshot reads: supabase-js's PostgREST client (`.from().select()`, unmodified) against the
// gateway's read-only /rest/v1 for change-captured tables: filters, order, limit, single(),
// exact counts, in(), or(), the rowcast schema's jobs, and the same per-user authorisation as
// realtime.
//
// Needs ROWCAST_URL, DATABASE_URL and JWT_SECRET. Run: node --test tests/js/rest.test.mjs

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { createClient as create } from '@supabase/supabase-js'
import WebSocket from 'ws'

import { ANON_KEY, SERVICE_KEY, newUserId, openPool, token } from './helpers.mjs'

const BASE = process.env.ROWCAST_URL
let pool
const table = `notes_${Date.now().toString(36)}`
const alice = newUserId()
const bob = newUserId()

before(async () => {
  pool = openPool()
  await pool.query(`create table public.${table} (id serial primary key, user_id text not null, title text, n int, tag text)`)
  await pool.query(`select rowcast.enable('public.${table}', owner_column => 'user_id')`)
  for (const [user, title, n, tag] of [
    [alice, 'a1', 1, 'x'], [alice, 'a2', 2, 'y'], [alice, 'a3', 3, null], [alice, 'a4', 4, 'x'], [bob, 'b1', 5, 'x'],
  ]) {
    await pool.query(`insert into public.${table} (user_id, title, n, tag) values ($1, $2, $3, $4)`, [user, title, n, tag])
  }
})
after(() => pool.end())

/** supabase-js on Node 20 needs a WebSocket transport even when only REST is used. */
const createClient = (url, key, options = {}) => create(url, key, { ...options, realtime: { transport: WebSocket } })

/** A client for `user` (a JWT as supabase-js would hold after sign-in). */
const as = (jwt) => createClient(BASE, ANON_KEY, { accessToken: async () => jwt, auth: { persistSession: false } })
const user = (id) => as(token({ sub: id }))

test('select with eq, order and limit returns only the caller\'s rows, in order', async () => {
  const { data, error } = await user(alice).from(table).select('id,title,n').eq('tag', 'x').order('n', { ascending: false }).limit(5)
  assert.equal(error, null)
  assert.deepEqual(data.map((r) => r.title), ['a4', 'a1'])
  assert.deepEqual(Object.keys(data[0]).sort(), ['id', 'n', 'title'])
})

test('count exact, range, in() and or() work as supabase-js sends them', async () => {
  const c = user(alice)
  const counted = await c.from(table).select('*', { count: 'exact' }).range(0, 1).order('n')
  assert.equal(counted.error, null)
  assert.equal(counted.count, 4)
  assert.deepEqual(counted.data.map((r) => r.title), ['a1', 'a2'])
  const listed = await c.from(table).select('title').in('n', [2, 3, 5]).order('n')
  assert.deepEqual(listed.data, [{ title: 'a2' }, { title: 'a3' }])
  const either = await c.from(table).select('title').or('n.eq.1,tag.is.null').order('n')
  assert.deepEqual(either.data, [{ title: 'a1' }, { title: 'a3' }])
  const head = await c.from(table).select('*', { count: 'exact', head: true })
  assert.equal(head.count, 4)
})

test('single() returns one object, and 406 PGRST116 when there is not exactly one', async () => {
  const c = user(alice)
  const one = await c.from(table).select('title').eq('n', 2).single()
  assert.deepEqual(one.data, { title: 'a2' })
  const none = await c.from(table).select('title').eq('n', 99).single()
  assert.equal(none.error.code, 'PGRST116')
  // PostgREST 13's words, which supabase-js 2.109's own tests expect.
  assert.equal(none.error.message, 'Cannot coerce the result to a single JSON object')
  assert.equal(none.error.details, 'The result contains 0 rows')
  const many = await c.from(table).select('title').lt('n', 3).single()
  assert.equal(many.error.message, 'Cannot coerce the result to a single JSON object')
  assert.equal(many.error.details, 'The result contains 2 rows')
})

test('another user\'s rows stay invisible whatever the filter, the service role sees all, anon none', async () => {
  const spying = await user(alice).from(table).select('title').eq('user_id', bob)
  assert.deepEqual(spying.data, [])
  const all = await createClient(BASE, SERVICE_KEY, { auth: { persistSession: false } }).from(table).select('title', { count: 'exact' })
  assert.equal(all.count, 5)
  const anon = await createClient(BASE, ANON_KEY, { auth: { persistSession: false } }).from(table).select('title')
  assert.deepEqual(anon.data, [])
})

test('errors come back in PostgREST shape', async () => {
  const c = user(alice)
  const missingColumn = await c.from(table).select('nope')
  assert.equal(missingColumn.error.code, '42703')
  const missingTable = await c.from('no_such_table').select('*')
  assert.equal(missingTable.error.code, 'PGRST205')
  const badValue = await c.from(table).select('*').eq('n', 'abc')
  assert.match(badValue.error.message, /invalid input syntax for type integer/)
  const badSchema = await c.schema('secret').from(table).select('*')
  assert.equal(badSchema.error.code, 'PGRST106')
})

test('the rowcast schema serves the caller\'s jobs, as a reopened popup reads them', async () => {
  const jwt = token({ sub: alice })
  const response = await fetch(`${BASE}/api/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'demo', input: { steps: 1, step_ms: 1 }, run_at: '2999-01-01T00:00:00Z' }),
  })
  const job = await response.json()
  const { data, error } = await as(jwt).schema('rowcast').from('jobs').select('*').order('created_at', { ascending: false }).limit(50)
  assert.equal(error, null)
  assert.deepEqual(data.map((j) => j.id), [job.id])
  const bobs = await user(bob).schema('rowcast').from('jobs').select('id')
  assert.deepEqual(bobs.data, [])
})
