//! For cashflow's tests: a map that misbehaves on the entries whose `descricao` names a failure,
//! and passes every other entry as it is. `falha:trap` traps, `falha:loop` never ends (it runs out
//! of fuel), `falha:lixo` returns bytes that are not JSON, `falha:comerciante` moves the entry to
//! another merchant, `falha:erro` returns an error, `falha:memoria` asks for 64 MiB (more than its
//! limit), `falha:impura` is not pure (it numbers the calls in `descricao`).

use std::sync::atomic::{AtomicU64, Ordering};

use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, eyre, smartmodule};
use serde_json::Value;

static CALLS: AtomicU64 = AtomicU64::new(0);

#[smartmodule(map)]
pub fn map(record: &SmartModuleRecord) -> Result<(Option<RecordData>, RecordData)> {
    let mut entry: Value = serde_json::from_slice(record.value.as_ref())?;
    let descricao = entry["descricao"].as_str().unwrap_or_default().to_owned();
    match descricao.split_once("falha:").map(|(_, f)| f.split_whitespace().next().unwrap_or_default()) {
        Some("trap") => core::arch::wasm32::unreachable(),
        Some("loop") => {
            let mut n: u64 = 0;
            loop {
                n = core::hint::black_box(n.wrapping_add(1));
            }
        }
        Some("lixo") => return Ok((record.key.clone(), b"\xff not json".to_vec().into())),
        Some("comerciante") => entry["merchant_id"] = "outra-loja".into(),
        Some("erro") => return Err(eyre!("the module refused this entry")),
        Some("impura") => entry["descricao"] = format!("chamada {}", CALLS.fetch_add(1, Ordering::Relaxed)).into(),
        Some("memoria") => {
            let big = core::hint::black_box(vec![1u8; 64 << 20]);
            entry["descricao"] = big.len().into();
        }
        _ => {}
    }
    Ok((record.key.clone(), serde_json::to_vec(&entry)?.into()))
}
