//! The accept loop every TCP front-end shares: connection limits (per listener, per peer
//! address, per /24 or /64), making room under pressure, optional TLS handshake with a timeout,
//! one task and one tracing span per connection, graceful shutdown.
//!
//! When a listener is full, a new connection closes the unauthenticated connection that has
//! been idle the longest (as Postfix and nginx shed idle clients under pressure) and takes its
//! slot; when every open connection is authenticated, the new one is refused. Refusals and
//! evictions are counted in `/metrics` (`mailgate_connections_refused_total`), not logged one
//! by one; accept errors are logged at most once a second per listener.

use mailgate_core::io::ConnState;
use mailgate_core::Metrics;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use mailgate_core::io::BoxedIo as Conn;

/// How long a new connection waits for the slot of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// One accepted connection as a front-end sees it.
pub struct Accepted {
    /// The stream (already decrypted when the listener does TLS).
    pub stream: Conn,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the listener did a TLS handshake.
    pub tls: bool,
    /// Fires when the gateway shuts down, or when the listener closes this connection to make
    /// room for a new one.
    pub shutdown: CancellationToken,
    /// Activity and login state, read by the listener when it must make room.
    pub state: Arc<ConnState>,
}

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections.
    pub max_connections: usize,
    /// Open connections per peer address.
    pub max_per_ip: usize,
    /// Open connections per IPv4 /24 or IPv6 /64.
    pub max_per_prefix: usize,
    /// TLS handshake time limit.
    pub handshake_timeout: Duration,
}

/// What every listener shares.
#[derive(Clone)]
pub struct ListenerContext {
    /// Metrics (connections).
    pub metrics: Arc<Metrics>,
    /// Shutdown signal.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The limits.
    pub limits: ConnLimits,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// The IPv4 /24 or IPv6 /64 of an address (IPv4-mapped IPv6 counts as IPv4).
pub fn prefix_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => prefix_of(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Open connections per key; a slot is released when its guard drops.
struct Counts<K>(Mutex<HashMap<K, usize>>);

struct CountSlot<K: Eq + Hash + Clone>(Arc<Counts<K>>, K);

impl<K: Eq + Hash + Clone> Counts<K> {
    fn new() -> Arc<Self> {
        Arc::new(Counts(Mutex::new(HashMap::new())))
    }

    fn acquire(self: &Arc<Self>, key: K, max: usize) -> Option<CountSlot<K>> {
        let mut map = self.0.lock().ok()?;
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(CountSlot(self.clone(), key))
    }
}

impl<K: Eq + Hash + Clone> Drop for CountSlot<K> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.0 .0.lock() {
            if let Some(n) = map.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.1);
                }
            }
        }
    }
}

/// The open connections of one listener, for eviction.
#[derive(Default)]
struct Open(Mutex<HashMap<u64, (Arc<ConnState>, CancellationToken)>>);

impl Open {
    fn insert(&self, id: u64, state: Arc<ConnState>, token: CancellationToken) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(id, (state, token));
        }
    }

    fn remove(&self, id: u64) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&id);
        }
    }

    /// Close the unauthenticated connection idle the longest; false when there is none.
    fn evict_one(&self) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        let victim = m
            .iter()
            .filter(|(_, (s, t))| !s.is_authenticated() && !t.is_cancelled())
            .max_by_key(|(_, (s, _))| s.idle_ms())
            .map(|(id, _)| *id);
        match victim.and_then(|id| m.remove(&id)) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Counts accept errors and logs at most one line a second.
struct AcceptErrors {
    last_log: Option<Instant>,
    since_log: u64,
}

impl AcceptErrors {
    fn record(&mut self, protocol: &str, e: &std::io::Error) {
        self.since_log += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(protocol, error = %e, count = self.since_log, "accept failed");
            self.last_log = Some(Instant::now());
            self.since_log = 0;
        }
    }
}

