//! IMMP listener settings (`[immp]` in mailgate.toml).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `[immp]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImmpConfig {
    /// Run the IMMP front-end.
    pub enabled: bool,
    /// TCP listener (TLS is negotiated in-band with `UPGRADE`).
    pub listen: SocketAddr,
    /// Where other domains' IMMP servers are (`[[immp.routes]]`).
    pub routes: Vec<crate::federation::ImmpRoute>,
    /// Most entries one `MBOX INDEX` reply lists; the rest come page by page (`#<id>`).
    pub index_page: u32,
}

/// Default of `immp.index_page`: a page of summaries is ≈ 5 µs each to list, so 250 keep a
/// reply under 2.5 ms (p99) whatever the mailbox holds.
pub const DEFAULT_INDEX_PAGE: u32 = 250;

impl Default for ImmpConfig {
    fn default() -> Self {
        ImmpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1025)),
            routes: Vec::new(),
            index_page: DEFAULT_INDEX_PAGE,
        }
    }
}
