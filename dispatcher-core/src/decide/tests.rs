//! Each message kind's decision, with plain data: no broker, no database, no clock.

use proto_types::{
    Action, ApprovalOrder, ApprovalVerdict, CancelRun, ClaimVerdict, Job, JobEvent, JobEventKind,
    JobOutcome, JobStatus, Trigger,
};

use super::*;
use crate::testing::{event, outcome, pr};

fn core(orchestrators: &[&str]) -> Core {
    let mut config = Config::from_toml(
        r#"
        [[repositories]]
        name = "infra"
        url = "https://git.example/infra.git"
        [[accounts]]
        name = "dev"
        paths = ["**"]
        "#,
    )
    .expect("a valid config");
    config.dispatcher.orchestrator_users = orchestrators.iter().map(|u| (*u).to_owned()).collect();
    Core::restore(config, Vec::new(), 1, 0)
}

fn change(trigger: Trigger, units: &[&str]) -> ChangeEvent {
    let units: Vec<(&str, Action)> = units.iter().map(|u| (*u, Action::Plan)).collect();
    event(trigger, &units, &[]).0
}

fn job_event(run_id: Uuid, job_id: Uuid, kind: JobEventKind) -> JobEvent {
    JobEvent {
        run_id,
        job_id,
        attempt: 1,
        worker: "w1".into(),
        kind,
    }
}

/// A pull request's run of one unit accepted by `core`: its job, and a first claim of it.
fn first_job_and_its_claim(core: &mut Core) -> (Job, JobEvent) {
    let job = core
        .decide_change(&change(pr(1), &["app"]), None, &Identity::Absent, None, 0)
        .effects
        .publish[0]
        .clone();
    let started = job_event(
        job.run_id,
        job.job_id,
        JobEventKind::Started { redelivered: false },
    );
    (job, started)
}

#[test]
fn a_change_event_from_a_user_that_may_not_submit_is_dead_lettered_naming_both() {
    let mut core = core(&["pipelines-orchestrator"]);
    let decision = core.decide_change(
        &change(pr(1), &["app"]),
        Some("mallory"),
        &Identity::Absent,
        None,
        0,
    );
    assert_eq!(
        decision.verdict,
        Verdict::DeadLetter(
            "change event from broker user \"mallory\": only pipelines-orchestrator may submit runs"
                .into()
        )
    );
    assert!(decision.effects.is_empty(), "nothing was decided");
}

/// A pull request's CI holds the orchestrator's login: its pushes and drift checks, which
/// name commits of the deploy branch, are refused; the deploy workflow's login submits both,
/// and pull requests too.
#[test]
fn only_the_deploy_orchestrator_submits_pushes_and_drift_checks() {
    let mut core = core(&["pipelines-orchestrator"]);
    core.config.dispatcher.deploy_orchestrator_users = vec!["pipelines-orchestrator-deploy".into()];
    let push = || change(crate::testing::push(), &["app"]);
    let drift = || {
        change(
            Trigger::Drift {
                branch: "main".into(),
            },
            &[],
        )
    };
    for (event, kind) in [(push(), "push"), (drift(), "drift")] {
        let decision = core.decide_change(
            &event,
            Some("pipelines-orchestrator"),
            &Identity::Absent,
            None,
            0,
        );
        assert_eq!(
            decision.verdict,
            Verdict::DeadLetter(format!(
                "{kind} event from broker user \"pipelines-orchestrator\": only \
                 pipelines-orchestrator-deploy may submit runs of the deploy branch \
                 (dispatcher.deploy_orchestrator_users)"
            ))
        );
        assert_eq!(
            decision.outcome,
            Some(Outcome::SubmitterRefused {
                user: "pipelines-orchestrator".into()
            })
        );
        assert!(decision.effects.is_empty(), "nothing was decided");
    }
    let from_pr_ci = core.decide_change(
        &change(pr(1), &["app"]),
        Some("pipelines-orchestrator"),
        &Identity::Absent,
        None,
        0,
    );
    assert_eq!(from_pr_ci.verdict, Verdict::Ack);
    for event in [push(), change(pr(2), &["app"])] {
        let decision = core.decide_change(
            &event,
            Some("pipelines-orchestrator-deploy"),
            &Identity::Absent,
            None,
            0,
        );
        assert_eq!(decision.verdict, Verdict::Ack, "{decision:?}");
    }
    // The dispatcher's own user (the broker URL's) submits its `[[drift]]` schedules, and
    // nothing else of the deploy branch.
    let own = config::url_user(core.config.first_broker_node())
        .unwrap()
        .to_owned();
    let scheduled = core.decide_change(&drift(), Some(&own), &Identity::Absent, None, 0);
    assert!(
        !matches!(scheduled.outcome, Some(Outcome::SubmitterRefused { .. })),
        "{scheduled:?}"
    );
    let pushed = core.decide_change(&push(), Some(&own), &Identity::Absent, None, 0);
    assert_eq!(
        pushed.outcome,
        Some(Outcome::SubmitterRefused { user: own.clone() })
    );
    let refused = core.decide_change(&push(), Some("mallory"), &Identity::Absent, None, 0);
    assert_eq!(
        refused.verdict,
        Verdict::DeadLetter(
            "change event from broker user \"mallory\": only pipelines-orchestrator, \
             pipelines-orchestrator-deploy may submit runs"
                .into()
        )
    );
}

