//! `posicao`: where an accepted entry is in the log (partition and offset), handed to the client
//! sealed (see [`crate::seal`]): it waits on it with `aguardar`, and learns nothing else from it.

use crate::MerchantId;
use crate::seal::{Purpose, Sealer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Posicao {
    pub partition: i32,
    pub offset: i64,
}

impl Posicao {
    /// The token `merchant` is given for this position.
    pub fn seal(self, sealer: &Sealer, merchant: &MerchantId) -> String {
        let mut plain = [0; 12];
        plain[..4].copy_from_slice(&self.partition.to_be_bytes());
        plain[4..].copy_from_slice(&self.offset.to_be_bytes());
        sealer.seal(Purpose::Posicao, merchant, &plain)
    }

    /// The position in a token sealed for `merchant`; an altered, forged or foreign one is refused.
    pub fn open(sealer: &Sealer, merchant: &MerchantId, token: &str) -> Result<Posicao, String> {
        let bad = || "is not a position this API gave this merchant".to_owned();
        let plain = sealer.open(Purpose::Posicao, merchant, token).filter(|p| p.len() == 12).ok_or_else(bad)?;
        let (partition, offset) = plain.split_at(4);
        let partition = i32::from_be_bytes(partition.try_into().expect("4 bytes of 12"));
        let offset = i64::from_be_bytes(offset.try_into().expect("the 8 bytes after them"));
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Posicao { partition, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_for_its_merchant_only() {
        let sealer = Sealer::new(&Sealer::generate_key());
        let (a, b) = (MerchantId::parse("loja-1").unwrap(), MerchantId::parse("loja-2").unwrap());
        let p = Posicao { partition: 3, offset: 12345 };
        let token = p.seal(&sealer, &a);
        assert_eq!(Posicao::open(&sealer, &a, &token), Ok(p));
        assert!(Posicao::open(&sealer, &b, &token).is_err());
        assert!(Posicao::open(&sealer, &a, "not-a-position").is_err());
    }
}
