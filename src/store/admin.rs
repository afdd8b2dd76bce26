//! The store's admin commands, what coturn's `turnadmin` does: `tern user
//! add|delete|list`, `tern secret add|delete|list`, `tern realm option`;
//! `tern usage list`, and the store line of `tern check`. Passwords and secrets come from a
//! prompt or standard input, never from the command line; listings are an
//! aligned table or JSON.

use std::fmt::Write as _;
use std::io::BufRead;
use std::time::{Duration, UNIX_EPOCH};

use super::{
    LAST_SECOND_OF_9999, PASSWORD_ENV, RealmOption, SCHEMA_VERSION, Store, StoreSettings, UsageFilter, key_hex,
};
use crate::cli::{RealmCommand, SecretCommand, StoreArgs, UsageCommand, UserCommand};
use crate::config::Config;
use crate::proto::stun::integrity::long_term_key_md5;

/// Bytes of a generated REST secret: 256 bits, as long as the HMAC-SHA1
/// block wants no more.
const GENERATED_SECRET_BYTES: usize = 32;

/// `tern user …`.
pub fn user(command: &UserCommand) -> Result<(), String> {
    run(async {
        match command {
            UserCommand::Add(args) => {
                let (config, store) = open(&args.user.store).await?;
                let realm = args.user.realm.clone().unwrap_or_else(|| config.realm.clone());
                let name = &args.user.name;
                let prompt = format!("Password for {name} in realm {realm}: ");
                let password =
                    if args.password_stdin { first_line_of_stdin("the password")? } else { prompt_twice(&prompt)? };
                let key = long_term_key_md5(name, &realm, &password);
                store.add_user(&realm, name, key).await.map_err(text)?;
                println!(
                    "added user {} to realm {} (MD5 key, as coturn stores it)",
                    printable(name),
                    printable(&realm)
                );
                Ok(())
            }
            UserCommand::Delete(args) => {
                let (config, store) = open(&args.store).await?;
                let realm = args.realm.clone().unwrap_or_else(|| config.realm.clone());
                if !store.delete_user(&realm, &args.name).await.map_err(text)? {
                    return Err(format!("no user {} in realm {}", printable(&args.name), printable(&realm)));
                }
                println!("deleted user {} from realm {}", printable(&args.name), printable(&realm));
                Ok(())
            }
            UserCommand::List(args) => {
                let (_, store) = open(&args.store).await?;
                let users = store.list_users(args.realm.as_deref()).await.map_err(text)?;
                let rows = users.iter().map(|user| vec![printable(&user.realm), printable(&user.name)]).collect();
                print_listing(args.json, &users, &["REALM", "USER"], rows)
            }
        }
    })
}

/// `tern secret …`.
pub fn secret(command: &SecretCommand) -> Result<(), String> {
    run(async {
        match command {
            SecretCommand::Add(args) => {
                let (config, store) = open(&args.store).await?;
                let realm = args.realm.clone().unwrap_or_else(|| config.realm.clone());
                let secret = if args.generate {
                    key_hex(&rand::random::<[u8; GENERATED_SECRET_BYTES]>())
                } else if args.secret_stdin {
                    first_line_of_stdin("the secret")?
                } else {
                    prompt_twice(&format!("Shared secret for realm {realm}: "))?
                };
                store.add_secret(&realm, &secret).await.map_err(text)?;
                if args.generate {
                    // The secret alone on standard output, for a script to take.
                    eprintln!("added a generated secret to realm {}", printable(&realm));
                    println!("{secret}");
                } else {
                    println!("added a secret to realm {}", printable(&realm));
                }
                Ok(())
            }
            SecretCommand::Delete(args) => {
                let (config, store) = open(&args.store).await?;
                let realm = args.realm.clone().unwrap_or_else(|| config.realm.clone());
                let secret = match (args.all, args.secret_stdin) {
                    (true, _) => None,
                    (false, true) => Some(first_line_of_stdin("the secret")?),
                    (false, false) => Some(prompt(&format!("Shared secret to delete from realm {realm}: "))?),
                };
                let deleted = store.delete_secrets(&realm, secret.as_deref()).await.map_err(text)?;
                if deleted == 0 && secret.is_some() {
                    return Err(format!("realm {} has no such secret", printable(&realm)));
                }
                println!(
                    "deleted {deleted} secret{} from realm {}",
                    if deleted == 1 { "" } else { "s" },
                    printable(&realm)
                );
                Ok(())
            }
            SecretCommand::List(args) => {
                let (_, store) = open(&args.store).await?;
                let secrets = store.list_secrets(args.realm.as_deref()).await.map_err(text)?;
                let rows =
                    secrets.iter().map(|entry| vec![printable(&entry.realm), printable(&entry.secret)]).collect();
                print_listing(args.json, &secrets, &["REALM", "SECRET"], rows)
            }
        }
    })
}

