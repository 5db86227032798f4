//! Where a store is, as one URL: `sqlite:PATH` or `postgres://…` — what `[store] url` and
//! `mailgate store migrate --from/--to` take.

use super::{PgOptions, PgStore, SqliteOptions, SqliteStore, Store, StoreError};
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (the whole URL, `sslmode` and all).
    Postgres(String),
}

impl std::str::FromStr for StoreLocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path (sqlite:/var/lib/mailgate/mailgate.db)".into(),
                );
            }
            Ok(StoreLocation::Sqlite(PathBuf::from(path)))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreLocation::Postgres(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is no store URL: use sqlite:PATH or postgres://user@host/database"
            ))
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            // Never print a password.
            StoreLocation::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    write!(f, "{u}")
                }
                Err(_) => f.write_str("postgres://…"),
            },
        }
    }
}

impl StoreLocation {
    /// Open (creating and migrating) the store; `pool_size` is PostgreSQL's connections.
    pub async fn open(
        &self,
        metrics: Arc<Metrics>,
        pool_size: usize,
    ) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreLocation::Sqlite(path) => {
                let opts = SqliteOptions::new(path);
                // Opening runs the migrations: file work, off the async threads.
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(opts, metrics))
                    .await
                    .map_err(|_| StoreError::Closed)??;
                Arc::new(store)
            }
            StoreLocation::Postgres(url) => {
                let mut opts = PgOptions::new(url.clone());
                opts.pool_size = pool_size;
                Arc::new(PgStore::open(opts, metrics).await?)
            }
        })
    }
}
