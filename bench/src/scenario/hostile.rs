//! `hostile-filter`: can one client's pattern filter slow everyone else?
//!
//! Client A joins a public table with `v=like.` + `%a` x `--repeat` + `%b`,
//! a pattern that makes a backtracking matcher take exponential time on a
//! long run of `a`s with no `b`. Client B joins the same table with no
//! filter. One UPDATE sets `v` to `--text-len` `a`s: the report is how long
//! B waited for it (or that it did not come within `--timeout-secs`), and
//! what A got. If A's binding is live, a second UPDATE that A's pattern does
//! match (`a`s then `b`) proves A's feed works and, arriving first, that A
//! got nothing for the first.

use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::plot::{Chart, Series};
use crate::report::{self, Table};
use crate::scenario::{record, Env, Meter};
use crate::socket::{self, now_us};
use crate::stack::Stack;
use crate::wire::{Event, Filter, JoinOutcome, Mode, Plan};

/// Parameters of `hostile-filter`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// How many `%a` come before the final `%b`.
    #[arg(long, default_value_t = 25)]
    pub repeat: usize,
    /// How many `a`s the UPDATE writes.
    #[arg(long, default_value_t = 60)]
    pub text_len: usize,
    /// Longest wait for each delivery.
    #[arg(long, default_value_t = 20)]
    pub timeout_secs: u64,
}

const SETUP: &str = "
create table public.bench_text (id int primary key, n int not null default 0, v text not null default '');
insert into public.bench_text values (1, 0, '');
select rowcast.enable('public.bench_text', public => true);";

/// Socket numbers: A first, then B.
const A: usize = 0;
const B: usize = 1;

/// A frame a traced socket received.
struct Seen {
    socket: usize,
    at_us: i64,
    event: String,
    seq: Option<i64>,
    message: Option<String>,
}

/// Runs the scenario and prints its table.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let stack = Stack::start(env, SETUP).await?;
    let mut fleet = Fleet::spawn(1)?;
    let filter = format!("v=like.{}%b", "%a".repeat(args.repeat));
    let params = format!(
        "A filter {filter:?} ({} characters), B no filter, update v = {} 'a's, timeout {} s, one client process, table public.bench_text (public)",
        filter.len(), args.text_len, args.timeout_secs
    );
    let mut rec = record("hostile-filter", "hostile-filter: a pathological pattern next to an ordinary client", &stack, params);
    let plan = |channel: &str, filter| Plan { channel: channel.into(), table: "bench_text".into(), filter, mode: Mode::Trace };
    let a = fleet.open_on(0, stack.addr, stack.secret(), A, 1, &plan("hostile", Filter::Fixed { text: filter.clone() })).await?;
    let b = fleet.open_on(0, stack.addr, stack.secret(), B, 1, &plan("plain", Filter::None)).await?;
    let (a_join, b_join) = (a.joins.first().cloned(), b.joins.first().cloned());
    let meter = Meter::start(&stack, &fleet);
    let wait = Duration::from_secs(args.timeout_secs);
    let mut seen = Vec::new();
    let first = update(&stack, 1, &"a".repeat(args.text_len)).await?;
    let b_got = wait_for(&mut fleet, &mut seen, B, 1, wait).await?;
    let a_live = a_join.as_ref().is_some_and(socket::is_subscribed);
    let second = if a_live { Some(update(&stack, 2, &format!("{}b", "a".repeat(args.text_len.saturating_sub(1)))).await?) } else { None };
    let a_got = if a_live { wait_for(&mut fleet, &mut seen, A, 2, wait).await? } else { None };
    let sweep = sweep(&stack, &mut fleet, &mut seen, wait).await?;
    let cpu = meter.rows(&stack, &fleet, "from first UPDATE to the last event");
    let mut t = Table::new(&["measure", "value"]);
    t.row(["A join".into(), describe_join(a_join.as_ref())]);
    t.row(["B join".into(), describe_join(b_join.as_ref())]);
    t.row(["B received the change (commit -> frame)".into(), delivery(b_got, first, args.timeout_secs)]);
    a_rows(&mut t, &seen, first, second.zip(a_got).map(|(c, at)| at - c), args.timeout_secs, a_live);
    for [k, v] in cpu {
        t.row([k, v]);
    }
    for (len, ms) in &sweep {
        t.row([format!("B received a change of {len} 'a's (commit -> frame)"), format!("{ms:.1} ms")]);
    }
    rec.table("summary", &t);
    rec.figure("ordinary_client_ms", b_got.map_or(f64::NAN, |at| (at - first) as f64 / 1000.0));
    rec.figure("hostile_client_joined", f64::from(u8::from(a_live)));
    let mut c = Chart::new(
        "An ordinary client's delivery next to a hostile like filter",
        "length of the non-matching text ('a's)",
        "commit -> frame (ms)",
    );
    c.x_log = true;
    c.series.push(Series::new("ordinary client (no filter)", sweep.iter().map(|&(len, ms)| (len as f64, ms)).collect()));
    rec.chart(c);
    rec.write(&env.out)?;
    fleet.shutdown().await;
    stack.stop().await
}

