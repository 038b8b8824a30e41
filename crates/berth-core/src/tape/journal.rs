//! A running berth's recording of chosen shops (`[connectors.X.record] shops`): every
//! call a worker makes for such a shop — pulls, pushes, webhooks — with its platform
//! exchanges, appended as one line of `calls.jsonl` in `data_dir/tapes/<connector>/<shop>/`
//! beside `meta.json` (the tape's header: connector version, the shop's settings, the
//! names of its secrets). So a vendor can replay a production incident with `berth plugin
//! test --tape data_dir/tapes/<connector>/<shop>` (or the tape the admin API assembles).
//!
//! Redacted as the kit's tapes are: the shop's secrets (its renewed tokens included) and
//! every credential or signature value the requests carry; tokens seen in one call are
//! remembered (at most [`MAX_REMEMBERED`]) so they are also taken out of later answers.
//! Bounded: past half of `max_kb` the journal becomes `calls.1.jsonl` (replacing the one
//! before) and a new one starts, so the newest calls are kept and the two files stay
//! within `max_kb`. A write that fails (a full disk) stops the shop's recording, said
//! once in the log; serving goes on.

use super::{learn, scrub, TapeError, TapeFile, TapedCall, TapedInput, FORMAT};
use berth_runtime::redact::Redactor;
use berth_runtime::tape::Tape;
use berth_runtime::{Call, CallError, LoadedConnector, Output};
use berth_types::shop::ShopConfig;
use serde::Deserialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const META_FILE: &str = "meta.json";
const CALLS: &str = "calls.jsonl";
const OLDER_CALLS: &str = "calls.1.jsonl";
/// Credential values remembered from earlier calls of a shop.
pub const MAX_REMEMBERED: usize = 64;

/// `[connectors.X.record]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// The shops whose calls are recorded.
    pub shops: Vec<String>,
    /// Most a shop's recording keeps, in KiB (16 MiB by default).
    #[serde(default = "default_max_kb")]
    pub max_kb: u64,
}

fn default_max_kb() -> u64 {
    16 * 1024
}

/// One shop's recording.
pub struct ShopJournal {
    connector: String,
    shop: String,
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<JournalState>,
}

#[derive(Default)]
struct JournalState {
    /// Credential values (not signatures) seen in earlier calls' requests.
    remembered: Vec<(String, String)>,
    /// Bytes in `calls.jsonl`.
    written: u64,
    /// The version `meta.json` describes.
    meta_for: Option<String>,
    /// A write failed: the recording stopped.
    stopped: bool,
}

/// Whether a learned value is a credential worth remembering across calls (a signature
/// changes every call).
fn lasting(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["token", "session", "authorization", "cookie", "secret", "key"].iter().any(|s| n.contains(s))
}

impl ShopJournal {
    pub fn new(connector: &str, shop: &str, dir: PathBuf, cfg: &RecordConfig) -> ShopJournal {
        let written = std::fs::metadata(dir.join(CALLS)).map(|m| m.len()).unwrap_or(0);
        ShopJournal {
            connector: connector.to_string(),
            shop: shop.to_string(),
            dir,
            max_bytes: cfg.max_kb.max(1) * 1024,
            state: Mutex::new(JournalState { written, ..Default::default() }),
        }
    }

