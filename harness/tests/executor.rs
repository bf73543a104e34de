//! Executor workers over the real RabbitMQ with real terraform: a worker killed mid-apply, a
//! forged push, a merge that slow plans cannot hold up, timeouts, cancellation, SIGTERM drains, credentials (command and web identity
//! against a local STS stand-in), and three workers sharing a thirty-job run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::applies::{Behaviour, Units, pipelines_hcl, probe_unit_tf};
use harness::deployment::Deployment;
use harness::poll_until;
use harness::process::{self, processes_under};
use harness::runs::{
    DEADLINE, assert_job, follow_to_end, job, orchestrate, setup, status, submit, wait_final,
};
use harness::sandbox::Sandbox;
use proto_types::JobPhase;
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Waits until no process runs in the worker's checkouts: its tools are gone.
fn wait_no_tools(deployment: &Deployment, worker: &str) -> u128 {
    let dir = deployment.work_dir(worker);
    poll_until(
        Duration::from_secs(30),
        &format!("{worker}'s tools to be gone"),
        || {
            let left = processes_under(&dir);
            left.is_empty().then(now_ns)
        },
    )
}

fn wait_apply_started(units: &Units<'_>) {
    poll_until(DEADLINE, "the apply to start", || {
        units.log.text().contains("start dev/app").then_some(())
    });
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The run succeeded with dev-2 completing the job at its first attempt, after an interrupted
/// apply: two applies logged, the first never ended, the second began once the first's tools
/// were gone (`gone`) and ended.
fn assert_taken_over(sandbox: &Sandbox, units: &Units<'_>, run: uuid::Uuid, gone: u128) {
    let detail = wait_final(sandbox, run);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    assert_job(&detail, "dev/app", "succeeded", "dev-2", 1);
    let applies = &units.log.by_unit()["dev/app"];
    let log = units.log.text();
    assert_eq!(applies.len(), 2, "{log}");
    assert_eq!(
        applies[0].end, None,
        "the interrupted apply finished anyway:\n{log}"
    );
    assert!(
        applies[1].start > gone,
        "the second apply began while the first one's tools ran:\n{log}"
    );
    assert!(applies[1].end.is_some(), "{log}");
}

fn one_unit(units: &Units<'_>, behaviour: Behaviour) -> (String, String) {
    let c0 = units.readme_only();
    let c1 = units.commit("c1: one unit", 1, &[("dev/app", &[], behaviour)]);
    (c0, c1)
}

#[test]
fn a_worker_killed_mid_apply_leaves_no_tool_behind_and_another_worker_completes_the_job() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let (c0, c1) = one_unit(&units, Behaviour::SlowOnce { seconds: 60 });
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "lease_seconds = 10\n");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);

    wait_apply_started(&units);
    assert!(
        !processes_under(&deployment.work_dir("dev-1")).is_empty(),
        "the apply runs in dev-1's checkout"
    );
    deployment.executor("dev-1").kill();
    deployment.forget_executor("dev-1");
    // SIGKILL gives the worker no chance to clean up: its supervisor does.
    let gone = wait_no_tools(&deployment, "dev-1");
    deployment.start_executor("dev", "dev-2");

    assert_taken_over(&sandbox, &units, run, gone);
    let state = std::fs::read_to_string(sandbox.state_dir().join("dev/app.tfstate")).unwrap();
    assert!(
        state.contains("\"null_resource\"") && state.contains("\"version\": \"1\""),
        "{state}"
    );
    deployment.assert_running();
}

#[test]
fn a_push_of_a_commit_only_on_an_unmerged_branch_is_refused_and_nothing_runs() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    sandbox.repo.git(&["checkout", "--quiet", "-b", "feature"]);
    let forged = units.commit(
        "c1: not reviewed",
        1,
        &[("dev/app", &[], Behaviour::Succeed { seconds: 0 })],
    );
    sandbox.repo.git(&["checkout", "--quiet", "main"]);
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);

    // The event claims a push to main: the dispatcher cannot tell, the worker checks.
    let run = orchestrate(
        &sandbox,
        &vhost,
        (&c0, &forged),
        "push",
        &["--branch", "main", "--wait"],
    );
    assert_eq!(run.code(), Some(1), "{}", run.transcript());
    let reason = format!("refused: commit {forged} is not on branch \"main\" of infra");
    assert!(run.stdout.contains(&reason), "{}", run.transcript());
    assert!(run.stdout.contains("nothing ran"), "{}", run.transcript());
    assert!(units.log.applies().is_empty(), "{}", units.log.text());
    assert!(
        !sandbox.state_dir().join("dev/app.tfstate").exists(),
        "the state was touched"
    );
    deployment.assert_running();
}

