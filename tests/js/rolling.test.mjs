// A rolling deploy with the official client: supabase-js talks to two rowcast gateways through
// a balancer that sends each new connection to the first gateway whose /ready answers 200, as
// a load balancer's health check does. While a writer keeps committing, the first gateway gets
// SIGTERM: the channel errors, supabase-js reconnects on its own, lands on the second gateway,
// rejoins, and receives every committed row (the ones from while it was away replayed first).

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { Table, balancer, newUserId, openPool, rollingNodes, subscribe, token, userClient } from './helpers.mjs'

test('a rolling deploy loses no committed change: supabase-js moves to the other gateway and gets what it missed', async (t) => {
  const { node1, node2, pid } = rollingNodes()
  const lb = await balancer([node1, node2])
  t.after(lb.close)
  const pool = openPool()
  t.after(() => pool.end())
  const table = await Table.create(pool, 'owner')
  const [alice, bob] = [newUserId(), newUserId()]
  const { client } = await userClient(t, token({ sub: alice }), { url: lb.url })
  const sub = await subscribe(client, 'rolling', [{ table, event: 'INSERT' }])
  assert.deepEqual(lb.picks, [0], 'the first connection goes to the first gateway')

  let stop = false
  let written = 0
  const writer = (async () => {
    for (let n = 1; !stop; n++) {
      await table.insert({ user_id: alice, n })
      await table.insert({ user_id: bob, n })
      written = n
      // Paces the load; nothing waits on it for correctness.
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  })()
  const received = sub.changes[0]
  await received.waitFor((e) => e.new.n >= 20, { what: 'row 20 before the deploy' })

  process.kill(pid, 'SIGTERM')
  await sub.system.waitFor((m) => m.message === 'Server requested disconnect', { what: 'the operator disconnect' })
  const errored = await sub.status.waitFor((s) => s.state === 'CHANNEL_ERROR', { what: 'CHANNEL_ERROR after the close' })
  const back = await sub.status.waitFor(
    (s) => s.state === 'SUBSCRIBED' && sub.status.items.indexOf(s) > sub.status.items.indexOf(errored),
    { timeout: 15_000, what: 'SUBSCRIBED again after the reconnect' }
  )
  assert.ok(back)
  assert.equal(lb.picks.at(-1), 1, `the reconnect went to the second gateway: ${lb.picks}`)

  const resumedAt = written
  await received.waitFor((e) => e.new.n >= resumedAt + 20, { what: 'live rows after the rejoin' })
  stop = true
  await writer
  const last = written
  await received.waitFor((e) => e.new.n === last, { what: `the last row, ${last}` })

  const ns = received.items.map((e) => {
    assert.equal(e.new.user_id, alice, "only alice's rows reach alice's channel")
    return e.new.n
  })
  const missing = []
  for (let n = 1; n <= last; n++) if (!ns.includes(n)) missing.push(n)
  assert.deepEqual(missing, [], `rows missed across the deploy (of 1..${last})`)
  console.log(`rolling deploy: ${last} rows committed, ${ns.length} received (${ns.length - last} duplicates), reconnect picks ${lb.picks}`)
})
