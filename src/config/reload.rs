//! What a reload (SIGHUP) may change on a running server, key by key, and
//! the configuration it puts in force: the file's, with every restart-only
//! key at its running value.
//!
//! A key is restart-only when it binds a socket (listen addresses, the
//! RFC 5780 addresses, the relay addresses and ports, TLS and metrics
//! addresses, socket buffers), shapes the process (workers, the user to
//! run as), or sets the mode tern runs in (whether it relays, anonymously
//! or not, and the realm every key and nonce is made for). Every other key
//! is reloadable. A test checks that each key of [`Settings`] is in one of
//! the two lists, so a new key must be classified here.
//!
//! Users and secrets reload with the checks they always had: when the
//! realm changed, or the file has none left, the running ones stay, and a
//! server that does not authenticate takes none (that changes its mode).

use super::{Config, ConfigError, Settings};

/// Keys whose change takes a restart; a reload keeps their running values.
macro_rules! restart_only {
    ($($key:literal => $($field:ident).+;)*) => {
        pub const RESTART_ONLY: &[&str] = &[$($key),*];

        /// Puts the running value of every restart-only key into `fresh`,
        /// and names the keys whose values differed.
        fn keep_restart_only(fresh: &mut Settings, running: &Settings) -> Vec<&'static str> {
            let mut changed = Vec::new();
            $(
                if fresh.$($field).+ != running.$($field).+ {
                    fresh.$($field).+ = running.$($field).+.clone();
                    changed.push($key);
                }
            )*
            changed
        }
    };
}

restart_only! {
    "listen" => listen;
    "realm" => realm;
    "workers" => workers;
    "rfc5780" => rfc5780;
    "alternate_ip" => alternate_ip;
    "alternate_port" => alternate_port;
    "turn" => turn;
    "relay_ips" => relay_ips;
    "relay_ports" => relay_ports;
    "udp_buffer" => udp_buffer;
    "user" => user;
    "group" => group;
    "auth.allow_anonymous" => auth.allow_anonymous;
    "tls.listen" => tls.listen;
    "tls.cert" => tls.cert;
    "tls.key" => tls.key;
    "metrics.listen" => metrics.listen;
    "admin.listen" => admin.listen;
    "admin.tls" => admin.tls;
}

/// Keys a reload applies. The core takes most of them (see
/// `Server::replace_config` for what applies to what), the shared accounts
/// the quotas, each worker the TLS limits, the log subscriber `[log]`, and
/// the next drain its `drain_timeout`.
pub const RELOADABLE: &[&str] = &[
    "software",
    "rfc3489",
    "reason_phrases",
    "external_ip",
    "allow_peers",
    "deny_peers",
    "user_quota",
    "total_quota",
    "alternate_servers",
    "alternate_domain",
    "max_tcp_per_ip",
    "max_tcp_connections",
    "max_bps",
    "max_permissions",
    "max_channels",
    "max_tcp_peer_connections",
    "default_lifetime",
    "max_lifetime",
    "rfc5766_channels",
    "rate_limit",
    "rate_limit_burst",
    "rate_limit_loopback",
    "auth.users",
    "auth.secrets",
    "auth.nonce_lifetime",
    "log.level",
    "log.format",
    "log.allocations",
    "tls.max_handshakes",
    "tls.handshake_timeout",
    "drain_timeout",
    "admin.token_file",
];

/// What a reload puts in force.
#[derive(Debug)]
pub struct Reloaded {
    /// The file's configuration, restart-only keys at their running values.
    pub config: Config,
    /// Restart-only keys the file changes, which keep their running values.
    pub needs_restart: Vec<&'static str>,
    pub credentials: Credentials,
}

/// What became of `auth.users` and `auth.secrets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// The file's users and secrets are in force.
    Replaced,
    /// tern does not authenticate (STUN only, or anonymous relaying), and
    /// a reload does not make it start.
    NotUsed,
    /// The realm changed: the file's keys are for a realm tern does not
    /// run in, so the running users and secrets stay.
    KeptRealmChanged,
    /// The file has no users or secrets: the running ones stay.
    KeptNoneLeft,
}

impl Config {
    /// The configuration a reload of `fresh` (loaded from `file`, already
    /// valid on its own) puts in force over this running one, checked
    /// again as a whole.
    pub fn reloaded(&self, fresh: Config, file: &str) -> Result<Reloaded, ConfigError> {
        let mut settings = fresh.settings;
        let running = &self.settings;
        let mut needs_restart = keep_restart_only(&mut settings, running);
        let credentials = if !self.authenticates() {
            if settings.auth.users != running.auth.users {
                needs_restart.push("auth.users");
            }
            if settings.auth.secrets != running.auth.secrets {
                needs_restart.push("auth.secrets");
            }
            Credentials::NotUsed
        } else if needs_restart.contains(&"realm") {
            Credentials::KeptRealmChanged
        } else if !settings.has_credentials() {
            Credentials::KeptNoneLeft
        } else {
            Credentials::Replaced
        };
        if credentials != Credentials::Replaced {
            settings.auth.users.clone_from(&running.auth.users);
            settings.auth.secrets.clone_from(&running.auth.secrets);
        }
        let config = Config::new(settings, file)?;
        Ok(Reloaded { config, needs_restart, credentials })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::LogLevel;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.toml").expect("a valid configuration")
    }

