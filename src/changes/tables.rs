//! The cache of enabled tables (`rowcast.tables` joined with the catalogue).
//!
//! Owns loading and looking up `TableMeta`; reloaded when a gateway is told
//! (NOTIFY `rowcast_tables`) or when a row no longer fits the cached columns.
//! Readers take a short read lock and clone an `Arc`; no lock is held across
//! an `.await`.
//!
//! A client can name a table the cache does not know (a join or a REST read
//! right after `enable`, or a made-up name), so `refresh` is the one way a
//! request reloads, through `refresh::Spaced`: single-flight and at most one
//! reload per `MIN_REFRESH_INTERVAL`. Every caller still sees a reload that
//! started after it asked.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::{PgExecutor, PgPool};

use super::change::{Column, TableMeta};
use crate::auth::ClaimPath;
use crate::refresh::Spaced;

/// Least time between two reloads asked for by clients.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

type Map = HashMap<(String, String), Arc<TableMeta>>;

/// Cheap-clone handle to the table cache.
#[derive(Clone, Default)]
pub struct Tables {
    inner: Arc<RwLock<Map>>,
    refresher: Option<Arc<Refresher>>,
}

struct Refresher {
    pool: PgPool,
    spaced: Spaced,
}

const LOAD: &str = r#"
select n.nspname as schema, c.relname as "table", t.owner_column, t.owner_claim, t.is_public,
       c.relreplident = 'f' as full_identity,
       coalesce((select json_agg(json_build_object('name', a.attname, 'type', ty.typname) order by a.attnum)
                 from pg_attribute a join pg_type ty on ty.oid = a.atttypid
                 where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), '[]') as columns,
       coalesce((select array_agg(a.attname::text order by k.ord)
                 from pg_index i
                 cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
                 join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                 where i.indrelid = c.oid and i.indisprimary), '{}') as primary_key
from rowcast.tables t
join pg_class c on c.oid = t.relid
join pg_namespace n on n.oid = c.relnamespace
"#;

type Row = (String, String, Option<String>, String, bool, bool, sqlx::types::Json<Vec<Column>>, Vec<String>);

impl Tables {
    /// An empty cache that `refresh` reloads from `pool`.
    pub fn with_pool(pool: PgPool) -> Self {
        Tables { inner: Arc::default(), refresher: Some(Arc::new(Refresher { pool, spaced: Spaced::new(MIN_REFRESH_INTERVAL) })) }
    }

    /// Reloads for a caller that met an unknown table: waits for a reload that
    /// started after the call (sharing one in flight, spacing them by
    /// `MIN_REFRESH_INTERVAL`). False when there is no pool or the reload failed.
    pub async fn refresh(&self) -> bool {
        let Some(refresher) = &self.refresher else { return false };
        refresher
            .spaced
            .run(|| async {
                self.reload(&refresher.pool).await.map_err(|e| tracing::warn!(error = %e, "reloading the table cache failed")).is_ok()
            })
            .await
    }

    /// How many reloads `refresh` has run.
    pub fn refreshes(&self) -> u64 {
        self.refresher.as_ref().map_or(0, |r| r.spaced.runs())
    }

    /// Replaces the cache with what the database says now.
    pub async fn reload(&self, db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(LOAD).fetch_all(db).await?;
        let map = rows
            .into_iter()
            .map(|(schema, table, owner_column, claim, public, full_identity, columns, primary_key)| {
                let owner_claim = ClaimPath::parse(&claim)
                    .map_err(|e| tracing::warn!(%schema, %table, error = %e, "owner claim does not parse: only the service role sees this table"))
                    .ok();
                let meta = TableMeta { schema, table, owner_column, owner_claim, public, full_identity, columns: columns.0, primary_key };
                ((meta.schema.clone(), meta.table.clone()), Arc::new(meta))
            })
            .collect();
        *self.inner.write().expect("tables lock poisoned") = map;
        Ok(())
    }

    /// The enabled table `schema.table`, if it is enabled.
    pub fn get(&self, schema: &str, table: &str) -> Option<Arc<TableMeta>> {
        let map = self.inner.read().expect("tables lock poisoned");
        map.get(&(schema.to_owned(), table.to_owned())).cloned()
    }

    /// Puts `meta` in the cache (unit tests of pure modules build caches by hand).
    #[cfg(test)]
    pub fn insert_for_tests(&mut self, meta: TableMeta) {
        let key = (meta.schema.clone(), meta.table.clone());
        self.inner.write().expect("tables lock poisoned").insert(key, Arc::new(meta));
    }

    /// Every enabled table.
    pub fn all(&self) -> Vec<Arc<TableMeta>> {
        self.inner.read().expect("tables lock poisoned").values().cloned().collect()
    }
}
