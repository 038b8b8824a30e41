//! The engine spike: the same single-writer queue on fjall and on redb, same run.
//!
//! Both engines get the design berth-storage uses: one writer thread drains a channel,
//! applies everything waiting as one atomic batch, syncs once, then answers each caller;
//! the schedule is in memory. Per message: enqueue = record (512 B) + idempotency key,
//! lease = the record rewritten with its lease, ack = the record removed — every call
//! answered after the sync. Rounds alternate engines (the machine drifts).
//!
//! Run: `cargo bench -p berth-storage --bench engines` (optionally `-- MESSAGES`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

enum Op {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Del(&'static str, Vec<u8>),
}

const TABLES: [&str; 2] = ["msg", "idem"];

/// One atomic, synced batch of operations.
trait Engine: Send + 'static {
    fn apply(&mut self, ops: Vec<Op>);
    fn name(&self) -> &'static str;
}

struct Fjall {
    db: fjall::Database,
    spaces: Vec<fjall::Keyspace>,
}

impl Fjall {
    fn open(path: &Path) -> Fjall {
        let db = fjall::Database::builder(path).manual_journal_persist(true).open().expect("open fjall");
        let spaces = TABLES.iter().map(|t| db.keyspace(t, fjall::KeyspaceCreateOptions::default).expect("keyspace")).collect();
        Fjall { db, spaces }
    }
    fn space(&self, t: &str) -> &fjall::Keyspace {
        &self.spaces[TABLES.iter().position(|x| *x == t).expect("table")]
    }
}

impl Engine for Fjall {
    fn apply(&mut self, ops: Vec<Op>) {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                Op::Put(t, k, v) => batch.insert(self.space(t), k, v),
                Op::Del(t, k) => batch.remove(self.space(t), k),
            }
        }
        batch.commit().expect("commit");
        self.db.persist(fjall::PersistMode::SyncData).expect("sync");
    }
    fn name(&self) -> &'static str {
        "fjall 3.1 (SyncData)"
    }
}

struct Redb {
    db: redb::Database,
}

const REDB_TABLES: [redb::TableDefinition<&[u8], &[u8]>; 2] = [redb::TableDefinition::new("msg"), redb::TableDefinition::new("idem")];

impl Engine for Redb {
    fn apply(&mut self, ops: Vec<Op>) {
        let mut tx = self.db.begin_write().expect("begin");
        tx.set_durability(redb::Durability::Immediate).expect("durability");
        {
            let mut tables: Vec<_> = REDB_TABLES.iter().map(|d| tx.open_table(*d).expect("table")).collect();
            for op in ops {
                match op {
                    Op::Put(t, k, v) => {
                        tables[TABLES.iter().position(|x| *x == t).expect("table")].insert(k.as_slice(), v.as_slice()).expect("insert");
                    }
                    Op::Del(t, k) => {
                        tables[TABLES.iter().position(|x| *x == t).expect("table")].remove(k.as_slice()).expect("remove");
                    }
                }
            }
        }
        tx.commit().expect("commit");
    }
    fn name(&self) -> &'static str {
        "redb 4.6 (Durability::Immediate)"
    }
}

type Job = (Vec<Op>, tokio::sync::oneshot::Sender<()>);

/// The writer thread: drain, apply as one batch, sync, answer. Returns the sender and
/// a counter of syncs.
fn writer(mut engine: impl Engine) -> (mpsc::Sender<Job>, Arc<std::sync::atomic::AtomicU64>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = syncs.clone();
    std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut ops = Vec::new();
            let mut answers = Vec::new();
            for (o, a) in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                ops.extend(o);
                answers.push(a);
            }
            engine.apply(ops);
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for a in answers {
                let _ = a.send(());
            }
        }
    });
    (tx, syncs)
}

async fn call(w: &mpsc::Sender<Job>, ops: Vec<Op>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.send((ops, tx)).expect("writer alive");
    rx.await.expect("answered");
}

fn key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// Enqueue+lease+ack `messages` with `producers` producers and up to 16 consumers.
async fn run(w: mpsc::Sender<Job>, producers: usize, messages: usize) -> f64 {
    let ready: Arc<Mutex<VecDeque<u64>>> = Arc::default();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let per = messages / producers;
    let total = per * producers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (w, ready) = (w.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let id = (p * per + i) as u64;
                call(&w, vec![Op::Put("msg", key(id), vec![b'x'; 540]), Op::Put("idem", format!("{p}-{i}").into_bytes(), key(id))]).await;
                ready.lock().expect("lock").push_back(id);
            }
        }));
    }
    for _ in 0..producers.min(16) {
        let (w, ready, acked) = (w.clone(), ready.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            while acked.load(std::sync::atomic::Ordering::SeqCst) < total {
                let batch: Vec<u64> = {
                    let mut r = ready.lock().expect("lock");
                    let n = r.len().min(32);
                    r.drain(..n).collect()
                };
                if batch.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                call(&w, batch.iter().map(|&id| Op::Put("msg", key(id), vec![b'y'; 540])).collect()).await;
                let acks: Vec<_> = batch
                    .into_iter()
                    .map(|id| {
                        let w = w.clone();
                        tokio::spawn(async move { call(&w, vec![Op::Del("msg", key(id))]).await })
                    })
                    .collect();
                for a in acks {
                    a.await.expect("ack");
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let messages = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(8192usize);
    let rounds = 3;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let disk = std::env::current_dir().expect("cwd");
    println!("single-writer queue, enqueue+lease+ack, every call answered after its batch's sync, {messages} messages, {rounds} rounds alternating; msgs/s median (min-max), syncs in the last round");
    println!("| engine | producers | msgs/s | syncs |");
    println!("|---|---:|---:|---:|");
    for producers in [1, 16, 256] {
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut syncs = [0u64; 2];
        let mut names = [""; 2];
        for _ in 0..rounds {
            for e in 0..2 {
                let dir = tempfile::tempdir_in(&disk).expect("temp dir");
                let (w, s, name) = if e == 0 {
                    let f = Fjall::open(dir.path());
                    let name = f.name();
                    let (w, s) = writer(f);
                    (w, s, name)
                } else {
                    let r = Redb { db: redb::Database::create(dir.path().join("db.redb")).expect("open redb") };
                    let name = r.name();
                    let (w, s) = writer(r);
                    (w, s, name)
                };
                rates[e].push(rt.block_on(run(w, producers, messages)));
                syncs[e] = s.load(std::sync::atomic::Ordering::Relaxed);
                names[e] = name;
            }
        }
        for e in 0..2 {
            let mut v = rates[e].clone();
            v.sort_by(f64::total_cmp);
            println!("| {} | {producers} | {:.0} ({:.0}-{:.0}) | {} |", names[e], v[v.len() / 2], v[0], v[v.len() - 1], syncs[e]);
        }
    }
}
