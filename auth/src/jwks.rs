//! A gateway's copy of an auth service's JWKS: fetched on first use, refetched when a token names
//! an unknown `kid` or the copy is older than [`MAX_AGE`], and never more often than once per
//! [`MIN_REFETCH`], so a flood of tokens with made-up kids cannot flood the auth service. A token
//! whose kid is unknown waits for the next allowed fetch rather than being refused at once, so a
//! key that was just rotated in is never refused; tokens that arrived before a fetch completed
//! share its result.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};

/// The JWKS is answered with `max-age=300`; a copy this old is refetched.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// At most one fetch per this interval, whatever the tokens say.
pub const MIN_REFETCH: Duration = Duration::from_secs(2);

type Keys = Arc<HashMap<String, DecodingKey>>;

pub struct JwksCache {
    /// The auth replicas' JWKS: the first that answers is used.
    urls: Vec<String>,
    client: reqwest::Client,
    /// The keys and when they were fetched.
    keys: RwLock<Option<(Instant, Keys)>>,
    /// When a fetch was last tried; held while fetching, so concurrent misses fetch once.
    tried: tokio::sync::Mutex<Option<Instant>>,
}

impl JwksCache {
    /// A cache of the set served at `urls` (the same set from each auth replica).
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let urls = urls.into_iter().map(Into::into).collect();
        JwksCache { urls, client, keys: RwLock::new(None), tried: tokio::sync::Mutex::new(None) }
    }

    /// The verifying key with this kid, refetching the set first if the kid is unknown or the
    /// copy is old (rate-limited).
    pub async fn key(&self, kid: &str) -> Option<DecodingKey> {
        let asked = Instant::now();
        match self.cached(kid) {
            (true, Some(key)) => Some(key),
            // Old but known: refresh if nobody is and the interval allows, else use it as is
            // (so an unreachable auth service slows nothing down).
            (false, Some(key)) => {
                if let Ok(tried) = self.tried.try_lock()
                    && tried.is_none_or(|at| at.elapsed() >= MIN_REFETCH)
                {
                    drop(tried);
                    self.refresh(asked).await;
                }
                self.cached(kid).1.or(Some(key))
            }
            (_, None) => {
                self.refresh(asked).await;
                self.cached(kid).1
            }
        }
    }

    /// When the copy was fetched.
    fn fetched_at(&self) -> Option<Instant> {
        self.keys.read().ok().and_then(|k| k.as_ref().map(|(at, _)| *at))
    }

    fn cached(&self, kid: &str) -> (bool, Option<DecodingKey>) {
        match self.keys.read().ok().as_deref() {
            Some(Some((at, keys))) => (at.elapsed() < MAX_AGE, keys.get(kid).cloned()),
            _ => (false, None),
        }
    }

    /// Fetches the set, unless a fetch completed since `asked`; waits out [`MIN_REFETCH`] first.
    async fn refresh(&self, asked: Instant) {
        let mut tried = self.tried.lock().await;
        if self.fetched_at().is_some_and(|at| at >= asked) {
            return;
        }
        if let Some(at) = *tried {
            tokio::time::sleep_until((at + MIN_REFETCH).into()).await;
        }
        *tried = Some(Instant::now());
        for url in &self.urls {
            match self.fetch(url).await {
                Ok(keys) => {
                    tracing::info!(url = %url, keys = keys.len(), "JWKS fetched");
                    if let Ok(mut slot) = self.keys.write() {
                        *slot = Some((Instant::now(), Arc::new(keys)));
                    }
                    return;
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "cannot fetch the JWKS"),
            }
        }
        tracing::warn!(replicas = self.urls.len(), "no auth replica gave its JWKS; keeping the last copy");
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, DecodingKey>, String> {
        let set: JwkSet = self
            .client
            .get(url)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{KeyRing, KeyStore, key_overlap};

    /// Serves the JWKS of `dir`, counting fetches.
    async fn serve(keys: Arc<KeyStore>, fetches: Arc<AtomicUsize>) -> String {
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (keys, fetches) = (Arc::clone(&keys), Arc::clone(&fetches));
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::json!({ "keys": keys.current().jwks() }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    #[tokio::test]
    async fn unknown_kids_share_one_rate_limited_fetch_and_a_rotated_in_key_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path(), key_overlap(Duration::from_secs(60))).unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let cache = Arc::new(JwksCache::new([serve(Arc::clone(&keys), Arc::clone(&fetches)).await]));
        let first = keys.current().signing().0.to_owned();
        assert!(cache.key(&first).await.is_some());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // A flood of made-up kids: each waits for the next allowed fetch, and they share it.
        let started = Instant::now();
        let flood: Vec<_> = (0..50)
            .map(|i| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.key(&format!("made-up-{i}")).await.is_none() })
            })
            .collect();
        for refused in flood {
            assert!(refused.await.unwrap());
        }
        assert!(started.elapsed() >= MIN_REFETCH - Duration::from_millis(100), "the refetch waited its interval");
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "50 unknown kids, one more fetch");

        // A key rotated in is found by the next fetch, and the old one still verifies.
        KeyRing::rotate(dir.path(), key_overlap(Duration::from_secs(60))).unwrap();
        let ring = KeyRing::load_or_create(dir.path(), key_overlap(Duration::from_secs(60))).unwrap();
        let newest = ring.signing().0.to_owned();
        *keys.loaded.lock().unwrap() -= crate::keys::RELOAD_EVERY;
        assert!(cache.key(&newest).await.is_some(), "refetched for the new kid");
        assert!(cache.key(&first).await.is_some());
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }
}
