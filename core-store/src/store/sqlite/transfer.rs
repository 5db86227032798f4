//! SQLite's side of `mailgate store migrate` (see `store/transfer.rs`): rows read in one read
//! transaction, written in one write transaction, values mapped to and from [`Cell`]s.

use super::open_conn;
use crate::store::transfer::{
    bad_value, count_queries, reader_gone, require_empty, writer_gone, Cell, Counts, Item, Kind,
    Table, TABLES,
};
use crate::store::StoreError;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ToSql};
use std::path::Path;
use tokio::sync::mpsc;

/// Send every row of every table, in one snapshot; returns the snapshot's counts.
pub(in crate::store) fn read(path: &Path, tx: mpsc::Sender<Item>) -> Result<Counts, StoreError> {
    let mut conn = open_conn(path, true, true)?;
    // One read transaction: the rows and the counts are of one moment.
    let snapshot = conn.transaction()?;
    for table in TABLES {
        let mut stmt = snapshot.prepare(&format!(
            "SELECT {} FROM {}",
            table.column_list(),
            table.name
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let cells = (0..table.columns.len())
                .map(|i| cell(table, i, row.get_ref(i)?))
                .collect::<Result<Vec<_>, StoreError>>()?;
            tx.blocking_send(Item::Row(cells))
                .map_err(|_| writer_gone())?;
        }
        tx.blocking_send(Item::EndOfTable)
            .map_err(|_| writer_gone())?;
    }
    counts(&snapshot)
}

/// Write what the reader sends into the empty store at `path`, in one transaction.
pub(in crate::store) fn write(path: &Path, mut rx: mpsc::Receiver<Item>) -> Result<(), StoreError> {
    let mut conn = open_conn(path, false, true)?;
    let tx = conn.transaction()?;
    require_empty(&counts(&tx)?)?;
    for table in TABLES {
        let placeholders = (1..=table.columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut insert = tx.prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            table.name,
            table.column_list()
        ))?;
        while let Item::Row(cells) = rx.blocking_recv().ok_or_else(reader_gone)? {
            insert.execute(params_from_iter(cells.iter()))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Rows per table, then the derived counts.
pub(in crate::store) fn count(path: &Path) -> Result<Counts, StoreError> {
    counts(&open_conn(path, true, true)?)
}

fn counts(conn: &Connection) -> Result<Counts, StoreError> {
    count_queries()
        .map(|sql| {
            let n: i64 = conn.query_row(&sql, [], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .collect()
}

/// A stored value as a cell of the column's kind.
fn cell(table: &Table, i: usize, value: ValueRef<'_>) -> Result<Cell, StoreError> {
    let (column, kind) = table.columns[i];
    let bad = |what: &str| bad_value(table.name, column, what);
    Ok(match (kind, value) {
        (_, ValueRef::Null) => Cell::Null,
        (Kind::Int, ValueRef::Integer(n)) => Cell::Int(n),
        (Kind::Bool, ValueRef::Integer(n)) => Cell::Bool(n != 0),
        (Kind::Text | Kind::Json, ValueRef::Text(t)) => Cell::Text(
            std::str::from_utf8(t)
                .map_err(|_| bad("text that is not UTF-8"))?
                .to_owned(),
        ),
        (Kind::Bytes, ValueRef::Blob(b) | ValueRef::Text(b)) => Cell::Bytes(b.to_vec()),
        (Kind::Uuid, ValueRef::Blob(b)) => Cell::Uuid(
            uuid::Uuid::from_slice(b).map_err(|_| bad("a message id that is not 16 bytes"))?,
        ),
        _ => return Err(bad("a value of another type than the column's")),
    })
}

impl ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Cell::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Cell::Int(n) => ToSqlOutput::from(*n),
            Cell::Bool(b) => ToSqlOutput::from(i64::from(*b)),
            Cell::Text(t) => ToSqlOutput::from(t.as_str()),
            Cell::Bytes(b) => ToSqlOutput::from(b.as_slice()),
            Cell::Uuid(u) => ToSqlOutput::from(&u.as_bytes()[..]),
        })
    }
}
