//! Alloc mode: an allocation storm. Each slot runs, on a fresh UDP socket
//! (so a fresh 5-tuple): Allocate → 401 → Allocate with credentials →
//! Refresh with LIFETIME 0, then starts over. Slots are state machines in
//! one event loop per thread, so the client is not what limits the rate.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use super::{AllocReport, CpuMeter, LoadConfig, Report};
use crate::client::turn::AuthState;
use crate::io::clock;
use crate::proto::Transport;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, Message, MessageType, MessageWriter, Method, TransactionId};

/// A slot that gets no answer for this long counts a timeout and restarts.
const SLOT_TIMEOUT: Duration = Duration::from_secs(2);
/// After the run, slots get this long to finish the cycle they are in.
const DRAIN: Duration = Duration::from_secs(2);

pub fn run(config: &LoadConfig, concurrency: usize, report: &mut Report) -> Result<(), String> {
    if config.transport != Transport::Udp {
        return Err("alloc mode runs over UDP".into());
    }
    report.mode = format!("allocation storm, {concurrency} in flight");
    let threads = config.threads.clamp(1, concurrency.max(1));
    let meter = CpuMeter::start(config.server_pid)?;
    let started = clock::now();
    let end = started + config.duration;
    let results: Vec<Result<ThreadOutcome, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let slots = concurrency / threads + usize::from(t < concurrency % threads);
                scope.spawn(move || storm_thread(config, slots, end))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("storm thread panicked".into()))).collect()
    });
    let wall = clock::now() - started;
    let mut completed = 0;
    let mut failures = BTreeMap::new();
    for result in results {
        let (done, failed) = result?;
        completed += done;
        for (key, count) in failed {
            *failures.entry(key).or_default() += count;
        }
    }
    report.alloc = Some(AllocReport {
        completed,
        per_second: completed as f64 / config.duration.as_secs_f64().max(1e-9),
        failures,
    });
    report.server_cpu = meter.finish(wall, completed as f64)?;
    Ok(())
}

/// Allocations a storm thread completed, and its failures by cause.
type ThreadOutcome = (u64, BTreeMap<String, u64>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sent Allocate without credentials; expecting 401.
    Challenge,
    /// Sent Allocate with credentials.
    Allocate,
    /// Sent Refresh with LIFETIME 0.
    Delete,
}

struct Slot {
    socket: mio::net::UdpSocket,
    stage: Stage,
    tid: TransactionId,
    deadline: Instant,
}

struct Storm<'a> {
    config: &'a LoadConfig,
    poll: Poll,
    auth: Option<AuthState>,
    completed: u64,
    failures: BTreeMap<String, u64>,
    request: Vec<u8>,
    buf: Vec<u8>,
}

fn storm_thread(config: &LoadConfig, slots: usize, end: Instant) -> Result<ThreadOutcome, String> {
    let mut storm = Storm {
        config,
        poll: Poll::new().map_err(|e| e.to_string())?,
        auth: None,
        completed: 0,
        failures: BTreeMap::new(),
        request: Vec::with_capacity(256),
        buf: vec![0; 2048],
    };
    let mut slots: Vec<Option<Slot>> = (0..slots).map(|_| None).collect();
    for (index, slot) in slots.iter_mut().enumerate() {
        *slot = storm.start(index);
    }
    let mut events = Events::with_capacity(1024);
    let drain_end = end + DRAIN;
    loop {
        let now = clock::now();
        let running = now < end;
        if !running && (now >= drain_end || slots.iter().all(Option::is_none)) {
            break;
        }
        storm
            .poll
            .poll(&mut events, Some(Duration::from_millis(10)))
            .or_else(|e| if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e.to_string()) })?;
        for event in &events {
            let index = event.token().0;
            if let Some(slot) = slots[index].as_mut()
                && storm.receive(slot)
            {
                slots[index] = if running { storm.start(index) } else { None };
            }
        }
        let now = clock::now();
        for (index, slot) in slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|s| now >= s.deadline) {
                *storm.failures.entry("timeout".into()).or_default() += 1;
                *slot = if running { storm.start(index) } else { None };
            } else if slot.is_none() && running {
                *slot = storm.start(index);
            }
        }
    }
    Ok((storm.completed, storm.failures))
}

