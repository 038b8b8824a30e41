//! The audit log: one JSON line per admin call that changes (or tried to change)
//! something — who, what, when, on what, the component digest, and how it ended —
//! appended to `DATA_DIR/audit.log` and fsynced before the call is answered. berth only
//! ever appends to it. Attempts without a valid token (`who` = `-`) are written one by
//! one up to `[admin] max_unauthenticated_audits_per_minute`; past it they are counted
//! and one entry says how many were not written, so a client without a token cannot
//! fill the disk or spend an fsync per request (they stay counted in
//! `berth_api_refused_total`).
//!
//! In cluster mode the file is also the node's outbox: a forwarder appends each entry to
//! the cluster's audit stream ([`berth_cluster::journal`]) moments after it is written,
//! resuming after a restart from the last entry the stream has from this node, and
//! `GET /v1/admin/audit` on any node reads the stream: every node's entries, each naming
//! its node.

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
    /// Cluster mode: the node that took the call (set when read back from the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(who: &str, action: &str, target: &str, digest: Option<&str>, outcome: &str, detail: String) -> AuditEntry {
        AuditEntry {
            at_ms: berth_types::clock::now_ms(),
            who: who.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            digest: digest.map(String::from),
            outcome: outcome.to_string(),
            detail,
            node: None,
        }
    }
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// Unauthenticated entries: the minute, how many written in it, how many not.
    unauthenticated: Mutex<(i64, u32, u64)>,
    max_unauthenticated_per_minute: std::sync::atomic::AtomicU32,
    /// Cluster mode: the stream every node's entries go to, and the forwarder's wake-up.
    cluster: std::sync::OnceLock<berth_cluster::journal::Journal>,
    written: tokio::sync::Notify,
}

