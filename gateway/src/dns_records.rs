//! `mailgate dns-records DOMAIN` and `mailgate check-dns DOMAIN`: the DNS records an operator
//! publishes for this gateway's configuration (MX and SPF, DKIM and DMARC for SMTP; SRV for
//! each enabled seed protocol and for submission; TXT `_prefix._xhmtp`; the host's A/AAAA),
//! printed in zone-file syntax, and checked against what DNS answers.

use crate::config::Config;
use clap::Args;
use mailgate_core::discovery::{Discovery, Mx};
use std::net::IpAddr;

/// Options of `dns-records` and `check-dns`.
#[derive(Args)]
pub struct DnsArgs {
    /// A local domain of this gateway.
    domain: String,
    /// The host name the records point to (SRV targets, MX exchange). Default: the host of
    /// `[xhmtp] public_url` when set, else the domain itself.
    #[arg(long)]
    host: Option<String>,
    /// The gateway's public address (repeat for IPv4 and IPv6): its A/AAAA records and the SPF
    /// record name it. Default: the listeners' addresses that are public.
    #[arg(long = "address")]
    addresses: Vec<IpAddr>,
}

/// The data of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    /// `MX preference exchange`.
    Mx(String),
    /// `SRV 0 1 port target` of `_service._tcp`.
    Srv { service: &'static str, port: u16 },
    /// A TXT value that must be published as it is.
    Txt(String),
    /// A TXT value of a kind (`v=spf1`, `v=DMARC1`): one must exist; this is a suggestion.
    TxtKind { kind: &'static str, value: String },
    /// An address of the host.
    Address(IpAddr),
}

/// One record to publish, with the reason it is there.
#[derive(Debug, Clone)]
struct Record {
    name: String,
    data: Data,
    why: &'static str,
}

/// What `dns-records` prints: records, and notes for what it cannot know.
struct Plan {
    host: String,
    records: Vec<Record>,
    notes: Vec<String>,
}

/// The records this configuration needs for `domain`.
fn plan(config: &Config, domain: &str, args: &DnsArgs) -> anyhow::Result<Plan> {
    let domain = crate::commands::local_domain(config, domain)?;
    let host = match &args.host {
        Some(h) => h.trim_end_matches('.').to_ascii_lowercase(),
        None => config
            .xhmtp
            .public_url
            .as_deref()
            .and_then(|u| u.split_once("://"))
            .map(|(_, rest)| rest.split(['/', ':']).next().unwrap_or_default())
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| domain.clone()),
    };
    let mut addresses = args.addresses.clone();
    if addresses.is_empty() {
        for (addr, _) in config.listeners() {
            if public(config, addr.ip()) && !addresses.contains(&addr.ip()) {
                addresses.push(addr.ip());
            }
        }
    }
    let mut records = Vec::new();
    let mut notes = Vec::new();
    let mut add = |name: &str, data: Data, why: &'static str| {
        records.push(Record {
            name: name.to_owned(),
            data,
            why,
        })
    };
    let srv = |service: &'static str, port: u16| Data::Srv { service, port };
    if config.mmtp.enabled {
        add(&domain, srv("mmtp", config.mmtp.listen.port()), "MMTP");
    }
    if config.immp.enabled {
        add(&domain, srv("immp", config.immp.listen.port()), "IMMP");
    }
    if config.xhmtp.enabled {
        add(&domain, srv("xhmtp", config.xhmtp.listen.port()), "XHMTP");
        add(
            &format!("_prefix._xhmtp.{domain}"),
            Data::Txt(config.xhmtp.prefix.clone()),
            "XHMTP URL path prefix",
        );
    }
    if config.smtp.enabled {
        add(&domain, Data::Mx(host.clone()), "SMTP mail exchanger");
        if config.smtp.listen.port() != 25 {
            notes.push(format!(
                "the MX listener is on port {}: SMTP peers connect to port 25, so forward \
                 port 25 to it (e.g. docker run -p 25:{0})",
                config.smtp.listen.port()
            ));
        }
        for (listen, service) in [
            (config.smtp.submission_listen, "submission"),
            (config.smtp.submissions_listen, "submissions"),
        ] {
            if let Some(listen) = listen {
                add(
                    &domain,
                    srv(service, listen.port()),
                    "mail clients (RFC 6186)",
                );
            }
        }
        let mut spf = String::from("v=spf1 mx");
        for ip in &addresses {
            spf.push_str(&match ip {
                IpAddr::V4(ip) => format!(" ip4:{ip}"),
                IpAddr::V6(ip) => format!(" ip6:{ip}"),
            });
        }
        spf.push_str(" -all");
        add(
            &domain,
            Data::TxtKind {
                kind: "v=spf1",
                value: spf,
            },
            "SPF: who sends this domain's mail",
        );
        let key = mailgate_smtp::dkim::key_file(&config.dkim_dir(), &domain);
        let selector = &config.smtp.dkim_selector;
        match mailgate_smtp::dkim::public_key(&key) {
            Ok(public) => add(
                &format!("{selector}._domainkey.{domain}"),
                Data::Txt(mailgate_smtp::dkim::txt_value(&public)),
                "DKIM key of outbound mail",
            ),
            Err(_) => notes.push(format!(
                "no DKIM key for {domain} yet: run `mailgate dkim generate {domain}`, then \
                 publish the {selector}._domainkey.{domain} record it prints"
            )),
        }
        add(
            &format!("_dmarc.{domain}"),
            Data::TxtKind {
                kind: "v=DMARC1",
                value: "v=DMARC1; p=quarantine; adkim=r; aspf=r".to_owned(),
            },
            "DMARC policy",
        );
    }
    for ip in &addresses {
        add(&host, Data::Address(*ip), "the gateway's address");
    }
    if addresses.is_empty() {
        notes.push(format!(
            "no listener has a public address: publish A/AAAA records of {host} with the \
             gateway's public addresses (or pass --address)"
        ));
    }
    Ok(Plan {
        host,
        records,
        notes,
    })
}

