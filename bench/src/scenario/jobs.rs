//! `jobs`: the job runner's drain rate and pickup latency, side by side with
//! graphile-worker on the same Postgres.
//!
//! rowcast runs as `rowcast serve` with its runner (`--slots` slots) and two
//! types of the built-in step handler, each job one step of 0 ms: `noop`
//! with no limits and `peruser` with `concurrency_per_user = 2`; jobs are
//! spread over `--users` users. For each type the tool enqueues `--jobs`
//! jobs in one statement and times the drain from its commit to the last
//! `completed_at` (database clock). Enqueue cost one row at a time is timed
//! on a type no runner serves. Pickup: `--samples` single jobs on an idle
//! queue, `started_at - created_at` each. Backlog: `--backlog` pending jobs
//! of one user who is at their limit (two long jobs running), then the
//! pickup of other users' jobs of the same type, which no claim may pay for.
//! Nobody subscribes, so `rowcast.jobs` is not captured (migration 0028)
//! unless `--watched` keeps it captured, as an open page's gateway does.
//!
//! graphile-worker 0.17.3 (npm, pinned in `bench/graphile`) then drains the
//! same number of no-op jobs at concurrency `--slots` in the same database,
//! after its jobs were added one `add_job` at a time and in one `add_jobs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::plot::{Chart, Series};
use crate::report::{self, percentile, Table};
use crate::scenario::{record, Env};
use crate::stack::Stack;

/// Parameters of `jobs`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// Jobs per drain.
    #[arg(long, default_value_t = 5000)]
    pub jobs: i64,
    /// Runner slots (rowcast) and concurrency (graphile-worker).
    #[arg(long, default_value_t = 10)]
    pub slots: u32,
    /// Users the jobs are spread over.
    #[arg(long, default_value_t = 100)]
    pub users: i64,
    /// Single jobs timed from enqueue to start on an idle queue.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Pending jobs of one user at their limit, for the backlog pickup.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: i64,
    /// Skip graphile-worker (rowcast only).
    #[arg(long)]
    pub no_peer: bool,
    /// Keep `rowcast.jobs` captured through each drain, as a gateway does
    /// while a page follows the jobs (by default nobody watches, and the
    /// runner's writes are not captured: migration 0028).
    #[arg(long)]
    pub watched: bool,
}

/// The targets: drain rate against graphile-worker, the limited type against
/// the unlimited one, pickup p50.
const TARGET_RATIO: f64 = 2.0;
const TARGET_LIMITED: f64 = 0.8;
const TARGET_PICKUP_MS: f64 = 5.0;
/// Longest a drain may take.
const DRAIN_WAIT: Duration = Duration::from_secs(300);
/// How often the drain is checked on. The rate comes from the database's
/// clock (commit to the last `completed_at`), so this only sets when the tool
/// notices the end; each check costs the database being measured, and
/// graphile-worker's drain is followed by its in-process events, not by queries.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// Jobs of a type not finished yet, from the two partial indexes that hold
/// exactly those (a count over the type's rows would read every finished job
/// too: at 10 ms it took most of a core from the runner it measured).
const LEFT: &str = "select (select count(*) from rowcast.jobs where type = $1 and status = 'pending') \
    + (select count(*) from rowcast.jobs where type = $1 and status = 'running')";
/// Raises `rowcast.jobs`' watch horizon (migration 0028) to ten minutes from now, as a join does.
const WATCH_FOR_A_DRAIN: &str =
    "select setval('rowcast.jobs_watched_until', greatest(pg_sequence_last_value('rowcast.jobs_watched_until'), \
    extract(epoch from clock_timestamp())::bigint + 600))";
/// Longest one job may take to start.
const PICKUP_WAIT: Duration = Duration::from_secs(30);
/// Pause between pickup samples, so each finds the queue idle.
const PICKUP_GAP: Duration = Duration::from_millis(20);
/// Input of a job of one 0 ms step.
const NOOP: &str = r#"{"steps": 1, "step_ms": 0}"#;

fn config(slots: u32) -> String {
    format!(
        "[jobs.noop]\nbuiltin = \"demo\"\nmax_attempts = 3\n\
         [jobs.peruser]\nbuiltin = \"demo\"\nmax_attempts = 3\nconcurrency_per_user = 2\n\
         [runner]\nslots = {slots}\nshutdown_grace = \"1s\"\n"
    )
}

/// One runner's row of the table.
struct Drain {
    runner: String,
    enqueue_one_statement: Option<f64>,
    enqueue_per_row: Option<f64>,
    jobs_per_sec: f64,
    pickup_ms: Option<(f64, f64)>,
}

