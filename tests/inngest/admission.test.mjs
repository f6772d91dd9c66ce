// Per-user admission for Inngest runs: rowcast runs with --inngest-max-active-per-user 2, so an
// owner's third active run of a function is refused when the event is sent (429, the SDK's send
// rejects with rowcast's message) and skipped when the event comes from SQL. Run by
// tests/it/inngest.rs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import pg from 'pg'
import { Inngest } from 'inngest'
import { serve } from 'inngest/node'

import { eventually, listen, stop } from './helpers.mjs'

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 })
const inngest = new Inngest({ id: 'admit' })
let open
const opened = new Promise((resolve) => (open = resolve))

const render = inngest.createFunction({ id: 'render' }, { event: 'video/render' }, async ({ step }) => {
  await step.run('render', () => opened)
  return 'rendered'
})

const server = http.createServer(serve({ client: inngest, functions: [render] }))
await listen(server)
test.after(async () => {
  await stop(server)
  await db.end()
})

const active = async (user) =>
  (await db.query("select count(*)::int as n from rowcast.jobs where type = 'admit-render' and user_id = $1 and status in ('pending', 'running')", [user])).rows[0].n

test("an owner's run past the cap is refused with 429 on send and skipped from SQL; others are not held back", async () => {
  const synced = await fetch(`http://127.0.0.1:${server.address().port}/api/inngest`, { method: 'PUT' })
  assert.equal(synced.status, 200, await synced.text())
  await inngest.send([{ name: 'video/render', data: { userId: 'busy' } }, { name: 'video/render', data: { userId: 'busy' } }])
  assert.equal(await active('busy'), 2)

  const refused = await fetch(`${process.env.INNGEST_BASE_URL}/e/${process.env.INNGEST_EVENT_KEY}`, {
    method: 'POST',
    body: JSON.stringify([{ name: 'video/render', data: { userId: 'busy', n: 3 } }]),
  })
  const body = await refused.json()
  assert.equal(refused.status, 429)
  assert.deepEqual([body.status, body.ids], [429, []])
  assert.match(body.error, /too many active admit-render runs: at most 2/)
  await assert.rejects(inngest.send({ name: 'video/render', data: { userId: 'busy' } }), /too many active admit-render runs/)
  const { rows: stored } = await db.query("select count(*)::int as n from rowcast.inngest_events where data->>'n' = '3'")
  assert.equal(stored[0].n, 0, 'a refused event is not stored')

  await inngest.send({ name: 'video/render', data: { userId: 'idle' } })
  assert.equal(await active('idle'), 1, 'another owner is not held back')

  await db.query("select rowcast.send_event('video/render', '{\"userId\": \"busy\", \"from\": \"sql\"}')")
  await eventually(
    async () => (await db.query("select dispatched_at from rowcast.inngest_events where data->>'from' = 'sql'")).rows[0]?.dispatched_at,
    10_000,
    'the SQL event to be dispatched',
  )
  assert.equal(await active('busy'), 2, 'the SQL event past the cap started no run')

  open()
  await eventually(async () => (await active('busy')) === 0, 20_000, "busy's runs to finish")
  const again = await inngest.send({ name: 'video/render', data: { userId: 'busy' } })
  assert.equal(again.ids.length, 1, 'with room again, the owner may start a run')
})
