//! Command line and environment settings, parsed once by clap.
//!
//! Owns the typed configuration of every subcommand and the `Secret` wrapper
//! that keeps the JWT secret out of logs and `Debug` output. Does no IO.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// rowcast: Postgres row changes to supabase-js clients, plus a job runner.
#[derive(Debug, Parser)]
#[command(name = "rowcast", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written to stderr: `text` for people, `json` (one object per line) for collectors.
    #[arg(long, global = true, env = "ROWCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (HTTP, realtime) and the job runner against DATABASE_URL.
    Serve(Box<ServeArgs>),
    /// Apply the embedded migrations (idempotent).
    Migrate(DbArgs),
    /// Install change capture on a table.
    Enable(EnableArgs),
    /// Remove change capture from a table.
    Disable(DisableArgs),
    /// Print a JWT signed with JWT_SECRET (development and tests).
    Token(TokenArgs),
    /// Start a private Postgres (unless DATABASE_URL is set), migrate, and serve the demo.
    Demo(DemoArgs),
    /// Inngest apps synced to this database.
    #[command(subcommand)]
    Inngest(InngestCommand),
}

/// `rowcast inngest ...`.
#[derive(Debug, Subcommand)]
pub enum InngestCommand {
    /// List the synced apps and their functions.
    Apps(DbArgs),
}

/// A value that must never be printed (the JWT secret).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for signing and verifying only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < 16 {
            return Err("must be at least 16 bytes".into());
        }
        Ok(Secret(s.to_owned()))
    }
}

/// A database URL: it may carry a password, so it is kept as a `Secret`.
#[derive(Debug, Clone)]
pub struct DatabaseUrl(Secret);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(Secret::new(url))
    }
    /// The URL itself, for connecting only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl::new(s))
    }
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: DatabaseUrl,
}

/// Settings of the gateway, shared by `serve` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long = "listen", env = "ROWCAST_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// HS256 secret that signs client JWTs (at least 16 bytes). Optional when a JWKS is set.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    #[command(flatten)]
    pub jwks: JwksArgs,
    #[command(flatten)]
    pub limits: Limits,
}

/// Where asymmetric (RS/ES/EdDSA) token keys come from, beside the HS256 secret.
#[derive(Debug, Clone, Args)]
pub struct JwksArgs {
    /// URL of a JSON Web Key Set, e.g. https://<project>.supabase.co/auth/v1/.well-known/jwks.json.
    #[arg(long, env = "ROWCAST_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// A JSON Web Key Set file, reread when a token names an unknown key id.
    #[arg(long, env = "ROWCAST_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Milliseconds one fetch of the JWKS URL may take; on timeout the keys already held stay.
    #[arg(long, env = "ROWCAST_JWKS_TIMEOUT_MS", default_value_t = defaults::JWKS_TIMEOUT_MS)]
    pub jwks_timeout_ms: u64,
    /// Seconds between scheduled reloads of the JWKS (a token with an unknown key id also reloads it).
    #[arg(long, env = "ROWCAST_JWKS_REFRESH_SECS", default_value_t = defaults::JWKS_REFRESH_SECS)]
    pub jwks_refresh_secs: u64,
}

impl JwksArgs {
    /// Whether any key set is configured.
    pub fn is_set(&self) -> bool {
        self.jwks_url.is_some() || self.jwks_file.is_some()
    }
}

impl Default for JwksArgs {
    fn default() -> Self {
        JwksArgs {
            jwks_url: None,
            jwks_file: None,
            jwks_timeout_ms: defaults::JWKS_TIMEOUT_MS,
            jwks_refresh_secs: defaults::JWKS_REFRESH_SECS,
        }
    }
}

/// The defaults of `Limits`, named once for the command line and `Default`
/// alike (Supabase Realtime's where it has one).
mod defaults {
    pub const MAX_CHANNELS_PER_CLIENT: usize = 100;
    pub const MAX_JOINS_PER_SECOND: u32 = 100;
    pub const MAX_FRAME_BYTES: usize = 5_000_000;
    pub const MAX_PAYLOAD_KB: usize = 3_000;
    pub const MAX_BROADCASTS_PER_SECOND: u32 = 100;
    pub const OUTGOING_QUEUE: usize = 1024;
    pub const OUTGOING_QUEUE_BYTES: usize = 4 * 1024 * 1024;
    pub const WRITE_TIMEOUT_SECS: u64 = 15;
    pub const MAX_SOCKETS: usize = 50_000;
    pub const MAX_SOCKETS_PER_IP: usize = 1_000;
    pub const IDLE_TIMEOUT_SECS: u64 = 60;
    pub const PRESENCE_TIMEOUT_SECS: u64 = 15;
    pub const MAX_RECORD_BYTES: usize = 1_048_576;
    pub const POLL_MS: u64 = 500;
    pub const CHANGE_RETENTION_SECS: u64 = 300;
    /// Three days, as Supabase keeps its daily partitions of realtime.messages.
    pub const MESSAGE_RETENTION_SECS: u64 = 3 * 86_400;
    pub const READY_MAX_LAG_SECS: u64 = 10;
    pub const DRAIN_DELAY_SECS: u64 = 0;
    /// supabase-js retries a closed socket after 1, 2, 5 and 10 s: 18 s in all.
    pub const HANDOFF_TTL_SECS: u64 = 30;
    pub const JWKS_TIMEOUT_MS: u64 = 3_000;
    pub const JWKS_REFRESH_SECS: u64 = 600;
}

