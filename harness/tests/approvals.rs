//! Approval gates end to end: a gated account's applies wait on real workers (the built binary,
//! real RabbitMQ, real terraform with the null provider) until an approver's broker user lets
//! them go, rejects them, or the wait expires; anyone else's approval is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::path::{Path, PathBuf};

use harness::applies::{Behaviour, Units, policy_set, terraform_data_unit};
use harness::deployment::Deployment;
use harness::github::StandIn;
use harness::poll_until;
use harness::process::{self, Finished};
use harness::rabbit::{self, ControlUser, Vhost};
use harness::runs::{DEADLINE, job, setup, status, status_json, submit, wait_final};
use harness::sandbox::Sandbox;
use proto_types::{ApprovalGate, RunDetail};
use uuid::Uuid;

const ACCOUNTS: &str = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\n\n\
    [[accounts]]\nname = \"prod\"\npaths = [\"prod/**\"]\nrequire_approval = true\n";

/// The admins' configuration: `prod` gated, `approver` the only approver.
fn admin_config(
    sandbox: &Sandbox,
    vhost: &Vhost,
    approver: &str,
    timeout: &str,
    more: &str,
) -> PathBuf {
    let extra =
        format!("\n[approvals]\nusers = [{approver:?}]\napproval_timeout = {timeout:?}\n{more}");
    sandbox.write_config_with(&vhost.url, ACCOUNTS, &extra)
}

