//! The dispatcher's two admission checks, each counted once per batch under
//! an advisory lock so dispatchers on several runners (and `POST /e/<key>`)
//! agree: `rateLimit` windows (runs started per key per period; beyond the
//! limit an event starts no run, as Inngest skips it), and the per-user cap
//! on active runs (`max_active_per_user`, the same lock and count as
//! `rowcast.enqueue`'s admission).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Duration;

/// Takes the transaction-scoped advisory lock named `name`. Its own
/// statement: a count in a later statement then sees everything committed
/// before the lock was granted (one statement's snapshot predates its wait).
pub async fn lock(tx: &mut sqlx::PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtext($1))").bind(name).execute(&mut *tx).await?;
    Ok(())
}

/// Counts per (function, key) one batch has taken: each read from the
/// database once, after its advisory lock, then kept in memory as the batch
/// admits more.
#[derive(Default)]
struct Tally(HashMap<(String, String), i64>);

impl Tally {
    /// Whether one more fits under `limit` for `slot`, counting it if so.
    /// The first time, takes the lock `lock_name` and reads the committed
    /// count with `count` (its own statement, after the lock).
    async fn admit(
        &mut self,
        tx: &mut sqlx::PgConnection,
        lock_name: &str,
        slot: &(String, String),
        limit: i64,
        count: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<i64, sqlx::Error>,
    ) -> Result<bool, sqlx::Error> {
        let n = match self.0.entry(slot.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                lock(&mut *tx, lock_name).await?;
                v.insert(count(&mut *tx).await?)
            }
        };
        if *n >= limit {
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }
}

/// Rate-limit windows one batch has counted: starts in the window so far by
/// (function, key), and the starts this batch admitted.
#[derive(Default)]
pub struct Windows {
    tally: Tally,
    admitted: Vec<(String, String)>,
}

impl Windows {
    /// Whether one more run of `function` for `key` fits `limit` per `period`; counts it if so.
    pub async fn admit(
        &mut self,
        tx: &mut sqlx::PgConnection,
        function: &str,
        key: String,
        limit: i64,
        period: Duration,
    ) -> Result<bool, sqlx::Error> {
        let slot = (function.to_owned(), key);
        let lock_name = format!("rowcast.rate:{}:{}", slot.0, slot.1);
        let count = async |tx: &mut sqlx::PgConnection| {
            let (n,): (i64,) = sqlx::query_as(
                "select count(*) from rowcast.inngest_rate_starts s
                 where s.function_id = $1 and s.key = $2 and s.started_at > now() - make_interval(secs => $3)",
            )
            .bind(&slot.0)
            .bind(&slot.1)
            .bind(period.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
            Ok(n)
        };
        let admitted = self.tally.admit(tx, &lock_name, &slot, limit, count).await?;
        if admitted {
            self.admitted.push(slot);
        }
        Ok(admitted)
    }

    /// Stores the admitted starts, and forgets starts older than any period (24 h).
    pub async fn record(&self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if self.admitted.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "with gone as (delete from rowcast.inngest_rate_starts where started_at < now() - interval '24 hours')
             insert into rowcast.inngest_rate_starts (function_id, key) select * from unnest($1::text[], $2::text[])",
        )
        .bind(self.admitted.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>())
        .bind(self.admitted.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// Active runs per (function, owner) as one batch has counted them.
#[derive(Default)]
pub struct Active(Tally);

impl Active {
    /// Whether `owner` has room for one more active run of `function`; counts it if so.
    pub async fn admit(&mut self, tx: &mut sqlx::PgConnection, function: &str, owner: &str, limit: i32) -> Result<bool, sqlx::Error> {
        let count = async |tx: &mut sqlx::PgConnection| {
            let (n,): (i64,) = sqlx::query_as(
                "select count(*) from rowcast.jobs j where j.type = $1 and j.user_id = $2 and j.status in ('pending', 'running')",
            )
            .bind(function)
            .bind(owner)
            .fetch_one(&mut *tx)
            .await?;
            Ok(n)
        };
        let slot = (function.to_owned(), owner.to_owned());
        self.0.admit(tx, &format!("rowcast.admit:{function}:{owner}"), &slot, i64::from(limit), count).await
    }
}
