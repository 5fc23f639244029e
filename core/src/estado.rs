//! Declared states (*estados*): credits, debits and counts of entries (the state's values), per
//! key, where a key is a tuple of fields of the entry. `pipeline.yaml` declares them; the dataflow keeps them, the store
//! holds each in its table, and `GET /v1/consolidado/estados/{nome}` serves them.
//!
//! A key's period fields (`data`, `mes`, `ano`, `semana`) are all functions of the entry's date,
//! so a key value has one date for all of them: the first day of the intersection of its periods
//! (a day, the first of a month, a Monday, ...). Two dates of one entry stream have the same
//! periods exactly when they have the same such day, so that day is the key's period.

use std::fmt;

use chrono::{Datelike as _, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::{BusinessDate, DayTotals};

/// A field a state's key may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The merchant: every key has it first, because a state belongs to one merchant.
    MerchantId,
    /// The business date, `YYYY-MM-DD`.
    Data,
    /// The category, `""` for entries without one.
    Categoria,
    /// `credito` or `debito`.
    Tipo,
    /// The month of `data`, `YYYY-MM`.
    Mes,
    /// The year of `data`, `YYYY`.
    Ano,
    /// The ISO week of `data`, `YYYY-Www` (ISO week-numbering year).
    Semana,
}

impl Field {
    pub const ALL: [Field; 7] =
        [Field::MerchantId, Field::Data, Field::Categoria, Field::Tipo, Field::Mes, Field::Ano, Field::Semana];

