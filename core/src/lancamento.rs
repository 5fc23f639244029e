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
/// Namespace for the ids of reversals, derived from (merchant, original id).
const REVERSAL_NAMESPACE: Uuid = Uuid::from_u128(0x3e57_0a90_5c1b_4f7e_a2d4_7b0e_5e57_0a90);
const DERIVED_NAMESPACE: Uuid = Uuid::from_u128(0x5a17_d3e1_77c4_4b2a_9e0f_1d6c_5a17_d3e1);

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

    /// The id of the reversal of `original`: one per entry, so reversing twice cannot count twice.
    pub fn reversal_of(merchant: &MerchantId, original: EntryId) -> Self {
        let name = format!("{}\n{}", merchant.as_str(), original);
        EntryId(Uuid::new_v5(&REVERSAL_NAMESPACE, name.as_bytes()))
    }

    /// The id of the `n`th entry (from 1) a SmartModule made of `source` besides `source`
    /// itself: the same entry always gives the same ids, so a redelivery is counted once.
    pub fn derived(source: EntryId, n: usize) -> Self {
        EntryId(Uuid::new_v5(&DERIVED_NAMESPACE, format!("{source}\n{n}").as_bytes()))
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Tipo {
    Credito,
    Debito,
}

impl Tipo {
    /// Credit for debit and debit for credit.
    pub fn inverse(self) -> Tipo {
        match self {
            Tipo::Credito => Tipo::Debito,
            Tipo::Debito => Tipo::Credito,
        }
    }

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

/// A valid calendar date, in a const context (where `unwrap` is not).
const fn date_or_min(date: Option<NaiveDate>) -> NaiveDate {
    match date {
        Some(d) => d,
        None => NaiveDate::MIN,
    }
}

/// A business date (`YYYY-MM-DD`), between year 1900 and 9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusinessDate(NaiveDate);

impl BusinessDate {
    /// The first and the last business date.
    pub const FIRST: BusinessDate = BusinessDate(date_or_min(NaiveDate::from_ymd_opt(1900, 1, 1)));
    pub const LAST: BusinessDate = BusinessDate(date_or_min(NaiveDate::from_ymd_opt(9999, 12, 31)));

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
    /// Exactly `YYYY-MM-DD`, ASCII digits, a real day. (Read on every entry and query: no
    /// format string is interpreted.)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let number = |at: std::ops::Range<usize>| {
            b[at].iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
        };
        let date = (b.len() == 10 && b[4] == b'-' && b[7] == b'-')
            .then(|| NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?))
            .flatten();
        BusinessDate::new(date.ok_or("must be a date in the form YYYY-MM-DD")?)
    }
}

impl BusinessDate {
    /// `YYYY-MM-DD`, written digit by digit into `buf` rather than through `fmt` (a 31-day
    /// balance holds 31 dates); none for a year that is not four digits.
    fn text(self, buf: &mut [u8; 10]) -> Option<&str> {
        let year = u32::try_from(self.0.year()).ok().filter(|y| (1000..=9999).contains(y))?;
        let (month, day) = (self.0.month(), self.0.day());
        let digits =
            [year / 1000, year / 100 % 10, year / 10 % 10, year % 10, month / 10, month % 10, day / 10, day % 10];
        let at = [0, 1, 2, 3, 5, 6, 8, 9];
        *buf = *b"0000-00-00";
        for (i, d) in at.into_iter().zip(digits) {
            buf[i] += d as u8;
        }
        std::str::from_utf8(buf).ok()
    }
}

impl fmt::Display for BusinessDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text(&mut [0; 10]) {
            Some(text) => f.write_str(text),
            None => fmt::Display::fmt(&self.0, f),
        }
    }
}

impl Serialize for BusinessDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.text(&mut [0; 10]) {
            Some(text) => s.serialize_str(text),
            None => s.collect_str(self),
        }
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

/// The JSON value on the `lancamentos` topic: `{v: 1, id, merchant_id, tipo, valor_cents, data,
/// descricao, categoria, criado_em, estorno_de?}`, keyed by the merchant id. `v` is the wire
/// version; a reader refuses one it does not know (`unknown_version`).
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
    pub fn code(&self) -> crate::failure::Code {
        use crate::failure::Code;
        match self {
            DecodeError::Malformed(_) => Code::Malformed,
            DecodeError::UnknownVersion(_) => Code::UnknownVersion,
            DecodeError::InvalidField { .. } => Code::InvalidField,
        }
    }
}

