//! The pure steps of an epoch. Each takes what the records and the store said, and returns a
//! typed answer: which records count, which entries to insert, which are duplicates, and which
//! records go where with what code. The epoch ([`super::Epoch`]) does the I/O between them, and
//! these are tested without Kafka or a store.

use std::collections::{BTreeMap, HashMap, HashSet};

use cashflow_core::config::DateWindow;
use cashflow_core::failure::Code;
use cashflow_core::{
    BusinessDate, DayTotals, EntryId, Incoming, Lancamento, LancamentoRecord, MerchantId, Money, Tipo,
};
use cashflow_sinks::{Delivery, StoredEntry};

use super::Record;

/// A record that will not be counted, and why: its code decides whether it is retried or parked.
#[derive(Debug)]
pub(super) struct Rejected<'r> {
    pub record: &'r Record,
    pub code: Code,
    pub detail: String,
}

impl<'r> Rejected<'r> {
    pub fn new(record: &'r Record, code: Code, detail: impl Into<String>) -> Self {
        Rejected { record, code, detail: detail.into() }
    }
}

/// The records an epoch counts: every first delivery, and each retried delivery the epoch claimed
/// (the retry stage may send one twice; it is claimed once). And how many were not claimed.
pub(super) fn admit<'r>(batch: &'r [Record], claimed: &HashSet<Delivery>) -> (Vec<&'r Record>, u64) {
    let admitted: Vec<&Record> = batch.iter().filter(|r| r.delivery().is_none_or(|d| claimed.contains(&d))).collect();
    let repeated = (batch.len() - admitted.len()) as u64;
    (admitted, repeated)
}

/// Each record decoded, with its date inside the window; or rejected with its code.
pub(super) fn decode<'r>(
    records: Vec<&'r Record>,
    window: &DateWindow,
) -> (Vec<(Incoming, &'r Record)>, Vec<Rejected<'r>>) {
    let (mut incoming, mut rejected) = (Vec::with_capacity(records.len()), Vec::new());
    for record in records {
        match &record.decoded {
            Ok(i) => match outside_window(window, i) {
                None => incoming.push((i.clone(), record)),
                Some(why) => rejected.push(Rejected::new(record, Code::InvalidField, why)),
            },
            Err(e) => rejected.push(Rejected::new(record, e.code(), e.to_string())),
        }
    }
    (incoming, rejected)
}

/// Why an entry's date is outside the window, judged on the day ingest accepted it
/// (`criado_em`), not today: an entry accepted at 23:59 with the oldest date allowed is still
/// valid when consolidated after midnight, or after an outage of days.
fn outside_window(window: &DateWindow, i: &Incoming) -> Option<String> {
    match BusinessDate::new(i.criado_em().date_naive()) {
        Ok(accepted) => window.reject(i.data(), accepted).map(|why| format!("invalid field data: {why}")),
        Err(why) => Some(format!("invalid field criado_em: {why}")),
    }
}

/// The entries that the reversals among `incoming` reverse, each once: what to read from the store.
pub(super) fn reversal_targets(incoming: &[(Incoming, &Record)]) -> Vec<EntryId> {
    let mut of: Vec<EntryId> =
        incoming.iter().filter_map(|(i, _)| if let Incoming::Reversal(r) = i { Some(r.of) } else { None }).collect();
    of.sort_unstable();
    of.dedup();
    of
}

/// What the store holds of the entries that reversals name.
#[derive(Default)]
pub(super) struct Originals {
    /// The stored entries, by id.
    pub stored: HashMap<EntryId, LancamentoRecord>,
    /// The reversal already stored for each, by the original's id.
    pub reversed_by: HashMap<EntryId, EntryId>,
}

/// Each reversal turned into its correcting entry, using its original from the store or from
/// this batch (of the same merchant); the entries pass through. A reversal whose original is
/// unknown is retried (it may arrive later); one that cannot apply, or a second one of the same
/// original, is parked.
pub(super) fn resolve<'r>(
    incoming: Vec<(Incoming, &'r Record)>,
    originals: Originals,
) -> (Vec<(Lancamento, &'r Record)>, Vec<Rejected<'r>>) {
    let Originals { stored, mut reversed_by } = originals;
    // The entries of this batch that its reversals name, each as read first.
    let named = reversal_targets(&incoming);
    let mut in_batch: HashMap<EntryId, LancamentoRecord> = HashMap::new();
    for (i, _) in &incoming {
        if let Incoming::Entry(e) = i
            && named.binary_search(&e.id).is_ok()
        {
            in_batch.entry(e.id).or_insert_with(|| e.to_record());
        }
    }
    let (mut out, mut rejected) = (Vec::with_capacity(incoming.len()), Vec::new());
    for (i, record) in incoming {
        let r = match i {
            Incoming::Entry(e) => {
                out.push((e, record));
                continue;
            }
            Incoming::Reversal(r) => r,
        };
        let original =
            stored.get(&r.of).or_else(|| in_batch.get(&r.of)).filter(|o| o.merchant_id == r.merchant_id.as_str());
        let Some(original) = original else {
            let detail = format!("entry {} is not consolidated (yet) for merchant {}", r.of, r.merchant_id);
            rejected.push(Rejected::new(record, Code::OriginalNotFound, detail));
            continue;
        };
        match (r.apply_to(original), reversed_by.get(&r.of)) {
            (Err(e), _) => rejected.push(Rejected::new(record, Code::InvalidReversal, e.to_string())),
            (Ok(_), Some(&other)) if other != r.id => {
                let detail = format!("entry {} was already reversed by {other}", r.of);
                rejected.push(Rejected::new(record, Code::AlreadyReversed, detail));
            }
            (Ok(entry), _) => {
                reversed_by.insert(r.of, r.id);
                out.push((entry, record));
            }
        }
    }
    (out, rejected)
}

/// The entries to insert (the first record of each id, with where it came from) and the records
/// of ids already seen in the batch, judged once the store has said which ids are new.
pub(super) struct Candidates<'r> {
    pub first: Vec<StoredEntry>,
    sources: Vec<&'r Record>,
    later: Vec<(Lancamento, &'r Record)>,
}

pub(super) fn candidates(entries: Vec<(Lancamento, &Record)>) -> Candidates<'_> {
    let mut c = Candidates { first: Vec::with_capacity(entries.len()), sources: Vec::new(), later: Vec::new() };
    let mut seen: HashSet<EntryId> = HashSet::with_capacity(entries.len());
    for (entry, record) in entries {
        if seen.insert(entry.id) {
            c.first.push(StoredEntry { entry, origin: record.origin() });
            c.sources.push(record);
        } else {
            c.later.push((entry, record));
        }
    }
    c
}

impl Candidates<'_> {
    /// The candidates the store already held: their stored records decide the repeats.
    pub fn seen_before(&self, inserted: &HashSet<EntryId>) -> Vec<EntryId> {
        self.first.iter().map(|s| s.entry.id).filter(|id| !inserted.contains(id)).collect()
    }
}

