// Inngest functions, written as Inngest's docs write them, run by rowcast: the unmodified SDK
// (pinned in package-lock.json) configured only by its environment (INNGEST_DEV=0,
// INNGEST_BASE_URL=<rowcast>, INNGEST_SIGNING_KEY, INNGEST_EVENT_KEY). Each run is a row of
// rowcast.jobs; these tests read those rows and count how often each step's code ran.
// Run by tests/it/inngest.rs, which starts rowcast (gateway and runner) with the same keys.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import http from 'node:http'
import pg from 'pg'
import WebSocket from 'ws'
import { createClient } from '@supabase/supabase-js'
import { Inngest, NonRetriableError, RetryAfterError } from 'inngest'
import { serve } from 'inngest/node'

import { eventually, listen, stop } from './helpers.mjs'

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 })
const inngest = new Inngest({ id: 'ext' })
const unique = () => `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`

/// How many times each step's code ran, by `<test>/<step>`.
const ran = new Map()
const count = (key) => ran.set(key, (ran.get(key) ?? 0) + 1)
/// Failure handlers' arguments, by the failed run's event's `data.tag`.
const failures = new Map()
/// Gates that hold a step until the test opens them, by name.
const gates = new Map()
function gate(name) {
  if (!gates.has(name)) {
    let open
    const opened = new Promise((resolve) => (open = resolve))
    gates.set(name, { opened, open })
  }
  return gates.get(name)
}

/// The three-step summarize function of an extension backend.
const summarize = inngest.createFunction(
  {
    id: 'summarize',
    retries: 3,
    concurrency: { limit: 2, key: 'event.data.userId' },
    onFailure: async ({ event, error }) => {
      failures.set(event.data.event.data.tag, { event: event.data.event, message: error.message, name: error.name })
    },
  },
  { event: 'video/summarize.requested' },
  async ({ event, step }) => {
    const { tag, videoId } = event.data
    const transcript = await step.run('fetch-transcript', async () => {
      count(`${tag}/fetch-transcript`)
      if (event.data.hold) await gate(tag).opened
      if (!videoId) throw new NonRetriableError('transcript unavailable')
      return `the transcript of ${videoId}`
    })
    const summary = await step.run('generate-summary', () => {
      count(`${tag}/generate-summary`)
      if (event.data.flaky && (ran.get(`${tag}/generate-summary`) ?? 0) < 2) throw new Error('the model timed out')
      return transcript.toUpperCase()
    })
    await step.run('save-result', async () => {
      count(`${tag}/save-result`)
      await db.query('insert into summaries (video_id, user_id, summary) values ($1, $2, $3)', [videoId, event.data.userId, summary])
    })
    return { summary }
  },
)

const parallel = inngest.createFunction({ id: 'fan-out' }, { event: 'demo/fan-out' }, async ({ event, step }) => {
  const { tag } = event.data
  const parts = await Promise.all(
    ['a', 'b', 'c'].map((p) =>
      step.run(`part-${p}`, () => {
        count(`${tag}/part-${p}`)
        return p
      }),
    ),
  )
  return await step.run('join', () => {
    count(`${tag}/join`)
    return parts.join('+')
  })
})

const transcribe = inngest.createFunction({ id: 'transcribe' }, { event: 'media/uploaded' }, async ({ event, step }) => {
  const text = await step.run('transcribe', () => `words of ${event.data.file}`)
  await step.sendEvent('hand-off', { name: 'media/transcribed', data: { userId: event.data.userId, text, tag: event.data.tag } })
  return text
})

const embed = inngest.createFunction({ id: 'embed' }, { event: 'media/transcribed' }, async ({ event, step }) => {
  return await step.run('embed', () => ({ vector: event.data.text.length, tag: event.data.tag }))
})

const onlyPro = inngest.createFunction(
  { id: 'pro-only' },
  { event: 'plan/changed', if: "event.data.plan == 'pro' && event.data.seats > 1" },
  async ({ event }) => event.data.tag,
)

