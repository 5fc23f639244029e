//! Entries (*lançamentos*) and their wire record on the `lancamentos` topic.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::Money;

/// The version of the wire record this build writes and reads.
pub const WIRE_VERSION: u32 = 1;

/// Namespace for entry ids derived from an `Idempotency-Key`.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_2f0e_9b1d_4c55_8d3e_1f5a_c0ff_ee01);

/// A merchant (*comerciante*) id: 1 to 64 characters of `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MerchantId(String);

impl MerchantId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(MerchantId(s.to_owned()))
        } else {
            Err("must be 1 to 64 characters of letters, digits, '_', '-' or '.'".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MerchantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MerchantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        MerchantId::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An entry id: a UUID, random or derived from (merchant, `Idempotency-Key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntryId(pub Uuid);

impl EntryId {
    pub fn random() -> Self {
        EntryId(Uuid::new_v4())
    }

    /// The same (merchant, key) always gives the same id, so a client retry is counted once.
    pub fn from_idempotency_key(merchant: &MerchantId, key: &str) -> Self {
        let name = format!("{}\n{}", merchant.as_str(), key);
        EntryId(Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()))
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EntryId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EntryId)
    }
}

/// Credit or debit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tipo {
    Credito,
    Debito,
}

impl Tipo {
    pub fn as_str(self) -> &'static str {
        match self {
            Tipo::Credito => "credito",
            Tipo::Debito => "debito",
        }
    }
}

impl FromStr for Tipo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "credito" => Ok(Tipo::Credito),
            "debito" => Ok(Tipo::Debito),
            _ => Err("must be \"credito\" or \"debito\"".into()),
        }
    }
}

/// A business date (`YYYY-MM-DD`), between year 1900 and 9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusinessDate(NaiveDate);

impl BusinessDate {
    pub fn new(date: NaiveDate) -> Result<Self, String> {
        if (1900..=9999).contains(&date.year()) {
            Ok(BusinessDate(date))
        } else {
            Err("must be a date between 1900-01-01 and 9999-12-31".into())
        }
    }

    pub fn today() -> Self {
        BusinessDate(Utc::now().date_naive())
    }

    pub fn date(self) -> NaiveDate {
        self.0
    }

    /// Days since 1970-01-01: a compact, ordered key.
    pub fn days(self) -> i32 {
        (self.0 - NaiveDate::default()).num_days() as i32
    }

    pub fn from_days(days: i32) -> Option<Self> {
        NaiveDate::default()
            .checked_add_signed(chrono::TimeDelta::days(i64::from(days)))
            .and_then(|d| BusinessDate::new(d).ok())
    }

    pub fn succ(self) -> Option<Self> {
        self.0.succ_opt().map(BusinessDate)
    }
}

impl FromStr for BusinessDate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let strict = s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-';
        match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) if strict => BusinessDate::new(d),
            _ => Err("must be a date in the form YYYY-MM-DD".into()),
        }
    }
}

impl fmt::Display for BusinessDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

impl Serialize for BusinessDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BusinessDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A valid entry. Entries are immutable: a correction is a new entry (`estorno_de`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lancamento {
    pub id: EntryId,
    pub merchant_id: MerchantId,
    pub tipo: Tipo,
    /// Always positive; `tipo` gives the sign.
    pub valor: Money,
    pub data: BusinessDate,
    pub descricao: String,
    pub categoria: Option<String>,
    pub criado_em: DateTime<Utc>,
    pub estorno_de: Option<EntryId>,
}

/// The JSON value on the `lancamentos` topic (DESIGN §4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LancamentoRecord {
    pub v: u32,
    pub id: EntryId,
    pub merchant_id: String,
    pub tipo: Tipo,
    pub valor_cents: i64,
    pub data: String,
    pub descricao: String,
    #[serde(default)]
    pub categoria: Option<String>,
    pub criado_em: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estorno_de: Option<EntryId>,
}

/// Why a record on the topic is not a valid entry. Always permanent for that record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("unknown schema version {0}")]
    UnknownVersion(u64),
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl DecodeError {
    /// A short, stable code for the `x-error-code` header and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::InvalidField { .. } => "invalid_field",
        }
    }
}

/// Limits shared by the HTTP edge and the decoder.
pub const MAX_DESCRICAO_CHARS: usize = 200;
pub const MAX_CATEGORIA_CHARS: usize = 50;

impl Lancamento {
    pub fn signed_cents(&self) -> i64 {
        match self.tipo {
            Tipo::Credito => self.valor.cents(),
            Tipo::Debito => -self.valor.cents(),
        }
    }

    pub fn to_record(&self) -> LancamentoRecord {
        LancamentoRecord {
            v: WIRE_VERSION,
            id: self.id,
            merchant_id: self.merchant_id.to_string(),
            tipo: self.tipo,
            valor_cents: self.valor.cents(),
            data: self.data.to_string(),
            descricao: self.descricao.clone(),
            categoria: self.categoria.clone(),
            criado_em: self.criado_em.to_rfc3339_opts(SecondsFormat::Millis, true),
            estorno_de: self.estorno_de,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(&self.to_record()).unwrap_or_default()
    }

    /// Decodes and validates a record from the topic.
    pub fn decode(bytes: &[u8]) -> Result<Lancamento, DecodeError> {
        #[derive(Deserialize)]
        struct Version {
            v: Option<u64>,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        match version.v {
            Some(v) if v == u64::from(WIRE_VERSION) => {}
            Some(v) => return Err(DecodeError::UnknownVersion(v)),
            None => return Err(DecodeError::Malformed("missing field `v`".into())),
        }
        let record: LancamentoRecord =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Lancamento::try_from(record)
    }
}

impl LancamentoRecord {
    /// The same business facts: every field but the version and `criado_em`, which a client
    /// retry of the same entry (same `Idempotency-Key`) legitimately changes.
    pub fn same_facts(&self, other: &LancamentoRecord) -> bool {
        self.id == other.id
            && self.merchant_id == other.merchant_id
            && self.tipo == other.tipo
            && self.valor_cents == other.valor_cents
            && self.data == other.data
            && self.descricao == other.descricao
            && self.categoria == other.categoria
            && self.estorno_de == other.estorno_de
    }
}

impl TryFrom<LancamentoRecord> for Lancamento {
    type Error = DecodeError;

    fn try_from(r: LancamentoRecord) -> Result<Self, Self::Error> {
        let invalid = |field, reason: String| DecodeError::InvalidField { field, reason };
        let merchant_id = MerchantId::parse(&r.merchant_id).map_err(|e| invalid("merchant_id", e))?;
        if r.valor_cents <= 0 {
            return Err(invalid("valor_cents", "must be positive".into()));
        }
        let data = r.data.parse().map_err(|e| invalid("data", e))?;
        check_text("descricao", &r.descricao, MAX_DESCRICAO_CHARS, true).map_err(|e| invalid("descricao", e))?;
        if let Some(c) = &r.categoria {
            check_text("categoria", c, MAX_CATEGORIA_CHARS, true).map_err(|e| invalid("categoria", e))?;
        }
        let criado_em = DateTime::parse_from_rfc3339(&r.criado_em)
            .map_err(|e| invalid("criado_em", e.to_string()))?
            .with_timezone(&Utc);
        Ok(Lancamento {
            id: r.id,
            merchant_id,
            tipo: r.tipo,
            valor: Money::from_cents(r.valor_cents),
            data,
            descricao: r.descricao,
            categoria: r.categoria,
            criado_em,
            estorno_de: r.estorno_de,
        })
    }
}

/// Checks a free-text field: length in characters and no control characters.
pub fn check_text(_field: &str, value: &str, max_chars: usize, required: bool) -> Result<(), String> {
    let n = value.chars().count();
    if required && value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if n > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lancamento {
        Lancamento {
            id: EntryId::random(),
            merchant_id: MerchantId::parse("loja-1").unwrap(),
            tipo: Tipo::Debito,
            valor: "10.50".parse().unwrap(),
            data: "2026-01-31".parse().unwrap(),
            descricao: "aluguel".into(),
            categoria: Some("fixo".into()),
            criado_em: DateTime::parse_from_rfc3339("2026-01-31T10:00:00.125Z").unwrap().with_timezone(&Utc),
            estorno_de: None,
        }
    }

    #[test]
    fn encode_decode_round_trips() {
        let l = sample();
        assert_eq!(Lancamento::decode(&l.encode()), Ok(l.clone()));
        assert_eq!(l.signed_cents(), -1050);
    }

    #[test]
    fn a_retry_has_the_same_facts_and_a_change_does_not() {
        let a = sample().to_record();
        let retry = LancamentoRecord { criado_em: "2030-01-01T00:00:00.000Z".into(), ..a.clone() };
        assert!(a.same_facts(&retry));
        let changed = LancamentoRecord { valor_cents: a.valor_cents + 1, ..a.clone() };
        assert!(!a.same_facts(&changed));
    }

    #[test]
    fn decode_classifies_bad_records() {
        assert_eq!(Lancamento::decode(b"{not json").unwrap_err().code(), "malformed");
        let mut v = serde_json::to_value(sample().to_record()).unwrap();
        v["v"] = 2.into();
        let e = Lancamento::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e, DecodeError::UnknownVersion(2));
        v["v"] = 1.into();
        v["valor_cents"] = 0.into();
        let e = Lancamento::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e.code(), "invalid_field");
        assert!(e.to_string().contains("valor_cents"), "{e}");
    }

    #[test]
    fn idempotency_key_gives_a_stable_id_per_merchant() {
        let a = MerchantId::parse("a").unwrap();
        let b = MerchantId::parse("b").unwrap();
        assert_eq!(EntryId::from_idempotency_key(&a, "k1"), EntryId::from_idempotency_key(&a, "k1"));
        assert_ne!(EntryId::from_idempotency_key(&a, "k1"), EntryId::from_idempotency_key(&b, "k1"));
        assert_ne!(EntryId::from_idempotency_key(&a, "k1"), EntryId::from_idempotency_key(&a, "k2"));
    }

    #[test]
    fn dates_are_strict_and_map_to_days() {
        let d: BusinessDate = "2026-02-28".parse().unwrap();
        assert_eq!(BusinessDate::from_days(d.days()), Some(d));
        for bad in ["2026-02-30", "2026-2-1", "26-02-01", "2026/02/01", "0999-01-01", ""] {
            assert!(bad.parse::<BusinessDate>().is_err(), "{bad}");
        }
    }
}
