//! `tern admin`: a client of the admin API (`crate::control::api`), for an
//! operator at a shell: aligned tables by default, the API's JSON with
//! `--json`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::LogLevel;
use crate::control::api;

/// An error, as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the admin API at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from {url}: {message}")]
    Answer { url: String, message: String },
    #[error("cannot read the CA certificates {path}: {message}")]
    Ca { path: String, message: String },
}

/// Which certificates an `https://` admin URL is checked against.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// The web's roots (webpki-roots), as a browser would.
    WebRoots,
    /// The certificates of this PEM file (a private CA, or the server's own).
    CaFile(&'a Path),
    /// None: anyone who can intercept the connection can read the token.
    Insecure,
}

/// The admin API of one server.
pub struct AdminClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// Filters of `tern admin allocations`.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub user: Option<String>,
    pub client_ip: Option<String>,
    pub transport: Option<String>,
    /// Busiest first rather than oldest first.
    pub by_traffic: bool,
    pub limit: Option<usize>,
}

impl AdminClient {
    /// `url` is the listener's base, e.g. `http://127.0.0.1:9642`, or
    /// `https://…` with `admin.tls`, checked as `trust` says.
    pub fn new(url: &str, token: &str, timeout: Duration, trust: Trust<'_>) -> Result<Self, AdminError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        match trust {
            Trust::WebRoots => {}
            Trust::CaFile(path) => {
                let ca = |message: String| AdminError::Ca { path: path.display().to_string(), message };
                let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
                let certs = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                        Ok(_) => None,
                        Err(e) => Some(Err(ca(e.to_string()))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if certs.is_empty() {
                    return Err(ca("no certificate in it".into()));
                }
                tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
            }
            Trust::Insecure => tls = tls.disable_verification(true),
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build();
        Ok(Self { base: url.trim_end_matches('/').to_owned(), token: token.trim().to_owned(), agent: config.into() })
    }

    pub fn status(&self) -> Result<api::Status, AdminError> {
        self.call("GET", "/status", None::<&()>)?.ok_or_else(|| self.empty("/status"))
    }

    /// One page of allocations; with `after`, the page after that serial.
    pub fn allocations(&self, filters: &Filters, after: Option<u64>) -> Result<api::AllocationPage, AdminError> {
        let mut query = Vec::new();
        let mut add = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                query.push(format!("{key}={}", encode(&value)));
            }
        };
        add("user", filters.user.clone());
        add("client_ip", filters.client_ip.clone());
        add("transport", filters.transport.clone());
        add("order", filters.by_traffic.then(|| "traffic".to_owned()));
        add("limit", filters.limit.map(|n| n.to_string()));
        add("after", after.map(|n| n.to_string()));
        let path =
            if query.is_empty() { "/allocations".to_owned() } else { format!("/allocations?{}", query.join("&")) };
        self.call("GET", &path, None::<&()>)?.ok_or_else(|| self.empty(&path))
    }

    /// Every allocation the filters match, page after page (oldest first).
    pub fn all_allocations(&self, filters: &Filters) -> Result<Vec<api::Allocation>, AdminError> {
        let mut all = Vec::new();
        let mut after = None;
        // Bounded: each page moves the cursor forward past at least one serial.
        loop {
            let page = self.allocations(filters, after)?;
            all.extend(page.allocations);
            match page.next {
                Some(next) if after.is_none_or(|after| next > after) => after = Some(next),
                _ => return Ok(all),
            }
        }
    }

    pub fn kill(&self, id: u64) -> Result<(), AdminError> {
        self.call::<(), ()>("DELETE", &format!("/allocations/{id}"), None).map(drop)
    }

    pub fn revoke(&self, name: &str) -> Result<api::Revoked, AdminError> {
        let body = api::Revoke { name: name.to_owned() };
        self.call("POST", "/revocations", Some(&body))?.ok_or_else(|| self.empty("/revocations"))
    }

    pub fn unrevoke(&self, name: &str) -> Result<(), AdminError> {
        self.call::<(), ()>("DELETE", &format!("/revocations/{}", encode(name)), None).map(drop)
    }

    pub fn revocations(&self) -> Result<api::Revocations, AdminError> {
        self.call("GET", "/revocations", None::<&()>)?.ok_or_else(|| self.empty("/revocations"))
    }

    pub fn drain(&self, deadline: Option<Duration>) -> Result<api::Draining, AdminError> {
        let body = api::Drain { deadline_secs: deadline.map(|d| d.as_secs()) };
        self.call("POST", "/drain", Some(&body))?.ok_or_else(|| self.empty("/drain"))
    }

    pub fn reload(&self) -> Result<api::Reloaded, AdminError> {
        self.call("POST", "/reload", None::<&()>)?.ok_or_else(|| self.empty("/reload"))
    }

    pub fn set_log_level(&self, level: LogLevel) -> Result<(), AdminError> {
        self.call::<_, api::Log>("PUT", "/log", Some(&api::Log { level })).map(drop)
    }

    fn empty(&self, path: &str) -> AdminError {
        AdminError::Answer { url: self.url(path), message: "no body".into() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{path}", self.base, api::PREFIX)
    }

    /// One request; the answer's JSON, `None` for 204.
    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, AdminError> {
        let url = self.url(path);
        let bearer = format!("Bearer {}", self.token);
        let unreachable = |e: ureq::Error| AdminError::Unreachable { url: url.clone(), message: e.to_string() };
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &bearer).call(),
            ("DELETE", _) => self.agent.delete(&url).header("authorization", &bearer).call(),
            ("PUT", Some(body)) => self.agent.put(&url).header("authorization", &bearer).send_json(body),
            ("POST", Some(body)) => self.agent.post(&url).header("authorization", &bearer).send_json(body),
            _ => self.agent.post(&url).header("authorization", &bearer).send_empty(),
        };
        let mut response = sent.map_err(unreachable)?;
        let status = response.status().as_u16();
        if status == 204 {
            return Ok(None);
        }
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<api::Error>(&text).map_or(text, |e| e.error);
            return Err(AdminError::Refused { status, message });
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| AdminError::Answer { url: url.clone(), message: e.to_string() })
    }
}

