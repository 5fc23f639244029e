use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use cashflow_core::failure::Transient;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// Store errors, classified for retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is unreachable or timed out: retry in place with backoff.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A query failed for a reason that retrying will not fix.
    #[error("store error: {0}")]
    Query(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("bad store url: {0}")]
    Url(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A state the store does not keep (not declared, or not built yet).
    #[error("the store does not keep the state of table {0}: declare it in pipeline.yaml and start a consolidator")]
    NotKept(String),
    /// Rows given for a state with another number of key fields: a caller's mistake.
    #[error("rows of {got} key values for {table}, whose key has {expected}")]
    RowWidth { table: String, expected: usize, got: usize },
    /// Rows of a write that the store skipped rather than fail the statement: a constraint under
    /// SQLite's `INSERT OR IGNORE`, or a rule of the store's own (a trigger) on either store. A
    /// data error, as the statement's own failure would have been.
    #[error("the store skipped {refused} of the rows written to {table} (a constraint or a trigger refused them)")]
    Refused { table: &'static str, refused: u64 },
    /// One error, answered to every reader that waited for the same read.
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Shared(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl StoreError {
    /// The store refused the data written, not the request: a value out of range, a check or
    /// unique constraint (PostgreSQL classes 22 and 23; SQLite's constraint, mismatch, range and
    /// too-big codes), or a row skipped ([`StoreError::Refused`]). One record's data caused it; the
    /// others can go on without it.
    pub fn is_data_error(&self) -> bool {
        if let StoreError::Refused { .. } = self {
            return true;
        }
        let StoreError::Query(sqlx::Error::Database(db)) = self else { return false };
        let code = db.code();
        let code = code.as_deref().unwrap_or_default();
        code.starts_with("22")
            || code.starts_with("23")
            || code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error::*;
        let transient = match &e {
            Io(_) | Tls(_) | PoolTimedOut | PoolClosed | WorkerCrashed | Protocol(_) => true,
            // SQLite busy/locked; PostgreSQL serialization failures, lock and statement timeouts,
            // too many connections, admin shutdowns and lost connections.
            Database(db) => matches!(
                db.code().as_deref(),
                Some(
                    "5" | "6"
                        | "261"
                        | "517"
                        | "40001"
                        | "40P01"
                        | "55P03"
                        | "57014"
                        | "53300"
                        | "57P01"
                        | "57P02"
                        | "57P03"
                        | "08000"
                        | "08001"
                        | "08003"
                        | "08004"
                        | "08006"
                )
            ),
            _ => false,
        };
        if transient { StoreError::Unavailable(e) } else { StoreError::Query(e) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `(…), (…)`: `rows` rows of `cols` parameters, bound in order. Only placeholders go in.
    ///
    /// SQLite gets anonymous `?`s. It keeps named parameters (`$n`, `?n`) in a list it searches
    /// both when it parses a statement and when sqlx binds one (`sqlite3_bind_parameter_name`), so
    /// a statement of n named parameters costs O(n²): 78% of `cashflow up`'s CPU while it
    /// consolidated. PostgreSQL numbers them `$1, $2, …`.
    pub(crate) fn values(self, rows: usize, cols: usize) -> String {
        let mut s = String::with_capacity(rows * cols * 5);
        for r in 0..rows {
            s.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..cols {
                if c > 0 {
                    s.push_str(", ");
                }
                match self {
                    Backend::Sqlite => s.push('?'),
                    Backend::Postgres => {
                        s.push('$');
                        s.push_str(&(r * cols + c + 1).to_string());
                    }
                }
            }
            s.push(')');
        }
        s
    }

    /// `IN (?, …)` with each of `values` bound on SQLite; on PostgreSQL, `= ANY($1::text[])` with
    /// one [`PgArray`]: the same text, prepared once, for any number of values.
    pub(crate) fn in_list(self, values: impl Iterator<Item = String>) -> (String, Vec<String>) {
        match self {
            Backend::Sqlite => {
                let values: Vec<String> = values.collect();
                (format!("IN {}", self.values(1, values.len())), values)
            }
            Backend::Postgres => {
                let mut array = PgArray::default();
                values.for_each(|v| array.push(Some(&v)));
                ("= ANY($1::text[])".to_owned(), vec![array.finish()])
            }
        }
    }

    /// How many values one [`Backend::in_list`] takes.
    pub(crate) fn list_chunk(self) -> usize {
        match self {
            Backend::Sqlite => 2_000,
            Backend::Postgres => usize::MAX,
        }
    }
}

/// `items` in parts of at most `max` rows, one statement each: `max` at a time, then what is left
/// in powers of two (1,024, 512, …, 1). A statement's text depends on its rows, and a connection
/// keeps each text it prepared (sqlx's cache, up to 100 a connection): an epoch's last part of
/// any length made a new one every epoch, each holding the program of thousands of parameters.
/// This keeps them to a dozen per statement. `usize::MAX`: one part.
pub(crate) fn parts<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let n = match rest.len() {
            0 => return None,
            len if len >= max || max == usize::MAX => len.min(max),
            len => 1 << len.ilog2(),
        };
        let (part, tail) = rest.split_at(n);
        rest = tail;
        Some(part)
    })
}

/// A PostgreSQL array literal (`{"a","b\"c",NULL}`), bound as one text and cast in the
/// statement (`$1::text[]`, `$2::bigint[]`): a statement of a few such parameters has the same
/// text whatever the rows, so each connection prepares it once, and PostgreSQL parses one value
/// per column instead of a `VALUES` list of thousands of parameters.
#[derive(Default)]
pub(crate) struct PgArray(String);

impl PgArray {
    pub(crate) fn push(&mut self, value: Option<&str>) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        let Some(value) = value else { return self.0.push_str("NULL") };
        self.0.push('"');
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                self.0.push('\\');
            }
            self.0.push(c);
        }
        self.0.push('"');
    }

    pub(crate) fn push_number(&mut self, value: i64) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push_str(&value.to_string());
    }

    pub(crate) fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

