//! What the gateway knows of each target's health across sessions: for `/healthz`, the log
//! lines when a target turns unhealthy or healthy again, and `targetBackoff`.

use crate::config::{Target, TargetKind};
use crate::{log, warn};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Entry {
    kind: &'static str,
    ok: Option<bool>,
    failures: u32,
    last_error: Option<String>,
    since: Instant,
    /// With targetBackoff: no new start before this.
    retry_at: Option<Instant>,
}

/// Health by (backend, target).
#[derive(Default)]
pub struct Health {
    targets: HashMap<(String, String), Entry>,
}

impl Health {
    /// Notes a target's start, initialization or death. `backoff`: the `targetBackoff`
    /// setting (zero: off).
    pub fn record(
        &mut self,
        backend: &str,
        target: &Target,
        outcome: Result<(), &str>,
        backoff: Duration,
    ) {
        let now = Instant::now();
        let kind = match target.kind {
            TargetKind::Stdio(_) => "stdio",
            TargetKind::Mcp(_) => "mcp",
            TargetKind::Sse(_) => "sse",
        };
        let h = self
            .targets
            .entry((backend.to_string(), target.name.clone()))
            .or_insert(Entry {
                kind,
                ok: None,
                failures: 0,
                last_error: None,
                since: now,
                retry_at: None,
            });
        match outcome {
            Ok(()) => {
                if h.ok == Some(false) {
                    log!(
                        "target {} (backend {backend}) is healthy again",
                        target.name
                    );
                }
                if h.ok != Some(true) {
                    h.since = now;
                }
                h.ok = Some(true);
                h.failures = 0;
                h.retry_at = None;
            }
            Err(why) => {
                if h.ok != Some(false) {
                    warn!(
                        "target {} (backend {backend}) is unhealthy: {why}",
                        target.name
                    );
                    h.since = now;
                }
                h.ok = Some(false);
                h.failures = h.failures.saturating_add(1);
                h.last_error = Some(why.to_string());
                if !backoff.is_zero() {
                    let step = Duration::from_secs(1u64 << h.failures.min(16).saturating_sub(1));
                    h.retry_at = Some(now + step.min(backoff));
                }
            }
        }
    }

    /// Why a target must not be started now (it is backing off), if it must not.
    pub fn backing_off(&self, backend: &str, target: &str) -> Option<String> {
        let h = self
            .targets
            .get(&(backend.to_string(), target.to_string()))?;
        let at = h.retry_at.filter(|at| *at > Instant::now())?;
        Some(format!(
            "not started: backing off for {:.1}s after {} failure(s); last: {}",
            at.saturating_duration_since(Instant::now()).as_secs_f32(),
            h.failures,
            h.last_error.as_deref().unwrap_or("unknown")
        ))
    }

    pub fn any_failing(&self) -> bool {
        self.targets.values().any(|h| h.ok == Some(false))
    }

    /// Every target that has been started, as `/healthz` lists them.
    pub fn to_json(&self) -> Vec<Value> {
        let mut targets: Vec<Value> = self
            .targets
            .iter()
            .map(|((backend, name), h)| {
                json!({
                    "backend": backend,
                    "target": name,
                    "kind": h.kind,
                    "state": match h.ok { Some(true) => "ok", Some(false) => "failing", None => "unknown" },
                    "failures": h.failures,
                    "lastError": h.last_error,
                    "sinceSeconds": h.since.elapsed().as_secs(),
                })
            })
            .collect();
        targets.sort_by_key(|t| t.to_string());
        targets
    }
}
