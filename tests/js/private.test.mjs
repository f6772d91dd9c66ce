// Private channels: supabase-js 2.109 (unmodified) joins with `config.private`, and the RLS
// policies on realtime.messages decide, the way Supabase's do: SELECT lets a role receive on a
// topic, INSERT lets it send. A member joins and receives private SQL and REST broadcasts that
// public channels of the same name never see; a non-member is refused with Supabase's words; a
// reader without an INSERT policy cannot send; a new token that the policies refuse closes the
// channel.
//
// Needs ROWCAST_URL, DATABASE_URL and JWT_SECRET. Run: node --test tests/js/private.test.mjs

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, test } from 'node:test'

import { Recorder, SERVICE_KEY, newUserId, openPool, token, userClient } from './helpers.mjs'

let pool
before(async () => {
  pool = openPool()
  // Policies as a Supabase project writes them: a user's own room, and boards anyone signed in may read.
  await pool.query(`
    create policy "own room: read" on realtime.messages for select to authenticated
      using (realtime.topic() = 'room:' || (auth.jwt() ->> 'sub'));
    create policy "own room: write" on realtime.messages for insert to authenticated
      with check (realtime.topic() = 'room:' || (auth.jwt() ->> 'sub'));
    create policy "boards: read" on realtime.messages for select to authenticated
      using (realtime.topic() like 'board:%');`)
})
after(() => pool.end())

/** A signed-in client of a fresh user; `setToken` swaps its JWT as a sign-in would. */
async function user(t) {
  const id = newUserId()
  const { client, setToken } = await userClient(t, token({ sub: id }))
  return { id, client, setToken }
}

/** Joins `name` on `client` (private unless told otherwise); records broadcasts and system messages. */
async function join(client, name, { isPrivate = true, replay } = {}) {
  const broadcast = { self: false, ...(replay && { replay }) }
  const channel = client.channel(name, { config: { private: isPrivate, broadcast } })
  const broadcasts = new Recorder(`${name} broadcasts`)
  const system = new Recorder(`${name} system`)
  channel.on('broadcast', { event: '*' }, broadcasts.push)
  channel.on('system', {}, system.push)
  const status = await new Promise((resolve) => channel.subscribe((s, err) => resolve({ s, err })))
  const recorders = new Map([
    [broadcasts.items, broadcasts],
    [system.items, system],
  ])
  const waitFor = (what, list, check) => recorders.get(list).waitFor(check, { what })
  return { channel, status, got: broadcasts.items, system: system.items, waitFor }
}

test('a member receives private SQL and REST broadcasts that a public channel of the same name never sees', async (t) => {
  const alice = await user(t)
  const room = `room:${alice.id}`
  const mine = await join(alice.client, room)
  assert.equal(mine.status.s, 'SUBSCRIBED', mine.status.err?.message)
  const outsider = await user(t)
  const open = await join(outsider.client, room, { isPrivate: false })
  assert.equal(open.status.s, 'SUBSCRIBED')

  await pool.query(`select realtime.send('{"n": 1}'::jsonb, 'from-sql', $1)`, [room])
  const sql = await mine.waitFor('the private SQL broadcast', mine.got, (m) => m.event === 'from-sql')
  assert.deepEqual(sql.payload, { n: 1 })
  const server = (await userClient(t, SERVICE_KEY)).client
  const rest = server.channel(room, { config: { private: true } })
  assert.deepEqual(await rest.httpSend('from-rest', { n: 2 }), { success: true })
  await mine.waitFor('the private REST broadcast', mine.got, (m) => m.event === 'from-rest')
  await pool.query(`select realtime.send('{}'::jsonb, 'public-sentinel', $1, false)`, [room])
  await open.waitFor('the public sentinel', open.got, (m) => m.event === 'public-sentinel')
  assert.deepEqual(open.got.map((m) => m.event), ['public-sentinel'], 'the public namespace saw no private message')
})