/// Both commits of a range given backwards are on the deploy branch, so the reachability check
/// passes; the unit the range "deletes" is live at the tip, and the worker refuses to destroy
/// it.
#[test]
fn a_push_whose_range_runs_backwards_cannot_destroy_a_unit_the_deploy_branch_still_has() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let (c0, c1) = one_unit(&units, Behaviour::Succeed { seconds: 0 });
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let applied = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    assert_eq!(wait_final(&sandbox, applied).run.state, "succeeded");
    let state_file = sandbox.state_dir().join("dev/app.tfstate");
    let state = std::fs::read_to_string(&state_file).unwrap();
    assert!(state.contains("\"null_resource\""), "{state}");

    // From c1 back to c0: dev/app is only at the base, so the event says it was deleted.
    let run = orchestrate(
        &sandbox,
        &vhost,
        (&c1, &c0),
        "push",
        &["--branch", "main", "--wait"],
    );
    assert_eq!(run.code(), Some(1), "{}", run.transcript());
    assert!(
        run.stdout.contains("dev/app (destroy)"),
        "{}",
        run.transcript()
    );
    let reason = format!(
        "refused: dev/app is not deleted: the tip {c1} of branch \"main\" has its main.tf, pipelines.hcl"
    );
    assert!(run.stdout.contains(&reason), "{}", run.transcript());
    assert!(run.stdout.contains("nothing ran"), "{}", run.transcript());
    assert_eq!(
        std::fs::read_to_string(&state_file).unwrap(),
        state,
        "the state was touched"
    );
    deployment.assert_running();
}

/// `terraform` on the PATH the tests run with.
fn terraform_on_path() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|dir| dir.join("terraform"))
        .find(|binary| binary.is_file())
        .expect("terraform on PATH (scripts/test.sh installs it)")
}

/// A pull request's plans that hang (as a slow `data "external"` would) hold every slot its
/// account gives plans; a merge that comes after them still applies, on the slot kept for the
/// deploy branch, while they hang.
#[test]
fn a_merge_applies_while_a_pull_requests_slow_plans_hold_every_plan_slot() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let both = [("dev/a", &[][..], quick), ("dev/b", &[][..], quick)];
    let c0 = units.readme_only();
    let c1 = units.commit("c1: two units", 1, &both);
    // The pull request's version of both units plans until the gate opens.
    for unit in ["dev/a", "dev/b"] {
        sandbox.repo.write(&format!("{unit}/slow-plan"), "");
    }
    let c2 = units.commit("c2: slow plans", 2, &both);
    let gate = sandbox.path().join("plans.gate");
    let tool = sandbox.path().join("terraform-with-slow-plans");
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\nif [ \"$1\" = plan ] && [ -e slow-plan ]; then\n  while [ ! -e {} ]; do sleep 0.2; done\nfi\nexec {} \"$@\"\n",
            gate.display(),
            terraform_on_path().display()
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&tool).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&tool, permissions).unwrap();
    let accounts = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\nmax_concurrent_jobs = 2\n";
    let executor = format!("\n[executor]\ntf_binary = \"{}\"\n", tool.display());
    let config = sandbox.write_config_with(&vhost.url, accounts, &executor);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);

    let plans = submit(&sandbox, &vhost, (&c1, &c2), "pull-request", &["--pr", "9"]);
    let note = poll_until(DEADLINE, "a plan to hang and the other to wait", || {
        let detail = status(&sandbox, plans)?;
        let running = detail.jobs.iter().any(|j| j.state == JobPhase::Running);
        let waiting = detail.jobs.iter().find_map(|j| j.note.clone());
        running.then_some(waiting).flatten()
    });
    assert_eq!(
        note,
        "waiting for a plan slot of account dev (the deploy branch's jobs keep 1 of its 2)"
    );

    let merge = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let merged = wait_final(&sandbox, merge);
    assert_eq!(merged.run.state, "succeeded", "{merged:#?}");
    let applied: BTreeSet<String> = units.log.applies().into_iter().map(|a| a.unit).collect();
    assert_eq!(applied, BTreeSet::from(["dev/a".into(), "dev/b".into()]));
    let held = status(&sandbox, plans).unwrap();
    assert_eq!(held.run.state, "running", "the plans hang: {held:#?}");

    std::fs::write(&gate, "").unwrap();
    let planned = wait_final(&sandbox, plans);
    assert_eq!(planned.run.state, "succeeded", "{planned:#?}");
    deployment.assert_running();
}

