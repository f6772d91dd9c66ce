//! Job types, cron entries and runner settings from a TOML file. Pure.
//!
//! ```toml
//! signing_secret = "..."          # HMAC key for HTTP step calls
//! [jobs.summarize]
//! url = "http://127.0.0.1:8080/steps"   # or https://..., or builtin = "demo"
//! max_attempts = 5
//! backoff_base = "1s"
//! backoff_max = "10m"
//! timeout = "30s"                 # per step
//! concurrency = 10                # running at once, all users
//! concurrency_per_user = 2
//! rate_limit = "10/1m"            # starts per user per window
//! max_active_per_user = 5         # pending + running, checked at enqueue
//! enqueue = "user"                # or "service"
//! on_failure = "job:notify"       # or an http:// or https:// URL
//! pending_timeout = "1h"
//! running_timeout = "1h"
//! [[cron]]
//! schedule = "0 */6 * * *"
//! type = "summarize"
//! input = { scope = "all" }
//! [retention]
//! completed = "30d"
//! failed = "7d"
//! [runner]
//! slots = 10
//! lease = "15s"
//! poll = "1s"
//! shutdown_grace = "30s"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse_duration, Secret};

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid job config: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("job type {0:?}: {1}")]
    Type(String, String),
    #[error("cron entry {0:?}: {1}")]
    Cron(String, String),
}

/// Who may enqueue a type over REST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Enqueuer {
    /// Any signed-in user, for themselves (and the service role for anyone).
    #[default]
    User,
    /// Only the service role.
    Service,
}

/// How a type's steps run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// POST the HTTP step protocol to this URL.
    Http(String),
    /// A handler compiled into rowcast (`demo`).
    Builtin(String),
    /// A synced Inngest function (never from the config file).
    Inngest,
}

/// What happens after a job's final failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// POST the failed job to this URL.
    Http(String),
    /// Enqueue a job of this type with `{failed_job: <row>}` as input.
    Job(String),
}

/// One `[jobs.<type>]` section.
#[derive(Debug, Clone)]
pub struct JobType {
    pub name: String,
    pub handler: Handler,
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    pub concurrency: Option<i32>,
    pub concurrency_per_user: Option<i32>,
    /// (starts, window) per user.
    pub rate_limit: Option<(i32, Duration)>,
    pub max_active_per_user: Option<i32>,
    pub enqueue: Enqueuer,
    pub on_failure: Option<OnFailure>,
    pub pending_timeout: Duration,
    pub running_timeout: Duration,
}

/// One `[[cron]]` entry.
#[derive(Debug, Clone)]
pub struct CronEntry {
    /// Unique name (defaults to `<type>@<schedule>`).
    pub name: String,
    pub schedule: croner::Cron,
    pub job_type: String,
    pub input: Value,
}

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Jobs one process runs at once.
    pub slots: usize,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// Fallback poll when no doorbell rings.
    pub poll: Duration,
    /// How long running steps may finish after SIGTERM.
    pub shutdown_grace: Duration,
}

/// The whole file.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub types: BTreeMap<String, JobType>,
    pub cron: Vec<CronEntry>,
    /// The HMAC key of step and hook calls; required when any of them is an HTTP URL.
    pub signing_secret: Option<Secret>,
    pub keep_completed: Duration,
    pub keep_failed: Duration,
    pub runner: RunnerSettings,
    /// Alert thresholds and where crossings are sent.
    pub alerts: super::alert_rules::Alerts,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    signing_secret: Option<String>,
    #[serde(default)]
    jobs: BTreeMap<String, RawType>,
    #[serde(default)]
    cron: Vec<RawCron>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    runner: RawRunner,
    #[serde(default)]
    alerts: super::alert_rules::RawAlerts,
    /// `[realtime]` belongs to the gateway (`realtime::topic_rules`), not to jobs.
    #[serde(default, rename = "realtime")]
    _realtime: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawType {
    url: Option<String>,
    builtin: Option<String>,
    max_attempts: Option<i32>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    timeout: Option<String>,
    concurrency: Option<i32>,
    concurrency_per_user: Option<i32>,
    rate_limit: Option<String>,
    max_active_per_user: Option<i32>,
    #[serde(default)]
    enqueue: Enqueuer,
    on_failure: Option<String>,
    pending_timeout: Option<String>,
    running_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCron {
    name: Option<String>,
    schedule: String,
    #[serde(rename = "type")]
    job_type: String,
    #[serde(default)]
    input: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    completed: Option<String>,
    failed: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    slots: Option<usize>,
    lease: Option<String>,
    poll: Option<String>,
    shutdown_grace: Option<String>,
}

/// A cron schedule: five fields as in crontab; a sixth, leading seconds field is allowed.
pub fn parse_cron(fields: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Optional).build().parse(fields)
}

