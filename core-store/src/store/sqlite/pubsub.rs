//! IMMP publish/subscribe on SQLite: published nodes and their local and remote subscribers.

use super::*;

#[async_trait]
impl PubSubStore for SqliteStore {
    async fn create_node(
        &self,
        owner: AccountId,
        node: &Address,
        title: &str,
    ) -> Result<(), StoreError> {
        let (node, title) = (node.account(), title.to_owned());
        self.writer
            .write(move |c| {
                let n = c.execute(
                    "INSERT OR IGNORE INTO nodes (address_key, address, owner, title, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![node.account_key(), node.to_string(), owner, title, now_ms()],
                )?;
                if n == 0 {
                    Err(StoreError::Exists(node.to_string()))
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn node(&self, node: &Address) -> Result<Option<NodeInfo>, StoreError> {
        let key = node.account_key();
        self.read(move |c| {
            let row: Option<(String, i64, String)> = c
                .prepare_cached("SELECT address, owner, title FROM nodes WHERE address_key = ?1")?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            row.map(|(a, owner, title)| {
                Ok(NodeInfo {
                    address: parse_stored_address(&a)?,
                    owner,
                    title,
                })
            })
            .transpose()
        })
        .await
    }

    async fn subscribe(
        &self,
        account: AccountId,
        node: &Address,
        title: &str,
    ) -> Result<Subscription, StoreError> {
        let (node, title) = (node.account(), title.to_owned());
        self.writer
            .write(move |c| {
                let key = node.account_key();
                let id = uuid::Uuid::now_v7().to_string();
                c.execute(
                    "INSERT OR IGNORE INTO subscriptions (id, account_id, node, title, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, account, key, title, now_ms()],
                )?;
                let (id, title): (String, String) = c.query_row(
                    "SELECT id, title FROM subscriptions WHERE account_id = ?1 AND node = ?2",
                    params![account, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok(Subscription { id, node, title })
            })
            .await
    }

    async fn subscriptions(&self, account: AccountId) -> Result<Vec<Subscription>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, node, title FROM subscriptions WHERE account_id = ?1 ORDER BY created_at",
            )?;
            let rows = stmt
                .query_map(params![account], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, node, title)| {
                    Ok(Subscription {
                        id,
                        node: parse_stored_address(&node)?,
                        title,
                    })
                })
                .collect()
        })
        .await
    }

    async fn unsubscribe(&self, account: AccountId, id_or_node: &str) -> Result<bool, StoreError> {
        let key = id_or_node.to_ascii_lowercase();
        let id = id_or_node.to_owned();
        self.writer
            .write(move |c| {
                let n = c.execute(
                    "DELETE FROM subscriptions WHERE account_id = ?1 AND (id = ?2 OR node = ?3)",
                    params![account, id, key],
                )?;
                Ok(n > 0)
            })
            .await
    }

    async fn subscribe_remote(
        &self,
        node: &Address,
        subscriber: &Address,
    ) -> Result<String, StoreError> {
        let (node, subscriber) = (node.account_key(), subscriber.account().to_string());
        self.writer
            .write(move |c| {
                let id = uuid::Uuid::now_v7().to_string();
                c.execute(
                    "INSERT OR IGNORE INTO remote_subscriptions (id, node, subscriber, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![id, node, subscriber, now_ms()],
                )?;
                Ok(c.query_row(
                    "SELECT id FROM remote_subscriptions WHERE node = ?1 AND subscriber = ?2",
                    params![node, subscriber],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    async fn remote_subscribers(&self, node: &Address) -> Result<Vec<Address>, StoreError> {
        let key = node.account_key();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT subscriber FROM remote_subscriptions WHERE node = ?1 ORDER BY created_at",
            )?;
            let rows = stmt
                .query_map(params![key], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter().map(|a| parse_stored_address(a)).collect()
        })
        .await
    }

    async fn subscribers(&self, node: &Address) -> Result<Vec<Address>, StoreError> {
        let key = node.account_key();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT a.address FROM subscriptions s JOIN accounts a ON a.id = s.account_id
                 WHERE s.node = ?1 ORDER BY s.created_at",
            )?;
            let rows = stmt
                .query_map(params![key], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter().map(|a| parse_stored_address(a)).collect()
        })
        .await
    }
}
