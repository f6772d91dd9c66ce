// Interop: the official @supabase/supabase-js client (2.109, unmodified) against a running
// rowcast gateway. Covers postgres_changes delivery and exact payload shapes under both
// serializers (vsn 1.0.0 and 2.0.0), per-user authorisation (owner column, service role, anon
// on public tables), filters that narrow but never widen, a join made before the user's token
// resolved, token refresh and expiry, subscription error messages, REPLICA IDENTITY FULL, and a
// row larger than a Postgres page. Every test makes its own tables and users.
//
// Needs ROWCAST_URL, DATABASE_URL and JWT_SECRET (it throws without them; it never skips).
// Run: node --test tests/js/

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, test } from 'node:test'

import {
  ANON_KEY,
  SERVICE_KEY,
  Table,
  assertChange,
  changeOf,
  expectPostgresError,
  expectSubscribedToPostgres,
  keyClient,
  labels,
  newUserId,
  openPool,
  repeatUntil,
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

/** A signed-in user: a fresh id and a supabase-js client carrying their JWT. */
async function signedIn(t, options) {
  const id = newUserId()
  const { client } = await userClient(t, token({ sub: id }), options)
  return { id, client }
}

for (const vsn of ['2.0.0', '1.0.0']) {
  test(`with vsn ${vsn} a user receives INSERT, UPDATE and DELETE of their own rows in Supabase's shape`, async (t) => {
    const todos = await Table.create(pool, 'owner')
    const alice = await signedIn(t, { vsn })
    assert.ok(alice.client.realtime.endpointURL().endsWith(`vsn=${vsn}`), 'the client speaks the vsn under test')
    const sub = await subscribe(alice.client, 'own-rows', [{ table: todos }])
    const [events] = sub.changes

    // Written right after SUBSCRIBED: the gateway reports SUBSCRIBED only once it is live.
    const row = await todos.insert({
      user_id: alice.id,
      title: 'héllo "wörld" ✓',
      n: 42,
      meta: { tags: ['a', 'b'], nested: { ok: true, ratio: 0.5 } },
    })
    await expectSubscribedToPostgres(sub)
    assertChange(await events.waitFor(changeOf('INSERT', row.id)), {
      table: todos,
      eventType: 'INSERT',
      newRow: row,
    })

    const updated = await todos.update(row.id, { title: 'world', done: true, n: -7 })
    assertChange(await events.waitFor(changeOf('UPDATE', row.id)), {
      table: todos,
      eventType: 'UPDATE',
      newRow: updated,
      oldRow: { id: row.id },
    })

    await todos.delete(row.id)
    assertChange(await events.waitFor(changeOf('DELETE', row.id)), {
      table: todos,
      eventType: 'DELETE',
      oldRow: { id: row.id },
    })
    assert.deepEqual(labels(events), [`INSERT:${row.id}`, `UPDATE:${row.id}`, `DELETE:${row.id}`])
  })
}

test("two users on one table never see each other's rows, and the service role sees both", async (t) => {
  const todos = await Table.create(pool, 'owner')
  const [alice, bob] = [await signedIn(t), await signedIn(t)]
  const aliceSub = await subscribe(alice.client, 'alice', [{ table: todos }])
  const bobSub = await subscribe(bob.client, 'bob', [{ table: todos }])
  const serviceSub = await subscribe(keyClient(t, SERVICE_KEY), 'service', [{ table: todos }])

  const a1 = await todos.insert({ user_id: alice.id, title: 'a1' })
  const b1 = await todos.insert({ user_id: bob.id, title: 'b1' })
  await todos.update(b1.id, { title: 'b1 edited' })
  await todos.delete(b1.id)
  const a2 = await todos.insert({ user_id: alice.id, title: 'a2' }) // alice's sentinel
  const b2 = await todos.insert({ user_id: bob.id, title: 'b2' }) // everyone else's sentinel
  await Promise.all([
    aliceSub.changes[0].waitFor(changeOf('INSERT', a2.id)),
    bobSub.changes[0].waitFor(changeOf('INSERT', b2.id)),
    serviceSub.changes[0].waitFor(changeOf('INSERT', b2.id)),
  ])

  const aliceSaw = [`INSERT:${a1.id}`, `INSERT:${a2.id}`]
  const bobSaw = [`INSERT:${b1.id}`, `UPDATE:${b1.id}`, `DELETE:${b1.id}`, `INSERT:${b2.id}`]
  assert.deepEqual(labels(aliceSub.changes[0]), aliceSaw)
  assert.deepEqual(labels(bobSub.changes[0]), bobSaw)
  assert.deepEqual(labels(serviceSub.changes[0]), [aliceSaw[0], ...bobSaw.slice(0, 3), aliceSaw[1], bobSaw[3]])
})

test('anon sees the rows of a public table but nothing from an owner table', async (t) => {
  const todos = await Table.create(pool, 'owner')
  const news = await Table.create(pool, 'public')
  const sub = await subscribe(keyClient(t, ANON_KEY), 'anon', [{ table: todos }, { table: news }])

  const someone = newUserId()
  await todos.insert({ user_id: someone, title: 'private' })
  await news.insert({ user_id: someone, title: 'headline' })
  const sentinel = await news.insert({ user_id: someone, title: 'sentinel' })
  await sub.changes[1].waitFor(changeOf('INSERT', sentinel.id))

  assert.deepEqual(titles(sub.changes[0]), [])
  assert.deepEqual(titles(sub.changes[1]), ['headline', 'sentinel'])
})

/** Each filter with the rows it must let through, judged on the inserted row. */
const FILTERS = [
  ['n=eq.5', (r) => r.n === 5],
  ['n=neq.5', (r) => r.n !== null && r.n !== 5],
  ['n=in.(1,3,7)', (r) => [1, 3, 7].includes(r.n)],
  ['n=gt.2,n=lt.10', (r) => r.n !== null && r.n > 2 && r.n < 10],
  ['n=lte.3', (r) => r.n !== null && r.n <= 3],
  ['n=not.eq.5', (r) => r.n !== null && r.n !== 5],
  ['n=is.null', (r) => r.n === null],
  ['n=isdistinct.5', (r) => r.n !== 5],
  ['done=is.true', (r) => r.done === true],
  ['title=like.b%', (r) => r.title.startsWith('b')],
  ['title=ilike.a%', (r) => /^a/i.test(r.title)],
  ['title=match.rr', (r) => /rr/.test(r.title)],
  ['title=imatch.^A', (r) => /^a/i.test(r.title)],
]
const FILTERED_ROWS = [
  { title: 'apple', n: 1 },
  { title: 'Avocado', n: 3, done: true },
  { title: 'banana', n: 5 },
  { title: 'blueberry', n: 7, done: true },
  { title: 'cherry', n: 12 },
  { title: 'nothing', n: null },
  { title: 'zz sentinel', n: 1000 },
]

test('filters narrow what a subscriber receives: eq, neq, in, gt and lt combined, lte, not, is, isdistinct, like, ilike, match and imatch', async (t) => {
  const todos = await Table.create(pool, 'owner')
  const alice = await signedIn(t)
  const bindings = FILTERS.map(([filter]) => ({ table: todos, event: 'INSERT', filter }))
  const sub = await subscribe(alice.client, 'filters', [...bindings, { table: todos, event: 'INSERT' }])

  const rows = []
  for (const row of FILTERED_ROWS) rows.push(await todos.insert({ user_id: alice.id, ...row }))
  const everything = sub.changes.at(-1)
  await everything.waitFor(changeOf('INSERT', rows.at(-1).id))

  assert.deepEqual(titles(everything), rows.map((r) => r.title))
  FILTERS.forEach(([filter, passes], i) => {
    assert.deepEqual(titles(sub.changes[i]), rows.filter(passes).map((r) => r.title), filter)
  })
})

test("a filter cannot widen: a user filtering on another user's id receives none of their rows", async (t) => {
  const todos = await Table.create(pool, 'owner')
  const [alice, bob] = [await signedIn(t), await signedIn(t)]
  const onBob = { table: todos, filter: `user_id=eq.${bob.id}` }
  const aliceSub = await subscribe(alice.client, 'peek', [onBob, { table: todos }])
  const bobSub = await subscribe(bob.client, 'own', [onBob])

  const b1 = await todos.insert({ user_id: bob.id, title: 'b1' })
  await todos.update(b1.id, { title: 'b1 edited' })
  await todos.delete(b1.id)
  const sentinel = await todos.insert({ user_id: alice.id, title: 'sentinel' })
  await bobSub.changes[0].waitFor(changeOf('INSERT', b1.id)) // the filter does match bob's rows
  await aliceSub.changes[1].waitFor(changeOf('INSERT', sentinel.id))

  assert.deepEqual(labels(aliceSub.changes[0]), [])
  assert.deepEqual(labels(aliceSub.changes[1]), [`INSERT:${sentinel.id}`])
})

test("a channel joined before the user's token resolved delivers their rows once the token arrives", async (t) => {
  const todos = await Table.create(pool, 'owner')
  const [alice, bob] = [newUserId(), newUserId()]
  const { client, setToken } = await userClient(t, null) // signed out: the join carries only the anon apikey
  assert.equal(client.realtime.accessTokenValue, null)
  const sub = await subscribe(client, 'late-token', [{ table: todos }])
  const [events] = sub.changes

  await setToken(token({ sub: alice })) // pushes access_token on the joined channel
  // The gateway may apply the pushed token asynchronously: write until one of alice's rows arrives.
  await repeatUntil(
    events,
    (p) => p.new?.user_id === alice,
    async () => {
      await todos.insert({ user_id: bob, title: 'bob' })
      await todos.insert({ user_id: alice, title: 'alice' })
    }
  )
  await todos.insert({ user_id: bob, title: 'bob' })
  const sentinel = await todos.insert({ user_id: alice, title: 'sentinel' })
  await events.waitFor(changeOf('INSERT', sentinel.id))

  assert.deepEqual(events.items.filter((p) => p.new?.user_id !== alice), [])
})

test('a refreshed token keeps a channel alive past the old expiry, and an expired token closes the channel with a system message', async (t) => {
  const todos = await Table.create(pool, 'owner')
  const alice = newUserId()
  // Minted together, so the refreshed channel's first token lapses at least a second earlier
  // than the one left to expire: once that one has closed its channel, the other had to survive.
  const [refreshing, lapsing] = await Promise.all([
    userClient(t, token({ sub: alice, expSeconds: 4 })),
    userClient(t, token({ sub: alice, expSeconds: 5 })),
  ])
  const [kept, lapsed] = await Promise.all([
    subscribe(refreshing.client, 'refreshed', [{ table: todos }]),
    subscribe(lapsing.client, 'expiring', [{ table: todos }]),
  ])
  await refreshing.setToken(token({ sub: alice }))

  const notice = await lapsed.system.waitFor((m) => m.extension === 'system', {
    timeout: 10_000,
    what: 'token expiry system message',
  })
  assert.equal(notice.status, 'error')
  assert.match(notice.message, /^Token has expired \d+ seconds ago$/)
  await lapsed.status.waitFor((s) => s.state === 'CLOSED', { what: 'CLOSED status' })

  const row = await todos.insert({ user_id: alice, title: 'still here' })
  await kept.changes[0].waitFor(changeOf('INSERT', row.id))
  assert.deepEqual(kept.system.items.filter((m) => m.extension === 'system'), [])
  assert.deepEqual(kept.status.items.map((s) => s.state), ['SUBSCRIBED'])
  assert.equal(kept.channel.state, 'joined')
})

test('a table that is not enabled and bad filters get system errors while other bindings and channels keep working', async (t) => {
  const todos = await Table.create(pool, 'owner')
  const plain = await Table.create(pool, 'disabled')
  const alice = await signedIn(t)
  const notEnabled = await subscribe(alice.client, 'not-enabled', [{ table: plain }, { table: todos }])
  const badCast = await subscribe(alice.client, 'bad-cast', [{ table: todos, filter: 'n=eq.abc' }])
  const badOp = await subscribe(alice.client, 'bad-op', [{ table: todos, filter: 'n=foo.1' }])

  await Promise.all([
    expectPostgresError(
      notEnabled,
      (m) => m.startsWith('Unable to subscribe to changes with given parameters'),
      'not-enabled error'
    ),
    expectPostgresError(badCast, (m) => m.includes('invalid input syntax for type integer'), 'cast error'),
    expectPostgresError(badOp, (m) => m.includes('Error parsing `filter` params'), 'filter parse error'),
  ])

  await plain.insert({ user_id: alice.id, title: 'never captured' })
  const row = await todos.insert({ user_id: alice.id, title: 'still flowing', n: 1 })
  await notEnabled.changes[1].waitFor(changeOf('INSERT', row.id))
  assert.deepEqual(labels(notEnabled.changes[0]), [])
  for (const sub of [notEnabled, badCast, badOp]) {
    assert.equal(sub.channel.state, 'joined', `${sub.channel.subTopic} stays joined`)
    assert.deepEqual(sub.status.items.map((s) => s.state), ['SUBSCRIBED'])
  }
})

test('with REPLICA IDENTITY FULL an UPDATE carries the whole previous row in old', async (t) => {
  const full = await Table.create(pool, 'owner', { replicaIdentityFull: true })
  const alice = await signedIn(t)
  const sub = await subscribe(alice.client, 'full', [{ table: full }])

  const previous = await full.insert({ user_id: alice.id, title: 'before', n: 1, meta: { v: 1 } })
  const next = await full.update(previous.id, { title: 'after', n: 2, meta: { v: [2] } })
  assertChange(await sub.changes[0].waitFor(changeOf('UPDATE', previous.id)), {
    table: full,
    eventType: 'UPDATE',
    newRow: next,
    oldRow: previous,
  })
})

test('a row larger than 8000 bytes arrives whole', async (t) => {
  const todos = await Table.create(pool, 'owner')
  const alice = await signedIn(t)
  const sub = await subscribe(alice.client, 'big', [{ table: todos }])

  // Random hex does not compress, so Postgres stores the value out of line (TOAST).
  const title = randomBytes(10_000).toString('hex')
  const row = await todos.insert({ user_id: alice.id, title, meta: { pad: randomBytes(3_000).toString('base64') } })
  const change = await sub.changes[0].waitFor(changeOf('INSERT', row.id))
  assert.equal(change.new.title.length, 20_000)
  assertChange(change, { table: todos, eventType: 'INSERT', newRow: row })
})
