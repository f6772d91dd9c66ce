//! Which change-log ids are safe to deliver, and in what order. Pure.
//!
//! Sequence ids are taken before commit, so id 10 can become visible after
//! id 11. The window reads behind a watermark: every id up to `hw` is either
//! delivered, known never to appear (its transaction aborted), or a tracked
//! gap. A gap is remembered with the transactions that were running when it
//! was seen, and once all of them have finished it is final: the row is
//! visible now, or never will be.
//!
//! A snapshot lists as running only xids below its `xmax` (latest completed
//! xid + 1): the newest writer, with nothing newer finished, is invisible in
//! both the rows and the running list. So a gap's running set is only taken
//! from a *fenced* pass: one where, after reading the sequence, the reader
//! committed a write of its own. That write's xid is newer than any writer
//! that took an id before the sequence was read, so every such writer still
//! running is below the snapshot's `xmax` and listed.
//!
//! While a fresh gap is undecided nothing after it is delivered (id order,
//! which is commit order per row). A gap older than `stale_after` (one long
//! transaction) stops blocking: later ids flow, and the gap's row is
//! delivered when it commits. Row locks make that safe for per-row order:
//! no later change of the same row can precede it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::change::Change;

/// A Postgres snapshot as `pg_current_snapshot()::text` prints it: `xmin:xmax:xip,...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Transactions running when the snapshot was taken.
    pub running: Vec<u64>,
}

impl Snapshot {
    /// Parses the text form; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.splitn(3, ':');
        let _xmin: u64 = parts.next()?.parse().ok()?;
        let _xmax: u64 = parts.next()?.parse().ok()?;
        let running = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(str::parse).collect::<Result<_, _>>().ok()?,
        };
        Some(Snapshot { running })
    }
}

#[derive(Debug, Clone)]
struct Gap {
    /// Transactions running in the first fenced pass that saw the gap; `None` until one has.
    running: Option<Vec<u64>>,
    since: Instant,
}

/// What a reader has delivered: every id up to `high_water` except `gaps`
/// (ids it still waits on). What a channel closed now may have missed is
/// exactly the rest, so a handoff replays that and no more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub high_water: i64,
    /// Ascending, all at or below `high_water`.
    pub gaps: Vec<i64>,
}

impl Position {
    /// Whether change `id` may not have been delivered.
    pub fn missed(&self, id: i64) -> bool {
        id > self.high_water || self.gaps.binary_search(&id).is_ok()
    }

    /// The lowest id that may not have been delivered.
    pub fn lowest(&self) -> i64 {
        self.gaps.first().copied().unwrap_or(self.high_water + 1)
    }

    /// A position that misses everything either misses: the lower high-water
    /// mark, with the gaps of both below it.
    pub fn merge(&self, other: &Position) -> Position {
        let high_water = self.high_water.min(other.high_water);
        let mut gaps: Vec<i64> = self.gaps.iter().chain(&other.gaps).copied().filter(|g| *g <= high_water).collect();
        gaps.sort_unstable();
        gaps.dedup();
        Position { high_water, gaps }
    }
}

/// The reader's position in the change log.
#[derive(Debug, Clone)]
pub struct Window {
    /// Every id up to here is delivered, final, or a tracked gap.
    hw: i64,
    gaps: BTreeMap<i64, Gap>,
    stale_after: Duration,
    forget_after: Duration,
}

/// What one read pass decided.
#[derive(Debug, Default)]
pub struct Pass {
    /// Changes to deliver, in this order.
    pub deliver: Vec<Change>,
    /// Gap ids given up on (tracked longer than `forget_after`).
    pub forgotten: Vec<i64>,
}

impl Window {
    /// A window that treats every id up to `hw` as already handled.
    pub fn starting_after(hw: i64, stale_after: Duration, forget_after: Duration) -> Window {
        Window { hw, gaps: BTreeMap::new(), stale_after, forget_after }
    }

    /// A window starting after `hw` that still watches `missing` (ids at or
    /// below `hw` not visible at start: their transactions may still commit).
    pub fn starting_with_gaps(hw: i64, missing: &[i64], now: Instant, stale_after: Duration, forget_after: Duration) -> Window {
        let gaps = missing.iter().map(|id| (*id, Gap { running: None, since: now })).collect();
        Window { hw, gaps, stale_after, forget_after }
    }

    /// Highest id scanned.
    pub fn high_water(&self) -> i64 {
        self.hw
    }

    /// Ids still undecided, to be read again.
    pub fn gap_ids(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }

    /// What has been delivered so far.
    pub fn position(&self) -> Position {
        Position { high_water: self.hw, gaps: self.gap_ids() }
    }

