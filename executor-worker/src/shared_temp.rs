//! What a job's tools leave in the host's shared temporary directories (`/tmp`, `/var/tmp`,
//! `/dev/shm`, `/dev/mqueue`, `/run/lock`): removed when the job ends, and again before the
//! next starts.
//!
//! Tools get a `TMPDIR` and a `HOME` inside the job's directory, which go with the job. But a
//! plan's code may write wherever its user may: a file in `/dev/shm` holds memory until it is
//! deleted (half the host's, by default), one in `/tmp` fills that disk, and either outlives
//! the job for the next job of the same tool user to find. With a tool user, every entry that
//! user owns in those directories is an earlier job's: one worker runs one job at a time, each
//! worker has a tool user of its own (see `deploy/`), and its processes are killed before the
//! worker looks, so none is writing.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use config::ToolUser;
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::access::{Access, SEARCH, WRITE};
use crate::remove_tree::{self, entries_of, open_directory};

/// Where any user may write, outside the job's directory. `/run/lock` (`/var/lock`) is a small
/// memory-backed directory open to all on Debian, read-only under the systemd unit and the
/// Kubernetes manifests but not in `docker-compose.yml`'s containers or on a plain host.
pub(crate) const SHARED_TEMP_DIRS: &[&str] =
    &["/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock"];

/// How deep [`remove_entries_of`] looks through other users' sticky directories that the
/// tool user may write into (`/tmp/.X11-unix`, say), where it could have left entries too.
const MAX_DEPTH: usize = 4;

/// What [`remove_entries_of`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Entries (files, links, whole directories) of the tool user that were removed.
    pub(crate) removed: Vec<PathBuf>,
    /// Entries that could not be, with why.
    pub(crate) failed: Vec<(PathBuf, String)>,
}

impl Removed {
    /// What to add to the job's output: nothing when nothing was there.
    pub(crate) fn note(&self, left_by: &str) -> String {
        let mut note = String::new();
        if !self.removed.is_empty() {
            let paths: Vec<String> = self
                .removed
                .iter()
                .map(|path| path.display().to_string())
                .collect();
            note.push_str(&format!(
                "(removed {} file(s) or directory(ies) {left_by} left in the shared temporary directories: {})\n",
                self.removed.len(),
                first_five(&paths)
            ));
        }
        for (path, why) in &self.failed {
            tracing::warn!(path = %path.display(), why, "Cannot remove what a tool user left in a shared temporary directory.");
            note.push_str(&format!(
                "(warning: cannot remove {}, left by the tool user: {why})\n",
                path.display()
            ));
        }
        note
    }
}

/// Removes every entry `tools` owns in `dirs`, and in other users' directories among them
/// that have the sticky bit and that `tools` may add entries to (anyone may, or it may by its
/// group or an ACL), without following a symbolic link (blocking). A directory of `tools` goes
/// whole. Only sticky ones are entered, where an entry's owner alone (and the directory's)
/// may rename or remove it.
///
/// Below each of `dirs`, every step is taken from the directory already open, never by path:
/// the owner of a sticky directory, another worker's tool user say, may rename it while it is
/// walked and put a link to `/dev` or the worker's state in its place, and a removal by path
/// would follow that link as root.
pub(crate) fn remove_entries_of(tools: ToolUser, dirs: &[&Path]) -> Removed {
    remove_entries_watched(tools, dirs, &mut |_| {})
}

/// [`remove_entries_of`], calling `entered` with each directory it enters below `dirs`, once
/// it is open and before anything in it is looked at.
fn remove_entries_watched(
    tools: ToolUser,
    dirs: &[&Path],
    entered: &mut dyn FnMut(&Path),
) -> Removed {
    let mut removed = Removed::default();
    for dir in dirs {
        // The shared directories themselves are the host's, opened by their path once, a link
        // followed (`/dev/shm` may be one to `/run/shm`); one the host does not have (or has
        // as something else than a directory) is skipped.
        match rustix::fs::openat(
            CWD,
            *dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(open) => sweep(tools, open.as_fd(), dir, 0, &mut removed, entered),
            Err(Errno::NOENT | Errno::NOTDIR) => {}
            Err(err) => removed.failed.push((dir.to_path_buf(), err.to_string())),
        }
    }
    removed
}

