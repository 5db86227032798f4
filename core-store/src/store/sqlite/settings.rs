//! Per-account settings on SQLite (`account_settings`, migration 8).

use super::SqliteStore;
use crate::store::{AccountId, SettingsStore, StoreError};
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
}
