//! Moving a data dir written by the sled release (`DATA_DIR/db`) into the store.
//!
//! The one place sled is still used. Every tree is read and written into a new store
//! beside it (`DATA_DIR/store.migrating`), which becomes `DATA_DIR/store` only once
//! complete and synced; then the sled dir is kept as `DATA_DIR/sled-backup-<time>/`.
//! A crash at any point leaves either the sled dir to migrate again from the start, or
//! a complete store and a sled dir still to set aside: nothing is lost either way.
//!
//! Records keep their bytes except the queues', whose header is re-encoded (the sled
//! release kept JSON headers and hex lease ids), and component bytes, which become
//! files. Queue ids, stock versions and feed sequences carry on from sled's id counter.

use crate::queue::record::{self, Header};
use crate::store::{Keyspace, Store, StoreConfig, WriteCtx};
use crate::StoreError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Entries written per operation (one writer batch each, at most).
const CHUNK: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("migrating the sled data dir: cannot read {path}: {why}; it is unchanged — restore it from a backup if sled cannot open it, or start the previous berth release to check it")]
    Sled { path: PathBuf, why: String },
    #[error("migrating the sled data dir: tree `{tree}`, key {key}: {why}; the sled dir is unchanged")]
    Record { tree: String, key: String, why: String },
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
}

/// What was carried over, for the log and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Entries per sled tree.
    pub trees: BTreeMap<String, usize>,
    /// Component files written.
    pub components: usize,
    /// Where the sled dir was kept.
    pub backup: PathBuf,
}

