//! Why a record read from a topic was not counted: the `x-error-code` of the retry and
//! dead-letter topics, and the `code` label of the failure metrics.

/// Not JSON, or not the record's shape.
pub const MALFORMED: &str = "malformed";
/// A wire version this build does not read.
pub const UNKNOWN_VERSION: &str = "unknown_version";
/// A field out of its domain (a date outside the window, a zero amount, ...).
pub const INVALID_FIELD: &str = "invalid_field";
/// The id was used before for different facts: parked at once, retrying cannot fix it.
pub const CONFLICTING_DUPLICATE: &str = "conflicting_duplicate";
/// A reversal whose original is not consolidated yet: retried, the original may arrive later.
pub const ORIGINAL_NOT_FOUND: &str = "original_not_found";
/// A second, different reversal of one entry: parked.
pub const ALREADY_REVERSED: &str = "already_reversed";
/// A reversal that cannot apply to its original (a reversal itself, or a mismatched amount): parked.
pub const INVALID_REVERSAL: &str = "invalid_reversal";
/// A retry record whose failure headers cannot be read: parked.
pub const INVALID_HEADERS: &str = "invalid_headers";
/// An entry whose amount would take its merchant's credits or debits beyond 64-bit cents, and
/// so some day, category, month or running balance: parked, nothing wraps.
pub const AMOUNT_OVERFLOW: &str = "amount_overflow";
/// The store refused the one record for its data (a constraint, a value out of range): retried,
/// then parked, while the records around it are consolidated.
pub const STORE_REJECTED: &str = "store_rejected";

/// Every code.
pub const ALL: [&str; 10] = [
    MALFORMED,
    UNKNOWN_VERSION,
    INVALID_FIELD,
    CONFLICTING_DUPLICATE,
    ORIGINAL_NOT_FOUND,
    ALREADY_REVERSED,
    INVALID_REVERSAL,
    INVALID_HEADERS,
    AMOUNT_OVERFLOW,
    STORE_REJECTED,
];
