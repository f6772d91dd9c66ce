//! Synced Inngest functions as the runner runs them: each function is a job
//! type named by its composite id (`<app>-<fn>`), with the limits its config
//! declares written to `rowcast.job_types` at sync, where claims read them.
//!
//! What maps: `retries` (attempts = retries + 1, 5 when absent, as Inngest),
//! `concurrency` as a number or `{limit}` (the function's limit) and
//! `{limit, key}` with the owner key (`--inngest-user-key`) as the per-user
//! limit, other keys and wider scopes through `gate` (slots taken before a
//! call), `throttle` keyed by the owner as the per-user start rate and any
//! other throttle through `gate`
//! (`rateLimit` is the dispatcher's: it decides whether a run starts at all).
//! Other keys, scopes and flow controls are reported by `limits` so the sync
//! can log them; they do not limit anything yet.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::call::FunctionCall;
use super::expr::Expr;
use super::gate::{Gate, Keyed, Throttle};
use super::{InngestSettings, UserKey};
use crate::jobs::config::{Enqueuer, Handler, JobType};

/// A function's limits, as `rowcast.job_types` holds them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    pub max_attempts: i32,
    pub concurrency: Option<i32>,
    pub concurrency_per_user: Option<i32>,
    /// Starts per window, per owner.
    pub rate: Option<(i32, Duration)>,
    /// Concurrency keyed by another expression, or shared wider than the
    /// function, enforced by `gate`.
    pub keyed: Vec<Keyed>,
    /// A throttle keyed by another expression, or by none, enforced by `gate`.
    pub throttle: Option<Throttle>,
    /// What the config asks for that rowcast does not enforce yet.
    pub unsupported: Vec<String>,
}

/// The limits `config` (a function's register entry) declares.
pub fn limits(id: &str, config: &Value, user_keys: &[UserKey]) -> Limits {
    let retries = config.pointer("/steps/step/retries/attempts").and_then(Value::as_i64).unwrap_or(4).clamp(0, 20) as i32;
    let mut l = Limits { max_attempts: retries + 1, ..Limits::default() };
    let is_owner = |key: &str| user_keys.iter().any(|k| same_key(k.text(), key));
    let entries = match config.get("concurrency") {
        Some(Value::Array(items)) => items.clone(),
        Some(one) => vec![one.clone()],
        None => vec![],
    };
    for c in entries {
        let limit = c.as_i64().or_else(|| c.get("limit").and_then(Value::as_i64)).filter(|n| *n > 0).map(|n| n.min(i32::MAX as i64) as i32);
        let key = c.get("key").and_then(Value::as_str);
        let scope = c.get("scope").and_then(Value::as_str).unwrap_or("fn");
        match (limit, key) {
            (None, _) => {}
            (Some(n), k) if scope != "fn" => {
                l.keyed.extend(parse_key(k.unwrap_or("''"), "concurrency", &mut l.unsupported).map(|key| Keyed {
                    scope: scope.into(),
                    key,
                    limit: n,
                }))
            }
            (Some(n), None) => l.concurrency = Some(l.concurrency.map_or(n, |c| c.min(n))),
            (Some(n), Some(k)) if is_owner(k) => l.concurrency_per_user = Some(l.concurrency_per_user.map_or(n, |c| c.min(n))),
            (Some(n), Some(k)) => {
                l.keyed.extend(parse_key(k, "concurrency", &mut l.unsupported).map(|key| Keyed { scope: id.into(), key, limit: n }))
            }
        }
    }
    if let Some(t) = config.get("throttle") {
        let limit = t.get("limit").and_then(Value::as_i64).filter(|n| *n > 0);
        let period = t.get("period").and_then(Value::as_str).and_then(period);
        let burst = t.get("burst").and_then(Value::as_i64).unwrap_or(0).clamp(0, i32::MAX as i64) as i32;
        match (limit.map(|n| n.min(i32::MAX as i64) as i32), period, t.get("key").and_then(Value::as_str)) {
            (Some(n), Some(p), Some(k)) if is_owner(k) && burst == 0 => l.rate = Some((n, p)),
            (Some(n), Some(p), k) => {
                l.throttle =
                    parse_key(k.unwrap_or("''"), "throttle", &mut l.unsupported).map(|key| Throttle { key, limit: n, burst, period: p })
            }
            _ => l.unsupported.push("throttle without a limit and a period".into()),
        }
    }
    for other in ["debounce", "batchEvents", "idempotency", "singleton", "cancel", "timeouts"] {
        if config.get(other).is_some_and(|v| !v.is_null()) {
            l.unsupported.push(other.into());
        }
    }
    l
}

/// A key expression, or `None` with why in `unsupported`: a key rowcast
/// cannot read limits nothing, and the sync logs it with the rest.
fn parse_key(text: &str, what: &str, unsupported: &mut Vec<String>) -> Option<Expr> {
    match Expr::parse(text) {
        Ok(e) => Some(e),
        Err(e) => {
            unsupported.push(format!("{what} key {text:?}: {e}"));
            None
        }
    }
}

