//! A map: gives an entry without a `categoria` the category its `descricao` names, by the rules in
//! the parameter `regra`: `palavra=categoria` pairs separated by commas, e.g.
//! `aluguel=moradia, uber=transporte`. The first rule whose word the description contains (any
//! case) wins; an entry that has a category keeps it.

use std::sync::OnceLock;

use fluvio_smartmodule::dataplane::smartmodule::SmartModuleExtraParams;
use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, eyre, smartmodule};
use serde_json::Value;

static RULES: OnceLock<Vec<(String, String)>> = OnceLock::new();

#[smartmodule(init)]
fn init(params: SmartModuleExtraParams) -> Result<()> {
    let regra = params.get("regra").ok_or_else(|| eyre!("the parameter `regra` is required"))?;
    let mut rules = Vec::new();
    for pair in regra.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (word, category) = pair.split_once('=').ok_or_else(|| eyre!("`{pair}` is not palavra=categoria"))?;
        rules.push((word.trim().to_lowercase(), category.trim().to_owned()));
    }
    RULES.set(rules).map_err(|_| eyre!("init ran twice"))
}

#[smartmodule(map)]
pub fn map(record: &SmartModuleRecord) -> Result<(Option<RecordData>, RecordData)> {
    let mut entry: Value = serde_json::from_slice(record.value.as_ref())?;
    if entry["categoria"].is_null() {
        let descricao = entry["descricao"].as_str().unwrap_or_default().to_lowercase();
        let rules = RULES.get().map(Vec::as_slice).unwrap_or_default();
        if let Some((_, category)) = rules.iter().find(|(word, _)| descricao.contains(word.as_str())) {
            entry["categoria"] = Value::String(category.clone());
        }
    }
    Ok((record.key.clone(), serde_json::to_vec(&entry)?.into()))
}
