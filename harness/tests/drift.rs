//! Drift detection end to end (the built binary, real RabbitMQ, real terraform): drift runs plan
//! the deploy branch's units read-only, find exactly what changed out of band, keep each
//! unit's finding, tell the GitHub stand-in through one living issue, and yield to other runs;
//! the dispatcher's own schedule fires them, once for however many slots it missed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::applies::terraform_data_unit;
use harness::deployment::Deployment;
use harness::github::StandIn;
use harness::process;
use harness::runs::{DEADLINE, job, setup, status_json, submit, submit_drift, wait_final};
use harness::sandbox::Sandbox;
use harness::{poll_until, poll_until_explained};
use proto_types::{DriftState, DriftUnit, RunDetail, RunSummary};

const ACCOUNTS: &str = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\n";

/// The "real world" a unit reads: a file outside the repository, as a console click would
/// change a setting outside the code.
fn world_file(sandbox: &Sandbox, unit: &str) -> PathBuf {
    sandbox
        .dir("world")
        .join(format!("{}.txt", unit.replace('/', "_")))
}

/// Units whose one resource (`terraform_data`, Terraform's built-in provider) holds what their
/// world file says: a plan after the file changed wants to replace it.
fn world_units(sandbox: &Sandbox, units: &[String]) -> String {
    for unit in units {
        let world = world_file(sandbox, unit);
        std::fs::write(&world, "v1").unwrap();
        terraform_data_unit(
            sandbox,
            unit,
            "world",
            &format!("file({:?})", world.display().to_string()),
        );
    }
    sandbox.repo.commit("units reading the world")
}

fn unit_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("dev/u{i:02}")).collect()
}

