//! Listing and counting a folder's entries on PostgreSQL: by id range, unseen (partial
//! indexes), and by tag (`entry_tags`, kept by the counting triggers), and the kept counts.

use crate::store::{AccountId, EntryQuery, MailboxEntry, StoreError, TagFilter};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

type Args = Vec<Box<dyn ToSql + Sync + Send>>;

/// `id IN (…)` for each restricting category of `tags`, with its parameters.
fn tag_conditions(account: AccountId, folder: &str, tags: &TagFilter, args: &mut Args) -> String {
    let mut sql = String::new();
    for (category, values) in tags.restricting() {
        let n = args.len();
        sql.push_str(&format!(
            " AND id IN (SELECT entry_id FROM entry_tags WHERE account_id = ${} \
             AND folder_key = lower(${}) AND category = ${} AND value = ANY(${}))",
            n + 1,
            n + 2,
            n + 3,
            n + 4
        ));
        args.push(Box::new(account));
        args.push(Box::new(folder.to_owned()));
        args.push(Box::new(category.clone()));
        args.push(Box::new(values.clone()));
    }
    sql
}

fn params(args: &Args) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect()
}

/// The entries `query` names, in its order.
pub(super) async fn list(
    c: &impl GenericClient,
    account: AccountId,
    folder: &str,
    query: &EntryQuery,
) -> Result<Vec<MailboxEntry>, StoreError> {
    let mut args: Args = Vec::new();
    let mut sql = format!(
        "SELECT {} FROM entries WHERE TRUE",
        super::mail::ENTRY_COLUMNS
    );
    if !query.tags.is_empty() && !query.include_deleted {
        sql.push_str(&tag_conditions(account, folder, &query.tags, &mut args));
    } else {
        sql.push_str(" AND account_id = $1 AND folder_key = lower($2)");
        args.push(Box::new(account));
        args.push(Box::new(folder.to_owned()));
        if !query.include_deleted {
            sql.push_str(" AND NOT deleted");
        }
    }
    match query.seen {
        Some(true) => sql.push_str(" AND seen"),
        Some(false) => sql.push_str(" AND NOT seen"),
        None => {}
    }
    if let Some(after) = query.after {
        args.push(Box::new(after));
        let op = if query.newest_first { "<" } else { ">" };
        sql.push_str(&format!(" AND id {op} ${}", args.len()));
    }
    let order = if query.newest_first { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY id {order}"));
    if let Some(limit) = query.limit {
        args.push(Box::new(i64::from(limit)));
        sql.push_str(&format!(" LIMIT ${}", args.len()));
    }
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query(&stmt, &params(&args))
        .await?
        .iter()
        .map(super::mail::entry)
        .collect())
}

/// How many live entries of the folder match `tags`.
pub(super) async fn count(
    c: &impl GenericClient,
    account: AccountId,
    folder: &str,
    tags: &TagFilter,
) -> Result<u64, StoreError> {
    let restricting: Vec<_> = tags.restricting().collect();
    let n: i64 = match restricting.as_slice() {
        [] => {
            let stmt = c
                .prepare_cached(
                    "SELECT total FROM folders WHERE account_id = $1 AND key = lower($2)",
                )
                .await?;
            c.query_opt(&stmt, &[&account, &folder])
                .await?
                .map_or(0, |r| r.get(0))
        }
        // One category and one value: the kept count. (Several values of one category may
        // meet in one message, so their counts do not add up: those go by the index.)
        [(category, values)] if values.len() == 1 => {
            let stmt = c
                .prepare_cached(
                    "SELECT n FROM folder_tags WHERE account_id = $1 AND folder_key = lower($2)
                     AND category = $3 AND value = $4",
                )
                .await?;
            c.query_opt(&stmt, &[&account, &folder, category, &values[0]])
                .await?
                .map_or(0, |r| r.get(0))
        }
        _ => {
            let mut args: Args = Vec::new();
            let sql = format!(
                "SELECT count(*) FROM entries WHERE TRUE{}",
                tag_conditions(account, folder, tags, &mut args)
            );
            let stmt = c.prepare_cached(&sql).await?;
            c.query_one(&stmt, &params(&args)).await?.get(0)
        }
    };
    Ok(n.max(0) as u64)
}
