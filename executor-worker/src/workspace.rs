//! The worker's git cache and job directories: one bare mirror per repository, written only by
//! the worker's own git, and a fresh directory per job that is deleted when the job ends.
//!
//! It shells out to `git` rather than using libgit2: the git CLI already speaks every
//! transport and credential helper an operator may configure (HTTPS tokens, SSH keys,
//! proxies), and the executor host needs git for Terraform module sources anyway.
//!
//! A job runs code nobody reviewed (a pull request's providers, `data "external"`, hooks), so
//! nothing a job could have written is trusted here:
//! - the worker's git reads no configuration but what the worker gives it (no system or global
//!   config, the mirror's `config` rewritten before every use), runs no hooks
//!   (`core.hooksPath=/dev/null`), no fsmonitor, honours no `replace` refs, grafts or
//!   alternates (removed before every use), and every git command has a deadline;
//! - a job's checkout is a plain tree in its own directory (`jobs/<id>/src`, with `home`,
//!   `tmp` and `credentials` beside it), made from the mirror with a private index file, so
//!   it holds no link back to the mirror; with a tool user it belongs to that user, while the
//!   mirror stays the worker's (mode 0700);
//! - the deploy-branch check of an apply asks the canonical remote for the branch's tip
//!   (`ls-remote`) rather than trusting a ref in the mirror.
//!
//! One worker process owns its work directory (a lock file enforces it) and runs one job at a
//! time, so the mirror is never written twice at once.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::access::{Access, SEARCH, created_writable_by, writable_by};
use crate::remove_tree::remove_tree;
use config::ToolUser;
use rustix::process::{Pid, Signal};
use tokio::process::Command;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("`git {args}` did not finish within {} s (timeouts.git) and was stopped", .after.as_secs())]
    Timeout { args: String, after: Duration },
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
    #[error(
        "the tool user cannot reach the work directory: {} has mode {mode:o}{} (let it pass: o+x, g+x where its group owns the directory, and x in any ACL entry naming it or its group, see `getfacl`; or move executor.work_dir)",
        path.display(),
        if *.acl { " and an access control list that does not let it pass" } else { "" }
    )]
    Unreachable { path: PathBuf, mode: u32, acl: bool },
    #[error(
        "the tool user could move the {} aside and put its own in its place: {} {why} (a pull request's plan could then read and plant what later jobs use: make it writable by the worker only, or move executor.{})",
        what.noun(),
        path.display(),
        what.key()
    )]
    Replaceable {
        what: PrivateDir,
        path: PathBuf,
        why: String,
    },
    #[error(
        "the tool user could write into what the worker creates in the {}: {} {why} (a pull request's plan could then change what later jobs use: remove the default ACL, `setfacl -k {}`, or move executor.{})",
        what.noun(),
        path.display(),
        path.display(),
        what.key()
    )]
    OpenToCreations {
        what: PrivateDir,
        path: PathBuf,
        why: String,
    },
}

/// A directory of the worker's own that the tool user must not be able to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateDir {
    /// `executor.work_dir`: the mirrors and the jobs' directories.
    Work,
    /// `executor.log_dir`: every job's log.
    Logs,
}

impl PrivateDir {
    fn noun(self) -> &'static str {
        match self {
            PrivateDir::Work => "work directory",
            PrivateDir::Logs => "log directory",
        }
    }

    fn key(self) -> &'static str {
        match self {
            PrivateDir::Work => "work_dir",
            PrivateDir::Logs => "log_dir",
        }
    }
}

/// Creates `path` with `mode` if it is missing and, with a tool user, checks that the tool
/// user can neither move it nor any directory above it aside (see [`replaceable_by`]); the
/// canonical path it checked, to be used from then on (a symlink on the way could be turned
/// later). The work directory must also let the tool user pass to its own job's directory.
pub(crate) fn private_dir(
    path: &Path,
    mode: u32,
    what: PrivateDir,
    tools: Option<ToolUser>,
) -> Result<PathBuf, WorkspaceError> {
    create_dir(path, mode)?;
    let Some(tools) = tools else {
        return Ok(path.to_owned());
    };
    let absolute = path.canonicalize().map_err(|source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    })?;
    for dir in absolute.ancestors() {
        let access = access_of(dir)?;
        if what == PrivateDir::Work {
            reachable(dir, &access, tools)?;
        }
        if let Some(why) = replaceable_by(tools, &access) {
            return Err(WorkspaceError::Replaceable {
                what,
                path: dir.to_owned(),
                why,
            });
        }
        // What the worker creates in it (mirrors, jobs' directories, logs) gets its default
        // ACL, if it has one.
        if dir == absolute
            && let Some(why) = created_writable_by(Some(tools), &access)
        {
            return Err(WorkspaceError::OpenToCreations {
                what,
                path: dir.to_owned(),
                why,
            });
        }
    }
    Ok(absolute)
}

