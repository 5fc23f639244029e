//! A gateway's copy of an auth service's JWKS: fetched on first use, refetched when a token names
//! an unknown `kid` or the copy is older than [`MAX_AGE`], and never more often than once per
//! [`MIN_REFETCH`], so a flood of tokens with made-up kids cannot flood the auth service.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};

/// The JWKS is answered with `max-age=300`; a copy this old is refetched.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// At most one fetch per this interval, whatever the tokens say.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

type Keys = Arc<HashMap<String, DecodingKey>>;

pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    /// The keys and when they were fetched.
    keys: RwLock<Option<(Instant, Keys)>>,
    /// When a fetch was last tried; held while fetching, so concurrent misses fetch once.
    tried: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(url: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        JwksCache { url: url.into(), client, keys: RwLock::new(None), tried: tokio::sync::Mutex::new(None) }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The verifying key with this kid, refetching the set first if the kid is unknown or the
    /// copy is old (rate-limited).
    pub async fn key(&self, kid: &str) -> Option<DecodingKey> {
        let (fresh, found) = self.cached(kid);
        if fresh && found.is_some() {
            return found;
        }
        self.refresh().await;
        self.cached(kid).1
    }

    fn cached(&self, kid: &str) -> (bool, Option<DecodingKey>) {
        match self.keys.read().ok().as_deref() {
            Some(Some((at, keys))) => (at.elapsed() < MAX_AGE, keys.get(kid).cloned()),
            _ => (false, None),
        }
    }

    async fn refresh(&self) {
        let mut tried = self.tried.lock().await;
        if tried.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return;
        }
        *tried = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Some((Instant::now(), Arc::new(keys)));
                }
            }
            Err(e) => tracing::warn!(url = %self.url, error = %e, "cannot fetch the JWKS; keeping the last copy"),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::OctetKeyPair(_)))
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect())
    }
}
