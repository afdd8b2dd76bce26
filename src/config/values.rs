//! Setting values: what each key and flag may hold, and how it is written.
//!
//! A [`Rule`] turns what the file gives (a string, a number, a TOML value)
//! into the value tern uses, or says what is wrong with it; it also writes
//! the value back as the file would hold it, for `tern check`. The file and
//! the command line go through the same rules, so they accept the same
//! values with the same messages. Serde reaches a rule through the adapters
//! [`One`], [`Maybe`], [`BlankOr`], [`List`] and [`Map`]
//! (`#[serde(with = "List::<RelayIp>")]`), so every value is checked as it
//! is read and a parsed setting is a valid one; sections go through
//! [`table`]. Rules across keys are not
//! here: they need the whole configuration (`Config::new`).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::proto::server::ExternalIp;
use crate::store::StoreUrl;

/// REALM is at most 763 bytes (RFC 8489 §14.9), and so is SOFTWARE (§14.14).
const MAX_REALM_LEN: usize = 763;
/// More workers than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;
/// What `tern check` prints instead of a password, key or secret.
pub const REDACTED: &str = "<redacted>";
/// Starts the serde error of a value a rule refused. The rule's message
/// names the bad value itself, so it is reported as written, without the
/// TOML position that serde's own errors (a wrong type, an unknown key) get.
const VALUE_ERROR: char = '\u{1f}';

/// One kind of setting value.
pub trait Rule {
    /// What the file holds.
    type Input: DeserializeOwned + Serialize;
    /// What tern uses.
    type Value;

    /// The value `input` stands for, or what is wrong with it (the caller
    /// names the key).
    fn check(input: Self::Input) -> Result<Self::Value, String>;

    /// `value` as the file holds it.
    fn render(value: &Self::Value) -> Self::Input;
}

/// A [`Rule`] for a value written as text that its `Display` writes back.
pub trait TextRule {
    type Value: fmt::Display;

    /// The value `text` stands for, or what is wrong with it.
    fn parse(text: String) -> Result<Self::Value, String>;
}

impl<R: TextRule> Rule for R {
    type Input = String;
    type Value = R::Value;

    fn check(text: String) -> Result<R::Value, String> {
        R::parse(text)
    }

    fn render(value: &R::Value) -> String {
        value.to_string()
    }
}

/// Parses a flag's text by rule `R`, for clap's `value_parser`.
pub fn flag<R: Rule<Input = String>>(text: &str) -> Result<R::Value, String> {
    R::check(text.to_owned())
}

/// The message of a value error from [`Checked`], `None` for any other
/// serde error.
pub(super) fn value_error_message(message: &str) -> Option<&str> {
    message.strip_prefix(VALUE_ERROR)
}

fn value_error<E: de::Error>(message: String) -> E {
    E::custom(format_args!("{VALUE_ERROR}{message}"))
}

/// A value that passed rule `R`, read and written as `R` says.
pub struct Checked<R: Rule>(pub R::Value);

impl<'de, R: Rule> Deserialize<'de> for Checked<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        R::check(R::Input::deserialize(deserializer)?).map(Self).map_err(value_error)
    }
}

impl<R: Rule> Serialize for Checked<R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        R::render(&self.0).serialize(serializer)
    }
}

/// `#[serde(with = "One::<R>")]`: a value.
pub struct One<R>(PhantomData<R>);

impl<R: Rule> One<R> {
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<R::Value, D::Error> {
        Checked::<R>::deserialize(deserializer).map(|checked| checked.0)
    }

    pub fn serialize<S: Serializer>(value: &R::Value, serializer: S) -> Result<S::Ok, S::Error> {
        R::render(value).serialize(serializer)
    }
}

/// `#[serde(with = "Maybe::<R>")]`: a value that may be left out.
pub struct Maybe<R>(PhantomData<R>);

impl<R: Rule> Maybe<R> {
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<R::Value>, D::Error> {
        One::<R>::deserialize(deserializer).map(Some)
    }

    pub fn serialize<S: Serializer>(value: &Option<R::Value>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&R::render(value)),
            None => serializer.serialize_none(),
        }
    }
}

/// `#[serde(with = "BlankOr::<R>")]`: a string where `""` means unset.
pub struct BlankOr<R>(PhantomData<R>);

