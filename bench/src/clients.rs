//! The hidden `clients` subcommand: a client process that holds thousands
//! of sockets for the tool, which re-executes itself to get several of them
//! (one process could not hold 10,000+ sockets under its open-files limit,
//! and several use both cores).
//!
//! Owns the command loop (one JSON command per stdin line, one JSON event per
//! stdout line, see `wire`), minting each socket's tokens, bounding how many
//! connects are in flight, and the socket tasks' lifetimes. End of stdin, or
//! the process's own time bound, closes every socket and exits; the tool's
//! death kills it (parent-death signal, set by `fleet`). `main` has raised
//! its open-files limit already.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rowcast::auth::Minter;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::socket::{self, Identity, Ws};
use crate::tally::Tally;
use crate::wire::{Command, Event, Filter, JoinOutcome, Mode, Plan};

/// Handshakes in flight per process: enough to keep the gateway busy,
/// few enough not to overflow its accept backlog.
const CONNECTS_IN_FLIGHT: usize = 64;
/// Longest one socket may take to connect and subscribe.
const JOIN_WAIT: Duration = Duration::from_secs(30);
/// Longest one `Open` may take in all.
const OPEN_WAIT: Duration = Duration::from_secs(600);
/// Longest `CloseAll` waits for the sockets' close handshakes.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// A client process never outlives this, whatever the tool does.
const LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// Token lifetime: longer than any run.
const TOKEN_TTL: i64 = 6 * 3600;

/// Runs the command loop until stdin ends.
pub async fn run() -> anyhow::Result<()> {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_events(out_rx));
    let mut process = Process::new(out_tx);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let deadline = Instant::now() + LIFETIME;
    loop {
        let line = tokio::select! {
            // The tool's next command; end of input means stop.
            line = lines.next_line() => line?,
            // The bound on the whole process.
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some(line) = line else { break };
        process.handle(serde_json::from_str(&line)?).await;
    }
    process.close_all().await;
    drop(process);
    let _ = tokio::time::timeout(CLOSE_WAIT, writer).await;
    Ok(())
}

/// Writes events to stdout, one line each, flushed at once.
async fn write_events(mut events: mpsc::UnboundedReceiver<Event>) {
    let mut out = tokio::io::stdout();
    while let Some(event) = events.recv().await {
        let mut line = serde_json::to_string(&event).expect("events serialize");
        line.push('\n');
        if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
            return;
        }
    }
}

/// The sockets of this process.
struct Process {
    tally: Arc<Tally>,
    tasks: JoinSet<()>,
    /// Flipped to ask every following socket to close.
    closing: watch::Sender<bool>,
    /// Stalled sockets, untouched until `Drain`.
    parked: Arc<Mutex<Vec<(usize, Ws)>>>,
}

/// Everything one socket task needs.
struct Job {
    index: usize,
    addr: SocketAddr,
    apikey: Arc<str>,
    token: String,
    plan: Arc<Plan>,
    gate: Arc<Semaphore>,
    tally: Arc<Tally>,
    closing: watch::Receiver<bool>,
    parked: Arc<Mutex<Vec<(usize, Ws)>>>,
}