    /// Append a call that ran with a recording tape. The line is made here; the disk
    /// write runs off the async threads.
    pub fn append(self: &Arc<Self>, conn: &LoadedConnector, cfg: &ShopConfig, call: &Call, out: &Result<Output, CallError>, tape: &Tape) {
        let mut r = Redactor::for_shop(Some(cfg));
        let mut taped = TapedCall::recorded(TapedInput::of(call), crate::registry::shadow::json_of(out.as_ref()), tape);
        let meta = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.stopped {
                return;
            }
            for (k, v) in &st.remembered {
                r.add(v, &format!("<redacted:{k}>"));
            }
            for (k, v) in learn(&taped, &mut r).into_iter().filter(|(k, _)| lasting(k)) {
                if !st.remembered.iter().any(|(_, w)| *w == v) {
                    st.remembered.push((k, v));
                }
            }
            let excess = st.remembered.len().saturating_sub(MAX_REMEMBERED);
            st.remembered.drain(..excess);
            let meta = (st.meta_for.as_deref() != Some(conn.digest.as_str())).then(|| {
                st.meta_for = Some(conn.digest.clone());
                self.meta(conn, cfg)
            });
            meta
        };
        scrub(&mut taped, &r);
        let Ok(mut line) = serde_json::to_vec(&taped) else { return };
        line.push(b'\n');
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.write(meta, &line));
    }

    fn meta(&self, conn: &LoadedConnector, cfg: &ShopConfig) -> TapeFile {
        let m = &conn.manifest;
        TapeFile {
            format: FORMAT,
            recorded_at_ms: berth_types::clock::now_ms(),
            platform: m.platform.clone(),
            connector_version: m.connector_version.clone(),
            component_digest: conn.digest.to_string(),
            max_window_ms: m.max_window_ms,
            shop: self.shop.clone(),
            settings: cfg.settings.clone(),
            secrets: cfg.secrets.keys().cloned().collect(),
            replay: Default::default(),
            calls: Vec::new(),
        }
    }

    fn write(&self, meta: Option<TapeFile>, line: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.stopped {
            return;
        }
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            if let Some(meta) = meta {
                let tmp = self.dir.join(format!(".{META_FILE}.tmp"));
                std::fs::write(&tmp, serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?)?;
                std::fs::rename(&tmp, self.dir.join(META_FILE))?;
            }
            if st.written + line.len() as u64 > self.max_bytes / 2 && st.written > 0 {
                std::fs::rename(self.dir.join(CALLS), self.dir.join(OLDER_CALLS))?;
                st.written = 0;
                tracing::info!(connector = %self.connector, shop = %self.shop, max_kb = self.max_bytes / 1024, "the shop's recording reached half its bound: the older half was dropped");
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(CALLS))?;
            f.write_all(line)?;
            st.written += line.len() as u64;
            Ok(())
        })();
        if let Err(e) = result {
            st.stopped = true;
            tracing::warn!(connector = %self.connector, shop = %self.shop, dir = %self.dir.display(), error = %e, "cannot write the shop's recording; it stopped (serving goes on): free the disk and reload the config to record again");
        }
    }
}

/// A recording directory as one tape: the header, then the older calls and the newer.
/// A line that does not parse (the last one, torn by a crash) is left out.
pub fn read(dir: &Path) -> Result<TapeFile, TapeError> {
    let meta_path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&meta_path).map_err(|source| TapeError::Read { path: meta_path.clone(), source })?;
    let mut tape: TapeFile = serde_json::from_str(&text).map_err(|e| TapeError::Invalid { path: meta_path.clone(), why: e.to_string() })?;
    for name in [OLDER_CALLS, CALLS] {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(TapeError::Read { path, source }),
        };
        tape.calls.extend(text.lines().filter_map(|l| serde_json::from_str::<TapedCall>(l).ok()));
    }
    Ok(tape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Vec<u8> {
        let call = TapedCall {
            input: TapedInput::Check,
            answer: serde_json::json!({ "n": n, "pad": "x".repeat(200) }),
            exchanges: Vec::new(),
            kv_reads: Default::default(),
        };
        let mut l = serde_json::to_vec(&call).unwrap();
        l.push(b'\n');
        l
    }

    #[test]
    fn keeps_the_newest_calls_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RecordConfig { shops: vec!["s".into()], max_kb: 2 };
        let j = ShopJournal::new("c", "s", dir.path().join("s"), &cfg);
        let meta = TapeFile {
            format: FORMAT,
            recorded_at_ms: 1,
            platform: "p".into(),
            connector_version: "1".into(),
            component_digest: "d".into(),
            max_window_ms: None,
            shop: "s".into(),
            settings: Default::default(),
            secrets: vec![],
            replay: Default::default(),
            calls: vec![],
        };
        j.write(Some(meta), &line(0));
        for n in 1..40 {
            j.write(None, &line(n));
        }
        let size = |f: &str| std::fs::metadata(dir.path().join("s").join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(size(CALLS) + size(OLDER_CALLS) <= 2048, "{} + {}", size(CALLS), size(OLDER_CALLS));
        let tape = read(&dir.path().join("s")).unwrap();
        let ns: Vec<u64> = tape.calls.iter().map(|c| c.answer["n"].as_u64().unwrap()).collect();
        assert_eq!(ns.last(), Some(&39), "the newest call is kept: {ns:?}");
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "older, then newer, none missing in between: {ns:?}");
        // A torn last line (a crash mid-write) is left out, the rest read.
        std::fs::OpenOptions::new().append(true).open(dir.path().join("s").join(CALLS)).unwrap().write_all(b"{\"input\":").unwrap();
        assert_eq!(read(&dir.path().join("s")).unwrap().calls.len(), ns.len());
    }

    #[test]
    fn a_failed_write_stops_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        // The shop's directory cannot be made: a file stands where it should be.
        std::fs::write(dir.path().join("s"), b"in the way").unwrap();
        let j = ShopJournal::new("c", "s", dir.path().join("s"), &RecordConfig { shops: vec!["s".into()], max_kb: 64 });
        j.write(None, &line(0));
        assert!(j.state.lock().unwrap().stopped);
    }
}
