//! `fanout`: how long one change takes to reach every one of N subscribers.
//!
//! N sockets (own user tokens) subscribe to one public table on one channel
//! name. The tool then commits `--changes` single-row UPDATEs, paced
//! `--interval-ms` apart (the only deliberate sleep), each setting `n` to
//! its sequence number. Every client process stamps each delivery with the
//! wall clock (one clock on one machine); the tool stamps the moment its
//! commit returned, and the gateway's JSON log says when its listener read
//! the change and started the fan-out (`gatewaylog`). Per change: latency to
//! the first and to the last of the N deliveries, from the commit and from
//! the gateway's read; over the changes: p50/p99/max of the last, and lost
//! deliveries (expected N x changes). The target is on read -> last, the
//! fan-out itself; commit -> read is the change log's own delay.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::{Counts, Fleet};
use crate::plot::{Chart, Series};
use crate::record::Record;
use crate::report::{self, percentile, Table};
use crate::scenario::connections::print_errors;
use crate::scenario::{record, Env, Meter};
use crate::socket::now_us;
use crate::stack::Stack;
use crate::wire::{Event, Filter, Mode, Plan};

/// Parameters of `fanout`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// Sockets subscribed to the table.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Single-row UPDATEs to commit.
    #[arg(long, default_value_t = 20)]
    pub changes: i64,
    /// Pause between the UPDATEs.
    #[arg(long, default_value_t = 300)]
    pub interval_ms: u64,
}

/// The target for the last delivery of a change.
const TARGET_MS: f64 = 100.0;
/// Longest wait for the last deliveries after the last commit.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);

const SETUP: &str = "
create table public.bench (id int primary key, n int not null default 0);
insert into public.bench values (1, 0);
select rowcast.enable('public.bench', public => true);";

/// Runs the scenario and prints its tables.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let stack = Stack::start(env, SETUP).await?;
    let mut fleet = Fleet::spawn(env.procs)?;
    let params = format!(
        "subscribers {}, changes {}, interval {} ms, client processes {} (SCHED_BATCH), table public.bench (public), \
         one channel name for all (event *, no filter), own token per socket, single-row UPDATE per change",
        args.subscribers, args.changes, args.interval_ms, env.procs
    );
    let mut rec = record("fanout", "fanout: one change to every subscriber", &stack, params);
    eprintln!("opening {} sockets", args.subscribers);
    let plan = Plan { channel: "bench".into(), table: "bench".into(), filter: Filter::None, mode: Mode::Count };
    let opened = fleet.open(stack.addr, stack.secret(), args.subscribers, &plan).await?;
    print_errors(&opened);
    let meter = Meter::start(&stack, &fleet);
    let commits = write_changes(&stack, args).await?;
    let complete = wait_delivered(&mut fleet, args.changes).await?;
    let cpu = meter.rows(&stack, &fleet, "from first UPDATE to last delivery");
    let counts = fleet.counts().await?;
    let reads = read_stamps(&stack, &commits)?;
    rec.table("per change", &per_change(&commits, &reads, &counts));
    let spans = Spans::of(&commits, &reads, &counts);
    rec.table("summary", &summary(args, opened.subscribed, complete, &spans, &counts, &cpu));
    figures(&mut rec, spans, opened.subscribed, args.changes as usize);
    rec.write(&env.out)?;
    fleet.shutdown().await;
    stack.stop().await
}

/// One committed UPDATE.
struct Commit {
    /// When the commit returned (Unix µs).
    at_us: i64,
    /// Its change-log id.
    change_id: i64,
}

/// Commits the UPDATEs at the pace asked; returns each commit's return time
/// and change-log id (the tool is the only writer, so the id is the
/// sequence's latest value, asked after the commit stamp).
async fn write_changes(stack: &Stack, args: &Args) -> anyhow::Result<BTreeMap<i64, Commit>> {
    let start = Instant::now();
    let mut commits = BTreeMap::new();
    let bar = crate::progress::bar(args.changes as u64, "changes committed");
    for seq in 1..=args.changes {
        bar.set_position(seq as u64 - 1);
        tokio::time::sleep_until(start + Duration::from_millis(args.interval_ms) * (seq - 1) as u32).await;
        sqlx::query("update public.bench set n = $1 where id = 1").bind(seq as i32).execute(&stack.pool).await?;
        let at_us = now_us();
        let (change_id,): (i64,) = sqlx::query_as("select last_value from rowcast.changes_id_seq").fetch_one(&stack.pool).await?;
        commits.insert(seq, Commit { at_us, change_id });
    }
    bar.finish_and_clear();
    Ok(commits)
}

