//! What every job's tools read from that later jobs read too (the programs on their `PATH`, a
//! plugin cache, a filesystem mirror, Terragrunt's shared caches, the CLI configuration), and
//! who could write there.
//!
//! Terraform runs the providers it finds in its plugin cache or in a filesystem mirror, and
//! takes a cached one as it is when the unit has no lock file; Terragrunt reuses what its
//! download directory holds; every job runs the `terraform` it finds on its `PATH`. A pull
//! request's plan that could write into one of them would put a program or provider there that
//! every later job of the worker runs: later pull requests' plans, whose results it could then
//! forge, and, where an apply worker on the host reads the same place, applies with their
//! credentials. So a plan worker refuses to start when its tool user could write into one, and
//! every worker refuses one that anyone on the host may write into.
//!
//! Who may write is read from the mode bits and the ACLs ([`crate::access`]).
//!
//! Only absolute paths are looked at: a relative one is resolved in the job's own checkout, and
//! `~`, `$HOME` or `$TMPDIR` is the job's own directory.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::access::{Access, created_writable_by, writable_by};
use config::ToolUser;

/// The tools' variables that name such a place: Terraform's plugin cache and data directory
/// (where `init` installs providers), Terragrunt's provider cache and download directory, and
/// the binary Terragrunt runs (both names of each).
const SOURCE_VARIABLES: &[&str] = &[
    "TF_PLUGIN_CACHE_DIR",
    "TF_DATA_DIR",
    "TG_PROVIDER_CACHE_DIR",
    "TERRAGRUNT_PROVIDER_CACHE_DIR",
    "TG_DOWNLOAD_DIR",
    "TERRAGRUNT_DOWNLOAD",
    "TG_TF_PATH",
    "TERRAGRUNT_TFPATH",
];

/// Variables the worker sets per job: a path built from one is the job's own.
const PER_JOB_VARIABLES: &[&str] = &["HOME", "TMPDIR"];

/// Where Terraform and OpenTofu look for providers of their own accord when the CLI
/// configuration sets no `provider_installation`: `<data dir>/<tool>/plugins` for each data
/// directory of `XDG_DATA_DIRS` (by default these two) and of `XDG_DATA_HOME` (by default under
/// `HOME`, the job's own).
const DEFAULT_DATA_DIRS: &[&str] = &["/usr/local/share", "/usr/share"];

/// What to do about a place a plan could write into.
const ADVICE: &str = "make it writable by root (or the worker's user) alone";
const CACHE_ADVICE: &str = "make it writable by root (or the worker's user) alone, and give plan workers a filesystem_mirror an admin fills, not a plugin cache their tools fill";

/// A place every job's tools read from, what names it, and what to do when others could
/// write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedSource {
    pub(crate) named_by: String,
    pub(crate) path: PathBuf,
    pub(crate) advice: &'static str,
}

impl SharedSource {
    fn new(named_by: impl Into<String>, path: impl Into<PathBuf>, advice: &'static str) -> Self {
        SharedSource {
            named_by: named_by.into(),
            path: path.into(),
            advice,
        }
    }
}

