//! The `rowcast` binary: parse settings, then hand over to `app`.

use clap::Parser;
use rowcast::app::{self, App, AppConfig};
use rowcast::auth::Minter;
use rowcast::config::{Cli, Command, InngestCommand, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("ROWCAST_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Fields flattened beside `message`, so collectors index `job.id` or `topic` directly.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    match cli.command {
        Command::Serve(a) => {
            let mut config = AppConfig::new(a.db.database_url.expose(), a.gateway.listen, a.gateway.jwt_secret);
            config.jwks = a.gateway.jwks;
            config.ca_file = a.ca_file;
            config.inngest = app::inngest_settings(&a.inngest)?;
            config.limits = a.gateway.limits;
            config.jobs = app::jobs_config(a.jobs.config.as_deref(), a.jobs.demo_jobs)?;
            config.topic_rules = app::topic_rules(a.jobs.config.as_deref())?;
            (config.gateway, config.runner) = (!a.no_gateway, !a.no_runner);
            let app = App::build(config).await?;
            match app.local_addr() {
                Some(addr) => tracing::info!(%addr, "rowcast serving"),
                None => tracing::info!("rowcast running jobs only"),
            }
            app.run(shutdown_signal()).await
        }
        Command::Migrate(db) => app::migrate(&app::connect(db.database_url.expose()).await?).await,
        Command::Enable(a) => {
            app::enable(&app::connect(a.db.database_url.expose()).await?, &a.table, a.owner.as_deref(), &a.claim, a.public).await
        }
        Command::Disable(a) => app::disable(&app::connect(a.db.database_url.expose()).await?, &a.table).await,
        Command::Token(a) => {
            let ttl = a.ttl.as_secs() as i64;
            println!("{}", Minter::new(a.jwt_secret.expose()).mint(a.sub.as_deref(), &a.role, ttl));
            Ok(())
        }
        Command::Demo(a) => app::demo::run(a, shutdown_signal()).await,
        Command::Inngest(InngestCommand::Apps(db)) => {
            let apps = rowcast::jobs::inngest::sync::apps(&app::connect(db.database_url.expose()).await?).await?;
            if apps.is_empty() {
                println!("no Inngest app has synced yet");
            }
            for a in apps {
                println!(
                    "{}  {}  {}  synced {}",
                    a.id,
                    a.url,
                    a.sdk.as_deref().unwrap_or("-"),
                    a.synced_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
                for f in a.functions {
                    println!("  {f}");
                }
            }
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        // Ctrl-C in a terminal.
        _ = tokio::signal::ctrl_c() => {}
        // A service manager or orchestrator stopping us.
        _ = term.recv() => {}
    }
}
