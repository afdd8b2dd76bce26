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
CREATE TABLE IF NOT EXISTS tern_usage (id bigserial PRIMARY KEY, node varchar(255) NOT NULL, realm varchar(127) NOT NULL, username varchar(513) NOT NULL, transport varchar(8) NOT NULL, client varchar(64) NOT NULL, relayed varchar(64) NOT NULL, started bigint NOT NULL, ended bigint NOT NULL, packets_to_peer bigint NOT NULL, bytes_to_peer bigint NOT NULL, packets_to_client bigint NOT NULL, bytes_to_client bigint NOT NULL);
CREATE OR REPLACE FUNCTION tern_notify_change() RETURNS trigger LANGUAGE plpgsql AS $tern$
                 BEGIN
                   IF TG_OP <> 'INSERT' THEN
                     PERFORM pg_notify('tern_changes', json_build_object('source', TG_TABLE_NAME,
                       'realm', left(to_jsonb(OLD)->>'realm', 200), 'name', left(to_jsonb(OLD)->>'name', 600))::text);
                   END IF;
                   IF TG_OP <> 'DELETE' THEN
                     PERFORM pg_notify('tern_changes', json_build_object('source', TG_TABLE_NAME,
                       'realm', left(to_jsonb(NEW)->>'realm', 200), 'name', left(to_jsonb(NEW)->>'name', 600))::text);
                   END IF;
                   RETURN NULL;
                 END
                 $tern$;
DROP TRIGGER IF EXISTS tern_changes ON turnusers_lt;
CREATE TRIGGER tern_changes AFTER INSERT OR UPDATE OR DELETE ON turnusers_lt FOR EACH ROW EXECUTE FUNCTION tern_notify_change();
DROP TRIGGER IF EXISTS tern_changes ON turn_secret;
CREATE TRIGGER tern_changes AFTER INSERT OR UPDATE OR DELETE ON turn_secret FOR EACH ROW EXECUTE FUNCTION tern_notify_change();
DROP TRIGGER IF EXISTS tern_changes ON allowed_peer_ip;
CREATE TRIGGER tern_changes AFTER INSERT OR UPDATE OR DELETE ON allowed_peer_ip FOR EACH ROW EXECUTE FUNCTION tern_notify_change();
DROP TRIGGER IF EXISTS tern_changes ON denied_peer_ip;
CREATE TRIGGER tern_changes AFTER INSERT OR UPDATE OR DELETE ON denied_peer_ip FOR EACH ROW EXECUTE FUNCTION tern_notify_change();
DROP TRIGGER IF EXISTS tern_changes ON turn_realm_option;
CREATE TRIGGER tern_changes AFTER INSERT OR UPDATE OR DELETE ON turn_realm_option FOR EACH ROW EXECUTE FUNCTION tern_notify_change();
DROP TRIGGER IF EXISTS tern_changes ON turn_origin_to_realm;
CREATE TRIGGER tern_changes AFTER INSERT OR UPDATE OR DELETE ON turn_origin_to_realm FOR EACH ROW EXECUTE FUNCTION tern_notify_change();
INSERT INTO tern_schema (version, applied) VALUES (1, 1796683483);
