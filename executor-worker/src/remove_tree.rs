//! Removes a directory tree that a job's tools built, however deep: one level at a time, with
//! at most three directories open and the walk's place kept on the heap.
//!
//! `std::fs::remove_dir_all` recurses, holding one open directory and one stack frame per
//! level. A plan's code can nest directories tens of thousands deep (`mkdir d; cd d` in a
//! loop), in its job directory or in `/dev/shm`. Past the open-file limit (1,024 under
//! systemd) that removal fails and the tree stays, with the memory what it holds takes in
//! `/dev/shm`; past the thread's stack (about 60,000 levels in 2 MiB) the worker aborts, and
//! again at every restart, as it clears its leftovers before the next job. Here the walk
//! keeps, for each level, the directory's device and inode, and the names of directories
//! still to remove. Nothing else moves the tree meanwhile (the tools' processes are killed
//! before the worker removes what they left); the way back up, `..`, is checked against the
//! inode it left, all the same.

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Removes `path` and everything under it, never following a symbolic link: a link is
/// removed, not what it points to (blocking). As `std::fs::remove_dir_all`, but with no limit
/// on depth.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    let top = match open_directory(CWD, path) {
        Ok(top) => top,
        // A file or a symbolic link: the entry alone goes.
        Err(Errno::NOTDIR | Errno::LOOP) => return std::fs::remove_file(path),
        Err(err) => return Err(err.into()),
    };
    empty(top)?;
    std::fs::remove_dir(path)
}

/// A directory on the way down.
struct Level {
    /// Device and inode: where `..` must lead back to.
    id: (u64, u64),
    /// Where its subdirectories' names start in [`Walk::names`]; its own name is the one
    /// before (the top's has none).
    children: usize,
}

/// Where the removal is: the levels from the top down to the directory open, and the names
/// of the directories still to remove, each ended by a NUL, one level's after its parent's.
#[derive(Default)]
struct Walk {
    levels: Vec<Level>,
    names: Vec<u8>,
}

impl Walk {
    /// Where the last name in [`Walk::names`] starts.
    fn last_name_start(&self) -> usize {
        let before_nul = self.names.len().saturating_sub(1);
        self.names[..before_nul]
            .iter()
            .rposition(|&byte| byte == 0)
            .map_or(0, |nul| nul + 1)
    }

    /// The last name in [`Walk::names`], with its NUL.
    fn last_name(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.names[self.last_name_start()..])
            .expect("each name is kept with its one NUL")
    }

    fn drop_last_name(&mut self) {
        self.names.truncate(self.last_name_start());
    }

    /// Enters the open directory `dir`: removes what it holds other than directories, and
    /// keeps its directories' names to go down into.
    fn enter(&mut self, dir: &OwnedFd) -> Result<(), Errno> {
        let stat = rustix::fs::fstat(dir)?;
        self.levels.push(Level {
            id: (stat.st_dev, stat.st_ino),
            children: self.names.len(),
        });
        // Its own descriptor, with its own position: `dir` stays usable for what follows.
        let mut entries = Dir::read_from(dir)?;
        while let Some(entry) = entries.read() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let kind = match entry.file_type() {
                // Some filesystems do not say in the entry.
                FileType::Unknown => FileType::from_raw_mode(
                    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
                ),
                kind => kind,
            };
            if kind == FileType::Directory {
                self.names.extend_from_slice(name.to_bytes_with_nul());
            } else {
                unlink(dir, name, AtFlags::empty())?;
            }
        }
        Ok(())
    }
}

/// Removes everything in the directory `top`, depth first.
fn empty(top: OwnedFd) -> Result<(), Errno> {
    let mut walk = Walk::default();
    walk.enter(&top)?;
    let mut open = top;
    loop {
        let level = walk.levels.last().expect("the top is never left");
        if walk.names.len() > level.children {
            // Down into its last directory not yet removed.
            match open_directory(&open, walk.last_name()) {
                Ok(child) => {
                    walk.enter(&child)?;
                    open = child;
                }
                // Gone, or no longer a directory: the entry alone goes.
                Err(Errno::NOENT) => walk.drop_last_name(),
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    unlink(&open, walk.last_name(), AtFlags::empty())?;
                    walk.drop_last_name();
                }
                Err(err) => return Err(err),
            }
        } else {
            // Empty: up to its parent, which removes it.
            if walk.levels.len() == 1 {
                return Ok(());
            }
            walk.levels.pop();
            let parent = open_directory(&open, c"..")?;
            let stat = rustix::fs::fstat(&parent)?;
            if Some((stat.st_dev, stat.st_ino)) != walk.levels.last().map(|level| level.id) {
                // Moved meanwhile: going on could remove what is not the tree's.
                return Err(Errno::STALE);
            }
            open = parent;
            unlink(&open, walk.last_name(), AtFlags::REMOVEDIR)?;
            walk.drop_last_name();
        }
    }
}

/// Opens the directory `name` in `at`, unless it is a symbolic link (`ELOOP` or `ENOTDIR`).
fn open_directory<P: rustix::path::Arg>(at: impl AsFd, name: P) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Removes `name` in `at`; one already gone is no error.
fn unlink(at: impl AsFd, name: &CStr, flags: AtFlags) -> Result<(), Errno> {
    match rustix::fs::unlinkat(at, name, flags) {
        Err(Errno::NOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a chain of `depth` directories named `d` under `top`, one open at a time, with a
    /// file at the bottom.
    fn nest(top: &Path, depth: usize) {
        let mut open = open_directory(CWD, top).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&open, c"d", Mode::RWXU).unwrap();
            open = open_directory(&open, c"d").unwrap();
        }
        let bottom = rustix::fs::openat(
            &open,
            c"bottom",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .unwrap();
        rustix::io::write(&bottom, b"held").unwrap();
    }

    #[test]
    fn a_tree_deeper_than_the_open_file_limit_and_any_stack_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        // Deeper than the open-file limit here (up to 200,000 levels), and than std's removal
        // gets in 2 MiB of stack; removed on a thread with 64 KiB, where a removal that
        // recursed would abort.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let depth = limit.map_or(70_000, |limit| {
            limit.saturating_add(1).clamp(70_000, 200_000) as usize
        });
        nest(&top, depth);
        let removing = top.clone();
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || remove_tree(&removing))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!top.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn links_in_the_tree_are_removed_and_what_they_point_to_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("kept")).unwrap();
        std::fs::write(outside.join("precious"), "x").unwrap();
        let top = dir.path().join("tree");
        std::fs::create_dir_all(top.join("a/b/c")).unwrap();
        std::fs::create_dir_all(top.join("a/empty")).unwrap();
        std::fs::write(top.join("a/b/c/file"), "x").unwrap();
        std::fs::write(top.join("a/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("a/b/to-a-directory")).unwrap();
        std::os::unix::fs::symlink(outside.join("precious"), top.join("a/to-a-file")).unwrap();
        std::os::unix::fs::symlink("nowhere", top.join("dangling")).unwrap();
        rustix::fs::mkfifoat(CWD, top.join("a/b/fifo").as_path(), Mode::RUSR).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("precious").exists() && outside.join("kept").is_dir());

        // A link given as the tree itself is removed as a link.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(outside.join("precious").exists() && outside.join("kept").is_dir());
        // A file too, and a path that is not there is an error, as for std.
        remove_tree(&outside.join("precious")).unwrap();
        assert!(!outside.join("precious").exists());
        let missing = remove_tree(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
