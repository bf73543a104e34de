//! The dispatcher's own copy of a repository's deploy branch, fetched from the canonical URL in
//! its configuration: what a scheduled drift check lists its units from, and where a drift's
//! `.drift-history.json` commit is made and pushed from. Never a checkout of anything a pull
//! request can name, and nothing in it is run: it has no work tree at all.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// git could not be started: install it on the dispatcher's machine.
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    /// The fetch failed (the URL, the credentials, the network): the next schedule tries again.
    #[error("git {args} failed: {stderr}")]
    Git { args: String, stderr: String },
    #[error("git {args} did not finish within {} s (timeouts.git)", after.as_secs())]
    Timeout { args: String, after: Duration },
}

/// Held while a sequence of git commands uses a mirror (fetch, list, commit, push): the
/// schedule and the reporter share the mirrors, and two fetches into one ref collide on its
/// lock. Mirror work is rare and short, so one lock for all of them is enough.
static MIRRORS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no one else uses a mirror; they are this caller's until the guard drops.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    MIRRORS.lock().await
}

/// A bare mirror of one repository under the dispatcher's state directory.
#[derive(Debug, Clone)]
pub struct Canonical {
    dir: PathBuf,
    url: String,
    timeout: Duration,
    /// `dispatcher.git_config`: the only git settings its git sees.
    settings: Vec<(String, String)>,
}

impl Canonical {
    /// The mirror of `repository` in `state_dir/repositories/`, fetched from `url`.
    pub fn new(state_dir: &Path, repository: &str, url: &str, timeout: Duration) -> Canonical {
        Canonical {
            dir: state_dir
                .join("repositories")
                .join(format!("{repository}.git")),
            url: url.to_owned(),
            timeout,
            settings: Vec::new(),
        }
    }

