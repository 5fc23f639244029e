//! The COPY ceilings: what PostgreSQL takes when nothing but `COPY` writes, alone and beside a raw consumer.

use super::*;

pub(crate) async fn raw_copy(db: &mut PgConnection, entries: &[Lancamento], report: &mut Report) {
    let started = Instant::now();
    copy_entries(db, "copy_lancamentos", entries).await;
    report.add("raw COPY rows/s", entries.len() as f64 / started.elapsed().as_secs_f64(), "rows/s");
}

/// `entries` COPY'd into a new table `table` shaped like the entries table.
pub(crate) async fn copy_entries(db: &mut PgConnection, table: &str, entries: &[Lancamento]) {
    let mut copy = copy_into(db, table).await;
    for (n, chunk) in entries.chunks(10_000).enumerate() {
        let mut buf = String::with_capacity(chunk.len() * 200);
        for (i, e) in chunk.iter().enumerate() {
            copy_row(&mut buf, e, n * 10_000 + i);
        }
        copy.send(buf.as_bytes()).await.unwrap();
    }
    assert_eq!(copy.finish().await.unwrap(), entries.len() as u64);
}

/// The store's raw write rate for every row consolidation writes, per entry: the entries and the
/// totals of each state the shipped pipeline keeps (day, (day, category), month, merchant), each
/// `COPY`'d into a new table shaped like ours.
/// The totals are summed and formatted before the clock starts: this times the writes alone.
pub(crate) async fn raw_copy_written(db: &mut PgConnection, entries: &[Lancamento], report: &mut Report) {
    use std::fmt::Write as _;
    let now = chrono::Utc::now().to_rfc3339();
    let mut categories: HashMap<(&str, BusinessDate, &str), [i64; 3]> = HashMap::new();
    for e in entries {
        let cents = e.signed_cents();
        let key = (e.merchant_id.as_str(), e.data, e.categoria.as_deref().unwrap_or_default());
        let t = categories.entry(key).or_default();
        *t = [t[0] + cents.max(0), t[1] + (-cents).max(0), t[2] + 1];
    }
    // A day's totals are the sum of its categories'.
    let mut days: HashMap<(&str, BusinessDate), [i64; 3]> = HashMap::new();
    for ((m, d, _), [c, b, n]) in &categories {
        let t = days.entry((*m, *d)).or_default();
        *t = [t[0] + c, t[1] + b, t[2] + n];
    }
    let mut months: HashMap<(&str, String), [i64; 3]> = HashMap::new();
    let mut merchants: HashMap<&str, [i64; 3]> = HashMap::new();
    for ((m, d), [c, b, n]) in &days {
        for t in [months.entry((*m, d.to_string()[..7].to_owned())).or_default(), merchants.entry(*m).or_default()] {
            *t = [t[0] + c, t[1] + b, t[2] + n];
        }
    }
    let (mut day_rows, mut category_rows) = (String::new(), String::new());
    let (mut month_rows, mut merchant_rows) = (String::new(), String::new());
    for ((m, d), [c, b, n]) in &days {
        let _ = writeln!(day_rows, "{m}\t{d}\t{c}\t{b}\t{n}\t{now}");
    }
    for ((m, month), [c, b, n]) in &months {
        let _ = writeln!(month_rows, "{m}\t{month}\t{c}\t{b}\t{n}\t{now}");
    }
    for (m, [c, b, n]) in &merchants {
        let _ = writeln!(merchant_rows, "{m}\t{c}\t{b}\t{n}\t{now}");
    }
    for ((m, d, k), [c, b, n]) in &categories {
        let _ = writeln!(category_rows, "{m}\t{d}\t{k}\t{c}\t{b}\t{n}\t{now}");
    }
    let tables = [
        ("written_diario", "consolidado_diario"),
        ("written_categoria", "consolidado_categoria"),
        ("written_mensal", "consolidado_mensal"),
        ("written_comerciante", "consolidado_comerciante"),
    ];
    for (table, like) in tables {
        let sql = format!("CREATE TABLE {table} (LIKE {like} INCLUDING ALL)");
        sqlx::query(&sql).execute(&mut *db).await.unwrap();
    }

    let started = Instant::now();
    copy_entries(db, "written_lancamentos", entries).await;
    for (table, columns, rows, want) in [
        ("written_diario", "merchant_id, data", &day_rows, days.len()),
        ("written_categoria", "merchant_id, data, categoria", &category_rows, categories.len()),
        ("written_mensal", "merchant_id, mes", &month_rows, months.len()),
        ("written_comerciante", "merchant_id", &merchant_rows, merchants.len()),
    ] {
        let sql =
            format!("COPY {table} ({columns}, creditos_cents, debitos_cents, quantidade, atualizado_em) FROM STDIN");
        let mut copy = db.copy_in_raw(&sql).await.unwrap();
        for chunk in rows.as_bytes().chunks(1 << 20) {
            copy.send(chunk).await.unwrap();
        }
        assert_eq!(copy.finish().await.unwrap(), want as u64);
    }
    let rate = entries.len() as f64 / started.elapsed().as_secs_f64();
    report.add("raw COPY of every row consolidation writes entries/s", rate, "entries/s");
}