/// Is this an address the Internet can reach: outside `[outbound] deny` (by default
/// loopback, private, link-local and unspecified)?
fn public(config: &Config, ip: IpAddr) -> bool {
    mailgate_core::destinations::Destinations::new(config.outbound.deny.clone()).allowed(ip)
}

/// Zone-file text for a TXT value: quoted character-strings of at most 255 octets.
fn quoted(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c).replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Record {
    /// The record as one zone-file line.
    fn zone_line(&self, host: &str) -> String {
        let (name, rest) = match &self.data {
            Data::Mx(exchange) => (self.name.clone(), format!("MX    10 {exchange}.")),
            Data::Srv { service, port } => (
                format!("_{service}._tcp.{}", self.name),
                format!("SRV   0 1 {port} {host}."),
            ),
            Data::Txt(value) | Data::TxtKind { value, .. } => {
                (self.name.clone(), format!("TXT   {}", quoted(value)))
            }
            Data::Address(IpAddr::V4(ip)) => (self.name.clone(), format!("A     {ip}")),
            Data::Address(IpAddr::V6(ip)) => (self.name.clone(), format!("AAAA  {ip}")),
        };
        format!("{:<40} 3600 IN {rest}", format!("{name}."))
    }
}

/// `mailgate dns-records DOMAIN`: print the records.
pub fn print(config: &Config, args: &DnsArgs) -> anyhow::Result<()> {
    let plan = plan(config, &args.domain, args)?;
    println!(
        "; DNS records for {} served by mailgate at {} (ports are the configured listeners'; \
         where NAT or a container maps them, publish the outside ports)",
        args.domain, plan.host
    );
    let mut why = "";
    for r in &plan.records {
        if r.why != why {
            println!("; {}", r.why);
            why = r.why;
        }
        println!("{}", r.zone_line(&plan.host));
    }
    for note in &plan.notes {
        println!("; NOTE: {note}");
    }
    Ok(())
}

/// What DNS says of one record.
enum Verdict {
    Ok,
    Missing(String),
    Wrong(String),
}

