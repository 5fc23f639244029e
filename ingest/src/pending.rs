//! The reversals this ingest accepted, for as long as consolidation may still retry them (their
//! originals may not be consolidated yet). A reversal's id comes from its original, so a second
//! reversal of the same entry with other facts (another date or description) is the same id: here
//! it is refused with 409, where consolidation could only park it. With several ingest replicas,
//! or after a restart, the one that did not see the first lets it through, and consolidation
//! parks it as `already_reversed`, which the merchant sees at `GET /v1/lancamentos/retidos`.

use std::time::Duration;

use cashflow_core::{BusinessDate, EntryId};
use moka::ops::compute::Op;
use moka::sync::Cache;

/// A reversal's facts that the request chooses.
pub type Facts = (BusinessDate, String);

#[derive(Clone)]
pub struct PendingReversals(Cache<EntryId, Facts>);

impl PendingReversals {
    /// Most reversals remembered: beyond it the oldest are forgotten (and a conflict among them is
    /// left to consolidation).
    const CAPACITY: u64 = 100_000;

    /// The longest a reversal is remembered, whatever the retry schedule.
    const MAX_HOLD: Duration = Duration::from_secs(30 * 24 * 3600);

    /// Remembers each accepted reversal for `hold` (the retry schedule's longest), at most 30 days.
    pub fn new(hold: Duration) -> Self {
        let hold = hold.min(Self::MAX_HOLD);
        PendingReversals(Cache::builder().max_capacity(Self::CAPACITY).time_to_live(hold).build())
    }

    /// The facts of reversal `id` accepted earlier, if they differ from `facts`; otherwise
    /// `facts` are remembered as its facts (a repeat of the same reversal is no conflict).
    pub fn conflict(&self, id: EntryId, facts: &Facts) -> Option<Facts> {
        let kept = self.0.entry(id).or_insert_with(|| facts.clone());
        (!kept.is_fresh() && kept.value() != facts).then(|| kept.into_value())
    }

    /// Forgets reversal `id` with `facts`: it was not sent after all.
    pub fn forget(&self, id: EntryId, facts: &Facts) {
        self.0.entry(id).and_compute_with(|kept| match kept {
            Some(kept) if kept.value() == facts => Op::Remove,
            _ => Op::Nop,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_passes_and_other_facts_conflict_until_forgotten() {
        let pending = PendingReversals::new(Duration::from_secs(60));
        let id = EntryId::from_idempotency_key(&cashflow_core::MerchantId::parse("loja-1").unwrap(), "k");
        let day = |d: &str| d.parse::<BusinessDate>().unwrap();
        let first = (day("2026-05-07"), "estorno".to_owned());
        let other = (day("2026-05-08"), "estorno".to_owned());
        assert_eq!(pending.conflict(id, &first), None);
        assert_eq!(pending.conflict(id, &first), None, "the same reversal again");
        assert_eq!(pending.conflict(id, &other), Some(first.clone()));
        pending.forget(id, &other);
        assert_eq!(pending.conflict(id, &other), Some(first.clone()), "only the facts kept are forgotten");
        pending.forget(id, &first);
        assert_eq!(pending.conflict(id, &other), None);
    }
}
