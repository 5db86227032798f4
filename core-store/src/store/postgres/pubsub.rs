//! IMMP publish/subscribe on PostgreSQL: published nodes and their local and remote
//! subscribers.

use super::PgStore;
use crate::address::Address;
use crate::message::now_ms;
use crate::store::rows::parse_stored_address;
use crate::store::{AccountId, NodeInfo, PubSubStore, StoreError, Subscription};
use async_trait::async_trait;
use tokio_postgres::Row;

fn addresses(rows: &[Row]) -> Result<Vec<Address>, StoreError> {
    rows.iter()
        .map(|r| parse_stored_address(r.get(0)))
        .collect()
}

#[async_trait]
impl PubSubStore for PgStore {
    async fn create_node(
        &self,
        owner: AccountId,
        node: &Address,
        title: &str,
    ) -> Result<(), StoreError> {
        let node = node.account();
        let c = self.conn().await?;
        let n = c
            .execute(
                "INSERT INTO nodes (address_key, address, owner, title, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &node.account_key(),
                    &node.to_string(),
                    &owner,
                    &title,
                    &now_ms(),
                ],
            )
            .await?;
        if n == 0 {
            Err(StoreError::Exists(node.to_string()))
        } else {
            Ok(())
        }
    }

    async fn node(&self, node: &Address) -> Result<Option<NodeInfo>, StoreError> {
        let c = self.conn().await?;
        c.query_opt(
            "SELECT address, owner, title FROM nodes WHERE address_key = $1",
            &[&node.account_key()],
        )
        .await?
        .map(|r| {
            Ok(NodeInfo {
                address: parse_stored_address(r.get(0))?,
                owner: r.get(1),
                title: r.get(2),
            })
        })
        .transpose()
    }

    async fn subscribe(
        &self,
        account: AccountId,
        node: &Address,
        title: &str,
    ) -> Result<Subscription, StoreError> {
        let node = node.account();
        let key = node.account_key();
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO subscriptions (id, account_id, node, title, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &uuid::Uuid::now_v7().to_string(),
                &account,
                &key,
                &title,
                &now_ms(),
            ],
        )
        .await?;
        let r = c
            .query_one(
                "SELECT id, title FROM subscriptions WHERE account_id = $1 AND node = $2",
                &[&account, &key],
            )
            .await?;
        Ok(Subscription {
            id: r.get(0),
            node,
            title: r.get(1),
        })
    }

    async fn subscriptions(&self, account: AccountId) -> Result<Vec<Subscription>, StoreError> {
        let c = self.conn().await?;
        c.query(
            "SELECT id, node, title FROM subscriptions WHERE account_id = $1 ORDER BY created_at, id",
            &[&account],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Subscription {
                id: r.get(0),
                node: parse_stored_address(r.get(1))?,
                title: r.get(2),
            })
        })
        .collect()
    }

    async fn unsubscribe(&self, account: AccountId, id_or_node: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(c.execute(
            "DELETE FROM subscriptions WHERE account_id = $1 AND (id = $2 OR node = $3)",
            &[&account, &id_or_node, &id_or_node.to_ascii_lowercase()],
        )
        .await?
            > 0)
    }

    async fn subscribe_remote(
        &self,
        node: &Address,
        subscriber: &Address,
    ) -> Result<String, StoreError> {
        let (node, subscriber) = (node.account_key(), subscriber.account().to_string());
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO remote_subscriptions (id, node, subscriber, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[
                &uuid::Uuid::now_v7().to_string(),
                &node,
                &subscriber,
                &now_ms(),
            ],
        )
        .await?;
        Ok(c.query_one(
            "SELECT id FROM remote_subscriptions WHERE node = $1 AND subscriber = $2",
            &[&node, &subscriber],
        )
        .await?
        .get(0))
    }

    async fn remote_subscribers(&self, node: &Address) -> Result<Vec<Address>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT subscriber FROM remote_subscriptions WHERE node = $1
                 ORDER BY created_at, id",
                &[&node.account_key()],
            )
            .await?;
        addresses(&rows)
    }

    async fn subscribers(&self, node: &Address) -> Result<Vec<Address>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT a.address FROM subscriptions s JOIN accounts a ON a.id = s.account_id
                 WHERE s.node = $1 ORDER BY s.created_at, s.id",
                &[&node.account_key()],
            )
            .await?;
        addresses(&rows)
    }
}
