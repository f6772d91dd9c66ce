//! `connections`: what an idle, subscribed socket costs the gateway in
//! resident memory.
//!
//! Each socket is one user (its own token, `sub = u<i>`) on an owner-scoped
//! table with the filter `user_id=eq.u<i>`, as a per-user app subscribes.
//! Baseline: gateway RSS after one warm-up socket came and went. Then N
//! sockets subscribe (every one must get "Subscribed to PostgreSQL"), they
//! settle for 2 s (deliberate: let lazy allocations land), and RSS is read
//! again. The slope (after - before) / N projects the cost of 50,000.

use std::time::Duration;

use crate::fleet::{Fleet, Opened};
use crate::plot::{Chart, Series};
use crate::report::{self, Table};
use crate::scenario::{record, Env, Meter};
use crate::stack::Stack;
use crate::wire::{Filter, Mode, Plan};

/// Parameters of `connections`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// Sockets to open, each subscribed to one channel (15,000: about the
    /// most one gateway process holds under a 20,000 open-files limit).
    #[arg(long, default_value_t = 15_000)]
    pub sockets: usize,
}

/// The target per idle subscribed socket.
const TARGET_KIB: f64 = 16.0;
/// The projection's size.
const PROJECTED: u64 = 50_000;
/// Deliberate pause before each memory reading.
const SETTLE: Duration = Duration::from_secs(2);

const SETUP: &str = "
create table public.bench_owned (id int primary key, user_id text not null, n int not null default 0);
select rowcast.enable('public.bench_owned', owner_column => 'user_id');";

fn plan() -> Plan {
    Plan { channel: "own".into(), table: "bench_owned".into(), filter: Filter::OwnUser, mode: Mode::Count }
}

/// Runs the scenario and prints its table.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let stack = Stack::start(env, SETUP).await?;
    let mut fleet = Fleet::spawn(env.procs)?;
    let params = format!(
        "sockets {}, client processes {}, table public.bench_owned (owner_column user_id), one channel per socket \
         (event *, filter user_id=eq.u<i>), own token per socket (sub u<i>, role authenticated), heartbeat 25 s",
        args.sockets, env.procs
    );
    let mut rec = record("connections", "connections: memory per idle subscribed socket", &stack, params);
    let meter = Meter::start(&stack, &fleet);
    let before = baseline(&stack, &mut fleet).await?;
    eprintln!("opening {} sockets", args.sockets);
    let opened = fleet.open(stack.addr, stack.secret(), args.sockets, &plan()).await?;
    tokio::time::sleep(SETTLE).await;
    let after = stack.rss_kib()?;
    rec.table("summary", &table(args.sockets, &opened, before, after, &meter.rows(&stack, &fleet, "whole scenario")));
    print_errors(&opened);
    let slope = (after as f64 - before as f64) / opened.subscribed.max(1) as f64;
    rec.figure("sockets_subscribed", opened.subscribed as f64);
    rec.figure("rss_before_mb", report::kib_to_mb(before));
    rec.figure("rss_after_mb", report::kib_to_mb(after));
    rec.figure("kib_per_socket", slope);
    rec.figure("projected_rss_50k_mb", report::kib_to_mb(before) + slope * PROJECTED as f64 * 1024.0 / 1e6);
    rec.chart(chart(opened.subscribed, before, slope));
    rec.write(&env.out)?;
    fleet.shutdown().await;
    stack.stop().await
}

/// Gateway RSS after one socket subscribed and closed again.
async fn baseline(stack: &Stack, fleet: &mut Fleet) -> anyhow::Result<u64> {
    let warm = fleet.open_on(0, stack.addr, stack.secret(), 0, 1, &plan()).await?;
    anyhow::ensure!(warm.subscribed == 1, "the warm-up socket did not subscribe: {:?}", warm.errors);
    fleet.close_all().await?;
    tokio::time::sleep(SETTLE).await;
    stack.rss_kib()
}

fn table(sockets: usize, opened: &Opened, before: u64, after: u64, cpu: &[[String; 2]]) -> Table {
    let slope = (after as f64 - before as f64) / opened.subscribed.max(1) as f64;
    let projected = (before as f64 + slope * PROJECTED as f64) as u64;
    let verdict = if slope <= TARGET_KIB { "met" } else { "NOT met" };
    let mut t = Table::new(&["measure", "value", "target"]);
    t.row(["sockets subscribed".into(), format!("{} of {sockets}", opened.subscribed), String::new()]);
    t.row([
        "time to open and subscribe them all".into(),
        report::secs(opened.millis as f64 / 1000.0),
        format!("{:.0} sockets/s", sockets as f64 * 1000.0 / opened.millis.max(1) as f64),
    ]);
    t.row(["gateway RSS before (warm, nothing connected)".into(), report::mb(before), String::new()]);
    t.row(["gateway RSS after (all subscribed, 2 s settled)".into(), report::mb(after), String::new()]);
    t.row(["per idle subscribed socket".into(), format!("{slope:.1} KiB"), format!("<= {TARGET_KIB} KiB: {verdict}")]);
    t.row([format!("projected RSS at {PROJECTED} sockets"), report::mb(projected), String::new()]);
    for [k, v] in cpu {
        t.row([k.clone(), v.clone(), String::new()]);
    }
    t
}

/// Gateway RSS against sockets: the two readings and the projection from their slope.
fn chart(subscribed: usize, before: u64, slope_kib: f64) -> Chart {
    let mb_at = |n: f64| (before as f64 + slope_kib * n) * 1024.0 / 1e6;
    let mut c = Chart::new("Gateway RSS against idle subscribed sockets", "sockets", "RSS (MB)");
    c.series.push(Series::new("measured", vec![(0.0, mb_at(0.0)), (subscribed as f64, mb_at(subscribed as f64))]));
    c.series.push(Series::new(
        "projected from the slope",
        vec![(subscribed as f64, mb_at(subscribed as f64)), (PROJECTED as f64, mb_at(PROJECTED as f64))],
    ));
    c.series.push(Series::new(
        format!("target {TARGET_KIB} KiB per socket"),
        vec![(0.0, mb_at(0.0)), (PROJECTED as f64, mb_at(0.0) + TARGET_KIB * PROJECTED as f64 * 1024.0 / 1e6)],
    ));
    c
}

/// The first distinct failure texts, if any socket failed.
pub fn print_errors(opened: &Opened) {
    if opened.failed > 0 {
        println!("  {} sockets failed to subscribe; first errors:", opened.failed);
        for e in &opened.errors {
            println!("    {e}");
        }
    }
}
