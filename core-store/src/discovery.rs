//! Finding another domain's server: the trait a DNS back-end implements (the core itself opens
//! no sockets; the gateway provides the resolver).

use async_trait::async_trait;
use std::net::IpAddr;
use std::sync::Arc;

/// One SRV target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Target host name (no trailing dot).
    pub host: String,
    /// Port.
    pub port: u16,
    /// SRV priority (lower first).
    pub priority: u16,
    /// SRV weight (higher first among equal priorities).
    pub weight: u16,
}

/// DNS look-ups for route discovery.
#[async_trait]
pub trait Discovery: Send + Sync {
    /// Targets of `_<service>._tcp.<domain>`, best first; empty when there are none.
    async fn srv(&self, service: &str, domain: &str) -> Result<Vec<SrvTarget>, String>;
    /// Addresses of a host (A and AAAA).
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String>;
    /// The strings of the TXT records at `name`; empty when there are none.
    async fn txt(&self, name: &str) -> Result<Vec<String>, String>;
    /// The mail exchangers of `domain` (MX records), lowest preference first; empty when it
    /// has none. A null MX (RFC 7505: one record whose exchange is `.`) is [`Mx::Null`].
    async fn mx(&self, domain: &str) -> Result<Mx, String>;
}

/// A domain's MX answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mx {
    /// No MX records: the domain's own address is its implicit MX (RFC 5321 §5.1).
    None,
    /// A null MX: the domain accepts no mail at all.
    Null,
    /// Exchanger host names with their preferences, lowest first.
    Hosts(Vec<(u16, String)>),
}

impl Mx {
    /// The answer for these `(preference, exchange)` records (exchange without its trailing
    /// dot; `""` for the root), sorted.
    pub fn from_records(mut records: Vec<(u16, String)>) -> Mx {
        if records.is_empty() {
            return Mx::None;
        }
        if records.len() == 1 && records[0].1.is_empty() {
            return Mx::Null;
        }
        records.retain(|(_, host)| !host.is_empty());
        records.sort();
        Mx::Hosts(records)
    }
}

/// The addresses of `host`: itself when it is an address literal (`[…]` allowed), else its
/// A/AAAA records through `dns`.
pub async fn host_addresses(
    dns: Option<&Arc<dyn Discovery>>,
    host: &str,
) -> Result<Vec<IpAddr>, String> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match dns {
        Some(dns) => dns.addresses(host).await,
        None => Err(format!("cannot resolve {host}: no resolver")),
    }
}

/// Order SRV targets: priority ascending, then weight descending (RFC 2782 without the random
/// weighting, so the choice is stable).
pub fn order(mut targets: Vec<SrvTarget>) -> Vec<SrvTarget> {
    targets.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, priority: u16, weight: u16) -> SrvTarget {
        SrvTarget {
            host: host.into(),
            port: 1,
            priority,
            weight,
        }
    }

    #[test]
    fn mx_answers() {
        assert_eq!(Mx::from_records(Vec::new()), Mx::None);
        assert_eq!(Mx::from_records(vec![(0, String::new())]), Mx::Null);
        assert_eq!(
            Mx::from_records(vec![(20, "b".into()), (10, "a".into()), (5, String::new())]),
            Mx::Hosts(vec![(10, "a".into()), (20, "b".into())])
        );
    }

    #[test]
    fn srv_order() {
        let got = order(vec![t("c", 20, 5), t("a", 10, 1), t("b", 10, 9)]);
        let hosts: Vec<_> = got.iter().map(|x| x.host.as_str()).collect();
        assert_eq!(hosts, ["b", "a", "c"]);
    }
}
