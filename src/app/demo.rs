//! `rowcast demo`: a private Postgres (unless DATABASE_URL is given), the
//! migrations, a demo table with change capture, and the gateway, with the
//! URL and a development token printed. The cluster stops when the demo does.

use std::future::Future;

use crate::app::{self, App, AppConfig};
use crate::auth::Minter;
use crate::config::{DemoArgs, Secret};
use crate::jobs::config::JobsConfig;
use crate::pg_local::{Durability, LocalPostgres};

const DEMO_TABLE: &str = "create table if not exists public.notes (
    id bigserial primary key,
    user_id text not null,
    body text not null default '',
    created_at timestamptz not null default now())";

/// Runs the demo until `shutdown` resolves.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (database_url, cluster) = match args.database_url {
        Some(url) => (url.expose().to_owned(), None),
        None => {
            eprintln!("starting a private PostgreSQL cluster...");
            let pg = LocalPostgres::start(Durability::Safe).await?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let secret = args.jwt_secret.unwrap_or_else(|| Secret::new(uuid::Uuid::new_v4().simple().to_string()));
    let pool = app::connect(&database_url).await?;
    app::migrate(&pool).await?;
    sqlx::query(DEMO_TABLE).execute(&pool).await?;
    app::enable(&pool, "public.notes", Some("user_id"), "sub", false).await?;
    pool.close().await;
    let mut config = AppConfig::new(database_url, args.listen, Some(secret.clone()));
    config.jobs = JobsConfig::default().with_demo_type();
    config.demo = true;
    let app = App::build(config).await?;
    let addr = app.local_addr().expect("the demo serves HTTP");
    let minter = Minter::new(secret.expose());
    println!("rowcast demo at http://{addr}/");
    println!("realtime: ws://{addr}/realtime/v1/websocket");
    println!("anon key:       {}", minter.mint(None, "anon", 86_400));
    println!("token (alice):  {}", minter.mint(Some("alice"), "authenticated", 86_400));
    let result = app.run(shutdown).await;
    drop(cluster);
    result
}
