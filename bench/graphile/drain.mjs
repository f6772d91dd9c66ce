#!/usr/bin/env node
// graphile-worker side of rowcast's job-runner benchmark.
//
//   node drain.mjs --database-url URL --jobs N --concurrency C \
//                  --enqueue per-row|batch --out result.json \
//                  [--latency-samples K] [--timeout-secs T]
//
// What it measures, on the given Postgres, in order:
//   1. Setup (not timed): install graphile-worker's schema (runMigrations) and
//      truncate its job table (dropping any jobs and dead index entries that
//      earlier runs left behind), so every run starts clean.
//   2. Enqueue time: N jobs of the no-op task `noop` with payload {}, either
//        per-row: one `graphile_worker.add_job('noop', ...)` statement per job,
//                 in sequence over one connection (an app adding jobs one by one);
//        batch:   one `graphile_worker.add_jobs(job_spec[])` statement for all N
//                 (the array is built server-side from a JSON array, as
//                 graphile-worker's own addJobs() does).
//      No worker is running yet, so the jobs just pile up.
//   3. Drain rate: start a worker with run() (concurrency C, default pollInterval,
//      its own pg pool of default size) and time from the run() call until the
//      worker has reported N `job:complete` events and the job table is empty
//      (graphile-worker deletes a job when it completes, but does not wait for
//      that delete before emitting the event). jobs_per_sec = N / drain_secs.
//   4. Pickup latency on an idle queue: with the worker still running, K times,
//      ~20 ms apart, add one job over a separate connection. Its payload carries
//      the wall-clock time (µs) taken just before the add_job call; the task
//      takes the wall-clock time when it starts and reports the difference.
//      Both clocks are this process's, so they agree. Reports p50/p99 in ms.
//   5. Stop the worker, write the JSON result to --out, print a one-line summary
//      to stderr and exit 0. Any failure or timeout: message on stderr, exit 1.
//
// graphile-worker's own logs are passed through only at warning/error level (to
// stderr) so that stdout stays quiet.

import { EventEmitter } from "node:events";
import { writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { Logger, run, runMigrations } from "graphile-worker";
import pg from "pg";

const RUNNER = "graphile-worker 0.17.3";
const SCHEMA = "graphile_worker"; // graphile-worker's default schema
const SAMPLE_TIMEOUT_MS = 10_000; // one latency sample (default pollInterval is 2 s)
const STOP_TIMEOUT_MS = 30_000; // stopping the worker, closing connections
const SAMPLE_GAP_MS = 20; // pause between latency samples, so the queue is idle
const POLL_MS = 10; // polling the job table at the end of the drain

// ---- small helpers ---------------------------------------------------------

/** Wall-clock time in microseconds, with sub-millisecond resolution. */
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

/** Rejects with a clear message if `promise` does not settle within `ms`. `what`: text, or a function giving it. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    const say = () => (typeof what === "function" ? what() : what);
    timer = setTimeout(() => reject(new Error(`timed out after ${ms / 1000} s: ${say()}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Nearest-rank percentile of an ascending array. */
const percentile = (sorted, p) => sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];

const round = (x, digits) => Number(x.toFixed(digits));

