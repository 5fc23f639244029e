//! An array-map: a card sale (a credit in the category `cartao`) becomes two entries, the gross
//! credit as it came and the card fee as a debit in the category `taxas`, so the balance shows
//! what the merchant keeps. The fee is `taxa_bps` basis points of the sale (parameter; 250 is
//! 2.5 %), rounded half up to the cent; a fee of zero adds nothing. Other entries pass as they
//! are. Both outputs keep the sale's `id`: cashflow derives each output's own id from it.

use std::sync::OnceLock;

use fluvio_smartmodule::dataplane::smartmodule::SmartModuleExtraParams;
use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, eyre, smartmodule};
use serde_json::Value;

static TAXA_BPS: OnceLock<i64> = OnceLock::new();

#[smartmodule(init)]
fn init(params: SmartModuleExtraParams) -> Result<()> {
    let bps = params.get("taxa_bps").ok_or_else(|| eyre!("the parameter `taxa_bps` is required"))?;
    let bps: i64 = bps.trim().parse().map_err(|_| eyre!("taxa_bps must be a whole number of basis points"))?;
    if !(0..=10_000).contains(&bps) {
        return Err(eyre!("taxa_bps must be 0 to 10000"));
    }
    TAXA_BPS.set(bps).map_err(|_| eyre!("init ran twice"))
}

#[smartmodule(array_map)]
pub fn array_map(record: &SmartModuleRecord) -> Result<Vec<(Option<RecordData>, RecordData)>> {
    let sale: Value = serde_json::from_slice(record.value.as_ref())?;
    let mut out = vec![(record.key.clone(), record.value.clone())];
    let is_card_sale = sale["tipo"] == "credito" && sale["categoria"] == "cartao";
    let valor = sale["valor_cents"].as_i64().unwrap_or_default();
    // Half up: (valor * bps + 5000) / 10000, in i128 so no amount overflows.
    let fee = (i128::from(valor) * i128::from(*TAXA_BPS.get().unwrap_or(&0)) + 5_000) / 10_000;
    if is_card_sale && fee > 0 {
        let mut debit = sale.clone();
        debit["tipo"] = "debito".into();
        debit["valor_cents"] = i64::try_from(fee)?.into();
        debit["categoria"] = "taxas".into();
        let descricao = sale["descricao"].as_str().unwrap_or_default();
        debit["descricao"] = format!("taxa do cartão: {descricao}").chars().take(200).collect::<String>().into();
        out.push((record.key.clone(), serde_json::to_vec(&debit)?.into()));
    }
    Ok(out)
}
