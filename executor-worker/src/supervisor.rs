//! `pipelines __supervise [--as-user UID:GID] WORKER_PID TOOL ARGS...`: runs one tool process
//! for a worker, as the worker's tool user when it has one, and makes sure nothing of it
//! outlives the worker.
//!
//! The supervisor leaves the worker's session, so the tool has no controlling terminal (a
//! worker started from an operator's shell has one, and a tool that could open it could type
//! into that shell with `TIOCSTI`). The tool runs in a process group of its own (terraform,
//! its providers, `local-exec` shells). The supervisor watches its parent: when the worker is gone, even by SIGKILL, it
//! kills the whole group. A first SIGTERM or SIGINT from the worker interrupts the group
//! (terraform stops gracefully and releases its state lock); a second one, or SIGUSR1, kills
//! it. When the tool exits by itself, whatever it left running in its group is killed too.
//! As the tool user, the tool and all it starts may have at most [`TOOL_TASKS`] tasks, and
//! none of them gains privileges by `execve` (`no_new_privs`: a set-user-ID program runs with
//! its caller's ids).
//!
//! `pipelines __kill-all --as-user UID:GID`, which the worker runs after each step and job,
//! kills every process of the tool user at once ([`kill_all_of_user`]).

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

/// The tool's `oom_score_adj` (from -1000, never, to 1000, first): the most, so that a tool
/// goes before its worker wherever the worker stands. Kubernetes gives a Burstable pod's
/// processes up to 999 (and a process without `CAP_SYS_RESOURCE` may not lower its own), so
/// any value lower could leave the tool below the worker there.
const TOOL_OOM_SCORE_ADJ: &str = "1000";

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
    let user = match as_user.map(ids) {
        None => None,
        Some(Some(ids)) => Some(ids),
        Some(None) => {
            eprintln_safe(&format!("pipelines supervisor: {as_user:?} is not UID:GID"));
            return 125;
        }
    };
    // Inherited by the tool and all it starts, and never undone: a set-user-ID program (su,
    // mount, crontab, a vulnerable one) runs with its caller's ids, and file capabilities are
    // not granted. A pull request's code as the tool user cannot become root
    // through one, whatever the host has installed, with or without the deployment's own
    // `NoNewPrivileges`. The switch to the tool user below is a setuid call, which the flag
    // does not touch. Set before the runtime starts any thread: the flag is per thread, and
    // a thread inherits it from the one that creates it.
    if let Err(err) = rustix::thread::set_no_new_privs(true) {
        eprintln_safe(&format!(
            "pipelines supervisor: cannot keep the tool from gaining privileges: {err}"
        ));
        return 125;
    }
    // A session of its own, with no controlling terminal, for the supervisor and so for the
    // tool: `/dev/tty` then opens nothing, and no terminal the worker has is the tool's. It
    // also takes the supervisor out of the worker's process group, so that a terminal's
    // Ctrl-C or hang-up reaches the worker alone, which stops its tools its own way. A child
    // of the worker leads no group, so this succeeds unless something is wrong.
    if let Err(err) = rustix::process::setsid() {
        eprintln_safe(&format!(
            "pipelines supervisor: cannot leave the worker's terminal session: {err}"
        ));
        return 125;
    }
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
    // Inherited by the tool: when memory runs out (a plan that filled /dev/shm, in a unit or
    // pod with a memory limit), the kernel kills the tool's processes before the worker, even
    // a small one. Raising one's own score needs no privilege.
    let _ = std::fs::write("/proc/self/oom_score_adj", TOOL_OOM_SCORE_ADJ);
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

/// `UID:GID` as numbers.
fn ids(spec: &str) -> Option<(u32, u32)> {
    let (uid, gid) = spec.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// Becomes `as_user` (`UID:GID`; the worker starts this as root, and the tool user may not be
/// able to run the binary from where it lies), with no capability left, then sends SIGKILL to every process of that
/// user (`kill(-1, SIGKILL)`: every process it may signal, in its PID namespace, but itself);
/// the exit code. Refuses to go on as root or with a capability, to which `-1` would mean
/// every process of the host.
///
/// One call is enough, and a pass over `/proc` is not. A process that forks and exits at once,
/// over and over, has a new pid each time a pass looks; every pass kills a pid that is already
/// gone and misses the next one. The kernel signals every process of `-1` while no fork can
/// complete, and a fork under way in a signalled process fails: when the call returns,
/// every process of the user is dying and none can start another. Having changed its user,
/// this process cannot be traced by the ones it kills (the kernel makes it non-dumpable).
pub fn kill_all_of_user(as_user: &str) -> i32 {
    let Some((uid, gid)) = ids(as_user) else {
        eprintln_safe(&format!("pipelines __kill-all: {as_user:?} is not UID:GID"));
        return 125;
    };
    // Single-threaded here (no runtime), so the thread's ids are the process's.
    let (uid, gid) = (
        rustix::process::Uid::from_raw(uid),
        rustix::process::Gid::from_raw(gid),
    );
    let became = rustix::thread::set_thread_groups(&[])
        .and_then(|()| rustix::thread::set_thread_res_gid(gid, gid, gid))
        .and_then(|()| rustix::thread::set_thread_res_uid(uid, uid, uid))
        // Leaving root clears the capabilities; leaving another user that was granted them
        // (a worker that is not root) does not, and with CAP_KILL `-1` is every process.
        .and_then(|()| {
            rustix::thread::set_capabilities(
                None,
                rustix::thread::CapabilitySets {
                    effective: rustix::thread::CapabilitySet::empty(),
                    permitted: rustix::thread::CapabilitySet::empty(),
                    inheritable: rustix::thread::CapabilitySet::empty(),
                },
            )
        });
    if let Err(err) = became {
        eprintln_safe(&format!(
            "pipelines __kill-all: cannot become {as_user}: {err}"
        ));
        return 125;
    }
    let privileged = rustix::thread::capabilities(None).map_or(true, |sets| {
        !sets.effective.is_empty() || !sets.permitted.is_empty()
    });
    if rustix::process::getuid().is_root() || rustix::process::geteuid().is_root() || privileged {
        eprintln_safe("pipelines __kill-all: refusing to run as root or with capabilities");
        return 125;
    }
    // `kill(-pid)` signals the group `pid`; for pid 1 that is `kill(-1)`: every process.
    match rustix::process::kill_process_group(Pid::INIT, Signal::KILL) {
        // ESRCH: nothing to signal.
        Ok(()) | Err(rustix::io::Errno::SRCH) => 0,
        Err(err) => {
            eprintln_safe(&format!("pipelines __kill-all: {err}"));
            125
        }
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
