//! `mailgate.toml`: serde structs with defaults that run locally, validated at start-up.

use anyhow::{bail, Context};
use mailgate_core::Address;
use mailgate_immp::ImmpConfig;
use mailgate_mmtp::MmtpConfig;
use mailgate_smtp::SmtpConfig;
use mailgate_tmtp::TmtpConfig;
use mailgate_xhmtp::XhmtpConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database and generated TLS material live.
    pub data_dir: PathBuf,
    /// Domains this gateway holds mailboxes for; the first is its own name in greetings.
    pub domains: Vec<String>,
    /// Largest message accepted, bytes.
    pub max_message_size: usize,
    /// Most recipients of one message.
    pub max_recipients: usize,
    /// TLS certificate for every TLS listener.
    pub tls: TlsConfig,
    /// Connection limits and timeouts shared by the front-ends.
    pub limits: LimitsConfig,
    /// Admin HTTP listener (`/healthz`, `/metrics`).
    pub admin: AdminConfig,
    /// Where the store is: SQLite in `data_dir` (default) or a PostgreSQL database.
    pub store: StoreConfig,
    /// Relay workers.
    pub relay: RelayConfig,
    /// DNS used for route discovery.
    pub dns: DnsConfig,
    /// MMTP front-end.
    pub mmtp: MmtpConfig,
    /// IMMP front-end.
    pub immp: ImmpConfig,
    /// XHMTP front-end.
    pub xhmtp: XhmtpConfig,
    /// SMTP front-end (inbound MX).
    pub smtp: SmtpConfig,
    /// `[tmtp]`: mnm's members-only protocol (TLS listener, registration policy, timeouts).
    pub tmtp: TmtpConfig,
    /// Where connections a stranger can trigger may go.
    pub outbound: OutboundConfig,
    /// Static routes to other domains (`[[route]]`), tried before DNS.
    pub route: Vec<RouteConfig>,
}

/// `[outbound]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Networks that connections triggered by strangers (XHMTP fetches, IMMP cookie
    /// call-backs) never reach; the gateway's own listener addresses are added.
    pub deny: Vec<ipnet::IpNet>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            deny: mailgate_core::destinations::DEFAULT_DENY
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        }
    }
}

/// `[[route]]`: where a domain's server is, and which protocol to speak to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The remote domain.
    pub domain: String,
    /// `immp`, `mmtp`, `xhmtp` or `smtp`.
    pub protocol: String,
    /// Host name or address of its server.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Use TLS (MMTP's TLS port, XHMTP over HTTPS; IMMP always upgrades; SMTP: STARTTLS is
    /// required and the certificate verified for `host`, instead of opportunistic).
    #[serde(default)]
    pub tls: bool,
    /// The name the server's certificate is verified for (default: `host` when it is a name,
    /// else the domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// XHMTP: the server's URL path prefix (default `xhmtp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl RouteConfig {
    /// The TLS name to verify: `server_name`, else `host` when it is a name, else the domain.
    pub fn tls_name(&self) -> String {
        match &self.server_name {
            Some(n) => n.clone(),
            None if self.host.parse::<std::net::IpAddr>().is_err() => self.host.clone(),
            None => self.domain.clone(),
        }
    }
}

/// The relay protocols, in the default preference order: the seed protocols before SMTP, so a
/// domain that publishes one of their SRV records keeps getting it.
pub const PROTOCOLS: [&str; 4] = ["immp", "mmtp", "xhmtp", "smtp"];

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            domains: vec!["localhost".into()],
            max_message_size: mailgate_core::router::DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: 100,
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            admin: AdminConfig::default(),
            store: StoreConfig::default(),
            relay: RelayConfig::default(),
            dns: DnsConfig::default(),
            mmtp: MmtpConfig::default(),
            immp: ImmpConfig::default(),
            xhmtp: XhmtpConfig::default(),
            smtp: SmtpConfig::default(),
            tmtp: TmtpConfig::default(),
            outbound: OutboundConfig::default(),
            route: Vec::new(),
        }
    }
}

