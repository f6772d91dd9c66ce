// The job list that the demo page and the extension popup share: one card per row of
// rowcast.jobs, newest first, kept current by `upsert`, which ignores any version of a row
// older than the one shown (a snapshot and live changes can arrive in either order). Pure
// DOM: the callers own the supabase-js client and the network.
//
// A card is called by its job's name, "demo · quick #3f2a9c" (type, mode, the id's first six
// hex digits, unique in practice among 50 jobs): its h3 heading says it, its buttons are
// "Cancel <name>" and "Retry <name>" to assistive technology (they read Cancel and Retry), and
// a status change is said in the page's live region ("demo · quick #3f2a9c completed"). The
// list itself is no live region: every progress tick would be read out.
//
// Test hooks: each card has `data-job-id`, `data-status` and `data-user-id`; its bar has
// role="progressbar" and `aria-valuenow`; `.job-error` holds the error; `time[datetime]` is
// created_at.

const CANCELLABLE = new Set(['pending', 'running'])
const RETRYABLE = new Set(['failed', 'cancelled'])
/** How a status change is said: "<name> completed". */
const SAID = {
  pending: 'is waiting',
  running: 'is running',
  completed: 'completed',
  failed: 'failed',
  cancelled: 'was cancelled',
}

/**
 * An ISO timestamp as microseconds since the epoch. Date.parse keeps only milliseconds, and
 * a job can be updated twice within one; Postgres gives us up to six fractional digits.
 */
export function micros(timestamp) {
  const extra = /\.\d{3}(\d{1,3})/.exec(timestamp ?? '')
  return Date.parse(timestamp) * 1000 + (extra ? Number(extra[1].padEnd(3, '0')) : 0)
}

/** Whether `incoming` is the same version of a row as `current` or a later one. */
export function isCurrent(incoming, current) {
  return !current || micros(incoming.updated_at) >= micros(current.updated_at)
}

/** A list of job cards inside `container`. */
export class JobList {
  #rows = new Map()
  #cards = new Map()

  /**
   * `container` holds nothing but the cards. `actions` (optional) is `{cancel(id), retry(id)}`:
   * the cards then get Cancel and Retry buttons that call them and stay disabled until the
   * returned promise settles. `announcer` (optional) is a live region (role="status") that
   * is told each status change.
   */
  constructor(container, { actions, announcer } = {}) {
    this.container = container
    this.actions = actions
    this.announcer = announcer
  }

  /** Shows `row` unless a newer version of it is already shown; returns whether it did. */
  upsert(row) {
    const shown = this.#rows.get(row.id)
    if (!isCurrent(row, shown)) return false
    this.#rows.set(row.id, row)
    let card = this.#cards.get(row.id)
    if (!card) {
      card = this.#newCard(row)
      this.#cards.set(row.id, card)
      this.#insertByAge(card)
    }
    fill(card, row)
    // A card's first state (a snapshot, a new job) is not news, and neither is a progress tick.
    if (shown && shown.status !== row.status) this.#announce(`${name(row)} ${SAID[row.status] ?? row.status}`)
    return true
  }

  /** Shows what job `id` says it is doing now; cleared when it stops running. */
  activity(id, text) {
    const card = this.#cards.get(id)
    if (card && card.dataset.status === 'running') card.querySelector('.job-activity').textContent = text
  }

  /** Removes a deleted job's card. */
  remove(id) {
    this.#cards.get(id)?.remove()
    this.#cards.delete(id)
    this.#rows.delete(id)
  }

  /** Empties the list (another user was picked). */
  clear() {
    this.#rows.clear()
    this.#cards.clear()
    this.container.replaceChildren()
    if (this.announcer) this.announcer.textContent = ''
  }

