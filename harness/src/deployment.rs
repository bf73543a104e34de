//! A deployment as separate OS processes from the built binary: one dispatcher and executor
//! workers per account and role, each logging to its own file; killed on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{self, Service};
use crate::sandbox::pipelines_in;

#[derive(Debug)]
pub struct Deployment {
    root: PathBuf,
    config: PathBuf,
    logs: PathBuf,
    dispatcher: Option<Service>,
    /// Every dispatcher process started so far (restarts log to new files).
    dispatcher_logs: Vec<PathBuf>,
    executors: Vec<Service>,
    /// Extra environment for executors (and so for the IaC tools they run).
    executor_env: Vec<(String, String)>,
    /// Extra environment for every service.
    env: Vec<(String, String)>,
}

impl Deployment {
    /// Declares the topology, then starts a dispatcher and, per `(account, count)`, that many
    /// apply workers named `<account>-<i>` and as many plan workers named `<account>-plan-<i>`.
    pub fn start(root: &Path, config: &Path, executors: &[(&str, usize)]) -> Deployment {
        Deployment::start_with_executor_env(root, config, executors, &[])
    }

    /// Like [`Self::start`], with `env` set for every executor.
    pub fn start_with_executor_env(
        root: &Path,
        config: &Path,
        executors: &[(&str, usize)],
        env: &[(&str, &str)],
    ) -> Deployment {
        Deployment::start_with_env(root, config, executors, &[], env)
    }

    /// Like [`Self::start`], with `env` set for every service and `executor_env` for executors.
    pub fn start_with_env(
        root: &Path,
        config: &Path,
        executors: &[(&str, usize)],
        env: &[(&str, &str)],
        executor_env: &[(&str, &str)],
    ) -> Deployment {
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let config_arg = config.to_str().unwrap();
        let setup = process::run(
            pipelines_in(root, &["broker", "setup", "--config", config_arg]),
            Duration::from_secs(60),
        );
        assert_eq!(setup.code(), Some(0), "{}", setup.transcript());
        let logs = root.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut deployment = Deployment {
            root: root.to_owned(),
            config: config.to_owned(),
            logs,
            dispatcher: None,
            dispatcher_logs: Vec::new(),
            executors: Vec::new(),
            executor_env: owned(executor_env),
            env: owned(env),
        };
        deployment.start_dispatcher();
        for (account, count) in executors {
            for i in 1..=*count {
                deployment.start_executor(account, &format!("{account}-{i}"));
                deployment
                    .start_executor(&format!("{account}:plan"), &format!("{account}-plan-{i}"));
            }
        }
        deployment
    }

    /// Starts a dispatcher (again, after [`Self::kill_dispatcher`]).
    pub fn start_dispatcher(&mut self) {
        assert!(self.dispatcher.is_none(), "a dispatcher is already running");
        let name = format!("dispatcher-{}", self.dispatcher_logs.len() + 1);
        let mut command = pipelines_in(
            &self.root,
            &["dispatch", "--config", self.config.to_str().unwrap()],
        );
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let service = Service::start(&name, command, &self.logs);
        self.dispatcher_logs.push(service.log.clone());
        self.dispatcher = Some(service);
    }

    /// Starts one more dispatcher beside the running one, named `name`, with the same policy
    /// file and environment (sharing a PostgreSQL database, it stands by while the other
    /// leads). The caller owns it.
    pub fn start_another_dispatcher(&self, name: &str) -> Service {
        let mut command = pipelines_in(
            &self.root,
            &["dispatch", "--config", self.config.to_str().unwrap()],
        );
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        Service::start(name, command, &self.logs)
    }

    /// Hands the running dispatcher over to the caller (to stop, resume or watch it exit).
    pub fn take_dispatcher(&mut self) -> Service {
        self.dispatcher.take().expect("a dispatcher is running")
    }

    /// `kill -9` the dispatcher: no chance to finish anything.
    pub fn kill_dispatcher(&mut self) {
        let mut dispatcher = self.dispatcher.take().expect("a dispatcher is running");
        dispatcher.kill();
    }

    /// The running dispatcher's process id.
    pub fn dispatcher_pid(&self) -> u32 {
        self.dispatcher
            .as_ref()
            .expect("a dispatcher is running")
            .pid()
    }

    /// The process id of the executor named `name`.
    pub fn executor_pid(&self, name: &str) -> u32 {
        self.executors
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no executor {name}"))
            .pid()
    }

    /// `kill -9` the executor named `name` and forget it.
    pub fn kill_executor(&mut self, name: &str) {
        self.forget_executor(name).kill();
    }

    /// Starts an executor of `worker`: `ACCOUNT` for an apply worker, `ACCOUNT:plan` for a
    /// plan worker.
    pub fn start_executor(&mut self, worker: &str, name: &str) {
        self.start_executor_with(worker, name, &[]);
    }

    /// Starts an executor with `env` on top of the deployment's.
    pub fn start_executor_with(&mut self, worker: &str, name: &str, env: &[(&str, &str)]) {
        let (account, role) = worker.split_once(':').unwrap_or((worker, "apply"));
        let work_dir = self.root.join("work").join(name);
        std::fs::create_dir_all(&work_dir).unwrap();
        let mut command = pipelines_in(
            &self.root,
            &[
                "execute",
                "--config",
                self.config.to_str().unwrap(),
                "--account",
                account,
                "--role",
                role,
                "--work-dir",
                work_dir.to_str().unwrap(),
                "--name",
                name,
            ],
        );
        command.envs(
            self.env
                .iter()
                .chain(&self.executor_env)
                .map(|(k, v)| (k, v)),
        );
        command.envs(env.iter().copied());
        self.executors
            .push(Service::start(name, command, &self.logs));
    }

    /// Every dispatcher's log, oldest first.
    pub fn dispatcher_log(&self) -> String {
        self.dispatcher_logs
            .iter()
            .map(|path| std::fs::read_to_string(path).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn executor_log(&self, name: &str) -> String {
        self.executors
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no executor {name}"))
            .log_text()
    }

    /// The executor process named `name`.
    pub fn executor(&mut self, name: &str) -> &mut Service {
        self.executors
            .iter_mut()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no executor {name}"))
    }

    /// Where the executor named `name` keeps its checkouts (its tools run below it).
    pub fn work_dir(&self, name: &str) -> PathBuf {
        self.root.join("work").join(name)
    }

    /// SIGTERM the executor; fails unless it drains and exits with 0 in time. It is then
    /// forgotten.
    pub fn drain_executor(&mut self, name: &str) {
        let executor = self.executor(name);
        executor.terminate();
        let exit = executor.wait_exit(std::time::Duration::from_secs(240));
        assert!(
            exit.success(),
            "{name} exited with {exit}:\n{}",
            executor.log_text()
        );
        self.forget_executor(name);
    }

    /// Removes an executor that exited (or was killed) from the set `assert_running` checks.
    pub fn forget_executor(&mut self, name: &str) -> Service {
        let index = self
            .executors
            .iter()
            .position(|e| e.name == name)
            .unwrap_or_else(|| panic!("no executor {name}"));
        self.executors.remove(index)
    }

    /// Fails the test with the log of any service that exited.
    pub fn assert_running(&mut self) {
        for service in self.dispatcher.iter_mut().chain(&mut self.executors) {
            service.assert_running();
        }
    }
}
