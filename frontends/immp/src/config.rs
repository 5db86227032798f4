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

/// Default of `immp.index_page`.
pub const DEFAULT_INDEX_PAGE: u32 = 1000;

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
