//! `cashflow dlq list|replay|purge`: the dead-letter topic, for operators.

use std::io::{BufRead as _, Write as _};
use std::sync::Arc;

use anyhow::{Result, bail};
use cashflow_core::config::PipelineConfig;
use cashflow_retry::{Dlq, Parked, Selection, parse_position};
use chrono::{DateTime, SecondsFormat};
use clap::{ArgGroup, Subcommand};

use crate::{Common, app};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List parked records (not purged, not replayed): position, error code, attempts, first
    /// failure, merchant and the start of the detail.
    List {
        /// One JSON document with every field and the original value.
        #[arg(long)]
        json: bool,
    },
    /// Send parked records back to consolidation, their attempts reset.
    #[command(group(ArgGroup::new("which").required(true).args(["offset", "error_code", "all"])))]
    Replay {
        /// A parked record's PARTITION:OFFSET, as `list` shows it (repeatable).
        #[arg(long, value_parser = parse_position)]
        offset: Vec<(i32, i64)>,
        /// Every parked record with this error code.
        #[arg(long)]
        error_code: Option<String>,
        /// Every parked record.
        #[arg(long)]
        all: bool,
    },
    /// Drop every parked record listed now, after confirmation.
    Purge {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(command: DlqCommand, config: PipelineConfig, common: &Common) -> Result<()> {
    let store = app::connect_store(&config, common).await?;
    let dlq = Dlq::new(Arc::new(config), store);
    match command {
        DlqCommand::List { json } => {
            let listing = dlq.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "parked": listing.records }))?);
            } else {
                print_table(&listing.records);
            }
        }
        DlqCommand::Replay { offset, error_code, all } => {
            let selection = match (error_code, all) {
                (Some(code), _) => Selection::ErrorCode(code),
                (None, true) => Selection::All,
                (None, false) => Selection::Offsets(offset),
            };
            let replayed = dlq.replay(&selection).await?;
            for p in &replayed {
                println!("replayed {} ({})", p.position, p.code());
            }
            println!("{} record(s) sent back to consolidation", replayed.len());
        }
        DlqCommand::Purge { yes } => {
            let listing = dlq.list().await?;
            if listing.records.is_empty() {
                println!("nothing is parked");
                return Ok(());
            }
            if !yes && !confirm(&format!("purge {} parked record(s)? type \"yes\": ", listing.records.len()))? {
                bail!("not purged");
            }
            dlq.purge(&listing).await?;
            println!("{} record(s) purged", listing.records.len());
        }
    }
    Ok(())
}

fn confirm(question: &str) -> Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

fn print_table(records: &[Parked]) {
    let header = ["POSITION", "CODE", "ATTEMPTS", "FIRST FAILED", "MERCHANT", "DETAIL"].map(str::to_owned);
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|p| {
            let f = p.failure.as_ref();
            let first = f
                .and_then(|f| DateTime::from_timestamp_millis(f.first_failed_at_ms))
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into());
            [
                p.position.clone(),
                p.code().to_owned(),
                f.map_or("-".into(), |f| f.attempt.to_string()),
                first,
                p.merchant.clone().unwrap_or_else(|| "-".into()),
                p.excerpt(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!("{} parked record(s)", rows.len());
}
