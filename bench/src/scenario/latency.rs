//! `latency`: commit -> client receive for many users each watching their
//! own row, under a steady write rate.
//!
//! `--users` sockets, one per user (own token, `sub = u<i>`), each joined to
//! the owner-scoped table `public.bench_owned` with `user_id=eq.u<i>`, as an
//! app's browsers subscribe. The tool commits `--rate` single-row UPDATEs
//! per second for `--secs` seconds, spread round the users (`owned`). Each
//! change must reach its user's one socket: latency is receive time minus
//! the time the commit returned, lost is changes never received within
//! `DELIVERY_WAIT` of the last commit.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::{Counts, Fleet};
use crate::plot::{Chart, Series};
use crate::report::{percentile, Table};
use crate::scenario::connections::print_errors;
use crate::scenario::owned::{self, Pace, Workload, Written};
use crate::scenario::{record, Env, Meter};
use crate::stack::Stack;
use crate::wire::{Filter, Mode, Plan};

/// Parameters of `latency`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub load: Workload,
    /// Seconds of writing.
    #[arg(long, default_value_t = 60.0)]
    pub secs: f64,
}

const TARGET_P50_MS: f64 = 5.0;
const TARGET_P99_MS: f64 = 25.0;
/// Longest wait for the last deliveries after the last commit.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(15);

/// The join of socket `i`: its own rows of `bench_owned`.
pub fn plan(filter: Filter) -> Plan {
    Plan { channel: "own".into(), table: "bench_owned".into(), filter, mode: Mode::Count }
}

/// Runs the scenario and prints its table.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let stack = Stack::start(env, &owned::setup(args.load.users)).await?;
    let mut fleet = Fleet::spawn(env.procs)?;
    let params = format!(
        "users {} (one socket each, own token, filter user_id=eq.u<i>), {} single-row UPDATEs/s for {} s spread over the users, \
         client processes {}, table public.bench_owned (owner_column user_id)",
        args.load.users, args.load.rate, args.secs, env.procs
    );
    let mut rec = record("latency", "latency: commit -> client under a steady write rate", &stack, params);
    eprintln!("opening {} sockets", args.load.users);
    let opened = fleet.open(stack.addr, stack.secret(), args.load.users, &plan(Filter::OwnUser)).await?;
    print_errors(&opened);
    let meter = Meter::start(&stack, &fleet);
    let written =
        owned::write(&stack.pool, Pace { rate: args.load.rate, batch: 1, secs: args.secs, users: args.load.users, first_seq: 1 }).await?;
    let counts = wait_delivered(&mut fleet, &written, 1).await?;
    let cpu = meter.rows(&stack, &fleet, "writing and delivering");
    let d = Deliveries::of(&written, &counts, 1);
    let mut t = Table::new(&["measure", "value", "target"]);
    t.row(["sockets subscribed".into(), format!("{} of {}", opened.subscribed, args.load.users), String::new()]);
    t.row(["changes committed".into(), format!("{} ({:.0}/s)", written.changes(), written.rate()), String::new()]);
    d.rows(&mut t, Some((TARGET_P50_MS, TARGET_P99_MS)));
    for (how, n) in &counts.closed {
        t.row([format!("sockets ended by the server: {how}"), n.to_string(), String::new()]);
    }
    for [k, v] in cpu {
        t.row([k, v, String::new()]);
    }
    t.row(["gateway RSS at the end".into(), stack.rss_text(), String::new()]);
    rec.table("summary", &t);
    d.figures(&mut rec, "");
    let mut c = Chart::new(
        format!("commit -> client, {} users, {} changes/s", args.load.users, args.load.rate),
        "seconds since the first commit",
        "ms (per 1 s window)",
    );
    c.series = d.per_second(written.start_us);
    c.target = Some((format!("target p99 {TARGET_P99_MS} ms"), TARGET_P99_MS));
    rec.chart(c);
    rec.write(&env.out)?;
    fleet.shutdown().await;
    stack.stop().await
}

