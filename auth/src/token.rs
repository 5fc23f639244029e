//! Issuing and validating access tokens. The algorithm is pinned to EdDSA: a token that names any
//! other algorithm (`none`, HS256 with the public key, …) is rejected before its signature is read.
//!
//! A client sends the same token with every request until it expires, and an Ed25519 verification
//! costs tens of microseconds: the validator remembers each token it verified, until the token's
//! own expiry, and checks on every use that its signing key is still known.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cashflow_core::MerchantId;
use cashflow_http::{Bearer, Operator, Principal};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, decode, decode_header, encode};
use moka::Expiry;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::{JwksCache, KeyRing, KeyStore};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// How many bytes of verified tokens a validator remembers.
const VERIFIED_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    /// The merchant the token acts for; absent on an operator's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// Space-separated scopes.
    pub scope: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not EdDSA")]
    Algorithm,
    #[error("the token's key id is unknown")]
    UnknownKey,
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

impl AuthError {
    /// A low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Invalid(_) => "invalid",
            AuthError::Signing(_) => "signing",
        }
    }
}

/// Signs tokens with the newest key of a key store.
#[derive(Clone)]
pub struct Issuer {
    keys: Arc<KeyStore>,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl Issuer {
    pub fn new(keys: Arc<KeyStore>, issuer: &str, audience: &str, ttl: Duration) -> Self {
        Issuer { keys, issuer: issuer.to_owned(), audience: audience.to_owned(), ttl }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }

    /// The keys as they are now.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.current()
    }

    /// A signed token for `subject` acting for `merchant` (none: an operator) with `scopes`.
    pub fn issue(&self, subject: &str, merchant: Option<&str>, scopes: &[String]) -> Result<String, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            merchant_id: merchant.map(str::to_owned),
            scope: scopes.join(" "),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + i64::try_from(self.ttl.as_secs()).expect("a token lives at most a day (validate)"),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let ring = self.keys.current();
        let (kid, key) = ring.signing();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        encode(&header, &claims, key).map_err(|e| AuthError::Signing(e.to_string()))
    }
}

/// Where a validator finds the public keys.
pub enum KeySource {
    /// The key directory of this process (the embedded shape).
    Local(Arc<KeyStore>),
    /// An auth service's JWKS (the distributed shape).
    Jwks(JwksCache),
}

/// Validates tokens against known public keys: signature, `exp`, `nbf`, `iss`, `aud`.
pub struct Validator {
    source: KeySource,
    validation: Validation,
    verified: Cache<Arc<str>, Verified>,
}

/// A token that passed every check, and until when it passes.
#[derive(Clone)]
struct Verified {
    bearer: Bearer,
    kid: Arc<str>,
    /// `exp` plus the leeway, in Unix seconds.
    valid_until: i64,
}

/// Forgets a verified token when it would stop validating.
struct UntilExpiry;

impl Expiry<Arc<str>, Verified> for UntilExpiry {
    fn expire_after_create(&self, _: &Arc<str>, v: &Verified, _: Instant) -> Option<Duration> {
        let left = v.valid_until - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

impl Validator {
    pub fn new(source: KeySource, issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let verified = Cache::builder()
            .max_capacity(VERIFIED_BYTES)
            .weigher(|token: &Arc<str>, v: &Verified| {
                let (subject, scopes) = match &v.bearer {
                    Bearer::Merchant(p) => (&p.subject, &p.scopes),
                    Bearer::Operator(o) => (&o.subject, &o.scopes),
                };
                let bearer = subject.len() + scopes.iter().map(String::len).sum::<usize>();
                u32::try_from(token.len() + bearer + 256).unwrap_or(u32::MAX)
            })
            .expire_after(UntilExpiry)
            .build();
        Validator { source, validation, verified }
    }

    pub async fn validate(&self, token: &str) -> Result<Bearer, AuthError> {
        if let Some(v) = self.verified.get(token)
            && chrono::Utc::now().timestamp() <= v.valid_until
            && self.key(&v.kid).await.is_some()
        {
            return Ok(v.bearer);
        }
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Algorithm);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        let key = self.key(&kid).await.ok_or(AuthError::UnknownKey)?;
        let data = decode::<Claims>(token, &key, &self.validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        let scopes = c.scope.split_whitespace().map(str::to_owned).collect();
        let bearer = match c.merchant_id {
            Some(merchant) => {
                let merchant_id =
                    MerchantId::parse(&merchant).map_err(|e| AuthError::Invalid(format!("merchant_id {e}")))?;
                Bearer::Merchant(Principal { subject: c.sub, merchant_id, scopes })
            }
            None => Bearer::Operator(Operator { subject: c.sub, scopes }),
        };
        let valid_until = c.exp.saturating_add(LEEWAY_SECS as i64);
        self.verified.insert(token.into(), Verified { bearer: bearer.clone(), kid: kid.into(), valid_until });
        Ok(bearer)
    }

    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        match &self.source {
            KeySource::Local(keys) => keys.current().decoding_key(kid).cloned(),
            KeySource::Jwks(cache) => cache.key(kid).await,
        }
    }
}

/// The token lifetime plus the clock leeway: how long a superseded key must keep verifying.
pub fn key_overlap(ttl: Duration) -> Duration {
    ttl + Duration::from_secs(LEEWAY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Issuer, Validator) {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path(), key_overlap(Duration::from_secs(60))).unwrap();
        let issuer = Issuer::new(Arc::clone(&keys), "cashflow", "cashflow-api", Duration::from_secs(60));
        let validator = Validator::new(KeySource::Local(keys), "cashflow", "cashflow-api");
        (dir, issuer, validator)
    }

