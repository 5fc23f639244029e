//! A PostgreSQL cluster of a test's own, to stop and start under load (an outage).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_port;

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    durable: bool,
}

/// `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`. Panics when there is none.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("PostgreSQL server binaries not found: install postgresql or set PG_BIN"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl PgCluster {
    /// A cluster for tests: no fsync, so a crash of the machine loses it (the tests' crashes are
    /// of processes).
    pub fn start() -> PgCluster {
        Self::start_with(false)
    }

    /// For measurements: PostgreSQL's default durability (fsync and synchronous commit on),
    /// configured as a write-heavy store is run: shared buffers that hold the working set, and
    /// checkpoints spread out (by default one every 1 GB of WAL, after which each page written is
    /// logged whole again).
    pub fn start_durable() -> PgCluster {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        let c = PgCluster { bin: pg_bin(), port: free_port(), dir, durable };
        if is_root() {
            // initdb refuses to run as root.
            std::fs::set_permissions(c.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        }
        c.run("initdb", &["-D", &c.data(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        c.start_server();
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("pg").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(out.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn start_server(&self) {
        let settings = if self.durable {
            // pg_stat_statements: the bench's profile of each phase (`tests/bench/statements.rs`)
            "-c fsync=on -c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=30min \
             -c shared_preload_libraries=pg_stat_statements"
        } else {
            "-c fsync=off"
        };
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 {settings}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-o", &opts, "start"]);
    }

    /// Stops the server at once, dropping every connection.
    pub fn stop_server(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's pid (every backend is its child).
    pub fn pid(&self) -> u32 {
        let file = std::fs::read_to_string(Path::new(&self.data()).join("postmaster.pid")).unwrap();
        file.lines().next().and_then(|l| l.trim().parse().ok()).unwrap()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if is_root() {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