/// [`Access::of`] `path`, its failure named with the path.
fn access_of(path: &Path) -> Result<Access, WorkspaceError> {
    Access::of(path).map_err(|source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    })
}

/// `Err` when `tools` may not pass through `dir` (with `access`) on the way to its job's
/// directory.
fn reachable(dir: &Path, access: &Access, tools: ToolUser) -> Result<(), WorkspaceError> {
    if access.permits(tools, SEARCH) {
        return Ok(());
    }
    Err(WorkspaceError::Unreachable {
        path: dir.to_owned(),
        mode: access.mode,
        acl: access.acl.is_some(),
    })
}

/// Why `tools` could rename or replace what is in a directory with `access`: it owns it, or
/// may write into it without the sticky bit (which would keep it to its own entries), by its
/// mode or an ACL. `None`: it cannot.
fn replaceable_by(tools: ToolUser, access: &Access) -> Option<String> {
    writable_by(Some(tools), access, true)
}

/// How the worker's own git runs.
#[derive(Debug, Clone)]
pub struct GitSettings {
    /// The longest any one git command may take.
    pub timeout: Duration,
    /// Settings from `executor.git_config` (credential helpers, proxies), given to git
    /// through its environment rather than its command line, where `ps` would show them.
    pub config: BTreeMap<String, String>,
}

impl Default for GitSettings {
    fn default() -> GitSettings {
        GitSettings {
            timeout: Duration::from_secs(600),
            config: BTreeMap::new(),
        }
    }
}

/// One job's directory and its parts. Everything in it belongs to the job (and, with a tool
/// user, to that user); all of it is deleted when the job ends.
#[derive(Debug, Clone)]
pub struct JobDir {
    pub root: PathBuf,
    /// The checkout of the job's commit.
    pub src: PathBuf,
    /// The tools' `HOME`.
    pub home: PathBuf,
    /// The tools' `TMPDIR`.
    pub tmp: PathBuf,
    /// Credential files of the job (mode 0600).
    pub credentials: PathBuf,
}

