//! Route choice for a remote domain: which protocol the relay speaks to it.
//!
//! In order: a static route (`[[route]]`: the one route syntax; the per-protocol tables of
//! earlier releases are merged into it when the configuration is read); else DNS — SRV `_immp._tcp`, `_mmtp._tcp`, `_xhmtp._tcp` of the domain,
//! and for SMTP its MX records (a null MX means no mail; no MX at all means the domain's own
//! address records, RFC 5321 §5.1). With the default preference (SMTP last) a domain that
//! publishes a seed protocol's SRV record keeps getting it; a domain with only MX records
//! gets SMTP.
//! Among the seed protocols the domain offers, the one the message arrived in wins (its
//! original wire form can then go out unchanged); otherwise `[relay] preference` decides.
//! Arriving over SMTP promotes nothing: SMTP keeps its place in the preference, so a domain
//! with a seed protocol's SRV record gets that protocol even for mail submitted over SMTP. A domain that
//! offers none of the enabled protocols has no route: the entry fails and bounces. The SRV
//! answer found for the chosen protocol goes to the transport in the [`Route`], which connects
//! there (by priority and weight; XHMTP also reads its TXT prefix) without asking again. The
//! resolver caches every answer for its TTL.

use mailgate_core::discovery::{Discovery, Mx, SrvTarget};
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
            .filter(|p| *p != SMTP)
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
        // Every protocol's look-up at once, each bounded by the same time limit: a dead
        // resolver costs one limit, not one per protocol.
        let lookups = order.iter().map(|p| async move {
            match tokio::time::timeout(self.timeout, targets(dns.as_ref(), p, domain)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        });
        let answers = futures_util::future::join_all(lookups).await;
        let mut dns_error = None;
        let mut null_mx = false;
        for (p, answer) in order.iter().zip(answers) {
            match answer {
                Ok(Found::Targets(targets)) => {
                    return Ok(Route {
                        protocol: (*p).to_owned(),
                        srv: Some(targets),
                    })
                }
                Ok(Found::NullMx) => null_mx = true,
                Ok(Found::Nothing) => {}
                Err(e) => dns_error = Some(e),
            }
        }
        match dns_error {
            Some(e) => Err(TransportError::Temporary(format!(
                "DNS lookup for {domain}: {e}"
            ))),
            None if null_mx => Err(TransportError::Permanent(format!(
                "{domain} accepts no mail (null MX, RFC 7505)"
            ))),
            None => Err(TransportError::Permanent(format!(
                "no route to {domain}: no static route and no {}",
                order
                    .iter()
                    .map(|p| match *p {
                        SMTP => "MX or address record".to_owned(),
                        p => format!("_{p}._tcp SRV record"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// The SMTP protocol name: routed by MX records rather than SRV.
const SMTP: &str = "smtp";

/// The port every MX target listens on (RFC 5321 §4.5.4.1); the SMTP transport may be
/// configured to use another.
pub const MX_PORT: u16 = 25;

/// What DNS says about one protocol at a domain.
enum Found {
    /// Servers to try, best first.
    Targets(Vec<SrvTarget>),
    /// The domain says it takes no mail (SMTP only).
    NullMx,
    /// Nothing for this protocol.
    Nothing,
}

/// The servers of `domain` for `protocol`: its SRV targets for a seed protocol; for SMTP its
/// MX hosts by preference, or — when it has no MX records — the domain itself if it has an
/// address (the implicit MX of RFC 5321 §5.1).
async fn targets(dns: &dyn Discovery, protocol: &str, domain: &str) -> Result<Found, String> {
    if protocol != SMTP {
        let srv = dns.srv(protocol, domain).await?;
        return Ok(if srv.is_empty() {
            Found::Nothing
        } else {
            Found::Targets(srv)
        });
    }
    let target = |(preference, host): (u16, String)| SrvTarget {
        host,
        port: MX_PORT,
        priority: preference,
        weight: 0,
    };
    match dns.mx(domain).await? {
        Mx::Null => Ok(Found::NullMx),
        Mx::Hosts(hosts) => Ok(Found::Targets(hosts.into_iter().map(target).collect())),
        Mx::None => Ok(if dns.addresses(domain).await?.is_empty() {
            Found::Nothing
        } else {
            Found::Targets(vec![target((0, domain.to_owned()))])
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
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
        async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
            Ok(match host {
                "bare.test" | "all.test" => vec![IpAddr::from([192, 0, 2, 7])],
                _ => Vec::new(),
            })
        }
        async fn txt(&self, _: &str) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
        async fn mx(&self, domain: &str) -> Result<Mx, String> {
            Ok(match domain {
                "mx.test" | "all.test" => {
                    Mx::Hosts(vec![(5, "a.mx.test".into()), (10, "b.mx.test".into())])
                }
                "null.test" => Mx::Null,
                "broken-mx.test" => return Err("SERVFAIL".into()),
                _ => Mx::None,
            })
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
    const WITH_SMTP: &[&str] = &["immp", "mmtp", "xhmtp", "smtp"];

    /// SRV beats MX with the default preference; MX hosts go in preference order on port 25;
    /// no MX falls back to the domain's address; a null MX is a permanent "no mail".
    #[tokio::test]
    async fn smtp_routes_come_from_mx_records() {
        let c = RouteChooser::new(
            Vec::new(),
            Some(Arc::new(Zone(vec![("mmtp", "all.test")]))),
            vec!["immp".into(), "mmtp".into(), "xhmtp".into(), "smtp".into()],
            Duration::from_millis(200),
        );
        assert_eq!(
            c.choose("all.test", None, WITH_SMTP)
                .await
                .unwrap()
                .protocol,
            "mmtp"
        );
        // Mail that arrived over SMTP goes to a domain's seed protocol all the same.
        assert_eq!(
            c.choose("all.test", Some("smtp"), WITH_SMTP)
                .await
                .unwrap()
                .protocol,
            "mmtp"
        );
        assert_eq!(
            c.choose("mx.test", Some("smtp"), WITH_SMTP)
                .await
                .unwrap()
                .protocol,
            "smtp"
        );
        let route = c.choose("mx.test", Some("immp"), WITH_SMTP).await.unwrap();
        assert_eq!(route.protocol, "smtp");
        let targets: Vec<_> = route
            .srv
            .unwrap()
            .into_iter()
            .map(|t| (t.host, t.port, t.priority))
            .collect();
        assert_eq!(
            targets,
            [
                ("a.mx.test".to_owned(), 25, 5),
                ("b.mx.test".to_owned(), 25, 10)
            ]
        );
        let route = c.choose("bare.test", None, WITH_SMTP).await.unwrap();
        assert_eq!(route.srv.unwrap()[0].host, "bare.test");
        assert!(matches!(
            c.choose("null.test", None, WITH_SMTP).await,
            Err(TransportError::Permanent(m)) if m.contains("null MX")
        ));
        assert!(matches!(
            c.choose("nothing.test", None, WITH_SMTP).await,
            Err(TransportError::Permanent(m)) if m.contains("MX or address")
        ));
        assert!(matches!(
            c.choose("broken-mx.test", None, WITH_SMTP).await,
            Err(TransportError::Temporary(_))
        ));
        // Without the SMTP transport, MX records are not asked about.
        assert!(matches!(
            c.choose("mx.test", None, ALL).await,
            Err(TransportError::Permanent(_))
        ));
    }

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