fn sled_err(path: &Path, e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Sled { path: path.to_path_buf(), why: e.to_string() }
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> MigrateError {
    MigrateError::File { path: path.to_path_buf(), why: e.to_string() }
}

/// Whether `dir` holds a sled database.
pub fn is_sled_dir(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// Where the sled keyspaces go: (sled tree, store keyspace).
/// (`stock/due` is not carried: the ledger derives its due index from the records.)
const SAME_BYTES: [(&str, &str); 10] = [
    ("orders_feed", "orders_feed"),
    ("orders_latest", "orders_latest"),
    ("sync_state", "sync_state"),
    ("stock/sku", "stock_sku"),
    ("connector_kv", "connector_kv"),
    ("registry/versions", "registry_versions"),
    ("registry/state", "registry_state"),
    ("probe_minutes", "probe_minutes"),
    ("alerts_firing", "alerts_firing"),
    ("alerts_log", "alerts_log"),
];

/// The sled release's queue header (JSON), as it wrote it.
#[derive(serde::Deserialize)]
struct SledHeader {
    partition: String,
    attempts: u32,
    enqueued_at_ms: i64,
    visible_at_ms: i64,
    idem: Option<String>,
    last_error: Option<String>,
    #[serde(default)]
    lease: Option<String>,
}

/// A sled queue record (4-byte header length, JSON header, payload) in the store's format.
fn convert_queue_record(tree: &str, key: &[u8], bytes: &[u8], dead: bool) -> Result<Vec<u8>, MigrateError> {
    let bad = |why: String| MigrateError::Record { tree: tree.to_string(), key: hex(key), why };
    let len = bytes.get(..4).ok_or_else(|| bad("short record".into()))?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| bad("short record".into()))?) as usize;
    let head = bytes.get(4..4 + len).ok_or_else(|| bad("short header".into()))?;
    let h: SledHeader = serde_json::from_slice(head).map_err(|e| bad(e.to_string()))?;
    let lease = match (&h.lease, dead) {
        (Some(l), false) => u128::from_str_radix(l, 16).map_err(|e| bad(format!("lease id: {e}")))?,
        _ => 0,
    };
    let header = Header {
        attempts: h.attempts,
        enqueued_at_ms: h.enqueued_at_ms,
        visible_at_ms: h.visible_at_ms,
        lease,
        partition: h.partition,
        idem: h.idem,
        last_error: h.last_error,
    };
    Ok(record::encode(&header, &bytes[4 + len..]))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A key of `queue` in the store's queue keyspaces.
fn queue_key(queue: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(queue.len() + 1 + rest.len());
    k.extend_from_slice(queue.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

/// Write `entries` into `ks`, a chunk per operation.
async fn put_all(store: &Store, ks: &Keyspace, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        let chunk: Vec<_> = entries.by_ref().take(CHUNK).collect();
        let ks = ks.clone();
        store
            .write(move |ctx: &mut WriteCtx<'_>| {
                for (k, v) in chunk {
                    ctx.insert(&ks, k, v);
                }
                Ok::<_, StoreError>(())
            })
            .await?;
    }
    Ok(())
}

type Entry = (Vec<u8>, Vec<u8>);

/// Copy the sled tree `name` into `ks` as it is read, `CHUNK` entries per operation (a
/// tree is never held in memory whole), each entry through `convert` (`None`: left out).
/// Returns how many entries the tree had.
async fn stream_tree(
    db: &sled::Db,
    sled_dir: &Path,
    name: &str,
    store: &Store,
    ks: &Keyspace,
    mut convert: impl FnMut(Vec<u8>, Vec<u8>) -> Result<Option<Entry>, MigrateError>,
) -> Result<usize, MigrateError> {
    let tree = db.open_tree(name).map_err(|e| sled_err(sled_dir, e))?;
    let (mut read, mut chunk) = (0usize, Vec::with_capacity(CHUNK));
    for item in tree.iter() {
        let (k, v) = item.map_err(|e| sled_err(sled_dir, e))?;
        read += 1;
        if let Some(entry) = convert(k.to_vec(), v.to_vec())? {
            chunk.push(entry);
        }
        if chunk.len() >= CHUNK {
            put_all(store, ks, std::mem::take(&mut chunk)).await?;
        }
    }
    put_all(store, ks, chunk).await?;
    Ok(read)
}

/// Copy every tree of the sled db in `sled_dir` into `store` (new and empty), component
/// blobs into `components`. Returns entries per tree.
async fn copy(sled_dir: &Path, store: &Store, components: &Path) -> Result<Migrated, MigrateError> {
    let db = sled::open(sled_dir).map_err(|e| sled_err(sled_dir, e))?;
    let mut out = Migrated::default();
    let mut names: Vec<String> = db.tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    names.retain(|n| n != "__sled__default");
    for (tree, keyspace) in SAME_BYTES {
        // The sled release's readiness probe wrote `\0probe` into sync_state.
        let n = stream_tree(&db, sled_dir, tree, store, &store.keyspace(keyspace)?, |k, v| Ok((k.as_slice() != b"\0probe").then_some((k, v)))).await?;
        out.trees.insert(tree.to_string(), n);
        if tree == "orders_feed" {
            let meta = store.keyspace("orders_meta")?;
            put_all(store, &meta, vec![(b"feed_len".to_vec(), (n as u64).to_be_bytes().to_vec())]).await?;
        }
    }
    // Queues: q/<queue>/{msg,dead,idem}; `ready` (the schedule) is rebuilt from the records.
    let (msg, dead, idem) = (store.keyspace("queue_msg")?, store.keyspace("queue_dead")?, store.keyspace("queue_idem")?);
    for name in &names {
        let Some(rest) = name.strip_prefix("q/") else { continue };
        let Some((queue, part)) = rest.rsplit_once('/') else { continue };
        let n = match part {
            "msg" | "dead" => {
                let ks = if part == "msg" { &msg } else { &dead };
                stream_tree(&db, sled_dir, name, store, ks, |k, v| Ok(Some((queue_key(queue, &k), convert_queue_record(name, &k, &v, part == "dead")?)))).await?
            }
            "idem" => {
                stream_tree(&db, sled_dir, name, store, &idem, |k, mut v| {
                    // Keys kept before they had a time get the migration's: they expire a TTL from now.
                    if v.len() == 8 {
                        v.extend_from_slice(&crate::now_ms().to_be_bytes());
                    }
                    Ok(Some((queue_key(queue, &k), v)))
                })
                .await?
            }
            _ => continue,
        };
        out.trees.insert(name.clone(), n);
    }
    // One id counter in sled served queue ids, stock versions and feed sequences.
    let next = db.generate_id().map_err(|e| sled_err(sled_dir, e))? + 2;
    put_all(store, &store.keyspace("queue_meta")?, vec![(b"next_id".to_vec(), next.to_be_bytes().to_vec())]).await?;
    put_all(store, &store.keyspace("stock_meta")?, vec![(b"next_version".to_vec(), next.to_be_bytes().to_vec())]).await?;
    // Component bytes become files, one at a time.
    std::fs::create_dir_all(components).map_err(|e| file_err(components, e))?;
    let blobs = db.open_tree("registry/blobs").map_err(|e| sled_err(sled_dir, e))?;
    let mut count = 0;
    for item in blobs.iter() {
        let (digest, bytes) = item.map_err(|e| sled_err(sled_dir, e))?;
        let digest = String::from_utf8_lossy(&digest).into_owned();
        if digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MigrateError::Record { tree: "registry/blobs".into(), key: digest, why: "not a hex digest".into() });
        }
        let path = components.join(format!("{digest}.wasm"));
        crate::files::write_whole(&path, &bytes).map_err(|e| file_err(&path, e))?;
        count += 1;
    }
    out.trees.insert("registry/blobs".into(), count);
    out.components = count;
    for name in names {
        let known = SAME_BYTES.iter().any(|(t, _)| *t == name) || name.starts_with("q/") || name == "registry/blobs" || name == "stock/due";
        if !known {
            tracing::warn!(tree = %name, "a sled tree berth does not know was not migrated (it stays in the backup)");
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), MigrateError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| file_err(dir, e))
}

