//! A client process's count of deliveries: per change (sequence number) how
//! many counting sockets received it and the first and last receive times,
//! and how many sockets the server closed, by how.
//!
//! Shared by every socket task of the process behind one short-held lock
//! (never held across an await). When the last counting socket receives a
//! change, the tally tells the tool at once (`Event::SeqDone`), so the tool
//! waits on events, not on a timer. Does not know about sockets or JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use crate::wire::{Event, SeqStats};

/// The count, and the way out to the tool.
pub struct Tally {
    inner: Mutex<Inner>,
    out: UnboundedSender<Event>,
}

#[derive(Default)]
struct Inner {
    expected: usize,
    seqs: BTreeMap<i64, SeqStats>,
    closed: BTreeMap<String, usize>,
}

impl Tally {
    /// An empty tally that sends its events to `out`.
    pub fn new(out: UnboundedSender<Event>) -> Arc<Tally> {
        Arc::new(Tally { inner: Mutex::new(Inner::default()), out })
    }

    /// Sends `event` to the tool.
    pub fn emit(&self, event: Event) {
        let _ = self.out.send(event);
    }

    /// `n` more counting sockets are subscribed.
    pub fn expect_more(&self, n: usize) {
        self.inner.lock().expect("tally lock").expected += n;
    }

    /// A counting socket received change `seq` at `at_us`.
    pub fn delivered(&self, seq: i64, at_us: i64) {
        let complete = {
            let mut inner = self.inner.lock().expect("tally lock");
            let expected = inner.expected;
            let s = inner.seqs.entry(seq).or_insert(SeqStats { seq, count: 0, first_us: at_us, last_us: at_us });
            s.count += 1;
            s.first_us = s.first_us.min(at_us);
            s.last_us = s.last_us.max(at_us);
            s.count == expected
        };
        if complete {
            self.emit(Event::SeqDone { seq });
        }
    }

    /// The server closed a counting or traced socket, or the connection broke.
    pub fn closed(&self, how: String) {
        *self.inner.lock().expect("tally lock").closed.entry(how).or_default() += 1;
    }

    /// Everything counted so far, then forgets the changes.
    pub fn take(&self) -> Event {
        let report = self.report();
        self.inner.lock().expect("tally lock").seqs.clear();
        report
    }

    /// Everything counted so far.
    pub fn report(&self) -> Event {
        let inner = self.inner.lock().expect("tally lock");
        Event::Report {
            expected: inner.expected,
            seqs: inner.seqs.values().copied().collect(),
            closed: inner.closed.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_done_when_every_counting_socket_has_it() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tally = Tally::new(tx);
        tally.expect_more(2);
        tally.delivered(1, 100);
        assert!(rx.try_recv().is_err(), "one of two is not done");
        tally.delivered(1, 90);
        assert!(matches!(rx.try_recv(), Ok(Event::SeqDone { seq: 1 })));
        let Event::Report { expected, seqs, .. } = tally.report() else { panic!("a report") };
        assert_eq!(expected, 2);
        assert_eq!((seqs[0].count, seqs[0].first_us, seqs[0].last_us), (2, 90, 100));
    }

    #[test]
    fn taking_the_counts_forgets_the_changes_but_not_the_closures() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let tally = Tally::new(tx);
        tally.expect_more(1);
        tally.delivered(7, 100);
        tally.closed("end of stream".into());
        let Event::Report { seqs, .. } = tally.take() else { panic!("a report") };
        assert_eq!(seqs.len(), 1);
        let Event::Report { seqs, closed, .. } = tally.report() else { panic!("a report") };
        assert!(seqs.is_empty());
        assert_eq!(closed.len(), 1);
    }

    #[test]
    fn closures_are_counted_by_how_they_happened() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let tally = Tally::new(tx);
        tally.closed("close 1013".into());
        tally.closed("close 1013".into());
        tally.closed("end of stream".into());
        let Event::Report { closed, .. } = tally.report() else { panic!("a report") };
        assert_eq!(closed, vec![("close 1013".to_owned(), 2), ("end of stream".to_owned(), 1)]);
    }
}
