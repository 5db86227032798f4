//! The single writer thread: group commit.
//!
//! Every write is a job sent over a bounded channel to one thread that owns the write
//! connection. The thread takes the first waiting job, then every job already queued behind it
//! (up to a batch limit), runs them all inside one transaction — each under its own savepoint,
//! so one failing job does not undo the others — and commits once. Only after the commit (and
//! its fsync) returns does any job's caller get its answer. N concurrent submits therefore cost
//! about one fsync, not N.

use crate::metrics::Metrics;
use crate::store::StoreError;
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Largest number of jobs folded into one transaction.
const MAX_BATCH: usize = 1024;
/// Bytes of one WAL frame: a 4 KiB page and its header.
const PAGE_FRAME: u64 = 4096 + 24;
/// How often the checkpoint thread copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// What a job hands back after running: called with the commit's result.
type Completion = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// A write job: runs inside the batch transaction.
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;

enum Cmd {
    Job(Job),
    Stop(oneshot::Sender<()>),
}

/// Whether the last write reached the disk: a failed commit or a job that failed for lack of
/// room or an I/O error marks the store unhealthy until a later write succeeds.
#[derive(Default)]
pub(crate) struct WriteHealth {
    failure: std::sync::Mutex<Option<String>>,
    last_ok: std::sync::Mutex<Option<Instant>>,
}

impl WriteHealth {
    fn record(&self, result: Result<(), String>, metrics: &Metrics) {
        match result {
            Ok(()) => {
                if let Ok(mut f) = self.failure.lock() {
                    *f = None;
                }
                if let Ok(mut t) = self.last_ok.lock() {
                    *t = Some(Instant::now());
                }
            }
            Err(reason) => {
                metrics.store_write_failed();
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(reason);
                }
            }
        }
    }

    /// The reason of the last failed write, unless a write succeeded since.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// When a write last succeeded.
    pub(crate) fn last_ok(&self) -> Option<Instant> {
        self.last_ok.lock().ok().and_then(|t| *t)
    }
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    cmds: mpsc::Sender<Cmd>,
    pub(crate) health: Arc<WriteHealth>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Start the writer thread that owns `conn`, and the checkpoint thread that owns
    /// `checkpointer` (both on the same database; the writer's auto-checkpoint is off).
    /// `wal` is the write-ahead log's path and the size past which the checkpoint truncates it.
    pub(crate) fn start(
        conn: Connection,
        checkpointer: Connection,
        wal: (PathBuf, u64),
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Cmd>(MAX_BATCH * 4);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let restart = Arc::new(AtomicBool::new(false));
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("mailgate-store-checkpoint".into())
            .spawn({
                let restart = restart.clone();
                move || checkpoint_loop(checkpointer, wal, &restart, stop_rx)
            })?;
        std::thread::Builder::new()
            .name("mailgate-store-writer".into())
            .spawn(move || {
                run(conn, rx, &restart, &thread_metrics);
                drop(stop_tx);
            })?;
        Ok(Writer {
            cmds: tx,
            health: Arc::new(WriteHealth::default()),
            metrics,
        })
    }

    /// Run `f` in the next group transaction and answer once that transaction is durable.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let (health, metrics) = (self.health.clone(), self.metrics.clone());
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit: Result<(), &StoreError>| {
                let answer = match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::CommitFailed(e.to_string())),
                };
                match &answer {
                    Ok(_) => health.record(Ok(()), &metrics),
                    Err(e) if e.is_storage_failure() => health.record(Err(e.to_string()), &metrics),
                    Err(_) => {}
                }
                let _ = tx.send(answer);
            })
        });
        self.cmds
            .send(Cmd::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commit what is queued, checkpoint the WAL and stop the thread.
    pub(crate) async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(conn) {
        Ok(r) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(r)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

/// Run batches until stopped. When the checkpoint thread has found the log past its limit,
/// the writer restarts it between two batches (see [`checkpoint_loop`]).
fn run(conn: Connection, mut rx: mpsc::Receiver<Cmd>, restart: &AtomicBool, metrics: &Metrics) {
    let mut completions: Vec<Completion> = Vec::with_capacity(MAX_BATCH);
    let mut stop: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        if restart.swap(false, Ordering::Relaxed) {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "store: restarting the write-ahead log failed");
            }
        }
        let started = Instant::now();
        let mut next = Some(first);
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Dropping the jobs answers their callers with an error; nothing was written.
            tracing::error!(error = %e, "store: cannot begin transaction");
            continue;
        }
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Job(job) => completions.push(job(&conn)),
                Cmd::Stop(done) => {
                    stop = Some(done);
                    break;
                }
            }
            if completions.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let committed = conn.execute_batch("COMMIT").map_err(StoreError::from);
        if let Err(e) = &committed {
            tracing::error!(error = %e, "store: group commit failed; rolling back");
            let _ = conn.execute_batch("ROLLBACK");
        }
        metrics.observe_commit(started.elapsed(), completions.len());
        let commit_ref = committed.as_ref().map(|_| ());
        for done in completions.drain(..) {
            done(commit_ref);
        }
        if let Some(done) = stop.take() {
            rx.close();
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::warn!(error = %e, "store: final checkpoint failed");
            }
            let _ = done.send(());
            break;
        }
    }
    tracing::debug!("store writer stopped");
}

/// Copy committed WAL frames into the database file (PASSIVE: never blocks the writer or
/// readers) until the writer stops. Under sustained writes a passive checkpoint never finds
/// the log wholly copied, so the log never restarts and grows without bound (15 GB for a
/// million messages): once it passes its limit, this asks the writer to restart it, which the
/// writer does between two batches — copying only what this thread has not copied yet, and
/// without contending for the write lock (a RESTART from here waited behind batch after batch
/// and let the log reach 160 times its limit). When writes outrun this thread's copying, the
/// log may grow to four times its limit before the writer is asked to catch up anyway.
fn checkpoint_loop(
    conn: Connection,
    (wal, limit): (PathBuf, u64),
    restart: &AtomicBool,
    stop: std::sync::mpsc::Receiver<()>,
) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        // (busy, frames in the log, frames copied)
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        let behind = match pass {
            Ok((log, copied)) => (log - copied).max(0) as u64 * PAGE_FRAME,
            Err(e) => {
                tracing::debug!(error = %e, "store: passive checkpoint failed");
                continue;
            }
        };
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        // The restart copies what is not copied yet while the writer waits: asked for when
        // little is left, or when the log has grown to four times its limit regardless.
        if (size > limit && behind < limit / 4) || size > limit.saturating_mul(4) {
            restart.store(true, Ordering::Relaxed);
        }
    }
}
