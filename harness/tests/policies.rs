//! Policy checks end to end: the admin's Rego policy sets on real workers (the built binary,
//! real RabbitMQ, real terraform), on a pull request's plans and on a push's applies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::path::Path;

use harness::applies::{Behaviour, Units, policy_set, terraform_data_unit};
use harness::deployment::Deployment;
use harness::github::StandIn;
use harness::runs::{DEADLINE, job, setup, status_json, submit, wait_final};
use harness::sandbox::Sandbox;

/// Denies the `terraform_data` resource type anywhere.
const NO_TERRAFORM_DATA: &str = r#"package main

deny contains msg if {
    some change in input.resource_changes
    change.type == "terraform_data"
    msg := sprintf("%s: terraform_data is not allowed (%s of %s)", [change.address, input.pipelines.action, input.pipelines.unit])
}
"#;

/// Warns about every null resource: advice, never a failure.
const ADVICE: &str = r#"package main

warn contains msg if {
    some change in input.resource_changes
    change.type == "null_resource"
    msg := sprintf("%s: prefer terraform_data in %s", [change.address, input.pipelines.account])
}
"#;

#[test]
fn a_denied_plan_fails_its_unit_alone_and_its_apply_never_starts_while_warnings_let_others_go_on() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    terraform_data_unit(&sandbox, "dev/bucket", "bucket", "\"v1\"");
    let c1 = units.commit(
        "c1: net, bucket, app on bucket",
        1,
        &[("dev/net", &[], quick), ("dev/app", &["dev/bucket"], quick)],
    );
    let security = policy_set(sandbox.path(), "security", NO_TERRAFORM_DATA);
    let advice = policy_set(sandbox.path(), "advice", ADVICE);
    let github = StandIn::start(5);
    let extra = format!(
        "\n[[policies]]\npath = {security:?}\n\n[[policies]]\npath = {advice:?}\nmode = \"warn\"\n{}",
        github.config_section()
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], &extra);
    StandIn::name_repository(&config);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);

    // The pull request: the bucket's plan fails with the policy's message; the plan of its
    // dependent is skipped; the independent unit's plan passes with a warning.
    let pr = submit(&sandbox, &vhost, (&c0, &c1), "pull-request", &["--pr", "5"]);
    let detail = wait_final(&sandbox, pr);
    assert_eq!(detail.run.state, "failed", "{detail:#?}");
    let bucket = job(&detail, "dev/bucket");
    assert_eq!(bucket.state, "failed", "{detail:#?}");
    let report = bucket.policy.as_ref().expect("a policy report");
    assert!(report.blocks(), "{report:?}");
    let security_result = report.sets.iter().find(|s| s.name == "security").unwrap();
    assert_eq!(
        security_result.denies,
        ["terraform_data.bucket: terraform_data is not allowed (plan of dev/bucket)"]
    );
    assert_eq!(security_result.rules, 1);
    assert_eq!(job(&detail, "dev/app").state, "skipped", "{detail:#?}");
    let net = job(&detail, "dev/net");
    assert_eq!(net.state, "succeeded", "{detail:#?}");
    let net_report = net.policy.as_ref().expect("a policy report");
    assert!(!net_report.blocks(), "{net_report:?}");
    let advice_result = net_report.sets.iter().find(|s| s.name == "advice").unwrap();
    assert_eq!(
        advice_result.warnings,
        ["null_resource.apply: prefer terraform_data in dev"]
    );
    let json = status_json(&sandbox, Some(pr)).unwrap();
    assert!(
        json.contains("terraform_data.bucket: terraform_data is not allowed"),
        "{json}"
    );
    // On the pull request: the comment names the denied unit's message under it, and the
    // policy status fails.
    let reported = github.wait_for("the pull request's final report", |reported| {
        reported
            .comments
            .last()
            .is_some_and(|body| body.contains("### ❌ Pipelines: plan failed"))
            && reported.last_status("pipelines/policy").is_some()
    });
    let comment = reported.comments.last().unwrap();
    assert!(
        comment.contains("**Policy: `dev/bucket`**\n- ❌ deny **security**: <code>terraform&#95;data.bucket&#58; terraform&#95;data is not allowed &#40;plan of dev/bucket&#41;</code>"),
        "{comment}"
    );
    assert!(
        comment.contains("- ⚠️ warn **advice**: <code>null&#95;resource.apply&#58; prefer terraform&#95;data in dev</code>"),
        "{comment}"
    );
    let policy = reported.last_status("pipelines/policy").unwrap();
    assert_eq!(policy["state"], "failure", "{policy}");
    assert_eq!(policy["description"], "denied: dev/bucket", "{policy}");

    // The merge: the denied unit is never applied (no state file), its dependent is skipped,
    // the independent unit is applied despite the warning.
    let push = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let detail = wait_final(&sandbox, push);
    assert_eq!(detail.run.state, "failed", "{detail:#?}");
    let bucket = job(&detail, "dev/bucket");
    assert_eq!(bucket.state, "failed", "{detail:#?}");
    assert_eq!(bucket.attempt, 1, "a policy's verdict is never retried");
    assert!(
        bucket.policy.as_ref().unwrap().sets[0].denies[0].contains("(apply of dev/bucket)"),
        "{detail:#?}"
    );
    assert!(
        !sandbox.state_dir().join("dev/bucket.tfstate").exists(),
        "the denied unit was applied"
    );
    assert_eq!(job(&detail, "dev/app").state, "skipped", "{detail:#?}");
    assert_eq!(job(&detail, "dev/net").state, "succeeded", "{detail:#?}");
    assert!(
        units.log.text().contains("end dev/net 1"),
        "{}",
        units.log.text()
    );
    assert!(
        !units.log.text().contains("dev/app"),
        "{}",
        units.log.text()
    );
    deployment.assert_running();
}

