//! `stall`: what one client that stops reading costs the gateway and the
//! clients that keep reading.
//!
//! Two sockets join the same public table: one never polls its socket again
//! after subscribing (the TCP connection stays open, unread), one reads
//! everything. The tool then UPDATEs one ~`--row-kb` KiB row `--rows` times,
//! each its own commit, as fast as one connection can. A sampler reads the
//! gateway's RSS and, from `/proc/net/tcp`, the stalled connection's state on
//! the gateway's side every 100 ms: the gateway has let go of the socket when
//! the entry leaves ESTABLISHED or loses its inode (orphaned, no process
//! holds it). After `--after-secs` the stalled socket is finally read, which
//! shows what the server last sent it (a close frame, or a reset).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fleet::{Counts, Fleet};
use crate::plot::{Chart, Series};
use crate::procfs::{self, TcpEntry, TCP_ESTABLISHED};
use crate::report::{self, Table};
use crate::scenario::{record, Env, Meter};
use crate::stack::Stack;
use crate::wire::{Event, Filter, Mode, Plan};

/// Parameters of `stall`.
#[derive(clap::Parser, Debug, Clone)]
pub struct Args {
    /// UPDATEs of the big row, each its own commit.
    #[arg(long, default_value_t = 1500)]
    pub rows: i64,
    /// Size of the row's text column in KiB.
    #[arg(long, default_value_t = 200)]
    pub row_kb: u64,
    /// How long after the load to keep watching (RSS is also read at 10 s).
    #[arg(long, default_value_t = 45)]
    pub after_secs: u64,
}

/// How often the sampler reads RSS and the connection's state.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long the stalled socket is read at the end.
const DRAIN_FOR: Duration = Duration::from_secs(10);
/// The early memory reading after the load.
const EARLY: Duration = Duration::from_secs(10);

fn setup(row_kb: u64) -> String {
    // md5 hex: 32 characters per row of the series, poorly compressible like real text.
    format!(
        "create table public.bench_blob (id int primary key, n int not null default 0, body text not null);
         insert into public.bench_blob select 1, 0, string_agg(md5(g::text), '') from generate_series(1, {}) g;
         select rowcast.enable('public.bench_blob', public => true);",
        (row_kb * 1024 / 32).max(1)
    )
}

/// One reading of the sampler.
struct Sample {
    at: Instant,
    rss_kib: u64,
    /// The stalled connection as the gateway's side sees it.
    server: Option<TcpEntry>,
    /// The same connection from the stalled client's side.
    client: Option<TcpEntry>,
}

/// When the load ran and how the ordinary client fared.
struct Load {
    start: Instant,
    end: Instant,
    ordinary_done: Option<Instant>,
}

