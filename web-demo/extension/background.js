// rowcast jobs, the service worker (classic): follows the configured user's rows of
// rowcast.jobs over Supabase Realtime with the official supabase-js, keeps the toolbar badge
// at the number of running jobs, and relays every change to open popups through a runtime
// port named "jobs" ({kind: 'status'|'change', ...}).
//
// Its token comes from the gateway's GET /demo/session, which only `rowcast demo` serves. A
// real deployment would sign the user in instead (e.g. supabase-js auth or the app's own
// login) and hand supabase-js that JWT through the same `accessToken` callback.
//
// An open WebSocket that sends or receives keeps an MV3 service worker alive (Chrome 116+),
// and Phoenix heartbeats every 25 s, under the 30 s idle limit. When Chrome does stop the
// worker, the next event (a popup connecting, a storage change) starts it here again.

// The feed itself (session, client, subscription, snapshot on every SUBSCRIBED, token
// refresh) is web-demo/feed.js, the one the demo page uses; setup.sh copies it into vendor/.
importScripts('vendor/supabase.js', 'vendor/feed.js')

const { JobFeed } = self.RowcastFeed

const DEFAULTS = { gateway: 'http://127.0.0.1:4000', user: 'alice' }
/** After a failed start (gateway down, wrong URL), try again this much later. */
const RETRY_MS = 5_000

/** What the worker knows; `self.rowcast` lets tests and the devtools console read it. */
const state = { settings: { ...DEFAULTS }, status: 'idle', detail: '', jobs: new Map() }
self.rowcast = {
  state,
  running: () => runningCount(),
}

const ports = new Set()
/** The feed of the user in storage; closed and replaced by every start(). */
let feed = null
/** Counts start()s, so that one that finds a later one began while it awaited gives up. */
let starts = 0
let retryTimer = null

/** (Re)starts following the user in storage: on start-up, on every settings change, after a failure. */
async function start() {
  const mine = ++starts
  feed?.close()
  feed = null
  clearTimeout(retryTimer)
  state.jobs.clear()
  updateBadge()
  setStatus('connecting')
  try {
    const settings = { ...DEFAULTS, ...(await chrome.storage.local.get(['gateway', 'user'])) }
    if (mine !== starts) return
    state.settings = settings
    feed = new JobFeed({ gateway: settings.gateway, user: settings.user, on: feedEvents })
    await feed.open()
  } catch (err) {
    if (mine !== starts) return
    // A failed start (gateway down, wrong URL) is tried again later.
    feed?.close()
    setStatus('error', err.message)
    retryTimer = setTimeout(start, RETRY_MS)
  }
}

/** What the feed reports; it calls none of these once closed. */
const feedEvents = {
  change: apply,
  status: (status, err) => setStatus(status === 'SUBSCRIBED' ? status : 'reconnecting', err?.message ?? status),
  // The snapshot lets the badge count jobs that were running before we subscribed.
  snapshot: (rows) => {
    for (const row of rows) upsert(row)
    updateBadge()
  },
  snapshotError: (err) => setStatus(state.status, `snapshot: ${err.message}`),
  refreshError: () => start(),
}

function apply(change) {
  if (change.eventType === 'DELETE') state.jobs.delete(change.old.id)
  else upsert(change.new)
  updateBadge()
  broadcast({ kind: 'change', user: state.settings.user, change })
}

/** Keeps the newest version of each row by updated_at (see web-demo/jobs.js for why). */
function upsert(row) {
  const current = state.jobs.get(row.id)
  if (!current || micros(row.updated_at) >= micros(current.updated_at)) state.jobs.set(row.id, row)
}

function micros(timestamp) {
  const extra = /\.\d{3}(\d{1,3})/.exec(timestamp ?? '')
  return Date.parse(timestamp) * 1000 + (extra ? Number(extra[1].padEnd(3, '0')) : 0)
}

function runningCount() {
  let n = 0
  for (const row of state.jobs.values()) if (row.status === 'running') n++
  return n
}

function updateBadge() {
  const n = runningCount()
  chrome.action.setBadgeBackgroundColor({ color: '#3b6ef5' })
  chrome.action.setBadgeText({ text: n > 0 ? String(n) : '' })
}

function setStatus(status, detail = '') {
  Object.assign(state, { status, detail })
  broadcast(statusMessage())
}

const statusMessage = () => ({ kind: 'status', status: state.status, detail: state.detail, ...state.settings })

function broadcast(message) {
  for (const port of ports) port.postMessage(message)
}

chrome.runtime.onConnect.addListener((port) => {
  if (port.name !== 'jobs') return
  ports.add(port)
  port.onDisconnect.addListener(() => ports.delete(port))
  port.postMessage(statusMessage())
})

chrome.storage.onChanged.addListener((changes, area) => {
  if (area === 'local' && (changes.gateway || changes.user)) start()
})

start()
