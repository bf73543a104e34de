//! The dispatcher's edges around its pure core (`dispatcher_core`): the broker service, the run
//! database and the GitHub reporter.
//!
//! - [`service`]: decode → decide (the core) → apply the effects in one store transaction →
//!   settle, answer and publish → metrics.
//! - `change_intake`: change events on a broker connection of their own, opened again
//!   whenever a message closes it.
//! - [`identity`]: pull request events' OIDC tokens checked against the issuer's keys
//!   (`[dispatcher.oidc]`).
//! - [`store`]: the run database and its outbox (SQLite, or PostgreSQL shared by several
//!   dispatchers), so that a crash loses nothing.
//! - [`leadership`]: which of the dispatchers sharing a PostgreSQL database leads (a lease,
//!   and the term that fences off a deposed leader's writes).
//! - [`reporter`] and [`github`]: what GitHub is told, and the REST edge that tells it.
//! - [`schedule`] and [`canonical`]: the `[[drift]]` schedules, which list the units of a
//!   deploy branch from the dispatcher's own mirror of it and submit drift runs.
//! - [`logs`]: jobs' whole logs as the workers stream them, kept under the state directory.
//! - [`web`]: the web page of runs, jobs and live logs, and its signed-in actions.
//! - [`clock`]: the wall clock, read at the edges only.
//!
//! The decisions themselves (`policy`, `scheduler`, `pacing`, `report`, `status`) live in
//! `dispatcher_core` and are re-exported here under their old paths.

pub mod canonical;
mod change_intake;
pub mod clock;
pub mod github;
pub mod identity;
pub mod leadership;
pub mod logs;
mod metrics;
pub mod reporter;
pub mod schedule;
#[cfg(test)]
mod scheduling_properties;
pub mod service;
pub mod store;
#[cfg(test)]
mod testing;
pub mod web;

pub use dispatcher_core::{decide, drift, pacing, policy, report, scheduler, status};
pub use service::{DispatchError, Dispatcher};
