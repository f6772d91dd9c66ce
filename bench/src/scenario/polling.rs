//! `polling`: the same per-user workload watched two ways, one after the
//! other on the same gateway and Postgres: pushed over rowcast sockets, and
//! polled from the REST snapshot every `--interval-secs`, as the apps rowcast
//! replaces do.
//!
//! Both phases write `--rate` changes/s for `--secs` s over `--users` users
//! (`owned`). Push: one socket per user, detection = receive - commit.
//! Polling: one keep-alive HTTP connection per user (`poller`), detection =
//! the answer to the first poll that shows the row at or past the change,
//! minus the commit; polls go on one interval past the last commit so every
//! change can be seen. Database load: transactions committed in the phase
//! (`pg_stat_database`, read 1.5 s after the phase so the backends' counters
//! have flushed), minus the writer's own and the tool's readings. The
//! gateway's change-log reader runs in both phases (the table stays enabled
//! for the REST snapshot), so the polls themselves are compared with the
//! push phase's transactions: one query per poll.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::plot::{Chart, Series};
use crate::poller::{self, Polled};
use crate::report::{self, percentile, Table};
use crate::scenario::latency::{self, Deliveries};
use crate::scenario::owned::{self, Pace, Workload, Written};
use crate::scenario::{record, Env};
use crate::stack::Stack;
use crate::wire::Filter;

/// Parameters of `polling`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub load: Workload,
    /// Seconds of writing per phase.
    #[arg(long, default_value_t = 20.0)]
    pub secs: f64,
    /// Seconds between one user's polls.
    #[arg(long, default_value_t = 2.0)]
    pub interval_secs: f64,
}

/// Push must notice changes this many times sooner than polling.
const TARGET_FACTOR: f64 = 100.0;
/// Wait before reading the database's counters after a phase.
const STATS_SETTLE: Duration = Duration::from_millis(1500);

/// One phase's outcome.
struct Phase {
    /// ms from commit to detection, per change detected.
    detect_ms: Vec<f64>,
    changes: usize,
    detected: usize,
    /// Database transactions per second besides the writer's.
    tx_per_sec: f64,
    requests_per_sec: f64,
    gateway_cpu: f64,
    cdf: Vec<(f64, f64)>,
}

/// Runs the scenario and prints its table.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let stack = Stack::start(env, &owned::setup(args.load.users)).await?;
    let params = format!(
        "users {}, {} single-row UPDATEs/s for {} s per phase spread over the users; push: one socket per user (filter \
         user_id=eq.u<i>, {} client processes); polling: GET /rest/v1/bench_owned?select=n&user_id=eq.u<i> every {} s per user, \
         keep-alive, from the tool's process",
        args.load.users, args.load.rate, args.secs, env.procs, args.interval_secs
    );
    let mut rec = record("polling", "polling: rowcast push beside REST polling, same workload", &stack, params);
    let push = push_phase(env, &stack, args).await?;
    let poll = poll_phase(&stack, args, push.changes as i64 + 1).await?;
    let mut t = Table::new(&["measure", "push (rowcast sockets)", &format!("polling every {} s", args.interval_secs)]);
    let pct = |p: &Phase, q: f64| format!("{:.1} ms", percentile(&p.detect_ms, q));
    t.row(["changes committed".into(), push.changes.to_string(), poll.changes.to_string()]);
    t.row(["changes noticed".into(), push.detected.to_string(), poll.detected.to_string()]);
    t.row(["commit -> noticed p50".into(), pct(&push, 0.5), pct(&poll, 0.5)]);
    t.row(["commit -> noticed p99".into(), pct(&push, 0.99), pct(&poll, 0.99)]);
    t.row(["commit -> noticed max".into(), pct(&push, 1.0), pct(&poll, 1.0)]);
    t.row(["database transactions/s besides the writer's".into(), format!("{:.1}", push.tx_per_sec), format!("{:.1}", poll.tx_per_sec)]);
    t.row(["HTTP requests/s (one query each)".into(), format!("{:.1}", push.requests_per_sec), format!("{:.1}", poll.requests_per_sec)]);
    t.row(["gateway CPU per phase".into(), report::secs(push.gateway_cpu), report::secs(poll.gateway_cpu)]);
    rec.table("side by side", &t);
    let factor = percentile(&poll.detect_ms, 0.5) / percentile(&push.detect_ms, 0.5);
    let mut v = Table::new(&["measure", "value", "target"]);
    v.row([
        "polling p50 / push p50".into(),
        format!("{factor:.0}x"),
        format!(">= {TARGET_FACTOR}x: {}", if factor >= TARGET_FACTOR { "met" } else { "NOT met" }),
    ]);
    v.row([
        "polls/s against push transactions/s".into(),
        format!("{:.2}x", poll.requests_per_sec / push.tx_per_sec.max(1e-9)),
        String::new(),
    ]);
    rec.table("verdicts", &v);
    rec.figure("push_p50_ms", percentile(&push.detect_ms, 0.5));
    rec.figure("push_p99_ms", percentile(&push.detect_ms, 0.99));
    rec.figure("poll_p50_ms", percentile(&poll.detect_ms, 0.5));
    rec.figure("poll_p99_ms", percentile(&poll.detect_ms, 0.99));
    rec.figure("push_tx_per_sec", push.tx_per_sec);
    rec.figure("poll_tx_per_sec", poll.tx_per_sec);
    rec.figure("factor_p50", factor);
    let mut c = Chart::new(
        format!(
            "Time to notice a change: push against polling every {} s ({} users, {} changes/s)",
            args.interval_secs, args.load.users, args.load.rate
        ),
        "ms from commit (log scale)",
        "share of changes noticed",
    );
    c.x_log = true;
    c.series.push(Series::new("push (rowcast sockets)", push.cdf));
    c.series.push(Series::new(format!("polling every {} s", args.interval_secs), poll.cdf));
    rec.chart(c);
    rec.write(&env.out)?;
    stack.stop().await
}