/// With `[dispatcher.oidc]`: a pull request event starts a run only with a token of that pull
/// request's workflow run. Another's is refused, leaves a rejected run that names neither
/// pull request nor commit (nothing can be reported in their name), and supersedes nothing.
#[test]
fn with_oidc_a_pull_request_event_needs_its_own_pull_requests_token() {
    let mut config = core(&[]).config().clone();
    config.repositories[0].github = Some("acme/infra".into());
    config.dispatcher.oidc = Some(
        Config::from_toml(
            "[[repositories]]\nname = \"x\"\nurl = \"/x\"\ngithub = \"a/x\"\n\
             [[accounts]]\nname = \"dev\"\npaths = [\"**\"]\n[dispatcher]\n\
             deploy_orchestrator_users = [\"deploy\"]\n[dispatcher.oidc]\n",
        )
        .expect("a valid config")
        .dispatcher
        .oidc
        .expect("set"),
    );
    let mut core = Core::restore(config, Vec::new(), 1, 0);
    let token_of = |number: u64| {
        Identity::Verified(crate::identity::TokenClaims {
            repository: "acme/infra".into(),
            event_name: "pull_request".into(),
            git_ref: format!("refs/pull/{number}/merge"),
        })
    };

    let own = change(pr(7), &["app"]);
    let accepted = core.decide_change(&own, None, &token_of(7), None, 0);
    assert_eq!(accepted.outcome, Some(Outcome::RunAccepted { jobs: 1 }));

    for (identity, says) in [
        (token_of(8), "not of \"refs/pull/7/merge\""),
        (Identity::Absent, "carries no identity token"),
    ] {
        let forged = change(pr(7), &["app"]);
        let refused = core.decide_change(&forged, None, &identity, None, 1);
        let Some(Outcome::RunRejected { reason }) = &refused.outcome else {
            panic!("expected a rejected run, got {:?}", refused.outcome);
        };
        assert!(
            reason.starts_with("pull request #7's ") && reason.contains(says),
            "{reason}"
        );
        assert_eq!(
            refused.verdict,
            Verdict::DeadLetter(format!("rejected: {reason}"))
        );
        assert!(refused.effects.publish.is_empty(), "no job");
        let run = core.scheduler().run(forged.id).expect("a rejected run");
        assert_eq!(run.pull_request, None, "no pull request named");
        assert_eq!((run.head_sha.as_str(), run.base_sha.as_str()), ("", ""));
        let first = core
            .scheduler()
            .run(own.id)
            .expect("the pull request's own run");
        assert_eq!(first.cancelled, None, "the pull request's own run goes on");
    }

    // Pushes are the deploy login's: no token asked.
    let pushed = core.decide_change(&push_of(&["app"]), None, &Identity::Absent, None, 2);
    assert!(matches!(pushed.outcome, Some(Outcome::RunAccepted { .. })));
}