const catcher = inngest.createFunction({ id: 'catcher', retries: 0 }, { event: 'demo/catch' }, async ({ step }) => {
  try {
    await step.run('always-fails', () => {
      throw new Error('the upstream API is down')
    })
  } catch (err) {
    return `caught: ${err.message}`
  }
})

const patient = inngest.createFunction({ id: 'patient', retries: 1 }, { event: 'demo/later' }, async ({ event, step }) => {
  return await step.run('rate-limited', () => {
    count(`${event.data.tag}/rate-limited`)
    if (ran.get(`${event.data.tag}/rate-limited`) === 1) throw new RetryAfterError('the API said later', '3s')
    return Date.now()
  })
})

// Inngest takes five cron fields; rowcast also takes a leading seconds field, which lets this run every 2 s.
const ticker = inngest.createFunction({ id: 'ticker' }, { cron: 'TZ=Europe/Paris */2 * * * * *' }, async ({ event }) => ({
  name: event.name,
  cron: event.data.cron,
  id: event.id,
}))

const oncePerUser = inngest.createFunction(
  { id: 'welcome', rateLimit: { limit: 1, period: '1h', key: 'event.data.userId' } },
  { event: 'user/signed-in' },
  async ({ event }) => event.data.userId,
)

const bumpy = inngest.createFunction({ id: 'bumpy', retries: 1 }, { event: 'demo/bumpy' }, async ({ event, step }) => {
  const out = []
  for (const s of ['one', 'two', 'three']) {
    out.push(
      await step.run(s, () => {
        count(`${event.data.tag}/${s}`)
        if (ran.get(`${event.data.tag}/${s}`) === 1) throw new Error(`${s} failed once`)
        return s
      }),
    )
  }
  return out.join(',')
})

const hoarder = inngest.createFunction({ id: 'hoarder' }, { event: 'demo/hoard' }, async ({ step }) => {
  return await step.run('too-big', () => 'x'.repeat(5 * 1024 * 1024))
})

/// Every failed run's error, as a plain function triggered by inngest/function.failed sees it.
const failedRuns = new Map()
const watcher = inngest.createFunction({ id: 'failure-watcher' }, { event: 'inngest/function.failed' }, async ({ event }) => {
  failedRuns.set(event.data.run_id, { fn: event.data.function_id, message: event.data.error.message })
})

/// In-flight and most-ever-in-flight render steps, by team.
const inFlight = new Map()
const teamRender = inngest.createFunction(
  { id: 'team-render', concurrency: { limit: 1, key: 'event.data.teamId' } },
  { event: 'team/render' },
  async ({ event, step }) => {
    const { teamId, tag } = event.data
    return await step.run('render', async () => {
      const f = inFlight.get(teamId) ?? { now: 0, most: 0 }
      f.now += 1
      f.most = Math.max(f.most, f.now)
      inFlight.set(teamId, f)
      count(`${tag}/${teamId}`)
      await gate(`${tag}/${teamId}`).opened
      f.now -= 1
      return teamId
    })
  },
)

/// When each throttled run started, by shop.
const throttledStarts = new Map()
const syncShop = inngest.createFunction(
  { id: 'sync-shop', throttle: { limit: 1, period: '2s', key: 'event.data.shop' } },
  { event: 'shop/sync' },
  async ({ event, step }) =>
    await step.run('sync', () => {
      const list = throttledStarts.get(event.data.shop) ?? []
      list.push(Date.now())
      throttledStarts.set(event.data.shop, list)
      return list.length
    }),
)

const functions = [syncShop, teamRender, summarize, parallel, transcribe, embed, onlyPro, catcher, patient, ticker, oncePerUser, bumpy, hoarder, watcher]
const handler = serve({ client: inngest, functions })
/// Runs whose request rowcast closed before the answer was written, by run id.
const dropped = new Set()
const server = http.createServer((req, res) => {
  res.on('close', () => {
    if (!res.writableFinished) dropped.add(req.headers['x-run-id'])
  })
  return handler(req, res)
})
await listen(server)
const appUrl = `http://127.0.0.1:${server.address().port}/api/inngest`

