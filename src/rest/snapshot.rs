//! `GET`/`HEAD /rest/v1/<table>`: the current rows a client may see.
//!
//! Owns authorisation for reads, the same as realtime's: the service role
//! reads every row, a user only rows whose owner column equals their `sub`,
//! anon only public tables; filters can only narrow that. Only change-captured
//! tables are exposed, in the schema `Accept-Profile` names (default public).
//! Responses follow PostgREST: a JSON array (an object for
//! `Accept: application/vnd.pgrst.object+json`), `Content-Range`, and errors as
//! `{code, message, details, hint}`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tracing::error;

use super::query::{self, Param, RestError, Sql};
use crate::auth::{request_token, AuthError, Principal};
use crate::changes::change::TableMeta;
use crate::changes::tables::Tables;
use crate::keyring::Keyring;

/// What the snapshot handler needs.
#[derive(Clone)]
pub struct RestState {
    pub pool: PgPool,
    pub keyring: Keyring,
    /// The shared table cache; unknown names go through its rate-limited `refresh`.
    pub tables: Tables,
}

/// The `/rest/v1` routes.
pub fn router(state: RestState) -> Router {
    Router::new().route("/rest/v1/{table}", get(read)).with_state(state)
}

const OBJECT: &str = "application/vnd.pgrst.object+json";

fn rest_error(status: u16, code: &'static str, message: impl Into<String>) -> RestError {
    RestError { status, code, message: message.into(), details: None, hint: None }
}

fn respond(e: RestError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(json!({ "code": e.code, "message": e.message, "details": e.details, "hint": e.hint }))).into_response()
}

async fn read(
    State(s): State<RestState>,
    Path(table): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    match snapshot(&s, &table, &headers, q.as_deref().unwrap_or(""), method == Method::HEAD).await {
        Ok(r) => r,
        Err(e) => respond(e),
    }
}

/// Who may see which rows of `meta`.
enum Visibility {
    All,
    /// Rows whose owner column (the first) holds one of these owners.
    Owners(String, Vec<String>),
    Nothing,
}

/// The request's principal: checked before anything else, so a request
/// without a valid token costs no catalogue or table lookup.
async fn authenticate(headers: &HeaderMap, keyring: &Keyring) -> Result<Principal, RestError> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = request_token(h("authorization"), h("apikey")).ok_or_else(|| rest_error(401, "PGRST301", "No API key found in request"))?;
    keyring.verify(token).await.map_err(|e| match e {
        AuthError::Expired(_) => rest_error(401, "PGRST303", "JWT expired"),
        e => rest_error(401, "PGRST301", e.to_string()),
    })
}

fn visibility(principal: &Principal, meta: &TableMeta) -> Visibility {
    if principal.is_service() || meta.public {
        return Visibility::All;
    }
    let owners = meta.owner_claim.as_ref().map(|claim| principal.owners(claim)).unwrap_or_default();
    match &meta.owner_column {
        Some(column) if !owners.is_empty() => Visibility::Owners(column.clone(), owners),
        _ => Visibility::Nothing,
    }
}

async fn table_meta(s: &RestState, schema: &str, table: &str) -> Result<std::sync::Arc<TableMeta>, RestError> {
    if let Some(meta) = s.tables.get(schema, table) {
        return Ok(meta);
    }
    s.tables.refresh().await;
    s.tables
        .get(schema, table)
        .ok_or_else(|| rest_error(404, "PGRST205", format!("Could not find the table '{schema}.{table}' in the schema cache")))
}

