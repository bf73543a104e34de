//! The orchestrator: which units a commit range affects and why, and the client that submits
//! the resulting change event and follows its run.
//!
//! It runs where collaborators can change code, so it holds no credentials and decides
//! nothing: it states facts (a [`ChangeEvent`]) and the dispatcher judges them.
//!
//! - [`git`]: the only I/O of detection, reading commits through libgit2.
//! - [`snapshot`], `hcl`, `terragrunt`, `terraform`, [`units`], [`settings`], [`detect`]: pure;
//!   plain data in, plain data out. `units` builds, per commit, what every unit reads and the
//!   reverse index from a file to its readers; `detect` classifies the changed paths.
//! - [`github`]: the GitHub Actions event payload, for runs without flags.
//! - [`submit`]: publishing the event and following the run over the broker.
//! - [`render`]: text for people.

pub mod detect;
pub mod fast_hash;
pub mod git;
pub mod github;
mod hcl;
mod paths;
pub mod render;
pub mod settings;
pub mod snapshot;
pub mod submit;
mod terraform;
mod terragrunt;
pub mod units;

use std::path::{Path, PathBuf};

use proto_types::{ChangeEvent, DetectionReport, EventKind, Trigger};
use uuid::Uuid;

use std::collections::BTreeSet;

use crate::detect::{ChangedPath, Commit, Detection, Side};
use crate::fast_hash::FastSet;
use crate::git::{BlobCache, GitRepo};
use crate::settings::Settings;
use crate::snapshot::Snapshot;
use crate::units::{Evaluate, UnitIndex};

/// Why detection could not run. All are usage errors: wrong path, wrong revision, a broken
/// repository. None is retryable.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("{} is not a git repository: {reason}", path.display())]
    NotARepository { path: PathBuf, reason: String },
    #[error("unknown revision {rev:?}: {reason}")]
    UnknownRevision { rev: String, reason: String },
    #[error("a pull request needs a base revision (--base)")]
    MissingBase,
    #[error("a drift check compares no commits: list the units with `drift_check`")]
    DriftIsNoDiff,
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
    /// Pull requests: the base branch or commit (the merge base with head is used). Pushes: the
    /// commit before the push; `None` (or an all-zero sha, as GitHub sends for new branches)
    /// means the head's first parent.
    pub base: Option<&'a str>,
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

/// The all-zero sha GitHub sends as `before` when a branch is created.
const NULL_SHA: &str = "0000000000000000000000000000000000000000";

/// Detects the changes between two revisions of a repository.
pub fn detect_changes(request: DetectRequest<'_>) -> Result<DetectOutcome, DetectError> {
    let repo = GitRepo::open(request.repo)?;
    let head = repo.resolve(request.head)?;
    let given_base = match request.base {
        Some(rev) if rev != NULL_SHA => Some(repo.resolve(rev)?),
        _ => None,
    };
    let base = match (request.event, given_base) {
        (EventKind::PullRequest, Some(base)) => Some(repo.merge_base(base, head)?),
        (EventKind::PullRequest, None) => return Err(DetectError::MissingBase),
        (EventKind::Push, Some(base)) => Some(base),
        (EventKind::Push, None) => repo.first_parent(head)?,
        (EventKind::Drift, _) => return Err(DetectError::DriftIsNoDiff),
    };
    let _span = tracing::info_span!("detect", head = %head).entered();
    let mut blobs = BlobCache::default();
    let head_snapshot = repo.snapshot(Some(head), &mut blobs)?;
    let (changed, base_snapshot) = repo.changes_and_base(base, head, &head_snapshot, &mut blobs)?;
    let detection = detect_in_snapshots(&base_snapshot, &head_snapshot, &changed);
    tracing::info!(
        changed_paths = changed.len(),
        units = detection.units().len(),
        "Detected changes."
    );
    Ok(DetectOutcome {
        base_sha: base.map_or_else(|| NULL_SHA.to_owned(), |base| base.to_string()),
        head_sha: head.to_string(),
        event: request.event,
        detection,
    })
}

