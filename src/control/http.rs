//! Serving an axum router over HTTP/1.1 with the bounds an exposed port
//! needs: a cap on connections, a deadline for each request head (slow
//! clients), one for each whole request, and small buffers. Bodies are
//! bounded by the router (`admin::MAX_BODY`).

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
use tower::ServiceExt;
use tracing::{debug, warn};

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

/// Accepts and serves connections on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, name: &'static str) {
    let active = Arc::new(AtomicUsize::new(0));
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
        tokio::spawn(async move {
            let _guard = guard;
            let service =
                hyper::service::service_fn(move |request: Request<Incoming>| answer(router.clone(), peer, request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                debug!(%peer, service = name, error = %e, "connection ended");
            }
        });
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
