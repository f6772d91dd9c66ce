// The demo page: pick a user, start demo jobs, and watch their rows of rowcast.jobs change
// live. Everything goes through the official supabase-js (loaded as /vendor/supabase.js) by
// way of the feed that the extension shares (/feed.js, globalThis.RowcastFeed): a demo
// session, a client, a postgres_changes subscription, and a snapshot read on every
// SUBSCRIBED. Starting, cancelling and retrying jobs are plain calls to the gateway's
// /api/jobs. JobList ignores versions older than it shows, so the snapshot and live changes
// may arrive in any order.

import { JobList } from './jobs.js'

const { JobFeed } = globalThis.RowcastFeed

const USER_KEY = 'rowcast.user'
const DEFAULT_USER = 'alice'

const $ = (selector) => document.querySelector(selector)
const jobsEl = $('#jobs')
const list = new JobList(jobsEl, {
  announcer: $('#announcer'),
  actions: { cancel: (id) => api('POST', `/api/jobs/${id}/cancel`), retry: (id) => api('POST', `/api/jobs/${id}/retry`) },
})
/** The feed of the user shown; replaced (and the old one closed) when another is picked. */
let feed = null

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
  const mine = (feed = new JobFeed({
    gateway: location.origin,
    user,
    on: {
      change: (change) => (change.eventType === 'DELETE' ? gone(change.old.id) : show(change.new)),
      status: showConnection,
      snapshot: (rows) => {
        for (const row of rows) show(row)
        jobsEl.dataset.user = user
        jobsEl.setAttribute('aria-busy', 'false')
      },
      snapshotError: (err) => notice(`Could not load jobs: ${err.message}`),
      refreshError: (err) => notice(`Could not refresh the session: ${err.message}`),
      activity: (id, text) => list.activity(id, text),
    },
  }))
  mine.open().catch((err) => mine.closed || notice(err.message))
}

/** Shows a row, and listens to what it says it is doing while it runs. */
function show(row) {
  list.upsert(row)
  if (row.status === 'running') feed?.watch(row.id)
  else feed?.unwatch(row.id)
}

function gone(id) {
  feed?.unwatch(id)
  list.remove(id)
}

/**
 * Calls the jobs API as the user shown. The answer (the job's row) is applied at once too, so
 * the page never waits on the socket for its own action.
 */
async function api(method, path, body) {
  const mine = feed
  const session = mine?.session
  if (!session) return notice('Not connected yet: try again in a moment.')
  const headers = { apikey: session.anon_key, authorization: `Bearer ${session.access_token}` }
  if (body) headers['content-type'] = 'application/json'
  const response = await fetch(path, { method, headers, body: body && JSON.stringify(body) }).catch((err) => err)
  if (response instanceof Error) return notice(`${method} ${path}: ${response.message}`)
  const json = await response.json().catch(() => ({}))
  if (!response.ok) return notice(json.error ?? `${method} ${path}: HTTP ${response.status}`)
  if (!mine.closed) show(json)
  notice('')
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
      await api('POST', '/api/jobs', { type: 'demo', input: { mode: button.dataset.mode } })
    } finally {
      button.disabled = false
    }
  })
}
follow(localStorage.getItem(USER_KEY) || DEFAULT_USER)
