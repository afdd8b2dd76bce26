//! The relay port range of one relay IP (RFC 8656 §7.2, §14.6, §14.9).
//!
//! Free ports wait in a FIFO queue, in random order at first (RFC 8656 §7.2
//! asks for unpredictable relay ports, RFC 6056): a released port goes to the
//! back, so it is reused as late as possible and a peer's stray packets for
//! the old allocation find the port closed or owned by someone who never
//! permitted them. A bitmap
//! is the truth about which ports are free; the queue may hold stale entries
//! (ports taken out of order for EVEN-PORT or a reservation), which are skipped
//! when they reach the front. Allocate and release are O(1) amortised.
//!
//! Reservations (EVEN-PORT with the R bit) hold port+1 for 30 seconds under an
//! 8-byte token that a later Allocate may claim.

use std::collections::{HashMap, VecDeque};

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};

/// How long a reserved port waits for its token (RFC 8656 §7.2: 30 seconds).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// A RESERVATION-TOKEN value.
pub type ReservationToken = [u8; 8];

#[derive(Clone, Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    free: Vec<u64>,
    free_count: usize,
    queue: VecDeque<u16>,
    reservations: HashMap<ReservationToken, (u16, Instant)>,
    /// Where the next even-port search starts, so repeated searches spread out.
    even_cursor: u16,
}

impl PortPool {
    /// A pool of every port in `min..=max`, shuffled with `rng`.
    pub fn new(min: u16, max: u16, rng: &mut impl Rng) -> Self {
        assert!(min <= max, "port range must not be empty");
        let len = usize::from(max - min) + 1;
        let mut pool = Self {
            min,
            max,
            free: vec![0; len.div_ceil(64)],
            free_count: 0,
            queue: VecDeque::with_capacity(len),
            reservations: HashMap::new(),
            even_cursor: min,
        };
        let mut order: Vec<u16> = (min..=max).collect();
        // RFC 8656 §7.2 and RFC 6056: relay ports should not be guessable.
        // Shuffled once, then FIFO, so a freed port still waits its turn.
        order.shuffle(rng);
        for port in order {
            pool.mark_free(port);
            pool.queue.push_back(port);
        }
        pool
    }

