// Presence: supabase-js 2.109 (unmodified) clients see who else is on a channel through
// `presenceState()` and the `sync`, `join` and `leave` events: tracking, a changed payload,
// untracking, leaving, and a socket that dies without a goodbye.
//
// Needs ROWCAST_URL, DATABASE_URL and JWT_SECRET. Run: node --test tests/js/presence.test.mjs

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { test } from 'node:test'

import { newUserId, token, userClient } from './helpers.mjs'

const WAIT_MS = 5_000

/** Resolves when `check()` holds, checked after each presence event on `m`; fails after a timeout. */
function until(m, what, check) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      m.watchers.delete(test)
      reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(m.channel.presenceState())}`))
    }, WAIT_MS)
    const test = () => {
      if (check()) {
        clearTimeout(timer)
        m.watchers.delete(test)
        resolve()
      }
    }
    m.watchers.add(test)
    test()
  })
}

/**
 * A member: a signed-in client on channel `room` with presence key `key`, subscribed. Its
 * presence listeners (added before `subscribe()`, as supabase-js requires) record join and
 * leave events and wake `until`.
 */
async function member(t, room, key) {
  const { client } = await userClient(t, token({ sub: newUserId() }))
  const channel = client.channel(room, { config: { presence: { key } } })
  const events = []
  const watchers = new Set()
  const wake = () => [...watchers].forEach((w) => w())
  channel.on('presence', { event: 'sync' }, wake)
  channel.on('presence', { event: 'join' }, (e) => {
    events.push({ event: 'join', key: e.key })
    wake()
  })
  channel.on('presence', { event: 'leave' }, (e) => {
    events.push({ event: 'leave', key: e.key })
    wake()
  })
  await new Promise((resolve, reject) => {
    channel.subscribe((status, err) => (status === 'SUBSCRIBED' ? resolve() : reject(err ?? new Error(status))))
  })
  return { client, channel, events, watchers }
}

const keys = (channel) => Object.keys(channel.presenceState()).sort()

test('two members see each other track, change, untrack and leave', async (t) => {
  const room = `room-${randomBytes(4).toString('hex')}`
  const ann = await member(t, room, 'ann')
  const ben = await member(t, room, 'ben')
  assert.equal(await ann.channel.track({ status: 'watching' }), 'ok')
  assert.equal(await ben.channel.track({ status: 'idle' }), 'ok')
  await until(ann, 'ann sees both', () => keys(ann.channel).join() === 'ann,ben')
  await until(ben, 'ben sees both', () => keys(ben.channel).join() === 'ann,ben')
  const seenByBen = ben.channel.presenceState().ann
  assert.equal(seenByBen.length, 1)
  assert.equal(seenByBen[0].status, 'watching')
  assert.ok(seenByBen[0].presence_ref, 'each meta carries its presence_ref')

  await ann.channel.track({ status: 'typing' })
  await until(ben, 'ann changed', () => ben.channel.presenceState().ann?.[0]?.status === 'typing')
  assert.equal(ben.channel.presenceState().ann.length, 1, 'a changed payload replaces the meta')

  await ann.channel.untrack()
  await until(ben, 'ann untracked', () => keys(ben.channel).join() === 'ben')
  await ann.channel.track({ status: 'back' })
  await until(ben, 'ann back', () => keys(ben.channel).join() === 'ann,ben')

  await ann.client.removeChannel(ann.channel)
  await until(ben, 'ann left', () => keys(ben.channel).join() === 'ben')
  assert.ok(ben.events.some((e) => e.event === 'leave' && e.key === 'ann'), JSON.stringify(ben.events))
})

test("a member whose socket dies without a goodbye leaves everyone's presence", async (t) => {
  const room = `room-${randomBytes(4).toString('hex')}`
  const ann = await member(t, room, 'ann')
  const ben = await member(t, room, 'ben')
  await ann.channel.track({ here: true })
  await until(ben, 'ben sees ann', () => keys(ben.channel).includes('ann'))
  // Cut the TCP connection without a close frame, as a killed tab or lost network does.
  const transport = ann.client.realtime.socketAdapter?.socket?.conn
  assert.equal(typeof transport?.terminate, 'function', 'the ws transport underneath supabase-js')
  transport.terminate()
  await until(ben, 'ann dropped', () => !keys(ben.channel).includes('ann'))
})

test('a channel joined later gets the current members in its first state', async (t) => {
  const room = `room-${randomBytes(4).toString('hex')}`
  const ann = await member(t, room, 'ann')
  await ann.channel.track({ n: 1 })
  await until(ann, 'ann sees herself', () => keys(ann.channel).includes('ann'))
  const cat = await member(t, room, 'cat')
  await until(cat, 'cat sees ann', () => cat.channel.presenceState().ann?.[0]?.n === 1)
})
