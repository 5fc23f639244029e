//! The epoch's write path on both stores: whatever text an entry or a key holds comes back as
//! written, an id is stored once, and totals add up. PostgreSQL binds each column as one array
//! literal, SQLite one parameter per value: this holds them to the same answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use cashflow_core::estado::{Field, Key, Rows, Values};
use cashflow_core::{BusinessDate, DayTotals, EntryId, Lancamento, MerchantId, Money, Tipo};
use cashflow_sinks::{DeclaredState, Origin, Store, StoredEntry};
use cashflow_tests::fresh_postgres_database;
use sqlx::Connection as _;

/// Texts an array literal, a `VALUES` list or a COPY could get wrong.
const TEXTS: [&str; 9] = [
    "plain",
    r#"a "quoted" word"#,
    r"back\slash and \\ two",
    "{braces, commas}",
    "NULL",
    "",
    "tab\there\nand a new line",
    "ç, ã, € and 🙂",
    r#"\"{,}"\"#,
];

fn entry(i: usize, descricao: &str, categoria: Option<&str>, estorno_de: Option<EntryId>) -> StoredEntry {
    let entry = Lancamento {
        id: EntryId::random(),
        merchant_id: MerchantId::parse("loja-1").unwrap(),
        tipo: if i.is_multiple_of(2) { Tipo::Credito } else { Tipo::Debito },
        valor: Money::from_cents(100 + i as i64),
        data: "2026-01-02".parse::<BusinessDate>().unwrap(),
        descricao: descricao.to_owned(),
        categoria: categoria.map(str::to_owned),
        criado_em: chrono::Utc::now(),
        estorno_de,
    };
    let topic = if i.is_multiple_of(3) { "lancamentos.retry" } else { "lancamentos" };
    StoredEntry { entry, origin: Origin { topic: topic.into(), partition: i as i32, offset: i as i64 * 1_000_000_007 } }
}

async fn writes_come_back_as_written(url: &str) {
    let store = Store::connect(url, 2).await.unwrap();
    let mut entries: Vec<StoredEntry> =
        TEXTS.iter().enumerate().map(|(i, t)| entry(i, t, i.is_multiple_of(2).then_some(*t), None)).collect();
    let original = entries[0].entry.id;
    entries.push(entry(TEXTS.len(), "reversal", None, Some(original)));
    let ids: Vec<EntryId> = entries.iter().map(|e| e.entry.id).collect();

    let mut tx = store.begin_epoch().await.unwrap();
    assert_eq!(tx.insert_entries(&entries).await.unwrap(), ids.iter().copied().collect::<HashSet<_>>());
    tx.commit().await.unwrap();

    let mut tx = store.begin_epoch().await.unwrap();
    let again = entry(0, "again", None, None);
    let mut repeated = entries[..3].to_vec();
    repeated.push(again.clone());
    let inserted = tx.insert_entries(&repeated).await.unwrap();
    assert_eq!(inserted, HashSet::from([again.entry.id]), "a stored id is inserted again");
    let stored = tx.stored_records(&ids).await.unwrap();
    for e in &entries {
        assert_eq!(stored[&e.entry.id], e.entry.to_record(), "entry {:?}", e.entry.descricao);
    }
    let reversed = tx.reversals_of(&[original, again.entry.id]).await.unwrap();
    assert_eq!(reversed.into_iter().collect::<Vec<_>>(), [(original, *ids.last().unwrap())]);
    tx.delete_entries(&[again.entry.id]).await.unwrap();
    assert!(tx.stored_records(&[again.entry.id]).await.unwrap().is_empty(), "a deleted entry is still stored");

    // every text as a key value of a state, added twice: the totals double, keyed as written
    let state = DeclaredState {
        table: "consolidado_categoria".into(),
        key: Key::new(vec![Field::MerchantId, Field::Data, Field::Categoria]).unwrap(),
        values: Values::default(),
    };
    let mut rows = Rows::new(3);
    for (i, t) in TEXTS.iter().enumerate() {
        let totals = DayTotals { creditos_cents: i as i64, debitos_cents: 1, quantidade: 1 };
        rows.push(["loja-2", "2026-01-02", t], totals).unwrap();
    }
    tx.add_state(&state, &rows).await.unwrap();
    tx.add_state(&state, &rows).await.unwrap();
    let merchant = MerchantId::parse("loja-2").unwrap();
    let totals = tx.merchant_totals(&[&merchant]).await.unwrap();
    assert!(totals.is_empty(), "only the merchants' own state was written: {totals:?}");
    tx.save_progress("g", &[("lancamentos".into(), 0, 10)]).await.unwrap();
    tx.commit().await.unwrap();

    let stored = store.state_rows(&state, "loja-2", &[], "g").await.unwrap().unwrap();
    let mut want: Vec<(Vec<String>, DayTotals)> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let totals = DayTotals { creditos_cents: 2 * i as i64, debitos_cents: 2, quantidade: 2 };
            (vec!["2026-01-02".to_owned(), (*t).to_owned()], totals)
        })
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let mut got = stored.rows;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    assert_eq!(store.count_entries().await.unwrap(), entries.len() as i64);
}

