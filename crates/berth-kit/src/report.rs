//! What a run of the kit's checks found: PASS/FAIL/SKIP per check with figures or the
//! reason, shared by the conformance suite against the simulator and by tape replays.

use berth_types::connector::ConnectorError;
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not applicable (the connector does not claim the capability).
    Skip,
}

#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    /// What was seen: figures on a pass, what failed and why on a failure.
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub component: String,
    /// What the component ran against: `the simulated shopee`, a tape.
    pub against: String,
    pub connector: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "conformance: {} ({}) against {}", self.component, self.connector, self.against);
        for c in &self.checks {
            let tag = match c.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "SKIP",
            };
            let mut lines = c.detail.lines();
            let _ = writeln!(out, "  {tag}  {:<15} {}", c.name, lines.next().unwrap_or(""));
            for l in lines {
                let _ = writeln!(out, "  {:<4}  {:<15} {l}", "", "");
            }
        }
        let failed = self.checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
        if failed == 0 {
            let _ = writeln!(out, "RESULT: PASS ({} checks, {} skipped)", self.checks.len(), self.checks.iter().filter(|c| c.outcome == Outcome::Skip).count());
        } else {
            let _ = writeln!(out, "RESULT: FAIL ({failed} of {} checks failed)", self.checks.len());
        }
        out
    }
}

pub fn skip(name: &'static str, why: &str) -> Check {
    Check { name, outcome: Outcome::Skip, detail: why.to_string() }
}

pub fn pass(name: &'static str, detail: String) -> Check {
    Check { name, outcome: Outcome::Pass, detail }
}

pub fn fail(name: &'static str, detail: String) -> Check {
    Check { name, outcome: Outcome::Fail, detail }
}

/// A connector error as the report names it.
pub fn error_kind(e: &ConnectorError) -> String {
    match e {
        ConnectorError::RateLimited(ms) => format!("rate-limited({ms} ms)"),
        ConnectorError::Auth(m) => format!("auth: {m}"),
        ConnectorError::Transient(m) => format!("transient: {m}"),
        ConnectorError::Permanent(m) => format!("permanent: {m}"),
        ConnectorError::InvalidInput(m) => format!("invalid-input: {m}"),
    }
}

/// At most `n` items of a list, with how many more there were.
pub fn some<T: std::fmt::Display>(items: &[T], n: usize) -> String {
    let shown: Vec<String> = items.iter().take(n).map(|i| i.to_string()).collect();
    if items.len() > n {
        format!("{} (+{} more)", shown.join(", "), items.len() - n)
    } else {
        shown.join(", ")
    }
}
