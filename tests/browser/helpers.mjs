// Shared plumbing for the browser suite: the required environment, Debian's Chromium driven
// by playwright-core (plain, or with the rowcast extension loaded), the gateway's demo
// sessions and jobs API for setting things up from outside the browser, and waits on DOM
// state that fail with what the page showed instead. Nothing here sleeps for correctness.

import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import { chromium } from 'playwright-core'

/** How long a job state that must come may take (the slowest demo step is ~1 s). */
export const TIMEOUT_MS = 15_000

const REQUIRED_ENV = {
  ROWCAST_URL: 'base URL of a rowcast gateway running `rowcast demo` (demo sessions and demo jobs on)',
  ARTIFACTS_DIR: 'a directory for screenshots (created if missing)',
}

/** Reads the required variables; throws naming every missing one. These tests never skip. */
function requireEnv(env = process.env) {
  const missing = Object.keys(REQUIRED_ENV).filter((name) => !env[name])
  if (missing.length > 0) {
    const lines = missing.map((name) => `  ${name}: ${REQUIRED_ENV[name]}`)
    throw new Error(
      `rowcast browser tests cannot run: missing environment variable(s)\n${lines.join('\n')}\n` +
        'Set them and run `node --test tests/browser/`. These tests never skip.'
    )
  }
  return { ROWCAST_URL: env.ROWCAST_URL.replace(/\/+$/, ''), ARTIFACTS_DIR: env.ARTIFACTS_DIR }
}

export const ENV = requireEnv()

/** Debian's Chromium; CHROMIUM_PATH overrides it. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
if (!existsSync(CHROMIUM)) {
  throw new Error(`rowcast browser tests need Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`)
}

// We run as root (hence --no-sandbox) on a machine that reaches no network but ours.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
]

/** A headless Chromium for the demo page. */
export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
}

/**
 * A persistent context with the unpacked extension at `dir` loaded. Extensions need a
 * persistent profile and Chromium's new headless mode, which is what `--headless` means
 * since Chromium 132 (playwright passes it for `headless: true`).
 */
export async function launchWithExtension(t, dir) {
  const profile = mkdtempSync(path.join(tmpdir(), 'rowcast-ext-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, `--disable-extensions-except=${dir}`, `--load-extension=${dir}`],
  })
  t.after(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })
  return context
}

/** A fresh user name, so runs against the same gateway never see each other's jobs. */
export const uniqueUser = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`

/** Saves a full-page screenshot as ARTIFACTS_DIR/<name>.png. */
export async function screenshot(page, name) {
  mkdirSync(ENV.ARTIFACTS_DIR, { recursive: true })
  const file = path.join(ENV.ARTIFACTS_DIR, `${name}.png`)
  await page.screenshot({ path: file, fullPage: true, animations: 'disabled' })
}

/** Fails test `t` at its end if the page threw an uncaught error. */
export function failOnPageErrors(t, page) {
  const errors = []
  page.on('pageerror', (err) => errors.push(err.message))
  t.after(() => assert.deepEqual(errors, [], 'uncaught errors in the page'))
}

// ---------------------------------------------------------------------------------------------
// The gateway, from outside the browser

/** GET /demo/session?user=: `{user, anon_key, access_token, expires_at}`. */
export async function demoSession(user) {
  const response = await fetch(`${ENV.ROWCAST_URL}/demo/session?user=${encodeURIComponent(user)}`)
  assert.equal(response.status, 200, `GET /demo/session?user=${user}: ${await response.clone().text()}`)
  return response.json()
}

/** Calls the jobs API as `session`'s user; returns `{status, body}`. */
export async function api(session, method, route, body) {
  const headers = { apikey: session.anon_key, authorization: `Bearer ${session.access_token}` }
  if (body) headers['content-type'] = 'application/json'
  const response = await fetch(`${ENV.ROWCAST_URL}${route}`, { method, headers, body: body && JSON.stringify(body) })
  return { status: response.status, body: await response.json().catch(() => null) }
}

/** POST /api/jobs for a demo job in `mode`; returns the new row. */
export async function enqueue(session, mode) {
  const { status, body } = await api(session, 'POST', '/api/jobs', { type: 'demo', input: { mode } })
  assert.equal(status, 202, `POST /api/jobs (${mode}): ${JSON.stringify(body)}`)
  return body
}

// ---------------------------------------------------------------------------------------------
// Waiting on the page

/**
 * Records, per job id, every distinct `{status, progress}` a card shows, in `window.__jobs`,
 * for the pages of `context` from their first script on. Tests use it to tell a bar that
 * moved live from one that jumped, and one that resumed from one that restarted at 0.
 */
export async function recordCardHistory(context) {
  await context.addInitScript(() => {
    const history = (window.__jobs = {})
    const record = (card) => {
      const now = card.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow')
      if (now === null || now === undefined) return
      const entry = { status: card.dataset.status, progress: Number(now) }
      const seen = (history[card.dataset.jobId] ??= [])
      const last = seen.at(-1)
      if (!last || last.status !== entry.status || last.progress !== entry.progress) seen.push(entry)
    }
    new MutationObserver((mutations) => {
      for (const mutation of mutations) {
        const nodes = mutation.type === 'childList' ? [...mutation.addedNodes] : [mutation.target]
        for (const node of nodes) {
          if (node.nodeType !== Node.ELEMENT_NODE) continue
          const cards = node.matches('[data-job-id]') ? [node] : [...node.querySelectorAll('[data-job-id]')]
          const owner = node.closest('[data-job-id]')
          for (const card of owner ? [owner] : cards) record(card)
        }
      }
    }).observe(document, {
      subtree: true,
      childList: true,
      attributes: true,
      attributeFilter: ['aria-valuenow', 'data-status'],
    })
  })
}

/**
 * Waits until a job list page (the demo page or the popup) shows `user`'s snapshot and its
 * connection reads SUBSCRIBED; fails with what the page says (its notice) otherwise.
 */
export async function waitForLiveList(page, user, { timeout = TIMEOUT_MS } = {}) {
  try {
    await page.waitForSelector(`#jobs[data-user="${user}"][aria-busy="false"]`, { state: 'attached', timeout })
    await page.waitForSelector('#connection[data-state="SUBSCRIBED"]', { state: 'attached', timeout })
  } catch (err) {
    const shown = await page
      .evaluate(() => ({
        notice: document.querySelector('#notice')?.textContent,
        connection: document.querySelector('#connection')?.dataset.state,
        list: document.querySelector('#jobs')?.dataset,
      }))
      .catch(() => 'page gone')
    throw new Error(`${user}'s job list did not go live within ${timeout} ms; page shows ${JSON.stringify(shown)}\n${err.message}`)
  }
}

