//! A token bucket per source IP for answers that need no credentials (Binding
//! responses, 401 challenges, errors to unauthenticated requests): what a
//! flood of spoofed requests could turn into a flood towards a victim.
//!
//! The table is bounded: when it is full, buckets that have refilled (their
//! source has been quiet long enough to be owed a full burst) are dropped,
//! since forgetting them changes nothing; if none has, the oldest entries go.
//! Each worker has its own table, so a source spread over workers by
//! SO_REUSEPORT gets at most one budget per worker.
//!
//! Loopback sources are not limited unless asked: no packet from outside
//! the host can carry a loopback source address, so they cannot be a
//! reflection victim, and they are the operator's own tools (load tests,
//! probes, a local proxy).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Limits on unauthenticated answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Answers per second per source IP; 0 turns the limit off.
    pub per_second: f64,
    /// Answers a quiet source may get at once.
    pub burst: f64,
    /// Source IPs remembered at most.
    pub max_sources: usize,
    /// Limit loopback sources too.
    pub limit_loopback: bool,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_second: 500.0, burst: 1000.0, max_sources: 65_536, limit_loopback: false }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct SourceLimiter {
    limit: RateLimit,
    buckets: HashMap<IpAddr, Bucket>,
}

impl SourceLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: HashMap::new() }
    }

    /// New limits from now on (a reload). A source keeps the tokens it has,
    /// up to the new burst, so one that spent its budget does not get a
    /// fresh one; with the limit off there is nothing left to remember.
    pub fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
        if limit.per_second <= 0.0 {
            self.buckets.clear();
        }
    }

    /// Whether `source` may get one more answer now; takes a token if so.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.limit.per_second <= 0.0 || (!self.limit.limit_loopback && source.to_canonical().is_loopback()) {
            return true;
        }
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.limit.max_sources {
            self.evict(now);
        }
        let limit = self.limit;
        let bucket = self.buckets.entry(source).or_insert(Bucket { tokens: limit.burst, last: now });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sources currently remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets sources whose buckets are full again.
    pub fn forget_idle(&mut self, now: Instant) {
        let limit = self.limit;
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * limit.per_second < limit.burst
        });
    }

    fn evict(&mut self, now: Instant) {
        self.forget_idle(now);
        if self.buckets.len() >= self.limit.max_sources {
            // Everyone is busy: forget the half that was heard from longest ago.
            let mut times: Vec<Instant> = self.buckets.values().map(|b| b.last).collect();
            let middle = times.len() / 2;
            let (_, cutoff, _) = times.select_nth_unstable(middle);
            let cutoff = *cutoff;
            self.buckets.retain(|_, b| b.last > cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let now = crate::io::clock::now();
        let mut limiter =
            SourceLimiter::new(RateLimit { per_second: 10.0, burst: 5.0, max_sources: 100, limit_loopback: false });
        let allowed = (0..20).filter(|_| limiter.allow(ip(1), now)).count();
        assert_eq!(allowed, 5);
        // A tenth of a second later, one more token.
        assert!(limiter.allow(ip(1), now + Duration::from_millis(100)));
        assert!(!limiter.allow(ip(1), now + Duration::from_millis(100)));
        // Other sources have their own budget.
        assert!(limiter.allow(ip(2), now));
    }

    #[test]
    fn loopback_sources_are_limited_only_when_asked() {
        let now = crate::io::clock::now();
        let limit = RateLimit { per_second: 1.0, burst: 1.0, max_sources: 100, limit_loopback: false };
        let mut limiter = SourceLimiter::new(limit);
        for source in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            let source: IpAddr = source.parse().expect("literal");
            assert!((0..100).all(|_| limiter.allow(source, now)), "{source} is exempt");
        }
        assert!(limiter.is_empty());
        let mut limiter = SourceLimiter::new(RateLimit { limit_loopback: true, ..limit });
        let allowed = (0..100).filter(|_| limiter.allow("127.0.0.1".parse().expect("literal"), now)).count();
        assert_eq!(allowed, 1);
    }

    #[test]
    fn a_new_limit_keeps_what_each_source_spent_up_to_its_burst() {
        let now = crate::io::clock::now();
        let limit = RateLimit { per_second: 1.0, burst: 10.0, max_sources: 100, limit_loopback: false };
        let mut limiter = SourceLimiter::new(limit);
        assert_eq!((0..8).filter(|_| limiter.allow(ip(1), now)).count(), 8);
        limiter.set_limit(RateLimit { burst: 4.0, ..limit });
        assert_eq!((0..10).filter(|_| limiter.allow(ip(1), now)).count(), 2, "two of ten tokens left");
        assert_eq!((0..10).filter(|_| limiter.allow(ip(2), now)).count(), 4, "the new burst");
        limiter.set_limit(RateLimit { per_second: 0.0, ..limit });
        assert!(limiter.is_empty(), "off: nothing to remember");
        assert!((0..100).all(|_| limiter.allow(ip(1), now)));
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let now = crate::io::clock::now();
        let mut limiter =
            SourceLimiter::new(RateLimit { per_second: 0.0, burst: 0.0, max_sources: 1, limit_loopback: false });
        assert!((0..1000).all(|_| limiter.allow(ip(1), now)));
        assert!(limiter.is_empty());
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_sources() {
        let now = crate::io::clock::now();
        let mut limiter =
            SourceLimiter::new(RateLimit { per_second: 1.0, burst: 2.0, max_sources: 1000, limit_loopback: false });
        for n in 0..100_000u32 {
            limiter.allow(ip(n), now + Duration::from_micros(u64::from(n)));
            assert!(limiter.len() <= 1000);
        }
        // Quiet sources are forgotten once their buckets have refilled.
        limiter.forget_idle(now + Duration::from_secs(10));
        assert!(limiter.is_empty());
    }
}