#[test]
fn policy_test_evaluates_a_plan_file_like_an_executor_and_exits_1_on_a_deny() {
    let sandbox = Sandbox::new();
    let security = policy_set(sandbox.path(), "security", NO_TERRAFORM_DATA);
    let config = sandbox.write_config(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        &[("dev", "dev/**")],
        &format!("\n[[policies]]\npath = {security:?}\n"),
    );
    let plan = sandbox.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"format_version":"1.2","resource_changes":[{"address":"terraform_data.x","type":"terraform_data","change":{"actions":["create"]}}]}"#,
    )
    .unwrap();
    let policy_test = |plan: &Path, format: &str| {
        sandbox.pipelines(&[
            "policy",
            "test",
            "--config",
            config.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            "--unit",
            "dev/app",
            "--account",
            "dev",
            "--format",
            format,
        ])
    };
    let run = |plan: &Path, format: &str| {
        harness::process::run(policy_test(plan, format), harness::runs::DEADLINE)
    };
    let denied = run(&plan, "text");
    assert_eq!(denied.code(), Some(1), "{}", denied.transcript());
    assert!(
        denied
            .stdout
            .contains("deny: terraform_data.x: terraform_data is not allowed (plan of dev/app)"),
        "{}",
        denied.transcript()
    );
    assert!(
        denied.stdout.contains("1 set(s), 1 rule(s)"),
        "{}",
        denied.stdout
    );
    // Its reader gone, as after `| head -1` has read its line: the deny still exits 1.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut command = policy_test(&plan, "text");
    command.env_remove("RUST_LOG");
    let unread = harness::process::run_writing_to(command, writer.into(), harness::runs::DEADLINE);
    assert_eq!(unread.code(), Some(1), "{}", unread.transcript());
    assert!(unread.stderr.is_empty(), "{}", unread.transcript());

    std::fs::write(&plan, r#"{"resource_changes":[]}"#).unwrap();
    let passed = run(&plan, "json");
    assert_eq!(passed.code(), Some(0), "{}", passed.transcript());
    let report: proto_types::PolicyReport = serde_json::from_str(&passed.stdout).unwrap();
    assert!(
        !report.blocks() && report.sets[0].denies.is_empty(),
        "{report:?}"
    );

    let missing = run(&sandbox.path().join("absent.json"), "text");
    assert_eq!(missing.code(), Some(2), "{}", missing.transcript());
    assert!(
        missing.stderr.contains("absent.json"),
        "{}",
        missing.transcript()
    );
}

