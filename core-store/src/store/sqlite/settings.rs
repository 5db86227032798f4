//! Per-account settings (`account_settings`, migration 8) and site secrets (migration 9) on
//! SQLite, and its live events (in-process: one process holds the database).

use super::SqliteStore;
use crate::store::{AccountId, LiveEvent, LiveEvents, SettingsStore, StoreError};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl SettingsStore for SqliteStore {
    async fn set_setting(
        &self,
        account: AccountId,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let (name, value) = (name.to_owned(), value.to_owned());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO account_settings (account_id, name, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account_id, name) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![account, name, value])?;
                Ok(())
            })
            .await
    }

    async fn setting(&self, account: AccountId, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT value FROM account_settings WHERE account_id = ?1 AND name = ?2",
            )?
            .query_row(params![account, name], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    async fn site_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, candidate) = (name.to_owned(), candidate.to_vec());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO site_secrets (name, value) VALUES (?1, ?2)",
                )?
                .execute(params![name, candidate])?;
                Ok(
                    c.prepare_cached("SELECT value FROM site_secrets WHERE name = ?1")?
                        .query_row(params![name], |r| r.get(0))?,
                )
            })
            .await
    }
}

#[async_trait]
impl LiveEvents for SqliteStore {
    async fn publish_live(&self, event: LiveEvent) -> Result<(), StoreError> {
        // One process holds the database: its own subscribers are all there are.
        let _ = self.live.send(event);
        Ok(())
    }

    fn subscribe_live(&self) -> tokio::sync::broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }
}