    /// The mirror of `repository` as the configuration describes it: its URL, `timeouts.git`
    /// and `dispatcher.git_config`.
    pub fn of(
        config: &config::Config,
        state_dir: &Path,
        repository: &config::Repository,
    ) -> Canonical {
        let mut canonical = Canonical::new(
            state_dir,
            &repository.name,
            &repository.url,
            config.timeouts.git(),
        );
        canonical.settings = config
            .dispatcher
            .git_config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        canonical
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fetches `branch` and returns the commit it points at.
    pub async fn fetch(&self, branch: &str) -> Result<String, CanonicalError> {
        if !self.dir.join("HEAD").is_file() {
            std::fs::create_dir_all(&self.dir).map_err(CanonicalError::Spawn)?;
            self.git(&["init", "--bare", "--quiet"]).await?;
        }
        let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        self.git(&["fetch", "--quiet", "--no-tags", &self.url, &refspec])
            .await?;
        let sha = self
            .git(&["rev-parse", &format!("refs/heads/{branch}")])
            .await?;
        Ok(sha.trim().to_owned())
    }

    /// The content of `path` at `commit`, if the file exists there.
    pub async fn read(&self, commit: &str, path: &str) -> Result<Option<String>, CanonicalError> {
        let object = format!("{commit}:{path}");
        if self.git(&["cat-file", "-e", &object]).await.is_err() {
            return Ok(None);
        }
        self.git(&["cat-file", "blob", &object]).await.map(Some)
    }

    /// Commits `files` (path, content) on top of `parent` as `author`, and pushes the commit to
    /// the canonical remote as `branch` (replacing it). Plumbing only: no work tree, no hooks.
    /// Returns the commit.
    pub async fn push_commit(
        &self,
        parent: &str,
        files: &[(String, String)],
        message: &str,
        author: (&str, &str),
        branch: &str,
    ) -> Result<String, CanonicalError> {
        let index = tempfile::NamedTempFile::new_in(&self.dir).map_err(CanonicalError::Spawn)?;
        let index_path = index.path().to_string_lossy().into_owned();
        // A fresh index, not the mirror's: two pushes at once never share one.
        let with_index = [("GIT_INDEX_FILE", index_path.as_str())];
        self.git_with(&["read-tree", parent], None, &with_index)
            .await?;
        for (path, content) in files {
            let blob = self
                .git_with(
                    &["hash-object", "-w", "--stdin"],
                    Some(content.as_bytes()),
                    &[],
                )
                .await?;
            let entry = format!("100644,{},{path}", blob.trim());
            self.git_with(
                &["update-index", "--add", "--cacheinfo", &entry],
                None,
                &with_index,
            )
            .await?;
        }
        let tree = self.git_with(&["write-tree"], None, &with_index).await?;
        let identity = [
            ("GIT_AUTHOR_NAME", author.0),
            ("GIT_AUTHOR_EMAIL", author.1),
            ("GIT_COMMITTER_NAME", author.0),
            ("GIT_COMMITTER_EMAIL", author.1),
        ];
        let commit = self
            .git_with(
                &["commit-tree", tree.trim(), "-p", parent],
                Some(message.as_bytes()),
                &identity,
            )
            .await?;
        let commit = commit.trim().to_owned();
        let refspec = format!("{commit}:refs/heads/{branch}");
        self.git(&["push", "--quiet", "--force", &self.url, &refspec])
            .await?;
        Ok(commit)
    }

    async fn git(&self, args: &[&str]) -> Result<String, CanonicalError> {
        self.git_with(args, None, &[]).await
    }

    /// Runs git on the mirror with only the dispatcher's own settings (no system or global
    /// file, no hooks, no prompts), `stdin` as its input, within the deadline.
    async fn git_with(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        env: &[(&str, &str)],
    ) -> Result<String, CanonicalError> {
        // A repository URL's user information goes to git as a setting in its environment,
        // never as an argument (`ps` shows those to every user of the host): see
        // [`config::git_credentials_apart`].
        let mut settings = self.settings.clone();
        let args = config::git_args_without_credentials(args, &mut settings);
        let shown = || {
            args.iter()
                .map(|arg| config::redact_url(arg))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut command = Command::new("git");
        command
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "protocol.ext.allow=never",
            ])
            .arg("--git-dir")
            .arg(&self.dir)
            .args(&args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            // Through the environment, not the command line, where `ps` would show them.
            .env("GIT_CONFIG_COUNT", settings.len().to_string())
            .envs(settings.iter().enumerate().flat_map(|(i, (key, value))| {
                [
                    (format!("GIT_CONFIG_KEY_{i}"), key.clone()),
                    (format!("GIT_CONFIG_VALUE_{i}"), value.clone()),
                ]
            }))
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(CanonicalError::Spawn)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            pipe.write_all(input).await.map_err(CanonicalError::Spawn)?;
        }
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| CanonicalError::Timeout {
                args: shown(),
                after: self.timeout,
            })?
            .map_err(CanonicalError::Spawn)?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if config::redact_url(&self.url) != self.url {
            stderr = stderr.replace(&self.url, &config::redact_url(&self.url));
        }
        Err(CanonicalError::Git {
            args: shown(),
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> String {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The dispatcher's git pushes with the URL's token (a drift's history): no command line
    /// on the host shows it while git waits for the server, and the server gets it as a header.
    #[tokio::test]
    async fn a_token_in_the_url_reaches_the_server_as_a_header_and_no_command_line() {
        use std::io::{Read, Write};
        let token = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let url = format!("http://x-access-token:{token}@{address}/acme/infra.git");
        let needle = token.clone();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            // git and its transport helper are waiting for this answer: read them now.
            let holding: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
                .map(|line| String::from_utf8_lossy(&line).replace('\0', " "))
                .filter(|line| line.contains(&needle))
                .collect();
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            (String::from_utf8_lossy(&head).into_owned(), holding)
        });
        let state = tempfile::tempdir().unwrap();
        let canonical = Canonical::new(state.path(), "infra", &url, Duration::from_secs(60));
        let err = canonical.fetch("main").await.unwrap_err().to_string();
        // Had git not connected, the server would wait for ever: this connection ends that.
        let _ = std::net::TcpStream::connect(address);
        let (head, holding) = server.join().unwrap();
        assert!(
            head.starts_with("GET /acme/infra.git/info/refs"),
            "{head:?}\n{err}"
        );
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("x-access-token:{token}"),
        );
        assert!(
            head.contains(&format!("Authorization: Basic {basic}")),
            "{head:?}"
        );
        assert_eq!(holding, Vec::<String>::new());
        assert!(!err.contains(&token), "{err}");
    }

    #[tokio::test]
    async fn the_mirror_follows_the_branch_and_a_bad_url_says_what_failed() {
        let origin = tempfile::tempdir().unwrap();
        let head = sh(
            origin.path(),
            "git init -q -b main . && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m one && git rev-parse HEAD",
        );
        let state = tempfile::tempdir().unwrap();
        let url = origin.path().to_str().unwrap();
        let canonical = Canonical::new(state.path(), "infra", url, Duration::from_secs(30));
        assert_eq!(canonical.fetch("main").await.unwrap(), head);
        let next = sh(
            origin.path(),
            "git -c user.name=t -c user.email=t@t commit -q --allow-empty -m two && git rev-parse HEAD",
        );
        assert_eq!(canonical.fetch("main").await.unwrap(), next);

        // A commit on top of the branch, pushed as another branch of the origin.
        assert_eq!(
            canonical
                .read(&next, "app/.drift-history.json")
                .await
                .unwrap(),
            None
        );
        let files = [("app/.drift-history.json".to_owned(), "[]\n".to_owned())];
        let commit = canonical
            .push_commit(
                &next,
                &files,
                "record drift",
                ("Pipelines", "p@example.com"),
                "drift/x",
            )
            .await
            .unwrap();
        assert_eq!(sh(origin.path(), "git rev-parse drift/x"), commit);
        assert_eq!(sh(origin.path(), "git rev-parse drift/x^"), next);
        assert_eq!(
            sh(origin.path(), "git show drift/x:app/.drift-history.json"),
            "[]"
        );
        assert_eq!(
            canonical
                .read(&commit, "app/.drift-history.json")
                .await
                .unwrap()
                .as_deref(),
            Some("[]\n")
        );

        let missing = Canonical::new(
            state.path(),
            "other",
            "https://user:s3cret@127.0.0.1:9/none.git",
            Duration::from_secs(30),
        );
        let err = missing.fetch("main").await.unwrap_err().to_string();
        assert!(err.contains("git fetch"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
