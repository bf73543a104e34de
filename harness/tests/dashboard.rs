//! The dispatcher's web page in a real browser (headless Chromium through chromedriver) while
//! real runs go through the real RabbitMQ: the run page's graph follows the run live, a job's
//! log shows lines before the job ends, a signed-in operator cancels a run from the page and
//! an anonymous cancel is refused, secrets stay redacted on the page, and a worker killed
//! mid-job leaves its log cut. Screenshots of the three pages are kept as artifacts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::path::PathBuf;
use std::time::Duration;

use harness::applies::{Behaviour, Units, gate_path, pipelines_hcl, probe_unit_tf_printing};
use harness::browser::Browser;
use harness::deployment::Deployment;
use harness::process;
use harness::runs::{DEADLINE, setup, status, submit, wait_final};
use harness::{poll_until, poll_until_explained};
use proto_types::{ApprovalGate, RunDetail};
use uuid::Uuid;

/// The token alice signs in with, and its SHA-256 as the configuration holds it.
const TOKEN: &str = "dashboard-test-token-7f3a";
const TOKEN_SHA256: &str = "43f6b1c3d53ac236cee74132b862396dd9a31b69e6bf5a3bbc970e8da84808c9";
/// What the probe unit's credentials command hands its apply: it must never reach a page.
const SECRET: &str = "apply-secret-5150";
/// What the probe also prints: markup that would run if the page took log text as HTML.
const HOSTILE: &str =
    "<img src=x onerror=document.title='pwned'><script>document.title='pwned'</script>";
/// What the probe prints last: a right-to-left override, which would make the rest of its line
/// read "the name is destroy".
const REORDERING: &str = "the name is \u{202E}yortsed\u{202C}";

/// Where the screenshots go: `PIPELINES_ARTIFACTS`, else `target/artifacts`.
fn artifacts() -> PathBuf {
    std::env::var_os("PIPELINES_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| harness::workspace_root().join("target"));
            target.join("artifacts")
        })
        .join("dashboard")
}

