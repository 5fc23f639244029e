//! The typed values of `pipeline.yaml`: each is parsed once, when the file is read, and code past
//! [`PipelineConfig::parse`](super::PipelineConfig::parse) holds the type, never the text.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::redact_password;

/// A value that must not be shown: `Debug` and `Display` print `***`. [`Secret::expose`] is the one
/// way to the value, for the client that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

/// Any scalar, as text (`linger.ms: 5` is `"5"`); an error never repeats the value.
impl<'de> Deserialize<'de> for Secret<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Integer(i64),
            Number(f64),
            Flag(bool),
        }
        let scalar = Scalar::deserialize(d).map_err(|_| serde::de::Error::custom("must be a text or a number"))?;
        Ok(Secret(match scalar {
            Scalar::Text(t) => t,
            Scalar::Integer(i) => i.to_string(),
            Scalar::Number(n) => n.to_string(),
            Scalar::Flag(b) => b.to_string(),
        }))
    }
}

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `kafka.brokers`: the broker `cashflow up` runs, or a cluster's bootstrap list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Brokers {
    /// The bundled broker, run under `--data-dir` and listening on `kafka.embedded.listen`.
    Embedded,
    /// Each bootstrap broker, `host:port` (or `host`, on the client's default port).
    Bootstrap(Vec<String>),
}

impl FromStr for Brokers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "embedded" {
            return Ok(Brokers::Embedded);
        }
        let list: Vec<String> = s.split(',').map(str::trim).filter(|b| !b.is_empty()).map(str::to_owned).collect();
        if list.is_empty() {
            Err(format!("{s:?} must be \"embedded\" or a host:port list"))
        } else {
            Ok(Brokers::Bootstrap(list))
        }
    }
}

/// As written in `pipeline.yaml`.
impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Brokers::Embedded => f.write_str("embedded"),
            Brokers::Bootstrap(list) => f.write_str(&list.join(",")),
        }
    }
}

/// `host:port` as clients dial it: a name or an IPv4 address, or an IPv6 address in brackets,
/// and a port other than 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort(String);

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid = s.rsplit_once(':').is_some_and(|(host, port)| {
            let plain = !host.is_empty() && !host.contains(|c: char| c.is_whitespace() || "/@?#[]".contains(c));
            let ipv6 = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
            (ipv6 || plain && !host.contains(':')) && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if valid { Ok(HostPort(s.to_owned())) } else { Err(format!("{s:?} is not a host:port address")) }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `kafka.embedded.storage`: where the bundled broker keeps the log.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum BrokerStorage {
    /// `sqlite`: a file under `--data-dir`, served by one broker.
    #[default]
    Sqlite,
    /// `postgres://…`: one log that every broker given this URL serves, a cluster.
    Postgres(Secret<String>),
}

impl FromStr for BrokerStorage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sqlite" {
            Ok(BrokerStorage::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(BrokerStorage::Postgres(Secret::new(s.to_owned())))
        } else {
            Err(format!("{:?} must be \"sqlite\" or a postgres:// URL", redact_password(s)))
        }
    }
}

/// As written, with any password replaced by `***`.
impl fmt::Display for BrokerStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerStorage::Sqlite => f.write_str("sqlite"),
            BrokerStorage::Postgres(url) => f.write_str(&redact_password(url.expose())),
        }
    }
}

impl fmt::Debug for BrokerStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// `store.url`: where entries and balances are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://<path>` (a relative path resolves against `--data-dir`), or another `sqlite:`
    /// form, given to SQLite as written.
    Sqlite(String),
    /// `postgres://…`, which may hold a password.
    Postgres(Secret<String>),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("sqlite:") {
            Ok(StoreUrl::Sqlite(s.to_owned()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(Secret::new(s.to_owned())))
        } else {
            Err(format!("{:?} must start with sqlite:// or postgres://", redact_password(s)))
        }
    }
}

impl StoreUrl {
    /// The URL to connect to, with a relative SQLite path resolved against `data_dir`.
    pub fn resolved(&self, data_dir: &Path) -> Secret<String> {
        Secret::new(match self {
            StoreUrl::Sqlite(url) => match url.strip_prefix("sqlite://") {
                Some(path) if !path.starts_with('/') && !path.starts_with(':') => {
                    format!("sqlite://{}", data_dir.join(path).display())
                }
                _ => url.clone(),
            },
            StoreUrl::Postgres(url) => url.expose().clone(),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn scheme(&self) -> &'static str {
        match self {
            StoreUrl::Sqlite(_) => "sqlite",
            StoreUrl::Postgres(_) => "postgres",
        }
    }
}

/// The URL with its password (in the authority or a `password=` parameter) replaced by `***`.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(url) => f.write_str(url),
            StoreUrl::Postgres(url) => f.write_str(&redact_password(url.expose())),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// Deserializes any of these from its text.
macro_rules! from_text {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
from_text!(Brokers, BrokerStorage, HostPort, StoreUrl);

/// A duration: a whole number in the unit its key names (`_ms`, `_secs`), or a text with its own
/// unit, e.g. `"500ms"`, `"10s"`, `"1m 30s"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Number(u64),
    Text(String),
}

impl DurationText {
    fn into_duration<E: serde::de::Error>(self, unit: fn(u64) -> Duration) -> Result<Duration, E> {
        match self {
            DurationText::Number(n) => Ok(unit(n)),
            DurationText::Text(t) => humantime::parse_duration(&t)
                .map_err(|_| E::custom(format!("{t:?} is not a duration; e.g. 500ms, 10s, 1m"))),
        }
    }
}

/// Durations whose key ends in `_ms`.
pub(super) mod millis {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        DurationText::deserialize(d)?.into_duration(Duration::from_millis)
    }

    /// One delay of a list, parsed where it stands, so a problem names its index.
    struct Millis(Duration);

    impl<'de> Deserialize<'de> for Millis {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize(d).map(Millis)
        }
    }

    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<Millis>::deserialize(d)?.into_iter().map(|Millis(m)| m).collect())
    }
}

/// Durations whose key ends in `_secs`.
pub(super) mod secs {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        DurationText::deserialize(d)?.into_duration(Duration::from_secs)
    }
}