/// Texts of growing length that A's pattern does not match (exponential
/// work for a backtracking matcher): B's delivery time for each, in ms.
async fn sweep(stack: &Stack, fleet: &mut Fleet, seen: &mut Vec<Seen>, wait: Duration) -> anyhow::Result<Vec<(usize, f64)>> {
    let mut points = Vec::new();
    for (i, len) in [8usize, 16, 32, 64, 128, 256, 512].into_iter().enumerate() {
        let seq = 3 + i as i32;
        let commit = update(stack, seq, &"a".repeat(len)).await?;
        match wait_for(fleet, seen, B, seq.into(), wait).await? {
            Some(at) => points.push((len, (at - commit) as f64 / 1000.0)),
            None => break,
        }
    }
    Ok(points)
}

/// Commits `v = text, n = seq`; returns when the commit returned (µs).
async fn update(stack: &Stack, seq: i32, text: &str) -> anyhow::Result<i64> {
    sqlx::query("update public.bench_text set n = $1, v = $2 where id = 1").bind(seq).bind(text).execute(&stack.pool).await?;
    Ok(now_us())
}

/// Collects traced frames until `socket` receives change `seq`; its receive
/// time, or `None` after `wait`.
async fn wait_for(fleet: &mut Fleet, seen: &mut Vec<Seen>, socket: usize, seq: i64, wait: Duration) -> anyhow::Result<Option<i64>> {
    let deadline = Instant::now() + wait;
    loop {
        let Some((_, event)) = fleet.next_until(deadline).await? else { return Ok(None) };
        if let Event::Frame { socket: s, at_us, event, seq: got, message } = event {
            let hit = s == socket && got == Some(seq);
            seen.push(Seen { socket: s, at_us, event, seq: got, message });
            if hit {
                return Ok(Some(at_us));
            }
        }
    }
}

fn describe_join(join: Option<&JoinOutcome>) -> String {
    match join {
        Some(j) => {
            format!("reply {}, then {}", j.reply, j.system.as_deref().map_or("no system message".into(), |m| format!("system {m:?}")))
        }
        None => "no outcome".into(),
    }
}

fn delivery(at: Option<i64>, commit: i64, timeout_secs: u64) -> String {
    at.map_or(format!("not received within {timeout_secs} s"), |at| report::ms(at - commit))
}

fn a_rows(t: &mut Table, seen: &[Seen], first_commit: i64, matching_latency: Option<i64>, timeout_secs: u64, live: bool) {
    let got_first = seen.iter().any(|s| s.socket == A && s.seq == Some(1));
    t.row([
        "A received the non-matching change".into(),
        if got_first { "yes (wrong: its filter does not match)".into() } else { "no".into() },
    ]);
    let matching = match (live, matching_latency) {
        (false, _) => "not tried: A's binding is not live".into(),
        (true, Some(us)) => report::ms(us),
        (true, None) => format!("not received within {timeout_secs} s"),
    };
    t.row(["A received a matching change (commit -> frame)".into(), matching]);
    for s in seen.iter().filter(|s| s.socket == A && s.seq.is_none()) {
        let when = report::ms(s.at_us - first_commit);
        t.row([format!("A other frame, {when} after the first commit"), format!("{} {}", s.event, s.message.as_deref().unwrap_or(""))]);
    }
}
