//! Authentication of inbound mail with mail-auth: SPF for the envelope sender (RFC 7208),
//! DKIM signatures (RFC 6376), DMARC for the `From` domain (RFC 7489). mail-auth resolves
//! through its own hickory resolver, built here from the same `[dns] servers` as every other
//! look-up of the gateway (the system configuration when none are set).

use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::MessageAuthenticator;
use std::net::SocketAddr;
use std::time::Duration;

/// A mail-auth authenticator asking `servers` (UDP, then TCP; the system resolver
/// configuration when empty), each query waiting at most `timeout`.
pub fn authenticator(
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<MessageAuthenticator, String> {
    let mut options = ResolverOpts::default();
    options.timeout = timeout / 2;
    options.attempts = 2;
    if servers.is_empty() {
        return MessageAuthenticator::new_system_conf().map_err(|e| e.to_string());
    }
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    MessageAuthenticator::new(ResolverConfig::from_name_servers(name_servers), options)
        .map_err(|e| e.to_string())
}