/// What every job's tools read from: the places the tools' environment names, directly, on
/// their `path` (the programs they run, and `tf_binary` when it is a path) or in the Terraform
/// CLI configuration (`TF_CLI_CONFIG_FILE`) it points to, that file itself, and the
/// providers' implicit local mirrors. `Err`: the CLI configuration exists but cannot be read
/// as text, so what it names is unknown.
pub(crate) fn shared_sources(
    env: &BTreeMap<String, String>,
    path: &str,
    tf_binary: Option<&str>,
) -> Result<Vec<SharedSource>, String> {
    let mut found: Vec<SharedSource> = SOURCE_VARIABLES
        .iter()
        .filter_map(|name| Some((*name, env.get(*name)?)))
        .filter(|(_, value)| value.starts_with('/'))
        .map(|(name, value)| {
            let advice = if name.ends_with("CACHE_DIR") {
                CACHE_ADVICE
            } else {
                ADVICE
            };
            SharedSource::new(format!("the tools' {name}"), value, advice)
        })
        .collect();
    found.extend(
        path.split(':')
            .filter(|dir| dir.starts_with('/'))
            .map(|dir| SharedSource::new("a directory on the tools' PATH", dir, ADVICE)),
    );
    if let Some(binary) = tf_binary.filter(|binary| binary.starts_with('/')) {
        found.push(SharedSource::new("executor.tf_binary", binary, ADVICE));
    }
    let absolute = |name: &str| env.get(name).filter(|dir| dir.starts_with('/'));
    let data_dirs: Vec<&str> = match absolute("XDG_DATA_DIRS") {
        Some(dirs) => dirs.split(':').filter(|dir| dir.starts_with('/')).collect(),
        None => DEFAULT_DATA_DIRS.to_vec(),
    };
    for dir in data_dirs
        .into_iter()
        .chain(absolute("XDG_DATA_HOME").map(String::as_str))
    {
        for tool in ["terraform", "opentofu"] {
            found.push(SharedSource::new(
                "an implicit local provider mirror",
                Path::new(dir).join(tool).join("plugins"),
                ADVICE,
            ));
        }
    }
    if let Some(file) = env
        .get("TF_CLI_CONFIG_FILE")
        .filter(|file| file.starts_with('/'))
    {
        found.push(SharedSource::new(
            "the tools' TF_CLI_CONFIG_FILE",
            file,
            ADVICE,
        ));
        match std::fs::metadata(file) {
            // Missing: nothing in it (who could create it is checked with the rest).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Ok(meta) if meta.is_file() => {
                let text = std::fs::read_to_string(file).map_err(|err| {
                    format!("the tools' TF_CLI_CONFIG_FILE ({file}) cannot be read: {err}")
                })?;
                for (key, path) in cli_config_directories(&text) {
                    let Some(path) = expanded(&path, env) else {
                        continue;
                    };
                    if path.starts_with('/') {
                        let advice = if key == "plugin_cache_dir" {
                            CACHE_ADVICE
                        } else {
                            ADVICE
                        };
                        found.push(SharedSource::new(
                            format!("{key} in TF_CLI_CONFIG_FILE {file}"),
                            path,
                            advice,
                        ));
                    }
                }
            }
            Ok(_) => {
                return Err(format!(
                    "the tools' TF_CLI_CONFIG_FILE ({file}) is not a regular file"
                ));
            }
            Err(err) => {
                return Err(format!(
                    "the tools' TF_CLI_CONFIG_FILE ({file}) cannot be read: {err}"
                ));
            }
        }
    }
    Ok(found)
}

/// `value` with `$NAME` and `${NAME}` replaced from the tools' `env` (a name it lacks by
/// nothing), as Terraform expands its CLI configuration. `None` when it names a variable the
/// worker sets per job ([`PER_JOB_VARIABLES`]): the path is then the job's own.
fn expanded(value: &str, env: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, next) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => (braced, ""),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if PER_JOB_VARIABLES.contains(&name) {
            return None;
        }
        out.push_str(env.get(name).map_or("", String::as_str));
        rest = next;
    }
    out.push_str(rest);
    Some(out)
}

