//! `rowcast-bench`: measures the rowcast gateway as a separate OS process,
//! the way it runs in production, with clients in other processes.
//!
//! Crate map:
//! - `scenario`: the measurements (connections, fanout, stall, hostile-filter,
//!   latency, polling, throughput, writer-cost, jobs; `owned` is the per-user
//!   workload the middle three share).
//! - `poller`: clients that poll the REST snapshot (`polling`).
//! - `stack`: the Postgres and gateway under test, started by the tool or given.
//! - `fleet`: the tool's side of its client processes.
//! - `gatewaylog`: when the gateway read each change, from its JSON log (pure).
//! - `clients`: the client process (hidden `clients` subcommand), `socket`: one client socket.
//! - `tally`: a client process's count of deliveries.
//! - `wire`: the line protocol between the tool and its client processes.
//! - `phoenix`: the Phoenix v2 frames a client sends and reads (pure).
//! - `procfs`: memory, CPU time and TCP state from `/proc` (pure parsers).
//! - `report`: tables and units (pure), `plot`: SVG charts (pure),
//!   `record`: a scenario's JSON and SVG files, `progress`: the progress bar.
//!
//! Everything runs on 127.0.0.1; every wait has a bound; the tool stops its
//! client processes, the gateway and Postgres when it ends, also on error or
//! Ctrl-C, and they die with it if it is killed.

mod clients;
mod fleet;
mod gatewaylog;
mod phoenix;
mod plot;
mod poller;
mod procfs;
mod progress;
mod record;
mod report;
mod scenario;
mod socket;
mod stack;
mod tally;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use scenario::{connections, fanout, hostile, jobs, latency, polling, stall, throughput, writers, Env};

/// No scenario may run longer than this.
const SCENARIO_LIMIT: Duration = Duration::from_secs(30 * 60);

#[derive(Parser)]
#[command(name = "rowcast-bench", about = "Load and robustness measurements of the rowcast gateway, run as a separate process")]
struct Cli {
    /// The gateway binary to measure [default: `rowcast` next to this binary].
    #[arg(long, global = true)]
    rowcast_bin: Option<PathBuf>,
    /// Client processes that hold the sockets (connections, fanout).
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    procs: u16,
    /// Where each scenario writes `<scenario>.json` and `<scenario>.svg`.
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
    #[command(flatten)]
    given: stack::Given,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Gateway memory per idle subscribed socket.
    Connections(connections::Args),
    /// Latency of one change to every one of N subscribers.
    Fanout(fanout::Args),
    /// A client that stops reading: memory, other clients, when it is closed.
    Stall(stall::Args),
    /// A pathological `like` filter next to an ordinary client.
    HostileFilter(hostile::Args),
    /// The job runner's drain rate and pickup, beside graphile-worker.
    Jobs(jobs::Args),
    /// Commit -> client for many users under a steady write rate.
    Latency(latency::Args),
    /// The same workload pushed over sockets and polled from REST.
    Polling(polling::Args),
    /// Authorised deliveries per second, raised until the gateway saturates.
    Throughput(throughput::Args),
    /// Writer commits/s with capture off, a naive NOTIFY trigger and rowcast capture.
    WriterCost(writers::Args),
    /// Every scenario in order, with its defaults (or tiny ones with --smoke).
    All {
        /// A few seconds per scenario, no targets meant: proves the tool still runs (CI).
        #[arg(long)]
        smoke: bool,
    },
    /// A client process (started by the tool itself).
    #[command(hide = true)]
    Clients,
}

fn main() -> anyhow::Result<()> {
    procfs::raise_nofile();
    let cli = Cli::parse();
    // One thread per process: the gateway under test gets the cores it asks
    // for, and each client process is one more runnable thread.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Cmd::Clients = cli.command {
        procfs::stand_aside();
        return runtime.block_on(clients::run());
    }
    let env = Env { rowcast_bin: gateway_binary(cli.rowcast_bin)?, given: cli.given, procs: cli.procs.into(), out: cli.out };
    runtime.block_on(until_interrupted(run(env, cli.command)))
}