async fn push_phase(env: &Env, stack: &Stack, args: &Args) -> anyhow::Result<Phase> {
    let mut fleet = Fleet::spawn(env.procs)?;
    eprintln!("push: opening {} sockets", args.load.users);
    let opened = fleet.open(stack.addr, stack.secret(), args.load.users, &latency::plan(Filter::OwnUser)).await?;
    anyhow::ensure!(opened.failed == 0, "{} sockets did not subscribe: {:?}", opened.failed, opened.errors);
    let (tx0, cpu0) = (transactions(&stack.pool).await?, stack.cpu_secs());
    let started = Instant::now();
    let pace = Pace { rate: args.load.rate, batch: 1, secs: args.secs, users: args.load.users, first_seq: 1 };
    let written = owned::write(&stack.pool, pace).await?;
    let counts = latency::wait_delivered(&mut fleet, &written, 1).await?;
    let phase_secs = started.elapsed().as_secs_f64();
    let gateway_cpu = stack.cpu_secs() - cpu0;
    tokio::time::sleep(STATS_SETTLE).await;
    let tx = transactions(&stack.pool).await? - tx0 - written.batches.len() as i64 - 1;
    let d = Deliveries::of(&written, &counts, 1);
    fleet.shutdown().await;
    Ok(Phase {
        detect_ms: d.ms(),
        changes: written.changes(),
        detected: d.delivered,
        tx_per_sec: tx as f64 / phase_secs,
        requests_per_sec: 0.0,
        gateway_cpu,
        cdf: d.cdf(),
    })
}

async fn poll_phase(stack: &Stack, args: &Args, first_seq: i64) -> anyhow::Result<Phase> {
    eprintln!("polling: {} pollers every {} s", args.load.users, args.interval_secs);
    let interval = Duration::from_secs_f64(args.interval_secs);
    let (tx0, cpu0) = (transactions(&stack.pool).await?, stack.cpu_secs());
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.secs) + interval + Duration::from_millis(500);
    let pace = Pace { rate: args.load.rate, batch: 1, secs: args.secs, users: args.load.users, first_seq };
    let (polled, written) =
        tokio::join!(poller::run(stack.addr, stack.secret(), args.load.users, interval, until), owned::write(&stack.pool, pace));
    let (polled, written) = (polled?, written?);
    let phase_secs = started.elapsed().as_secs_f64();
    let gateway_cpu = stack.cpu_secs() - cpu0;
    tokio::time::sleep(STATS_SETTLE).await;
    let tx = transactions(&stack.pool).await? - tx0 - written.batches.len() as i64 - 1;
    anyhow::ensure!(polled.failed == 0, "{} polls failed", polled.failed);
    let detect_ms = detections(&written, &polled, args.load.users);
    let polls: usize = polled.by_user.iter().map(Vec::len).sum();
    let cdf = report::cdf(&detect_ms, written.changes());
    Ok(Phase {
        changes: written.changes(),
        detected: detect_ms.len(),
        detect_ms,
        tx_per_sec: tx as f64 / phase_secs,
        requests_per_sec: polls as f64 / phase_secs,
        gateway_cpu,
        cdf,
    })
}

/// For each change, ms from its commit to the first poll of its user that
/// showed the row at or past it; changes no poll showed are left out.
fn detections(written: &Written, polled: &Polled, users: usize) -> Vec<f64> {
    written
        .each(users)
        .filter_map(|(k, at, user)| {
            let polls = &polled.by_user[user];
            let i = polls.partition_point(|p| p.n < k);
            polls.get(i).map(|p| (p.at_us - at) as f64 / 1000.0)
        })
        .collect()
}

/// Transactions committed or rolled back in this database so far.
async fn transactions(pool: &PgPool) -> anyhow::Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("select (xact_commit + xact_rollback)::int8 from pg_stat_database where datname = current_database()")
            .fetch_one(pool)
            .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::Poll;
    use crate::scenario::owned::Batch;

    #[test]
    fn a_change_is_noticed_by_the_first_poll_that_shows_it() {
        // Two users; changes 1 (user 1) and 2 (user 0) committed at 1000 µs and 3000 µs.
        let written = Written {
            batches: vec![Batch { first: 1, count: 1, at_us: 1_000 }, Batch { first: 2, count: 1, at_us: 3_000 }],
            start_us: 0,
            end_us: 3_000,
        };
        let polled = Polled {
            by_user: vec![vec![Poll { at_us: 2_000, n: 0 }, Poll { at_us: 5_000, n: 2 }], vec![Poll { at_us: 11_000, n: 1 }]],
            failed: 0,
        };
        assert_eq!(detections(&written, &polled, 2), vec![10.0, 2.0]);
    }
}
