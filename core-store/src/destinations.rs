//! Where a stranger may make the gateway connect. A notification's fetch and an IMMP cookie
//! call-back are connections a peer with no account can trigger; they go only to addresses
//! outside the deny list (by default loopback, link-local, private and unique-local ranges,
//! and the gateway's own listener addresses), so the gateway cannot be pointed at internal
//! services.

use ipnet::IpNet;
use std::net::IpAddr;

/// The ranges a stranger-triggered connection must not reach.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    deny: Vec<IpNet>,
}

/// The default deny list, as configuration text.
pub const DEFAULT_DENY: [&str; 11] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "::/128",
    "fc00::/7",
    "fe80::/10",
];

impl Destinations {
    /// A deny list of these networks.
    pub fn new(deny: Vec<IpNet>) -> Self {
        Destinations { deny }
    }

    /// Also deny these addresses (the gateway's own listeners).
    pub fn deny_addresses(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.deny.extend(ips.into_iter().map(IpNet::from));
        self
    }

    /// May a stranger-triggered connection go to `ip`? (IPv4-mapped IPv6 counts as IPv4.)
    pub fn allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !self.deny.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_keeps_strangers_out_of_internal_ranges() {
        let d = Destinations::new(DEFAULT_DENY.iter().map(|n| n.parse().unwrap()).collect())
            .deny_addresses(["203.0.113.5".parse().unwrap()]);
        for bad in [
            "127.0.0.5",
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "203.0.113.5",
        ] {
            assert!(!d.allowed(bad.parse().unwrap()), "{bad}");
        }
        for good in ["192.0.2.1", "2001:db8::1", "8.8.8.8"] {
            assert!(d.allowed(good.parse().unwrap()), "{good}");
        }
        assert!(Destinations::default().allowed("127.0.0.1".parse().unwrap()));
    }
}