/// The two ceilings at once, on the same two cores: the topic read with rdkafka (one thread) and
/// its records decoded and COPYed into the store (another), with no other processing.
pub(crate) async fn raw_pipeline(
    kafka: impl Fn(&mut ClientConfig),
    db: &mut PgConnection,
    want: u64,
    report: &mut Report,
) {
    let consumer = subscribed(kafka, "bench-raw-pipeline");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(8);
    let reader = std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(10_000);
        let started = drain(&consumer, want, |payload| {
            chunk.push(payload.to_vec());
            if chunk.len() == 10_000 {
                tx.blocking_send(std::mem::take(&mut chunk)).unwrap();
            }
        });
        if !chunk.is_empty() {
            tx.blocking_send(chunk).unwrap();
        }
        started
    });
    let mut copy = copy_into(db, "pipeline_lancamentos").await;
    let mut written = 0;
    while let Some(chunk) = rx.recv().await {
        let mut buf = String::with_capacity(chunk.len() * 200);
        for payload in &chunk {
            copy_row(&mut buf, &Lancamento::decode(payload).unwrap(), written);
            written += 1;
        }
        copy.send(buf.as_bytes()).await.unwrap();
    }
    let rows = copy.finish().await.unwrap();
    let started = reader.join().unwrap();
    assert_eq!(rows, want, "raw pipeline wrote {rows} of {want}");
    let elapsed = started.unwrap().elapsed().as_secs_f64();
    report.add("raw consume + COPY at once rows/s", rows as f64 / elapsed, "rows/s");
}

/// A COPY into a new table shaped like the entries table, indexes included.
pub(crate) async fn copy_into<'c>(
    db: &'c mut PgConnection,
    table: &str,
) -> sqlx::postgres::PgCopyIn<&'c mut PgConnection> {
    sqlx::query(&format!("CREATE TABLE {table} (LIKE lancamentos INCLUDING ALL)")).execute(&mut *db).await.unwrap();
    db.copy_in_raw(&format!(
        "COPY {table} (id, merchant_id, tipo, valor_cents, data, descricao, categoria, criado_em, \
         origin_topic, origin_partition, origin_offset, consolidado_em) FROM STDIN"
    ))
    .await
    .unwrap()
}

/// One entry as a line of COPY's text format.
pub(crate) fn copy_row(buf: &mut String, e: &Lancamento, offset: usize) {
    use std::fmt::Write as _;
    let r = e.to_record();
    let _ = writeln!(
        buf,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{TOPIC}\t{}\t{offset}\t{}",
        r.id,
        r.merchant_id,
        r.tipo.as_str(),
        r.valor_cents,
        r.data,
        r.descricao,
        r.categoria.as_deref().unwrap_or("\\N"),
        r.criado_em,
        offset % 6,
        r.criado_em,
    );
}
