//! The changes this gateway delivered lately, for channels that resume after
//! a handoff (`realtime::handoff`): kept for a few seconds, at most
//! `MAX_RECENT` of them and `MAX_RECENT_BYTES` of row data (estimated), in
//! delivery order. So a burst of large rows costs at most that much memory,
//! for at most the ttl. Pure.
//!
//! `floor` is the highest id that may be missing: the reader's starting
//! point (nothing below it was delivered here) or the highest id let go. A
//! resume from above the floor finds every change it needs here; one from
//! at or below it also reads the log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::changes::change::{Change, TableMeta};
use crate::changes::window::Position;

/// Most changes kept.
pub const MAX_RECENT: usize = 20_000;
/// Most row data kept, in bytes (as `approx_bytes` counts them).
pub const MAX_RECENT_BYTES: usize = 16 * 1024 * 1024;

/// A delivered change and the table it was delivered as; `None`: a
/// `realtime.messages` row (a broadcast sent from SQL).
pub type Delivered = (Arc<Change>, Option<Arc<TableMeta>>);

/// Recently delivered changes.
#[derive(Debug)]
pub struct Recent {
    kept: VecDeque<(Delivered, Instant, usize)>,
    floor: i64,
    keep_for: Duration,
    max: usize,
    max_bytes: usize,
    bytes: usize,
}

/// What a resuming channel gets from `Recent::since`.
#[derive(Debug)]
pub struct Since {
    /// The kept changes the asked position misses, in delivery order.
    pub changes: Vec<Delivered>,
    /// False when some change it misses may not be kept: read the log too.
    pub complete: bool,
    /// The highest id that may be missing from `changes`: everything above
    /// it that the position misses is there.
    pub floor: i64,
}

impl Recent {
    /// Keeps changes for `keep_for` (zero: none), at most `max` of them and `max_bytes` of data.
    pub fn new(keep_for: Duration, max: usize, max_bytes: usize) -> Self {
        Recent { kept: VecDeque::new(), floor: i64::MAX, keep_for, max, max_bytes, bytes: 0 }
    }

    fn raise_floor(&mut self, id: i64) {
        self.floor = if self.floor == i64::MAX { id } else { self.floor.max(id) };
    }

    /// The reader starts at `high_water`: nothing at or below it was delivered here.
    pub fn starting_at(&mut self, high_water: i64) {
        self.raise_floor(high_water);
    }

    /// Keeps `change`, delivered at `now`, and lets go of what is too old or too many.
    pub fn push(&mut self, change: Delivered, now: Instant) {
        if self.keep_for.is_zero() {
            return;
        }
        let size = approx_bytes(&change.0);
        if size > self.max_bytes {
            // Never kept: a resume from below it reads the log.
            self.raise_floor(change.0.id);
        } else {
            self.bytes += size;
            self.kept.push_back((change, now, size));
        }
        self.let_go_of_old(now);
    }

    /// Lets go of the changes older than the ttl, and of the oldest past the bounds.
    pub fn let_go_of_old(&mut self, now: Instant) {
        while let Some(((oldest, _), at, size)) = self.kept.front() {
            let fits = self.kept.len() <= self.max && self.bytes <= self.max_bytes;
            if fits && now.duration_since(*at) < self.keep_for {
                break;
            }
            let (id, size) = (oldest.id, *size);
            self.raise_floor(id);
            self.bytes -= size;
            self.kept.pop_front();
        }
    }

    /// The kept changes that `from` misses.
    pub fn since(&self, from: &Position) -> Since {
        let changes = self.kept.iter().filter(|((c, _), _, _)| from.missed(c.id)).map(|(d, _, _)| d.clone()).collect();
        Since { changes, complete: self.floor != i64::MAX && from.lowest() > self.floor, floor: self.floor }
    }
}

