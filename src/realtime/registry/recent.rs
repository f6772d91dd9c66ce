//! The changes this gateway delivered lately, for channels that resume after
//! a handoff (`realtime::handoff`): kept for the handoff ttl, at most
//! `MAX_RECENT`, in delivery order. Pure.
//!
//! `floor` is the highest id that may be missing: the reader's starting
//! point (nothing below it was delivered here) or the highest id let go. A
//! resume from above the floor finds every change it needs here; one from
//! at or below it also reads the log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::changes::change::{Change, TableMeta};

/// Most changes kept.
pub const MAX_RECENT: usize = 20_000;

/// A delivered change and the table it was delivered as.
pub type Delivered = (Arc<Change>, Arc<TableMeta>);

/// Recently delivered changes.
#[derive(Debug)]
pub struct Recent {
    kept: VecDeque<(Delivered, Instant)>,
    floor: i64,
    keep_for: Duration,
    max: usize,
}

/// What a resuming channel gets from `Recent::since`.
#[derive(Debug)]
pub struct Since {
    /// The kept changes with ids from the asked one on, in delivery order.
    pub changes: Vec<Delivered>,
    /// False when some change at or above the asked id may not be kept: read the log too.
    pub complete: bool,
}

impl Recent {
    /// Keeps changes for `keep_for` (zero: none), at most `max`.
    pub fn new(keep_for: Duration, max: usize) -> Self {
        Recent { kept: VecDeque::new(), floor: i64::MAX, keep_for, max }
    }

    /// The reader starts at `high_water`: nothing at or below it was delivered here.
    pub fn starting_at(&mut self, high_water: i64) {
        self.floor = if self.floor == i64::MAX { high_water } else { self.floor.max(high_water) };
    }

    /// Keeps `change`, delivered at `now`, and lets go of what is too old or too many.
    pub fn push(&mut self, change: Delivered, now: Instant) {
        if self.keep_for.is_zero() {
            return;
        }
        self.kept.push_back((change, now));
        while let Some(((oldest, _), at)) = self.kept.front() {
            if self.kept.len() <= self.max && now.duration_since(*at) < self.keep_for {
                break;
            }
            self.floor = if self.floor == i64::MAX { oldest.id } else { self.floor.max(oldest.id) };
            self.kept.pop_front();
        }
    }

    /// The kept changes with ids from `from` on.
    pub fn since(&self, from: i64) -> Since {
        let changes = self.kept.iter().filter(|((c, _), _)| c.id >= from).map(|(d, _)| d.clone()).collect();
        Since { changes, complete: self.floor != i64::MAX && from > self.floor }
    }
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
        (Arc::new(c), Arc::new(meta))
    }

    fn ids(s: &Since) -> Vec<i64> {
        s.changes.iter().map(|(c, _)| c.id).collect()
    }

    #[test]
    fn a_resume_above_the_starting_point_is_served_from_memory_in_delivery_order() {
        let mut r = Recent::new(Duration::from_secs(30), 100);
        r.starting_at(10);
        let now = Instant::now();
        for id in [11, 13, 12, 14] {
            r.push(change(id), now);
        }
        let s = r.since(12);
        assert_eq!((ids(&s), s.complete), (vec![13, 12, 14], true));
        assert!(!r.since(10).complete, "ids at or below the starting point were never delivered here");
    }

    #[test]
    fn letting_go_of_old_or_surplus_changes_raises_the_floor() {
        let mut r = Recent::new(Duration::from_secs(30), 2);
        r.starting_at(0);
        let start = Instant::now();
        r.push(change(1), start);
        r.push(change(2), start);
        r.push(change(3), start);
        assert_eq!(ids(&r.since(0)), vec![2, 3]);
        assert!(!r.since(1).complete);
        assert!(r.since(2).complete);
        r.push(change(4), start + Duration::from_secs(31));
        assert_eq!(ids(&r.since(0)), vec![4]);
        assert!(!r.since(3).complete && r.since(4).complete);
    }

    #[test]
    fn before_the_reader_starts_nothing_is_complete_and_with_no_ttl_nothing_is_kept() {
        assert!(!Recent::new(Duration::from_secs(1), 10).since(5).complete);
        let mut off = Recent::new(Duration::ZERO, 10);
        off.starting_at(0);
        off.push(change(1), Instant::now());
        assert!(off.since(0).changes.is_empty());
    }
}