/// Whether `url` is one the HTTP client calls (http, or https through rustls).
pub fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The built-in demo type, as `--demo-jobs` adds it.
pub const DEMO_TYPE: &str = r#"
[jobs.demo]
builtin = "demo"
max_attempts = 3
backoff_base = "1s"
backoff_max = "5s"
timeout = "30s"
concurrency_per_user = 4
max_active_per_user = 10
"#;

fn duration(text: Option<&str>, default: Duration, what: &str) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(t).map_err(|e| format!("{what}: {e}")),
    }
}

impl JobsConfig {
    /// Reads a file; `demo` adds the built-in demo type (see `with_demo_type`).
    pub fn load(path: &str, demo: bool) -> Result<JobsConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse_with(&text, demo)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<JobsConfig, ConfigError> {
        Self::parse_with(text, false)
    }

    /// Parses TOML text, with the demo type when `demo` (cron entries may then name it).
    pub fn parse_with(text: &str, demo: bool) -> Result<JobsConfig, ConfigError> {
        let raw: RawFile = toml::from_str(text)?;
        let mut types = raw
            .jobs
            .into_iter()
            .map(|(name, t)| job_type(&name, t).map(|t| (name.clone(), t)).map_err(|e| ConfigError::Type(name, e)))
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        if demo && !types.contains_key("demo") {
            let RawFile { jobs, .. } = toml::from_str(DEMO_TYPE).expect("the built-in demo type parses");
            for (name, t) in jobs {
                types.insert(name.clone(), job_type(&name, t).expect("the built-in demo type is valid"));
            }
        }
        // An empty key signs nothing anyone could not sign too: it counts as not set.
        let signing_secret = raw.signing_secret.filter(|s| !s.is_empty()).map(Secret::new);
        if signing_secret.is_none() {
            unsigned_http(&types)?;
        }
        let cron = raw.cron.into_iter().map(|c| cron_entry(c, &types)).collect::<Result<_, _>>()?;
        let day = Duration::from_secs(86_400);
        let retention =
            |t: Option<String>, d: Duration| duration(t.as_deref(), d, "retention").map_err(|e| ConfigError::Type("retention".into(), e));
        let r = raw.runner;
        let runner_err = |e: String| ConfigError::Type("runner".into(), e);
        let alerts = super::alert_rules::Alerts::read(raw.alerts).map_err(|e| ConfigError::Type("alerts".into(), e))?;
        if alerts.webhook.is_some() && signing_secret.is_none() {
            return Err(ConfigError::Type("alerts".into(), "the webhook is an HTTP URL but signing_secret is not set".into()));
        }
        Ok(JobsConfig {
            types,
            cron,
            signing_secret,
            keep_completed: retention(raw.retention.completed, 30 * day)?,
            keep_failed: retention(raw.retention.failed, 7 * day)?,
            runner: RunnerSettings {
                slots: r.slots.unwrap_or(10).max(1),
                lease: duration(r.lease.as_deref(), Duration::from_secs(15), "lease").map_err(runner_err)?,
                poll: duration(r.poll.as_deref(), Duration::from_secs(1), "poll").map_err(runner_err)?,
                shutdown_grace: duration(r.shutdown_grace.as_deref(), Duration::from_secs(30), "shutdown_grace").map_err(runner_err)?,
            },
            alerts,
        })
    }

    /// Adds the built-in `demo` type (unless the config defines one).
    pub fn with_demo_type(mut self) -> Self {
        if !self.types.contains_key("demo") {
            self.types.extend(JobsConfig::parse_with("", true).expect("the built-in demo type parses").types);
        }
        self
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig::parse("").expect("an empty config parses")
    }
}

