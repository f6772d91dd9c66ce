//! The line protocol between the tool and its client processes: one JSON
//! object per line, commands on the child's stdin, events on its stdout.
//!
//! Owns only the shapes (serde); `fleet` writes commands and reads events,
//! `clients` does the reverse. Closing the child's stdin means "close every
//! socket and exit".

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What the tool asks of a client process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Open sockets `first..first + count` on the gateway at `addr`, each
    /// joined as described by `plan`; answered by `Event::Opened`.
    Open { addr: SocketAddr, secret: String, first: usize, count: usize, plan: Plan },
    /// Close every socket politely (close frame, wait for the server's);
    /// answered by `Event::Closed`.
    CloseAll,
    /// Start reading the stalled sockets; answered by one `Event::Drained` each.
    Drain { timeout_ms: u64 },
    /// Send what was counted so far; answered by `Event::Report`.
    Report,
    /// Send what was counted so far and forget the changes (not the
    /// closures); answered by `Event::Report`. For runs in steps.
    Take,
}

/// How a group of sockets joins and behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The channel name (topic `realtime:<channel>`).
    pub channel: String,
    /// The table in schema `public`.
    pub table: String,
    /// The binding's filter.
    pub filter: Filter,
    /// What the sockets do once subscribed.
    pub mode: Mode,
}

/// The filter of a socket's binding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Filter {
    /// No filter: every change the token may see.
    None,
    /// `user_id=eq.u<i>` for socket `i` (whose token's `sub` is `u<i>`).
    OwnUser,
    /// The same filter text for every socket.
    Fixed { text: String },
    /// Like `OwnUser`, with `tabs` sockets per user: socket `i` is user
    /// `u<i / tabs>` (a user with several tabs or devices open).
    OwnUserTabs { tabs: usize },
}

impl Plan {
    /// The user number of socket `index` (its token's `sub` is `u<n>`).
    pub fn user_of(&self, index: usize) -> usize {
        match self.filter {
            Filter::OwnUserTabs { tabs } => index / tabs.max(1),
            _ => index,
        }
    }
}

/// What a socket does once subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Read everything, heartbeat, count changes by sequence number.
    Count,
    /// Like `Count`, and report every frame to the tool as it arrives.
    Trace,
    /// Never read again (until `Drain`) and never write.
    Stall,
}

/// How one traced or stalled socket's join went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinOutcome {
    pub socket: usize,
    /// `ok`, or `error: <reason>`.
    pub reply: String,
    /// The `system` message that followed the reply, if any came.
    pub system: Option<String>,
    /// The client's local port (to find the connection in `/proc/net/tcp`).
    pub local_port: u16,
}

/// Deliveries of one change (one sequence number) in one process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SeqStats {
    pub seq: i64,
    pub count: usize,
    /// Wall-clock receive times, microseconds since the epoch.
    pub first_us: i64,
    pub last_us: i64,
}

/// What a client process tells the tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// Every socket of an `Open` has subscribed, failed or timed out.
    Opened {
        subscribed: usize,
        failed: usize,
        /// Up to five distinct failure texts.
        errors: Vec<String>,
        /// Traced and stalled sockets only.
        joins: Vec<JoinOutcome>,
        millis: u64,
    },
    /// Every counting socket of this process has received change `seq`.
    SeqDone { seq: i64 },
    /// A traced socket received a frame (heartbeat replies excepted).
    Frame { socket: usize, at_us: i64, event: String, seq: Option<i64>, message: Option<String> },
    /// Counts so far.
    Report {
        /// Counting sockets that subscribed.
        expected: usize,
        seqs: Vec<SeqStats>,
        /// Sockets the server closed or broke, by how.
        closed: Vec<(String, usize)>,
    },
    /// `CloseAll` finished.
    Closed { count: usize },
    /// What a stalled socket held when finally read, and how it ended.
    Drained { socket: usize, changes: usize, bytes: u64, end: String },
}
