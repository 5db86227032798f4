//! One gateway's configuration for multi-host tests: every listener on the site's own loopback
//! address (port 0 unless a test fixes it, because DNS records name it), optional TLS material
//! from a test CA, optional DNS server, and extra lines per section.

use std::net::SocketAddr;
use std::path::Path;

/// A gateway of a test.
#[derive(Clone)]
pub struct Site<'a> {
    /// Local domains; the first names the gateway (and its certificate files).
    pub domains: &'a [&'a str],
    /// Its loopback address.
    pub ip: &'a str,
    /// Test CA directory with `<first domain>.pem`, `.key` and `ca.pem`.
    pub ca: Option<&'a Path>,
    /// DNS server for route discovery.
    pub dns: Option<SocketAddr>,
    /// Fixed listener ports (0: any).
    pub mmtp_port: u16,
    /// MMTP TLS port.
    pub mmtp_tls_port: u16,
    /// IMMP port.
    pub immp_port: u16,
    /// XHMTP HTTP port.
    pub xhmtp_port: u16,
    /// Lines of `[relay]`.
    pub relay: &'a str,
    /// Extra lines of `[mmtp]`, `[immp]`, `[xhmtp]`, and after the tables (`[[route]]`).
    pub mmtp: &'a str,
    /// Extra `[immp]` lines.
    pub immp: &'a str,
    /// Extra `[xhmtp]` lines.
    pub xhmtp: &'a str,
    /// Appended at the end (arrays of tables).
    pub tail: &'a str,
    /// `[outbound] deny` (TOML array): every test host is on loopback, so none by default.
    pub deny: &'a str,
}

impl<'a> Site<'a> {
    /// A site for `domains` on `ip` with fast relay retries and nothing else fixed.
    pub fn new(domains: &'a [&'a str], ip: &'a str) -> Self {
        Site {
            domains,
            ip,
            ca: None,
            dns: None,
            mmtp_port: 0,
            mmtp_tls_port: 0,
            immp_port: 0,
            xhmtp_port: 0,
            relay: "poll_interval_ms = 50\nretry_base_secs = 1\nretry_max_secs = 2",
            mmtp: "",
            immp: "",
            xhmtp: "",
            tail: "",
            deny: "[]",
        }
    }

    /// The configuration text, with its data in `dir/data`.
    pub fn config(&self, dir: &Path) -> String {
        let ip = self.ip;
        let domain = self.domains[0];
        let list = self
            .domains
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = format!(
            "data_dir = \"{}\"\ndomains = [{list}]\n",
            dir.join("data").display()
        );
        if let Some(ca) = self.ca {
            let ca = ca.display();
            out += &format!(
                "[tls]\ncert = \"{ca}/{domain}.pem\"\nkey = \"{ca}/{domain}.key\"\ntrust = [\"{ca}/ca.pem\"]\n"
            );
        }
        if let Some(dns) = self.dns {
            out += &format!("[dns]\nservers = [\"{dns}\"]\n");
        }
        out += &format!("[outbound]\ndeny = {}\n", self.deny);
        out += &format!(
            "[relay]\n{relay}\n[admin]\nlisten = \"{ip}:0\"\n\
             [mmtp]\nlisten = \"{ip}:{mmtp_port}\"\ntls_listen = \"{ip}:{mmtp_tls_port}\"\n{mmtp}\n\
             [immp]\nlisten = \"{ip}:{immp_port}\"\n{immp}\n\
             [xhmtp]\nlisten = \"{ip}:{xhmtp_port}\"\n{xhmtp}\n\
             [tmtp]\nlisten = \"{ip}:0\"\n\
             [smtp]\nlisten = \"{ip}:0\"\nsubmission_listen = \"{ip}:0\"\nsubmissions_listen = \"{ip}:0\"\n{tail}",
            relay = self.relay,
            mmtp_port = self.mmtp_port,
            mmtp_tls_port = self.mmtp_tls_port,
            mmtp = self.mmtp,
            immp_port = self.immp_port,
            immp = self.immp,
            xhmtp_port = self.xhmtp_port,
            xhmtp = self.xhmtp,
            tail = self.tail,
        );
        out
    }
}
