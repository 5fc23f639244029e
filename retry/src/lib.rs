//! Retries and the dead-letter topic. A record that fails for a reason of its own (not an
//! outage) travels to `lancamentos.retry` unchanged, with the headers below (DESIGN §4); the
//! retry stage ([`run`]) sends it back to consolidation after its backoff and parks it in
//! `lancamentos.dlq` when its retries run out; [`Dlq`] lists, replays and purges what is parked.
//!
//! `x-attempt` counts the retries a record has had: absent (0) on its first delivery, 1 on its
//! first retry, and `max_attempts` when it is parked for running out.

mod dlq;
mod stage;

pub use dlq::{Dlq, DlqError, Listing, Parked, Selection};
pub use stage::run;

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

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

/// A record on the retry topic without readable `x-*` headers: parked, it cannot be routed.
pub use cashflow_core::failure::INVALID_HEADERS;

/// Longest `x-error-detail` kept; details are for people, not for parsing.
const MAX_DETAIL_BYTES: usize = 512;

/// Why a record failed and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Failure {
    /// Stable, low-cardinality code, e.g. `malformed`.
    pub code: String,
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
    pub fn to_headers(&self) -> OwnedHeaders {
        let mut detail = self.detail.clone();
        if detail.len() > MAX_DETAIL_BYTES {
            let mut cut = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let fields = [
            (ERROR_CODE, self.code.clone()),
            (ERROR_STAGE, self.stage.clone()),
            (ERROR_DETAIL, detail),
            (ATTEMPT, self.attempt.to_string()),
            (ORIGIN_TOPIC, self.origin_topic.clone()),
            (ORIGIN_PARTITION, self.origin_partition.to_string()),
            (ORIGIN_OFFSET, self.origin_offset.to_string()),
            (FIRST_FAILED_AT, self.first_failed_at_ms.to_string()),
            (NOT_BEFORE, self.not_before_ms.to_string()),
        ];
        fields.iter().fold(OwnedHeaders::new_with_capacity(fields.len()), |h, (key, value)| {
            h.insert(Header { key, value: Some(value.as_bytes()) })
        })
    }

    /// Reads the headers back; `None` when a required one is missing or malformed.
    pub fn from_headers(headers: &impl Headers) -> Option<Failure> {
        let get = |name: &str| header(headers, name);
        Some(Failure {
            code: get(ERROR_CODE)?,
            stage: get(ERROR_STAGE)?,
            detail: get(ERROR_DETAIL).unwrap_or_default(),
            attempt: get(ATTEMPT)?.parse().ok()?,
            origin_topic: get(ORIGIN_TOPIC)?,
            origin_partition: get(ORIGIN_PARTITION)?.parse().ok()?,
            origin_offset: get(ORIGIN_OFFSET)?.parse().ok()?,
            first_failed_at_ms: get(FIRST_FAILED_AT)?.parse().ok()?,
            not_before_ms: get(NOT_BEFORE)?.parse().ok()?,
        })
    }
}

/// Parses `partition:offset`.
pub fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let parsed = s.split_once(':').and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)));
    match parsed {
        Some((p, o)) if p >= 0 && o >= 0 => Ok((p, o)),
        _ => Err(format!("{s:?} is not PARTITION:OFFSET, e.g. 0:12")),
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A header's value as text.
pub fn header(headers: &impl Headers, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

/// How long a send to an error topic may wait for the broker's ack.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a failed record's value, with `failure` as its headers, to `topic`. A value too large to
/// copy with its headers is not sent again and again: a stand-in is parked on `parked` instead,
/// an empty value whose `x-error-detail` names where the original is (its origin topic,
/// partition and offset). So no record too large for the error path can stop the stream.
pub async fn send_failed(
    producer: &FutureProducer,
    topic: &str,
    parked: &str,
    failure: &Failure,
    key: Option<&[u8]>,
    value: &[u8],
) -> Result<(), KafkaError> {
    match send(producer, topic, failure, key, value).await {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
            tracing::warn!(code = %failure.code, bytes = value.len(), origin_topic = %failure.origin_topic, origin_partition = failure.origin_partition, origin_offset = failure.origin_offset, "record too large to copy; parking a stand-in");
            let detail = format!(
                "{}; the value ({} bytes) is too large to copy with these headers: read it at {} partition {} offset {}",
                failure.detail,
                value.len(),
                failure.origin_topic,
                failure.origin_partition,
                failure.origin_offset
            );
            send(producer, parked, &Failure { detail, ..failure.clone() }, key, &[]).await
        }
        sent => sent,
    }
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    failure: &Failure,
    key: Option<&[u8]>,
    value: &[u8],
) -> Result<(), KafkaError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value).headers(failure.to_headers());
    if let Some(key) = key {
        record = record.key(key);
    }
    producer.send(record, SEND_TIMEOUT).await.map(|_| ()).map_err(|(e, _)| e)
}

/// The delay before retry number `retries + 1`: the schedule's entry, the last one repeating.
pub fn backoff_ms(schedule: &[u64], retries: u32) -> u64 {
    let i = (retries as usize).min(schedule.len().saturating_sub(1));
    schedule.get(i).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let f = Failure {
            code: "malformed".into(),
            stage: "consolidate".into(),
            detail: "é".repeat(400),
            attempt: 1,
            origin_topic: "lancamentos".into(),
            origin_partition: 2,
            origin_offset: 77,
            first_failed_at_ms: 1_700_000_000_000,
            not_before_ms: 1_700_000_001_000,
        };
        let back = Failure::from_headers(&f.to_headers()).unwrap();
        assert_eq!(back.detail.len(), 512);
        assert_eq!(Failure { detail: back.detail.clone(), ..f }, back);
    }

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(parse_position("0:12"), Ok((0, 12)));
        for bad in ["", "0", "0:", ":1", "a:1", "-1:2", "1:-2", "1:2:3"] {
            assert!(parse_position(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_repeats_the_last_delay() {
        let s = [1000, 10000, 60000];
        assert_eq!([0, 1, 2, 3, 9].map(|a| backoff_ms(&s, a)), [1000, 10000, 60000, 60000, 60000]);
    }
}
