//! Removes a directory tree that a job's tools built, however deep and however wide: one
//! level at a time, with at most three directories open, and a few bytes per level kept.
//!
//! `std::fs::remove_dir_all` recurses, holding one open directory and one stack frame per
//! level. A plan's code can nest directories tens of thousands deep (`mkdir d; cd d` in a
//! loop), in its job directory or in `/dev/shm`. Past the open-file limit (1,024 under
//! systemd) that removal fails and the tree stays, with the memory what it holds takes in
//! `/dev/shm`; past the thread's stack (about 60,000 levels in 2 MiB) the worker aborts, and
//! again at every restart, as it clears its leftovers before the next job.
//!
//! Here the walk keeps, for each level on its way down, the directory's device and inode
//! and where its entry for the level below starts (a `getdents` cookie), and no names:
//! memory that a plan's tree could make large (a million subdirectories with long names)
//! would be the worker's, under the same limit as the kernel's memory for that tree. On the
//! way back up, the entry is found again where it starts, by its inode. Nothing else moves
//! the tree meanwhile (the tools' processes are killed before the worker removes what they
//! left); the way back up, `..`, is checked against the inode it left all the same.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Removes `path` and everything under it, never following a symbolic link: a link is
/// removed, not what it points to (blocking). As `std::fs::remove_dir_all`, but with no limit
/// on depth, and a `path` that is a file or a link is removed too.
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

/// Removes everything in the open directory `top`, however deep, never following a link
/// (blocking): for a tree reached through open directories, where a path could lead elsewhere
/// by the time it is used.
pub(crate) fn empty_directory(top: OwnedFd) -> std::io::Result<()> {
    Ok(empty(top)?)
}

/// A directory on the way down from the top.
struct Level {
    /// Device and inode: where `..` must lead back to.
    id: (u64, u64),
    /// Where to go on reading it (a `getdents` cookie, 0 for its start): where the entry of
    /// the directory below starts, while the walk is there.
    resume: i64,
}

/// A directory found in another.
struct Found {
    name: CString,
    /// Where its entry starts, and where the next one does.
    starts_at: i64,
    ends_at: i64,
}

/// Removes everything in the directory `top`, depth first.
fn empty(top: OwnedFd) -> Result<(), Errno> {
    let mut levels = vec![Level {
        id: id_of(&top)?,
        resume: 0,
    }];
    let mut open = top;
    loop {
        let level = levels.last_mut().expect("the top is never left");
        match first_directory(&open, level.resume)? {
            Some(found) => match open_directory(&open, &found.name) {
                Ok(child) => {
                    level.resume = found.starts_at;
                    levels.push(Level {
                        id: id_of(&child)?,
                        resume: 0,
                    });
                    open = child;
                }
                Err(Errno::NOENT) => level.resume = found.ends_at,
                // No longer a directory: the entry alone goes.
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    unlink(&open, &found.name, AtFlags::empty())?;
                    level.resume = found.ends_at;
                }
                Err(err) => return Err(err),
            },
            // Read to its end from where it went down last. Once more from its start, which
            // finds nothing where cookies stay put as entries go (ext4, xfs, btrfs, tmpfs
            // since Linux 6.6), and what a cookie skipped where they do not.
            None if level.resume != 0 => level.resume = 0,
            None => {
                // Empty: up to its parent, which removes it.
                let Some(Level { id: child, .. }) = levels.pop().filter(|_| !levels.is_empty())
                else {
                    return Ok(());
                };
                let parent = open_directory(&open, c"..")?;
                let level = levels.last().expect("not the top");
                if id_of(&parent)? != level.id {
                    // Moved meanwhile: going on could remove what is not the tree's.
                    return Err(Errno::STALE);
                }
                open = parent;
                remove_child(&open, level.resume, child)?;
            }
        }
    }
}