/// `[tls]`: certificate and key in PEM. Both empty: a self-signed pair is generated into
/// `<data_dir>/tls/` at first start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM files of the CAs trusted when this gateway connects to other servers (IMMP AUTH
    /// COOKIE call-backs and relaying). Empty: no remote server can be verified.
    pub trust: Vec<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections per listener; more are closed at once.
    pub max_connections: usize,
    /// Open connections per peer IP address per listener; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Open connections per IPv4 /24 or IPv6 /64 per listener; more are closed at once.
    pub max_connections_per_prefix: usize,
    /// Idle time before a connection is closed, seconds.
    pub read_timeout_secs: u64,
    /// Time allowed for a TLS handshake, seconds.
    pub handshake_timeout_secs: u64,
    /// Submissions and logins per second per peer IP (0: unlimited).
    pub rate_per_sec: f64,
    /// Burst allowance of the rate limiter.
    pub rate_burst: u32,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish, seconds.
    pub shutdown_grace_secs: u64,
    /// Memory for message bodies in flight across every front-end, bytes.
    pub body_budget_bytes: usize,
    /// How long a large body waits for room in that budget before the temporary-failure
    /// reply, milliseconds.
    pub body_budget_wait_ms: u64,
    /// Failed logins per peer address (IPv6: per /64) before delays start.
    pub login_failures_per_peer: u32,
    /// Failed logins per account before delays start.
    pub login_failures_per_account: u32,
    /// Longest delay a peer or account is banned for after failed logins, seconds (the first
    /// is one second, doubling per further failure).
    pub login_max_delay_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1024,
            max_connections_per_ip: 16,
            max_connections_per_prefix: 64,
            read_timeout_secs: 300,
            handshake_timeout_secs: 10,
            rate_per_sec: 0.0,
            rate_burst: 100,
            shutdown_grace_secs: 10,
            body_budget_bytes: mailgate_core::router::DEFAULT_BODY_BUDGET,
            body_budget_wait_ms: 2000,
            login_failures_per_peer: 5,
            login_failures_per_account: 20,
            login_max_delay_secs: 900,
        }
    }
}

impl LimitsConfig {
    /// Read timeout as a duration.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }

    /// The limits of a public listener.
    pub fn conn_limits(&self) -> crate::listener::ConnLimits {
        crate::listener::ConnLimits {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
            max_per_prefix: self.max_connections_per_prefix,
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
        }
    }

    /// The failed-login limits.
    pub fn login_limits(&self) -> mailgate_core::LoginLimits {
        mailgate_core::LoginLimits {
            free_per_peer: self.login_failures_per_peer,
            free_per_account: self.login_failures_per_account,
            max_delay: Duration::from_secs(self.login_max_delay_secs),
            forget_after: Duration::from_secs(
                self.login_max_delay_secs.saturating_mul(2).max(3600),
            ),
            ..mailgate_core::LoginLimits::default()
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listener for `/healthz` and `/metrics`.
    pub listen: SocketAddr,
    /// Open connections on the admin listener (its own budget: a flood of the public
    /// listeners never takes these slots).
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9025)),
            max_connections: 32,
        }
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// DNS servers (`ip:port`) for SRV/TXT/A look-ups; empty: the system's resolver settings.
    pub servers: Vec<SocketAddr>,
    /// Time limit of one route choice's look-ups (run concurrently), and of each query,
    /// seconds.
    pub timeout_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout_secs: 5,
        }
    }
}

