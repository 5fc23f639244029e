// cashflow patch: group commit for the SQLite engine's produce path.

//! A produce is acknowledged only after the write-ahead log holding it is on disk.
//!
//! The engine commits with `PRAGMA synchronous = normal`, which does not fsync a commit: a power
//! loss could undo records already acknowledged. `synchronous = full` would fsync inside every
//! transaction, one per partition of every produce, on the engine's single storage task. Instead,
//! after its commit, a produce waits for the next fsync of the WAL that starts after the commit;
//! one fsync, on a thread of its own, answers every produce that committed before it began: a
//! group commit. A failed fsync fails the produces it would have answered.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use crate::Error;

type Synced = Result<(), Arc<io::Error>>;

#[derive(Clone, Debug)]
pub(crate) struct GroupSync {
    requests: mpsc::Sender<oneshot::Sender<Synced>>,
}

impl GroupSync {
    /// Syncs `database`'s WAL (`<database>-wal`) on demand, from a thread of its own.
    pub(crate) fn start(database: &std::path::Path) -> io::Result<Self> {
        // By components: the engine's path may end in a separator (`sqlite://broker.db`).
        let name = database.file_name().ok_or_else(|| io::Error::other("the database path has no file name"))?;
        let mut wal = PathBuf::from(database);
        wal.set_file_name(format!("{}-wal", name.to_string_lossy()));
        // The WAL's directory entry must be durable too (SQLite does not sync the directory).
        if let Some(dir) = database.parent() {
            File::open(dir)?.sync_all()?;
        }
        let (requests, waiting) = mpsc::channel::<oneshot::Sender<Synced>>();
        _ = std::thread::Builder::new()
            .name("wal-group-sync".into())
            .spawn(move || {
                while let Ok(first) = waiting.recv() {
                    // Every produce waiting now committed before this fsync starts.
                    let mut waiters = vec![first];
                    waiters.extend(waiting.try_iter());
                    let synced = File::open(&wal).and_then(|f| f.sync_data()).map_err(Arc::new);
                    for waiter in waiters {
                        _ = waiter.send(synced.clone());
                    }
                }
            })?;
        Ok(GroupSync { requests })
    }

    /// Resolves once everything committed before this call is on disk.
    pub(crate) async fn sync(&self) -> Result<(), Error> {
        let (done, synced) = oneshot::channel();
        let stopped = || Error::Io(Arc::new(io::Error::other("the WAL sync thread stopped")));
        self.requests.send(done).map_err(|_| stopped())?;
        synced.await.map_err(|_| stopped())?.map_err(Error::Io)
    }
}
