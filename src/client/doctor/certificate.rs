//! The TLS checks of `tern doctor` for a `turns:` URL: the handshake, the
//! certificate chain, the host name, the expiry date and ALPN (RFC 7443).
//!
//! The chain is fetched with verification off, then judged on its own
//! ([`tls::verify_chain`]), each question apart: trust is asked at a moment
//! inside the certificate's validity, so an expired certificate is still
//! told trusted or not; the name is asked of the leaf alone, so an untrusted
//! one is still told right or wrong for the name. The other checks then run
//! over that connection whatever the certificate's faults, so one report
//! shows everything.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, Error as TlsError};
use x509_parser::extensions::GeneralName;

use super::report::Check;
use crate::client::ClientSocket;
use crate::client::tls::{self, ALPN_TURN, TlsClient, TlsOptions};
use crate::io::clock;

/// Fewer days left than this is a warning: ACME clients renew 30 days
/// before expiry, so a certificate this close to its end has missed
/// renewals.
const EXPIRY_WARNING_DAYS: i64 = 14;
const DAY: i64 = 86_400;

/// What the TLS checks found, and a client to run the other checks with.
pub struct TlsFindings {
    pub checks: Vec<Check>,
    /// `None` when no handshake completed.
    pub client: Option<TlsClient>,
}

/// What the TLS checks need to know.
pub struct TlsTarget<'a> {
    pub addr: SocketAddr,
    /// The name clients check the certificate against (the URL's host, or `--sni`).
    pub name: &'a str,
    /// Trust this PEM file instead of the system's roots.
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
}

/// The facts of the leaf certificate that the report quotes.
struct Leaf {
    not_before: i64,
    not_after: i64,
    subject: String,
    issuer: String,
    self_signed: bool,
    names: Vec<String>,
}

impl TlsTarget<'_> {
    pub fn check(&self) -> TlsFindings {
        let target = self.addr.to_string();
        let mut checks = Vec::new();
        let options = |alpn: Vec<Vec<u8>>, insecure: bool| TlsOptions {
            server_name: self.name.to_owned(),
            ca: self.ca.clone(),
            insecure,
            alpn,
        };
        let client = match TlsClient::new(&options(vec![ALPN_TURN.to_vec()], true)) {
            Ok(client) => client,
            Err(e) => {
                checks.push(Check::fail("tls handshake", &target, e.to_string(), "give --sni a valid host name"));
                return TlsFindings { checks, client: None };
            }
        };
        let (socket, client) = match ClientSocket::open_tls(self.addr, &client, self.timeout) {
            Ok(socket) => (socket, client),
            Err(e) if tls::handshake_error(&e).is_some_and(refuses_alpn) => {
                checks.push(Check::fail(
                    "tls alpn",
                    &target,
                    "the server refused ALPN stun.turn (no_application_protocol)",
                    "another service (a web server?) answers on this port: give tern a port of its own in \
                     tls.listen, or route stun.turn to it",
                ));
                let plain = match TlsClient::new(&options(Vec::new(), true)) {
                    Ok(plain) => plain,
                    Err(e) => return self.unreachable(checks, &e.to_string()),
                };
                match ClientSocket::open_tls(self.addr, &plain, self.timeout) {
                    Ok(socket) => (socket, plain),
                    Err(e) => return self.unreachable(checks, &e.to_string()),
                }
            }
            Err(e) => return self.unreachable(checks, &e.to_string()),
        };
        if checks.is_empty() {
            checks.push(alpn_check(&target, socket.alpn_protocol()));
        }
        let chain: Vec<CertificateDer<'static>> = socket
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let Some(leaf) = chain.first().and_then(|der| read_leaf(der)) else {
            checks.push(Check::fail(
                "tls chain",
                &target,
                "the server sent no certificate tern can read",
                "point tls.cert at a PEM certificate chain, leaf first",
            ));
            return TlsFindings { checks, client: Some(client) };
        };
        checks.push(self.chain_check(&target, &options(Vec::new(), false), &chain, &leaf));
        checks.push(self.name_check(&target, &chain[0], &leaf));
        checks.push(expiry_check(&target, &leaf, clock::unix_secs()));
        TlsFindings { checks, client: Some(client) }
    }

    fn unreachable(&self, mut checks: Vec<Check>, error: &str) -> TlsFindings {
        checks.push(Check::fail(
            "tls handshake",
            self.addr.to_string(),
            error,
            format!(
                "nothing completes a TLS handshake on TCP port {}: check tls.listen, tls.cert and tls.key, and that \
                 the firewall lets TCP {} in",
                self.addr.port(),
                self.addr.port()
            ),
        ));
        TlsFindings { checks, client: None }
    }

    fn chain_check(&self, target: &str, options: &TlsOptions, chain: &[CertificateDer<'static>], leaf: &Leaf) -> Check {
        // Asked inside the validity period, so expiry is its own question.
        let now = i64::try_from(clock::unix_secs()).unwrap_or(i64::MAX);
        let at = now.clamp(leaf.not_before, leaf.not_after);
        let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).unwrap_or(0)));
        let trust = if self.ca.is_some() { "the --tls-ca file" } else { "this system's roots" };
        let verdict = match tls::verify_chain(options, chain, at) {
            Ok(verdict) => verdict,
            Err(e) => return Check::fail("tls chain", target, format!("cannot check: {e}"), "give --tls-ca FILE"),
        };
        match verdict {
            Ok(())
            | Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Check::ok(
                "tls chain",
                target,
                format!("trusted by {trust}: {} certificate(s), issued by {}", chain.len(), leaf.issuer),
            ),
            Err(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) if leaf.self_signed => Check::fail(
                "tls chain",
                target,
                format!("self-signed certificate ({}), not trusted by {trust}", leaf.subject),
                "browsers refuse it: get a certificate from a public CA (ACME: certbot, lego) and point tls.cert at \
                 its full chain; to trust this one here only, give --tls-ca FILE",
            ),
            Err(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) if chain.len() == 1 => Check::fail(
                "tls chain",
                target,
                format!("issued by {}, but the server sends no intermediate certificate", leaf.issuer),
                "point tls.cert at the full chain (fullchain.pem, leaf first), not the leaf alone, and reload tern",
            ),
            Err(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) => Check::fail(
                "tls chain",
                target,
                format!("issued by {}, which {trust} do not trust", leaf.issuer),
                "serve a chain that ends at a public CA: check the intermediates in tls.cert",
            ),
            Err(e) => Check::fail(
                "tls chain",
                target,
                format!("{e}"),
                "serve a valid chain from a public CA in tls.cert (leaf first)",
            ),
        }
    }

    fn name_check(&self, target: &str, der: &CertificateDer<'static>, leaf: &Leaf) -> Check {
        let names = if leaf.names.is_empty() { "no names".to_owned() } else { leaf.names.join(", ") };
        let valid = ServerName::try_from(self.name).ok().is_some_and(|name| {
            webpki::EndEntityCert::try_from(der).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
        if valid {
            Check::ok("tls hostname", target, format!("{} is in the certificate ({names})", self.name))
        } else {
            Check::fail(
                "tls hostname",
                target,
                format!("the certificate is for {names}, not {}", self.name),
                format!(
                    "get a certificate that names {} (tls.cert), or give clients a turns: URL with one of its names",
                    self.name
                ),
            )
        }
    }
}

fn refuses_alpn(error: &TlsError) -> bool {
    matches!(error, TlsError::AlertReceived(rustls::AlertDescription::NoApplicationProtocol))
}

fn alpn_check(target: &str, selected: Option<&[u8]>) -> Check {
    match selected {
        Some(ALPN_TURN) => Check::ok("tls alpn", target, "stun.turn (RFC 7443)"),
        None => Check::warn(
            "tls alpn",
            target,
            "the server selected no ALPN protocol when offered stun.turn",
            "RFC 7443: a TURN server should select stun.turn; clients that require it will fail (tern does)",
        ),
        Some(other) => Check::fail(
            "tls alpn",
            target,
            format!("the server selected {:?}, not stun.turn", String::from_utf8_lossy(other)),
            "this port serves another protocol: give tern its own port in tls.listen",
        ),
    }
}

fn expiry_check(target: &str, leaf: &Leaf, now: u64) -> Check {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let date = |secs: i64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
            .to_string()
    };
    let days = (leaf.not_after - now) / DAY;
    if now > leaf.not_after {
        Check::fail(
            "tls expiry",
            target,
            format!("expired {} ({} days ago)", date(leaf.not_after), (now - leaf.not_after) / DAY),
            "renew the certificate, then `systemctl reload tern` (SIGHUP reads tls.cert and tls.key again); run \
             the reload from your ACME client's deploy hook so it cannot happen again",
        )
    } else if now < leaf.not_before {
        Check::fail(
            "tls expiry",
            target,
            format!("not valid before {}", date(leaf.not_before)),
            "the certificate is not valid yet: check the clocks of the server and of this host (NTP)",
        )
    } else if days < EXPIRY_WARNING_DAYS {
        Check::warn(
            "tls expiry",
            target,
            format!("expires {} (in {days} days)", date(leaf.not_after)),
            "renewal is overdue: check your ACME client (certbot renew --dry-run) and that its deploy hook \
             reloads tern",
        )
    } else {
        Check::ok("tls expiry", target, format!("valid until {} ({days} days)", date(leaf.not_after)))
    }
}