/// `plugin_cache_dir`, the `path` of every `filesystem_mirror` block and every directory a
/// `dev_overrides` block names, in a Terraform CLI configuration, outside comments, as
/// `(what, path)`. A scan, not a parser: it reads the forms Terraform's documentation shows,
/// on one line or several, and their JSON spelling.
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
    if code.trim_start().starts_with('{') {
        // The JSON spelling: blocks may be lists of objects. Every string counts; those that
        // are no path (names, URLs, patterns) are not absolute, and are dropped by the caller.
        for (i, piece) in code.split('"').enumerate() {
            if i % 2 == 1 {
                found.push(("a path in the JSON CLI configuration", piece.to_owned()));
            }
        }
        return found;
    }
    for rest in after_word(&code, "plugin_cache_dir") {
        if let Some(path) = assigned_string(rest) {
            found.push(("plugin_cache_dir", path));
        }
    }
    for block in blocks(&code, "filesystem_mirror") {
        for rest in after_word(block, "path") {
            if let Some(path) = assigned_string(rest) {
                found.push(("a filesystem_mirror's path", path));
            }
        }
    }
    for block in blocks(&code, "dev_overrides") {
        // `"namespace/name" = "/path"`: every value is a directory.
        for (at, _) in block.match_indices(['=', ':']) {
            if let Some(path) = assigned_string(&block[at..]) {
                found.push(("a dev_overrides directory", path));
            }
        }
    }
    found
}

/// What follows each occurrence of `word` in `code` that is a whole word (a quoted key too).
fn after_word<'a>(code: &'a str, word: &str) -> Vec<&'a str> {
    code.match_indices(word)
        .filter(|(at, _)| {
            !code[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|(at, _)| &code[at + word.len()..])
        .collect()
}

/// The inside of each `word { … }` block of `code` (braces in strings are not told apart).
fn blocks<'a>(code: &'a str, word: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    for rest in after_word(code, word) {
        let Some(open) = rest.find('{') else { continue };
        let mut depth = 0_usize;
        let mut end = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        found.push(&rest[open + 1..end]);
    }
    found
}

/// The string in `= "…"` (or JSON's `: "…"`) at the start of `rest`, after blanks and the
/// closing quote of a quoted key, if that is what follows.
fn assigned_string(rest: &str) -> Option<String> {
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let rest = rest
        .trim_start_matches([' ', '\t'])
        .strip_prefix(['=', ':'])?;
    let rest = rest.trim_start_matches([' ', '\t']).strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// Who, besides anyone on the host, must not be able to write what every job reads. An apply
/// worker's tool user may (it runs reviewed code only); a plan worker's may not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writers {
    /// A plan worker's tool user: it may write nothing every job reads.
    pub(crate) plan_tools: Option<ToolUser>,
}

/// The most entries [`writable_by_others`] looks at under one source before it gives up
/// (refusing: what it did not look at could be anyone's).
const MOST_ENTRIES: usize = 200_000;

/// The most symbolic links followed on the way to one path (as the kernel's limit).
const MOST_LINKS: usize = 40;

/// Why someone other than the worker could write into `path` or anything under it, or put
/// something of their own in its place: anyone on the host, and a plan worker's tool user.
/// `None`: nobody could. Every directory on the way to `path` is checked, and every link,
/// on the way or under `path`, where it leads.
pub(crate) fn writable_by_others(path: &Path, writers: Writers) -> Option<String> {
    let mut seen = HashSet::new();
    let mut links = 0;
    let target = match reach(path, writers, &mut links) {
        Ok(Some(target)) => target,
        Ok(None) => return None,
        Err(why) => return Some(why),
    };
    let meta = match std::fs::metadata(&target) {
        Ok(meta) => meta,
        Err(err) => return Some(format!("cannot be checked: {err}")),
    };
    if let Some(why) = contents_writable(&target, &meta, writers) {
        return Some(why);
    }
    if !meta.is_dir() {
        return None;
    }
    let mut pending = match children(&target) {
        Ok(entries) => entries,
        Err(why) => return Some(why),
    };
    seen.insert(target);
    let mut looked = 0;
    while let Some(entry) = pending.pop() {
        looked += 1;
        if looked > MOST_ENTRIES {
            return Some(format!(
                "holds more than {MOST_ENTRIES} entries: too many to check"
            ));
        }
        let meta = match std::fs::symlink_metadata(&entry) {
            Ok(meta) => meta,
            // Gone since its directory was read.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Some(format!(
                    "holds {}, which cannot be checked: {err}",
                    entry.display()
                ));
            }
        };
        let (real, meta) = if meta.file_type().is_symlink() {
            let mut links = 0;
            match reach(&entry, writers, &mut links) {
                Err(why) => return Some(format!("holds the link {}: {why}", entry.display())),
                Ok(None) => continue,
                Ok(Some(real)) => match std::fs::metadata(&real) {
                    Ok(meta) => (real, meta),
                    Err(err) => {
                        return Some(format!(
                            "holds the link {} to {}, which cannot be checked: {err}",
                            entry.display(),
                            real.display()
                        ));
                    }
                },
            }
        } else {
            (entry.clone(), meta)
        };
        if let Some(why) = contents_writable(&real, &meta, writers) {
            return Some(if real == entry {
                format!("holds {}, which {why}", entry.display())
            } else {
                format!(
                    "holds the link {} to {}, which {why}",
                    entry.display(),
                    real.display()
                )
            });
        }
        if meta.is_dir() && seen.insert(real.clone()) {
            match children(&real) {
                Ok(more) => pending.extend(more),
                Err(why) => return Some(why),
            }
        }
    }
    None
}