    const RUNNING: &str = "listen = [\"127.0.0.1:3478\"]\nworkers = 2\nrealm = \"a\"\nuser_quota = 10\n\
                           [auth]\nusers = { alice = \"pw\" }\n";

    /// Every key of the settings table, dotted: every optional value set,
    /// so none is left out of the TOML.
    fn every_key() -> BTreeSet<String> {
        let mut settings = Settings {
            alternate_ip: Some("127.0.0.2".parse().expect("literal")),
            alternate_port: Some(3479),
            turn: Some(true),
            alternate_domain: Some("example.org".into()),
            rate_limit_burst: Some(crate::config::values::positive(5)),
            user: Some("tern".into()),
            group: Some("tern".into()),
            drain_timeout: Some(crate::config::values::positive(30)),
            ..Settings::default()
        };
        settings.tls.cert = Some("cert.pem".into());
        settings.tls.key = Some("key.pem".into());
        settings.metrics.listen = Some("127.0.0.1:9641".parse().expect("literal"));
        settings.admin.listen = Some("127.0.0.1:9642".parse().expect("literal"));
        settings.admin.token_file = Some("admin.token".into());
        let text = toml::to_string(&settings).expect("the settings serialise");
        let table: toml::Table = text.parse().expect("printed TOML parses");
        let mut keys = BTreeSet::new();
        for (key, value) in &table {
            match value {
                toml::Value::Table(section) => keys.extend(section.keys().map(|inner| format!("{key}.{inner}"))),
                _ => {
                    keys.insert(key.clone());
                }
            }
        }
        keys
    }

    #[test]
    fn every_key_is_reloadable_or_restart_only() {
        let classified: BTreeSet<String> = RESTART_ONLY.iter().chain(RELOADABLE).map(|k| (*k).to_owned()).collect();
        assert_eq!(classified.len(), RESTART_ONLY.len() + RELOADABLE.len(), "no key in both lists");
        assert_eq!(every_key(), classified, "classify every key of the settings table");
    }

    #[test]
    fn restart_only_keys_keep_their_running_values_and_the_rest_applies() {
        let running = config(RUNNING);
        let fresh = config(
            "listen = [\"127.0.0.1:4000\"]\nworkers = 3\nrealm = \"a\"\nuser_quota = 2\nmax_bps = 5000\n\
             [auth]\nusers = { bob = \"pw\" }\n[log]\nlevel = \"debug\"\n",
        );
        let reloaded = running.reloaded(fresh, "t.toml").expect("valid");
        assert_eq!(reloaded.needs_restart, ["listen", "workers"]);
        let config = reloaded.config;
        assert_eq!((config.listen.clone(), config.workers), (running.listen.clone(), 2));
        assert_eq!((config.user_quota, config.max_bps, config.log.level), (2, 5000, LogLevel::Debug));
        assert_eq!(reloaded.credentials, Credentials::Replaced);
        assert_eq!(config.auth.users.keys().collect::<Vec<_>>(), ["bob"]);
    }

    #[test]
    fn users_and_secrets_stay_when_the_realm_changes_or_none_are_left() {
        let running = config(RUNNING);
        let alice = || running.auth.users.clone();
        let realm = running.reloaded(config("realm = \"b\"\n[auth]\nusers = { bob = \"pw\" }\n"), "t").expect("ok");
        assert_eq!((realm.credentials, realm.config.realm.as_str()), (Credentials::KeptRealmChanged, "a"));
        assert!(realm.needs_restart.contains(&"realm"));
        assert_eq!(realm.config.auth.users, alice());

        let none = running.reloaded(config("realm = \"a\"\nuser_quota = 3\n"), "t").expect("still relays");
        assert_eq!(none.credentials, Credentials::KeptNoneLeft);
        assert_eq!((none.config.auth.users.clone(), none.config.user_quota), (alice(), 3));
        assert!(none.config.turn_enabled());
    }

    #[test]
    fn a_server_that_does_not_authenticate_takes_no_credentials() {
        let stun_only = config("max_bps = 1\n");
        let reloaded = stun_only.reloaded(config("[auth]\nsecrets = [\"s\"]\n"), "t").expect("valid");
        assert_eq!(reloaded.credentials, Credentials::NotUsed);
        assert_eq!(reloaded.needs_restart, ["auth.secrets"]);
        assert!(!reloaded.config.turn_enabled(), "still STUN only");

        let anonymous = config("[auth]\nallow_anonymous = true\n");
        let fresh = config("[auth]\nusers = { carol = { key = \"0x00112233445566778899aabbccddeeff\" } }\n");
        let reloaded = anonymous.reloaded(fresh, "t").expect("valid");
        assert_eq!(reloaded.needs_restart, ["auth.allow_anonymous", "auth.users"]);
        assert!(reloaded.config.auth.allow_anonymous && reloaded.config.auth.users.is_empty());
    }
}
