//! The worker's git cache: one bare mirror per repository, fetched from the canonical URL, and
//! a fresh worktree per job at the job's commit.
//!
//! It shells out to `git` rather than using libgit2: the git CLI already speaks every
//! transport and credential helper an operator may configure (HTTPS tokens, SSH keys,
//! proxies), and the executor host needs git for Terraform module sources anyway.
//! One worker process owns its work directory (a lock file enforces it); jobs of one worker
//! run one after another, each in a fresh worktree, so the mirror is never written twice at
//! once.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("commit {commit} is not in {url} (fetched branches and tags, then the commit itself)")]
    MissingCommit { commit: String, url: String },
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the work directory {} is in use by another worker (see {}): give each worker its own --work-dir",
        root.display(),
        lock.display()
    )]
    InUse { root: PathBuf, lock: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    /// Held open, locked, for the worker's lifetime.
    _lock: std::sync::Arc<std::fs::File>,
}

impl Workspace {
    /// Takes the work directory for this process: fails when another worker holds it.
    pub fn open(root: PathBuf) -> Result<Workspace, WorkspaceError> {
        create_dir(&root)?;
        let lock = root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| WorkspaceError::Io {
                path: lock.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(WorkspaceError::InUse { root, lock });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(WorkspaceError::Io { path: lock, source });
            }
        }
        let _ = std::fs::write(&lock, format!("{}\n", std::process::id()));
        Ok(Workspace {
            root,
            _lock: std::sync::Arc::new(file),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mirror(&self, repository: &str) -> PathBuf {
        // Repository names may contain '/', which must not nest directories here.
        let safe: String = repository
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("mirrors").join(format!("{safe}.git"))
    }

    fn job_dir(&self, job_id: Uuid) -> PathBuf {
        self.root.join("jobs").join(job_id.to_string())
    }

    /// Makes sure the mirror has `commit`, then checks it out into a fresh directory for the
    /// job. A directory left by an earlier attempt of the same job is replaced.
    pub async fn checkout(
        &self,
        repository: &str,
        url: &str,
        commit: &str,
        job_id: Uuid,
    ) -> Result<PathBuf, WorkspaceError> {
        let mirror = self.mirror(repository);
        if !mirror.join("HEAD").exists() {
            create_dir(mirror.parent().unwrap_or(&self.root))?;
            git(None, &["init", "--quiet", "--bare", &path_arg(&mirror)]).await?;
        }
        if !has_commit(&mirror, commit).await {
            let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
            let mut args = vec!["fetch", "--quiet", "--prune", url];
            args.extend(refspecs);
            git(Some(&mirror), &args).await?;
        }
        if !has_commit(&mirror, commit).await {
            // Pull request heads live outside branches on most forges; ask for the commit
            // itself (servers allow fetching reachable commits by id).
            let _ = git(Some(&mirror), &["fetch", "--quiet", url, commit]).await;
        }
        if !has_commit(&mirror, commit).await {
            return Err(WorkspaceError::MissingCommit {
                commit: commit.to_owned(),
                url: url.to_owned(),
            });
        }

        let dir = self.job_dir(job_id);
        if dir.exists() {
            self.remove(&dir).await;
        }
        create_dir(dir.parent().unwrap_or(&self.root))?;
        git(
            Some(&mirror),
            &[
                "worktree",
                "add",
                "--quiet",
                "--detach",
                "--force",
                &path_arg(&dir),
                commit,
            ],
        )
        .await?;
        Ok(dir)
    }

    /// Whether each of `commits` is reachable from `branch` of the repository at `url`, as
    /// fetched now by this worker: `Ok(Err(reason))` when one is not. What the dispatcher or the
    /// event claims about branches plays no part.
    pub async fn verify_on_branch(
        &self,
        repository: &str,
        url: &str,
        branch: &str,
        commits: &[&str],
    ) -> Result<Result<(), String>, WorkspaceError> {
        let mirror = self.mirror(repository);
        if !mirror.join("HEAD").exists() {
            create_dir(mirror.parent().unwrap_or(&self.root))?;
            git(None, &["init", "--quiet", "--bare", &path_arg(&mirror)]).await?;
        }
        let refspec = format!("+refs/heads/{branch}:refs/verified/{branch}");
        git(Some(&mirror), &["fetch", "--quiet", url, &refspec]).await?;
        let tip = format!("refs/verified/{branch}");
        for commit in commits {
            let ancestor = Command::new("git")
                .arg("--git-dir")
                .arg(&mirror)
                .args(["merge-base", "--is-ancestor", commit, &tip])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(WorkspaceError::Spawn)?;
            if !ancestor.success() {
                return Ok(Err(format!(
                    "commit {commit} is not on branch {branch:?} of {repository} (as fetched from {url})"
                )));
            }
        }
        Ok(Ok(()))
    }

    /// Removes a job's checkout. Best effort: a leftover directory is replaced next time.
    pub async fn remove(&self, dir: &Path) {
        let _ = tokio::fs::remove_dir_all(dir).await;
        let mirrors = self.root.join("mirrors");
        if let Ok(mut entries) = tokio::fs::read_dir(&mirrors).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let _ = git(Some(&entry.path()), &["worktree", "prune"]).await;
            }
        }
    }
}

fn create_dir(path: &Path) -> Result<(), WorkspaceError> {
    std::fs::create_dir_all(path).map_err(|source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    })
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

async fn has_commit(mirror: &Path, commit: &str) -> bool {
    git(
        Some(mirror),
        &["cat-file", "-e", &format!("{commit}^{{commit}}")],
    )
    .await
    .is_ok()
}

async fn git(git_dir: Option<&Path>, args: &[&str]) -> Result<String, WorkspaceError> {
    let mut command = Command::new("git");
    if let Some(dir) = git_dir {
        command.arg("--git-dir").arg(dir);
    }
    let output = command
        .args(args)
        // Never wait for a password prompt: credentials come from the environment.
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(WorkspaceError::Spawn)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(WorkspaceError::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
