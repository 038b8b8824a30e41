//! A queue's live messages in memory: their schedule, leases and counters.
//!
//! The writer keeps this beside what it writes, so a lease, ack or nack decides from
//! memory (no scan of a schedule on disk, whose head an LSM fills with tombstones) and
//! the figures every scrape asks — depth, in flight, dead, oldest age, per queue and per
//! partition — are counters, not scans. Rebuilt from the stored records at open.
//!
//! Memory: about 200 bytes per live message (a queue of a million waiting messages
//! holds about 200 MB); dead letters cost only a counter.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What the index keeps of a live message.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub partition: Arc<str>,
    pub attempts: u32,
    pub enqueued_at_ms: i64,
    pub visible_at_ms: i64,
    pub lease: u128,
    pub payload_len: u32,
}

/// Counters of a queue or of one partition.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub live: u64,
    pub dead: u64,
    /// Live message ids, oldest first (ids grow with enqueue time).
    ids: BTreeSet<u64>,
    /// Messages whose visible time was in the future when it was set: leased or
    /// delayed. Entries whose time has passed are dropped when read (each once).
    waiting: BTreeSet<(i64, u64)>,
}

impl Counts {
    fn add(&mut self, id: u64, visible_at_ms: i64, now: i64) {
        self.live += 1;
        self.ids.insert(id);
        if visible_at_ms > now {
            self.waiting.insert((visible_at_ms, id));
        }
    }

    fn remove(&mut self, id: u64, visible_at_ms: i64) {
        self.live = self.live.saturating_sub(1);
        self.ids.remove(&id);
        self.waiting.remove(&(visible_at_ms, id));
    }

    fn reschedule(&mut self, id: u64, from: i64, to: i64, now: i64) {
        self.waiting.remove(&(from, id));
        if to > now {
            self.waiting.insert((to, id));
        }
    }

    /// (ready, in flight) now.
    pub fn ready_in_flight(&mut self, now: i64) -> (u64, u64) {
        while let Some(&(at, id)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.remove(&(at, id));
        }
        let in_flight = self.waiting.len() as u64;
        (self.live.saturating_sub(in_flight), in_flight)
    }

    pub fn oldest_id(&self) -> Option<u64> {
        self.ids.first().copied()
    }

    fn is_empty(&self) -> bool {
        self.live == 0 && self.dead == 0
    }
}

#[derive(Debug, Default)]
pub(crate) struct QueueIndex {
    msgs: HashMap<u64, Meta>,
    /// Every live message by the time it is (again) visible.
    schedule: BTreeSet<(i64, u64)>,
    /// The same per partition, so one partition leases past another's backlog.
    partition_schedule: HashMap<Arc<str>, BTreeSet<(i64, u64)>>,
    pub total: Counts,
    pub partitions: HashMap<Arc<str>, Counts>,
}

impl QueueIndex {
    /// The interned name of `partition` (one allocation per partition, not per message).
    pub fn intern(&self, partition: &str) -> Arc<str> {
        match self.partitions.get_key_value(partition) {
            Some((k, _)) => k.clone(),
            None => Arc::from(partition),
        }
    }

    pub fn get(&self, id: u64) -> Option<&Meta> {
        self.msgs.get(&id)
    }

    pub fn insert(&mut self, id: u64, meta: Meta, now: i64) {
        self.schedule.insert((meta.visible_at_ms, id));
        self.partition_schedule.entry(meta.partition.clone()).or_default().insert((meta.visible_at_ms, id));
        self.total.add(id, meta.visible_at_ms, now);
        self.partitions.entry(meta.partition.clone()).or_default().add(id, meta.visible_at_ms, now);
        self.msgs.insert(id, meta);
    }

    pub fn remove(&mut self, id: u64) -> Option<Meta> {
        let meta = self.msgs.remove(&id)?;
        let key = (meta.visible_at_ms, id);
        self.schedule.remove(&key);
        if let Some(s) = self.partition_schedule.get_mut(&meta.partition) {
            s.remove(&key);
            if s.is_empty() {
                self.partition_schedule.remove(&meta.partition);
            }
        }
        self.total.remove(id, meta.visible_at_ms);
        if let Some(c) = self.partitions.get_mut(&meta.partition) {
            c.remove(id, meta.visible_at_ms);
            if c.is_empty() {
                self.partitions.remove(&meta.partition);
            }
        }
        Some(meta)
    }

    /// Move a live message to `visible_at_ms` with its new attempts and lease.
    pub fn update(&mut self, id: u64, visible_at_ms: i64, attempts: u32, lease: u128, now: i64) {
        let Some(meta) = self.msgs.get_mut(&id) else { return };
        let from = meta.visible_at_ms;
        meta.visible_at_ms = visible_at_ms;
        meta.attempts = attempts;
        meta.lease = lease;
        let partition = meta.partition.clone();
        self.schedule.remove(&(from, id));
        self.schedule.insert((visible_at_ms, id));
        if let Some(s) = self.partition_schedule.get_mut(&partition) {
            s.remove(&(from, id));
            s.insert((visible_at_ms, id));
        }
        self.total.reschedule(id, from, visible_at_ms, now);
        if let Some(c) = self.partitions.get_mut(&partition) {
            c.reschedule(id, from, visible_at_ms, now);
        }
    }

    pub fn add_dead(&mut self, partition: &Arc<str>, n: i64) {
        let apply = |c: &mut Counts| c.dead = c.dead.saturating_add_signed(n);
        apply(&mut self.total);
        apply(self.partitions.entry(partition.clone()).or_default());
        if self.partitions.get(partition).is_some_and(Counts::is_empty) {
            self.partitions.remove(partition);
        }
    }

    /// Ids due at `now`, oldest visible first, at most `max`: from every partition, or
    /// from the named ones only.
    pub fn due(&self, now: i64, max: usize, partitions: Option<&[String]>) -> Vec<u64> {
        let upto = (now, u64::MAX);
        match partitions {
            None => self.schedule.range(..=upto).take(max).map(|&(_, id)| id).collect(),
            Some(names) => {
                let mut due: Vec<(i64, u64)> = names
                    .iter()
                    .filter_map(|p| self.partition_schedule.get(p.as_str()))
                    .flat_map(|s| s.range(..=upto).take(max).copied())
                    .collect();
                due.sort_unstable();
                due.truncate(max);
                due.into_iter().map(|(_, id)| id).collect()
            }
        }
    }

    /// Counts of every partition (for status pages).
    pub fn partition_counts(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut Counts)> {
        self.partitions.iter_mut()
    }

    pub fn enqueued_at(&self, id: u64) -> Option<i64> {
        self.msgs.get(&id).map(|m| m.enqueued_at_ms)
    }
}

/// Per-queue indexes by queue name.
pub(crate) type Indexes = BTreeMap<String, QueueIndex>;
