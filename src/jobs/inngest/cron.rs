//! Cron triggers of synced Inngest functions: `{cron: "0 3 * * *"}`,
//! optionally `TZ=Europe/Paris ` (or `CRON_TZ=`) in front. Each due tick
//! starts one run of that function only, with the event Inngest sends,
//! `inngest/scheduled.timer` (`id` the tick in RFC 3339, `data.cron` the
//! spec), once across all runners: the tick's row in `rowcast.cron_slots`
//! decides who starts it. A tick is started within `CATCH_UP` of its time
//! or not at all (a runner down longer does not start a burst of old ticks).
//! Five fields as Inngest takes them; a sixth, leading seconds field is
//! accepted too.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use sqlx::PgPool;
use tracing::{info, warn};

use super::call::run_input;
use super::dispatch::Runs;
use crate::jobs::config::parse_cron;

/// How late a tick may still start.
const CATCH_UP: Duration = Duration::from_secs(10);

/// A parsed cron trigger.
#[derive(Debug, Clone)]
pub struct Schedule {
    spec: String,
    zone: Tz,
    cron: croner::Cron,
}

impl Schedule {
    /// Reads a trigger's `cron` string.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let trimmed = spec.trim();
        let (zone, fields) = match trimmed.strip_prefix("TZ=").or_else(|| trimmed.strip_prefix("CRON_TZ=")) {
            Some(rest) => {
                let (name, fields) = rest.split_once(' ').ok_or_else(|| format!("cron {spec:?}: no fields after the time zone"))?;
                (name.parse::<Tz>().map_err(|_| format!("cron {spec:?}: unknown time zone {name:?}"))?, fields.trim())
            }
            None => (Tz::UTC, trimmed),
        };
        let cron = parse_cron(fields).map_err(|e| format!("cron {spec:?}: {e}"))?;
        Ok(Schedule { spec: spec.to_owned(), zone, cron })
    }

    /// The latest tick at or before `now`.
    pub fn last_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.zone);
        self.cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }
}

/// What this runner remembers between passes: each cron spec parsed once
/// (`None` when it cannot be read, which is logged the first time only),
/// and the ticks it already started or saw started, so it asks the
/// database once per tick.
#[derive(Default)]
pub struct Ticks {
    schedules: HashMap<String, Option<Schedule>>,
    fired: HashMap<String, DateTime<Utc>>,
}

/// Starts the due tick of every cron trigger not started yet.
pub async fn fire(pool: &PgPool, seen: &mut Ticks) -> Result<(), sqlx::Error> {
    let rows: Vec<(String, Value)> =
        sqlx::query_as("select id, triggers from rowcast.inngest_functions where jsonb_path_exists(triggers, '$[*].cron')")
            .fetch_all(pool)
            .await?;
    let now = Utc::now();
    for (function, triggers) in rows {
        for spec in triggers.as_array().into_iter().flatten().filter_map(|t| t.get("cron").and_then(Value::as_str)) {
            let parsed = seen.schedules.entry(spec.to_owned()).or_insert_with(|| {
                Schedule::parse(spec)
                    .inspect_err(|e| warn!(%function, error = %e, "an Inngest cron trigger is not understood; it never fires"))
                    .ok()
            });
            let Some(schedule) = parsed.as_ref() else { continue };
            let Some(tick) = schedule.last_tick(now) else { continue };
            let name = format!("inngest:{function}:{spec}");
            if seen.fired.get(&name) == Some(&tick) || (now - tick).to_std().unwrap_or_default() > CATCH_UP {
                continue;
            }
            start(pool, &function, &name, schedule, tick).await?;
            seen.fired.insert(name, tick);
        }
    }
    Ok(())
}

/// Starts `function` for `tick` unless a runner already did.
async fn start(pool: &PgPool, function: &str, name: &str, schedule: &Schedule, tick: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let stamp = tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event = json!({
        "id": stamp,
        "name": "inngest/scheduled.timer",
        "data": {"cron": schedule.spec, "scheduledAt": stamp, "fireAt": stamp},
        "ts": tick.timestamp_millis(),
        "user": {},
    });
    // The tick's slot is a primary key: only the runner whose insert wins starts the run.
    let mut tx = pool.begin().await?;
    let won = sqlx::query("insert into rowcast.cron_slots (name, slot) values ($1, $2) on conflict do nothing")
        .bind(name)
        .bind(tick)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if won {
        let mut runs = Runs::default();
        runs.push(function, None, run_input(event), 0);
        runs.insert(&mut tx).await?;
    }
    tx.commit().await?;
    if won {
        info!(%function, tick = %stamp, "Inngest cron tick started a run");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_tz_prefixed_schedule_ticks_at_that_zones_wall_clock_through_daylight_saving() {
        let s = Schedule::parse("TZ=Europe/Paris 0 3 * * *").unwrap();
        assert_eq!(s.last_tick(at("2026-01-15T12:00:00Z")), Some(at("2026-01-15T02:00:00Z")));
        assert_eq!(s.last_tick(at("2026-07-15T12:00:00Z")), Some(at("2026-07-15T01:00:00Z")));
        let utc = Schedule::parse("30 * * * *").unwrap();
        assert_eq!(utc.last_tick(at("2026-07-15T12:10:00Z")), Some(at("2026-07-15T11:30:00Z")));
    }

    #[test]
    fn unknown_zones_and_bad_fields_are_refused_with_the_spec() {
        assert!(Schedule::parse("TZ=Mars/Olympus 0 3 * * *").unwrap_err().contains("unknown time zone"));
        assert!(Schedule::parse("0 99 * * *").unwrap_err().contains("0 99 * * *"));
        assert!(Schedule::parse("TZ=UTC").is_err());
    }
}