impl JobDir {
    /// The layout of a job directory at `root`.
    pub fn at(root: &Path) -> JobDir {
        JobDir {
            src: root.join("src"),
            home: root.join("home"),
            tmp: root.join("tmp"),
            credentials: root.join("credentials"),
            root: root.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    git: GitSettings,
    /// Who owns job directories: the tool user, or the worker itself.
    owner: Option<ToolUser>,
    /// Held open, locked, for the worker's lifetime.
    _lock: std::sync::Arc<std::fs::File>,
}

/// The only configuration the worker's git finds in a mirror: written before every use, so
/// that a job that reached the mirror cannot leave settings for the next.
const MIRROR_CONFIG: &str =
    "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n";

/// What a job could plant in a mirror to change what the next git command does or reads:
/// hooks, grafts, alternates (objects from elsewhere), replace refs, worktrees, shallow cuts.
const MIRROR_PLANTS: &[&str] = &[
    "hooks",
    "info/grafts",
    "objects/info/alternates",
    "objects/info/http-alternates",
    "refs/replace",
    "worktrees",
    "shallow",
    "commondir",
    "FETCH_HEAD",
];

impl Workspace {
    /// Takes the work directory for this process: fails when another worker holds it.
    pub fn open(
        root: PathBuf,
        git: GitSettings,
        owner: Option<ToolUser>,
    ) -> Result<Workspace, WorkspaceError> {
        // Tools run as another user: every directory above the job's must let it pass, and
        // none may let it move the work directory aside for one of its own.
        let root = private_dir(&root, 0o711, PrivateDir::Work, owner)?;
        // Tools (as the tool user) may pass through to their own job directory, never list
        // or enter the mirrors, the logs or another job's directory.
        for (dir, mode) in [("mirrors", 0o700), ("index", 0o700), ("jobs", 0o711)] {
            create_dir(&root.join(dir), mode)?;
        }
        if let Some(tools) = owner {
            // An ACL an earlier life of the directory kept could still shut the tool user
            // out (a `chmod` leaves its entries, only narrowing them).
            let jobs = root.join("jobs");
            reachable(&jobs, &access_of(&jobs)?, tools)?;
        }
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
            git,
            owner,
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

    /// The mirror of `repository`, created if needed and scrubbed of anything a job could
    /// have planted in it.
    async fn prepared_mirror(&self, repository: &str) -> Result<PathBuf, WorkspaceError> {
        let mirror = self.mirror(repository);
        if !mirror.join("HEAD").exists() {
            // No template: no sample hooks, nothing copied from the host's git installation.
            self.git(
                None,
                &[
                    "init",
                    "--quiet",
                    "--bare",
                    "--template=",
                    &path_arg(&mirror),
                ],
            )
            .await?;
        }
        for plant in MIRROR_PLANTS {
            let path = mirror.join(plant);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    let _ = std::fs::remove_dir_all(&path);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => {}
            }
        }
        let config = mirror.join("config");
        // Replaced, never edited in place: a symlink planted there must not be followed.
        let _ = std::fs::remove_file(&config);
        std::fs::write(&config, MIRROR_CONFIG).map_err(|source| WorkspaceError::Io {
            path: config,
            source,
        })?;
        Ok(mirror)
    }

    /// Makes sure the mirror has `commit`, then checks it out into a fresh directory for the
    /// job, owned by the tool user when there is one. A directory left by an earlier attempt
    /// of the same job is replaced.
    pub async fn checkout(
        &self,
        repository: &str,
        url: &str,
        commit: &str,
        job_id: Uuid,
    ) -> Result<JobDir, WorkspaceError> {
        let mirror = self.prepared_mirror(repository).await?;
        if !self.has_commit(&mirror, commit).await {
            let mut args = vec!["fetch", "--quiet", "--prune", "--no-write-fetch-head", url];
            args.extend(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]);
            self.git(Some(&mirror), &args).await?;
        }
        if !self.has_commit(&mirror, commit).await {
            // Pull request heads live outside branches on most forges; ask for the commit
            // itself (servers allow fetching reachable commits by id).
            let fetch = ["fetch", "--quiet", "--no-write-fetch-head", url, commit];
            if let Err(err @ WorkspaceError::Timeout { .. }) = self.git(Some(&mirror), &fetch).await
            {
                return Err(err);
            }
        }
        if !self.has_commit(&mirror, commit).await {
            return Err(WorkspaceError::MissingCommit {
                commit: commit.to_owned(),
                url: config::redact_url(url),
            });
        }

        let job = self.job_dir(job_id);
        if job.root.exists() {
            self.remove(&job).await;
        }
        create_dir(&job.root, 0o700)?;
        for dir in [&job.src, &job.home, &job.tmp, &job.credentials] {
            create_dir(dir, 0o700)?;
        }
        // A private index: the mirror itself is only read.
        let index = self.root.join("index").join(format!("{job_id}.idx"));
        let index_env = [("GIT_INDEX_FILE", index.as_os_str())];
        let result = async {
            self.git_with(Some(&mirror), &["read-tree", commit], &index_env)
                .await?;
            let work_tree = format!("--work-tree={}", path_arg(&job.src));
            let checkout = [work_tree.as_str(), "checkout-index", "--all", "--force"];
            self.git_with(Some(&mirror), &checkout, &index_env).await?;
            // An empty repository of the job's own, so that tools asking git for the
            // repository root (Terragrunt's get_repo_root) find the checkout.
            self.git(
                None,
                &["init", "--quiet", "--template=", &path_arg(&job.src)],
            )
            .await
        }
        .await;
        let _ = std::fs::remove_file(&index);
        result?;
        if let Some(owner) = self.owner {
            give_tree(&job.root, owner).map_err(|source| WorkspaceError::Io {
                path: job.root.clone(),
                source,
            })?;
        }
        Ok(job)
    }

    /// Whether each of `commits` is reachable from `branch` of the repository at `url`, as
    /// the canonical remote says now: `Ok(Ok(tip))` when all are, `Ok(Err(reason))` when one
    /// is not. The branch's tip comes from the remote itself (`ls-remote`); what the
    /// dispatcher, the event or the mirror's refs claim plays no part.
    pub async fn verify_on_branch(
        &self,
        repository: &str,
        url: &str,
        branch: &str,
        commits: &[&str],
    ) -> Result<Result<String, String>, WorkspaceError> {
        let mirror = self.prepared_mirror(repository).await?;
        let head = format!("refs/heads/{branch}");
        let listed = self
            .git(None, &["ls-remote", "--heads", url, &head])
            .await?;
        let Some(tip) = listed
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(_, name)| *name == head)
            .map(|(sha, _)| sha.to_owned())
        else {
            return Ok(Err(format!(
                "branch {branch:?} does not exist in {repository} (as listed by {})",
                config::redact_url(url)
            )));
        };
        if !self.has_commit(&mirror, &tip).await {
            let refspec = format!("+{head}:refs/pipelines/verified/{branch}");
            let fetch = ["fetch", "--quiet", "--no-write-fetch-head", url, &refspec];
            self.git(Some(&mirror), &fetch).await?;
        }
        if !self.has_commit(&mirror, &tip).await {
            // The branch moved between the listing and the fetch: take the listed tip itself.
            let fetch = ["fetch", "--quiet", "--no-write-fetch-head", url, &tip];
            self.git(Some(&mirror), &fetch).await?;
        }
        for commit in commits {
            let ancestor = self
                .git(
                    Some(&mirror),
                    &["merge-base", "--is-ancestor", commit, &tip],
                )
                .await;
            match ancestor {
                Ok(_) => {}
                Err(err @ WorkspaceError::Timeout { .. }) => return Err(err),
                Err(_) => {
                    return Ok(Err(format!(
                        "commit {commit} is not on branch {branch:?} of {repository} (tip {tip} as listed by {})",
                        config::redact_url(url)
                    )));
                }
            }
        }
        Ok(Ok(tip))
    }

