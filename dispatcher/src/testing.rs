//! Builders shared by the dispatcher's unit tests: the pure ones come from the core.

pub(crate) use dispatcher_core::testing::*;
use uuid::Uuid;

use crate::scheduler::{Effects, Run, Scheduler};
use crate::store::{OutboxMessage, Store, StoreError};
use proto_types::RunState;

/// Persists what `effects` changed (and `outputs`), as the service does; jobs carry a trace.
pub(crate) fn commit(
    store: &mut Store,
    scheduler: &Scheduler,
    effects: &Effects,
    outputs: &[(Uuid, String)],
    now: u64,
) {
    try_commit(store, scheduler, effects, outputs, now).unwrap();
}

/// [`commit`], returning the store's error.
pub(crate) fn try_commit(
    store: &mut Store,
    scheduler: &Scheduler,
    effects: &Effects,
    outputs: &[(Uuid, String)],
    now: u64,
) -> Result<(), StoreError> {
    let runs: Vec<(&Run, RunState)> = effects
        .changed_runs
        .iter()
        .filter_map(|id| scheduler.run(*id))
        .map(|run| (run, run.state()))
        .collect();
    let jobs: Vec<_> = effects
        .changed_jobs
        .iter()
        .filter_map(|id| scheduler.job_at(*id))
        .collect();
    let trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned());
    let mut outbox: Vec<OutboxMessage> = effects
        .publish
        .iter()
        .map(|job| OutboxMessage::job(job, trace.clone()))
        .collect();
    outbox.extend(runs.iter().map(|(run, _)| OutboxMessage::status(run)));
    let runs = runs.iter().map(|(run, state)| (*run, state));
    store.commit(runs, jobs, &outbox, outputs, now)
}
