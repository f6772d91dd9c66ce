// Job progress over realtime: a job enqueued over REST runs on the bundled runner, and every
// change of its row (claimed, each step's progress and message, completed) reaches the official
// supabase-js client subscribed to rowcast.jobs, filtered by the job's id or by the user's id,
// in order. Another user sees none of it.
//
// Needs ROWCAST_URL, DATABASE_URL and JWT_SECRET, and a gateway whose runner has the built-in
// `demo` job type (the Rust harness starts one). Run: node --test tests/js/jobs.test.mjs

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { newUserId, subscribe, token, userClient } from './helpers.mjs'

const BASE = process.env.ROWCAST_URL

/** Enqueues a demo job as `jwt`; it starts after `delayMs`, giving subscribers time to join. */
async function enqueue(jwt, input, delayMs) {
  const response = await fetch(`${BASE}/api/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'demo', input, run_at: new Date(Date.now() + delayMs).toISOString() }),
  })
  assert.equal(response.status, 202, await response.clone().text())
  return response.json()
}

const jobs = (filter) => [{ schema: 'rowcast', table: 'jobs', filter }]

test('every status, progress and message change of a job reaches subscribers filtered by job id and by user id, in order', async (t) => {
  const user = newUserId()
  const jwt = token({ sub: user })
  const { client } = await userClient(t, jwt)
  const job = await enqueue(jwt, { steps: 4, step_ms: 50 }, 1500)
  const byId = await subscribe(client, `job-${job.id}`, jobs(`id=eq.${job.id}`))
  const byUser = await subscribe(client, `user-${user}`, jobs(`user_id=eq.${user}`))
  const expected = [
    ['running', 0, null],
    ['running', 25, 'step 1 of 4'],
    ['running', 50, 'step 2 of 4'],
    ['running', 75, 'step 3 of 4'],
    // The last step is stored with the completion, in one row change.
    ['completed', 100, 'step 4 of 4'],
  ]
  for (const recorder of [byId.changes[0], byUser.changes[0]]) {
    await recorder.waitFor((p) => p.new.status === 'completed', { timeout: 10_000, what: 'completed job' })
    const seen = recorder.items.map((p) => [p.new.status, p.new.progress, p.new.message])
    assert.deepEqual(seen, expected)
    assert.ok(recorder.items.every((p) => p.eventType === 'UPDATE' && p.schema === 'rowcast' && p.table === 'jobs'))
    assert.deepEqual(recorder.items.at(-1).new.output, { steps: 4, mode: 'quick' })
  }
})

test("a user cannot watch another user's jobs, even by naming them in a filter", async (t) => {
  const owner = newUserId()
  const ownerJwt = token({ sub: owner })
  const spyUser = newUserId()
  const spyJwt = token({ sub: spyUser })
  const spy = await userClient(t, spyJwt)
  const ownerClient = await userClient(t, ownerJwt)
  const job = await enqueue(ownerJwt, { steps: 2, step_ms: 20 }, 1500)
  const spying = await subscribe(spy.client, `spy-${job.id}`, jobs(`id=eq.${job.id}`))
  const ownJobs = await subscribe(spy.client, `spy-own-${spyUser}`, jobs(`user_id=eq.${spyUser}`))
  const watching = await subscribe(ownerClient.client, `own-${job.id}`, jobs(`id=eq.${job.id}`))
  await watching.changes[0].waitFor((p) => p.new.status === 'completed', { timeout: 10_000, what: 'completed job' })
  // A barrier on the spy's own socket: changes reach each socket in log order, so once the
  // spy sees its own later job complete, anything sent about the owner's job has arrived.
  const mine = await enqueue(spyJwt, { steps: 1, step_ms: 1 }, 0)
  await ownJobs.changes[0].waitFor((p) => p.new.id === mine.id && p.new.status === 'completed', { timeout: 10_000, what: "the spy's own job" })
  assert.deepEqual(spying.changes[0].items, [])
})
