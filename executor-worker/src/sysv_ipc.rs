//! The System V IPC objects a job's tools leave (shared memory segments, semaphore sets,
//! message queues): removed when the job ends, and again before the next starts, with what
//! they leave in the shared temporary directories.
//!
//! Like a file in `/dev/shm`, a shared memory segment holds memory until it is removed, and
//! every such object outlives the processes that made it, for the next job of the same tool
//! user to find: a worker's jobs share one IPC namespace (the systemd unit's `PrivateIPC`, a
//! pod's own, or the host's). Only a process with `CAP_SYS_ADMIN`, which no deployment gives
//! the worker, may remove another user's object; its creator and its owner always may. So
//! `ipcrm` runs as the tool user, once none of that user's processes is left to race it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use config::ToolUser;

use crate::shared_temp::first_five;

/// Where util-linux (essential on Debian, in `deploy/Dockerfile`'s image) installs `ipcrm`.
/// An absolute path: the worker's own `PATH` decides nothing here.
const IPCRM: &str = "/usr/bin/ipcrm";

/// Objects named to one `ipcrm`: a plan may make tens of thousands (the host's
/// `kernel.sem` and `kernel.msgmni` allow 32,000 each), more than one command line holds.
const PER_IPCRM: usize = 1_000;

/// The three kinds of System V IPC object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum IpcKind {
    SharedMemory,
    Semaphores,
    MessageQueue,
}

impl IpcKind {
    const ALL: [IpcKind; 3] = [
        IpcKind::SharedMemory,
        IpcKind::Semaphores,
        IpcKind::MessageQueue,
    ];

    /// The kernel's table of the kind, for the reader's IPC namespace.
    fn table(self) -> &'static str {
        match self {
            IpcKind::SharedMemory => "/proc/sysvipc/shm",
            IpcKind::Semaphores => "/proc/sysvipc/sem",
            IpcKind::MessageQueue => "/proc/sysvipc/msg",
        }
    }

    /// The table's column of identifiers.
    fn id_column(self) -> &'static str {
        match self {
            IpcKind::SharedMemory => "shmid",
            IpcKind::Semaphores => "semid",
            IpcKind::MessageQueue => "msqid",
        }
    }

    fn ipcrm_flag(self) -> &'static str {
        match self {
            IpcKind::SharedMemory => "-m",
            IpcKind::Semaphores => "-s",
            IpcKind::MessageQueue => "-q",
        }
    }

    fn name(self) -> &'static str {
        match self {
            IpcKind::SharedMemory => "shared memory",
            IpcKind::Semaphores => "semaphores",
            IpcKind::MessageQueue => "message queue",
        }
    }
}

/// One object, by kind and identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct IpcObject {
    pub(crate) kind: IpcKind,
    pub(crate) id: i32,
}

/// The objects of `kind` in `table` (the text of its `/proc/sysvipc` file) that `uid` owns or
/// created: the creator may hand the object to any owner (`IPC_SET`), but stays its creator.
/// A table whose header lacks a column, or a row that does not parse, gives nothing of it.
pub(crate) fn objects_of(kind: IpcKind, table: &str, uid: u32) -> Vec<IpcObject> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split_whitespace().collect();
    let column = |name: &str| columns.iter().position(|column| *column == name);
    let (Some(id_at), Some(uid_at), Some(cuid_at)) =
        (column(kind.id_column()), column("uid"), column("cuid"))
    else {
        return Vec::new();
    };
    let wanted = uid.to_string();
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (owner, creator) = (fields.get(uid_at)?, fields.get(cuid_at)?);
            if *owner != wanted && *creator != wanted {
                return None;
            }
            Some(IpcObject {
                kind,
                id: fields.get(id_at)?.parse().ok()?,
            })
        })
        .collect()
}

/// Every object of `uid` in this process's IPC namespace.
fn all_objects_of(uid: u32) -> Vec<IpcObject> {
    IpcKind::ALL
        .into_iter()
        .flat_map(|kind| {
            let table = std::fs::read_to_string(kind.table()).unwrap_or_default();
            objects_of(kind, &table, uid)
        })
        .collect()
}

