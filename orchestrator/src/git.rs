//! The git edge: resolving revisions, diffing two commits and reading a commit's files, all
//! from the object database (never the working tree), through libgit2.

use std::path::Path;
use std::sync::Arc;

use git2::{Delta, DiffOptions, ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use crate::DetectError;
use crate::detect::ChangedPath;
use crate::snapshot::{Blob, BlobId, Snapshot, needs_content};

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

    /// The first parent of a commit; `None` for a root commit.
    pub fn first_parent(&self, commit: Oid) -> Result<Option<Oid>, DetectError> {
        let commit = self
            .repo
            .find_commit(commit)
            .map_err(git(format!("reading commit {commit}")))?;
        Ok(commit.parent_ids().next())
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

    fn tree(&self, commit: Option<Oid>) -> Result<Option<git2::Tree<'_>>, DetectError> {
        commit
            .map(|commit| {
                self.repo
                    .find_commit(commit)
                    .and_then(|c| c.tree())
                    .map_err(git(format!("reading the tree of {commit}")))
            })
            .transpose()
    }

    /// Paths that differ between two commits (`None` is the empty tree before a root commit).
    /// No rename detection: a rename is a deletion plus an addition, as the change detection
    /// rules require.
    pub fn changed_paths(
        &self,
        old: Option<Oid>,
        new: Oid,
    ) -> Result<Vec<ChangedPath>, DetectError> {
        Ok(self.diff(old, new)?.0)
    }

    /// The changed paths, and the base-side blob of every modified or deleted file.
    #[allow(clippy::type_complexity)] // A private pair, named by its one caller.
    fn diff(
        &self,
        old: Option<Oid>,
        new: Oid,
    ) -> Result<(Vec<ChangedPath>, Vec<(String, Oid)>), DetectError> {
        let old_tree = self.tree(old)?;
        let new_tree = self.tree(Some(new))?;
        let mut options = DiffOptions::new();
        options.ignore_submodules(true);
        let diff = self
            .repo
            .diff_tree_to_tree(old_tree.as_ref(), new_tree.as_ref(), Some(&mut options))
            .map_err(git("diffing trees"))?;
        let mut changed = Vec::new();
        let mut base_blobs = Vec::new();
        for delta in diff.deltas() {
            let old_path = delta.old_file().path().map(path_string);
            let new_path = delta.new_file().path().map(path_string);
            if delta.status() != Delta::Added
                && let Some(path) = &old_path
            {
                base_blobs.push((path.clone(), delta.old_file().id()));
            }
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
        Ok((changed, base_blobs))
    }

    /// The changes from `base` to `head`, and the base snapshot derived from the head snapshot
    /// and the diff: unchanged files are the same at both commits, so only the changed ones are
    /// read from the base tree.
    pub fn changes_and_base(
        &self,
        base: Option<Oid>,
        head: Oid,
        head_snapshot: &Snapshot,
        cache: &mut BlobCache,
    ) -> Result<(Vec<ChangedPath>, Snapshot), DetectError> {
        if base.is_none() {
            return Ok((self.changed_paths(None, head)?, Snapshot::default()));
        }
        let (changed, base_blobs) = self.diff(base, head)?;
        let added: crate::fast_hash::FastSet<&str> = changed
            .iter()
            .filter(|c| c.sides == [crate::detect::Side::Head])
            .map(|c| c.path.as_str())
            .collect();
        let mut files: Vec<String> = head_snapshot
            .files
            .iter()
            .filter(|f| !added.contains(f.as_str()))
            .cloned()
            .collect();
        let mut blobs = head_snapshot.blobs.clone();
        for path in &added {
            blobs.remove(*path);
        }
        for (path, oid) in base_blobs {
            if !head_snapshot.exists(&path) || added.contains(path.as_str()) {
                files.push(path.clone());
            }
            if needs_content(&path) {
                blobs.insert(path, cache.read(&self.repo, oid)?);
            } else {
                blobs.remove(&path);
            }
        }
        files.sort_unstable();
        files.dedup();
        Ok((
            changed,
            Snapshot {
                files: files.into(),
                blobs,
            },
        ))
    }

    /// Every file of a commit (none for `None`), with the contents detection evaluates. `cache`
    /// shares contents between snapshots by blob id, so a file unchanged between base and head
    /// is read once.
    pub fn snapshot(
        &self,
        commit: Option<Oid>,
        cache: &mut BlobCache,
    ) -> Result<Snapshot, DetectError> {
        let Some(tree) = self.tree(commit)? else {
            return Ok(Snapshot::default());
        };
        let mut entries: Vec<(String, Oid)> = Vec::new();
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(ObjectType::Blob) {
                let name = String::from_utf8_lossy(entry.name_bytes());
                entries.push((format!("{dir}{name}"), entry.id()));
            }
            TreeWalkResult::Ok
        })
        .map_err(git("walking a tree"))?;

        let mut snapshot = Snapshot::default();
        let mut paths = Vec::with_capacity(entries.len());
        for (path, oid) in entries {
            if needs_content(&path) {
                let blob = cache.read(&self.repo, oid)?;
                snapshot.blobs.insert(path.clone(), blob);
            }
            paths.push(path);
        }
        paths.sort_unstable();
        snapshot.files = paths.into();
        Ok(snapshot)
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Blob contents by id, read once per detection.
#[derive(Debug, Default)]
pub struct BlobCache {
    blobs: crate::fast_hash::FastMap<Oid, Blob>,
}

impl BlobCache {
    fn read(&mut self, repo: &Repository, oid: Oid) -> Result<Blob, DetectError> {
        if let Some(blob) = self.blobs.get(&oid) {
            return Ok(blob.clone());
        }
        let content = repo
            .find_blob(oid)
            .map_err(git(format!("reading blob {oid}")))?;
        let mut id = [0_u8; 20];
        let bytes = oid.as_bytes();
        id[..bytes.len().min(20)].copy_from_slice(&bytes[..bytes.len().min(20)]);
        let blob = Blob {
            id: BlobId(id),
            text: std::str::from_utf8(content.content()).ok().map(Arc::from),
        };
        self.blobs.insert(oid, blob.clone());
        Ok(blob)
    }
}
