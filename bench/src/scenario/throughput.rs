//! `throughput`: authorised deliveries per second, raised step by step
//! until the gateway saturates.
//!
//! `--users` users with `--tabs` sockets each (own token, filter
//! `user_id=eq.u<i>` on the owner-scoped table), so every change is checked
//! against its owner and goes to that user's tabs only. Each step offers a
//! rate of deliveries (`--rates`, per second): the writer commits
//! rate / tabs changes/s for `--step-secs`, `--batch-ms` worth per UPDATE.
//! A step is sustained when nothing is lost, the clients receive at least
//! `SUSTAINED_SHARE` of the offered rate and p99 commit -> receive stays
//! under `SUSTAINED_P99_MS`; the run stops after the first step that is not.
//! The received rate is deliveries over the time from the step's first
//! commit to its last delivery, so a backlog left at the end counts against it.

use std::time::Duration;

use crate::fleet::Fleet;
use crate::plot::{Chart, Series};
use crate::report::{percentile, Table};
use crate::scenario::connections::print_errors;
use crate::scenario::latency::{self, Deliveries};
use crate::scenario::owned::{self, Pace};
use crate::scenario::{record, Env};
use crate::stack::Stack;
use crate::wire::Filter;

/// Parameters of `throughput`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// Users.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Sockets per user (tabs or devices), each subscribed to the user's rows.
    #[arg(long, default_value_t = 10)]
    pub tabs: usize,
    /// Offered deliveries per second, one step each, in order.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,40000,60000,80000,100000,150000")]
    pub rates: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Milliseconds of changes per UPDATE statement.
    #[arg(long, default_value_t = 10.0)]
    pub batch_ms: f64,
}

const TARGET_PER_SEC: f64 = 100_000.0;
/// A step is sustained when p99 stays under this, nothing is lost and the
/// clients receive at least this share of the offered rate.
const SUSTAINED_P99_MS: f64 = 1000.0;
const SUSTAINED_SHARE: f64 = 0.95;
/// Pause between steps, so queues left by one do not count against the next.
const BETWEEN_STEPS: Duration = Duration::from_secs(1);

/// One step's outcome.
struct Step {
    offered: f64,
    committed_per_sec: f64,
    received_per_sec: f64,
    p50: f64,
    p99: f64,
    lost: usize,
    gateway_cores: f64,
}

impl Step {
    fn sustained(&self) -> bool {
        self.lost == 0 && self.p99 <= SUSTAINED_P99_MS && self.received_per_sec >= SUSTAINED_SHARE * self.offered
    }
}

