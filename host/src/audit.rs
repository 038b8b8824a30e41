//! The audit log: one JSON line per admin call that changes (or tried to change)
//! something — who, what, when, on what, the component digest, and how it ended —
//! appended to `DATA_DIR/audit.log` and fsynced before the call is answered. berth only
//! ever appends to it.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// Token name, or `-` when the caller did not authenticate.
    pub who: String,
    pub action: String,
    /// The connector or shop acted on.
    pub target: String,
    pub digest: Option<String>,
    /// `ok`, `refused` (bad input), `unauthorized`, `forbidden` or `failed`.
    pub outcome: String,
    pub detail: String,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(path)?;
        // A line cut short by a crash is ended, so the next entry starts on its own line.
        let len = file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                file.sync_data()?;
            }
        }
        Ok(AuditLog { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    /// Append one entry and fsync it.
    pub fn append(&self, entry: &AuditEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)?;
        f.sync_data()
    }

    /// The newest `limit` entries, oldest first.
    pub fn tail(&self, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        let _held = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let reader = std::io::BufReader::new(std::fs::File::open(&self.path)?);
        let mut out = std::collections::VecDeque::with_capacity(limit.min(1024));
        for line in reader.lines() {
            let line = line?;
            // A line cut short by a crash is skipped, not fatal.
            if let Ok(e) = serde_json::from_str::<AuditEntry>(&line) {
                if out.len() == limit {
                    out.pop_front();
                }
                out.push_back(e);
            }
        }
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_back_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let e = |n: i64| AuditEntry {
            at_ms: n,
            who: "ci".into(),
            action: "deploy".into(),
            target: "shopify".into(),
            digest: Some("abc".into()),
            outcome: "ok".into(),
            detail: String::new(),
        };
        {
            let log = AuditLog::open(&path).unwrap();
            log.append(&e(1)).unwrap();
            log.append(&e(2)).unwrap();
        }
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"at_ms\": 3, \"who\"").unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append(&e(4)).unwrap();
        let all = log.tail(10).unwrap();
        assert_eq!(all.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [1, 2, 4], "the torn entry is skipped, the next one kept");
        assert_eq!(log.tail(1).unwrap()[0].at_ms, 4);
    }
}