/// What [`remove_objects_of`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IpcRemoved {
    /// Objects of the tool user that were removed.
    pub(crate) removed: Vec<IpcObject>,
    /// Objects still there afterwards, and why.
    pub(crate) left: Vec<IpcObject>,
    pub(crate) why: String,
}

impl IpcRemoved {
    /// What to add to the job's output: nothing when nothing was there.
    pub(crate) fn note(&self, left_by: &str) -> String {
        let mut note = String::new();
        if !self.removed.is_empty() {
            note.push_str(&format!(
                "(removed {} System V IPC object(s) {left_by} left: {})\n",
                self.removed.len(),
                listed(&self.removed)
            ));
        }
        if !self.left.is_empty() {
            tracing::warn!(
                left = self.left.len(),
                why = self.why,
                "Cannot remove the System V IPC objects a tool user left."
            );
            note.push_str(&format!(
                "(warning: cannot remove {} System V IPC object(s) the tool user left ({}): {})\n",
                self.left.len(),
                listed(&self.left),
                self.why
            ));
        }
        note
    }
}

/// "shared memory 5, 7, semaphores 9", the first few of each kind.
fn listed(objects: &[IpcObject]) -> String {
    let mut parts = Vec::new();
    for kind in IpcKind::ALL {
        let ids: Vec<String> = objects
            .iter()
            .filter(|object| object.kind == kind)
            .map(|object| object.id.to_string())
            .collect();
        if !ids.is_empty() {
            parts.push(format!("{} {}", kind.name(), first_five(&ids)));
        }
    }
    parts.join("; ")
}

/// Removes every System V IPC object `user` owns or created (blocking): `ipcrm` runs as
/// `user`, with nothing of the worker's environment. Call it only when none of `user`'s
/// processes is alive, or one could make more while this runs.
pub(crate) fn remove_objects_of(user: ToolUser) -> IpcRemoved {
    remove_with(user, Path::new(IPCRM))
}

