//! Repo-relative path arithmetic: joining, normalizing, and walking up to a unit.

/// The directory part of a repo-relative path (`""` for the root).
pub(crate) fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The file name part of a repo-relative path.
pub(crate) fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// Joins `relative` onto the repo-relative directory `dir` and normalizes `.` and `..`.
/// `None` when the result would leave the repository, or `relative` is absolute.
pub(crate) fn join(dir: &str, relative: &str) -> Option<String> {
    if relative.starts_with('/') || relative.contains('\\') {
        return None;
    }
    // One pass, one allocation: this runs for every path of every unit.
    let mut out = String::with_capacity(dir.len() + relative.len() + 1);
    for part in dir.split('/').chain(relative.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                if out.is_empty() {
                    return None;
                }
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
            }
            part => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(part);
            }
        }
    }
    Some(out)
}

/// The directories containing `path`, innermost first, without the root.
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(parent(path)), |dir| Some(parent(dir)))
        .take_while(|dir| !dir.is_empty())
}

/// `path` itself if it is a directory in `is_unit`, else its nearest ancestor that is, never
/// the root. `path` is a file path; the search starts at its directory.
pub(crate) fn owning_unit(path: &str, is_unit: impl Fn(&str) -> bool) -> Option<&str> {
    let mut dir = parent(path);
    while !dir.is_empty() {
        if is_unit(dir) {
            return Some(dir);
        }
        dir = parent(dir);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_normalizes_and_refuses_to_escape() {
        assert_eq!(join("prod/app", "../vpc").as_deref(), Some("prod/vpc"));
        assert_eq!(join("prod/app", "./x/../y").as_deref(), Some("prod/app/y"));
        assert_eq!(join("prod/app", "../../shared").as_deref(), Some("shared"));
        assert_eq!(join("prod/app", "../../../etc"), None);
        assert_eq!(join("prod/app", "/etc/passwd"), None);
    }

    #[test]
    fn a_file_belongs_to_its_nearest_unit_directory() {
        let units = ["prod/app", "prod/app/nested"];
        let is_unit = |d: &str| units.contains(&d);
        assert_eq!(owning_unit("prod/app/main.tf", is_unit), Some("prod/app"));
        assert_eq!(
            owning_unit("prod/app/modules/x/main.tf", is_unit),
            Some("prod/app")
        );
        assert_eq!(
            owning_unit("prod/app/nested/main.tf", is_unit),
            Some("prod/app/nested")
        );
        assert_eq!(owning_unit("README.md", is_unit), None);
        assert_eq!(owning_unit("prod/README.md", is_unit), None);
    }
}
