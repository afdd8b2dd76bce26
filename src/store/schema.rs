//! The SQL schema: coturn's tables, created when missing with the columns
//! and keys coturn 4.17.1 reads and writes (so `turnadmin` and coturn work
//! on a database tern made, and tern on one they made), and tern's own
//! tables, brought up to date by numbered migrations that each run once.
//!
//! tern's tables: `tern_schema` (the migrations applied), `tern_revocation`
//! (user names refused until they expire), `tern_usage` (one record per
//! allocation), and the change feed's plumbing: on PostgreSQL a trigger
//! function `tern_notify_change` that every coturn table and
//! `tern_revocation` call, which sends a `NOTIFY` on [`NOTIFY_CHANNEL`]; on
//! SQLite triggers that append to `tern_change`, which the feed polls. The
//! triggers fire for whoever writes, `turnadmin` included, so its changes
//! reach tern without tern's help.
//!
//! A migration that has shipped is never edited: what it lacked, the next
//! one adds (version 2 added the feed's triggers on `tern_revocation`, an
//! index on `tern_usage.ended`, and room for two relayed addresses).

use super::{Change, MAX_NAME, MAX_ORIGIN, MAX_REALM};

/// The newest migration.
pub const VERSION: i64 = 2;
/// The PostgreSQL channel of the change feed.
pub const NOTIFY_CHANNEL: &str = "tern_changes";
/// Rows `tern_change` keeps: the feed polls every second, so this is far
/// more than a burst of changes between two polls; a subscriber that falls
/// further behind says [`Change::All`].
pub const CHANGE_LOG_ROWS: i64 = 10_000;
/// Where the PostgreSQL migration lock lives: an advisory lock key of tern's
/// own (`tern` in ASCII), so two nodes starting at once migrate in turn.
pub const POSTGRES_LOCK: i64 = 0x7465_726e;

/// coturn's tables, in the form both engines read: every column and key
/// coturn uses, with its widths.
const COTURN_TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS turnusers_lt (realm varchar(127) DEFAULT '', name varchar(512), \
     hmackey char(128), PRIMARY KEY (realm, name))",
    "CREATE TABLE IF NOT EXISTS turn_secret (realm varchar(127) DEFAULT '', value varchar(256), \
     PRIMARY KEY (realm, value))",
    "CREATE TABLE IF NOT EXISTS allowed_peer_ip (realm varchar(127) DEFAULT '', ip_range varchar(256), \
     PRIMARY KEY (realm, ip_range))",
    "CREATE TABLE IF NOT EXISTS denied_peer_ip (realm varchar(127) DEFAULT '', ip_range varchar(256), \
     PRIMARY KEY (realm, ip_range))",
    "CREATE TABLE IF NOT EXISTS turn_origin_to_realm (origin varchar(127), realm varchar(127), \
     PRIMARY KEY (origin))",
    "CREATE TABLE IF NOT EXISTS turn_realm_option (realm varchar(127) DEFAULT '', opt varchar(32), \
     value varchar(128), PRIMARY KEY (realm, opt))",
    "CREATE TABLE IF NOT EXISTS oauth_key (kid varchar(128), ikm_key varchar(256), timestamp bigint DEFAULT 0, \
     lifetime integer DEFAULT 0, as_rs_alg varchar(64) DEFAULT '', realm varchar(127), PRIMARY KEY (kid))",
    "CREATE TABLE IF NOT EXISTS admin_user (name varchar(32), realm varchar(127), password varchar(127), \
     PRIMARY KEY (name))",
];

/// The coturn tables whose changes the feed reports.
const WATCHED: &[&str] =
    &["turnusers_lt", "turn_secret", "allowed_peer_ip", "denied_peer_ip", "turn_realm_option", "turn_origin_to_realm"];

/// tern's tables whose changes the feed reports (since migration 2).
const TERN_WATCHED: &[&str] = &["tern_revocation"];

/// `tern_schema`, which the migrations themselves are recorded in.
pub const SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS tern_schema (version integer PRIMARY KEY, applied bigint NOT NULL)";

/// tern's tables of version 1 that both engines write alike.
const TERN_TABLES_V1: &[&str] =
    &["CREATE TABLE IF NOT EXISTS tern_revocation (realm varchar(127) NOT NULL DEFAULT '', \
     username varchar(513) NOT NULL, expires bigint NOT NULL, PRIMARY KEY (realm, username))"];

