//! argon2id password hashing, on a blocking thread so it never stalls the async workers.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::rngs::OsRng;

/// Hashes a password with argon2id and a random salt (PHC string).
pub async fn hash_password(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Checks a password. With no stored hash (unknown user) it checks against a dummy hash, so a
/// wrong password and an unknown user cost the same time.
pub async fn verify_password(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && known
    })
    .await
    .unwrap_or(false)
}

/// An argon2id hash with the default parameters (those `hash_password` uses), checked when the
/// user is unknown: a constant, so even the first unknown user costs exactly one verification.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$L/YXTNoptAFLhkCW2J4zBQ$IgNFC9JfTfDISBQikbF6gPKvK7zxD+VMKQTCjCJfpn8";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_only_the_right_password() {
        let h = hash_password("s3cret".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong".into(), Some(h.clone())).await);
        assert!(!verify_password("no such user".into(), None).await);
        // The dummy has the parameters of a real hash, so it costs the same.
        let real = PasswordHash::new(&h).unwrap();
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!((real.algorithm, real.version, real.params), (dummy.algorithm, dummy.version, dummy.params));
    }
}
