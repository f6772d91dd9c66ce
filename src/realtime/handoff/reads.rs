//! Log reads shared by resuming joins: the joins that resume from the same
//! position and find their changes no longer kept in memory share one read
//! of the log instead of one each, so a thousand clients rejoining a node
//! that started after the note cost a handful of reads.
//!
//! A read serves every join that was waiting when it started (each was made
//! live, holding, before it asked, so the read sees every change it needs
//! that is not delivered to it live). Joins that ask while a read runs wait
//! for the next one, which one of them leads. At most `CONCURRENT_READS`
//! reads run at once, across positions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{oneshot, Semaphore};
use tracing::warn;

use prometheus_client::metrics::counter::Counter;

use crate::changes::listener::{read_since, SinceRead};
use crate::changes::tables::Tables;
use crate::changes::window::Position;

/// Replays reading the log at once, at most.
pub const CONCURRENT_READS: usize = 4;
/// A waiting join reads alone after this long (a lead lost with its task).
const WAIT_AT_MOST: Duration = Duration::from_secs(10);

/// What a read found: changes with their tables (`None`: a SQL broadcast),
/// and how far it is complete.
pub type Missed = Arc<SinceRead>;

/// What a waiting join is told.
enum Turn {
    /// The read that started after it asked.
    Done(Missed),
    /// It leads the next read.
    Lead,
}

/// The log reads of resuming joins; cheap to clone.
#[derive(Clone)]
pub struct SharedReads {
    /// Per position resumed from: the joins waiting for the next read. An entry exists while a read leads.
    waiting: Arc<Mutex<HashMap<Position, Vec<oneshot::Sender<Turn>>>>>,
    turns: Arc<Semaphore>,
    /// Counts the reads made.
    reads: Counter,
}

impl SharedReads {
    /// Shared reads, counted in `reads`.
    pub fn new(reads: Counter) -> Self {
        SharedReads { waiting: Arc::default(), turns: Arc::new(Semaphore::new(CONCURRENT_READS)), reads }
    }

    /// The changes and SQL broadcasts `from` misses, read after this call began.
    pub async fn read(&self, pool: &PgPool, tables: &Tables, from: &Position) -> Missed {
        let asked = {
            let mut waiting = self.waiting.lock().expect("reads lock poisoned");
            match waiting.get_mut(from) {
                Some(joins) => {
                    let (tx, rx) = oneshot::channel();
                    joins.push(tx);
                    Some(rx)
                }
                None => {
                    waiting.insert(from.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = asked {
            match tokio::time::timeout(WAIT_AT_MOST, rx).await {
                Ok(Ok(Turn::Done(missed))) => return missed,
                Ok(Ok(Turn::Lead)) => {}
                // The lead went away: read alone.
                Ok(Err(_)) | Err(_) => return self.read_alone(pool, tables, from).await,
            }
        }
        let missed = {
            let _turn = self.turns.acquire().await.expect("the read semaphore is never closed");
            let joined =
                std::mem::take(self.waiting.lock().expect("reads lock poisoned").get_mut(from).expect("a leading read has its entry"));
            let missed = self.fetch(pool, tables, from).await;
            for tx in joined {
                let _ = tx.send(Turn::Done(Arc::clone(&missed)));
            }
            missed
        };
        self.pass_the_lead(from);
        missed
    }

    /// Hands the next read to a join that asked during this one, or ends the entry.
    fn pass_the_lead(&self, from: &Position) {
        let mut waiting = self.waiting.lock().expect("reads lock poisoned");
        let joins = waiting.get_mut(from).expect("a leading read has its entry");
        while let Some(next) = joins.pop() {
            if next.send(Turn::Lead).is_ok() {
                return;
            }
        }
        waiting.remove(from);
    }

    async fn read_alone(&self, pool: &PgPool, tables: &Tables, from: &Position) -> Missed {
        let _turn = self.turns.acquire().await.expect("the read semaphore is never closed");
        self.fetch(pool, tables, from).await
    }

    async fn fetch(&self, pool: &PgPool, tables: &Tables, from: &Position) -> Missed {
        self.reads.inc();
        Arc::new(read_since(pool, tables, from).await.unwrap_or_else(|e| {
            warn!(error = %e, "reading the changes resuming channels missed failed");
            // Complete below the lowest id the position may miss: nothing at all.
            SinceRead { changes: Vec::new(), complete_through: from.lowest().saturating_sub(1) }
        }))
    }
}
