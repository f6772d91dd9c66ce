// Dev mode: the SDK with only INNGEST_DEV=http://<rowcast> (no keys, nothing signed) syncs with
// a rowcast started with --inngest-dev, as it would with `inngest dev`. Run by tests/it/inngest.rs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import pg from 'pg'
import { Inngest } from 'inngest'
import { serve } from 'inngest/node'

test('an unsigned app in dev mode syncs with a rowcast in dev mode', async (t) => {
  assert.match(process.env.INNGEST_DEV ?? '', /^http:\/\//, 'the runner sets INNGEST_DEV to the dev rowcast')
  assert.equal(process.env.INNGEST_SIGNING_KEY, undefined)
  const client = new Inngest({ id: 'devapp' })
  const fn = client.createFunction({ id: 'hello' }, { event: 'dev/hello' }, async () => 'hi')
  const server = http.createServer(serve({ client, functions: [fn] }))
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => server.close(resolve)))
  const response = await fetch(`http://127.0.0.1:${server.address().port}/api/inngest`, { method: 'PUT' })
  assert.equal(response.status, 200, JSON.stringify(await response.clone().json()))
  const db = new pg.Client({ connectionString: process.env.DATABASE_URL })
  await db.connect()
  t.after(() => db.end())
  const { rows } = await db.query("select id from rowcast.inngest_functions where app_id = 'devapp'")
  assert.deepEqual(rows, [{ id: 'devapp-hello' }])
})