/// `[relay]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Concurrent deliveries.
    pub workers: usize,
    /// How often the queue is polled, milliseconds.
    pub poll_interval_ms: u64,
    /// First retry delay, seconds (doubles per attempt, with jitter).
    pub retry_base_secs: u64,
    /// Longest retry delay, seconds.
    pub retry_max_secs: u64,
    /// Age after which an undelivered entry fails, seconds (default 5 days).
    pub max_age_secs: u64,
    /// Deliveries in flight to one destination domain at a time.
    pub per_domain: usize,
    /// Protocols tried for a domain when it does not speak the one the message arrived in, in
    /// order (`immp`, `mmtp`, `xhmtp`, `smtp`); a protocol left out is used only for mail that
    /// arrived in it.
    pub preference: Vec<String>,
    /// How long a claimed delivery is leased to this node, seconds: when the node dies
    /// mid-delivery, another one (or this one restarted) takes the entry over after that.
    pub lease_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            workers: 4,
            poll_interval_ms: 1000,
            retry_base_secs: 60,
            retry_max_secs: 4 * 3600,
            max_age_secs: 5 * 24 * 3600,
            per_domain: 4,
            preference: PROTOCOLS.iter().map(|p| (*p).to_owned()).collect(),
            lease_secs: 600,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database?sslmode=verify-full&sslrootcert=ca.pem`
    /// for a PostgreSQL store several nodes may share, or `sqlite:PATH`; unset: SQLite at
    /// `<data_dir>/mailgate.db`.
    pub url: Option<String>,
    /// PostgreSQL connections this node keeps (its concurrent transactions).
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            pool_size: 16,
        }
    }
}

impl RelayConfig {
    /// The retry schedule.
    pub fn backoff(&self) -> mailgate_core::relay::Backoff {
        mailgate_core::relay::Backoff {
            base_ms: (self.retry_base_secs * 1000) as i64,
            max_ms: (self.retry_max_secs * 1000) as i64,
        }
    }
}

/// Which defaults a configuration file is laid over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Defaults {
    /// The built-in defaults (config/mailgate.toml): data in ./data, listeners on 127.0.0.1.
    #[default]
    Embedded,
    /// The container's (config/container.toml): data in /var/lib/mailgate, listeners on every
    /// interface. The image sets MAILGATE_DEFAULTS=container, so a mounted file that sets only
    /// `domains` keeps everything else of the container's.
    Container,
}

/// The container's configuration, the base of `Defaults::Container`.
pub const CONTAINER_TOML: &str = include_str!("../../config/container.toml");

/// `overlay` laid over `base`: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Config {
    /// Read `path` laid over `defaults` (or the defaults alone when `None`); then validate.
    pub fn load(path: Option<&Path>, defaults: Defaults) -> anyhow::Result<Config> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?,
            ),
            None => None,
        };
        let in_file = || match path {
            Some(p) => format!("in config file {}", p.display()),
            None => "in the configuration".into(),
        };
        let config = match (defaults, text) {
            (Defaults::Embedded, None) => Config::default(),
            (Defaults::Embedded, Some(text)) => Config::parse(&text).with_context(in_file)?,
            (Defaults::Container, text) => {
                let mut base: toml::Table =
                    CONTAINER_TOML.parse().context("the container defaults")?;
                if let Some(text) = text {
                    // The file alone first: its errors name its own lines and keys.
                    Config::parse(&text).with_context(in_file)?;
                    merge(&mut base, text.parse().with_context(in_file)?);
                }
                Config::deserialize(base).with_context(in_file)?
            }
        };
        let mut config = config;
        for warning in config.merge_old_routes()? {
            tracing::warn!("{warning}");
        }
        config.validate()?;
        Ok(config)
    }

    /// Move the route tables of earlier releases (`[[immp.routes]]`, `[[xhmtp.routes]]`) into
    /// `[[route]]`, the one route syntax; a warning for each table found. They are accepted
    /// for one release.
    pub fn merge_old_routes(&mut self) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        for r in std::mem::take(&mut self.immp.routes) {
            let (host, port) = r
                .address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                .with_context(|| {
                    format!("[[immp.routes]] {}: address must be HOST:PORT", r.domain)
                })?;
            warnings.push(format!(
                "[[immp.routes]] is deprecated and will be removed in the next release: write                  [[route]] domain = \"{}\", protocol = \"immp\", host = \"{host}\", port = {port}{}",
                r.domain,
                r.server_name
                    .as_ref()
                    .map(|n| format!(", server_name = \"{n}\""))
                    .unwrap_or_default()
            ));
            let server_name = Some(r.server_name.unwrap_or_else(|| r.domain.clone()));
            self.route.push(RouteConfig {
                domain: r.domain,
                protocol: "immp".into(),
                host: host.to_owned(),
                port,
                tls: true,
                // The old table verified the domain's name unless told otherwise.
                server_name,
                prefix: None,
            });
        }
        for r in std::mem::take(&mut self.xhmtp.routes) {
            warnings.push(format!(
                "[[xhmtp.routes]] is deprecated and will be removed in the next release: write                  [[route]] domain = \"{}\", protocol = \"xhmtp\", host = \"{}\", port = {},                  tls = {}{}",
                r.domain,
                r.host,
                r.port,
                r.https,
                r.prefix
                    .as_ref()
                    .map(|p| format!(", prefix = \"{p}\""))
                    .unwrap_or_default()
            ));
            self.route.push(RouteConfig {
                domain: r.domain,
                protocol: "xhmtp".into(),
                host: r.host,
                port: r.port,
                tls: r.https,
                server_name: None,
                prefix: r.prefix,
            });
        }
        Ok(warnings)
    }

    /// The `[[route]]`s of one protocol.
    pub fn routes(&self, protocol: &str) -> impl Iterator<Item = &RouteConfig> + '_ {
        let protocol = protocol.to_owned();
        self.route.iter().filter(move |r| r.protocol == protocol)
    }

    /// Parse TOML text (unknown keys are errors that name the key).
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| {
            let hint = if e.message().contains("socket address") {
                "\nhint: listen addresses are IP:PORT — use an IP address (127.0.0.1:8025, \
                 0.0.0.0:8025, [::]:8025), not a host name"
            } else {
                ""
            };
            anyhow::anyhow!("{e}{hint}")
        })
    }

    /// Check every value; the message names the bad key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.domains.is_empty() {
            bail!("domains: at least one local domain is required");
        }
        for d in &self.domains {
            Address::new("postmaster", d).with_context(|| format!("domains: {d:?}"))?;
        }
        if self.max_message_size == 0 {
            bail!("max_message_size must be greater than 0");
        }
        if self.max_recipients == 0 {
            bail!("max_recipients must be greater than 0");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key go together: set both or neither");
        }
        if self.limits.max_connections == 0 {
            bail!("limits.max_connections must be greater than 0");
        }
        if self.limits.max_connections_per_ip == 0 {
            bail!("limits.max_connections_per_ip must be greater than 0");
        }
        if self.limits.max_connections_per_prefix < self.limits.max_connections_per_ip {
            bail!(
                "limits.max_connections_per_prefix must be at least limits.max_connections_per_ip"
            );
        }
        if self.limits.body_budget_bytes / 5 < self.max_message_size {
            bail!(
                "limits.body_budget_bytes must be at least 5 x max_message_size (a message in \
                 flight is held about five times while it is parsed and stored)"
            );
        }
        if self.admin.max_connections == 0 {
            bail!("admin.max_connections must be greater than 0");
        }
        if self.limits.read_timeout_secs == 0 {
            bail!("limits.read_timeout_secs must be greater than 0");
        }
        if !(self.limits.rate_per_sec >= 0.0 && self.limits.rate_per_sec.is_finite()) {
            bail!("limits.rate_per_sec must be 0 (unlimited) or a positive number");
        }
        if self.dns.timeout_secs == 0 {
            bail!("dns.timeout_secs must be greater than 0");
        }
        if self.relay.workers == 0 {
            bail!("relay.workers must be greater than 0");
        }
        if self.relay.retry_base_secs == 0 || self.relay.retry_max_secs < self.relay.retry_base_secs
        {
            bail!("relay.retry_base_secs must be > 0 and <= relay.retry_max_secs");
        }
        for p in &self.relay.preference {
            if !PROTOCOLS.contains(&p.as_str()) {
                bail!(
                    "relay.preference: unknown protocol {p:?} (use {})",
                    PROTOCOLS.join(", ")
                );
            }
        }
        if self.relay.per_domain == 0 {
            bail!("relay.per_domain must be greater than 0");
        }
        for r in &self.route {
            if !PROTOCOLS.contains(&r.protocol.as_str()) {
                bail!(
                    "[[route]] {}: unknown protocol {:?} (use {})",
                    r.domain,
                    r.protocol,
                    PROTOCOLS.join(", ")
                );
            }
            if r.prefix.is_some() && r.protocol != "xhmtp" {
                bail!(
                    "[[route]] {}: prefix is for protocol = \"xhmtp\" only",
                    r.domain
                );
            }
            if let Some(p) = &r.prefix {
                if !mailgate_xhmtp::config::valid_prefix(p) {
                    bail!(
                        "[[route]] {}: prefix {p:?} is not a valid URL path segment",
                        r.domain
                    );
                }
            }
        }
        if let Some(p) = &self.smtp.postmaster {
            let a =
                Address::parse_any(p).map_err(|e| anyhow::anyhow!("smtp.postmaster {p:?}: {e}"))?;
            if !self
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&a.domain))
            {
                bail!("smtp.postmaster {p:?} is not an address of this gateway's domains");
            }
        }
        self.mmtp.validate().map_err(anyhow::Error::msg)?;
        self.xhmtp.validate().map_err(anyhow::Error::msg)?;
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        for (addr, key) in self.listeners() {
            if let Some((_, other)) = seen.iter().find(|(a, _)| *a == addr && addr.port() != 0) {
                bail!("{key} = {addr} is also used by {other}");
            }
            seen.push((addr, key));
        }
        Ok(())
    }

    /// Where the DKIM keys of the local domains are (`<data_dir>/dkim/<domain>.pem`).
    pub fn dkim_dir(&self) -> PathBuf {
        self.data_dir.join("dkim")
    }

    /// Every enabled listener with the key that configures it.
    pub fn listeners(&self) -> Vec<(SocketAddr, &'static str)> {
        let mut v = vec![(self.admin.listen, "admin.listen")];
        if self.mmtp.enabled {
            v.push((self.mmtp.listen, "mmtp.listen"));
            if let Some(t) = self.mmtp.tls_listen {
                v.push((t, "mmtp.tls_listen"));
            }
        }
        if self.immp.enabled {
            v.push((self.immp.listen, "immp.listen"));
        }
        if self.xhmtp.enabled {
            v.push((self.xhmtp.listen, "xhmtp.listen"));
            if let Some(t) = self.xhmtp.tls_listen {
                v.push((t, "xhmtp.tls_listen"));
            }
        }
        if self.smtp.enabled {
            v.push((self.smtp.listen, "smtp.listen"));
            if let Some(a) = self.smtp.submission_listen {
                v.push((a, "smtp.submission_listen"));
            }
            if let Some(a) = self.smtp.submissions_listen {
                v.push((a, "smtp.submissions_listen"));
            }
        }
        if self.tmtp.enabled {
            v.push((self.tmtp.listen, "tmtp.listen"));
        }
        v
    }

    /// The gateway's own name: the first local domain.
    pub fn primary_domain(&self) -> &str {
        self.domains.first().map_or("localhost", String::as_str)
    }

    /// Open files the connection limits can need: every listener full, plus room for the
    /// store, outgoing connections and DNS.
    pub fn fd_need(&self) -> u64 {
        let public = self.listeners().len().saturating_sub(1) as u64;
        public * self.limits.max_connections as u64 + self.admin.max_connections as u64 + 1024
    }

    /// The store's URL: `[store] url`, or the SQLite file in the data directory.
    pub fn store_url(&self) -> String {
        match &self.store.url {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", self.data_dir.join("mailgate.db").display()),
        }
    }

    /// Render the effective configuration as TOML.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_match_the_shipped_file() {
        Config::default().validate().unwrap();
        let shipped = include_str!("../../config/mailgate.toml");
        let parsed = Config::parse(shipped).unwrap();
        assert_eq!(
            parsed.to_toml().unwrap(),
            Config::default().to_toml().unwrap(),
            "config/mailgate.toml must document exactly the built-in defaults"
        );
    }

    #[test]
    fn container_config_validates_and_listens_everywhere() {
        let c = Config::parse(include_str!("../../config/container.toml")).unwrap();
        c.validate().unwrap();
        assert!(c.listeners().iter().all(|(a, _)| a.ip().is_unspecified()));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/mailgate"));
    }

    #[test]
    fn a_partial_file_keeps_the_container_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailgate.toml");
        std::fs::write(
            &path,
            "domains = [\"example.org\"]\n[mmtp]\nhashcash_difficulty = 5\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), Defaults::Container).unwrap();
        assert_eq!(c.domains, ["example.org"]);
        assert_eq!(c.mmtp.hashcash_difficulty, 5);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/mailgate"));
        assert!(c.listeners().iter().all(|(a, _)| a.ip().is_unspecified()));
        assert_eq!(c.mmtp.listen.port(), 8025);
        // Embedded defaults: the same file runs locally.
        let c = Config::load(Some(&path), Defaults::Embedded).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        // The file's own errors still name its keys.
        std::fs::write(&path, "[mmtp]\nlisten_port = 1\n").unwrap();
        let e = Config::load(Some(&path), Defaults::Container).unwrap_err();
        assert!(format!("{e:#}").contains("listen_port"), "{e:#}");
    }

    #[test]
    fn old_route_tables_become_routes_with_a_warning() {
        let mut c = Config::parse(
            "[[immp.routes]]\ndomain = \"i.test\"\naddress = \"[::1]:1025\"\n\
             [[xhmtp.routes]]\ndomain = \"x.test\"\nhost = \"h.x.test\"\nport = 443\n\
             https = true\nprefix = \"p\"\n",
        )
        .unwrap();
        let warnings = c.merge_old_routes().unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(warnings.iter().all(|w| w.contains("deprecated")));
        let immp = c.routes("immp").next().unwrap();
        assert_eq!((immp.host.as_str(), immp.port), ("::1", 1025));
        assert_eq!(immp.tls_name(), "i.test");
        let x = c.routes("xhmtp").next().unwrap();
        assert_eq!((x.host.as_str(), x.port, x.tls), ("h.x.test", 443, true));
        assert_eq!(x.prefix.as_deref(), Some("p"));
        assert!(c.immp.routes.is_empty() && c.xhmtp.routes.is_empty());
        c.validate().unwrap();
        let e = Config::parse(
            "[[route]]\ndomain = \"m.test\"\nprotocol = \"mmtp\"\nhost = \"h\"\nport = 1\nprefix = \"p\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("[mmtp]\nlisten_port = 1\n").unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
        let e = Config::parse("domains = []")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("domains"), "{e}");
        let e = Config::parse("[mmtp]\nhashcash_difficulty = 9\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("mmtp.hashcash_difficulty"), "{e}");
        let e = Config::parse("[immp]\nlisten = \"127.0.0.1:8025\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("immp.listen"), "{e}");
        let e = Config::parse("[tls]\ncert = \"/x.pem\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("tls.key"), "{e}");
        let e = Config::parse("[smtp]\npostmaster = \"pm@elsewhere.test\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("smtp.postmaster"), "{e}");
        let e = Config::parse("[mmtp]\nlisten = \"localhost:8025\"\n").unwrap_err();
        assert!(e.to_string().contains("use an IP address"), "{e}");
        Config::parse("[smtp]\npostmaster = \"pm@localhost\"\n")
            .unwrap()
            .validate()
            .unwrap();
    }
}
