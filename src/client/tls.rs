//! The client side of TLS for the bundled tools (`tern stun --tls`,
//! `tern turn --tls`), so operators can probe a `turns:` URL: which
//! certificates to trust, the name to send as SNI and check the certificate
//! against, and which ALPN ID to offer (RFC 7443).
//!
//! Trust is the system's roots by default, one PEM file with `--tls-ca`, or
//! nothing at all with `--insecure` (signatures are still checked, so the
//! handshake is real, but anyone's certificate is accepted: for testing).

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};

pub use crate::io::tls::{ALPN_STUN, ALPN_TURN};

/// The `turns:`/`stuns:` port (RFC 8656 §18, RFC 8489 §18.4).
pub const DEFAULT_TLS_PORT: u16 = 5349;

/// How the client should set up TLS.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Name sent as SNI and matched against the certificate; an IP address
    /// is matched against the certificate's IP addresses and sends no SNI.
    pub server_name: String,
    /// PEM file of the certificates to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Accept any certificate (testing only).
    pub insecure: bool,
    /// ALPN IDs to offer, most preferred first; empty offers none.
    pub alpn: Vec<Vec<u8>>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("cannot read CA certificates {}: {source}", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no usable CA certificate in {}", path.display())]
    NoCa { path: PathBuf },
    #[error("no trusted root certificates found on this system; give --tls-ca FILE")]
    NoSystemRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// A handshake that failed for a TLS reason (an alert, a certificate), kept
/// typed inside the `io::Error` so a caller can tell which
/// ([`handshake_error`]).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {0}")]
pub struct HandshakeError(pub rustls::Error);

/// The TLS reason a connection failed, if that was the reason.
pub fn handshake_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<HandshakeError>()).map(|e| &e.0)
}

/// A ready TLS client configuration for one server name.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl TlsClient {
    pub fn new(options: &TlsOptions) -> Result<Self, TlsClientError> {
        let server_name = server_name_of(options)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let mut config = if options.insecure {
            let verifier = AcceptAnyCertificate(provider.signature_verification_algorithms);
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        } else {
            builder.with_root_certificates(roots(options)?).with_no_client_auth()
        };
        config.alpn_protocols = options.alpn.clone();
        Ok(Self { config: Arc::new(config), server_name })
    }

    /// Runs the handshake over a connected stream, within `timeout`.
    pub fn connect(
        &self,
        mut stream: TcpStream,
        timeout: Duration,
    ) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let mut tls = ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // Each pass moves at least one flight; a handshake has at most a few.
        while tls.is_handshaking() {
            match tls.complete_io(&mut stream) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"));
                }
                Err(e) => {
                    let kind = e.kind();
                    let reason = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned();
                    return Err(match reason {
                        Some(reason) => io::Error::new(kind, HandshakeError(reason)),
                        None => io::Error::new(kind, format!("TLS handshake failed: {e}")),
                    });
                }
            }
        }
        Ok(StreamOwned::new(tls, stream))
    }
}

/// Checks a certificate chain a server presented (leaf first) as a
/// handshake with `options` would, but at `at` instead of now, so a caller
/// that got the chain with [`TlsOptions::insecure`] can tell what is wrong
/// with it, and whether it would be right at another time. `options.insecure`
/// is ignored: the point is to check. The outer error is a setup failure
/// (no roots to check against), the inner one the verdict on the chain.
pub fn verify_chain(
    options: &TlsOptions,
    chain: &[CertificateDer<'static>],
    at: UnixTime,
) -> Result<Result<(), rustls::Error>, TlsClientError> {
    let server_name = server_name_of(options)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots(options)?), provider).build()?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Ok(Err(rustls::Error::NoCertificatesPresented));
    };
    Ok(verifier.verify_server_cert(leaf, intermediates, &server_name, &[], at).map(drop))
}

fn server_name_of(options: &TlsOptions) -> Result<ServerName<'static>, TlsClientError> {
    ServerName::try_from(options.server_name.trim_start_matches('[').trim_end_matches(']'))
        .map(|name| name.to_owned())
        .map_err(|_| TlsClientError::ServerName(options.server_name.clone()))
}

/// The certificates `options` trust: its CA file, or the system's roots.
fn roots(options: &TlsOptions) -> Result<RootCertStore, TlsClientError> {
    trusted_roots(options.ca.as_deref())
}

/// The certificates in the PEM file `ca`, or the system's roots.
pub(crate) fn trusted_roots(ca: Option<&Path>) -> Result<RootCertStore, TlsClientError> {
    match ca {
        Some(path) => roots_from_file(path),
        None => system_roots(),
    }
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsClientError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|source| TlsClientError::Ca { path: path.to_owned(), source })?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsClientError::NoCa { path: path.to_owned() });
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsClientError> {
    let mut roots = RootCertStore::empty();
    // Unreadable files among the system's are skipped, as browsers do.
    let (added, _ignored) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(TlsClientError::NoSystemRoots);
    }
    Ok(roots)
}

/// `--insecure`: any certificate for any name, with signatures still checked
/// against the key it carries so the handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The host part of `SERVER[:PORT]` or of a `stun:`/`stuns:`/`turn:`/`turns:`
/// URI, for SNI and certificate checks.
pub fn server_name(text: &str) -> String {
    let text = super::strip_scheme(text).0;
    super::split_host_port(text.split('?').next().unwrap_or(text)).0.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_every_spelling() {
        assert_eq!(server_name("turns:turn.example.com:5349?transport=tcp"), "turn.example.com");
        assert_eq!(server_name("turn.example.com"), "turn.example.com");
        assert_eq!(server_name("turn.example.com:443"), "turn.example.com");
        assert_eq!(server_name("127.0.0.1:5349"), "127.0.0.1");
        assert_eq!(server_name("[::1]:5349"), "::1");
        assert_eq!(server_name("::1"), "::1");
        assert_eq!(server_name("stuns:[2001:db8::1]"), "2001:db8::1");
    }
}