/// Removes what `tools` owns in the open directory `dir` (found at `path`, which names what
/// was removed, and is never opened again).
fn sweep(
    tools: ToolUser,
    dir: BorrowedFd<'_>,
    path: &Path,
    depth: usize,
    removed: &mut Removed,
    entered: &mut dyn FnMut(&Path),
) {
    let mut entries = match entries_of(dir, 0) {
        Ok(entries) => entries,
        Err(err) => return removed.failed.push((path.to_path_buf(), err.to_string())),
    };
    while let Some(entry) = entries.read() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => return removed.failed.push((path.to_path_buf(), err.to_string())),
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let shown = path.join(OsStr::from_bytes(name.to_bytes()));
        // A link is the link's.
        let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        let gone = if !is_dir {
            if stat.st_uid != tools.uid {
                continue;
            }
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(std::io::Error::from)
        } else if stat.st_uid == tools.uid || (stat.st_mode & 0o1000 != 0 && depth < MAX_DEPTH) {
            // Whatever is there now, as long as it is a directory and not a link (one that
            // changed since it was looked at is for the next sweep).
            let open = match open_directory(dir, name) {
                Ok(open) => Ok(std::fs::File::from(open)),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(err) => Err(std::io::Error::from(err)),
            };
            let (meta, open) = match open.and_then(|open| Ok((open.metadata()?, open))) {
                Ok(opened) => opened,
                // The tool user's, and it stays: said in the job's output.
                Err(err) if stat.st_uid == tools.uid => {
                    removed.failed.push((shown, err.to_string()));
                    continue;
                }
                Err(_) => continue,
            };
            if meta.uid() == tools.uid {
                // Emptied through the open directory, then its entry, empty, goes.
                remove_tree::empty_directory(open.into()).and_then(|()| {
                    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(Into::into)
                })
            } else {
                if meta.mode() & 0o1000 != 0
                    && depth < MAX_DEPTH
                    && may_add_to(tools, open.as_fd(), &meta)
                {
                    entered(&shown);
                    sweep(tools, open.as_fd(), &shown, depth + 1, removed, entered);
                }
                continue;
            }
        } else {
            continue;
        };
        match gone {
            Ok(()) => removed.removed.push(shown),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => removed.failed.push((shown, err.to_string())),
        }
    }
}

/// Whether `tools` may add an entry to the open directory `dir` (with `meta`). An ACL that
/// cannot be read counts as yes: looking in a sticky directory for `tools`' entries is
/// harmless.
fn may_add_to(tools: ToolUser, dir: BorrowedFd<'_>, meta: &std::fs::Metadata) -> bool {
    Access::read_open(dir, meta).map_or(true, |access| access.permits(tools, WRITE | SEARCH))
}

/// [`remove_entries_of`] in [`SHARED_TEMP_DIRS`] (blocking).
pub(crate) fn remove_shared_temp_of(tools: ToolUser) -> Removed {
    let dirs: Vec<&Path> = SHARED_TEMP_DIRS.iter().map(Path::new).collect();
    remove_entries_of(tools, &dirs)
}