/// Refuses HTTP step or hook URLs when nothing signs the calls: a handler
/// reachable over HTTP could not tell the runner's calls from anyone's.
fn unsigned_http(types: &BTreeMap<String, JobType>) -> Result<(), ConfigError> {
    for (name, t) in types {
        let step = matches!(t.handler, Handler::Http(_));
        let hook = matches!(t.on_failure, Some(OnFailure::Http(_)));
        if step || hook {
            let what = if step { "its step handler" } else { "its on_failure hook" };
            return Err(ConfigError::Type(
                name.clone(),
                format!("{what} is an HTTP URL but signing_secret is not set: set a top-level signing_secret so the handler can verify each call"),
            ));
        }
    }
    Ok(())
}

fn job_type(name: &str, t: RawType) -> Result<JobType, String> {
    if name == "bulk" {
        return Err("`bulk` is reserved for bulk-enqueue parents".into());
    }
    let handler = match (t.url, t.builtin) {
        (Some(url), None) if is_http(&url) => Handler::Http(url),
        (Some(url), None) => return Err(format!("url {url:?} must start with http:// or https://")),
        (None, Some(b)) if b == "demo" => Handler::Builtin(b),
        (None, Some(b)) => return Err(format!("unknown builtin {b:?} (the one builtin is \"demo\")")),
        _ => return Err("give exactly one of `url` or `builtin`".into()),
    };
    let positive = |v: Option<i32>, what: &str| match v {
        Some(n) if n < 1 => Err(format!("{what} must be at least 1")),
        v => Ok(v),
    };
    let on_failure = t.on_failure.map(|f| match f.strip_prefix("job:") {
        Some(job) => Ok(OnFailure::Job(job.to_owned())),
        None if is_http(&f) => Ok(OnFailure::Http(f)),
        None => Err(format!("on_failure {f:?}: use \"job:<type>\" or an http:// or https:// URL")),
    });
    Ok(JobType {
        name: name.to_owned(),
        handler,
        max_attempts: positive(t.max_attempts, "max_attempts")?.unwrap_or(5),
        backoff_base: duration(t.backoff_base.as_deref(), Duration::from_secs(1), "backoff_base")?,
        backoff_max: duration(t.backoff_max.as_deref(), Duration::from_secs(600), "backoff_max")?,
        timeout: duration(t.timeout.as_deref(), Duration::from_secs(30), "timeout")?,
        concurrency: positive(t.concurrency, "concurrency")?,
        concurrency_per_user: positive(t.concurrency_per_user, "concurrency_per_user")?,
        rate_limit: t.rate_limit.as_deref().map(parse_rate).transpose()?,
        max_active_per_user: positive(t.max_active_per_user, "max_active_per_user")?,
        enqueue: t.enqueue,
        on_failure: on_failure.transpose()?,
        pending_timeout: duration(t.pending_timeout.as_deref(), Duration::from_secs(86_400), "pending_timeout")?,
        running_timeout: duration(t.running_timeout.as_deref(), Duration::from_secs(3600), "running_timeout")?,
    })
}

/// `"10/1m"`: 10 starts per minute.
fn parse_rate(text: &str) -> Result<(i32, Duration), String> {
    let (n, window) = text.split_once('/').ok_or_else(|| format!("rate_limit {text:?}: use \"<count>/<window>\", e.g. \"10/1m\""))?;
    let n: i32 = n.trim().parse().map_err(|_| format!("rate_limit {text:?}: count is not a number"))?;
    let window = parse_duration(window)?;
    if n < 1 || window.is_zero() {
        return Err(format!("rate_limit {text:?}: count and window must be positive"));
    }
    Ok((n, window))
}

