//! Static evaluation of HCL: parsing (cached by content), values, and an evaluator for the
//! Terragrunt and Terraform functions that decide which files a unit reads. Pure.
//!
//! Paths produced by functions such as `get_repo_root()` are absolute in Terragrunt. Here they
//! are rooted at [`REPO_ROOT`], a virtual directory, so they can be mapped back to repo-relative
//! paths; anything outside it is outside the repository.

mod eval;
mod parse;
mod value;

pub(crate) use eval::{
    Collector, ContextUse, Eval, Locals, ReadConfig, Scope, ScopeKind, contains_read_call,
};
pub(crate) use parse::{ParseCache, ParsedFile};
pub(crate) use value::Value;

use crate::paths::join;

/// The virtual absolute path of the repository root.
pub(crate) const REPO_ROOT: &str = "/__repo__";

/// The absolute (virtual) form of a repo-relative path.
pub(crate) fn absolute(repo_path: &str) -> String {
    if repo_path.is_empty() {
        REPO_ROOT.to_owned()
    } else {
        format!("{REPO_ROOT}/{repo_path}")
    }
}

/// A path as configuration wrote it, resolved to a repo-relative path: absolute (virtual) paths
/// are mapped back, relative ones are joined onto `base_dir`. `None` when it leaves the
/// repository.
pub(crate) fn resolve(path: &str, base_dir: &str) -> Option<String> {
    let path = path.trim_end_matches('/');
    if let Some(rest) = path.strip_prefix(REPO_ROOT) {
        if rest.is_empty() {
            return Some(String::new());
        }
        return join("", rest.strip_prefix('/')?);
    }
    if path.starts_with('/') {
        return None;
    }
    join(base_dir, path)
}

/// A problem found while evaluating, with where it is. `uncertain` problems mean the set of
/// files a unit reads may be incomplete, so detection answers conservatively.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Issue {
    pub(crate) file: String,
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
    pub(crate) uncertain: bool,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_absolute_paths_map_back_to_the_repository() {
        assert_eq!(
            resolve(&absolute("live/prod"), "x").as_deref(),
            Some("live/prod")
        );
        assert_eq!(
            resolve(&format!("{REPO_ROOT}/live/../modules/vpc/"), "x").as_deref(),
            Some("modules/vpc")
        );
        assert_eq!(
            resolve("../vpc", "live/prod/app").as_deref(),
            Some("live/prod/vpc")
        );
        assert_eq!(resolve("/etc/passwd", "live"), None);
        assert_eq!(resolve(&format!("{REPO_ROOT}/../outside"), "live"), None);
    }
}
