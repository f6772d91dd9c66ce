//! Apps syncing: `POST /fn/register` stores an app's functions, and the
//! pinger PUTs each `--inngest-app` serve URL so the SDK registers.
//!
//! Outside dev mode a register must carry the bearer hash of rowcast's
//! signing key; a wrong or missing key is a 401 whose message the SDK passes
//! back as the answer to the PUT. A sync replaces the app's functions in one
//! transaction. Answers are the JSON the SDK reads: `status`, `modified`,
//! `error`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::functions::{limits, Limits};
use super::InngestSettings;

/// How often each `--inngest-app` is asked to sync, as `inngest start --sdk-url` does.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// Longest one PUT to an app may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// What the register route needs.
#[derive(Clone)]
pub struct SyncState {
    pub pool: PgPool,
    pub settings: InngestSettings,
}

/// `POST /fn/register`, and the events route beside it.
pub fn router(state: SyncState) -> Router {
    Router::new().route("/fn/register", post(register)).with_state(state.clone()).merge(super::events::router(state))
}

/// The register body, as far as rowcast reads it.
#[derive(Deserialize)]
struct RegisterBody {
    url: String,
    #[serde(rename = "appName")]
    app_name: String,
    framework: Option<String>,
    sdk: Option<String>,
    #[serde(default)]
    functions: Vec<Map<String, Value>>,
}

/// A declared function, checked.
struct Function {
    id: String,
    name: String,
    triggers: Value,
    config: Value,
}

/// Why a register was refused: the status and the message the SDK shows.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error(
        "the app's signing key does not match this rowcast's (--inngest-signing-key): set the app's INNGEST_SIGNING_KEY to the same key"
    )]
    WrongKey,
    #[error("this rowcast has no --inngest-signing-key: set one, or run it with --inngest-dev for unsigned apps")]
    NoKey,
    #[error("the app expects a {0} server, and this rowcast is a {1} one: set INNGEST_DEV on the app to match --inngest-dev")]
    ServerKind(String, &'static str),
    #[error("the register body is not valid: {0}")]
    Body(String),
    #[error("storing the app failed")]
    Db(#[from] sqlx::Error),
}

impl RegisterError {
    fn status(&self) -> StatusCode {
        match self {
            RegisterError::WrongKey | RegisterError::NoKey => StatusCode::UNAUTHORIZED,
            RegisterError::ServerKind(..) | RegisterError::Body(_) => StatusCode::BAD_REQUEST,
            RegisterError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for RegisterError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let RegisterError::Db(e) = &self {
            warn!(error = %e, "storing an Inngest app failed");
        }
        (status, Json(json!({"status": status.as_u16(), "error": self.to_string(), "modified": false}))).into_response()
    }
}

async fn register(State(s): State<SyncState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, RegisterError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !s.settings.dev {
        let key = s.settings.signing_key.as_ref().ok_or(RegisterError::NoKey)?;
        if !key.admits(header("authorization")) {
            return Err(RegisterError::WrongKey);
        }
    }
    if let Some(expected) = header("x-inngest-expected-server-kind").filter(|k| !k.is_empty()) {
        if expected != s.settings.server_kind() {
            return Err(RegisterError::ServerKind(expected.to_owned(), s.settings.server_kind()));
        }
    }
    let body: RegisterBody = serde_json::from_slice(&body).map_err(|e| RegisterError::Body(e.to_string()))?;
    let functions = body.functions.into_iter().map(function).collect::<Result<Vec<_>, _>>().map_err(RegisterError::Body)?;
    let modified = store(&s.pool, &body.app_name, &body.url, body.sdk.as_deref(), body.framework.as_deref(), &functions).await?;
    store_limits(&s.pool, &s.settings, &functions).await?;
    info!(app = %body.app_name, functions = functions.len(), modified, "Inngest app synced");
    Ok(Json(json!({"ok": true, "status": 200, "modified": modified, "app_id": body.app_name})))
}

fn function(f: Map<String, Value>) -> Result<Function, String> {
    let text = |k: &str| f.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let id = text("id").ok_or("a function without an id")?;
    let name = text("name").unwrap_or_else(|| id.clone());
    let triggers = f.get("triggers").filter(|t| t.is_array()).cloned().ok_or_else(|| format!("function {id} has no triggers list"))?;
    Ok(Function { id, name, triggers, config: Value::Object(f) })
}

/// Replaces the app's functions; true if anything differs from the last sync.
async fn store(
    pool: &PgPool,
    app: &str,
    url: &str,
    sdk: Option<&str>,
    framework: Option<&str>,
    functions: &[Function],
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before: Option<(String, Value)> = sqlx::query_as(
        "select a.url, coalesce((select jsonb_object_agg(f.id, f.config) from rowcast.inngest_functions f where f.app_id = a.id), '{}')
         from rowcast.inngest_apps a where a.id = $1 for update",
    )
    .bind(app)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "insert into rowcast.inngest_apps (id, url, sdk, framework) values ($1, $2, $3, $4)
         on conflict (id) do update set url = excluded.url, sdk = excluded.sdk, framework = excluded.framework, synced_at = now()",
    )
    .bind(app)
    .bind(url)
    .bind(sdk)
    .bind(framework)
    .execute(&mut *tx)
    .await?;
    let ids: Vec<&str> = functions.iter().map(|f| f.id.as_str()).collect();
    sqlx::query("delete from rowcast.inngest_functions where app_id = $1 and id <> all($2)").bind(app).bind(&ids).execute(&mut *tx).await?;
    sqlx::query(
        "insert into rowcast.inngest_functions (id, app_id, name, triggers, config)
         select * from unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[])
         on conflict (id) do update set app_id = excluded.app_id, name = excluded.name, triggers = excluded.triggers,
             config = excluded.config, updated_at = now()",
    )
    .bind(&ids)
    .bind(vec![app; functions.len()])
    .bind(functions.iter().map(|f| f.name.as_str()).collect::<Vec<_>>())
    .bind(functions.iter().map(|f| &f.triggers).collect::<Vec<_>>())
    .bind(functions.iter().map(|f| &f.config).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let now: Map<String, Value> = functions.iter().map(|f| (f.id.clone(), f.config.clone())).collect();
    Ok(before.is_none_or(|(old_url, old)| old_url != url || old != Value::Object(now)))
}

/// Writes each function's limits to `rowcast.job_types`, where claims read
/// them (a function is a job type); logs what its config asks for that
/// rowcast does not enforce yet.
async fn store_limits(pool: &PgPool, settings: &InngestSettings, functions: &[Function]) -> Result<(), sqlx::Error> {
    let keys = settings.user_keys();
    let limits: Vec<Limits> = functions.iter().map(|f| limits(&f.id, &f.config, keys)).collect();
    for (f, l) in functions.iter().zip(&limits).filter(|(_, l)| !l.unsupported.is_empty()) {
        warn!(function = %f.id, unsupported = ?l.unsupported, "an Inngest function asks for flow control rowcast does not enforce yet");
    }
    sqlx::query(
        "insert into rowcast.job_types (type, max_attempts, concurrency, concurrency_per_user, rate_count, rate_window_secs,
                                        max_active_per_user)
         select t.*, $7 from unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::float8[]) t
         on conflict (type) do update set max_attempts = excluded.max_attempts, concurrency = excluded.concurrency,
            concurrency_per_user = excluded.concurrency_per_user, rate_count = excluded.rate_count,
            rate_window_secs = excluded.rate_window_secs, max_active_per_user = excluded.max_active_per_user, updated_at = now()",
    )
    .bind(functions.iter().map(|f| f.id.as_str()).collect::<Vec<_>>())
    .bind(limits.iter().map(|l| l.max_attempts).collect::<Vec<_>>())
    .bind(limits.iter().map(|l| l.concurrency).collect::<Vec<_>>())
    .bind(limits.iter().map(|l| l.concurrency_per_user).collect::<Vec<_>>())
    .bind(limits.iter().map(|l| l.rate.map(|r| r.0)).collect::<Vec<_>>())
    .bind(limits.iter().map(|l| l.rate.map(|r| r.1.as_secs_f64())).collect::<Vec<_>>())
    .bind(settings.max_active_per_user)
    .execute(pool)
    .await?;
    Ok(())
}

