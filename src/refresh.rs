//! Reloads that clients can ask for but not multiply: single-flight and
//! spaced. Owns no data; `changes::tables` and `keyring` wrap their reloads
//! in it.
//!
//! A caller asks after meeting something unknown (a table name, a key id).
//! It waits for a reload that started after it asked, sharing one already in
//! flight, and reloads start at least `every` apart, so a flood of unknown
//! names costs a few reloads a second, not one per request.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The state of one kind of reload.
pub struct Spaced {
    /// When the last reload started. A tokio mutex, held across the reload
    /// on purpose: that is what makes it single-flight.
    last: Mutex<Option<Instant>>,
    every: Duration,
    runs: AtomicU64,
}

impl Spaced {
    /// Reloads at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Spaced { last: Mutex::new(None), every, runs: AtomicU64::new(0) }
    }

    /// Waits for a reload that started after this call, running `reload`
    /// if none has; true when that reload (or a shared one) is done.
    pub async fn run<F, Fut>(&self, reload: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if last.is_some_and(|started| started >= asked) {
            return true;
        }
        if let Some(started) = *last {
            tokio::time::sleep_until(started + self.every).await;
        }
        *last = Some(Instant::now());
        self.runs.fetch_add(1, Ordering::Relaxed);
        reload().await
    }

    /// How many reloads have run.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}