fn remove_with(user: ToolUser, ipcrm: &Path) -> IpcRemoved {
    let found = all_objects_of(user.uid);
    if found.is_empty() {
        return IpcRemoved::default();
    }
    let mut complaints = Vec::new();
    for chunk in found.chunks(PER_IPCRM) {
        let mut command = Command::new(ipcrm);
        command
            .env_clear()
            .current_dir("/")
            .uid(user.uid)
            .gid(user.gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for object in chunk {
            command
                .arg(object.kind.ipcrm_flag())
                .arg(object.id.to_string());
        }
        match command.output() {
            Ok(ran) if ran.status.success() => {}
            Ok(ran) => complaints.push(
                String::from_utf8_lossy(&ran.stderr)
                    .lines()
                    .next()
                    .unwrap_or("ipcrm failed")
                    .to_owned(),
            ),
            Err(err) => complaints.push(format!("cannot run {}: {err}", ipcrm.display())),
        }
    }
    // What is gone is read back from the kernel, not taken from `ipcrm`'s word.
    let still = all_objects_of(user.uid);
    let (left, removed) = found.into_iter().partition(|object| still.contains(object));
    IpcRemoved {
        removed,
        left,
        why: complaints.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHM: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
    729204          4   600                    56  2328  4922      5   101   104   101   104 1796565913 1796565913 1796565851                  4096                     0
         0         11   666               4194304  9001     0      0 61019 61019 61019 61019          0          0 1796565999                     0                     0
         0         12   600                  4096  9002     0      0     0     0 61019 61019          0          0 1796565999                     0                     0
         0         13   600                  4096  9003     0      0 61019     0     0     0          0          0 1796565999                     0                     0
";

    #[test]
    fn the_objects_a_user_owns_or_created_are_found_and_no_others() {
        let found = objects_of(IpcKind::SharedMemory, SHM, 61_019);
        let ids: Vec<i32> = found.iter().map(|object| object.id).collect();
        // 11 is its own; 12 it made and gave to root; 13 root made and gave to it.
        assert_eq!(ids, [11, 12, 13]);
        assert!(
            found
                .iter()
                .all(|object| object.kind == IpcKind::SharedMemory)
        );
        assert!(objects_of(IpcKind::SharedMemory, SHM, 61_020).is_empty());
        assert_eq!(objects_of(IpcKind::SharedMemory, SHM, 101)[0].id, 4);
    }

    #[test]
    fn a_table_that_does_not_parse_gives_nothing_and_no_panic() {
        // The message queue table read as shared memory: no `shmid` column.
        let msg =
            "key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid\n0 3 600 0 0 0 0 7 7 7 7\n";
        assert!(objects_of(IpcKind::SharedMemory, msg, 7).is_empty());
        assert_eq!(objects_of(IpcKind::MessageQueue, msg, 7)[0].id, 3);
        assert!(objects_of(IpcKind::Semaphores, "", 7).is_empty());
        let short = "key semid perms nsems uid gid cuid cgid\n0 x 600 1 7 7 7 7\n0 5 600\n";
        assert!(objects_of(IpcKind::Semaphores, short, 7).is_empty());
    }

    /// Makes an object with util-linux's `ipcmk` as `uid`, as a plan's code could; its id.
    fn make(kind: IpcKind, uid: u32) -> IpcObject {
        let flag = match kind {
            IpcKind::SharedMemory => vec!["-M", "4096"],
            IpcKind::Semaphores => vec!["-S", "2"],
            IpcKind::MessageQueue => vec!["-Q"],
        };
        let made = Command::new("/usr/bin/ipcmk")
            .args(flag)
            .uid(uid)
            .gid(uid)
            .output()
            .expect("ipcmk (util-linux) runs; the tests run as root");
        assert!(made.status.success(), "{made:?}");
        // "Shared memory id: 12"
        let id = String::from_utf8_lossy(&made.stdout)
            .split_whitespace()
            .last()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("{made:?}"));
        IpcObject { kind, id }
    }

    #[test]
    fn what_the_tool_user_left_is_removed_as_that_user_and_nothing_of_anyone_else() {
        // Ids of their own: the kernel's tables are the host's, shared with parallel tests.
        let tools = ToolUser {
            uid: 61_019,
            gid: 61_019,
        };
        let other = 61_020;
        let mut made: Vec<IpcObject> = IpcKind::ALL
            .into_iter()
            .map(|kind| make(kind, tools.uid))
            .collect();
        made.sort();
        let theirs = make(IpcKind::SharedMemory, other);

        let removed = remove_objects_of(tools);

        let mut gone = removed.removed.clone();
        gone.sort();
        assert_eq!(gone, made);
        assert!(removed.left.is_empty(), "{removed:?}");
        assert!(all_objects_of(tools.uid).is_empty());
        assert!(all_objects_of(other).contains(&theirs));
        let note = removed.note("the job's tools");
        assert!(
            note.starts_with(
                "(removed 3 System V IPC object(s) the job's tools left: shared memory "
            ),
            "{note}"
        );
        assert!(
            note.contains("; semaphores ") && note.contains("; message queue "),
            "{note}"
        );
        assert_eq!(remove_objects_of(tools), IpcRemoved::default());
        assert_eq!(IpcRemoved::default().note("x"), "");

        // Without `ipcrm`, nothing is removed, and the output says so.
        let kept = remove_with(
            ToolUser {
                uid: other,
                gid: other,
            },
            Path::new("/nonexistent/ipcrm"),
        );
        assert!(kept.left.contains(&theirs));
        assert!(kept.removed.is_empty());
        let warning = kept.note("an earlier job");
        assert!(
            warning.contains(
                "cannot remove 1 System V IPC object(s) the tool user left (shared memory"
            ) && warning.contains("cannot run /nonexistent/ipcrm"),
            "{warning}"
        );
        assert!(
            remove_objects_of(ToolUser {
                uid: other,
                gid: other
            })
            .removed
            .contains(&theirs)
        );
    }
}
