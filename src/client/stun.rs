//! `tern stun`: sends Binding requests and reports the mapped address and
//! round-trip time of each (RFC 8489 §3, §6).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use super::tls::TlsClient;
use super::{ClientSocket, TransactError};
use crate::io::clock;
use crate::proto::Transport;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, Message, MessageType, MessageWriter, Method, TransactionId};

/// What to probe and how.
#[derive(Clone, Debug)]
pub struct StunProbe {
    pub server: SocketAddr,
    pub transport: Transport,
    /// Required over TLS.
    pub tls: Option<TlsClient>,
    pub count: u32,
    pub timeout: Duration,
    pub interval: Duration,
}

/// The outcome of one Binding transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingResult {
    Mapped { address: SocketAddr, rtt: Duration },
    ErrorResponse { code: u16, reason: String },
    Invalid(String),
    Timeout,
}

impl StunProbe {
    /// Runs the probe, printing a line per request and a summary to `out`.
    /// Returns true when every request got a mapped address.
    pub fn run(&self, out: &mut impl Write) -> std::io::Result<bool> {
        let mut socket = match ClientSocket::connect(self.server, self.transport, self.tls.as_ref(), self.timeout) {
            Ok(socket) => {
                if let Some(version) = socket.tls_version() {
                    let alpn = socket.alpn_protocol().map(String::from_utf8_lossy);
                    writeln!(out, "{}: {version:?}, ALPN {}", self.server, alpn.as_deref().unwrap_or("none"))?;
                }
                socket
            }
            Err(e) => {
                writeln!(out, "cannot reach {} over {}: {e}", self.server, self.transport)?;
                return Ok(false);
            }
        };
        let mut rtts = Vec::new();
        for i in 0..self.count {
            if i > 0 {
                std::thread::sleep(self.interval);
            }
            match binding(&mut socket, self.timeout)? {
                BindingResult::Mapped { address, rtt } => {
                    writeln!(
                        out,
                        "{} ({}): mapped address {address}, rtt {:.3} ms",
                        self.server,
                        self.transport,
                        rtt.as_secs_f64() * 1e3
                    )?;
                    rtts.push(rtt);
                }
                BindingResult::ErrorResponse { code, reason } => {
                    writeln!(out, "{} ({}): error response {code} {reason}", self.server, self.transport)?;
                }
                BindingResult::Invalid(why) => {
                    writeln!(out, "{} ({}): invalid response: {why}", self.server, self.transport)?;
                }
                BindingResult::Timeout => {
                    writeln!(
                        out,
                        "{} ({}): no response within {}",
                        self.server,
                        self.transport,
                        humantime::format_duration(self.timeout)
                    )?;
                }
            }
        }
        if self.count > 1 {
            let answered = rtts.len();
            write!(out, "{} requests, {answered} mapped", self.count)?;
            if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
                let avg = rtts.iter().sum::<Duration>() / answered as u32;
                let ms = |d: &Duration| d.as_secs_f64() * 1e3;
                write!(out, ", rtt min/avg/max {:.3}/{:.3}/{:.3} ms", ms(min), ms(&avg), ms(max))?;
            }
            writeln!(out)?;
        }
        Ok(rtts.len() == self.count as usize)
    }
}

/// One Binding transaction on `socket`.
pub fn binding(socket: &mut ClientSocket, timeout: Duration) -> std::io::Result<BindingResult> {
    binding_exchange(socket, timeout).map(|exchange| exchange.result)
}

/// A Binding transaction with its bytes, for callers that look at more than
/// the mapped address (its size, SOFTWARE).
#[derive(Clone, Debug)]
pub struct BindingExchange {
    pub result: BindingResult,
    /// The request's size: a bare header, the smallest request there is.
    pub request_len: usize,
    /// The response, empty after a timeout.
    pub response: Vec<u8>,
}

/// One Binding transaction on `socket`, keeping the bytes.
pub fn binding_exchange(socket: &mut ClientSocket, timeout: Duration) -> std::io::Result<BindingExchange> {
    let mut request = Vec::new();
    MessageWriter::new(&mut request, MessageType::new(Method::BINDING, Class::Request), TransactionId::random());
    let started = clock::now();
    let mut response = Vec::new();
    let result = match socket.transact(&request, timeout, &mut response, |_| {}) {
        Ok(()) => read_binding_response(&response, clock::now() - started),
        Err(TransactError::Timeout(_)) => {
            response.clear();
            BindingResult::Timeout
        }
        Err(TransactError::Io(e)) => return Err(e),
    };
    Ok(BindingExchange { result, request_len: request.len(), response })
}

fn read_binding_response(bytes: &[u8], rtt: Duration) -> BindingResult {
    let message = match Message::parse(bytes) {
        Ok(message) => message,
        Err(e) => return BindingResult::Invalid(e.to_string()),
    };
    match message.class() {
        Class::Success => {
            let mapped = match message.attribute(AttrType::XOR_MAPPED_ADDRESS) {
                Some(value) => attr::read_xor_address(value, &message.transaction_id()),
                None => match message.attribute(AttrType::MAPPED_ADDRESS) {
                    Some(value) => attr::read_address(value),
                    None => return BindingResult::Invalid("no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS".into()),
                },
            };
            match mapped {
                Ok(address) => BindingResult::Mapped { address, rtt },
                Err(e) => BindingResult::Invalid(e.to_string()),
            }
        }
        Class::Error => match message.attribute(AttrType::ERROR_CODE).map(attr::read_error_code) {
            Some(Ok(error)) => BindingResult::ErrorResponse { code: error.code, reason: error.reason.to_owned() },
            _ => BindingResult::Invalid("error response without a valid ERROR-CODE".into()),
        },
        _ => BindingResult::Invalid("not a response".into()),
    }
}
