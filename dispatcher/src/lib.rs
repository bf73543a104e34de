//! The dispatcher: the gate between untrusted change events and privileged job queues, and the
//! one component that knows how each run is going.
//!
//! - [`policy`]: is this event allowed, and what runs where? Pure.
//! - [`run`]: the run state machine (dependency order, skips, final state). Pure.
//! - [`service`]: the broker edge that feeds them and publishes their decisions.

pub mod policy;
pub mod run;
pub mod service;

pub use service::{DispatchError, Dispatcher};
