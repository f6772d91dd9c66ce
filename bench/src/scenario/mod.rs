//! The measurements, one module each, and what they share: where the
//! gateway binary is, how many client processes to use, the common lines of
//! every report, and a meter of CPU time and wall time.
//!
//! Each scenario starts its own Postgres and gateway (`Stack`), or uses the
//! ones given on the command line, and its client processes (`Fleet`),
//! prints its tables, and stops what it started, also on error.

pub mod connections;
pub mod fanout;
pub mod hostile;
pub mod jobs;
pub mod latency;
pub mod owned;
pub mod polling;
pub mod stall;
pub mod throughput;
pub mod writers;

use std::path::PathBuf;
use std::time::Instant;

use crate::fleet::Fleet;
use crate::record::Record;
use crate::report;
use crate::stack::{Given, Stack};

/// What every scenario needs from the command line.
pub struct Env {
    /// The gateway binary under test.
    pub rowcast_bin: PathBuf,
    /// The database and gateway to use instead of starting them.
    pub given: Given,
    /// Client processes for the scenarios with many sockets.
    pub procs: usize,
    /// Where each scenario writes its JSON and SVG.
    pub out: PathBuf,
}

/// Starts a scenario's record and prints its header: machine, gateway,
/// Postgres, then `params`.
pub fn record(scenario: &'static str, title: &str, stack: &Stack, params: String) -> Record {
    Record::new(
        scenario,
        title,
        vec![
            ("machine", crate::procfs::machine()),
            ("gateway", stack.describe()),
            ("postgres", stack.describe_postgres()),
            ("parameters", params),
        ],
    )
}

/// CPU seconds of the gateway and the clients, and wall time, since `start`.
pub struct Meter {
    gateway: f64,
    clients: f64,
    wall: Instant,
}

impl Meter {
    /// Starts measuring now.
    pub fn start(stack: &Stack, fleet: &Fleet) -> Meter {
        Meter { gateway: stack.cpu_secs(), clients: fleet.cpu_secs(), wall: Instant::now() }
    }

    /// Rows for a table: gateway CPU, client CPU, wall time, labelled with `span`.
    pub fn rows(&self, stack: &Stack, fleet: &Fleet, span: &str) -> Vec<[String; 2]> {
        vec![
            [format!("gateway CPU, {span}"), report::secs(stack.cpu_secs() - self.gateway)],
            [format!("client processes CPU, {span}"), report::secs(fleet.cpu_secs() - self.clients)],
            [format!("wall time, {span}"), report::secs(self.wall.elapsed().as_secs_f64())],
        ]
    }
}
