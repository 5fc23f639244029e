//! A 202 survives a power loss: the embedded broker acknowledges a record only after the write
//! that holds it is on disk. Seen from outside, in a syscall trace of the broker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use cashflow_tests::{binary, free_port, lone_broker, until_listening};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// strace, from `CASHFLOW_STRACE` or the PATH. The test fails when it is missing.
fn strace() -> String {
    let strace = std::env::var("CASHFLOW_STRACE").unwrap_or_else(|_| "strace".into());
    let found = Command::new(&strace).arg("-V").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(found, "strace not found: install it (apt-get install strace) or set CASHFLOW_STRACE");
    strace
}

/// `\xNN` for each byte, as `strace -x` prints a buffer that is not all printable.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
}

/// The file descriptor a syscall line acts on, with strace's `-yy` decoration:
/// `pwrite64(7</tmp/x/broker.db-wal>, ...` gives `7</tmp/x/broker.db-wal>`.
fn fd_of(line: &str) -> Option<&str> {
    let call = line.split_once('(')?.1;
    let end = call.find(">,").or_else(|| call.find(">)"))?;
    Some(&call[..=end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_writes_a_record_to_disk_before_it_acknowledges_it() {
    let strace = strace();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("broker.trace");
    let mut command = Command::new(strace);
    command
        .args(["-f", "-y", "-yy", "-x", "-s", "65536", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=read,recvfrom,recvmsg,readv,write,writev,sendto,sendmsg,pwrite64,pwritev,fsync,fdatasync",
            "--",
        ])
        .arg(binary("cashflow-broker"));
    let bootstrap = lone_broker(&mut command, dir.path(), free_port());
    let mut broker = command.spawn().unwrap();
    until_listening(&bootstrap).await;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &bootstrap).set("broker.address.family", "v4");
    let admin: AdminClient<DefaultClientContext> = client.create().unwrap();
    let topic = NewTopic::new("probe", 1, TopicReplication::Fixed(1));
    admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap();

    let marker = format!("fsync-probe-{}", uuid::Uuid::new_v4());
    let producer: FutureProducer = client.clone().set("acks", "all").set("linger.ms", "0").create().unwrap();
    producer
        .send(FutureRecord::<(), _>::to("probe").payload(marker.as_bytes()), Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    drop(producer);
    // The broker is strace's child: stop it first, or it outlives the test.
    for pid in cashflow_tests::child_pids(broker.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    broker.kill().unwrap();
    broker.wait().unwrap();

    let log = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let hex = escaped(marker.as_bytes());
    let request = lines
        .iter()
        .position(|l| l.contains(&hex) && ["read(", "recvfrom(", "recvmsg(", "readv("].iter().any(|c| l.contains(c)))
        .unwrap_or_else(|| panic!("the produce request is not in the trace"));
    let socket = fd_of(lines[request]).unwrap().to_owned();
    assert!(socket.contains("TCP:"), "the request came through {socket}");
    let response = (request + 1..lines.len())
        .find(|&i| {
            let l = lines[i];
            ["write(", "writev(", "sendto(", "sendmsg("].iter().any(|c| l.contains(c)) && fd_of(l) == Some(&socket)
        })
        .unwrap_or_else(|| panic!("no produce response on {socket} in the trace"));
    let wal_write = (request..response)
        .rfind(|&i| lines[i].contains("pwrite64(") && lines[i].contains("-wal>"))
        .unwrap_or_else(|| panic!("no write to the WAL between the request and its response"));
    // A sync of the WAL that started after the record's write and finished before the response:
    // a whole line returning 0, or an unfinished line whose "resumed" half (same pid) returns 0.
    let mut unfinished = std::collections::HashSet::new();
    let mut synced = false;
    for l in &lines[wal_write..response] {
        let (pid, call) = l.split_once(' ').unwrap_or_default();
        let call = call.trim_start();
        let ok = call.trim_end().ends_with("= 0");
        if (call.starts_with("fdatasync(") || call.starts_with("fsync(")) && call.contains("-wal>") {
            if ok {
                synced = true;
            } else if call.contains("<unfinished") {
                unfinished.insert(pid);
            }
        } else if (call.starts_with("<... fdatasync resumed>") || call.starts_with("<... fsync resumed>"))
            && unfinished.remove(pid)
            && ok
        {
            synced = true;
        }
    }
    assert!(
        synced,
        "the WAL was not synced between the record's write (line {wal_write}) and the response (line {response}):\n{}",
        lines[wal_write..=response].iter().map(|l| l.get(..160).unwrap_or(l)).collect::<Vec<_>>().join("\n")
    );
}
