//! Alert thresholds (`[alerts]` in the job config) and which of them a
//! type's figures cross. Pure: the figures come from `alerts`.
//!
//! ```toml
//! [alerts]
//! webhook = "https://ops.example/rowcast"  # POSTed once per crossing and once when it clears
//! failure_rate = 0.2   # share of the last hour's ended runs that failed (with at least `min_ended`)
//! min_ended = 5
//! queue_depth = 1000   # runs waiting to start
//! p95_factor = 3.0     # the last hour's p95 run time against the day's before it
//! stuck = 1            # runs rescued from a lost runner or expired in the last hour
//! every = "10s"        # how often the figures are checked
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[alerts]` section as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    webhook: Option<String>,
    failure_rate: Option<f64>,
    min_ended: Option<i64>,
    queue_depth: Option<i64>,
    p95_factor: Option<f64>,
    stuck: Option<i64>,
    every: Option<String>,
}

/// The thresholds in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerts {
    pub webhook: Option<String>,
    pub failure_rate: f64,
    pub min_ended: i64,
    pub queue_depth: i64,
    pub p95_factor: f64,
    pub stuck: i64,
    pub every: Duration,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts::read(RawAlerts::default()).expect("the defaults are valid")
    }
}

impl Alerts {
    /// Checks the section; an error says which setting is wrong.
    pub fn read(raw: RawAlerts) -> Result<Alerts, String> {
        let a = Alerts {
            webhook: raw.webhook,
            failure_rate: raw.failure_rate.unwrap_or(0.2),
            min_ended: raw.min_ended.unwrap_or(5),
            queue_depth: raw.queue_depth.unwrap_or(1000),
            p95_factor: raw.p95_factor.unwrap_or(3.0),
            stuck: raw.stuck.unwrap_or(1),
            every: match raw.every.as_deref() {
                Some(t) => crate::config::parse_duration(t).map_err(|e| format!("every: {e}"))?,
                None => Duration::from_secs(10),
            },
        };
        if !(0.0..=1.0).contains(&a.failure_rate) {
            return Err("failure_rate must be between 0 and 1".into());
        }
        if a.min_ended < 1 || a.queue_depth < 1 || a.stuck < 1 || a.p95_factor <= 1.0 || a.every.is_zero() {
            return Err("min_ended, queue_depth and stuck must be at least 1, p95_factor above 1, every above 0".into());
        }
        if a.webhook.as_deref().is_some_and(|u| !super::config::is_http(u)) {
            return Err("webhook must be an http:// or https:// URL".into());
        }
        Ok(a)
    }
}

/// One type's figures, as `alerts::figures` reads them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct Figures {
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub job_type: String,
    pub pending: i64,
    pub running: i64,
    pub oldest_pending_secs: Option<f64>,
    pub created_1h: i64,
    pub completed_1h: i64,
    pub failed_1h: i64,
    pub p95_secs_1h: Option<f64>,
    /// The usual level: p95 run time over the day before the last hour.
    pub p95_secs_day: Option<f64>,
    pub stuck_1h: i64,
}

impl Figures {
    /// Failed runs among those that ended in the last hour.
    pub fn failure_rate(&self) -> Option<f64> {
        let ended = self.completed_1h + self.failed_1h;
        (ended > 0).then(|| self.failed_1h as f64 / ended as f64)
    }
}

/// A threshold a type is past: its name, the figure and the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Crossing {
    pub alert: &'static str,
    pub value: f64,
    pub threshold: f64,
}

/// The names of every alert, in the order they are checked.
pub const NAMES: [&str; 4] = ["failure_rate", "queue_depth", "p95", "stuck"];

/// Every threshold `f` is past.
pub fn crossed(f: &Figures, a: &Alerts) -> Vec<Crossing> {
    let mut out = Vec::new();
    let ended = f.completed_1h + f.failed_1h;
    if let Some(rate) = f.failure_rate().filter(|r| ended >= a.min_ended && *r > a.failure_rate) {
        out.push(Crossing { alert: "failure_rate", value: rate, threshold: a.failure_rate });
    }
    if f.pending >= a.queue_depth {
        out.push(Crossing { alert: "queue_depth", value: f.pending as f64, threshold: a.queue_depth as f64 });
    }
    if let (Some(now), Some(usual)) = (f.p95_secs_1h, f.p95_secs_day) {
        if usual > 0.0 && now > usual * a.p95_factor {
            out.push(Crossing { alert: "p95", value: now, threshold: usual * a.p95_factor });
        }
    }
    if f.stuck_1h >= a.stuck {
        out.push(Crossing { alert: "stuck", value: f.stuck_1h as f64, threshold: a.stuck as f64 });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_threshold_is_crossed_only_past_its_setting() {
        let a = Alerts::default();
        let calm = Figures {
            completed_1h: 90,
            failed_1h: 10,
            pending: 999,
            p95_secs_1h: Some(2.9),
            p95_secs_day: Some(1.0),
            ..Figures::default()
        };
        assert_eq!(crossed(&calm, &a), vec![]);
        let bad =
            Figures { completed_1h: 5, failed_1h: 5, pending: 1000, p95_secs_1h: Some(3.1), p95_secs_day: Some(1.0), stuck_1h: 1, ..calm };
        let names: Vec<&str> = crossed(&bad, &a).iter().map(|c| c.alert).collect();
        assert_eq!(names, NAMES.to_vec());
        let few = Figures { completed_1h: 1, failed_1h: 3, ..Figures::default() };
        assert_eq!(crossed(&few, &a), vec![], "4 ended runs are fewer than min_ended");
    }

    #[test]
    fn settings_out_of_range_are_refused_with_which() {
        let raw = |t: &str| toml::from_str::<RawAlerts>(t).unwrap();
        assert!(Alerts::read(raw("failure_rate = 1.5")).unwrap_err().contains("failure_rate"));
        assert!(Alerts::read(raw("p95_factor = 0.5")).unwrap_err().contains("p95_factor"));
        assert!(Alerts::read(raw("webhook = \"ftp://x\"")).unwrap_err().contains("webhook"));
        assert_eq!(Alerts::read(raw("queue_depth = 3\nevery = \"1s\"")).unwrap().queue_depth, 3);
    }
}
