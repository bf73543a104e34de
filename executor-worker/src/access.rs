//! Who besides the worker may read or write a file or directory: its owner, its mode bits, and its
//! POSIX access control lists (ACLs).
//!
//! The mode bits name three classes: the owner, the owning group and everyone else. An ACL
//! (`setfacl -m u:tools:rwx`) can also let named users and groups write, which the mode bits
//! show only as the group class's mask: a directory root owns with mode 775 may be writable by
//! the tool user through an entry that names it. The worker's checks of what the tool user
//! could change (its work and log directories, what every job's tools read from) therefore
//! read the ACL too, and decide as the kernel does. A directory's default ACL is what entries
//! created in it later get, so it counts for places whose future contents matter.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use config::ToolUser;

/// The extended attribute that holds a file's access ACL.
const ACCESS_ACL: &str = "system.posix_acl_access";
/// The extended attribute that holds a directory's default ACL.
const DEFAULT_ACL: &str = "system.posix_acl_default";
/// The only version of the attributes' binary form (`POSIX_ACL_XATTR_VERSION`).
const ACL_VERSION: u32 = 2;
/// The permission bits that decide who may write.
pub(crate) const WRITE: u16 = 0o2;
/// ... read a file.
pub(crate) const READ: u16 = 0o4;
/// ... pass through a directory.
pub(crate) const SEARCH: u16 = 0o1;

/// What decides who may write a file: its ownership, mode and ACLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Access {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// The permission bits, with set-user-ID, set-group-ID and sticky (`& 0o7777`).
    pub(crate) mode: u32,
    /// The access ACL; `None` when there is none, or the file system keeps none.
    pub(crate) acl: Option<Acl>,
    /// A directory's default ACL; `None` for a file, or when there is none.
    pub(crate) default_acl: Option<Acl>,
}

impl Access {
    /// Ownership and mode bits alone, as for a file without an ACL.
    pub(crate) fn bits(uid: u32, gid: u32, mode: u32) -> Access {
        Access {
            uid,
            gid,
            mode: mode & 0o7777,
            acl: None,
            default_acl: None,
        }
    }

    /// `path`'s access, links followed. `Err`: its metadata or an ACL could not be read, or an
    /// ACL is malformed.
    pub(crate) fn of(path: &Path) -> std::io::Result<Access> {
        Access::read(path, &std::fs::metadata(path)?)
    }

    /// `path`'s access, where `meta` is its metadata (links followed). The ACLs are read
    /// through links too, so `path` should be the place `meta` describes. `Err`: an ACL could
    /// not be read or is malformed, so nobody can tell who may write.
    pub(crate) fn read(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<Access> {
        Access::read_from(AclOf::Path(path), meta)
    }

    /// [`Access::read`] of an open file or directory (`meta` its metadata): its ACLs are read
    /// through the descriptor, so a rename of its path meanwhile cannot make another's be read.
    pub(crate) fn read_open(
        open: BorrowedFd<'_>,
        meta: &std::fs::Metadata,
    ) -> std::io::Result<Access> {
        Access::read_from(AclOf::Open(open), meta)
    }

    fn read_from(of: AclOf<'_>, meta: &std::fs::Metadata) -> std::io::Result<Access> {
        Ok(Access {
            acl: read_acl(of, ACCESS_ACL)?,
            default_acl: if meta.is_dir() {
                read_acl(of, DEFAULT_ACL)?
            } else {
                None
            },
            ..Access::bits(meta.uid(), meta.gid(), meta.mode())
        })
    }

    /// Whether `user` (its uid and its one group, without capabilities, as a tool user runs)
    /// may do all of `bits` ([`READ`], [`WRITE`], [`SEARCH`]), as the kernel decides: the
    /// owner's bits for the owner; else the ACL, where the group class's mode bits (its mask)
    /// are not all clear; else the owning group's bits or others'.
    pub(crate) fn permits(&self, user: ToolUser, bits: u16) -> bool {
        let class = |shift: u32| (self.mode >> shift) as u16 & bits == bits;
        if self.uid == user.uid {
            return class(6);
        }
        match self.deciding_acl() {
            Some(acl) => acl.permits(user, self.gid, bits),
            None if self.gid == user.gid => class(3),
            None => class(0),
        }
    }

    /// The ACL, where it rather than the mode bits decides for users other than the owner:
    /// the kernel skips it when the group class's mode bits (its mask) are all clear.
    fn deciding_acl(&self) -> Option<&Acl> {
        self.acl.as_ref().filter(|_| self.mode & 0o070 != 0)
    }
}

/// One ACL, as the kernel keeps it in its extended attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acl {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: Tag,
    perm: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Owner,
    User(u32),
    OwningGroup,
    Group(u32),
    Mask,
    Other,
}

