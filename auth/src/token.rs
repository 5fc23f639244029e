//! Issuing and validating access tokens. The algorithm is pinned to EdDSA: a token that names any
//! other algorithm (`none`, HS256 with the public key, …) is rejected before its signature is read.

use std::collections::HashMap;

use cashflow_core::MerchantId;
use cashflow_core::http::Principal;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};

use crate::KeyRing;

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

/// Signs tokens with the newest key of a ring.
#[derive(Clone)]
pub struct Issuer {
    keys: KeyRing,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

impl Issuer {
    pub fn new(keys: KeyRing, issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        Issuer { keys, issuer: issuer.to_owned(), audience: audience.to_owned(), ttl_secs }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
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
        let (kid, key) = self.keys.signing();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        encode(&header, &claims, key).map_err(|e| AuthError::Signing(e.to_string()))
    }
}

/// Validates tokens against known public keys: signature, `exp`, `nbf`, `iss`, `aud`.
#[derive(Clone)]
pub struct Validator {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl Validator {
    pub fn new(keys: &KeyRing, issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Validator { keys: keys.decoding_keys().into_iter().collect(), validation }
    }

    pub fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Algorithm);
        }
        let key = header.kid.as_deref().and_then(|kid| self.keys.get(kid)).ok_or(AuthError::UnknownKey)?;
        let data = decode::<Claims>(token, key, &self.validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        let merchant_id =
            MerchantId::parse(&c.merchant_id).map_err(|e| AuthError::Invalid(format!("merchant_id {e}")))?;
        Ok(Principal { subject: c.sub, merchant_id, scopes: c.scope.split_whitespace().map(str::to_owned).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Issuer, Validator) {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path()).unwrap();
        let issuer = Issuer::new(ring.clone(), "cashflow", "cashflow-api", 60);
        let validator = Validator::new(&ring, "cashflow", "cashflow-api");
        (dir, issuer, validator)
    }

    #[test]
    fn a_fresh_token_validates_and_carries_the_merchant() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ana", "loja-1", &["lancamentos:write".into()]).unwrap();
        let p = validator.validate(&token).unwrap();
        assert_eq!(p.merchant_id.as_str(), "loja-1");
        assert_eq!(p.scopes, vec!["lancamentos:write"]);
    }

    #[test]
    fn tampered_and_foreign_tokens_are_rejected() {
        let (_d, issuer, validator) = setup();
        let token = issuer.issue("ana", "loja-1", &[]).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(e.decode(&parts[1]).unwrap()).unwrap().replace("loja-1", "loja-2");
        parts[1] = e.encode(payload);
        assert!(matches!(validator.validate(&parts.join(".")), Err(AuthError::Invalid(_))));

        let (_d2, other_issuer, _) = setup();
        let foreign = other_issuer.issue("ana", "loja-1", &[]).unwrap();
        assert!(validator.validate(&foreign).is_err());

        let none = format!("{}.{}.", e.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(matches!(validator.validate(&none), Err(AuthError::Malformed | AuthError::Algorithm)));
        assert!(matches!(validator.validate("garbage"), Err(AuthError::Malformed)));
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let (d, issuer, _) = setup();
        let ring = KeyRing::load_or_create(d.path()).unwrap();
        let strict = Validator::new(&ring, "cashflow", "another-api");
        let token = issuer.issue("ana", "loja-1", &[]).unwrap();
        assert!(matches!(strict.validate(&token), Err(AuthError::Invalid(_))));
    }
}