    /// The files that make `unit` a unit at `commit` (`terragrunt.hcl`, `pipelines.hcl`, or
    /// `.tf` and `.tofu` files directly in its directory): none where it is no unit. The
    /// commit must be in the repository's mirror ([`Workspace::verify_on_branch`] fetched it).
    pub async fn unit_files(
        &self,
        repository: &str,
        commit: &str,
        unit: &str,
    ) -> Result<Vec<String>, WorkspaceError> {
        let mirror = self.prepared_mirror(repository).await?;
        let directory = format!("{}/", unit.trim_end_matches('/'));
        let literal = std::ffi::OsStr::new("1");
        let listed = self
            .git_with(
                Some(&mirror),
                // NUL-separated: without -z, git quotes a path with other than plain ASCII
                // (`"dev/caf\303\251/main.tf"`), which no prefix matches.
                &["ls-tree", "-z", "--name-only", commit, "--", &directory],
                // The unit is a path, never a pattern or a magic pathspec.
                &[("GIT_LITERAL_PATHSPECS", literal)],
            )
            .await?;
        Ok(listed
            .split('\0')
            .filter_map(|path| path.strip_prefix(&directory))
            .filter(|name| {
                matches!(*name, "terragrunt.hcl" | "pipelines.hcl")
                    || name.ends_with(".tf")
                    || name.ends_with(".tofu")
            })
            .map(str::to_owned)
            .collect())
    }

    /// Where the job's directory is (whether or not it exists).
    pub fn job_dir(&self, job_id: Uuid) -> JobDir {
        JobDir::at(&self.root.join("jobs").join(job_id.to_string()))
    }

    /// Removes a job's directory, however deep its tools nested theirs. Best effort: a
    /// leftover directory is tried again before the next job, and a later one never reads it
    /// (each job has a directory of its own).
    pub async fn remove(&self, job: &JobDir) {
        let root = job.root.clone();
        let removed = tokio::task::spawn_blocking(move || remove_tree(&root)).await;
        if let Ok(Err(err)) = removed
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %job.root.display(), error = %err, "Cannot remove a job's directory; trying again before the next job.");
        }
    }

    /// Removes every job directory: before a job starts, any is a leftover of one that was
    /// dropped (the broker went away mid-job) or of a worker that was killed, and holds what
    /// that job's tools wrote (its checkout, plan and credential files). How many went.
    pub async fn remove_leftover_jobs(&self) -> usize {
        let Ok(mut jobs) = tokio::fs::read_dir(self.root.join("jobs")).await else {
            return 0;
        };
        let mut removed = 0;
        while let Ok(Some(job)) = jobs.next_entry().await {
            let dir = job.path();
            match tokio::task::spawn_blocking(move || remove_tree(&dir)).await {
                Ok(Ok(())) => removed += 1,
                Ok(Err(err)) => {
                    tracing::warn!(dir = %job.path().display(), error = %err, "Cannot remove a directory an earlier job left.");
                }
                Err(_) => {}
            }
        }
        removed
    }

    async fn has_commit(&self, mirror: &Path, commit: &str) -> bool {
        let object = format!("{commit}^{{commit}}");
        self.git(Some(mirror), &["cat-file", "-e", &object])
            .await
            .is_ok()
    }

    async fn git(&self, git_dir: Option<&Path>, args: &[&str]) -> Result<String, WorkspaceError> {
        self.git_with(git_dir, args, &[]).await
    }

    /// Runs the worker's git with `args`, within the git deadline, and its stdout.
    async fn git_with(
        &self,
        git_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<String, WorkspaceError> {
        // A repository URL's user information goes to git as a setting in its environment,
        // never as an argument: see [`config::git_credentials_apart`].
        let mut settings: Vec<(String, String)> = self
            .git
            .config
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let args = config::git_args_without_credentials(args, &mut settings);
        let mut command = Command::new("git");
        // Only the worker's settings: no system or global file (a job running as the worker
        // could write ~/.gitconfig), no hooks, no fsmonitor, no replace refs, no prompts.
        crate::without_worker_settings(&mut command)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
            ])
            .args(["-c", "protocol.ext.allow=never"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_COUNT", settings.len().to_string());
        for (i, (key, value)) in settings.iter().enumerate() {
            command
                .env(format!("GIT_CONFIG_KEY_{i}"), key)
                .env(format!("GIT_CONFIG_VALUE_{i}"), value);
        }
        if let Some(dir) = git_dir {
            command.arg("--git-dir").arg(dir);
        }
        command
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout stops git and the transport helpers it started.
            .process_group(0)
            .kill_on_drop(true);
        let shown = || {
            args.iter()
                .map(|arg| config::redact_url(arg))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let child = command.spawn().map_err(WorkspaceError::Spawn)?;
        let group = child.id().and_then(|id| Pid::from_raw(id as i32));
        let output = match tokio::time::timeout(self.git.timeout, child.wait_with_output()).await {
            Ok(output) => output.map_err(WorkspaceError::Spawn)?,
            Err(_elapsed) => {
                if let Some(group) = group {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                }
                return Err(WorkspaceError::Timeout {
                    args: shown(),
                    after: self.git.timeout,
                });
            }
        };
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            for arg in &args {
                let redacted = config::redact_url(arg);
                if redacted != *arg {
                    stderr = stderr.replace(arg, &redacted);
                }
            }
            Err(WorkspaceError::Git {
                args: shown(),
                stderr,
            })
        }
    }
}