impl Acl {
    /// Decodes the binary form of `system.posix_acl_*`: a little-endian version (2), then
    /// 8 bytes per entry: tag, permissions, id.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Acl, String> {
        let Some((version, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(format!("an ACL of {} bytes has no version", bytes.len()));
        };
        let version = u32::from_le_bytes(*version);
        if version != ACL_VERSION {
            return Err(format!("an ACL of version {version}, not {ACL_VERSION}"));
        }
        if rest.len() % 8 != 0 {
            return Err(format!(
                "an ACL of {} bytes is not a whole number of entries",
                bytes.len()
            ));
        }
        let entries = rest
            .chunks_exact(8)
            .map(|entry| {
                let tag = u16::from_le_bytes([entry[0], entry[1]]);
                let perm = u16::from_le_bytes([entry[2], entry[3]]);
                let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                let tag = match tag {
                    0x01 => Tag::Owner,
                    0x02 => Tag::User(id),
                    0x04 => Tag::OwningGroup,
                    0x08 => Tag::Group(id),
                    0x10 => Tag::Mask,
                    0x20 => Tag::Other,
                    other => return Err(format!("an ACL entry of unknown tag {other:#x}")),
                };
                Ok(Entry { tag, perm })
            })
            .collect::<Result<_, _>>()?;
        Ok(Acl { entries })
    }

    /// Whether `user` (its uid and its one group) may do all of `bits`, when it does not own
    /// the file and the file's group is `owning_gid`. The kernel's order: an entry naming the
    /// user decides; else the groups it is in (one of them must give all of `bits`); else the
    /// entry for others. What named users and groups get is limited by the mask.
    fn permits(&self, user: ToolUser, owning_gid: u32, bits: u16) -> bool {
        let mask = self
            .entries
            .iter()
            .find(|entry| entry.tag == Tag::Mask)
            .map_or(0o7, |mask| mask.perm);
        let grants = |entry: &Entry| entry.perm & mask & bits == bits;
        if let Some(named) = self.entries.iter().find(|e| e.tag == Tag::User(user.uid)) {
            return grants(named);
        }
        let mut groups = self
            .entries
            .iter()
            .filter(|entry| match entry.tag {
                Tag::OwningGroup => owning_gid == user.gid,
                Tag::Group(gid) => gid == user.gid,
                _ => false,
            })
            .peekable();
        if groups.peek().is_some() {
            return groups.any(grants);
        }
        self.others_give(bits)
    }

    /// Whether the entry for others gives all of `bits`.
    fn others_give(&self, bits: u16) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.tag == Tag::Other && entry.perm & bits == bits)
    }
}

/// What an ACL is read from: a path (links followed) or an open file.
#[derive(Debug, Clone, Copy)]
enum AclOf<'a> {
    Path(&'a Path),
    Open(BorrowedFd<'a>),
}

/// `name`'s ACL of `of`. `Ok(None)`: it has none, or its file system keeps none.
fn read_acl(of: AclOf<'_>, name: &str) -> std::io::Result<Option<Acl>> {
    use rustix::io::Errno;
    let size = match of {
        AclOf::Path(path) => rustix::fs::getxattr_query(path, name),
        AclOf::Open(open) => rustix::fs::fgetxattr_query(open, name),
    };
    let size = match size {
        Ok(size) => size,
        Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let mut value = vec![0; size];
    // Should the ACL grow between the two calls, this fails (ERANGE) and the caller refuses.
    let read = match of {
        AclOf::Path(path) => rustix::fs::getxattr(path, name, &mut value[..])?,
        AclOf::Open(open) => rustix::fs::fgetxattr(open, name, &mut value[..])?,
    };
    Acl::parse(&value[..read])
        .map(Some)
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidData, why))
}

