//! Who may use the admin API: a request carries `Authorization: Bearer
//! TOKEN`, checked in constant time against the token in force. Wrong
//! tokens are counted and, per source IP, limited: a source that keeps
//! guessing gets 429 without its guesses being checked at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use crate::config::AdminToken;

/// Wrong tokens a source may send in a burst...
const BURST: f64 = 10.0;
/// ...and then one more per this long.
const REFILL_EVERY: Duration = Duration::from_secs(6);
/// Sources remembered; past this, the ones that have earned their whole
/// burst back are forgotten, and if none has, all of the rest share one
/// budget, so a flood from many addresses cannot grow the table.
const MAX_SOURCES: usize = 4096;

/// Why a request was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or the wrong one: 401.
    Unauthorized,
    /// Too many wrong tokens from this source: 429.
    TooManyFailures,
}

/// The failure budget per source IP, and the counts the metrics export.
#[derive(Default)]
pub struct Gate {
    failures: Mutex<HashMap<Option<IpAddr>, Budget>>,
    pub refused: AtomicU64,
    pub rate_limited: AtomicU64,
}

#[derive(Clone, Copy)]
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn refilled(self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        (self.tokens + earned).min(BURST)
    }
}

impl Gate {
    /// Lets the request in if it carries `token`.
    pub fn check(
        &self,
        token: Option<&AdminToken>,
        headers: &HeaderMap,
        source: IpAddr,
        now: Instant,
    ) -> Result<(), Refusal> {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = if failures.contains_key(&Some(source)) || failures.len() < MAX_SOURCES {
            Some(source)
        } else {
            failures.retain(|_, budget| budget.refilled(now) < BURST);
            if failures.len() < MAX_SOURCES { Some(source) } else { None }
        };
        if failures.get(&key).is_some_and(|budget| budget.refilled(now) < 1.0) {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooManyFailures);
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        if let (Some(token), Some(presented)) = (token, presented)
            && token.matches(presented.as_bytes())
        {
            return Ok(());
        }
        let budget = failures.entry(key).or_insert(Budget { tokens: BURST, at: now });
        *budget = Budget { tokens: budget.refilled(now) - 1.0, at: now };
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(Refusal::Unauthorized)
    }
}
