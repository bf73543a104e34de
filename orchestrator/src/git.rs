//! The git edge: resolving revisions, diffing two commits and reading a commit's files, all
//! from the object database (never the working tree), through libgit2.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use git2::{Delta, DiffOptions, ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use crate::DetectError;
use crate::detect::ChangedPath;
use crate::snapshot::{Snapshot, needs_content};

pub struct GitRepo {
    repo: Repository,
}

impl std::fmt::Debug for GitRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRepo")
            .field("path", &self.repo.path())
            .finish()
    }
}

fn git(context: impl Into<String>) -> impl FnOnce(git2::Error) -> DetectError {
    let context = context.into();
    move |source| DetectError::Git { context, source }
}

impl GitRepo {
    pub fn open(path: &Path) -> Result<GitRepo, DetectError> {
        let repo = Repository::open(path).map_err(|err| DetectError::NotARepository {
            path: path.to_owned(),
            reason: err.message().to_owned(),
        })?;
        Ok(GitRepo { repo })
    }

    /// The commit a revision names (`main`, `HEAD~1`, a sha, a tag).
    pub fn resolve(&self, rev: &str) -> Result<Oid, DetectError> {
        self.repo
            .revparse_single(rev)
            .and_then(|object| object.peel_to_commit())
            .map(|commit| commit.id())
            .map_err(|err| DetectError::UnknownRevision {
                rev: rev.to_owned(),
                reason: err.message().to_owned(),
            })
    }

    pub fn merge_base(&self, a: Oid, b: Oid) -> Result<Oid, DetectError> {
        self.repo
            .merge_base(a, b)
            .map_err(git(format!("merge-base of {a} and {b}")))
    }

    /// The local branch a revision names, if it is one (`main`, `refs/heads/main`).
    pub fn branch_named(&self, rev: &str) -> Option<String> {
        let name = rev.strip_prefix("refs/heads/").unwrap_or(rev);
        self.repo
            .find_branch(name, git2::BranchType::Local)
            .ok()
            .map(|_| name.to_owned())
    }

    /// The branch HEAD points to, unless detached.
    pub fn current_branch(&self) -> Option<String> {
        let head = self.repo.head().ok()?;
        if !head.is_branch() {
            return None;
        }
        head.shorthand().ok().map(str::to_owned)
    }

    /// Paths that differ between two commits. No rename detection: a rename is a deletion plus
    /// an addition, as the change detection rules require.
    pub fn changed_paths(&self, old: Oid, new: Oid) -> Result<Vec<ChangedPath>, DetectError> {
        let old_tree = self
            .repo
            .find_commit(old)
            .and_then(|c| c.tree())
            .map_err(git("reading base tree"))?;
        let new_tree = self
            .repo
            .find_commit(new)
            .and_then(|c| c.tree())
            .map_err(git("reading head tree"))?;
        let mut options = DiffOptions::new();
        options.ignore_submodules(true);
        let diff = self
            .repo
            .diff_tree_to_tree(Some(&old_tree), Some(&new_tree), Some(&mut options))
            .map_err(git("diffing trees"))?;
        let mut changed = Vec::new();
        for delta in diff.deltas() {
            let old_path = delta.old_file().path().map(path_string);
            let new_path = delta.new_file().path().map(path_string);
            match (delta.status(), old_path, new_path) {
                (Delta::Added, _, Some(path)) => changed.push(ChangedPath::added(&path)),
                (Delta::Deleted, Some(path), _) => changed.push(ChangedPath::deleted(&path)),
                (_, Some(old), Some(new)) if old == new => {
                    changed.push(ChangedPath::modified(&new))
                }
                (_, old, new) => {
                    changed.extend(old.map(|p| ChangedPath::deleted(&p)));
                    changed.extend(new.map(|p| ChangedPath::added(&p)));
                }
            }
        }
        Ok(changed)
    }

    /// Every file of a commit, with the contents unit discovery needs. `cache` shares contents
    /// between snapshots by blob id, so a file unchanged between base and head is read once.
    pub fn snapshot(&self, commit: Oid, cache: &mut BlobCache) -> Result<Snapshot, DetectError> {
        let tree = self
            .repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(git(format!("reading tree of {commit}")))?;
        let mut entries: Vec<(String, Oid)> = Vec::new();
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(ObjectType::Blob) {
                let name = String::from_utf8_lossy(entry.name_bytes());
                entries.push((format!("{dir}{name}"), entry.id()));
            }
            TreeWalkResult::Ok
        })
        .map_err(git(format!("walking tree of {commit}")))?;

        let mut snapshot = Snapshot::default();
        for (path, oid) in entries {
            if needs_content(&path)
                && let Some(text) = cache.read(&self.repo, oid)?
            {
                snapshot.contents.insert(path.clone(), text);
            }
            snapshot.files.push(path);
        }
        snapshot.files.sort();
        Ok(snapshot)
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Blob contents by id; `None` for blobs that are not UTF-8.
#[derive(Debug, Default)]
pub struct BlobCache {
    blobs: HashMap<Oid, Option<Arc<str>>>,
}

impl BlobCache {
    fn read(&mut self, repo: &Repository, oid: Oid) -> Result<Option<Arc<str>>, DetectError> {
        if let Some(text) = self.blobs.get(&oid) {
            return Ok(text.clone());
        }
        let blob = repo
            .find_blob(oid)
            .map_err(git(format!("reading blob {oid}")))?;
        let text = std::str::from_utf8(blob.content()).ok().map(Arc::from);
        self.blobs.insert(oid, text.clone());
        Ok(text)
    }
}
