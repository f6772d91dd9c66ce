// inngest.send() from the unmodified SDK, configured only by its environment (INNGEST_DEV=0,
// INNGEST_BASE_URL=<rowcast>, INNGEST_EVENT_KEY), and rowcast.send_event from SQL.
// Run by tests/it/inngest.rs, which starts rowcast with the same event key.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { Inngest } from 'inngest'

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 })
test.after(() => db.end())
const inngest = new Inngest({ id: 'sender' })
const unique = () => `${Date.now()}-${Math.random().toString(36).slice(2)}`

async function eventsNamed(name) {
  const { rows } = await db.query('select id::text, name, data, event_id from rowcast.inngest_events where name = $1 order by received_at, id', [name])
  return rows
}

test('one event and a batch are stored durably and answered with their ids', async () => {
  const name = `video/summarize.requested-${unique()}`
  const one = await inngest.send({ name, data: { userId: 'u1', videoId: 'v1' } })
  assert.equal(one.ids.length, 1)
  const batch = await inngest.send([1, 2, 3].map((n) => ({ name, data: { userId: `u${n}`, n } })))
  assert.equal(batch.ids.length, 3)
  const stored = await eventsNamed(name)
  assert.deepEqual(stored.map((e) => e.id).sort(), [...one.ids, ...batch.ids].sort())
  assert.deepEqual(stored.find((e) => e.id === one.ids[0]).data, { userId: 'u1', videoId: 'v1' })
})

test("an event's id makes a repeat within 24 hours a no-op that answers the first id", async () => {
  const name = `billing/charged-${unique()}`
  const first = await inngest.send({ name, id: 'charge-42', data: { amount: 1 } })
  const again = await inngest.send({ name, id: 'charge-42', data: { amount: 1 } })
  assert.deepEqual(again.ids, first.ids)
  assert.equal((await eventsNamed(name)).length, 1)
})

test('a wrong event key and a reserved name get the status and error the SDK reads', async () => {
  const base = process.env.INNGEST_BASE_URL
  const wrong = await fetch(`${base}/e/not-the-key`, { method: 'POST', body: JSON.stringify([{ name: 'a/b', data: {} }]) })
  const wrongBody = await wrong.json()
  assert.equal(wrong.status, 401)
  assert.deepEqual([wrongBody.status, wrongBody.ids], [401, []])
  assert.match(wrongBody.error, /event key/)
  const reserved = await fetch(`${base}/e/${process.env.INNGEST_EVENT_KEY}`, {
    method: 'POST',
    body: JSON.stringify([{ name: 'inngest/function.failed', data: {} }]),
  })
  assert.equal(reserved.status, 400)
  assert.match((await reserved.json()).error, /reserved/)
})

test("rowcast.send_event stores an event from SQL only when the caller's transaction commits", async () => {
  const name = `app/row-saved-${unique()}`
  const client = await db.connect()
  try {
    await client.query('begin')
    await client.query("select rowcast.send_event($1, '{\"row\": 1}')", [name])
    await client.query('rollback')
    assert.deepEqual(await eventsNamed(name), [])
    await client.query('begin')
    await client.query("select rowcast.send_event($1, '{\"row\": 2}')", [name])
    await client.query('commit')
  } finally {
    client.release()
  }
  assert.deepEqual((await eventsNamed(name)).map((e) => e.data), [{ row: 2 }])
})