/// Ask `dns` whether `r` is published.
async fn verify(dns: &dyn Discovery, r: &Record, host: &str) -> Result<Verdict, String> {
    Ok(match &r.data {
        Data::Mx(exchange) => match dns.mx(&r.name).await? {
            Mx::Hosts(hosts) if hosts.iter().any(|(_, h)| h.eq_ignore_ascii_case(exchange)) => {
                Verdict::Ok
            }
            Mx::Hosts(hosts) => Verdict::Wrong(format!(
                "MX names {}, not {exchange}",
                hosts
                    .iter()
                    .map(|(_, h)| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Mx::Null => Verdict::Wrong("a null MX says the domain takes no mail".into()),
            Mx::None => Verdict::Missing("no MX record".into()),
        },
        Data::Srv { service, port } => {
            let targets = dns.srv(service, &r.name).await?;
            if targets
                .iter()
                .any(|t| t.host.eq_ignore_ascii_case(host) && t.port == *port)
            {
                Verdict::Ok
            } else if targets.is_empty() {
                Verdict::Missing("no SRV record".into())
            } else {
                Verdict::Wrong(format!(
                    "SRV points to {}, not {host}:{port}",
                    targets
                        .iter()
                        .map(|t| format!("{}:{}", t.host, t.port))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
        Data::Txt(value) => {
            let found = dns.txt(&r.name).await?;
            if found.iter().any(|t| t == value) {
                Verdict::Ok
            } else if found.is_empty() {
                Verdict::Missing("no TXT record".into())
            } else {
                Verdict::Wrong(format!("TXT is {found:?}"))
            }
        }
        Data::TxtKind { kind, .. } => {
            let found: Vec<String> = dns
                .txt(&r.name)
                .await?
                .into_iter()
                .filter(|t| {
                    t.get(..kind.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(kind))
                })
                .collect();
            match found.len() {
                1 => Verdict::Ok,
                0 => Verdict::Missing(format!("no {kind} record")),
                n => Verdict::Wrong(format!("{n} {kind} records: there must be one")),
            }
        }
        Data::Address(ip) => {
            let found = dns.addresses(&r.name).await?;
            if found.contains(ip) {
                Verdict::Ok
            } else if found.is_empty() {
                Verdict::Missing("no address record".into())
            } else {
                Verdict::Wrong(format!("{} has {found:?}, not {ip}", r.name))
            }
        }
    })
}

/// `mailgate check-dns DOMAIN`: ask the configured resolver for every record; exit 0 when all
/// are published as they should be.
pub async fn check(config: &Config, args: &DnsArgs) -> anyhow::Result<std::process::ExitCode> {
    let plan = plan(config, &args.domain, args)?;
    let dns = crate::dns::DnsDiscovery::new(
        &config.dns.servers,
        std::time::Duration::from_secs(config.dns.timeout_secs),
    )?;
    let mut bad = 0;
    for r in &plan.records {
        let line = r.zone_line(&plan.host);
        match verify(&dns, r, &plan.host).await {
            Ok(Verdict::Ok) => println!("ok       {line}"),
            Ok(Verdict::Missing(why)) => {
                bad += 1;
                println!("MISSING  {line}\n         ({why})");
            }
            Ok(Verdict::Wrong(why)) => {
                bad += 1;
                println!("WRONG    {line}\n         ({why})");
            }
            Err(e) => {
                bad += 1;
                println!("UNKNOWN  {line}\n         ({e})");
            }
        }
    }
    // Without an address to compare, the host must at least resolve.
    if !plan
        .records
        .iter()
        .any(|r| matches!(r.data, Data::Address(_)))
    {
        match dns.addresses(&plan.host).await {
            Ok(found) if !found.is_empty() => {
                println!("ok       {} resolves to {found:?}", plan.host)
            }
            Ok(_) => {
                bad += 1;
                println!(
                    "MISSING  {}. IN A/AAAA (the host has no address)",
                    plan.host
                );
            }
            Err(e) => {
                bad += 1;
                println!("UNKNOWN  {}. IN A/AAAA ({e})", plan.host);
            }
        }
    }
    for note in &plan.notes {
        println!("note     {note}");
    }
    if bad == 0 {
        println!("all {} records are published", plan.records.len());
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!("{bad} of {} records missing or wrong", plan.records.len());
        Ok(std::process::ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(domain: &str) -> DnsArgs {
        DnsArgs {
            domain: domain.into(),
            host: Some("mx.a.test".into()),
            addresses: vec!["192.0.2.7".parse().unwrap()],
        }
    }

    #[test]
    fn every_enabled_protocol_gets_its_records() {
        let mut config = Config::parse("domains = [\"a.test\"]").unwrap();
        config.data_dir = tempfile::tempdir().unwrap().keep();
        let plan = plan(&config, "A.test", &args("A.test")).unwrap();
        let lines: Vec<String> = plan
            .records
            .iter()
            .map(|r| r.zone_line("mx.a.test"))
            .collect();
        let text = lines.join("\n");
        for want in [
            "_mmtp._tcp.a.test.",
            "SRV   0 1 8025 mx.a.test.",
            "_immp._tcp.a.test.",
            "SRV   0 1 1025 mx.a.test.",
            "_xhmtp._tcp.a.test.",
            "_prefix._xhmtp.a.test.",
            "TXT   \"xhmtp\"",
            "MX    10 mx.a.test.",
            "_submission._tcp.a.test.",
            "_submissions._tcp.a.test.",
            "\"v=spf1 mx ip4:192.0.2.7 -all\"",
            "_dmarc.a.test.",
            "mx.a.test.",
            "A     192.0.2.7",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        // No DKIM key yet: a note says how to make one.
        assert!(plan
            .notes
            .iter()
            .any(|n| n.contains("dkim generate a.test")));
        assert!(plan.notes.iter().any(|n| n.contains("port 2525")));
    }

    #[test]
    fn disabled_protocols_get_none_and_foreign_domains_are_refused() {
        let config = Config::parse(
            "domains = [\"a.test\"]\n[smtp]\nenabled = false\n[immp]\nenabled = false\n",
        )
        .unwrap();
        let plan = plan(&config, "a.test", &args("a.test")).unwrap();
        let text: String = plan.records.iter().map(|r| r.zone_line("h")).collect();
        assert!(!text.contains("_immp") && !text.contains("MX") && !text.contains("spf1"));
        assert!(text.contains("_mmtp._tcp"));
        assert!(super::plan(&config, "b.test", &args("b.test")).is_err());
    }

    #[test]
    fn long_txt_values_are_split_into_strings() {
        let long = "p".repeat(300);
        assert_eq!(quoted(&long).matches('"').count(), 4);
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
    }
}
