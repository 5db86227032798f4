//! Network fixtures for multi-gateway tests: a test CA with leaf certificates, and an
//! in-process authoritative DNS server (hickory-server) for the `test.` zone.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::Path;

/// A test certificate authority.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

pub fn test_ca(dir: &Path) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "mailgate test CA");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    Ca { cert, key }
}

/// A server certificate for `name` (and `mx.<name>`), signed by the test CA, written to `dir`.
pub fn leaf(ca: &Ca, dir: &Path, name: &str) {
    let params = CertificateParams::new(vec![name.to_owned(), format!("mx.{name}")]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// An authoritative DNS server for `test.` on 127.0.0.1 (UDP), serving `records`.
pub async fn dns_server(records: Vec<hickory_proto::rr::Record>) -> std::net::SocketAddr {
    dns_server_for("test.", "127.0.0.1:0", records).await
}

/// An authoritative DNS server for the zone `origin` on `bind` (UDP), serving `records`.
pub async fn dns_server_for(
    origin: &str,
    bind: &str,
    records: Vec<hickory_proto::rr::Record>,
) -> std::net::SocketAddr {
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::{LowerName, Name, RData, Record};
    use hickory_server::authority::{Catalog, ZoneType};
    use hickory_server::store::in_memory::InMemoryAuthority;
    use std::sync::Arc;
    let origin = Name::from_ascii(origin).unwrap();
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("admin.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    for r in records {
        zone.upsert_mut(r, 1);
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(&origin), vec![Arc::new(zone)]);
    let socket = tokio::net::UdpSocket::bind(bind).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut server = hickory_server::ServerFuture::new(catalog);
    server.register_socket(socket);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    addr
}

/// SRV `_<service>._tcp.<domain>` → `<target>:<port>`.
pub fn srv_to(service: &str, domain: &str, target: &str, port: u16) -> hickory_proto::rr::Record {
    use hickory_proto::rr::rdata::SRV;
    use hickory_proto::rr::{Name, RData, Record};
    Record::from_rdata(
        Name::from_ascii(format!("_{service}._tcp.{domain}.")).unwrap(),
        60,
        RData::SRV(SRV::new(
            10,
            5,
            port,
            Name::from_ascii(format!("{target}.")).unwrap(),
        )),
    )
}

pub fn a(host: &str, ip: [u8; 4]) -> hickory_proto::rr::Record {
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record};
    Record::from_rdata(
        Name::from_ascii(format!("{host}.")).unwrap(),
        60,
        RData::A(A(ip.into())),
    )
}

/// SRV `_immp._tcp.<domain>` → `mx.<domain>:<port>`.
pub fn srv(domain: &str, port: u16) -> hickory_proto::rr::Record {
    srv_to("immp", domain, &format!("mx.{domain}"), port)
}

/// TXT record at `name` (a value longer than 255 octets is split into several strings).
pub fn txt(name: &str, value: &str) -> hickory_proto::rr::Record {
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::{Name, RData, Record};
    let strings = value
        .as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    Record::from_rdata(
        Name::from_ascii(format!("{name}.")).unwrap(),
        60,
        RData::TXT(TXT::new(strings)),
    )
}

/// MX record of `domain` → `exchange` with `preference` (`"."`: a null MX).
pub fn mx(domain: &str, preference: u16, exchange: &str) -> hickory_proto::rr::Record {
    use hickory_proto::rr::rdata::MX;
    use hickory_proto::rr::{Name, RData, Record};
    let exchange = if exchange == "." {
        Name::root()
    } else {
        Name::from_ascii(format!("{exchange}.")).unwrap()
    };
    Record::from_rdata(
        Name::from_ascii(format!("{domain}.")).unwrap(),
        60,
        RData::MX(MX::new(preference, exchange)),
    )
}

/// The records `dns-records` printed, as DNS records (each zone line read literally).
pub fn zone(text: &str) -> Vec<hickory_proto::rr::Record> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[1], f[2]), ("3600", "IN"), "{line}");
        let name = f[0].trim_end_matches('.');
        match f[3] {
            "MX" => out.push(mx(name, f[4].parse().unwrap(), f[5].trim_end_matches('.'))),
            "SRV" => {
                let (service, domain) = name.split_once("._tcp.").unwrap();
                let service = service.trim_start_matches('_');
                let target = f[7].trim_end_matches('.');
                out.push(srv_to(service, domain, target, f[6].parse().unwrap()));
            }
            "TXT" => {
                let value: String = line
                    .split_once("TXT")
                    .unwrap()
                    .1
                    .split('"')
                    .skip(1)
                    .step_by(2)
                    .collect();
                out.push(txt(name, &value));
            }
            "A" => {
                let ip: std::net::Ipv4Addr = f[4].parse().unwrap();
                out.push(a(name, ip.octets()));
            }
            other => panic!("unexpected record type {other}: {line}"),
        }
    }
    out
}
