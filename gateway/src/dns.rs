//! Route discovery over DNS with hickory-resolver: SRV, MX and TXT records and host addresses.
//! hickory's resolver caches answers for their TTL (bounded, 32 entries by default raised to
//! 1024 here), so repeated look-ups for a busy peer cost no queries.

use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use mailgate_core::discovery::{order, Discovery, Mx, SrvTarget};
use std::net::{IpAddr, SocketAddr};

/// DNS discovery through the system resolver configuration or the given servers.
pub struct DnsDiscovery {
    resolver: TokioResolver,
}

impl DnsDiscovery {
    /// Use `servers` (UDP and TCP), or the system configuration when empty; each query waits
    /// at most `timeout` (two attempts).
    pub fn new(servers: &[SocketAddr], timeout: std::time::Duration) -> anyhow::Result<Self> {
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let mut config = ResolverConfig::new();
            for s in servers {
                config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let mut builder = builder;
        let opts = builder.options_mut();
        opts.cache_size = 1024;
        opts.timeout = timeout / 2;
        opts.attempts = 2;
        Ok(DnsDiscovery {
            resolver: builder.build(),
        })
    }
}

/// Does this error mean the name has no such records? Only NXDOMAIN and NOERROR with no
/// answer (NODATA) do. hickory reports SERVFAIL, REFUSED, FORMERR and NOTIMP answers as "no
/// records found" too, with their response code: those, like time-outs and I/O errors, are
/// failures to find out, which the caller retries (never a bounce, never a guessed default).
fn means_no_records(e: &ResolveError) -> bool {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(
                *response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            )
        }
        _ => false,
    }
}

/// A look-up failure as the caller sees it, with the DNS answer's code when there was one.
fn failure(e: &ResolveError) -> String {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound {
            response_code,
            query,
            ..
        }) => {
            format!("DNS look-up of {} failed: {response_code}", query.name())
        }
        _ => format!("DNS look-up failed: {e}"),
    }
}

fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

#[async_trait]
impl Discovery for DnsDiscovery {
    async fn srv(&self, service: &str, domain: &str) -> Result<Vec<SrvTarget>, String> {
        let name = absolute(&format!("_{service}._tcp.{domain}"));
        match self.resolver.srv_lookup(name).await {
            Ok(found) => Ok(order(
                found
                    .iter()
                    .map(|srv| SrvTarget {
                        host: srv.target().to_utf8().trim_end_matches('.').to_owned(),
                        port: srv.port(),
                        priority: srv.priority(),
                        weight: srv.weight(),
                    })
                    .filter(|t| !t.host.is_empty())
                    .collect(),
            )),
            Err(e) if means_no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(failure(&e)),
        }
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.resolver.txt_lookup(absolute(name)).await {
            Ok(found) => Ok(found
                .iter()
                .map(|txt| {
                    // One record may hold several character-strings: they form one value.
                    txt.txt_data()
                        .iter()
                        .map(|d| String::from_utf8_lossy(d))
                        .collect::<String>()
                })
                .collect()),
            Err(e) if means_no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(failure(&e)),
        }
    }

    async fn mx(&self, domain: &str) -> Result<Mx, String> {
        match self.resolver.mx_lookup(absolute(domain)).await {
            Ok(found) => Ok(Mx::from_records(
                found
                    .iter()
                    .map(|mx| {
                        let host = mx.exchange().to_utf8();
                        (mx.preference(), host.trim_end_matches('.').to_owned())
                    })
                    .collect(),
            )),
            Err(e) if means_no_records(&e) => Ok(Mx::None),
            Err(e) => Err(failure(&e)),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        match self.resolver.lookup_ip(absolute(host)).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) if means_no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(failure(&e)),
        }
    }
}
