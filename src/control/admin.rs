//! The admin API (`/api/v1`, JSON, behind the token), the metrics endpoint
//! and the health probes.
//!
//! Every answer about allocations comes from the workers through their
//! command queues: each worker answers between two loop turns with a page
//! of its own, and the pages are merged here. Nothing here holds a lock a
//! worker takes, and an answer that does not come in time is a 503, not a
//! wait.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::token::{Gate, Refusal};
use super::{Context, api, dashboard};
use crate::io::clock;
use crate::io::commands::Command;
use crate::proto::Transport;
use crate::proto::server::{AllocationListing, AllocationQuery, AllocationSummary, Order};
use crate::telemetry::metrics::{self, AdminCounters};

/// The largest request body read; every request of the API is small.
pub const MAX_BODY: usize = 64 * 1024;
/// Allocations per page by default, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// How long a worker may take to answer a command before the request gets
/// a 503: a worker answers between loop turns, well within this.
const WORKER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/healthz` waits for every worker to turn its loop once.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Rates remembered per allocation, at most; past this they start over.
const MAX_RATES: usize = 200_000;
/// The least time an allocation's rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// When an allocation had relayed how many bytes.
type Sample = (Instant, u64);

struct Admin {
    context: Arc<Context>,
    gate: Gate,
    /// Two samples of each listed allocation's bytes, for its rate.
    rates: Mutex<HashMap<u64, (Sample, Sample)>>,
    /// The names revoked through the API; every worker holds the same.
    revoked: Mutex<BTreeSet<String>>,
}

/// The metrics listener: `/metrics` and the probes, no token.
pub fn metrics_router(context: Arc<Context>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_open))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(Arc::new(admin(context)))
}

/// The admin listener: the API and `/metrics` behind the token, the
/// probes and the dashboard's page (which asks for the token) without.
pub fn router(context: Arc<Context>) -> Router {
    let v1 = |path: &str| format!("{}{path}", api::PREFIX);
    Router::new()
        .route("/", get(dashboard::page))
        .route(&v1("/status"), get(status))
        .route(&v1("/allocations"), get(allocations))
        .route(&v1("/allocations/{id}"), get(allocation).delete(end_allocation))
        .route(&v1("/revocations"), get(revocations).post(revoke))
        .route(&v1("/revocations/{name}"), delete(unrevoke))
        .route(&v1("/drain"), post(drain))
        .route(&v1("/reload"), post(reload))
        .route(&v1("/log"), put(log_level))
        .route("/metrics", get(metrics_guarded))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(admin(context)))
}

fn admin(context: Arc<Context>) -> Admin {
    Admin { context, gate: Gate::default(), rates: Mutex::default(), revoked: Mutex::default() }
}

type Shared = State<Arc<Admin>>;

/// A request that carried the token in force, and where it came from: a
/// handler that takes one runs for those only.
struct Operator {
    admin: Arc<Admin>,
    peer: SocketAddr,
}

impl FromRequestParts<Arc<Admin>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, admin: &Arc<Admin>) -> Result<Self, Response> {
        let Some(&ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            // `http::serve` puts it on every request.
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "no client address"));
        };
        admin.authorize(&parts.headers, peer)?;
        Ok(Self { admin: Arc::clone(admin), peer })
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(api::Error { error: message.into() })).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, format!("no such path; the API is under {}", api::PREFIX))
}

impl Admin {
    /// Lets the request in if it carries the token in force.
    fn authorize(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Response> {
        let token = self.context.lifecycle.admin_token();
        match self.gate.check(token.as_ref(), headers, peer.ip(), clock::now()) {
            Ok(()) => Ok(()),
            Err(Refusal::Unauthorized) => {
                let mut response =
                    error(StatusCode::UNAUTHORIZED, "this needs the admin token: Authorization: Bearer TOKEN");
                response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
                Err(response)
            }
            Err(Refusal::TooManyFailures) => {
                warn!(source = %peer.ip(), "admin API: too many wrong tokens from this source; refusing it for now");
                Err(error(StatusCode::TOO_MANY_REQUESTS, "too many wrong tokens from this address; wait a minute"))
            }
        }
    }

    fn counters(&self) -> AdminCounters {
        AdminCounters {
            unauthorized: self.gate.refused.load(Ordering::Relaxed),
            rate_limited: self.gate.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// Sends the command `make` builds to `worker` and awaits its answer.
    async fn ask<T>(&self, worker: usize, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Response> {
        let (reply, answer) = oneshot::channel();
        self.context
            .workers
            .send(worker, make(reply))
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        match tokio::time::timeout(WORKER_ANSWER_TIMEOUT, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            // The worker stopped (shutdown), or is wedged.
            _ => Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("worker {worker} did not answer"))),
        }
    }

    /// The same command to every worker, answers in worker order.
    async fn ask_all<T>(&self, make: impl Fn(oneshot::Sender<T>) -> Command) -> Result<Vec<T>, Response> {
        let mut answers = Vec::new();
        for worker in 0..self.context.workers.count() {
            answers.push(self.ask(worker, &make).await?);
        }
        Ok(answers)
    }

    /// The worker that holds allocation `serial` (see `proto::server::admin`).
    fn worker_of(&self, serial: u64) -> usize {
        (serial % self.context.workers.count() as u64) as usize
    }

    fn to_api(&self, summary: &AllocationSummary, now: Instant) -> api::Allocation {
        let t = summary.traffic;
        let bytes = t.bytes_to_peer.saturating_add(t.bytes_to_client);
        let rate_bps = {
            let mut rates = lock(&self.rates);
            if rates.len() >= MAX_RATES {
                rates.clear();
            }
            // Two samples, the newer replaced once RATE_WINDOW old and the
            // older taking its place: the rate is over 5 to 10 s, however
            // many listings ask and however often.
            let created = (now.checked_sub(summary.age).unwrap_or(now), 0);
            let samples = rates.entry(summary.serial).or_insert((created, created));
            if now.saturating_duration_since(samples.1.0) >= RATE_WINDOW {
                *samples = (samples.1, (now, bytes));
            }
            let (at, earlier) = samples.0;
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 { (bytes.saturating_sub(earlier) as f64 / secs) as u64 } else { 0 }
        };
        api::Allocation {
            id: summary.serial,
            user: summary.user.to_string(),
            realm: self.context.realm.clone(),
            client: summary.tuple.client,
            server: summary.tuple.server,
            transport: summary.tuple.transport.as_str().into(),
            relay_transport: if summary.tcp { "tcp" } else { "udp" }.into(),
            relayed: summary.relayed.clone(),
            age_secs: summary.age.as_secs(),
            remaining_secs: summary.remaining.as_secs(),
            permissions: summary.permissions,
            channels: summary.channels,
            packets_to_peer: t.packets_to_peer,
            bytes_to_peer: t.bytes_to_peer,
            packets_to_client: t.packets_to_client,
            bytes_to_client: t.bytes_to_client,
            rate_bps,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // What a panicking holder left is still a map or a set.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A JSON body, or the 4xx that says what is wrong with it.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Response> {
    let body = body.map_err(|rejection| error(rejection.status(), rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

macro_rules! attempt {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(response) => return response,
        }
    };
}

async fn metrics_open(State(admin): Shared) -> Response {
    metrics_text(&admin)
}

async fn metrics_guarded(Operator { admin, .. }: Operator) -> Response {
    metrics_text(&admin)
}

fn metrics_text(admin: &Admin) -> Response {
    let text = metrics::render(&admin.context.metrics.snapshot(), &admin.counters());
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// Every worker's loop turns: each is woken, and must finish a turn within
/// [`HEALTH_TIMEOUT`].
async fn healthz(State(admin): Shared) -> Response {
    let liveness = admin.context.workers.liveness();
    let before = liveness.heartbeats();
    liveness.wake_all();
    let deadline = clock::now() + HEALTH_TIMEOUT;
    loop {
        match liveness.turned_since(&before) {
            Ok(()) => return (StatusCode::OK, "ok\n").into_response(),
            Err(worker) if clock::now() >= deadline => {
                let message = format!("worker {worker} has not turned its loop in {HEALTH_TIMEOUT:?}\n");
                return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Listening and taking new allocations: not draining, not stopping.
async fn readyz(State(admin): Shared) -> Response {
    if admin.context.metrics.snapshot().draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn status(Operator { admin, .. }: Operator) -> Response {
    let snapshot = admin.context.metrics.snapshot();
    let liveness = admin.context.workers.liveness();
    let now = clock::now();
    let workers = liveness
        .heartbeats()
        .into_iter()
        .zip(liveness.since_last_turns(now))
        .enumerate()
        .map(|(id, (turns, since))| api::WorkerStatus {
            id,
            turns,
            last_turn_ms_ago: u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    let server = &snapshot.counters.server;
    let dropped = [
        ("no_permission", server.dropped_no_permission),
        ("no_allocation_or_channel", server.dropped_client_data),
        ("over_bandwidth", server.over_bandwidth),
        ("client_queue_full", snapshot.counters.io.tcp_queue_drops),
    ]
    .into_iter()
    .map(|(reason, packets)| api::Dropped { reason: reason.into(), packets })
    .collect();
    Json(api::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: now.saturating_duration_since(admin.context.started).as_secs(),
        started: admin.context.started_unix,
        draining: snapshot.draining,
        config_generation: snapshot.reloads.generation,
        config_reload_failures: snapshot.reloads.failures,
        allocations: snapshot.allocations,
        connections: snapshot.connections,
        workers,
        relayed_packets_to_peer: server.relayed_to_peer,
        relayed_packets_to_client: server.relayed_to_client,
        relayed_bytes_to_peer: server.relayed_bytes_to_peer,
        relayed_bytes_to_client: server.relayed_bytes_to_client,
        allocations_created: server.allocations_created,
        auth_failures: server.auth_failures,
        dropped,
        revoked: lock(&admin.revoked).len(),
    })
    .into_response()
}

/// The query of `GET /api/v1/allocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    user: Option<String>,
    client_ip: Option<IpAddr>,
    transport: Option<String>,
    /// `id` (oldest first, the default) or `traffic` (busiest first).
    order: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

