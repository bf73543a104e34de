//! The drift schedules of `[[drift]]`: when a repository's slot comes, list the units of its
//! deploy branch's head from the dispatcher's own mirror and submit a drift run through the
//! changes queue, as the dispatcher's broker user, like any other event (so it is judged,
//! kept and reported the same way).
//!
//! A slot missed while the dispatcher was down (no drift run since a slot that has passed)
//! fires once at start, however many slots passed. Firing never fails the dispatcher: what
//! goes wrong is logged and the next slot tries again.

use std::path::PathBuf;
use std::time::Duration;

use broker::{Broker, Outgoing, Route};
use config::{Config, DriftSchedule};
use croner::Cron;
use proto_types::Payload;
use tracing::Instrument;

use crate::canonical::Canonical;
use crate::clock::now_ms;
use crate::drift::{missed, next_slot};
use crate::store::{Store, StoreLocation, off_runtime};

/// One repository's schedule and its next slot.
struct Slot {
    drift: DriftSchedule,
    cron: Cron,
    next_ms: u64,
}

/// Fires the drift schedules of `config` until the task is dropped.
pub async fn run(broker: Broker, config: Config, state_dir: PathBuf, store: StoreLocation) {
    let now = now_ms();
    let mut slots: Vec<Slot> = Vec::new();
    for drift in &config.drift {
        let Some(cron) = drift.cron() else {
            continue;
        };
        let repository = drift.repository.clone();
        let last = off_runtime(|| {
            Store::connect_read_only(&store).and_then(|store| store.last_drift_run_ms(&repository))
        });
        let last = match last {
            Ok(last) => last,
            Err(err) => {
                tracing::warn!(repository = %drift.repository, error = %err, "Cannot read when the last drift run was; waiting for the next slot.");
                None
            }
        };
        let next_ms = match last {
            Some(last) if missed(&cron, last, now) => {
                tracing::info!(repository = %drift.repository, "A drift slot passed while the dispatcher was down: checking now, once.");
                now
            }
            _ => next_slot(&cron, now).unwrap_or(u64::MAX),
        };
        tracing::info!(repository = %drift.repository, schedule = drift.schedule.as_deref().unwrap_or(""), next_in_s = next_ms.saturating_sub(now) / 1000, "Drift schedule armed.");
        slots.push(Slot {
            drift: drift.clone(),
            cron,
            next_ms,
        });
    }
    loop {
        let Some(next) = slots.iter().map(|slot| slot.next_ms).min() else {
            return;
        };
        if next == u64::MAX {
            return;
        }
        tokio::time::sleep(Duration::from_millis(next.saturating_sub(now_ms()))).await;
        let now = now_ms();
        for slot in slots.iter_mut().filter(|slot| slot.next_ms <= now) {
            let span = tracing::info_span!("drift_schedule", repository = %slot.drift.repository, run_id = tracing::field::Empty);
            fire(&broker, &config, &state_dir, &store, &slot.drift, &span)
                .instrument(span.clone())
                .await;
            slot.next_ms = next_slot(&slot.cron, now_ms()).unwrap_or(u64::MAX);
        }
    }
}

/// Lists the units of the deploy branch's head and submits their drift run.
async fn fire(
    broker: &Broker,
    config: &Config,
    state_dir: &std::path::Path,
    store: &StoreLocation,
    drift: &DriftSchedule,
    span: &tracing::Span,
) {
    let Some(repository) = config.repository(&drift.repository) else {
        return;
    };
    let name = repository.name.clone();
    let running =
        off_runtime(|| Store::connect_read_only(store).and_then(|s| s.drift_running(&name)));
    if matches!(running, Ok(true)) {
        tracing::warn!(
            "The last drift run of the repository is still running: this slot is skipped."
        );
        return;
    }
    let _mirror = crate::canonical::exclusive().await;
    let canonical = Canonical::of(config, state_dir, repository);
    let head = match canonical.fetch(&repository.deploy_branch).await {
        Ok(head) => head,
        Err(err) => {
            tracing::error!(error = %err, "Cannot fetch the deploy branch for the scheduled drift check; the next slot tries again.");
            return;
        }
    };
    let selection = drift.selection();
    let dir = canonical.dir().to_owned();
    let listed = tokio::task::spawn_blocking(move || {
        orchestrator::drift_check(&dir, &head, |unit| selection.includes(unit))
    })
    .await;
    let check = match listed {
        Ok(Ok(check)) => check,
        Ok(Err(err)) => {
            tracing::error!(error = %err, "Cannot list the units for the scheduled drift check.");
            return;
        }
        Err(err) => {
            tracing::error!(error = %err, "Listing the units for the drift check panicked.");
            return;
        }
    };
    if check.units.is_empty() {
        tracing::warn!(
            "The scheduled drift check selects no unit: nothing to check (see [[drift]] units)."
        );
        return;
    }
    let event = check.change_event(&repository.name, &repository.deploy_branch);
    span.record("run_id", tracing::field::display(event.id));
    let body = event.encode();
    let id = event.id.to_string();
    let headers = telemetry::propagation::current_headers();
    match broker
        .publish(Route::Changes, Outgoing::new(&body, &id, &headers))
        .await
    {
        Ok(()) => {
            tracing::info!(units = check.units.len(), head = %check.head_sha, "Scheduled drift run submitted.")
        }
        Err(err) => {
            tracing::error!(error = %err, "Cannot submit the scheduled drift run; the next slot tries again.")
        }
    }
}
