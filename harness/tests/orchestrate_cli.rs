//! The `orchestrate` contract as outside checks call it: the `--dry-run --format json`
//! document, merge-base semantics for pull requests, and exit code 2 on usage errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::time::Duration;

use harness::process::{self, Finished};
use harness::scenario::{Fixture, UNITS, unit_tf};
use serde_json::json;

fn dry_run(fixture: &Fixture, base: &str, head: &str, event: &str, format: &str) -> Finished {
    let extra = ["--dry-run", "--format", format];
    process::run(
        fixture.pipelines_on_range("orchestrate", base, head, event, &extra),
        Duration::from_secs(60),
    )
}

fn json_of(run: &Finished) -> serde_json::Value {
    assert_eq!(run.code(), Some(0), "{}", run.transcript());
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", run.stdout))
}

#[test]
fn dry_run_json_reports_added_units_as_the_contract_says() {
    let fixture = Fixture::new();
    let report = json_of(&dry_run(&fixture, &fixture.c0, &fixture.c1, "push", "json"));
    let mut units: Vec<&str> = UNITS.iter().map(|(unit, _)| *unit).collect();
    units.sort_unstable();
    let mut files: Vec<String> = units
        .iter()
        .flat_map(|u| [format!("{u}/main.tf"), format!("{u}/pipelines.hcl")])
        .collect();
    files.sort();
    assert_eq!(
        report,
        json!({
            "base_sha": fixture.c0,
            "head_sha": fixture.c1,
            "event": "push",
            "changes": [{"kind": "UnitAdded", "units": units, "files": files}],
            "warnings": []
        })
    );
}

#[test]
fn dry_run_json_reports_changed_and_deleted_units_with_their_files() {
    let fixture = Fixture::new();
    let report = json_of(&dry_run(&fixture, &fixture.c1, &fixture.c2, "push", "json"));
    assert_eq!(
        report,
        json!({
            "base_sha": fixture.c1,
            "head_sha": fixture.c2,
            "event": "push",
            "changes": [
                {"kind": "UnitChanged", "units": ["dev/database", "prod/cache"], "files": ["dev/database/main.tf", "prod/cache/main.tf"]},
                {"kind": "UnitDeleted", "units": ["prod/monitoring"], "files": ["prod/monitoring/main.tf", "prod/monitoring/pipelines.hcl"]}
            ],
            "warnings": []
        })
    );
}

#[test]
fn a_pull_request_is_compared_with_the_merge_base_not_the_moved_base_branch() {
    let fixture = Fixture::new();
    let repo = &fixture.repo;
    repo.git(&["checkout", "--quiet", "-b", "feature"]);
    repo.write(
        "dev/dns/main.tf",
        &unit_tf("dev/dns", 2, &fixture.state_dir()),
    );
    repo.commit("feature: change dev/dns");
    repo.git(&["checkout", "--quiet", "main"]);
    repo.write(
        "prod/dns/main.tf",
        &unit_tf("prod/dns", 2, &fixture.state_dir()),
    );
    repo.commit("main moves on: change prod/dns");

    let report = json_of(&dry_run(
        &fixture,
        "main",
        "feature",
        "pull-request",
        "json",
    ));
    assert_eq!(report["event"], "pull-request");
    assert_eq!(
        report["base_sha"], fixture.c2,
        "the merge base, not main's tip"
    );
    assert_eq!(
        report["changes"],
        json!([{"kind": "UnitChanged", "units": ["dev/dns"], "files": ["dev/dns/main.tf"]}])
    );
}

#[test]
fn text_output_is_a_table_of_kind_unit_and_file() {
    let fixture = Fixture::new();
    let run = dry_run(&fixture, &fixture.c1, &fixture.c2, "push", "text");
    assert_eq!(run.code(), Some(0), "{}", run.transcript());
    assert!(run.stdout.contains("KIND"), "{}", run.stdout);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["UnitChanged", "dev/database", "dev/database/main.tf"]),
        "{}",
        run.stdout
    );
    assert!(
        rows.contains(&vec![
            "UnitDeleted",
            "prod/monitoring",
            "prod/monitoring/main.tf",
            "(+1",
            "more)"
        ]),
        "{}",
        run.stdout
    );
}

