#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use cashflow_core::config::{DateWindow, SmartModuleConfig, SmartModuleKind};
use cashflow_core::failure::Code;
use cashflow_core::{BusinessDate, EntryId, Lancamento, MerchantId, Money, Tipo};

use super::{SmartModule, apply_all};

/// A committed example module, as scripts/build-smartmodules left it.
fn wasm(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../smartmodules/{name}/{name}.wasm"))
}

fn config(name: &str, kind: SmartModuleKind, params: &[(&str, &str)]) -> SmartModuleConfig {
    SmartModuleConfig {
        name: name.into(),
        path: wasm(name),
        kind,
        params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
        fuel: 10_000_000,
        max_memory_bytes: 16 << 20,
    }
}

fn load(name: &str, kind: SmartModuleKind, params: &[(&str, &str)]) -> SmartModule {
    let c = config(name, kind, params);
    SmartModule::load(&c, &c.path, DateWindow::default()).unwrap()
}

fn entry(tipo: Tipo, cents: i64, descricao: &str, categoria: Option<&str>) -> Lancamento {
    let merchant = MerchantId::parse("loja-1").unwrap();
    let e = Lancamento {
        id: EntryId::from_idempotency_key(&merchant, descricao),
        merchant_id: merchant,
        tipo,
        valor: Money::from_cents(cents),
        data: BusinessDate::today(),
        descricao: descricao.into(),
        categoria: categoria.map(str::to_owned),
        criado_em: chrono::Utc::now(),
        estorno_de: None,
    };
    // As it comes from the topic (`criado_em` in milliseconds).
    Lancamento::decode(&e.encode()).unwrap()
}

#[test]
fn the_filter_drops_test_entries_and_keeps_the_rest_unchanged() {
    let mut m = load("sem-teste", SmartModuleKind::Filter, &[]);
    assert_eq!(m.apply(&entry(Tipo::Credito, 100, "Teste de integração", None)).unwrap(), vec![]);
    let kept = entry(Tipo::Credito, 100, "venda", None);
    assert_eq!(m.apply(&kept).unwrap(), vec![kept]);
}

#[test]
fn the_map_assigns_a_category_from_the_description_by_its_rules() {
    let mut m = load("categorias", SmartModuleKind::Map, &[("regra", "aluguel=moradia, uber=transporte")]);
    let out = m.apply(&entry(Tipo::Debito, 150_000, "Aluguel de dezembro", None)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].categoria.as_deref(), Some("moradia"));
    let own = entry(Tipo::Debito, 2_000, "uber", Some("viagens"));
    assert_eq!(m.apply(&own).unwrap(), vec![own.clone()], "an entry's own category stays");
    let none = entry(Tipo::Debito, 2_000, "padaria", None);
    assert_eq!(m.apply(&none).unwrap(), vec![none.clone()]);
}

#[test]
fn the_array_map_splits_a_card_sale_into_gross_and_fee_with_derived_ids() {
    let mut m = load("taxa-cartao", SmartModuleKind::ArrayMap, &[("taxa_bps", "250")]);
    let sale = entry(Tipo::Credito, 10_001, "venda no cartão", Some("cartao"));
    let out = m.apply(&sale).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], sale, "the gross credit as it came");
    assert_eq!((out[1].tipo, out[1].valor.cents(), out[1].categoria.as_deref()), (Tipo::Debito, 250, Some("taxas")));
    assert_eq!(out[1].id, EntryId::derived(sale.id, 1));
    assert_eq!(m.apply(&sale).unwrap(), out, "the same entry, the same entries and ids");
    let cash = entry(Tipo::Credito, 10_000, "dinheiro", None);
    assert_eq!(m.apply(&cash).unwrap(), vec![cash.clone()]);
}

