//! The store as operators handle it: a copy taken while the pipeline runs (a backup), put back
//! later (a restore), or an empty store in its place (a new database behind an old consumer
//! group). Each is done to a stopped pipeline, as an operator would.

use std::path::PathBuf;
use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Connection as _;

use crate::{Pipeline, Store, postgres::pg_bin, postgres_admin_url};

/// A consistent copy of a store.
pub struct StoreCopy {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl Pipeline {
    /// Where `cashflow` keeps its data (`--data-dir`): the SQLite store and the broker's log.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sqlite_file(&self) -> PathBuf {
        self.data_dir().join("cashflow.db")
    }

    /// A consistent copy of the store, taken while the pipeline writes to it.
    pub async fn copy_store(&self, store: &Store) -> StoreCopy {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("copy");
        match store {
            Store::Sqlite => {
                let url = format!("sqlite://{}", self.sqlite_file().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query("VACUUM INTO $1").bind(file.display().to_string()).execute(&mut conn).await.unwrap();
            }
            Store::Postgres(url) => {
                let out = Command::new(pg_bin().join("pg_dump"))
                    .args(["--format=custom", "--file"])
                    .arg(&file)
                    .arg(url)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        StoreCopy { _dir: dir, file }
    }

    /// Puts `copy` back in place of the store. The pipeline must be stopped.
    pub async fn restore_store(&self, store: &Store, copy: &StoreCopy) {
        self.empty_store(store).await;
        match store {
            Store::Sqlite => {
                std::fs::copy(&copy.file, self.sqlite_file()).unwrap();
            }
            Store::Postgres(url) => {
                let out = Command::new(pg_bin().join("pg_restore"))
                    .args(["--no-owner", "--dbname"])
                    .arg(url)
                    .arg(&copy.file)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "pg_restore failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }

    /// Replaces the store with an empty one (its schema comes with the next start). The pipeline
    /// must be stopped.
    pub async fn empty_store(&self, store: &Store) {
        match store {
            Store::Sqlite => {
                for suffix in ["", "-wal", "-shm"] {
                    let file = PathBuf::from(format!("{}{suffix}", self.sqlite_file().display()));
                    if file.exists() {
                        std::fs::remove_file(file).unwrap();
                    }
                }
            }
            Store::Postgres(url) => {
                let (_, name) = url.rsplit_once('/').expect("database url with a name");
                let mut admin = sqlx::PgConnection::connect(&postgres_admin_url()).await.unwrap();
                for sql in [format!("DROP DATABASE {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
                    sqlx::Executor::execute(&mut admin, sql.as_str()).await.unwrap();
                }
            }
        }
    }

    /// Runs `sql` on the store (for tests that set up a state no API reaches in a test's time).
    pub async fn store_execute(&self, store: &Store, sql: &str) {
        match store {
            Store::Sqlite => {
                let url = format!("sqlite://{}", self.sqlite_file().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
            Store::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// The first row `sql` returns, each column read as text (cast them in `sql`).
    pub async fn store_row(&self, store: &Store, sql: &str) -> Vec<String> {
        use sqlx::Row as _;
        let texts = |n: usize, get: &dyn Fn(usize) -> String| (0..n).map(get).collect::<Vec<_>>();
        match store {
            Store::Sqlite => {
                let url = format!("sqlite://{}", self.sqlite_file().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let row = sqlx::query(sql).fetch_one(&mut conn).await.unwrap();
                texts(row.len(), &|i| row.get(i))
            }
            Store::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let row = sqlx::query(sql).fetch_one(&mut conn).await.unwrap();
                texts(row.len(), &|i| row.get(i))
            }
        }
    }

    /// The pid of the embedded broker: the `cashflow-broker` child of one of this pipeline's
    /// processes.
    pub fn broker_pid(&self) -> i32 {
        for child in self.children.values() {
            for pid in crate::child_pids(child.id()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "cashflow-broker" {
                    return pid;
                }
            }
        }
        panic!("no cashflow-broker process under this pipeline's processes")
    }

    /// Sends `signal` to the embedded broker (SIGSTOP: a stall; SIGCONT: it goes on).
    pub fn signal_broker(&self, signal: Signal) {
        kill(Pid::from_raw(self.broker_pid()), signal).unwrap();
    }
}
