//! `rowcast-bench`: measures the rowcast gateway as a separate OS process,
//! the way it runs in production, with clients in other processes.
//!
//! Crate map:
//! - `scenario`: the measurements (connections, fanout, stall, hostile-filter, jobs).
//! - `stack`: a private Postgres and the gateway binary under test.
//! - `fleet`: the tool's side of its client processes.
//! - `gatewaylog`: when the gateway read each change, from its JSON log (pure).
//! - `clients`: the client process (hidden `clients` subcommand), `socket`: one client socket.
//! - `tally`: a client process's count of deliveries.
//! - `wire`: the line protocol between the tool and its client processes.
//! - `phoenix`: the Phoenix v2 frames a client sends and reads (pure).
//! - `procfs`: memory, CPU time and TCP state from `/proc` (pure parsers).
//! - `report`: tables and units (pure).
//!
//! Everything runs on 127.0.0.1; every wait has a bound; the tool stops its
//! client processes, the gateway and Postgres when it ends, also on error or
//! Ctrl-C, and they die with it if it is killed.

mod clients;
mod fleet;
mod gatewaylog;
mod phoenix;
mod procfs;
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
use scenario::{connections, fanout, hostile, jobs, stall, Env};

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
    /// Every scenario in order, with its defaults.
    All,
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
    let env = Env { rowcast_bin: gateway_binary(cli.rowcast_bin)?, procs: cli.procs.into() };
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
        Cmd::All => {
            bounded("connections", connections::run(&env, &connections::Args::parse_from(["connections"]))).await?;
            bounded("fanout", fanout::run(&env, &fanout::Args::parse_from(["fanout"]))).await?;
            bounded("stall", stall::run(&env, &stall::Args::parse_from(["stall"]))).await?;
            bounded("hostile-filter", hostile::run(&env, &hostile::Args::parse_from(["hostile-filter"]))).await?;
            bounded("jobs", jobs::run(&env, &jobs::Args::parse_from(["jobs"]))).await
        }
        Cmd::Clients => unreachable!("handled in main"),
    }
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
