// An Inngest app served over https with a certificate from a CA the Rust test made: rowcast,
// trusting that CA through --ca-file, syncs it through --inngest-app (a PUT over https) and
// calls its function over https. Run by tests/it/inngest.rs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import https from 'node:https'
import pg from 'pg'
import { Inngest } from 'inngest'
import { serve } from 'inngest/node'

import { eventually, listen, stop } from './helpers.mjs'

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 })
const inngest = new Inngest({ id: 'tls' })
const secure = inngest.createFunction({ id: 'secure' }, { event: 'tls/ping' }, async ({ event, step }) => {
  const a = await step.run('first', () => `over tls ${event.data.n}`)
  return await step.run('second', () => `${a}, twice`)
})
const server = https.createServer(
  { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) },
  serve({ client: inngest, functions: [secure] }),
)
await listen(server, Number(process.env.INNGEST_APP_PORT))
test.after(async () => {
  await stop(server)
  await db.end()
})

test('rowcast syncs and runs a function whose serve route is https', async () => {
  const synced = await eventually(async () => {
    const { rows } = await db.query("select config from rowcast.inngest_functions where id = 'tls-secure'")
    return rows[0]
  }, 15_000, "rowcast's ping over https to sync the app")
  assert.ok(synced.config.steps.step.runtime.url.startsWith(`https://localhost:${process.env.INNGEST_APP_PORT}/api/inngest`))
  await inngest.send({ name: 'tls/ping', data: { n: 7 } })
  const run = await eventually(async () => {
    const { rows } = await db.query("select status, output from rowcast.jobs where type = 'tls-secure'")
    return rows[0]?.status === 'completed' ? rows[0] : null
  }, 20_000, 'the run to complete over https')
  assert.equal(run.output, 'over tls 7, twice')
})