test.before(async () => {
  await db.query('create table if not exists summaries (video_id text primary key, user_id text, summary text)')
  await db.query("select rowcast.enable('public.summaries', 'user_id')")
  const synced = await fetch(appUrl, { method: 'PUT' })
  assert.equal(synced.status, 200, await synced.text())
})
test.after(async () => {
  await stop(server)
  await db.end()
})

/// The runs of `fn` whose event carries `tag`.
async function runs(fn, tag) {
  const { rows } = await db.query(
    `select id::text, status, user_id, attempts, output, error, message, created_at, updated_at from rowcast.jobs
     where type = $1 and input->'event'->'data'->>'tag' = $2 order by created_at`,
    [`ext-${fn}`, tag],
  )
  return rows
}

/// Waits for the one run of `fn` for `tag` to reach `status`.
async function ended(fn, tag, status, ms = 20_000) {
  return await eventually(async () => {
    const [run] = await runs(fn, tag)
    return run?.status === status ? run : null
  }, ms, `the ${fn} run for ${tag} to be ${status}`)
}

/// An HS256 user JWT for the gateway (JWT_SECRET), as the app's auth provider would issue.
function userToken(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const now = Math.floor(Date.now() / 1000)
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, role: 'authenticated', aud: 'authenticated', iat: now, exp: now + 3600 })}`
  return `${unsigned}.${createHmac('sha256', process.env.JWT_SECRET).update(unsigned).digest('base64url')}`
}

/// The user's browser: supabase-js following their runs and their summaries, as the extension does.
async function browserOf(user) {
  const jwt = userToken(user)
  const supabase = createClient(process.env.INNGEST_BASE_URL, process.env.ANON_KEY, {
    accessToken: async () => jwt,
    realtime: { transport: WebSocket },
  })
  await supabase.realtime.setAuth()
  const seen = []
  const waiters = new Set()
  const push = (p) => {
    seen.push(p)
    for (const w of waiters) w(p)
  }
  const channel = supabase
    .channel(`runs-${user}`)
    .on('postgres_changes', { event: '*', schema: 'rowcast', table: 'jobs', filter: `user_id=eq.${user}` }, push)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'summaries', filter: `user_id=eq.${user}` }, push)
  await new Promise((resolve, reject) => channel.subscribe((state, err) => (state === 'SUBSCRIBED' ? resolve() : reject(err ?? new Error(state)))))
  const waitFor = (predicate, what) =>
    new Promise((resolve, reject) => {
      const hit = seen.find(predicate)
      if (hit) return resolve(hit)
      const timer = setTimeout(() => reject(new Error(`the browser saw no ${what}; saw ${JSON.stringify(seen.map((p) => [p.table, p.eventType, p.new?.status]))}`)), 20_000)
      const w = (p) => {
        if (predicate(p)) {
          clearTimeout(timer)
          waiters.delete(w)
          resolve(p)
        }
      }
      waiters.add(w)
    })
  return { waitFor, seen, close: () => supabase.removeAllChannels() }
}

test('the summarize function runs its three steps once each, and the user follows the run and its result in their browser', async () => {
  const tag = unique()
  const videoId = `v-${tag}`
  const user = `u-1-${tag}`
  const browser = await browserOf(user)
  await inngest.send({ name: 'video/summarize.requested', data: { userId: user, videoId, tag } })
  const run = await ended('summarize', tag, 'completed')
  assert.equal(run.user_id, user)
  const done = await browser.waitFor((p) => p.table === 'jobs' && p.new?.status === 'completed', 'completed run')
  assert.equal(done.new.id, run.id)
  assert.ok(browser.seen.some((p) => p.table === 'jobs' && p.new?.status === 'running'), 'the browser saw the run running')
  const saved = await browser.waitFor((p) => p.table === 'summaries', 'summaries row')
  assert.equal(saved.new.video_id, videoId)
  await browser.close()
  assert.deepEqual(run.output, { summary: `THE TRANSCRIPT OF ${videoId.toUpperCase()}` })
  for (const s of ['fetch-transcript', 'generate-summary', 'save-result']) assert.equal(ran.get(`${tag}/${s}`), 1, s)
  const { rows } = await db.query('select user_id, summary from summaries where video_id = $1', [videoId])
  assert.deepEqual(rows, [{ user_id: user, summary: run.output.summary }])
  const { rows: finished } = await db.query(
    "select data from rowcast.inngest_events where name = 'inngest/function.finished' and data->>'run_id' = $1",
    [run.id],
  )
  assert.deepEqual(finished.map((e) => [e.data.function_id, e.data.result]), [['ext-summarize', run.output]])
})

test('a thrown error retries the run with backoff and steps that finished are not run again', async () => {
  const tag = unique()
  await inngest.send({ name: 'video/summarize.requested', data: { userId: 'u-2', videoId: `v-${tag}`, tag, flaky: true } })
  const run = await ended('summarize', tag, 'completed')
  assert.equal(run.attempts, 2)
  assert.deepEqual(
    ['fetch-transcript', 'generate-summary', 'save-result'].map((s) => ran.get(`${tag}/${s}`)),
    [1, 2, 1],
  )
})

test("retries are each step's own, as Inngest counts them: three steps failing once each still complete with retries: 1", async () => {
  const tag = unique()
  await inngest.send({ name: 'demo/bumpy', data: { tag } })
  const run = await ended('bumpy', tag, 'completed', 30_000)
  assert.equal(run.output, 'one,two,three')
  assert.equal(run.attempts, 4)
  assert.deepEqual(['one', 'two', 'three'].map((s) => ran.get(`${tag}/${s}`)), [2, 2, 2])
})

test('NonRetriableError fails the run at once and onFailure gets its event and error', async () => {
  const tag = unique()
  await inngest.send({ name: 'video/summarize.requested', data: { userId: 'u-3', tag } })
  const run = await ended('summarize', tag, 'failed')
  assert.equal(run.attempts, 1)
  // The SDK serializes a NonRetriableError thrown in a step with the name "Error".
  assert.equal(run.error, 'Error: transcript unavailable')
  const failure = await eventually(() => failures.get(tag), 20_000, 'the onFailure handler')
  assert.deepEqual([failure.name, failure.message, failure.event.data.tag], ['Error', 'transcript unavailable', tag])
  assert.equal(ran.get(`${tag}/generate-summary`), undefined)
})

test('a step answering more than 4 MiB fails the run at once, and functions on inngest/function.failed hear of it', async () => {
  const tag = unique()
  await inngest.send({ name: 'demo/hoard', data: { tag } })
  const run = await ended('hoarder', tag, 'failed')
  assert.equal(run.attempts, 1)
  assert.match(run.error, /larger than 4 MiB/)
  const seen = await eventually(() => failedRuns.get(run.id), 20_000, 'the failure watcher')
  assert.equal(seen.fn, 'ext-hoarder')
  assert.match(seen.message, /larger than 4 MiB/)
})

test('parallel steps each run once and the function resumes after all of them', async () => {
  const tag = unique()
  await inngest.send({ name: 'demo/fan-out', data: { tag } })
  const run = await ended('fan-out', tag, 'completed')
  assert.equal(run.output, 'a+b+c')
  for (const s of ['part-a', 'part-b', 'part-c', 'join']) assert.equal(ran.get(`${tag}/${s}`), 1, s)
})

test("rowcast.send_event starts the functions an event triggers once the caller's transaction commits", async () => {
  const tag = unique()
  const client = await db.connect()
  try {
    await client.query('begin')
    await client.query("select rowcast.send_event('demo/fan-out', jsonb_build_object('tag', $1::text))", [tag])
    await client.query('commit')
  } finally {
    client.release()
  }
  const run = await ended('fan-out', tag, 'completed')
  assert.equal(run.output, 'a+b+c')
})

test('step.sendEvent chains one function to the next', async () => {
  const tag = unique()
  await inngest.send({ name: 'media/uploaded', data: { userId: 'u-4', file: 'talk.mp4', tag } })
  const embedded = await ended('embed', tag, 'completed')
  assert.deepEqual(embedded.output, { vector: 'words of talk.mp4'.length, tag })
  assert.equal(embedded.user_id, 'u-4')
})

test("a trigger's if expression starts only the events it holds for", async () => {
  const tag = unique()
  await inngest.send([
    { name: 'plan/changed', data: { plan: 'free', seats: 5, tag } },
    { name: 'plan/changed', data: { plan: 'pro', seats: 1, tag } },
    { name: 'plan/changed', data: { plan: 'pro', seats: 3, tag } },
  ])
  await ended('pro-only', tag, 'completed')
  // Every event of the batch was dispatched in one transaction with the run above.
  const { rows } = await db.query("select count(*)::int as n from rowcast.inngest_events where name = 'plan/changed' and data->>'tag' = $1 and dispatched_at is null", [tag])
  assert.equal(rows[0].n, 0)
  assert.equal((await runs('pro-only', tag)).length, 1)
})

test('a keyed rateLimit starts one run per user per period and skips the other events', async () => {
  const tag = unique()
  await inngest.send(['a', 'a', 'b', 'a'].map((u) => ({ name: 'user/signed-in', data: { userId: `${u}-${tag}`, tag } })))
  await eventually(async () => {
    const { rows } = await db.query("select count(*)::int as n from rowcast.inngest_events where name = 'user/signed-in' and data->>'tag' = $1 and dispatched_at is not null", [tag])
    return rows[0].n === 4
  }, 20_000, 'the four events to be dispatched')
  const started = (await runs('welcome', tag)).map((r) => r.user_id).sort()
  assert.deepEqual(started, [`a-${tag}`, `b-${tag}`])
})

test("a step's final failure is thrown into the function, which may catch it", async () => {
  const tag = unique()
  await inngest.send({ name: 'demo/catch', data: { tag } })
  const run = await ended('catcher', tag, 'completed')
  assert.equal(run.output, 'caught: the upstream API is down')
})

test('RetryAfterError retries no sooner than it asked', async () => {
  const tag = unique()
  const sent = Date.now()
  await inngest.send({ name: 'demo/later', data: { tag } })
  const run = await ended('patient', tag, 'completed')
  assert.ok(run.output - sent >= 3000, `retried ${run.output - sent} ms after the event`)
  assert.equal(ran.get(`${tag}/rate-limited`), 2)
})

test('concurrency keyed by the user runs at most two of their runs at once', async () => {
  const tag = unique()
  const owner = `u-busy-${tag}`
  await inngest.send([1, 2, 3, 4].map((n) => ({ name: 'video/summarize.requested', data: { userId: owner, videoId: `v${n}-${tag}`, tag, hold: true } })))
  await eventually(async () => (await runs('summarize', tag)).filter((r) => r.status === 'running').length === 2, 20_000, 'two running')
  await eventually(async () => ran.get(`${tag}/fetch-transcript`) === 2, 20_000, 'two steps in flight')
  const statuses = (await runs('summarize', tag)).map((r) => r.status).sort()
  assert.deepEqual(statuses, ['pending', 'pending', 'running', 'running'])
  gate(tag).open()
  await eventually(async () => (await runs('summarize', tag)).every((r) => r.status === 'completed'), 30_000, 'all four to complete')
})

test('concurrency keyed by another field runs one step per key at once and does not hold other keys back', async () => {
  const tag = unique()
  const [a, b] = [`team-a-${tag}`, `team-b-${tag}`]
  await inngest.send([a, a, a, b].map((teamId) => ({ name: 'team/render', data: { teamId, tag } })))
  await eventually(() => ran.get(`${tag}/${a}`) === 1 && ran.get(`${tag}/${b}`) === 1, 20_000, 'one render per team')
  const waiting = await eventually(async () => {
    const rows = (await runs('team-render', tag)).filter((r) => r.status === 'pending')
    return rows.length === 2 && rows.every((r) => r.message === 'waiting for a concurrency slot') ? rows : null
  }, 20_000, "team a's other two runs to wait")
  assert.ok(waiting.every((r) => r.attempts === 0), 'waiting spends no attempt')
  gate(`${tag}/${a}`).open()
  gate(`${tag}/${b}`).open()
  await eventually(async () => (await runs('team-render', tag)).every((r) => r.status === 'completed'), 30_000, 'all four renders')
  assert.equal(ran.get(`${tag}/${a}`), 3)
  assert.deepEqual([inFlight.get(a).most, inFlight.get(b).most], [1, 1])
})

test('a throttle keyed by another field spaces one key\'s starts by its period and leaves other keys alone', async () => {
  const tag = unique()
  const [a, b] = [`shop-a-${tag}`, `shop-b-${tag}`]
  const sent = Date.now()
  await inngest.send([a, a, a, b].map((shop) => ({ name: 'shop/sync', data: { shop, tag } })))
  await eventually(async () => (await runs('sync-shop', tag)).every((r) => r.status === 'completed'), 30_000, 'all four syncs')
  const starts = throttledStarts.get(a)
  assert.equal(starts.length, 3)
  const gaps = starts.slice(1).map((t, i) => t - starts[i])
  assert.ok(gaps.every((g) => g >= 1900), `shop a's starts ${gaps.join(', ')} ms apart`)
  assert.ok(throttledStarts.get(b)[0] - sent < 1900, 'shop b started without waiting for shop a')
})

