//! A client transaction's timing (RFC 8489 §6.2.1, §6.2.2), sans-IO.
//!
//! Over UDP a request is retransmitted after RTO, 2·RTO, 4·RTO, ... up to Rc
//! sends, then the client waits Rm·RTO for a last answer. Over TCP and TLS it
//! is sent once and the client waits Ti. Both are cut short by an overall
//! deadline the caller chooses, so a probe never hangs for the RFC's 39.5 s.

use std::time::{Duration, Instant};

/// Initial retransmission timeout (RFC 8489 §6.2.1 recommends 500 ms).
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Requests sent in all, the first included (Rc).
const MAX_SENDS: u32 = 7;
/// Multiple of RTO waited after the last send (Rm).
const LAST_WAIT_FACTOR: u32 = 16;
/// Wait for a response over a reliable transport (Ti).
const RELIABLE_TIMEOUT: Duration = Duration::from_millis(39_500);

/// What to do when the transaction's timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Send the request again.
    Retransmit,
    /// Give up: no response in time.
    TimedOut,
    /// Nothing yet.
    Wait,
}

#[derive(Clone, Debug)]
pub struct Transaction {
    rto: Duration,
    sends: u32,
    next_send: Option<Instant>,
    deadline: Instant,
}

impl Transaction {
    /// A transaction whose request was just sent at `now`.
    pub fn new(now: Instant, reliable: bool, overall: Duration) -> Self {
        let (next_send, natural_end) = if reliable {
            (None, now + RELIABLE_TIMEOUT)
        } else {
            // RTO·(1 + 2 + ... + 2^(Rc-2)) + Rm·RTO after the first send.
            let schedule = (0..MAX_SENDS - 1).map(|i| INITIAL_RTO * 2u32.pow(i)).sum::<Duration>()
                + INITIAL_RTO * LAST_WAIT_FACTOR;
            (Some(now + INITIAL_RTO), now + schedule)
        };
        Self { rto: INITIAL_RTO, sends: 1, next_send, deadline: natural_end.min(now + overall) }
    }

    /// When the timer next fires.
    pub fn poll_timeout(&self) -> Instant {
        self.next_send.map_or(self.deadline, |next| next.min(self.deadline))
    }

    pub fn handle_timeout(&mut self, now: Instant) -> TimerAction {
        if now >= self.deadline {
            return TimerAction::TimedOut;
        }
        match self.next_send {
            Some(next) if now >= next => {
                self.sends += 1;
                self.rto *= 2;
                self.next_send = (self.sends < MAX_SENDS).then(|| now + self.rto);
                TimerAction::Retransmit
            }
            _ => TimerAction::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_schedule_follows_rfc_8489() {
        let start = crate::io::clock::now();
        let mut transaction = Transaction::new(start, false, Duration::from_secs(60));
        let mut sends_at = vec![Duration::ZERO];
        let gave_up_at = loop {
            let now = transaction.poll_timeout();
            match transaction.handle_timeout(now) {
                TimerAction::Retransmit => sends_at.push(now - start),
                TimerAction::TimedOut => break now,
                TimerAction::Wait => {}
            }
        };
        let ms: Vec<u128> = sends_at.iter().map(Duration::as_millis).collect();
        // RFC 8489 §6.2.1: 0, 500, 1500, 3500, 7500, 15500, 31500; fail at 39500.
        assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!((gave_up_at - start).as_millis(), 39_500);
    }

    #[test]
    fn overall_deadline_cuts_the_schedule_short() {
        let start = crate::io::clock::now();
        let mut transaction = Transaction::new(start, false, Duration::from_secs(2));
        assert_eq!(transaction.handle_timeout(start + Duration::from_millis(500)), TimerAction::Retransmit);
        assert_eq!(transaction.handle_timeout(start + Duration::from_millis(1500)), TimerAction::Retransmit);
        assert_eq!(transaction.poll_timeout(), start + Duration::from_secs(2));
        assert_eq!(transaction.handle_timeout(start + Duration::from_secs(2)), TimerAction::TimedOut);
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let start = crate::io::clock::now();
        let mut transaction = Transaction::new(start, true, Duration::from_secs(5));
        assert_eq!(transaction.poll_timeout(), start + Duration::from_secs(5));
        assert_eq!(transaction.handle_timeout(start + Duration::from_secs(4)), TimerAction::Wait);
        assert_eq!(transaction.handle_timeout(start + Duration::from_secs(5)), TimerAction::TimedOut);
    }
}
