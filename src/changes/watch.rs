//! Tables captured only while watched (migration 0028): raising their
//! watch horizon before a join says `ok`, and keeping it raised while this
//! gateway has subscribers for them.
//!
//! Owns the list of such tables (`rowcast.tables.watch_seq`), when this
//! gateway last raised each horizon, and the wait that makes a raise safe:
//! a writer whose statement read the old horizon skipped capture, and holds
//! a transaction id, so `arm` waits (at most `ARM_WAIT`) for every
//! transaction open right after the raise to end. Changes committed after
//! that are captured. Does not know about channels: callers say which
//! places (schema, table or every table) a join reads, and which tables
//! still have subscribers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Longest a join waits for transactions that may have skipped capture.
pub const ARM_WAIT: Duration = Duration::from_secs(2);
/// Shortest time a table stays captured after its last subscriber left.
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// A table captured while watched.
#[derive(Debug, Clone, PartialEq)]
struct Watched {
    schema: String,
    table: String,
    /// Its sequence, as `regclass` text.
    seq: String,
}

/// Cheap-clone handle; one per gateway.
#[derive(Clone)]
pub struct Watches {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    ttl: Duration,
    tables: RwLock<Vec<Watched>>,
    /// Sequence to when this gateway's last raise lapses (its local estimate).
    raised: Mutex<HashMap<String, Instant>>,
}

/// Why raising a horizon failed.
#[derive(Debug, thiserror::Error)]
#[error("raising a watch horizon: {0}")]
pub struct WatchError(#[from] sqlx::Error);

const LOAD: &str = "select n.nspname::text, c.relname::text, t.watch_seq::text from rowcast.tables t
    join pg_class c on c.oid = t.relid join pg_namespace n on n.oid = c.relnamespace where t.watch_seq is not null";
/// Raises `$1`'s horizon to `$2` seconds from now, never lowering it.
const RAISE: &str = "select setval($1::regclass, greatest(coalesce(pg_sequence_last_value($1::regclass), 0),
    ceil(extract(epoch from clock_timestamp()))::bigint + $2))";
/// Transactions of `$1` (a snapshot) still open.
const STILL_OPEN: &str = "select count(*) from pg_snapshot_xip($1::text::pg_snapshot) x where pg_xact_status(x) = 'in progress'";

impl Watches {
    /// Horizons `ttl` ahead (at least `MIN_TTL`).
    pub fn new(pool: PgPool, ttl: Duration) -> Watches {
        let inner = Inner { pool, ttl: ttl.max(MIN_TTL), tables: RwLock::default(), raised: Mutex::default() };
        Watches { inner: Arc::new(inner) }
    }

    /// Rereads which tables are captured only while watched.
    pub async fn load(&self) -> Result<(), WatchError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(LOAD).fetch_all(&self.inner.pool).await?;
        *self.inner.tables.write().expect("watch lock poisoned") =
            rows.into_iter().map(|(schema, table, seq)| Watched { schema, table, seq }).collect();
        Ok(())
    }

    /// Makes sure every watched table a join `reads` (by schema and table)
    /// is captured from now on: raises its horizon unless this gateway's last
    /// raise has more than half its ttl to run, then waits out the writers
    /// that may have skipped capture.
    pub async fn arm(&self, reads: impl Fn(&str, &str) -> bool) -> Result<(), WatchError> {
        let seqs = self.sequences(reads);
        if seqs.is_empty() {
            return Ok(());
        }
        let mut raised = self.inner.raised.lock().await;
        let fresh = Instant::now() + self.inner.ttl / 2;
        let stale: Vec<String> = seqs.into_iter().filter(|s| raised.get(s).is_none_or(|until| *until < fresh)).collect();
        if stale.is_empty() {
            return Ok(());
        }
        for seq in &stale {
            self.raise(seq, &mut raised).await?;
        }
        self.wait_out_open_writers().await
    }

    /// Raises the horizon of every watched table that `watched` says still
    /// has subscribers here; call more often than half the ttl.
    pub async fn keep_up(&self, watched: impl Fn(&str, &str) -> bool) -> Result<(), WatchError> {
        let seqs = self.sequences(watched);
        let mut raised = self.inner.raised.lock().await;
        let now = Instant::now();
        for seq in &seqs {
            if raised.get(seq).is_some_and(|until| *until < now) {
                warn!(table = %seq, "a watched table's horizon lapsed while it had subscribers: changes meanwhile were not captured");
            }
            self.raise(seq, &mut raised).await?;
        }
        Ok(())
    }

    /// Runs `keep_up` (and a reload of the table list) every quarter ttl until `stop`.
    pub async fn run(self, watched: impl Fn(&str, &str) -> bool, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.inner.ttl / 4) => {}
            }
            if let Err(e) = self.load().await {
                warn!(error = %e, "reloading the watched tables failed; keeping the last list");
            }
            if let Err(e) = self.keep_up(&watched).await {
                warn!(error = %e, "keeping watched tables captured failed; retrying at the next tick");
            }
        }
    }

    fn sequences(&self, matches: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let tables = self.inner.tables.read().expect("watch lock poisoned");
        tables.iter().filter(|w| matches(&w.schema, &w.table)).map(|w| w.seq.clone()).collect()
    }

    async fn raise(&self, seq: &str, raised: &mut HashMap<String, Instant>) -> Result<(), WatchError> {
        let asked = Instant::now();
        sqlx::query(RAISE).bind(seq).bind(self.inner.ttl.as_secs() as i64).execute(&self.inner.pool).await?;
        // Counted from before the call, and a second short for the ceiling's rounding.
        raised.insert(seq.to_owned(), asked + self.inner.ttl - Duration::from_secs(1));
        Ok(())
    }

    /// Waits (at most `ARM_WAIT`) until every transaction open now has ended.
    async fn wait_out_open_writers(&self) -> Result<(), WatchError> {
        let (snapshot,): (String,) = sqlx::query_as("select pg_current_snapshot()::text").fetch_one(&self.inner.pool).await?;
        let deadline = Instant::now() + ARM_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let (open,): (i64,) = sqlx::query_as(STILL_OPEN).bind(&snapshot).fetch_one(&self.inner.pool).await?;
            if open == 0 {
                return Ok(());
            }
            if Instant::now() + pause > deadline {
                warn!(open, "transactions open when a watched table was armed are still open; the join goes ahead");
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}
