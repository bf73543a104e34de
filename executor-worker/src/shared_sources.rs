//! Directories the tools take providers and modules from that later jobs take them from too (a
//! plugin cache, a filesystem mirror, Terragrunt's shared caches), and who could write there.
//!
//! Terraform runs the providers it finds in its plugin cache or in a filesystem mirror, and
//! takes a cached one as it is when the unit has no lock file; Terragrunt reuses what its
//! download directory holds. A pull request's plan that could write into one of them would put
//! a provider there that every later job of the worker runs: later pull requests' plans, whose
//! results it could then forge, and, where an apply worker on the host reads the same
//! directory, applies with their credentials. So a plan worker refuses to start when its tool
//! user could write into one, and every worker refuses one that anyone on the host may write
//! into.
//!
//! Only absolute paths are looked at: a relative one is resolved in the job's own checkout, and
//! `~` or `$HOME` is the job's own directory (the tools' `HOME`).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use config::ToolUser;

/// The tools' variables that name such a directory: Terraform's plugin cache, Terragrunt's
/// provider cache and its download directory (both names of each).
const DIRECTORY_VARIABLES: &[&str] = &[
    "TF_PLUGIN_CACHE_DIR",
    "TG_PROVIDER_CACHE_DIR",
    "TERRAGRUNT_PROVIDER_CACHE_DIR",
    "TG_DOWNLOAD_DIR",
    "TERRAGRUNT_DOWNLOAD",
];

/// A directory every job's tools read from, and what in the worker's settings names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedSource {
    pub(crate) named_by: String,
    pub(crate) path: PathBuf,
}

/// The shared directories the tools' environment names, directly or in the Terraform CLI
/// configuration (`TF_CLI_CONFIG_FILE`) it points to.
pub(crate) fn shared_sources(env: &BTreeMap<String, String>) -> Vec<SharedSource> {
    let mut found: Vec<SharedSource> = DIRECTORY_VARIABLES
        .iter()
        .filter_map(|name| Some((*name, env.get(*name)?)))
        .filter(|(_, value)| value.starts_with('/'))
        .map(|(name, value)| SharedSource {
            named_by: format!("the tools' {name}"),
            path: PathBuf::from(value),
        })
        .collect();
    if let Some(file) = env.get("TF_CLI_CONFIG_FILE")
        && let Ok(text) = std::fs::read_to_string(file)
    {
        found.extend(
            cli_config_directories(&text)
                .into_iter()
                .filter(|(_, path)| path.starts_with('/'))
                .map(|(key, path)| SharedSource {
                    named_by: format!("{key} in TF_CLI_CONFIG_FILE {file}"),
                    path: PathBuf::from(path),
                }),
        );
    }
    found
}

