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

importScripts('vendor/supabase.js')

const DEFAULTS = { gateway: 'http://127.0.0.1:4000', user: 'alice' }
/** After a failed start (gateway down, wrong URL), try again this much later. */
const RETRY_MS = 5_000
const REFRESH_EARLY_MS = 60_000

/** What the worker knows; `self.rowcast` lets tests and the devtools console read it. */
const state = { settings: { ...DEFAULTS }, status: 'idle', detail: '', jobs: new Map() }
self.rowcast = {
  state,
  running: () => runningCount(),
}

const ports = new Set()
let feed = null

/** One run of following a user's jobs; closed when the settings change. */
class Feed {
  closed = false

  async open() {
    const settings = { ...DEFAULTS, ...(await chrome.storage.local.get(['gateway', 'user'])) }
    if (this.closed) return
    state.settings = settings
    const { gateway, user } = settings
    this.session = await demoSession(gateway, user)
    if (this.closed) return
    this.client = supabase.createClient(gateway, this.session.anon_key, {
      accessToken: async () => this.session.access_token,
      auth: { persistSession: false, autoRefreshToken: false },
    })
    // supabase-js 2.109 joins with the token it has cached: resolve it before subscribing.
    await this.client.realtime.setAuth()
    if (this.closed) return
    const changes = { event: '*', schema: 'rowcast', table: 'jobs', filter: `user_id=eq.${user}` }
    this.client
      .channel(`jobs-${user}`)
      .on('postgres_changes', changes, (change) => this.closed || apply(change))
      .subscribe((status, err) => {
        if (this.closed) return
        setStatus(status === 'SUBSCRIBED' ? status : 'reconnecting', err?.message ?? status)
        // Changes missed while not subscribed are not replayed: read the snapshot again.
        if (status === 'SUBSCRIBED') this.loadSnapshot()
      })
    this.#scheduleRefresh()
  }

  close() {
    this.closed = true
    clearTimeout(this.timer)
    this.client?.removeAllChannels()
    this.client?.realtime.disconnect()
  }

  /** The newest 50 jobs, so the badge counts jobs that were running before we subscribed. */
  async loadSnapshot() {
    const { data, error, status } = await this.client
      .schema('rowcast')
      .from('jobs')
      .select('*')
      .order('created_at', { ascending: false })
      .limit(50)
    if (this.closed) return
    if (error || !Array.isArray(data)) {
      return setStatus(state.status, `snapshot: ${error?.message ?? `HTTP ${status}`}`)
    }
    for (const row of data) upsert(row)
    updateBadge()
  }

  /** A failed start (gateway down, wrong URL) is tried again later. */
  retryLater(err) {
    if (this.closed) return
    setStatus('error', err.message)
    this.timer = setTimeout(start, RETRY_MS)
  }

  #scheduleRefresh() {
    const due = this.session.expires_at * 1000 - REFRESH_EARLY_MS - Date.now()
    this.timer = setTimeout(async () => {
      try {
        this.session = await demoSession(state.settings.gateway, state.settings.user)
        await this.client.realtime.setAuth() // pushes the new token to the joined channel
        this.#scheduleRefresh()
      } catch (err) {
        if (!this.closed) start()
      }
    }, Math.max(due, 5_000))
  }
}

/** (Re)starts following the user in storage: on start-up and on every settings change. */
function start() {
  feed?.close()
  // Replaced before any await, so two quick settings changes cannot leave two feeds open.
  const mine = (feed = new Feed())
  state.jobs.clear()
  updateBadge()
  setStatus('connecting')
  mine.open().catch((err) => mine.retryLater(err))
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

/** GET <gateway>/demo/session?user=...: {user, anon_key, access_token, expires_at}. */
async function demoSession(gateway, user) {
  const url = new URL('/demo/session', gateway)
  url.searchParams.set('user', user)
  const response = await fetch(url)
  const json = await response.json().catch(() => ({}))
  if (!response.ok) throw new Error(json.error ?? `GET ${url}: HTTP ${response.status}`)
  return json
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