/// Waits until every change has `per_change` deliveries (or the wait ends),
/// reading the counts every 200 ms; returns the counts, which the client
/// processes then forget.
pub async fn wait_delivered(fleet: &mut Fleet, written: &Written, per_change: usize) -> anyhow::Result<Counts> {
    let deadline = Instant::now() + DELIVERY_WAIT;
    let want = written.changes() * per_change;
    loop {
        let counts = fleet.counts().await?;
        let got: usize = written.each(1).filter_map(|(k, _, _)| counts.seqs.get(&k)).map(|s| s.count.min(per_change)).sum();
        if got >= want || Instant::now() >= deadline {
            return fleet.take().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Latencies of every change that arrived, and what did not.
pub struct Deliveries {
    /// (commit stamp, ms from commit to the last of its deliveries).
    pub latency: Vec<(i64, f64)>,
    pub expected: usize,
    pub delivered: usize,
    pub duplicates: usize,
}

impl Deliveries {
    /// Matches `written` with `counts`, each change due `per_change` times.
    pub fn of(written: &Written, counts: &Counts, per_change: usize) -> Deliveries {
        let mut d = Deliveries { latency: Vec::new(), expected: written.changes() * per_change, delivered: 0, duplicates: 0 };
        for (k, at, _) in written.each(1) {
            if let Some(s) = counts.seqs.get(&k) {
                d.delivered += s.count.min(per_change);
                d.duplicates += s.count.saturating_sub(per_change);
                d.latency.push((at, (s.last_us - at) as f64 / 1000.0));
            }
        }
        d
    }

    /// Every latency, in ms.
    pub fn ms(&self) -> Vec<f64> {
        self.latency.iter().map(|l| l.1).collect()
    }

    /// Deliveries, losses and percentiles, checked against `(p50, p99)` targets if given.
    pub fn rows(&self, t: &mut Table, targets: Option<(f64, f64)>) {
        let ms = self.ms();
        let verdict = |v: f64, target: Option<f64>| {
            target.map_or(String::new(), |tg| format!("<= {tg} ms: {}", if v <= tg { "met" } else { "NOT met" }))
        };
        let lost = self.expected.saturating_sub(self.delivered);
        t.row(["deliveries".into(), format!("{} of {}", self.delivered, self.expected), String::new()]);
        t.row(["lost deliveries".into(), lost.to_string(), format!("0: {}", if lost == 0 { "met" } else { "NOT met" })]);
        if self.duplicates > 0 {
            t.row(["duplicate deliveries".into(), self.duplicates.to_string(), String::new()]);
        }
        let p50 = percentile(&ms, 0.5);
        let p99 = percentile(&ms, 0.99);
        t.row(["commit -> receive p50".into(), format!("{p50:.1} ms"), verdict(p50, targets.map(|t| t.0))]);
        t.row(["commit -> receive p90".into(), format!("{:.1} ms", percentile(&ms, 0.9)), String::new()]);
        t.row(["commit -> receive p99".into(), format!("{p99:.1} ms"), verdict(p99, targets.map(|t| t.1))]);
        t.row(["commit -> receive max".into(), format!("{:.1} ms", percentile(&ms, 1.0)), String::new()]);
    }

    /// Key figures, names prefixed with `prefix`.
    pub fn figures(&self, rec: &mut crate::record::Record, prefix: &str) {
        let ms = self.ms();
        rec.figure(&format!("{prefix}p50_ms"), percentile(&ms, 0.5));
        rec.figure(&format!("{prefix}p99_ms"), percentile(&ms, 0.99));
        rec.figure(&format!("{prefix}max_ms"), percentile(&ms, 1.0));
        rec.figure(&format!("{prefix}lost"), self.expected.saturating_sub(self.delivered) as f64);
    }

    /// p50 and p99 over each second of commits since `start_us`.
    pub fn per_second(&self, start_us: i64) -> Vec<Series> {
        let mut windows: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for &(at, ms) in &self.latency {
            windows.entry((at - start_us) / 1_000_000).or_default().push(ms);
        }
        let line = |q: f64| windows.iter().map(|(s, v)| (*s as f64, percentile(v, q))).collect();
        vec![Series::new("p50", line(0.5)), Series::new("p99", line(0.99)), Series::new("max", line(1.0))]
    }

    /// The share of changes received within each latency (for a CDF).
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        crate::report::cdf(&self.ms(), self.expected)
    }
}
