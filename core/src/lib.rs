//! The cashflow domain model and the contracts every stage shares.
//!
//! Parse, don't validate: a constructed [`Money`], [`BusinessDate`] or [`MerchantId`] is already
//! valid, so code that holds one never checks it again.

pub mod config;
pub mod estado;
pub mod failure;
mod lancamento;
mod money;
mod posicao;
mod saldo;
#[cfg(feature = "openapi")]
mod schema;
pub mod seal;

pub use lancamento::{
    BusinessDate, DecodeError, EntryId, Incoming, Lancamento, LancamentoRecord, MAX_CATEGORIA_CHARS,
    MAX_DESCRICAO_CHARS, MAX_VALOR_CENTS, MerchantId, Reversal, ReversalError, Tipo, WIRE_VERSION, check_text,
    reject_valor_cents,
};
pub use money::{Money, MoneyError};
pub use posicao::Posicao;
pub use saldo::{DailyBalance, DayHistory, DayTotals, MonthlyBalance, OutOfRange, daily_series, monthly_series};