    #[tokio::test]
    async fn a_fresh_token_validates_and_carries_the_merchant() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ana", Some("loja-1"), &["lancamentos:write".into()]).unwrap();
        let Bearer::Merchant(p) = validator.validate(&token).await.unwrap() else { panic!("a merchant's token") };
        assert_eq!(p.merchant_id.as_str(), "loja-1");
        assert_eq!(p.scopes, vec!["lancamentos:write"]);
    }

    #[tokio::test]
    async fn a_token_of_no_merchant_is_an_operators() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ops", None, &["admin".into()]).unwrap();
        let bearer = validator.validate(&token).await.unwrap();
        assert_eq!(bearer, Bearer::Operator(Operator { subject: "ops".into(), scopes: vec!["admin".into()] }));
    }

    #[tokio::test]
    async fn tampered_and_foreign_tokens_are_rejected() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ana", Some("loja-1"), &[]).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(e.decode(&parts[1]).unwrap()).unwrap().replace("loja-1", "loja-2");
        parts[1] = e.encode(payload);
        assert!(matches!(validator.validate(&parts.join(".")).await, Err(AuthError::Invalid(_))));

        let (_d2, other_issuer, _) = setup();
        let foreign = other_issuer.issue("ana", Some("loja-1"), &[]).unwrap();
        assert!(validator.validate(&foreign).await.is_err());

        let none = format!("{}.{}.", e.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(matches!(validator.validate(&none).await, Err(AuthError::Malformed | AuthError::Algorithm)));
        assert!(matches!(validator.validate("garbage").await, Err(AuthError::Malformed)));
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_only_until_it_would_expire() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ana", Some("loja-1"), &[]).unwrap();
        let bearer = validator.validate(&token).await.unwrap();
        let remembered = validator.verified.get(token.as_str()).unwrap();
        let exp = decode::<Claims>(&token, &validator.key(&remembered.kid).await.unwrap(), &validator.validation)
            .unwrap()
            .claims
            .exp;
        assert_eq!(remembered.valid_until, exp + LEEWAY_SECS as i64);
        assert_eq!(remembered.bearer, bearer);

        // A hit answers without reading the token again: a remembered entry is trusted as such…
        let now = chrono::Utc::now().timestamp();
        let forged = Verified { valid_until: now + 60, ..remembered.clone() };
        validator.verified.insert("not.a.token".into(), forged.clone());
        assert_eq!(validator.validate("not.a.token").await.unwrap(), bearer);
        // …only while it would still validate…
        validator.verified.insert("not.a.token".into(), Verified { valid_until: now - 1, ..forged.clone() });
        assert!(matches!(validator.validate("not.a.token").await, Err(AuthError::Malformed)));
        // …and while its key is known.
        validator.verified.insert("not.a.token".into(), Verified { kid: "k-gone".into(), ..forged });
        assert!(matches!(validator.validate("not.a.token").await, Err(AuthError::Malformed)));
    }

    #[tokio::test]
    async fn a_remembered_token_fails_once_its_key_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path(), key_overlap(Duration::from_secs(60))).unwrap();
        let issuer = Issuer::new(Arc::clone(&keys), "cashflow", "cashflow-api", Duration::from_secs(60));
        let validator = Validator::new(KeySource::Local(Arc::clone(&keys)), "cashflow", "cashflow-api");
        let token = issuer.issue("ana", Some("loja-1"), &[]).unwrap();
        validator.validate(&token).await.unwrap();

        for entry in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        KeyRing::create_key(dir.path(), chrono::Utc::now() + chrono::Duration::seconds(1)).unwrap();
        *keys.loaded.lock().unwrap() -= crate::keys::RELOAD_EVERY;
        assert!(matches!(validator.validate(&token).await, Err(AuthError::UnknownKey)));
    }

    #[tokio::test]
    async fn wrong_audience_is_rejected() {
        let (d, issuer, _) = setup();
        let keys = KeyStore::open(d.path(), key_overlap(Duration::from_secs(60))).unwrap();
        let strict = Validator::new(KeySource::Local(keys), "cashflow", "another-api");
        let token = issuer.issue("ana", Some("loja-1"), &[]).unwrap();
        assert!(matches!(strict.validate(&token).await, Err(AuthError::Invalid(_))));
    }
}
