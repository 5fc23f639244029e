//! Why a record read from a topic was not counted, and what happens to it: the [`Code`] (the
//! `x-error-code` header of the retry and dead-letter topics, and the `code` label of the failure
//! metrics), whether the code is worth a retry ([`Disposition`]), and the [`Failure`] a record
//! carries in its `x-*` headers while it travels.
//!
//! `x-attempt` counts the retries a record has had: absent (0) on its first delivery, 1 on its
//! first retry, and `max_attempts` when it is parked for running out.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng as _;
use serde::Serialize;

/// Why a record was not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Not JSON, or not the record's shape.
    Malformed,
    /// A wire version this build does not read.
    UnknownVersion,
    /// A field out of its domain (a date outside the window, a zero amount, ...).
    InvalidField,
    /// The id was used before for different facts.
    ConflictingDuplicate,
    /// A reversal whose original is not consolidated yet: the original may arrive later.
    OriginalNotFound,
    /// A second, different reversal of one entry.
    AlreadyReversed,
    /// A reversal that cannot apply to its original (a reversal itself, or a mismatched amount).
    InvalidReversal,
    /// A retry record whose failure headers cannot be read: it cannot be routed.
    InvalidHeaders,
    /// An entry whose amount would take its merchant's credits or debits beyond 64-bit cents, and
    /// so some day, category, month or running balance: nothing wraps.
    AmountOverflow,
    /// The store refused the one record for its data (a constraint, a value out of range), while
    /// the records around it were consolidated.
    StoreRejected,
    /// A SmartModule trapped, ran out of fuel or memory, or returned an error for the entry.
    SmartmoduleError,
    /// A SmartModule's output is not a valid entry of the same merchant with the id it must carry.
    SmartmoduleOutput,
}

/// What becomes of a record that failed with a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// To the retry topic: time may fix it (its original arrives, a rule or the store changes).
    Retry,
    /// Straight to the dead-letter topic: no retry can fix it.
    Park,
}

/// An error that knows whether time can fix it: the store or the broker unreachable, or timed
/// out. The stages retry those in place; the HTTP edge answers them with 503 and a `Retry-After`,
/// and every other error with 500.
pub trait Transient: std::error::Error + Send + Sync + 'static {
    fn is_transient(&self) -> bool;
}

impl Code {
    pub const ALL: [Code; 12] = [
        Code::Malformed,
        Code::UnknownVersion,
        Code::InvalidField,
        Code::ConflictingDuplicate,
        Code::OriginalNotFound,
        Code::AlreadyReversed,
        Code::InvalidReversal,
        Code::InvalidHeaders,
        Code::AmountOverflow,
        Code::StoreRejected,
        Code::SmartmoduleError,
        Code::SmartmoduleOutput,
    ];

    /// The stable, low-cardinality text of the header and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Malformed => "malformed",
            Code::UnknownVersion => "unknown_version",
            Code::InvalidField => "invalid_field",
            Code::ConflictingDuplicate => "conflicting_duplicate",
            Code::OriginalNotFound => "original_not_found",
            Code::AlreadyReversed => "already_reversed",
            Code::InvalidReversal => "invalid_reversal",
            Code::InvalidHeaders => "invalid_headers",
            Code::AmountOverflow => "amount_overflow",
            Code::StoreRejected => "store_rejected",
            Code::SmartmoduleError => "smartmodule_error",
            Code::SmartmoduleOutput => "smartmodule_output",
        }
    }

    /// Whether a record that failed with this code is retried or parked at once. A malformed
    /// record or an out-of-window date is retried: a newer build or a widened window may read
    /// it, and it is parked once its retries run out; so is a record a SmartModule failed, which
    /// a corrected module may take.
    pub fn disposition(self) -> Disposition {
        match self {
            Code::Malformed
            | Code::UnknownVersion
            | Code::InvalidField
            | Code::OriginalNotFound
            | Code::StoreRejected
            | Code::SmartmoduleError
            | Code::SmartmoduleOutput => Disposition::Retry,
            Code::ConflictingDuplicate
            | Code::AlreadyReversed
            | Code::InvalidReversal
            | Code::InvalidHeaders
            | Code::AmountOverflow => Disposition::Park,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Code {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Code::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| format!("unknown failure code {s:?}"))
    }
}

/// The headers a failed record travels with.
pub mod header {
    pub const ERROR_CODE: &str = "x-error-code";
    pub const ERROR_STAGE: &str = "x-error-stage";
    pub const ERROR_DETAIL: &str = "x-error-detail";
    pub const ATTEMPT: &str = "x-attempt";
    pub const ORIGIN_TOPIC: &str = "x-origin-topic";
    pub const ORIGIN_PARTITION: &str = "x-origin-partition";
    pub const ORIGIN_OFFSET: &str = "x-origin-offset";
    pub const FIRST_FAILED_AT: &str = "x-first-failed-at";
    pub const NOT_BEFORE: &str = "x-not-before";
    /// On a replayed record: the dead-letter position it came from (`topic/partition/offset`).
    pub const REPLAYED_FROM: &str = "x-replayed-from";
}

/// Longest `x-error-detail` kept; details are for people, not for parsing.
const MAX_DETAIL_BYTES: usize = 512;

