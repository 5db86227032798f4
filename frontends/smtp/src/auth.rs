//! Authentication of inbound mail with mail-auth: SPF for the envelope sender (RFC 7208),
//! DKIM signatures (RFC 6376), DMARC for the `From` domain (RFC 7489). mail-auth resolves
//! through its own hickory resolver, built here from the same `[dns] servers` as every other
//! look-up of the gateway (the system configuration when none are set).

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator, SpfResult,
};
use std::net::{IpAddr, SocketAddr};
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

/// What the checks of one arriving message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings {
    /// SPF passed for the envelope sender: the peer is one of its domain's servers.
    pub spf_pass: bool,
    /// DMARC failed for the `From` domain and that domain asks receivers to reject.
    pub dmarc_reject: bool,
    /// The `Authentication-Results` value (RFC 8601), on one line.
    pub results: String,
}

impl Findings {
    /// The findings when the checks took too long: every method a `temperror`.
    pub fn timed_out(t: &Transaction<'_>) -> Findings {
        Findings {
            spf_pass: false,
            dmarc_reject: false,
            results: format!(
                "{}; spf=temperror (timeout) smtp.mailfrom={}; dkim=temperror (timeout); \
                 dmarc=temperror (timeout)",
                t.hostname,
                if t.mail_from.is_empty() {
                    "<>"
                } else {
                    t.mail_from
                }
            ),
        }
    }

    /// The `Authentication-Results:` header field put in front of the stored message.
    pub fn header(&self) -> String {
        format!("Authentication-Results: {}\r\n", self.results)
    }
}

/// The facts of an SMTP transaction the checks need.
pub struct Transaction<'a> {
    /// This server's name, the `authserv-id` of the results.
    pub hostname: &'a str,
    /// The connecting peer.
    pub ip: IpAddr,
    /// The `EHLO`/`HELO` argument.
    pub helo: &'a str,
    /// The envelope sender (`""`: the null reverse path).
    pub mail_from: &'a str,
}

/// SPF for the envelope sender (the HELO identity for the null reverse path), every DKIM
/// signature of `raw`, and DMARC for its `From` domain. A message mail-auth cannot parse
/// gets `none` results; DNS trouble gives `temperror`, never a refusal.
pub async fn check(
    authenticator: &MessageAuthenticator,
    t: &Transaction<'_>,
    raw: &[u8],
) -> Findings {
    let spf = if t.mail_from.is_empty() {
        authenticator
            .verify_spf(SpfParameters::verify_ehlo(t.ip, t.helo, t.hostname))
            .await
    } else {
        authenticator
            .verify_spf(SpfParameters::verify_mail_from(
                t.ip,
                t.helo,
                t.hostname,
                t.mail_from,
            ))
            .await
    };
    let spf_pass = spf.result() == SpfResult::Pass;
    let mut results = AuthenticationResults::new(t.hostname);
    let mut dmarc_reject = false;
    match AuthenticatedMessage::parse(raw) {
        Some(message) => {
            let dkim = authenticator.verify_dkim(&message).await;
            let mail_from_domain = match t.mail_from.rsplit_once('@') {
                Some((_, domain)) => domain,
                None => t.helo,
            };
            let dmarc = authenticator
                .verify_dmarc(DmarcParameters::new(
                    &message,
                    &dkim,
                    mail_from_domain,
                    &spf,
                ))
                .await;
            dmarc_reject =
                matches!(dmarc.result(), DmarcResult::Fail(_)) && dmarc.policy() == Policy::Reject;
            results = results
                .with_dkim_results(&dkim, message.from())
                .with_spf_mailfrom_result(&spf, t.ip, t.mail_from, t.helo)
                .with_dmarc_result(&dmarc);
        }
        None => results = results.with_spf_mailfrom_result(&spf, t.ip, t.mail_from, t.helo),
    }
    Findings {
        spf_pass,
        dmarc_reject,
        results: unfold(&results.to_string()),
    }
}

/// Folded header text on one line.
fn unfold(text: &str) -> String {
    text.split("\r\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