impl ListParams {
    fn query(self) -> Result<AllocationQuery, String> {
        let transport = match self.transport.as_deref() {
            None => None,
            Some("udp") => Some(Transport::Udp),
            Some("tcp") => Some(Transport::Tcp),
            Some("tls") => Some(Transport::Tls),
            Some(other) => return Err(format!("transport {other:?}: one of udp, tcp, tls")),
        };
        let order = match self.order.as_deref() {
            None | Some("id") => Order::Serial,
            Some("traffic") => Order::Traffic,
            Some(other) => return Err(format!("order {other:?}: id or traffic")),
        };
        if order == Order::Traffic && self.after.is_some() {
            return Err("after pages the oldest-first order only".into());
        }
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(format!("limit {limit}: from 1 to {MAX_PAGE}"));
        }
        Ok(AllocationQuery { user: self.user, client_ip: self.client_ip, transport, order, after: self.after, limit })
    }
}

async fn allocations(Operator { admin, .. }: Operator, params: Result<Query<ListParams>, QueryRejection>) -> Response {
    let params = attempt!(params.map_err(|rejection| error(StatusCode::BAD_REQUEST, rejection.body_text())));
    let query = attempt!(params.0.query().map_err(|message| error(StatusCode::BAD_REQUEST, message)));
    let listings: Vec<AllocationListing> =
        attempt!(admin.ask_all(|reply| Command::Allocations { query: query.clone(), reply }).await);
    let matching = listings.iter().map(|listing| listing.matching).sum();
    let mut page: Vec<AllocationSummary> = listings.into_iter().flat_map(|listing| listing.page).collect();
    match query.order {
        Order::Serial => page.sort_unstable_by_key(|a| a.serial),
        Order::Traffic => page.sort_unstable_by_key(|a| {
            (u64::MAX - a.traffic.bytes_to_peer.saturating_add(a.traffic.bytes_to_client), a.serial)
        }),
    }
    page.truncate(query.limit);
    let next = (query.order == Order::Serial && page.len() == query.limit).then(|| page.last().map(|a| a.serial));
    let now = clock::now();
    let allocations = page.iter().map(|summary| admin.to_api(summary, now)).collect();
    Json(api::AllocationPage { matching, allocations, next: next.flatten() }).into_response()
}