/// The scenario's jobs from an earlier run on a given database (a private
/// one starts empty).
const CLEAR: &str = "delete from rowcast.jobs where type in ('noop', 'peruser', 'unserved')";

/// Runs the scenario and prints its tables.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("rowcast-bench-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("jobs.toml");
    std::fs::write(&config_path, config(args.slots))?;
    let serve_args = vec!["--config".to_owned(), config_path.display().to_string()];
    let stack = Stack::start_with(env, CLEAR, &serve_args).await?;
    let params = format!(
        "jobs {} per drain, {} slots, {} users, one step of 0 ms per job (built-in handler), {} pickup samples, backlog {}, \
         rowcast.jobs {}; graphile-worker: {}",
        args.jobs,
        args.slots,
        args.users,
        args.samples,
        args.backlog,
        if args.watched { "captured as if watched" } else { "not watched (not captured)" },
        if args.no_peer { "skipped".to_owned() } else { format!("0.17.3, concurrency {}, no-op task", args.slots) }
    );
    let mut rec = record("jobs", "jobs: drain rate and pickup, rowcast against graphile-worker", &stack, params);
    let mut chart = Chart::new(
        format!("Draining {} no-op jobs at {} slots", args.jobs, args.slots),
        "seconds since the enqueue committed",
        "jobs finished",
    );
    let per_row = enqueue_per_row(&stack.pool, args).await?;
    let mut rows = Vec::new();
    let (unlimited, curve) = drain(&stack.pool, "noop", args).await?;
    chart.series.push(Series::new("rowcast, no limits", curve));
    let pickup = pickup(&stack.pool, "noop", args.samples, "sample").await?;
    rows.push(Drain {
        runner: "rowcast, no limits".into(),
        enqueue_one_statement: Some(unlimited.0),
        enqueue_per_row: Some(per_row),
        jobs_per_sec: unlimited.1,
        pickup_ms: Some(pickup),
    });
    let (limited, curve) = drain(&stack.pool, "peruser", args).await?;
    chart.series.push(Series::new("rowcast, concurrency_per_user = 2", curve));
    rows.push(Drain {
        runner: "rowcast, concurrency_per_user = 2".into(),
        enqueue_one_statement: Some(limited.0),
        enqueue_per_row: None,
        jobs_per_sec: limited.1,
        pickup_ms: None,
    });
    let backlog = backlog_pickup(&stack.pool, args).await?;
    if !args.no_peer {
        let url = stack.database_url();
        let batch = graphile(&url, args, "batch", &dir).await?;
        let single = graphile(&url, args, "per-row", &dir).await?;
        rows.push(Drain {
            runner: batch.runner.clone(),
            enqueue_one_statement: Some(batch.enqueue_secs),
            enqueue_per_row: Some(single.enqueue_secs),
            jobs_per_sec: batch.jobs_per_sec.max(single.jobs_per_sec),
            pickup_ms: Some((batch.pickup_p50_ms, batch.pickup_p99_ms)),
        });
    }
    if let Some(peer) = rows.get(2) {
        let secs = args.jobs as f64 / peer.jobs_per_sec;
        chart.series.push(Series::new(format!("{} (start and end only)", peer.runner), vec![(0.0, 0.0), (secs, args.jobs as f64)]));
    }
    rec.table("runners", &table(&rows, args));
    rec.table("verdicts", &verdicts(&rows, backlog, args));
    rec.figure("rowcast_jobs_per_sec", rows[0].jobs_per_sec);
    rec.figure("rowcast_limited_jobs_per_sec", rows[1].jobs_per_sec);
    if let Some(peer) = rows.get(2) {
        rec.figure("graphile_jobs_per_sec", peer.jobs_per_sec);
    }
    if let Some((p50, p99)) = rows[0].pickup_ms {
        rec.figure("rowcast_pickup_p50_ms", p50);
        rec.figure("rowcast_pickup_p99_ms", p99);
    }
    rec.figure("backlog_pickup_p50_ms", backlog.0);
    rec.chart(chart);
    rec.write(&env.out)?;
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await
}

/// Seconds to enqueue `args.jobs` jobs one statement each, on a type no
/// runner serves (then deleted).
async fn enqueue_per_row(pool: &PgPool, args: &Args) -> anyhow::Result<f64> {
    eprintln!("enqueueing {} jobs one at a time", args.jobs);
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    for i in 0..args.jobs {
        sqlx::query("select rowcast.enqueue('unserved', $1::jsonb, $2)")
            .bind(NOOP)
            .bind(format!("u{}", i % args.users))
            .execute(&mut *conn)
            .await?;
    }
    let took = start.elapsed().as_secs_f64();
    sqlx::query("delete from rowcast.jobs where type = 'unserved'").execute(&mut *conn).await?;
    Ok(took)
}

