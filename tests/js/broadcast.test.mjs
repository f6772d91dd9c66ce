// Broadcast: supabase-js 2.109 (unmodified) sends over the socket (both serializers; v2 sends
// kind-3 binary frames), with `self` and `ack`, and over REST: `channel.httpSend()` and a
// `send()` made before the channel is joined (the batch API). Receivers get
// `{type, event, payload}` whichever way the message came in; binary payloads (from the
// socket, REST octet-stream or `realtime.send_binary`) arrive as ArrayBuffers on v2 sockets.
//
// Needs ROWCAST_URL, DATABASE_URL and JWT_SECRET. Run: node --test tests/js/broadcast.test.mjs

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { test } from 'node:test'

import { Recorder, SERVICE_KEY, keyClient, newUserId, openPool, token, userClient } from './helpers.mjs'

/** A channel `room` on `client` with broadcast `config`, recording every broadcast it receives. */
async function listen(client, room, config = {}) {
  const channel = client.channel(room, { config: { broadcast: config } })
  const broadcasts = new Recorder(`${room} broadcasts`)
  channel.on('broadcast', { event: '*' }, broadcasts.push)
  await new Promise((resolve, reject) => {
    channel.subscribe((status, err) => (status === 'SUBSCRIBED' ? resolve() : reject(err ?? new Error(status))))
  })
  return { channel, got: broadcasts.items, waitFor: (what, check) => broadcasts.waitFor(check, { what }) }
}

const room = () => `room:${randomBytes(4).toString('hex')}`

test('a broadcast reaches the other members in both serializers, and the sender only with self', async (t) => {
  const name = room()
  const sender = await listen((await userClient(t, token({ sub: newUserId() }))).client, name, { ack: true, self: true })
  const v2 = await listen((await userClient(t, token({ sub: newUserId() }))).client, name)
  const v1 = await listen((await userClient(t, token({ sub: newUserId() }), { vsn: '1.0.0' })).client, name)
  const quiet = await listen((await userClient(t, token({ sub: newUserId() }))).client, name, { self: false })

  assert.equal(await sender.channel.send({ type: 'broadcast', event: 'step', payload: { n: 3, of: 5 } }), 'ok', 'ack: true answers ok')
  for (const [who, r] of [['v2', v2], ['v1', v1], ['sender (self)', sender]]) {
    const m = await r.waitFor(who, (m) => m.event === 'step')
    assert.deepEqual({ type: m.type, event: m.event, payload: m.payload }, { type: 'broadcast', event: 'step', payload: { n: 3, of: 5 } }, who)
  }
  assert.equal(await quiet.channel.send({ type: 'broadcast', event: 'mine', payload: {} }), 'ok')
  await v2.waitFor('quiet sender', (m) => m.event === 'mine')
  assert.ok(!quiet.got.some((m) => m.event === 'mine'), 'self: false keeps its own message away')
})

test('httpSend and a send before joining go through the REST API and reach every member', async (t) => {
  const name = room()
  const member = await listen((await userClient(t, token({ sub: newUserId() }))).client, name)
  const server = keyClient(t, SERVICE_KEY)
  const rest = server.channel(name)
  assert.deepEqual(await rest.httpSend('progress', { step: 'transcribing' }), { success: true })
  const m = await member.waitFor('httpSend', (m) => m.event === 'progress')
  assert.deepEqual(m.payload, { step: 'transcribing' })
  // Not subscribed: supabase-js posts the batch API.
  assert.equal(await server.channel(name).send({ type: 'broadcast', event: 'done', payload: { ok: true } }), 'ok')
  const done = await member.waitFor('batch send', (m) => m.event === 'done')
  assert.deepEqual(done.payload, { ok: true })
})

test('binary payloads go as kind-4 frames to v2 members, over the socket and httpSend, and skip v1 members', async (t) => {
  const name = room()
  const sender = (await userClient(t, token({ sub: newUserId() }))).client.channel(name)
  await new Promise((resolve, reject) => sender.subscribe((s, err) => (s === 'SUBSCRIBED' ? resolve() : reject(err ?? new Error(s)))))
  const v2 = await listen((await userClient(t, token({ sub: newUserId() }))).client, name)
  const v1 = await listen((await userClient(t, token({ sub: newUserId() }), { vsn: '1.0.0' })).client, name)

  assert.equal(await sender.send({ type: 'broadcast', event: 'bytes', payload: new Uint8Array([1, 2, 250]).buffer }), 'ok')
  const got = await v2.waitFor('the binary broadcast', (m) => m.event === 'bytes')
  assert.ok(got.payload instanceof ArrayBuffer, `an ArrayBuffer, not ${JSON.stringify(got.payload)}`)
  assert.deepEqual([...new Uint8Array(got.payload)], [1, 2, 250])

  const server = keyClient(t, SERVICE_KEY).channel(name)
  assert.deepEqual(await server.httpSend('rest-bytes', new Uint8Array([7, 8]).buffer), { success: true })
  const rest = await v2.waitFor('the binary REST broadcast', (m) => m.event === 'rest-bytes')
  assert.deepEqual([...new Uint8Array(rest.payload)], [7, 8])

  const pool = openPool()
  t.after(() => pool.end())
  await pool.query(`select realtime.send_binary('\\x0102ff'::bytea, 'sql-bytes', $1, false)`, [name])
  const sql = await v2.waitFor('the binary SQL broadcast', (m) => m.event === 'sql-bytes')
  assert.deepEqual([...new Uint8Array(sql.payload)], [1, 2, 255])

  assert.equal(await sender.send({ type: 'broadcast', event: 'sentinel', payload: {} }), 'ok')
  await v1.waitFor('the JSON sentinel', (m) => m.event === 'sentinel')
  assert.deepEqual(v1.got.map((m) => m.event), ['sentinel'], 'a v1 socket cannot carry binary payloads')
})