test('cancelling a run between steps drops its in-flight request and stores nothing more', async () => {
  const tag = unique()
  await inngest.send({ name: 'video/summarize.requested', data: { userId: 'u-5', videoId: `v-${tag}`, tag, hold: true } })
  await eventually(async () => ran.get(`${tag}/fetch-transcript`) === 1, 20_000, 'the first step to start')
  const [run] = await runs('summarize', tag)
  const cancelled = await fetch(`${process.env.INNGEST_BASE_URL}/api/jobs/${run.id}/cancel`, {
    method: 'POST',
    headers: { authorization: `Bearer ${process.env.SERVICE_TOKEN}` },
  })
  assert.equal(cancelled.status, 200, await cancelled.text())
  // rowcast hangs up on the step's request: its answer can never arrive.
  await eventually(() => dropped.has(run.id), 10_000, 'rowcast to drop the in-flight request')
  gate(tag).open()
  const { rows: cancelledEvents } = await db.query(
    "select 1 from rowcast.inngest_events where name = 'inngest/function.cancelled' and data->>'run_id' = $1",
    [run.id],
  )
  assert.equal(cancelledEvents.length, 1)
  const { rows } = await db.query('select count(*)::int as n from rowcast.job_steps where job_id = $1', [run.id])
  assert.equal(rows[0].n, 0)
  assert.equal(ran.get(`${tag}/generate-summary`), undefined)
  assert.equal((await runs('summarize', tag))[0].status, 'cancelled')
})

test('a cron function runs once per tick with the scheduled.timer event', async () => {
  const { rows } = await eventually(async () => {
    const r = await db.query("select output from rowcast.jobs where type = 'ext-ticker' and status = 'completed' order by created_at")
    return r.rows.length >= 2 ? r : null
  }, 20_000, 'two ticks')
  const [first, second] = rows.map((r) => r.output)
  assert.deepEqual([first.name, first.cron], ['inngest/scheduled.timer', 'TZ=Europe/Paris */2 * * * * *'])
  assert.equal(Date.parse(second.id) - Date.parse(first.id), 2000)
  const { rows: dupes } = await db.query(
    "select input->'event'->>'id' as tick from rowcast.jobs where type = 'ext-ticker' group by 1 having count(*) > 1",
  )
  assert.deepEqual(dupes, [])
})
