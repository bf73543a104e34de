//! What a worker checks of a job itself, before anything runs: the job is for this worker's
//! role and account, its unit path is relative and normalized and belongs to this account by
//! the worker's own configuration, its commits are plain ids; and, once checked out, that the
//! unit directory does not lead out of the checkout. The dispatcher checks the same things,
//! but a job may not have come from the dispatcher. Pure, but for [`resolve_unit`].

use std::path::{Path, PathBuf};

use config::AccountRouter;
use proto_types::{ExecutorRole, Job};

/// What the worker knows of itself for [`check_job`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    pub(crate) account: &'a str,
    pub(crate) role: ExecutorRole,
    pub(crate) owners: &'a AccountRouter,
}

/// Why this worker must not run `job`, if it must not.
pub(crate) fn check_job(job: &Job, me: Identity<'_>) -> Result<(), String> {
    if job.role != me.role {
        return Err(format!(
            "the job is for the {} workers and this is a {} worker",
            job.role, me.role
        ));
    }
    if me.role == ExecutorRole::Plan && job.action.mutates() {
        return Err(format!(
            "a plan worker never runs {}: only apply workers change infrastructure",
            job.action
        ));
    }
    if job.account != me.account {
        return Err(format!(
            "the job is for account {:?} and this worker serves {:?}",
            job.account, me.account
        ));
    }
    check_unit_path(&job.unit)?;
    match me.owners.route(&job.unit) {
        Some(owner) if owner == me.account => {}
        Some(owner) => {
            return Err(format!(
                "unit {:?} belongs to account {owner:?} by this worker's configuration, not {:?}",
                job.unit, me.account
            ));
        }
        None => {
            return Err(format!(
                "unit {:?} matches no account in this worker's configuration",
                job.unit
            ));
        }
    }
    let mut commits = vec![job.commit.as_str()];
    commits.extend(job.source_commit.as_deref());
    if let Some(bad) = commits.iter().find(|c| !is_commit_id(c)) {
        return Err(format!("{bad:?} is not a full commit id"));
    }
    Ok(())
}

/// The shared path rule ([`config::check_path`]), worded for a job.
pub(crate) fn check_unit_path(unit: &str) -> Result<(), String> {
    config::check_path(unit).map_err(|why| {
        format!(
            "unit path {unit:?} is not a relative, normalized path inside the repository ({why})"
        )
    })
}

/// A full SHA-1 or SHA-256 commit id, and so never an option or a ref name to git.
pub(crate) fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The unit's directory in a checkout, with every symlink resolved: it must still be inside
/// the checkout, and a directory.
pub(crate) fn resolve_unit(checkout: &Path, unit: &str, commit: &str) -> Result<PathBuf, String> {
    let root = checkout
        .canonicalize()
        .map_err(|err| format!("cannot resolve the checkout {}: {err}", checkout.display()))?;
    let resolved = match root.join(unit).canonicalize() {
        Ok(path) => path,
        Err(_) => {
            return Err(format!(
                "unit directory {unit} does not exist at commit {commit}"
            ));
        }
    };
    if !resolved.starts_with(&root) || resolved == root {
        return Err(format!(
            "unit path {unit:?} leads out of the checkout (through a symlink) at commit {commit}"
        ));
    }
    if !resolved.is_dir() {
        return Err(format!(
            "unit path {unit:?} is not a directory at commit {commit}"
        ));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use proto_types::Action;
    use uuid::Uuid;

    use super::*;

    fn owners() -> AccountRouter {
        let config = config::Config::from_toml(
            r#"
            [[repositories]]
            name = "infra"
            url = "/srv/infra.git"
            [[accounts]]
            name = "prod"
            paths = ["prod/**"]
            [[accounts]]
            name = "dev"
            paths = ["**"]
            "#,
        )
        .unwrap();
        AccountRouter::new(&config)
    }

    fn job(unit: &str, action: Action, role: ExecutorRole) -> Job {
        Job {
            job_id: Uuid::new_v4(),
            run_id: Uuid::new_v4(),
            repository: "infra".into(),
            account: "dev".into(),
            commit: "a".repeat(40),
            unit: unit.into(),
            action,
            source_commit: None,
            attempt: 1,
            timeout_secs: 0,
            role,
            policy_override: None,
        }
    }

    #[test]
    fn jobs_are_checked_against_the_workers_own_role_account_and_configuration() {
        let owners = owners();
        let me = |role| Identity {
            account: "dev",
            role,
            owners: &owners,
        };
        let plan = me(ExecutorRole::Plan);
        assert_eq!(
            check_job(&job("dev/app", Action::Plan, ExecutorRole::Plan), plan),
            Ok(())
        );
        let err = |job: Job, me| check_job(&job, me).unwrap_err();
        assert!(
            err(job("dev/app", Action::Apply, ExecutorRole::Plan), plan)
                .contains("a plan worker never runs apply")
        );
        assert!(
            err(job("dev/app", Action::Plan, ExecutorRole::Apply), plan)
                .contains("for the apply workers and this is a plan worker")
        );
        assert!(
            err(job("prod/db", Action::Plan, ExecutorRole::Plan), plan)
                .contains("belongs to account \"prod\"")
        );
        for unit in [
            "../escape",
            "/etc",
            "dev/./app",
            "dev//app",
            "dev/app/..",
            "",
            "dev\\app",
        ] {
            assert!(
                err(job(unit, Action::Plan, ExecutorRole::Plan), plan)
                    .contains("is not a relative, normalized path"),
                "{unit:?}"
            );
        }
        let mut forged = job("dev/app", Action::Destroy, ExecutorRole::Apply);
        forged.source_commit = Some("--upload-pack=touch /tmp/pwned".into());
        assert!(err(forged, me(ExecutorRole::Apply)).contains("is not a full commit id"));
    }

    #[test]
    fn only_full_hex_ids_are_commits() {
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(is_commit_id(&"0".repeat(64)));
        assert!(!is_commit_id("--upload-pack=touch /tmp/pwned"));
        assert!(!is_commit_id("main"));
        assert!(!is_commit_id(&"g".repeat(40)));
    }

    #[test]
    fn a_unit_that_leads_out_of_the_checkout_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let checkout = dir.path().join("src");
        std::fs::create_dir_all(checkout.join("dev/app")).unwrap();
        std::os::unix::fs::symlink("../..", checkout.join("dev/up")).unwrap();
        std::os::unix::fs::symlink("/etc", checkout.join("dev/etc")).unwrap();
        std::os::unix::fs::symlink("app", checkout.join("dev/alias")).unwrap();
        let commit = "c".repeat(40);
        assert!(resolve_unit(&checkout, "dev/app", &commit).is_ok());
        assert!(resolve_unit(&checkout, "dev/alias", &commit).is_ok());
        for unit in ["dev/up", "dev/etc"] {
            let err = resolve_unit(&checkout, unit, &commit).unwrap_err();
            assert!(err.contains("leads out of the checkout"), "{unit}: {err}");
        }
        let missing = resolve_unit(&checkout, "dev/none", &commit).unwrap_err();
        assert!(missing.contains("does not exist at commit"), "{missing}");
    }
}