#[test]
fn usage_errors_exit_2_with_a_one_line_reason_naming_the_value() {
    let fixture = Fixture::new();
    let unknown_rev = dry_run(&fixture, "no-such-rev", &fixture.c1, "push", "json");
    assert_eq!(unknown_rev.code(), Some(2), "{}", unknown_rev.transcript());
    assert!(
        unknown_rev
            .stderr
            .contains("unknown revision \"no-such-rev\""),
        "{}",
        unknown_rev.stderr
    );
    assert_eq!(
        unknown_rev.stderr.trim().lines().count(),
        1,
        "{}",
        unknown_rev.stderr
    );
    assert!(unknown_rev.stdout.is_empty());

    let bad_event = dry_run(&fixture, &fixture.c0, &fixture.c1, "merge", "json");
    assert_eq!(bad_event.code(), Some(2), "{}", bad_event.transcript());
    assert!(
        bad_event.stderr.contains("unknown event \"merge\""),
        "{}",
        bad_event.stderr
    );

    let not_a_repo = process::run(
        fixture.pipelines(&[
            "orchestrate",
            "--repo",
            "/nonexistent",
            "--base",
            "a",
            "--head",
            "b",
            "--event",
            "push",
            "--dry-run",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(not_a_repo.code(), Some(2), "{}", not_a_repo.transcript());
    assert!(
        not_a_repo
            .stderr
            .contains("/nonexistent is not a git repository"),
        "{}",
        not_a_repo.stderr
    );
}

#[test]
fn inside_github_actions_without_flags_the_event_payload_says_what_to_compare() {
    let fixture = Fixture::new();
    let payload_dir = fixture.dir("github");
    let payload = payload_dir.join("event.json");
    std::fs::write(
        &payload,
        format!(
            r#"{{"number": 9, "pull_request": {{"number": 9, "base": {{"sha": "{}", "ref": "main"}}, "head": {{"sha": "{}", "ref": "change"}}}}}}"#,
            fixture.c1, fixture.c2
        ),
    )
    .unwrap();
    let repo = fixture.repo.path().to_str().unwrap();
    let mut command = fixture.pipelines(&[
        "orchestrate",
        "--repo",
        repo,
        "--dry-run",
        "--format",
        "json",
    ]);
    command
        .env("GITHUB_EVENT_NAME", "pull_request")
        .env("GITHUB_EVENT_PATH", &payload);
    let report = json_of(&process::run(command, Duration::from_secs(60)));
    assert_eq!(report["event"], "pull-request");
    assert_eq!(report["head_sha"], fixture.c2);
    assert_eq!(report["base_sha"], fixture.c1);
    assert_eq!(
        report["changes"][0]["units"],
        json!(["dev/database", "prod/cache"])
    );

    // Outside Actions, the flags are required and the error says so.
    let bare = process::run(
        fixture.pipelines(&["orchestrate", "--repo", repo, "--dry-run"]),
        Duration::from_secs(60),
    );
    assert_eq!(bare.code(), Some(2), "{}", bare.transcript());
    assert!(
        bare.stderr.contains("pass --head and --event"),
        "{}",
        bare.stderr
    );
}

#[test]
fn a_change_deleting_a_unit_others_depend_on_is_refused_before_anything_is_published() {
    let fixture = Fixture::new();
    fixture.repo.remove_dir("dev/network");
    let head = fixture.repo.commit("delete a unit others depend on");
    // No broker is listening on this port: a refusal must not even try to connect.
    let extra = ["--broker", "amqp://guest:guest@127.0.0.1:1/%2f", "--wait"];
    let run = process::run(
        fixture.pipelines_on_range("orchestrate", &fixture.c2, &head, "push", &extra),
        Duration::from_secs(60),
    );
    assert_eq!(run.code(), Some(1), "{}", run.transcript());
    assert!(
        run.stderr
            .contains("refused: dev/network is deleted, but dev/cache still depends on it"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("refused: dev/network is deleted, but dev/database still depends on it"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Nothing was submitted"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_drift_dry_run_lists_the_heads_units_selected_by_glob() {
    let fixture = Fixture::new();
    let repo = fixture.sandbox.repo.path().to_str().unwrap().to_owned();
    let drift = |extra: &[&str]| {
        let mut args = vec![
            "orchestrate",
            "--repo",
            &repo,
            "--event",
            "drift",
            "--head",
            &fixture.c1,
            "--branch",
            "main",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        process::run(fixture.sandbox.pipelines(&args), Duration::from_secs(60))
    };
    let report = json_of(&drift(&["--format", "json", "--units", "prod/**"]));
    let mut prod: Vec<&str> = UNITS
        .iter()
        .map(|(unit, _)| *unit)
        .filter(|unit| unit.starts_with("prod/"))
        .collect();
    prod.sort_unstable();
    assert_eq!(
        report,
        json!({
            "base_sha": fixture.c1,
            "head_sha": fixture.c1,
            "event": "drift",
            "changes": [{"kind": "DriftCheck", "units": prod, "files": []}],
            "warnings": []
        })
    );
    let text = drift(&[]);
    assert_eq!(text.code(), Some(0), "{}", text.transcript());
    assert!(
        text.stdout.starts_with(&format!(
            "Drift check of main at {}: {} unit(s)",
            &fixture.c1[..12],
            UNITS.len()
        )),
        "{}",
        text.stdout
    );

    // --units belongs to drift checks, and a bad glob names itself.
    let misplaced = process::run(
        fixture.pipelines_on_range(
            "orchestrate",
            &fixture.c0,
            &fixture.c1,
            "push",
            &["--dry-run", "--units", "prod/**"],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(misplaced.code(), Some(2), "{}", misplaced.transcript());
    assert!(
        misplaced
            .stderr
            .contains("--units selects the units of a drift check"),
        "{}",
        misplaced.stderr
    );
    let bad = drift(&["--units", "a/["]);
    assert_eq!(bad.code(), Some(2), "{}", bad.transcript());
    assert!(
        bad.stderr.contains("--units: invalid glob \"a/[\""),
        "{}",
        bad.stderr
    );
}