/// `tern realm …`.
pub fn realm(command: &RealmCommand) -> Result<(), String> {
    let RealmCommand::Option(args) = command;
    run(async {
        let (config, store) = open(&args.store).await?;
        if let (Some(option), Some(value)) = (args.option, args.value) {
            let realm = args.realm.clone().unwrap_or_else(|| config.realm.clone());
            store.set_realm_option(&realm, option, value).await.map_err(text)?;
            if value == 0 {
                println!("realm {}: {} removed", printable(&realm), option.name());
            } else {
                println!("realm {}: {} = {value}", printable(&realm), option.name());
            }
            return Ok(());
        }
        let mut realms = store.list_realm_options().await.map_err(text)?;
        realms.retain(|(realm, _)| args.realm.as_ref().is_none_or(|wanted| wanted == realm));
        if args.json {
            let listed: Vec<_> = realms
                .iter()
                .map(|(realm, options)| {
                    let mut entry = serde_json::json!({ "realm": realm });
                    for option in RealmOption::ALL {
                        entry[option.name()] = serde_json::json!(options.get(option));
                    }
                    entry
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&listed).map_err(|e| e.to_string())?);
            return Ok(());
        }
        let mut headers = vec!["REALM"];
        headers.extend(RealmOption::ALL.map(RealmOption::name));
        let rows = realms
            .iter()
            .map(|(realm, options)| {
                let mut row = vec![printable(realm)];
                row.extend(RealmOption::ALL.map(|option| options.get(option).map_or("-".into(), |v| v.to_string())));
                row
            })
            .collect();
        print!("{}", table(&headers, rows));
        Ok(())
    })
}

/// `tern usage …`.
pub fn usage(command: &UsageCommand) -> Result<(), String> {
    let UsageCommand::List(args) = command;
    run(async {
        let (_, store) = open(&args.store).await?;
        let filter = UsageFilter {
            realm: args.realm.clone(),
            username: args.user.clone(),
            since: args.since,
            limit: usize::try_from(args.limit).unwrap_or(usize::MAX),
        };
        let records = store.usage(&filter).await.map_err(text)?;
        let rows = records
            .iter()
            .map(|record| {
                let relayed: Vec<String> = record.relayed.iter().map(ToString::to_string).collect();
                vec![
                    unix_time(record.ended),
                    (record.ended - record.started).to_string(),
                    printable(&record.node),
                    printable(&record.realm),
                    printable(&record.username),
                    record.transport.to_string(),
                    record.client.to_string(),
                    relayed.join(","),
                    record.packets_to_peer.to_string(),
                    record.bytes_to_peer.to_string(),
                    record.packets_to_client.to_string(),
                    record.bytes_to_client.to_string(),
                ]
            })
            .collect();
        let headers = [
            "ENDED",
            "SECONDS",
            "NODE",
            "REALM",
            "USER",
            "TRANSPORT",
            "CLIENT",
            "RELAYED",
            "PACKETS_TO_PEER",
            "BYTES_TO_PEER",
            "PACKETS_TO_CLIENT",
            "BYTES_TO_CLIENT",
        ];
        print_listing(args.json, &records, &headers, rows)
    })
}

