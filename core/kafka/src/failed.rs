//! Records that failed, on the error topics: their [`Failure`] as Kafka headers, and the send
//! that copes with a value too large to copy.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use cashflow_core::failure::Failure;

/// How long a send to an error topic may wait for the broker's ack.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// `failure` as the `x-*` headers of a record.
pub fn failure_headers(failure: &Failure) -> OwnedHeaders {
    let fields = failure.headers();
    fields.iter().fold(OwnedHeaders::new_with_capacity(fields.len()), |h, (key, value)| {
        h.insert(Header { key, value: Some(value.as_bytes()) })
    })
}

/// The failure a record's headers describe; `None` when they do not describe one this build reads.
pub fn read_failure(headers: &impl Headers) -> Option<Failure> {
    Failure::from_headers(|name| header(headers, name))
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
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value).headers(failure_headers(failure));
    if let Some(key) = key {
        record = record.key(key);
    }
    producer.send(record, SEND_TIMEOUT).await.map(|_| ()).map_err(|(e, _)| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cashflow_core::failure::Code;

    #[test]
    fn a_failure_reads_back_from_its_kafka_headers() {
        let f = Failure {
            code: Code::StoreRejected,
            stage: "consolidate".into(),
            detail: "refused".into(),
            attempt: 2,
            origin_topic: "lancamentos".into(),
            origin_partition: 2,
            origin_offset: 77,
            first_failed_at_ms: 1_700_000_000_000,
            not_before_ms: 1_700_000_001_000,
        };
        let headers = failure_headers(&f);
        assert_eq!(read_failure(&headers), Some(f));
        assert_eq!(header(&headers, "x-attempt").as_deref(), Some("2"));
        assert_eq!(read_failure(&OwnedHeaders::new()), None);
    }
}