    /// Its name in `pipeline.yaml`, and its column in the state's table.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::MerchantId => "merchant_id",
            Field::Data => "data",
            Field::Categoria => "categoria",
            Field::Tipo => "tipo",
            Field::Mes => "mes",
            Field::Ano => "ano",
            Field::Semana => "semana",
        }
    }

    /// A period: a function of the date.
    pub fn is_period(self) -> bool {
        matches!(self, Field::Data | Field::Mes | Field::Ano | Field::Semana)
    }

    /// The first day of this period that holds `date`.
    fn start(self, date: NaiveDate) -> NaiveDate {
        match self {
            Field::Mes => date.with_day(1).unwrap_or(date),
            Field::Ano => date.with_ordinal(1).unwrap_or(date),
            Field::Semana => date - chrono::Days::new(u64::from(date.weekday().num_days_from_monday())),
            _ => date,
        }
    }

    /// The first and the last day of this period that holds `date`.
    pub fn days(self, date: NaiveDate) -> (NaiveDate, NaiveDate) {
        let first = self.start(date);
        let last = match self {
            Field::Mes => first.checked_add_months(chrono::Months::new(1)).and_then(|d| d.pred_opt()),
            Field::Ano => first.with_year(first.year() + 1).and_then(|d| d.pred_opt()),
            Field::Semana => first.checked_add_days(chrono::Days::new(6)),
            _ => Some(first),
        };
        (first, last.unwrap_or(NaiveDate::MAX))
    }

    /// This field's value for one entry: its date's period, its category (`""` for none) or
    /// its `tipo`; `None` for `merchant_id`, which every key has first.
    pub fn value_of(self, data: BusinessDate, categoria: &str, tipo: crate::Tipo) -> Option<String> {
        match self {
            Field::MerchantId => None,
            Field::Categoria => Some(categoria.to_owned()),
            Field::Tipo => Some(tipo.as_str().to_owned()),
            period => Some(period.period(data.date())),
        }
    }

    /// This period of `date`, as stored and served (`data` for any field that is not a period).
    pub fn period(self, date: NaiveDate) -> String {
        match self {
            Field::Mes => format!("{:04}-{:02}", date.year(), date.month()),
            Field::Ano => format!("{:04}", date.year()),
            Field::Semana => {
                let w = date.iso_week();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            _ => date.format("%Y-%m-%d").to_string(),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state's key: `merchant_id` first, then distinct fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "Vec<Field>")]
pub struct Key(Vec<Field>);

impl TryFrom<Vec<Field>> for Key {
    type Error = String;

    fn try_from(fields: Vec<Field>) -> Result<Key, String> {
        Key::new(fields)
    }
}

impl Key {
    /// The key of these fields, or why it is not one.
    pub fn new(fields: Vec<Field>) -> Result<Key, String> {
        if fields.first() != Some(&Field::MerchantId) {
            return Err("must start with merchant_id: a state belongs to one merchant".into());
        }
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].contains(f) {
                return Err(format!("names {f} twice"));
            }
        }
        Ok(Key(fields))
    }

    pub fn fields(&self) -> &[Field] {
        &self.0
    }

    pub fn has(&self, field: Field) -> bool {
        self.0.contains(&field)
    }

    /// Its fields as stored in the store's registry of states: `merchant_id,data`.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The key [`Key::to_text`] wrote.
    pub fn from_text(text: &str) -> Result<Key, String> {
        Key::new(named(text, &Field::ALL, |f| f.as_str())?)
    }

    /// Whether a value of this key follows from a value of `finer`: each of its fields is one of
    /// `finer`'s, or a period that holds every date of one of `finer`'s periods.
    pub fn follows_from(&self, finer: &Key) -> bool {
        self.0.iter().all(|f| {
            finer.has(*f) || (f.is_period() && finer.has(Field::Data)) || (*f == Field::Ano && finer.has(Field::Mes))
        })
    }

    /// The period day of `date` under this key (see the module's doc): `date` itself when the key
    /// has `data`, and 1970-01-01 when it has no period.
    pub fn period_day(&self, date: NaiveDate) -> NaiveDate {
        if self.has(Field::Data) {
            return date;
        }
        let periods = self.0.iter().filter(|f| f.is_period());
        periods.map(|f| f.start(date)).max().unwrap_or_default()
    }

    /// The days whose entries make up the values of this key that overlap `[de, ate]`: from the
    /// first day of the earliest period that holds `de` to the last of the latest that holds
    /// `ate`. `None` when the key has no period: every value holds entries of any date.
    pub fn span(&self, de: BusinessDate, ate: BusinessDate) -> Option<(NaiveDate, NaiveDate)> {
        let periods = self.0.iter().filter(|f| f.is_period());
        periods.fold(None, |span, f| {
            let (first, last) = (f.days(de.date()).0, f.days(ate.date()).1);
            Some(span.map_or((first, last), |(a, b): (NaiveDate, NaiveDate)| (a.min(first), b.max(last))))
        })
    }

    /// For each period field, the first and last of its values that overlap `[de, ate]`.
    pub fn period_bounds(&self, de: BusinessDate, ate: BusinessDate) -> Vec<(Field, String, String)> {
        let periods = self.0.iter().filter(|f| f.is_period());
        periods.map(|f| (*f, f.period(de.date()), f.period(ate.date()))).collect()
    }
}

/// A value a state keeps per key: a sum or a count of its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// The sum of its credits, in cents.
    Creditos,
    /// The sum of its debits, in cents.
    Debitos,
    /// How many entries it has.
    Lancamentos,
}

impl Measure {
    pub const ALL: [Measure; 3] = [Measure::Creditos, Measure::Debitos, Measure::Lancamentos];

    /// Its name in `pipeline.yaml` and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Creditos => "creditos",
            Measure::Debitos => "debitos",
            Measure::Lancamentos => "lancamentos",
        }
    }

    /// Its column in the state's table.
    pub fn column(self) -> &'static str {
        match self {
            Measure::Creditos => "creditos_cents",
            Measure::Debitos => "debitos_cents",
            Measure::Lancamentos => "quantidade",
        }
    }

    /// Its figure in `totals`.
    pub fn of(self, totals: &DayTotals) -> i64 {
        match self {
            Measure::Creditos => totals.creditos_cents,
            Measure::Debitos => totals.debitos_cents,
            Measure::Lancamentos => totals.quantidade,
        }
    }

    /// `totals` with this figure set to `value`.
    pub fn set(self, totals: &mut DayTotals, value: i64) {
        match self {
            Measure::Creditos => totals.creditos_cents = value,
            Measure::Debitos => totals.debitos_cents = value,
            Measure::Lancamentos => totals.quantidade = value,
        }
    }
}