    /// Everything at or below this id is settled: safe to prune up to it.
    pub fn settled(&self) -> i64 {
        self.gaps.keys().next().map_or(self.hw, |first| first - 1)
    }

    /// True when a gap has not yet been seen by a fenced pass.
    pub fn needs_fence(&self) -> bool {
        self.gaps.values().any(|g| g.running.is_none())
    }

    /// True while a fresh gap holds back delivery (the reader should poll soon).
    pub fn is_waiting(&self, now: Instant) -> bool {
        self.gaps.values().any(|g| now.duration_since(g.since) < self.stale_after)
    }

    /// Decides a pass. `rows` are the visible rows with id in the gaps or in
    /// `(hw, upper]`, sorted by id, read under `snapshot`; `upper` is the
    /// highest id known to be handed out (or the last row of a full batch);
    /// `fenced` says the reader committed a write between reading `upper`
    /// and taking `snapshot`.
    pub fn pass(&mut self, rows: Vec<Change>, snapshot: &Snapshot, upper: i64, now: Instant, fenced: bool) -> Pass {
        let mut rows: BTreeMap<i64, Change> = rows.into_iter().map(|c| (c.id, c)).collect();
        let mut pass = Pass::default();
        self.settle_gaps(&mut rows, snapshot, now, fenced, &mut pass);
        let mut id = self.hw + 1;
        while id <= upper && !self.is_waiting(now) {
            match rows.remove(&id) {
                Some(change) => pass.deliver.push(change),
                // Fenced and nothing running: the id's transaction aborted.
                None if fenced && snapshot.running.is_empty() => {}
                None => {
                    let running = fenced.then(|| snapshot.running.clone());
                    self.gaps.insert(id, Gap { running, since: now });
                }
            }
            self.hw = id;
            id += 1;
        }
        pass
    }