/// The entries of directory `dir`. `Err`: why it cannot be read, and so not checked.
fn children(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|entry| entry.map(|entry| entry.path()))
                .collect()
        })
        .map_err(|err| format!("holds {}, which cannot be read: {err}", dir.display()))
}

/// Follows `path` from `/`, one name at a time. `Err`: someone could put their own thing at
/// `path`: a directory on the way lets them replace the next name (or create it, where it is
/// missing), or a link on the way leads through such a directory. `Ok(Some)`: where `path`
/// really is, with every link resolved. `Ok(None)`: it does not exist, and nobody could
/// create it.
fn reach(path: &Path, writers: Writers, links: &mut usize) -> Result<Option<PathBuf>, String> {
    let mut at = PathBuf::from("/");
    for component in path.components() {
        let name = match component {
            std::path::Component::Normal(name) => name,
            std::path::Component::ParentDir => {
                at.pop();
                continue;
            }
            _ => continue,
        };
        let cannot_check = |err| format!("cannot be checked: {}: {err}", at.display());
        let dir = std::fs::metadata(&at).map_err(cannot_check)?;
        if !dir.is_dir() {
            // A file on the way: nothing can be below it.
            return Ok(None);
        }
        let dir = Access::read(&at, &dir).map_err(cannot_check)?;
        let next = at.join(name);
        let entry = match std::fs::symlink_metadata(&next) {
            Ok(entry) => entry,
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot be checked: {}: {err}", next.display()));
            }
            Err(_) => {
                // Missing: whoever may add an entry to `at` may create it, sticky or not; and
                // what an admin creates there later gets `at`'s default ACL.
                if let Some(why) = writable_by(writers.plan_tools, &dir, false) {
                    return Err(format!(
                        "does not exist, and {} {why}, so it could be created there",
                        at.display()
                    ));
                }
                return match created_writable_by(writers.plan_tools, &dir) {
                    Some(why) => Err(format!(
                        "does not exist, and {} {why}, so it would be open to writing once created",
                        at.display()
                    )),
                    None => Ok(None),
                };
            }
        };
        if let Some(why) = writable_by(writers.plan_tools, &dir, true) {
            return Err(format!("could be replaced: {} {why}", at.display()));
        }
        if entry.file_type().is_symlink() {
            // A link's mode is always 777; its owner may replace it, even in a sticky
            // directory.
            if let Some(tools) = writers.plan_tools
                && entry.uid() == tools.uid
            {
                return Err(format!(
                    "leads through the link {}, which is owned by the tool user ({})",
                    next.display(),
                    tools.uid
                ));
            }
            *links += 1;
            if *links > MOST_LINKS {
                return Err(format!("leads through more than {MOST_LINKS} links"));
            }
            let target = std::fs::read_link(&next).map_err(|err| {
                format!(
                    "holds the link {}, which cannot be read: {err}",
                    next.display()
                )
            })?;
            match reach(&at.join(target), writers, links) {
                Ok(Some(real)) => at = real,
                Ok(None) => return Ok(None),
                Err(why) => {
                    return Err(format!("leads through the link {}: {why}", next.display()));
                }
            }
        } else {
            at = next;
        }
    }
    Ok(Some(at))
}

