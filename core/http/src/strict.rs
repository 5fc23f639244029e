//! Strict JSON: an object that names a key twice is refused, at any depth. serde_json keeps the
//! last of two equal keys, while another reader (a validating proxy, an audit tool) may keep the
//! first: the same bytes would mean two different entries.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

/// The path of the first key `json` names twice in one object (`lancamentos[3].valor`), if any.
/// Text that is not JSON has none: its parse fails on its own.
pub fn duplicate_key(json: &[u8]) -> Option<String> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(json);
    let _ = Check { path: String::new(), found: &found }.deserialize(&mut de);
    found.into_inner()
}

/// Walks a value, keeping `path` to it; stops at the first duplicate key, noted in `found`.
struct Check<'f> {
    path: String,
    found: &'f RefCell<Option<String>>,
}

impl Check<'_> {
    fn at(&self, path: String) -> Check<'_> {
        Check { path, found: self.found }
    }
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq.next_element_seed(self.at(format!("{}[{i}]", self.path)))?.is_some() {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            if !seen.insert(key) {
                *self.found.borrow_mut() = Some(path);
                return Err(A::Error::custom("duplicate key"));
            }
            map.next_value_seed(self.at(path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_key;

    #[test]
    fn a_key_named_twice_is_found_at_any_depth() {
        assert_eq!(duplicate_key(br#"{"valor":"1.00","valor":"999.00"}"#).as_deref(), Some("valor"));
        let batch = br#"{"lancamentos":[{"tipo":"credito"},{"tipo":"credito","tipo":"debito"}]}"#;
        assert_eq!(duplicate_key(batch).as_deref(), Some("lancamentos[1].tipo"));
        assert_eq!(duplicate_key(br#"{"a":{"b":1},"c":{"b":2}}"#), None, "the same key in two objects");
        assert_eq!(duplicate_key(br#"{"v\u0061lor":1,"valor":2}"#).as_deref(), Some("valor"), "escapes are read");
        assert_eq!(duplicate_key(b"not json"), None);
        assert_eq!(duplicate_key(br#"[1, "x", null, true, 2.5]"#), None);
    }
}