/// About how many bytes a change's rows take: their JSON text's length, give or take.
fn approx_bytes(change: &Change) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::Null | Value::Bool(_) => 4,
            Value::Number(_) => 8,
            Value::String(s) => s.len() + 2,
            Value::Array(items) => items.iter().map(value).sum::<usize>() + 2,
            Value::Object(map) => map.iter().map(|(k, v)| k.len() + 3 + value(v)).sum::<usize>() + 2,
        }
    }
    let rows = [&change.record, &change.old_record];
    64 + rows.into_iter().flatten().map(|m| m.iter().map(|(k, v)| k.len() + 3 + value(v)).sum::<usize>()).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: i64) -> Delivered {
        let meta = TableMeta::owned_for_tests("t", &[("v", "text")]);
        let c = Change {
            id,
            changed_at: chrono::Utc::now(),
            schema: "public".into(),
            table: "t".into(),
            op: crate::changes::change::Op::Insert,
            owner: None,
            record: None,
            old_record: None,
        };
        (Arc::new(c), Some(Arc::new(meta)))
    }

    /// A position that misses every id from `id` on.
    fn from(id: i64) -> Position {
        Position { high_water: id - 1, gaps: Vec::new() }
    }

    fn ids(s: &Since) -> Vec<i64> {
        s.changes.iter().map(|(c, _)| c.id).collect()
    }

    #[test]
    fn a_resume_above_the_starting_point_is_served_from_memory_in_delivery_order() {
        let mut r = Recent::new(Duration::from_secs(30), 100, 1 << 20);
        r.starting_at(10);
        let now = Instant::now();
        for id in [11, 13, 12, 14] {
            r.push(change(id), now);
        }
        let s = r.since(&from(12));
        assert_eq!((ids(&s), s.complete), (vec![13, 12, 14], true));
        assert!(!r.since(&from(10)).complete, "ids at or below the starting point were never delivered here");
        let with_gap = Position { high_water: 13, gaps: vec![12] };
        let s = r.since(&with_gap);
        assert_eq!((ids(&s), s.complete), (vec![12, 14], true), "a gap is replayed, what was delivered below the mark is not");
    }

    #[test]
    fn letting_go_of_old_or_surplus_changes_raises_the_floor() {
        let mut r = Recent::new(Duration::from_secs(30), 2, 1 << 20);
        r.starting_at(0);
        let start = Instant::now();
        r.push(change(1), start);
        r.push(change(2), start);
        r.push(change(3), start);
        assert_eq!(ids(&r.since(&from(0))), vec![2, 3]);
        assert!(!r.since(&from(1)).complete);
        assert!(r.since(&from(2)).complete);
        r.push(change(4), start + Duration::from_secs(31));
        assert_eq!(ids(&r.since(&from(0))), vec![4]);
        assert!(!r.since(&from(3)).complete && r.since(&from(4)).complete);
        r.let_go_of_old(start + Duration::from_secs(62));
        assert!(r.since(&from(0)).changes.is_empty(), "an idle gateway lets go too");
    }

    #[test]
    fn rows_past_the_byte_budget_are_let_go_oldest_first_and_a_row_larger_than_it_is_never_kept() {
        let sized = |id: i64, kb: usize| {
            let (mut c, meta) = change(id);
            Arc::make_mut(&mut c).record = serde_json::json!({"v": "x".repeat(kb * 1024)}).as_object().cloned();
            (c, meta)
        };
        let mut r = Recent::new(Duration::from_secs(30), 100, 10 * 1024);
        r.starting_at(0);
        let now = Instant::now();
        for id in 1..=3 {
            r.push(sized(id, 4), now);
        }
        assert_eq!(ids(&r.since(&from(0))), vec![2, 3], "three 4 KiB rows do not fit in 10 KiB");
        assert!(!r.since(&from(1)).complete && r.since(&from(2)).complete);
        r.push(sized(4, 20), now);
        assert_eq!(ids(&r.since(&from(0))), vec![2, 3]);
        assert!(!r.since(&from(4)).complete && r.since(&from(5)).complete, "a resume from below the big row reads the log");
    }

    #[test]
    fn before_the_reader_starts_nothing_is_complete_and_with_no_ttl_nothing_is_kept() {
        assert!(!Recent::new(Duration::from_secs(1), 10, 1 << 20).since(&from(5)).complete);
        let mut off = Recent::new(Duration::ZERO, 10, 1 << 20);
        off.starting_at(0);
        off.push(change(1), Instant::now());
        assert!(off.since(&from(0)).changes.is_empty());
    }
}
