// The live feed of one user's rows of rowcast.jobs, shared by the demo page (app.js) and the
// extension (its service worker, background.js, and its popup). A classic script, not a
// module, because an MV3 classic service worker can only importScripts(); it defines
// globalThis.RowcastFeed and expects supabase-js's UMD build (globalThis.supabase) to be
// loaded before a feed opens. No DOM: callers get rows and statuses through callbacks and own
// what they show. extension/setup.sh copies this file into extension/vendor/.
//
// The order, on open: demo session -> client -> realtime.setAuth() -> subscribe -> snapshot
// on every SUBSCRIBED; then the token is refreshed shortly before it expires.

;(() => {
  /** Refresh the token this long before it expires. */
  const REFRESH_EARLY_MS = 60_000
  /** ...but never sooner than this, so a token that is (nearly) expired cannot make it spin. */
  const MIN_REFRESH_MS = 5_000
  /** setTimeout fires at once for longer delays (it holds a signed 32-bit count of ms). */
  const MAX_TIMER_MS = 2 ** 31 - 1
  /** A snapshot is the newest this many jobs. */
  const SNAPSHOT_SIZE = 50

  /**
   * GET <gateway>/demo/session?user=: `{user, anon_key, access_token, expires_at}`. Only
   * `rowcast demo` serves it, and to anyone for any user; a real app signs its users in
   * instead and gives supabase-js their JWT through the same `accessToken` callback.
   */
  async function demoSession(gateway, user) {
    const url = new URL('/demo/session', gateway)
    url.searchParams.set('user', user)
    const response = await fetch(url)
    const json = await response.json().catch(() => ({}))
    if (response.ok) return json
    if (response.status === 404) throw new Error(`${url.origin} hands out no demo sessions: run \`rowcast demo\``)
    throw new Error(json.error ?? `GET ${url}: HTTP ${response.status}`)
  }

  /**
   * A supabase-js client whose requests carry the token of `session()`, read each time, so
   * that replacing the session object is all a refresh needs (plus `realtime.setAuth()`).
   */
  function sessionClient(gateway, session) {
    return globalThis.supabase.createClient(gateway, session().anon_key, {
      accessToken: async () => session().access_token,
      auth: { persistSession: false, autoRefreshToken: false },
    })
  }

  /** The user's newest 50 jobs, newest first, through supabase-js's PostgREST client. */
  async function newestJobs(client) {
    const { data, error, status } = await client
      .schema('rowcast')
      .from('jobs')
      .select('*')
      .order('created_at', { ascending: false })
      .limit(SNAPSHOT_SIZE)
    if (error || !Array.isArray(data)) throw new Error(error?.message ?? `HTTP ${status}`)
    return data
  }

  /**
   * One user's jobs, live: `open()` it, `close()` it when the user (or gateway) changes.
   * Callbacks in `on`, all optional, never called once closed:
   * - `change(payload)`: a supabase-js postgres_changes payload (`eventType`, `new`, `old`);
   * - `status(status, err)`: the channel's status (SUBSCRIBED, CHANNEL_ERROR, TIMED_OUT, ...);
   * - `snapshot(rows)` / `snapshotError(err)`: a read of the newest jobs, after each SUBSCRIBED;
   * - `refreshError(err)`: the token could not be refreshed (it stays valid until it expires);
   * - `activity(jobId, text)`: what a watched running job says it is doing now (a broadcast
   *   on `job:<id>`, not stored anywhere; see `watch`).
   * Rows from a snapshot and from changes may arrive in either order: keep, per job, the
   * version with the latest `updated_at` (see jobs.js).
   */
  class JobFeed {
    #closed = false
    #timer = null
    /** Job id to the channel of its `job:<id>` broadcasts, for the jobs now running. */
    #watched = new Map()

    constructor({ gateway, user, on = {} }) {
      this.gateway = gateway
      this.user = user
      this.on = on
      /** The current demo session, once `open()` got one; the jobs API wants its token too. */
      this.session = null
      this.client = null
    }

    get closed() {
      return this.#closed
    }

    /** Gets a session and subscribes; rejects when there is no session or token to be had. */
    async open() {
      const session = await demoSession(this.gateway, this.user)
      if (this.#closed) return // the caller moved on meanwhile
      this.session = session
      this.client = sessionClient(this.gateway, () => this.session)
      // supabase-js 2.109 joins with the token it has cached and does not call `accessToken`
      // on join: resolve it first, or the join carries only the anon key (and sees nothing
      // until a later access_token push).
      await this.client.realtime.setAuth()
      if (this.#closed) return
      this.#subscribe()
      this.#scheduleRefresh()
    }

    /**
     * Listens to what job `id` says it is doing (its step handler's broadcasts on `job:<id>`,
     * an unguessable topic) until `unwatch(id)`. Idempotent.
     */
    watch(id) {
      if (this.#closed || !this.client || this.#watched.has(id)) return
      const channel = this.client
        .channel(`job:${id}`)
        .on('broadcast', { event: 'activity' }, (m) => this.#closed || this.on.activity?.(id, String(m.payload?.text ?? '')))
        .subscribe()
      this.#watched.set(id, channel)
    }

    /** Stops listening to job `id`'s broadcasts. */
    unwatch(id) {
      const channel = this.#watched.get(id)
      if (!channel) return
      this.#watched.delete(id)
      this.client?.removeChannel(channel)
    }

    close() {
      this.#closed = true
      this.#watched.clear()
      clearTimeout(this.#timer)
      this.client?.removeAllChannels()
      this.client?.realtime.disconnect()
    }

    /** Reads the newest jobs again and hands them to `on.snapshot` (or the error to `on.snapshotError`). */
    async loadSnapshot() {
      let rows
      try {
        rows = await newestJobs(this.client)
      } catch (err) {
        if (!this.#closed) this.on.snapshotError?.(err)
        return
      }
      if (!this.#closed) this.on.snapshot?.(rows)
    }

    #subscribe() {
      const changes = { event: '*', schema: 'rowcast', table: 'jobs', filter: `user_id=eq.${this.user}` }
      this.client
        .channel(`jobs-${this.user}`)
        .on('postgres_changes', changes, (change) => this.#closed || this.on.change?.(change))
        .subscribe((status, err) => {
          if (this.#closed) return
          this.on.status?.(status, err)
          // Realtime does not replay changes made while the channel was not joined (before the
          // first join, or while supabase-js rejoins after a dropped socket): read the current
          // rows after every join. The gateway holds the join reply until the change feed is
          // live, so a row changed after this read also arrives as a change.
          if (status === 'SUBSCRIBED') this.loadSnapshot()
        })
    }

    // The gateway closes a channel whose token has expired; a fresh one must reach it first.
    #scheduleRefresh() {
      const due = this.session.expires_at * 1000 - REFRESH_EARLY_MS - Date.now()
      this.#timer = setTimeout(() => this.#refresh(), Math.min(Math.max(due, MIN_REFRESH_MS), MAX_TIMER_MS))
    }

    async #refresh() {
      try {
        const session = await demoSession(this.gateway, this.user)
        if (this.#closed) return
        this.session = session
        // supabase-js caches the token: setAuth() calls `accessToken` again and pushes the new
        // token to every joined channel (an access_token message), without rejoining.
        await this.client.realtime.setAuth()
        if (!this.#closed) this.#scheduleRefresh()
      } catch (err) {
        if (!this.#closed) this.on.refreshError?.(err)
      }
    }
  }

  globalThis.RowcastFeed = Object.freeze({ demoSession, sessionClient, newestJobs, JobFeed })
})()
