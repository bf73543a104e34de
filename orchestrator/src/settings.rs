//! The infrastructure repository's own settings for Pipelines: `.pipelines.hcl` at its root.
//!
//! ```hcl
//! # Changes to matching files never trigger anything.
//! ignore_list = ["docs/**", "**/*.md", "sandbox/**"]
//! ```
//!
//! Globs match repo-relative paths: `*` and `?` stay within one directory, `**` crosses
//! directories, `{a,b}` and `[ab]` work. The file is read from the base commit (the merge base of
//! a pull request), so a change cannot ignore itself: a new pattern applies once merged.

use globset::GlobMatcher;

use crate::hcl::{Issue, ParsedFile};
use crate::snapshot::Snapshot;

pub const SETTINGS_FILE: &str = ".pipelines.hcl";

#[derive(Debug, Default)]
pub struct Settings {
    ignore: Vec<GlobMatcher>,
    pub(crate) issues: Vec<Issue>,
}

impl Settings {
    pub fn from_snapshot(snapshot: &Snapshot) -> Settings {
        let mut settings = Settings::default();
        let Some(text) = snapshot.text(SETTINGS_FILE) else {
            return settings;
        };
        let parsed = ParsedFile::parse(text.into());
        let body = match &parsed.body {
            Ok(body) => body,
            Err(_) => {
                settings
                    .issues
                    .extend(parsed.syntax_issue(SETTINGS_FILE).map(|issue| Issue {
                        uncertain: false,
                        ..issue
                    }));
                return settings;
            }
        };
        let Some(attribute) = body.get_attribute("ignore_list") else {
            return settings;
        };
        let hcl::edit::expr::Expression::Array(items) = &attribute.value else {
            settings
                .issues
                .push(settings_issue("ignore_list must be a list of glob strings"));
            return settings;
        };
        for item in items.iter() {
            let hcl::edit::expr::Expression::String(glob) = item else {
                settings.issues.push(settings_issue(
                    "ignore_list entries must be literal strings",
                ));
                continue;
            };
            match globset::GlobBuilder::new(glob.value())
                .literal_separator(true)
                .build()
            {
                Ok(glob) => settings.ignore.push(glob.compile_matcher()),
                Err(err) => settings.issues.push(settings_issue(&format!(
                    "invalid ignore_list glob {:?}: {err}",
                    glob.value()
                ))),
            }
        }
        settings
    }

    pub fn ignores(&self, path: &str) -> bool {
        self.ignore.iter().any(|glob| glob.is_match(path))
    }
}

fn settings_issue(message: &str) -> Issue {
    Issue {
        file: SETTINGS_FILE.to_owned(),
        line: None,
        message: message.to_owned(),
        uncertain: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_globs_match_repo_paths() {
        let snapshot = Snapshot::from_files([(
            SETTINGS_FILE,
            "ignore_list = [\"docs/**\", \"**/*.md\", \"[\"]\n",
        )]);
        let settings = Settings::from_snapshot(&snapshot);
        assert!(settings.ignores("docs/a/b.png"));
        assert!(settings.ignores("live/prod/README.md"));
        assert!(!settings.ignores("live/prod/main.tf"));
        assert_eq!(settings.issues.len(), 1, "the bad glob is reported");
    }
}