/// Limits shared by the HTTP edge and the decoder.
pub const MAX_DESCRICAO_CHARS: usize = 200;
pub const MAX_CATEGORIA_CHARS: usize = 50;
/// The largest single amount, in cents (9,999,999,999.99): refused at the HTTP edge, and a
/// record on the topic above it is an invalid field, whoever produced it.
pub const MAX_VALOR_CENTS: i64 = 999_999_999_999;

/// Why an amount is not one entry's: `None` when it is in (0, [`MAX_VALOR_CENTS`]].
pub fn reject_valor_cents(cents: i64) -> Option<String> {
    if cents <= 0 {
        Some("must be greater than zero".into())
    } else if cents > MAX_VALOR_CENTS {
        Some(format!("must be at most {}", Money::from_cents(MAX_VALOR_CENTS)))
    } else {
        None
    }
}

impl Lancamento {
    /// This entry's effect on any total it counts in: its amount as a credit or a debit, and one.
    pub fn totals(&self) -> crate::DayTotals {
        let cents = self.valor.cents();
        match self.tipo {
            Tipo::Credito => crate::DayTotals { creditos_cents: cents, debitos_cents: 0, quantidade: 1 },
            Tipo::Debito => crate::DayTotals { creditos_cents: 0, debitos_cents: cents, quantidade: 1 },
        }
    }

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
        serde_json::to_vec(&self.to_record()).expect("a record of strings and integers serializes")
    }

    /// Decodes and validates a record from the topic that is a plain entry (not a reversal).
    pub fn decode(bytes: &[u8]) -> Result<Lancamento, DecodeError> {
        match Incoming::decode(bytes)? {
            Incoming::Entry(e) => Ok(e),
            Incoming::Reversal(_) => Err(DecodeError::Malformed("a reversal, not an entry".into())),
        }
    }
}

/// What a record on the topic asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A new entry.
    Entry(Lancamento),
    /// Reverse an earlier entry: its type is inverted and its amount repeated.
    Reversal(Reversal),
}

/// A reversal (*estorno*) as sent: what it needs from the original comes from the original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reversal {
    pub id: EntryId,
    pub merchant_id: MerchantId,
    /// The entry reversed.
    pub of: EntryId,
    pub data: BusinessDate,
    pub descricao: String,
    pub criado_em: DateTime<Utc>,
    /// Type and amount, when the producer stated them: they must match the original's inverse.
    pub stated: Option<(Tipo, i64)>,
}

/// Why a reversal cannot apply to the entry it names. Permanent: retrying cannot change it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReversalError {
    #[error("entry {0} is itself a reversal and cannot be reversed")]
    OfReversal(EntryId),
    #[error("the reversal states {stated} but the inverse of entry {of} is {inverse}")]
    Mismatch { of: EntryId, stated: String, inverse: String },
}

impl Reversal {
    /// The correcting entry: the original's category, inverse type and same amount.
    pub fn apply_to(&self, original: &LancamentoRecord) -> Result<Lancamento, ReversalError> {
        if original.estorno_de.is_some() {
            return Err(ReversalError::OfReversal(self.of));
        }
        let inverse = (original.tipo.inverse(), original.valor_cents);
        if let Some(stated) = self.stated
            && stated != inverse
        {
            let show = |(t, c): (Tipo, i64)| format!("{} {}", t.as_str(), Money::from_cents(c));
            return Err(ReversalError::Mismatch { of: self.of, stated: show(stated), inverse: show(inverse) });
        }
        Ok(Lancamento {
            id: self.id,
            merchant_id: self.merchant_id.clone(),
            tipo: inverse.0,
            valor: Money::from_cents(inverse.1),
            data: self.data,
            descricao: self.descricao.clone(),
            categoria: original.categoria.clone(),
            criado_em: self.criado_em,
            estorno_de: Some(self.of),
        })
    }

    /// The wire record: type and amount left to the original.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            v: Some(u64::from(WIRE_VERSION)),
            id: self.id,
            merchant_id: self.merchant_id.to_string(),
            tipo: self.stated.map(|s| s.0),
            valor_cents: self.stated.map(|s| s.1),
            data: self.data.to_string(),
            descricao: self.descricao.clone(),
            categoria: None,
            criado_em: self.criado_em.to_rfc3339_opts(SecondsFormat::Millis, true),
            estorno_de: Some(self.of),
        };
        serde_json::to_vec(&wire).expect("a record of strings and integers serializes")
    }
}

/// A record's `v`: this version, or the error that says why not.
fn known_version(v: Option<u64>) -> Result<(), DecodeError> {
    match v {
        Some(v) if v == u64::from(WIRE_VERSION) => Ok(()),
        Some(v) => Err(DecodeError::UnknownVersion(v)),
        None => Err(DecodeError::Malformed("missing field `v`".into())),
    }
}

