//! Listing and counting a folder's entries by index: by id range, unseen, and by tag (the
//! `entry_tags` rows the triggers of migration 7 keep for every live entry), and the counts the
//! triggers keep (`folders.total`/`unseen`, `folder_tags`).

use super::{entry_from_row, EntryRow, ENTRY_COLUMNS};
use crate::store::{AccountId, EntryQuery, StoreError, TagCount, TagFilter};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

/// `id IN (…)` for each restricting category of `tags`, with its parameters.
fn tag_conditions(
    account: AccountId,
    folder: &str,
    tags: &TagFilter,
    args: &mut Vec<Value>,
) -> String {
    let mut sql = String::new();
    for (category, values) in tags.restricting() {
        let marks = vec!["?"; values.len()].join(", ");
        sql.push_str(&format!(
            " AND id IN (SELECT entry_id FROM entry_tags WHERE account_id = ? AND folder = ? \
             AND category = ? AND value IN ({marks}))"
        ));
        args.push(Value::Integer(account));
        args.push(Value::Text(folder.to_owned()));
        args.push(Value::Text(category.clone()));
        args.extend(values.iter().cloned().map(Value::Text));
    }
    sql
}

/// The entries `query` names, in its order.
pub(super) fn list(
    c: &Connection,
    account: AccountId,
    folder: &str,
    query: &EntryQuery,
) -> Result<Vec<EntryRow>, StoreError> {
    let mut args = Vec::new();
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM entries");
    if !query.tags.is_empty() && !query.include_deleted {
        // Driven by the tag index (live entries of this folder only), in entry id order.
        sql.push_str(" WHERE 1");
        sql.push_str(&tag_conditions(account, folder, &query.tags, &mut args));
    } else {
        match (query.seen, query.include_deleted) {
            (Some(false), false) => sql.push_str(" INDEXED BY entries_unseen"),
            (Some(true), false) => sql.push_str(" INDEXED BY entries_seen"),
            _ => {}
        }
        sql.push_str(" WHERE account_id = ? AND folder = ?");
        args.push(Value::Integer(account));
        args.push(Value::Text(folder.to_owned()));
        if !query.include_deleted {
            sql.push_str(" AND deleted = 0");
        }
    }
    match query.seen {
        Some(true) => sql.push_str(" AND seen = 1"),
        Some(false) => sql.push_str(" AND seen = 0"),
        None => {}
    }
    let order = if query.newest_first { "DESC" } else { "ASC" };
    if let Some(after) = query.after {
        sql.push_str(if query.newest_first {
            " AND id < ?"
        } else {
            " AND id > ?"
        });
        args.push(Value::Integer(after));
    }
    sql.push_str(&format!(" ORDER BY id {order} LIMIT ?"));
    args.push(Value::Integer(query.limit.map_or(-1, i64::from)));
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(args), entry_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// How many live entries of the folder match `tags`.
pub(super) fn count(
    c: &Connection,
    account: AccountId,
    folder: &str,
    tags: &TagFilter,
) -> Result<u64, StoreError> {
    let restricting: Vec<_> = tags.restricting().collect();
    let n: i64 = if restricting.is_empty() {
        c.prepare_cached("SELECT total FROM folders WHERE account_id = ?1 AND name = ?2")?
            .query_row(params![account, folder], |r| r.get(0))
            .optional()?
            .unwrap_or(0)
    } else if let [(category, values)] = restricting.as_slice() {
        // One category and one value: the kept count. (Several values of one category may
        // meet in one message, so their counts do not add up: those go by the index.)
        match values.as_slice() {
            [value] => c
                .prepare_cached(
                    "SELECT n FROM folder_tags
                     WHERE account_id = ?1 AND folder = ?2 AND category = ?3 AND value = ?4",
                )?
                .query_row(params![account, folder, category, value], |r| r.get(0))
                .optional()?
                .unwrap_or(0),
            _ => count_by_index(c, account, folder, tags)?,
        }
    } else {
        count_by_index(c, account, folder, tags)?
    };
    Ok(n.max(0) as u64)
}

/// Count the entries the tag index names for every restricting category.
fn count_by_index(
    c: &Connection,
    account: AccountId,
    folder: &str,
    tags: &TagFilter,
) -> Result<i64, StoreError> {
    let mut args = Vec::new();
    let sql = format!(
        "SELECT COUNT(*) FROM entries WHERE 1{}",
        tag_conditions(account, folder, tags, &mut args)
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(params_from_iter(args), |r| r.get(0))?)
}

/// The tag values of the folder's live entries, with their counts.
pub(super) fn tag_counts(
    c: &Connection,
    account: AccountId,
    folder: &str,
) -> Result<Vec<TagCount>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT category, value, n FROM folder_tags
         WHERE account_id = ?1 AND folder = ?2 AND n > 0",
    )?;
    let rows = stmt
        .query_map(params![account, folder], |r| {
            Ok(TagCount {
                category: r.get(0)?,
                value: r.get(1)?,
                count: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