/// Runs the scenario and prints its table.
pub async fn run(env: &Env, args: &Args) -> anyhow::Result<()> {
    let stack = Stack::start(env, &setup(args.row_kb)).await?;
    let mut fleet = Fleet::spawn(1)?;
    let params = format!(
        "rows {}, row size {} KiB (text column), after {} s, one stalled socket and one ordinary socket in one client process, \
         table public.bench_blob (public), event *, no filter; each UPDATE its own commit from one connection",
        args.rows, args.row_kb, args.after_secs
    );
    let mut rec = record("stall", "stall: a client that stops reading", &stack, params);
    let plan = |mode| Plan { channel: "blob".into(), table: "bench_blob".into(), filter: Filter::None, mode };
    let stalled = fleet.open_on(0, stack.addr, stack.secret(), 0, 1, &plan(Mode::Stall)).await?;
    let ordinary = fleet.open_on(0, stack.addr, stack.secret(), 1, 1, &plan(Mode::Count)).await?;
    anyhow::ensure!(
        stalled.subscribed == 1 && ordinary.subscribed == 1,
        "a socket did not subscribe: {:?} {:?}",
        stalled.errors,
        ordinary.errors
    );
    let stalled_port = stalled.joins[0].local_port;
    let before = stack.rss_kib()?;
    let (stop, sampler) = spawn_sampler(stack.gateway_pid()?, stack.addr.port(), stalled_port);
    let meter = Meter::start(&stack, &fleet);
    let load = load(&stack, &mut fleet, args).await?;
    let cpu = meter.rows(&stack, &fleet, "from first UPDATE to the last reading");
    let _ = stop.send(true);
    let samples = sampler.await?;
    let peak_since_start = procfs::peak_rss_kib(stack.gateway_pid()?)?;
    eprintln!("reading the stalled socket");
    let drained = fleet.drain(0, DRAIN_FOR, 1).await?;
    let counts = fleet.counts().await?;
    let mut t = Table::new(&["measure", "value"]);
    load_rows(&mut t, args, &load, &counts);
    memory_rows(&mut t, args, &load, &samples, before, peak_since_start);
    stalled_rows(&mut t, &load, &samples, &drained);
    for [k, v] in cpu {
        t.row([k, v]);
    }
    rec.table("summary", &t);
    rec.figure("rss_before_mb", report::kib_to_mb(before));
    rec.figure("rss_peak_mb", report::kib_to_mb(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)));
    rec.figure("rss_end_mb", report::kib_to_mb(samples.last().map_or(0, |s| s.rss_kib)));
    rec.chart(chart(&load, &samples));
    rec.write(&env.out)?;
    fleet.shutdown().await;
    stack.stop().await
}

