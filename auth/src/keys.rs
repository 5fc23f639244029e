//! Signing keys: Ed25519, one PKCS#8 PEM file per key, named by its `kid`. The newest signs;
//! every key in the directory verifies, so a rotated-out key keeps its tokens valid until they expire.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One public key as a JWK (RFC 8037, OKP / Ed25519).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub kid: String,
    pub x: String,
}

/// The keys of one deployment.
#[derive(Clone)]
pub struct KeyRing {
    /// (kid, signing key) of the newest key.
    signing: (String, EncodingKey),
    public: Vec<Jwk>,
}

impl KeyRing {
    /// Loads every `*.pem` in `dir`; creates the directory and a first key when there is none.
    pub fn load_or_create(dir: &Path) -> Result<KeyRing, KeyError> {
        let io = |source| KeyError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        if files.is_empty() {
            files.push(Self::create_key(dir)?);
        }
        files.sort();
        let mut keys = Vec::with_capacity(files.len());
        for path in &files {
            keys.push(read_key(path)?);
        }
        let Some((kid, newest)) = keys.last().cloned() else {
            return Err(KeyError::Invalid { path: dir.to_owned(), reason: "no keys".into() });
        };
        let pem = newest
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Invalid { path: dir.to_owned(), reason: e.to_string() })?;
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes())
            .map_err(|e| KeyError::Invalid { path: dir.to_owned(), reason: e.to_string() })?;
        let public = keys
            .iter()
            .map(|(kid, k)| Jwk {
                kty: "OKP",
                crv: "Ed25519",
                alg: "EdDSA",
                use_: "sig",
                kid: kid.clone(),
                x: URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes()),
            })
            .collect();
        Ok(KeyRing { signing: (kid, encoding), public })
    }

    /// Writes a new key; it becomes the signing key on the next load. Returns its path.
    pub fn create_key(dir: &Path) -> Result<PathBuf, KeyError> {
        let io = |source| KeyError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let kid = format!("k{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Invalid { path: dir.to_owned(), reason: e.to_string() })?;
        let path = dir.join(format!("{kid}.pem"));
        write_private(&path, pem.as_bytes()).map_err(io)?;
        tracing::info!(kid = %kid, "signing key created");
        Ok(path)
    }

    pub fn signing(&self) -> (&str, &EncodingKey) {
        (&self.signing.0, &self.signing.1)
    }

    pub fn jwks(&self) -> &[Jwk] {
        &self.public
    }

    /// Verifying keys by kid.
    pub fn decoding_keys(&self) -> Vec<(String, DecodingKey)> {
        self.public
            .iter()
            .filter_map(|j| DecodingKey::from_ed_components(&j.x).ok().map(|k| (j.kid.clone(), k)))
            .collect()
    }
}

fn read_key(path: &Path) -> Result<(String, SigningKey), KeyError> {
    let invalid = |reason: String| KeyError::Invalid { path: path.to_owned(), reason };
    let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| invalid(e.to_string()))?;
    let kid =
        path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| invalid("file name is not a kid".into()))?.to_owned();
    Ok((kid, key))
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
