// rowcast jobs, the popup: reads the newest jobs over REST with supabase-js (PostgREST
// `.schema('rowcast').from('jobs')`), then applies the changes that the service worker relays
// through the "jobs" port. It has no subscription of its own: the worker already has one,
// and a popup lives only while it is open. The list ignores stale versions (by updated_at),
// so the snapshot and relayed changes may arrive in either order. The demo session and the
// snapshot read are web-demo/feed.js's (vendor/feed.js, loaded before this module).

import { JobList } from './vendor/jobs.js'

const { demoSession, sessionClient, newestJobs } = globalThis.RowcastFeed

const DEFAULTS = { gateway: 'http://127.0.0.1:4000', user: 'alice' }

const $ = (selector) => document.querySelector(selector)
const jobsEl = $('#jobs')
const list = new JobList(jobsEl, { announcer: $('#announcer') })
const settings = { ...DEFAULTS, ...(await chrome.storage.local.get(['gateway', 'user'])) }
let client = null

showSettings()
const port = chrome.runtime.connect({ name: 'jobs' })
port.onMessage.addListener(onMessage)
loadSnapshot()

function onMessage(message) {
  if (message.kind === 'status') {
    showConnection(message.status, message.detail)
    // The worker missed whatever changed while it was not subscribed: read again.
    if (message.status === 'SUBSCRIBED') loadSnapshot()
  } else if (message.kind === 'change' && message.user === settings.user) {
    const { change } = message
    if (change.eventType === 'DELETE') list.remove(change.old.id)
    else list.upsert(change.new)
  }
}

/** The newest 50 jobs of the configured user. */
async function loadSnapshot() {
  try {
    client ??= await connect()
    for (const row of await newestJobs(client)) list.upsert(row)
    jobsEl.dataset.user = settings.user
    jobsEl.setAttribute('aria-busy', 'false')
    notice('')
  } catch (err) {
    notice(`Could not load jobs from ${settings.gateway}: ${err.message}`)
  }
}

/**
 * A supabase-js client for REST reads. Its token comes from the gateway's demo sessions
 * (`rowcast demo` only); a real deployment signs the user in instead.
 */
async function connect() {
  const session = await demoSession(settings.gateway, settings.user)
  return sessionClient(settings.gateway, () => session)
}

function showSettings() {
  const form = $('#settings')
  form.gateway.value = settings.gateway
  form.user.value = settings.user
  $('#who').textContent = settings.user
  const link = $('#gateway-link')
  link.href = new URL('/', settings.gateway).href
  link.textContent = settings.gateway
  form.addEventListener('submit', async (event) => {
    event.preventDefault()
    // The worker follows storage changes on its own; the popup simply starts over.
    await chrome.storage.local.set({ gateway: form.gateway.value.replace(/\/+$/, ''), user: form.user.value })
    location.reload()
  })
}

function showConnection(status, detail) {
  const el = $('#connection')
  el.dataset.state = status
  el.textContent = status === 'SUBSCRIBED' ? 'SUBSCRIBED' : status === 'error' ? 'offline' : `${status}…`
  el.title = detail || status
}

function notice(text) {
  const el = $('#notice')
  el.textContent = text
  el.hidden = !text
}