impl<R: Rule<Input = String>> BlankOr<R> {
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<R::Value>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() { Ok(None) } else { R::check(text).map(Some).map_err(value_error) }
    }

    pub fn serialize<S: Serializer>(value: &Option<R::Value>, serializer: S) -> Result<S::Ok, S::Error> {
        value.as_ref().map(R::render).unwrap_or_default().serialize(serializer)
    }
}

/// `#[serde(with = "List::<R>")]`: an array; an error names the entry's index.
pub struct List<R>(PhantomData<R>);

impl<R: Rule> List<R> {
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<R::Value>, D::Error> {
        let list = Vec::<Checked<R>>::deserialize(deserializer)?;
        Ok(list.into_iter().map(|checked| checked.0).collect())
    }

    pub fn serialize<S: Serializer>(values: &[R::Value], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(R::render))
    }
}

/// `#[serde(with = "Map::<R>")]`: a table of values by name; an error names
/// the entry.
pub struct Map<R>(PhantomData<R>);

impl<R: Rule> Map<R> {
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, R::Value>, D::Error> {
        let map = BTreeMap::<String, Checked<R>>::deserialize(deserializer)?;
        Ok(map.into_iter().map(|(name, checked)| (name, checked.0)).collect())
    }

    pub fn serialize<S: Serializer>(values: &BTreeMap<String, R::Value>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(values.iter().map(|(name, value)| (name, R::render(value))))
    }
}

/// `#[serde(deserialize_with = "table")]`: a section, which must be a TOML
/// table. Serde would also read a struct from an array, by position, with
/// the struct's defaults filling in for missing entries: `auth = []` would
/// pass as an empty `[auth]`.
pub fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct TableVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for TableVisitor<T> {
        type Value = T;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a table")
        }

        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(TableVisitor(PhantomData))
}

/// `IP:PORT`, any address: where to listen.
pub struct Address;

impl TextRule for Address {
    type Value = SocketAddr;

    fn parse(text: String) -> Result<SocketAddr, String> {
        SocketAddr::from_str(&text)
            .map_err(|_| format!("{text:?} is not an IP:port address (like 0.0.0.0:3478 or [::]:3478)"))
    }
}

/// `listen`: at least one [`Address`].
pub struct ListenAddresses;

impl Rule for ListenAddresses {
    type Input = Vec<Checked<Address>>;
    type Value = Vec<SocketAddr>;

    fn check(list: Self::Input) -> Result<Vec<SocketAddr>, String> {
        if list.is_empty() {
            return Err("needs at least one address".into());
        }
        Ok(list.into_iter().map(|checked| checked.0).collect())
    }

    fn render(list: &Vec<SocketAddr>) -> Self::Input {
        list.iter().copied().map(Checked).collect()
    }
}

/// An `IP:PORT` another TURN server listens on: a client must be able to
/// reach it, so no wildcard address and no port 0.
pub struct AlternateServer;

impl TextRule for AlternateServer {
    type Value = SocketAddr;

    fn parse(text: String) -> Result<SocketAddr, String> {
        let addr = Address::parse(text.clone())?;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(format!("{text:?} is not an address a client can reach (no wildcard IP, no port 0)"));
        }
        Ok(addr)
    }
}

/// A relay address: concrete, since it is bound and advertised.
pub struct RelayIp;

impl TextRule for RelayIp {
    type Value = IpAddr;

    fn parse(text: String) -> Result<IpAddr, String> {
        concrete_ip(&text, "relay addresses must be concrete")
    }
}

/// RFC 5780's second address: concrete, since OTHER-ADDRESS names it.
pub struct AlternateIp;

impl TextRule for AlternateIp {
    type Value = IpAddr;

    fn parse(text: String) -> Result<IpAddr, String> {
        concrete_ip(&text, "the alternate address must be concrete")
    }
}

fn concrete_ip(text: &str, why: &str) -> Result<IpAddr, String> {
    let ip = IpAddr::from_str(text).map_err(|_| format!("{text:?} is not an IP address"))?;
    if ip.is_unspecified() {
        return Err(format!("{text:?} is a wildcard; {why}"));
    }
    Ok(ip)
}

/// `MIN-MAX`, both inclusive.
pub struct PortRange;

impl Rule for PortRange {
    type Input = String;
    type Value = (u16, u16);

