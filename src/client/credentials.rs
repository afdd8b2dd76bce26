//! `tern credentials`: TURN REST API credentials (draft-uberti-behave-turn-rest)
//! as a web backend hands them to browsers: username `EXPIRY:USER`, password
//! base64(HMAC-SHA1(secret, username)), and the `iceServers` entry to use them.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use crate::proto::auth::rest_password;

/// A time-limited username and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestCredential {
    pub username: String,
    pub password: String,
    /// Unix seconds after which the server refuses them.
    pub expires: u64,
}

impl RestCredential {
    /// Credentials for `user`, valid for `ttl` from `now_unix`.
    pub fn new(secret: &str, user: &str, ttl: Duration, now_unix: u64) -> Self {
        let expires = now_unix + ttl.as_secs();
        let username = format!("{expires}:{user}");
        let password = rest_password(secret.as_bytes(), &username);
        Self { username, password, expires }
    }

    /// The `iceServers` entry for these credentials.
    pub fn ice_server(&self, urls: &[String]) -> serde_json::Value {
        json!({ "urls": urls, "username": self.username, "credential": self.password })
    }

    /// A human-readable report followed by the JSON snippet.
    pub fn report(&self, urls: &[String]) -> String {
        let expires = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.expires));
        let snippet = serde_json::to_string_pretty(&json!({ "iceServers": [self.ice_server(urls)] }))
            .expect("a JSON value serialises");
        format!("username: {}\npassword: {}\nexpires:  {expires}\n\n{snippet}\n", self.username, self.password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_carries_the_expiry_and_password_the_hmac() {
        let credential = RestCredential::new("secret", "alice", Duration::from_secs(3600), 1_699_996_400);
        assert_eq!(credential.username, "1700000000:alice");
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed with Python.
        assert_eq!(credential.password, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        let entry = credential.ice_server(&["turn:turn.example.com:3478".into()]);
        assert_eq!(entry["username"], "1700000000:alice");
        assert_eq!(entry["credential"], "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_eq!(entry["urls"][0], "turn:turn.example.com:3478");
        assert!(credential.report(&[]).contains("expires:  2023-11-14T22:13:20Z"));
    }
}
