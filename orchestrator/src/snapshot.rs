//! The plain-data view of one commit that change detection works on.

use std::collections::HashMap;
use std::sync::Arc;

use crate::paths::file_name;

/// Every file of a commit, and the contents of the ones unit discovery reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Repo-relative, `/`-separated, sorted.
    pub files: Vec<String>,
    /// Contents of the files for which [`needs_content`] holds, by path. Files that are not
    /// valid UTF-8 are absent.
    pub contents: HashMap<String, Arc<str>>,
}

impl Snapshot {
    /// Builds a snapshot from `(path, contents)` pairs; for tests and fixtures.
    pub fn from_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (path, text) in files {
            snapshot.files.push(path.to_owned());
            if needs_content(path) {
                snapshot.contents.insert(path.to_owned(), Arc::from(text));
            }
        }
        snapshot.files.sort();
        snapshot
    }

    pub fn content(&self, path: &str) -> Option<&str> {
        self.contents.get(path).map(|text| &**text)
    }
}

/// Whether unit discovery needs to read this file: unit markers and Terraform sources.
pub fn needs_content(path: &str) -> bool {
    let name = file_name(path);
    name == "terragrunt.hcl"
        || name == "pipelines.hcl"
        || name.ends_with(".tf")
        || name.ends_with(".tofu")
}