/// One usage record per allocation; the key column is the engine's own
/// kind of sequence.
fn usage_table(id: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS tern_usage ({id}, node varchar(255) NOT NULL, realm varchar(127) NOT NULL, \
         username varchar(513) NOT NULL, transport varchar(8) NOT NULL, client varchar(64) NOT NULL, \
         relayed varchar(64) NOT NULL, started bigint NOT NULL, ended bigint NOT NULL, \
         packets_to_peer bigint NOT NULL, bytes_to_peer bigint NOT NULL, \
         packets_to_client bigint NOT NULL, bytes_to_client bigint NOT NULL)"
    )
}

/// Migration `version` for SQLite, as statements run in one transaction.
pub fn sqlite_migration(version: i64) -> Vec<String> {
    match version {
        1 => {
            let mut statements: Vec<String> =
                COTURN_TABLES.iter().chain(TERN_TABLES_V1).map(|s| s.to_string()).collect();
            statements.push(usage_table("id INTEGER PRIMARY KEY AUTOINCREMENT"));
            statements.push(
                "CREATE TABLE IF NOT EXISTS tern_change (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 source text NOT NULL, realm text, name text)"
                    .into(),
            );
            statements.push(format!(
                "CREATE TRIGGER IF NOT EXISTS tern_change_trim AFTER INSERT ON tern_change BEGIN \
                 DELETE FROM tern_change WHERE id <= NEW.id - {CHANGE_LOG_ROWS}; END"
            ));
            statements.extend(WATCHED.iter().flat_map(|table| sqlite_change_log(table)));
            statements
        }
        // SQLite does not enforce a varchar's length, so `relayed` holds two
        // addresses as it is.
        2 => {
            let mut statements = vec![USAGE_ENDED_INDEX.to_owned()];
            statements.extend(TERN_WATCHED.iter().flat_map(|table| sqlite_change_log(table)));
            statements
        }
        _ => Vec::new(),
    }
}

/// The SQLite triggers that log every change of `table` to `tern_change`:
/// its realm, and for users the name.
fn sqlite_change_log(table: &str) -> Vec<String> {
    let name = if table == "turnusers_lt" { Some("name") } else { None };
    let log = |row: &str| {
        let name = name.map_or_else(|| "NULL".to_owned(), |column| format!("{row}.{column}"));
        format!("INSERT INTO tern_change (source, realm, name) VALUES ('{table}', {row}.realm, {name});")
    };
    [("INSERT", log("NEW")), ("DELETE", log("OLD")), ("UPDATE", format!("{} {}", log("OLD"), log("NEW")))]
        .into_iter()
        .map(|(event, body)| {
            format!(
                "CREATE TRIGGER IF NOT EXISTS tern_{table}_{} AFTER {event} ON {table} BEGIN {body} END",
                event.to_ascii_lowercase()
            )
        })
        .collect()
}

/// Billing reads usage by time.
const USAGE_ENDED_INDEX: &str = "CREATE INDEX IF NOT EXISTS tern_usage_ended ON tern_usage (ended)";

/// Migration `version` for PostgreSQL, as statements run in one transaction.
pub fn postgres_migration(version: i64) -> Vec<String> {
    match version {
        1 => {
            let mut statements: Vec<String> =
                COTURN_TABLES.iter().chain(TERN_TABLES_V1).map(|s| s.to_string()).collect();
            statements.push(usage_table("id bigserial PRIMARY KEY"));
            // The payload is cut to what the columns hold, so a value too
            // long for NOTIFY's 8000 bytes cannot make coturn's write fail.
            statements.push(format!(
                "CREATE OR REPLACE FUNCTION tern_notify_change() RETURNS trigger LANGUAGE plpgsql AS $tern$
                 BEGIN
                   IF TG_OP <> 'INSERT' THEN
                     PERFORM pg_notify('{NOTIFY_CHANNEL}', json_build_object('source', TG_TABLE_NAME,
                       'realm', left(to_jsonb(OLD)->>'realm', 200), 'name', left(to_jsonb(OLD)->>'name', 600))::text);
                   END IF;
                   IF TG_OP <> 'DELETE' THEN
                     PERFORM pg_notify('{NOTIFY_CHANNEL}', json_build_object('source', TG_TABLE_NAME,
                       'realm', left(to_jsonb(NEW)->>'realm', 200), 'name', left(to_jsonb(NEW)->>'name', 600))::text);
                   END IF;
                   RETURN NULL;
                 END
                 $tern$"
            ));
            statements.extend(WATCHED.iter().flat_map(|table| postgres_notify(table)));
            statements
        }
        2 => {
            // Widening a varchar only changes the catalogue: no table rewrite.
            let mut statements = vec![
                format!("ALTER TABLE tern_usage ALTER COLUMN relayed TYPE varchar({})", super::MAX_RELAYED_TEXT),
                USAGE_ENDED_INDEX.to_owned(),
            ];
            statements.extend(TERN_WATCHED.iter().flat_map(|table| postgres_notify(table)));
            statements
        }
        _ => Vec::new(),
    }
}