/// Why the audit log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditReadError {
    #[error("reading the audit log file: {0}")]
    File(#[from] std::io::Error),
    #[error("reading the cluster's audit stream: {0}")]
    Cluster(#[from] berth_cluster::ClusterError),
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
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            unauthenticated: Mutex::new((0, 0, 0)),
            max_unauthenticated_per_minute: std::sync::atomic::AtomicU32::new(60),
            cluster: std::sync::OnceLock::new(),
            written: tokio::sync::Notify::new(),
        })
    }

    /// `[admin] max_unauthenticated_audits_per_minute` (reloaded with the config).
    pub fn set_max_unauthenticated_per_minute(&self, n: u32) {
        self.max_unauthenticated_per_minute.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Append one entry and fsync it — an unauthenticated one only within its minute's
    /// allowance (see the module doc).
    pub fn append(&self, entry: &AuditEntry) -> std::io::Result<()> {
        if entry.who != "-" {
            return self.write(entry);
        }
        let minute = entry.at_ms.div_euclid(60_000);
        let max = self.max_unauthenticated_per_minute.load(std::sync::atomic::Ordering::Relaxed);
        let not_written = {
            let mut w = self.unauthenticated.lock().unwrap_or_else(|e| e.into_inner());
            let mut not_written = 0;
            if w.0 != minute {
                not_written = w.2;
                *w = (minute, 0, 0);
            }
            if w.1 >= max {
                w.2 += 1;
                if w.2 == 1 {
                    tracing::warn!(max, "more attempts without a valid token than the audit log writes one by one this minute; counting them");
                }
                return Ok(());
            }
            w.1 += 1;
            not_written
        };
        if not_written > 0 {
            self.write(&AuditEntry {
                at_ms: entry.at_ms,
                who: "-".into(),
                action: "unauthenticated-attempts".into(),
                target: "*".into(),
                digest: None,
                outcome: "unauthorized".into(),
                node: None,
                detail: format!("{not_written} more attempts without a valid token in the minute before were not written one by one (admin.max_unauthenticated_audits_per_minute = {max})"),
            })?;
        }
        self.write(entry)
    }

    fn write(&self, entry: &AuditEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)?;
        f.sync_data()?;
        drop(f);
        self.written.notify_one();
        Ok(())
    }

    /// The newest `limit` entries, oldest first: this node's file, or in cluster mode
    /// the cluster's stream (every node's).
    pub async fn read(&self, limit: usize) -> Result<Vec<AuditEntry>, AuditReadError> {
        let Some(journal) = self.cluster.get() else { return Ok(self.tail(limit)?) };
        let mut out = Vec::new();
        for e in journal.tail(limit).await? {
            match serde_json::from_slice::<AuditEntry>(&e.payload) {
                Ok(mut entry) => {
                    entry.node = Some(e.node);
                    out.push(entry);
                }
                Err(err) => tracing::warn!(seq = e.seq, error = %err, "skipping an unreadable entry of the cluster's audit stream"),
            }
        }
        Ok(out)
    }

    /// Cluster mode: reads go to `journal` from now on (set before the API serves, so
    /// no read falls back to this node's file alone).
    pub fn attach(&self, journal: berth_cluster::journal::Journal) {
        let _ = self.cluster.set(journal);
    }

    /// Cluster mode: forward every entry of the file to `journal`, from the one after the
    /// last the stream has from this node, until `shutdown`. An entry's id is its byte
    /// offset in the file and its time (`<offset>-<at_ms>`): a restart resumes after it;
    /// a file that does not hold that entry there (a new data dir) is forwarded whole.
    pub async fn forward(self: std::sync::Arc<Self>, journal: berth_cluster::journal::Journal, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let node = journal.node().to_string();
        let mut offset = loop {
            match journal.last_of(&node).await {
                Ok(last) => break self.resume_offset(last.and_then(|e| e.id)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read where this node's audit entries stopped in the cluster; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        loop {
            let pending = match self.lines_from(offset) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the audit log to forward it to the cluster");
                    Vec::new()
                }
            };
            let mut failed = false;
            for (at, end, line) in pending {
                let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else {
                    offset = end;
                    continue;
                };
                match journal.append(&format!("{at}-{}", entry.at_ms), bytes::Bytes::from(line)).await {
                    Ok(_) => offset = end,
                    Err(e) => {
                        tracing::warn!(error = %e, "the cluster did not take an audit entry; it stays in this node's file and is sent again");
                        failed = true;
                        break;
                    }
                }
            }
            let wait = if failed { std::time::Duration::from_secs(1) } else { std::time::Duration::from_secs(60) };
            tokio::select! {
                _ = self.written.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Where forwarding goes on after the entry the stream last took from this node.
    fn resume_offset(&self, last_id: Option<String>) -> u64 {
        let Some((offset, at_ms)) = last_id.as_deref().and_then(|id| id.split_once('-')) else { return 0 };
        let (Ok(offset), Ok(at_ms)) = (offset.parse::<u64>(), at_ms.parse::<i64>()) else { return 0 };
        match self.lines_from(offset) {
            Ok(lines) => match lines.first() {
                Some((_, end, line)) if serde_json::from_slice::<AuditEntry>(line).is_ok_and(|e| e.at_ms == at_ms) => *end,
                _ => {
                    tracing::warn!(offset, "this node's audit file does not hold the entry the cluster last took from it; forwarding the file whole");
                    0
                }
            },
            Err(_) => 0,
        }
    }

    /// Complete lines from byte `offset` on: (start, end, line without its newline).
    fn lines_from(&self, offset: u64) -> std::io::Result<Vec<(u64, u64, Vec<u8>)>> {
        use std::io::{Read, Seek, SeekFrom};
        let _held = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = std::fs::File::open(&self.path)?;
        let len = f.metadata()?.len();
        if offset >= len {
            return Ok(Vec::new());
        }
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        f.take(len - offset).read_to_end(&mut buf)?;
        let mut out = Vec::new();
        let mut start = 0usize;
        while let Some(n) = buf[start..].iter().position(|&b| b == b'\n') {
            out.push((offset + start as u64, offset + (start + n + 1) as u64, buf[start..start + n].to_vec()));
            start += n + 1;
        }
        Ok(out)
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
            node: None,
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

    #[test]
    fn forwarding_resumes_after_the_entry_the_cluster_last_took() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.log")).unwrap();
        for at in [10, 20, 30] {
            log.append(&AuditEntry { at_ms: at, ..AuditEntry::now("ci", "pause", "shop:a", None, "ok", String::new()) }).unwrap();
        }
        let lines = log.lines_from(0).unwrap();
        assert_eq!(lines.len(), 3);
        let (start, end, _) = &lines[1];
        // The stream's last entry from this node is the second: go on with the third.
        assert_eq!(log.resume_offset(Some(format!("{start}-20"))), *end);
        assert_eq!(log.lines_from(*end).unwrap().len(), 1);
        // Not this file's entry there (a new data dir): the whole file; none yet: too.
        assert_eq!(log.resume_offset(Some(format!("{start}-99"))), 0);
        assert_eq!(log.resume_offset(Some("garbage".into())), 0);
        assert_eq!(log.resume_offset(None), 0);
    }

    #[test]
    fn unauthenticated_attempts_are_written_up_to_the_minute_allowance_then_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.log")).unwrap();
        log.set_max_unauthenticated_per_minute(3);
        let e = |at_ms: i64, who: &str| AuditEntry {
            at_ms,
            who: who.into(),
            action: "deploy".into(),
            target: "shopify".into(),
            digest: None,
            outcome: if who == "-" { "unauthorized" } else { "forbidden" }.into(),
            detail: String::new(),
            node: None,
        };
        for i in 0..10 {
            log.append(&e(60_000 + i, "-")).unwrap();
        }
        log.append(&e(60_100, "viewer")).unwrap();
        assert_eq!(log.tail(100).unwrap().len(), 4, "three unauthenticated, and a known token's always");
        // The next minute: one entry counts the seven not written, then this one.
        log.append(&e(120_000, "-")).unwrap();
        let all = log.tail(100).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all[4].action, "unauthenticated-attempts");
        assert!(all[4].detail.starts_with("7 more attempts"), "{}", all[4].detail);
        assert_eq!(all[5].at_ms, 120_000);
    }
}