    fn check(text: String) -> Result<(u16, u16), String> {
        let parsed = text
            .split_once('-')
            .and_then(|(min, max)| Some((min.trim().parse::<u16>().ok()?, max.trim().parse::<u16>().ok()?)));
        match parsed {
            Some((min, max)) if min >= 1 && min <= max => Ok((min, max)),
            _ => Err(format!("{text:?} is not a port range like 49152-65535")),
        }
    }

    fn render((min, max): &(u16, u16)) -> String {
        format!("{min}-{max}")
    }
}

/// A CIDR block, or a single address.
pub struct PeerRange;

impl TextRule for PeerRange {
    type Value = IpNet;

    fn parse(text: String) -> Result<IpNet, String> {
        IpNet::from_str(&text)
            .or_else(|_| IpAddr::from_str(&text).map(IpNet::from))
            .map_err(|_| format!("{text:?} is not an address or CIDR block like 10.0.0.0/8"))
    }
}

/// `PUBLIC` or `PUBLIC/PRIVATE`.
pub struct ExternalAddress;

impl Rule for ExternalAddress {
    type Input = String;
    type Value = ExternalIp;

    fn check(text: String) -> Result<ExternalIp, String> {
        let bad = || format!("{text:?} is not PUBLIC or PUBLIC/PRIVATE, like 203.0.113.5/10.0.0.5");
        let (public, private) = match text.split_once('/') {
            Some((public, private)) => (public, Some(private)),
            None => (text.as_str(), None),
        };
        let public = IpAddr::from_str(public).map_err(|_| bad())?;
        let private = private.map(IpAddr::from_str).transpose().map_err(|_| bad())?;
        if private.is_some_and(|p| p.is_ipv4() != public.is_ipv4()) {
            return Err(format!("{text:?} maps between address families"));
        }
        Ok(ExternalIp { public, private })
    }

    fn render(external: &ExternalIp) -> String {
        match external.private {
            Some(private) => format!("{}/{private}", external.public),
            None => external.public.to_string(),
        }
    }
}

/// A domain name for ALTERNATE-DOMAIN: ASCII (IDNA A-labels), letters,
/// digits, hyphens and dots, under 256 bytes (RFC 8489 §14.16).
pub struct Domain;

impl TextRule for Domain {
    type Value = String;

    fn parse(domain: String) -> Result<String, String> {
        let valid = !domain.is_empty()
            && domain.len() < 256
            && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            Ok(domain)
        } else {
            Err(format!("{domain:?} is not a domain name (ASCII letters, digits, '-' and '.')"))
        }
    }
}

/// REALM: what every long-term key is made with, sent in quotes.
pub struct Realm;

impl TextRule for Realm {
    type Value = String;

    fn parse(realm: String) -> Result<String, String> {
        if realm.is_empty() {
            return Err("must not be empty".into());
        }
        if realm.len() > MAX_REALM_LEN {
            return Err(format!("is {} bytes; at most {MAX_REALM_LEN}", realm.len()));
        }
        if realm.chars().any(|c| c.is_control() || c == '"') {
            return Err("must not contain control characters or quotes".into());
        }
        Ok(realm)
    }
}

/// SOFTWARE, sent with every answer.
pub struct Software;

impl TextRule for Software {
    type Value = String;

    fn parse(software: String) -> Result<String, String> {
        if software.len() > MAX_REALM_LEN {
            return Err(format!("is {} bytes; at most {MAX_REALM_LEN}", software.len()));
        }
        Ok(software)
    }
}

/// A user or group name, looked up once the configuration is whole.
pub struct Name;

impl TextRule for Name {
    type Value = String;

    fn parse(name: String) -> Result<String, String> {
        Ok(name)
    }
}

/// A file, read once the configuration is whole.
pub struct FilePath;

impl Rule for FilePath {
    type Input = String;
    type Value = PathBuf;

    fn check(path: String) -> Result<PathBuf, String> {
        Ok(PathBuf::from(path))
    }

    fn render(path: &PathBuf) -> String {
        path.display().to_string()
    }
}

/// `[store] url`: a URL its engine's client accepts.
pub struct StoreLocation;

impl TextRule for StoreLocation {
    type Value = StoreUrl;

    fn parse(text: String) -> Result<StoreUrl, String> {
        StoreUrl::parse(&text)
    }
}