#[test]
fn a_malformed_policy_a_looping_policy_and_a_10_mb_plan_each_fail_their_job_and_the_worker_goes_on()
{
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    // Its plan JSON is over 10 MB: a string of ten million characters.
    terraform_data_unit(&sandbox, "dev/huge", "big", "format(\"%10000000s\", \"x\")");
    let c1 = units.commit(
        "c1: four units",
        1,
        &[
            ("dev/broken", &[], quick),
            ("dev/looping", &[], quick),
            ("dev/fine", &[], quick),
        ],
    );
    let broken = policy_set(
        sandbox.path(),
        "broken",
        "package main\n\ndeny contains msg if {\n    msg := \n}\n",
    );
    let looping = policy_set(
        sandbox.path(),
        "looping",
        "package main\n\ndeny contains msg if {\n    some x in numbers.range(1, 100000)\n    some y in numbers.range(1, 100000)\n    x * y == -1\n    msg := \"never\"\n}\n",
    );
    let security = policy_set(sandbox.path(), "security", NO_TERRAFORM_DATA);
    let extra = format!(
        "\n[policy]\ntime_budget = \"1s\"\n\n\
         [[policies]]\npath = {broken:?}\nunits = [\"dev/broken\"]\n\n\
         [[policies]]\npath = {looping:?}\nunits = [\"dev/looping\"]\n\n\
         [[policies]]\npath = {security:?}\nunits = [\"dev/fine\", \"dev/huge\"]\n"
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], &extra);
    // One plan worker: it takes every job of the pull request, one after another.
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);

    let pr = submit(&sandbox, &vhost, (&c0, &c1), "pull-request", &["--pr", "9"]);
    let detail = wait_final(&sandbox, pr);
    let error_of = |unit: &str| {
        let job = job(&detail, unit);
        assert_eq!(job.state, "failed", "{unit}: {detail:#?}");
        let report = job.policy.as_ref().expect("a policy report");
        assert!(report.blocks(), "{report:?}");
        report.sets[0].error.clone().expect("an error")
    };
    let broken_error = error_of("dev/broken");
    assert!(
        broken_error.contains(&format!("{broken}/broken.rego:")),
        "{broken_error}"
    );
    let looping_error = error_of("dev/looping");
    assert!(
        looping_error.contains("policy.time_budget"),
        "{looping_error}"
    );
    let huge_error = error_of("dev/huge");
    assert!(
        huge_error.contains("over policy.max_plan_bytes (8388608)"),
        "{huge_error}"
    );
    // The worker went on: the last unit's plan passed its policies on the same worker.
    let fine = job(&detail, "dev/fine");
    assert_eq!(fine.state, "succeeded", "{detail:#?}");
    assert!(!fine.policy.as_ref().unwrap().blocks());
    let workers: std::collections::BTreeSet<_> = detail
        .jobs
        .iter()
        .filter_map(|j| j.worker.clone())
        .collect();
    assert_eq!(workers.len(), 1, "{workers:?}");
    deployment.assert_running();
}

#[test]
fn sighup_reloads_a_workers_policies_for_the_next_job_and_a_broken_file_keeps_the_old_ones() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    terraform_data_unit(&sandbox, "dev/bucket", "bucket", "\"v1\"");
    let c1 = sandbox.repo.commit("c1: bucket");
    let security = policy_set(sandbox.path(), "security", NO_TERRAFORM_DATA);
    let extra = format!("\n[[policies]]\npath = {security:?}\n");
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], &extra);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let hangup = |deployment: &Deployment| {
        let pid = deployment.executor_pid("dev-plan-1").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    let reloads = |deployment: &Deployment| {
        deployment
            .executor_log("dev-plan-1")
            .matches("Policies reloaded")
            .count()
    };

    let denied = submit(&sandbox, &vhost, (&c0, &c1), "pull-request", &["--pr", "8"]);
    assert_eq!(
        job(&wait_final(&sandbox, denied), "dev/bucket").state,
        "failed"
    );

    // A configuration that no longer loads: the worker says so and keeps its sets.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{good}\n[policy]\ntime_budget = \"soon\"\n"),
    )
    .unwrap();
    hangup(&deployment);
    harness::poll_until(DEADLINE, "the refused reload to be logged", || {
        deployment
            .executor_log("dev-plan-1")
            .contains("Policies not reloaded")
            .then_some(())
    });
    let still = submit(&sandbox, &vhost, (&c0, &c1), "pull-request", &["--pr", "9"]);
    assert_eq!(
        job(&wait_final(&sandbox, still), "dev/bucket").state,
        "failed"
    );

    // The admin allows terraform_data (the set now denies another type) and signals: the
    // next job runs under the new sets.
    std::fs::write(&config, good).unwrap();
    std::fs::write(
        std::path::Path::new(&security).join("security.rego"),
        NO_TERRAFORM_DATA.replace("\"terraform_data\"", "\"aws_s3_bucket\""),
    )
    .unwrap();
    hangup(&deployment);
    harness::poll_until(DEADLINE, "the reload to be logged", || {
        (reloads(&deployment) == 1).then_some(())
    });
    let allowed = submit(
        &sandbox,
        &vhost,
        (&c0, &c1),
        "pull-request",
        &["--pr", "10"],
    );
    let detail = wait_final(&sandbox, allowed);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    let report = job(&detail, "dev/bucket").policy.clone().unwrap();
    assert!(!report.blocks() && report.rules() == 1, "{report:?}");
    deployment.assert_running();
}