/// Creates `path` (and its parents) and gives it `mode`.
pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<(), WorkspaceError> {
    let io = |source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Hands a directory tree to `owner`, never following a symlink out of it. Depth first, each
/// directory after what it holds: every directory on the path being walked is still root's,
/// so that even a process of `owner` could not swap one for a symbolic link and turn a path
/// of the walk into one outside the tree (`lchown` does not follow the last part of a path,
/// but does follow the ones before it).
fn give_tree(path: &Path, owner: ToolUser) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_tree(&entry?.path(), owner)?;
        }
    }
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_given_whole_and_nothing_a_link_in_it_points_to() {
        use std::os::unix::fs::MetadataExt;
        let owner = ToolUser {
            uid: 61_022,
            gid: 61_022,
        };
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "x").unwrap();
        let job = root.path().join("job");
        std::fs::create_dir_all(job.join("src/modules/a")).unwrap();
        std::fs::write(job.join("src/main.tf"), "").unwrap();
        std::fs::write(job.join("src/modules/a/main.tf"), "").unwrap();
        std::os::unix::fs::symlink(outside.path(), job.join("src/escape")).unwrap();

        give_tree(&job, owner).expect("chown (the tests run as root)");

        for path in [
            "",
            "src",
            "src/main.tf",
            "src/modules",
            "src/modules/a",
            "src/modules/a/main.tf",
            "src/escape",
        ] {
            let meta = std::fs::symlink_metadata(job.join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (61_022, 61_022), "{path:?}");
        }
        for path in [outside.path().to_owned(), outside.path().join("precious")] {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.uid(), 0, "{} was given away", path.display());
        }
    }

    #[test]
    fn a_work_directory_the_tool_user_could_move_aside_is_named_with_why() {
        let tools = ToolUser {
            uid: 61001,
            gid: 61001,
        };
        let bits = |uid, gid, mode| replaceable_by(tools, &Access::bits(uid, gid, mode));
        // A Kubernetes emptyDir: root's, 0777, no sticky bit.
        let why = bits(0, 0, 0o777).unwrap();
        assert_eq!(why, "has mode 777: anyone may write into it");
        assert!(
            bits(61001, 0, 0o700)
                .unwrap()
                .contains("owned by the tool user")
        );
        let group = bits(0, 61001, 0o775).unwrap();
        assert!(group.contains("the tool user's group (61001)"), "{group}");
        // The sticky bit (/tmp) keeps each user to its own entries; others' groups don't count.
        for (uid, gid, mode) in [(0, 0, 0o1777), (0, 0, 0o755), (0, 0, 0o711), (0, 5, 0o775)] {
            assert_eq!(bits(uid, gid, mode), None, "{mode:o}");
        }
    }

    #[tokio::test]
    async fn directories_of_earlier_jobs_are_removed_and_the_rest_of_the_workspace_kept() {
        let root = tempfile::tempdir().unwrap();
        let workspace =
            Workspace::open(root.path().join("work"), GitSettings::default(), None).unwrap();
        let dropped = workspace.job_dir(Uuid::new_v4());
        std::fs::create_dir_all(dropped.root.join("src/unit")).unwrap();
        std::fs::write(dropped.root.join("src/unit/tfplan"), "plan").unwrap();
        std::fs::create_dir_all(workspace.job_dir(Uuid::new_v4()).root).unwrap();
        std::fs::create_dir_all(workspace.root().join("mirrors/infra.git")).unwrap();
        assert_eq!(workspace.remove_leftover_jobs().await, 2);
        assert_eq!(
            std::fs::read_dir(workspace.root().join("jobs"))
                .unwrap()
                .count(),
            0
        );
        assert!(workspace.root().join("mirrors/infra.git").is_dir());
        assert_eq!(workspace.remove_leftover_jobs().await, 0);
    }

    #[test]
    fn a_log_directory_the_tool_user_could_move_aside_is_refused_naming_log_dir() {
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let tools = ToolUser {
            uid: 61001,
            gid: 61001,
        };
        let logs = open.path().join("logs");
        let refused = private_dir(&logs, 0o700, PrivateDir::Logs, Some(tools))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("could move the log directory aside")
                && refused.contains(&format!("{} has mode 777", open.path().display()))
                && refused.contains("executor.log_dir"),
            "{refused}"
        );
        // The tool user never needs to reach the logs: a parent closed to it is fine there,
        // where the work directory would be unreachable.
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let used = private_dir(&logs, 0o700, PrivateDir::Logs, Some(tools)).unwrap();
        assert_eq!(used, logs.canonicalize().unwrap());
        assert!(matches!(
            private_dir(
                &open.path().join("work"),
                0o711,
                PrivateDir::Work,
                Some(tools)
            ),
            Err(WorkspaceError::Unreachable { .. })
        ));
        // Without a tool user nothing is checked.
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            private_dir(&logs, 0o700, PrivateDir::Logs, None).unwrap(),
            logs
        );
    }

    #[test]
    fn a_private_directory_an_acl_opens_to_the_tool_user_is_refused() {
        use crate::access::tests::{
            GROUP, MASK, NOBODY, OTHER, OWNER, OWNING_GROUP, USER, set_acl, user_may_write,
        };
        let parent = tempfile::tempdir().unwrap();
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let tools = ToolUser {
            uid: 61025,
            gid: 61025,
        };
        let logs = parent.path().join("logs");
        private_dir(&logs, 0o700, PrivateDir::Logs, Some(tools)).unwrap();

        // `setfacl -m u:61025:rwx` on the parent: its mode reads 775, and the tool user could
        // rename the log directory.
        set_acl(parent.path(), false, &user_may_write(tools.uid));
        let refused = private_dir(&logs, 0o700, PrivateDir::Logs, Some(tools))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("could move the log directory aside")
                && refused.contains(&format!(
                    "{} has mode 775 and an access control list that lets the tool user (61025) write into it",
                    parent.path().display()
                )),
            "{refused}"
        );
        // The mask without write (`chmod 755`) takes the entry's write away.
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&logs, 0o700, PrivateDir::Logs, Some(tools)).unwrap();

        // An ACL entry naming the tool user without execute: others may pass, it may not, so
        // the work directory would be out of its reach.
        let shut_out = [
            (OWNER, 7, NOBODY),
            (USER, 0, tools.uid),
            (OWNING_GROUP, 5, NOBODY),
            (MASK, 5, NOBODY),
            (OTHER, 1, NOBODY),
        ];
        set_acl(parent.path(), false, &shut_out);
        let unreachable = private_dir(
            &parent.path().join("work"),
            0o711,
            PrivateDir::Work,
            Some(tools),
        )
        .unwrap_err()
        .to_string();
        assert!(
            unreachable.contains(&format!(
                "cannot reach the work directory: {} has mode 751 and an access control list that does not let it pass",
                parent.path().display()
            )),
            "{unreachable}"
        );
        rustix::fs::removexattr(parent.path(), "system.posix_acl_access").unwrap();
        // And so on the work directory itself, whose own `chmod 711` leaves such an entry
        // shut.
        let work = parent.path().join("work");
        set_acl(&work, false, &shut_out);
        let unreachable = private_dir(&work, 0o711, PrivateDir::Work, Some(tools))
            .unwrap_err()
            .to_string();
        assert!(
            unreachable.contains(&format!(
                "{} has mode 711 and an access control list",
                work.display()
            )),
            "{unreachable}"
        );

        // A default ACL on the log directory itself: every job's log created in it would be
        // the tool user's to write.
        set_acl(
            &logs,
            true,
            &[
                (OWNER, 7, NOBODY),
                (OWNING_GROUP, 0, NOBODY),
                (GROUP, 7, tools.gid),
                (MASK, 7, NOBODY),
                (OTHER, 0, NOBODY),
            ],
        );
        let refused = private_dir(&logs, 0o700, PrivateDir::Logs, Some(tools))
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with(&format!(
                "the tool user could write into what the worker creates in the log directory: {} has a default access control list that lets the tool user (61025) write into what is created in it",
                logs.display()
            )) && refused.contains("setfacl -k"),
            "{refused}"
        );
    }

    #[test]
    fn a_worker_with_a_tool_user_refuses_a_work_directory_anyone_may_replace() {
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let tools = ToolUser {
            uid: 61001,
            gid: 61001,
        };
        let refused = Workspace::open(
            open.path().join("work"),
            GitSettings::default(),
            Some(tools),
        );
        match refused {
            Err(err @ WorkspaceError::Replaceable { .. }) => {
                let text = err.to_string();
                assert!(
                    text.contains(&format!("{} has mode 777", open.path().display())),
                    "{text}"
                );
            }
            other => panic!("{:?}", other.map(|w| w.root().to_owned())),
        }
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Workspace::open(
            open.path().join("work"),
            GitSettings::default(),
            Some(tools),
        )
        .unwrap();
    }

    fn sh(dir: &Path, script: &str) -> String {
        let output = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "{script}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A repository with one commit on `main` and one on `feature`; their ids.
    fn origin(dir: &Path) -> (String, String) {
        sh(
            dir,
            "git init -q -b main origin && cd origin && mkdir -p dev/app && echo 1 > dev/app/main.tf \
             && git add -A && git -c user.name=t -c user.email=t@t commit -qm one \
             && git checkout -q -b feature && echo 2 > dev/app/main.tf \
             && git -c user.name=t -c user.email=t@t commit -qam two && git checkout -q main",
        );
        let main = sh(&dir.join("origin"), "git rev-parse main");
        let feature = sh(&dir.join("origin"), "git rev-parse feature");
        (main, feature)
    }

    /// What makes a directory a unit at a commit, as the destroy check reads it: its own
    /// files only, and the unit's path taken literally, never as a pattern.
    #[tokio::test]
    async fn a_units_files_are_those_directly_in_its_directory_at_that_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (main, feature) = origin(dir.path());
        sh(
            &dir.path().join("origin"),
            "git checkout -q feature && mkdir -p dev/tg 'dev/café \"x\"' && touch dev/tg/terragrunt.hcl \
             dev/tg/README.md 'dev/café \"x\"/main.tf' && git add -A \
             && git -c user.name=t -c user.email=t@t commit -qm three && git checkout -q main",
        );
        let feature_now = sh(&dir.path().join("origin"), "git rev-parse feature");
        let url = dir.path().join("origin").display().to_string();
        let workspace =
            Workspace::open(dir.path().join("work"), GitSettings::default(), None).unwrap();
        let verified = workspace
            .verify_on_branch("infra", &url, "feature", &[&main, &feature])
            .await
            .unwrap();
        assert_eq!(verified, Ok(feature_now.clone()));
        let files = |commit: String, unit: &'static str| {
            let workspace = &workspace;
            async move { workspace.unit_files("infra", &commit, unit).await.unwrap() }
        };
        assert_eq!(files(main.clone(), "dev/app").await, ["main.tf"]);
        assert_eq!(
            files(feature_now.clone(), "dev/tg").await,
            ["terragrunt.hcl"]
        );
        assert_eq!(files(main.clone(), "dev/tg").await, Vec::<String>::new());
        assert_eq!(files(main.clone(), "dev").await, Vec::<String>::new());
        // A path git would quote: read as it is.
        assert_eq!(files(feature_now, "dev/café \"x\"").await, ["main.tf"]);
        assert_eq!(files(main, "dev/café \"x\"").await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_planted_hook_config_or_alternate_never_reaches_the_next_git_command() {
        let dir = tempfile::tempdir().unwrap();
        let (main, feature) = origin(dir.path());
        let url = dir.path().join("origin").display().to_string();
        let workspace =
            Workspace::open(dir.path().join("work"), GitSettings::default(), None).unwrap();
        let job = workspace
            .checkout("infra", &url, &main, Uuid::new_v4())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(job.src.join("dev/app/main.tf")).unwrap(),
            "1\n"
        );
        assert!(
            job.src.join(".git").is_dir(),
            "an empty repository of its own"
        );
        workspace.remove(&job).await;
        assert!(!job.root.exists());

        // What a job running as the worker could leave behind in the mirror.
        let mirror = workspace.mirror("infra");
        let marker = dir.path().join("hook-ran");
        for hook in [
            "post-checkout",
            "reference-transaction",
            "pre-auto-gc",
            "post-merge",
        ] {
            let path = mirror.join("hooks").join(hook);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(
            mirror.join("config"),
            format!(
                "[core]\n\tbare = true\n\thooksPath = {0}\n\tfsmonitor = {0}/fsmonitor\n[url \"/nonexistent/\"]\n\tinsteadOf = {url}\n",
                mirror.join("hooks").display()
            ),
        )
        .unwrap();
        std::fs::write(
            mirror.join("objects/info/alternates"),
            "/nonexistent/objects\n",
        )
        .unwrap();

        let verified = workspace
            .verify_on_branch("infra", &url, "main", &[&main])
            .await
            .unwrap();
        assert_eq!(verified, Ok(main.clone()));
        let refused = workspace
            .verify_on_branch("infra", &url, "main", &[&feature])
            .await
            .unwrap()
            .unwrap_err();
        assert!(refused.contains("is not on branch \"main\""), "{refused}");
        let job = workspace
            .checkout("infra", &url, &feature, Uuid::new_v4())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(job.src.join("dev/app/main.tf")).unwrap(),
            "2\n"
        );
        assert!(!marker.exists(), "a planted hook ran");
        assert_eq!(
            std::fs::read_to_string(mirror.join("config")).unwrap(),
            MIRROR_CONFIG
        );
        assert!(!mirror.join("hooks").exists());
        assert!(!mirror.join("objects/info/alternates").exists());
    }

    #[tokio::test]
    async fn a_git_server_that_never_answers_fails_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/infra.git", listener.local_addr().unwrap());
        let git = GitSettings {
            timeout: Duration::from_secs(2),
            config: BTreeMap::new(),
        };
        let workspace = Workspace::open(dir.path().join("work"), git, None).unwrap();
        let err = workspace
            .checkout("infra", &url, &"a".repeat(40), Uuid::new_v4())
            .await
            .unwrap_err();
        assert!(matches!(err, WorkspaceError::Timeout { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("did not finish within 2 s (timeouts.git)"),
            "{err}"
        );
        drop(listener);
    }

    /// The command lines of every process on the host that hold any of `needles`.
    fn command_lines_holding(needles: &[&str]) -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
            .map(|line| String::from_utf8_lossy(&line).replace('\0', " "))
            .filter(|line| needles.iter().any(|needle| line.contains(needle)))
            .collect()
    }

    #[tokio::test]
    async fn a_token_in_the_url_reaches_the_server_as_a_header_and_no_command_line() {
        use base64::Engine;
        use std::io::{Read, Write};
        let token = format!("s3cr%2Ft-{}", Uuid::new_v4().simple());
        let decoded = token.replace("%2F", "/");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let url = format!("http://x-access-token:{token}@{address}/acme/infra.git");
        // The server reads git's first request and, while git and its transport helper wait
        // for the answer, reads every command line on the host.
        let needles = [token.clone(), decoded.clone()];
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
            let holding = command_lines_holding(&needles);
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            (String::from_utf8_lossy(&head).into_owned(), holding)
        });
        let dir = tempfile::tempdir().unwrap();
        let git = GitSettings {
            timeout: Duration::from_secs(60),
            config: BTreeMap::new(),
        };
        let workspace = Workspace::open(dir.path().join("work"), git, None).unwrap();
        let err = workspace
            .verify_on_branch("infra", &url, "main", &[])
            .await
            .unwrap_err()
            .to_string();
        // Had git not connected, the server would wait for ever: this connection ends that.
        let _ = std::net::TcpStream::connect(address);
        let (head, holding) = server.join().unwrap();
        assert!(
            head.starts_with("GET /acme/infra.git/info/refs"),
            "{head:?}\n{err}"
        );
        let header = format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{decoded}"))
        );
        assert!(head.contains(&header), "{head:?}");
        assert_eq!(holding, Vec::<String>::new());
        assert!(!err.contains(&decoded) && !err.contains(&token), "{err}");
    }

    #[tokio::test]
    async fn errors_never_show_a_token_in_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let workspace =
            Workspace::open(dir.path().join("work"), GitSettings::default(), None).unwrap();
        let url = "https://x-access-token:ghs_secret123@127.0.0.1:1/acme/infra.git";
        let err = workspace
            .checkout("infra", url, &"a".repeat(40), Uuid::new_v4())
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains("ghs_secret123"), "{err}");
        assert!(err.contains("127.0.0.1:1/acme/infra.git"), "{err}");
    }
}
