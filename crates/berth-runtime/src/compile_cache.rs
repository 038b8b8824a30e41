//! Compiled components on disk (`DATA_DIR/compiled/`), keyed by the component's digest and
//! the engine's compatibility hash, so a restart or a re-deploy does not compile again.
//!
//! Loading compiled code is `unsafe` (wasmtime runs it as is), so an entry is trusted only
//! when it is whole and exactly what berth wrote: each file is `MAGIC`, the SHA-256 of the
//! artifact, then the artifact, written to a temporary file of its own, synced, and renamed
//! into place (two compiles of one component at once each write their own and the last
//! rename wins; a crash leaves at most a stray temporary file). A file whose digest does
//! not match — cut short by a full disk, changed by anyone — is not loaded: the component is
//! compiled again. wasmtime itself refuses an artifact of other engine settings.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"BERTHCC1";
const HEADER: usize = MAGIC.len() + 32;

/// Why a cache entry was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheMiss {
    #[error("no entry")]
    Absent,
    #[error("cannot read the entry: {0}")]
    Read(std::io::Error),
    #[error("the entry is not whole or not berth's (its digest does not match)")]
    Corrupt,
    #[error("wasmtime refused the entry: {0}")]
    Refused(String),
}

/// The entry's path for a component `digest` under engine settings `engine_key`.
pub fn entry(dir: &Path, digest: &str, engine_key: &str) -> PathBuf {
    dir.join(format!("{digest}-{engine_key}.cwasm"))
}

/// Load a compiled component, if its entry is whole and was written by berth.
pub fn load(engine: &Engine, path: &Path) -> Result<Component, CacheMiss> {
    let file = match std::fs::read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheMiss::Absent),
        Err(e) => return Err(CacheMiss::Read(e)),
    };
    if file.len() < HEADER || &file[..MAGIC.len()] != MAGIC || Sha256::digest(&file[HEADER..])[..] != file[MAGIC.len()..HEADER] {
        return Err(CacheMiss::Corrupt);
    }
    // Safety: the bytes are exactly what `store` wrote from `Component::serialize` (their
    // SHA-256 matches the one written before them), in a directory only berth writes, and
    // wasmtime checks they were compiled for this engine's settings.
    unsafe { Component::deserialize(engine, &file[HEADER..]) }.map_err(|e| CacheMiss::Refused(e.to_string()))
}

/// Write a compiled artifact as the entry at `path`: its own temporary file, synced,
/// renamed into place, the directory synced.
pub fn store(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}-{:016x}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&Sha256::digest(artifact))?;
        f.write_all(artifact)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: the preamble of an empty one.
    const EMPTY: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn concurrent_writers_leave_a_whole_entry_and_a_damaged_one_is_not_loaded() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let path = entry(dir.path(), "d1", "e1");
        assert!(matches!(load(&engine, &path), Err(CacheMiss::Absent)));
        let artifact = Component::new(&engine, EMPTY).unwrap().serialize().unwrap();
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (path, artifact) = (path.clone(), artifact.clone());
                std::thread::spawn(move || store(&path, &artifact))
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        load(&engine, &path).expect("the entry is whole");
        let stray: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
        assert!(stray.is_empty(), "temporary files left: {stray:?}");
        // Cut short (a full disk), or changed: refused before wasmtime sees it.
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
        assert!(matches!(load(&engine, &path), Err(CacheMiss::Corrupt)));
        let mut changed = whole.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        assert!(matches!(load(&engine, &path), Err(CacheMiss::Corrupt)));
        std::fs::write(&path, &artifact).unwrap();
        assert!(matches!(load(&engine, &path), Err(CacheMiss::Corrupt)), "a bare artifact (an older berth's) is compiled again");
    }
}
