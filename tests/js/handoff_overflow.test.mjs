// A rolling deploy after which a channel missed more than the gateway can replay: more rows
// than the second gateway keeps in memory (20,000) and one log read holds (10,000) together.
// supabase-js must hear it, not resume with a silent gap: CHANNEL_ERROR, then a rejoin that is
// live, so the app knows to fetch afresh. The balancer keeps the reconnect waiting until the
// second gateway has delivered every one of those rows (a probe on it sees the last one).

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { Table, balancer, newUserId, openPool, rollingNodes, subscribe, token, userClient } from './helpers.mjs'

const MISSED = 40_000

test('a channel that missed more than a replay holds gets CHANNEL_ERROR and comes back live, never a silent gap', async (t) => {
  const { node1, node2, pid } = rollingNodes()
  let hold = Promise.resolve()
  const lb = await balancer([node1, node2], { hold: () => hold })
  t.after(lb.close)
  const pool = openPool()
  t.after(() => pool.end())
  const table = await Table.create(pool, 'owner')
  const alice = newUserId()
  const { client } = await userClient(t, token({ sub: alice }), { url: lb.url })
  const sub = await subscribe(client, 'overflow', [{ table, event: 'INSERT' }])
  const { client: direct } = await userClient(t, token({ sub: alice }), { url: node2 })
  const probe = await subscribe(direct, 'probe', [{ table, event: 'INSERT', filter: `n=eq.${MISSED}` }])

  let release
  hold = new Promise((resolve) => (release = resolve))
  process.kill(pid, 'SIGTERM')
  await sub.system.waitFor((m) => m.message === 'Server requested disconnect', { what: 'the operator disconnect' })
  await pool.query(`insert into public.${table.name} (user_id, n) select $1, n from generate_series(1, ${MISSED}) n`, [alice])
  await probe.changes[0].waitFor((e) => e.new.n === MISSED, { timeout: 30_000, what: 'the second gateway delivering the last missed row' })
  release()

  const states = () => sub.status.items.map((s) => s.state)
  await sub.status.waitFor(() => states().filter((s) => s === 'SUBSCRIBED').length === 3, {
    timeout: 20_000,
    what: 'SUBSCRIBED three times: at first, after the reconnect, after the error',
  })
  assert.deepEqual(states(), ['SUBSCRIBED', 'CHANNEL_ERROR', 'SUBSCRIBED', 'CHANNEL_ERROR', 'SUBSCRIBED'])
  assert.equal(lb.picks.at(-1), 1, `the reconnect went to the second gateway: ${lb.picks}`)

  await table.insert({ user_id: alice, n: MISSED + 1 })
  const received = sub.changes[0]
  await received.waitFor((e) => e.new.n === MISSED + 1, { what: 'a live row after the rejoin' })
  assert.deepEqual(received.items.map((e) => e.new.n), [MISSED + 1], 'none of the missed rows came, not even part of them')
})
