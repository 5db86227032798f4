//! PostgreSQL back-end: a pool of connections (deadpool-postgres over tokio-postgres), each
//! write one transaction committed with `synchronous_commit = on`, leases on the relay queue
//! taken with `FOR UPDATE SKIP LOCKED`, live events over `LISTEN`/`NOTIFY`.
//!
//! Several `mailgate serve` processes may share one database: everything that must hold
//! across them (spent stamps, tokens, leases, site secrets) is a row, changed atomically.

mod connect;
mod hosted;
mod listing;
mod mail;
mod messages;
mod pubsub;
mod schema;
mod settings;
mod tmtp;
pub(super) mod transfer;

pub use connect::{PgOptions, SslMode};

use crate::metrics::Metrics;
use crate::store::{BackendErrorKind, LiveEvent, StoreError, LIVE_EVENT_BACKLOG};
use deadpool_postgres::{Object, Pool};
use std::sync::Arc;
use tokio::sync::broadcast;

/// The notification channel live events travel on.
const EVENTS_CHANNEL: &str = "mailgate_events";

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    live: broadcast::Sender<LiveEvent>,
    listener: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore(..)")
    }
}

impl PgStore {
    /// Connect, migrate (under an advisory lock, so nodes starting at once take turns) and
    /// start listening for live events.
    pub async fn open(opts: PgOptions, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let target = connect::Target::new(&opts)?;
        let mut client = target.connect_once().await?;
        schema::migrate(&mut client).await?;
        drop(client);
        let pool = target.pool(opts.pool_size)?;
        let live = broadcast::channel(LIVE_EVENT_BACKLOG).0;
        let listener = tokio::spawn(connect::listen(target, EVENTS_CHANNEL, live.clone()));
        Ok(PgStore {
            pool,
            live,
            listener,
            metrics,
        })
    }

    /// Whether this node's connections to the database are encrypted (TLS).
    pub async fn connection_is_encrypted(&self) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await?
        .get(0))
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            other => StoreError::Backend {
                kind: BackendErrorKind::Other,
                message: other.to_string(),
            },
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let kind = match e.code().map(|c| c.code()) {
            // Insufficient resources (disk full, out of memory), system errors, a read-only
            // or corrupt database: nothing can be written until the operator acts.
            Some(code)
                if code.starts_with("53")
                    || code.starts_with("58")
                    || code.starts_with("XX")
                    || code == "25006" =>
            {
                BackendErrorKind::Storage
            }
            Some(code) if code.starts_with("23") => BackendErrorKind::Constraint,
            Some("40001" | "40P01") => BackendErrorKind::Conflict,
            _ => BackendErrorKind::Other,
        };
        // The server's own message says more than the client's summary.
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => e.to_string(),
        };
        StoreError::Backend { kind, message }
    }
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::from(e)
}
