//! Signing keys: Ed25519, one PKCS#8 PEM file per key, named by its `kid` (`k` + its creation
//! time, `kYYYYMMDDhhmmssSSS`). The newest key signs. An older key keeps verifying until its
//! successor has signed for `overlap` (the token TTL plus the clock leeway): by then every token
//! it signed has expired, and it is retired. `cashflow keys rotate` adds a key and deletes the
//! retired ones; running services pick the change up within [`RELOAD_EVERY`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDateTime, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::Serialize;

/// How often a running service re-reads the key directory.
pub const RELOAD_EVERY: Duration = Duration::from_secs(RELOAD_SECS);
pub const RELOAD_SECS: u64 = 5;

const KID_TIME: &str = "%Y%m%d%H%M%S%3f";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One public key as a JWK (RFC 8037, OKP / Ed25519).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Jwk {
    #[schema(value_type = String, example = "OKP")]
    pub kty: &'static str,
    #[schema(value_type = String, example = "Ed25519")]
    pub crv: &'static str,
    #[schema(value_type = String, example = "EdDSA")]
    pub alg: &'static str,
    #[serde(rename = "use")]
    #[schema(value_type = String, example = "sig")]
    pub use_: &'static str,
    pub kid: String,
    pub x: String,
}

/// A key's place in the rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// The newest key: it signs new tokens.
    Signing,
    /// Superseded; its tokens are still accepted until then.
    Verifying { until: DateTime<Utc> },
    /// Superseded long enough that none of its tokens can be valid.
    Retired,
}

/// What the directory holds about one key.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub kid: String,
    pub created: DateTime<Utc>,
    pub status: KeyStatus,
    pub path: PathBuf,
}

/// The keys of one deployment at one moment.
#[derive(Clone)]
pub struct KeyRing {
    /// (kid, signing key) of the newest key.
    signing: (String, EncodingKey),
    /// Keys that verify: the signing key and the superseded ones still in their overlap.
    public: Vec<Jwk>,
    decoding: HashMap<String, DecodingKey>,
    keys: Vec<KeyInfo>,
}

impl KeyRing {
    /// Loads every `*.pem` in `dir`; creates the directory and a first key when there is none.
    pub fn load_or_create(dir: &Path, overlap: Duration) -> Result<KeyRing, KeyError> {
        let mut files = pem_files(dir)?;
        if files.is_empty() {
            files.push(Self::create_key(dir, Utc::now())?);
        }
        let mut keys = Vec::with_capacity(files.len());
        for path in files {
            keys.push(read_key(&path)?);
        }
        keys.sort_by(|a, b| (a.created, &a.kid).cmp(&(b.created, &b.kid)));
        let Some(newest) = keys.last() else {
            return Err(KeyError::Invalid { path: dir.to_owned(), reason: "no keys".into() });
        };
        let invalid = |e: String| KeyError::Invalid { path: newest.path.clone(), reason: e };
        let pem = newest.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| invalid(e.to_string()))?;
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let signing = (newest.kid.clone(), encoding);

        let now = Utc::now();
        let overlap = chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::MAX);
        let successors = keys.iter().skip(1).map(|k| Some(k.created)).chain([None]);
        let mut ring = KeyRing { signing, public: Vec::new(), decoding: HashMap::new(), keys: Vec::new() };
        for (key, successor) in keys.iter().zip(successors) {
            let status = match successor {
                None => KeyStatus::Signing,
                Some(at) if at.checked_add_signed(overlap).is_none_or(|until| until > now) => {
                    KeyStatus::Verifying { until: at.checked_add_signed(overlap).unwrap_or(DateTime::<Utc>::MAX_UTC) }
                }
                Some(_) => KeyStatus::Retired,
            };
            if status != KeyStatus::Retired {
                let x = URL_SAFE_NO_PAD.encode(key.key.verifying_key().as_bytes());
                if let Ok(decoding) = DecodingKey::from_ed_components(&x) {
                    ring.decoding.insert(key.kid.clone(), decoding);
                }
                ring.public.push(Jwk {
                    kty: "OKP",
                    crv: "Ed25519",
                    alg: "EdDSA",
                    use_: "sig",
                    kid: key.kid.clone(),
                    x,
                });
            }
            ring.keys.push(KeyInfo { kid: key.kid.clone(), created: key.created, status, path: key.path.clone() });
        }
        Ok(ring)
    }

    /// Writes a new key created at `created` (its kid says when); it signs from the next load.
    pub fn create_key(dir: &Path, created: DateTime<Utc>) -> Result<PathBuf, KeyError> {
        let io = |source| KeyError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let kid = format!("k{}", created.format(KID_TIME));
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Invalid { path: dir.to_owned(), reason: e.to_string() })?;
        let path = dir.join(format!("{kid}.pem"));
        write_private(&path, pem.as_bytes()).map_err(io)?;
        tracing::info!(kid = %kid, "signing key created");
        Ok(path)
    }

    /// Adds a signing key and deletes the keys retired before it. Returns the ring as it is now.
    pub fn rotate(dir: &Path, overlap: Duration) -> Result<KeyRing, KeyError> {
        let before = KeyRing::load_or_create(dir, overlap)?;
        let newest = before.keys.last().map(|k| k.created).unwrap_or_default();
        // Kids have millisecond resolution and order the keys: never reuse or go back.
        let created = Utc::now().max(newest + chrono::Duration::milliseconds(1));
        Self::create_key(dir, created)?;
        for retired in before.keys.iter().filter(|k| k.status == KeyStatus::Retired) {
            std::fs::remove_file(&retired.path)
                .map_err(|source| KeyError::Io { path: retired.path.clone(), source })?;
            tracing::info!(kid = %retired.kid, "retired signing key deleted");
        }
        KeyRing::load_or_create(dir, overlap)
    }

    pub fn signing(&self) -> (&str, &EncodingKey) {
        (&self.signing.0, &self.signing.1)
    }

    /// The public keys that verify, for the JWKS.
    pub fn jwks(&self) -> &[Jwk] {
        &self.public
    }

    /// The verifying key with this kid, unless it is unknown or retired.
    pub fn decoding_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.decoding.get(kid)
    }

    /// Every key in the directory, oldest first.
    pub fn keys(&self) -> &[KeyInfo] {
        &self.keys
    }
}

