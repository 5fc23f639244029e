//! A filter: drops the entries whose `descricao` starts with `teste` (any case), so test entries
//! posted against production never reach the balances.

use fluvio_smartmodule::{Result, SmartModuleRecord, smartmodule};
use serde_json::Value;

#[smartmodule(filter)]
pub fn filter(record: &SmartModuleRecord) -> Result<bool> {
    let entry: Value = serde_json::from_slice(record.value.as_ref())?;
    let descricao = entry["descricao"].as_str().unwrap_or_default();
    Ok(!descricao.to_lowercase().starts_with("teste"))
}
