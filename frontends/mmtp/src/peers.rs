//! Other domains' MMTP servers: where they are (static routes, then SRV `_mmtp._tcp`), whether
//! a connecting peer is one of them, and their users' public keys.
//!
//! The relay uses [`MmtpPeers::targets`] to deliver; the front-end uses [`MmtpPeers::serves`]
//! to check a remote sender's domain against the peer's address, and [`MmtpPeers::sender_key`]
//! to fetch a remote sender's key from its own domain (REQUEST_PUBLIC_KEY over verified TLS
//! only), cached for a while. Every connection a stranger can trigger this way goes only to a
//! server the sender's domain names, and never to an address `[outbound] deny` lists.

use crate::client::MmtpClient;
use mailgate_core::destinations::Destinations;
use mailgate_core::discovery::{host_addresses, Discovery, SrvTarget};
use mailgate_core::Address;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// A static MMTP peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmtpRoute {
    /// The remote domain.
    pub domain: String,
    /// Host name or address of its server.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Connect with TLS (verified for `host`).
    pub tls: bool,
}

/// One place to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Address and port.
    pub address: SocketAddr,
    /// The host name it was found under (the TLS name).
    pub host: String,
    /// Whether to speak TLS.
    pub tls: bool,
}

/// Why no server of a domain could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The domain has no MMTP server (no route, no SRV record): permanent.
    #[error("{0}")]
    NoServer(String),
    /// DNS or the network failed: try again later.
    #[error("{0}")]
    Temporary(String),
}

/// Entries each cache keeps at most.
const CACHE_ENTRIES: usize = 4096;
/// The largest REQUEST_PUBLIC_KEY reply taken from another domain.
const MAX_KEY_REPLY: usize = 256 * 1024;
/// Key fetches running at once (each is a stranger-triggered connection).
const KEY_FETCHES: usize = 4;

/// How long "is this peer a server of that domain" is remembered.
pub const SERVES_TTL: Duration = Duration::from_secs(300);
/// How long a failed look-up of it is remembered (the sender is unverified meanwhile).
pub const SERVES_ERROR_TTL: Duration = Duration::from_secs(30);

/// Entries are kept this long past their expiry, to be answered from while a fresh answer is
/// looked up in the background.
const STALE_FOR: Duration = Duration::from_secs(24 * 3600);

/// What a [`TtlCache`] holds for a key.
enum Cached<V> {
    /// Within its time to live.
    Fresh(V),
    /// Expired, but not by more than [`STALE_FOR`]: usable while it is renewed.
    Stale(V),
    /// Nothing usable.
    Missing,
}

/// A small map whose entries expire; when full, long-expired entries go, then everything.
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        match self.lookup(key) {
            Cached::Fresh(v) => Some(v),
            _ => None,
        }
    }

    fn lookup(&self, key: &K) -> Cached<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match entries.get(key) {
            Some((v, until)) if *until > now => Cached::Fresh(v.clone()),
            Some((v, until)) if *until + STALE_FOR > now => Cached::Stale(v.clone()),
            _ => Cached::Missing,
        }
    }

    fn put(&self, key: K, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until + STALE_FOR > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (value, Instant::now() + ttl));
    }
}

/// Other domains' MMTP servers.
pub struct MmtpPeers {
    routes: Vec<MmtpRoute>,
    dns: Option<Arc<dyn Discovery>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    dns_tls: bool,
    destinations: Destinations,
    key_ttl: Duration,
    keys: TtlCache<String, Option<String>>,
    /// Per domain: the addresses of its MMTP servers and of the domain name itself.
    serving: TtlCache<String, Result<Arc<Vec<IpAddr>>, PeerError>>,
    /// Domains whose stale answer is being renewed in the background.
    renewing: Mutex<std::collections::HashSet<String>>,
    /// One lookup per domain at a time: concurrent first SENDs wait for it, not each its own.
    lookups: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fetches: Semaphore,
    fetch_timeout: Duration,
}

impl MmtpPeers {
    /// Static `routes` first, then SRV `_mmtp._tcp.<domain>` through `dns` (TLS when
    /// `dns_tls`); TLS peers are verified against `tls`. Fetched keys are kept for `key_ttl`
    /// (a domain with no key for an address is asked again after a tenth of that).
    pub fn new(
        routes: Vec<MmtpRoute>,
        dns: Option<Arc<dyn Discovery>>,
        tls: Option<Arc<rustls::ClientConfig>>,
        dns_tls: bool,
    ) -> Self {
        MmtpPeers {
            routes,
            dns,
            tls,
            dns_tls,
            destinations: Destinations::default(),
            key_ttl: Duration::from_secs(3600),
            keys: TtlCache::new(),
            serving: TtlCache::new(),
            renewing: Mutex::new(std::collections::HashSet::new()),
            lookups: Mutex::new(std::collections::HashMap::new()),
            fetches: Semaphore::new(KEY_FETCHES),
            fetch_timeout: Duration::from_secs(10),
        }
    }

    /// Where stranger-triggered key fetches may not go.
    pub fn with_destinations(mut self, destinations: Destinations) -> Self {
        self.destinations = destinations;
        self
    }

