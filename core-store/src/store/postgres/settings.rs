//! Per-account settings, site secrets and live events on PostgreSQL. Events go out with
//! `NOTIFY` (delivered to every listening node when the notifying transaction commits) and
//! come back to each node through its listening connection.

use super::{PgStore, EVENTS_CHANNEL};
use crate::store::{AccountId, LiveEvent, LiveEvents, SettingsStore, StoreError};
use async_trait::async_trait;

/// `NOTIFY` payloads must stay under 8000 bytes: pushes to many accounts go out in chunks.
const ACCOUNTS_PER_EVENT: usize = 500;

#[async_trait]
impl SettingsStore for PgStore {
    async fn set_setting(
        &self,
        account: AccountId,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO account_settings (account_id, name, value) VALUES ($1, $2, $3)
             ON CONFLICT (account_id, name) DO UPDATE SET value = excluded.value",
            &[&account, &name, &value],
        )
        .await?;
        Ok(())
    }

    async fn setting(&self, account: AccountId, name: &str) -> Result<Option<String>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_opt(
            "SELECT value FROM account_settings WHERE account_id = $1 AND name = $2",
            &[&account, &name],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn site_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let c = self.conn().await?;
        // One statement: the insert loses to a concurrent one silently, and the select then
        // reads the winner's row (a fresh statement sees it committed).
        c.execute(
            "INSERT INTO site_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &candidate],
        )
        .await?;
        Ok(
            c.query_one("SELECT value FROM site_secrets WHERE name = $1", &[&name])
                .await?
                .get(0),
        )
    }
}

#[async_trait]
impl LiveEvents for PgStore {
    async fn publish_live(&self, event: LiveEvent) -> Result<(), StoreError> {
        let c = self.conn().await?;
        for accounts in event.accounts.chunks(ACCOUNTS_PER_EVENT) {
            let payload = serde_json::to_string(&LiveEvent {
                kind: event.kind.clone(),
                accounts: accounts.to_vec(),
            })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            c.execute("SELECT pg_notify($1, $2)", &[&EVENTS_CHANNEL, &payload])
                .await?;
        }
        Ok(())
    }

    fn subscribe_live(&self) -> tokio::sync::broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }
}