/// Per-connection limits; defaults are Supabase Realtime's.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Channels one socket may join.
    #[arg(long, env = "ROWCAST_MAX_CHANNELS_PER_CLIENT", default_value_t = defaults::MAX_CHANNELS_PER_CLIENT)]
    pub max_channels_per_client: usize,
    /// Joins per second one socket may make; above it the socket is closed.
    #[arg(long, env = "ROWCAST_MAX_JOINS_PER_SECOND", default_value_t = defaults::MAX_JOINS_PER_SECOND)]
    pub max_joins_per_second: u32,
    /// Largest WebSocket frame or message accepted from a client, in bytes.
    #[arg(long, env = "ROWCAST_MAX_FRAME_BYTES", default_value_t = defaults::MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Largest broadcast or presence payload, in KB (Supabase's `max_payload_size_in_kb`).
    #[arg(long, env = "ROWCAST_MAX_PAYLOAD_KB", default_value_t = defaults::MAX_PAYLOAD_KB)]
    pub max_payload_kb: usize,
    /// Messages per second one client IP may post to the broadcast REST API; past it HTTP 429.
    #[arg(long, env = "ROWCAST_MAX_BROADCASTS_PER_SECOND", default_value_t = defaults::MAX_BROADCASTS_PER_SECOND)]
    pub max_broadcasts_per_second: u32,
    /// Refuse public channels: every join must be private (Supabase's "allow public access" off).
    #[arg(long, env = "ROWCAST_PRIVATE_ONLY")]
    pub private_only: bool,
    /// Frames queued for one socket before it counts as too slow and is closed (1013).
    #[arg(long, env = "ROWCAST_OUTGOING_QUEUE", default_value_t = defaults::OUTGOING_QUEUE)]
    pub outgoing_queue: usize,
    /// Bytes queued for one socket before it counts as too slow and is closed (1013).
    #[arg(long, env = "ROWCAST_OUTGOING_QUEUE_BYTES", default_value_t = defaults::OUTGOING_QUEUE_BYTES)]
    pub outgoing_queue_bytes: usize,
    /// Seconds one write to a client may make no progress before the socket is closed as a
    /// slow consumer (1013); also how long its close frame may take.
    #[arg(long, env = "ROWCAST_WRITE_TIMEOUT_SECS", default_value_t = defaults::WRITE_TIMEOUT_SECS)]
    pub write_timeout_secs: u64,
    /// Open sockets this process accepts; past it upgrades get HTTP 429. 0: no limit.
    #[arg(long, env = "ROWCAST_MAX_SOCKETS", default_value_t = defaults::MAX_SOCKETS)]
    pub max_sockets: usize,
    /// Open sockets one client IP may hold; past it upgrades get HTTP 429. 0: no limit.
    #[arg(long, env = "ROWCAST_MAX_SOCKETS_PER_IP", default_value_t = defaults::MAX_SOCKETS_PER_IP)]
    pub max_sockets_per_ip: usize,
    /// Seconds without any frame from a client before its socket is closed.
    #[arg(long, env = "ROWCAST_IDLE_TIMEOUT_SECS", default_value_t = defaults::IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,
    /// A change whose row JSON is larger keeps only fields of at most 64 bytes.
    #[arg(long, env = "ROWCAST_MAX_RECORD_BYTES", default_value_t = defaults::MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// Fallback poll of the change log when no doorbell rings, in milliseconds.
    #[arg(long, env = "ROWCAST_POLL_MS", default_value_t = defaults::POLL_MS)]
    pub poll_ms: u64,
    /// Seconds a read change stays in the log before it is pruned.
    #[arg(long, env = "ROWCAST_CHANGE_RETENTION_SECS", default_value_t = defaults::CHANGE_RETENTION_SECS)]
    pub change_retention_secs: u64,
    /// Seconds a message sent from the database (realtime.messages) is kept, for replay.
    #[arg(long, env = "ROWCAST_MESSAGE_RETENTION_SECS", default_value_t = defaults::MESSAGE_RETENTION_SECS)]
    pub message_retention_secs: u64,
    /// `/ready` answers 503 while the oldest change not yet delivered is older than this many seconds.
    #[arg(long, env = "ROWCAST_READY_MAX_LAG_SECS", default_value_t = defaults::READY_MAX_LAG_SECS)]
    pub ready_max_lag_secs: u64,
    /// On SIGTERM, seconds during which `/ready` answers 503 and new sockets are refused
    /// before open sockets are told to go (time for a load balancer to notice).
    #[arg(long, env = "ROWCAST_DRAIN_DELAY_SECS", default_value_t = defaults::DRAIN_DELAY_SECS)]
    pub drain_delay_secs: u64,
    /// Seconds during which a channel closed by a draining gateway, rejoined here or on
    /// another gateway by the same token with the same bindings, first gets the changes it
    /// missed meanwhile. 0: no handoffs. Read changes stay in the log at least this long
    /// whatever the change retention: replays read the log back to the note.
    #[arg(long, env = "ROWCAST_HANDOFF_TTL_SECS", default_value_t = defaults::HANDOFF_TTL_SECS)]
    pub handoff_ttl_secs: u64,
    /// With several gateways on one database: seconds after its last heartbeat that a gateway
    /// which stopped without saying so (killed, cut off) is presumed dead and its clients'
    /// presence leaves everyone's lists.
    #[arg(long, env = "ROWCAST_PRESENCE_TIMEOUT_SECS", default_value_t = defaults::PRESENCE_TIMEOUT_SECS)]
    pub presence_timeout_secs: u64,
}