/// Detection on plain data: two snapshots and the paths that differ between them.
pub fn detect_in_snapshots(base: &Snapshot, head: &Snapshot, changed: &[ChangedPath]) -> Detection {
    let mut parsed = hcl::ParseCache::default();
    parsed.add_snapshot(head);
    // Base files are mostly the same blobs: only changed ones are parsed again.
    parsed.add_snapshot(base);
    let mut head_units = UnitIndex::build_with(head, &parsed, Evaluate::All);
    // At base only what is judged there matters: which touched directories were units, and the
    // deleted units. When a file outside units was deleted, its readers are read at base too.
    let touched: FastSet<&str> = changed
        .iter()
        .filter(|c| c.sides.contains(&Side::Base))
        .flat_map(|c| paths::ancestors(&c.path))
        .collect();
    let mut base_units = UnitIndex::discover_among(base, &parsed, &touched);
    let deleted_shared = changed.iter().any(|c| {
        c.sides == [Side::Base]
            && paths::owning_unit(&c.path, |dir| base_units.contains(dir)).is_none()
    });
    if deleted_shared {
        base_units = UnitIndex::build_with(base, &parsed, Evaluate::All);
    } else {
        let deleted: BTreeSet<String> = base_units
            .units
            .keys()
            .filter(|unit| !head_units.contains(unit))
            .cloned()
            .collect();
        base_units.evaluate(base, &parsed, Evaluate::Only(&deleted));
    }
    let settings = Settings::from_snapshot(base);
    let mut detection = detect::classify_changes(
        Commit {
            snapshot: base,
            units: &base_units,
        },
        Commit {
            snapshot: head,
            units: &head_units,
        },
        changed,
        &settings,
    );
    // Dependencies are evaluated only where needed: every unit when some are deleted (to refuse
    // deleting what others depend on), else the affected units and what they reach.
    if detect::deletes_units(&detection) {
        head_units.resolve_dependencies(head, &parsed, Evaluate::All);
    }
    loop {
        let (at_base, at_head) = detect::units_to_resolve(&detection, &base_units, &head_units);
        if at_base.is_empty() && at_head.is_empty() {
            break;
        }
        base_units.resolve_dependencies(base, &parsed, Evaluate::Only(&at_base));
        head_units.resolve_dependencies(head, &parsed, Evaluate::Only(&at_head));
    }
    detect::finish(
        &mut detection,
        Commit {
            snapshot: base,
            units: &base_units,
        },
        Commit {
            snapshot: head,
            units: &head_units,
        },
        &settings,
    );
    detection
}

impl DetectOutcome {
    /// The document `--dry-run --format json` prints.
    pub fn report(&self) -> DetectionReport {
        DetectionReport {
            base_sha: self.base_sha.clone(),
            head_sha: self.head_sha.clone(),
            event: self.event,
            changes: self.detection.changes.clone(),
            warnings: self
                .detection
                .refusals
                .iter()
                .map(|refusal| format!("refused: {refusal}"))
                .chain(self.detection.warnings.iter().cloned())
                .collect(),
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

/// What a drift check of a commit covers: the commit, and its units (repo-relative, sorted)
/// that `select` keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftCheck {
    pub head_sha: String,
    pub units: Vec<String>,
}

/// Lists the units of `head` that `select` keeps. Only discovery: no configuration is
/// evaluated, since a drift check plans each unit alone and in no order.
pub fn drift_check(
    repo: &Path,
    head: &str,
    select: impl Fn(&str) -> bool,
) -> Result<DriftCheck, DetectError> {
    let repo = GitRepo::open(repo)?;
    let head = repo.resolve(head)?;
    let snapshot = repo.snapshot(Some(head), &mut BlobCache::default())?;
    let mut cache = hcl::ParseCache::default();
    cache.add_snapshot(&snapshot);
    let index = UnitIndex::discover(&snapshot, &cache);
    Ok(DriftCheck {
        head_sha: head.to_string(),
        units: index
            .units
            .keys()
            .filter(|unit| select(unit))
            .cloned()
            .collect(),
    })
}

impl DriftCheck {
    /// The drift event of `repository`'s `branch` (its deploy branch).
    pub fn change_event(&self, repository: &str, branch: &str) -> ChangeEvent {
        ChangeEvent {
            id: Uuid::new_v4(),
            repository: repository.to_owned(),
            trigger: Trigger::Drift {
                branch: branch.to_owned(),
            },
            base_sha: self.head_sha.clone(),
            head_sha: self.head_sha.clone(),
            changes: vec![proto_types::Change {
                kind: proto_types::ChangeKind::DriftCheck,
                units: self.units.clone(),
                files: Vec::new(),
            }],
            dependencies: Vec::new(),
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