/// What counts of the candidates: the entries new to the store, in the order read; and how many
/// records repeat what counts for their id, while those that contradict it are rejected.
pub(super) struct Judged<'e, 'r> {
    pub fresh: Vec<(&'e Lancamento, &'r Record)>,
    pub duplicates: u64,
    pub rejected: Vec<Rejected<'r>>,
}

/// Judges each candidate against the insert (`inserted`: the ids that were new) and every other
/// record of an id against what counts for it: the stored record (`stored`, of the candidates
/// seen before), or else the candidate.
pub(super) fn judge<'e, 'r>(
    c: &'e Candidates<'r>,
    inserted: &HashSet<EntryId>,
    mut stored: HashMap<EntryId, LancamentoRecord>,
) -> Judged<'e, 'r> {
    let mut judged = Judged { fresh: Vec::with_capacity(inserted.len()), duplicates: 0, rejected: Vec::new() };
    let mut repeats: Vec<(&Lancamento, &Record)> = Vec::new();
    // What counts for an id is kept only for the ids that later records of the batch repeat.
    let repeated: HashSet<EntryId> = c.later.iter().map(|(e, _)| e.id).collect();
    for (s, record) in c.first.iter().zip(&c.sources) {
        if inserted.contains(&s.entry.id) {
            if repeated.contains(&s.entry.id) {
                stored.insert(s.entry.id, s.entry.to_record());
            }
            judged.fresh.push((&s.entry, *record));
        } else {
            repeats.push((&s.entry, *record));
        }
    }
    for (entry, record) in repeats.into_iter().chain(c.later.iter().map(|(e, r)| (e, *r))) {
        match stored.get(&entry.id) {
            Some(counted) if counted.same_facts(&entry.to_record()) => judged.duplicates += 1,
            // A reversal's id comes from its original: the same id with other facts is a second
            // reversal of that entry, under the code that says so to the merchant.
            _ => match entry.estorno_de {
                Some(of) => {
                    let detail = format!("entry {of} was already reversed by {}, with other facts", entry.id);
                    judged.rejected.push(Rejected::new(record, Code::AlreadyReversed, detail));
                }
                None => {
                    let detail = format!("entry id {} was already used for different facts", entry.id);
                    judged.rejected.push(Rejected::new(record, Code::ConflictingDuplicate, detail));
                }
            },
        }
    }
    judged
}

