//! The TMTP tables on PostgreSQL.

use super::PgStore;
use crate::message::{now_ms, MessageId};
use crate::store::rows::parse_stored_address;
use crate::store::tmtp::{
    GroupMember, GroupStatus, NodeId, TmtpMember, TmtpPayload, TmtpPriority, TmtpQueued, TmtpStore,
};
use crate::store::{AccountId, StoreError};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

async fn find_member(
    c: &impl GenericClient,
    clause: &str,
    arg: &(dyn ToSql + Sync),
) -> Result<Option<TmtpMember>, StoreError> {
    let sql = format!(
        "SELECT m.account_id, a.address, m.uid FROM tmtp_members m
         JOIN accounts a ON a.id = m.account_id WHERE {clause}"
    );
    let stmt = c.prepare_cached(&sql).await?;
    c.query_opt(&stmt, &[arg])
        .await?
        .map(|r| {
            Ok(TmtpMember {
                account: r.get(0),
                address: parse_stored_address(r.get(1))?,
                uid: r.get(2),
            })
        })
        .transpose()
}

#[async_trait]
impl TmtpStore for PgStore {
    async fn tmtp_add_member(
        &self,
        account: AccountId,
        uid: &str,
    ) -> Result<TmtpMember, StoreError> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO tmtp_members (account_id, uid, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (account_id) DO NOTHING",
            &[&account, &uid, &now_ms()],
        )
        .await?;
        find_member(&c, "m.account_id = $1", &account)
            .await?
            .ok_or_else(|| StoreError::NoAccount(account.to_string()))
    }

    async fn tmtp_member_by_uid(&self, uid: &str) -> Result<Option<TmtpMember>, StoreError> {
        let c = self.conn().await?;
        find_member(&c, "m.uid = $1", &uid).await
    }

    async fn tmtp_member_by_account(
        &self,
        account: AccountId,
    ) -> Result<Option<TmtpMember>, StoreError> {
        let c = self.conn().await?;
        find_member(&c, "m.account_id = $1", &account).await
    }

    async fn tmtp_add_node(
        &self,
        account: AccountId,
        label: &str,
        secret_hash: &[u8],
        copy_from: Option<NodeId>,
    ) -> Result<NodeId, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let node: NodeId = tx
            .query_one(
                "INSERT INTO tmtp_nodes (account_id, label, secret_hash, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&account, &label, &secret_hash, &now_ms()],
            )
            .await?
            .get(0);
        if let Some(from) = copy_from {
            tx.execute(
                "INSERT INTO tmtp_queue (node_id, priority, tmtp_id, message_id, frame)
                 SELECT $1, priority, tmtp_id, message_id, frame FROM tmtp_queue
                 WHERE node_id = $2 ORDER BY seq",
                &[&node, &from],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(node)
    }

    async fn tmtp_verify_node(
        &self,
        uid: &str,
        secret_hash: &[u8],
    ) -> Result<Option<(TmtpMember, NodeId)>, StoreError> {
        let c = self.conn().await?;
        let Some(r) = c
            .query_opt(
                "SELECT m.account_id, a.address, m.uid, n.id FROM tmtp_nodes n
                 JOIN tmtp_members m ON m.account_id = n.account_id
                 JOIN accounts a ON a.id = m.account_id
                 WHERE n.secret_hash = $1 AND m.uid = $2",
                &[&secret_hash, &uid],
            )
            .await?
        else {
            return Ok(None);
        };
        let member = TmtpMember {
            account: r.get(0),
            address: parse_stored_address(r.get(1))?,
            uid: r.get(2),
        };
        Ok(Some((member, r.get(3))))
    }

    async fn tmtp_nodes(&self, account: AccountId) -> Result<Vec<NodeId>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query(
            "SELECT id FROM tmtp_nodes WHERE account_id = $1 ORDER BY id",
            &[&account],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn tmtp_add_alias(&self, account: AccountId, alias: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let inserted = c
            .execute(
                "INSERT INTO tmtp_aliases (alias, account_id)
                 SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM tmtp_groups WHERE gid = $1)
                 ON CONFLICT (alias) DO NOTHING",
                &[&alias, &account],
            )
            .await?;
        if inserted > 0 {
            return Ok(true);
        }
        let owner: Option<AccountId> = c
            .query_opt(
                "SELECT account_id FROM tmtp_aliases WHERE alias = $1",
                &[&alias],
            )
            .await?
            .map(|r| r.get(0));
        Ok(owner == Some(account))
    }

    async fn tmtp_alias(&self, alias: &str) -> Result<Option<AccountId>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_opt(
            "SELECT account_id FROM tmtp_aliases WHERE alias = $1",
            &[&alias],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn tmtp_group(&self, gid: &str) -> Result<Vec<GroupMember>, StoreError> {
        let c = self.conn().await?;
        c.query(
            "SELECT account_id, alias, status FROM tmtp_groups WHERE gid = $1
             ORDER BY account_id",
            &[&gid],
        )
        .await?
        .iter()
        .map(|r| {
            let status = i64::from(r.get::<_, i16>(2));
            Ok(GroupMember {
                account: r.get(0),
                alias: r.get(1),
                status: GroupStatus::from_i64(status)
                    .ok_or_else(|| StoreError::Corrupt(format!("group status {status}")))?,
            })
        })
        .collect()
    }

    async fn tmtp_set_group_member(&self, gid: &str, m: &GroupMember) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let status = m.status as i16;
        let n = c
            .execute(
                "INSERT INTO tmtp_groups (gid, account_id, alias, status)
                 SELECT $1, $2, $3, $4
                 WHERE NOT EXISTS (SELECT 1 FROM tmtp_aliases WHERE alias = $1)
                 ON CONFLICT (gid, account_id)
                 DO UPDATE SET alias = excluded.alias, status = excluded.status",
                &[&gid, &m.account, &m.alias, &status],
            )
            .await?;
        Ok(n > 0)
    }

    async fn tmtp_set_ohi(
        &self,
        account: AccountId,
        target: AccountId,
        on: bool,
    ) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let sql = if on {
            "INSERT INTO tmtp_ohi (account_id, target_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM tmtp_ohi WHERE account_id = $1 AND target_id = $2"
        };
        Ok(c.execute(sql, &[&account, &target]).await? > 0)
    }

    async fn tmtp_ohi_targets(&self, account: AccountId) -> Result<Vec<AccountId>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query(
            "SELECT target_id FROM tmtp_ohi WHERE account_id = $1 ORDER BY target_id",
            &[&account],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn tmtp_ohi_sources(&self, account: AccountId) -> Result<Vec<AccountId>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query(
            "SELECT account_id FROM tmtp_ohi WHERE target_id = $1 ORDER BY account_id",
            &[&account],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn tmtp_enqueue(
        &self,
        nodes: &[NodeId],
        priority: TmtpPriority,
        tmtp_id: &str,
        payload: &TmtpPayload,
    ) -> Result<(), StoreError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let (message, frame) = match payload {
            TmtpPayload::Frame(f) => (None, Some(&f[..])),
            TmtpPayload::Message(m) => (Some(m.0), None),
        };
        let priority = priority as i16;
        let c = self.conn().await?;
        // One statement for every node: one commit.
        c.execute(
            "INSERT INTO tmtp_queue (node_id, priority, tmtp_id, message_id, frame)
             SELECT n, $2, $3, $4, $5 FROM unnest($1::BIGINT[]) WITH ORDINALITY AS t(n, i)
             ORDER BY i",
            &[&nodes, &priority, &tmtp_id, &message, &frame],
        )
        .await?;
        Ok(())
    }

    async fn tmtp_next(&self, node: NodeId) -> Result<Option<TmtpQueued>, StoreError> {
        let c = self.conn().await?;
        let Some(r) = c
            .query_opt(
                "SELECT seq, tmtp_id, message_id, frame FROM tmtp_queue WHERE node_id = $1
                 ORDER BY priority, seq LIMIT 1",
                &[&node],
            )
            .await?
        else {
            return Ok(None);
        };
        let seq: i64 = r.get(0);
        let message: Option<uuid::Uuid> = r.get(2);
        let frame: Option<Vec<u8>> = r.get(3);
        let payload = match (message, frame) {
            (Some(m), _) => TmtpPayload::Message(MessageId(m)),
            (None, Some(f)) => TmtpPayload::Frame(f.into()),
            (None, None) => {
                return Err(StoreError::Corrupt(format!("empty TMTP queue entry {seq}")))
            }
        };
        Ok(Some(TmtpQueued {
            seq,
            tmtp_id: r.get(1),
            payload,
        }))
    }

    async fn tmtp_ack(&self, node: NodeId, seq: i64) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(c.execute(
            "DELETE FROM tmtp_queue WHERE node_id = $1 AND seq = $2",
            &[&node, &seq],
        )
        .await?
            > 0)
    }
}
