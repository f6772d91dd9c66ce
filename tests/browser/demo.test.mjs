// The demo page in Chromium against a running `rowcast demo`: jobs started from the page
// fill their bars live and end completed, failed (with the error shown) or, after a retry,
// completed on attempt 2; a reload mid-job keeps the user and resumes the bar where it was,
// then keeps following it; Cancel shows cancelled; a second user sees none of the first
// user's jobs. Jobs started in a row are listed newest first; each card's buttons are named
// with its job; status changes, not progress ticks, are announced in a live region; headings
// go h1, h2, h3. A running job's card shows what its step handler says it is doing now (a
// broadcast, not a row), and the line is gone when the job ends. Screenshots of each stage go to ARTIFACTS_DIR (demo-*.png).
//
// Needs ROWCAST_URL and ARTIFACTS_DIR (it throws without them; it never skips).
// Run: node --test tests/browser/

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import {
  ENV,
  announcements,
  api,
  assertHeadingsInOrder,
  cardHistory,
  demoSession,
  failOnPageErrors,
  jobName,
  launchBrowser,
  readCard,
  recordAnnouncements,
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
  await recordAnnouncements(context)
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

/** An ISO timestamp as microseconds since the epoch (Date.parse keeps only milliseconds). */
const micros = (timestamp) =>
  Date.parse(timestamp) * 1000 + Number((/\.\d{3}(\d{1,3})/.exec(timestamp)?.[1] ?? '0').padEnd(3, '0'))

/** A button anywhere on the page, by its whole accessible name. */
const buttonNamed = (page, name) => page.getByRole('button', { name, exact: true })

/** Which card holds `locator`'s one element. */
const cardOf = (locator) => locator.evaluate((el) => el.closest('[data-job-id]')?.dataset.jobId)

/** How the live region says that a job reached each status (after its name). */
const SAID = { pending: 'is waiting', running: 'is running', completed: 'completed', failed: 'failed', cancelled: 'was cancelled' }

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
  await buttonNamed(page, `Retry ${jobName(job)}`).click()
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

  await buttonNamed(page, `Cancel ${jobName(job)}`).click()
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

test('four jobs started in a row from the page are listed newest first, above the older ones', LIMIT, async (t) => {
  const page = await openDemo(t, 'alice')
  const started = []
  for (let i = 0; i < 4; i++) started.push(await startJob(page, 'Quick job'))
  for (const job of started) await waitForCard(page, job.id)

  const newestFirst = started.toSorted((a, b) => micros(b.created_at) - micros(a.created_at)).map((job) => job.id)
  const shownIds = () => page.$$eval('#jobs > [data-job-id]', (cards) => cards.map((card) => card.dataset.jobId))
  assert.deepEqual((await shownIds()).slice(0, 4), newestFirst, 'the four new cards lead, newest first')
  const created = await page.$$eval('#jobs > [data-job-id] time', (times) => times.map((time) => time.dateTime))
  assert.ok(isNonDecreasing(created.map(micros).reverse()), `every card is newer than the one below it: ${created}`)
  await screenshot(page, 'demo-8-four-jobs-newest-first')

  // Cards are placed once: going live and completing moves none of them.
  for (const job of started) await waitForCard(page, job.id, { status: 'completed' })
  assert.deepEqual((await shownIds()).slice(0, 4), newestFirst)
})

test('each card’s Cancel and Retry buttons are named with its job, and Cancel by name cancels that job only', LIMIT, async (t) => {
  const page = await openDemo(t, 'bob')
  const jobs = [await startJob(page, 'Slow job'), await startJob(page, 'Slow job')]
  assert.notEqual(jobName(jobs[0]), jobName(jobs[1]), 'two jobs of one mode are told apart')
  for (const job of jobs) {
    await waitForCard(page, job.id)
    const card = page.locator(`[data-job-id="${job.id}"]`)
    assert.equal(await card.getByRole('heading', { level: 3, name: jobName(job), exact: true }).count(), 1)
    const cancel = buttonNamed(page, `Cancel ${jobName(job)}`)
    assert.equal(await cancel.count(), 1, `one button on the page is "Cancel ${jobName(job)}"`)
    assert.equal(await cardOf(cancel), job.id)
    assert.equal(await cancel.textContent(), 'Cancel', 'the visible label starts the accessible name')
  }

  await buttonNamed(page, `Cancel ${jobName(jobs[0])}`).click()
  await waitForCard(page, jobs[0].id, { status: 'cancelled' })
  const retry = buttonNamed(page, `Retry ${jobName(jobs[0])}`)
  assert.equal(await retry.count(), 1)
  assert.equal(await cardOf(retry), jobs[0].id)
  assert.match((await readCard(page, jobs[1].id)).status, /^(pending|running)$/, 'the other job goes on')

  await buttonNamed(page, `Cancel ${jobName(jobs[1])}`).click()
  await waitForCard(page, jobs[1].id, { status: 'cancelled' })
})

test('a job’s status changes are announced in a live region, and its progress ticks are not', LIMIT, async (t) => {
  const page = await openDemo(t, 'alice')
  const region = page.locator('#announcer')
  assert.equal(await region.getAttribute('role'), 'status')
  assert.equal(await region.getAttribute('aria-live'), 'polite')
  const job = await startJob(page, 'Quick job')
  await waitForCard(page, job.id, { status: 'completed', minProgress: 100 })

  const history = await cardHistory(page, job.id)
  const ticks = history.filter((entry) => entry.status === 'running').map((entry) => entry.progress)
  assert.ok(ticks.length >= 3, `the bar ticked while the job ran: ${ticks}`)
  const statuses = history.map((entry) => entry.status).filter((status, i, all) => i === 0 || status !== all[i - 1])
  const heard = await announcements(page)
  assert.deepEqual(
    heard.filter((text) => text.startsWith(`${jobName(job)} `)),
    statuses.slice(1).map((status) => `${jobName(job)} ${SAID[status]}`),
    `one announcement per status change after the first (${statuses}), none per tick`
  )
  const statusOnly = new RegExp(`^\\S+ · \\S+ #[0-9a-f]{6} (${Object.values(SAID).join('|')})$`)
  for (const text of heard) assert.match(text, statusOnly)

  // The cards themselves sit in no live region, or every tick would be read out.
  const live = '[aria-live]:not([aria-live="off"]), [role=status], [role=log], [role=alert], [role=timer], [role=marquee]'
  const barsInLiveRegions = await page.$$eval('[role=progressbar]', (bars, live) => bars.filter((bar) => bar.closest(live)).length, live)
  assert.equal(barsInLiveRegions, 0)
})

test('the page’s headings go h1, h2, h3 without skipping a level', LIMIT, async (t) => {
  const page = await openDemo(t, 'alice')
  const job = await startJob(page, 'Quick job')
  await waitForCard(page, job.id)
  await assertHeadingsInOrder(page, 'the demo page')
  assert.equal(await page.getByRole('heading', { level: 2, name: 'Jobs', exact: true }).count(), 1)
  await waitForCard(page, job.id, { status: 'completed' })
})

test('a running job’s card shows what its step is doing now, from broadcasts, and clears it when it ends', LIMIT, async (t) => {
  const page = await openDemo(t, 'alice')
  const job = await startJob(page, 'Slow job')
  const activity = page.locator(`[data-job-id="${job.id}"] .job-activity`)
  const said = await until(() => activity.textContent(), (text) => /^step \d+: \w/.test(text ?? ''), { what: 'an activity line' })
  assert.match(said, /^step ([2-9]|10): /, 'the demo announces the step it starts next')
  await screenshot(page, 'demo-activity')
  await page.getByRole('button', { name: `Cancel ${jobName(job)}`, exact: true }).click()
  await waitForCard(page, job.id, { status: 'cancelled' })
  assert.equal(await activity.textContent(), '', 'the line is about the running step only')
})