/// What a person's own `pipelines approve` reads: the admins' file with their broker login
/// (and, for mallory, a list of approvers she wrote herself).
fn personal_config(sandbox: &Sandbox, name: &str, admin: &Path, user: &ControlUser) -> PathBuf {
    let admin = std::fs::read_to_string(admin).unwrap();
    let (_, rest) = admin.split_once('\n').unwrap();
    let text = format!("broker_url = {:?}\n{rest}", user.url);
    let path = sandbox.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn decide(sandbox: &Sandbox, config: &Path, verb: &str, run: Uuid, reason: &str) -> Finished {
    let run = run.to_string();
    let args = [
        verb,
        &run,
        "--config",
        config.to_str().unwrap(),
        "--reason",
        reason,
    ];
    process::run(sandbox.pipelines(&args), DEADLINE)
}

/// `pipelines approve RUN` with `config`'s login, then the run to its successful end.
fn approve_to_success(sandbox: &Sandbox, config: &Path, run: Uuid, reason: &str) -> RunDetail {
    let sent = decide(sandbox, config, "approve", run, reason);
    assert_eq!(sent.code(), Some(0), "{}", sent.transcript());
    let done = wait_final(sandbox, run);
    assert_eq!(done.run.state, "succeeded", "{done:#?}");
    done
}

/// Polls until `unit` of `run` is in `state`.
fn wait_for_state(sandbox: &Sandbox, run: Uuid, unit: &str, state: &str) -> RunDetail {
    poll_until(
        DEADLINE,
        &format!("{unit} of run {run} to be {state}"),
        || {
            status(sandbox, run).filter(|detail| {
                detail
                    .jobs
                    .iter()
                    .any(|j| j.unit == unit && j.state == state)
            })
        },
    )
}

#[test]
fn a_gated_apply_waits_refuses_a_non_approver_applies_once_approved_and_a_reject_cancels() {
    let (vhost, sandbox) = setup();
    let approver = rabbit::control_user(&vhost, "approver");
    let mallory = rabbit::control_user(&vhost, "mallory");
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: dev/net, prod/app on dev/net",
        1,
        &[("dev/net", &[], quick), ("prod/app", &["dev/net"], quick)],
    );
    let github = StandIn::start(3);
    let admin = admin_config(
        &sandbox,
        &vhost,
        &approver.name,
        "1h",
        &github.config_section(),
    );
    StandIn::name_repository(&admin);
    let mut deployment = Deployment::start(sandbox.path(), &admin, &[("dev", 1), ("prod", 1)]);

    // The pull request plans at once and says that the apply will wait.
    let pr = submit(&sandbox, &vhost, (&c0, &c1), "pull-request", &["--pr", "3"]);
    let planned = wait_final(&sandbox, pr);
    assert_eq!(planned.run.state, "succeeded", "{planned:#?}");
    assert_eq!(
        job(&planned, "prod/app").approval,
        Some(ApprovalGate::AfterMerge)
    );
    let reported = github.wait_for("the pull request's final comment", |reported| {
        reported
            .comments
            .last()
            .is_some_and(|body| body.contains("### ✅ Pipelines: plan succeeded"))
    });
    let comment = reported.comments.last().unwrap();
    assert!(
        comment.contains("**Approvals**\n- 🔒 `prod/app` plan: its apply will wait for an approval after the merge\n"),
        "{comment}"
    );

    // The merge: dev/net applies, prod/app waits for the approver, visibly.
    let push = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let waiting = wait_for_state(&sandbox, push, "dev/net", "succeeded");
    let app = job(&waiting, "prod/app");
    assert_eq!(app.state, "awaiting-approval", "{waiting:#?}");
    assert!(
        matches!(&app.approval, Some(ApprovalGate::Waiting { approvers, .. }) if approvers == std::slice::from_ref(&approver.name)),
        "{app:#?}"
    );
    assert_eq!(waiting.run.state, "running");
    let text = process::run(
        sandbox.pipelines(&[
            "status",
            &push.to_string(),
            "--state-dir",
            sandbox.dispatcher_state_dir().to_str().unwrap(),
        ]),
        DEADLINE,
    );
    assert!(
        text.stdout
            .contains(&format!("waits for an approval from {}", approver.name)),
        "{}",
        text.transcript()
    );

    // Mallory, not an approver, lists herself as one in her own file: the CLI lets her send,
    // RabbitMQ stamps her real user, and the dispatcher refuses and dead-letters the order.
    let mallory_config = personal_config(&sandbox, "mallory", &admin, &mallory);
    let own_list = std::fs::read_to_string(&mallory_config).unwrap().replace(
        &format!("users = [{:?}]", approver.name),
        &format!("users = [{:?}]", mallory.name),
    );
    std::fs::write(&mallory_config, own_list).unwrap();
    let sent = decide(&sandbox, &mallory_config, "approve", push, "trust me");
    assert_eq!(sent.code(), Some(0), "{}", sent.transcript());
    poll_until(DEADLINE, "mallory's order to be dead-lettered", || {
        rabbit::queue_messages(&vhost)
            .into_iter()
            .find(|(queue, count)| queue == "dead.pipelines.control" && *count == 1)
    });
    let log = deployment.dispatcher_log();
    assert!(
        log.contains("may not approve") && log.contains(&mallory.name),
        "{log}"
    );
    assert_eq!(
        job(&status(&sandbox, push).unwrap(), "prod/app").state,
        "awaiting-approval"
    );
    assert!(
        !units.log.text().contains("prod/app"),
        "{}",
        units.log.text()
    );

    // With the admins' list, the CLI refuses her before sending anything.
    let refused = decide(
        &sandbox,
        &personal_config(&sandbox, "mallory-honest", &admin, &mallory),
        "approve",
        push,
        "trust me",
    );
    assert_eq!(refused.code(), Some(2), "{}", refused.transcript());
    assert!(
        refused.stderr.contains("may not approve"),
        "{}",
        refused.transcript()
    );

    // The approver approves: prod/app applies, and the record says who and why.
    let approver_config = personal_config(&sandbox, "approver", &admin, &approver);
    let done = approve_to_success(&sandbox, &approver_config, push, "change window CHG-1");
    let app = job(&done, "prod/app");
    assert!(
        matches!(&app.approval, Some(ApprovalGate::Approved { by, reason, .. })
            if by.starts_with(&approver.name) && reason == "change window CHG-1"),
        "{app:#?}"
    );
    units
        .log
        .assert_applied_once_in_order(&[("dev/net", &[]), ("prod/app", &["dev/net"])]);
    let json = status_json(&sandbox, Some(push)).unwrap();
    assert!(json.contains("change window CHG-1"), "{json}");
    // The merged pull request heard that its apply waited, and then who let it go.
    let reported = github.wait_for("the approval comment's last update", |reported| {
        reported
            .comments
            .iter()
            .any(|body| body.contains("approved by") && body.contains("apply of"))
    });
    assert!(
        reported
            .comments
            .iter()
            .any(|body| body.contains("waits for an approval (1 unit(s))")
                && body.contains(&format!("waits for an approval from {}", approver.name))),
        "{:#?}",
        reported.comments
    );

    // The next change is rejected: prod/app is cancelled with the reason, never applied.
    let c2 = units.commit("c2: prod/app v2", 2, &[("prod/app", &["dev/net"], quick)]);
    let second = submit(&sandbox, &vhost, (&c1, &c2), "push", &[]);
    wait_for_state(&sandbox, second, "prod/app", "awaiting-approval");
    let sent = decide(
        &sandbox,
        &approver_config,
        "reject",
        second,
        "not during the freeze",
    );
    assert_eq!(sent.code(), Some(0), "{}", sent.transcript());
    let rejected = wait_final(&sandbox, second);
    assert_eq!(rejected.run.state, "cancelled", "{rejected:#?}");
    let app = job(&rejected, "prod/app");
    assert_eq!(app.state, "cancelled");
    let why = app.reason.as_deref().unwrap_or_default();
    assert!(
        why.starts_with(&format!("rejected by {}", approver.name))
            && why.ends_with("not during the freeze"),
        "{why}"
    );
    assert_eq!(
        units.log.by_unit()["prod/app"].len(),
        1,
        "{}",
        units.log.text()
    );
    deployment.assert_running();
}