async fn allocation(Operator { admin, .. }: Operator, Path(id): Path<u64>) -> Response {
    let query = AllocationQuery { after: id.checked_sub(1), limit: 1, ..AllocationQuery::default() };
    let listing = attempt!(admin.ask(admin.worker_of(id), |reply| Command::Allocations { query, reply }).await);
    match listing.page.first() {
        Some(summary) if summary.serial == id => Json(admin.to_api(summary, clock::now())).into_response(),
        _ => error(StatusCode::NOT_FOUND, format!("no allocation {id}")),
    }
}

async fn end_allocation(Operator { admin, peer }: Operator, Path(id): Path<u64>) -> Response {
    let ended = attempt!(admin.ask(admin.worker_of(id), |reply| Command::End { serial: id, reply }).await);
    if ended {
        info!(allocation = id, source = %peer.ip(), "allocation ended through the admin API");
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no allocation {id}"))
    }
}

async fn revocations(Operator { admin, .. }: Operator) -> Response {
    Json(api::Revocations { names: lock(&admin.revoked).iter().cloned().collect() }).into_response()
}

async fn revoke(Operator { admin, peer }: Operator, body: Result<Bytes, BytesRejection>) -> Response {
    let api::Revoke { name } = attempt!(parse(body));
    let answers = attempt!(admin.ask_all(|reply| Command::Revoke { name: name.clone(), reply }).await);
    let mut ended = 0;
    for answer in answers {
        match answer {
            Ok(n) => ended += n,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        }
    }
    lock(&admin.revoked).insert(name.clone());
    info!(name, allocations_ended = ended, source = %peer.ip(), "revoked through the admin API");
    Json(api::Revoked { name, allocations_ended: ended }).into_response()
}