#[test]
fn an_accepted_event_publishes_its_jobs_and_its_redelivery_is_acked_without_a_second_run() {
    let mut core = core(&[]);
    let event = change(pr(1), &["app", "db"]);
    let first = core.decide_change(&event, None, &Identity::Absent, None, 0);
    assert_eq!(first.verdict, Verdict::Ack);
    assert_eq!(first.outcome, Some(Outcome::RunAccepted { jobs: 2 }));
    assert_eq!(first.effects.publish.len(), 2);
    let again = core.decide_change(&event, None, &Identity::Absent, None, 1);
    assert_eq!(again.verdict, Verdict::Ack);
    assert_eq!(again.outcome, Some(Outcome::EventRedelivered));
    assert!(again.effects.publish.is_empty(), "no job published twice");
}

#[test]
fn a_redelivered_event_of_a_rejected_run_the_store_knows_is_dead_lettered_again() {
    let mut core = core(&[]);
    let known = KnownRun {
        rejected: Some("unknown repository".into()),
    };
    let decision = core.decide_change(
        &change(pr(1), &["app"]),
        None,
        &Identity::Absent,
        Some(known),
        0,
    );
    assert_eq!(
        decision.verdict,
        Verdict::DeadLetter("rejected: unknown repository".into())
    );
    assert!(
        !core.is_active_run(
            decision
                .effects
                .changed_runs
                .iter()
                .next()
                .copied()
                .unwrap_or_default()
        )
    );
}

#[test]
fn a_claim_is_answered_on_its_reply_queue_and_a_claim_without_one_is_dead_lettered() {
    let mut core = core(&[]);
    let event = change(pr(1), &["app"]);
    let job = core
        .decide_change(&event, None, &Identity::Absent, None, 0)
        .effects
        .publish[0]
        .clone();
    let started = job_event(
        job.run_id,
        job.job_id,
        JobEventKind::Started { redelivered: false },
    );

    let forged = core.decide_job_event(&started, Some("jobs.dev.apply"), None, None, 1);
    assert_eq!(forged.outcome, Some(Outcome::ClaimWithoutReplyQueue));
    assert!(
        matches!(forged.verdict, Verdict::DeadLetter(reason) if reason.contains("jobs.dev.apply"))
    );

    let granted = core.decide_job_event(&started, Some("amq.gen-w1"), None, None, 1);
    let (queue, reply) = granted.reply.expect("an answer");
    assert_eq!(queue, "amq.gen-w1");
    assert!(matches!(reply.verdict, ClaimVerdict::Granted { .. }));
    assert!(
        granted.effects.changed_jobs.contains(&job.job_id),
        "the grant is persisted"
    );
}

#[test]
fn a_claim_of_a_job_the_store_knows_as_final_is_denied_for_good_naming_its_state() {
    let mut core = core(&[]);
    let started = job_event(
        Uuid::new_v4(),
        Uuid::new_v4(),
        JobEventKind::Started { redelivered: true },
    );
    let known = KnownJob {
        state: "succeeded".into(),
    };
    let decision = core.decide_job_event(&started, Some("amq.gen-w1"), None, Some(known), 5);
    assert_eq!(
        decision.outcome,
        Some(Outcome::ClaimDenied {
            reason: "the job is already succeeded".into(),
            retry: false
        })
    );
}

#[test]
fn the_holders_report_ends_the_job_keeps_its_output_and_says_how_it_ended() {
    let mut core = core(&[]);
    let (job, started) = first_job_and_its_claim(&mut core);
    core.decide_job_event(&started, Some("amq.gen-w1"), None, None, 1);
    let report = job_event(
        job.run_id,
        job.job_id,
        JobEventKind::Finished(outcome(JobStatus::Failed, "boom")),
    );
    let decision = core.decide_job_event(&report, None, None, None, 2);
    assert_eq!(decision.output, Some((job.job_id, "boom".into())));
    assert!(matches!(
        decision.outcome,
        Some(Outcome::JobReported {
            status: JobStatus::Failed,
            finished: Some(UnitState::Failed),
            ..
        })
    ));
    // The same report again (a redelivery): the job is final, nothing changes.
    let again = core.decide_job_event(&report, None, None, None, 3);
    assert_eq!(again.outcome, Some(Outcome::StaleReport));
    assert!(again.output.is_none());
}

