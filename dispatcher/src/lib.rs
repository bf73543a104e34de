//! The dispatcher: the gate between untrusted change events and privileged job queues, and the
//! one component that knows how each run is going.
//!
//! - [`policy`]: is this event allowed, and what runs where? Pure.
//! - [`scheduler`]: every active run and what may happen next (dependency order, per-unit
//!   serialization, account caps, supersession, retries, worker claims). Pure.
//! - [`store`]: the run database and its outbox (SQLite), so that a crash loses nothing.
//! - [`status`]: what `pipelines status` prints. Pure.
//! - [`clock`]: the wall clock, read at the edges only.
//! - [`service`]: the broker edge that feeds the scheduler, commits, acks and publishes.

pub mod clock;
pub mod github;
mod metrics;
pub mod pacing;
pub mod policy;
pub mod report;
pub mod reporter;
pub mod scheduler;
pub mod service;
pub mod status;
pub mod store;
#[cfg(test)]
mod testing;

pub use service::{DispatchError, Dispatcher};
