//! The tool's side of its client processes: spawn them (the tool's own
//! binary, hidden `clients` subcommand), send commands, wait for events, and
//! stop them.
//!
//! Every wait here has a deadline and ends early if a client process dies.
//! A client process gets SIGKILL when the tool dies (parent-death signal)
//! and when its `Fleet` is dropped, so an error anywhere leaves no clients
//! behind. What the clients do with sockets is `clients`' business.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::wire::{Command, Event, JoinOutcome, Plan, SeqStats};

/// Longest a client process may take to exit once its stdin is closed.
const EXIT_WAIT: Duration = Duration::from_secs(15);
/// Longest an `Open` may take: a little over the client process's own bound.
const OPEN_WAIT: Duration = Duration::from_secs(660);

/// The client processes.
pub struct Fleet {
    procs: Vec<Proc>,
    notes: mpsc::UnboundedReceiver<Note>,
    /// Events read while waiting for other ones.
    backlog: VecDeque<(usize, Event)>,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

enum Note {
    Event(usize, Event),
    Exited(usize),
}

/// The merged outcome of an `Open` over several processes.
#[derive(Debug, Default)]
pub struct Opened {
    pub subscribed: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub joins: Vec<JoinOutcome>,
    /// The slowest process's time to open its share.
    pub millis: u64,
}

/// The merged counts of every process.
#[derive(Debug, Default)]
pub struct Counts {
    /// Counting sockets that subscribed.
    pub expected: usize,
    pub seqs: BTreeMap<i64, SeqStats>,
    pub closed: BTreeMap<String, usize>,
}

impl Fleet {
    /// Starts `n` client processes.
    pub fn spawn(n: usize) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("finding this tool's own binary")?;
        let (tx, notes) = mpsc::unbounded_channel();
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            procs.push(spawn_one(&exe, i, tx.clone())?);
        }
        Ok(Fleet { procs, notes, backlog: VecDeque::new() })
    }

    /// How many client processes there are.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// CPU seconds the client processes have used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.procs.iter().filter_map(|p| crate::procfs::cpu_secs(p.pid).ok()).sum()
    }

    /// Sends `command` to process `i`.
    pub async fn send(&mut self, i: usize, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        let stdin = self.procs[i].stdin.as_mut().context("client process already told to stop")?;
        stdin.write_all(line.as_bytes()).await.with_context(|| format!("writing to client process {i}"))?;
        stdin.flush().await?;
        Ok(())
    }

    /// The next event, `None` at the deadline; an error if a process died.
    pub async fn next_until(&mut self, deadline: Instant) -> anyhow::Result<Option<(usize, Event)>> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(Some(e));
        }
        match tokio::time::timeout_at(deadline, self.notes.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(Note::Event(i, e))) => Ok(Some((i, e))),
            Ok(Some(Note::Exited(i))) => bail!("client process {i} exited unexpectedly (see its stderr above)"),
            Ok(None) => bail!("every client process is gone"),
        }
    }

    /// Waits for the first event of process `i` that `pick` accepts; other
    /// events stay queued for later waits.
    async fn expect<T>(
        &mut self,
        i: usize,
        deadline: Instant,
        what: &str,
        mut pick: impl FnMut(Event) -> Result<T, Event>,
    ) -> anyhow::Result<T> {
        let mut skipped = Vec::new();
        let found = loop {
            let Some((from, event)) = self.next_until(deadline).await? else { break None };
            if from != i {
                skipped.push((from, event));
                continue;
            }
            match pick(event) {
                Ok(t) => break Some(t),
                Err(event) => skipped.push((from, event)),
            }
        };
        for e in skipped.into_iter().rev() {
            self.backlog.push_front(e);
        }
        found.with_context(|| format!("client process {i}: no {what} in time"))
    }

    /// Opens `count` sockets numbered from `first` on process `i`.
    pub async fn open_on(
        &mut self,
        i: usize,
        addr: SocketAddr,
        secret: &str,
        first: usize,
        count: usize,
        plan: &Plan,
    ) -> anyhow::Result<Opened> {
        let command = Command::Open { addr, secret: secret.to_owned(), first, count, plan: plan.clone() };
        self.send(i, &command).await?;
        self.expect(i, Instant::now() + OPEN_WAIT, "open outcome", pick_opened).await
    }

    /// Opens `total` sockets spread evenly over every process, in parallel.
    pub async fn open(&mut self, addr: SocketAddr, secret: &str, total: usize, plan: &Plan) -> anyhow::Result<Opened> {
        let n = self.len();
        let shares: Vec<(usize, usize)> = (0..n).map(|i| (i * total / n, (i + 1) * total / n - i * total / n)).collect();
        for (i, &(first, count)) in shares.iter().enumerate() {
            let command = Command::Open { addr, secret: secret.to_owned(), first, count, plan: plan.clone() };
            self.send(i, &command).await?;
        }
        let deadline = Instant::now() + OPEN_WAIT;
        let mut merged = Opened::default();
        let bar = crate::progress::bar(total as u64, "sockets subscribed");
        for (i, &(_, count)) in shares.iter().enumerate() {
            let part = self.expect(i, deadline, "open outcome", pick_opened).await?;
            bar.inc(count as u64);
            merge_opened(&mut merged, part);
        }
        bar.finish_and_clear();
        Ok(merged)
    }

    /// Closes every socket of every process (close handshakes included).
    pub async fn close_all(&mut self) -> anyhow::Result<usize> {
        let mut closed = 0;
        for i in 0..self.len() {
            self.send(i, &Command::CloseAll).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.len() {
            closed +=
                self.expect(i, deadline, "close outcome", |e| if let Event::Closed { count } = e { Ok(count) } else { Err(e) }).await?;
        }
        Ok(closed)
    }

    /// Asks process `i` to read its stalled sockets; returns one line per socket.
    pub async fn drain(&mut self, i: usize, limit: Duration, sockets: usize) -> anyhow::Result<Vec<(usize, usize, u64, String)>> {
        self.send(i, &Command::Drain { timeout_ms: limit.as_millis() as u64 }).await?;
        let deadline = Instant::now() + limit * sockets as u32 + Duration::from_secs(10);
        let mut out = Vec::new();
        for _ in 0..sockets {
            let d = self
                .expect(i, deadline, "drain outcome", |e| match e {
                    Event::Drained { socket, changes, bytes, end } => Ok((socket, changes, bytes, end)),
                    other => Err(other),
                })
                .await?;
            out.push(d);
        }
        Ok(out)
    }

    /// Every process's counts, merged.
    pub async fn counts(&mut self) -> anyhow::Result<Counts> {
        self.gather(Command::Report).await
    }

    /// Every process's counts, merged; the processes forget the changes.
    pub async fn take(&mut self) -> anyhow::Result<Counts> {
        self.gather(Command::Take).await
    }

    async fn gather(&mut self, command: Command) -> anyhow::Result<Counts> {
        for i in 0..self.len() {
            self.send(i, &command).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut merged = Counts::default();
        for i in 0..self.len() {
            let (expected, seqs, closed) = self
                .expect(i, deadline, "report", |e| match e {
                    Event::Report { expected, seqs, closed } => Ok((expected, seqs, closed)),
                    other => Err(other),
                })
                .await?;
            merge_counts(&mut merged, expected, seqs, closed);
        }
        Ok(merged)
    }

    /// Closes the processes' stdin (they close their sockets and exit),
    /// waits for them (bounded), kills any that linger.
    pub async fn shutdown(mut self) {
        for p in &mut self.procs {
            p.stdin = None;
        }
        for p in &mut self.procs {
            if tokio::time::timeout(EXIT_WAIT, p.child.wait()).await.is_err() {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
        }
    }
}

fn spawn_one(exe: &std::path::Path, i: usize, notes: mpsc::UnboundedSender<Note>) -> anyhow::Result<Proc> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("clients").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    crate::stack::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("starting a client process")?;
    let pid = child.id().context("a just-started client has a pid")?;
    let stdout = child.stdout.take().context("client stdout")?;
    let stdin = child.stdin.take();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str(&line) {
                Ok(event) => drop(notes.send(Note::Event(i, event))),
                Err(e) => eprintln!("client process {i} sent an unreadable line ({e}): {line}"),
            }
        }
        let _ = notes.send(Note::Exited(i));
    });
    Ok(Proc { child, stdin, pid })
}

fn pick_opened(event: Event) -> Result<Opened, Event> {
    match event {
        Event::Opened { subscribed, failed, errors, joins, millis } => Ok(Opened { subscribed, failed, errors, joins, millis }),
        other => Err(other),
    }
}

fn merge_opened(into: &mut Opened, part: Opened) {
    into.subscribed += part.subscribed;
    into.failed += part.failed;
    into.millis = into.millis.max(part.millis);
    into.joins.extend(part.joins);
    for e in part.errors {
        if !into.errors.contains(&e) {
            into.errors.push(e);
        }
    }
}

fn merge_counts(into: &mut Counts, expected: usize, seqs: Vec<SeqStats>, closed: Vec<(String, usize)>) {
    into.expected += expected;
    for s in seqs {
        let m = into.seqs.entry(s.seq).or_insert(SeqStats { count: 0, ..s });
        m.count += s.count;
        m.first_us = m.first_us.min(s.first_us);
        m.last_us = m.last_us.max(s.last_us);
    }
    for (how, n) in closed {
        *into.closed.entry(how).or_default() += n;
    }
}
