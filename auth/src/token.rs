//! Issuing and validating access tokens. The algorithm is pinned to EdDSA: a token that names any
//! other algorithm (`none`, HS256 with the public key, …) is rejected before its signature is read.

use std::sync::Arc;
use std::time::Duration;

use cashflow_core::MerchantId;
use cashflow_core::http::Principal;
use jsonwebtoken::{Algorithm, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};

use crate::{JwksCache, KeyRing, KeyStore};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub merchant_id: String,
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
    ttl_secs: u64,
}

impl Issuer {
    pub fn new(keys: Arc<KeyStore>, issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        Issuer { keys, issuer: issuer.to_owned(), audience: audience.to_owned(), ttl_secs }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The keys as they are now.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.current()
    }

    /// A signed token for `subject` acting for `merchant` with `scopes`.
    pub fn issue(&self, subject: &str, merchant: &str, scopes: &[String]) -> Result<String, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            merchant_id: merchant.to_owned(),
            scope: scopes.join(" "),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + self.ttl_secs as i64,
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
        Validator { source, validation }
    }

    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Algorithm);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        let key = match &self.source {
            KeySource::Local(keys) => keys.current().decoding_key(&kid).cloned(),
            KeySource::Jwks(cache) => cache.key(&kid).await,
        };
        let key = key.ok_or(AuthError::UnknownKey)?;
        let data = decode::<Claims>(token, &key, &self.validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        let merchant_id =
            MerchantId::parse(&c.merchant_id).map_err(|e| AuthError::Invalid(format!("merchant_id {e}")))?;
        Ok(Principal { subject: c.sub, merchant_id, scopes: c.scope.split_whitespace().map(str::to_owned).collect() })
    }
}

/// The token lifetime plus the clock leeway: how long a superseded key must keep verifying.
pub fn key_overlap(ttl_secs: u64) -> Duration {
    Duration::from_secs(ttl_secs + LEEWAY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Issuer, Validator) {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path(), key_overlap(60)).unwrap();
        let issuer = Issuer::new(Arc::clone(&keys), "cashflow", "cashflow-api", 60);
        let validator = Validator::new(KeySource::Local(keys), "cashflow", "cashflow-api");
        (dir, issuer, validator)
    }

    #[tokio::test]
    async fn a_fresh_token_validates_and_carries_the_merchant() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ana", "loja-1", &["lancamentos:write".into()]).unwrap();
        let p = validator.validate(&token).await.unwrap();
        assert_eq!(p.merchant_id.as_str(), "loja-1");
        assert_eq!(p.scopes, vec!["lancamentos:write"]);
    }

    #[tokio::test]
    async fn tampered_and_foreign_tokens_are_rejected() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ana", "loja-1", &[]).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(e.decode(&parts[1]).unwrap()).unwrap().replace("loja-1", "loja-2");
        parts[1] = e.encode(payload);
        assert!(matches!(validator.validate(&parts.join(".")).await, Err(AuthError::Invalid(_))));

        let (_d2, other_issuer, _) = setup();
        let foreign = other_issuer.issue("ana", "loja-1", &[]).unwrap();
        assert!(validator.validate(&foreign).await.is_err());

        let none = format!("{}.{}.", e.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(matches!(validator.validate(&none).await, Err(AuthError::Malformed | AuthError::Algorithm)));
        assert!(matches!(validator.validate("garbage").await, Err(AuthError::Malformed)));
    }

    #[tokio::test]
    async fn wrong_audience_is_rejected() {
        let (d, issuer, _) = setup();
        let keys = KeyStore::open(d.path(), key_overlap(60)).unwrap();
        let strict = Validator::new(KeySource::Local(keys), "cashflow", "another-api");
        let token = issuer.issue("ana", "loja-1", &[]).unwrap();
        assert!(matches!(strict.validate(&token).await, Err(AuthError::Invalid(_))));
    }
}
