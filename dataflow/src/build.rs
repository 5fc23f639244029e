//! Building a declared state's table from the stored entries: when `pipeline.yaml` adds a state
//! (or changes its key), the next session's start feeds every stored entry through a dataflow of
//! that state alone, page by page, and adds its output, as an epoch would. The build is one store
//! transaction that no epoch runs beside, so every entry is counted exactly once: by the build if
//! it was stored before, by its epoch if after.

use std::time::Instant;

use cashflow_core::config::{PipelineConfig, StateConfig};
use cashflow_sinks::{Build, DeclaredState, EntryFacts, Store};

use crate::ConsolidateError;
use crate::operator::{Consolidator, Fact};

/// Stored entries read and fed to the dataflow at a time.
const PAGE: usize = 50_000;

/// The states `aggregate` keeps, in its order.
pub fn declared(config: &PipelineConfig) -> Vec<DeclaredState> {
    declared_named(config).into_iter().map(|(_, s)| s).collect()
}

/// [`declared`], each with its name in `pipeline.yaml`.
pub fn declared_named(config: &PipelineConfig) -> Vec<(&str, DeclaredState)> {
    let state =
        |s: &StateConfig| DeclaredState { table: s.table.clone(), key: s.key.clone(), values: s.values.clone() };
    config.services.consolidate.aggregated().into_iter().map(|(name, s)| (name, state(s))).collect()
}

/// Builds each of `declared` that the store does not keep (with that key), and stops keeping
/// states no longer declared.
pub async fn build(store: &Store, declared: &[DeclaredState]) -> Result<(), ConsolidateError> {
    for state in store.states_to_build(declared).await? {
        let (table, key, values) = (&state.table, state.key.to_string(), state.values.to_string());
        tracing::info!(table = %table, key = %key, values = %values, "building a state from the stored entries");
        let started = Instant::now();
        let Some(build) = store.begin_build(&state).await? else {
            tracing::info!(table = %table, "another consolidator built the state");
            continue;
        };
        let entries = fill(build, &state).await?;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(table = %table, key = %key, entries, took_ms, "state built");
    }
    Ok(())
}

/// Replaces `state`'s rows (`merchant`'s alone, if given) with what the stored entries give, in
/// one transaction (see [`Store::begin_rebuild`]); returns how many entries it read.
pub async fn rebuild(store: &Store, state: &DeclaredState, merchant: Option<&str>) -> Result<usize, ConsolidateError> {
    fill(store.begin_rebuild(state, merchant).await?, state).await
}

/// Feeds every entry `build` reads through a dataflow of `state` alone, page by page, adds its
/// output, and commits; returns how many entries it read.
async fn fill(mut build: Build, state: &DeclaredState) -> Result<usize, ConsolidateError> {
    let dataflow = Consolidator::start(vec![state.key.clone()])?;
    let mut entries = 0usize;
    loop {
        let page = build.next_entries(PAGE).await?;
        if page.is_empty() {
            break;
        }
        entries += page.len();
        let changes = dataflow.apply(page.iter().map(Fact::from)).await?;
        for state_changes in &changes.rows()? {
            build.add(state_changes).await?;
        }
    }
    build.finish().await?;
    Ok(entries)
}

impl<'a> From<&'a EntryFacts> for Fact<'a> {
    fn from(e: &'a EntryFacts) -> Self {
        Fact {
            merchant_id: &e.merchant_id,
            data: e.data,
            categoria: &e.categoria,
            tipo: e.tipo,
            valor_cents: e.valor_cents,
        }
    }
}
