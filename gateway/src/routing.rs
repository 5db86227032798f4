//! Route choice for a remote domain: which protocol the relay speaks to it.
//!
//! In order: a static route (`[[route]]`, and the per-protocol `[[immp.routes]]` /
//! `[[xhmtp.routes]]`); else DNS — SRV `_immp._tcp`, `_mmtp._tcp`, `_xhmtp._tcp` of the domain.
//! Among the protocols the domain offers, the one the message arrived in wins (its original
//! wire form can then go out unchanged); otherwise `[relay] preference` decides. A domain that
//! offers none of the enabled protocols has no route: the entry fails and bounces. The SRV
//! answer found for the chosen protocol goes to the transport in the [`Route`], which connects
//! there (by priority and weight; XHMTP also reads its TXT prefix) without asking again. The
//! resolver caches every answer for its TTL.

use mailgate_core::discovery::Discovery;
use mailgate_core::relay::{Route, TransportError};
use std::sync::Arc;
use std::time::Duration;

/// Chooses a protocol per destination domain.
pub struct RouteChooser {
    statics: Vec<(String, String)>,
    dns: Option<Arc<dyn Discovery>>,
    preference: Vec<String>,
    timeout: Duration,
}

impl RouteChooser {
    /// `statics` are `(domain, protocol)` pairs from the configuration; `preference` orders the
    /// protocols; `timeout` bounds the SRV look-ups of one choice (they run concurrently).
    pub fn new(
        statics: Vec<(String, String)>,
        dns: Option<Arc<dyn Discovery>>,
        preference: Vec<String>,
        timeout: Duration,
    ) -> Self {
        RouteChooser {
            statics,
            dns,
            preference,
            timeout,
        }
    }

    /// The route to relay to `domain` on, given the protocol the message `arrived` in and the
    /// protocols there are transports for: the protocol, and the SRV targets found for it.
    pub async fn choose(
        &self,
        domain: &str,
        arrived: Option<&str>,
        available: &[&str],
    ) -> Result<Route, TransportError> {
        let mut order: Vec<&str> = Vec::new();
        for p in arrived
            .into_iter()
            .chain(self.preference.iter().map(String::as_str))
        {
            if available.contains(&p) && !order.contains(&p) {
                order.push(p);
            }
        }
        let statics: Vec<&str> = self
            .statics
            .iter()
            .filter(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(_, p)| p.as_str())
            .collect();
        if !statics.is_empty() {
            return order
                .iter()
                .find(|p| statics.contains(p))
                .map(|p| Route {
                    protocol: (*p).to_owned(),
                    srv: None,
                })
                .ok_or_else(|| {
                    TransportError::Permanent(format!(
                        "the configured route to {domain} uses {}, which is not enabled here",
                        statics.join(", ")
                    ))
                });
        }
        let Some(dns) = &self.dns else {
            return Err(TransportError::Permanent(format!(
                "no route to {domain}: no static route and no DNS resolver"
            )));
        };
        // Every protocol's SRV look-up at once, each bounded by the same time limit: a dead
        // resolver costs one limit, not one per protocol.
        let lookups = order.iter().map(|p| async move {
            match tokio::time::timeout(self.timeout, dns.srv(p, domain)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        });
        let answers = futures_util::future::join_all(lookups).await;
        let mut dns_error = None;
        for (p, answer) in order.iter().zip(answers) {
            match answer {
                Ok(targets) if !targets.is_empty() => {
                    return Ok(Route {
                        protocol: (*p).to_owned(),
                        srv: Some(targets),
                    })
                }
                Ok(_) => {}
                Err(e) => dns_error = Some(e),
            }
        }
        match dns_error {
            Some(e) => Err(TransportError::Temporary(format!(
                "DNS lookup for {domain}: {e}"
            ))),
            None => Err(TransportError::Permanent(format!(
                "no route to {domain}: no static route and no SRV record for {}",
                order
                    .iter()
                    .map(|p| format!("_{p}._tcp"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use mailgate_core::discovery::SrvTarget;
    use std::net::IpAddr;

    /// A fixed set of SRV answers (service, domain), standing in for a zone.
    struct Zone(Vec<(&'static str, &'static str)>);

    #[async_trait]
    impl Discovery for Zone {
        async fn srv(&self, service: &str, domain: &str) -> Result<Vec<SrvTarget>, String> {
            if domain == "broken.test" {
                return Err("SERVFAIL".into());
            }
            if domain == "slow.test" && service == "immp" {
                // A resolver that never answers this one.
                std::future::pending::<()>().await;
            }
            Ok(self
                .0
                .iter()
                .filter(|(s, d)| *s == service && *d == domain)
                .map(|_| SrvTarget {
                    host: format!("mx.{domain}"),
                    port: 1,
                    priority: 0,
                    weight: 0,
                })
                .collect())
        }
        async fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, String> {
            Ok(Vec::new())
        }
        async fn txt(&self, _: &str) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
    }

    fn chooser() -> RouteChooser {
        RouteChooser::new(
            vec![("static.test".into(), "xhmtp".into())],
            Some(Arc::new(Zone(vec![
                ("immp", "all.test"),
                ("mmtp", "all.test"),
                ("xhmtp", "all.test"),
                ("mmtp", "mmtp.test"),
                ("mmtp", "slow.test"),
            ]))),
            vec!["immp".into(), "mmtp".into(), "xhmtp".into()],
            Duration::from_millis(200),
        )
    }

    const ALL: &[&str] = &["immp", "mmtp", "xhmtp"];

    #[tokio::test]
    async fn arrival_protocol_then_preference_then_nothing() {
        let c = chooser();
        assert_eq!(
            c.choose("all.test", Some("xhmtp"), ALL)
                .await
                .unwrap()
                .protocol,
            "xhmtp"
        );
        assert_eq!(
            c.choose("all.test", Some("mmtp"), ALL)
                .await
                .unwrap()
                .protocol,
            "mmtp"
        );
        assert_eq!(
            c.choose("all.test", None, ALL).await.unwrap().protocol,
            "immp"
        );
        assert_eq!(
            c.choose("mmtp.test", Some("immp"), ALL)
                .await
                .unwrap()
                .protocol,
            "mmtp"
        );
        assert_eq!(
            c.choose("all.test", Some("immp"), &["xhmtp"])
                .await
                .unwrap()
                .protocol,
            "xhmtp"
        );
        assert_eq!(
            c.choose("static.test", Some("immp"), ALL)
                .await
                .unwrap()
                .protocol,
            "xhmtp"
        );
        // The SRV answer goes to the transport; a static route has none.
        let route = c.choose("all.test", None, ALL).await.unwrap();
        let hosts: Vec<_> = route.srv.unwrap().into_iter().map(|t| t.host).collect();
        assert_eq!(hosts, ["mx.all.test"]);
        let route = c.choose("static.test", None, ALL).await.unwrap();
        assert_eq!(route.srv, None);
        assert!(matches!(
            c.choose("static.test", None, &["immp"]).await,
            Err(TransportError::Permanent(_))
        ));
        assert!(matches!(
            c.choose("none.test", None, ALL).await,
            Err(TransportError::Permanent(_))
        ));
        assert!(matches!(
            c.choose("broken.test", None, ALL).await,
            Err(TransportError::Temporary(_))
        ));
        // The look-ups run together under one limit: a hanging one does not hold the others.
        assert_eq!(
            c.choose("slow.test", None, ALL).await.unwrap().protocol,
            "mmtp"
        );
        assert!(matches!(
            c.choose("slow.test", None, &["immp"]).await,
            Err(TransportError::Temporary(m)) if m.contains("no answer")
        ));
    }
}