#[tokio::test]
async fn sqlite_stores_any_text_once_and_adds_totals() {
    let dir = tempfile::tempdir().unwrap();
    writes_come_back_as_written(&format!("sqlite://{}/store.db", dir.path().display())).await;
}

#[tokio::test]
async fn postgres_stores_any_text_once_and_adds_totals() {
    writes_come_back_as_written(&fresh_postgres_database().await).await;
}

/// On PostgreSQL a state keyed by `data`, built from a declaration (not a migration), keeps the
/// day as a date too, `dia`, indexed, as the reports read it (observability/README.md).
#[tokio::test]
async fn a_state_keyed_by_day_is_built_with_its_day_index_on_postgres() {
    use sqlx::Row as _;
    let url = fresh_postgres_database().await;
    let store = Store::connect(&url, 2).await.unwrap();
    let state = DeclaredState {
        table: "por_dia_e_tipo".into(),
        key: Key::new(vec![Field::MerchantId, Field::Data, Field::Tipo]).unwrap(),
        values: Values::default(),
    };
    let mut build = store.begin_build(&state).await.unwrap().expect("not kept yet");
    let mut rows = Rows::new(3);
    for day in ["2026-01-31", "2026-02-01", "2028-02-29"] {
        rows.push(["loja-1", day, "credito"], DayTotals { creditos_cents: 5, debitos_cents: 0, quantidade: 1 })
            .unwrap();
    }
    build.add(&rows).await.unwrap();
    build.finish().await.unwrap();

    let pg = sqlx::PgPool::connect(&url).await.unwrap();
    let days: Vec<(String, String)> = sqlx::query("SELECT data, dia::text FROM por_dia_e_tipo ORDER BY data")
        .fetch_all(&pg)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(days.iter().all(|(data, dia)| data == dia), "{days:?}");
    assert_eq!(days.len(), 3);
    let indexes: Vec<String> = sqlx::query("SELECT indexdef FROM pg_indexes WHERE tablename = 'por_dia_e_tipo'")
        .fetch_all(&pg)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(indexes.iter().any(|i| i.ends_with("USING btree (dia)")), "{indexes:?}");
}

/// A row the store skips without an error, by a rule of its own, is not an entry stored: the
/// insert is a data error, which consolidation routes as that record's, rather than an entry
/// counted that the ledger does not hold. An entry stored before is no such error: it is a
/// redelivery, counted once.
async fn a_row_the_store_skips_is_a_data_error_and_a_stored_one_is_not(url: &str, rule: impl AsyncFnOnce()) {
    let store = Store::connect(url, 2).await.unwrap();
    rule().await;
    let stored = entry(1, "antes", None, None);
    let mut tx = store.begin_epoch().await.unwrap();
    tx.insert_entries(std::slice::from_ref(&stored)).await.unwrap();
    tx.commit().await.unwrap();

    let (again, new) = (stored.clone(), entry(2, "novo", None, None));
    let mut tx = store.begin_epoch().await.unwrap();
    let inserted = tx.insert_entries(&[again, new.clone()]).await.unwrap();
    assert_eq!(inserted, HashSet::from([new.entry.id]), "the redelivery is stored already");
    drop(tx);

    let (new, skipped) = (entry(3, "novo", None, None), entry(4, "pula", None, None));
    let mut tx = store.begin_epoch().await.unwrap();
    let e = tx.insert_entries(&[new, skipped, stored]).await.unwrap_err();
    assert!(e.is_data_error(), "{e}");
}

#[tokio::test]
async fn sqlite_reports_a_row_it_skips() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/store.db", dir.path().display());
    let rule = async || {
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let skip = "CREATE TRIGGER pula BEFORE INSERT ON lancamentos WHEN NEW.descricao = 'pula' \
                    BEGIN SELECT RAISE(IGNORE); END";
        sqlx::raw_sql(skip).execute(&mut db).await.unwrap();
    };
    a_row_the_store_skips_is_a_data_error_and_a_stored_one_is_not(&url, rule).await;
}

#[tokio::test]
async fn postgres_reports_a_row_it_skips() {
    let url = fresh_postgres_database().await;
    let rule = async || {
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let skip = "CREATE FUNCTION pula() RETURNS trigger LANGUAGE plpgsql AS \
                    $$ BEGIN IF NEW.descricao = 'pula' THEN RETURN NULL; END IF; RETURN NEW; END $$; \
                    CREATE TRIGGER pula BEFORE INSERT ON lancamentos FOR EACH ROW EXECUTE FUNCTION pula()";
        sqlx::raw_sql(skip).execute(&mut db).await.unwrap();
    };
    a_row_the_store_skips_is_a_data_error_and_a_stored_one_is_not(&url, rule).await;
}
