//! Sealed tokens: what the API hands a client only to be handed back (`posicao`, a statement's
//! cursor). Each is encrypted and authenticated (XChaCha20-Poly1305, a random nonce per token)
//! under the pipeline's key, and bound to its merchant and its use: a client can return one, but
//! not read it, forge it, or use one given to another merchant or for another purpose.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead as _, AeadCore as _, KeyInit as _, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::MerchantId;

/// Bytes of a sealing key.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// What a token is for: one sealed for one use does not open for another.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    Posicao,
    Cursor,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Posicao => "posicao",
            Purpose::Cursor => "cursor",
        }
    }
}

#[derive(Clone)]
pub struct Sealer(XChaCha20Poly1305);

impl Sealer {
    pub fn new(key: &[u8; KEY_BYTES]) -> Sealer {
        Sealer(XChaCha20Poly1305::new(key.into()))
    }

    /// A fresh key, from the OS's generator.
    pub fn generate_key() -> [u8; KEY_BYTES] {
        XChaCha20Poly1305::generate_key(&mut OsRng).into()
    }

    /// `plain`, sealed for `merchant` and `purpose`: URL-safe base64 of the nonce and the
    /// ciphertext with its tag.
    pub fn seal(&self, purpose: Purpose, merchant: &MerchantId, plain: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = bound_to(purpose, merchant);
        let sealed = self
            .0
            .encrypt(&nonce, Payload { msg: plain, aad: &aad })
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut token = nonce.to_vec();
        token.extend(sealed);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// What `token` holds, if it was sealed by this key for `merchant` and `purpose`, unaltered.
    pub fn open(&self, purpose: Purpose, merchant: &MerchantId, token: &str) -> Option<Vec<u8>> {
        let token = URL_SAFE_NO_PAD.decode(token).ok()?;
        if token.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, sealed) = token.split_at(NONCE_BYTES);
        let aad = bound_to(purpose, merchant);
        self.0.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad }).ok()
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// The associated data: the use and the merchant, unambiguous (a merchant id has no NUL).
fn bound_to(purpose: Purpose, merchant: &MerchantId) -> Vec<u8> {
    [purpose.as_str().as_bytes(), &[0], merchant.as_str().as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_only_unaltered_for_its_merchant_and_purpose() {
        let sealer = Sealer::new(&Sealer::generate_key());
        let (a, b) = (MerchantId::parse("loja-1").unwrap(), MerchantId::parse("loja-2").unwrap());
        let token = sealer.seal(Purpose::Cursor, &a, b"2026-05-07|x|y");
        assert_eq!(sealer.open(Purpose::Cursor, &a, &token).as_deref(), Some(&b"2026-05-07|x|y"[..]));
        assert_eq!(sealer.open(Purpose::Cursor, &b, &token), None);
        assert_eq!(sealer.open(Purpose::Posicao, &a, &token), None);
        assert_eq!(Sealer::new(&Sealer::generate_key()).open(Purpose::Cursor, &a, &token), None);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for bit in 0..bytes.len() * 8 {
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(sealer.open(Purpose::Cursor, &a, &URL_SAFE_NO_PAD.encode(&bytes)), None, "bit {bit}");
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        assert_eq!(sealer.open(Purpose::Cursor, &a, "***"), None);
        assert_eq!(sealer.open(Purpose::Cursor, &a, ""), None);
    }
}