/// Why anyone, or `tools` when given, may change what `access` describes (or its entries, for
/// a directory): `tools` owns it, anyone may write, or `tools` may through its group or an
/// ACL. With `sticky_protects`, a directory's sticky bit counts: others may add entries to it,
/// but not rename or remove what is there. `None`: nobody may.
pub(crate) fn writable_by(
    tools: Option<ToolUser>,
    access: &Access,
    sticky_protects: bool,
) -> Option<String> {
    let Access { uid, gid, mode, .. } = *access;
    let protected = sticky_protects && mode & 0o1000 != 0;
    if let Some(tools) = tools
        && uid == tools.uid
    {
        return Some(format!("is owned by the tool user ({uid})"));
    }
    if protected {
        return None;
    }
    if mode & 0o002 != 0 {
        return Some(format!("has mode {mode:o}: anyone may write into it"));
    }
    let tools = tools?;
    if !access.permits(tools, WRITE) {
        None
    } else if access.deciding_acl().is_some() {
        Some(format!(
            "has mode {mode:o} and an access control list that lets the tool user ({}) write into it",
            tools.uid
        ))
    } else {
        Some(format!(
            "has mode {mode:o} and the tool user's group ({gid}): the tool user may write into it"
        ))
    }
}

/// Why anyone, or `tools` when given, could write what is created in the directory `access`
/// describes from now on: its default ACL gives them write. `None`: it does not (without a
/// default ACL, new entries get the creator's mode and umask).
pub(crate) fn created_writable_by(tools: Option<ToolUser>, access: &Access) -> Option<String> {
    let acl = access.default_acl.as_ref()?;
    if acl.others_give(WRITE) {
        return Some(
            "has a default access control list that lets anyone write into what is created in it"
                .to_owned(),
        );
    }
    let tools = tools?;
    // What is created here belongs to its creator, never the tool user, so the entries that
    // count for the tool user are those naming it or its group, and the owning group's where
    // the directory's group is the tool user's. That is cautious: only a set-group-ID
    // directory hands its group on, otherwise the new entry is the creator's group's. The
    // new entry's mask is the default mask narrowed by the creator's mode: the default mask
    // is the most it can be.
    acl.permits(tools, access.gid, WRITE).then(|| {
        format!(
            "has a default access control list that lets the tool user ({}) write into what is created in it",
            tools.uid
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    const TOOLS: ToolUser = ToolUser {
        uid: 62_401,
        gid: 62_401,
    };

    /// One ACL entry: its tag, permissions and id.
    pub(crate) type AclEntry = (u16, u16, u32);

    /// The binary form of an ACL of `entries`.
    pub(crate) fn acl_bytes(entries: &[AclEntry]) -> Vec<u8> {
        let mut bytes = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            bytes.extend(tag.to_le_bytes());
            bytes.extend(perm.to_le_bytes());
            bytes.extend(id.to_le_bytes());
        }
        bytes
    }

    /// Gives `path` the ACL `entries` through the kernel, as `setfacl` would.
    pub(crate) fn set_acl(path: &Path, default: bool, entries: &[AclEntry]) {
        let name = if default { DEFAULT_ACL } else { ACCESS_ACL };
        rustix::fs::setxattr(
            path,
            name,
            &acl_bytes(entries),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap_or_else(|err| panic!("setting {name} on {}: {err}", path.display()));
    }

    /// What `setfacl -m u:UID:rwx` gives a directory of root's with mode 755: write for
    /// `uid`, and a mask that lets it through (the mode then reads 775).
    pub(crate) fn user_may_write(uid: u32) -> [AclEntry; 5] {
        [
            (OWNER, 7, NOBODY),
            (USER, 7, uid),
            (OWNING_GROUP, 5, NOBODY),
            (MASK, 7, NOBODY),
            (OTHER, 5, NOBODY),
        ]
    }

    pub(crate) const NOBODY: u32 = u32::MAX;
    pub(crate) const OWNER: u16 = 0x01;
    pub(crate) const USER: u16 = 0x02;
    pub(crate) const OWNING_GROUP: u16 = 0x04;
    pub(crate) const GROUP: u16 = 0x08;
    pub(crate) const MASK: u16 = 0x10;
    pub(crate) const OTHER: u16 = 0x20;

    #[test]
    fn malformed_acls_are_errors_that_say_what_is_wrong() {
        let good = acl_bytes(&[(OWNER, 7, NOBODY), (OTHER, 5, NOBODY)]);
        assert!(Acl::parse(&good).is_ok());
        assert_eq!(
            Acl::parse(&[2, 0]).unwrap_err(),
            "an ACL of 2 bytes has no version"
        );
        let mut old = good.clone();
        old[0] = 1;
        assert_eq!(Acl::parse(&old).unwrap_err(), "an ACL of version 1, not 2");
        assert_eq!(
            Acl::parse(&good[..good.len() - 1]).unwrap_err(),
            "an ACL of 19 bytes is not a whole number of entries"
        );
        assert_eq!(
            Acl::parse(&acl_bytes(&[(0x40, 7, 0)])).unwrap_err(),
            "an ACL entry of unknown tag 0x40"
        );
    }

    /// Whether `access(2)` lets the tool user do what `test`'s `flag` (`-r`, `-w`, `-x`)
    /// asks of `path`: `test` run as the tool user. (The standard library drops root's
    /// supplementary groups with the switch.)
    fn kernel_permits(path: &Path, flag: &str) -> bool {
        std::process::Command::new("test")
            .args([flag, &path.display().to_string()])
            .uid(TOOLS.uid)
            .gid(TOOLS.gid)
            .status()
            .unwrap()
            .success()
    }

    /// A scratch directory the tool user may pass through, to reach the cases in it.
    fn passable_scratch() -> tempfile::TempDir {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            scratch.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        scratch
    }

    /// The decisions agree with the kernel's on ACLs and modes drawn at random (from a fixed
    /// seed, so that a failure repeats): owner root or the tool user; the owning group root's,
    /// the tool user's or another; entries naming the tool user, its group, or others; any
    /// permissions and mask; sometimes no ACL, sometimes a `chmod` after it. For each, whether
    /// the tool user may read, write and pass through is what `access(2)` answers for it.
    #[test]
    fn acls_drawn_at_random_are_decided_as_the_kernel_decides() {
        let scratch = passable_scratch();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut draw = |below: u16| {
            // xorshift64: enough to spread the cases, and the same every run.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(below)) as u16
        };
        for case in 0..200 {
            let dir = scratch.path().join(case.to_string());
            std::fs::create_dir(&dir).unwrap();
            let owner = if draw(4) == 0 { TOOLS.uid } else { 0 };
            let group = [0, TOOLS.gid, TOOLS.gid + 1][usize::from(draw(3))];
            std::os::unix::fs::chown(&dir, Some(owner), Some(group)).unwrap();
            let mut entries = vec![
                (OWNER, draw(8), NOBODY),
                (OWNING_GROUP, draw(8), NOBODY),
                (OTHER, draw(8), NOBODY),
            ];
            for (tag, id, odds) in [
                (USER, TOOLS.uid, 2),
                (USER, TOOLS.uid + 1, 3),
                (GROUP, TOOLS.gid, 2),
                (GROUP, TOOLS.gid + 1, 3),
            ] {
                if draw(odds) == 0 {
                    entries.push((tag, draw(8), id));
                }
            }
            // The kernel wants a mask where users or groups are named.
            if entries.len() > 3 || draw(2) == 0 {
                entries.push((MASK, draw(8), NOBODY));
            }
            entries.sort_by_key(|(tag, _, id)| (*tag, *id));
            match draw(5) {
                0 => std::fs::set_permissions(
                    &dir,
                    std::os::unix::fs::PermissionsExt::from_mode(u32::from(draw(0o1000))),
                )
                .unwrap(),
                1 => {
                    set_acl(&dir, false, &entries);
                    // A later `chmod` sets the mask (or the group class) anew.
                    std::fs::set_permissions(
                        &dir,
                        std::os::unix::fs::PermissionsExt::from_mode(u32::from(draw(0o1000))),
                    )
                    .unwrap();
                }
                _ => set_acl(&dir, false, &entries),
            }
            let access = Access::of(&dir).unwrap();
            for (bits, flag) in [(READ, "-r"), (WRITE, "-w"), (SEARCH, "-x")] {
                assert_eq!(
                    access.permits(TOOLS, bits),
                    kernel_permits(&dir, flag),
                    "case {case}, test {flag}: {access:?}"
                );
            }
        }
    }

    /// The decisions agree with the kernel's: for each ACL, the tool user's `touch` in a
    /// directory that has it succeeds exactly when [`writable_by`] says it may write, and the
    /// reason names the ACL.
    #[test]
    fn the_tool_users_write_access_is_decided_as_the_kernel_decides() {
        let scratch = passable_scratch();
        let (uid, gid) = (TOOLS.uid, TOOLS.gid);
        let cases: &[(&str, u32, &[AclEntry], bool)] = &[
            (
                "a named user entry with write",
                0,
                &[
                    (OWNER, 7, NOBODY),
                    (USER, 7, uid),
                    (OWNING_GROUP, 5, NOBODY),
                    (MASK, 7, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                true,
            ),
            (
                "a named user entry whose write the mask takes away",
                0,
                &[
                    (OWNER, 7, NOBODY),
                    (USER, 7, uid),
                    (OWNING_GROUP, 5, NOBODY),
                    (MASK, 5, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                false,
            ),
            (
                "a named group entry with write",
                0,
                &[
                    (OWNER, 7, NOBODY),
                    (OWNING_GROUP, 5, NOBODY),
                    (GROUP, 7, gid),
                    (MASK, 7, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                true,
            ),
            (
                "the owning group is the tool user's, with write, another named group gives none",
                gid,
                &[
                    (OWNER, 7, NOBODY),
                    (OWNING_GROUP, 7, NOBODY),
                    (GROUP, 5, gid),
                    (MASK, 7, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                true,
            ),
            (
                "the owning group is the tool user's, the mask has write but its entry has not",
                gid,
                &[
                    (OWNER, 7, NOBODY),
                    (OWNING_GROUP, 5, NOBODY),
                    (USER, 7, uid + 1),
                    (MASK, 7, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                false,
            ),
            (
                "the owning group is the tool user's and gives nothing, a named group gives write",
                gid,
                &[
                    (OWNER, 7, NOBODY),
                    (OWNING_GROUP, 0, NOBODY),
                    (GROUP, 7, gid),
                    (MASK, 7, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                true,
            ),
            (
                "only other users are named",
                0,
                &[
                    (OWNER, 7, NOBODY),
                    (USER, 7, uid + 1),
                    (GROUP, 7, gid + 1),
                    (OWNING_GROUP, 5, NOBODY),
                    (MASK, 7, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                false,
            ),
            (
                "an entry naming the tool user takes away what others get",
                0,
                &[
                    (OWNER, 7, NOBODY),
                    (USER, 0, uid),
                    (OWNING_GROUP, 5, NOBODY),
                    (MASK, 5, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                false,
            ),
            (
                "a mask of nothing: the group class is closed, so others' bits decide",
                0,
                &[
                    (OWNER, 7, NOBODY),
                    (USER, 7, uid),
                    (OWNING_GROUP, 7, NOBODY),
                    (MASK, 0, NOBODY),
                    (OTHER, 5, NOBODY),
                ],
                false,
            ),
        ];
        for (number, (case, owning_gid, entries, writes)) in cases.iter().enumerate() {
            let dir = scratch.path().join(number.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(0), Some(*owning_gid)).unwrap();
            // Entries must be in the kernel's order: by tag, then by id.
            let mut entries = entries.to_vec();
            entries.sort_by_key(|(tag, _, id)| (*tag, *id));
            set_acl(&dir, false, &entries);
            let meta = std::fs::metadata(&dir).unwrap();
            let access = Access::read(&dir, &meta).unwrap();
            assert!(access.acl.is_some(), "{case}: the ACL was not read back");
            // (The standard library drops root's supplementary groups with the switch.)
            let touched = std::process::Command::new("touch")
                .arg(dir.join("file"))
                .uid(uid)
                .gid(gid)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert_eq!(touched, *writes, "{case}: the kernel's answer");
            // And so for reading and passing through, as `access(2)` answers for the user.
            for (bits, flag) in [(READ, "-r"), (WRITE, "-w"), (SEARCH, "-x")] {
                let kernel = kernel_permits(&dir, flag);
                assert_eq!(access.permits(TOOLS, bits), kernel, "{case}: test {flag}");
            }
            let why = writable_by(Some(TOOLS), &access, false);
            assert_eq!(why.is_some(), *writes, "{case}: {why:?}");
            if let Some(why) = why {
                assert!(
                    why.ends_with(
                        "an access control list that lets the tool user (62401) write into it"
                    ),
                    "{case}: {why}"
                );
            }
            // Others were never given write: for anyone else, nothing to say.
            assert_eq!(writable_by(None, &access, false), None, "{case}");
        }
    }

    #[test]
    fn a_default_acl_that_gives_write_to_what_is_created_is_named() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let read = || Access::of(dir).unwrap();
        assert_eq!(created_writable_by(Some(TOOLS), &read()), None);

        let base = [(OWNER, 7, NOBODY), (OWNING_GROUP, 5, NOBODY)];
        let with = |more: &[AclEntry]| {
            let mut entries = base.to_vec();
            entries.extend(more);
            entries.sort_by_key(|(tag, _, id)| (*tag, *id));
            set_acl(dir, true, &entries);
            read()
        };
        let tools = with(&[(USER, 7, TOOLS.uid), (MASK, 7, NOBODY), (OTHER, 5, NOBODY)]);
        assert_eq!(
            created_writable_by(Some(TOOLS), &tools).unwrap(),
            "has a default access control list that lets the tool user (62401) write into what is created in it"
        );
        assert_eq!(created_writable_by(None, &tools), None);
        // A file the worker creates there is the tool user's to write: the kernel copies the
        // default ACL to it.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let new = dir.join("new");
        std::fs::write(&new, "").unwrap();
        let new_access = Access::of(&new).unwrap();
        assert!(new_access.permits(TOOLS, WRITE), "{new_access:?}");
        assert!(
            kernel_permits(&new, "-w"),
            "the kernel lets the tool user write it"
        );

        let anyone = with(&[(OTHER, 7, NOBODY)]);
        assert!(
            created_writable_by(None, &anyone)
                .unwrap()
                .contains("lets anyone write into what is created in it")
        );
        let masked = with(&[(USER, 7, TOOLS.uid), (MASK, 5, NOBODY), (OTHER, 5, NOBODY)]);
        assert_eq!(created_writable_by(Some(TOOLS), &masked), None);
    }

    #[test]
    fn without_a_tool_user_only_what_anyone_may_write_counts() {
        // (The tool user's own cases: `workspace`'s tests.)
        let tools_own = Access::bits(TOOLS.uid, TOOLS.gid, 0o770);
        assert_eq!(writable_by(None, &tools_own, true), None);
        // Adding an entry to a sticky directory is still writing into it.
        let tmp = Access::bits(0, 0, 0o1777);
        assert_eq!(writable_by(None, &tmp, true), None);
        assert_eq!(
            writable_by(None, &tmp, false).unwrap(),
            "has mode 1777: anyone may write into it"
        );
    }
}