/// Reads the open directory `dir` from `resume` on: removes what is not a directory, up to
/// its first directory, which it returns.
fn first_directory(dir: &OwnedFd, resume: i64) -> Result<Option<Found>, Errno> {
    let mut entries = entries_of(dir, resume)?;
    let mut at = resume;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let starts_at = std::mem::replace(&mut at, entry.offset());
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let kind = match entry.file_type() {
            // Some filesystems do not say in the entry.
            FileType::Unknown => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(err),
            },
            kind => kind,
        };
        if kind == FileType::Directory {
            return Ok(Some(Found {
                name: name.to_owned(),
                starts_at,
                ends_at: at,
            }));
        }
        unlink(dir, name, AtFlags::empty())?;
    }
    Ok(None)
}

/// Removes the empty directory whose device and inode are `child` from the open directory
/// `dir`: looked for where its entry started (`from`), where cookies stay put the first
/// entry read; else anywhere, by the inode in the entries; else (overlayfs may give another
/// there) by the inode `stat` gives.
fn remove_child(dir: &OwnedFd, from: i64, (device, inode): (u64, u64)) -> Result<(), Errno> {
    for (start, any_inode) in [(from, false), (0, false), (0, true)] {
        let mut entries = entries_of(dir, start)?;
        while let Some(entry) = entries.read() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." || (!any_inode && entry.ino() != inode) {
                continue;
            }
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if (stat.st_dev, stat.st_ino) == (device, inode) => {
                    return unlink(dir, name, AtFlags::REMOVEDIR);
                }
                Ok(_) | Err(Errno::NOENT) => {}
                Err(err) => return Err(err),
            }
        }
    }
    // Gone from where the walk left it: nothing of it to remove here.
    Err(Errno::STALE)
}

/// A reader of the open directory `dir` from the cookie `at`. A descriptor of its own, but
/// no new open of the directory, which would need search permission on it where reading
/// needs none; its position is shared with `dir`, so it is always set.
pub(crate) fn entries_of(dir: impl AsFd, at: i64) -> Result<Dir, Errno> {
    let mut entries = Dir::new(rustix::io::fcntl_dupfd_cloexec(dir, 0)?)?;
    entries.seek(at)?;
    Ok(entries)
}

/// Its device and inode.
fn id_of(dir: &OwnedFd) -> Result<(u64, u64), Errno> {
    let stat = rustix::fs::fstat(dir)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Opens the directory `name` in `at`, unless it is a symbolic link (`ELOOP` or `ENOTDIR`).
pub(crate) fn open_directory<P: rustix::path::Arg>(
    at: impl AsFd,
    name: P,
) -> Result<OwnedFd, Errno> {
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

    /// Runs `remove_tree(top)` on a thread with 64 KiB of stack, where a removal that recursed
    /// would abort past a few hundred levels; what it returned. Whatever it left is removed
    /// with `rm` (a `TempDir` removes with std, which would abort on such a tree).
    fn remove_on_a_small_stack(top: &Path) -> std::io::Result<()> {
        let removing = top.to_owned();
        let removed = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || remove_tree(&removing))
            .unwrap()
            .join()
            .unwrap();
        if std::fs::symlink_metadata(top).is_ok() {
            let _ = std::process::Command::new("rm")
                .arg("-rf")
                .arg(top)
                .status();
        }
        removed
    }

    #[test]
    fn a_tree_deeper_than_any_stack_and_the_usual_open_file_limits_is_removed() {
        // In memory: 70,000 directories on a disk would take 280 MB of it.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let top = dir.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        // Deeper than 1,024 and 65,536 open files (systemd's and many hosts' limits), and
        // than std's removal gets in 2 MiB of stack.
        nest(&top, 70_000);
        remove_on_a_small_stack(&top).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_wide_tree_is_removed_whole() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let top = dir.path().join("wide");
        std::fs::create_dir(&top).unwrap();
        // Thousands of siblings, files among them, each directory holding more.
        for i in 0..3_000 {
            let sub = top.join(format!("{i:0>200}"));
            std::fs::create_dir_all(sub.join("a/b")).unwrap();
            std::fs::write(sub.join("a/file"), "x").unwrap();
            std::fs::write(top.join(format!("file-{i}")), "x").unwrap();
        }
        remove_on_a_small_stack(&top).unwrap();
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