/// The PostgreSQL trigger that notifies every change of `table`.
fn postgres_notify(table: &str) -> [String; 2] {
    [
        format!("DROP TRIGGER IF EXISTS tern_changes ON {table}"),
        format!(
            "CREATE TRIGGER tern_changes AFTER INSERT OR UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION tern_notify_change()"
        ),
    ]
}

/// The change a row of `source` (a coturn table) stands for.
pub fn change_of(source: &str, realm: Option<String>, name: Option<String>) -> Option<Change> {
    let realm = realm.unwrap_or_default();
    Some(match source {
        "turnusers_lt" => Change::User { realm, name: name.unwrap_or_default() },
        "turn_secret" => Change::Secrets { realm },
        "allowed_peer_ip" | "denied_peer_ip" => Change::PeerRanges { realm },
        "turn_realm_option" => Change::RealmOptions { realm },
        "turn_origin_to_realm" => Change::Origins,
        "tern_revocation" => Change::Revocations { realm },
        _ => return None,
    })
}

/// The change a notice stands for: the JSON `{source, realm, name}` that
/// tern's PostgreSQL trigger and tern's Redis writes send. `None` for one
/// that is not tern's (anyone may send on the channel); [`Change::All`] for
/// one whose values are too long to be a row's.
pub fn notice_change(payload: &[u8]) -> Option<Change> {
    #[derive(serde::Deserialize)]
    struct Notice {
        source: String,
        realm: Option<String>,
        name: Option<String>,
    }
    let notice: Notice = serde_json::from_slice(payload).ok()?;
    let too_long = |value: &Option<String>, max: usize| value.as_ref().is_some_and(|v| v.len() > max);
    if too_long(&notice.realm, MAX_REALM) || too_long(&notice.name, MAX_NAME.max(MAX_ORIGIN)) {
        return Some(Change::All);
    }
    change_of(&notice.source, notice.realm, notice.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_name_the_change_and_junk_is_ignored() {
        assert_eq!(
            notice_change(br#"{"source":"turnusers_lt","realm":"north.gov","name":"gorst"}"#),
            Some(Change::User { realm: "north.gov".into(), name: "gorst".into() })
        );
        assert_eq!(
            notice_change(br#"{"source":"turn_origin_to_realm","realm":"r","name":null}"#),
            Some(Change::Origins)
        );
        assert_eq!(notice_change(b"hello"), None);
        assert_eq!(notice_change(b"\xff"), None);
        assert_eq!(notice_change(br#"{"source":"admin_user","realm":"","name":"x"}"#), None);
        let long = format!(r#"{{"source":"turn_secret","realm":"{}","name":null}}"#, "r".repeat(500));
        assert_eq!(notice_change(long.as_bytes()), Some(Change::All));
    }

    #[test]
    fn every_migration_up_to_the_newest_has_statements_for_both_engines() {
        for version in 1..=VERSION {
            assert!(!sqlite_migration(version).is_empty(), "SQLite migration {version}");
            assert!(!postgres_migration(version).is_empty(), "PostgreSQL migration {version}");
        }
        assert!(sqlite_migration(VERSION + 1).is_empty());
    }

    #[test]
    fn every_watched_table_maps_to_a_change() {
        for table in WATCHED.iter().chain(TERN_WATCHED) {
            assert!(change_of(table, Some("r".into()), None).is_some(), "{table}");
        }
        assert_eq!(
            change_of("turnusers_lt", Some("r".into()), Some("u".into())),
            Some(Change::User { realm: "r".into(), name: "u".into() })
        );
        assert_eq!(change_of("admin_user", None, None), None);
    }

    #[test]
    fn migration_1_is_what_shipped() {
        let shipped = [
            (sqlite_migration(1), include_str!("../../tests/vectors/store-schema-v1-sqlite.sql")),
            (postgres_migration(1), include_str!("../../tests/vectors/store-schema-v1-postgres.sql")),
        ];
        for (statements, fixture) in shipped {
            let written: String = statements.iter().map(|statement| format!("{statement};\n")).collect();
            assert!(fixture.contains(&written), "migration 1 differs from what shipped:\n{written}");
        }
    }
}
