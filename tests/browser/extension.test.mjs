// The "rowcast jobs" MV3 extension (web-demo/extension) loaded unpacked into headless
// Chromium against a running `rowcast demo`: its service worker subscribes for the user in
// storage and counts running jobs on the action badge; its popup, opened as a tab, lists a
// job enqueued over REST from outside the browser and follows it to its end through the
// changes the worker relays, announcing its status changes; the popup's headings go h1, h2,
// h3. Screenshots go to ARTIFACTS_DIR (extension-*.png).
//
// Needs ROWCAST_URL and ARTIFACTS_DIR (it throws without them; it never skips), and
// web-demo/node_modules (npm ci in web-demo/): this suite runs web-demo/extension/setup.sh
// itself, so vendor/ always matches web-demo's sources.
// Run: node --test tests/browser/

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'

import {
  ENV,
  announcements,
  api,
  assertHeadingsInOrder,
  cardHistory,
  demoSession,
  enqueue,
  failOnPageErrors,
  jobName,
  launchWithExtension,
  recordAnnouncements,
  recordCardHistory,
  screenshot,
  uniqueUser,
  until,
  waitForCard,
  waitForLiveList,
} from './helpers.mjs'

const EXTENSION_DIR = fileURLToPath(new URL('../../web-demo/extension', import.meta.url))

/** The extension's service worker, its id, and probes of its state. */
async function extensionWorker(context) {
  const isOurs = (worker) => worker.url().endsWith('/background.js')
  const worker =
    context.serviceWorkers().find(isOurs) ?? (await context.waitForEvent('serviceworker', { predicate: isOurs }))
  return {
    worker,
    id: new URL(worker.url()).host,
    state: () => worker.evaluate(() => ({ status: self.rowcast.state.status, ...self.rowcast.state.settings })),
    badge: () => worker.evaluate(() => chrome.action.getBadgeText({})),
  }
}

const LIMIT = { timeout: 60_000 }

test('the popup shows a job enqueued over REST and follows it live; the badge counts running jobs', LIMIT, async (t) => {
  execFileSync('bash', [`${EXTENSION_DIR}/setup.sh`], { stdio: 'inherit' })
  const context = await launchWithExtension(t, EXTENSION_DIR)
  const extension = await extensionWorker(context)

  // A user of its own, so that the badge counts only this test's jobs.
  const user = uniqueUser('ext')
  const settings = { gateway: ENV.ROWCAST_URL, user }
  await extension.worker.evaluate((settings) => chrome.storage.local.set(settings), settings)
  const subscribed = (s) => s.user === user && s.status === 'SUBSCRIBED'
  await until(extension.state, subscribed, { what: `worker subscribed as ${user}` })
  assert.equal(await extension.badge(), '', 'no running jobs, no badge')

  await recordCardHistory(context)
  await recordAnnouncements(context)
  const popup = await context.newPage()
  await popup.setViewportSize({ width: 384, height: 640 })
  failOnPageErrors(t, popup)
  await popup.goto(`chrome-extension://${extension.id}/popup.html`)
  await waitForLiveList(popup, user)

  const session = await demoSession(user)
  const slow = await enqueue(session, 'slow')
  await waitForCard(popup, slow.id, { status: 'running' })
  await until(extension.badge, (text) => text === '1', { what: 'badge "1" for one running job' })
  await screenshot(popup, 'extension-1-running-with-badge')
  await assertHeadingsInOrder(popup, 'the popup')

  const { status } = await api(session, 'POST', `/api/jobs/${slow.id}/cancel`)
  assert.equal(status, 200)
  await waitForCard(popup, slow.id, { status: 'cancelled' })
  await until(extension.badge, (text) => text === '', { what: 'badge cleared once nothing runs' })

  const quick = await enqueue(session, 'quick')
  const card = await waitForCard(popup, quick.id, { status: 'completed', minProgress: 100 })
  assert.equal(card.userId, user)
  const progress = (await cardHistory(popup, quick.id)).map((entry) => entry.progress)
  assert.ok(progress.some((p) => p > 0 && p < 100), `the popup's bar moved through steps live: ${progress}`)
  const heard = await announcements(popup)
  assert.ok(heard.includes(`${jobName(quick)} completed`), `the popup announced the completion: ${JSON.stringify(heard)}`)
  assert.ok(heard.includes(`${jobName(slow)} was cancelled`), `the popup announced the cancel: ${JSON.stringify(heard)}`)
  await screenshot(popup, 'extension-2-completed')
})