/// Why anyone, or a plan worker's tool user, may change what `path` (with `meta`, links
/// followed) is or holds, or what will be created in it (see [`writable_by`] and
/// [`created_writable_by`]).
fn contents_writable(path: &Path, meta: &std::fs::Metadata, writers: Writers) -> Option<String> {
    match Access::read(path, meta) {
        Err(err) => Some(format!("cannot be checked: {err}")),
        Ok(access) => writable_by(writers.plan_tools, &access, false)
            .or_else(|| created_writable_by(writers.plan_tools, &access)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TOOLS: ToolUser = ToolUser {
        uid: 62_301,
        gid: 62_301,
    };
    const PLAN: Writers = Writers {
        plan_tools: Some(TOOLS),
    };
    const ANY: Writers = Writers { plan_tools: None };

    fn set(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A temporary directory, by its canonical path (findings name resolved paths), mode 0755
    /// whatever the umask.
    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        set(&path, 0o755);
        (dir, path)
    }

    /// A directory at `path`, with `mode`.
    fn dir_with(path: &Path, mode: u32) {
        std::fs::create_dir(path).unwrap();
        set(path, mode);
    }

    #[test]
    fn the_cli_configuration_names_its_caches_mirrors_and_overrides_outside_comments() {
        let text = "plugin_cache_dir = \"/var/cache/terraform\"\n\
                    # plugin_cache_dir = \"/commented\"\n\
                    provider_installation {\n  \
                      filesystem_mirror {\n    \
                        path    = \"/srv/mirror\"\n    \
                        include = [\"registry.terraform.io/*/*\"]\n  \
                      }\n  \
                      filesystem_mirror { path = \"/srv/other\" }\n  \
                      network_mirror { url = \"https://mirror.example/path\" }\n  \
                      dev_overrides {\n    \"example/one\" = \"/srv/dev/one\"\n  }\n  \
                      direct { exclude = [\"registry.terraform.io/*/*\"] }\n\
                    }\n\
                    // filesystem_mirror { path = \"/commented\" }\n\
                    my_plugin_cache_dir = \"/not/the/key\"\n";
        assert_eq!(
            cli_config_directories(text),
            [
                ("plugin_cache_dir", "/var/cache/terraform".to_owned()),
                ("a filesystem_mirror's path", "/srv/mirror".to_owned()),
                ("a filesystem_mirror's path", "/srv/other".to_owned()),
                ("a dev_overrides directory", "/srv/dev/one".to_owned()),
            ]
        );
        // The JSON spelling, where blocks may be lists: every string, for the caller to keep
        // the absolute ones.
        let json = "{\"plugin_cache_dir\": \"/var/cache/json\", \"provider_installation\": \
                    [{\"filesystem_mirror\": [{\"path\": \"/a\"}, {\"path\": \"/b\"}]}]}\n";
        let strings: Vec<String> = cli_config_directories(json)
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        for path in ["/var/cache/json", "/a", "/b"] {
            assert!(strings.contains(&path.to_owned()), "{path}: {strings:?}");
        }
        assert_eq!(cli_config_directories("disable_checkpoint = true\n"), []);
    }

    #[test]
    fn the_sources_are_absolute_paths_the_configuration_itself_and_the_implicit_mirrors() {
        let (_dir, root) = scratch();
        let file = root.join("terraformrc");
        std::fs::write(
            &file,
            "plugin_cache_dir = \"$HOME/.terraform.d/plugin-cache\"\n\
             provider_installation {\n  filesystem_mirror {\n    path = \"${SHARED}/mirror\"\n  }\n}\n",
        )
        .unwrap();
        let file_path = file.to_str().unwrap();
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect()
        };
        let tools_env = env(&[
            ("TF_PLUGIN_CACHE_DIR", "/var/cache/tf"),
            ("TG_DOWNLOAD_DIR", "relative/cache"),
            ("TERRAGRUNT_PROVIDER_CACHE_DIR", "~/providers"),
            ("TF_CLI_CONFIG_FILE", file_path),
            ("SHARED", "/srv"),
            ("HTTPS_PROXY", "/not/a/cache"),
            ("XDG_DATA_DIRS", "/opt/share:relative"),
        ]);
        let found: Vec<(String, PathBuf)> = shared_sources(
            &tools_env,
            "/usr/bin:relative/bin:",
            Some("/opt/tf/terraform"),
        )
        .unwrap()
        .into_iter()
        .map(|source| (source.named_by, source.path))
        .collect();
        let named = |by: &str, path: &str| (by.to_owned(), PathBuf::from(path));
        assert_eq!(
            found,
            [
                named("the tools' TF_PLUGIN_CACHE_DIR", "/var/cache/tf"),
                named("a directory on the tools' PATH", "/usr/bin"),
                named("executor.tf_binary", "/opt/tf/terraform"),
                named(
                    "an implicit local provider mirror",
                    "/opt/share/terraform/plugins"
                ),
                named(
                    "an implicit local provider mirror",
                    "/opt/share/opentofu/plugins"
                ),
                named("the tools' TF_CLI_CONFIG_FILE", file_path),
                // `${SHARED}` expanded from the tools' environment; `$HOME` is the job's own.
                named(
                    &format!("a filesystem_mirror's path in TF_CLI_CONFIG_FILE {file_path}"),
                    "/srv/mirror"
                ),
            ]
        );
        // Without XDG_DATA_DIRS, the default data directories.
        let found = shared_sources(&env(&[]), "", None).unwrap();
        assert_eq!(found.len(), 4);
        assert_eq!(
            found[0].path,
            Path::new("/usr/local/share/terraform/plugins")
        );
        // A configuration the worker cannot read as text hides what it names; so would a
        // FIFO, which would hang the start.
        std::fs::write(&file, [0xff_u8, 0xfe]).unwrap();
        let refused = shared_sources(&tools_env, "", None).unwrap_err();
        assert!(refused.contains("cannot be read"), "{refused}");
        std::fs::remove_file(&file).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&file)
            .status()
            .unwrap();
        assert!(made.success());
        let refused = shared_sources(&tools_env, "", None).unwrap_err();
        assert!(refused.contains("is not a regular file"), "{refused}");
        // A missing one names nothing (who could create it is checked with the rest).
        std::fs::remove_file(&file).unwrap();
        assert_eq!(shared_sources(&tools_env, "", None).unwrap().len(), 4);
    }

    #[test]
    fn a_cache_the_tool_user_or_anyone_could_write_into_is_named_with_why() {
        let (_dir, root) = scratch();
        let cache = root.join("cache");
        dir_with(&cache, 0o755);
        let mut provider = cache.clone();
        for name in [
            "registry.terraform.io",
            "hashicorp",
            "null",
            "3.2.1",
            "linux_amd64",
        ] {
            provider.push(name);
            dir_with(&provider, 0o755);
        }
        let binary = provider.join("terraform-provider-null");
        std::fs::write(&binary, "#!/bin/sh\n").unwrap();
        set(&binary, 0o755);
        // The worker's alone: nobody else may write anything in it.
        assert_eq!(writable_by_others(&cache, PLAN), None);
        assert_eq!(writable_by_others(&cache, ANY), None);

        // A provider's file anyone may write.
        set(&binary, 0o777);
        let why = writable_by_others(&cache, ANY).unwrap();
        assert!(
            why.contains(&format!("holds {}", binary.display()))
                && why.contains("mode 777: anyone may write"),
            "{why}"
        );
        set(&binary, 0o755);

        // A directory deep inside that the tool user owns: only a plan worker's check, which
        // names its tool user, refuses it.
        std::os::unix::fs::chown(&provider, Some(TOOLS.uid), None).unwrap();
        let why = writable_by_others(&cache, PLAN).unwrap();
        assert!(
            why.contains(&provider.display().to_string())
                && why.contains("is owned by the tool user (62301)"),
            "{why}"
        );
        assert_eq!(writable_by_others(&cache, ANY), None);
        std::os::unix::fs::chown(&provider, Some(0), None).unwrap();

        // Group-writable for the tool user's group.
        std::os::unix::fs::chown(&cache, None, Some(TOOLS.gid)).unwrap();
        set(&cache, 0o775);
        let why = writable_by_others(&cache, PLAN).unwrap();
        assert!(why.contains("the tool user's group (62301)"), "{why}");
        std::os::unix::fs::chown(&cache, None, Some(0)).unwrap();
        set(&cache, 0o755);

        // A parent anyone may write into without the sticky bit: the cache could be renamed
        // and replaced. With the sticky bit it could not.
        set(&root, 0o777);
        let why = writable_by_others(&cache, ANY).unwrap();
        assert!(
            why.starts_with(&format!("could be replaced: {}", root.display())),
            "{why}"
        );
        set(&root, 0o1777);
        assert_eq!(writable_by_others(&cache, PLAN), None);

        // Missing, in a directory whose default ACL would let the tool user write it once an
        // admin creates it.
        set(&root, 0o755);
        crate::access::tests::set_acl(
            &root,
            true,
            &crate::access::tests::user_may_write(TOOLS.uid),
        );
        let why = writable_by_others(&root.join("not-yet"), PLAN).unwrap();
        assert!(
            why.starts_with(&format!(
                "does not exist, and {} has a default access control list that lets the tool user (62301)",
                root.display()
            )) && why.ends_with("so it would be open to writing once created"),
            "{why}"
        );
        assert_eq!(writable_by_others(&root.join("not-yet"), ANY), None);
        rustix::fs::removexattr(&root, "system.posix_acl_default").unwrap();
        set(&root, 0o1777);

        // Missing, in a directory where anyone may create it (sticky or not).
        let why = writable_by_others(&root.join("not-yet"), ANY).unwrap();
        assert!(
            why.starts_with(&format!(
                "does not exist, and {} has mode 1777",
                root.display()
            )),
            "{why}"
        );
        set(&root, 0o755);
        assert_eq!(writable_by_others(&root.join("not-yet"), PLAN), None);
        // Below a file, nothing can be.
        assert_eq!(writable_by_others(&binary.join("below"), PLAN), None);
    }

    #[test]
    fn an_acl_that_lets_the_tool_user_write_is_named_where_the_mode_bits_say_nothing() {
        use crate::access::tests::{NOBODY, OTHER, OWNER, OWNING_GROUP, set_acl, user_may_write};
        let (_dir, root) = scratch();
        let cache = root.join("cache");
        dir_with(&cache, 0o755);
        let provider = cache.join("terraform-provider-null");
        std::fs::write(&provider, "#!/bin/sh\n").unwrap();
        set(&provider, 0o755);
        assert_eq!(writable_by_others(&cache, PLAN), None);
        // `setfacl -m u:62301:rwx` on the provider: root's, mode 775 (the mask), group root.
        let tools_may_write = user_may_write(TOOLS.uid);
        set_acl(&provider, false, &tools_may_write);
        let why = writable_by_others(&cache, PLAN).unwrap();
        assert_eq!(
            why,
            format!(
                "holds {}, which has mode 775 and an access control list that lets the tool user (62301) write into it",
                provider.display()
            )
        );
        // Not anyone's: an apply worker's check, which names no tool user, lets it be.
        assert_eq!(writable_by_others(&cache, ANY), None);
        // `chmod 755` narrows the mask, and the entry no longer gives write.
        set(&provider, 0o755);
        assert_eq!(writable_by_others(&cache, PLAN), None);

        // On the way: the tool user could replace the cache through its parent's ACL.
        set_acl(&root, false, &tools_may_write);
        let why = writable_by_others(&cache, PLAN).unwrap();
        assert!(
            why.starts_with(&format!(
                "could be replaced: {} has mode 775 and an access control list",
                root.display()
            )),
            "{why}"
        );
        set(&root, 0o755);
        assert_eq!(writable_by_others(&cache, PLAN), None);

        // A default ACL: what an admin adds to the cache later would be the tool user's to
        // write, and anyone's with write for others.
        set_acl(&cache, true, &tools_may_write);
        let why = writable_by_others(&cache, PLAN).unwrap();
        assert!(
            why.ends_with(
                "has a default access control list that lets the tool user (62301) write into what is created in it"
            ),
            "{why}"
        );
        assert_eq!(writable_by_others(&cache, ANY), None);
        set_acl(
            &cache,
            true,
            &[
                (OWNER, 7, NOBODY),
                (OWNING_GROUP, 5, NOBODY),
                (OTHER, 7, NOBODY),
            ],
        );
        let why = writable_by_others(&cache, ANY).unwrap();
        assert!(
            why.contains("lets anyone write into what is created in it"),
            "{why}"
        );
    }

    #[test]
    fn links_are_checked_on_the_way_and_where_they_lead() {
        let (_dir, root) = scratch();
        let cache = root.join("cache");
        let elsewhere = root.join("elsewhere");
        for dir in [&cache, &elsewhere] {
            dir_with(dir, 0o755);
        }
        let link = cache.join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        // A link back up makes a circle, which ends.
        std::os::unix::fs::symlink(&cache, elsewhere.join("back")).unwrap();
        // A relative link, through `..`.
        std::os::unix::fs::symlink("../cache/link", elsewhere.join("relative")).unwrap();
        assert_eq!(writable_by_others(&cache, PLAN), None);
        // Under the cache, a link to where anyone may write.
        set(&elsewhere, 0o777);
        let why = writable_by_others(&cache, ANY).unwrap();
        assert!(
            why.starts_with(&format!(
                "holds the link {} to {}, which has mode 777",
                link.display(),
                elsewhere.display()
            )),
            "{why}"
        );
        set(&elsewhere, 0o755);

        // On the way: the cache is reached through a link in a directory anyone may write
        // into, so the link could be replaced, though where it leads is safe.
        let open = root.join("open");
        dir_with(&open, 0o777);
        std::os::unix::fs::symlink(&cache, open.join("to-cache")).unwrap();
        let why = writable_by_others(&open.join("to-cache"), ANY).unwrap();
        assert!(
            why.starts_with(&format!(
                "could be replaced: {} has mode 777",
                open.display()
            )),
            "{why}"
        );

        // A link to a missing place where anyone could create it.
        let sticky = root.join("sticky");
        dir_with(&sticky, 0o1777);
        let dangling = root.join("dangling");
        std::os::unix::fs::symlink(sticky.join("tfc"), &dangling).unwrap();
        let why = writable_by_others(&dangling, ANY).unwrap();
        assert!(
            why.starts_with(&format!(
                "leads through the link {}: does not exist, and {} has mode 1777",
                dangling.display(),
                sticky.display()
            )),
            "{why}"
        );

        // A link the tool user owns, in a sticky directory: others may not replace it, but
        // its owner may.
        let owned = sticky.join("owned");
        std::os::unix::fs::symlink(&cache, &owned).unwrap();
        std::os::unix::fs::lchown(&owned, Some(TOOLS.uid), Some(TOOLS.gid)).unwrap();
        assert_eq!(writable_by_others(&owned, ANY), None);
        let why = writable_by_others(&owned, PLAN).unwrap();
        assert!(
            why.starts_with(&format!(
                "leads through the link {}, which is owned by the tool user (62301)",
                owned.display()
            )),
            "{why}"
        );
    }
}