/// Worker names, log places, policy reports and drift findings are kept and repeated in every
/// status of the run: one larger than any executor sends is dead-lettered, saying which, and
/// changes nothing; the holder's honest claim and report still count afterwards.
#[test]
fn a_job_event_larger_than_any_executors_is_dead_lettered_naming_what_and_changes_nothing() {
    let mut core = core(&[]);
    let (job, started) = first_job_and_its_claim(&mut core);
    let mut huge_name = started.clone();
    huge_name.worker = "w".repeat(300);
    let refused = core.decide_job_event(&huge_name, Some("amq.gen-w1"), None, None, 1);
    assert_eq!(refused.outcome, Some(Outcome::OversizedJobEvent));
    assert!(refused.reply.is_none() && refused.effects.changed_jobs.is_empty());
    assert!(
        matches!(&refused.verdict, Verdict::DeadLetter(reason) if reason.ends_with("its worker name takes 300 bytes, more than an executor's 256")),
        "{:?}",
        refused.verdict
    );
    let granted = core.decide_job_event(&started, Some("amq.gen-w1"), None, None, 2);
    assert_eq!(
        granted.outcome,
        Some(Outcome::ClaimGranted { redelivered: false })
    );

    let finished = |change: &dyn Fn(&mut JobOutcome)| {
        let mut report = outcome(JobStatus::Succeeded, "done");
        change(&mut report);
        job_event(job.run_id, job.job_id, JobEventKind::Finished(report))
    };
    let mut policy = crate::testing::denied(false)
        .policy
        .expect("a policy report");
    policy.sets = vec![policy.sets[0].clone(); 300];
    let drift = |resources: usize, each: usize| {
        Some(proto_types::DriftFindings {
            drifted: true,
            digest: "d1".into(),
            resources: vec!["r".repeat(each); resources],
            more: 0,
        })
    };
    for (report, why) in [
        (
            finished(&|report| report.log = Some("l".repeat(9_000))),
            "its log place takes 9000 bytes",
        ),
        (
            finished(&|report| report.policy = Some(policy.clone())),
            "its policy report names 300 sets, more than 256",
        ),
        (
            finished(&|report| report.drift = drift(51, 10)),
            "its drift findings list 51 resources, more than an executor's 50",
        ),
        (
            finished(&|report| report.drift = drift(1, 5_000)),
            "its longest drift resource takes 5000 bytes",
        ),
    ] {
        let refused = core.decide_job_event(&report, None, None, None, 3);
        assert_eq!(refused.outcome, Some(Outcome::OversizedJobEvent), "{why}");
        assert!(
            matches!(&refused.verdict, Verdict::DeadLetter(reason) if reason.contains(why)),
            "{why}: {:?}",
            refused.verdict
        );
        assert!(refused.effects.changed_jobs.is_empty() && refused.output.is_none());
    }
    // The most an executor sends: a drift check's 50 resources of 1 KiB, and three policy
    // sets each with 51 warnings of about 1 KiB per rule, whose report is fitted, not refused.
    let mut warned = crate::testing::denied(false)
        .policy
        .expect("a policy report");
    warned.sets[0].denies.clear();
    warned.sets[0].warnings = vec!["w".repeat(1_027); 102];
    warned.sets = vec![warned.sets[0].clone(); 3];
    assert!(warned.text_bytes() > proto_types::PolicyReport::MAX_TEXT_BYTES);
    let honest = finished(&|report| {
        report.drift = drift(50, 1_024);
        report.policy = Some(warned.clone());
    });
    let reported = core.decide_job_event(&honest, None, None, None, 4);
    let kept = core.job(job.job_id).and_then(|(_, job)| job.policy.clone());
    assert!(
        kept.is_some_and(|report| report.sets.len() == 3
            && report.text_bytes() <= proto_types::PolicyReport::MAX_TEXT_BYTES),
        "the report is kept, fitted"
    );
    assert!(
        matches!(
            reported.outcome,
            Some(Outcome::JobReported {
                finished: Some(UnitState::Succeeded),
                ..
            })
        ),
        "{:?}",
        reported.outcome
    );
}

#[test]
fn a_report_for_a_job_nobody_knows_is_dead_lettered_and_a_late_one_is_acked() {
    let mut core = core(&[]);
    let report = job_event(
        Uuid::new_v4(),
        Uuid::new_v4(),
        JobEventKind::Finished(outcome(JobStatus::Succeeded, "")),
    );
    let unknown = core.decide_job_event(&report, None, None, None, 0);
    assert!(
        matches!(unknown.verdict, Verdict::DeadLetter(reason) if reason.starts_with("job event for unknown run"))
    );
    let known = KnownJob {
        state: "succeeded".into(),
    };
    let late = core.decide_job_event(&report, None, None, Some(known), 0);
    assert_eq!(late.verdict, Verdict::Ack);
    assert_eq!(late.outcome, Some(Outcome::LateReport));
}

