//! How many connections a TCP service holds: at most `per_source` from one address and
//! `total` in all, so that one host (or many) cannot take every file descriptor of the
//! process, and with them every other service. A slot is held by a [`Slot`] and given
//! back when it drops, whatever ends the connection.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub per_source: usize,
    pub total: usize,
}

/// Why a connection was turned away (the `reason` of `broker_defended_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Source,
    Total,
}

impl Full {
    pub fn reason(self) -> &'static str {
        match self {
            Full::Source => "connections_per_source",
            Full::Total => "connections_total",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// The connections of one service.
#[derive(Debug, Clone)]
pub struct Conns {
    caps: Caps,
    counts: Arc<Mutex<Counts>>,
}

/// A connection's place; freed on drop.
#[derive(Debug)]
pub struct Slot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Conns {
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            counts: Arc::default(),
        }
    }

    /// A place for a connection from `ip`, or why there is none.
    pub fn open(&self, ip: IpAddr) -> Result<Slot, Full> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.caps.total {
            return Err(Full::Total);
        }
        let n = c.by_source.entry(ip).or_default();
        if *n >= self.caps.per_source {
            return Err(Full::Source);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.ip);
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, and warns when even that is
/// below what the connection caps can hold: systemd and most shells start services with
/// a soft limit of 1024, fewer than the caps of the TCP services together.
pub fn raise_file_limit(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur < needed {
        tracing::warn!(
            limit = lim.rlim_cur,
            needed,
            "the open-file limit is below what the connection caps allow: raise LimitNOFILE"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_total_caps_and_slots_come_back() {
        let c = Conns::new(Caps {
            per_source: 2,
            total: 3,
        });
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let s1 = c.open(a).unwrap();
        let _s2 = c.open(a).unwrap();
        assert_eq!(c.open(a).unwrap_err(), Full::Source);
        let _s3 = c.open(b).unwrap();
        assert_eq!(c.open(b).unwrap_err(), Full::Total);
        drop(s1);
        assert_eq!(c.total(), 2);
        assert!(c.open(a).is_ok());
    }
}
