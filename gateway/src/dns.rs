//! Route discovery over DNS with hickory-resolver: SRV and TXT records and host addresses.
//! hickory's resolver caches answers for their TTL (bounded, 32 entries by default raised to
//! 1024 here), so repeated look-ups for a busy peer cost no queries.

use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use mailgate_core::discovery::{order, Discovery, SrvTarget};
use std::net::{IpAddr, SocketAddr};

/// DNS discovery through the system resolver configuration or the given servers.
pub struct DnsDiscovery {
    resolver: TokioResolver,
}

impl DnsDiscovery {
    /// Use `servers` (UDP and TCP), or the system configuration when empty.
    pub fn new(servers: &[SocketAddr]) -> anyhow::Result<Self> {
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
        builder.options_mut().cache_size = 1024;
        Ok(DnsDiscovery {
            resolver: builder.build(),
        })
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
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
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
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self.resolver
            .lookup_ip(absolute(host))
            .await
            .map(|ips| ips.iter().collect())
            .map_err(|e| e.to_string())
    }
}