#[test]
fn a_job_past_its_timeout_is_stopped_with_its_whole_process_group() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let (c0, c1) = one_unit(&units, Behaviour::Succeed { seconds: 300 });
    let accounts = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\njob_timeout = \"20s\"\n";
    let config = sandbox.write_config_with(&vhost.url, accounts, "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);

    let started = Instant::now();
    let run = orchestrate(&sandbox, &vhost, (&c0, &c1), "push", &["--wait"]);
    assert_eq!(run.code(), Some(1), "{}", run.transcript());
    assert!(
        run.stdout
            .contains("Error: the job timed out after 20 s and was stopped"),
        "{}",
        run.transcript()
    );
    assert!(
        started.elapsed() < Duration::from_secs(200),
        "the 300 s sleep was not interrupted"
    );
    wait_no_tools(&deployment, "dev-1");
    assert!(
        !units.log.text().contains("end dev/app"),
        "{}",
        units.log.text()
    );
    deployment.assert_running();
}

#[test]
fn a_cancelled_run_stops_its_running_job_and_its_tools_are_gone() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let (c0, c1) = one_unit(&units, Behaviour::Succeed { seconds: 300 });
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    wait_apply_started(&units);

    let prefix = run.to_string()[..8].to_owned();
    let config_arg = config.to_str().unwrap();
    let cancel = process::run(
        sandbox.pipelines(&[
            "cancel",
            &prefix,
            "--config",
            config_arg,
            "--reason",
            "wrong change",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(cancel.code(), Some(0), "{}", cancel.transcript());

    let detail = wait_final(&sandbox, run);
    assert_eq!(detail.run.state, "cancelled", "{detail:#?}");
    let app = job(&detail, "dev/app");
    assert_eq!(app.state, "cancelled", "{detail:#?}");
    let reason = app.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("cancelled by ") && reason.ends_with(": wrong change"),
        "{reason}"
    );
    wait_no_tools(&deployment, "dev-1");
    assert!(
        !units.log.text().contains("end dev/app"),
        "{}",
        units.log.text()
    );
    let log =
        std::fs::read_to_string(app.log.as_deref().unwrap().split_once(':').unwrap().1).unwrap();
    assert!(
        log.contains("Error: the job was stopped: cancelled by "),
        "{log}"
    );
    deployment.assert_running();
}

#[test]
fn sigterm_lets_the_running_job_finish_then_the_worker_exits() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let (c0, c1) = one_unit(&units, Behaviour::Succeed { seconds: 5 });
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        "\n[executor]\ndrain_seconds = 120\n",
    );
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    wait_apply_started(&units);

    deployment.drain_executor("dev-1");
    let detail = wait_final(&sandbox, run);
    assert_eq!(
        (
            detail.run.state.as_str(),
            job(&detail, "dev/app").worker.as_deref()
        ),
        ("succeeded", Some("dev-1"))
    );
    assert!(
        units.log.text().contains("end dev/app"),
        "{}",
        units.log.text()
    );
    deployment.assert_running();
}

#[test]
fn a_job_still_running_when_the_drain_ends_is_given_back_and_completed_elsewhere() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let (c0, c1) = one_unit(&units, Behaviour::SlowOnce { seconds: 300 });
    let extra = "lease_seconds = 300\n\n[executor]\ndrain_seconds = 2\nstop_grace_seconds = 10\n";
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], extra);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    wait_apply_started(&units);

    deployment.drain_executor("dev-1");
    let gone = wait_no_tools(&deployment, "dev-1");
    // The lease is long: only the give-back lets another worker take the job at once.
    deployment.start_executor("dev", "dev-2");

    assert_taken_over(&sandbox, &units, run, gone);
    deployment.assert_running();
}

