// The job list that the demo page and the extension popup share: one card per row of
// rowcast.jobs, newest first, kept current by `upsert`, which ignores any version of a row
// older than the one shown (a snapshot and live changes can arrive in either order). Pure
// DOM: the callers own the supabase-js client and the network.
//
// Test hooks: each card has `data-job-id`, `data-status` and `data-user-id`; its bar has
// role="progressbar" and `aria-valuenow`; `.job-error` holds the error; buttons say
// "Cancel" and "Retry".

const CANCELLABLE = new Set(['pending', 'running'])
const RETRYABLE = new Set(['failed', 'cancelled'])

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
   * `actions` (optional) is `{cancel(id), retry(id)}`: the cards then get Cancel and Retry
   * buttons that call them and stay disabled until the returned promise settles.
   */
  constructor(container, { actions } = {}) {
    this.container = container
    this.actions = actions
  }

  /** Shows `row` unless a newer version of it is already shown; returns whether it did. */
  upsert(row) {
    if (!isCurrent(row, this.#rows.get(row.id))) return false
    this.#rows.set(row.id, row)
    let card = this.#cards.get(row.id)
    if (!card) {
      card = this.#newCard(row)
      this.#cards.set(row.id, card)
      this.#insertByAge(card, row)
    }
    fill(card, row)
    return true
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
  }

  // Newest first by created_at, which never changes, so a card is placed once.
  #insertByAge(card, row) {
    const at = micros(row.created_at)
    const next = [...this.#cards.entries()].find(
      ([id, other]) => other !== card && other.isConnected && micros(this.#rows.get(id).created_at) < at
    )
    this.container.insertBefore(card, next ? next[1] : null)
  }

  #newCard(row) {
    const card = el('article', 'job')
    card.dataset.jobId = row.id
    card.dataset.userId = row.user_id
    const bar = el('div', 'bar')
    bar.setAttribute('role', 'progressbar')
    bar.setAttribute('aria-valuemin', '0')
    bar.setAttribute('aria-valuemax', '100')
    bar.setAttribute('aria-label', `${title(row)} progress`)
    bar.append(el('span', 'bar-fill'))
    card.append(
      el('header', 'job-head', [el('h3', 'job-title', title(row)), el('span', 'badge')]),
      el('div', 'job-progress', [bar, el('span', 'job-percent')]),
      el('p', 'job-meta', [el('span', 'job-message'), el('span', 'job-attempts')]),
      el('p', 'job-error'),
      el('footer', 'job-foot', [el('time', 'job-time', clock(row.created_at)), ...this.#buttons(row.id)])
    )
    return card
  }

  #buttons(id) {
    if (!this.actions) return []
    return [
      button('Cancel', 'job-cancel', () => this.actions.cancel(id)),
      button('Retry', 'job-retry', () => this.actions.retry(id)),
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

function button(text, className, onClick) {
  const node = el('button', className, text)
  node.type = 'button'
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
