//! Scraping a running tern's Prometheus endpoint (`--metrics-listen`): the
//! address it logs, one HTTP/1.1 exchange, and a checked `GET /metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::TernServer;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The address tern logs once it serves `/metrics`.
pub fn metrics_addr(server: &TernServer) -> SocketAddr {
    let logged = server.wait_for_log("serving metrics at /metrics", 1, TIMEOUT);
    logged[0]["addr"].as_str().and_then(|a| a.parse().ok()).expect("the metrics address is logged")
}

/// One HTTP/1.1 exchange; returns the status line, the headers and the body.
pub fn http(addr: SocketAddr, request: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("metrics connection");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    // One exchange per connection: the server keeps connections open otherwise.
    let request = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    stream.write_all(request.as_bytes()).expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read to the end (Connection: close)");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// `GET /metrics`, checked to be a complete OpenMetrics answer; its body.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: tern\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Header names are case-insensitive (RFC 9110 §5.1).
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains("content-type: application/openmetrics-text"), "{headers}");
    assert!(headers.contains(&format!("content-length: {}", body.len())), "{headers}");
    body
}