/// Why a record failed and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    pub code: Code,
    pub stage: String,
    pub detail: String,
    /// Retries so far: 0 when the first delivery failed.
    pub attempt: u32,
    pub origin_topic: String,
    pub origin_partition: i32,
    pub origin_offset: i64,
    pub first_failed_at_ms: i64,
    pub not_before_ms: i64,
}

impl Failure {
    /// Its headers, name and value; the detail cut to 512 bytes.
    pub fn headers(&self) -> [(&'static str, String); 9] {
        let mut detail = self.detail.clone();
        if detail.len() > MAX_DETAIL_BYTES {
            let cut = (0..=MAX_DETAIL_BYTES).rev().find(|i| detail.is_char_boundary(*i)).unwrap_or(0);
            detail.truncate(cut);
        }
        [
            (header::ERROR_CODE, self.code.as_str().to_owned()),
            (header::ERROR_STAGE, self.stage.clone()),
            (header::ERROR_DETAIL, detail),
            (header::ATTEMPT, self.attempt.to_string()),
            (header::ORIGIN_TOPIC, self.origin_topic.clone()),
            (header::ORIGIN_PARTITION, self.origin_partition.to_string()),
            (header::ORIGIN_OFFSET, self.origin_offset.to_string()),
            (header::FIRST_FAILED_AT, self.first_failed_at_ms.to_string()),
            (header::NOT_BEFORE, self.not_before_ms.to_string()),
        ]
    }

    /// Reads the headers back, `get` giving a header's value; `None` when a required one is
    /// missing or malformed, or the code is one this build does not know.
    pub fn from_headers(get: impl Fn(&str) -> Option<String>) -> Option<Failure> {
        Some(Failure {
            code: get(header::ERROR_CODE)?.parse().ok()?,
            stage: get(header::ERROR_STAGE)?,
            detail: get(header::ERROR_DETAIL).unwrap_or_default(),
            attempt: get(header::ATTEMPT)?.parse().ok()?,
            origin_topic: get(header::ORIGIN_TOPIC)?,
            origin_partition: get(header::ORIGIN_PARTITION)?.parse().ok()?,
            origin_offset: get(header::ORIGIN_OFFSET)?.parse().ok()?,
            first_failed_at_ms: get(header::FIRST_FAILED_AT)?.parse().ok()?,
            not_before_ms: get(header::NOT_BEFORE)?.parse().ok()?,
        })
    }
}

/// The delay before retry number `retries + 1`: the schedule's entry (the last one repeating),
/// plus up to a quarter of it at random. Never sooner than the schedule says, and records that
/// failed together (in one outage of a dependency) do not all come back at the same instant.
pub fn retry_delay(schedule: &[Duration], retries: u32) -> Duration {
    let i = (retries as usize).min(schedule.len().saturating_sub(1));
    let delay = schedule.get(i).copied().unwrap_or_default();
    delay.saturating_add(delay.mul_f64(rand::thread_rng().gen_range(0.0..=0.25)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn each_code_reads_back_from_its_text_which_is_its_json() {
        for code in Code::ALL {
            assert_eq!(code.as_str().parse::<Code>(), Ok(code));
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        assert!("nada".parse::<Code>().is_err());
    }

    #[test]
    fn only_what_time_can_fix_is_retried() {
        let retried: Vec<&str> =
            Code::ALL.into_iter().filter(|c| c.disposition() == Disposition::Retry).map(Code::as_str).collect();
        assert_eq!(
            retried,
            [
                "malformed",
                "unknown_version",
                "invalid_field",
                "original_not_found",
                "store_rejected",
                "smartmodule_error",
                "smartmodule_output"
            ]
        );
    }

    #[test]
    fn headers_round_trip_with_the_detail_cut_on_a_char_boundary() {
        let f = Failure {
            code: Code::Malformed,
            stage: "consolidate".into(),
            detail: "é".repeat(400),
            attempt: 1,
            origin_topic: "lancamentos".into(),
            origin_partition: 2,
            origin_offset: 77,
            first_failed_at_ms: 1_700_000_000_000,
            not_before_ms: 1_700_000_001_000,
        };
        let headers: HashMap<&str, String> = f.headers().into_iter().collect();
        let back = Failure::from_headers(|name| headers.get(name).cloned()).unwrap();
        assert_eq!(back.detail.len(), 512);
        assert_eq!(Failure { detail: back.detail.clone(), ..f }, back);
        let unknown =
            |name: &str| if name == header::ERROR_CODE { Some("nada".into()) } else { headers.get(name).cloned() };
        assert_eq!(Failure::from_headers(unknown), None, "a code this build does not know");
    }

    #[test]
    fn the_retry_delay_repeats_the_last_and_is_up_to_a_quarter_longer() {
        let s = [1000, 10000, 60000].map(Duration::from_millis);
        for (retries, delay) in [(0, 1000), (1, 10000), (2, 60000), (3, 60000), (9, 60000)] {
            let delay = Duration::from_millis(delay);
            let drawn: Vec<Duration> = (0..100).map(|_| retry_delay(&s, retries)).collect();
            assert!(drawn.iter().all(|d| (delay..=delay + delay / 4).contains(d)), "{retries}: {drawn:?}");
            assert!(drawn.iter().any(|d| *d != drawn[0]), "{retries}: no jitter in {drawn:?}");
        }
        assert_eq!(retry_delay(&[], 3), Duration::ZERO);
    }
}