impl Limits {
    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The largest broadcast or presence payload, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_kb.saturating_mul(1000)
    }

    /// How long one write may make no progress.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }

    /// How long a read change stays in the log: the change retention, but at
    /// least the handoff ttl, since a channel rejoining that late replays
    /// from the log (pruned sooner, its changes would be a silent gap).
    pub fn change_retention(&self) -> Duration {
        Duration::from_secs(self.change_retention_secs.max(self.handoff_ttl_secs))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_channels_per_client: defaults::MAX_CHANNELS_PER_CLIENT,
            max_joins_per_second: defaults::MAX_JOINS_PER_SECOND,
            max_frame_bytes: defaults::MAX_FRAME_BYTES,
            max_payload_kb: defaults::MAX_PAYLOAD_KB,
            max_broadcasts_per_second: defaults::MAX_BROADCASTS_PER_SECOND,
            private_only: false,
            outgoing_queue: defaults::OUTGOING_QUEUE,
            outgoing_queue_bytes: defaults::OUTGOING_QUEUE_BYTES,
            write_timeout_secs: defaults::WRITE_TIMEOUT_SECS,
            max_sockets: defaults::MAX_SOCKETS,
            max_sockets_per_ip: defaults::MAX_SOCKETS_PER_IP,
            idle_timeout_secs: defaults::IDLE_TIMEOUT_SECS,
            max_record_bytes: defaults::MAX_RECORD_BYTES,
            poll_ms: defaults::POLL_MS,
            change_retention_secs: defaults::CHANGE_RETENTION_SECS,
            message_retention_secs: defaults::MESSAGE_RETENTION_SECS,
            ready_max_lag_secs: defaults::READY_MAX_LAG_SECS,
            drain_delay_secs: defaults::DRAIN_DELAY_SECS,
            handoff_ttl_secs: defaults::HANDOFF_TTL_SECS,
            presence_timeout_secs: defaults::PRESENCE_TIMEOUT_SECS,
        }
    }
}

/// `rowcast serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub jobs: JobsArgs,
    #[command(flatten)]
    pub inngest: InngestArgs,
    /// PEM file of extra CA certificates trusted for https calls (step handlers, failure hooks,
    /// JWKS), besides the system's roots: for handlers behind a private CA.
    #[arg(long, env = "ROWCAST_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Do not run the job runner in this process (gateway only).
    #[arg(long, env = "ROWCAST_NO_RUNNER")]
    pub no_runner: bool,
    /// Do not serve HTTP or realtime from this process (runner only).
    #[arg(long, env = "ROWCAST_NO_GATEWAY", conflicts_with = "no_runner")]
    pub no_gateway: bool,
}