#[test]
fn a_cancel_of_an_unknown_run_is_dead_lettered_and_of_an_active_one_cancels_its_jobs() {
    let mut core = core(&[]);
    let order = |run_id| CancelRun {
        run_id,
        requested_by: "ops".into(),
        reason: "wrong commit".into(),
    };
    let unknown = core.decide_control(&order(Uuid::new_v4()), None, 0);
    assert_eq!(unknown.outcome, Some(Outcome::CancelOfUnknownRun));
    assert!(matches!(unknown.verdict, Verdict::DeadLetter(_)));

    let job = core
        .decide_change(&change(pr(1), &["app"]), None, &Identity::Absent, None, 0)
        .effects
        .publish[0]
        .clone();
    let cancelled = core.decide_control(&order(job.run_id), None, 1);
    assert_eq!(
        cancelled.outcome,
        Some(Outcome::CancelRequested {
            reason: "cancelled by ops: wrong commit".into()
        })
    );
    let run = core.run(job.run_id).expect("the run");
    assert!(
        run.state().is_final(),
        "a run with nothing started ends at once"
    );
}

#[test]
fn persist_lists_changed_runs_and_jobs_and_a_running_runs_status_at_most_twice_a_second() {
    let mut core = core(&[]);
    let accepted = core.decide_change(
        &change(pr(1), &["app", "db"]),
        None,
        &Identity::Absent,
        None,
        0,
    );
    let first = core.persist(&accepted.effects, 0);
    assert_eq!(first.runs.len(), 1);
    assert_eq!(
        first.runs[0].1,
        RunState::Running,
        "with its state after the batch"
    );
    assert_eq!(first.jobs.len(), 2);
    assert_eq!(
        first.statuses,
        vec![first.runs[0].0],
        "the first snapshot goes out at once"
    );
    let job = &accepted.effects.publish[0];
    let started = job_event(
        job.run_id,
        job.job_id,
        JobEventKind::Started { redelivered: false },
    );
    let claimed = core.decide_job_event(&started, Some("amq.gen-w1"), None, None, 100);
    let paced = core.persist(&claimed.effects, 100);
    assert!(paced.statuses.is_empty(), "the next waits for the interval");
    assert_eq!(core.next_wakeup(100), Some(STATUS_INTERVAL_MS));
    let due = core.persist(&Effects::default(), STATUS_INTERVAL_MS);
    assert_eq!(due.statuses, vec![job.run_id]);
}

/// A core whose `prod/` units are gated, approved by `alice` only.
fn gated_core() -> Core {
    let config = Config::from_toml(
        r#"
        [[repositories]]
        name = "infra"
        url = "https://git.example/infra.git"
        [[accounts]]
        name = "prod"
        paths = ["prod/**"]
        require_approval = true
        [[accounts]]
        name = "dev"
        paths = ["**"]
        [approvals]
        users = ["alice"]
        approval_timeout = "2h"
        "#,
    )
    .expect("a valid config");
    Core::restore(config, Vec::new(), 1, 0)
}

