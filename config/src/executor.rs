//! `[executor]`: settings only executor workers read, the tools' user and environment among them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::{Config, ConfigError, invalid};

/// Settings only executors read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSettings {
    /// Where mirrors and per-job checkouts live. Default: a directory per worker under the
    /// system temporary directory.
    pub work_dir: Option<PathBuf>,
    /// `terraform` or `tofu` (a name on PATH or a path). Default: `tofu` when it is on PATH,
    /// else `terraform`.
    pub tf_binary: Option<String>,
    /// Where each job's (redacted) log is written, as `<run>/<job>-<attempt>.log`.
    /// Default: `logs` in the work directory.
    pub log_dir: Option<PathBuf>,
    /// Stream each job's log to the dispatcher while it is written (through the broker's
    /// `pipelines.logs` queue), where the web page shows it live. The worker's own file is
    /// written either way.
    #[serde(default = "default_stream_logs")]
    pub stream_logs: bool,
    /// The most bytes of one job's output the worker writes to its log file; past it the file
    /// says so and the rest is not written (the job's result keeps the output's end). Bounds
    /// what one job, a pull request's plan included, can put on the worker's disk.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: u64,
    /// The worker deletes a run's job logs this many days after they were last written
    /// (checked when it starts, then after a job once an hour has passed). 0 keeps them. Give each worker a
    /// log directory of its own.
    #[serde(default = "default_log_retention_days")]
    pub log_retention_days: u64,
    /// The most bytes all job logs in `log_dir` may take. To write past it, the logs of the
    /// runs written longest ago are deleted first; what still does not fit is not written to
    /// the file, which says so (the dispatcher's copy, streamed from it, ends there too; the
    /// job's result keeps the output's end). 0: no limit.
    /// The default, 4 GiB, stays well inside the 20 GiB work volume of `deploy/k8s`.
    #[serde(default = "default_max_total_log_bytes")]
    pub max_total_log_bytes: u64,
    /// Logs are never written into the last this many bytes of `log_dir`'s filesystem, so
    /// that checkouts keep room: the logs of the runs written longest ago are deleted first,
    /// and what still does not fit is not written. 0: no reserve.
    #[serde(default = "crate::default_log_keep_free_bytes")]
    pub log_keep_free_bytes: u64,
    /// On SIGTERM, how long a running job may take to finish before it is stopped and given
    /// back to the queue.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
    /// After asking a job's tool to stop (timeout, cancellation, drain), how long to wait
    /// before killing its whole process group.
    #[serde(default = "default_stop_grace_seconds")]
    pub stop_grace_seconds: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port`; one port per worker
    /// process). Default: not served.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Run every tool (terraform, tofu, terragrunt and what they start) as this user: a name
    /// from /etc/passwd, or `uid:gid`. The tools then cannot read the worker's files (its
    /// configuration, broker password, token files, git mirror). Needs the worker to run as
    /// root or with CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_KILL, CAP_DAC_OVERRIDE and
    /// CAP_FOWNER. Give each worker its own user: leftover processes of this user are killed
    /// after every job. Default: tools run as the worker.
    #[serde(default)]
    pub tool_user: Option<String>,
    /// Variables every tool gets (Terraform settings, proxies), beside PATH, HOME and TMPDIR
    /// inside the job's directory, `pass_env`, and the job's own credentials. Nothing else of
    /// the worker's environment reaches a tool. A plugin cache or mirror named here or in
    /// `TF_CLI_CONFIG_FILE`'s file must be writable by root (or the worker's user) alone: a
    /// worker refuses to start when anyone could write there, and a plan worker also when its
    /// tool user could.
    #[serde(default)]
    pub tool_env: BTreeMap<String, String>,
    /// Names of the worker's own environment variables handed to tools unchanged, when set.
    #[serde(default = "default_pass_env")]
    pub pass_env: Vec<String>,
    /// git settings for the worker's own git (`credential.helper`, `http.proxy`, ...). No
    /// other git configuration is read: not the system's, not `~/.gitconfig`, not the mirror's.
    #[serde(default)]
    pub git_config: BTreeMap<String, String>,
}

impl Default for ExecutorSettings {
    fn default() -> ExecutorSettings {
        ExecutorSettings {
            work_dir: None,
            tf_binary: None,
            log_dir: None,
            stream_logs: default_stream_logs(),
            max_log_bytes: default_max_log_bytes(),
            log_retention_days: default_log_retention_days(),
            max_total_log_bytes: default_max_total_log_bytes(),
            log_keep_free_bytes: crate::default_log_keep_free_bytes(),
            drain_seconds: default_drain_seconds(),
            stop_grace_seconds: default_stop_grace_seconds(),
            metrics_address: None,
            tool_user: None,
            tool_env: BTreeMap::new(),
            pass_env: default_pass_env(),
            git_config: BTreeMap::new(),
        }
    }
}

fn default_stream_logs() -> bool {
    true
}

/// Worker variables tools may see by default: where Terraform's CLI configuration is, and
/// proxies. Never credentials: those come from `[[credentials]]`, per job and role.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "TF_CLI_CONFIG_FILE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

fn default_pass_env() -> Vec<String> {
    DEFAULT_PASS_ENV
        .iter()
        .map(|name| (*name).to_owned())
        .collect()
}

/// Variables the worker sets for every tool itself, which configuration may not override.
const WORKER_SET_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "TF_IN_AUTOMATION", "TF_INPUT"];

/// A user tools run as: numeric ids, resolved from a name once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolUser {
    pub uid: u32,
    pub gid: u32,
}

impl ExecutorSettings {
    /// `tool_user` as ids: `uid:gid` as written, a name through `passwd` (the text of
    /// /etc/passwd). `Ok(None)` when tools run as the worker.
    pub fn tool_user(&self, passwd: &str) -> Result<Option<ToolUser>, String> {
        let Some(spec) = &self.tool_user else {
            return Ok(None);
        };
        if let Some((uid, gid)) = spec.split_once(':') {
            return match (uid.parse(), gid.parse()) {
                (Ok(uid), Ok(gid)) => Ok(Some(ToolUser { uid, gid })),
                _ => Err(format!("{spec:?} is not uid:gid (numbers) or a user name")),
            };
        }
        passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() >= 4 && fields[0] == spec)
            .and_then(|fields| {
                Some(ToolUser {
                    uid: fields[2].parse().ok()?,
                    gid: fields[3].parse().ok()?,
                })
            })
            .map(Some)
            .ok_or_else(|| format!("user {spec:?} is not in /etc/passwd (or give uid:gid)"))
    }
}

fn default_max_log_bytes() -> u64 {
    128 * 1024 * 1024
}

fn default_log_retention_days() -> u64 {
    30
}

fn default_max_total_log_bytes() -> u64 {
    4 << 30
}

fn default_drain_seconds() -> u64 {
    600
}

fn default_stop_grace_seconds() -> u64 {
    30
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Config {
    pub(crate) fn validate_executor(&self) -> Result<(), ConfigError> {
        let executor = &self.executor;
        crate::check_log_bytes("executor.max_log_bytes", executor.max_log_bytes)?;
        crate::check_log_budget("executor.max_total_log_bytes", executor.max_total_log_bytes)?;
        if let Some(user) = &executor.tool_user
            && (user.is_empty() || user == "root" || user == "0:0" || user.starts_with("0:"))
        {
            return Err(invalid(
                "executor.tool_user",
                format!("{user:?} would run tools as root: name an unprivileged user"),
            ));
        }
        for name in executor.tool_env.keys() {
            if !is_env_name(name) {
                return Err(invalid(
                    format!("executor.tool_env.{name}"),
                    "is not a valid environment variable name",
                ));
            }
            if WORKER_SET_ENV.contains(&name.as_str()) || name.starts_with("PIPELINES_") {
                return Err(invalid(
                    format!("executor.tool_env.{name}"),
                    "is set by the worker itself and cannot be configured",
                ));
            }
        }
        for (i, name) in executor.pass_env.iter().enumerate() {
            if !is_env_name(name)
                || WORKER_SET_ENV.contains(&name.as_str())
                || name.starts_with("PIPELINES_")
            {
                return Err(invalid(
                    format!("executor.pass_env[{i}]"),
                    format!(
                        "{name:?} cannot be passed to tools (not a variable name, set by the worker, or the worker's own)"
                    ),
                ));
            }
        }
        check_git_config("executor.git_config", &executor.git_config)
    }
}

/// Keys of a `git_config` table must be plain `section.name` settings, and never turn hooks
/// or fsmonitor back on.
pub(crate) fn check_git_config(
    table: &str,
    settings: &std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for key in settings.keys() {
        let valid = key.contains('.')
            && !key.starts_with('.')
            && !key.ends_with('.')
            && key.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':')
            });
        let forced =
            ["core.hookspath", "core.fsmonitor"].contains(&key.to_ascii_lowercase().as_str());
        if !valid || forced {
            return Err(invalid(
                format!("{table}.{key}"),
                "is not a git setting this worker lets you set (section.name; hooks and fsmonitor stay off)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{VALID, error_of};

    #[test]
    fn the_log_limits_default_and_a_tiny_max_log_bytes_is_refused_naming_the_key() {
        let config = Config::from_toml(VALID).unwrap();
        assert_eq!(config.executor.max_log_bytes, 128 << 20);
        assert_eq!(config.executor.log_retention_days, 30);
        let text = format!("{VALID}\n[executor]\nmax_log_bytes = 1000\nlog_retention_days = 0\n");
        let error = error_of(&text);
        assert!(
            error.contains("executor.max_log_bytes") && error.contains("1000 is below"),
            "{error}"
        );
        assert_eq!(config.executor.max_total_log_bytes, 4 << 30);
        assert_eq!(config.executor.log_keep_free_bytes, 2 << 30);
        let error = error_of(&format!("{VALID}\n[executor]\nmax_total_log_bytes = 5\n"));
        assert!(
            error.contains("executor.max_total_log_bytes") && error.contains("5 is below"),
            "{error}"
        );
        let text =
            format!("{VALID}\n[executor]\nmax_total_log_bytes = 0\nlog_keep_free_bytes = 0\n");
        assert!(Config::from_toml(&text).is_ok(), "0: no limit");
    }

    #[test]
    fn tool_settings_are_checked_and_the_tool_user_resolves() {
        let config = Config::from_toml(VALID).unwrap();
        assert!(
            config
                .executor
                .pass_env
                .contains(&"TF_CLI_CONFIG_FILE".to_owned())
        );
        assert_eq!(config.executor.tool_user(""), Ok(None));
        let text = |section: &str| format!("{VALID}\n[executor]\n{section}\n");
        let named = Config::from_toml(&text("tool_user = \"pipelines-tool\"")).unwrap();
        let passwd =
            "root:x:0:0::/root:/bin/sh\npipelines-tool:x:10001:10002::/nonexistent:/bin/false\n";
        assert_eq!(
            named.executor.tool_user(passwd),
            Ok(Some(ToolUser {
                uid: 10001,
                gid: 10002
            }))
        );
        assert!(
            named
                .executor
                .tool_user("")
                .unwrap_err()
                .contains("not in /etc/passwd")
        );
        let ids = Config::from_toml(&text("tool_user = \"61001:61001\"")).unwrap();
        assert_eq!(
            ids.executor.tool_user(""),
            Ok(Some(ToolUser {
                uid: 61001,
                gid: 61001
            }))
        );
        assert!(error_of(&text("tool_user = \"root\"")).contains("`executor.tool_user`"));
        assert!(
            error_of(&text("tool_env = { HOME = \"/root\" }"))
                .contains("`executor.tool_env.HOME`: is set by the worker")
        );
        assert!(
            error_of(&text("pass_env = [\"PIPELINES_BROKER_URL\"]"))
                .contains("`executor.pass_env[0]`")
        );
        assert!(
            error_of(&text("git_config = { \"core.hooksPath\" = \"/tmp/h\" }"))
                .contains("`executor.git_config.core.hooksPath`")
        );
        let fine = text(
            "tool_env = { TF_PLUGIN_CACHE_DIR = \"/cache\" }\ngit_config = { \"credential.helper\" = \"store\" }",
        );
        assert!(Config::from_toml(&fine).is_ok());
    }
}