fn cron_entry(c: RawCron, types: &BTreeMap<String, JobType>) -> Result<CronEntry, ConfigError> {
    let name = c.name.unwrap_or_else(|| format!("{}@{}", c.job_type, c.schedule));
    let err = |e: String| ConfigError::Cron(name.clone(), e);
    if !types.contains_key(&c.job_type) {
        return Err(err(format!("unknown job type {:?}", c.job_type)));
    }
    let schedule = parse_cron(&c.schedule).map_err(|e| err(format!("schedule {:?}: {e}", c.schedule)))?;
    let input = match c.input {
        Some(v) => serde_json::to_value(v).map_err(|e| err(e.to_string()))?,
        None => Value::Object(Default::default()),
    };
    Ok(CronEntry { name, schedule, job_type: c.job_type, input })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_type_section_parses_with_its_limits() {
        let c = JobsConfig::parse(
            r#"
            signing_secret = "s"
            [jobs.sum]
            url = "http://127.0.0.1:9/steps"
            max_attempts = 3
            rate_limit = "10/1m"
            concurrency_per_user = 2
            on_failure = "job:alert"
            enqueue = "service"
            [jobs.alert]
            builtin = "demo"
            [[cron]]
            schedule = "0 */6 * * *"
            type = "sum"
            input = { scope = "all" }
            "#,
        )
        .unwrap();
        let sum = &c.types["sum"];
        assert_eq!(sum.rate_limit, Some((10, Duration::from_secs(60))));
        assert_eq!(sum.on_failure, Some(OnFailure::Job("alert".into())));
        assert_eq!(sum.enqueue, Enqueuer::Service);
        assert_eq!(c.cron[0].input, serde_json::json!({"scope": "all"}));
        assert_eq!(c.keep_completed, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |t: &str| JobsConfig::parse(t).unwrap_err().to_string();
        assert!(err("[jobs.a]\nmax_attempts = 3").contains("exactly one of `url` or `builtin`"));
        assert!(err("[jobs.a]\nurl = \"ftp://x\"").contains("must start with http"));
        assert!(
            JobsConfig::parse("signing_secret = \"s\"\n[jobs.a]\nurl = \"https://x.example/steps\"").is_ok(),
            "https step URLs are accepted"
        );
        assert!(err("[jobs.a]\nbuiltin = \"demo\"\nrate_limit = \"ten\"").contains("rate_limit"));
        assert!(err("[jobs.a]\nbuiltin = \"demo\"\nbogus = 1").contains("bogus"));
        assert!(err("[jobs.a]\nbuiltin = \"demo\"\n[[cron]]\nschedule = \"nope\"\ntype = \"a\"").contains("schedule"));
        assert!(err("[[cron]]\nschedule = \"* * * * *\"\ntype = \"missing\"").contains("unknown job type"));
        assert!(err("[jobs.bulk]\nbuiltin = \"demo\"").contains("reserved"));
    }

    #[test]
    fn an_http_handler_or_hook_without_a_signing_secret_is_refused_by_name() {
        let err = |t: &str| JobsConfig::parse(t).unwrap_err().to_string();
        let step = err("[jobs.summarize]\nurl = \"http://127.0.0.1:9/steps\"");
        assert_eq!(
            step,
            "job type \"summarize\": its step handler is an HTTP URL but signing_secret is not set: \
             set a top-level signing_secret so the handler can verify each call"
        );
        let hook = err("[jobs.a]\nbuiltin = \"demo\"\non_failure = \"http://127.0.0.1:9/hook\"");
        assert!(hook.starts_with("job type \"a\": its on_failure hook is an HTTP URL"), "{hook}");
        let empty = err("signing_secret = \"\"\n[jobs.summarize]\nurl = \"http://127.0.0.1:9/steps\"");
        assert_eq!(empty, step, "an empty signing_secret counts as not set");
        assert!(JobsConfig::parse("signing_secret = \"k\"\n[jobs.a]\nurl = \"http://127.0.0.1:9/\"").is_ok());
    }

    #[test]
    fn the_signing_secret_never_shows_in_debug_output() {
        let c = JobsConfig::parse("signing_secret = \"hush-hush-0123\"\n[jobs.a]\nurl = \"http://127.0.0.1:9/\"").unwrap();
        assert!(!format!("{c:?}").contains("hush-hush"));
    }

    #[test]
    fn the_demo_type_is_added_on_request() {
        let c = JobsConfig::default().with_demo_type();
        assert_eq!(c.types["demo"].handler, Handler::Builtin("demo".into()));
        assert_eq!(c.types["demo"].max_active_per_user, Some(10));
    }
}
