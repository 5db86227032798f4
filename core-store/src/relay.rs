//! The outbound side: the trait a front-end implements to relay mail to a remote domain,
//! and the retry schedule the relay workers use.

use crate::discovery::SrvTarget;
use crate::message::Message;
use crate::store::QueueEntry;
use async_trait::async_trait;
use rand::Rng;

/// How one delivery attempt ended, from the transport's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// Try again later (network error, 4xx-temporary, server busy).
    Temporary(String),
    /// Never going to work (unknown recipient, refused): bounce.
    Permanent(String),
}

/// A remote domain's servers for one protocol, as the relay's route choice found them: handed
/// to the transport, which connects there instead of looking the domain up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The protocol (the transport's [`Transport::protocol`]).
    pub protocol: String,
    /// The domain's SRV targets for the protocol, as DNS answered; `None` for a static route
    /// (the transport's own configuration names the servers).
    pub srv: Option<Vec<SrvTarget>>,
}

/// An outbound transport: delivers one stored message to one remote recipient.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Protocol name (`mmtp`, `immp`, `xhmtp`).
    fn protocol(&self) -> &'static str;
    /// Deliver `message` to `entry.recipient`, at the servers `route` names.
    async fn deliver(
        &self,
        route: &Route,
        entry: &QueueEntry,
        message: &Message,
    ) -> Result<(), TransportError>;
}

/// Exponential backoff with jitter: `base * 2^attempt`, capped, then ±25 %.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay, ms.
    pub base_ms: i64,
    /// Longest delay, ms.
    pub max_ms: i64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 60_000,
            max_ms: 4 * 3600 * 1000,
        }
    }
}

impl Backoff {
    /// Delay before the attempt after `attempts` failed ones.
    pub fn delay_ms(&self, attempts: u32) -> i64 {
        let exp = self
            .base_ms
            .saturating_mul(1i64 << attempts.min(30))
            .min(self.max_ms);
        let jitter = exp / 4;
        if jitter == 0 {
            return exp.max(1);
        }
        (exp + rand::rng().random_range(-jitter..=jitter)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            base_ms: 1000,
            max_ms: 10_000,
        };
        for _ in 0..50 {
            let d0 = b.delay_ms(0);
            assert!((750..=1250).contains(&d0), "{d0}");
            let d3 = b.delay_ms(3);
            assert!((6000..=10_000).contains(&d3), "{d3}");
            let d20 = b.delay_ms(20);
            assert!((7500..=12_500).contains(&d20), "{d20}");
        }
    }
}
