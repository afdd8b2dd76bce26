//! The PROXY header that comes first on a connection to a PROXY listener
//! (`io::proxy`): read before anything else, before TLS too; the client it
//! names becomes the connection's client for the core (its 5-tuple, its
//! XOR-MAPPED-ADDRESS, the per-IP caps and rate limits, the logs), and only
//! then is the connection admitted. A connection whose header is missing,
//! broken or late is closed and counted; one from an untrusted peer never
//! gets this far (`connections.rs` closes it as it is accepted).

use tracing::debug;

use super::Worker;
use super::connections::Refused;
use crate::io::proxy::{self, HeaderFailure};
use crate::io::tcp::Closed;
use crate::proto::Now;
use crate::proto::proxy::HeaderError;

impl Worker {
    /// Reads connection `key`'s PROXY header as far as it has arrived;
    /// whether the connection was admitted and is to be served now (the
    /// bytes after the header may already be waiting).
    pub(super) fn read_proxy_header(&mut self, key: usize, now: Now) -> bool {
        let Some(connection) = self.connections.get_mut(key) else { return false };
        let peer = connection.tuple.client;
        let header = match proxy::read_header(connection.stream.socket()) {
            Ok(Some(header)) => header,
            Ok(None) => return false,
            Err(failure) => {
                let counter = match &failure {
                    HeaderFailure::Header(HeaderError::Missing) => &mut self.stats.proxy_missing,
                    HeaderFailure::Header(_) => &mut self.stats.proxy_malformed,
                    HeaderFailure::Eof | HeaderFailure::Io(_) => &mut self.stats.proxy_closed,
                };
                *counter += 1;
                debug!(%peer, error = %failure, "connection closed: no usable PROXY header");
                self.close_connection(key, &Closed::ProxyHeader(failure));
                return false;
            }
        };
        self.stats.proxy_headers += 1;
        if let Some(addresses) = header.addresses {
            connection.tuple.client = addresses.source;
        }
        let tuple = connection.tuple;
        debug!(client = %tuple.client, proxy = %peer, version = header.version.as_str(), "PROXY header read");
        match self.admit(&tuple) {
            Ok(tls) => {
                let Some(connection) = self.connections.get_mut(key) else { return false };
                if let Some(tls) = tls {
                    connection.stream.start_tls(tls);
                }
                connection.admitted = true;
                self.schedule_connection(key, now.instant);
                true
            }
            Err(Refused) => {
                self.close_connection(key, &Closed::Refused);
                false
            }
        }
    }
}