impl Storm<'_> {
    /// Opens a fresh socket and sends the unauthenticated Allocate.
    fn start(&mut self, index: usize) -> Option<Slot> {
        let any: SocketAddr =
            if self.config.server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let socket = match std::net::UdpSocket::bind(any).and_then(|s| {
            s.connect(self.config.server)?;
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(socket) => socket,
            Err(_) => {
                *self.failures.entry("io".into()).or_default() += 1;
                return None;
            }
        };
        let mut socket = mio::net::UdpSocket::from_std(socket);
        if self.poll.registry().register(&mut socket, Token(index), Interest::READABLE).is_err() {
            *self.failures.entry("io".into()).or_default() += 1;
            return None;
        }
        let mut slot = Slot { socket, stage: Stage::Challenge, tid: TransactionId::random(), deadline: clock::now() };
        self.send(&mut slot, Stage::Challenge);
        Some(slot)
    }

    fn send(&mut self, slot: &mut Slot, stage: Stage) {
        self.request.clear();
        slot.tid = TransactionId::random();
        slot.stage = stage;
        slot.deadline = clock::now() + SLOT_TIMEOUT;
        let method = if stage == Stage::Delete { Method::REFRESH } else { Method::ALLOCATE };
        let mut w = MessageWriter::new(&mut self.request, MessageType::new(method, Class::Request), slot.tid);
        match stage {
            Stage::Delete => {
                w.attr_u32(AttrType::LIFETIME, 0);
            }
            _ => {
                w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            }
        }
        if stage != Stage::Challenge
            && let Some(auth) = &self.auth
        {
            auth.sign(&mut w);
        }
        // A send that fails is counted by the slot's timeout.
        let _ = slot.socket.send(&self.request);
    }

    /// Handles what arrived for a slot; true when the slot's cycle is over.
    fn receive(&mut self, slot: &mut Slot) -> bool {
        loop {
            let n = match slot.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(_) => return false,
            };
            let Ok(message) = Message::parse(&self.buf[..n]) else { continue };
            if message.transaction_id() != slot.tid {
                continue;
            }
            let code =
                message.attribute(AttrType::ERROR_CODE).and_then(|v| attr::read_error_code(v).ok()).map(|e| e.code);
            match (slot.stage, message.class(), code) {
                (Stage::Challenge, Class::Error, Some(401)) | (_, Class::Error, Some(438)) => {
                    let realm = message.attribute(AttrType::REALM).and_then(|r| std::str::from_utf8(r).ok());
                    let nonce = message.attribute(AttrType::NONCE);
                    let (Some(realm), Some(nonce)) = (realm, nonce) else {
                        *self.failures.entry("invalid".into()).or_default() += 1;
                        return true;
                    };
                    let (realm, nonce) = (realm.to_owned(), nonce.to_vec());
                    self.learn(&realm, &nonce);
                    let next = if slot.stage == Stage::Delete { Stage::Delete } else { Stage::Allocate };
                    self.send(slot, next);
                    return false;
                }
                (Stage::Allocate, Class::Success, _) => {
                    self.send(slot, Stage::Delete);
                    return false;
                }
                (Stage::Delete, Class::Success, _) => {
                    self.completed += 1;
                    return true;
                }
                (_, _, code) => {
                    let key = code.map_or_else(|| "invalid".to_owned(), |c| c.to_string());
                    *self.failures.entry(key).or_default() += 1;
                    return true;
                }
            }
        }
    }

    /// Keeps the realm and nonce a challenge gave; the key is computed once.
    fn learn(&mut self, realm: &str, nonce: &[u8]) {
        match &mut self.auth {
            Some(auth) if auth.realm == realm => auth.nonce = nonce.to_vec(),
            _ => {
                // RFC 5389 like a browser: the storm measures allocation
                // churn, and browsers are what it stands in for.
                self.auth = Some(AuthState::legacy(&self.config.credentials, realm, nonce));
            }
        }
    }
}
