//! A shop's snapshot on disk: `DIR/SHOP/DATE/` holding the Parquet files and
//! `manifest.json`. A snapshot is written whole into a hidden temp directory beside it
//! (`.tmp-DATE-…`, each file and the directory synced), then renamed into place; one of
//! the same date is moved aside first (`.old-DATE-…`) and removed after. A crash leaves
//! only hidden names, which [`tidy`] clears (putting back a moved-aside snapshot whose
//! replacement never landed). Readers see whole snapshots or none.

use crate::tables::Table;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest's format version.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";

/// One file of a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub rows: usize,
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// What a snapshot holds and how it was taken.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub shop: String,
    pub platform: String,
    pub connector: String,
    pub version: String,
    /// The snapshot's day in the configured time zone, `YYYY-MM-DD` (its directory).
    pub date: String,
    pub timezone: String,
    /// When it was taken (Unix ms) and when the listings read began.
    pub at_ms: i64,
    pub listings_read_at_ms: i64,
    /// Orders updated in this many days before `at_ms` are in `orders.parquet`.
    pub orders_days: u32,
    pub took_ms: u64,
    /// `nightly`, or the operator's token name.
    pub by: String,
    pub files: Vec<FileEntry>,
}

/// A snapshot on disk: its manifest and its directory.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl Manifest {
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{what} {path}: {error}")]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("writing {file}: {error}")]
    Table { file: String, error: crate::table::TableError },
    #[error("shop name `{0}` cannot name a directory (letters, digits, `.`, `_`, `-`, not starting with `.`)")]
    ShopName(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FilesError {
    let path = path.to_path_buf();
    move |error| FilesError::Io { what, path, error }
}

/// The shop's directory under `root`, when the shop's name can be one.
pub fn shop_dir(root: &Path, shop: &str) -> Result<PathBuf, FilesError> {
    let ok = !shop.is_empty() && !shop.starts_with('.') && shop.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(FilesError::ShopName(shop.to_string()));
    }
    Ok(root.join(shop))
}

fn sync_dir(path: &Path) -> Result<(), FilesError> {
    std::fs::File::open(path).and_then(|d| d.sync_all()).map_err(io("syncing directory", path))
}

/// Write `tables` and the manifest (its `files` filled in here) as the shop's snapshot
/// of `manifest.date`, atomically.
pub fn write(root: &Path, mut manifest: Manifest, tables: &[Table]) -> Result<Snapshot, FilesError> {
    let shop = shop_dir(root, &manifest.shop)?;
    std::fs::create_dir_all(&shop).map_err(io("creating", &shop))?;
    let nonce = format!("{}-{}", manifest.date, std::process::id());
    let tmp = shop.join(format!(".tmp-{nonce}-{}", manifest.at_ms));
    let result = write_into(&tmp, &mut manifest, tables).and_then(|()| land(&shop, &tmp, &manifest.date, &nonce));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|dir| Snapshot { manifest, dir })
}

fn write_into(tmp: &Path, manifest: &mut Manifest, tables: &[Table]) -> Result<(), FilesError> {
    std::fs::create_dir(tmp).map_err(io("creating", tmp))?;
    manifest.files.clear();
    for t in tables {
        let path = tmp.join(t.file);
        let file = std::fs::File::create(&path).map_err(io("creating", &path))?;
        let mut hashing = Hashing { inner: std::io::BufWriter::new(file), hash: Sha256::new(), bytes: 0 };
        let rows = crate::table::write(&mut hashing, &t.columns).map_err(|error| FilesError::Table { file: t.file.to_string(), error })?;
        let Hashing { inner, hash, bytes } = hashing;
        let file = inner.into_inner().map_err(|e| FilesError::Io { what: "writing", path: path.clone(), error: e.into_error() })?;
        file.sync_all().map_err(io("syncing", &path))?;
        manifest.files.push(FileEntry { name: t.file.to_string(), rows, bytes, sha256: hex::encode(hash.finalize()) });
    }
    let path = tmp.join(MANIFEST);
    let body = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    let mut f = std::fs::File::create(&path).map_err(io("creating", &path))?;
    f.write_all(&body).and_then(|()| f.sync_all()).map_err(io("writing", &path))?;
    sync_dir(tmp)
}

/// Rename the written `tmp` to `date`, moving a snapshot of that date aside first.
fn land(shop: &Path, tmp: &Path, date: &str, nonce: &str) -> Result<PathBuf, FilesError> {
    let dest = shop.join(date);
    let old = shop.join(format!(".old-{nonce}"));
    let replaced = dest.exists();
    if replaced {
        std::fs::rename(&dest, &old).map_err(io("moving aside", &dest))?;
    }
    if let Err(e) = std::fs::rename(tmp, &dest) {
        if replaced {
            let _ = std::fs::rename(&old, &dest);
        }
        return Err(FilesError::Io { what: "renaming into place", path: dest, error: e });
    }
    sync_dir(shop)?;
    if replaced {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(dest)
}

/// Clear what an interrupted write left in the shop's directory: temp directories go; a
/// moved-aside snapshot goes back when its date has none, and goes otherwise.
pub fn tidy(shop_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(shop_dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        } else if let Some(rest) = name.strip_prefix(".old-") {
            // `.old-DATE-PID`: DATE is the first 10 characters.
            let dest = shop_dir.join(rest.get(..10).unwrap_or(rest));
            if !dest.exists() && std::fs::rename(e.path(), &dest).is_ok() {
                tracing::warn!(snapshot = %dest.display(), "put back a snapshot whose replacement was interrupted");
            } else {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The shop's snapshots, newest first (each directory with a readable manifest).
pub fn list(root: &Path, shop: &str) -> Vec<Snapshot> {
    let Ok(dir) = shop_dir(root, shop) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<Snapshot> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path().join(MANIFEST)).ok()?;
            let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
            Some(Snapshot { manifest, dir: e.path() })
        })
        .collect();
    out.sort_by(|a, b| b.manifest.at_ms.cmp(&a.manifest.at_ms));
    out
}

/// Remove the shop's snapshots older than `keep_days` days before `now_ms` (by when they
/// were taken). Returns how many went.
pub fn prune(root: &Path, shop: &str, keep_days: u32, now_ms: i64) -> usize {
    let cutoff = now_ms - i64::from(keep_days) * 86_400_000;
    list(root, shop).into_iter().filter(|s| s.manifest.at_ms < cutoff).filter(|s| std::fs::remove_dir_all(&s.dir).is_ok()).count()
}

/// A writer that hashes and counts what passes through.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
