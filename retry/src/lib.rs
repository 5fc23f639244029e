//! Retries and the dead-letter topic. A record that fails for a reason of its own (not an
//! outage) travels to `lancamentos.retry` unchanged, with its [`Failure`] in `x-*` headers
//! ([`cashflow_core::failure`]); the retry stage ([`run`]) sends it back to consolidation after
//! its backoff and parks it in `lancamentos.dlq` when its retries run out; [`Dlq`] lists, replays
//! and purges what is parked.

mod dlq;
mod events;
mod stage;

pub use dlq::{Dlq, DlqError, Listing, Parked, Selection};
pub use stage::run;

pub use cashflow_core::failure::Failure;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(parse_position("0:12"), Ok((0, 12)));
        for bad in ["", "0", "0:", ":1", "a:1", "-1:2", "1:-2", "1:2:3"] {
            assert!(parse_position(bad).is_err(), "{bad}");
        }
    }
}
