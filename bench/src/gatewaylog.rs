//! When the gateway read each change, from its own JSON log (pure).
//!
//! The tool starts the gateway with `ROWCAST_LOG_FORMAT=json` and the change
//! listener at `debug`, so every batch the listener reads from the change log
//! leaves one `delivering changes` line with its first id, its count and a
//! wall-clock timestamp taken just before the fan-out starts. One clock on one
//! machine, so these compare with the clients' receive stamps.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The listener's target and level the tool turns on.
pub const LOG_FILTER: &str = "info,sqlx=warn,rowcast::changes::listener=debug";

/// The message of the listener's per-batch line.
const DELIVERING: &str = "delivering changes";

#[derive(Deserialize)]
struct Line {
    timestamp: String,
    message: Option<String>,
    first: Option<i64>,
    count: Option<i64>,
}

/// Change-log id -> Unix microseconds when the listener handed it to the
/// fan-out. Lines that are not the listener's batch line are skipped.
pub fn read_times(log: &str) -> BTreeMap<i64, i64> {
    let mut times = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains(DELIVERING)) {
        let Ok(line) = serde_json::from_str::<Line>(line) else { continue };
        let (Some(first), Some(count)) = (line.first, line.count) else { continue };
        if line.message.as_deref() != Some(DELIVERING) {
            continue;
        }
        let Ok(at) = chrono::DateTime::parse_from_rfc3339(&line.timestamp) else { continue };
        for id in first..first + count {
            times.insert(id, at.timestamp_micros());
        }
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_of_a_batch_gets_the_batch_line_timestamp_and_other_lines_are_skipped() {
        let log = concat!(
            r#"{"timestamp":"2026-11-23T10:00:00.000000Z","level":"INFO","message":"change listener live","from":0}"#,
            "\n",
            r#"{"timestamp":"2026-11-23T10:00:01.250000Z","level":"DEBUG","message":"delivering changes","count":2,"first":7,"target":"rowcast::changes::listener"}"#,
            "\nnot json delivering changes\n",
            r#"{"timestamp":"2026-11-23T10:00:02.000001Z","level":"DEBUG","message":"delivering changes","count":1,"first":9}"#,
        );
        let times = read_times(log);
        let base = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z").unwrap().timestamp_micros();
        assert_eq!(times.len(), 3);
        assert_eq!(times[&7] - base, 1_250_000);
        assert_eq!(times[&8] - base, 1_250_000);
        assert_eq!(times[&9] - base, 2_000_001);
    }
}