    /// How long a fetched key is trusted before it is fetched again.
    pub fn with_key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl;
        self
    }

    /// The servers of `domain`, in order, each address a target.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, PeerError> {
        self.targets_via(domain, None).await
    }

    /// [`MmtpPeers::targets`], with `domain`'s SRV answer when the caller has it already.
    pub async fn targets_via(
        &self,
        domain: &str,
        found: Option<&[SrvTarget]>,
    ) -> Result<Vec<Target>, PeerError> {
        let mut hosts: Vec<(String, u16, bool)> = self
            .routes
            .iter()
            .filter(|r| r.domain.eq_ignore_ascii_case(domain))
            .map(|r| (r.host.clone(), r.port, r.tls))
            .collect();
        if hosts.is_empty() {
            let srv = match found {
                Some(srv) => srv.to_vec(),
                None => self
                    .dns
                    .as_ref()
                    .ok_or_else(|| PeerError::NoServer(format!("no MMTP route to {domain}")))?
                    .srv("mmtp", domain)
                    .await
                    .map_err(PeerError::Temporary)?,
            };
            if srv.is_empty() {
                return Err(PeerError::NoServer(format!(
                    "no MMTP server for {domain} (no route, no _mmtp._tcp SRV record)"
                )));
            }
            hosts = mailgate_core::discovery::order(srv)
                .into_iter()
                .map(|t| (t.host, t.port, self.dns_tls))
                .collect();
        }
        let mut out = Vec::new();
        for (host, port, tls) in hosts {
            let addresses = host_addresses(self.dns.as_ref(), &host)
                .await
                .map_err(PeerError::Temporary)?;
            out.extend(addresses.into_iter().map(|ip| Target {
                address: SocketAddr::new(ip, port),
                host: host.clone(),
                tls,
            }));
        }
        Ok(out)
    }

    /// Connect to one target (TLS verified for its host name when it speaks TLS).
    pub async fn connect(&self, t: &Target) -> Result<MmtpClient, PeerError> {
        let tls = if t.tls {
            let config = self.tls.clone().ok_or_else(|| {
                PeerError::Temporary("TLS to MMTP peers needs [tls] trust".into())
            })?;
            let name = ServerName::try_from(t.host.clone())
                .map_err(|e| PeerError::NoServer(format!("TLS name {}: {e}", t.host)))?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        MmtpClient::connect(&t.address.to_string(), tls)
            .await
            .map_err(|e| PeerError::Temporary(format!("{}: {e}", t.address)))
    }

    /// Is `peer` one of `domain`'s servers: an address of one of its MMTP servers (static
    /// route or `_mmtp._tcp` target), or of the domain name itself? `Err` when DNS failed.
    /// Answers are kept for [`SERVES_TTL`] (failures for [`SERVES_ERROR_TTL`]); an expired one
    /// is still answered from while a fresh one is looked up in the background, so only the
    /// first SEND from a server waits for DNS, never a stream of them.
    pub async fn serves(self: &Arc<Self>, domain: &str, peer: IpAddr) -> Result<bool, PeerError> {
        let peer = canonical(peer);
        let domain = domain.to_ascii_lowercase();
        let servers = match self.serving.lookup(&domain) {
            Cached::Fresh(answer) => answer,
            Cached::Stale(answer) => {
                let first = self
                    .renewing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(domain.clone());
                if first {
                    let peers = self.clone();
                    tokio::spawn(async move {
                        let _ = peers.renew_serves(domain).await;
                    });
                }
                answer
            }
            Cached::Missing => self.first_lookup(domain).await,
        };
        servers.map(|addresses| addresses.contains(&peer))
    }

    /// The answer for a domain not in the cache: one lookup, which concurrent callers share.
    async fn first_lookup(&self, domain: String) -> Result<Arc<Vec<IpAddr>>, PeerError> {
        let gate = self
            .lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(domain.clone())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        let answer = match self.serving.lookup(&domain) {
            Cached::Fresh(answer) | Cached::Stale(answer) => answer,
            Cached::Missing => self.renew_serves(domain.clone()).await,
        };
        self.lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domain);
        answer
    }

    async fn renew_serves(&self, domain: String) -> Result<Arc<Vec<IpAddr>>, PeerError> {
        let answer = self.look_up_servers(&domain).await.map(Arc::new);
        let ttl = if answer.is_ok() {
            SERVES_TTL
        } else {
            SERVES_ERROR_TTL
        };
        self.renewing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domain);
        self.serving.put(domain, answer.clone(), ttl);
        answer
    }

    /// The addresses of `domain`'s MMTP servers and of the domain name itself.
    async fn look_up_servers(&self, domain: &str) -> Result<Vec<IpAddr>, PeerError> {
        let mut addresses: Vec<IpAddr> = match self.targets(domain).await {
            Ok(targets) => targets.iter().map(|t| canonical(t.address.ip())).collect(),
            Err(PeerError::NoServer(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        match host_addresses(self.dns.as_ref(), domain).await {
            Ok(own) => addresses.extend(own.into_iter().map(canonical)),
            // No resolver at all: nothing can be checked, so nothing matches; and when the
            // domain's servers are known, its own name failing to resolve takes none away.
            Err(_) if self.dns.is_none() || !addresses.is_empty() => {}
            Err(e) => return Err(PeerError::Temporary(e)),
        }
        Ok(addresses)
    }

    /// The public key of remote `sender`, asked of its own domain's MMTP servers over verified
    /// TLS (never over plain TCP, never from an address `[outbound] deny` lists). `Ok(None)`:
    /// the domain has no key for it (or no TLS server to ask); `Err`: none could be asked now.
    pub async fn sender_key(&self, sender: &Address) -> Result<Option<String>, PeerError> {
        let name = sender.account_key();
        if let Some(hit) = self.keys.get(&name) {
            return Ok(hit);
        }
        let _slot = tokio::time::timeout(self.fetch_timeout, self.fetches.acquire())
            .await
            .map_err(|_| PeerError::Temporary("too many key fetches at once".into()))?
            .map_err(|_| PeerError::Temporary("shutting down".into()))?;
        let fetched = match tokio::time::timeout(self.fetch_timeout, self.fetch_key(sender)).await {
            Ok(r) => r?,
            Err(_) => return Err(PeerError::Temporary("key fetch timed out".into())),
        };
        let ttl = if fetched.is_some() {
            self.key_ttl
        } else {
            self.key_ttl / 10
        };
        self.keys.put(name, fetched.clone(), ttl);
        Ok(fetched)
    }

    async fn fetch_key(&self, sender: &Address) -> Result<Option<String>, PeerError> {
        let targets = match self.targets(&sender.domain).await {
            Ok(t) => t,
            Err(PeerError::NoServer(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut last = None;
        for t in targets.iter().filter(|t| t.tls) {
            if !self.destinations.allowed(t.address.ip()) {
                continue;
            }
            let mut client = match self.connect(t).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            client.limit_replies(MAX_KEY_REPLY);
            return match client.request_key(sender).await {
                Ok(armored) => Ok(Some(armored)),
                Err(crate::client::ClientError::Refused(_)) => Ok(None),
                Err(e) => Err(PeerError::Temporary(format!("{}: {e}", t.address))),
            };
        }
        last.map_or(Ok(None), Err)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// A resolver whose SRV look-ups fail: anything that asks it again is caught.
    struct NoSrv;

    #[async_trait]
    impl Discovery for NoSrv {
        async fn srv(&self, _: &str, _: &str) -> Result<Vec<SrvTarget>, String> {
            Err("SRV asked again".into())
        }
        async fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, String> {
            Ok(vec![IpAddr::from([192, 0, 2, 1])])
        }
        async fn txt(&self, _: &str) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
        async fn mx(&self, _: &str) -> Result<mailgate_core::discovery::Mx, String> {
            Ok(mailgate_core::discovery::Mx::None)
        }
    }

    #[tokio::test]
    async fn the_routes_srv_answer_is_used_not_asked_again() {
        let peers = MmtpPeers::new(Vec::new(), Some(Arc::new(NoSrv)), None, false);
        let found = [SrvTarget {
            host: "mx.b.test".into(),
            port: 8025,
            priority: 0,
            weight: 0,
        }];
        let targets = peers.targets_via("b.test", Some(&found)).await.unwrap();
        assert_eq!(targets[0].address, "192.0.2.1:8025".parse().unwrap());
        assert_eq!(targets[0].host, "mx.b.test");
        assert!(peers.targets("b.test").await.is_err());
    }

    /// A slow resolver that counts its SRV questions.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl Discovery for Counting {
        async fn srv(&self, _: &str, _: &str) -> Result<Vec<SrvTarget>, String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(vec![SrvTarget {
                host: "mx.b.test".into(),
                port: 8025,
                priority: 0,
                weight: 0,
            }])
        }
        async fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, String> {
            Ok(vec![IpAddr::from([192, 0, 2, 1])])
        }
        async fn txt(&self, _: &str) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
        async fn mx(&self, _: &str) -> Result<mailgate_core::discovery::Mx, String> {
            Ok(mailgate_core::discovery::Mx::None)
        }
    }

    /// First SENDs from many connections and addresses at once ask DNS about the sender's
    /// domain once, and each gets its own answer.
    #[tokio::test]
    async fn concurrent_first_checks_of_a_domain_share_one_lookup() {
        let dns = Arc::new(Counting::default());
        let peers = Arc::new(MmtpPeers::new(Vec::new(), Some(dns.clone()), None, false));
        let checks = (0..32u8).map(|i| {
            let peers = peers.clone();
            let ip = if i % 2 == 0 {
                [192, 0, 2, 1]
            } else {
                [198, 51, 100, i]
            };
            tokio::spawn(async move { (i, peers.serves("B.test", IpAddr::from(ip)).await) })
        });
        for check in checks {
            let (i, answer) = check.await.unwrap();
            assert_eq!(answer.unwrap(), i % 2 == 0, "check {i}");
        }
        assert_eq!(dns.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