test('a user whose policies do not let them read is refused with Supabase’s words', async (t) => {
  const alice = await user(t)
  const bob = await user(t)
  const refused = await join(bob.client, `room:${alice.id}`)
  assert.equal(refused.status.s, 'CHANNEL_ERROR')
  assert.equal(refused.status.err?.message, `Unauthorized: You do not have permissions to read from this Channel topic: room:${alice.id}`)
})

test('a reader without an INSERT policy cannot send, while the room’s owner can', async (t) => {
  const board = `board:${randomBytes(4).toString('hex')}`
  const [carol, dave] = [await user(t), await user(t)]
  const carolBoard = await join(carol.client, board)
  const daveBoard = await join(dave.client, board)
  assert.equal(carolBoard.status.s, 'SUBSCRIBED')
  await carolBoard.channel.send({ type: 'broadcast', event: 'denied', payload: {} })
  const alice = await user(t)
  const room = `room:${alice.id}`
  const [a1, a2] = [await join(alice.client, room), await join((await userClient(t, token({ sub: alice.id }))).client, room)]
  assert.equal(a1.status.s, 'SUBSCRIBED')
  assert.equal(await a1.channel.send({ type: 'broadcast', event: 'allowed', payload: { ok: true } }), 'ok')
  await a2.waitFor('the owner’s message', a2.got, (m) => m.event === 'allowed')
  await pool.query(`select realtime.send('{}'::jsonb, 'sentinel', $1)`, [board])
  await daveBoard.waitFor('the board sentinel', daveBoard.got, (m) => m.event === 'sentinel')
  assert.deepEqual(daveBoard.got.map((m) => m.event), ['sentinel'], 'carol’s send was dropped')
})

test('a new token that the policies refuse closes the private channel with Supabase’s message', async (t) => {
  const alice = await user(t)
  const room = `room:${alice.id}`
  const mine = await join(alice.client, room)
  assert.equal(mine.status.s, 'SUBSCRIBED')
  await alice.setToken(token({ sub: newUserId() }))
  const closed = await mine.waitFor('the shutdown', mine.system, (m) => m.extension === 'system' && m.status === 'error')
  assert.equal(closed.message, `You no longer have permission to read from this Channel topic: ${room}`)
})

test('a private join with replay gets the newest messages since then, marked replayed and in order, before live ones', async (t) => {
  const alice = await user(t)
  const room = `room:${alice.id}`
  const since = Date.now() - 60_000
  for (const n of [1, 2, 3]) await pool.query(`select realtime.send($1::jsonb, 'old', $2)`, [JSON.stringify({ n }), room])
  const mine = await join(alice.client, room, { replay: { since, limit: 2 } })
  assert.equal(mine.status.s, 'SUBSCRIBED', mine.status.err?.message)
  await pool.query(`select realtime.send('{"n": 4}'::jsonb, 'live', $1)`, [room])
  await mine.waitFor('the live message', mine.got, (m) => m.event === 'live')
  assert.deepEqual(mine.got.map((m) => [m.event, m.payload.n, m.meta?.replayed ?? false]), [
    ['old', 2, true],
    ['old', 3, true],
    ['live', 4, false],
  ])
})

test('a private REST broadcast from a user without an INSERT policy gets 403, and a batch skips it', async (t) => {
  const alice = await user(t)
  const room = `room:${alice.id}`
  const mine = await join(alice.client, room)
  const bob = await user(t)
  await assert.rejects(bob.client.channel(room, { config: { private: true } }).httpSend('intrude', {}), /Unauthorized/)
  const res = await fetch(`${process.env.ROWCAST_URL}/realtime/v1/api/broadcast`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token({ sub: bob.id })}` },
    body: JSON.stringify({ messages: [{ topic: room, event: 'intrude', payload: {}, private: true }] }),
  })
  assert.equal(res.status, 202)
  assert.deepEqual(await alice.client.channel(room, { config: { private: true } }).httpSend('own', {}), { success: true })
  await mine.waitFor('alice’s own REST message', mine.got, (m) => m.event === 'own')
  assert.deepEqual(mine.got.map((m) => m.event), ['own'], 'bob’s messages never arrived')
})