/// How Inngest apps (the unmodified `inngest` SDK) meet this rowcast.
#[derive(Debug, Clone, Args)]
pub struct InngestArgs {
    /// The signing key the apps hold as INNGEST_SIGNING_KEY (`signkey-<env>-<hex>` or hex):
    /// verifies their syncs and signs rowcast's calls to them. Required unless --inngest-dev.
    #[arg(long, env = "ROWCAST_INNGEST_SIGNING_KEY", hide_env_values = true)]
    pub inngest_signing_key: Option<Secret>,
    /// The key apps send events with, as INNGEST_EVENT_KEY (`POST /e/<key>`). Required unless
    /// --inngest-dev.
    #[arg(long, env = "ROWCAST_INNGEST_EVENT_KEY", hide_env_values = true)]
    pub inngest_event_key: Option<Secret>,
    /// Dev mode, as `inngest dev`: apps sync unsigned (their INNGEST_DEV=http://<rowcast>).
    #[arg(long, env = "ROWCAST_INNGEST_DEV")]
    pub inngest_dev: bool,
    /// Serve URLs of Inngest apps to sync at start and every 5 s (comma-separated in the env form).
    #[arg(long = "inngest-app", env = "ROWCAST_INNGEST_APPS", value_delimiter = ',')]
    pub inngest_apps: Vec<String>,
    /// The event field naming a run's owner (its `user_id`, the user whose browser may watch it),
    /// e.g. `event.data.userId`. Default: `event.data.userId`, then `event.user.id`.
    #[arg(long, env = "ROWCAST_INNGEST_USER_KEY")]
    pub inngest_user_key: Option<String>,
    /// Most pending or running runs of one function per owner: an event that would start one
    /// more is refused with 429 (from SQL, its run is skipped and logged). Default: no cap.
    #[arg(long, env = "ROWCAST_INNGEST_MAX_ACTIVE_PER_USER", value_parser = clap::value_parser!(i32).range(1..))]
    pub inngest_max_active_per_user: Option<i32>,
}

/// Job runner settings.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// TOML file with job types, cron entries and runner settings.
    #[arg(long = "config", env = "ROWCAST_CONFIG")]
    pub config: Option<String>,
    /// Add the built-in `demo` job type.
    #[arg(long, env = "ROWCAST_DEMO_JOBS")]
    pub demo_jobs: bool,
}

/// `rowcast enable <schema.table> --owner <column> | --public`.
#[derive(Debug, Clone, Args)]
pub struct EnableArgs {
    /// The table, as schema.table (schema defaults to public).
    pub table: String,
    /// Column holding the owner's id, compared with the JWT claim `--claim` names.
    #[arg(long, conflicts_with = "public", required_unless_present = "public")]
    pub owner: Option<String>,
    /// The claim the owner column is compared with: `sub`, or a dotted path such as
    /// `app_metadata.org_id`; an array claim (e.g. `app_metadata.team_ids`) means membership.
    #[arg(long, default_value = "sub", requires = "owner")]
    pub claim: String,
    /// Every client, anonymous ones included, may see every row.
    #[arg(long)]
    pub public: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `rowcast disable <schema.table>`.
#[derive(Debug, Clone, Args)]
pub struct DisableArgs {
    /// The table, as schema.table.
    pub table: String,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `rowcast token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: Option<String>,
    /// The `role` claim.
    #[arg(long, default_value = "authenticated", value_parser = ["authenticated", "anon", "service_role"])]
    pub role: String,
    /// Lifetime, e.g. 30s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// HS256 secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Secret,
}

/// `rowcast demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this database instead of starting a private Postgres.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// Address to listen on.
    #[arg(long = "listen", env = "ROWCAST_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// HS256 secret; a random one is made when absent.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
}

/// Parses `250ms`, `30s`, `15m`, `1h`, `7d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("not a duration: {text:?}"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit in {text:?}: use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn a_read_change_stays_in_the_log_as_long_as_a_handoff_may_replay_it() {
        let limits = |retention, ttl| Limits { change_retention_secs: retention, handoff_ttl_secs: ttl, ..Limits::default() };
        assert_eq!(limits(0, 30).change_retention(), Duration::from_secs(30));
        assert_eq!(limits(300, 30).change_retention(), Duration::from_secs(300));
        assert_eq!(limits(0, 0).change_retention(), Duration::ZERO, "no handoffs: the retention alone");
    }

    #[test]
    fn limits_default_to_what_the_command_line_defaults_to() {
        #[derive(Parser)]
        struct OnlyLimits {
            #[command(flatten)]
            limits: Limits,
        }
        let parsed = OnlyLimits::parse_from(["rowcast"]).limits;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Limits::default()));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s: Secret = "a-very-secret-value-123".parse().unwrap();
        assert!(!format!("{s:?}").contains("secret-value"));
        let cli = Cli::parse_from(["rowcast", "migrate", "--database-url", "postgres://app:pa55word@db/app"]);
        assert!(!format!("{cli:?}").contains("pa55word"), "{cli:?}");
    }
}