/// Sequence -> when the gateway read that change (Unix µs), for the changes
/// its log names.
fn read_stamps(stack: &Stack, commits: &BTreeMap<i64, Commit>) -> anyhow::Result<BTreeMap<i64, i64>> {
    let Some(times) = stack.read_times()? else { return Ok(BTreeMap::new()) };
    Ok(commits.iter().filter_map(|(seq, c)| times.get(&c.change_id).map(|t| (*seq, *t))).collect())
}

/// Waits until every client process has every change on every socket;
/// returns whether that happened before the deadline.
async fn wait_delivered(fleet: &mut Fleet, changes: i64) -> anyhow::Result<bool> {
    let mut done = std::collections::HashSet::new();
    let deadline = Instant::now() + DELIVERY_WAIT;
    while done.len() < fleet.len() * changes as usize {
        match fleet.next_until(deadline).await? {
            Some((i, Event::SeqDone { seq })) => drop(done.insert((i, seq))),
            Some(_) => {}
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Per change (by sequence number), in ms: commit -> last delivery, gateway
/// read -> last delivery, and commit -> read; with the deliveries counted.
struct Spans {
    last: Vec<(f64, f64)>,
    fan: Vec<(f64, f64)>,
    lag: Vec<f64>,
    /// Changes that have a commit but no read stamp in the gateway's log.
    unread: usize,
    delivered: usize,
}

impl Spans {
    fn of(commits: &BTreeMap<i64, Commit>, reads: &BTreeMap<i64, i64>, counts: &Counts) -> Spans {
        let ms = |from: i64, to: i64| (to - from) as f64 / 1000.0;
        Spans {
            last: commits.iter().filter_map(|(seq, c)| counts.seqs.get(seq).map(|s| (*seq as f64, ms(c.at_us, s.last_us)))).collect(),
            fan: reads.iter().filter_map(|(seq, r)| counts.seqs.get(seq).map(|s| (*seq as f64, ms(*r, s.last_us)))).collect(),
            lag: reads.iter().filter_map(|(seq, r)| commits.get(seq).map(|c| ms(c.at_us, *r))).collect(),
            unread: commits.len().saturating_sub(reads.len()),
            delivered: commits.keys().filter_map(|seq| counts.seqs.get(seq)).map(|s| s.count).sum(),
        }
    }

    fn last_ms(&self) -> Vec<f64> {
        self.last.iter().map(|p| p.1).collect()
    }

    fn fan_ms(&self) -> Vec<f64> {
        self.fan.iter().map(|p| p.1).collect()
    }
}

/// Key figures and the chart: per change, commit -> last and read -> last.
fn figures(rec: &mut Record, spans: Spans, subscribed: usize, changes: usize) {
    let (last, fan) = (spans.last_ms(), spans.fan_ms());
    rec.figure("subscribers", subscribed as f64);
    rec.figure("read_to_last_p50_ms", percentile(&fan, 0.5));
    rec.figure("read_to_last_p99_ms", percentile(&fan, 0.99));
    rec.figure("commit_to_last_p50_ms", percentile(&last, 0.5));
    rec.figure("commit_to_last_p99_ms", percentile(&last, 0.99));
    rec.figure("lost_deliveries", (subscribed * changes).saturating_sub(spans.delivered) as f64);
    let mut c = Chart::new(format!("One change to {subscribed} subscribers: time to the last delivery"), "change", "ms");
    c.series.push(Series::new("gateway read -> last delivery", spans.fan));
    c.series.push(Series::new("commit -> last delivery", spans.last));
    c.target = Some((format!("target {TARGET_MS} ms"), TARGET_MS));
    rec.chart(c);
}

fn per_change(commits: &BTreeMap<i64, Commit>, reads: &BTreeMap<i64, i64>, counts: &Counts) -> Table {
    let mut t = Table::new(&["change", "deliveries", "commit -> read", "commit -> first", "commit -> last", "read -> last"]);
    for (seq, commit) in commits {
        let read = reads.get(seq);
        let commit_read = read.map_or("-".into(), |r| report::ms(r - commit.at_us));
        match counts.seqs.get(seq) {
            Some(s) => t.row([
                seq.to_string(),
                s.count.to_string(),
                commit_read,
                report::ms(s.first_us - commit.at_us),
                report::ms(s.last_us - commit.at_us),
                read.map_or("-".into(), |r| report::ms(s.last_us - r)),
            ]),
            None => t.row([seq.to_string(), "0".into(), commit_read, "-".into(), "-".into(), "-".into()]),
        }
    }
    t
}

fn summary(args: &Args, subscribed: usize, complete: bool, spans: &Spans, counts: &Counts, cpu: &[[String; 2]]) -> Table {
    let (last, fan, lag, delivered) = (spans.last_ms(), spans.fan_ms(), &spans.lag, spans.delivered);
    let expected = subscribed * args.changes as usize;
    let verdict = |v: f64| format!("<= {TARGET_MS} ms: {}", if v <= TARGET_MS { "met" } else { "NOT met" });
    let mut t = Table::new(&["measure", "value", "target"]);
    t.row(["subscribers subscribed".into(), format!("{subscribed} of {}", args.subscribers), String::new()]);
    // A given gateway's log is not read: then the target is judged on
    // commit -> last delivery, which includes the change log's read.
    let reads_known = !lag.is_empty();
    if reads_known {
        t.row(["commit -> gateway read p50".into(), format!("{:.1} ms", percentile(lag, 0.5)), String::new()]);
        t.row(["commit -> gateway read p99".into(), format!("{:.1} ms", percentile(lag, 0.99)), String::new()]);
    }
    t.row(["commit -> last delivery p50".into(), format!("{:.1} ms", percentile(&last, 0.5)), String::new()]);
    let last_p99 = percentile(&last, 0.99);
    t.row(["commit -> last delivery p99".into(), format!("{last_p99:.1} ms"), if reads_known { String::new() } else { verdict(last_p99) }]);
    t.row(["commit -> last delivery max".into(), format!("{:.1} ms", percentile(&last, 1.0)), String::new()]);
    if reads_known {
        t.row(["read -> last delivery p50".into(), format!("{:.1} ms", percentile(&fan, 0.5)), String::new()]);
        t.row(["read -> last delivery p99".into(), format!("{:.1} ms", percentile(&fan, 0.99)), verdict(percentile(&fan, 0.99))]);
        t.row(["read -> last delivery max".into(), format!("{:.1} ms", percentile(&fan, 1.0)), String::new()]);
    } else {
        t.row(["gateway read times".into(), "not measured: the tool reads only its own gateway's log".into(), String::new()]);
    }
    if reads_known && spans.unread > 0 {
        t.row(["changes without a read stamp in the gateway log".into(), spans.unread.to_string(), String::new()]);
    }
    t.row(["deliveries".into(), format!("{delivered} of {expected}"), String::new()]);
    t.row([
        "lost deliveries".into(),
        expected.saturating_sub(delivered).to_string(),
        format!("0: {}", if delivered >= expected { "met" } else { "NOT met" }),
    ]);
    if delivered > expected {
        t.row(["duplicate deliveries".into(), (delivered - expected).to_string(), String::new()]);
    }
    if !complete {
        t.row(["all delivered within the wait".into(), format!("no ({} s after the last commit)", DELIVERY_WAIT.as_secs()), String::new()]);
    }
    for (how, n) in &counts.closed {
        t.row([format!("sockets ended by the server: {how}"), n.to_string(), String::new()]);
    }
    for [k, v] in cpu {
        t.row([k.clone(), v.clone(), String::new()]);
    }
    t
}