/// A pool on the store, migrated.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: AnyPool,
    /// Where write transactions run. On SQLite, which takes one writer at a time, one connection
    /// with a large page cache that stays warm from one epoch to the next (a cache per pooled
    /// connection took the consolidator to 700 MB); on PostgreSQL, `pool`.
    pub(crate) writer: AnyPool,
    /// Where `pool` connects, for [`Store::own_pool`].
    options: AnyConnectOptions,
    pub(crate) backend: Backend,
}

impl Store {
    /// Connects and runs migrations. `url` is `sqlite://<path>` or `postgres://…`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Url(format!("{url:?} is neither sqlite:// nor postgres://")));
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = pool_options(backend, max_connections, false).connect_with(options.clone()).await?;
        match backend {
            Backend::Sqlite => SQLITE.run(&pool).await?,
            Backend::Postgres => POSTGRES.run(&pool).await?,
        }
        let writer = match backend {
            Backend::Sqlite => pool_options(backend, 1, true).connect_lazy_with(options.clone()),
            Backend::Postgres => pool.clone(),
        };
        Ok(Store { pool, writer, options, backend })
    }

    /// The same store through a pool of its own, which connects on first use: for a task whose
    /// small reads must not queue behind everyone else's.
    pub fn own_pool(&self, max_connections: u32) -> Store {
        let pool = pool_options(self.backend, max_connections, false).connect_lazy_with(self.options.clone());
        let writer = match self.backend {
            Backend::Sqlite => self.writer.clone(),
            Backend::Postgres => pool.clone(),
        };
        Store { pool, writer, options: self.options.clone(), backend: self.backend }
    }

    /// Cheap reachability check for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The key that seals the API's tokens, shared by every stage on this store: made by the first
    /// that asks (of two at once, one insert wins and both read it).
    pub async fn sealing_key(&self) -> Result<[u8; cashflow_core::seal::KEY_BYTES], StoreError> {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let fresh = engine.encode(cashflow_core::seal::Sealer::generate_key());
        sqlx::query("INSERT INTO secrets (name, value) VALUES ('seal', $1) ON CONFLICT (name) DO NOTHING")
            .bind(fresh)
            .execute(&self.writer)
            .await?;
        let value: String =
            sqlx::query_scalar("SELECT value FROM secrets WHERE name = 'seal'").fetch_one(&self.writer).await?;
        let corrupt = || StoreError::Corrupt("the sealing key in table secrets is not 32 bytes of base64".to_owned());
        engine.decode(value).map_err(|_| corrupt())?.try_into().map_err(|_| corrupt())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// How much WAL an SQLite store writes between two checkpoints.
const WAL_CHECKPOINT_BYTES: i64 = 40 << 20;

/// `writer`: SQLite's one write connection, which waits for its turn as long as SQLite's lock
/// would (`busy_timeout`), and keeps the large page cache.
fn pool_options(backend: Backend, max_connections: u32, writer: bool) -> AnyPoolOptions {
    let wait = Duration::from_secs(if writer { 10 } else { 5 });
    AnyPoolOptions::new().max_connections(max_connections).acquire_timeout(wait).after_connect(move |conn, _| {
        Box::pin(async move {
            if backend == Backend::Sqlite {
                // WAL lets readers run beside the one writer. FULL: a commit is on disk when
                // it returns, so a balance read after it survives a power loss (one fsync
                // per epoch, not per entry). Were one lost, its offsets would go with it,
                // and consolidation would read those records from the log again.
                // Measured on an epoch's writes (BENCHMARKS.md, "The embedded store" and "the
                // embedded store's epoch"): pages of 16 KiB, not 4, for a store created now (one
                // that exists keeps its own): an epoch's random keys dirty fewer, larger pages,
                // and its commit writes fewer frames; the writer's page cache at 64 MB, so an
                // epoch's pages are not spilled to the WAL before its commit (the default 2 MB
                // spilled them); statement journals in memory; a checkpoint every 40 MiB of WAL,
                // whatever the page size (SQLite's default is 1,000 pages).
                for pragma in [
                    "PRAGMA page_size = 16384",
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = FULL",
                    "PRAGMA busy_timeout = 10000",
                    "PRAGMA temp_store = MEMORY",
                ] {
                    conn.execute(pragma).await?;
                }
                let page: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *conn).await?;
                let pages = WAL_CHECKPOINT_BYTES / page.max(512);
                conn.execute(format!("PRAGMA wal_autocheckpoint = {pages}").as_str()).await?;
                if writer {
                    conn.execute("PRAGMA cache_size = -65536").await?;
                }
            }
            Ok(())
        })
    })
}