    pub fn free_ports(&self) -> usize {
        self.free_count
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    /// Takes the port that has been free the longest.
    pub fn allocate(&mut self) -> Option<u16> {
        while let Some(port) = self.queue.pop_front() {
            if self.is_free(port) {
                self.mark_used(port);
                return Some(port);
            }
        }
        None
    }

    /// Takes an even port; with `reserve_next`, also reserves port+1 and
    /// returns the token that claims it, drawn from `rng`.
    pub fn allocate_even(
        &mut self,
        reserve_next: bool,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<(u16, Option<ReservationToken>)> {
        let span = u32::from(self.max - self.min) + 1;
        let start = u32::from(self.even_cursor - self.min);
        for step in 0..span {
            // Below `span`, so the sum stays in the range and fits a u16.
            let port = self.min + ((start + step) % span) as u16;
            if !port.is_multiple_of(2) || !self.is_free(port) {
                continue;
            }
            if reserve_next && (port == u16::MAX || !self.contains(port + 1) || !self.is_free(port + 1)) {
                continue;
            }
            self.mark_used(port);
            // Start the next search past this port: if it comes back at once
            // (its bind failed), the next search must not offer it again.
            self.even_cursor = port.checked_add(2).filter(|next| *next <= self.max).unwrap_or(self.min);
            let token = reserve_next.then(|| {
                self.mark_used(port + 1);
                let token: ReservationToken = rng.random();
                self.reservations.insert(token, (port + 1, now + RESERVATION_LIFETIME));
                token
            });
            return Some((port, token));
        }
        None
    }

    /// Claims a reserved port. `None` when the token is unknown or expired.
    pub fn claim(&mut self, token: &ReservationToken, now: Instant) -> Option<u16> {
        let (port, expires) = self.reservations.remove(token)?;
        if now >= expires {
            self.release(port);
            return None;
        }
        Some(port)
    }

    /// Returns a port to the pool. Ports outside the range or already free
    /// are ignored, so a double release cannot hand one port out twice.
    pub fn release(&mut self, port: u16) {
        if self.contains(port) && !self.is_free(port) {
            self.mark_free(port);
            self.queue.push_back(port);
        }
    }

    /// Releases reservations whose time is up.
    pub fn expire_reservations(&mut self, now: Instant) {
        let expired: Vec<u16> =
            self.reservations.values().filter(|(_, expires)| now >= *expires).map(|(port, _)| *port).collect();
        self.reservations.retain(|_, (_, expires)| now < *expires);
        for port in expired {
            self.release(port);
        }
    }

    fn index(&self, port: u16) -> (usize, u64) {
        let offset = usize::from(port - self.min);
        (offset / 64, 1 << (offset % 64))
    }

    fn is_free(&self, port: u16) -> bool {
        let (word, bit) = self.index(port);
        self.free[word] & bit != 0
    }

    fn mark_free(&mut self, port: u16) {
        let (word, bit) = self.index(port);
        self.free[word] |= bit;
        self.free_count += 1;
    }

    fn mark_used(&mut self, port: u16) {
        let (word, bit) = self.index(port);
        self.free[word] &= !bit;
        self.free_count -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_pool(min: u16, max: u16) -> PortPool {
        PortPool::new(min, max, &mut rand::rng())
    }

    #[test]
    fn released_ports_go_to_the_back_of_the_queue() {
        let mut pool = new_pool(50000, 50003);
        let first = pool.allocate().expect("free");
        let second = pool.allocate().expect("free");
        pool.release(first);
        let third = pool.allocate().expect("free");
        let fourth = pool.allocate().expect("free");
        assert_eq!(pool.allocate(), Some(first), "the released port comes after all the others");
        assert_eq!(pool.allocate(), None);
        assert_eq!(pool.free_ports(), 0);
        let mut all = [first, second, third, fourth];
        all.sort_unstable();
        assert_eq!(all, [50000, 50001, 50002, 50003]);
    }

    #[test]
    fn the_first_ports_are_not_handed_out_in_order() {
        // 1000 ports handed out in ascending order by chance: about 1 in 1000!.
        let mut pool = new_pool(50000, 50999);
        let ports: Vec<u16> = (0..1000).map(|_| pool.allocate().expect("free")).collect();
        assert!(ports.windows(2).any(|w| w[1] != w[0] + 1), "ports came out sequentially");
    }

    #[test]
    fn double_release_does_not_duplicate_a_port() {
        let mut pool = new_pool(50000, 50001);
        let a = pool.allocate().expect("free");
        pool.release(a);
        pool.release(a);
        pool.release(60000);
        assert_eq!(pool.free_ports(), 2);
        let first = pool.allocate().expect("free");
        let second = pool.allocate().expect("free");
        assert_ne!(first, second);
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn churn_never_exhausts_the_pool() {
        let mut pool = new_pool(40000, 40009);
        for _ in 0..100_000 {
            let port = pool.allocate().expect("a port is always free under churn");
            pool.release(port);
        }
        assert_eq!(pool.free_ports(), 10);
    }

    #[test]
    fn even_port_with_reservation_holds_the_next_port_until_claimed_or_expired() {
        let now = crate::io::clock::now();
        let mut pool = new_pool(50001, 50010);
        let (port, token) = pool.allocate_even(true, now, &mut rand::rng()).expect("even pair free");
        assert_eq!(port % 2, 0);
        let token = token.expect("reservation requested");
        assert_eq!(pool.free_ports(), 8);
        assert_eq!(pool.claim(&token, now + Duration::from_secs(29)), Some(port + 1));
        assert_eq!(pool.claim(&token, now), None, "a token claims once");

        let (_, token) = pool.allocate_even(true, now, &mut rand::rng()).expect("another pair");
        let token = token.expect("reservation requested");
        pool.expire_reservations(now + RESERVATION_LIFETIME);
        assert_eq!(pool.claim(&token, now + RESERVATION_LIFETIME), None);
        // 10 ports: two even ports and a claimed reservation are in use; the
        // expired reservation's port is free again.
        assert_eq!(pool.free_ports(), 7);
    }

    #[test]
    fn a_released_even_port_is_not_offered_again_first() {
        // The relay driver returns a port another program holds and asks
        // again; the pool must move on, or every EVEN-PORT Allocate fails
        // while that one port stays taken.
        let now = crate::io::clock::now();
        let mut pool = new_pool(50000, 50009);
        let (first, _) = pool.allocate_even(false, now, &mut rand::rng()).expect("even free");
        pool.release(first);
        let (second, _) = pool.allocate_even(false, now, &mut rand::rng()).expect("even free");
        assert_ne!(second, first);
        pool.release(second);
        let mut offered = vec![first, second];
        while offered.len() < 6 {
            let (port, _) = pool.allocate_even(false, now, &mut rand::rng()).expect("even free");
            pool.release(port);
            offered.push(port);
        }
        // The search wraps around the range, past the top even port.
        assert_eq!(offered, [50000, 50002, 50004, 50006, 50008, 50000]);
    }

    #[test]
    fn stale_queue_entries_are_skipped() {
        let now = crate::io::clock::now();
        let mut pool = new_pool(50000, 50003);
        let (even, _) = pool.allocate_even(false, now, &mut rand::rng()).expect("even free");
        let mut seen = vec![even];
        while let Some(port) = pool.allocate() {
            seen.push(port);
        }
        seen.sort_unstable();
        assert_eq!(seen, [50000, 50001, 50002, 50003]);
    }
}
