//! The orchestrator: which units a commit range affects and why, and the client that submits
//! the resulting change event and follows its run.
//!
//! It runs where collaborators can change code, so it holds no credentials and decides
//! nothing: it states facts (a [`ChangeEvent`]) and the dispatcher judges them.
//!
//! - [`git`]: the only I/O of detection, reading commits through libgit2.
//! - [`snapshot`], [`units`], [`detect`]: pure; plain data in, plain data out.
//! - [`submit`]: publishing the event and following the run over the broker.
//! - [`render`]: text for people.

pub mod detect;
pub mod git;
mod paths;
pub mod render;
pub mod snapshot;
pub mod submit;
pub mod units;

use std::path::{Path, PathBuf};

use proto_types::{ChangeEvent, DetectionReport, EventKind, Trigger};
use uuid::Uuid;

use crate::detect::Detection;
use crate::git::{BlobCache, GitRepo};

/// Why detection could not run. All are usage errors: wrong path, wrong revision, a broken
/// repository. None is retryable.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("{} is not a git repository: {reason}", path.display())]
    NotARepository { path: PathBuf, reason: String },
    #[error("unknown revision {rev:?}: {reason}")]
    UnknownRevision { rev: String, reason: String },
    #[error("git failed {context}: {source}")]
    Git {
        context: String,
        #[source]
        source: git2::Error,
    },
}

/// What to compare.
#[derive(Debug, Clone, Copy)]
pub struct DetectRequest<'a> {
    pub repo: &'a Path,
    pub base: &'a str,
    pub head: &'a str,
    pub event: EventKind,
}

/// The result of comparing two commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectOutcome {
    /// The commit the changes are relative to: the merge base for pull requests, the given
    /// base for pushes. Deleted units are read (and destroyed) from here.
    pub base_sha: String,
    pub head_sha: String,
    pub event: EventKind,
    pub detection: Detection,
}

/// Detects the changes between two revisions of a repository.
pub fn detect_changes(request: DetectRequest<'_>) -> Result<DetectOutcome, DetectError> {
    let repo = GitRepo::open(request.repo)?;
    let head = repo.resolve(request.head)?;
    let given_base = repo.resolve(request.base)?;
    let base = match request.event {
        EventKind::PullRequest => repo.merge_base(given_base, head)?,
        EventKind::Push => given_base,
    };
    let _span = tracing::info_span!("detect", base = %base, head = %head).entered();
    let changed = repo.changed_paths(base, head)?;
    let mut cache = BlobCache::default();
    let base_units = units::discover(&repo.snapshot(base, &mut cache)?);
    let head_units = units::discover(&repo.snapshot(head, &mut cache)?);
    let detection = detect::classify(&base_units, &head_units, &changed);
    tracing::info!(
        changed_paths = changed.len(),
        units = detection.units().len(),
        "Detected changes."
    );
    Ok(DetectOutcome {
        base_sha: base.to_string(),
        head_sha: head.to_string(),
        event: request.event,
        detection,
    })
}

impl DetectOutcome {
    /// The document `--dry-run --format json` prints.
    pub fn report(&self) -> DetectionReport {
        DetectionReport {
            base_sha: self.base_sha.clone(),
            head_sha: self.head_sha.clone(),
            event: self.event,
            changes: self.detection.changes.clone(),
            warnings: self.detection.warnings.clone(),
        }
    }

    /// The event to publish.
    pub fn change_event(&self, repository: &str, trigger: Trigger) -> ChangeEvent {
        ChangeEvent {
            id: Uuid::new_v4(),
            repository: repository.to_owned(),
            trigger,
            base_sha: self.base_sha.clone(),
            head_sha: self.head_sha.clone(),
            changes: self.detection.changes.clone(),
            dependencies: self.detection.dependencies.clone(),
        }
    }
}

/// The local branch `rev` names (`main`, `refs/heads/main`), if it names one.
pub fn branch_named(repo: &Path, rev: &str) -> Option<String> {
    GitRepo::open(repo).ok()?.branch_named(rev)
}

/// The branch a push of `head` most likely went to: the branch `head` names, else the branch
/// checked out. `None` means "cannot tell": the caller asks for `--branch`.
pub fn pushed_branch(repo: &Path, head: &str) -> Option<String> {
    let repo = GitRepo::open(repo).ok()?;
    repo.branch_named(head).or_else(|| repo.current_branch())
}
