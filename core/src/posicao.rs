//! `posicao`: the opaque position of an accepted entry in the log (partition and offset).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Posicao {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Posicao {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = format!("{}:{}", self.partition, self.offset);
        f.write_str(&URL_SAFE_NO_PAD.encode(raw))
    }
}

impl FromStr for Posicao {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || "is not a position returned by this API".to_string();
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (p, o) = raw.split_once(':').ok_or_else(bad)?;
        let partition = p.parse().map_err(|_| bad())?;
        let offset = o.parse().map_err(|_| bad())?;
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
    fn round_trips_and_rejects_garbage() {
        let p = Posicao { partition: 3, offset: 12345 };
        assert_eq!(p.to_string().parse(), Ok(p));
        assert!("not-a-position".parse::<Posicao>().is_err());
    }
}