#[test]
fn an_unanswered_approval_expires_and_cancels_the_apply() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: prod/app",
        1,
        &[("prod/app", &[], Behaviour::Succeed { seconds: 0 })],
    );
    let admin = admin_config(&sandbox, &vhost, "approver", "3s", "");
    let mut deployment = Deployment::start(sandbox.path(), &admin, &[("prod", 1)]);
    let push = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let detail = wait_final(&sandbox, push);
    assert_eq!(detail.run.state, "cancelled", "{detail:#?}");
    let app = job(&detail, "prod/app");
    assert_eq!(app.state, "cancelled");
    assert_eq!(
        app.reason.as_deref(),
        Some("approval expired: nobody approved it within 3s")
    );
    assert!(units.log.text().is_empty(), "{}", units.log.text());
    assert!(!sandbox.state_dir().join("prod/app.tfstate").exists());
    deployment.assert_running();
}

/// Denies the `terraform_data` resource type anywhere.
const NO_TERRAFORM_DATA: &str = r#"package main

deny contains msg if {
    some change in input.resource_changes
    change.type == "terraform_data"
    msg := sprintf("%s: terraform_data needs a sign-off", [change.address])
}
"#;

#[test]
fn an_approver_overrides_an_overridable_deny_and_the_apply_goes_on_recording_who_and_why() {
    let (vhost, sandbox) = setup();
    let approver = rabbit::control_user(&vhost, "approver");
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    terraform_data_unit(&sandbox, "dev/bucket", "bucket", "\"v1\"");
    let c1 = units.commit(
        "c1: bucket, app on bucket",
        1,
        &[(
            "dev/app",
            &["dev/bucket"],
            Behaviour::Succeed { seconds: 0 },
        )],
    );
    let security = policy_set(sandbox.path(), "security", NO_TERRAFORM_DATA);
    let extra = format!(
        "\n[[policies]]\npath = {security:?}\noverride = \"approvers\"\n\n\
         [approvals]\nusers = [{:?}]\n",
        approver.name
    );
    let admin = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], &extra);
    let mut deployment = Deployment::start(sandbox.path(), &admin, &[("dev", 1)]);

    // The apply worker's check denies the bucket: instead of failing, it waits for an approver.
    let push = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let waiting = wait_for_state(&sandbox, push, "dev/bucket", "awaiting-approval");
    let bucket = job(&waiting, "dev/bucket");
    assert!(
        matches!(&bucket.approval, Some(ApprovalGate::Waiting { policy_sets, .. }) if policy_sets == &["security".to_owned()]),
        "{bucket:#?}"
    );
    assert!(bucket.policy.as_ref().unwrap().overridable(), "{bucket:#?}");
    assert!(!sandbox.state_dir().join("dev/bucket.tfstate").exists());
    assert_eq!(job(&waiting, "dev/app").state, "pending");

    let approver_config = personal_config(&sandbox, "approver", &admin, &approver);
    let done = approve_to_success(&sandbox, &approver_config, push, "CHG-7: sign-off");
    let bucket = job(&done, "dev/bucket");
    assert_eq!(
        bucket.attempt, 2,
        "planned and checked again before the apply"
    );
    let security = &bucket.policy.as_ref().unwrap().sets[0];
    assert_eq!(
        security.denies,
        ["terraform_data.bucket: terraform_data needs a sign-off"]
    );
    let by = security.overridden.as_deref().unwrap_or_default();
    assert!(
        by.starts_with(&approver.name) && by.ends_with("CHG-7: sign-off"),
        "{by}"
    );
    assert!(sandbox.state_dir().join("dev/bucket.tfstate").exists());
    assert_eq!(job(&done, "dev/app").state, "succeeded");
    deployment.assert_running();
}