/// The policy for the credential tests: the dev account with a plan and an apply identity.
fn config_with_credentials(
    sandbox: &Sandbox,
    broker_url: &str,
    credentials: &str,
) -> std::path::PathBuf {
    let accounts = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\nplan_credentials = \"dev-plan\"\napply_credentials = \"dev-apply\"\n";
    sandbox.write_config_with(broker_url, accounts, credentials)
}

/// What the probe's apply wrote, words separated by single spaces (unset variables vanish).
fn seen_words(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A pull request (plan) then a push (apply) of one probe unit; the logs of both jobs.
fn plan_then_apply(
    sandbox: &Sandbox,
    vhost: &harness::rabbit::Vhost,
    seen: &Path,
) -> (String, String) {
    let repo = &sandbox.repo;
    repo.write("README.md", "# infrastructure\n");
    let c0 = repo.commit("c0: readme");
    repo.write(
        "dev/app/main.tf",
        &probe_unit_tf("dev/app", &sandbox.state_dir(), seen),
    );
    repo.write("dev/app/pipelines.hcl", &pipelines_hcl("dev/app", &[]));
    let c1 = repo.commit("c1: a probe");
    let mut logs = Vec::new();
    for event in ["pull-request", "push"] {
        let (status, run) = follow_to_end(sandbox, vhost, (&c0, &c1), event, 0);
        let log = status.units[0].log.clone().unwrap();
        logs.push(std::fs::read_to_string(log.split_once(':').unwrap().1).unwrap());
        for secret in [
            "plan-secret-0001",
            "apply-secret-0002",
            "PLANSECRETKEY0001",
            "APPLYSECRETKEY0002",
        ] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{secret} leaked"
            );
        }
    }
    let apply = logs.pop().unwrap();
    (logs.pop().unwrap(), apply)
}

#[test]
fn command_credentials_reach_only_their_own_jobs_and_never_the_output() {
    let (vhost, sandbox) = setup();
    let issue = |identity: &str, secret: &str| {
        format!(
            "[\"sh\", \"-c\", \"echo '{{\\\"env\\\": {{\\\"TF_VAR_identity\\\": \\\"{identity}\\\", \\\"TF_VAR_secret\\\": \\\"{secret}\\\"}}}}'\"]"
        )
    };
    let credentials = format!(
        "\n[[credentials]]\nname = \"dev-plan\"\nprovider = \"command\"\ncommand = {}\n\n\
         [[credentials]]\nname = \"dev-apply\"\nprovider = \"command\"\ncommand = {}\n",
        issue("plan", "plan-secret-0001"),
        issue("apply", "apply-secret-0002")
    );
    let config = config_with_credentials(&sandbox, &vhost.url, &credentials);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let seen = sandbox.path().join("seen.txt");

    let (plan, apply) = plan_then_apply(&sandbox, &vhost, &seen);
    assert!(
        plan.contains("identity = \"plan\"") && !plan.contains("identity = \"apply\""),
        "{plan}"
    );
    assert!(plan.contains("secret   = \"***\""), "{plan}");
    assert!(
        apply.contains("identity = \"apply\"") && !apply.contains("identity = \"plan\""),
        "{apply}"
    );
    assert!(apply.contains("the secret is ***"), "{apply}");
    for log in [
        &plan,
        &apply,
        &deployment.executor_log("dev-1"),
        &deployment.dispatcher_log(),
    ] {
        assert!(
            !log.contains("plan-secret-0001") && !log.contains("apply-secret-0002"),
            "a secret leaked:\n{log}"
        );
    }
    // The tool itself did get the value: only what it printed was redacted.
    assert_eq!(seen_words(&seen), "dev/app apply apply-secret-0002");
    deployment.assert_running();
}

