//! Serving an axum router over HTTP/1.1, in the clear or over TLS, with the
//! bounds an exposed port needs: a cap on connections, a deadline for the
//! TLS handshake and for each request head (slow clients), one for each
//! whole request, and small buffers. Bodies are bounded by the router
//! (`admin::MAX_BODY`).
//!
//! TLS takes the certificate of `[tls]` from the store the workers use, so
//! a reload that gives them a new certificate gives it to the API too; only
//! the ALPN list differs (HTTP/1.1 here, STUN's there).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::io::tls::TlsStore;

/// Connections served at once per listener; more are closed as accepted.
/// A dashboard holds one or two, a scraper one.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head, and how long a kept
/// connection may sit idle before its next one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, body and answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Accepts and serves connections on `listener` until the runtime stops;
/// over TLS with `tls`'s certificate when given.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, name: &'static str, tls: Option<Arc<TlsStore>>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut acceptor = tls.map(HttpTls::new);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: the next connection tries again.
                warn!(error = %e, service = name, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            debug!(%peer, service = name, "connection closed: {MAX_CONNECTIONS} already open");
            continue;
        }
        let guard = Active::enter(&active);
        let router = router.clone();
        let tls = acceptor.as_mut().map(HttpTls::acceptor);
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => serve_connection(stream, router, peer, name).await,
                Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, router, peer, name).await,
                    Ok(Err(e)) => debug!(%peer, service = name, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, service = name, "TLS handshake took too long"),
                },
            }
        });
    }
}

/// Serves the requests of one connection, plain or TLS.
async fn serve_connection<I>(io: I, router: Router, peer: SocketAddr, name: &'static str)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| answer(router.clone(), peer, request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = connection.await {
        debug!(%peer, service = name, error = %e, "connection ended");
    }
}

/// The workers' certificate with HTTP's ALPN, rebuilt when a reload
/// replaced the certificate.
struct HttpTls {
    store: Arc<TlsStore>,
    built: Option<(u64, Arc<ServerConfig>)>,
}

impl HttpTls {
    fn new(store: Arc<TlsStore>) -> Self {
        Self { store, built: None }
    }

    fn acceptor(&mut self) -> tokio_rustls::TlsAcceptor {
        let (generation, workers) = self.store.current();
        let config = match &self.built {
            Some((built, config)) if *built == generation => Arc::clone(config),
            _ => {
                let mut config = ServerConfig::clone(&workers);
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let config = Arc::new(config);
                self.built = Some((generation, Arc::clone(&config)));
                config
            }
        };
        tokio_rustls::TlsAcceptor::from(config)
    }
}

/// One request, with the client's address for the handlers, within
/// [`REQUEST_TIMEOUT`].
async fn answer(
    router: Router,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response, std::convert::Infallible> {
    request.extensions_mut().insert(ConnectInfo(peer));
    match tokio::time::timeout(REQUEST_TIMEOUT, router.oneshot(request)).await {
        Ok(response) => response,
        Err(_) => Ok((StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response()),
    }
}

/// Counts a connection while it is served.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn enter(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(active))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
