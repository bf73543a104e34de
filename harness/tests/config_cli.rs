//! `pipelines config check` and start-up validation: a bad policy file fails with exit 2 and a
//! message naming the key and the value; what the commands print, when nobody reads it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::time::Duration;

use harness::process;
use harness::scenario::Fixture;

#[test]
fn a_valid_policy_checks_and_a_bad_one_names_its_key() {
    let fixture = Fixture::new();
    let config = fixture.config(config::DEFAULT_BROKER_URL);
    let path = config.to_str().unwrap();
    let ok = process::run(
        fixture.pipelines(&["config", "check", path]),
        Duration::from_secs(30),
    );
    assert_eq!(ok.code(), Some(0), "{}", ok.transcript());
    assert!(ok.stdout.contains("account dev: dev/**"), "{}", ok.stdout);
    // The fixture's applies name no credentials: they would run as the host.
    assert!(
        ok.stdout
            .contains("warning: account dev: applies run as the executor host's own identity"),
        "{}",
        ok.stdout
    );

    // PIPELINES_* environment variables override the file (how compose and Kubernetes inject
    // the broker URL with its password); unrelated PIPELINES_* variables are not keys.
    let mut command = fixture.pipelines(&["config", "check", path]);
    command
        .env(
            "PIPELINES_BROKER_URL",
            "amqp://pipelines:s3cret@rabbitmq:5672/prod",
        )
        .env("PIPELINES_TELEMETRY_OPT_OUT", "1");
    let overridden = process::run(command, Duration::from_secs(30));
    assert_eq!(overridden.code(), Some(0), "{}", overridden.transcript());
    assert!(
        overridden
            .stdout
            .contains("broker amqp://pipelines:***@rabbitmq:5672/prod"),
        "{}",
        overridden.stdout
    );

    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("dev/**", "dev/[");
    std::fs::write(&config, text).unwrap();
    for args in [
        vec!["config", "check", path],
        vec!["dispatch", "--config", path],
        vec![
            "execute",
            "--config",
            path,
            "--account",
            "dev",
            "--role",
            "plan",
        ],
    ] {
        let bad = process::run(fixture.pipelines(&args), Duration::from_secs(30));
        assert_eq!(bad.code(), Some(2), "{args:?}: {}", bad.transcript());
        assert!(
            bad.stderr
                .contains("config key `accounts[0].paths[0]`: invalid glob \"dev/[\""),
            "{args:?}: {}",
            bad.stderr
        );
    }

    let missing = process::run(
        fixture.pipelines(&["dispatch", "--config", "/nonexistent.toml"]),
        Duration::from_secs(30),
    );
    assert_eq!(missing.code(), Some(2));
    assert!(
        missing
            .stderr
            .contains("config file /nonexistent.toml does not exist"),
        "{}",
        missing.stderr
    );
}

#[test]
fn an_executor_for_an_unknown_account_refuses_to_start() {
    let fixture = Fixture::new();
    let config = fixture.config(config::DEFAULT_BROKER_URL);
    let args = [
        "execute",
        "--config",
        config.to_str().unwrap(),
        "--account",
        "staging",
        "--role",
        "apply",
    ];
    let bad = process::run(fixture.pipelines(&args), Duration::from_secs(30));
    assert_eq!(bad.code(), Some(2), "{}", bad.transcript());
    assert!(
        bad.stderr
            .contains("account \"staging\" is not in the configuration (known: dev, prod)"),
        "{}",
        bad.stderr
    );
}

#[test]
fn output_a_reader_stopped_reading_is_dropped_quietly_and_output_a_full_disk_lost_fails() {
    let fixture = Fixture::new();
    let config = fixture.config(config::DEFAULT_BROKER_URL);
    let check = || {
        let mut command = fixture.pipelines(&["config", "check", config.to_str().unwrap()]);
        // No log lines: stderr must hold nothing but what the command says.
        command.env_remove("RUST_LOG");
        command
    };

    // A pipe whose reader has gone, as `| head -1` leaves it once it has its line: every write
    // fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let cut = process::run_writing_to(check(), writer.into(), Duration::from_secs(30));
    assert_eq!(cut.code(), Some(0), "{}", cut.transcript());
    assert!(cut.stderr.is_empty(), "{}", cut.transcript());

    // Both streams' reader gone, as after `2>&1 | head -1`: an error still exits 2.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut missing = fixture.pipelines(&["config", "check", "/nonexistent.toml"]);
    missing.env_remove("RUST_LOG");
    let unread = process::run_writing_both_to(
        missing,
        writer.try_clone().unwrap().into(),
        writer.into(),
        Duration::from_secs(30),
    );
    assert_eq!(unread.code(), Some(2), "{}", unread.transcript());

    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let lost = process::run_writing_to(check(), full.into(), Duration::from_secs(30));
    assert_eq!(lost.code(), Some(2), "{}", lost.transcript());
    assert_eq!(
        lost.stderr.trim_end(),
        "error: cannot write to standard output: No space left on device (os error 28)",
        "{}",
        lost.transcript()
    );
}

#[test]
fn the_shipped_policy_files_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let fixture = Fixture::new();
    for file in [
        "deploy/pipelines.example.toml",
        "deploy/compose/pipelines.toml",
        "examples/multi-account/pipelines.toml",
    ] {
        let path = root.join(file);
        let check = process::run(
            fixture.pipelines(&["config", "check", path.to_str().unwrap()]),
            Duration::from_secs(30),
        );
        assert_eq!(check.code(), Some(0), "{file}: {}", check.transcript());
        if file == "deploy/pipelines.example.toml" {
            // prod's applies have credentials of their own; dev's run as the host.
            let warned = |account: &str| {
                check.stdout.contains(&format!(
                    "warning: account {account}: applies run as the executor host's own identity"
                ))
            };
            assert!(warned("dev") && !warned("prod"), "{}", check.stdout);
        }
    }
}

#[test]
fn a_dispatcher_without_its_broker_keeps_trying_and_logs_json_lines_when_asked() {
    let fixture = Fixture::new();
    // Nothing listens on port 1: the dispatcher must wait for its broker, not exit.
    let config = fixture.config("amqp://guest:guest@127.0.0.1:1/%2f");
    let mut command = fixture.pipelines(&[
        "--log-format",
        "json",
        "dispatch",
        "--config",
        config.to_str().unwrap(),
    ]);
    command.env("RUST_LOG", "info");
    let mut dispatcher = process::Service::start("dispatcher", command, &fixture.dir("logs"));
    let retry = harness::poll_until(
        Duration::from_secs(60),
        "a second connection attempt",
        || {
            let lines: Vec<serde_json::Value> = dispatcher
                .log_text()
                .lines()
                .map(|line| {
                    serde_json::from_str(line)
                        .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"))
                })
                .filter(|value: &serde_json::Value| {
                    value["fields"]["message"] == "Reconnecting to the broker after a pause."
                })
                .collect();
            (lines.len() >= 2).then(|| lines[1].clone())
        },
    );
    let log = dispatcher.log_text();
    assert!(
        log.contains("Cannot reach the broker; trying again.")
            && log.contains("\"level\":\"WARN\""),
        "{log}"
    );
    // The second pause: within [1 s, 2 s], the ceiling having doubled, jitter below it.
    assert_eq!(retry["fields"]["failures"], 2, "{retry}");
    let pause = retry["fields"]["retry_in_ms"].as_u64().unwrap();
    assert!(
        (1_000..=2_000).contains(&pause),
        "the wait doubles: {retry}"
    );
    dispatcher.assert_running();
}