/// The merchants of `fresh`, each once: whose totals of all time to read.
pub(super) fn merchants<'e>(fresh: &[(&'e Lancamento, &Record)]) -> Vec<&'e MerchantId> {
    let mut merchants: Vec<&MerchantId> = fresh.iter().map(|(e, _)| &e.merchant_id).collect();
    merchants.sort_unstable();
    merchants.dedup();
    merchants
}

/// The new entries that keep their merchant's credits and debits of all time within 64-bit
/// cents, in the order read; and those that would not, to take out of the store again.
pub(super) struct Limited<'e, 'r> {
    pub kept: Vec<&'e Lancamento>,
    pub refused: Vec<EntryId>,
    pub rejected: Vec<Rejected<'r>>,
}

/// Every day, category, month and running balance is a part of a merchant's two totals of all
/// time (`totals`, as stored), so none of them can overflow either.
pub(super) fn limit<'e, 'r>(
    fresh: Vec<(&'e Lancamento, &'r Record)>,
    mut totals: HashMap<MerchantId, DayTotals>,
) -> Limited<'e, 'r> {
    let mut out = Limited { kept: Vec::with_capacity(fresh.len()), refused: Vec::new(), rejected: Vec::new() };
    for (entry, record) in fresh {
        let total = totals.entry(entry.merchant_id.clone()).or_default();
        match total.checked_add(&entry.totals()) {
            Ok(sum) => {
                *total = sum;
                out.kept.push(entry);
            }
            Err(_) => {
                let detail = format!(
                    "entry {} of {} would take the merchant's {} beyond {} in all",
                    entry.id,
                    Money::from_cents(entry.valor.cents()),
                    if entry.tipo == Tipo::Credito { "credits" } else { "debits" },
                    Money::from_cents(i64::MAX)
                );
                out.refused.push(entry.id);
                out.rejected.push(Rejected::new(record, Code::AmountOverflow, detail));
            }
        }
    }
    out
}

/// The next offset of each (topic, partition) in `batch`. A batch holds a few partitions and many
/// records: each record is matched against the few, and a topic's name is copied once.
pub(super) fn next_offsets(batch: &[Record]) -> BTreeMap<(String, i32), i64> {
    let mut next: Vec<(&str, i32, i64)> = Vec::new();
    for r in batch {
        match next.iter_mut().find(|(topic, partition, _)| *topic == r.topic && *partition == r.partition) {
            Some(at) => at.2 = at.2.max(r.offset + 1),
            None => next.push((&r.topic, r.partition, r.offset + 1)),
        }
    }
    next.into_iter().map(|(topic, partition, offset)| ((topic.to_owned(), partition), offset)).collect()
}

pub(super) fn progress(next: &BTreeMap<(String, i32), i64>) -> Vec<(String, i32, i64)> {
    next.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect()
}

/// `batch` split into at most `lanes` parts, each partition whole in one: the batch's partitions,
/// in order, dealt to the lanes in turn. A partition's records keep their order.
pub(crate) fn split_lanes(batch: Vec<Record>, lanes: usize) -> Vec<Vec<Record>> {
    let mut partitions: Vec<(&str, i32)> = batch.iter().map(|r| (r.topic.as_str(), r.partition)).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let lanes = lanes.clamp(1, partitions.len().max(1));
    let lane_of: Vec<usize> = batch
        .iter()
        .map(|r| partitions.binary_search(&(r.topic.as_str(), r.partition)).expect("each record's partition is listed"))
        .map(|i| i % lanes)
        .collect();
    let mut out: Vec<Vec<Record>> = vec![Vec::new(); lanes];
    for (r, lane) in batch.into_iter().zip(lane_of) {
        out[lane].push(r);
    }
    out
}

#[cfg(test)]
mod tests;