/// Accept connections on `listener` until shutdown, running `handler` for each.
pub async fn serve<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: ListenerContext,
    handler: F,
) where
    F: Fn(Accepted) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let per_ip = Counts::<IpAddr>::new();
    let per_prefix = Counts::<IpAddr>::new();
    let open = Arc::new(Open::default());
    let mut errors = AcceptErrors {
        last_log: None,
        since_log: 0,
    };
    loop {
        let (tcp, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    ctx.metrics.connection_refused(protocol, "accept_error");
                    errors.record(protocol, &e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(ip_slot) = per_ip.acquire(peer.ip(), ctx.limits.max_per_ip) else {
            ctx.metrics.connection_refused(protocol, "per_ip");
            continue;
        };
        let Some(prefix_slot) = per_prefix.acquire(prefix_of(peer.ip()), ctx.limits.max_per_prefix)
        else {
            ctx.metrics.connection_refused(protocol, "per_prefix");
            continue;
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if open.evict_one() => {
                ctx.metrics.connection_refused(protocol, "evicted_idle");
                None
            }
            Err(_) => {
                ctx.metrics.connection_refused(protocol, "full");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("conn", protocol, %peer, session);
        let (handler, tls, ctx2, slots, open) = (
            handler.clone(),
            tls.clone(),
            ctx.clone(),
            slots.clone(),
            open.clone(),
        );
        let is_tls = tls.is_some();
        ctx.tracker.spawn(
            async move {
                let permit = match permit {
                    Some(p) => p,
                    // The evicted connection gives its slot back as it closes.
                    None => {
                        match tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned()).await {
                            Ok(Ok(p)) => p,
                            _ => {
                                ctx2.metrics.connection_refused(protocol, "full");
                                return;
                            }
                        }
                    }
                };
                let _slots = (permit, ip_slot, prefix_slot);
                let _open = ctx2.metrics.connection_opened(protocol);
                let state = Arc::new(ConnState::default());
                let token = ctx2.shutdown.child_token();
                open.insert(session, state.clone(), token.clone());
                tracing::debug!("connected");
                let stream: Option<Conn> = match tls {
                    None => Some(Box::new(tcp)),
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            ctx2.limits.handshake_timeout,
                            acceptor.accept(tcp),
                        );
                        tokio::select! {
                            _ = token.cancelled() => None,
                            r = handshake => match r {
                                Ok(Ok(s)) => Some(Box::new(s) as Conn),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "tls handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!("tls handshake timed out");
                                    None
                                }
                            },
                        }
                    }
                };
                if let Some(stream) = stream {
                    handler(Accepted {
                        stream,
                        peer,
                        tls: is_tls,
                        shutdown: token,
                        state,
                    })
                    .await;
                }
                open.remove(session);
                tracing::debug!("disconnected");
            }
            .instrument(span),
        );
    }
}

/// Raise the soft `RLIMIT_NOFILE` to `need` descriptors (or the hard limit, whichever is
/// lower), so that every listener can hold its connections; say so when it cannot.
pub fn raise_fd_limit(need: u64) {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            tracing::warn!("cannot read the open-file limit (RLIMIT_NOFILE)");
            return;
        }
        let before = lim.rlim_cur;
        if before >= need {
            tracing::debug!(limit = before, need, "open-file limit is enough");
            return;
        }
        let target = need.min(lim.rlim_max);
        lim.rlim_cur = target;
        // SAFETY: as above.
        let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0;
        if raised && target >= need {
            tracing::info!(from = before, to = target, "raised the open-file limit");
        } else {
            tracing::warn!(
                limit = if raised { target } else { before },
                need,
                "the open-file limit is lower than the connection limits need; raise the hard \
                 limit (ulimit -Hn, LimitNOFILE=) or lower limits.max_connections"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(
            prefix_of("192.0.2.77".parse().unwrap()),
            "192.0.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            prefix_of("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            prefix_of("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.0".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn eviction_takes_the_longest_idle_unauthenticated_connection() {
        let open = Open::default();
        let authed = Arc::new(ConnState::default());
        authed.set_authenticated();
        let (ta, tb, tc) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        open.insert(1, authed, ta.clone());
        open.insert(2, Arc::new(ConnState::default()), tb.clone());
        std::thread::sleep(Duration::from_millis(5));
        let fresh = Arc::new(ConnState::default());
        open.insert(3, fresh, tc.clone());
        assert!(open.evict_one());
        assert!(tb.is_cancelled() && !ta.is_cancelled() && !tc.is_cancelled());
        assert!(open.evict_one());
        assert!(tc.is_cancelled());
        assert!(
            !open.evict_one(),
            "authenticated connections are never evicted"
        );
        assert!(!ta.is_cancelled());
    }
}
