//! `cashflow-broker`: a Kafka-protocol broker with durable storage.
//!
//! This is Tansu 0.6.0 built with two storage engines: SQLite (`libsql`), a log that one broker
//! serves, and PostgreSQL, a log that every broker given the same database serves. Tansu's brokers
//! keep no state of their own: topics, records, offsets and consumer groups are all in the
//! storage, so brokers over one PostgreSQL database form a cluster, each answering for every
//! partition. It lives in its own binary because `libsql` and sqlx's bundled SQLite cannot be
//! linked into one executable. `cashflow up` and `cashflow run broker` start it as a child process
//! (and, on PostgreSQL, apply Tansu's schema first), wait for its port, supervise it and stop it.

use clap::Parser;
use tansu_broker::{NODE_ID, broker::Broker, coordinator::group::administrator::Controller};
use tansu_storage::StorageContainer;
use tokio::time::Instant;
use url::Url;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on, e.g. tcp://127.0.0.1:9092
    #[arg(long, default_value = "tcp://127.0.0.1:9092")]
    listener_url: Url,

    /// Address advertised to clients in metadata (use 127.0.0.1, not localhost)
    #[arg(long, default_value = "tcp://127.0.0.1:9092")]
    advertised_listener_url: Url,

    /// Storage engine URL: `sqlite://<relative path>` (resolved against the working directory)
    /// or `postgres://…` (its schema applied beforehand)
    #[arg(long, env = "CASHFLOW_BROKER_STORAGE_ENGINE", default_value = "sqlite://broker.db", hide_env_values = true)]
    storage_engine: Url,

    /// Cluster id; every member of one cluster uses the same
    #[arg(long, default_value = "cashflow")]
    cluster_id: String,

    /// Exit when standard input closes: the supervising parent is gone, even if it was killed.
    #[arg(long)]
    exit_with_parent: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // Tansu's own debug lines name the storage URL, password included: keep them for a
            // machine of one's own.
            tracing_subscriber::EnvFilter::try_from_env("CASHFLOW_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // A panic in any task (Tansu's storage task panics on some states after a crash) would leave
    // a broker that accepts connections but fails every request. Exit instead, so the
    // supervisor restarts a whole broker.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("cashflow-broker: {info}; exiting so that the supervisor restarts the broker");
        std::process::exit(70);
    }));

    let args = Args::parse();
    if args.exit_with_parent {
        tokio::spawn(async {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
            eprintln!("cashflow-broker: parent gone, exiting");
            std::process::exit(0);
        });
    }
    if let Err(e) = index_headers(&args.storage_engine).await {
        eprintln!("cashflow-broker: cannot prepare the SQLite storage: {e}");
        std::process::exit(1);
    }
    let broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
        .node_id(NODE_ID)
        .cluster_id(args.cluster_id)
        .incarnation_id(Uuid::now_v7())
        .advertised_listener(args.advertised_listener_url)
        .otlp_endpoint_url(None)
        .schema_registry(None)
        .storage(args.storage_engine)
        .listener(args.listener_url)
        .authentication(false)
        .tls_server_config(None)
        .silent(true);

    let result = match broker.build().await {
        Ok(broker) => broker.main(Instant::now()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    // Exit now: returning would wait for the blocking thread that watches stdin.
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("cashflow-broker: {e}");
            std::process::exit(1)
        }
    }
}

/// Tansu 0.6.0's SQLite schema has no index on record headers, so fetching a record that carries
/// headers scans every header stored: fetch time grows with the square of the log (8,000 records
/// with retry headers took minutes). The header table is created here as Tansu's DDL declares it
/// (Tansu's own `create table if not exists` then leaves it), with the index its lookup needs.
async fn index_headers(storage: &Url) -> Result<(), libsql::Error> {
    if storage.scheme() != "sqlite" {
        return Ok(());
    }
    let mut path = std::env::current_dir().map_err(|e| libsql::Error::Misuse(e.to_string()))?;
    if let Some(domain) = storage.domain() {
        path.push(domain);
    }
    path.push(storage.path().trim_start_matches('/'));
    let db = libsql::Builder::new_local(path).build().await?;
    let connection = db.connect()?;
    connection
        .execute_batch(
            "create table if not exists header (
                topition integer,
                offset_id integer,
                k blob,
                v blob,
                last_updated datetime default current_timestamp not null,
                created_at datetime default current_timestamp not null,
                foreign key (topition, offset_id) references record (topition, offset_id) on delete cascade
            );
            create index if not exists header_by_record on header (topition, offset_id);",
        )
        .await?;
    Ok(())
}