/// `plugin_cache_dir` and the `path` of every `filesystem_mirror` block of a Terraform CLI
/// configuration, outside comments, as `(key, path)`. A scan, not an HCL parser: it reads
/// the forms Terraform's documentation shows, on one line or several.
pub(crate) fn cli_config_directories(text: &str) -> Vec<(&'static str, String)> {
    let code: String = text
        .lines()
        .map(|line| {
            let line = line.trim_start();
            if line.starts_with('#') || line.starts_with("//") {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for (at, _) in code.match_indices("plugin_cache_dir") {
        if let Some(path) = assigned_string(&code[at + "plugin_cache_dir".len()..]) {
            found.push(("plugin_cache_dir", path));
        }
    }
    for (at, _) in code.match_indices("filesystem_mirror") {
        let rest = &code[at + "filesystem_mirror".len()..];
        let Some(open) = rest.find('{') else { continue };
        let mut depth = 0_usize;
        let mut end = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let block = &rest[open + 1..end];
        for (at, _) in block.match_indices("path") {
            let before = block[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(path) = assigned_string(&block[at + "path".len()..]) {
                found.push(("a filesystem_mirror's path", path));
            }
        }
    }
    found
}

/// The string in `= "…"` at the start of `rest` (after blanks), if that is what follows.
fn assigned_string(rest: &str) -> Option<String> {
    let rest = rest.trim_start_matches([' ', '\t']).strip_prefix('=')?;
    let rest = rest.trim_start_matches([' ', '\t']).strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// Why someone other than the worker could write into `path` or anything under it, or put
/// something of their own in its place: anyone on the host, and, when `tools` is given, that
/// tool user. `None`: nobody could. A symbolic link under `path` is checked where it leads.
pub(crate) fn writable_by_others(path: &Path, tools: Option<ToolUser>) -> Option<String> {
    check(path, tools, &mut HashSet::new())
}

/// [`writable_by_others`], skipping the directories in `seen` (links may lead in circles).
fn check(path: &Path, tools: Option<ToolUser>, seen: &mut HashSet<PathBuf>) -> Option<String> {
    let Ok(absolute) = path.canonicalize() else {
        // Missing: whoever may write into the nearest directory that exists may create it.
        let existing = path.ancestors().skip(1).find(|dir| dir.is_dir())?;
        let meta = std::fs::metadata(existing).ok()?;
        if let Some(why) = may_write(&meta, tools, false) {
            return Some(format!(
                "does not exist, and {} {why}: it could be created there",
                existing.display()
            ));
        }
        return moved_aside(&existing.canonicalize().ok()?, tools);
    };
    if !seen.insert(absolute.clone()) {
        return None;
    }
    if let Some(why) = moved_aside(&absolute, tools) {
        return Some(why);
    }
    if let Ok(meta) = std::fs::metadata(&absolute)
        && let Some(why) = may_write(&meta, tools, false)
    {
        return Some(why);
    }
    let mut pending: Vec<PathBuf> = std::fs::read_dir(&absolute)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Some(why) = check(&path, tools, seen) {
                return Some(format!(
                    "holds the link {}, whose target {why}",
                    path.display()
                ));
            }
            continue;
        }
        if let Some(why) = may_write(&meta, tools, false) {
            return Some(format!("holds {}, which {why}", path.display()));
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    None
}

/// Why anyone, or `tools`, could rename `absolute` (canonical) or a directory above it, and
/// put their own in its place.
fn moved_aside(absolute: &Path, tools: Option<ToolUser>) -> Option<String> {
    absolute.ancestors().skip(1).find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        let why = may_write(&meta, tools, true)?;
        Some(format!("could be moved aside: {} {why}", dir.display()))
    })
}

/// Why anyone, or `tools`, may change what `meta` describes (or its entries, for a directory).
/// With `sticky_protects`, a directory's sticky bit counts: others may add entries to it, but
/// not rename or remove what is there.
fn may_write(
    meta: &std::fs::Metadata,
    tools: Option<ToolUser>,
    sticky_protects: bool,
) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    let protected = sticky_protects && mode & 0o1000 != 0;
    if let Some(tools) = tools
        && meta.uid() == tools.uid
    {
        return Some(format!("is owned by the tool user ({})", tools.uid));
    }
    if mode & 0o002 != 0 && !protected {
        return Some(format!("has mode {mode:o}: anyone may write"));
    }
    if let Some(tools) = tools
        && meta.gid() == tools.gid
        && mode & 0o020 != 0
        && !protected
    {
        return Some(format!(
            "has mode {mode:o} and the tool user's group ({}): the tool user may write",
            tools.gid
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TOOLS: ToolUser = ToolUser {
        uid: 62_301,
        gid: 62_301,
    };

    fn set(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_cli_configuration_names_its_plugin_cache_and_mirrors_outside_comments() {
        let text = "plugin_cache_dir = \"/var/cache/terraform\"\n\
                    # plugin_cache_dir = \"/commented\"\n\
                    provider_installation {\n  \
                      filesystem_mirror {\n    \
                        path    = \"/srv/mirror\"\n    \
                        include = [\"registry.terraform.io/*/*\"]\n  \
                      }\n  \
                      filesystem_mirror { path = \"/srv/other\" }\n  \
                      network_mirror { url = \"https://mirror.example/path\" }\n  \
                      direct { exclude = [\"registry.terraform.io/*/*\"] }\n\
                    }\n\
                    // filesystem_mirror { path = \"/commented\" }\n";
        assert_eq!(
            cli_config_directories(text),
            [
                ("plugin_cache_dir", "/var/cache/terraform".to_owned()),
                ("a filesystem_mirror's path", "/srv/mirror".to_owned()),
                ("a filesystem_mirror's path", "/srv/other".to_owned()),
            ]
        );
        assert_eq!(cli_config_directories("disable_checkpoint = true\n"), []);
    }

    #[test]
    fn only_absolute_directories_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("terraformrc");
        std::fs::write(
            &file,
            "plugin_cache_dir = \"$HOME/.terraform.d/plugin-cache\"\n\
             provider_installation {\n  filesystem_mirror {\n    path = \"/srv/mirror\"\n  }\n}\n",
        )
        .unwrap();
        let env: BTreeMap<String, String> = [
            ("TF_PLUGIN_CACHE_DIR", "/var/cache/tf"),
            ("TG_DOWNLOAD_DIR", "relative/cache"),
            ("TERRAGRUNT_PROVIDER_CACHE_DIR", "~/providers"),
            ("TF_CLI_CONFIG_FILE", file.to_str().unwrap()),
            ("HTTPS_PROXY", "/not/a/cache"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        assert_eq!(
            shared_sources(&env),
            [
                SharedSource {
                    named_by: "the tools' TF_PLUGIN_CACHE_DIR".into(),
                    path: "/var/cache/tf".into(),
                },
                SharedSource {
                    named_by: format!(
                        "a filesystem_mirror's path in TF_CLI_CONFIG_FILE {}",
                        file.display()
                    ),
                    path: "/srv/mirror".into(),
                },
            ]
        );
    }

    #[test]
    fn a_cache_the_tool_user_or_anyone_could_write_into_is_named_with_why() {
        let root = tempfile::tempdir().unwrap();
        set(root.path(), 0o755);
        let cache = root.path().join("cache");
        let provider = cache.join("registry.terraform.io/hashicorp/null/3.2.1/linux_amd64");
        std::fs::create_dir_all(&provider).unwrap();
        let binary = provider.join("terraform-provider-null");
        std::fs::write(&binary, "#!/bin/sh\n").unwrap();
        set(&binary, 0o755);
        // The worker's alone: nobody else may write anything in it.
        assert_eq!(writable_by_others(&cache, Some(TOOLS)), None);
        assert_eq!(writable_by_others(&cache, None), None);

        // A provider's file anyone may write.
        set(&binary, 0o777);
        let why = writable_by_others(&cache, None).unwrap();
        assert!(
            why.contains(&format!("holds {}", binary.display()))
                && why.contains("mode 777: anyone may write"),
            "{why}"
        );
        set(&binary, 0o755);

        // A directory deep inside that the tool user owns: only a plan worker's check, which
        // is given its tool user, refuses it.
        std::os::unix::fs::chown(&provider, Some(TOOLS.uid), None).unwrap();
        let why = writable_by_others(&cache, Some(TOOLS)).unwrap();
        assert!(
            why.contains(&provider.display().to_string())
                && why.contains("is owned by the tool user (62301)"),
            "{why}"
        );
        assert_eq!(writable_by_others(&cache, None), None);
        std::os::unix::fs::chown(&provider, Some(0), None).unwrap();

        // Group-writable for the tool user's group.
        std::os::unix::fs::chown(&cache, None, Some(TOOLS.gid)).unwrap();
        set(&cache, 0o775);
        let why = writable_by_others(&cache, Some(TOOLS)).unwrap();
        assert!(why.contains("the tool user's group (62301)"), "{why}");
        std::os::unix::fs::chown(&cache, None, Some(0)).unwrap();

        // A parent anyone may write into without the sticky bit: the cache could be renamed
        // and replaced. With the sticky bit it could not.
        set(root.path(), 0o777);
        let why = writable_by_others(&cache, None).unwrap();
        assert!(why.starts_with("could be moved aside: "), "{why}");
        set(root.path(), 0o1777);
        assert_eq!(writable_by_others(&cache, Some(TOOLS)), None);

        // Missing, in a directory where anyone may create it (sticky or not).
        let why = writable_by_others(&root.path().join("not-yet"), None).unwrap();
        assert!(
            why.starts_with(&format!(
                "does not exist, and {} has mode 1777",
                root.path().display()
            )),
            "{why}"
        );
        set(root.path(), 0o755);
        assert_eq!(
            writable_by_others(&root.path().join("not-yet"), Some(TOOLS)),
            None
        );
    }

    #[test]
    fn a_link_inside_is_checked_where_it_leads() {
        let root = tempfile::tempdir().unwrap();
        set(root.path(), 0o755);
        let cache = root.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        set(&cache, 0o755);
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        set(&elsewhere, 0o755);
        let link = cache.join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        // A link back up makes a circle, which ends.
        std::os::unix::fs::symlink(&cache, elsewhere.join("back")).unwrap();
        assert_eq!(writable_by_others(&cache, Some(TOOLS)), None);
        set(&elsewhere, 0o777);
        let why = writable_by_others(&cache, None).unwrap();
        assert!(
            why.starts_with(&format!("holds the link {}, whose target", link.display()))
                && why.contains("mode 777"),
            "{why}"
        );
    }
}
