//! A tape-based shadow run: replay a tape's calls, in recorded order, to a candidate
//! version and compare each answer with the one the recording version gave, field by
//! field — what an ERP vendor does before a cutover (a thousand recorded orders through
//! the new version, a 100% field match required). Nothing is sent anywhere; the
//! candidate's state writes stay in the replay.
//!
//! A webhook call is compared only when the shop's real secrets are at hand (the
//! signature cannot be checked against the tape's placeholders); it is counted skipped
//! otherwise.

use super::replay::{first_reads, placeholder_shop, run_input, CallAnswer, Pool, Shared};
use super::{TapeFile, TapedInput};
use crate::registry::shadow::{diff, Difference};
use berth_runtime::tape::Tape;
use berth_runtime::LoadedConnector;
use berth_types::shop::ShopConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Differences kept in a result.
pub const MAX_DIFFERENCES: usize = 50;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TapeShadowResult {
    /// The candidate.
    pub digest: String,
    /// Who recorded the tape: connector version and digest, the shop, when.
    pub recorded_by: String,
    pub shop: String,
    pub recorded_at_ms: i64,
    pub calls: usize,
    pub compared: usize,
    /// Calls not compared (webhooks without the shop's secrets).
    pub skipped: usize,
    /// Compared calls whose every field matched.
    pub calls_matching: usize,
    pub fields: u64,
    pub fields_matching: u64,
    /// `fields_matching / fields`, as a percentage (100 only when every field matched
    /// and every request was answered from the tape).
    pub match_percent: f64,
    /// Requests the candidate made that the tape cannot answer.
    pub unanswered_requests: usize,
    pub differences: Vec<Difference>,
    pub difference_count: usize,
    pub at_ms: i64,
    pub by: String,
}

impl TapeShadowResult {
    /// Whether the candidate may be promoted on this result.
    pub fn complete_match(&self) -> Result<(), String> {
        if self.compared == 0 {
            return Err("the tape's run compared no call".into());
        }
        if self.fields_matching < self.fields || self.unanswered_requests > 0 {
            return Err(format!(
                "{:.2}% of {} fields matched over {} calls ({} calls differ, {} requests the tape could not answer)",
                self.match_percent,
                self.fields,
                self.compared,
                self.compared - self.calls_matching,
                self.unanswered_requests
            ));
        }
        Ok(())
    }
}

/// Leaf values of a JSON value.
fn leaves(v: &Value) -> u64 {
    match v {
        Value::Object(m) => m.values().map(leaves).sum::<u64>().max(1),
        Value::Array(a) => a.iter().map(leaves).sum::<u64>().max(1),
        _ => 1,
    }
}

/// Replay `tape` to `candidate`; `shop` is the shop's real config when known here.
pub async fn compare(candidate: &LoadedConnector, tape: &TapeFile, shop: Option<Arc<ShopConfig>>, by: &str) -> TapeShadowResult {
    let real = shop.is_some();
    let cfg = shop.unwrap_or_else(|| placeholder_shop(tape));
    let pool = Arc::new(Mutex::new(Pool::new(tape, &tape.replay)));
    let mut kv = first_reads(tape);
    let mut r = TapeShadowResult {
        digest: candidate.digest.clone(),
        recorded_by: format!("{} {} ({})", tape.platform, tape.connector_version, &tape.component_digest[..12.min(tape.component_digest.len())]),
        shop: tape.shop.clone(),
        recorded_at_ms: tape.recorded_at_ms,
        calls: tape.calls.len(),
        compared: 0,
        skipped: 0,
        calls_matching: 0,
        fields: 0,
        fields_matching: 0,
        match_percent: 0.0,
        unanswered_requests: 0,
        differences: Vec::new(),
        difference_count: 0,
        at_ms: berth_types::clock::now_ms(),
        by: by.to_string(),
    };
    for (i, call) in tape.calls.iter().enumerate() {
        if matches!(call.input, TapedInput::HandleWebhook { .. }) && !real {
            r.skipped += 1;
            continue;
        }
        let unmatched_before = pool.lock().unwrap_or_else(|p| p.into_inner()).unmatched().len();
        let replay = Tape::scripted(Box::new(Shared(pool.clone())), kv.clone());
        let (out, replay) = run_input(candidate, &tape.shop, cfg.clone(), &call.input, replay).await;
        if let Tape::Replaying { overlay, .. } = replay {
            kv.extend(overlay);
        }
        let answer = CallAnswer::json(&out);
        let mut found = Vec::new();
        diff("", &call.answer, &answer, &mut found);
        let unanswered: Vec<String> = pool.lock().unwrap_or_else(|p| p.into_inner()).unmatched()[unmatched_before..].to_vec();
        r.unanswered_requests += unanswered.len();
        for u in unanswered {
            found.push(("http".into(), Value::String("on the tape".into()), Value::String(format!("not on the tape: {u}"))));
        }
        let fields = leaves(&call.answer).max(leaves(&answer));
        let differing = (found.len() as u64).min(fields);
        r.compared += 1;
        r.fields += fields;
        r.fields_matching += fields - differing;
        if found.is_empty() {
            r.calls_matching += 1;
        }
        r.difference_count += found.len();
        for (path, active, candidate) in found {
            if r.differences.len() < MAX_DIFFERENCES {
                r.differences.push(Difference { call: format!("{} (tape call {})", call.input.name(), i + 1), shop: tape.shop.clone(), at_ms: tape.recorded_at_ms, path, active, candidate });
            }
        }
    }
    r.match_percent = if r.fields == 0 { 0.0 } else { 100.0 * r.fields_matching as f64 / r.fields as f64 };
    if r.unanswered_requests > 0 && r.match_percent >= 100.0 {
        r.match_percent = 99.99;
    }
    r
}