/// Unix seconds as an RFC 3339 time (UTC); the number itself past the
/// year 9999, which RFC 3339 cannot write.
fn unix_time(secs: u64) -> String {
    if secs > LAST_SECOND_OF_9999 {
        return secs.to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `tern check`'s line about the store: reachable or not, and the schema
/// version; never an error, since `tern serve` starts without its store.
pub fn check_line(settings: &StoreSettings) -> String {
    let url = &settings.url;
    let status = run(async { Store::new(settings).map_err(text)?.status().await.map_err(text) });
    match status {
        Ok(status) if status.schema_version == 0 => {
            format!("# store: {url}: reachable; tern's tables are not there yet (tern creates them on first use)")
        }
        Ok(status) if status.schema_version > SCHEMA_VERSION => format!(
            "# store: {url}: reachable, tern schema version {} (newer than this tern's {SCHEMA_VERSION}: upgrade tern)",
            status.schema_version
        ),
        Ok(status) => format!("# store: {url}: reachable, tern schema version {}", status.schema_version),
        Err(error) => format!("# store: {url}: {error}; tern serve starts without it and retries"),
    }
}

/// The configuration and its store, migrated.
async fn open(args: &StoreArgs) -> Result<(Config, Store), String> {
    let config = args.source().load().map_err(|e| e.to_string())?;
    let settings = config.store().cloned().ok_or_else(|| {
        format!(
            "no store: give --store URL, or --config FILE with [store] url (the password goes in store.password_file \
             or {PASSWORD_ENV})"
        )
    })?;
    let store = Store::open(&settings).await.map_err(text)?;
    Ok((config, store))
}

/// Runs an admin command on a runtime of its own.
fn run<T>(command: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(command)
}

fn text(error: super::StoreError) -> String {
    error.to_string()
}

/// A listing as JSON or as a table.
fn print_listing<T: serde::Serialize>(
    json: bool,
    entries: &[T],
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(), String> {
    if json {
        println!("{}", serde_json::to_string_pretty(entries).map_err(|e| e.to_string())?);
    } else {
        print!("{}", table(headers, rows));
    }
    Ok(())
}

/// `rows` under `headers`, each column as wide as its widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` as is, or quoted and escaped when it holds control characters
/// (a name from the database must not move the terminal's cursor).
fn printable(text: &str) -> String {
    if text.chars().any(char::is_control) { format!("{text:?}") } else { text.to_owned() }
}

/// The first line of standard input, which must not be empty.
pub fn first_line_of_stdin(what: &str) -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read {what}: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() {
        return Err(format!("{what} is empty (give one line on standard input)"));
    }
    Ok(line.to_owned())
}

fn prompt(text: &str) -> Result<String, String> {
    let answer = rpassword::prompt_password(text).map_err(|e| format!("cannot read from the terminal: {e}"))?;
    if answer.is_empty() {
        return Err("nothing was typed".into());
    }
    Ok(answer)
}

/// Asks twice, so a typo does not lock anyone out.
fn prompt_twice(text: &str) -> Result<String, String> {
    let first = prompt(text)?;
    if prompt("Again: ")? != first {
        return Err("the two entries differ".into());
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![vec!["north.gov".into(), "gorst".into()], vec!["r".into(), "stranger-come-knocking".into()]];
        assert_eq!(
            table(&["REALM", "USER"], rows),
            "REALM      USER\nnorth.gov  gorst\nr          stranger-come-knocking\n"
        );
        assert_eq!(table(&["REALM", "USER"], Vec::new()), "REALM  USER\n");
    }

    #[test]
    fn times_are_rfc_3339_until_the_year_9999() {
        assert_eq!(unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(unix_time(LAST_SECOND_OF_9999), "9999-12-31T23:59:59Z");
        assert_eq!(unix_time(u64::MAX), u64::MAX.to_string());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("alice"), "alice");
        assert_eq!(printable("a\u{1b}[2Jb"), "\"a\\u{1b}[2Jb\"");
    }
}
