//! A database session kept by one serial task between its statements: the
//! runner's claims, and each group-commit writer.
//!
//! A pooled session is pinged when taken and again when given back (sqlx),
//! two round trips more for every statement; on the claim, whose round trip
//! sets the pace of a drain, that was a quarter of it. What the ping did (a
//! session killed by a restart is replaced before use) is done here after the
//! fact: a statement that finds its session gone runs once more on a fresh
//! one. Any failed session is given back, so the next statement takes another.

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

/// One task's session, taken from the pool when first needed.
pub struct KeptSession {
    pool: PgPool,
    session: Option<PoolConnection<Postgres>>,
}

impl KeptSession {
    /// A session of `pool`, not taken yet.
    pub fn new(pool: PgPool) -> KeptSession {
        KeptSession { pool, session: None }
    }

    /// Runs `statement` with `args` on the kept session, once more on a
    /// fresh session when the first one was gone.
    pub async fn run<A: ?Sized, T, F>(&mut self, args: &A, statement: F) -> Result<T, sqlx::Error>
    where
        F: for<'c> Fn(&'c mut PgConnection, &'c A) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        match self.once(args, &statement).await {
            Err(e) if broken(&e) => self.once(args, &statement).await,
            done => done,
        }
    }

    async fn once<A: ?Sized, T, F>(&mut self, args: &A, statement: &F) -> Result<T, sqlx::Error>
    where
        F: for<'c> Fn(&'c mut PgConnection, &'c A) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let conn = match &mut self.session {
            Some(conn) => conn,
            None => self.session.insert(self.pool.acquire().await?),
        };
        let done = statement(conn, args).await;
        if done.is_err() {
            self.session = None;
        }
        done
    }
}

/// Whether `e` says the session itself is gone (closed, terminated, shut
/// down), not that the statement failed.
fn broken(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        // Class 57P: operator intervention (terminated, shut down, restarting).
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}