    fn settle_gaps(&mut self, rows: &mut BTreeMap<i64, Change>, snapshot: &Snapshot, now: Instant, fenced: bool, pass: &mut Pass) {
        let ids: Vec<i64> = self.gaps.keys().copied().collect();
        for id in ids {
            if let Some(change) = rows.remove(&id) {
                self.gaps.remove(&id);
                pass.deliver.push(change);
                continue;
            }
            let gap = self.gaps.get_mut(&id).expect("iterating known gaps");
            if gap.running.is_none() && fenced {
                gap.running = Some(snapshot.running.clone());
            }
            let finished = gap.running.as_ref().is_some_and(|r| r.iter().all(|x| !snapshot.running.contains(x)));
            if finished {
                self.gaps.remove(&id);
            } else if now.duration_since(gap.since) > self.forget_after {
                self.gaps.remove(&id);
                pass.forgotten.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::change::Op;

    fn change(id: i64) -> Change {
        Change {
            id,
            changed_at: chrono::Utc::now(),
            schema: "public".into(),
            table: "t".into(),
            op: Op::Insert,
            owner: None,
            record: None,
            old_record: None,
        }
    }

    fn ids(pass: &Pass) -> Vec<i64> {
        pass.deliver.iter().map(|c| c.id).collect()
    }

    fn snap(running: &[u64]) -> Snapshot {
        Snapshot { running: running.to_vec() }
    }

    fn window() -> Window {
        Window::starting_after(0, Duration::from_secs(1), Duration::from_secs(3600))
    }

    #[test]
    fn snapshots_parse_with_and_without_running_transactions() {
        assert_eq!(Snapshot::parse("10:12:").unwrap().running, Vec::<u64>::new());
        assert_eq!(Snapshot::parse("10:15:10,12").unwrap().running, vec![10, 12]);
        assert!(Snapshot::parse("garbage").is_none());
    }

    #[test]
    fn contiguous_ids_are_delivered_in_order() {
        let mut w = window();
        let p = w.pass(vec![change(1), change(2), change(3)], &snap(&[]), 3, Instant::now(), true);
        assert_eq!(ids(&p), [1, 2, 3]);
        assert_eq!(w.settled(), 3);
    }

    #[test]
    fn a_later_commit_waits_for_an_earlier_id_still_in_flight() {
        let mut w = window();
        let t0 = Instant::now();
        // id 1 was taken by transaction 700, still running; id 2 committed first.
        let p = w.pass(vec![change(2)], &snap(&[700]), 2, t0, true);
        assert!(ids(&p).is_empty());
        assert!(w.is_waiting(t0));
        assert_eq!(w.gap_ids(), [1]);
        // 700 commits: both arrive, in id order.
        let p = w.pass(vec![change(1), change(2)], &snap(&[]), 2, t0, true);
        assert_eq!(ids(&p), [1, 2]);
        assert_eq!(w.settled(), 2);
    }

    #[test]
    fn an_unfenced_gap_is_never_judged_aborted_even_when_nothing_seems_running() {
        let mut w = window();
        let t0 = Instant::now();
        // The newest writer is above the snapshot's xmax, so it is not listed as running.
        let p = w.pass(vec![change(2)], &snap(&[]), 2, t0, false);
        assert!(ids(&p).is_empty());
        assert!(w.needs_fence());
        // A fenced pass sees it running, then it commits.
        assert!(ids(&w.pass(vec![change(2)], &snap(&[700]), 2, t0, true)).is_empty());
        assert!(!w.needs_fence());
        assert_eq!(ids(&w.pass(vec![change(1), change(2)], &snap(&[]), 2, t0, false)), [1, 2]);
    }

    #[test]
    fn a_fenced_pass_with_nothing_running_settles_a_missing_id_as_aborted() {
        let mut w = window();
        let t0 = Instant::now();
        w.pass(vec![change(2)], &snap(&[]), 2, t0, false);
        assert_eq!(ids(&w.pass(vec![change(2)], &snap(&[]), 2, t0, true)), [2]);
        assert!(w.gap_ids().is_empty());
    }

    #[test]
    fn an_aborted_id_is_skipped_once_its_transactions_finish() {
        let mut w = window();
        let t0 = Instant::now();
        w.pass(vec![change(2)], &snap(&[700]), 2, t0, true);
        // 700 is gone and id 1 never appeared: it aborted. A new transaction 900 runs.
        let p = w.pass(vec![change(2), change(3)], &snap(&[900]), 3, t0, true);
        assert_eq!(ids(&p), [2, 3]);
        assert!(w.gap_ids().is_empty());
    }

    #[test]
    fn a_stale_gap_stops_blocking_and_its_row_arrives_late_once() {
        let mut w = window();
        let t0 = Instant::now();
        w.pass(vec![change(2)], &snap(&[700]), 2, t0, true);
        let later = t0 + Duration::from_secs(2);
        let p = w.pass(vec![change(2), change(3)], &snap(&[700]), 3, later, true);
        assert_eq!(ids(&p), [2, 3]);
        assert_eq!(w.settled(), 0);
        let p = w.pass(vec![change(1)], &snap(&[]), 3, later, true);
        assert_eq!(ids(&p), [1]);
        assert_eq!(w.settled(), 3);
    }

    #[test]
    fn ids_beyond_the_known_upper_bound_are_not_judged() {
        let mut w = window();
        let p = w.pass(vec![change(1)], &snap(&[700]), 1, Instant::now(), true);
        assert_eq!(ids(&p), [1]);
        assert_eq!(w.high_water(), 1);
        assert!(w.gap_ids().is_empty());
    }

    #[test]
    fn ids_missing_at_start_are_delivered_if_their_transaction_commits_later() {
        let t0 = Instant::now();
        let mut w = Window::starting_with_gaps(5, &[3], t0, Duration::from_secs(1), Duration::from_secs(3600));
        assert!(w.needs_fence());
        assert!(ids(&w.pass(vec![], &snap(&[700]), 5, t0, true)).is_empty());
        assert_eq!(ids(&w.pass(vec![change(3)], &snap(&[]), 5, t0, false)), [3]);
        assert_eq!(w.settled(), 5);
    }

    #[test]
    fn gaps_tracked_too_long_are_forgotten_and_reported() {
        let mut w = Window::starting_after(0, Duration::from_secs(1), Duration::from_secs(10));
        let t0 = Instant::now();
        w.pass(vec![change(2)], &snap(&[700]), 2, t0, true);
        let p = w.pass(vec![change(2)], &snap(&[700]), 2, t0 + Duration::from_secs(11), true);
        assert_eq!(p.forgotten, [1]);
        assert_eq!(ids(&p), [2]);
        assert_eq!(w.settled(), 2);
    }

    #[test]
    fn a_position_misses_what_is_above_its_high_water_mark_or_in_its_gaps_and_merges_to_cover_both() {
        let a = Position { high_water: 10, gaps: vec![4, 7] };
        assert!(a.missed(4) && a.missed(7) && a.missed(11));
        assert!(!a.missed(5) && !a.missed(10));
        assert_eq!(a.lowest(), 4);
        assert_eq!(Position { high_water: 10, gaps: vec![] }.lowest(), 11);
        let b = Position { high_water: 8, gaps: vec![2] };
        let both = a.merge(&b);
        assert_eq!(both, Position { high_water: 8, gaps: vec![2, 4, 7] });
        assert!((0..20).all(|id| !(a.missed(id) || b.missed(id)) || both.missed(id)));
    }
}
