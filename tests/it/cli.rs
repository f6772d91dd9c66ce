//! The binary's pinned subcommands: migrate, enable, disable, token.

use crate::harness::{fresh_database, SECRET};

async fn rowcast(db: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(args)
        .env("DATABASE_URL", db)
        .env("JWT_SECRET", SECRET)
        .env("ROWCAST_LOG", "error")
        .output()
        .await
        .expect("running the rowcast binary");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn migrate_enable_disable_and_token_work_from_the_command_line() {
    let db = fresh_database().await;
    assert!(rowcast(&db, &["migrate"]).await.0, "migrate is idempotent on a migrated database");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    sqlx::raw_sql("create table public.summaries (id serial primary key, user_id text)").execute(&pool).await.unwrap();
    let (ok, out) = rowcast(&db, &["enable", "public.summaries", "--owner", "user_id"]).await;
    assert!(ok, "{out}");
    let (owner,): (Option<String>,) = sqlx::query_as("select owner_column from rowcast.tables where relid = 'public.summaries'::regclass")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("user_id"));
    let (ok, out) = rowcast(&db, &["enable", "public.summaries", "--owner", "nope"]).await;
    assert!(!ok && out.contains("no column named"), "{out}");
    let (ok, out) = rowcast(&db, &["enable", "public.summaries"]).await;
    assert!(!ok && out.contains("--owner"), "one of --owner or --public is required: {out}");
    assert!(rowcast(&db, &["disable", "public.summaries"]).await.0);
    let (n,): (i64,) = sqlx::query_as("select count(*) from rowcast.tables").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 1, "only rowcast.jobs stays enabled");
    let (ok, token) = rowcast(&db, &["token", "--sub", "alice", "--role", "authenticated", "--ttl", "1h"]).await;
    assert!(ok);
    let principal = rowcast::auth::Verifier::new(SECRET).verify(token.trim()).unwrap();
    assert_eq!((principal.sub.as_deref(), principal.role.as_str()), (Some("alice"), "authenticated"));
    assert!(principal.exp - rowcast::auth::now_secs() > 3500);
    let (ok, out) = rowcast(&db, &["token", "--role", "admin"]).await;
    assert!(!ok && out.contains("invalid value"), "{out}");
}
