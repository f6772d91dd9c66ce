//! How many sockets this process holds, in all and per client IP.
//!
//! Owns the two connection limits checked before a WebSocket upgrade, so a
//! refusal costs an HTTP 429 and nothing else. A `Ticket` is the right to one
//! socket; dropping it (the socket ended, or the upgrade never completed)
//! gives the place back. Does no IO.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// Why a socket was not admitted; `Display` is Supabase's text for the 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The process holds `max_sockets` already.
    #[error("Too many connected users")]
    Process,
    /// This IP holds `max_sockets_per_ip` already.
    #[error("Too many connected users")]
    Ip,
}

/// Cheap-clone counter of open sockets.
#[derive(Clone, Default)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    max_total: usize,
    max_per_ip: usize,
}

/// One admitted socket; its place is given back on drop.
pub struct Ticket {
    admission: Admission,
    ip: IpAddr,
}

impl Admission {
    /// Limits of `max_total` sockets and `max_per_ip` per IP; 0 means no limit.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        let max = |n: usize| if n == 0 { usize::MAX } else { n };
        let inner = Inner { total: AtomicUsize::new(0), per_ip: DashMap::new(), max_total: max(max_total), max_per_ip: max(max_per_ip) };
        Admission { inner: Arc::new(inner) }
    }

    /// Takes a place for a socket from `ip`, or says which limit is reached.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refused> {
        let inner = &self.inner;
        let total = inner.total.fetch_add(1, Ordering::AcqRel);
        if total >= inner.max_total {
            inner.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Process);
        }
        let mut count = inner.per_ip.entry(ip).or_insert(0);
        if *count >= inner.max_per_ip {
            drop(count);
            inner.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Ip);
        }
        *count += 1;
        Ok(Ticket { admission: self.clone(), ip })
    }

    /// Open sockets now.
    pub fn open(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let inner = &self.admission.inner;
        inner.per_ip.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
        inner.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn an_ip_past_its_limit_is_refused_while_others_are_admitted() {
        let a = Admission::new(10, 2);
        let _t1 = a.admit(ip(1)).unwrap();
        let _t2 = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).err(), Some(Refused::Ip));
        assert!(a.admit(ip(2)).is_ok());
    }

    #[test]
    fn the_process_limit_counts_every_ip() {
        let a = Admission::new(2, 0);
        let _t1 = a.admit(ip(1)).unwrap();
        let _t2 = a.admit(ip(2)).unwrap();
        assert_eq!(a.admit(ip(3)).err(), Some(Refused::Process));
        assert_eq!(a.open(), 2);
    }

    #[test]
    fn a_dropped_ticket_gives_its_place_back() {
        let a = Admission::new(1, 1);
        let t = a.admit(ip(1)).unwrap();
        assert!(a.admit(ip(1)).is_err());
        drop(t);
        assert_eq!(a.open(), 0);
        assert!(a.admit(ip(1)).is_ok());
        assert!(a.inner.per_ip.len() <= 1, "no entry is left behind for an IP with no socket");
    }

    #[test]
    fn refusals_use_supabase_text() {
        assert_eq!(Refused::Ip.to_string(), "Too many connected users");
    }
}