/**
 * Records, in `window.__announced`, every text the job list's live region (`#announcer`)
 * comes to hold, for the pages of `context` from their first script on.
 */
export async function recordAnnouncements(context) {
  await context.addInitScript(() => {
    const seen = (window.__announced = [])
    new MutationObserver(() => {
      const text = document.getElementById('announcer')?.textContent
      if (text && text !== seen.at(-1)) seen.push(text)
    }).observe(document, { subtree: true, childList: true, characterData: true })
  })
}

/** What `recordAnnouncements` saw on `page` since it loaded. */
export const announcements = (page) => page.evaluate(() => window.__announced ?? [])

/** What a job's card is called (its heading, and in its buttons and announcements). */
export const jobName = (row) => `${row.type} · ${row.input.mode} #${row.id.slice(0, 6)}`

/**
 * Asserts that `page`'s headings, in document order, start at h1 and never skip a level
 * going down (h1, h2, h3, ...), and that they reach h3 (the job cards). Headings that are
 * not rendered (display: none) are left out; visually hidden ones count, as screen readers
 * list them.
 */
export async function assertHeadingsInOrder(page, where) {
  const headings = await page.$$eval('h1, h2, h3, h4, h5, h6', (all) =>
    all.filter((h) => h.checkVisibility()).map((h) => ({ level: Number(h.tagName[1]), text: h.textContent }))
  )
  const levels = headings.map((h) => h.level)
  const shown = JSON.stringify(headings)
  assert.equal(levels[0], 1, `${where}: the first heading is an h1: ${shown}`)
  assert.ok(levels.every((level, i) => i === 0 || level <= levels[i - 1] + 1), `${where}: a heading level is skipped: ${shown}`)
  assert.ok(levels.includes(3), `${where}: the job cards have h3 headings: ${shown}`)
}

/** What `recordCardHistory` saw for job `id` on `page` since it loaded. */
export const cardHistory = (page, id) => page.evaluate((id) => window.__jobs?.[id] ?? [], id)

/** The state job `id`'s card shows, or null when there is no such card. */
export function readCard(page, id) {
  return page.evaluate((id) => {
    const card = document.querySelector(`[data-job-id="${id}"]`)
    if (!card) return null
    const text = (selector) => card.querySelector(selector)?.textContent ?? null
    const visible = (el) => el && !el.hidden
    return {
      status: card.dataset.status,
      userId: card.dataset.userId,
      progress: Number(card.querySelector('[role=progressbar]').getAttribute('aria-valuenow')),
      message: text('.job-message'),
      attempts: text('.job-attempts'),
      error: visible(card.querySelector('.job-error')) ? text('.job-error') : null,
      buttons: [...card.querySelectorAll('button')].filter(visible).map((b) => b.textContent),
    }
  }, id)
}

/**
 * Waits until job `id`'s card exists and shows `want`: `status` (exact) and/or
 * `minProgress`. Fails after `timeout` with the card as it was.
 */
export async function waitForCard(page, id, want = {}, { timeout = TIMEOUT_MS } = {}) {
  try {
    await page.waitForFunction(
      ([id, want]) => {
        const card = document.querySelector(`[data-job-id="${id}"]`)
        if (!card) return false
        const progress = Number(card.querySelector('[role=progressbar]').getAttribute('aria-valuenow'))
        if (want.status && card.dataset.status !== want.status) return false
        return want.minProgress === undefined || progress >= want.minProgress
      },
      [id, want],
      { timeout }
    )
  } catch (err) {
    const card = await readCard(page, id).catch(() => 'page gone')
    throw new Error(`job ${id}: wanted ${JSON.stringify(want)} within ${timeout} ms; card: ${JSON.stringify(card)}\n${err.message}`)
  }
  return readCard(page, id)
}

/**
 * Polls `probe` (every 100 ms) until it returns something `accept`s, for state outside the
 * DOM (the extension's service worker). Fails after `timeout` with the last value seen.
 */
export async function until(probe, accept, { timeout = TIMEOUT_MS, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    last = await probe()
    if (accept(last)) return last
    if (Date.now() >= deadline) throw new Error(`no ${what} within ${timeout} ms; last saw ${JSON.stringify(last)}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}