/// `--store`: a [`StoreLocation`] without a password, which would be in the
/// process list for every user of the machine to read.
pub struct StoreFlag;

impl TextRule for StoreFlag {
    type Value = StoreUrl;

    fn parse(text: String) -> Result<StoreUrl, String> {
        let url = StoreUrl::parse(&text)?;
        if url.has_password() {
            return Err(format!(
                "{url}: a password on the command line is visible to every user of this machine; put it in \
                 store.password_file or {}",
                crate::store::PASSWORD_ENV
            ));
        }
        Ok(url)
    }
}

/// A TURN REST API shared secret; written back redacted.
pub struct Secret;

impl Rule for Secret {
    type Input = String;
    type Value = String;

    fn check(secret: String) -> Result<String, String> {
        if secret.is_empty() { Err("must not be empty".into()) } else { Ok(secret) }
    }

    fn render(_: &String) -> String {
        REDACTED.to_owned()
    }
}

/// Worker threads: 0 means one per CPU core, resolved as it is read.
pub struct Workers;

impl Workers {
    pub fn per_core() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl Rule for Workers {
    type Input = usize;
    type Value = usize;

    fn check(workers: usize) -> Result<usize, String> {
        match workers {
            0 => Ok(Self::per_core()),
            n if n > MAX_WORKERS => Err(format!("{n} is more than the maximum of {MAX_WORKERS}")),
            n => Ok(n),
        }
    }

    fn render(workers: &usize) -> usize {
        *workers
    }
}

/// A count or a number of seconds that must be at least 1.
pub struct Positive;

impl Rule for Positive {
    type Input = u32;
    type Value = NonZeroU32;

    fn check(value: u32) -> Result<NonZeroU32, String> {
        NonZeroU32::new(value).ok_or_else(|| "must be at least 1".to_owned())
    }

    fn render(value: &NonZeroU32) -> u32 {
        value.get()
    }
}

/// A default that [`Positive`] would accept.
pub const fn positive(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).expect("a positive setting's default is not 0")
}

/// A static user's credential: a password, or the long-term key itself
/// (MD5 of `user:realm:password`, as coturn's `turnadmin -k` prints it).
#[derive(Clone, PartialEq, Eq)]
pub enum UserSecret {
    Password(String),
    Key([u8; 16]),
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Password(_) => "Password(..)",
            Self::Key(_) => "Key(..)",
        })
    }
}

/// An `auth.users` entry: `"password"` or `{ key = "0x<32 hex digits>" }`;
/// written back redacted.
pub struct Credential;

impl Rule for Credential {
    type Input = toml::Value;
    type Value = UserSecret;

    fn check(value: toml::Value) -> Result<UserSecret, String> {
        const EXPECTED: &str = "expected a password string or { key = \"0x<32 hex digits>\" }";
        match value {
            toml::Value::String(password) if !password.is_empty() => Ok(UserSecret::Password(password)),
            toml::Value::String(_) => Err("the password must not be empty".into()),
            toml::Value::Table(table) => {
                let key = match (table.len(), table.get("key")) {
                    (1, Some(toml::Value::String(key))) => key,
                    _ => return Err(EXPECTED.into()),
                };
                let hex = key.strip_prefix("0x").unwrap_or(key);
                if hex.len() != 32 {
                    return Err(format!("key {key:?} is not 32 hex digits"));
                }
                crate::store::parse_key_hex(hex).map(UserSecret::Key).ok_or_else(|| format!("key {key:?} is not hex"))
            }
            _ => Err(EXPECTED.into()),
        }
    }

    fn render(_: &UserSecret) -> toml::Value {
        toml::Value::String(REDACTED.into())
    }
}

/// `name` as a TOML key: bare when it can be, quoted otherwise.
pub fn toml_key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { name.to_owned() } else { toml::Value::String(name.to_owned()).to_string() }
}

/// `NAME:PASSWORD` for `--user`.
pub fn user_flag(text: &str) -> Result<(String, UserSecret), String> {
    match text.split_once(':') {
        Some((name, password)) if !name.is_empty() && !password.is_empty() => {
            Ok((name.into(), UserSecret::Password(password.into())))
        }
        _ => Err(format!("{text:?} is not NAME:PASSWORD")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