async fn unrevoke(Operator { admin, peer }: Operator, Path(name): Path<String>) -> Response {
    let answers = attempt!(admin.ask_all(|reply| Command::Unrevoke { name: name.clone(), reply }).await);
    lock(&admin.revoked).remove(&name);
    if answers.contains(&true) {
        info!(name, source = %peer.ip(), "revocation lifted through the admin API");
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("{name:?} is not revoked"))
    }
}

async fn drain(Operator { admin, peer }: Operator, body: Result<Bytes, BytesRejection>) -> Response {
    // No body at all is a drain with the configured deadline.
    let request: api::Drain = match &body {
        Ok(bytes) if bytes.is_empty() => api::Drain::default(),
        _ => attempt!(parse(body)),
    };
    info!(source = %peer.ip(), deadline_secs = ?request.deadline_secs, "drain asked for through the admin API");
    let deadline = admin.context.lifecycle.drain(request.deadline_secs.map(Duration::from_secs));
    let draining = api::Draining {
        allocations: admin.context.metrics.allocations(),
        deadline_secs: deadline.map(|d| d.as_secs()),
    };
    (StatusCode::ACCEPTED, Json(draining)).into_response()
}

async fn reload(Operator { admin, peer }: Operator) -> Response {
    info!(source = %peer.ip(), "reload asked for through the admin API");
    // A reload reads files and waits for a reload in progress.
    let lifecycle = Arc::clone(&admin.context.lifecycle);
    match tokio::task::spawn_blocking(move || lifecycle.reload()).await {
        Ok(Ok(reloaded)) => Json(reloaded).into_response(),
        Ok(Err(message)) => error(StatusCode::UNPROCESSABLE_ENTITY, message),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the reload failed; see the log"),
    }
}

async fn log_level(Operator { admin, peer }: Operator, body: Result<Bytes, BytesRejection>) -> Response {
    let request: api::Log = attempt!(parse(body));
    admin.context.lifecycle.set_log_level(request.level);
    info!(level = %request.level, source = %peer.ip(), "log level set through the admin API until the next reload");
    Json(request).into_response()
}
