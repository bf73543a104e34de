//! A test's private world: a temporary directory holding a git repository, terraform state,
//! logs and the policy file, and the `pipelines` command set up to run in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use dispatcher::store::{ScratchDatabase, StoreLocation};
use tempfile::TempDir;

use crate::git::Repo;

#[derive(Debug)]
pub struct Sandbox {
    pub root: TempDir,
    /// The infrastructure repository, named `infra` in every policy file written here.
    pub repo: Repo,
    /// The PostgreSQL database of its own the dispatchers use; `None`: SQLite in
    /// [`Self::dispatcher_state_dir`].
    postgres: Option<ScratchDatabase>,
}

/// The run database a sandbox's dispatchers keep their runs in: tests of the dispatcher run
/// once on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A failed test keeps its world (logs, job logs, state, the dispatcher's database) for
/// inspection, and says where it is.
impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.root.disable_cleanup(true);
            eprintln!(
                "the test failed: its files are kept in {}",
                self.root.path().display()
            );
        }
    }
}

impl Default for Sandbox {
    fn default() -> Sandbox {
        Sandbox::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let root = tempfile::Builder::new()
            .prefix("pipelines-e2e-")
            .tempdir()
            .unwrap();
        Sandbox {
            root,
            repo: Repo::new(),
            postgres: None,
        }
    }

    /// A sandbox whose dispatchers keep their runs in `engine` (PostgreSQL: a database of its
    /// own on the local server, dropped with the sandbox).
    pub fn with_engine(engine: Engine) -> Sandbox {
        let mut sandbox = Sandbox::new();
        if engine == Engine::Postgres {
            sandbox.postgres =
                Some(ScratchDatabase::create().unwrap_or_else(|err| panic!("{err}")));
        }
        sandbox
    }

    /// A sandbox whose dispatchers keep their runs in a database of its own on the
    /// PostgreSQL server at `server` (a URL ending in `/database`).
    pub fn on_postgres_server(server: &str) -> Sandbox {
        let mut sandbox = Sandbox::new();
        sandbox.postgres =
            Some(ScratchDatabase::create_on(server).unwrap_or_else(|err| panic!("{err}")));
        sandbox
    }

    /// Where the dispatchers of this sandbox keep their runs.
    pub fn store_location(&self) -> StoreLocation {
        match &self.postgres {
            Some(database) => database.location().clone(),
            None => StoreLocation::state_dir(&self.dispatcher_state_dir()),
        }
    }

    /// What points `pipelines status` (and `drift status`) at that database: the state
    /// directory, or the policy file that names the PostgreSQL database.
    pub fn store_args(&self) -> Vec<String> {
        match &self.postgres {
            Some(_) => vec![
                "--config".into(),
                self.root
                    .path()
                    .join("pipelines.toml")
                    .display()
                    .to_string(),
            ],
            None => vec![
                "--state-dir".into(),
                self.dispatcher_state_dir().display().to_string(),
            ],
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Where units keep their terraform state (outside the repository).
    pub fn state_dir(&self) -> PathBuf {
        self.dir("state")
    }

    /// `<root>/<name>`, created.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The dispatcher's state directory (its run database).
    pub fn dispatcher_state_dir(&self) -> PathBuf {
        self.root.path().join("dispatcher")
    }

    /// Writes the policy file: this repository as `infra` deploying from `main`, one account per
    /// `(name, glob)`, the dispatcher's state in [`Self::dispatcher_state_dir`] (and its runs in
    /// the sandbox's PostgreSQL database, if it has one), then `extra` (more TOML sections).
    pub fn write_config(
        &self,
        broker_url: &str,
        accounts: &[(&str, &str)],
        extra: &str,
    ) -> PathBuf {
        let accounts: String = accounts
            .iter()
            .map(|(name, glob)| {
                format!("[[accounts]]\nname = \"{name}\"\npaths = [\"{glob}\"]\n\n")
            })
            .collect();
        self.write_config_with(broker_url, &accounts, extra)
    }

    /// Like [`Self::write_config`], with the `[[accounts]]` tables given as TOML.
    pub fn write_config_with(&self, broker_url: &str, accounts: &str, extra: &str) -> PathBuf {
        let path = self.root.path().join("pipelines.toml");
        let store = match &self.postgres {
            Some(database) => format!("store = \"{}\"\n", database.url()),
            None => String::new(),
        };
        let text = format!(
            "broker_url = \"{broker_url}\"\n\n[[repositories]]\nname = \"infra\"\nurl = \"{}\"\ndeploy_branch = \"main\"\n\n\
             {accounts}\n[dispatcher]\nstate_dir = \"{}\"\n{store}{extra}",
            self.repo.path().display(),
            self.dispatcher_state_dir().display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `pipelines SUBCOMMAND --repo <this repo> --base BASE --head HEAD --event EVENT EXTRA...`
    /// with the Terraform environment set.
    pub fn pipelines_on_range(
        &self,
        subcommand: &str,
        base: &str,
        head: &str,
        event: &str,
        extra: &[&str],
    ) -> Command {
        let repo = self.repo.path().to_str().expect("UTF-8 temp path");
        let mut args = vec![
            subcommand, "--repo", repo, "--base", base, "--head", head, "--event", event,
        ];
        args.extend_from_slice(extra);
        self.pipelines(&args)
    }

    /// `pipelines ARGS` with the Terraform environment set.
    pub fn pipelines(&self, args: &[&str]) -> Command {
        pipelines_in(self.root.path(), args)
    }
}

/// `pipelines ARGS` with the Terraform environment of the sandbox at `root`.
pub fn pipelines_in(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(crate::pipelines_binary());
    command
        .args(args)
        .envs(crate::terraform_env(root))
        .env("RUST_LOG", "info");
    command
}