/// Enqueues `args.jobs` jobs of `job_type` in one statement, waits for all
/// to complete; returns (enqueue seconds, jobs per second from the commit to
/// the last completion) and the drain's progress (seconds, jobs finished).
async fn drain(pool: &PgPool, job_type: &str, args: &Args) -> anyhow::Result<((f64, f64), Vec<(f64, f64)>)> {
    eprintln!("draining {} {job_type} jobs", args.jobs);
    // Each drain starts from a settled table, whatever the one before it left behind.
    sqlx::query("vacuum analyze rowcast.jobs").execute(pool).await?;
    if args.watched {
        // Ten minutes ahead, never lowered: a gateway's own subscribers on a given database keep theirs.
        sqlx::query(WATCH_FOR_A_DRAIN).execute(pool).await?;
    }
    let start = Instant::now();
    sqlx::query("select rowcast.enqueue($1, $2::jsonb, 'u' || (g % $3)) from generate_series(1, $4) g")
        .bind(job_type)
        .bind(NOOP)
        .bind(args.users)
        .bind(args.jobs)
        .execute(pool)
        .await?;
    let enqueue = start.elapsed().as_secs_f64();
    let (committed,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as("select clock_timestamp()").fetch_one(pool).await?;
    let deadline = Instant::now() + DRAIN_WAIT;
    let watched = Instant::now();
    let mut curve = vec![(0.0, 0.0)];
    let bar = crate::progress::bar(args.jobs as u64, &format!("{job_type} jobs finished"));
    loop {
        let (left,): (i64,) = sqlx::query_as(LEFT).bind(job_type).fetch_one(pool).await?;
        curve.push((watched.elapsed().as_secs_f64(), (args.jobs - left) as f64));
        bar.set_position((args.jobs - left) as u64);
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} {job_type} jobs were still pending or running {} s after the enqueue", DRAIN_WAIT.as_secs());
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    bar.finish_and_clear();
    let (last, done): (chrono::DateTime<chrono::Utc>, i64) =
        sqlx::query_as("select max(completed_at), count(*) filter (where status = 'completed') from rowcast.jobs where type = $1")
            .bind(job_type)
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(done == args.jobs, "{done} of {} {job_type} jobs completed", args.jobs);
    sqlx::query("delete from rowcast.jobs where type = $1").bind(job_type).execute(pool).await?;
    let secs = (last - committed).num_microseconds().unwrap_or(0) as f64 / 1e6;
    Ok(((enqueue, args.jobs as f64 / secs.max(1e-6)), curve))
}

/// `samples` single jobs of `job_type` for `user`, each on an idle queue:
/// p50 and p99 of `started_at - created_at` in ms.
async fn pickup(pool: &PgPool, job_type: &str, samples: usize, user: &str) -> anyhow::Result<(f64, f64)> {
    eprintln!("timing {samples} pickups of {job_type}");
    let mut ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (id,): (sqlx::types::Uuid,) = sqlx::query_as("select id from rowcast.enqueue($1, $2::jsonb, $3)")
            .bind(job_type)
            .bind(NOOP)
            .bind(user)
            .fetch_one(pool)
            .await?;
        let deadline = Instant::now() + PICKUP_WAIT;
        loop {
            let (waited,): (Option<f64>,) =
                sqlx::query_as("select extract(epoch from started_at - created_at)::float8 * 1000 from rowcast.jobs where id = $1")
                    .bind(id)
                    .fetch_one(pool)
                    .await?;
            if let Some(w) = waited {
                ms.push(w);
                break;
            }
            if Instant::now() > deadline {
                bail!("a {job_type} job did not start within {} s", PICKUP_WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(PICKUP_GAP).await;
    }
    Ok((percentile(&ms, 0.5), percentile(&ms, 0.99)))
}

/// Pickup of `peruser` jobs while one user at their limit has `args.backlog`
/// more pending: p50 and p99 in ms.
async fn backlog_pickup(pool: &PgPool, args: &Args) -> anyhow::Result<(f64, f64)> {
    eprintln!("queueing a backlog of {} jobs for one user at their limit", args.backlog);
    // Two long jobs first, so the user is at the limit, then the backlog behind them.
    sqlx::query("select rowcast.enqueue('peruser', '{\"steps\": 1, \"step_ms\": 600000}', 'hog') from generate_series(1, 2)")
        .execute(pool)
        .await?;
    let deadline = Instant::now() + PICKUP_WAIT;
    while sqlx::query_as::<_, (i64,)>("select count(*) from rowcast.jobs where user_id = 'hog' and status = 'running'")
        .fetch_one(pool)
        .await?
        .0
        < 2
    {
        anyhow::ensure!(Instant::now() < deadline, "the two long jobs did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query("insert into rowcast.jobs (type, user_id, input) select 'peruser', 'hog', $1::jsonb from generate_series(1, $2)")
        .bind(NOOP)
        .bind(args.backlog)
        .execute(pool)
        .await?;
    sqlx::query("analyze rowcast.jobs").execute(pool).await?;
    let timed = pickup(pool, "peruser", (args.samples / 4).max(10), "other").await?;
    sqlx::query("update rowcast.jobs set status = 'cancelled' where user_id = 'hog' and status in ('pending', 'running')")
        .execute(pool)
        .await?;
    Ok(timed)
}

/// What `bench/graphile/drain.mjs` writes.
#[derive(Deserialize)]
struct Peer {
    runner: String,
    enqueue_secs: f64,
    jobs_per_sec: f64,
    pickup_p50_ms: f64,
    pickup_p99_ms: f64,
}

/// The graphile-worker project next to this crate.
fn graphile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("graphile")
}

/// Runs graphile-worker's drain (installing its pinned packages first if needed).
async fn graphile(url: &str, args: &Args, enqueue: &str, dir: &Path) -> anyhow::Result<Peer> {
    let project = graphile_dir();
    if !project.join("node_modules").join("graphile-worker").is_dir() {
        eprintln!("installing graphile-worker (npm ci in {})", project.display());
        let status = tokio::process::Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&project).status().await?;
        anyhow::ensure!(status.success(), "npm ci in {} failed", project.display());
    }
    eprintln!("draining {} graphile-worker jobs ({enqueue} enqueue)", args.jobs);
    let out = dir.join(format!("graphile-{enqueue}.json"));
    let status = tokio::process::Command::new("node")
        .arg(project.join("drain.mjs"))
        .args(["--database-url", url, "--jobs", &args.jobs.to_string(), "--concurrency", &args.slots.to_string()])
        .args(["--enqueue", enqueue, "--latency-samples", &args.samples.to_string(), "--out"])
        .arg(&out)
        .kill_on_drop(true)
        .status()
        .await
        .context("running node (graphile-worker)")?;
    anyhow::ensure!(status.success(), "graphile-worker's drain failed ({status})");
    let text = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn table(rows: &[Drain], args: &Args) -> Table {
    let n = args.jobs;
    let mut t = Table::new(&[
        "runner",
        "jobs/s",
        &format!("enqueue {n}, one statement"),
        &format!("enqueue {n}, one per statement"),
        "pickup p50",
        "pickup p99",
    ]);
    let secs = |v: Option<f64>| v.map_or("-".into(), report::secs);
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    for r in rows {
        t.row([
            r.runner.clone(),
            format!("{:.0}", r.jobs_per_sec),
            secs(r.enqueue_one_statement),
            secs(r.enqueue_per_row),
            ms(r.pickup_ms.map(|p| p.0)),
            ms(r.pickup_ms.map(|p| p.1)),
        ]);
    }
    t
}

fn verdicts(rows: &[Drain], backlog: (f64, f64), args: &Args) -> Table {
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut t = Table::new(&["measure", "value", "target"]);
    let (unlimited, limited) = (rows[0].jobs_per_sec, rows[1].jobs_per_sec);
    if let Some(peer) = rows.get(2) {
        let ratio = unlimited / peer.jobs_per_sec;
        t.row([
            "rowcast / graphile-worker, jobs/s".into(),
            format!("{ratio:.2}x"),
            format!(">= {TARGET_RATIO}x: {}", met(ratio >= TARGET_RATIO)),
        ]);
    }
    let share = limited / unlimited;
    t.row([
        "concurrency_per_user = 2 / no limits".into(),
        format!("{:.0} %", share * 100.0),
        format!(">= {:.0} %: {}", TARGET_LIMITED * 100.0, met(share >= TARGET_LIMITED)),
    ]);
    if let Some((p50, _)) = rows[0].pickup_ms {
        t.row([
            "rowcast pickup p50, idle queue".into(),
            format!("{p50:.1} ms"),
            format!("<= {TARGET_PICKUP_MS} ms: {}", met(p50 <= TARGET_PICKUP_MS)),
        ]);
    }
    t.row([format!("pickup p50 behind {} pending of one user", args.backlog), format!("{:.1} ms", backlog.0), String::new()]);
    t.row([format!("pickup p99 behind {} pending of one user", args.backlog), format!("{:.1} ms", backlog.1), String::new()]);
    t
}
