//! SMTP listener settings (`[smtp]` in mailgate.toml).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[smtp]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Run the SMTP front-end.
    pub enabled: bool,
    /// The inbound MX listener (port 25 on a public server).
    pub listen: SocketAddr,
    /// The submission listener (RFC 6409, port 587 on a public server): STARTTLS, then `AUTH`.
    pub submission_listen: Option<SocketAddr>,
    /// The submission listener with implicit TLS (RFC 8314, port 465 on a public server).
    pub submissions_listen: Option<SocketAddr>,
    /// Longest wait for the whole message after `354`, seconds (RFC 5321 §4.5.3.2.6 suggests
    /// ten minutes for the data block's lines; the whole message gets this bound).
    pub data_timeout_secs: u64,
    /// The port of other domains' mail exchangers (25; another only for tests and smart hosts
    /// that listen elsewhere).
    pub mx_port: u16,
    /// Deliver only over STARTTLS with a certificate verified against `[tls] trust`; off:
    /// STARTTLS whenever offered, the certificate unchecked (opportunistic, RFC 7435).
    pub require_tls: bool,
    /// The DKIM selector outbound mail is signed under (`<selector>._domainkey.<domain>`).
    pub dkim_selector: String,
    /// Check SPF, DKIM and DMARC for mail arriving at the MX listener (results stored with the
    /// message and shown to its readers; a DMARC `p=reject` failure refused). Off: no DNS
    /// look-ups for arriving mail, and no SMTP sender counts as checked.
    pub verify_senders: bool,
    /// The account that gets mail for `postmaster@` of every local domain that has no
    /// `postmaster` account of its own (RFC 5321 §4.5.1 asks every domain to take it).
    /// Unset: such mail is refused at `RCPT` like mail for any unknown user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster: Option<String>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            submission_listen: Some(SocketAddr::from(([127, 0, 0, 1], 2587))),
            submissions_listen: Some(SocketAddr::from(([127, 0, 0, 1], 2465))),
            data_timeout_secs: 600,
            mx_port: 25,
            require_tls: false,
            dkim_selector: "mailgate".into(),
            verify_senders: true,
            postmaster: None,
        }
    }
}
