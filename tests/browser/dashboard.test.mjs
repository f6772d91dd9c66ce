// The runs dashboard (/dashboard/) in Chromium against a running `rowcast demo`: a user's token
// is refused with the gateway's reason and shows nothing; the service role's key shows every
// user's runs live, filters them by status and user, finds one by the start of its id, shows a
// run's steps, error and timings, marks a type past an alert threshold, and cancels and
// retries several at once, each change arriving through realtime. Screenshots go to ARTIFACTS_DIR (dashboard-*.png).
//
// Needs ROWCAST_URL, ARTIFACTS_DIR and JWT_SECRET (the gateway's, to mint the service key).

import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { after, before, test } from 'node:test'

import { ENV, demoSession, enqueue, failOnPageErrors, launchBrowser, screenshot, uniqueUser, until } from './helpers.mjs'

if (!process.env.JWT_SECRET) throw new Error('the dashboard suite needs JWT_SECRET (the gateway\'s HS256 secret) to mint a service role key')

/** The service role's key, as an operator holds it. */
function serviceKey() {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const now = Math.floor(Date.now() / 1000)
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ role: 'service_role', iat: now, exp: now + 3600 })}`
  return `${unsigned}.${createHmac('sha256', process.env.JWT_SECRET).update(unsigned).digest('base64url')}`
}

let browser
before(async () => {
  browser = await launchBrowser()
})
after(() => browser?.close())

async function openDashboard(t) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } })
  t.after(() => context.close())
  const page = await context.newPage()
  failOnPageErrors(t, page)
  await page.goto(`${ENV.ROWCAST_URL}/dashboard/`)
  return page
}

async function signIn(page, key) {
  await page.fill('#key', key)
  await page.click('#signin button[type=submit]')
}

/** The runs table as `{id, status, attempts, user}` rows. */
const runRows = (page) =>
  page.$$eval('#runs tbody tr', (trs) =>
    trs.map((tr) => ({ id: tr.dataset.id, status: tr.dataset.status, user: tr.children[3].textContent, attempts: tr.children[5].textContent })),
  )

const statusOf = async (page, id) => (await runRows(page)).find((r) => r.id === id)?.status

test("a user's token is refused with the gateway's reason and shows no runs", { timeout: 60_000 }, async (t) => {
  const user = await demoSession(uniqueUser('nosy'))
  await enqueue(user, 'quick')
  const page = await openDashboard(t)
  await signIn(page, user.access_token)
  await page.waitForSelector('#refused:not([hidden])')
  assert.match(await page.textContent('#refused'), /needs the service role's key/)
  assert.equal(await page.isHidden('#board'), true)
  assert.deepEqual(await runRows(page), [])
  await screenshot(page, 'dashboard-refused')
})

test('an operator sees every run live, filters, finds, inspects, cancels and retries them', { timeout: 90_000 }, async (t) => {
  const [alice, bob] = [await demoSession(uniqueUser('ops-a')), await demoSession(uniqueUser('ops-b'))]
  const page = await openDashboard(t)
  const consoleLines = []
  page.on('console', (m) => consoleLines.push(m.text()))
  await signIn(page, serviceKey())
  await page.waitForSelector('#connection[data-state="live"]', { timeout: 8000 }).catch(async (e) => {
    throw new Error(`not live: ${await page.textContent('#connection')}; console: ${consoleLines.join(' | ')}; refused: ${await page.textContent('#refused')}`)
  })
  // Started after the page went live: each arrives as a change, not by reloading.
  const slow = await enqueue(alice, 'slow')
  const failing = await enqueue(bob, 'fail')
  const quick = await enqueue(alice, 'quick')
  await until(() => runRows(page), (rows) => [slow, failing, quick].every((j) => rows.some((r) => r.id === j.id)), { what: 'the three runs listed' })
  await until(() => statusOf(page, failing.id), (s) => s === 'failed', { what: "bob's run failing, live" })
  await until(() => statusOf(page, slow.id), (s) => s === 'running', { what: "alice's slow run running, live" })
  await until(() => page.$$eval('#types tbody tr[data-type="demo"] td', (tds) => Number(tds[6].textContent)), (n) => n >= 1, { what: 'a failure in the figures' })
  // The gateway's [alerts] say min_ended = 1: one failure in three ended runs is past the 20 % rate.
  await until(
    () => page.$eval('#types tbody tr[data-type="demo"]', (tr) => [tr.classList.contains('alert'), tr.querySelector('td.alerts').textContent]),
    ([marked, text]) => marked && /failure rate \d+ %/.test(text),
    { what: 'the failure rate alert marked on the demo type' },
  )
  await screenshot(page, 'dashboard-runs')

  await page.selectOption('#f-status', 'failed')
  await page.fill('#f-user', bob.user)
  await page.click('#filters button[type=submit]')
  await until(() => runRows(page), (rows) => rows.length === 1 && rows[0].id === failing.id, { what: "only bob's failed run" })
  await page.selectOption('#f-status', '')
  await page.fill('#f-user', '')
  await page.fill('#f-id', slow.id.slice(0, 8))
  await page.click('#filters button[type=submit]')
  await until(() => runRows(page), (rows) => rows.length === 1 && rows[0].id === slow.id, { what: 'the run found by the start of its id' })

  await page.fill('#f-id', '')
  await page.click('#filters button[type=submit]')
  await until(() => runRows(page), (rows) => rows.some((r) => r.id === failing.id), { what: 'every run again' })
  await page.click(`#runs tr[data-id="${failing.id}"] td.id`)
  await page.waitForSelector('#detail:not([hidden])')
  await until(() => page.textContent('#detail-fields [data-field="error"]'), (e) => /demo failure/.test(e), { what: "the run's error" })
  assert.match(await page.textContent('#detail-fields [data-field="attempts"]'), /^1 of \d+$/)
  assert.match(await page.textContent('#detail-steps'), /step-1 at /)
  await screenshot(page, 'dashboard-detail')

  // Both selected: the running one is cancelled, the failed one cannot be and says why.
  await page.check(`#runs tr[data-id="${slow.id}"] input`)
  await page.check(`#runs tr[data-id="${failing.id}"] input`)
  await page.click('#cancel-selected')
  await until(() => page.textContent('#action-result'), (text) => /cancelled 1; not .*only pending or running/.test(text), { what: 'the bulk cancel result' })
  await until(() => statusOf(page, slow.id), (s) => s === 'cancelled', { what: 'the slow run cancelled, live' })

  // Retrying the cancelled and the failed run starts both again.
  await page.check(`#runs tr[data-id="${slow.id}"] input`)
  await page.check(`#runs tr[data-id="${failing.id}"] input`)
  await page.click('#retry-selected')
  await until(() => page.textContent('#action-result'), (text) => /^retried 2$/.test(text), { what: 'the bulk retry result' })
  await until(() => statusOf(page, slow.id), (s) => s === 'running', { what: 'the retried slow run running again, live' })
  await screenshot(page, 'dashboard-actions')
})

test('a run started while the list is being read is kept when the older snapshot lands, and followed live', { timeout: 60_000 }, async (t) => {
  const alice = await demoSession(uniqueUser('race-a'))
  const page = await openDashboard(t)
  // The first read (at sign-in) goes through; the one made when the channel joins is read at
  // once but answered only when released, so the run below commits after that snapshot.
  let reads = 0
  const held = []
  await page.route(
    (url) => url.pathname === '/api/admin/jobs',
    async (route) => {
      reads += 1
      const response = await route.fetch()
      if (reads === 1) return route.fulfill({ response })
      held.push(() => route.fulfill({ response }))
    },
  )
  await signIn(page, serviceKey())
  await until(() => held.length, (n) => n === 1, { what: 'the snapshot read at join, held' })
  const quick = await enqueue(alice, 'quick')
  await until(() => runRows(page), (rows) => rows.some((r) => r.id === quick.id), { what: 'the run listed from its change' })
  held.shift()()
  await until(() => statusOf(page, quick.id), (s) => s === 'completed', { what: 'the run still listed after the snapshot, completed live' })
})