/// Open the store of `data_dir` (`DATA_DIR/store`), first migrating a sled data dir
/// (`DATA_DIR/db`) if there is one. `components` is where component files go.
/// Returns the store and, when a migration ran, what it carried over.
pub async fn open(data_dir: &Path, components: &Path, config: StoreConfig) -> Result<(Store, Option<Migrated>), MigrateError> {
    let store_dir = data_dir.join("store");
    let sled_dir = data_dir.join("db");
    let mut migrated = None;
    if is_sled_dir(&sled_dir) {
        // Nothing is read or written before the disk is known to have room.
        crate::space::SpaceGuard::new(data_dir, config.reserve_bytes).check()?;
        if !store_dir.exists() {
            let partial = data_dir.join("store.migrating");
            if partial.exists() {
                std::fs::remove_dir_all(&partial).map_err(|e| file_err(&partial, e))?;
            }
            let store = Store::open(&partial, config.clone())?;
            let mut done = copy(&sled_dir, &store, components).await?;
            store.barrier().await?;
            drop(store);
            std::fs::rename(&partial, &store_dir).map_err(|e| file_err(&store_dir, e))?;
            sync_dir(data_dir)?;
            done.backup = set_aside(data_dir, &sled_dir)?;
            migrated = Some(done);
        } else {
            // A migration finished but was stopped before the sled dir was set aside.
            let backup = set_aside(data_dir, &sled_dir)?;
            tracing::info!(backup = %backup.display(), "the sled data dir was migrated before; set it aside");
        }
    }
    Ok((Store::open(&store_dir, config)?, migrated))
}

fn set_aside(data_dir: &Path, sled_dir: &Path) -> Result<PathBuf, MigrateError> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let backup = data_dir.join(format!("sled-backup-{stamp}"));
    std::fs::rename(sled_dir, &backup).map_err(|e| file_err(&backup, e))?;
    sync_dir(data_dir)?;
    Ok(backup)
}
