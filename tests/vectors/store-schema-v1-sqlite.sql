-- tern's store as schema version 1 left it (tern at 2ac1567, the first with a store):
-- tern_schema, the statements of migration 1 as they shipped, and its record.
-- tests/store.rs makes a database of this and opens it with this tern, which must migrate it.
CREATE TABLE IF NOT EXISTS tern_schema (version integer PRIMARY KEY, applied bigint NOT NULL);
CREATE TABLE IF NOT EXISTS turnusers_lt (realm varchar(127) DEFAULT '', name varchar(512), hmackey char(128), PRIMARY KEY (realm, name));
CREATE TABLE IF NOT EXISTS turn_secret (realm varchar(127) DEFAULT '', value varchar(256), PRIMARY KEY (realm, value));
CREATE TABLE IF NOT EXISTS allowed_peer_ip (realm varchar(127) DEFAULT '', ip_range varchar(256), PRIMARY KEY (realm, ip_range));
CREATE TABLE IF NOT EXISTS denied_peer_ip (realm varchar(127) DEFAULT '', ip_range varchar(256), PRIMARY KEY (realm, ip_range));
CREATE TABLE IF NOT EXISTS turn_origin_to_realm (origin varchar(127), realm varchar(127), PRIMARY KEY (origin));
CREATE TABLE IF NOT EXISTS turn_realm_option (realm varchar(127) DEFAULT '', opt varchar(32), value varchar(128), PRIMARY KEY (realm, opt));
CREATE TABLE IF NOT EXISTS oauth_key (kid varchar(128), ikm_key varchar(256), timestamp bigint DEFAULT 0, lifetime integer DEFAULT 0, as_rs_alg varchar(64) DEFAULT '', realm varchar(127), PRIMARY KEY (kid));
CREATE TABLE IF NOT EXISTS admin_user (name varchar(32), realm varchar(127), password varchar(127), PRIMARY KEY (name));
CREATE TABLE IF NOT EXISTS tern_revocation (realm varchar(127) NOT NULL DEFAULT '', username varchar(513) NOT NULL, expires bigint NOT NULL, PRIMARY KEY (realm, username));
CREATE TABLE IF NOT EXISTS tern_usage (id INTEGER PRIMARY KEY AUTOINCREMENT, node varchar(255) NOT NULL, realm varchar(127) NOT NULL, username varchar(513) NOT NULL, transport varchar(8) NOT NULL, client varchar(64) NOT NULL, relayed varchar(64) NOT NULL, started bigint NOT NULL, ended bigint NOT NULL, packets_to_peer bigint NOT NULL, bytes_to_peer bigint NOT NULL, packets_to_client bigint NOT NULL, bytes_to_client bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tern_change (id INTEGER PRIMARY KEY AUTOINCREMENT, source text NOT NULL, realm text, name text);
CREATE TRIGGER IF NOT EXISTS tern_change_trim AFTER INSERT ON tern_change BEGIN DELETE FROM tern_change WHERE id <= NEW.id - 10000; END;
CREATE TRIGGER IF NOT EXISTS tern_turnusers_lt_insert AFTER INSERT ON turnusers_lt BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turnusers_lt', NEW.realm, NEW.name); END;
CREATE TRIGGER IF NOT EXISTS tern_turnusers_lt_delete AFTER DELETE ON turnusers_lt BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turnusers_lt', OLD.realm, OLD.name); END;
CREATE TRIGGER IF NOT EXISTS tern_turnusers_lt_update AFTER UPDATE ON turnusers_lt BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turnusers_lt', OLD.realm, OLD.name); INSERT INTO tern_change (source, realm, name) VALUES ('turnusers_lt', NEW.realm, NEW.name); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_secret_insert AFTER INSERT ON turn_secret BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_secret', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_secret_delete AFTER DELETE ON turn_secret BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_secret', OLD.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_secret_update AFTER UPDATE ON turn_secret BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_secret', OLD.realm, NULL); INSERT INTO tern_change (source, realm, name) VALUES ('turn_secret', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_allowed_peer_ip_insert AFTER INSERT ON allowed_peer_ip BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('allowed_peer_ip', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_allowed_peer_ip_delete AFTER DELETE ON allowed_peer_ip BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('allowed_peer_ip', OLD.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_allowed_peer_ip_update AFTER UPDATE ON allowed_peer_ip BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('allowed_peer_ip', OLD.realm, NULL); INSERT INTO tern_change (source, realm, name) VALUES ('allowed_peer_ip', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_denied_peer_ip_insert AFTER INSERT ON denied_peer_ip BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('denied_peer_ip', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_denied_peer_ip_delete AFTER DELETE ON denied_peer_ip BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('denied_peer_ip', OLD.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_denied_peer_ip_update AFTER UPDATE ON denied_peer_ip BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('denied_peer_ip', OLD.realm, NULL); INSERT INTO tern_change (source, realm, name) VALUES ('denied_peer_ip', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_realm_option_insert AFTER INSERT ON turn_realm_option BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_realm_option', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_realm_option_delete AFTER DELETE ON turn_realm_option BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_realm_option', OLD.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_realm_option_update AFTER UPDATE ON turn_realm_option BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_realm_option', OLD.realm, NULL); INSERT INTO tern_change (source, realm, name) VALUES ('turn_realm_option', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_origin_to_realm_insert AFTER INSERT ON turn_origin_to_realm BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_origin_to_realm', NEW.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_origin_to_realm_delete AFTER DELETE ON turn_origin_to_realm BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_origin_to_realm', OLD.realm, NULL); END;
CREATE TRIGGER IF NOT EXISTS tern_turn_origin_to_realm_update AFTER UPDATE ON turn_origin_to_realm BEGIN INSERT INTO tern_change (source, realm, name) VALUES ('turn_origin_to_realm', OLD.realm, NULL); INSERT INTO tern_change (source, realm, name) VALUES ('turn_origin_to_realm', NEW.realm, NULL); END;
INSERT INTO tern_schema (version, applied) VALUES (1, 1796683483);
