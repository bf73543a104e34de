//! The plain-data view of one commit that change detection works on.

use std::sync::Arc;

use crate::fast_hash::FastMap;

use crate::paths::file_name;

/// Identifies a file's content; equal ids mean equal content (git blob ids, or a hash in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 20]);

/// The content of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub id: BlobId,
    /// `None` when the file is not valid UTF-8.
    pub text: Option<Arc<str>>,
}

/// Every file of a commit, and the contents of the ones detection evaluates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Repo-relative, `/`-separated, sorted.
    pub files: Arc<[String]>,
    /// Contents of the files for which [`needs_content`] holds, by path.
    pub blobs: FastMap<String, Blob>,
}

impl Snapshot {
    /// Builds a snapshot from `(path, contents)` pairs; for tests and fixtures.
    pub fn from_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut paths = Vec::new();
        for (path, text) in files {
            paths.push(path.to_owned());
            if needs_content(path) {
                let blob = Blob {
                    id: content_id(text),
                    text: Some(Arc::from(text)),
                };
                snapshot.blobs.insert(path.to_owned(), blob);
            }
        }
        paths.sort();
        paths.dedup();
        snapshot.files = paths.into();
        snapshot
    }

    pub fn blob(&self, path: &str) -> Option<&Blob> {
        self.blobs.get(path)
    }

    pub fn text(&self, path: &str) -> Option<&str> {
        self.blobs.get(path).and_then(|blob| blob.text.as_deref())
    }

    pub fn exists(&self, path: &str) -> bool {
        self.position(path).is_some()
    }

    /// The index of `path` in [`Snapshot::files`]: detection's compact name for a file.
    pub fn position(&self, path: &str) -> Option<u32> {
        let index = self.files.binary_search_by(|f| f.as_str().cmp(path)).ok()?;
        u32::try_from(index).ok()
    }

    /// Files directly inside `dir` (`""` is the root).
    pub fn files_in<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.files_under(dir).filter(move |path| {
            let rest = if dir.is_empty() {
                *path
            } else {
                &path[dir.len() + 1..]
            };
            !rest.contains('/')
        })
    }

    /// Files anywhere below `dir` (`""` is the root).
    pub fn files_under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix_len = if dir.is_empty() { 0 } else { dir.len() + 1 };
        let start = if dir.is_empty() {
            0
        } else {
            self.files.partition_point(|f| f.as_str() < dir)
        };
        self.files[start..]
            .iter()
            .map(String::as_str)
            .take_while(move |path| {
                dir.is_empty()
                    || (path.starts_with(dir) && path.as_bytes().get(dir.len()) <= Some(&b'/'))
            })
            .filter(move |path| {
                dir.is_empty() || (path.len() > prefix_len && path.as_bytes()[dir.len()] == b'/')
            })
    }
}

/// Whether detection reads this file's content: HCL (Terragrunt configuration, includes, unit
/// markers) and Terraform sources.
pub fn needs_content(path: &str) -> bool {
    let name = file_name(path);
    name.ends_with(".hcl") || name.ends_with(".tf") || name.ends_with(".tofu")
}

/// A stable content id for fixtures (FNV-1a, widened): tests need equal texts to share an id.
pub fn content_id(text: &str) -> BlobId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut id = [0_u8; 20];
    id[..8].copy_from_slice(&hash.to_le_bytes());
    id[8..16].copy_from_slice(&(text.len() as u64).to_le_bytes());
    BlobId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_listings_respect_boundaries() {
        let snapshot = Snapshot::from_files([
            ("a/x.tf", ""),
            ("a/sub/y.tf", ""),
            ("a-b/z.tf", ""),
            ("ab/w.tf", ""),
            ("root.hcl", ""),
        ]);
        assert_eq!(snapshot.files_in("a").collect::<Vec<_>>(), ["a/x.tf"]);
        assert_eq!(
            snapshot.files_under("a").collect::<Vec<_>>(),
            ["a/sub/y.tf", "a/x.tf"]
        );
        assert_eq!(snapshot.files_in("").collect::<Vec<_>>(), ["root.hcl"]);
        assert!(snapshot.exists("a-b/z.tf") && !snapshot.exists("a/z.tf"));
    }
}