#[test]
fn each_misbehaviour_fails_its_entry_with_its_code_and_the_module_goes_on() {
    let mut m = load("falhas", SmartModuleKind::Map, &[]);
    for (descricao, code, says) in [
        ("falha:trap", Code::SmartmoduleError, "trapped"),
        ("falha:loop", Code::SmartmoduleError, "ran out of fuel"),
        ("falha:erro", Code::SmartmoduleError, "returned an error"),
        ("falha:lixo", Code::SmartmoduleOutput, "not a valid entry"),
        ("falha:comerciante", Code::SmartmoduleOutput, "moves the entry to merchant outra-loja"),
    ] {
        let failed = m.apply(&entry(Tipo::Credito, 100, descricao, None)).unwrap_err();
        assert_eq!(failed.code, code, "{descricao}: {failed:?}");
        assert!(failed.detail.contains(says), "{descricao}: {failed:?}");
        // The next entry passes.
        let fine = entry(Tipo::Credito, 100, &format!("depois de {}", descricao.replace(':', " ")), None);
        assert_eq!(m.apply(&fine).unwrap(), vec![fine], "after {descricao}");
    }
}

#[test]
fn modules_chain_and_a_wrong_kind_or_file_is_refused_at_load() {
    let mut chain = vec![
        load("sem-teste", SmartModuleKind::Filter, &[]),
        load("categorias", SmartModuleKind::Map, &[("regra", "cartao=cartao")]),
        load("taxa-cartao", SmartModuleKind::ArrayMap, &[("taxa_bps", "100")]),
    ];
    let sale = entry(Tipo::Credito, 5_000, "venda cartao", None);
    let out = apply_all(&mut chain, sale).unwrap();
    assert_eq!(out.iter().map(|e| e.valor.cents()).collect::<Vec<_>>(), [5_000, 50]);
    assert!(apply_all(&mut chain, entry(Tipo::Credito, 5_000, "teste cartao", None)).unwrap().is_empty());

    let c = config("categorias", SmartModuleKind::Filter, &[("regra", "a=b")]);
    let e = SmartModule::load(&c, &c.path, DateWindow::default()).err().unwrap();
    assert!(e.contains("no `filter` export"), "{e}");
    let e = SmartModule::load(&c, &wasm("nao-existe"), DateWindow::default()).err().unwrap();
    assert!(e.contains("cannot read"), "{e}");
    let c = config("categorias", SmartModuleKind::Map, &[]);
    let e = SmartModule::load(&c, &c.path, DateWindow::default()).err().unwrap();
    assert!(e.contains("did not start") && e.contains("regra"), "the module's init refuses: {e}");
}

#[test]
fn a_module_that_leaves_its_output_buffers_behind_never_fails_an_entry_for_it() {
    // Each call leaves its output buffer behind (the guest forgets it and the engine never frees
    // it), so a small memory would fill up after some thousands of entries: the module is started
    // again before it does.
    let mut c = config("sem-teste", SmartModuleKind::Filter, &[]);
    c.max_memory_bytes = 2 << 20;
    let mut m = SmartModule::load(&c, &c.path, DateWindow::default()).unwrap();
    for i in 0..50_000 {
        let e = entry(Tipo::Credito, 100, &format!("venda {i}"), None);
        assert_eq!(m.apply(&e).unwrap(), vec![e], "entry {i}");
    }
    let restarts = cashflow_observability::metrics().smartmodule_restarts.with_label_values(&["sem-teste", "memory"]);
    assert!(restarts.get() > 0, "started again before its memory filled up");
}

#[test]
fn a_module_that_runs_out_of_memory_is_started_again_and_takes_the_next_entry() {
    let mut m = load("falhas", SmartModuleKind::Map, &[]);
    let full = m.apply(&entry(Tipo::Credito, 100, "falha:memoria", None)).unwrap_err();
    assert_eq!(full.code, Code::SmartmoduleError, "{full:?}");
    assert!(full.detail.contains("exceeded max allowed"), "{full:?}");
    let next = entry(Tipo::Credito, 100, "a seguinte", None);
    assert_eq!(m.apply(&next).unwrap(), vec![next], "the module starts again with its memory empty");
}