impl Process {
    fn new(out: mpsc::UnboundedSender<Event>) -> Process {
        Process { tally: Tally::new(out), tasks: JoinSet::new(), closing: watch::channel(false).0, parked: Arc::default() }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Open { addr, secret, first, count, plan } => {
                let opened = self.open(addr, &secret, first, count, plan).await;
                self.tally.emit(opened);
            }
            Command::CloseAll => {
                let count = self.close_all().await;
                self.tally.emit(Event::Closed { count });
            }
            Command::Drain { timeout_ms } => self.drain(Duration::from_millis(timeout_ms)).await,
            Command::Report => self.tally.emit(self.tally.report()),
            Command::Take => self.tally.emit(self.tally.take()),
        }
    }

    /// Starts one task per socket and waits until each has an outcome.
    async fn open(&mut self, addr: SocketAddr, secret: &str, first: usize, count: usize, plan: Plan) -> Event {
        let started = Instant::now();
        let verifier = Minter::new(secret);
        let apikey: Arc<str> = verifier.mint(None, "anon", TOKEN_TTL).into();
        let (plan, gate) = (Arc::new(plan), Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT)));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        for index in first..first + count {
            let token = verifier.mint(Some(&format!("u{}", plan.user_of(index))), "authenticated", TOKEN_TTL);
            let job = Job {
                index,
                addr,
                apikey: apikey.clone(),
                token,
                plan: plan.clone(),
                gate: gate.clone(),
                tally: self.tally.clone(),
                closing: self.closing.subscribe(),
                parked: self.parked.clone(),
            };
            self.tasks.spawn(run_socket(job, done_tx.clone()));
        }
        drop(done_tx);
        let outcomes = collect(done_rx, count, started + OPEN_WAIT).await;
        self.summarize(outcomes, count, plan.mode, started)
    }

    fn summarize(&self, outcomes: Vec<Result<JoinOutcome, String>>, count: usize, mode: Mode, started: Instant) -> Event {
        let subscribed = outcomes.iter().filter(|o| o.as_ref().is_ok_and(socket::is_subscribed)).count();
        let mut errors: Vec<String> = Vec::new();
        for o in &outcomes {
            let text = match o {
                Ok(j) if socket::is_subscribed(j) => continue,
                Ok(j) => format!("{} / {}", j.reply, j.system.as_deref().unwrap_or("no system message")),
                Err(e) => e.clone(),
            };
            if errors.len() < 5 && !errors.contains(&text) {
                errors.push(text);
            }
        }
        if outcomes.len() < count {
            errors.push(format!("{} sockets had no outcome within {} s", count - outcomes.len(), OPEN_WAIT.as_secs()));
        }
        if mode == Mode::Count {
            self.tally.expect_more(subscribed);
        }
        let joins = if mode == Mode::Count { Vec::new() } else { outcomes.into_iter().flatten().collect() };
        Event::Opened { subscribed, failed: count - subscribed, errors, joins, millis: started.elapsed().as_millis() as u64 }
    }

    /// Closes every socket; returns how many tasks ended.
    async fn close_all(&mut self) -> usize {
        let _ = self.closing.send(true);
        self.parked.lock().expect("parked lock").clear();
        let mut ended = 0;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while self.tasks.join_next().await.is_some() {
                ended += 1;
            }
        })
        .await;
        self.tasks.shutdown().await;
        self.closing = watch::channel(false).0;
        ended
    }

    /// Reads each stalled socket in turn and reports what it held.
    async fn drain(&mut self, limit: Duration) {
        let parked = std::mem::take(&mut *self.parked.lock().expect("parked lock"));
        for (socket, ws) in parked {
            let d = socket::drain(ws, limit).await;
            self.tally.emit(Event::Drained { socket, changes: d.changes, bytes: d.bytes, end: d.end });
        }
    }
}

/// Waits for `count` outcomes or the deadline, whichever is first.
async fn collect(
    mut done: mpsc::UnboundedReceiver<Result<JoinOutcome, String>>,
    count: usize,
    deadline: Instant,
) -> Vec<Result<JoinOutcome, String>> {
    let mut outcomes = Vec::with_capacity(count);
    while outcomes.len() < count {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(o)) => outcomes.push(o),
            Ok(None) | Err(_) => break,
        }
    }
    outcomes
}

/// One socket from connect to end: subscribe (holding a connect slot), say
/// how it went, then follow or stall.
async fn run_socket(job: Job, done: mpsc::UnboundedSender<Result<JoinOutcome, String>>) {
    let filter = match &job.plan.filter {
        Filter::None => None,
        Filter::OwnUser | Filter::OwnUserTabs { .. } => Some(format!("user_id=eq.u{}", job.plan.user_of(job.index))),
        Filter::Fixed { text } => Some(text.clone()),
    };
    let id = Identity {
        index: job.index,
        addr: job.addr,
        apikey: &job.apikey,
        token: &job.token,
        channel: &job.plan.channel,
        table: &job.plan.table,
        filter: filter.as_deref(),
    };
    let opened = {
        let _slot = job.gate.acquire().await;
        tokio::time::timeout(JOIN_WAIT, socket::open(&id)).await
    };
    let (ws, outcome) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return drop(done.send(Err(e))),
        Err(_) => return drop(done.send(Err(format!("not subscribed within {} s", JOIN_WAIT.as_secs())))),
    };
    let _ = done.send(Ok(outcome));
    match job.plan.mode {
        Mode::Stall => job.parked.lock().expect("parked lock").push((job.index, ws)),
        mode => socket::follow(ws, job.index, mode, job.tally, job.closing).await,
    }
}
