// The runs dashboard: for operators holding the service role's key. It reads and acts through
// /api/admin/* (which refuses a user's token) and stays live through the gateway's own
// realtime: supabase-js subscribed to every change of rowcast.jobs. The key lives in this
// tab's sessionStorage only.

const $ = (id) => document.getElementById(id)
const gateway = location.origin
const KEY_SLOT = 'rowcast-dashboard-key'

let key = null
let client = null
/** The runs on screen, by id, in the order shown. */
let rows = new Map()
let selectedDetail = null

async function admin(path, body) {
  const response = await fetch(`${gateway}/api/admin${path}`, {
    method: body ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${key}`, ...(body && { 'content-type': 'application/json' }) },
    body: body && JSON.stringify(body),
  })
  const data = await response.json().catch(() => ({}))
  if (!response.ok) throw Object.assign(new Error(data.error ?? `HTTP ${response.status}`), { status: response.status })
  return data
}

function setConnection(state, text) {
  $('connection').dataset.state = state
  $('connection').textContent = text
}

async function open(candidate) {
  key = candidate
  $('refused').hidden = true
  try {
    await loadTypes()
  } catch (err) {
    key = null
    sessionStorage.removeItem(KEY_SLOT)
    $('refused').textContent = err.message
    $('refused').hidden = false
    $('board').hidden = true
    return
  }
  sessionStorage.setItem(KEY_SLOT, candidate)
  $('signin').hidden = true
  $('board').hidden = false
  await Promise.all([loadRuns(), loadApps()])
  subscribe()
}

const secs = (s) => (s == null ? '' : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`)
const pct = (r) => (r == null ? '' : `${Math.round(r * 100)} %`)

async function loadTypes() {
  const types = await admin('/types')
  const body = $('types').tBodies[0]
  body.replaceChildren(
    ...types.map((t) => {
      const tr = document.createElement('tr')
      tr.dataset.type = t.type
      // The thresholds of the job config's [alerts] this type is past.
      if (t.alerts.length > 0) tr.classList.add('alert')
      const alerts = t.alerts.map((a) => `${a.alert.replace('_', ' ')} ${a.alert === 'failure_rate' ? pct(a.value) : a.alert === 'p95' ? secs(a.value) : a.value}`).join(', ')
      const cells = [t.type, t.pending, t.running, secs(t.oldest_pending_secs), t.created_1h, t.completed_1h, t.failed_1h, pct(t.failure_rate_1h), secs(t.p95_secs_1h), t.stuck_1h]
      tr.append(...cells.map((c) => cell(c)), cell(alerts, 'alerts'))
      return tr
    }),
  )
  const select = $('f-type')
  const chosen = select.value
  select.replaceChildren(new Option('any', ''), ...types.map((t) => new Option(t.type, t.type)))
  select.value = chosen
}

function cell(text, className) {
  const td = document.createElement('td')
  td.textContent = text ?? ''
  if (className) td.className = className
  return td
}

function filters() {
  return { status: $('f-status').value, type: $('f-type').value, user: $('f-user').value.trim(), id: $('f-id').value.trim() }
}

function matches(job) {
  const f = filters()
  return (!f.status || job.status === f.status) && (!f.type || job.type === f.type) && (!f.user || job.user_id === f.user) && (!f.id || job.id.startsWith(f.id.toLowerCase()))
}

/** Changes that arrived while the latest snapshot was being read, replayed onto it; null when none is. */
let arrivedDuringLoad = null
let loads = 0

async function loadRuns() {
  const q = new URLSearchParams(Object.entries(filters()).filter(([, v]) => v))
  const load = ++loads
  const arrived = (arrivedDuringLoad = [])
  let runs
  try {
    runs = await admin(`/jobs?${q}`)
  } finally {
    if (load === loads) arrivedDuringLoad = null
  }
  // A later load owns the table; this snapshot may be older than what it shows.
  if (load !== loads) return
  rows = new Map(runs.map((r) => [r.id, r]))
  // The snapshot may have been read before these changes committed: without replaying them a
  // run inserted meanwhile would be missing until a reload.
  for (const change of arrived) apply(change)
  render()
}

function took(job) {
  if (!job.started_at) return ''
  const end = job.completed_at ? Date.parse(job.completed_at) : Date.now()
  return secs((end - Date.parse(job.started_at)) / 1000)
}

function render() {
  const checked = new Set([...document.querySelectorAll('#runs tbody input:checked')].map((c) => c.value))
  $('runs').tBodies[0].replaceChildren(
    ...[...rows.values()].map((job) => {
      const tr = document.createElement('tr')
      tr.dataset.id = job.id
      tr.dataset.status = job.status
      const box = document.createElement('input')
      box.type = 'checkbox'
      box.value = job.id
      box.checked = checked.has(job.id)
      box.setAttribute('aria-label', `Select run ${job.id}`)
      box.addEventListener('click', (e) => e.stopPropagation())
      box.addEventListener('change', updateActions)
      const first = document.createElement('td')
      first.append(box)
      tr.append(
        first,
        cell(job.id.slice(0, 8), 'id'),
        cell(job.type),
        cell(job.user_id),
        cell(job.status, 'status'),
        cell(`${job.attempts}/${job.max_attempts}`),
        cell(`${job.progress} %`),
        cell(job.message),
        cell(new Date(job.created_at).toLocaleTimeString()),
        cell(took(job)),
        cell(job.error, 'error'),
      )
      tr.addEventListener('click', () => showDetail(job.id))
      return tr
    }),
  )
  updateActions()
}

function selected() {
  return [...document.querySelectorAll('#runs tbody input:checked')].map((c) => c.value)
}

function updateActions() {
  const n = selected().length
  $('cancel-selected').disabled = n === 0
  $('retry-selected').disabled = n === 0
}

async function act(action) {
  const ids = selected()
  const result = await admin(`/jobs/${action}`, { ids })
  const refused = result.refused.map((r) => `${r.id.slice(0, 8)}: ${r.error}`).join('; ')
  $('action-result').textContent = `${action === 'cancel' ? 'cancelled' : 'retried'} ${result.done.length}${refused ? `; not ${refused}` : ''}`
  for (const box of document.querySelectorAll('#runs tbody input:checked')) box.checked = false
  updateActions()
}

async function showDetail(id) {
  selectedDetail = id
  const { job, steps, lease } = await admin(`/jobs/${id}`)
  if (selectedDetail !== id) return
  $('detail').hidden = false
  $('detail-h').textContent = `Run ${job.id}`
  const fields = [
    ['type', job.type],
    ['user', job.user_id ?? ''],
    ['status', job.status],
    ['attempts', `${job.attempts} of ${job.max_attempts}`],
    ['message', job.message ?? ''],
    ['error', job.error ?? ''],
    ['created', job.created_at],
    ['started', job.started_at ?? ''],
    ['ended', job.completed_at ?? ''],
    ['took', took(job)],
    ['held by', lease ? `${lease.worker} (attempt ${lease.attempt}, lease until ${lease.expires_at})` : ''],
  ]
  $('detail-fields').replaceChildren(
    ...fields.flatMap(([name, value]) => {
      const dt = document.createElement('dt')
      dt.textContent = name
      const dd = document.createElement('dd')
      dd.textContent = value
      dd.dataset.field = name
      return [dt, dd]
    }),
  )
  $('detail-steps').replaceChildren(
    ...steps.map((s) => {
      const li = document.createElement('li')
      const code = document.createElement('code')
      code.textContent = JSON.stringify(s.output)?.slice(0, 200) ?? ''
      li.append(`${s.step_id} at ${new Date(s.created_at).toLocaleTimeString()}: `, code)
      return li
    }),
  )
}

async function loadApps() {
  const apps = await admin('/inngest')
  if (apps.length === 0) return $('apps').replaceChildren(Object.assign(document.createElement('li'), { textContent: 'none synced' }))
  $('apps').replaceChildren(
    ...apps.map((a) => {
      const li = document.createElement('li')
      li.textContent = `${a.id} (${a.url}, ${a.sdk ?? 'sdk ?'}): ${a.functions.join(', ') || 'no functions'}`
      return li
    }),
  )
}

let typesTimer = null
const newestFirst = ([, a], [, b]) => Date.parse(b.created_at) - Date.parse(a.created_at) || (a.id < b.id ? -1 : 1)

/** A timestamp in microseconds since the epoch: Date.parse alone keeps milliseconds only. */
const micros = (t) => Math.floor(Date.parse(t) / 1000) * 1e6 + Number(`${/\.(\d+)/.exec(t)?.[1] ?? ''}000000`.slice(0, 6))

/**
 * One change onto the rows: a run not on screen that matches the filters is added in its place;
 * a change older than the row shown (replayed onto a newer snapshot) is dropped.
 */
function apply({ eventType, new: job, old }) {
  if (eventType === 'DELETE') {
    rows.delete(old.id)
  } else if (rows.has(job.id)) {
    if (micros(job.updated_at) >= micros(rows.get(job.id).updated_at)) rows.set(job.id, job)
  } else if (matches(job)) {
    rows = new Map([...rows, [job.id, job]].sort(newestFirst))
  }
}

function onChange(change) {
  arrivedDuringLoad?.push(change)
  apply(change)
  const job = change.new
  render()
  if (selectedDetail && job?.id === selectedDetail) showDetail(selectedDetail)
  // The figures move with every change; reread them at most twice a second.
  typesTimer ??= setTimeout(() => {
    typesTimer = null
    loadTypes().catch(() => {})
  }, 500)
}

function subscribe() {
  client = globalThis.supabase.createClient(gateway, key, { auth: { persistSession: false, autoRefreshToken: false } })
  client
    .channel('dashboard-runs')
    .on('postgres_changes', { event: '*', schema: 'rowcast', table: 'jobs' }, onChange)
    .subscribe((status) => {
      setConnection(status === 'SUBSCRIBED' ? 'live' : 'connecting', status === 'SUBSCRIBED' ? 'live' : status.toLowerCase())
      // Changes made while the channel was not joined are read back after each join.
      if (status === 'SUBSCRIBED') loadRuns().catch(() => {})
    })
}

$('signin').addEventListener('submit', (e) => {
  e.preventDefault()
  open($('key').value.trim())
})
$('filters').addEventListener('submit', (e) => {
  e.preventDefault()
  loadRuns()
})
$('select-all').addEventListener('change', (e) => {
  for (const box of document.querySelectorAll('#runs tbody input')) box.checked = e.target.checked
  updateActions()
})
$('cancel-selected').addEventListener('click', () => act('cancel'))
$('retry-selected').addEventListener('click', () => act('retry'))

const saved = sessionStorage.getItem(KEY_SLOT)
if (saved) open(saved)