/// `override = "approvers"` names `[approvals] users`: a web approver's approval of a job
/// that a policy denied is refused, saying why, and a broker approver's overrides it.
#[test]
fn only_a_broker_approver_overrides_a_policy_and_a_web_approver_is_told_so() {
    let config = Config::from_toml(
        r#"
        broker_url = "amqp://pipelines-dispatcher@rabbit:5672/%2f"
        [[repositories]]
        name = "infra"
        url = "https://git.example/infra.git"
        [[accounts]]
        name = "prod"
        paths = ["**"]
        [approvals]
        users = ["alice"]
        [web]
        proxy_header = "X-Forwarded-Email"
        approvers = ["lead@example.com"]
        "#,
    )
    .expect("a valid config");
    let mut core = Core::restore(config, Vec::new(), 1, 0);
    let event = push_of(&["prod/app"]);
    let job = core
        .decide_change(&event, None, &Identity::Absent, None, 0)
        .effects
        .publish[0]
        .clone();
    let started = job_event(
        job.run_id,
        job.job_id,
        JobEventKind::Started { redelivered: false },
    );
    core.decide_job_event(&started, Some("amq.gen-w1"), None, None, 1);
    let denied = job_event(
        job.run_id,
        job.job_id,
        JobEventKind::Finished(crate::testing::denied(true)),
    );
    core.decide_job_event(&denied, None, None, None, 2);

    let chosen = shown_waiting(&core, event.id);
    assert_eq!(chosen.len(), 1);
    let by_web = core.decide_approval(
        &approval(event.id, ApprovalVerdict::Approve),
        Approver::Web {
            user: "lead@example.com",
            chosen: &chosen,
        },
        None,
        3,
    );
    assert!(
        matches!(&by_web.outcome, Some(Outcome::ApprovalMatchedNothing { reason }) if reason.contains("only the approvers of approvals.users may override a policy")),
        "{:?}",
        by_web.outcome
    );
    assert!(by_web.effects.publish.is_empty());

    let by_alice = core.decide_approval(
        &approval(event.id, ApprovalVerdict::Approve),
        Approver::Broker(Some("alice")),
        None,
        4,
    );
    assert_eq!(by_alice.effects.publish.len(), 1, "{:?}", by_alice.outcome);
    assert!(
        by_alice.effects.publish[0]
            .policy_override
            .as_deref()
            .is_some_and(|by| by.starts_with("alice")),
        "{:?}",
        by_alice.effects.publish[0]
    );
}

#[test]
fn web_approvals_count_only_for_web_approvers_and_no_broker_user_speaks_for_the_page() {
    let config = Config::from_toml(
        r#"
        broker_url = "amqp://pipelines-dispatcher@rabbit:5672/%2f"
        [[repositories]]
        name = "infra"
        url = "https://git.example/infra.git"
        [[accounts]]
        name = "prod"
        paths = ["**"]
        require_approval = true
        [approvals]
        users = ["alice"]
        [web]
        proxy_header = "X-Forwarded-Email"
        approvers = ["lead@example.com"]
        operators = ["ops@example.com"]
        "#,
    )
    .expect("a valid config");
    let mut core = Core::restore(config, Vec::new(), 1, 0);
    let event = push_of(&["prod/app"]);
    core.decide_change(&event, None, &Identity::Absent, None, 0);
    let chosen = shown_waiting(&core, event.id);
    let web = |user| Approver::Web {
        user,
        chosen: &chosen,
    };
    let order = |requested_by: &str| ApprovalOrder {
        requested_by: requested_by.into(),
        ..approval(event.id, ApprovalVerdict::Approve)
    };
    // A signed-in user the configuration does not name as an approver: refused.
    let stranger = core.decide_approval(
        &order("web:intern@example.com"),
        web("intern@example.com"),
        None,
        1,
    );
    assert_eq!(
        stranger.outcome,
        Some(Outcome::ApproverRefused {
            user: "web:intern@example.com".into()
        })
    );
    assert!(stranger.effects.is_empty());
    // A named web approver's order on the broker, even from the dispatcher's own user (as a
    // shared login would send it): the broker path counts only `[approvals] users`.
    for user_id in ["pipelines-dispatcher", "orchestrator"] {
        let forged = core.decide_approval(
            &order("web:lead@example.com"),
            Approver::Broker(Some(user_id)),
            None,
            1,
        );
        assert!(
            matches!(forged.outcome, Some(Outcome::ApproverRefused { .. })),
            "{user_id}: {:?}",
            forged.outcome
        );
        assert!(forged.effects.is_empty());
    }
    // An operator is not an approver, and an approver is not an operator.
    let operator = core.decide_approval(
        &order("web:ops@example.com"),
        web("ops@example.com"),
        None,
        1,
    );
    assert!(matches!(
        operator.outcome,
        Some(Outcome::ApproverRefused { .. })
    ));
    let cancel = core.decide_web_cancel(event.id, "lead@example.com", "no", None, 1);
    assert_eq!(
        cancel.outcome,
        Some(Outcome::CancellerRefused {
            user: "web:lead@example.com".into()
        })
    );
    assert!(cancel.effects.is_empty());

    let approved = core.decide_approval(
        &order("web:lead@example.com"),
        web("lead@example.com"),
        None,
        2,
    );
    assert_eq!(
        approved.outcome,
        Some(Outcome::ApprovalApplied {
            verdict: ApprovalVerdict::Approve,
            by: "web:lead@example.com".into(),
            jobs: 1
        })
    );
    let cancelled = core.decide_web_cancel(event.id, "ops@example.com", "window closed", None, 3);
    assert!(
        matches!(&cancelled.outcome, Some(Outcome::CancelRequested { reason }) if reason == "cancelled by web:ops@example.com: window closed"),
        "{:?}",
        cancelled.outcome
    );
}