/// `sqlite://path` → a URL that creates the file (and its directory) if missing.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Url("an in-memory SQLite store would lose every entry; give a file path".into()));
    }
    if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Url(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Validate the options early so a typo fails at start, not at first query.
    let full = format!("sqlite://{path}?mode=rwc");
    sqlx::sqlite::SqliteConnectOptions::from_str(&full).map_err(|e| StoreError::Url(e.to_string()))?;
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::{Backend, PgArray};

    #[test]
    fn parts_are_full_then_powers_of_two_so_few_statement_texts_exist() {
        let items: Vec<usize> = (0..2_000 * 3 + 1_999).collect();
        let sizes: Vec<usize> = super::parts(&items, 2_000).map(<[usize]>::len).collect();
        assert_eq!(sizes, [2_000, 2_000, 2_000, 1_024, 512, 256, 128, 64, 8, 4, 2, 1]);
        let back: Vec<usize> = super::parts(&items, 2_000).flatten().copied().collect();
        assert_eq!(back, items, "every item once, in order");
        assert_eq!(super::parts(&items, usize::MAX).map(<[usize]>::len).collect::<Vec<_>>(), [items.len()]);
        assert_eq!(super::parts(&items[..0], 7).count(), 0);
    }

    #[test]
    fn array_literals_quote_every_text_and_escape_quotes_and_backslashes() {
        let mut a = PgArray::default();
        for v in [Some("a"), Some(r#"b"c\d"#), None, Some("{x, y}"), Some("NULL"), Some("")] {
            a.push(v);
        }
        assert_eq!(a.finish(), r#"{"a","b\"c\\d",NULL,"{x, y}","NULL",""}"#);
        let mut n = PgArray::default();
        n.push_number(-1);
        n.push_number(i64::MAX);
        assert_eq!(n.finish(), "{-1,9223372036854775807}");
        assert_eq!(PgArray::default().finish(), "{}");
    }

    #[test]
    fn placeholders_are_numbered_row_major_on_postgres_and_anonymous_on_sqlite() {
        assert_eq!(Backend::Postgres.values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(Backend::Sqlite.values(2, 3), "(?, ?, ?), (?, ?, ?)");
    }

    /// A store created now has pages of 16 KiB; one created before, with SQLite's 4 KiB pages
    /// and in WAL mode (where a page size cannot change), keeps its own and is migrated as before.
    /// Both checkpoint every 40 MiB of WAL.
    #[tokio::test]
    async fn a_new_sqlite_store_has_pages_of_16_kib_and_an_older_one_keeps_its_own() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let page_size = async |store: &super::Store| -> i64 {
            sqlx::query_scalar("PRAGMA page_size").fetch_one(&store.pool).await.expect("the page size")
        };
        let checkpoint = async |store: &super::Store| -> i64 {
            sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&store.pool).await.expect("the checkpoint")
        };
        let new = super::Store::connect(&format!("sqlite://{}/new.db", dir.path().display()), 2).await;
        let new = new.expect("a new store");
        assert_eq!((page_size(&new).await, checkpoint(&new).await), (16_384, 2_560), "pages, and 40 MiB of them");

        let older = format!("sqlite://{}/older.db", dir.path().display());
        let mut made = sqlx::sqlite::SqliteConnection::connect(&format!("{older}?mode=rwc")).await.expect("a file");
        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut made).await.expect("WAL mode");
        made.close().await.expect("closed");
        let older = super::Store::connect(&older, 2).await.expect("an older store, migrated");
        assert_eq!((page_size(&older).await, checkpoint(&older).await), (4_096, 10_240), "pages, and 40 MiB of them");
        let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'lancamentos'")
            .fetch_one(&older.pool)
            .await
            .expect("the schema");
        assert_eq!(tables, 1, "the older store was not migrated");
    }
}
