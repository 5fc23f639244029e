#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cashflow_core::{BusinessDate, EntryId, Lancamento, MerchantId, Money, Tipo};

use super::*;

async fn sqlite(dir: &tempfile::TempDir) -> Store {
    Store::connect(&format!("sqlite://{}/store.db", dir.path().display()), 4).await.unwrap()
}

fn entry(estorno_de: Option<EntryId>) -> StoredEntry {
    let entry = Lancamento {
        id: EntryId::random(),
        merchant_id: MerchantId::parse("loja-1").unwrap(),
        tipo: Tipo::Debito,
        valor: Money::from_cents(100),
        data: "2026-01-02".parse::<BusinessDate>().unwrap(),
        descricao: "x".into(),
        categoria: None,
        criado_em: Utc::now(),
        estorno_de,
    };
    StoredEntry { entry, origin: Origin { topic: "lancamentos".into(), partition: 0, offset: 0 } }
}

/// The insert answers exactly the ids it stored: all of them when every id is new, and only the
/// new ones when some were stored before or repeat within the call, across statements.
#[tokio::test]
async fn the_insert_answers_the_ids_it_stored_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let ids = |entries: &[StoredEntry]| entries.iter().map(|e| e.entry.id).collect::<HashSet<_>>();
    let before: Vec<StoredEntry> = (0..3).map(|_| entry(None)).collect();
    let mut tx = store.begin_epoch().await.unwrap();
    assert_eq!(tx.insert_entries(&before).await.unwrap(), ids(&before), "every id new");
    tx.commit().await.unwrap();

    let new: Vec<StoredEntry> = (0..ENTRY_CHUNK + 500).map(|_| entry(None)).collect();
    let mut mixed = vec![before[0].clone()];
    mixed.extend(new[..ENTRY_CHUNK].iter().cloned());
    mixed.extend([before[2].clone(), new[0].clone()]);
    mixed.extend(new[ENTRY_CHUNK..].iter().cloned());
    let mut tx = store.begin_epoch().await.unwrap();
    let answered = tx.insert_entries(&mixed).await.unwrap();
    let (of_new, of_before) = (answered.intersection(&ids(&new)).count(), answered.intersection(&ids(&before)).count());
    assert_eq!((answered.len(), of_new, of_before), (new.len(), new.len(), 0), "stored and repeated ids are not new");
    tx.commit().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lancamentos").fetch_one(&store.pool).await.unwrap();
    assert_eq!(stored, (before.len() + new.len()) as i64);
}

/// Past the largest rowid (a row written by hand at it, or near it), SQLite gives new rows rowids
/// at random: the insert still answers exactly the ids it stored.
#[tokio::test]
async fn the_insert_answers_its_ids_when_the_largest_rowid_is_taken() {
    for last in [i64::MAX, i64::MAX - 2] {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
        let stored = entry(None);
        let mut tx = store.begin_epoch().await.unwrap();
        tx.insert_entries(std::slice::from_ref(&stored)).await.unwrap();
        tx.commit().await.unwrap();
        sqlx::query("UPDATE lancamentos SET rowid = $1").bind(last).execute(&store.pool).await.unwrap();

        let new: Vec<StoredEntry> = (0..3).map(|_| entry(None)).collect();
        let mut tx = store.begin_epoch().await.unwrap();
        let answered = tx.insert_entries(&[new[0].clone(), stored, new[1].clone(), new[2].clone()]).await.unwrap();
        assert_eq!(answered, new.iter().map(|e| e.entry.id).collect::<HashSet<_>>(), "largest rowid {last}");
        tx.commit().await.unwrap();

        // and a row that a rule of the store skips is still the store refusing its record
        let skip = "CREATE TRIGGER pula BEFORE INSERT ON lancamentos WHEN NEW.descricao = 'pula' \
                    BEGIN SELECT RAISE(IGNORE); END";
        sqlx::raw_sql(skip).execute(&store.pool).await.unwrap();
        let mut skipped = entry(None);
        skipped.entry.descricao = "pula".into();
        let mut tx = store.begin_epoch().await.unwrap();
        let e = tx.insert_entries(&[entry(None), skipped]).await.unwrap_err();
        assert!(e.is_data_error(), "largest rowid {last}: {e}");
    }
}