/// Runs the scenario and prints its table.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let sockets = args.users * args.tabs;
    let stack = Stack::start(env, &owned::setup(args.users)).await?;
    let mut fleet = Fleet::spawn(env.procs)?;
    let params = format!(
        "users {}, {} sockets per user ({sockets} sockets, own token, filter user_id=eq.u<i>), offered deliveries/s {:?}, \
         {} s per step, {} ms of changes per UPDATE, client processes {}",
        args.users, args.tabs, args.rates, args.step_secs, args.batch_ms, env.procs
    );
    let mut rec = record("throughput", "throughput: authorised deliveries per second until saturation", &stack, params);
    eprintln!("opening {sockets} sockets");
    let opened = fleet.open(stack.addr, stack.secret(), sockets, &latency::plan(Filter::OwnUserTabs { tabs: args.tabs })).await?;
    print_errors(&opened);
    let mut steps = Vec::new();
    let mut next_seq = 1;
    for &offered in &args.rates {
        let changes_per_sec = offered / args.tabs as f64;
        let batch = (changes_per_sec * args.batch_ms / 1000.0).round().max(1.0) as usize;
        let pace = Pace { rate: changes_per_sec, batch, secs: args.step_secs, users: args.users, first_seq: next_seq };
        let cpu0 = stack.cpu_secs();
        let written = owned::write(&stack.pool, pace).await?;
        next_seq += written.changes() as i64;
        let counts = latency::wait_delivered(&mut fleet, &written, args.tabs).await?;
        let d = Deliveries::of(&written, &counts, args.tabs);
        let last_us = counts.seqs.values().map(|s| s.last_us).max().unwrap_or(written.end_us);
        let wall = (last_us - written.start_us) as f64 / 1e6;
        let ms = d.ms();
        let step = Step {
            offered,
            committed_per_sec: written.rate(),
            received_per_sec: d.delivered as f64 / wall.max(1e-6),
            p50: percentile(&ms, 0.5),
            p99: percentile(&ms, 0.99),
            lost: d.expected.saturating_sub(d.delivered),
            gateway_cores: (stack.cpu_secs() - cpu0) / wall.max(1e-6),
        };
        eprintln!("  offered {offered:.0}/s: received {:.0}/s, p99 {:.1} ms, lost {}", step.received_per_sec, step.p99, step.lost);
        let sustained = step.sustained();
        steps.push(step);
        if !sustained {
            break;
        }
        tokio::time::sleep(BETWEEN_STEPS).await;
    }
    rec.table("steps", &table(&steps, args.tabs));
    let best = steps.iter().filter(|s| s.sustained()).map(|s| s.received_per_sec).fold(0.0, f64::max);
    let mut v = Table::new(&["measure", "value", "target"]);
    v.row(["sockets subscribed".into(), format!("{} of {sockets}", opened.subscribed), String::new()]);
    v.row([
        format!("most authorised deliveries/s sustained (>= {:.0} % of offered, p99 <= {SUSTAINED_P99_MS} ms)", SUSTAINED_SHARE * 100.0),
        format!("{best:.0}"),
        format!(">= {TARGET_PER_SEC:.0}: {}", if best >= TARGET_PER_SEC { "met" } else { "NOT met" }),
    ]);
    let most = steps.iter().map(|s| s.received_per_sec).fold(0.0, f64::max);
    v.row(["most deliveries/s received in any step (saturated)".into(), format!("{most:.0}"), String::new()]);
    let fast = steps.iter().filter(|s| s.sustained() && s.p99 <= 100.0).map(|s| s.received_per_sec).fold(0.0, f64::max);
    v.row(["most deliveries/s with p99 <= 100 ms".into(), format!("{fast:.0}"), String::new()]);
    v.row(["gateway RSS at the end".into(), stack.rss_text(), String::new()]);
    rec.table("verdict", &v);
    rec.figure("best_deliveries_per_sec", best);
    rec.figure("saturated_deliveries_per_sec", most);
    rec.figure("p99_under_100ms_deliveries_per_sec", fast);
    let mut c = Chart::new(
        format!("Authorised deliveries: {} users x {} tabs, each change to its owner's tabs", args.users, args.tabs),
        "offered deliveries/s",
        "deliveries/s",
    );
    c.series.push(Series::new("received", steps.iter().map(|s| (s.offered, s.received_per_sec)).collect()));
    c.series.push(Series::new("offered", steps.iter().map(|s| (s.offered, s.offered)).collect()));
    c.target = Some((format!("target {TARGET_PER_SEC:.0}/s"), TARGET_PER_SEC));
    rec.chart(c);
    rec.write(&env.out)?;
    fleet.shutdown().await;
    stack.stop().await
}

fn table(steps: &[Step], tabs: usize) -> Table {
    let mut t =
        Table::new(&["offered deliveries/s", "changes/s committed", "deliveries/s received", "p50", "p99", "lost", "gateway cores"]);
    for s in steps {
        t.row([
            format!("{:.0}", s.offered),
            format!("{:.0} (x{tabs} tabs)", s.committed_per_sec),
            format!("{:.0}", s.received_per_sec),
            format!("{:.1} ms", s.p50),
            format!("{:.1} ms", s.p99),
            s.lost.to_string(),
            if s.gateway_cores.is_nan() { "n/a".into() } else { format!("{:.2}", s.gateway_cores) },
        ]);
    }
    t
}