/// Percent-encodes what is not unreserved (RFC 3986 §2.3), for a query
/// value or a path segment.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Rows under a header, each column as wide as its widest cell; numbers
/// (cells that parse as one) to the right.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(
                |(cell, &width)| {
                    if cell.parse::<f64>().is_ok() { format!("{cell:>width$}") } else { format!("{cell:<width$}") }
                },
            )
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The allocations as `tern admin allocations` prints them.
pub fn allocations_table(allocations: &[api::Allocation]) -> String {
    let rows: Vec<Vec<String>> = allocations
        .iter()
        .map(|a| {
            let relayed: Vec<String> = a.relayed.iter().map(ToString::to_string).collect();
            vec![
                a.id.to_string(),
                if a.user.is_empty() { "-".into() } else { a.user.clone() },
                a.client.to_string(),
                if a.relay_transport == "tcp" { format!("{}/tcp", a.transport) } else { a.transport.clone() },
                relayed.join(","),
                a.age_secs.to_string(),
                a.remaining_secs.to_string(),
                a.permissions.to_string(),
                a.channels.to_string(),
                (a.packets_to_peer + a.packets_to_client).to_string(),
                (a.bytes_to_peer + a.bytes_to_client).to_string(),
                a.rate_bps.to_string(),
            ]
        })
        .collect();
    let header =
        ["ID", "USER", "CLIENT", "TRANSPORT", "RELAYED", "AGE", "LEFT", "PERMS", "CHANS", "PACKETS", "BYTES", "B/S"];
    table(&header, &rows)
}

/// The status as `tern admin status` prints it.
pub fn status_text(status: &api::Status) -> String {
    let mut rows = vec![
        ("version", status.version.clone()),
        ("uptime", format!("{} s", status.uptime_secs)),
        ("state", if status.draining { "draining".into() } else { "serving".into() }),
        ("config generation", status.config_generation.to_string()),
        ("reload failures", status.config_reload_failures.to_string()),
        ("allocations", status.allocations.to_string()),
        ("connections", status.connections.to_string()),
        ("allocations created", status.allocations_created.to_string()),
        (
            "packets relayed",
            format!("{} to peers, {} to clients", status.relayed_packets_to_peer, status.relayed_packets_to_client),
        ),
        (
            "bytes relayed",
            format!("{} to peers, {} to clients", status.relayed_bytes_to_peer, status.relayed_bytes_to_client),
        ),
        ("auth failures", status.auth_failures.to_string()),
        ("revoked names", status.revoked.to_string()),
    ];
    for dropped in &status.dropped {
        rows.push(("dropped", format!("{} {}", dropped.packets, dropped.reason)));
    }
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let mut out: Vec<String> = rows.iter().map(|(key, value)| format!("{key:<width$}  {value}")).collect();
    out.push(String::new());
    let workers: Vec<Vec<String>> = status
        .workers
        .iter()
        .map(|w| vec![w.id.to_string(), w.turns.to_string(), w.last_turn_ms_ago.to_string()])
        .collect();
    out.push(table(&["WORKER", "TURNS", "LAST TURN MS AGO"], &workers));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_numbers_go_right() {
        let rows = vec![vec!["1".into(), "alice".into()], vec!["100".into(), "bo".into()]];
        assert_eq!(table(&["ID", "USER"], &rows), "ID   USER\n  1  alice\n100  bo");
    }

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("1700000000:alice smith/ü"), "1700000000%3Aalice%20smith%2F%C3%BC");
        assert_eq!(encode("a-b.c_d~"), "a-b.c_d~");
    }
}
