// A run survives the SIGKILL of the rowcast runner holding it: the unmodified SDK's function
// kills that runner from inside its second step; the other runner rescues the run when the
// lease expires and resumes it from the stored steps. Run by tests/it/inngest.rs, which starts
// a gateway and two runner processes with the same keys.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import pg from 'pg'
import { Inngest } from 'inngest'
import { serve } from 'inngest/node'

import { eventually, listen, stop } from './helpers.mjs'

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 })
const inngest = new Inngest({ id: 'kill' })
const ran = { first: 0, second: 0, third: 0 }
const killed = []

const pipeline = inngest.createFunction({ id: 'pipeline', retries: 3 }, { event: 'video/process' }, async ({ event, step, runId }) => {
  const a = await step.run('first', () => {
    ran.first += 1
    return 'a'
  })
  const b = await step.run('second', async () => {
    ran.second += 1
    if (ran.second === 1) {
      // The runner holding this run's lease, as "<pid>:<id>".
      const { rows } = await db.query('select worker from rowcast.job_leases where job_id = $1', [runId])
      const pid = Number(rows[0].worker.split(':')[0])
      process.kill(pid, 'SIGKILL')
      killed.push(pid)
    }
    return 'b'
  })
  const c = await step.run('third', () => {
    ran.third += 1
    return 'c'
  })
  return a + b + c + event.data.n
})

const handler = serve({ client: inngest, functions: [pipeline] })
const server = http.createServer(handler)
await listen(server)
const appUrl = `http://127.0.0.1:${server.address().port}/api/inngest`
test.after(async () => {
  await stop(server)
  await db.end()
})

test('a SIGKILLed runner mid-step: the run resumes elsewhere and no finished step runs twice', async () => {
  assert.equal((await fetch(appUrl, { method: 'PUT' })).status, 200)
  await inngest.send({ name: 'video/process', data: { n: 1 } })
  const run = await eventually(async () => {
    const { rows } = await db.query("select status, output, attempts from rowcast.jobs where type = 'kill-pipeline'")
    return rows[0]?.status === 'completed' ? rows[0] : null
  }, 30_000, 'the run to complete on the surviving runner')
  assert.equal(killed.length, 1, 'the runner holding the run was killed')
  assert.equal(run.output, 'abc1')
  assert.equal(run.attempts, 2)
  // The killed step ran again (its result was never stored); the finished one did not.
  assert.deepEqual(ran, { first: 1, second: 2, third: 1 })
})