async fn snapshot(s: &RestState, table: &str, headers: &HeaderMap, raw_query: &str, head: bool) -> Result<Response, RestError> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let principal = authenticate(headers, &s.keyring).await?;
    let schema = h("accept-profile").unwrap_or("public");
    let exposed = exposed_schemas(&s.tables);
    if !exposed.iter().any(|e| e == schema) {
        return Err(rest_error(406, "PGRST106", format!("The schema must be one of the following: {}", exposed.join(", "))));
    }
    let meta = table_meta(s, schema, table).await?;
    let visibility = visibility(&principal, &meta);
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let q = query::parse(&pairs, &meta)?;
    let single = h("accept").is_some_and(|a| a.contains(OBJECT));
    let counted = h("prefer").is_some_and(|p| p.contains("count=exact"));
    let from = format!("\"{}\".\"{}\"", meta.schema.replace('"', "\"\""), meta.table.replace('"', "\"\""));
    let (rows_sql, params) = statement(&q, &meta, &visibility, |w| {
        format!("select coalesce(json_agg(t), '[]'::json)::text from (select {} from {from}{w}{}) t", q.columns(), q.tail())
    });
    let rows: Vec<serde_json::Value> = serde_json::from_str(&run::<String>(&s.pool, &rows_sql, &params).await?).unwrap_or_default();
    let total = if counted {
        let (count_sql, params) = statement(&q, &meta, &visibility, |w| format!("select count(*) from {from}{w}"));
        Some(run::<i64>(&s.pool, &count_sql, &params).await?)
    } else {
        None
    };
    let range = content_range(q.offset, rows.len(), total);
    if single && rows.len() != 1 {
        let mut e = rest_error(406, "PGRST116", "Cannot coerce the result to a single JSON object");
        e.details = Some(format!("The result contains {} rows", rows.len()));
        return Err(e);
    }
    let (content_type, body) =
        if single { (OBJECT, rows[0].to_string()) } else { ("application/json", serde_json::Value::Array(rows).to_string()) };
    let mut response = if head { StatusCode::OK.into_response() } else { body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(&format!("{content_type}; charset=utf-8")).expect("ascii"));
    headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).expect("ascii"));
    Ok(response)
}

/// Builds one statement: `wrap` receives the where clause.
fn statement(q: &query::Query, meta: &TableMeta, visibility: &Visibility, wrap: impl Fn(&str) -> String) -> (String, Sql) {
    let mut sql = Sql::default();
    let owner = match visibility {
        Visibility::Owners(column, owners) => Some((column.as_str(), owners.as_slice())),
        _ => None,
    };
    let mut clause = q.where_clause(meta, owner, &mut sql);
    if matches!(visibility, Visibility::Nothing) {
        clause = if clause.is_empty() { " where false".into() } else { format!("{clause} and false") };
    }
    (wrap(&clause), sql)
}

async fn run<T>(pool: &PgPool, text: &str, sql: &Sql) -> Result<T, RestError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut query = sqlx::query_scalar::<_, T>(text);
    for p in &sql.params {
        query = match p {
            Param::Text(t) => query.bind(t.clone()),
            Param::Array(items) => query.bind(items.clone()),
        };
    }
    query.fetch_one(pool).await.map_err(db_error)
}

/// A database refusal of the request's values (a bad cast, say) is the client's 400;
/// anything else is logged and reported without detail.
fn db_error(e: sqlx::Error) -> RestError {
    if let Some(db) = e.as_database_error() {
        let code = db.code().unwrap_or_default().to_string();
        if code.starts_with("22") {
            return RestError {
                status: 400,
                code: "22000",
                message: db.message().to_owned(),
                details: Some(format!("SQLSTATE {code}")),
                hint: None,
            };
        }
    }
    error!(error = %e, "snapshot read failed");
    rest_error(500, "XX000", "internal error")
}

fn content_range(offset: i64, len: usize, total: Option<i64>) -> String {
    let total = total.map_or_else(|| "*".to_owned(), |t| t.to_string());
    if len == 0 {
        format!("*/{total}")
    } else {
        format!("{offset}-{}/{total}", offset + len as i64 - 1)
    }
}

/// Schemas with change-captured tables, plus public.
fn exposed_schemas(tables: &Tables) -> Vec<String> {
    let mut schemas: Vec<String> = tables.all().iter().map(|m| m.schema.clone()).collect();
    schemas.push("public".into());
    schemas.sort();
    schemas.dedup();
    schemas
}
