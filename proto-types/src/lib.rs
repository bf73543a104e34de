//! Every message that crosses a process boundary, and its versioned codec.
//!
//! This crate is the project's only serialization boundary: the orchestrator, dispatcher and
//! executors exchange the types defined here and nothing else. It depends on neither tokio nor
//! lapin, so that every component (and the fuzzers) can decode messages without a runtime.
//!
//! - [`ChangeEvent`]: orchestrator → dispatcher. Facts about a commit range, never commands.
//! - [`Job`]: dispatcher → `jobs.<account>.<role>`. One action on one unit.
//! - [`JobEvent`]: executor → dispatcher. Started, heartbeat, finished.
//! - [`ClaimReply`]: dispatcher → one executor, answering its claim to start a job.
//! - [`CancelRun`]: an operator → dispatcher; [`CancelJob`]: dispatcher → the job's holder.
//! - [`ApprovalOrder`]: an approver → dispatcher, opening or closing a gated job's gate.
//! - [`RunStatus`]: dispatcher → whoever follows a run (`orchestrate --wait`, reporters).
//!
//! On the wire every message is an envelope: one format byte ([`FORMAT_V1`]) followed by a
//! bincode 2 body. Decoding is total: garbage, truncation and future formats are typed errors.
//!
//! Some of what the messages carry is a job's own words (output tails, failure reasons), so
//! [`untrusted_text`] says how every reader shows them.

mod codec;
mod messages;
mod report;
pub mod untrusted_text;

pub use codec::{DecodeError, FORMAT_V1, MAX_MESSAGE_BYTES, Message, Payload, decode, encode};
pub use messages::{
    Action, ApprovalGate, ApprovalOrder, ApprovalVerdict, CancelJob, CancelRun, Change,
    ChangeEvent, ChangeKind, ClaimReply, ClaimVerdict, DependencyEdge, DriftFindings, EventKind,
    ExecutorRole, Job, JobEvent, JobEventKind, JobOutcome, JobStatus, LogChunk, PolicyReport,
    PolicySetResult, ResourceCounts, RunState, RunStatus, Trigger, UnitState, UnitStatus,
};
pub use report::{
    DRIFT_HISTORY_ENTRIES, DetectionReport, DriftHistoryEntry, DriftState, DriftUnit, JobPhase,
    JobSummary, RunDetail, RunPhase, RunSummary, append_drift_history, run_status_json, to_json,
};

/// The change event's header holding its CI job's OIDC token (a JWT), when the orchestrator
/// was given one (`PIPELINES_ID_TOKEN`): with `[dispatcher.oidc]` the dispatcher takes a pull
/// request event only with a token of that pull request's own workflow run.
pub const ID_TOKEN_HEADER: &str = "pipelines-id-token";

/// How the broker names private queues: `amq.gen-` and a random suffix. Replies go only there.
pub const REPLY_QUEUE_PREFIX: &str = "amq.gen-";

/// The longest worker name, in bytes.
pub const MAX_WORKER_NAME_BYTES: usize = 128;

/// Whether `name` may name a worker: it becomes part of its logs' file names on the
/// dispatcher, so letters, digits and `._@:-` only, not starting with `.`, at most
/// [`MAX_WORKER_NAME_BYTES`]. A worker refuses another name at start; the dispatcher refuses
/// the log chunks of one.
pub fn is_worker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_WORKER_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@:-".contains(&b))
}

/// Whether `queue` names a private reply queue, as the broker makes them. Answers go only to
/// such queues, so a forged `reply_to` cannot push a message into a work queue.
pub fn is_reply_queue(queue: &str) -> bool {
    queue.starts_with(REPLY_QUEUE_PREFIX)
        && queue.len() <= 255
        && queue[REPLY_QUEUE_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
