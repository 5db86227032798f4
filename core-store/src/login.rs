//! Failed-login limits shared by every front-end: a guess costs the guesser time, not the
//! gateway CPU.
//!
//! Failures are counted per peer (an IPv4 address, or the /64 of an IPv6 address) and per
//! account. After [`LoginLimits::free_per_peer`] (or `free_per_account`) failures, every further
//! failure bans the key for a delay that doubles from `first_delay` up to `max_delay`; while a
//! key is banned, logins are refused without looking at the password. A key's count is
//! forgotten after `forget_after` without failures; a successful login clears the account's
//! count and the peer's. The per-account limit is higher than the per-peer one so that a
//! guesser cannot cheaply lock a user out: a guesser spread over many addresses meets it, one
//! address meets the per-peer limit first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins one connection may make before it is closed.
pub const FAILURES_PER_CONNECTION: u32 = 3;
/// Most keys tracked per table; expired ones are pruned first.
const MAX_TRACKED: usize = 100_000;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoginLimits {
    /// Failures per peer before delays start.
    pub free_per_peer: u32,
    /// Failures per account before delays start.
    pub free_per_account: u32,
    /// First delay once the free failures are used.
    pub first_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Failures are forgotten after this long without one (longer than `max_delay`, or a
    /// guesser waiting out the longest ban would start over with free failures).
    pub forget_after: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            free_per_peer: 5,
            free_per_account: 20,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(60 * 60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last: Instant,
    banned_until: Option<Instant>,
}

/// The key failures of one peer are counted under: the address, or an IPv6 address's /64.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

struct Table<K>(Mutex<HashMap<K, Strikes>>);

impl<K: Eq + Hash + Clone> Table<K> {
    fn new() -> Self {
        Table(Mutex::new(HashMap::new()))
    }

    fn banned(&self, key: &K, now: Instant) -> Option<Duration> {
        let map = self.0.lock().ok()?;
        let until = map.get(key)?.banned_until?;
        (until > now).then(|| until - now)
    }

    fn fail(&self, key: &K, free: u32, limits: &LoginLimits, now: Instant) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(key) {
            map.retain(|_, s| now.saturating_duration_since(s.last) < limits.forget_after);
            if map.len() >= MAX_TRACKED {
                return;
            }
        }
        let s = map.entry(key.clone()).or_insert(Strikes {
            failures: 0,
            last: now,
            banned_until: None,
        });
        if now.saturating_duration_since(s.last) >= limits.forget_after {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.last = now;
        if s.failures > free {
            let doublings = (s.failures - free - 1).min(30);
            let delay = limits
                .first_delay
                .saturating_mul(1u32 << doublings)
                .min(limits.max_delay);
            s.banned_until = Some(now + delay);
        }
    }

    fn clear(&self, key: &K) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }
}

/// Failure counts per peer and per account.
pub struct LoginGuard {
    limits: LoginLimits,
    peers: Table<IpAddr>,
    accounts: Table<String>,
}

impl LoginGuard {
    /// A guard with these limits.
    pub fn new(limits: LoginLimits) -> Self {
        LoginGuard {
            limits,
            peers: Table::new(),
            accounts: Table::new(),
        }
    }

    /// `Err(wait)` while the peer or the account is banned.
    pub fn check(&self, ip: IpAddr, account: &str) -> Result<(), Duration> {
        self.check_at(ip, account, Instant::now())
    }

    /// [`LoginGuard::check`] at a given instant.
    pub fn check_at(&self, ip: IpAddr, account: &str, now: Instant) -> Result<(), Duration> {
        let peer = self.peers.banned(&peer_key(ip), now);
        let acct = self.accounts.banned(&account.to_ascii_lowercase(), now);
        match peer.max(acct) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Count a failed login.
    pub fn failed(&self, ip: IpAddr, account: &str) {
        self.failed_at(ip, account, Instant::now());
    }

    /// [`LoginGuard::failed`] at a given instant.
    pub fn failed_at(&self, ip: IpAddr, account: &str, now: Instant) {
        let l = &self.limits;
        self.peers.fail(&peer_key(ip), l.free_per_peer, l, now);
        if !account.is_empty() {
            let key = account.to_ascii_lowercase();
            self.accounts.fail(&key, l.free_per_account, l, now);
        }
    }

    /// A login succeeded: forget the failures of this peer and account.
    pub fn succeeded(&self, ip: IpAddr, account: &str) {
        self.peers.clear(&peer_key(ip));
        self.accounts.clear(&account.to_ascii_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn free_failures_then_doubling_bans() {
        let g = LoginGuard::new(LoginLimits::default());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(g.check_at(a, "bob@x", t0).is_ok());
            g.failed_at(a, "bob@x", t0);
        }
        assert!(g.check_at(a, "bob@x", t0).is_ok());
        g.failed_at(a, "bob@x", t0);
        assert_eq!(g.check_at(a, "bob@x", t0), Err(Duration::from_secs(1)));
        // Another account from the same peer is banned too; another peer is not.
        assert!(g.check_at(a, "carol@x", t0).is_err());
        assert!(g.check_at(ip("192.0.2.2"), "carol@x", t0).is_ok());
        let t1 = t0 + Duration::from_secs(1);
        assert!(g.check_at(a, "bob@x", t1).is_ok());
        g.failed_at(a, "bob@x", t1);
        assert_eq!(g.check_at(a, "bob@x", t1), Err(Duration::from_secs(2)));
        // Capped, and forgotten after a quiet period.
        for _ in 0..40 {
            g.failed_at(a, "bob@x", t1);
        }
        assert_eq!(g.check_at(a, "z", t1), Err(Duration::from_secs(900)));
        // Waiting out the longest ban is not enough to start over.
        let after_ban = t1 + Duration::from_secs(900);
        assert!(g.check_at(a, "z", after_ban).is_ok());
        g.failed_at(a, "z", after_ban);
        assert!(g.check_at(a, "z", after_ban).is_err());
        let later = after_ban + Duration::from_secs(3600);
        assert!(g.check_at(a, "z", later).is_ok());
        g.failed_at(a, "z", later);
        assert!(g.check_at(a, "z", later).is_ok());
    }

    #[test]
    fn an_account_guessed_from_many_peers_is_slowed_and_success_clears() {
        let g = LoginGuard::new(LoginLimits::default());
        let t0 = Instant::now();
        for i in 0..21 {
            g.failed_at(ip(&format!("198.51.100.{i}")), "Bob@X", t0);
        }
        assert!(g.check_at(ip("203.0.113.9"), "bob@x", t0).is_err());
        g.succeeded(ip("203.0.113.9"), "bob@x");
        assert!(g.check_at(ip("203.0.113.9"), "bob@x", t0).is_ok());
    }

    #[test]
    fn ipv6_peers_count_per_64() {
        let g = LoginGuard::new(LoginLimits::default());
        let t0 = Instant::now();
        for i in 0..6 {
            g.failed_at(ip(&format!("2001:db8::{i:x}")), "", t0);
        }
        assert!(g.check_at(ip("2001:db8::ffff"), "", t0).is_err());
        assert!(g.check_at(ip("2001:db8:0:1::1"), "", t0).is_ok());
    }
}