#[test]
fn web_identity_credentials_come_from_sts_per_job_and_never_reach_the_output() {
    let (vhost, sandbox) = setup();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sts = runtime.block_on(MockServer::start());
    // Each role its own token file (the policy refuses a plan identity sharing the apply one).
    for role in ["plan", "apply"] {
        std::fs::write(
            sandbox.path().join(format!("{role}-token")),
            format!("oidc-{role}-token\n"),
        )
        .unwrap();
    }
    let answer = |key: &str, secret: &str| {
        ResponseTemplate::new(200).set_body_string(format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
             <SessionToken>session-token-{key}</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
             </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        ))
    };
    for (role, key, secret) in [
        ("plan", "ASIAPLAN", "PLANSECRETKEY0001"),
        ("apply", "ASIAAPPLY", "APPLYSECRETKEY0002"),
    ] {
        let mock = Mock::given(method("POST"))
            .and(body_string_contains("Action=AssumeRoleWithWebIdentity"))
            .and(body_string_contains(format!(
                "RoleArn=arn%3Aaws%3Aiam%3A%3A111111111111%3Arole%2F{role}"
            )))
            .and(body_string_contains(format!(
                "WebIdentityToken=oidc-{role}-token"
            )))
            .respond_with(answer(key, secret))
            .expect(1);
        runtime.block_on(mock.mount(&sts));
    }
    let entry = |name: &str, role: &str| {
        format!(
            "\n[[credentials]]\nname = \"{name}\"\nprovider = \"aws-web-identity\"\nrole_arn = \"arn:aws:iam::111111111111:role/{role}\"\n\
             token_file = \"{}\"\nregion = \"eu-west-1\"\nsts_endpoint = \"{}/\"\n",
            sandbox.path().join(format!("{role}-token")).display(),
            sts.uri()
        )
    };
    let credentials = format!(
        "{}{}",
        entry("dev-plan", "plan"),
        entry("dev-apply", "apply")
    );
    let config = config_with_credentials(&sandbox, &vhost.url, &credentials);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let seen = sandbox.path().join("seen.txt");

    let (plan, apply) = plan_then_apply(&sandbox, &vhost, &seen);
    assert!(plan.contains("credentials \"dev-plan\""), "{plan}");
    assert!(
        apply.contains("credentials \"dev-apply\"") && apply.contains("the key is ***"),
        "{apply}"
    );
    for log in [&plan, &apply, &deployment.executor_log("dev-1")] {
        assert!(
            !log.contains("PLANSECRETKEY0001") && !log.contains("APPLYSECRETKEY0002"),
            "a secret leaked:\n{log}"
        );
    }
    assert_eq!(
        seen_words(&seen),
        "dev/app ASIAAPPLY APPLYSECRETKEY0002",
        "the apply ran with the apply role's keys"
    );
    // Exactly one STS call per job, each for its own role (checked when the mocks drop).
    runtime.block_on(sts.verify());
    deployment.assert_running();
}

#[test]
fn three_workers_share_a_thirty_job_run_and_no_job_runs_on_two() {
    let (vhost, sandbox) = setup();
    let units = Units::new(&sandbox);
    let names: Vec<String> = (1..=30).map(|i| format!("dev/unit-{i:02}")).collect();
    let layout: Vec<(&str, &[&str], Behaviour)> = names
        .iter()
        .map(|name| (name.as_str(), &[][..], Behaviour::Succeed { seconds: 0 }))
        .collect();
    let c0 = units.readme_only();
    let c1 = units.commit("c1: thirty units", 1, &layout);
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 3)]);

    let (status, _) = follow_to_end(&sandbox, &vhost, (&c0, &c1), "push", 0);
    assert_eq!(status.units.len(), 30);

    // Every unit applied once; every job claimed by exactly one worker, and each worker busy.
    let by_unit = units.log.by_unit();
    for name in &names {
        assert_eq!(
            by_unit.get(name).map_or(0, Vec::len),
            1,
            "{name}:\n{}",
            units.log.text()
        );
    }
    let mut claimed_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for worker in ["dev-1", "dev-2", "dev-3"] {
        for line in deployment
            .executor_log(worker)
            .lines()
            .filter(|l| l.contains("Job claimed."))
        {
            let job_id = line
                .split("job_id=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            claimed_by
                .entry(job_id.to_owned())
                .or_default()
                .insert(worker.to_owned());
        }
    }
    assert_eq!(claimed_by.len(), 30, "{claimed_by:#?}");
    assert!(
        claimed_by.values().all(|workers| workers.len() == 1),
        "a job ran on two workers: {claimed_by:#?}"
    );
    let busy: BTreeSet<&String> = claimed_by.values().flatten().collect();
    assert_eq!(
        busy.len(),
        3,
        "not every worker took a job: {claimed_by:#?}"
    );
    deployment.assert_running();
}
