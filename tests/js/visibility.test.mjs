// Who sees what beyond one owner, and which columns: supabase-js 2.109 (unmodified) against
// the gateway. A binding's `select` limits `new` and `old` to the chosen columns plus the
// primary key; a table whose owner column is compared with another claim than `sub`
// (`app_metadata.org_id`, or the array `app_metadata.team_ids` for membership) shows its rows
// to every member and no one else, the same on realtime and on REST, and a filter never
// widens that. Every test makes its own tables and users.
//
// Needs ROWCAST_URL, DATABASE_URL and JWT_SECRET. Run: node --test tests/js/visibility.test.mjs

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, test } from 'node:test'

import {
  Table,
  changeOf,
  expectPostgresError,
  expectSubscribedToPostgres,
  newUserId,
  openPool,
  subscribe,
  titles,
  token,
  userClient,
} from './helpers.mjs'

let pool
before(() => {
  pool = openPool()
})
after(() => pool.end())

const unique = () => randomBytes(4).toString('hex')

/** A table `public.<prefix>_<random>` with `columns`, captured with `enable` (SQL after the table name). */
async function table(prefix, columns, enable) {
  const t = new Table(pool, `${prefix}_${unique()}`)
  await pool.query(`create table public.${t.name} (${columns})`)
  await pool.query(`select rowcast.enable('public.${t.name}', ${enable})`)
  return t
}

/** A signed-in user whose token carries `app_metadata`. */
async function member(t, appMetadata) {
  const id = newUserId()
  const jwt = token({ sub: id, extra: { app_metadata: appMetadata } })
  const { client } = await userClient(t, jwt)
  return { id, jwt, client }
}

test("a binding's select carries only the chosen columns and the primary key, in new and old", async (t) => {
  const jobs = await table('selected', 'id bigserial primary key, user_id text not null, progress int, body text, secret text', "owner_column => 'user_id'")
  await pool.query(`alter table public.${jobs.name} replica identity full`)
  await pool.query(`select rowcast.enable('public.${jobs.name}', owner_column => 'user_id')`)
  const me = await member(t, {})
  const sub = await subscribe(me.client, 'narrow', [
    { table: jobs, select: ['progress', 'user_id'] },
    { table: jobs, event: 'UPDATE', select: [] },
  ])
  await expectSubscribedToPostgres(sub)
  const row = await jobs.insert({ user_id: me.id, progress: 10, body: 'x'.repeat(5000), secret: 's' })
  const inserted = await sub.changes[0].waitFor(changeOf('INSERT', row.id))
  assert.deepEqual(inserted.new, { id: row.id, user_id: me.id, progress: 10 })
  await jobs.update(row.id, { progress: 60, secret: 't' })
  const updated = await sub.changes[0].waitFor(changeOf('UPDATE', row.id))
  assert.deepEqual(updated.new, { id: row.id, user_id: me.id, progress: 60 })
  assert.deepEqual(updated.old, { id: row.id, user_id: me.id, progress: 10 })
  const keysOnly = await sub.changes[1].waitFor(changeOf('UPDATE', row.id))
  assert.deepEqual(keysOnly.new, { id: row.id })
})

test('a select naming an unknown column, a string select and a select on a wildcard get Supabase errors', async (t) => {
  const jobs = await table('badselect', 'id bigserial primary key, user_id text not null, progress int', "owner_column => 'user_id'")
  const me = await member(t, {})
  const unknown = await subscribe(me.client, 'unknown', [{ table: jobs, select: ['progress', 'nope'] }])
  const e = await expectPostgresError(unknown, (m) => m.includes('invalid column for select nope'), 'unknown column error')
  assert.match(e.message, /^Unable to subscribe to changes with given parameters\. An exception happened .*ERROR P0001 \(raise_exception\) invalid column for select nope$/)
  const text = await subscribe(me.client, 'text', [{ table: jobs, select: 'progress' }])
  await expectPostgresError(
    text,
    (m) => m === 'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]',
    'string select error'
  )
  const wildcard = await subscribe(me.client, 'wild', [{ table: '*', select: ['id'] }])
  await expectPostgresError(
    wildcard,
    (m) => m === 'Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.',
    'wildcard select error'
  )
})

