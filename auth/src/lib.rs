//! The auth API: logins with argon2id hashes, Ed25519-signed JWTs (EdDSA, pinned), and the JWKS
//! that lets any gateway validate them.

mod keys;
mod passwords;
mod service;
mod token;

pub use keys::{KeyError, KeyRing};
pub use passwords::{hash_password, verify_password};
pub use service::{AuthState, LoginLimits, router};
pub use token::{AuthError, Claims, Issuer, Validator};