/// "a, b, c, d, e and 3 more": the first five of `items`, for a note in a job's output.
pub(crate) fn first_five(items: &[String]) -> String {
    let shown = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    match items.len().saturating_sub(5) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::lchown;

    use std::os::unix::fs::PermissionsExt;

    const TOOLS: ToolUser = ToolUser {
        uid: 61_017,
        gid: 61_017,
    };
    const OTHER: u32 = 61_018;

    fn owned(path: &Path, uid: u32) -> &Path {
        lchown(path, Some(uid), Some(uid)).expect("chown (the tests run as root)");
        path
    }

    #[test]
    fn what_the_tool_user_left_goes_and_nothing_of_anyone_else() {
        let temp = tempfile::tempdir().unwrap();
        let shm = tempfile::tempdir().unwrap();
        let at = |name: &str| temp.path().join(name);
        // The tool user's: a file, a directory with others' files inside, and a link to
        // someone else's precious directory.
        std::fs::write(at("plan-dropped"), "x").unwrap();
        owned(&at("plan-dropped"), TOOLS.uid);
        std::fs::create_dir(at("plan-dir")).unwrap();
        std::fs::write(at("plan-dir/inside"), "x").unwrap();
        owned(&at("plan-dir"), TOOLS.uid);
        let precious = tempfile::tempdir().unwrap();
        std::fs::write(precious.path().join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(precious.path(), at("plan-link")).unwrap();
        owned(&at("plan-link"), TOOLS.uid);
        std::fs::write(shm.path().join("segment"), vec![0u8; 4096]).unwrap();
        owned(&shm.path().join("segment"), TOOLS.uid);
        // Someone else's: a file, and a world-writable directory holding one of each.
        std::fs::write(at("theirs"), "x").unwrap();
        owned(&at("theirs"), OTHER);
        std::fs::create_dir(at("shared")).unwrap();
        std::fs::set_permissions(at("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(at("shared/plan-socket"), "x").unwrap();
        owned(&at("shared/plan-socket"), TOOLS.uid);
        std::fs::write(at("shared/their-socket"), "x").unwrap();
        // Root's sticky directory, closed to others but for an ACL entry naming the tool user
        // (`setfacl -m u:61017:rwx`): the tool user could leave something there too.
        std::fs::create_dir(at("acl")).unwrap();
        std::fs::set_permissions(at("acl"), std::fs::Permissions::from_mode(0o1750)).unwrap();
        std::fs::write(at("acl/plan-file"), "x").unwrap();
        owned(&at("acl/plan-file"), TOOLS.uid);
        use crate::access::tests::{MASK, NOBODY, OTHER as OTHERS, OWNER, OWNING_GROUP, USER};
        crate::access::tests::set_acl(
            &at("acl"),
            false,
            &[
                (OWNER, 7, NOBODY),
                (USER, 7, TOOLS.uid),
                (OWNING_GROUP, 5, NOBODY),
                (MASK, 7, NOBODY),
                (OTHERS, 0, NOBODY),
            ],
        );
        // Root's sticky directory the tool user may not write into: nothing of its can be
        // there (this one was put there by root), and it is not looked into.
        std::fs::create_dir(at("closed")).unwrap();
        std::fs::set_permissions(at("closed"), std::fs::Permissions::from_mode(0o1755)).unwrap();
        std::fs::write(at("closed/odd"), "x").unwrap();
        owned(&at("closed/odd"), TOOLS.uid);
        // Someone else's world-writable directory without the sticky bit: not looked into.
        std::fs::create_dir(at("open")).unwrap();
        std::fs::set_permissions(at("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(at("open/plan-file"), "x").unwrap();
        owned(&at("open/plan-file"), TOOLS.uid);
        // A directory of someone else's, not world-writable: not looked into.
        std::fs::create_dir(at("private")).unwrap();
        std::fs::set_permissions(at("private"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(at("private/odd"), "x").unwrap();
        owned(&at("private/odd"), TOOLS.uid);

        let removed = remove_entries_of(TOOLS, &[temp.path(), shm.path()]);

        let mut gone = removed.removed.clone();
        gone.sort();
        let mut expected = vec![
            at("acl/plan-file"),
            at("plan-dir"),
            at("plan-dropped"),
            at("plan-link"),
            at("shared/plan-socket"),
            shm.path().join("segment"),
        ];
        expected.sort();
        assert_eq!(gone, expected);
        assert!(removed.failed.is_empty(), "{:?}", removed.failed);
        for path in expected {
            assert!(
                std::fs::symlink_metadata(&path).is_err(),
                "{}",
                path.display()
            );
        }
        assert!(
            precious.path().join("keep").exists(),
            "a link is not followed"
        );
        assert!(at("theirs").exists() && at("shared/their-socket").exists());
        assert!(at("private/odd").exists() && at("open/plan-file").exists());
        assert!(at("closed/odd").exists());
        let note = removed.note("an earlier job");
        assert!(
            note.starts_with("(removed 6 file(s) or directory(ies) an earlier job left"),
            "{note}"
        );

        assert_eq!(remove_entries_of(TOOLS, &[temp.path()]), Removed::default());
        assert_eq!(Removed::default().note("x"), "");
    }

    /// The owner of a sticky directory (another worker's tool user) renames it while it is
    /// walked and puts a link in its place, leading where entries of the same names are the
    /// host's (`/dev/null`, the worker's state): what the tool user left is removed where it
    /// is, and nothing where the link leads.
    #[test]
    fn a_directory_swapped_for_a_link_while_it_is_walked_leads_the_removal_nowhere() {
        let temp = tempfile::tempdir().unwrap();
        let at = |name: &str| temp.path().join(name);
        std::fs::create_dir(at("b")).unwrap();
        std::fs::set_permissions(at("b"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        owned(&at("b"), OTHER);
        std::fs::write(at("b/null"), "x").unwrap();
        owned(&at("b/null"), TOOLS.uid);
        std::fs::create_dir(at("b/state")).unwrap();
        std::fs::write(at("b/state/file"), "x").unwrap();
        owned(&at("b/state"), TOOLS.uid);
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("null"), "keep").unwrap();
        std::fs::create_dir(host.path().join("state")).unwrap();
        std::fs::write(host.path().join("state/mirror"), "keep").unwrap();

        let mut swapped = false;
        let removed = remove_entries_watched(TOOLS, &[temp.path()], &mut |entered| {
            if !swapped && entered == at("b") {
                std::fs::rename(at("b"), at("b-moved")).unwrap();
                std::os::unix::fs::symlink(host.path(), at("b")).unwrap();
                swapped = true;
            }
        });

        assert!(swapped, "the walk entered the sticky directory");
        assert!(removed.failed.is_empty(), "{:?}", removed.failed);
        let mut gone = removed.removed.clone();
        gone.sort();
        assert_eq!(gone, [at("b/null"), at("b/state")]);
        let kept = |name: &str| std::fs::read_to_string(host.path().join(name)).unwrap();
        assert_eq!(
            (kept("null"), kept("state/mirror")),
            ("keep".into(), "keep".into())
        );
        // Removed from the directory that was walked, now under another name.
        assert_eq!(std::fs::read_dir(at("b-moved")).unwrap().count(), 0);
    }
}