/// Two key expressions that differ only in spacing or quotes.
fn same_key(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| !c.is_whitespace()).map(|c| if c == '\'' { '"' } else { c }).collect::<String>();
    norm(a) == norm(b)
}

/// An Inngest period (`"30s"`, `"1h30m"`).
pub fn period(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let unit_len = rest[digits..].find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len() - digits);
        total += crate::config::parse_duration(&rest[..digits + unit_len]).ok()?;
        rest = &rest[digits + unit_len..];
    }
    (!total.is_zero()).then_some(total)
}

/// A synced function: its job type and how to call it.
pub struct Function {
    pub job_type: JobType,
    pub call: FunctionCall,
}

/// Every synced function, ready to run.
pub async fn load(pool: &PgPool, settings: &InngestSettings, client: &reqwest::Client) -> Result<Vec<Function>, sqlx::Error> {
    let rows: Vec<(String, Value)> = sqlx::query_as("select id, config from rowcast.inngest_functions order by id").fetch_all(pool).await?;
    let keys = settings.user_keys();
    Ok(rows
        .into_iter()
        .filter_map(|(id, config)| {
            let url = config.pointer("/steps/step/runtime/url").and_then(Value::as_str)?.to_owned();
            let l = limits(&id, &config, keys);
            let gate = (!l.keyed.is_empty() || l.throttle.is_some()).then(|| Gate {
                pool: pool.clone(),
                function: id.clone(),
                limits: l.keyed.clone(),
                throttle: l.throttle.clone(),
            });
            let call = FunctionCall {
                url,
                key: settings.signing_key.clone(),
                client: client.clone(),
                server_kind: settings.server_kind(),
                attempts: l.max_attempts,
                gate,
            };
            Some(Function { job_type: job_type(id, &l), call })
        })
        .collect())
}

/// The job type a function runs as. Backoff starts at 1 s and is capped at
/// 10 minutes; a request may take 5 minutes (a step is one request).
fn job_type(id: String, l: &Limits) -> JobType {
    JobType {
        name: id,
        handler: Handler::Inngest,
        max_attempts: l.max_attempts,
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(600),
        timeout: Duration::from_secs(300),
        concurrency: l.concurrency,
        concurrency_per_user: l.concurrency_per_user,
        rate_limit: l.rate,
        max_active_per_user: None,
        enqueue: Enqueuer::Service,
        on_failure: None,
        pending_timeout: Duration::from_secs(86_400),
        running_timeout: Duration::from_secs(86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> Vec<UserKey> {
        InngestSettings::default().user_keys().to_vec()
    }

    #[test]
    fn retries_become_attempts_and_default_to_inngests_four() {
        assert_eq!(limits("app-f", &json!({"steps": {"step": {"retries": {"attempts": 3}}}}), &keys()).max_attempts, 4);
        assert_eq!(limits("app-f", &json!({"steps": {"step": {"retries": {"attempts": 0}}}}), &keys()).max_attempts, 1);
        assert_eq!(limits("app-f", &json!({}), &keys()).max_attempts, 5);
    }

    #[test]
    fn concurrency_by_the_owner_key_is_per_user_and_a_bare_limit_is_the_functions() {
        let l = limits("app-f", &json!({"concurrency": [{"limit": 2, "key": "event.data.userId"}, 10]}), &keys());
        assert_eq!((l.concurrency, l.concurrency_per_user), (Some(10), Some(2)));
        let l = limits(
            "app-f",
            &json!({"concurrency": [{"limit": 3, "key": "event.data.teamId"}, {"limit": 9, "key": "event.data.region", "scope": "env"}]}),
            &keys(),
        );
        assert_eq!((l.concurrency, l.concurrency_per_user), (None, None));
        let key = |k: &str| Expr::parse(k).unwrap();
        assert_eq!(
            l.keyed,
            vec![
                Keyed { scope: "app-f".into(), key: key("event.data.teamId"), limit: 3 },
                Keyed { scope: "env".into(), key: key("event.data.region"), limit: 9 }
            ]
        );
        assert!(l.unsupported.is_empty());
        let l = limits("app-f", &json!({"throttle": {"limit": 5, "period": "1m30s", "key": "event.user.id"}}), &keys());
        assert_eq!(l.rate, Some((5, Duration::from_secs(90))));
        let l = limits("app-f", &json!({"throttle": {"limit": 2, "period": "10s", "burst": 1, "key": "event.data.shop"}}), &keys());
        let shop = Throttle { key: key("event.data.shop"), limit: 2, burst: 1, period: Duration::from_secs(10) };
        assert_eq!((l.rate, l.throttle), (None, Some(shop)));
    }

    #[test]
    fn periods_read_as_inngest_writes_them() {
        assert_eq!(period("30s"), Some(Duration::from_secs(30)));
        assert_eq!(period("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(period("soon"), None);
        assert_eq!(period("0s"), None);
    }
}