function parseCli() {
  const { values } = parseArgs({
    options: {
      "database-url": { type: "string" },
      jobs: { type: "string" },
      concurrency: { type: "string" },
      enqueue: { type: "string" },
      out: { type: "string" },
      "latency-samples": { type: "string", default: "200" },
      "timeout-secs": { type: "string", default: "300" },
    },
    strict: true,
  });
  const positive = (name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer (got ${values[name]})`);
    return n;
  };
  for (const name of ["database-url", "jobs", "concurrency", "enqueue", "out"]) {
    if (values[name] === undefined) throw new Error(`--${name} is required`);
  }
  if (!["per-row", "batch"].includes(values.enqueue)) {
    throw new Error(`--enqueue must be per-row or batch (got ${values.enqueue})`);
  }
  return {
    url: values["database-url"],
    jobs: positive("jobs"),
    concurrency: positive("concurrency"),
    enqueue: values.enqueue,
    out: values.out,
    samples: positive("latency-samples"),
    timeoutMs: positive("timeout-secs") * 1000, // bound on each of setup, enqueue, drain
  };
}

/** A single connection with bounded connect and query times. */
async function connect(url, queryTimeoutMs) {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000, query_timeout: queryTimeoutMs });
  client.on("error", (e) => console.error(`drain: connection error: ${e.message}`));
  await client.connect();
  return client;
}

// ---- the benchmark ---------------------------------------------------------

async function main() {
  const opts = parseCli();
  const { url, jobs: n } = opts;

  // Only warnings and errors from graphile-worker, on stderr.
  const logger = new Logger(() => (level, message) => {
    if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
  });

  // 1. Schema and a clean job table.
  await withTimeout(runMigrations({ connectionString: url, logger }), opts.timeoutMs, "runMigrations");
  const db = await connect(url, opts.timeoutMs);
  const cleanup = [() => db.end()];
  try {
    const { rows } = await db.query(`select count(*)::int as n from ${SCHEMA}._private_jobs`);
    if (rows[0].n > 0) console.error(`drain: deleting ${rows[0].n} jobs left over from an earlier run`);
    // TRUNCATE rather than DELETE: it also drops the dead index entries that
    // earlier runs' completed (deleted) jobs leave behind, which would otherwise
    // slow each later run's job fetches.
    await db.query(`truncate ${SCHEMA}._private_jobs`);

    // 2. Enqueue N jobs (no worker running yet).
    const enqueueStart = performance.now();
    const enqueue = async () => {
      if (opts.enqueue === "per-row") {
        for (let i = 0; i < n; i++) {
          await db.query(`select id from ${SCHEMA}.add_job('noop', $1::json)`, ["{}"]);
        }
      } else {
        const specs = JSON.stringify(Array.from({ length: n }, () => ({ identifier: "noop", payload: {} })));
        const { rowCount } = await db.query(
          `select id from ${SCHEMA}.add_jobs(array(select json_populate_recordset(null::${SCHEMA}.job_spec, $1::json)))`,
          [specs],
        );
        if (rowCount !== n) throw new Error(`add_jobs inserted ${rowCount} jobs, expected ${n}`);
      }
    };
    await withTimeout(enqueue(), opts.timeoutMs, `enqueueing ${n} jobs (${opts.enqueue})`);
    const enqueueSecs = (performance.now() - enqueueStart) / 1000;

    // 3. Drain: start the worker and count completions until all N are done.
    const events = new EventEmitter(); // passed in, so no early event is missed
    const pending = new Map(); // latency sample seq -> resolve(start - enqueue, µs)
    let completed = 0;
    let failure = null;
    let drained;
    const allDone = new Promise((resolve, reject) => (drained = { resolve, reject }));
    allDone.catch(() => {}); // a failure is reported where allDone is awaited
    events.on("job:complete", ({ error }) => {
      if (error) {
        failure ??= error;
        drained.reject(new Error(`a noop job failed: ${error?.message ?? error}`));
      } else if (++completed === n) {
        drained.resolve();
      }
    });
    const taskList = {
      noop: async (payload) => {
        // The drain jobs do nothing; latency probes report when they started.
        if (payload?.seq !== undefined) {
          const startedUs = nowUs();
          pending.get(payload.seq)?.(startedUs - payload.enqueued_us);
          pending.delete(payload.seq);
        }
      },
    };

    const drainStart = performance.now();
    const runner = await withTimeout(
      run({ connectionString: url, concurrency: opts.concurrency, noHandleSignals: true, taskList, logger, events }),
      opts.timeoutMs,
      "starting the worker",
    );
    cleanup.unshift(() => runner.stop());
    await withTimeout(allDone, opts.timeoutMs, () => `draining ${n} jobs (${completed} done)`);
    // The worker writes completions without awaiting them before the event, so
    // the drain ends only once the job table is actually empty.
    const emptied = (async () => {
      while ((await db.query(`select count(*)::int as n from ${SCHEMA}._private_jobs`)).rows[0].n > 0) {
        await sleep(POLL_MS);
      }
    })();
    await withTimeout(emptied, STOP_TIMEOUT_MS, "the job table to empty after the last job ran");
    const drainSecs = (performance.now() - drainStart) / 1000;

    // 4. Pickup latency on the idle queue, one probe job at a time.
    const probe = await connect(url, SAMPLE_TIMEOUT_MS);
    cleanup.push(() => probe.end());
    const latenciesMs = [];
    for (let seq = 0; seq < opts.samples; seq++) {
      const started = new Promise((resolve) => pending.set(seq, resolve));
      const enqueuedUs = nowUs();
      await probe.query(`select id from ${SCHEMA}.add_job('noop', $1::json)`, [
        JSON.stringify({ seq, enqueued_us: enqueuedUs }),
      ]);
      const us = await withTimeout(started, SAMPLE_TIMEOUT_MS, `latency sample ${seq + 1} of ${opts.samples}`);
      latenciesMs.push(us / 1000);
      await sleep(SAMPLE_GAP_MS);
    }
    if (failure) throw new Error(`a job failed: ${failure?.message ?? failure}`);
    latenciesMs.sort((a, b) => a - b);

    // 5. Stop the worker, then write the result.
    cleanup.shift(); // runner.stop() is done here rather than in cleanup
    await withTimeout(runner.stop(), STOP_TIMEOUT_MS, "stopping the worker");
    await withTimeout(runner.promise, STOP_TIMEOUT_MS, "waiting for the worker to exit");

    const result = {
      runner: RUNNER,
      jobs: n,
      concurrency: opts.concurrency,
      enqueue: opts.enqueue,
      enqueue_secs: round(enqueueSecs, 4),
      drain_secs: round(drainSecs, 4),
      jobs_per_sec: round(n / drainSecs, 1),
      pickup_p50_ms: round(percentile(latenciesMs, 0.5), 3),
      pickup_p99_ms: round(percentile(latenciesMs, 0.99), 3),
      latency_samples: opts.samples,
    };
    writeFileSync(opts.out, JSON.stringify(result, null, 2) + "\n");
    console.error(
      `${RUNNER}: ${n} jobs, concurrency ${opts.concurrency}, ${opts.enqueue} enqueue ${result.enqueue_secs} s, ` +
        `drain ${result.drain_secs} s = ${result.jobs_per_sec} jobs/s, ` +
        `pickup p50 ${result.pickup_p50_ms} ms p99 ${result.pickup_p99_ms} ms (${opts.samples} samples)`,
    );
  } finally {
    // Best effort, bounded: stop the worker (if still running) and close connections.
    for (const step of cleanup) {
      await withTimeout(Promise.resolve().then(step), STOP_TIMEOUT_MS, "cleanup").catch((e) =>
        console.error(`drain: cleanup: ${e.message}`),
      );
    }
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`drain: ${e?.message ?? e}`);
    process.exit(1);
  },
);
