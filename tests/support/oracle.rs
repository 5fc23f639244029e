//! The oracle: balances recomputed plainly from the raw entries that were accepted. It shares no
//! code with the system under test beyond date parsing.

use std::collections::BTreeMap;

use cashflow_core::BusinessDate;
use rand::Rng;
use serde_json::{Value, json};

/// An entry the API accepted (202).
#[derive(Clone, Debug)]
pub struct Posted {
    pub merchant: String,
    pub credit: bool,
    pub cents: i64,
    pub date: BusinessDate,
}

impl Posted {
    /// Cents, positive for a credit, negative for a debit.
    pub fn signed(&self) -> i64 {
        if self.credit { self.cents } else { -self.cents }
    }

    pub fn body(&self, descricao: &str) -> Value {
        json!({
            "tipo": if self.credit { "credito" } else { "debito" },
            "valor": format!("{}.{:02}", self.cents / 100, self.cents % 100),
            "data": self.date.to_string(),
            "descricao": descricao,
        })
    }
}

/// `n` random entries over `days` days from `first`: credits and debits, tiny and huge amounts.
/// The last fifth is dated in the first week, so it lands before days already consolidated.
pub fn random_entries(merchants: &[&str], n: usize, first: BusinessDate, days: i32) -> Vec<Posted> {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|i| {
            let cents = match rng.gen_range(0..10) {
                0 => 1,
                1 => 9_999_999_999,
                _ => rng.gen_range(1..5_000_000),
            };
            let span = if i >= n * 4 / 5 { 7.min(days) } else { days };
            Posted {
                merchant: merchants[rng.gen_range(0..merchants.len())].to_owned(),
                credit: rng.gen_bool(0.55),
                cents,
                date: BusinessDate::from_days(first.days() + rng.gen_range(0..span)).unwrap(),
            }
        })
        .collect()
}

#[derive(Default)]
pub struct Oracle {
    entries: Vec<Posted>,
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

impl Oracle {
    pub fn add(&mut self, p: Posted) {
        self.entries.push(p);
    }

    /// The merchant's entries, as posted.
    pub fn entries(&self, merchant: &str) -> Vec<&Posted> {
        self.entries.iter().filter(|e| e.merchant == merchant).collect()
    }

    pub fn count(&self, merchant: &str) -> usize {
        self.entries.iter().filter(|e| e.merchant == merchant).count()
    }

    /// The merchant's entries dated in `[de, ate]`.
    pub fn count_in(&self, merchant: &str, de: BusinessDate, ate: BusinessDate) -> usize {
        self.entries.iter().filter(|e| e.merchant == merchant && (de..=ate).contains(&e.date)).count()
    }

    /// Entries accepted but not counted, and entries counted more than once, in an API answer
    /// for `[de, ate]`, judged by each day's count.
    pub fn lost_and_duplicated(&self, merchant: &str, answer: &Value) -> (i64, i64) {
        let mut lost = 0;
        let mut duplicated = 0;
        for day in answer["dias"].as_array().into_iter().flatten() {
            let date = day["data"].as_str().unwrap_or_default();
            let want =
                self.entries.iter().filter(|e| e.merchant == merchant && e.date.to_string() == date).count() as i64;
            let got = day["lancamentos"].as_i64().unwrap_or(0);
            lost += (want - got).max(0);
            duplicated += (got - want).max(0);
        }
        (lost, duplicated)
    }

    /// Every difference between an API answer for `[de, ate]` and the plain recomputation.
    pub fn mismatches(&self, merchant: &str, de: BusinessDate, ate: BusinessDate, answer: &Value) -> Vec<String> {
        let mine: Vec<&Posted> = self.entries.iter().filter(|e| e.merchant == merchant).collect();
        // Days after the date of the last consolidation are marked as projections.
        let consolidated_on = answer["atualizado_ate"].as_str().and_then(|t| t.get(..10)).map(str::to_owned);
        let mut expected = BTreeMap::new();
        for d in de.days()..=ate.days() {
            let day = BusinessDate::from_days(d).unwrap();
            let signed = |e: &&Posted| if e.credit { e.cents } else { -e.cents };
            let before: i64 = mine.iter().filter(|e| e.date < day).map(signed).sum();
            let on: Vec<&&Posted> = mine.iter().filter(|e| e.date == day).collect();
            let credits: i64 = on.iter().filter(|e| e.credit).map(|e| e.cents).sum();
            let debits: i64 = on.iter().filter(|e| !e.credit).map(|e| e.cents).sum();
            expected.insert(
                day.to_string(),
                json!({
                    "data": day.to_string(),
                    "creditos": money(credits),
                    "debitos": money(debits),
                    "saldo_do_dia": money(credits - debits),
                    "saldo_inicial": money(before),
                    "saldo_final": money(before + credits - debits),
                    "lancamentos": on.len(),
                    "projetado": consolidated_on.as_ref().is_none_or(|on| day.to_string() > *on),
                }),
            );
        }
        let got: BTreeMap<String, Value> = answer["dias"]
            .as_array()
            .map(|days| days.iter().map(|d| (d["data"].as_str().unwrap_or("?").to_owned(), d.clone())).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        if answer["comerciante"] != merchant {
            out.push(format!("comerciante is {} not {merchant}", answer["comerciante"]));
        }
        for (day, want) in &expected {
            match got.get(day) {
                Some(have) if have == want => {}
                Some(have) => out.push(format!("{merchant} {day}: want {want}, got {have}")),
                None => out.push(format!("{merchant} {day}: missing")),
            }
        }
        if got.len() != expected.len() {
            out.push(format!("{merchant}: {} days answered, {} expected", got.len(), expected.len()));
        }
        out
    }
}
