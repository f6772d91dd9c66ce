// The unmodified `inngest` SDK (pinned in package-lock.json) syncing its functions with rowcast,
// configured only by its environment: INNGEST_DEV=0, INNGEST_BASE_URL=<rowcast>,
// INNGEST_SIGNING_KEY. Run by tests/it/inngest.rs, which starts rowcast with the same key and
// `--inngest-app http://127.0.0.1:$INNGEST_APP_PORT/api/inngest`.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import pg from 'pg'
import { Inngest, NonRetriableError } from 'inngest'
import { serve } from 'inngest/node'

import { eventually, listen, stop } from './helpers.mjs'

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 })
test.after(() => db.end())

/// A serve handler for `functions` of app `id`, listening on `port` (0: any); returns its URL and a stop.
async function serveApp(id, functions, { port = 0, signingKey } = {}) {
  // A key given here stands in for the environment's INNGEST_SIGNING_KEY.
  const client = new Inngest({ id })
  const handler = serve({ client, functions: functions(client), ...(signingKey ? { signingKey } : {}) })
  const server = http.createServer(handler)
  await listen(server, port)
  const url = `http://127.0.0.1:${server.address().port}/api/inngest`
  return { url, stop: () => stop(server) }
}

/// The summarize function of an extension backend, as Inngest's docs write such a function.
const summarizer = (inngest) => [
  inngest.createFunction(
    { id: 'summarize', retries: 3, concurrency: { limit: 2, key: 'event.data.userId' } },
    { event: 'video/summarize.requested' },
    async ({ event, step }) => {
      const transcript = await step.run('fetch-transcript', () => {
        if (!event.data.videoId) throw new NonRetriableError('no video id')
        return `transcript of ${event.data.videoId}`
      })
      return await step.run('summarize', () => transcript.slice(0, 10))
    },
  ),
  inngest.createFunction({ id: 'nightly-digest' }, { cron: 'TZ=Europe/Paris 0 3 * * *' }, async () => 'ok'),
]

async function functionsOf(app) {
  const { rows } = await db.query('select id, name, triggers, config from rowcast.inngest_functions where app_id = $1 order by id', [app])
  return rows
}

test("a PUT to the app's serve route registers its functions with rowcast, triggers and options intact", async () => {
  const app = await serveApp('summarizer', summarizer)
  try {
    const response = await fetch(app.url, { method: 'PUT' })
    const body = await response.json()
    assert.equal(response.status, 200, JSON.stringify(body))
    const fns = await functionsOf('summarizer')
    assert.deepEqual(fns.map((f) => f.id), ['summarizer-nightly-digest', 'summarizer-summarize'])
    const summarize = fns[1]
    assert.deepEqual(summarize.triggers, [{ event: 'video/summarize.requested' }])
    assert.deepEqual(summarize.config.concurrency, { limit: 2, key: 'event.data.userId' })
    assert.equal(summarize.config.steps.step.retries.attempts, 3)
    assert.ok(summarize.config.steps.step.runtime.url.startsWith(`${app.url}?fnId=summarizer-summarize`))
    assert.deepEqual(fns[0].triggers, [{ cron: 'TZ=Europe/Paris 0 3 * * *' }])
  } finally {
    await app.stop()
  }
})

test('a new deploy with changed functions replaces the old definitions', async () => {
  const first = await serveApp('deployer', (inngest) => [
    inngest.createFunction({ id: 'old-one' }, { event: 'a/old' }, async () => 1),
    inngest.createFunction({ id: 'kept' }, { event: 'a/kept' }, async () => 1),
  ])
  assert.equal((await fetch(first.url, { method: 'PUT' })).status, 200)
  await first.stop()
  assert.deepEqual((await functionsOf('deployer')).map((f) => f.id), ['deployer-kept', 'deployer-old-one'])
  const second = await serveApp('deployer', (inngest) => [
    inngest.createFunction({ id: 'kept' }, { event: 'a/kept', if: 'event.data.ok == true' }, async () => 2),
    inngest.createFunction({ id: 'new-one' }, { event: 'a/new' }, async () => 2),
  ])
  try {
    const response = await fetch(second.url, { method: 'PUT' })
    const body = await response.json()
    assert.equal(response.status, 200, JSON.stringify(body))
    assert.equal(body.modified, true)
    const fns = await functionsOf('deployer')
    assert.deepEqual(fns.map((f) => f.id), ['deployer-kept', 'deployer-new-one'])
    assert.deepEqual(fns[0].triggers, [{ event: 'a/kept', expression: 'event.data.ok == true' }])
    const again = await (await fetch(second.url, { method: 'PUT' })).json()
    assert.equal(again.modified, false, 'the same functions again change nothing')
  } finally {
    await second.stop()
  }
})

test('an app signed with another key is refused with a message that says which key to fix', async () => {
  const app = await serveApp('intruder', summarizer, { signingKey: 'signkey-test-' + 'ab'.repeat(32) })
  try {
    const response = await fetch(app.url, { method: 'PUT' })
    const body = await response.json()
    assert.equal(response.status, 401, JSON.stringify(body))
    assert.match(body.message, /signing key does not match/)
    assert.deepEqual(await functionsOf('intruder'), [])
  } finally {
    await app.stop()
  }
})

test('rowcast syncs the app named by --inngest-app on its own, and again after a redeploy', async () => {
  const port = Number(process.env.INNGEST_APP_PORT)
  const app = await serveApp('pinged', (inngest) => [inngest.createFunction({ id: 'one' }, { event: 'p/one' }, async () => 1)], { port })
  try {
    await eventually(async () => (await functionsOf('pinged')).length === 1, 15_000, "rowcast's first ping")
  } finally {
    await app.stop()
  }
  const redeployed = await serveApp('pinged', (inngest) => [inngest.createFunction({ id: 'two' }, { event: 'p/two' }, async () => 2)], { port })
  try {
    await eventually(async () => (await functionsOf('pinged')).map((f) => f.id).join() === 'pinged-two', 15_000, 'the redeploy to sync')
  } finally {
    await redeployed.stop()
  }
})
