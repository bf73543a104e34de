//! The dispatcher's decisions, as pure functions from plain data to plain data.
//!
//! Nothing here does I/O or reads a clock: time is an input, and the store's answers arrive as
//! facts in the input. The crate's dependencies say so (checked by `harness/tests/tidy.rs`), so
//! every feature of the dispatcher is a change to a function here plus its unit tests, and the
//! service around it (`dispatcher`) only decodes, applies effects and keeps metrics.
//!
//! - [`decide`]: one decision per message kind: `decide(state, input) -> effects`.
//! - [`drift`]: what a drift check says about its unit, the drift issue, drift schedules.
//! - [`identity`]: does a pull request event's OIDC token vouch for its pull request?
//! - [`policy`]: is this event allowed, and what runs where?
//! - [`scheduler`]: every active run and what may happen next (dependency order, per-unit
//!   serialization, account caps, supersession, retries, worker claims and leases).
//! - [`pacing`]: when a run's status snapshot goes out.
//! - [`report`]: what the GitHub reporter writes.
//! - [`status`]: what `pipelines status` prints.
//! - [`pages`] and [`graph`]: the web page's HTML, and a run's dependency graph as SVG.

pub mod decide;
pub mod drift;
pub mod graph;
pub mod identity;
pub mod pacing;
pub mod pages;
pub mod policy;
pub mod report;
pub mod scheduler;
pub mod status;
#[doc(hidden)]
pub mod testing;