/// The values a state keeps: at least one, each once, in the order of [`Measure::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "Vec<Measure>")]
pub struct Values(Vec<Measure>);

impl TryFrom<Vec<Measure>> for Values {
    type Error = String;

    fn try_from(mut measures: Vec<Measure>) -> Result<Values, String> {
        if measures.is_empty() {
            return Err("must name at least one of creditos, debitos, lancamentos".into());
        }
        let named = measures.len();
        measures.sort_unstable();
        measures.dedup();
        if measures.len() < named {
            return Err("names a value twice".into());
        }
        Ok(Values(measures))
    }
}

impl Default for Values {
    fn default() -> Self {
        Values(Measure::ALL.to_vec())
    }
}

impl Values {
    pub fn measures(&self) -> &[Measure] {
        &self.0
    }

    pub fn has(&self, m: Measure) -> bool {
        self.0.contains(&m)
    }

    /// As stored in the registry of states: `creditos,debitos,lancamentos`.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The values [`Values::to_text`] wrote.
    pub fn from_text(text: &str) -> Result<Values, String> {
        Values::try_from(named(text, &Measure::ALL, |m| m.as_str())?)
    }
}

/// `a,b,c` as items of `all`, by name.
fn named<T: Copy>(text: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Result<Vec<T>, String> {
    let find = |n: &str| all.iter().copied().find(|t| name(*t) == n).ok_or_else(|| format!("unknown name {n:?}"));
    text.split(',').map(find).collect()
}

impl fmt::Display for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.0.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.0.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "))
    }
}

/// Rows of one state: each row's key values, in the key's order, and its totals. Stored flat, so
/// an epoch's changes of a state are two allocations, not one per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rows<K> {
    width: usize,
    values: Vec<K>,
    totals: Vec<DayTotals>,
}

impl<K> Rows<K> {
    /// No rows yet, of keys with `width` fields.
    pub fn new(width: usize) -> Self {
        Rows { width, values: Vec::new(), totals: Vec::new() }
    }

    /// One row, of its values' width.
    pub fn single(values: Vec<K>, totals: DayTotals) -> Self {
        Rows { width: values.len(), values, totals: vec![totals] }
    }

    /// Adds a row, if `values` has as many items as the width.
    pub fn push(&mut self, values: impl IntoIterator<Item = K>, totals: DayTotals) -> Result<(), RowWidth> {
        let before = self.values.len();
        self.values.extend(values);
        let got = self.values.len() - before;
        if got != self.width {
            self.values.truncate(before);
            return Err(RowWidth { expected: self.width, got });
        }
        self.totals.push(totals);
        Ok(())
    }

    /// The number of fields of each row's key.
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn len(&self) -> usize {
        self.totals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }

    /// The same rows, each value mapped by `f`; the first error, if any.
    pub fn try_map<U, E>(&self, f: impl FnMut(&K) -> Result<U, E>) -> Result<Rows<U>, E> {
        let values = self.values.iter().map(f).collect::<Result<_, _>>()?;
        Ok(Rows { width: self.width, values, totals: self.totals.clone() })
    }

    /// Each row's values and totals, in the order they were added.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[K], &DayTotals)> {
        let w = self.width;
        self.totals.iter().enumerate().map(move |(i, t)| (&self.values[i * w..(i + 1) * w], t))
    }
}

