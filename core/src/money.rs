//! Money as integer cents. Parsed from and printed as a decimal string with two places.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of money in cents. Never a float.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// Why a decimal string is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a decimal string such as \"150.25\"")]
    NotADecimal,
    #[error("must have at most two decimal places")]
    TooManyDecimals,
    #[error("is too large")]
    TooLarge,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_cents(cents: i64) -> Self {
        Money(cents)
    }

    pub const fn cents(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// The amount as text (`-1234.05`), written digit by digit into `buf` rather than through
    /// `fmt`: a 31-day balance holds some 150 amounts.
    fn text(self, buf: &mut [u8; 24]) -> &str {
        let mut n = self.0.unsigned_abs();
        let mut i = buf.len();
        for place in 0.. {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if place == 1 {
                i -= 1;
                buf[i] = b'.';
            }
            if place >= 2 && n == 0 {
                break;
            }
        }
        if self.0 < 0 {
            i -= 1;
            buf[i] = b'-';
        }
        std::str::from_utf8(&buf[i..]).expect("digits, a point and a sign are ASCII")
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Accepts `[-]digits[.d[d]]`. No exponent, no grouping, no whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (negative, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, f),
            None => (body, ""),
        };
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(frac) || (body.contains('.') && frac.is_empty()) {
            return Err(MoneyError::NotADecimal);
        }
        if frac.len() > 2 {
            return Err(MoneyError::TooManyDecimals);
        }
        let whole: i64 = whole.parse().map_err(|_| MoneyError::TooLarge)?;
        let frac: i64 = format!("{frac:0<2}").parse().map_err(|_| MoneyError::NotADecimal)?;
        let cents = whole.checked_mul(100).and_then(|c| c.checked_add(frac)).ok_or(MoneyError::TooLarge)?;
        Ok(Money(if negative { -cents } else { cents }))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text(&mut [0; 24]))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text(&mut [0; 24]))
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_two_place_decimals() {
        assert_eq!("150.25".parse(), Ok(Money(15025)));
        assert_eq!("0.01".parse(), Ok(Money(1)));
        assert_eq!("99999999.99".parse(), Ok(Money(9_999_999_999)));
        assert_eq!("7".parse(), Ok(Money(700)));
        assert_eq!("7.5".parse(), Ok(Money(750)));
        assert_eq!("-3.10".parse(), Ok(Money(-310)));
    }

    #[test]
    fn rejects_what_is_not_an_amount() {
        for bad in ["", "abc", "1.", ".5", "1,00", "1e3", " 1", "+1", "--1", "1.2.3"] {
            assert_eq!(bad.parse::<Money>(), Err(MoneyError::NotADecimal), "{bad:?}");
        }
        assert_eq!("1.234".parse::<Money>(), Err(MoneyError::TooManyDecimals));
        assert_eq!("99999999999999999999".parse::<Money>(), Err(MoneyError::TooLarge));
    }

    #[test]
    fn prints_two_places() {
        assert_eq!(Money(15025).to_string(), "150.25");
        assert_eq!(Money(1).to_string(), "0.01");
        assert_eq!(Money(-1).to_string(), "-0.01");
        assert_eq!(Money(0).to_string(), "0.00");
        assert_eq!(Money(i64::MIN).to_string(), "-92233720368547758.08");
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(cents in -1_000_000_000_000i64..1_000_000_000_000) {
            prop_assert_eq!(Money(cents).to_string().parse::<Money>(), Ok(Money(cents)));
        }

        #[test]
        fn text_is_sign_whole_point_two_digits_and_json_is_that_string(cents in any::<i64>()) {
            let abs = cents.unsigned_abs();
            let sign = if cents < 0 { "-" } else { "" };
            let text = format!("{sign}{}.{:02}", abs / 100, abs % 100);
            prop_assert_eq!(Money(cents).to_string(), text.clone());
            prop_assert_eq!(serde_json::to_string(&Money(cents)).unwrap(), format!("\"{text}\""));
        }
    }
}
