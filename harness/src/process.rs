//! Child processes: long-running services killed on drop, and commands run with a deadline.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running service (dispatcher, executor) whose log goes to a file. Killed on drop.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Service {
    pub fn start(name: &str, mut command: Command, log_dir: &Path) -> Service {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Service {
            name: name.to_owned(),
            log,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (a crashed service fails the test with its log).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status}:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// SIGTERM: ask it to shut down.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for it to exit by itself; fails the test after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        crate::poll_until(deadline, &format!("{} to exit", self.name), || {
            self.child.try_wait().unwrap()
        })
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose working directory is under `dir` (a worker's tools run in its checkouts):
/// `(pid, command line)`.
pub fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(&dir) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, cmdline.trim().to_owned()));
        }
    }
    found
}

/// The result of a command run to completion.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Both streams, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion, killing it and failing the test after `deadline`.
pub fn run(command: Command, deadline: Duration) -> Finished {
    run_writing_to(command, Stdio::piped(), deadline)
}

/// [`run`] with the command's standard output sent to `stdout` (a pipe whose reader has gone,
/// `/dev/full`); [`Finished::stdout`] holds it only when `stdout` is [`Stdio::piped`].
pub fn run_writing_to(command: Command, stdout: Stdio, deadline: Duration) -> Finished {
    run_writing_both_to(command, stdout, Stdio::piped(), deadline)
}

/// [`run_writing_to`] with standard error sent to `stderr` as well.
pub fn run_writing_both_to(
    mut command: Command,
    stdout: Stdio,
    stderr: Stdio,
    deadline: Duration,
) -> Finished {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_string(&mut text);
            }
            text
        });
        let mut out = String::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_string(&mut out);
        }
        let status = child.wait().unwrap();
        let _ = done.send(Finished {
            status,
            stdout: out,
            stderr: err_reader.join().unwrap_or_default(),
        });
    });
    match finished.recv_timeout(deadline) {
        Ok(result) => result,
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let partial = finished
                .recv_timeout(Duration::from_secs(10))
                .map(|f| f.transcript())
                .unwrap_or_default();
            panic!("{command:?} did not finish within {deadline:?}; killed.\n{partial}");
        }
    }
}

/// `GET path` over plain HTTP/1.1: the status code and the body; `None` when nothing answers.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    http_request(address, "GET", path, &[], "")
}

/// `method path` with `headers` and `body` over plain HTTP/1.1: the status code and the body.
pub fn http_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// The body of a `Transfer-Encoding: chunked` answer (chunks may split characters: the
/// bytes are joined first).
pub fn dechunk(body: &str) -> String {
    let mut out = Vec::new();
    let mut rest = body.as_bytes();
    while let Some(line_end) = rest.windows(2).position(|pair| pair == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok());
        let after = &rest[line_end + 2..];
        match size {
            Some(size) if size > 0 && after.len() >= size => {
                out.extend_from_slice(&after[..size]);
                rest = after[size..]
                    .strip_prefix(b"\r\n")
                    .unwrap_or(&after[size..]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The address a service logged it serves its endpoints on (`Serving /metrics ... address=`).
pub fn served_at(log: impl Fn() -> String) -> String {
    logged_address(log, "Serving /metrics")
}

/// The `address=` of the first line of `log` that contains `marker`, once there is one.
pub fn logged_address(log: impl Fn() -> String, marker: &str) -> String {
    crate::poll_until(
        Duration::from_secs(60),
        &format!("the address of {marker:?} in the log"),
        || {
            let log = log();
            let line = log.lines().find(|l| l.contains(marker))?;
            Some(
                line.split("address=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_owned(),
            )
        },
    )
}

/// The value of the series of `metric` whose labels include every `label="value"` pair of
/// `labels`, in Prometheus text `metrics`.
pub fn metric_value(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (series, value) = rest.rsplit_once(' ')?;
        labels
            .iter()
            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}