/// One synced app, for `rowcast inngest apps`.
#[derive(Debug, sqlx::FromRow)]
pub struct AppRow {
    pub id: String,
    pub url: String,
    pub sdk: Option<String>,
    pub synced_at: chrono::DateTime<chrono::Utc>,
    pub functions: Vec<String>,
}

/// Every synced app with its function ids.
pub async fn apps(pool: &PgPool) -> Result<Vec<AppRow>, sqlx::Error> {
    sqlx::query_as(
        "select a.id, a.url, a.sdk, a.synced_at,
                coalesce(array(select f.id from rowcast.inngest_functions f where f.app_id = a.id order by f.id), '{}') as functions
         from rowcast.inngest_apps a order by a.id",
    )
    .fetch_all(pool)
    .await
}

/// PUTs every `--inngest-app` URL now and every `PING_EVERY` until `stop`,
/// so each app registers (and re-registers after a deploy). A failure is
/// logged when an app's state changes, not on every ping.
pub async fn ping_apps(settings: InngestSettings, client: reqwest::Client, stop: CancellationToken) {
    if settings.apps.is_empty() {
        return;
    }
    let mut failing: Vec<Option<String>> = vec![None; settings.apps.len()];
    loop {
        for (url, last) in settings.apps.iter().zip(failing.iter_mut()) {
            let outcome = ping(&settings, &client, url).await;
            match (&outcome, last.as_ref()) {
                (Err(e), prev) if prev != Some(e) => warn!(app = %url, error = %e, "an Inngest app did not sync"),
                (Ok(()), Some(_)) => info!(app = %url, "an Inngest app syncs again"),
                _ => {}
            }
            *last = outcome.err();
        }
        tokio::select! {
            // Shutdown.
            _ = stop.cancelled() => return,
            // The next round.
            _ = tokio::time::sleep(PING_EVERY) => {}
        }
    }
}

/// One PUT to an app's serve URL; the SDK answers with the register's outcome.
async fn ping(settings: &InngestSettings, client: &reqwest::Client, url: &str) -> Result<(), String> {
    let body = json!({"url": url}).to_string();
    let mut request = client
        .put(url)
        .timeout(PING_TIMEOUT)
        .header("content-type", "application/json")
        .header("x-inngest-server-kind", settings.server_kind());
    if let Some(key) = &settings.signing_key {
        request = request.header("x-inngest-signature", key.sign(&body, crate::auth::now_secs()));
    }
    let response =
        request.body(body).send().await.map_err(|e| if e.is_timeout() { "timed out".to_owned() } else { "unreachable".to_owned() })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let message = answer.get("message").and_then(Value::as_str).unwrap_or("no message");
    Err(format!("answered {}: {message}", status.as_u16()))
}
