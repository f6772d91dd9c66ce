// The demo page in Chromium against a running `rowcast demo`: jobs started from the page
// fill their bars live and end completed, failed (with the error shown) or, after a retry,
// completed on attempt 2; a reload mid-job keeps the user and resumes the bar where it was,
// then keeps following it; Cancel shows cancelled; a second user sees none of the first
// user's jobs. Screenshots of each stage go to ARTIFACTS_DIR (demo-*.png).
//
// Needs ROWCAST_URL and ARTIFACTS_DIR (it throws without them; it never skips).
// Run: node --test tests/browser/

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  ENV,
  api,
  cardHistory,
  demoSession,
  failOnPageErrors,
  launchBrowser,
  readCard,
  recordCardHistory,
  screenshot,
  until,
  waitForCard,
  waitForLiveList,
} from './helpers.mjs'

/** A test that hangs is cut off rather than holding up the run. */
const LIMIT = { timeout: 60_000 }

let browser
before(async () => {
  browser = await launchBrowser()
})
after(() => browser?.close())

/** A fresh browser profile (own localStorage) showing the demo page as `user`, live. */
async function openDemo(t, user) {
  const context = await browser.newContext({ viewport: { width: 900, height: 1000 } })
  t.after(() => context.close())
  await recordCardHistory(context)
  const page = await context.newPage()
  failOnPageErrors(t, page)
  await page.goto(`${ENV.ROWCAST_URL}/`)
  if ((await page.inputValue('#user')) !== user) await page.selectOption('#user', user)
  await waitForLiveList(page, user)
  return page
}

/** Clicks a start button ("Quick job", ...) and returns the row the gateway answered with. */
async function startJob(page, label) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/jobs'),
    page.getByRole('button', { name: label, exact: true }).click(),
  ])
  const row = await response.json()
  assert.equal(response.status(), 202, `${label}: ${JSON.stringify(row)}`)
  return row
}

const progressOf = (history) => history.map((entry) => entry.progress)

const isNonDecreasing = (values) => values.every((value, i) => i === 0 || value >= values[i - 1])

test('a quick job started as alice fills its bar step by step to 100 and ends completed', LIMIT, async (t) => {
  const page = await openDemo(t, 'alice')
  const job = await startJob(page, 'Quick job')
  assert.equal(job.status, 'pending')
  assert.deepEqual(job.input, { mode: 'quick' })

  const card = await waitForCard(page, job.id, { status: 'completed', minProgress: 100 })
  assert.equal(card.progress, 100)
  assert.equal(card.error, null)
  assert.deepEqual(card.buttons, [], 'a completed job can be neither cancelled nor retried')
  const progress = progressOf(await cardHistory(page, job.id))
  assert.ok(progress.some((p) => p > 0 && p < 100), `the bar moved through steps live: ${progress}`)
  assert.ok(isNonDecreasing(progress), `the bar never went back: ${progress}`)
  await screenshot(page, 'demo-1-quick-completed')
})

test('a failing job ends failed and shows its error, and Retry runs it again to the same end', LIMIT, async (t) => {
  const page = await openDemo(t, 'alice')
  const job = await startJob(page, 'Failing job')

  const card = await waitForCard(page, job.id, { status: 'failed' })
  assert.match(card.error ?? '', /demo failure: this job always fails/)
  assert.deepEqual(card.buttons, ['Retry'])
  await screenshot(page, 'demo-2-failing-job-error')

  // Retry runs it again from the start: pending (or running) once more, then failed again.
  await page.locator(`[data-job-id="${job.id}"]`).getByRole('button', { name: 'Retry', exact: true }).click()
  const statuses = await until(
    async () => (await cardHistory(page, job.id)).map((entry) => entry.status),
    (seen) => seen.lastIndexOf('failed') > seen.indexOf('failed') + 1,
    { what: 'failed, then pending or running, then failed again' }
  )
  const between = statuses.slice(statuses.indexOf('failed') + 1, -1)
  assert.ok(between.some((s) => s === 'pending' || s === 'running'), `${statuses}`)
  assert.match((await readCard(page, job.id)).error ?? '', /demo failure: this job always fails/)
})

test('a flaky job fails once, is retried and completes on attempt 2', LIMIT, async (t) => {
  const page = await openDemo(t, 'alice')
  const job = await startJob(page, 'Flaky job')

  const card = await waitForCard(page, job.id, { status: 'completed', minProgress: 100 })
  assert.match(card.attempts, /^attempt 2 of \d+$/)
  await screenshot(page, 'demo-3-flaky-completed-on-retry')
})

test('a reload mid-job keeps the user and the bar resumes where it was, follows live, then shows cancelled', LIMIT, async (t) => {
  // bob, not the default user, so that keeping the user across the reload means something.
  const page = await openDemo(t, 'bob')
  const job = await startJob(page, 'Slow job')
  const before = await waitForCard(page, job.id, { status: 'running', minProgress: 20 })
  await screenshot(page, 'demo-4-slow-before-reload')

  await page.reload()
  await waitForLiveList(page, 'bob')
  assert.equal(await page.inputValue('#user'), 'bob', 'the picked user survives a reload')
  await waitForCard(page, job.id)
  const [first] = await cardHistory(page, job.id)
  assert.ok(first.progress >= before.progress, `after the reload the bar starts at ${first.progress} < ${before.progress}`)

  // One more step (slow steps take ~1 s) proves the reloaded page follows the job live.
  await waitForCard(page, job.id, { status: 'running', minProgress: first.progress + 10 })
  assert.ok(isNonDecreasing(progressOf(await cardHistory(page, job.id))))
  await screenshot(page, 'demo-5-slow-after-reload')

  await page.locator(`[data-job-id="${job.id}"]`).getByRole('button', { name: 'Cancel', exact: true }).click()
  const cancelled = await waitForCard(page, job.id, { status: 'cancelled' })
  assert.deepEqual(cancelled.buttons, ['Retry'])
  await screenshot(page, 'demo-6-slow-cancelled')
})

test('bob, in another browser context, sees none of alice’s jobs, live or after a reload', LIMIT, async (t) => {
  const [alice, bob] = await Promise.all([openDemo(t, 'alice'), openDemo(t, 'bob')])
  const job = await startJob(alice, 'Quick job')
  await waitForCard(alice, job.id, { status: 'completed', minProgress: 100 })

  // alice has seen every change of her job by now; none of them may have reached bob.
  assert.equal(await readCard(bob, job.id), null)
  assert.deepEqual(await cardHistory(bob, job.id), [])
  await bob.reload()
  await waitForLiveList(bob, 'bob')
  assert.equal(await readCard(bob, job.id), null)
  const owners = await bob.$$eval('[data-job-id]', (cards) => [...new Set(cards.map((c) => c.dataset.userId))])
  assert.ok(owners.every((owner) => owner === 'bob'), `bob's page shows only bob's jobs: ${owners}`)

  const { status, body } = await api(await demoSession('bob'), 'GET', `/api/jobs/${job.id}`)
  assert.equal(status, 404, `bob may not read alice's job: ${JSON.stringify(body)}`)
  await screenshot(alice, 'demo-7-alice')
  await screenshot(bob, 'demo-7-bob-sees-none-of-alice')
})
