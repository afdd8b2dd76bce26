//! The first-time warnings (`notices.rs`): each limit or default that
//! refuses something is named once, with its setting, however often it
//! refuses; what coturn refuses too is not.

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::*;
use crate::proto::rate_limit::RateLimit;

/// What the code under test logs at warn, as the text formatter writes it.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("no test panics holding the log").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Runs `test` with this capture as the thread's subscriber.
    fn during(&self, test: impl FnOnce()) {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, test);
    }

    /// The lines that name `setting`.
    fn naming(&self, setting: &str) -> Vec<String> {
        let bytes = self.0.lock().expect("no test panics holding the log");
        let field = format!("setting=\"{setting}\"");
        String::from_utf8_lossy(&bytes).lines().filter(|line| line.contains(&field)).map(str::to_owned).collect()
    }
}

#[test]
fn a_user_over_quota_is_named_once_with_the_limit() {
    let log = LogCapture::default();
    log.during(|| {
        let mut h = Harness::authenticated();
        h.set_limits(|l| l.per_user = 2);
        Client::alice("198.51.100.1:40000").allocated(&mut h);
        Client::alice("198.51.100.1:40001").allocated(&mut h);
        for port in 40002..40005 {
            assert_error(&Client::alice(&format!("198.51.100.1:{port}")).allocate(&mut h), 486);
        }
        Client::bob("198.51.100.2:40000").allocated(&mut h);
        h.set_limits(|l| l.per_user = 1);
        assert_error(&Client::bob("198.51.100.2:40001").allocate(&mut h), 486);
        assert_error(&Client::bob("198.51.100.2:40002").allocate(&mut h), 486);
    });
    let lines = log.naming("user_quota");
    assert_eq!(lines.len(), 2, "one line per user: {lines:?}");
    for (line, user, limit) in [(&lines[0], "alice", 2), (&lines[1], "bob", 1)] {
        assert!(line.contains(" WARN "), "{line}");
        assert!(line.contains(&format!("user=\"{user}\"")) && line.contains(&format!("limit={limit}")), "{line}");
        assert!(line.contains("486"), "{line}");
    }
}

#[test]
fn permission_and_channel_caps_are_named_once_each() {
    let log = LogCapture::default();
    log.during(|| {
        let mut h = Harness::new(TurnConfig { max_permissions: 2, max_channels: 1, ..turn_config() });
        let (mut alice, _) = allocated_alice(&mut h);
        assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
        assert_error(&alice.permit(&mut h, &[addr(PEER_C)]), 508);
        assert_error(&alice.bind(&mut h, 0x4000, addr(PEER_C)), 508);
        assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
        assert_error(&alice.bind(&mut h, 0x4001, addr(PEER_B)), 508);
        assert_error(&alice.bind(&mut h, 0x4002, addr(PEER_B)), 508);
    });
    let permissions = log.naming("max_permissions");
    assert_eq!(permissions.len(), 1, "{permissions:?}");
    assert!(permissions[0].contains("limit=2") && permissions[0].contains("1024"), "{}", permissions[0]);
    let channels = log.naming("max_channels");
    assert_eq!(channels.len(), 1, "{channels:?}");
    assert!(channels[0].contains("limit=1"), "{}", channels[0]);
}

#[test]
fn a_default_deny_that_coturn_lacks_is_named_once_per_range() {
    let log = LogCapture::default();
    log.during(|| {
        let mut h = Harness::authenticated();
        let (mut alice, _) = allocated_alice(&mut h);
        for peer in ["10.0.0.1:9", "10.9.9.9:9", "192.168.1.1:9", "127.0.0.1:9", "169.254.169.254:80"] {
            assert_error(&alice.permit(&mut h, &[addr(peer)]), 403);
        }
        assert_error(&alice.bind(&mut h, 0x4000, addr("10.0.0.2:9")), 403);
    });
    let lines = log.naming("allow_peers");
    assert_eq!(lines.len(), 2, "10.0.0.0/8 and 192.168.0.0/16, not loopback or link-local: {lines:?}");
    assert!(lines[0].contains("peer=10.0.0.1") && lines[0].contains("10.0.0.0/8"), "{}", lines[0]);
    assert!(lines[1].contains("peer=192.168.1.1") && lines[1].contains("192.168.0.0/16"), "{}", lines[1]);
}

#[test]
fn the_rate_limit_is_named_once() {
    let log = LogCapture::default();
    log.during(|| {
        let rate_limit = RateLimit { per_second: 1.0, burst: 1.0, ..RateLimit::default() };
        let mut h = Harness::with_config(ServerConfig { rate_limit, ..ServerConfig::default() });
        let mut binding = Vec::new();
        MessageWriter::new(&mut binding, MessageType::new(Method::BINDING, Class::Request), TransactionId::random())
            .finish();
        let client = Client::anonymous("198.51.100.1:40000");
        let outcomes: Vec<ClientOutcome> =
            (0..4).map(|_| h.client_packet(&client.tuple, client.handle, &binding).0).collect();
        assert_eq!(outcomes.iter().filter(|o| **o == ClientOutcome::Dropped).count(), 3, "{outcomes:?}");
    });
    let lines = log.naming("rate_limit");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("source=198.51.100.1") && lines[0].contains("limit=1"), "{}", lines[0]);
}

#[test]
fn the_connection_caps_are_named_once_each() {
    let log = LogCapture::default();
    log.during(|| {
        let mut h = Harness::authenticated();
        h.set_limits(|l| {
            l.tcp_per_ip = 1;
            l.tcp_total = 2;
        });
        let tuple = |client: &str| FiveTuple { client: addr(client), server: addr(SERVER), transport: Transport::Tcp };
        assert!(h.connection_opened(&tuple("198.51.100.1:40000")));
        assert!(!h.connection_opened(&tuple("198.51.100.1:40001")));
        assert!(!h.connection_opened(&tuple("198.51.100.1:40002")));
        assert!(h.connection_opened(&tuple("198.51.100.2:40000")));
        assert!(!h.connection_opened(&tuple("198.51.100.3:40000")));
        assert!(!h.connection_opened(&tuple("198.51.100.4:40000")));
    });
    let per_ip = log.naming("max_tcp_per_ip");
    assert_eq!(per_ip.len(), 1, "{per_ip:?}");
    assert!(per_ip[0].contains("source=198.51.100.1") && per_ip[0].contains("limit=1"), "{}", per_ip[0]);
    let total = log.naming("max_tcp_connections");
    assert_eq!(total.len(), 1, "{total:?}");
    assert!(total[0].contains("source=198.51.100.3") && total[0].contains("limit=2"), "{}", total[0]);
}