/// `unit=state` for every node of the run page's graph, as the browser shows it now.
fn graph_states(browser: &Browser) -> String {
    browser
        .script(
            "return [...document.querySelectorAll('svg.dag g.node')]\
             .map(n => n.dataset.unit + '=' + n.dataset.state).sort().join(' ');",
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn job_id(detail: &RunDetail, unit: &str) -> Uuid {
    harness::runs::job(detail, unit).job_id
}

#[test]
fn the_web_page_follows_runs_live_streams_logs_and_lets_only_signed_in_operators_cancel() {
    let (vhost, sandbox) = setup();
    let browser = Browser::start();
    let extra = format!(
        "web_address = \"127.0.0.1:0\"\nlease_seconds = 10\n\n\
         [web]\nproxy_header = \"X-Forwarded-User\"\nproxy_addresses = [\"192.0.2.1\"]\n\
         tokens = [{{ user = \"alice\", sha256 = \"{TOKEN_SHA256}\" }}]\noperators = [\"alice\"]\napprovers = [\"alice\"]\n\n\
         [approvals]\nunits = [\"dev/gated\", \"dev/gated-too\"]\n\n\
         [[credentials]]\nname = \"dev-apply\"\nprovider = \"command\"\n\
         command = [\"sh\", \"-c\", \"echo '{{\\\"env\\\": {{\\\"TF_VAR_secret\\\": \\\"{SECRET}\\\"}}}}'\"]\n"
    );
    let accounts =
        "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\napply_credentials = \"dev-apply\"\n";
    let config = sandbox.write_config_with(&vhost.url, accounts, &extra);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);
    let web = process::logged_address(|| deployment.dispatcher_log(), "Serving the web page");
    let url = |path: &str| format!("http://{web}{path}");

    // Three layers (a → b → c) and a probe beside them whose apply prints its secret.
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    sandbox.repo.write(
        "dev/probe/main.tf",
        &probe_unit_tf_printing(
            "dev/probe",
            &sandbox.state_dir(),
            &sandbox.path().join("seen.txt"),
            &format!("echo \"{HOSTILE}\"; echo \"{REORDERING}\""),
        ),
    );
    sandbox
        .repo
        .write("dev/probe/pipelines.hcl", &pipelines_hcl("dev/probe", &[]));
    let c1 = units.commit(
        "c1: three layers",
        1,
        &[
            ("dev/a", &[], Behaviour::WaitForGate),
            ("dev/b", &["dev/a"], Behaviour::Succeed { seconds: 0 }),
            ("dev/c", &["dev/b"], Behaviour::Succeed { seconds: 0 }),
        ],
    );
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);

    // The run page, opened while dev/a runs (once the dispatcher has the run: `submit` only
    // publishes it): the graph shows each unit's state.
    poll_until(DEADLINE, "the dispatcher to accept the run", || {
        status(&sandbox, run)
    });
    browser.goto(&url(&format!("/runs/{run}")));
    let explain = || {
        format!(
            "graph: {}\n{}",
            graph_states(&browser),
            deployment.dispatcher_log()
        )
    };
    poll_until_explained(
        DEADLINE,
        "the graph to show dev/a running, b and c waiting, the probe done",
        || {
            (graph_states(&browser)
                == "dev/a=running dev/b=pending dev/c=pending dev/probe=succeeded")
                .then_some(())
        },
        explain,
    );
    let waiting = browser
        .script("return document.querySelector('g.node[data-unit=\"dev/b\"] title').textContent;");
    assert!(
        waiting.as_str().unwrap().contains("dev/a"),
        "a waiting unit says what it waits for: {waiting}"
    );
    std::fs::create_dir_all(artifacts()).unwrap();
    browser.screenshot(&artifacts().join("run.png"));

    // The job page of the running unit: lines appear while the job still runs.
    let detail = status(&sandbox, run).unwrap();
    let a = job_id(&detail, "dev/a");
    browser.goto(&url(&format!("/jobs/{a}")));
    let ticks = |browser: &Browser| {
        browser
            .text("#log")
            .unwrap_or_default()
            .matches("still waiting: tick")
            .count()
    };
    let first = poll_until(DEADLINE, "log lines of the running job on its page", || {
        Some(ticks(&browser)).filter(|&n| n >= 2)
    });
    poll_until(DEADLINE, "more lines arriving without a reload", || {
        (ticks(&browser) > first + 2).then_some(())
    });
    let page_log = browser.text("#log").unwrap();
    assert!(
        page_log.contains("waiting for the gate of dev/a"),
        "{page_log}"
    );
    assert_eq!(
        status(&sandbox, run)
            .unwrap()
            .jobs
            .iter()
            .find(|j| j.job_id == a)
            .unwrap()
            .state
            .as_str(),
        "running",
        "the lines were shown before the job ended"
    );
    assert_eq!(browser.text("#log-state").unwrap(), "streaming live…");
    browser.script("window.scrollTo(0, document.body.scrollHeight); return 0;");
    browser.screenshot(&artifacts().join("job.png"));

    // Back on the run page, the gate opens: the graph turns green without a reload.
    browser.goto(&url(&format!("/runs/{run}")));
    std::fs::write(gate_path(&sandbox.state_dir(), "dev/a"), "open").unwrap();
    poll_until_explained(
        DEADLINE,
        "the open page to show every unit succeeded",
        || {
            (graph_states(&browser)
                == "dev/a=succeeded dev/b=succeeded dev/c=succeeded dev/probe=succeeded")
                .then_some(())
        },
        explain,
    );
    assert_eq!(browser.text("#run-state").unwrap(), "succeeded");
    let finished = wait_final(&sandbox, run);

    // The whole log, complete, on the page equals the worker's own file byte for byte.
    let a_job = harness::runs::job(&finished, "dev/a");
    let worker_log = a_job.log.clone().unwrap();
    let worker_file = std::fs::read_to_string(worker_log.split_once(':').unwrap().1).unwrap();
    browser.goto(&url(&format!("/jobs/{a}")));
    poll_until(DEADLINE, "the finished job's log to say complete", || {
        (browser.text("#log-state").as_deref() == Some("complete")).then_some(())
    });
    // The raw log, by the page's own link.
    let raw = browser
        .script("return document.querySelector('p.logstate a').getAttribute('href');")
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        raw.starts_with(&format!("/jobs/{a}/logs/{}/", a_job.attempt))
            && raw.ends_with(&format!("/{}", a_job.worker.as_deref().unwrap())),
        "{raw}"
    );
    let (code, stored) = process::http_get(&web, &raw).unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        stored, worker_file,
        "the dispatcher's copy is the worker's log"
    );

    // Secrets: the probe printed its credential; the page shows it redacted.
    let probe = job_id(&finished, "dev/probe");
    browser.goto(&url(&format!("/jobs/{probe}")));
    let probe_log = poll_until(DEADLINE, "the probe's log", || {
        browser
            .text("#log")
            .filter(|text| text.contains("the secret is") && text.contains("the name is"))
    });
    assert!(probe_log.contains("the secret is ***"), "{probe_log}");
    let page = browser.script("return document.documentElement.outerHTML;");
    assert!(
        !page.as_str().unwrap().contains(SECRET),
        "the secret reached the page"
    );
    // Markup in a log is text: shown as printed, never an element, never run.
    assert!(probe_log.contains(HOSTILE), "{probe_log}");
    let elements =
        browser.script("return document.querySelectorAll('#log *').length + ':' + document.title;");
    assert_eq!(
        elements.as_str().unwrap(),
        "0:dev/probe · Pipelines",
        "the log's markup became elements or ran"
    );
    // A bidirectional override shows as its code point and reorders nothing.
    assert!(
        probe_log.contains("the name is <U+202E>yortsed<U+202C>"),
        "{probe_log}"
    );
    assert!(!probe_log.contains('\u{202E}'), "{probe_log}");

    // The runs list.
    browser.goto(&url("/"));
    assert!(
        browser
            .text("table.runs")
            .unwrap()
            .contains(&run.to_string()[..8])
    );
    browser.screenshot(&artifacts().join("runs.png"));

    // A second run waits at dev/a again; an anonymous cancel is refused.
    std::fs::remove_file(gate_path(&sandbox.state_dir(), "dev/a")).unwrap();
    let c2 = units.commit(
        "c2: again",
        2,
        &[
            ("dev/a", &[], Behaviour::WaitForGate),
            ("dev/b", &["dev/a"], Behaviour::Succeed { seconds: 0 }),
        ],
    );
    let second = submit(&sandbox, &vhost, (&c1, &c2), "push", &[]);
    poll_until(DEADLINE, "the second run's dev/a to run", || {
        status(&sandbox, second)
            .filter(|d| harness::runs::job(d, "dev/a").state.as_str() == "running")
    });
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (code, body) = process::http_request(
        &web,
        "POST",
        &format!("/runs/{second}/cancel"),
        &form,
        "reason=anonymous&csrf=x",
    )
    .unwrap();
    assert_eq!(code, 401, "{body}");
    let wrong_token = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Authorization", "Bearer not-the-token"),
    ];
    let (code, _) = process::http_request(
        &web,
        "POST",
        &format!("/runs/{second}/cancel"),
        &wrong_token,
        "reason=guess",
    )
    .unwrap();
    assert_eq!(code, 401);
    // The proxy's header counts only from the proxy's address (192.0.2.1 here), not from
    // whoever reaches the page directly.
    let claimed = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Forwarded-User", "alice"),
    ];
    let (code, body) = process::http_request(
        &web,
        "POST",
        &format!("/runs/{second}/cancel"),
        &claimed,
        "reason=claimed",
    )
    .unwrap();
    assert_eq!(code, 401, "a proxy header from outside the proxy: {body}");
    // Signed in through the form, a post that carries the session but not the form's CSRF
    // token (what another site could make a browser send) is refused.
    browser.goto(&url("/sign-in"));
    browser.type_into("input[name=token]", TOKEN);
    browser.click("#sign-in");
    poll_until(Duration::from_secs(30), "the signed-in header", || {
        browser
            .text("header .who")
            .filter(|who| who.contains("alice"))
    });
    let without_csrf = browser.script(&format!(
        "const x = new XMLHttpRequest(); x.open('POST', '/runs/{second}/cancel', false);\
         x.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded');\
         x.send('reason=no-token'); return x.status;"
    ));
    assert_eq!(without_csrf, 403, "a session without the CSRF token");
    // From another site: the session cookie and the right CSRF token, but an `Origin` that is
    // not the page's (what a cross-site form post sends).
    browser.goto(&url(&format!("/runs/{second}")));
    let session = browser
        .cookie("pipelines_session")
        .expect("the sign-in set a session cookie");
    let csrf = browser.script("return document.querySelector('input[name=csrf]').value;");
    let cross_site = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Cookie", &format!("pipelines_session={session}")),
        ("Origin", "http://evil.example"),
    ];
    let (code, body) = process::http_request(
        &web,
        "POST",
        &format!("/runs/{second}/cancel"),
        &cross_site,
        &format!("reason=cross-site&csrf={}", csrf.as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(code, 403, "a cross-site post: {body}");
    // Refused actions never reach the dispatcher (they are decided in process, so an
    // accepted one would show at once); the run's reason below is alice's, not theirs.
    assert_eq!(
        status(&sandbox, second).unwrap().run.state.as_str(),
        "running",
        "nothing refused changed the run"
    );

    // alice cancels from the page.
    browser.goto(&url(&format!("/runs/{second}")));
    browser.type_into("input[name=reason]", "wrong change window");
    browser.click("#cancel");
    let cancelled = wait_final(&sandbox, second);
    assert_eq!(cancelled.run.state.as_str(), "cancelled", "{cancelled:#?}");
    assert!(
        cancelled
            .run
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("web:alice: wrong change window"),
        "the cancellation names its user and her reason, not a refused one's: {:?}",
        cancelled.run.reason
    );
    assert!(
        deployment
            .dispatcher_log()
            .contains("Run cancellation requested from the web page"),
        "the action is logged"
    );
    poll_until(DEADLINE, "the page to show the cancelled run", || {
        (browser.text("#run-state").as_deref() == Some("cancelled")).then_some(())
    });

    // A worker killed mid-job: the log it streamed stays, marked cut.
    let c3 = units.commit(
        "c3: killed mid-job",
        3,
        &[("dev/a", &[], Behaviour::WaitForGate)],
    );
    let third = submit(&sandbox, &vhost, (&c2, &c3), "push", &[]);
    let running = poll_until(DEADLINE, "the third run's dev/a to run", || {
        status(&sandbox, third).and_then(|d| {
            let job = harness::runs::job(&d, "dev/a").clone();
            (job.state.as_str() == "running").then_some(job)
        })
    });
    let worker = running.worker.clone().unwrap();
    browser.goto(&url(&format!("/jobs/{}", running.job_id)));
    poll_until(
        DEADLINE,
        "ticks of the job about to lose its worker",
        || (ticks(&browser) >= 2).then_some(()),
    );
    deployment.kill_executor(&worker);
    // The other worker takes the job over when the lease runs out; the gate lets it end.
    std::fs::write(gate_path(&sandbox.state_dir(), "dev/a"), "open").unwrap();
    wait_final(&sandbox, third);
    let listed = poll_until(DEADLINE, "the job page to list both logs", || {
        browser.goto(&url(&format!("/jobs/{}", running.job_id)));
        browser
            .text("ul.logs")
            .filter(|text| text.contains("complete"))
    });
    let killed_line = listed
        .lines()
        .find(|line| line.contains(&format!("on {worker} ")))
        .unwrap_or_else(|| panic!("no log of the killed worker {worker}: {listed}"));
    assert!(
        killed_line.ends_with("cut"),
        "the killed worker's log is listed as cut: {listed}"
    );
    assert!(
        listed
            .lines()
            .any(|line| !line.contains(&format!("on {worker} ")) && line.ends_with("complete")),
        "the other worker's log is complete: {listed}"
    );

    // Two gated units wait for an approval. alice answers for one from the page, unticking
    // the other, and then for the other with her token (a script's way).
    let c4 = units.commit(
        "c4: two gated units",
        4,
        &[
            ("dev/gated", &[], Behaviour::Succeed { seconds: 0 }),
            ("dev/gated-too", &[], Behaviour::Succeed { seconds: 0 }),
        ],
    );
    let gated = submit(&sandbox, &vhost, (&c3, &c4), "push", &[]);
    let waiting = poll_until(DEADLINE, "both gated jobs to wait for an approval", || {
        status(&sandbox, gated).filter(|d| {
            ["dev/gated", "dev/gated-too"]
                .iter()
                .all(|unit| harness::runs::job(d, unit).state.as_str() == "awaiting-approval")
        })
    });
    // How the page names a wait: the job, its attempt, since when it waits.
    let shown = |unit: &str| {
        let job = harness::runs::job(&waiting, unit);
        let Some(ApprovalGate::Waiting { since_ms, .. }) = &job.approval else {
            panic!("{unit} waits for an approval: {job:#?}");
        };
        format!("{}:{}:{since_ms}", job.job_id, job.attempt)
    };
    browser.goto(&url(&format!("/runs/{gated}")));
    browser.click(&format!(
        "#approval input[name=job][value='{}']",
        shown("dev/gated-too")
    ));
    browser.type_into("#approval input[name=reason]", "change window CHG-7");
    browser.click("#approval button[value=approve]");
    let first = poll_until(DEADLINE, "the ticked gated job to succeed", || {
        status(&sandbox, gated)
            .filter(|d| harness::runs::job(d, "dev/gated").state.as_str() == "succeeded")
    });
    assert_eq!(
        harness::runs::job(&first, "dev/gated-too").state.as_str(),
        "awaiting-approval",
        "the unticked job still waits: {first:#?}"
    );
    let bearer = format!("Bearer {TOKEN}");
    let script = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Authorization", bearer.as_str()),
    ];
    let (code, body) = process::http_request(
        &web,
        "POST",
        &format!("/runs/{gated}/approve"),
        &script,
        "verdict=approve&reason=change+window+CHG-7",
    )
    .unwrap();
    assert_eq!(code, 400, "an approval that names no job: {body}");
    assert!(body.contains("job=JOB_ID:ATTEMPT:SINCE_MS"), "{body}");
    let (code, body) = process::http_request(
        &web,
        "POST",
        &format!("/runs/{gated}/approve"),
        &script,
        &format!(
            "verdict=approve&reason=change+window+CHG-7&job={}",
            shown("dev/gated-too")
        ),
    )
    .unwrap();
    assert_eq!(code, 303, "{body}");
    let approved = wait_final(&sandbox, gated);
    assert_eq!(approved.run.state.as_str(), "succeeded", "{approved:#?}");
    for unit in ["dev/gated", "dev/gated-too"] {
        let gate = harness::runs::job(&approved, unit).approval.clone();
        assert!(
            format!("{gate:?}").contains("web:alice"),
            "the approval names its web user: {gate:?}"
        );
    }
    deployment.assert_running();
}