  // Newest first by created_at, which never changes, so a card is placed once: before the
  // first card, in the order shown, that is older. The order in which cards were made is no
  // guide: a snapshot comes newest first, jobs started live oldest first.
  #insertByAge(card) {
    const at = Number(card.dataset.createdMicros)
    const next = [...this.container.children].find((other) => Number(other.dataset.createdMicros) < at)
    this.container.insertBefore(card, next ?? null)
  }

  // Replacing the text of a polite live region has screen readers read it once they are idle.
  #announce(text) {
    if (this.announcer) this.announcer.textContent = text
  }

  #newCard(row) {
    const card = el('article', 'job')
    card.dataset.jobId = row.id
    card.dataset.userId = row.user_id
    card.dataset.createdMicros = String(micros(row.created_at))
    const bar = el('div', 'bar')
    bar.setAttribute('role', 'progressbar')
    bar.setAttribute('aria-valuemin', '0')
    bar.setAttribute('aria-valuemax', '100')
    bar.setAttribute('aria-label', `${name(row)} progress`)
    bar.append(el('span', 'bar-fill'))
    const heading = el('h3', 'job-title', [title(row), ' ', el('span', 'job-ref', `#${shortId(row)}`)])
    const time = el('time', 'job-time', clock(row.created_at))
    time.dateTime = row.created_at
    card.append(
      el('header', 'job-head', [heading, el('span', 'badge')]),
      el('div', 'job-progress', [bar, el('span', 'job-percent')]),
      el('p', 'job-meta', [el('span', 'job-message'), el('span', 'job-attempts')]),
      el('p', 'job-activity'),
      el('p', 'job-error'),
      el('footer', 'job-foot', [time, ...this.#buttons(row)])
    )
    return card
  }

  #buttons(row) {
    if (!this.actions) return []
    return [
      button('Cancel', `Cancel ${name(row)}`, 'job-cancel', () => this.actions.cancel(row.id)),
      button('Retry', `Retry ${name(row)}`, 'job-retry', () => this.actions.retry(row.id)),
    ]
  }
}

/** Writes a row's current state into its card. */
function fill(card, row) {
  const progress = Math.max(0, Math.min(100, Math.round(row.progress ?? 0)))
  card.dataset.status = row.status
  const badge = card.querySelector('.badge')
  badge.textContent = row.status
  badge.dataset.status = row.status
  const bar = card.querySelector('[role=progressbar]')
  bar.setAttribute('aria-valuenow', String(progress))
  bar.firstChild.style.width = `${progress}%`
  card.querySelector('.job-percent').textContent = `${progress}%`
  card.querySelector('.job-message').textContent = row.message ?? (row.status === 'pending' ? 'waiting for a worker' : '')
  card.querySelector('.job-attempts').textContent = attempts(row)
  // The activity line is transient: it is only ever about the step running now.
  if (row.status !== 'running') card.querySelector('.job-activity').textContent = ''
  // A pending job may carry the error of the attempt it is about to retry.
  const error = card.querySelector('.job-error')
  error.textContent = row.error ?? ''
  error.hidden = !row.error || row.status === 'completed' || row.status === 'cancelled'
  const cancel = card.querySelector('.job-cancel')
  const retry = card.querySelector('.job-retry')
  if (cancel) cancel.hidden = !CANCELLABLE.has(row.status)
  if (retry) retry.hidden = !RETRYABLE.has(row.status)
}

const title = (row) => [row.type, row.input?.mode].filter(Boolean).join(' · ')

const shortId = (row) => String(row.id).slice(0, 6)

/** What a job is called, as its card's heading reads: "demo · quick #3f2a9c". */
const name = (row) => `${title(row)} #${shortId(row)}`

const attempts = (row) =>
  row.attempts > 0 ? `attempt ${row.attempts} of ${row.max_attempts}` : `up to ${row.max_attempts} attempts`

const clock = (timestamp) => new Date(Date.parse(timestamp)).toLocaleTimeString()

function el(tag, className, children = []) {
  const node = document.createElement(tag)
  node.className = className
  if (typeof children === 'string') node.textContent = children
  else node.append(...children)
  return node
}

function button(text, label, className, onClick) {
  const node = el('button', className, text)
  node.type = 'button'
  node.setAttribute('aria-label', label)
  node.addEventListener('click', async () => {
    node.disabled = true
    try {
      await onClick()
    } finally {
      node.disabled = false
    }
  })
  return node
}
