//! PostgreSQL's side of `mailgate store migrate` (see `store/transfer.rs`): rows read through
//! a cursor in one repeatable-read snapshot, written with binary `COPY` in one transaction
//! (the triggers still run for every row, so folder totals and tags are the destination's own).

use super::connect::Target;
use super::PgOptions;
use crate::store::transfer::{
    bad_value, count_queries, reader_gone, require_empty, writer_gone, Cell, Counts, Item, Kind,
    Table, TABLES,
};
use crate::store::StoreError;
use bytes::{BufMut, BytesMut};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{GenericClient, IsolationLevel, Row};

/// Rows fetched from the cursor at a time.
const FETCH: i32 = 256;

/// Tables whose ids come from a sequence: after rows arrive with their ids, the sequence
/// must continue above them.
const SEQUENCES: &[(&str, &str)] = &[
    ("accounts", "id"),
    ("entries", "id"),
    ("queue", "id"),
    ("notifications", "id"),
    ("tmtp_nodes", "id"),
    ("tmtp_queue", "seq"),
];

async fn connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    Target::new(&PgOptions::new(url))?.connect_once().await
}

/// Send every row of every table, in one snapshot; returns the snapshot's counts.
pub(in crate::store) async fn read(
    url: &str,
    tx: mpsc::Sender<Item>,
) -> Result<Counts, StoreError> {
    let mut client = connect(url).await?;
    let snapshot = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    for table in TABLES {
        let stmt = snapshot
            .prepare(&format!(
                "SELECT {} FROM {}",
                select_list(table),
                table.name
            ))
            .await?;
        let portal = snapshot.bind(&stmt, &[]).await?;
        loop {
            let rows = snapshot.query_portal(&portal, FETCH).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                tx.send(Item::Row(cells(table, row)?))
                    .await
                    .map_err(|_| writer_gone())?;
            }
        }
        tx.send(Item::EndOfTable).await.map_err(|_| writer_gone())?;
    }
    let counts = counts(&snapshot).await?;
    snapshot.commit().await?;
    Ok(counts)
}

/// Write what the reader sends into the empty database at `url`, in one transaction.
pub(in crate::store) async fn write(
    url: &str,
    mut rx: mpsc::Receiver<Item>,
) -> Result<(), StoreError> {
    let mut client = connect(url).await?;
    let tx = client.transaction().await?;
    require_empty(&counts(&tx).await?)?;
    for table in TABLES {
        let columns = table.column_list();
        let probe = tx
            .prepare(&format!("SELECT {columns} FROM {} LIMIT 0", table.name))
            .await?;
        let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
        let sink = tx
            .copy_in(&format!(
                "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
                table.name
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures_util::pin_mut!(writer);
        while let Item::Row(cells) = rx.recv().await.ok_or_else(reader_gone)? {
            let values: Vec<&(dyn ToSql + Sync)> =
                cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            writer.as_mut().write(&values).await?;
        }
        writer.finish().await?;
    }
    for (table, column) in SEQUENCES {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
                 COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows per table, then the derived counts.
pub(in crate::store) async fn count(url: &str) -> Result<Counts, StoreError> {
    counts(&connect(url).await?).await
}

async fn counts(client: &impl GenericClient) -> Result<Counts, StoreError> {
    let mut counts = Vec::new();
    for sql in count_queries() {
        let n: i64 = client.query_one(&sql, &[]).await?.get(0);
        counts.push(n.max(0) as u64);
    }
    Ok(counts)
}

/// The select list: whole numbers widened to `BIGINT`, JSON as its text.
fn select_list(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|(c, kind)| match kind {
            Kind::Int => format!("{c}::BIGINT"),
            Kind::Json => format!("{c}::TEXT"),
            _ => (*c).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cells(table: &Table, row: &Row) -> Result<Vec<Cell>, StoreError> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (column, kind))| {
            let bad = |e: tokio_postgres::Error| bad_value(table.name, column, e);
            Ok(match kind {
                Kind::Int => row
                    .try_get::<_, Option<i64>>(i)
                    .map_err(bad)?
                    .map(Cell::Int),
                Kind::Bool => row
                    .try_get::<_, Option<bool>>(i)
                    .map_err(bad)?
                    .map(Cell::Bool),
                Kind::Text | Kind::Json => row
                    .try_get::<_, Option<String>>(i)
                    .map_err(bad)?
                    .map(Cell::Text),
                Kind::Bytes => row
                    .try_get::<_, Option<Vec<u8>>>(i)
                    .map_err(bad)?
                    .map(Cell::Bytes),
                Kind::Uuid => row
                    .try_get::<_, Option<uuid::Uuid>>(i)
                    .map_err(bad)?
                    .map(Cell::Uuid),
            }
            .unwrap_or(Cell::Null))
        })
        .collect()
}

impl ToSql for Cell {
    /// A cell as the destination column's type: whole numbers narrowed (refused when they do
    /// not fit), JSON text sent as `JSONB` (version 1, then the text).
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Int(n) => match *ty {
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                _ => n.to_sql(ty, out),
            },
            Cell::Bool(b) => b.to_sql(ty, out),
            Cell::Text(t) if *ty == Type::JSONB => {
                out.put_u8(1);
                out.put_slice(t.as_bytes());
                Ok(IsNull::No)
            }
            Cell::Text(t) => t.as_str().to_sql(ty, out),
            Cell::Bytes(b) => b.as_slice().to_sql(ty, out),
            Cell::Uuid(u) => u.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