/// What a run's page shows waiting: each of its jobs awaiting approval, in its wait.
fn shown_waiting(core: &Core, run_id: Uuid) -> Vec<ShownJob> {
    core.run(run_id)
        .expect("an active run")
        .jobs
        .iter()
        .filter_map(ShownJob::current)
        .collect()
}

fn push_of(units: &[&str]) -> ChangeEvent {
    let units: Vec<(&str, Action)> = units.iter().map(|u| (*u, Action::Apply)).collect();
    event(crate::testing::push(), &units, &[]).0
}

fn approval(run_id: Uuid, verdict: ApprovalVerdict) -> ApprovalOrder {
    ApprovalOrder {
        run_id,
        unit: None,
        verdict,
        reason: "change window".into(),
        requested_by: "alice@laptop".into(),
    }
}

#[test]
fn a_gated_accounts_applies_wait_and_only_an_approver_broker_user_opens_the_gate() {
    let mut core = gated_core();
    let event = push_of(&["prod/app", "dev/app"]);
    let accepted = core.decide_change(&event, None, &Identity::Absent, None, 0);
    let started: Vec<&str> = accepted
        .effects
        .publish
        .iter()
        .map(|j| j.unit.as_str())
        .collect();
    assert_eq!(
        started,
        ["dev/app"],
        "the gated unit waits, the rest goes on"
    );

    // The order says it is from alice; the broker says mallory sent it.
    let forged = core.decide_approval(
        &approval(event.id, ApprovalVerdict::Approve),
        Approver::Broker(Some("mallory")),
        None,
        1,
    );
    assert_eq!(
        forged.outcome,
        Some(Outcome::ApproverRefused {
            user: "mallory".into()
        })
    );
    assert!(
        matches!(&forged.verdict, Verdict::DeadLetter(reason) if reason.contains("only alice may approve")),
        "{:?}",
        forged.verdict
    );
    assert!(forged.effects.is_empty(), "nothing was decided");
    let anonymous = core.decide_approval(
        &approval(event.id, ApprovalVerdict::Approve),
        Approver::Broker(None),
        None,
        1,
    );
    assert!(matches!(
        anonymous.outcome,
        Some(Outcome::ApproverRefused { .. })
    ));

    let approved = core.decide_approval(
        &approval(event.id, ApprovalVerdict::Approve),
        Approver::Broker(Some("alice")),
        None,
        2,
    );
    assert_eq!(
        approved.outcome,
        Some(Outcome::ApprovalApplied {
            verdict: ApprovalVerdict::Approve,
            by: "alice (alice@laptop)".into(),
            jobs: 1
        })
    );
    assert_eq!(approved.effects.publish.len(), 1);
    assert_eq!(approved.effects.publish[0].unit, "prod/app");

    let again = core.decide_approval(
        &approval(event.id, ApprovalVerdict::Approve),
        Approver::Broker(Some("alice")),
        None,
        3,
    );
    assert!(
        matches!(&again.outcome, Some(Outcome::ApprovalMatchedNothing { reason }) if reason.contains("no job awaiting approval")),
        "{:?}",
        again.outcome
    );
    assert_eq!(again.verdict, Verdict::Ack);
}

#[test]
fn a_pull_request_of_a_gated_unit_plans_at_once_and_its_rejection_order_matches_nothing() {
    let mut core = gated_core();
    let event = change(pr(3), &["prod/app"]);
    let accepted = core.decide_change(&event, None, &Identity::Absent, None, 0);
    assert_eq!(accepted.effects.publish.len(), 1, "plans never wait");
    let (_, job) = core.job(accepted.effects.publish[0].job_id).unwrap();
    assert_eq!(job.approval, Some(proto_types::ApprovalGate::AfterMerge));
    let rejected = core.decide_approval(
        &approval(event.id, ApprovalVerdict::Reject),
        Approver::Broker(Some("alice")),
        None,
        1,
    );
    assert!(matches!(
        rejected.outcome,
        Some(Outcome::ApprovalMatchedNothing { .. })
    ));
}