/// Runs `work`, or stops it (dropping everything it started) on Ctrl-C or SIGTERM.
async fn until_interrupted(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        // The measurements ran to the end or failed.
        result = work => result,
        // Ctrl-C in a terminal.
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        // Someone stopping us.
        _ = term.recv() => bail!("terminated"),
    }
}

async fn run(env: Env, command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Connections(a) => bounded("connections", connections::run(&env, &a)).await,
        Cmd::Fanout(a) => bounded("fanout", fanout::run(&env, &a)).await,
        Cmd::Stall(a) => bounded("stall", stall::run(&env, &a)).await,
        Cmd::HostileFilter(a) => bounded("hostile-filter", hostile::run(&env, &a)).await,
        Cmd::Jobs(a) => bounded("jobs", jobs::run(&env, &a)).await,
        Cmd::Latency(a) => bounded("latency", latency::run(&env, &a)).await,
        Cmd::Polling(a) => bounded("polling", polling::run(&env, &a)).await,
        Cmd::Throughput(a) => bounded("throughput", throughput::run(&env, &a)).await,
        Cmd::WriterCost(a) => bounded("writer-cost", writers::run(&env, &a)).await,
        Cmd::All { smoke } => all(&env, smoke).await,
        Cmd::Clients => unreachable!("handled in main"),
    }
}

/// Every scenario, with its defaults or, for `smoke`, a few seconds' worth each.
async fn all(env: &Env, smoke: bool) -> anyhow::Result<()> {
    let args = |full: &[&'static str], small: &[&'static str]| -> Vec<&'static str> {
        full.iter().chain(if smoke { small } else { &[] }).copied().collect()
    };
    let a = args(&["connections"], &["--sockets", "200"]);
    bounded("connections", connections::run(env, &connections::Args::parse_from(a))).await?;
    let a = args(&["fanout"], &["--subscribers", "200", "--changes", "5", "--interval-ms", "50"]);
    bounded("fanout", fanout::run(env, &fanout::Args::parse_from(a))).await?;
    let a = args(&["stall"], &["--rows", "50", "--row-kb", "20", "--after-secs", "2"]);
    bounded("stall", stall::run(env, &stall::Args::parse_from(a))).await?;
    let a = args(&["hostile-filter"], &["--timeout-secs", "10"]);
    bounded("hostile-filter", hostile::run(env, &hostile::Args::parse_from(a))).await?;
    let a = args(&["latency"], &["--users", "50", "--rate", "100", "--secs", "2"]);
    bounded("latency", latency::run(env, &latency::Args::parse_from(a))).await?;
    let a = args(&["polling"], &["--users", "50", "--rate", "50", "--secs", "2", "--interval-secs", "0.5"]);
    bounded("polling", polling::run(env, &polling::Args::parse_from(a))).await?;
    let a = args(&["throughput"], &["--users", "20", "--tabs", "5", "--rates", "500,1000", "--step-secs", "1"]);
    bounded("throughput", throughput::run(env, &throughput::Args::parse_from(a))).await?;
    let a = args(&["writer-cost"], &["--secs", "0.5", "--repeats", "1", "--writers", "1,4"]);
    bounded("writer-cost", writers::run(env, &writers::Args::parse_from(a))).await?;
    let a = args(&["jobs"], &["--jobs", "200", "--samples", "10", "--backlog", "1000"]);
    bounded("jobs", jobs::run(env, &jobs::Args::parse_from(a))).await
}

/// `work` with the scenario time limit.
async fn bounded(name: &str, work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(SCENARIO_LIMIT, work)
        .await
        .with_context(|| format!("{name} took longer than {} min", SCENARIO_LIMIT.as_secs() / 60))?
}

/// `--rowcast-bin`, else `rowcast` next to this binary (`target/release/rowcast`).
fn gateway_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?.parent().context("this binary has a directory")?.join("rowcast"),
    };
    if !path.is_file() {
        bail!(
            "no gateway binary at {}: build it with `cargo build --release` at the repository root, or pass --rowcast-bin",
            path.display()
        );
    }
    Ok(path)
}
