//! The auth API: logins and service clients with argon2id hashes, Ed25519-signed JWTs (EdDSA,
//! pinned), the JWKS that lets any gateway validate them, and key rotation with overlap.

mod jwks;
mod keys;
mod passwords;
mod service;
mod token;

pub use jwks::JwksCache;
pub use keys::{KeyError, KeyInfo, KeyRing, KeyStatus, KeyStore, RELOAD_SECS};
pub use passwords::{hash_password, verify_password};
pub use service::{AuthState, LoginLimits, api, router};
pub use token::{AuthError, Claims, Issuer, KeySource, Validator, key_overlap};
