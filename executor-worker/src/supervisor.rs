//! `pipelines __supervise [--as-user UID:GID] WORKER_PID TOOL ARGS...`: runs one tool process
//! for a worker, as the worker's tool user when it has one, and makes sure nothing of it
//! outlives the worker.
//!
//! The tool runs in a process group of its own (terraform, its providers, `local-exec`
//! shells). The supervisor watches its parent: when the worker is gone, even by SIGKILL, it
//! kills the whole group. A first SIGTERM or SIGINT from the worker interrupts the group
//! (terraform stops gracefully and releases its state lock); a second one, or SIGUSR1, kills
//! it. When the tool exits by itself, whatever it left running in its group is killed too.
//! As the tool user, the tool and all it starts may have at most [`TOOL_TASKS`] tasks.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

/// The most processes and threads the tool user may have at once on the host
/// (`RLIMIT_NPROC`, set when the tool runs as the tool user, or the worker's own limit when
/// that is lower). Terraform with its providers, all Go programs, uses a few hundred threads;
/// a fork bomb in a pull request's code stops here instead of at the host's limit, and the
/// worker's kill of what it left behind has that many at most to chase. Workers that share a
/// tool uid on one host share the budget.
pub const TOOL_TASKS: u64 = 4096;

/// How often the supervisor checks that its worker is still there.
const PARENT_CHECK: Duration = Duration::from_millis(100);

/// Runs `program args` until it exits; the exit code to return (128 + signal when it was
/// killed by one, as shells do).
pub fn supervise(
    worker_pid: u32,
    as_user: Option<&str>,
    program: OsString,
    args: Vec<OsString>,
) -> i32 {
    let user = match as_user.map(|spec| {
        spec.split_once(':')
            .and_then(|(uid, gid)| Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?)))
    }) {
        None => None,
        Some(Some(ids)) => Some(ids),
        Some(None) => {
            eprintln_safe(&format!("pipelines supervisor: {as_user:?} is not UID:GID"));
            return 125;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln_safe(&format!("pipelines supervisor: cannot start: {err}"));
            return 125;
        }
    };
    // The worker runs without transparent huge pages (`pipelines execute`), and the flag is
    // inherited: turn them back on, so that the host's policy applies to the tool.
    let _ = rustix::thread::disable_transparent_huge_pages(false);
    runtime.block_on(run(worker_pid, user, program, args))
}

async fn run(
    worker_pid: u32,
    user: Option<(u32, u32)>,
    program: OsString,
    args: Vec<OsString>,
) -> i32 {
    // Handlers first: from here on, SIGTERM and SIGINT are requests, not our death.
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut kill_now)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
    ) else {
        eprintln_safe("pipelines supervisor: cannot handle signals");
        return 125;
    };
    let worker = Pid::from_raw(worker_pid as i32);
    if rustix::process::getppid() != worker {
        // The worker died before we got here.
        return 137;
    }
    let mut command = Command::new(&program);
    if let Some((uid, gid)) = user {
        // Inherited by the tool. It counts the tool user's tasks on the host; the supervisor,
        // root, is exempt. A lower limit it inherited stays (raising one needs a capability
        // the worker does not hold).
        let inherited = rustix::process::getrlimit(rustix::process::Resource::Nproc);
        let tasks = inherited
            .maximum
            .map_or(TOOL_TASKS, |hard| hard.min(TOOL_TASKS));
        let limit = rustix::process::Rlimit {
            current: Some(tasks),
            maximum: Some(tasks),
        };
        if let Err(err) = rustix::process::setrlimit(rustix::process::Resource::Nproc, limit) {
            eprintln_safe(&format!(
                "pipelines supervisor: cannot limit the tool user's processes: {err}"
            ));
            return 125;
        }
        // The supervisor stays the worker's user, so the tool can neither signal nor trace it.
        command.uid(uid).gid(gid);
    }
    let mut child = match command
        .args(&args)
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            eprintln_safe(&format!("cannot run {}: {err}", program.to_string_lossy()));
            return 127;
        }
    };
    let Some(group) = child.id().and_then(|id| Pid::from_raw(id as i32)) else {
        return 125;
    };
    let mut requests = 0;
    let mut check = tokio::time::interval(PARENT_CHECK);
    loop {
        tokio::select! {
            status = child.wait() => {
                // Stragglers (a shell's background job) go with the tool.
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
                return match status {
                    Ok(status) => exit_code(status),
                    Err(_) => 125,
                };
            }
            _ = terminate.recv() => requests += 1,
            _ = interrupt.recv() => requests += 1,
            _ = kill_now.recv() => requests += 2,
            _ = check.tick() => {
                if rustix::process::getppid() != worker {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                    let _ = child.wait().await;
                    return 137;
                }
                continue;
            }
        }
        let signal = if requests == 1 {
            Signal::INT
        } else {
            Signal::KILL
        };
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(125)
}

/// The supervisor's stderr is the tool's output stream: one line, no logging framework.
fn eprintln_safe(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
