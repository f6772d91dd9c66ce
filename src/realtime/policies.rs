//! What a private channel's token may do on its topic, as the RLS policies on
//! `realtime.messages` say: receive (SELECT) and send (INSERT), for broadcast
//! and for presence.
//!
//! Asked once per join and again on a new `access_token`, never per message,
//! in one transaction that is always rolled back (migration 0006 says how):
//! probe rows are written as the table's owner, then the token's role and
//! claims are set the way Supabase sets them, and the role reads and tries to
//! write. A policy that raises counts as a refusal, as on Supabase. At most
//! `CONCURRENT_CHECKS` run at once, so a flood of private joins cannot take
//! the pool from REST reads and the job runner.

use std::sync::Arc;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Semaphore;

use super::topic_rules::TopicRules;
use crate::auth::Principal;

/// Checks that may hold a pooled connection at the same time.
const CONCURRENT_CHECKS: usize = 4;

/// What a token may do on one private topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policies {
    pub broadcast_read: bool,
    pub broadcast_write: bool,
    pub presence_read: bool,
    pub presence_write: bool,
}

impl Policies {
    /// Supabase admits a join that may read either extension.
    pub fn may_join(&self) -> bool {
        self.broadcast_read || self.presence_read
    }
}

/// Why the policies could not be asked (not a refusal: the database failed).
#[derive(Debug, thiserror::Error)]
#[error("asking the realtime.messages policies failed: {0}")]
pub struct PolicyError(#[from] sqlx::Error);

/// Cheap-clone handle that asks the policies.
#[derive(Clone)]
pub struct PolicyCheck {
    pool: PgPool,
    permits: Arc<Semaphore>,
    /// When any are configured, they decide instead of the RLS policies.
    rules: Arc<TopicRules>,
}

const EXTENSIONS: [&str; 2] = ["broadcast", "presence"];

impl PolicyCheck {
    /// Checks against `pool`'s database, or by `rules` when there are any.
    pub fn new(pool: PgPool, rules: TopicRules) -> Self {
        PolicyCheck { pool, permits: Arc::new(Semaphore::new(CONCURRENT_CHECKS)), rules: Arc::new(rules) }
    }

    /// What `principal` may do on private topic `topic` (the sub-topic, without `realtime:`).
    pub async fn check(&self, principal: &Principal, topic: &str) -> Result<Policies, PolicyError> {
        if !self.rules.is_empty() {
            return Ok(self.rules.rights(principal, topic));
        }
        // Supabase's service_role has BYPASSRLS: every policy lets it through.
        if principal.is_service() {
            return Ok(Policies { broadcast_read: true, broadcast_write: true, presence_read: true, presence_write: true });
        }
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        let mut tx = self.pool.begin().await?;
        sqlx::query("select set_config('rowcast.probing', 'on', true)").execute(&mut *tx).await?;
        for extension in EXTENSIONS {
            sqlx::query("insert into realtime.messages (topic, extension, private) values ($1, $2, true)")
                .bind(topic)
                .bind(extension)
                .execute(&mut *tx)
                .await?;
        }
        let policies = match as_role(&mut tx, principal, topic).await {
            Ok(()) => Policies {
                broadcast_read: may(&mut tx, Probe::Read, topic, "broadcast").await,
                presence_read: may(&mut tx, Probe::Read, topic, "presence").await,
                broadcast_write: may(&mut tx, Probe::Write, topic, "broadcast").await,
                presence_write: may(&mut tx, Probe::Write, topic, "presence").await,
            },
            // No such role (a token whose role the database lacks): it may do nothing.
            Err(e) if is_refusal(&e) => Policies::default(),
            Err(e) => return Err(e.into()),
        };
        tx.rollback().await?;
        Ok(policies)
    }
}

/// What one probe tries, as the token's role.
#[derive(Clone, Copy)]
enum Probe {
    /// See the topic's probe row (the SELECT policies).
    Read,
    /// Write a row for the topic (the INSERT policies).
    Write,
}

const READ: &str = "select exists (select 1 from realtime.messages where topic = $1 and extension = $2)";
const WRITE: &str = "insert into realtime.messages (topic, extension, private) values ($1, $2, true)";

/// Becomes the token's role with its claims set, for the rest of the transaction.
async fn as_role(tx: &mut Transaction<'_, Postgres>, principal: &Principal, topic: &str) -> Result<(), sqlx::Error> {
    let claims = serde_json::Value::Object((*principal.claims).clone()).to_string();
    sqlx::query(
        "select set_config('request.jwt.claims', $1, true), set_config('request.jwt.claim.sub', $2, true),
                set_config('request.jwt.claim.role', $3, true), set_config('realtime.topic', $4, true)",
    )
    .bind(claims)
    .bind(principal.sub.as_deref().unwrap_or(""))
    .bind(&principal.role)
    .bind(topic)
    .execute(&mut **tx)
    .await?;
    sqlx::query("select set_config('role', $1, true)").bind(&principal.role).execute(&mut **tx).await?;
    Ok(())
}

/// Runs one probe inside a savepoint: true when it succeeds (and, for a read, sees a row).
async fn may(tx: &mut Transaction<'_, Postgres>, probe: Probe, topic: &str, extension: &str) -> bool {
    let Ok(mut sp) = sqlx::Connection::begin(&mut **tx).await else { return false };
    let allowed = match probe {
        Probe::Read => sqlx::query_scalar::<_, bool>(READ).bind(topic).bind(extension).fetch_one(&mut *sp).await.unwrap_or(false),
        Probe::Write => sqlx::query(WRITE).bind(topic).bind(extension).execute(&mut *sp).await.is_ok(),
    };
    let _ = sp.rollback().await;
    allowed
}

/// A database error that means "no" (missing role, a raising policy) rather than "broken".
fn is_refusal(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some()
}
