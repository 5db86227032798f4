//! The conformance case format: TOML files under `tests/conformance/<protocol>/`, each holding
//! `[[case]]` tables — a scripted dialogue of steps (what to send, what to expect, what to
//! capture). See `tests/conformance/README.md` for the full description.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A file of cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases, run in order, each on a fresh connection.
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

/// How a case talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP; requests are raw text, each reply is one `\n`-terminated JSON object (MMTP).
    Json,
    /// TCP; requests and replies are `\n`-terminated lines (IMMP).
    Line,
    /// TCP; lines as `line`, but what `send` sends ends with CRLF (SMTP).
    Smtp,
    /// HTTP/1.1; each step is one request on a fresh connection (XHMTP).
    Http,
    /// TLS; TMTP frames (four hex digits, a JSON header, data), several connections per case.
    Tmtp,
}

/// One scripted dialogue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows, one line.
    pub name: String,
    /// Override of the protocol's default transport.
    pub transport: Option<Transport>,
    /// How many `--account` entries the case needs (`${account0}`, `${password0}`, …).
    #[serde(default)]
    pub accounts: usize,
    /// Run only on a TLS connection (`tls`) or only on a plain one (`plain`).
    pub when: Option<When>,
    /// Talk to the `--submission` target instead of `--target` (skipped without it).
    #[serde(default)]
    pub submission: bool,
    /// The case waits for the server's idle timeout: it runs only when `--idle-secs` says
    /// how long that is (`${idle_secs}`).
    #[serde(default)]
    pub idle: bool,
    /// The dialogue.
    pub steps: Vec<Step>,
}

/// A connection condition of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Only with `--tls`.
    Tls,
    /// Only without `--tls`.
    Plain,
}

/// An MMTP SEND packet built by the runner as the original client builds it (json transport).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketSpec {
    /// Sender address.
    pub from: String,
    /// Recipient address.
    pub to: String,
    /// Subject.
    #[serde(default)]
    pub subject: String,
    /// Body.
    #[serde(default)]
    pub body: String,
    /// `meta.type` (default SEND).
    pub kind: Option<String>,
    /// Tags, category → values.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    /// Stamp difficulty (default: the `${difficulty}` variable, else 5).
    pub difficulty: Option<u32>,
    /// Shift the packet's and stamp's timestamp by this many seconds.
    #[serde(default)]
    pub timestamp_offset_secs: i64,
    /// Attachments: `{ name, type, text }` (sent base64-encoded).
    #[serde(default)]
    pub attachments: Vec<BTreeMap<String, String>>,
    /// Sign with the runner's generated key of `--account` N (register it with
    /// `${accountN_key_json}`).
    pub sign_as: Option<usize>,
    /// Text replacements applied to the built packet, `[from, to]` pairs (to break it on purpose).
    #[serde(default)]
    pub edit: Vec<[String; 2]>,
    /// Keep the packet text in this variable (e.g. to replay it).
    pub save_as: Option<String>,
    /// Send it as a SEND request now (default true).
    pub send: Option<bool>,
}

/// An HTTP request (http transport).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default)]
    pub body: String,
}

/// One step. Exactly one action: `send`, `send_raw`, `request`, `expect*` or `expect_closed`
/// (an http `request` step carries its own expectations).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Send this text (line transport: a `\n` is appended; smtp: CRLF).
    pub send: Option<String>,
    /// Send these bytes exactly (nothing appended).
    pub send_raw: Option<String>,
    /// Write `send`/`send_raw` in pieces of this many bytes, pausing briefly between them.
    pub chunk: Option<usize>,
    /// json transport: build an MMTP SEND packet and send it.
    pub send_packet: Option<PacketSpec>,
    /// Read the next reply and check it. Line: an anchored regex over the whole line. Json /
    /// http: a JSON value the reply must contain (objects match by subset, arrays and scalars
    /// exactly).
    pub expect: Option<toml::Value>,
    /// Read the next reply (or the http body) and match JSON pointers against regexes.
    pub matches: Option<BTreeMap<String, String>>,
    /// Save parts of the reply as variables: json/http `name = "/json/pointer"`, line
    /// `name = "regex with one (group)"`.
    pub capture: Option<BTreeMap<String, String>>,
    /// line transport: read as many lines as there are patterns and match them in any order
    /// (replies of concurrent pipelines interleave).
    pub expect_set: Option<Vec<String>>,
    /// line transport: read lines until one matches `expect` (multi-line replies of unknown
    /// length), failing after 10,000 lines.
    #[serde(default)]
    pub skip: bool,
    /// The server closes the connection next (no more reply lines).
    #[serde(default)]
    pub expect_closed: bool,
    /// Start TLS on this connection now (after an in-band upgrade such as IMMP's `UPGRADE`);
    /// the server's certificate is checked against `--ca`.
    #[serde(default)]
    pub starttls: bool,
    /// http: the request to send.
    pub request: Option<HttpRequest>,
    /// http: the expected status code.
    pub status: Option<u16>,
    /// http: response headers that must match these regexes (names lower-case).
    pub headers: Option<BTreeMap<String, String>>,
    /// http: a regex searched in the body text (for bodies that are not JSON).
    pub body: Option<String>,
    /// http: save response headers into variables (variable → lower-case header name).
    pub capture_headers: Option<BTreeMap<String, String>>,
    /// tmtp: the case's connection this step uses (0 unless given; opened on first use).
    pub conn: Option<usize>,
    /// tmtp: data sent after the header (`datalen` set to its length unless `send` has one).
    pub data: Option<String>,
    /// tmtp: a secondary JSON header sent in front of `data` (`datahead` set to its length).
    pub datahead: Option<String>,
    /// tmtp: no frame may arrive on the connection for this many milliseconds.
    pub quiet_ms: Option<u64>,
}

/// A suite's description (`suite.toml`): what the server under test must provide.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteInfo {
    /// Default transport of the suite.
    pub transport: Transport,
    /// One paragraph: accounts and settings the server under test needs.
    pub requires: String,
}

impl Transport {
    /// Whether replies are lines matched by regexes (`line`, `smtp`).
    pub fn lines(self) -> bool {
        matches!(self, Transport::Line | Transport::Smtp)
    }

    /// Whether `line` is one the server may send at any moment, not a reply to the step: an
    /// IMMP live push (`150`), which reaches every open session of the account — the cases
    /// share their accounts and run at once — before or after the reply to the command that
    /// caused it. The runner sets such a line aside until a step expects it.
    pub fn unsolicited(self, line: &str) -> bool {
        self == Transport::Line && line.starts_with("150 ")
    }
}