test("an organisation's rows reach every member live and no one else, and a filter never widens", async (t) => {
  const jobs = await table('orgjobs', 'id bigserial primary key, org_id text not null, title text', "owner_column => 'org_id', owner_claim => 'app_metadata.org_id'")
  const [acme, evil] = [`acme-${unique()}`, `evil-${unique()}`]
  const ann = await member(t, { org_id: acme })
  const ben = await member(t, { org_id: acme })
  const eve = await member(t, { org_id: evil })
  const annSub = await subscribe(ann.client, 'ann', [{ table: jobs }])
  const benSub = await subscribe(ben.client, 'ben', [{ table: jobs }])
  const eveSub = await subscribe(eve.client, 'eve', [{ table: jobs }, { table: jobs, filter: `org_id=eq.${acme}` }])
  await Promise.all([annSub, benSub, eveSub].map(expectSubscribedToPostgres))

  await jobs.insert({ org_id: acme, title: 'acme 1' })
  await jobs.insert({ org_id: evil, title: 'evil 1' })
  const sentinelAcme = await jobs.insert({ org_id: acme, title: 'acme 2' })
  const sentinelEvil = await jobs.insert({ org_id: evil, title: 'evil 2' })
  await Promise.all([
    annSub.changes[0].waitFor(changeOf('INSERT', sentinelAcme.id)),
    benSub.changes[0].waitFor(changeOf('INSERT', sentinelAcme.id)),
    eveSub.changes[0].waitFor(changeOf('INSERT', sentinelEvil.id)),
  ])
  assert.deepEqual(titles(annSub.changes[0]), ['acme 1', 'acme 2'])
  assert.deepEqual(titles(benSub.changes[0]), ['acme 1', 'acme 2'])
  assert.deepEqual(titles(eveSub.changes[0]), ['evil 1', 'evil 2'])
  assert.deepEqual(titles(eveSub.changes[1]), [], "a filter on another org's id widens nothing")

  const annRows = await ann.client.from(jobs.name).select('title').order('id')
  assert.deepEqual(annRows.data, [{ title: 'acme 1' }, { title: 'acme 2' }])
  const eveSpying = await eve.client.from(jobs.name).select('title').eq('org_id', acme)
  assert.deepEqual(eveSpying.data, [])
  const eveRows = await eve.client.from(jobs.name).select('title', { count: 'exact' })
  assert.equal(eveRows.count, 2)
})

test('an array claim means membership: a user in teams red and blue sees both, not green, on realtime and REST', async (t) => {
  const tasks = await table('teamtasks', 'id bigserial primary key, team_id text not null, title text', "owner_column => 'team_id', owner_claim => 'app_metadata.team_ids'")
  const [red, blue, green] = ['red', 'blue', 'green'].map((c) => `${c}-${unique()}`)
  const pat = await member(t, { team_ids: [red, blue] })
  const sub = await subscribe(pat.client, 'pat', [{ table: tasks }])
  await expectSubscribedToPostgres(sub)
  await tasks.insert({ team_id: red, title: 'red' })
  await tasks.insert({ team_id: green, title: 'green' })
  const last = await tasks.insert({ team_id: blue, title: 'blue' })
  await sub.changes[0].waitFor(changeOf('INSERT', last.id))
  assert.deepEqual(titles(sub.changes[0]), ['red', 'blue'])
  const rest = await pat.client.from(tasks.name).select('title').order('id')
  assert.deepEqual(rest.data, [{ title: 'red' }, { title: 'blue' }])
  const outsider = await member(t, { team_ids: [green] })
  const theirs = await outsider.client.from(tasks.name).select('title')
  assert.deepEqual(theirs.data, [{ title: 'green' }])
})