/// `pipelines drift status --format json`, by unit.
fn drift_status(sandbox: &Sandbox) -> BTreeMap<String, DriftUnit> {
    let state_dir = sandbox.dispatcher_state_dir();
    let finished = process::run(
        sandbox.pipelines(&[
            "drift",
            "status",
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--format",
            "json",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(finished.code(), Some(0), "{}", finished.transcript());
    let units: Vec<DriftUnit> = serde_json::from_str(&finished.stdout).unwrap();
    units.into_iter().map(|u| (u.unit.clone(), u)).collect()
}

fn drifted(status: &BTreeMap<String, DriftUnit>) -> Vec<&str> {
    status
        .values()
        .filter(|u| u.state == DriftState::Drifted)
        .map(|u| u.unit.as_str())
        .collect()
}

/// Every state file's bytes.
fn states(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

fn drift_runs(sandbox: &Sandbox) -> Vec<RunSummary> {
    let runs: Vec<RunSummary> =
        serde_json::from_str(&status_json(sandbox, None).unwrap_or_else(|| "[]".into())).unwrap();
    runs.into_iter()
        .filter(|run| run.event == proto_types::EventKind::Drift)
        .collect()
}

#[test]
fn a_drift_run_finds_exactly_what_changed_out_of_band_and_its_issue_follows_until_all_is_back() {
    let (vhost, sandbox) = setup();
    let units = unit_names(10);
    sandbox.repo.write("README.md", "# infrastructure\n");
    let c0 = sandbox.repo.commit("c0: readme");
    let c1 = world_units(&sandbox, &units);
    let github = StandIn::start(5);
    let config = sandbox.write_config_with(
        &vhost.url,
        ACCOUNTS,
        &format!(
            "drift_jobs_per_account = 4\nmetrics_address = \"127.0.0.1:0\"\n\n[[drift]]\nrepository = \"infra\"\nexclude = [\"dev/u09\"]\n\
             open_pull_request = true\n{}",
            github.config_section()
        ),
    );
    StandIn::name_repository(&config);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);
    let endpoint = process::served_at(|| deployment.dispatcher_log());
    let drifted_gauge = || {
        let metrics = process::http_get(&endpoint, "/metrics").unwrap().1;
        let labels = [("repository", "infra"), ("account", "dev")];
        process::metric_value(&metrics, "pipelines_drifted_units", &labels)
    };

    let push = submit(&sandbox, &vhost, (&c0, &c1), "push", &["--branch", "main"]);
    let applied = wait_final(&sandbox, push);
    assert_eq!(applied.run.state, "succeeded", "{applied:#?}");

    // Nothing drifted yet: every checked unit is in sync, and GitHub hears nothing.
    let first = wait_final(&sandbox, submit_drift(&sandbox, &vhost, &[]));
    assert_eq!(first.run.state, "succeeded", "{first:#?}");
    assert_eq!(first.jobs.len(), 9, "dev/u09 is excluded: {first:#?}");
    assert!(
        first
            .jobs
            .iter()
            .all(|j| j.action == proto_types::Action::DriftPlan)
    );
    let status = drift_status(&sandbox);
    assert_eq!(status.len(), 9);
    assert!(drifted(&status).is_empty(), "{status:#?}");

    // Out of band, two units' world changes.
    let before = states(&sandbox.state_dir());
    std::fs::write(world_file(&sandbox, "dev/u03"), "v2").unwrap();
    std::fs::write(world_file(&sandbox, "dev/u07"), "v2").unwrap();
    let found = wait_final(&sandbox, submit_drift(&sandbox, &vhost, &[]));
    assert_eq!(found.run.state, "succeeded", "{found:#?}");
    for unit in &units[..9] {
        let check = job(&found, unit);
        let expected = unit == "dev/u03" || unit == "dev/u07";
        assert_eq!(
            check.drift.as_ref().map(|d| d.drifted),
            Some(expected),
            "{unit}: {check:#?}"
        );
        assert_eq!(
            check.exit_code,
            Some(if expected { 2 } else { 0 }),
            "{unit}"
        );
    }
    let status = drift_status(&sandbox);
    assert_eq!(drifted(&status), ["dev/u03", "dev/u07"], "{status:#?}");
    poll_until(DEADLINE, "the drift gauge to count both", || {
        (drifted_gauge() == Some(2.0)).then_some(())
    });
    let u03 = &status["dev/u03"];
    assert_eq!(u03.run_id, found.run.run_id);
    assert_eq!(u03.resources, ["terraform_data.world (update)"], "{u03:#?}");
    assert!(
        u03.resource_changes
            .is_some_and(|c| c.change == 1 && c.add + c.destroy == 0)
    );
    assert_eq!(
        states(&sandbox.state_dir()),
        before,
        "a drift check modifies no state file"
    );
    let text = process::run(
        sandbox.pipelines(&[
            "drift",
            "status",
            "--state-dir",
            sandbox.dispatcher_state_dir().to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    assert!(
        text.stdout
            .contains("9 unit(s): 2 drifted, 0 could not be checked, 7 in sync."),
        "{}",
        text.stdout
    );

    // The stand-in gets one issue listing both.
    let reported = github.wait_for("the drift issue", |r| !r.issues.is_empty());
    let (verb, issue) = &reported.issues[0];
    assert_eq!(verb, "POST");
    assert_eq!(issue["title"], "Drift report");
    let body = issue["body"].as_str().unwrap();
    assert!(
        body.contains("<code>dev/u03</code>")
            && body.contains("<code>dev/u07</code>")
            && !body.contains("dev/u01"),
        "{body}"
    );
    assert!(
        body.contains("terraform&#95;data.world &#40;update&#41;"),
        "{body}"
    );
    // And a pull request that records the drift of both, pushed to the canonical repository.
    assert!(
        body.contains("Pull request #43 records this drift"),
        "{body}"
    );
    assert_eq!(reported.pulls.len(), 1, "{:#?}", reported.pulls);
    let pull = &reported.pulls[0];
    assert_eq!(pull["base"], "main");
    let branch = pull["head"].as_str().unwrap().to_owned();
    assert_eq!(branch, "pipelines/drift");
    let changed = sandbox.repo.git(&["diff", "--name-only", &c1, &branch]);
    assert_eq!(
        changed.lines().collect::<Vec<_>>(),
        ["dev/u03/.drift-history.json", "dev/u07/.drift-history.json"]
    );
    let history = sandbox
        .repo
        .git(&["show", &format!("{branch}:dev/u03/.drift-history.json")]);
    let history: Vec<proto_types::DriftHistoryEntry> = serde_json::from_str(&history).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].run_id, history[0].change),
        (found.run.run_id, 1)
    );

    // The same drift again says nothing new: no second issue request.
    let again = wait_final(&sandbox, submit_drift(&sandbox, &vhost, &[]));
    assert_eq!(again.run.state, "succeeded");
    poll_until_explained(
        DEADLINE,
        "the reporter to see the same drift again",
        || {
            (deployment
                .dispatcher_log()
                .matches("Drift unchanged since the last report")
                .count()
                >= 1)
                .then_some(())
        },
        || deployment.dispatcher_log(),
    );
    let reported = github.reported();
    assert_eq!((reported.issues.len(), reported.pulls.len()), (1, 1));

    // Back: dev/u07's change is undone out of band, and the drift pull request is merged: a
    // DriftDetected change of both units' `.drift-history.json`, which applies them again.
    std::fs::write(world_file(&sandbox, "dev/u07"), "v1").unwrap();
    sandbox
        .repo
        .git(&["merge", "--quiet", "--ff-only", &branch]);
    let c2 = sandbox.repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
    let reapplied = wait_final(
        &sandbox,
        submit(&sandbox, &vhost, (&c1, &c2), "push", &["--branch", "main"]),
    );
    assert_eq!(reapplied.run.state, "succeeded", "{reapplied:#?}");
    assert_eq!(reapplied.jobs.len(), 2, "{reapplied:#?}");
    for unit in ["dev/u03", "dev/u07"] {
        assert_eq!(
            (
                job(&reapplied, unit).action,
                job(&reapplied, unit).state.as_str()
            ),
            (proto_types::Action::Apply, "succeeded")
        );
    }
    let synced = wait_final(&sandbox, submit_drift(&sandbox, &vhost, &[]));
    assert_eq!(synced.run.state, "succeeded");
    assert!(drifted(&drift_status(&sandbox)).is_empty());
    let closed = github.wait_for("the drift issue to close", |r| {
        r.issues
            .last()
            .is_some_and(|(verb, body)| verb == "PATCH" && body["state"] == "closed")
    });
    let (_, last) = closed.issues.last().unwrap();
    assert!(
        last["body"]
            .as_str()
            .unwrap()
            .contains("Every unit is back in sync.")
    );

    // The gauges agree.
    poll_until(DEADLINE, "the drift gauge to go back to 0", || {
        (drifted_gauge() == Some(0.0)).then_some(())
    });
    let metrics = process::http_get(&endpoint, "/metrics").unwrap().1;
    let last = process::metric_value(
        &metrics,
        "pipelines_drift_last_run_timestamp_seconds",
        &[("repository", "infra")],
    )
    .unwrap();
    assert!(last * 1000.0 >= synced.run.created_ms as f64, "{metrics}");
    deployment.assert_running();
}

/// The jobs of `detail` that started after `at_ms`, by start.
fn started_after(detail: &RunDetail, at_ms: u64) -> Vec<(u64, String)> {
    let mut started: Vec<(u64, String)> = detail
        .jobs
        .iter()
        .filter_map(|j| Some((j.started_ms?, j.unit.clone())))
        .filter(|(ms, _)| *ms > at_ms)
        .collect();
    started.sort();
    started
}

#[test]
fn a_pull_request_and_a_push_during_a_drift_run_start_before_its_remaining_checks() {
    let (vhost, sandbox) = setup();
    let units = unit_names(6);
    sandbox.repo.write("README.md", "# infrastructure\n");
    let c0 = sandbox.repo.commit("c0: readme");
    let c1 = world_units(&sandbox, &units);
    let config = sandbox.write_config_with(&vhost.url, ACCOUNTS, "drift_jobs_per_account = 1\n");
    // The apply worker now; the one plan worker once everything is queued, so that what it
    // takes first is decided by the queue alone, not by how fast a check runs.
    let mut deployment = Deployment::start(sandbox.path(), &config, &[]);
    deployment.start_executor("dev", "dev-1");
    let applied = wait_final(
        &sandbox,
        submit(&sandbox, &vhost, (&c0, &c1), "push", &["--branch", "main"]),
    );
    assert_eq!(applied.run.state, "succeeded", "{applied:#?}");

    let drift = submit_drift(&sandbox, &vhost, &[]);
    poll_until(DEADLINE, "the drift run to queue its first check", || {
        harness::runs::status(&sandbox, drift)
            .filter(|d| d.jobs.iter().filter(|j| j.state == "queued").count() == 1)
    });
    terraform_data_unit(&sandbox, "dev/new", "world", "\"fresh\"");
    let c2 = sandbox.repo.commit("c2: dev/new");
    let pr = submit(&sandbox, &vhost, (&c1, &c2), "pull-request", &["--pr", "9"]);
    let push = submit(&sandbox, &vhost, (&c1, &c2), "push", &["--branch", "main"]);
    // A push goes to the apply workers, which no drift check occupies: it ends while every
    // check still waits.
    let pushed = wait_final(&sandbox, push);
    assert_eq!(pushed.run.state, "succeeded", "{pushed:#?}");
    let waiting = harness::runs::status(&sandbox, drift).unwrap();
    assert!(
        waiting.jobs.iter().all(|j| j.started_ms.is_none()),
        "{waiting:#?}"
    );
    let pending = harness::runs::status(&sandbox, pr).unwrap();
    assert_eq!(job(&pending, "dev/new").state, "queued", "{pending:#?}");

    deployment.start_executor("dev:plan", "dev-plan-1");
    let planned = wait_final(&sandbox, pr);
    let checked = wait_final(&sandbox, drift);
    assert_eq!(planned.run.state, "succeeded", "{planned:#?}");
    assert_eq!(checked.run.state, "succeeded", "{checked:#?}");
    // On the one plan worker: the check queued before the pull request arrived, then the
    // pull request's plan, then the other five checks.
    let plan_started = job(&planned, "dev/new").started_ms.unwrap();
    let checks = started_after(&checked, 0);
    assert_eq!(checks.len(), 6, "{checked:#?}");
    assert!(checks[0].0 < plan_started, "{checks:?} vs {plan_started}");
    assert!(
        checks[1..].iter().all(|(ms, _)| *ms > plan_started),
        "the pull request's plan ({plan_started}) started after drift checks: {checks:?}"
    );

    // A drift check of a commit that is not on the deploy branch (an orchestrator may name
    // any) is refused by the worker: it would report on code that is not deployed.
    sandbox.repo.git(&["checkout", "--quiet", "-b", "side"]);
    terraform_data_unit(&sandbox, "dev/u00", "world", "\"elsewhere\"");
    sandbox.repo.commit("side: not deployed");
    let side = harness::runs::submit_drift(
        &sandbox,
        &vhost,
        &["--branch", "main", "--units", "dev/u00"],
    );
    let refused = wait_final(&sandbox, side);
    assert_eq!(refused.run.state, "failed", "{refused:#?}");
    let reason = job(&refused, "dev/u00").reason.clone().unwrap_or_default();
    assert!(reason.contains("refused"), "{refused:#?}");
    let status = drift_status(&sandbox);
    assert_eq!(status["dev/u00"].state, DriftState::Error, "{status:#?}");
    deployment.assert_running();
}

#[test]
fn the_dispatcher_schedule_fires_drift_runs_and_a_restart_after_missed_slots_fires_once() {
    let (vhost, sandbox) = setup();
    let units = unit_names(2);
    sandbox.repo.write("README.md", "# infrastructure\n");
    sandbox.repo.commit("c0: readme");
    world_units(&sandbox, &units);
    // Slots at S, S+15 and S+18 seconds of each minute, S a few seconds from now: the first
    // fires on its own; the dispatcher is down for the other two.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = now_s + 6;
    let schedule = format!("{},{},{} * * * * *", s % 60, (s + 15) % 60, (s + 18) % 60);
    let config = sandbox.write_config_with(
        &vhost.url,
        ACCOUNTS,
        &format!("\n[[drift]]\nrepository = \"infra\"\nschedule = \"{schedule}\"\n"),
    );
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);
    let fired = poll_until_explained(
        Duration::from_secs(60),
        "the scheduled drift run",
        || drift_runs(&sandbox).into_iter().next(),
        || deployment.dispatcher_log(),
    );
    assert!(
        fired.created_ms / 1000 >= s,
        "{fired:#?} fired before its slot {s}"
    );
    let done = wait_final(&sandbox, fired.run_id);
    assert_eq!(done.run.state, "succeeded", "{done:#?}");
    assert_eq!(done.jobs.len(), 2);
    deployment.kill_dispatcher();
    let killed_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        killed_s < s + 15,
        "the first drift run took too long for this test's slots: killed at {killed_s}, next slot {}",
        s + 15
    );

    // Down past both remaining slots of the minute (polling the clock, not sleeping on it).
    poll_until(Duration::from_secs(60), "the missed slots to pass", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now > s + 19).then_some(())
    });
    let restarted_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    deployment.start_dispatcher();
    let caught_up = poll_until_explained(
        Duration::from_secs(30),
        "the missed slots' one drift run",
        || {
            let runs = drift_runs(&sandbox);
            (runs.len() >= 2).then_some(runs)
        },
        || deployment.dispatcher_log(),
    );
    let second = wait_final(&sandbox, caught_up[0].run_id);
    assert_eq!(second.run.state, "succeeded", "{second:#?}");
    assert!(second.run.created_ms >= restarted_ms);
    // Nothing else fires before the next minute's slot S+60: exactly one for two missed.
    assert_eq!(drift_runs(&sandbox).len(), 2, "{:#?}", drift_runs(&sandbox));
    assert!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            < s + 60,
        "the check ran past the next slot: the count above proves nothing"
    );
    assert_eq!(
        deployment
            .dispatcher_log()
            .matches("A drift slot passed while the dispatcher was down")
            .count(),
        1
    );
    deployment.assert_running();
}
