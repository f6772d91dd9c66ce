//! The per-user workload shared by `latency`, `polling` and `throughput`:
//! an owner-scoped table with one row per user, and a writer that commits
//! changes to it at a fixed rate.
//!
//! Change `k` (a global sequence number) sets `n = k` on the row of user
//! `k % users`, so every change reaches exactly that user's subscribers and
//! a row's `n` only grows. The writer commits `batch` changes per UPDATE,
//! one UPDATE per tick (`batch / rate` seconds apart, the scenario's only
//! deliberate sleeps), and stamps each commit with the wall clock when it
//! returned; if a commit overruns its tick the next one starts at once and
//! the achieved rate says so.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::progress;
use crate::socket::now_us;

/// The table, one row per user (`id` = user number, `user_id` = `u<id>`).
pub fn setup(users: usize) -> String {
    format!(
        "create table public.bench_owned (id int primary key, user_id text not null, n int not null default 0);
         insert into public.bench_owned select i, 'u' || i, 0 from generate_series(0, {}) i;
         select rowcast.enable('public.bench_owned', owner_column => 'user_id');",
        users.saturating_sub(1)
    )
}

/// The per-user workload's size, as `latency` and `polling` take it.
#[derive(clap::Args, Debug, Clone)]
pub struct Workload {
    /// Users: one row each, watched by one socket (or one poller) each.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Row updates per second, spread over the users.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
}

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Changes per second.
    pub rate: f64,
    /// Changes per UPDATE statement (and commit).
    pub batch: usize,
    /// How long to write.
    pub secs: f64,
    /// Rows (users) the changes go round.
    pub users: usize,
    /// The first sequence number.
    pub first_seq: i64,
}

/// One committed UPDATE: changes `first..first + count`.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub first: i64,
    pub count: usize,
    /// When the commit returned (Unix µs).
    pub at_us: i64,
}

/// Everything the writer committed.
#[derive(Debug, Default)]
pub struct Written {
    pub batches: Vec<Batch>,
    /// Unix µs of the first and the last commit's return.
    pub start_us: i64,
    pub end_us: i64,
}

impl Written {
    /// Changes committed.
    pub fn changes(&self) -> usize {
        self.batches.iter().map(|b| b.count).sum()
    }

    /// Changes per second achieved (from the start of the run to the last commit).
    pub fn rate(&self) -> f64 {
        self.changes() as f64 / ((self.end_us - self.start_us) as f64 / 1e6).max(1e-6)
    }

    /// Every change with its commit stamp and user number.
    pub fn each(&self, users: usize) -> impl Iterator<Item = (i64, i64, usize)> + '_ {
        self.batches.iter().flat_map(move |b| (b.first..b.first + b.count as i64).map(move |k| (k, b.at_us, k as usize % users)))
    }
}

/// Commits the changes at the pace asked, showing a progress bar in seconds.
pub async fn write(pool: &PgPool, pace: Pace) -> anyhow::Result<Written> {
    let tick = Duration::from_secs_f64(pace.batch as f64 / pace.rate);
    let total = (pace.rate * pace.secs / pace.batch as f64).round().max(1.0) as u64;
    let bar = progress::bar(pace.secs.ceil() as u64, &format!("writing {:.0} changes/s", pace.rate));
    let start = Instant::now();
    let mut written = Written { start_us: now_us(), ..Written::default() };
    let mut seq = pace.first_seq;
    let (mut ids, mut ns) = (Vec::with_capacity(pace.batch), Vec::with_capacity(pace.batch));
    for i in 0..total {
        tokio::time::sleep_until(start + tick * i as u32).await;
        ids.clear();
        ns.clear();
        for k in seq..seq + pace.batch as i64 {
            ids.push((k as usize % pace.users) as i32);
            ns.push(k as i32);
        }
        sqlx::query("update public.bench_owned b set n = v.n from unnest($1::int[], $2::int[]) as v(id, n) where b.id = v.id")
            .bind(&ids)
            .bind(&ns)
            .execute(pool)
            .await?;
        let at_us = now_us();
        written.batches.push(Batch { first: seq, count: pace.batch, at_us });
        written.end_us = at_us;
        seq += pace.batch as i64;
        bar.set_position(start.elapsed().as_secs());
    }
    bar.finish_and_clear();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written() -> Written {
        Written {
            batches: vec![Batch { first: 1, count: 3, at_us: 100 }, Batch { first: 4, count: 2, at_us: 200 }],
            start_us: 0,
            end_us: 200,
        }
    }

    #[test]
    fn a_change_takes_the_commit_stamp_of_its_batch() {
        let w = written();
        let stamps: Vec<(i64, i64)> = w.each(2).map(|(k, at, _)| (k, at)).collect();
        assert_eq!(stamps, [(1, 100), (2, 100), (3, 100), (4, 200), (5, 200)]);
        assert_eq!(w.changes(), 5);
    }

    #[test]
    fn each_change_goes_to_the_user_its_sequence_number_picks() {
        let users: Vec<usize> = written().each(2).map(|(_, _, u)| u).collect();
        assert_eq!(users, [1, 0, 1, 0, 1]);
    }
}