fn read_leaf(der: &CertificateDer<'_>) -> Option<Leaf> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_of(bytes).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Leaf {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        names,
    })
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    fn leaf(not_before: i64, not_after: i64) -> Leaf {
        Leaf {
            not_before,
            not_after,
            subject: "CN=turn.example.com".into(),
            issuer: "CN=R11".into(),
            self_signed: false,
            names: vec!["turn.example.com".into()],
        }
    }

    #[test]
    fn expiry_is_ok_then_a_warning_then_a_failure() {
        const NOW: u64 = 1_800_000_000;
        let now = NOW as i64;
        let ok = expiry_check("t", &leaf(now - 10 * DAY, now + 60 * DAY), NOW);
        assert_eq!((ok.status, ok.detail.as_str()), (Status::Ok, "valid until 2027-03-16T08:00:00Z (60 days)"));
        let soon = expiry_check("t", &leaf(now - 80 * DAY, now + 5 * DAY), NOW);
        assert_eq!(soon.status, Status::Warn);
        assert!(soon.detail.contains("in 5 days"), "{}", soon.detail);
        let expired = expiry_check("t", &leaf(now - 90 * DAY, now - 3 * DAY), NOW);
        assert_eq!(expired.status, Status::Fail);
        assert!(expired.detail.contains("3 days ago") && expired.fix.is_some(), "{expired:?}");
        let early = expiry_check("t", &leaf(now + DAY, now + 90 * DAY), NOW);
        assert!(early.detail.starts_with("not valid before"), "{early:?}");
    }

    #[test]
    fn alpn_other_than_stun_turn_is_named() {
        assert_eq!(alpn_check("t", Some(b"stun.turn")).status, Status::Ok);
        assert_eq!(alpn_check("t", None).status, Status::Warn);
        let h2 = alpn_check("t", Some(b"h2"));
        assert!(h2.detail.contains("\"h2\""), "{h2:?}");
    }
}