/// A commit that does not move a partition's offset leaves its time, and so the consolidation
/// mark, as it was: a mark changes exactly when consolidation moved on.
#[tokio::test]
async fn progress_that_does_not_advance_leaves_the_mark_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let at = |p: i64| vec![("lancamentos".to_owned(), 0, p)];
    let mut tx = store.begin_epoch().await.unwrap();
    tx.save_progress("g", &at(10)).await.unwrap();
    tx.commit().await.unwrap();
    let (_, before) = store.progress_and_mark("g").await.unwrap();

    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tx = store.begin_epoch().await.unwrap();
    tx.save_progress("g", &at(5)).await.unwrap();
    tx.commit().await.unwrap();
    let (progress, after) = store.progress_and_mark("g").await.unwrap();
    assert_eq!(progress[&("lancamentos".to_owned(), 0)], 10, "the offset never moves back");
    assert_eq!(after, before, "a commit behind the stored offset changed the mark");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tx = store.begin_epoch().await.unwrap();
    tx.save_progress("g", &at(11)).await.unwrap();
    tx.commit().await.unwrap();
    let (_, moved) = store.progress_and_mark("g").await.unwrap();
    assert!(moved.offsets > before.offsets && moved.at > before.at, "{moved:?} after {before:?}");
}

/// Two reversals of one entry cannot both be stored, whatever each transaction read before: the
/// second is a data error, which consolidation routes as that record's.
#[tokio::test]
async fn an_entry_is_reversed_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let original = EntryId::random();
    let mut tx = store.begin_epoch().await.unwrap();
    assert_eq!(tx.insert_entries(&[entry(Some(original))]).await.unwrap().len(), 1);
    tx.commit().await.unwrap();
    let mut tx = store.begin_epoch().await.unwrap();
    let e = tx.insert_entries(&[entry(Some(original))]).await.unwrap_err();
    assert!(e.is_data_error(), "{e}");
}

/// Two consolidators on one SQLite file: one reads in its epoch while the other commits. With
/// deferred transactions the first then failed to write (SQLITE_BUSY_SNAPSHOT); an epoch takes
/// the write lock at its start, so the second waits its turn and both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_sqlite_file_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (sqlite(&dir).await, sqlite(&dir).await);
    let mut first = a.begin_epoch().await.unwrap();
    first.stored_records(&[EntryId::random()]).await.unwrap();
    let second = tokio::spawn(async move {
        let mut tx = b.begin_epoch().await?;
        tx.insert_entries(&[entry(None)]).await?;
        tx.commit().await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.insert_entries(&[entry(None)]).await.unwrap();
    first.commit().await.unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(a.count_entries().await.unwrap(), 2);
}

/// A state built while an epoch waits: the entry stored before the build is counted by the
/// build, the one the epoch stores after it by the epoch (which sees the state kept), each once;
/// a second build of the same state, waiting behind the first, finds it kept and builds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_built_beside_an_epoch_counts_each_entry_once() {
    use cashflow_core::estado::{Field, Key, Rows, Values};
    let dir = tempfile::tempdir().unwrap();
    let (store, other) = (sqlite(&dir).await, sqlite(&dir).await);
    let state = DeclaredState {
        table: "consolidado_por_tipo".into(),
        key: Key::new(vec![Field::MerchantId, Field::Tipo]).unwrap(),
        values: Values::default(),
    };
    let mut tx = store.begin_epoch().await.unwrap();
    tx.insert_entries(&[entry(None)]).await.unwrap();
    tx.commit().await.unwrap();
    let to_build = store.states_to_build(std::slice::from_ref(&state)).await.unwrap();
    assert_eq!(to_build, std::slice::from_ref(&state));

    let mut build = store.begin_build(&state).await.unwrap().unwrap();
    let (epoch_store, epoch_state) = (other.clone(), state.clone());
    let epoch = tokio::spawn(async move {
        let mut tx = epoch_store.begin_epoch().await?;
        tx.insert_entries(&[entry(None)]).await?;
        let kept = tx.kept_states().await?.contains_key(&epoch_state.table);
        if kept {
            let one = DayTotals { creditos_cents: 0, debitos_cents: 100, quantidade: 1 };
            tx.add_state(&epoch_state, &Rows::single(vec!["loja-1", "debito"], one)).await?;
        }
        tx.commit().await.map(|()| kept)
    });
    let again = tokio::spawn({
        let (store, state) = (other.clone(), state.clone());
        async move { store.begin_build(&state).await.map(|b| b.is_none()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entries = build.next_entries(10).await.unwrap();
    assert_eq!(entries.len(), 1, "the epoch waits for the build");
    let one = DayTotals { creditos_cents: 0, debitos_cents: 100, quantidade: 1 };
    build.add(&Rows::single(vec!["loja-1", "debito"], one)).await.unwrap();
    assert!(build.next_entries(10).await.unwrap().is_empty());
    build.finish().await.unwrap();
    assert!(epoch.await.unwrap().unwrap(), "the epoch after the build sees the state kept");
    assert!(again.await.unwrap().unwrap(), "a second build finds the state kept");

    let rows = store.state_rows(&state, "loja-1", &[], "g").await.unwrap().unwrap();
    let two = DayTotals { creditos_cents: 0, debitos_cents: 200, quantidade: 2 };
    assert_eq!(rows.rows, [(vec!["debito".to_owned()], two)]);
    assert!(store.states_to_build(std::slice::from_ref(&state)).await.unwrap().is_empty());
}
