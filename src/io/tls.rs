//! TLS for client connections (`turns:`, RFC 8656 §3.1; STUN over TLS, RFC
//! 8489 §6.2.2): the certificate store, reloaded on SIGHUP, and the glue that
//! moves bytes between a nonblocking TCP socket and a rustls
//! [`ServerConnection`]. Once decrypted, a TLS stream is framed and served
//! exactly like a TCP one (`tcp.rs`); this module decides nothing about STUN.
//!
//! ALPN (RFC 7443): the server offers `stun.turn` and `stun.nat-discovery`.
//! A client that sends no ALPN extension is served; a client that offers only
//! other protocols fails the handshake with a `no_application_protocol`
//! alert, which is what rustls does when the lists do not overlap.
//!
//! Only TLS 1.2 and 1.3 are enabled; the crypto provider is `ring`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol ID of TURN (RFC 7443 §6).
pub const ALPN_TURN: &[u8] = b"stun.turn";
/// ALPN protocol ID of STUN NAT discovery (RFC 7443 §6).
pub const ALPN_STUN: &[u8] = b"stun.nat-discovery";

/// TLS records read from one connection in one call without any plaintext
/// coming out, before the connection is treated as abusive. A record is at
/// most about 16 KiB, so this allows a megabyte or more of handshake, alerts
/// and empty records, far beyond what any honest client sends in one go.
const RECORDS_WITHOUT_DATA: usize = 256;

/// Why a certificate chain or private key cannot be used. The message names
/// the file; [`TlsError::key`] names the configuration key it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {}: {source}", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot read private key {}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("private key {} does not belong to certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate {} is not usable: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("private key {} is not usable: {source}", path.display())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// The configuration key the failing file was given under.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Certificate { .. } | Self::BadCertificate { .. } | Self::KeyMismatch { .. } => "tls.cert",
            Self::Key { .. } | Self::BadKey { .. } => "tls.key",
        }
    }
}

/// Reads a PEM certificate chain and private key and builds the server
/// configuration: TLS 1.2 and 1.3, no client certificates, our ALPN IDs.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate { path: cert.to_owned(), source })?;
    if chain.is_empty() {
        let source = rustls::pki_types::pem::Error::NoItemsFound;
        return Err(TlsError::Certificate { path: cert.to_owned(), source });
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key.to_owned(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::BadKey { path: key.to_owned(), source })?;
    let mut config = builder.with_no_client_auth().with_single_cert(chain, private_key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch { cert: cert.to_owned(), key: key.to_owned() },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsError::BadCertificate { path: cert.to_owned(), source: e }
        }
        other => TlsError::BadKey { path: key.to_owned(), source: other },
    })?;
    config.alpn_protocols = vec![ALPN_TURN.to_vec(), ALPN_STUN.to_vec()];
    Ok(Arc::new(config))
}

/// The current server configuration, shared by the workers and replaced on
/// reload. Workers keep their own `Arc` and compare generations before each
/// accept, so the lock is taken only after a reload, never per packet.
pub struct TlsStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    generation: AtomicU64,
}

impl TlsStore {
    /// Loads the certificate and key for the first time.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
            generation: AtomicU64::new(0),
        })
    }

    /// Reads the files again. On success new handshakes use the new
    /// certificate; on failure the old one stays and the error is returned.
    /// Established connections are not touched either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// How many reloads have succeeded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The paths, for logs.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }

    /// The configuration in force and its generation.
    pub fn current(&self) -> (u64, Arc<ServerConfig>) {
        let config = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Read under the lock, so the generation is never older than the config.
        (self.generation(), Arc::clone(&config))
    }
}

/// A worker's view of the store: its own `Arc` to the configuration in force.
pub struct TlsAcceptor {
    store: Arc<TlsStore>,
    config: Arc<ServerConfig>,
    generation: u64,
}

impl TlsAcceptor {
    pub fn new(store: Arc<TlsStore>) -> Self {
        let (generation, config) = store.current();
        Self { store, config, generation }
    }

    /// A server-side TLS state machine for a new connection, with the
    /// configuration of the latest successful reload.
    pub fn accept(&mut self) -> Result<ServerConnection, rustls::Error> {
        if self.store.generation() != self.generation {
            (self.generation, self.config) = self.store.current();
        }
        let mut connection = ServerConnection::new(Arc::clone(&self.config))?;
        // `write` hands rustls one message at a time and only once the last
        // one is on the socket, which bounds its buffer; rustls' own limit
        // (64 KiB) could otherwise split a maximal STUN message.
        connection.set_buffer_limit(None);
        Ok(connection)
    }
}

/// Reads decrypted bytes into `buf`, with the semantics of `Read::read` on
/// a nonblocking socket: `Ok(0)` at the end of the stream (close_notify or
/// TCP FIN), `WouldBlock` when the socket has nothing more. Handshake
/// messages and alerts that the records read call for are written on the
/// way. A TLS protocol error comes back as `InvalidData`, after the alert
/// that tells the client was queued and, as far as the socket takes it, sent.
pub(super) fn read(tls: &mut ServerConnection, socket: &mut mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    for _ in 0..RECORDS_WITHOUT_DATA {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The TCP stream ended without close_notify: an end all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match tls.read_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let processed = tls.process_new_packets();
        write_pending(tls, socket)?;
        if let Err(e) = processed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "too many TLS records without application data"))
}

/// Encrypts `message` (one STUN message or ChannelData frame, or a chunk of
/// an RFC 6062 data connection's byte stream) into records of its own and
/// writes them to the socket until it would block.
///
/// One message per record, never several: coturn's clients (and, by the
/// look of it, others written against coturn) read one message per TLS
/// record and drop what follows it in the same record. The byte stream is
/// the same either way.
///
/// A new message is taken only once the records of the previous one have
/// reached the socket, so rustls holds at most one message and the write
/// queue in `tcp.rs` stays the one measure of backlog. `WouldBlock` when
/// the socket has not taken the previous message yet.
pub(super) fn write(tls: &mut ServerConnection, socket: &mut mio::net::TcpStream, message: &[u8]) -> io::Result<usize> {
    write_pending(tls, socket)?;
    if tls.wants_write() {
        return Err(io::Error::from(io::ErrorKind::WouldBlock));
    }
    let taken = tls.writer().write(message)?;
    write_pending(tls, socket)?;
    if taken == 0 && !message.is_empty() {
        return Err(io::Error::from(io::ErrorKind::WouldBlock));
    }
    Ok(taken)
}

/// Writes queued TLS records until the socket would block.
pub(super) fn write_pending(tls: &mut ServerConnection, socket: &mut mio::net::TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_file_and_the_key() {
        let dir = std::env::temp_dir();
        let missing = dir.join("tern-no-such-cert.pem");
        let error = server_config(&missing, &missing).expect_err("no such file");
        assert_eq!(error.key(), "tls.cert");
        assert!(error.to_string().contains("tern-no-such-cert.pem"), "{error}");
    }
}