/// Commits the UPDATEs, then waits for the ordinary client and the after period.
async fn load(stack: &Stack, fleet: &mut Fleet, args: &Args) -> anyhow::Result<Load> {
    eprintln!("updating the {} KiB row {} times", args.row_kb, args.rows);
    let start = Instant::now();
    let bar = crate::progress::bar(args.rows as u64, "rows updated");
    for seq in 1..=args.rows {
        sqlx::query("update public.bench_blob set n = $1 where id = 1").bind(seq as i32).execute(&stack.pool).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let end = Instant::now();
    let after = end + Duration::from_secs(args.after_secs);
    let ordinary_done = wait_ordinary(fleet, args.rows, after).await?;
    eprintln!("watching the gateway until {} s after the load", args.after_secs);
    tokio::time::sleep_until(after).await;
    Ok(Load { start, end, ordinary_done })
}

/// Waits until the ordinary client has every change; `None` if not by `deadline`.
async fn wait_ordinary(fleet: &mut Fleet, rows: i64, deadline: Instant) -> anyhow::Result<Option<Instant>> {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < rows as usize {
        match fleet.next_until(deadline).await? {
            Some((_, Event::SeqDone { seq })) => drop(seen.insert(seq)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
    Ok(Some(Instant::now()))
}

/// Reads RSS and the stalled connection every `SAMPLE_EVERY` until told to stop
/// (or an hour has passed).
fn spawn_sampler(pid: u32, gateway_port: u16, client_port: u16) -> (watch::Sender<bool>, JoinHandle<Vec<Sample>>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut samples = Vec::new();
        let limit = Instant::now() + Duration::from_secs(3600);
        while Instant::now() < limit {
            samples.push(Sample {
                at: Instant::now(),
                rss_kib: procfs::rss_kib(pid).unwrap_or(0),
                server: procfs::loopback_tcp(gateway_port, client_port),
                client: procfs::loopback_tcp(client_port, gateway_port),
            });
            tokio::select! {
                // The scenario has its readings.
                _ = stopped.changed() => break,
                // The next reading.
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
        samples
    });
    (stop, task)
}

/// Gateway RSS and the stalled connection's unsent bytes over time.
fn chart(load: &Load, samples: &[Sample]) -> Chart {
    let t = |s: &Sample| s.at.saturating_duration_since(load.start).as_secs_f64();
    let mb = |b: u64| b as f64 / 1e6;
    let mut c = Chart::new("A client that stops reading: gateway memory", "seconds since the first UPDATE", "MB");
    c.series.push(Series::new("gateway RSS", samples.iter().map(|s| (t(s), mb(s.rss_kib * 1024))).collect()));
    c.series.push(Series::new(
        "stalled socket: gateway's unsent kernel bytes",
        samples.iter().map(|s| (t(s), mb(s.server.map_or(0, |e| e.tx_queue)))).collect(),
    ));
    c
}

fn load_rows(t: &mut Table, args: &Args, load: &Load, counts: &Counts) {
    let secs = (load.end - load.start).as_secs_f64();
    t.row([
        "rows updated (each its own commit)".into(),
        format!("{} in {} ({:.0}/s)", args.rows, report::secs(secs), args.rows as f64 / secs),
    ]);
    let distinct = counts.seqs.len();
    let total: usize = counts.seqs.values().map(|s| s.count).sum();
    t.row(["ordinary client: changes received".into(), format!("{distinct} of {} ({total} frames)", args.rows)]);
    let done = match load.ordinary_done {
        Some(at) => format!("{} after the last commit", report::secs(at.saturating_duration_since(load.end).as_secs_f64())),
        None => format!("not all within {} s", args.after_secs),
    };
    t.row(["ordinary client: complete".into(), done]);
    for (how, n) in &counts.closed {
        t.row([format!("ordinary client ended by the server: {how}"), n.to_string()]);
    }
}

fn memory_rows(t: &mut Table, args: &Args, load: &Load, samples: &[Sample], before: u64, peak_since_start: u64) {
    let during = samples.iter().filter(|s| s.at >= load.start && s.at <= load.end).map(|s| s.rss_kib).max();
    let at = |offset: Duration| {
        samples.iter().min_by_key(|s| (s.at.max(load.end + offset) - s.at.min(load.end + offset)).as_millis()).map(|s| s.rss_kib)
    };
    let show = |kib: Option<u64>| kib.map_or("-".into(), report::mb);
    t.row(["gateway RSS before the load".into(), report::mb(before)]);
    t.row(["gateway RSS peak during the load (100 ms samples)".into(), show(during)]);
    if args.after_secs > EARLY.as_secs() {
        t.row([format!("gateway RSS {} s after the load", EARLY.as_secs()), show(at(EARLY))]);
    }
    t.row([format!("gateway RSS {} s after the load", args.after_secs), show(at(Duration::from_secs(args.after_secs)))]);
    t.row(["gateway peak RSS since it started (VmHWM)".into(), report::mb(peak_since_start)]);
}

fn stalled_rows(t: &mut Table, load: &Load, samples: &[Sample], drained: &[(usize, usize, u64, String)]) {
    let released = samples.iter().find(|s| s.server.is_none_or(|e| e.state != TCP_ESTABLISHED || e.inode == 0));
    let when = match released {
        Some(s) => {
            let state = s
                .server
                .map_or("gone".into(), |e| format!("{}, {} unsent", procfs::tcp_state_name(e.state), report::mb(e.tx_queue / 1024)));
            let offset = s.at.saturating_duration_since(load.start).as_secs_f64();
            format!("at +{offset:.1} s after the first UPDATE (then: {state})")
        }
        None => "never while watched (still ESTABLISHED, held by the gateway)".into(),
    };
    t.row(["stalled socket: gateway let go of it".into(), when]);
    let max_tx = samples.iter().filter_map(|s| s.server.map(|e| e.tx_queue)).max().unwrap_or(0);
    let max_rx = samples.iter().filter_map(|s| s.client.map(|e| e.rx_queue)).max().unwrap_or(0);
    t.row([
        "stalled socket: most bytes in kernel buffers".into(),
        format!("{} gateway send queue, {} client receive queue", report::mb(max_tx / 1024), report::mb(max_rx / 1024)),
    ]);
    for (_, changes, bytes, end) in drained {
        t.row(["stalled socket, read at the end".into(), format!("{changes} changes ({}), then {end}", report::mb(bytes / 1024))]);
    }
}
