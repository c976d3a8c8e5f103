//! Session caps shared by every frontend: in total and per client address, taken atomically.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts sessions; a [`SessionSlot`] gives its place back when dropped.
pub struct SessionLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Sessions other instances sharing the state store hold (total, per address), as last
    /// read from it ([`SessionLimiter::set_others`]); they count towards both caps.
    others: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// `limits.max_sessions` reached.
    Total,
    /// `limits.max_sessions_per_ip` reached for this address.
    PerAddress,
}

/// One admitted session.
pub struct SessionSlot {
    limiter: Arc<SessionLimiter>,
    ip: IpAddr,
}

impl SessionLimiter {
    /// A limiter with the two caps (0 means no cap).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(SessionLimiter {
            max_total: if max_total == 0 {
                usize::MAX
            } else {
                max_total
            },
            max_per_ip: if max_per_ip == 0 {
                usize::MAX
            } else {
                max_per_ip
            },
            state: Mutex::new((0, HashMap::new())),
            others: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits a session from `ip`, or says which cap it hit. Check and count happen under one
    /// lock, so a burst of connections admits exactly the caps.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, LimitError> {
        let (other_total, other_here) = {
            let o = self.others.lock().expect("lock");
            (o.0, o.1.get(&ip).copied().unwrap_or(0))
        };
        let mut st = self.state.lock().expect("lock");
        if st.0.saturating_add(other_total) >= self.max_total {
            return Err(LimitError::Total);
        }
        let n = st.1.entry(ip).or_insert(0);
        if n.saturating_add(other_here) >= self.max_per_ip {
            return Err(LimitError::PerAddress);
        }
        *n += 1;
        st.0 += 1;
        Ok(SessionSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// The sessions other instances hold now, by client address (a shared state store: read
    /// from it every few seconds), so that the caps count the whole fleet.
    pub fn set_others(&self, clients: impl IntoIterator<Item = IpAddr>) {
        let mut per_ip = HashMap::new();
        let mut total = 0;
        for ip in clients {
            *per_ip.entry(ip).or_insert(0) += 1;
            total += 1;
        }
        *self.others.lock().expect("lock") = (total, per_ip);
    }

    /// Sessions open now.
    pub fn active(&self) -> usize {
        self.state.lock().expect("lock").0
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock().expect("lock");
        st.0 -= 1;
        if let Some(n) = st.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The other instances' sessions (a shared state store) count towards both caps, and
    /// stop counting once they are gone.
    #[test]
    fn other_instances_sessions_count_towards_both_caps() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let l = SessionLimiter::new(3, 1);
        l.set_others([a]);
        assert_eq!(l.try_acquire(a).err(), Some(LimitError::PerAddress));
        let _b = l.try_acquire(b).unwrap();
        l.set_others([a, a]);
        assert_eq!(l.try_acquire(c).err(), Some(LimitError::Total));
        l.set_others([]);
        assert!(l.try_acquire(a).is_ok());
    }
}
