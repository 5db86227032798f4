//! `mailgate backup --archive` and `mailgate restore`: every file a restore needs in one tar
//! archive — a consistent copy of the SQLite database, the site's keys (`domain-key.asc`,
//! `xhmtp-access.key`), the TLS pair the gateway generated (`tls/`) and the DKIM keys
//! (`dkim/`) — and back into an empty data directory. Names in an archive are checked before
//! anything is written: only those files, nothing outside the data directory.

use crate::config::Config;
use crate::files::private_dir;
use anyhow::{bail, Context};
use mailgate_core::store::StoreLocation;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The database's name inside an archive.
const DATABASE: &str = "mailgate.db";
/// Single files of the data directory an archive holds.
const FILES: [&str; 2] = ["domain-key.asc", "xhmtp-access.key"];
/// Directories of the data directory whose `.pem` files an archive holds.
const DIRS: [&str; 2] = ["tls", "dkim"];
/// Largest file taken from an archive (a database may be large; keys are small).
const MAX_ENTRY: u64 = 1 << 40;

/// Where the SQLite database is, or `None` for a PostgreSQL store.
fn database(config: &Config) -> anyhow::Result<Option<PathBuf>> {
    match config
        .store_url()
        .parse::<StoreLocation>()
        .map_err(anyhow::Error::msg)?
    {
        StoreLocation::Sqlite(path) => Ok(Some(path)),
        StoreLocation::Postgres(_) => Ok(None),
    }
}

/// The files of the data directory an archive takes, as (name in the archive, path).
fn data_files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for name in FILES {
        let path = config.data_dir.join(name);
        if path.is_file() {
            out.push((name.to_owned(), path));
        }
    }
    for dir in DIRS {
        let Ok(entries) = std::fs::read_dir(config.data_dir.join(dir)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".pem"))
            .collect();
        names.sort();
        for n in names {
            out.push((format!("{dir}/{n}"), config.data_dir.join(dir).join(&n)));
        }
    }
    out
}

/// Write the archive to `path` (which must not exist). `database_copy` makes a consistent
/// copy of the SQLite database at the path it is given.
pub async fn write<F, Fut>(config: &Config, path: &Path, database_copy: F) -> anyhow::Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if path.exists() {
        bail!("{} exists already", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let scratch = tempfile::tempdir_in(&dir)
        .with_context(|| format!("cannot make a temporary directory in {}", dir.display()))?;
    let mut entries = Vec::new();
    if database(config)?.is_some() {
        let copy = scratch.path().join(DATABASE);
        database_copy(copy.clone()).await?;
        entries.push((DATABASE.to_owned(), copy));
    } else {
        eprintln!(
            "mailgate: the database is in PostgreSQL: back it up with pg_dump (docs/scaling.md); \
             the archive holds the data directory's files"
        );
    }
    entries.extend(data_files(config));
    let partial = scratch.path().join("archive.tar");
    let names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
    let written = partial.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let file = std::fs::File::create(&written)?;
        let mut tar = tar::Builder::new(file);
        tar.mode(tar::HeaderMode::Deterministic);
        for (name, path) in &entries {
            tar.append_path_with_name(path, name)
                .with_context(|| format!("cannot add {}", path.display()))?;
        }
        let file = tar.into_inner()?;
        file.sync_all()?;
        Ok(())
    })
    .await??;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("mailgate: archived {}", names.join(", "));
    Ok(())
}

/// Is `name` one an archive may hold? (No other path is ever written.)
fn allowed(name: &str) -> bool {
    if name == DATABASE || FILES.contains(&name) {
        return true;
    }
    match name.split_once('/') {
        Some((dir, file)) => {
            DIRS.contains(&dir)
                && file.ends_with(".pem")
                && !file.contains(['/', '\\'])
                && !file.starts_with('.')
        }
        None => false,
    }
}

/// Restore `archive` into the configured data directory (and SQLite database path), which
/// must hold none of its files yet.
pub fn restore(config: &Config, archive: &Path) -> anyhow::Result<()> {
    let database = database(config)?;
    let target = |name: &str| -> anyhow::Result<PathBuf> {
        match (name, &database) {
            (DATABASE, Some(db)) => Ok(db.clone()),
            (DATABASE, None) => bail!(
                "the archive holds a SQLite database, but this configuration's store is \
                 PostgreSQL: restore into a SQLite configuration, then `mailgate store migrate`"
            ),
            _ => Ok(config.data_dir.join(name)),
        }
    };
    // First pass: every name allowed, every destination free.
    let open = || {
        std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))
    };
    let mut names = Vec::new();
    for entry in tar::Archive::new(open()?).entries()? {
        let entry = entry.context("not a tar archive")?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if !allowed(&name) || !entry.header().entry_type().is_file() {
            bail!("{}: unexpected entry {name:?}", archive.display());
        }
        let dest = target(&name)?;
        if dest.exists() {
            bail!(
                "{} exists already: restore into an empty data directory (move the old one \
                 away first)",
                dest.display()
            );
        }
        names.push(name);
    }
    if !names.iter().any(|n| n == DATABASE) && database.is_some() {
        bail!("{} holds no database", archive.display());
    }
    private_dir(&config.data_dir)?;
    for entry in tar::Archive::new(open()?).entries()? {
        let entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let dest = target(&name)?;
        if let Some(parent) = dest.parent() {
            private_dir(parent)?;
        }
        // Streamed into a private temporary file beside its place, synced, renamed there.
        let parent = dest.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
        std::io::copy(&mut entry.take(MAX_ENTRY), &mut tmp)?;
        tmp.as_file().sync_all()?;
        tmp.persist_noclobber(&dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
    }
    println!(
        "restored {} into {}",
        names.join(", "),
        config.data_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn only_the_data_directory_files_are_taken() {
        for ok in [
            "mailgate.db",
            "domain-key.asc",
            "tls/cert.pem",
            "dkim/a.test.pem",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for bad in [
            "../mailgate.db",
            "/etc/passwd",
            "tls/../../x.pem",
            "tls/.hidden.pem",
            "dkim/x.key",
            "other",
            "tls/sub/x.pem",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
    }
}
