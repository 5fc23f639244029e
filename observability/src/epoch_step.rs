//! The steps of a consolidation epoch, as `cashflow_consolidate_epoch_step_seconds_total` labels them.

/// The steps of an epoch, in order: the `step` label of
/// `cashflow_consolidate_epoch_step_seconds_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochStep {
    Validate,
    SmartModule,
    Dedupe,
    Limit,
    Aggregate,
    States,
    Route,
    Commit,
}

impl EpochStep {
    pub const ALL: [EpochStep; 8] = [
        EpochStep::Validate,
        EpochStep::SmartModule,
        EpochStep::Dedupe,
        EpochStep::Limit,
        EpochStep::Aggregate,
        EpochStep::States,
        EpochStep::Route,
        EpochStep::Commit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EpochStep::Validate => "validate",
            EpochStep::SmartModule => "smartmodule",
            EpochStep::Dedupe => "dedupe",
            EpochStep::Limit => "limit",
            EpochStep::Aggregate => "aggregate",
            EpochStep::States => "states",
            EpochStep::Route => "route",
            EpochStep::Commit => "commit",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::metrics;

    #[test]
    fn every_step_has_its_own_label_and_is_exported_before_the_first_epoch() {
        let mut labels: Vec<&str> = EpochStep::ALL.iter().map(|s| s.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), EpochStep::ALL.len());
        let text = metrics().render();
        for step in EpochStep::ALL {
            let series = format!("cashflow_consolidate_epoch_step_seconds_total{{step=\"{}\"}}", step.label());
            assert!(text.lines().any(|l| l.starts_with(&series)), "{series} is not exported:\n{text}");
        }
    }
}