/// A key directory that running services share, re-read every [`RELOAD_EVERY`] so a rotation
/// takes effect without a restart.
pub struct KeyStore {
    dir: PathBuf,
    overlap: Duration,
    ring: RwLock<Arc<KeyRing>>,
    pub(crate) loaded: Mutex<Instant>,
}

impl KeyStore {
    pub fn open(dir: &Path, overlap: Duration) -> Result<Arc<KeyStore>, KeyError> {
        let ring = KeyRing::load_or_create(dir, overlap)?;
        Ok(Arc::new(KeyStore {
            dir: dir.to_owned(),
            overlap,
            ring: RwLock::new(Arc::new(ring)),
            loaded: Mutex::new(Instant::now()),
        }))
    }

    /// The ring, re-read first when the last read is older than [`RELOAD_EVERY`]. A directory that
    /// cannot be read keeps the last good ring (and says so in the log).
    pub fn current(&self) -> Arc<KeyRing> {
        let due = self.loaded.lock().map(|mut at| {
            let due = at.elapsed() >= RELOAD_EVERY;
            if due {
                *at = Instant::now();
            }
            due
        });
        if due.unwrap_or(false) {
            match KeyRing::load_or_create(&self.dir, self.overlap) {
                Ok(ring) => {
                    if let Ok(mut current) = self.ring.write() {
                        *current = Arc::new(ring);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot reload the signing keys; keeping the last ones"),
            }
        }
        match self.ring.read() {
            Ok(ring) => Arc::clone(&ring),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

struct LoadedKey {
    kid: String,
    created: DateTime<Utc>,
    key: SigningKey,
    path: PathBuf,
}

fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let io = |source| KeyError::Io { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    Ok(std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect())
}

/// A key and its creation time: from its kid, else the file's modification time.
fn read_key(path: &Path) -> Result<LoadedKey, KeyError> {
    let invalid = |reason: String| KeyError::Invalid { path: path.to_owned(), reason };
    let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| invalid(e.to_string()))?;
    let kid =
        path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| invalid("file name is not a kid".into()))?.to_owned();
    let from_kid = kid.strip_prefix('k').and_then(|t| NaiveDateTime::parse_from_str(t, KID_TIME).ok());
    let created = match from_kid {
        Some(t) => t.and_utc(),
        None => std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(DateTime::<Utc>::from)
            .map_err(|source| KeyError::Io { path: path.to_owned(), source })?,
    };
    Ok(LoadedKey { kid, created, key, path: path.to_owned() })
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_newest_key_signs_and_a_superseded_one_verifies_until_its_overlap_ends() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let old = now - chrono::Duration::hours(5);
        KeyRing::create_key(dir.path(), old).unwrap();
        KeyRing::create_key(dir.path(), now - chrono::Duration::hours(3)).unwrap();
        KeyRing::create_key(dir.path(), now - chrono::Duration::minutes(30)).unwrap();
        let ring = KeyRing::load_or_create(dir.path(), HOUR).unwrap();
        let statuses: Vec<_> = ring.keys().iter().map(|k| k.status.clone()).collect();
        // The first was superseded 3 h ago (retired); the second 30 min ago (1 h overlap left).
        assert_eq!(statuses[0], KeyStatus::Retired);
        assert!(matches!(statuses[1], KeyStatus::Verifying { until } if until > now));
        assert_eq!(statuses[2], KeyStatus::Signing);
        assert_eq!(ring.signing().0, ring.keys()[2].kid);
        let published: Vec<_> = ring.jwks().iter().map(|j| j.kid.as_str()).collect();
        assert_eq!(published, [ring.keys()[1].kid.as_str(), ring.keys()[2].kid.as_str()]);
        assert!(ring.decoding_key(&ring.keys()[0].kid).is_none());

        let rotated = KeyRing::rotate(dir.path(), HOUR).unwrap();
        assert_eq!(rotated.keys().len(), 3, "the retired key is deleted, a new one added");
        assert!(rotated.keys().iter().all(|k| k.created > old));
        assert_eq!(rotated.signing().0, rotated.keys()[2].kid);
        assert!(
            rotated.keys()[2].created > now - chrono::Duration::milliseconds(1),
            "kids have millisecond resolution"
        );
    }

    #[test]
    fn a_store_picks_up_a_rotation_on_its_next_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), HOUR).unwrap();
        let first = store.current().signing().0.to_owned();
        KeyRing::rotate(dir.path(), HOUR).unwrap();
        *store.loaded.lock().unwrap() -= RELOAD_EVERY;
        let ring = store.current();
        assert_ne!(ring.signing().0, first);
        assert!(ring.decoding_key(&first).is_some(), "the old key verifies during the overlap");
    }
}
