// The demo page: pick a user, start demo jobs, and watch their rows of rowcast.jobs change
// live. Everything goes through the official supabase-js (loaded as /vendor/supabase.js):
// the snapshot is a PostgREST read, the live part a postgres_changes subscription. Starting,
// cancelling and retrying jobs are plain calls to the gateway's /api/jobs.
//
// The order on load or user switch: demo session -> client -> realtime.setAuth() ->
// subscribe -> snapshot. A snapshot is read again on every SUBSCRIBED, because changes made
// while the socket was down are not replayed; JobList ignores versions older than it shows,
// so the snapshot and live changes may arrive in any order.

import { JobList } from './jobs.js'

const USER_KEY = 'rowcast.user'
const DEFAULT_USER = 'alice'
/** Refresh the demo token this long before it expires. */
const REFRESH_EARLY_MS = 60_000

const $ = (selector) => document.querySelector(selector)
const jobsEl = $('#jobs')
const list = new JobList(jobsEl, {
  actions: { cancel: (id) => feed?.act(id, 'cancel'), retry: (id) => feed?.act(id, 'retry') },
})
let feed = null

/** One user's live view: their demo session, a supabase-js client and a channel. */
class Feed {
  closed = false

  constructor(user) {
    this.user = user
  }

  async open() {
    this.session = await demoSession(this.user)
    if (this.closed) return // another user was picked meanwhile
    this.client = supabase.createClient(location.origin, this.session.anon_key, {
      accessToken: async () => this.session.access_token,
      auth: { persistSession: false, autoRefreshToken: false },
    })
    // supabase-js 2.109 joins with the token it has cached and never re-sends it on join:
    // resolve it first.
    await this.client.realtime.setAuth()
    if (this.closed) return
    this.#subscribe()
    this.#scheduleRefresh()
    await this.loadSnapshot()
  }

  close() {
    this.closed = true
    clearTimeout(this.refreshTimer)
    this.client?.removeAllChannels()
    this.client?.realtime.disconnect()
  }

  /** The newest 50 jobs, through supabase-js's PostgREST client. */
  async loadSnapshot() {
    const { data, error, status } = await this.client
      .schema('rowcast')
      .from('jobs')
      .select('*')
      .order('created_at', { ascending: false })
      .limit(50)
    if (this.closed) return
    if (error || !Array.isArray(data)) return notice(`Could not load jobs: ${error?.message ?? `HTTP ${status}`}`)
    for (const row of data) list.upsert(row)
    jobsEl.dataset.user = this.user
    jobsEl.setAttribute('aria-busy', 'false')
  }

  /** POST /api/jobs: starts a demo job in `mode`. */
  enqueue(mode) {
    return this.#api('POST', '/api/jobs', { type: 'demo', input: { mode } })
  }

  /** POST /api/jobs/:id/cancel or /retry. */
  act(id, action) {
    return this.#api('POST', `/api/jobs/${id}/${action}`)
  }

  #subscribe() {
    const changes = { event: '*', schema: 'rowcast', table: 'jobs', filter: `user_id=eq.${this.user}` }
    this.client
      .channel(`jobs-${this.user}`)
      .on('postgres_changes', changes, (change) => this.#apply(change))
      .subscribe((status, err) => {
        if (this.closed) return
        showConnection(status, err)
        if (status === 'SUBSCRIBED') this.loadSnapshot()
      })
  }

  #apply(change) {
    if (this.closed) return
    if (change.eventType === 'DELETE') list.remove(change.old.id)
    else list.upsert(change.new)
  }

  // The answer is applied at once too, so the page never waits on the socket for its own action.
  async #api(method, path, body) {
    const headers = { apikey: this.session.anon_key, authorization: `Bearer ${this.session.access_token}` }
    if (body) headers['content-type'] = 'application/json'
    const response = await fetch(path, { method, headers, body: body && JSON.stringify(body) }).catch((err) => err)
    if (response instanceof Error) return notice(`${method} ${path}: ${response.message}`)
    const json = await response.json().catch(() => ({}))
    if (!response.ok) return notice(json.error ?? `${method} ${path}: HTTP ${response.status}`)
    if (!this.closed) list.upsert(json)
    notice('')
  }

  #scheduleRefresh() {
    const due = this.session.expires_at * 1000 - REFRESH_EARLY_MS - Date.now()
    this.refreshTimer = setTimeout(async () => {
      try {
        this.session = await demoSession(this.user)
        await this.client.realtime.setAuth() // pushes the new token to the joined channel
        this.#scheduleRefresh()
      } catch (err) {
        notice(`Could not refresh the session: ${err.message}`)
      }
    }, Math.max(due, 5_000))
  }
}

/**
 * GET /demo/session: a token for `user`, which `rowcast demo` hands out to anyone. A real
 * app signs its users in instead and gives supabase-js their JWT the same way.
 */
async function demoSession(user) {
  const response = await fetch(`/demo/session?user=${encodeURIComponent(user)}`)
  const json = await response.json().catch(() => ({}))
  if (response.ok) return json
  if (response.status === 404) throw new Error('this gateway hands out no demo sessions: run `rowcast demo`')
  throw new Error(json.error ?? `GET /demo/session: HTTP ${response.status}`)
}

/** Follows `user` from now on, closing the previous user's feed. */
function follow(user) {
  feed?.close()
  localStorage.setItem(USER_KEY, user)
  const picker = $('#user')
  if (![...picker.options].some((option) => option.value === user)) picker.add(new Option(user))
  picker.value = user
  list.clear()
  jobsEl.setAttribute('aria-busy', 'true')
  delete jobsEl.dataset.user
  showConnection('connecting')
  notice('')
  feed = new Feed(user)
  const opening = feed
  feed.open().catch((err) => {
    if (!opening.closed) notice(err.message)
  })
}

/** SUBSCRIBED is live; every other status means supabase-js is (re)joining. */
function showConnection(status, err) {
  const el = $('#connection')
  const live = status === 'SUBSCRIBED'
  el.dataset.state = live || status === 'connecting' ? status : 'reconnecting'
  el.textContent = live ? 'SUBSCRIBED' : status === 'connecting' ? 'connecting…' : 'reconnecting…'
  el.title = err?.message ?? status
}

function notice(text) {
  const el = $('#notice')
  el.textContent = text
  el.hidden = !text
}

$('#user').addEventListener('change', (event) => follow(event.target.value))
for (const button of document.querySelectorAll('[data-mode]')) {
  button.addEventListener('click', async () => {
    button.disabled = true
    try {
      await feed?.enqueue(button.dataset.mode)
    } finally {
      button.disabled = false
    }
  })
}
follow(localStorage.getItem(USER_KEY) || DEFAULT_USER)