#[test]
fn one_drift_run_per_repository_at_a_time_and_the_dispatcher_may_submit_it() {
    let mut core = core(&["pipelines-orchestrator"]);
    core.config.broker_url = "amqp://pipelines-dispatcher@127.0.0.1:5672/%2f".into();
    let drift = || {
        let mut event = change(
            Trigger::Drift {
                branch: "main".into(),
            },
            &["app", "db"],
        );
        event.changes[0].kind = proto_types::ChangeKind::DriftCheck;
        event
    };
    let first = drift();
    // The dispatcher's own user submits the scheduled checks.
    let decision = core.decide_change(
        &first,
        Some("pipelines-dispatcher"),
        &Identity::Absent,
        None,
        0,
    );
    assert_eq!(decision.verdict, Verdict::Ack);
    assert_eq!(decision.effects.publish.len(), 2);
    assert!(
        decision
            .effects
            .publish
            .iter()
            .all(|job| job.action == Action::DriftPlan)
    );

    let second = core.decide_change(
        &drift(),
        Some("pipelines-orchestrator"),
        &Identity::Absent,
        None,
        1,
    );
    let Verdict::DeadLetter(reason) = &second.verdict else {
        panic!("a second drift run was accepted: {:?}", second.verdict);
    };
    assert!(
        reason.contains(&format!(
            "a drift run of infra is already running ({}): one at a time per repository",
            first.id
        )),
        "{reason}"
    );
}

#[test]
fn with_executor_users_set_only_the_jobs_own_account_and_role_may_claim_or_report_it() {
    let mut core = core(&[]);
    core.config.dispatcher.executor_users = Some("pipelines-executor-{account}-{role}".into());
    let (job, started) = first_job_and_its_claim(&mut core);
    let finished = job_event(
        job.run_id,
        job.job_id,
        JobEventKind::Finished(outcome(JobStatus::Succeeded, "")),
    );

    // Another account's executor, the same account's apply executor, and a message without a
    // user: none may claim the job first or report a result it never produced, whatever
    // worker name it gives.
    let forged = |event: &JobEvent| JobEvent {
        worker: "mallory".into(),
        ..event.clone()
    };
    let (forged_claim, forged_outcome) = (forged(&started), forged(&finished));
    for user in [
        Some("pipelines-executor-prod-plan"),
        Some("pipelines-executor-dev-apply"),
        None,
    ] {
        for (event, reply_to) in [(&forged_claim, Some("amq.gen-x")), (&forged_outcome, None)] {
            let refused = core.decide_job_event(event, reply_to, user, None, 1);
            let sender = user.unwrap_or("(none)");
            assert_eq!(
                refused.outcome,
                Some(Outcome::JobEventSenderRefused {
                    user: sender.into(),
                    expected: "pipelines-executor-dev-plan".into(),
                })
            );
            assert!(
                matches!(&refused.verdict, Verdict::DeadLetter(reason)
                    if reason.contains(&format!("{sender:?}")) && reason.contains("\"pipelines-executor-dev-plan\"")),
                "{:?}",
                refused.verdict
            );
            assert!(refused.effects.is_empty(), "nothing was decided");
            assert!(refused.reply.is_none());
        }
    }

    // The job is still there for its own executors: had a forged claim been granted,
    // mallory would hold it and w1 would be refused.
    let granted = core.decide_job_event(
        &started,
        Some("amq.gen-w1"),
        Some("pipelines-executor-dev-plan"),
        None,
        2,
    );
    assert!(matches!(
        granted.reply.expect("an answer").1.verdict,
        ClaimVerdict::Granted { .. }
    ));
    let reported = core.decide_job_event(
        &finished,
        None,
        Some("pipelines-executor-dev-plan"),
        None,
        3,
    );
    assert!(
        matches!(reported.outcome, Some(Outcome::JobReported { .. })),
        "{:?}",
        reported.outcome
    );
}