/// The wire record as read: type and amount are optional for a reversal.
#[derive(Deserialize, Serialize)]
struct Wire {
    v: Option<u64>,
    id: EntryId,
    merchant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tipo: Option<Tipo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valor_cents: Option<i64>,
    data: String,
    descricao: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    categoria: Option<String>,
    criado_em: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    estorno_de: Option<EntryId>,
}

impl Incoming {
    /// Decodes and validates a record from the topic.
    pub fn decode(bytes: &[u8]) -> Result<Incoming, DecodeError> {
        // A record is a JSON object (serde would also read a struct from an array, by position).
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(DecodeError::Malformed("a record is a JSON object".into()));
        }
        // One pass over a record of this version. Only a record that does not read as one is
        // read again, for its version alone: another version is not a malformed record.
        let w = match serde_json::from_slice::<Wire>(bytes) {
            Ok(w) => {
                known_version(w.v)?;
                w
            }
            Err(e) => {
                #[derive(Deserialize)]
                struct Version {
                    v: Option<u64>,
                }
                let version: Version =
                    serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
                known_version(version.v)?;
                return Err(DecodeError::Malformed(e.to_string()));
            }
        };
        match (w.estorno_de, w.tipo, w.valor_cents) {
            (None, Some(tipo), Some(valor_cents)) => Lancamento::try_from(LancamentoRecord {
                v: WIRE_VERSION,
                id: w.id,
                merchant_id: w.merchant_id,
                tipo,
                valor_cents,
                data: w.data,
                descricao: w.descricao,
                categoria: w.categoria,
                criado_em: w.criado_em,
                estorno_de: None,
            })
            .map(Incoming::Entry),
            (None, None, _) => Err(DecodeError::Malformed("missing field `tipo`".into())),
            (None, _, None) => Err(DecodeError::Malformed("missing field `valor_cents`".into())),
            (Some(of), tipo, valor_cents) => {
                let invalid = |field, reason: String| DecodeError::InvalidField { field, reason };
                let stated = match (tipo, valor_cents) {
                    (None, None) => None,
                    (Some(t), Some(c)) => match reject_valor_cents(c) {
                        None => Some((t, c)),
                        Some(why) => return Err(invalid("valor_cents", why)),
                    },
                    _ => {
                        return Err(invalid(
                            "valor_cents",
                            "a reversal states both tipo and valor_cents or neither".into(),
                        ));
                    }
                };
                if of == w.id {
                    return Err(invalid("estorno_de", "an entry cannot reverse itself".into()));
                }
                let merchant_id = MerchantId::parse(&w.merchant_id).map_err(|e| invalid("merchant_id", e))?;
                let data = w.data.parse().map_err(|e| invalid("data", e))?;
                check_text("descricao", &w.descricao, MAX_DESCRICAO_CHARS, true)
                    .map_err(|e| invalid("descricao", e))?;
                let criado_em = parse_instant(&w.criado_em).map_err(|e| invalid("criado_em", e))?;
                Ok(Incoming::Reversal(Reversal {
                    id: w.id,
                    merchant_id,
                    of,
                    data,
                    descricao: w.descricao,
                    criado_em,
                    stated,
                }))
            }
        }
    }

    pub fn id(&self) -> EntryId {
        match self {
            Incoming::Entry(e) => e.id,
            Incoming::Reversal(r) => r.id,
        }
    }

    pub fn data(&self) -> BusinessDate {
        match self {
            Incoming::Entry(e) => e.data,
            Incoming::Reversal(r) => r.data,
        }
    }

    /// When ingest accepted it.
    pub fn criado_em(&self) -> DateTime<Utc> {
        match self {
            Incoming::Entry(e) => e.criado_em,
            Incoming::Reversal(r) => r.criado_em,
        }
    }
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|e| e.to_string())
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
        if let Some(why) = reject_valor_cents(r.valor_cents) {
            return Err(invalid("valor_cents", why));
        }
        let data = r.data.parse().map_err(|e| invalid("data", e))?;
        check_text("descricao", &r.descricao, MAX_DESCRICAO_CHARS, true).map_err(|e| invalid("descricao", e))?;
        if let Some(c) = &r.categoria {
            check_text("categoria", c, MAX_CATEGORIA_CHARS, true).map_err(|e| invalid("categoria", e))?;
        }
        let criado_em = parse_instant(&r.criado_em).map_err(|e| invalid("criado_em", e))?;
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
mod tests;