/// A row of another width than its [`Rows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a row of {got} key values among rows of {expected}")]
pub struct RowWidth {
    pub expected: usize,
    pub got: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fields: &[Field]) -> Key {
        Key::new(fields.to_vec()).unwrap()
    }

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn rows_keep_each_row_apart_and_refuse_a_row_of_another_width() {
        let t = |n| DayTotals { creditos_cents: n, debitos_cents: 0, quantidade: 1 };
        let mut rows = Rows::new(2);
        rows.push(["m", "2026-01"], t(1)).unwrap();
        assert_eq!(rows.push(["m"], t(2)), Err(RowWidth { expected: 2, got: 1 }));
        assert_eq!(rows.push(["m", "2026-02", "x"], t(3)), Err(RowWidth { expected: 2, got: 3 }));
        rows.push(["n", "2026-02"], t(4)).unwrap();
        let all: Vec<_> = rows.iter().map(|(v, t)| (v.to_vec(), t.creditos_cents)).collect();
        assert_eq!(all, vec![(vec!["m", "2026-01"], 1), (vec!["n", "2026-02"], 4)]);
        assert_eq!(Rows::single(vec!["m"], t(5)).iter().len(), 1);
    }

    #[test]
    fn a_key_starts_with_the_merchant_and_names_each_field_once() {
        assert!(Key::new(vec![Field::Data]).unwrap_err().contains("merchant_id"));
        assert!(Key::new(vec![Field::MerchantId, Field::Mes, Field::Mes]).unwrap_err().contains("twice"));
        assert!(Key::new(vec![]).is_err());
    }

    #[test]
    fn the_period_day_is_the_start_of_the_intersection_of_the_periods() {
        use Field::*;
        // Thursday 2026-01-01 is in ISO week 2026-W01, which began on Monday 2025-12-29.
        assert_eq!(key(&[MerchantId, Semana]).period_day(d("2026-01-01")), d("2025-12-29"));
        assert_eq!(key(&[MerchantId, Mes, Semana]).period_day(d("2026-01-01")), d("2026-01-01"));
        assert_eq!(key(&[MerchantId, Mes, Semana]).period_day(d("2025-12-30")), d("2025-12-29"));
        assert_eq!(key(&[MerchantId, Ano]).period_day(d("2026-07-09")), d("2026-01-01"));
        assert_eq!(key(&[MerchantId, Tipo]).period_day(d("2026-07-09")), NaiveDate::default());
        let day = key(&[MerchantId, Mes, Semana, Ano, Tipo]).period_day(d("2025-12-31"));
        assert_eq!([Mes, Semana, Ano].map(|f| f.period(day)), ["2025-12", "2026-W01", "2025"]);
    }

    #[test]
    fn a_key_follows_from_a_finer_one() {
        use Field::*;
        let daily = key(&[MerchantId, Data]);
        assert!(key(&[MerchantId, Mes]).follows_from(&daily));
        assert!(key(&[MerchantId, Semana, Ano]).follows_from(&daily));
        assert!(key(&[MerchantId, Ano]).follows_from(&key(&[MerchantId, Mes])));
        assert!(!key(&[MerchantId, Semana]).follows_from(&key(&[MerchantId, Mes])));
        assert!(!key(&[MerchantId, Mes, Tipo]).follows_from(&daily));
        assert!(key(&[MerchantId]).follows_from(&key(&[MerchantId, Tipo])));
    }

    #[test]
    fn a_span_covers_every_period_that_overlaps_the_range() {
        use Field::*;
        let bd = |s: &str| BusinessDate::new(d(s)).unwrap();
        let (de, ate) = (bd("2026-01-01"), bd("2026-02-10"));
        assert_eq!(key(&[MerchantId, Data]).span(de, ate), Some((d("2026-01-01"), d("2026-02-10"))));
        assert_eq!(key(&[MerchantId, Mes]).span(de, ate), Some((d("2026-01-01"), d("2026-02-28"))));
        // 2026-01-01 is in the week that began on Monday 2025-12-29; 2026-02-10 in the one of 02-09
        assert_eq!(key(&[MerchantId, Semana]).span(de, ate), Some((d("2025-12-29"), d("2026-02-15"))));
        assert_eq!(key(&[MerchantId, Ano, Semana]).span(de, ate), Some((d("2025-12-29"), d("2026-12-31"))));
        assert_eq!(key(&[MerchantId, Mes]).span(bd("2024-02-03"), bd("2024-02-03")).unwrap().1, d("2024-02-29"));
        assert_eq!(key(&[MerchantId, Categoria]).span(de, ate), None);
    }
}
