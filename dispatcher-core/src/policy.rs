//! Judging a change event against the admin-owned policy: which repository, which branch,
//! which paths, which account owns each unit, and what action each unit gets. Pure.
//!
//! Everything in a change event is untrusted (it comes from where collaborators change code),
//! so every field that influences what runs is checked here before any job exists.

use std::collections::{BTreeMap, BTreeSet};

pub use config::{AccountRouter, ApprovalGates, check_path};
use config::{Config, Trigger, Triggers, UnitTrigger};
use proto_types::{Action, ChangeEvent, ChangeKind, DependencyEdge};

/// One unit the run will act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedUnit {
    pub unit: String,
    pub account: String,
    pub action: Action,
    /// Whether the unit's applies and destroys wait for an approver (`require_approval`): a
    /// push's job waits; a pull request's plan says that the apply will.
    pub gated: bool,
}

/// A validated event, ready to become a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPlan {
    pub units: Vec<PlannedUnit>,
    pub edges: Vec<DependencyEdge>,
}

/// Checks the event and decides one action per unit. `Err` is the reason to reject it,
/// naming the offending value.
pub fn plan(
    event: &ChangeEvent,
    config: &Config,
    router: &AccountRouter,
    gates: &ApprovalGates,
) -> Result<RunPlan, String> {
    let repository = config.repository(&event.repository).ok_or_else(|| {
        format!(
            "unknown repository {:?}: it is not in the dispatcher's configuration",
            event.repository
        )
    })?;
    let push = match &event.trigger {
        proto_types::Trigger::PullRequest { .. } => false,
        proto_types::Trigger::Push { branch } if *branch == repository.deploy_branch => true,
        proto_types::Trigger::Push { branch } => {
            return Err(format!(
                "push to branch {branch:?} of {:?}: only pushes to its deploy branch {:?} may apply",
                repository.name, repository.deploy_branch
            ));
        }
        proto_types::Trigger::Drift { branch } if *branch == repository.deploy_branch => {
            return plan_drift(event, config, router);
        }
        proto_types::Trigger::Drift { branch } => {
            return Err(format!(
                "drift check of branch {branch:?} of {:?}: drift is checked on its deploy \
                 branch {:?} only",
                repository.name, repository.deploy_branch
            ));
        }
    };
    check_shas(event)?;

    let mut actions: BTreeMap<&str, Action> = BTreeMap::new();
    for change in &event.changes {
        for path in change.units.iter().chain(&change.files) {
            check_path(path)?;
        }
        if change.kind == ChangeKind::DriftCheck {
            return Err(format!(
                "a {} event lists {}: drift checks come in drift events only",
                event.trigger.kind(),
                change.kind
            ));
        }
        let (action, units): (Option<Action>, Vec<&str>) =
            match unit_trigger(change.kind, &config.triggers) {
                // Changes without units of their own run the unit the policy names, if any.
                Some(configured) => (
                    configured.map(|_| if push { Action::Apply } else { Action::Plan }),
                    configured.map(|t| t.unit.as_str()).into_iter().collect(),
                ),
                None => (
                    action_for(
                        change.kind,
                        kind_trigger(change.kind, &config.triggers),
                        push,
                    ),
                    change.units.iter().map(String::as_str).collect(),
                ),
            };
        let Some(action) = action else {
            continue;
        };
        for unit in units {
            match actions.insert(unit, action) {
                Some(previous) if previous.is_destroy() != action.is_destroy() => {
                    return Err(format!(
                        "unit {unit:?} is listed as both deleted and not deleted"
                    ));
                }
                _ => {}
            }
        }
    }

    let limit = config.dispatcher.max_units_per_run;
    if actions.len() > limit {
        return Err(format!(
            "the event names {} units, more than dispatcher.max_units_per_run ({limit}): split \
             the change, or raise the limit",
            actions.len()
        ));
    }
    let mut units = Vec::with_capacity(actions.len());
    for (unit, action) in &actions {
        let account = router
            .route(unit)
            .ok_or_else(|| format!("unit {unit:?} matches no account's paths"))?;
        units.push(PlannedUnit {
            unit: (*unit).to_owned(),
            account: account.to_owned(),
            action: *action,
            gated: gates.gates(account, unit),
        });
    }

    let listed: BTreeSet<&str> = event
        .changes
        .iter()
        .flat_map(|change| change.units.iter().map(String::as_str))
        .collect();
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for edge in &event.dependencies {
        check_path(&edge.unit)?;
        check_path(&edge.depends_on)?;
        if !listed.contains(edge.unit.as_str()) || !listed.contains(edge.depends_on.as_str()) {
            return Err(format!(
                "dependency {} -> {} names a unit the event does not change",
                edge.unit, edge.depends_on
            ));
        }
        graph.entry(&edge.unit).or_default().push(&edge.depends_on);
    }
    if let Some(cycle) = find_cycle(&event.dependencies) {
        return Err(format!("dependency cycle: {}", cycle.join(" -> ")));
    }

    let mut edges = Vec::new();
    for (&unit, &action) in &actions {
        for depends_on in nearest_with_jobs(unit, &graph, &actions) {
            if actions[depends_on].is_destroy() && !action.is_destroy() {
                return Err(format!(
                    "unit {unit:?} depends on {depends_on:?}, which is being deleted: delete or change the dependent first"
                ));
            }
            edges.push(DependencyEdge {
                unit: unit.to_owned(),
                depends_on: depends_on.to_owned(),
            });
        }
    }
    Ok(RunPlan { units, edges })
}

/// A drift check plans every listed unit of the deploy branch's head, read-only, except those
/// the repository's `[[drift]] exclude` leaves out. Plans change nothing, so they need no
/// order: the event's dependency edges are not used, and every check may run at once.
fn plan_drift(
    event: &ChangeEvent,
    config: &Config,
    router: &AccountRouter,
) -> Result<RunPlan, String> {
    check_shas(event)?;
    let selection = config
        .drift_of(&event.repository)
        .map(config::DriftSchedule::selection);
    let mut units = BTreeSet::new();
    for change in &event.changes {
        if change.kind != ChangeKind::DriftCheck {
            return Err(format!(
                "a drift event lists {}: it may list DriftCheck units only",
                change.kind
            ));
        }
        for path in change.units.iter().chain(&change.files) {
            check_path(path)?;
        }
        units.extend(
            change
                .units
                .iter()
                .filter(|unit| !selection.as_ref().is_some_and(|s| s.excludes(unit)))
                .map(String::as_str),
        );
    }
    let limit = config.dispatcher.max_units_per_run;
    if units.len() > limit {
        return Err(format!(
            "the drift check names {} units, more than dispatcher.max_units_per_run ({limit}): \
             narrow it with --units or [[drift]] units, or raise the limit",
            units.len()
        ));
    }
    let units = units
        .into_iter()
        .map(|unit| {
            let account = router
                .route(unit)
                .ok_or_else(|| format!("unit {unit:?} matches no account's paths"))?;
            Ok(PlannedUnit {
                unit: unit.to_owned(),
                account: account.to_owned(),
                action: Action::DriftPlan,
                gated: false,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RunPlan {
        units,
        edges: Vec::new(),
    })
}

/// The dependencies of `unit` that get a job, looking through those that do not (a change kind
/// the policy ignores), so that the order of what does run is kept.
fn nearest_with_jobs<'a>(
    unit: &'a str,
    graph: &BTreeMap<&'a str, Vec<&'a str>>,
    actions: &BTreeMap<&'a str, Action>,
) -> BTreeSet<&'a str> {
    let mut found = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = graph.get(unit).cloned().unwrap_or_default();
    while let Some(next) = stack.pop() {
        if !seen.insert(next) {
            continue;
        }
        if actions.contains_key(next) {
            found.insert(next);
        } else if let Some(further) = graph.get(next) {
            stack.extend(further);
        }
    }
    found
}

/// For the account changes, which carry no units: `Some(configured unit or nothing)`.
/// `None` for every other kind.
fn unit_trigger(kind: ChangeKind, triggers: &Triggers) -> Option<Option<&UnitTrigger>> {
    match kind {
        ChangeKind::AccountsRequested => Some(triggers.accounts_requested.as_ref()),
        ChangeKind::AccountsChanged => Some(triggers.accounts_changed.as_ref()),
        _ => None,
    }
}

fn kind_trigger(kind: ChangeKind, triggers: &Triggers) -> Trigger {
    match kind {
        ChangeKind::UnitAdded => triggers.unit_added,
        ChangeKind::UnitChanged => triggers.unit_changed,
        ChangeKind::UnitDeleted => triggers.unit_deleted,
        ChangeKind::EnvCommonChanged => triggers.env_common_changed,
        ChangeKind::HclChanged => triggers.hcl_changed,
        ChangeKind::FileChanged => triggers.file_changed,
        ChangeKind::DriftDetected => triggers.drift_detected,
        ChangeKind::AccountsRequested | ChangeKind::AccountsChanged | ChangeKind::DriftCheck => {
            Trigger::None
        }
    }
}

/// By default (DESIGN.md) pull requests plan and pushes to the deploy branch apply; deleted
/// units get plan-destroy and destroy. `plan` plans even on pushes; `none` runs nothing.
fn action_for(kind: ChangeKind, trigger: Trigger, push: bool) -> Option<Action> {
    let deleted = kind == ChangeKind::UnitDeleted;
    match (trigger, deleted, push) {
        (Trigger::None, _, _) => None,
        (Trigger::Noop, _, _) => Some(Action::Noop),
        (Trigger::Plan, true, _) | (Trigger::Default, true, false) => Some(Action::PlanDestroy),
        (Trigger::Plan, false, _) | (Trigger::Default, false, false) => Some(Action::Plan),
        (Trigger::Default, true, true) => Some(Action::Destroy),
        (Trigger::Default, false, true) => Some(Action::Apply),
    }
}

/// Both commits of an event are full shas, as git prints them.
fn check_shas(event: &ChangeEvent) -> Result<(), String> {
    for (name, sha) in [("base_sha", &event.base_sha), ("head_sha", &event.head_sha)] {
        if !is_commit_sha(sha) {
            return Err(format!("{name} {sha:?} is not a full commit sha"));
        }
    }
    Ok(())
}

/// A full commit sha: 40 (SHA-1) or 64 (SHA-256) hexadecimal digits.
pub fn is_commit_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A cycle among the edges, as the list of units around it, if there is one.
fn find_cycle(edges: &[DependencyEdge]) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for edge in edges {
        graph.entry(&edge.unit).or_default().push(&edge.depends_on);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for &start in graph.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Iterative DFS keeping the active path, so deep graphs cannot overflow the stack.
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Active);
        while let Some((node, next)) = path.last_mut() {
            let children = graph.get(*node).map_or(&[][..], Vec::as_slice);
            if let Some(&child) = children.get(*next) {
                *next += 1;
                match marks.get(child) {
                    Some(Mark::Active) => {
                        let from = path.iter().position(|(n, _)| *n == child).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| (*n).to_owned()).collect();
                        cycle.push(child.to_owned());
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(child, Mark::Active);
                        path.push((child, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proto_types::{Change, Trigger};
    use uuid::Uuid;

    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [[repositories]]
            name = "infra"
            url = "/srv/infra.git"
            [[accounts]]
            name = "prod"
            paths = ["prod/**"]
            [[accounts]]
            name = "dev"
            paths = ["dev/*", "prod/dev-like/*"]
            "#,
        )
        .unwrap()
    }

    fn event(
        trigger: Trigger,
        changes: Vec<(ChangeKind, &[&str])>,
        edges: &[(&str, &str)],
    ) -> ChangeEvent {
        ChangeEvent {
            id: Uuid::new_v4(),
            repository: "infra".into(),
            trigger,
            base_sha: "a".repeat(40),
            head_sha: "b".repeat(40),
            changes: changes
                .into_iter()
                .map(|(kind, units)| Change {
                    kind,
                    units: units.iter().map(|u| (*u).to_owned()).collect(),
                    files: units.iter().map(|u| format!("{u}/main.tf")).collect(),
                })
                .collect(),
            dependencies: edges
                .iter()
                .map(|(u, d)| DependencyEdge {
                    unit: (*u).into(),
                    depends_on: (*d).into(),
                })
                .collect(),
        }
    }

    fn push(branch: &str) -> Trigger {
        Trigger::Push {
            branch: branch.into(),
        }
    }

    fn pr() -> Trigger {
        Trigger::PullRequest {
            number: Some(1),
            base_branch: "main".into(),
            head_branch: "x".into(),
        }
    }

    fn check(event: &ChangeEvent) -> Result<RunPlan, String> {
        let config = config();
        plan(
            event,
            &config,
            &AccountRouter::new(&config),
            &ApprovalGates::new(&config),
        )
    }

    #[test]
    fn units_route_to_the_first_matching_account() {
        let config = config();
        let router = AccountRouter::new(&config);
        assert_eq!(router.route("prod/app"), Some("prod"));
        assert_eq!(
            router.route("prod/dev-like/x"),
            Some("prod"),
            "first match wins"
        );
        assert_eq!(router.route("dev/app"), Some("dev"));
        assert_eq!(
            router.route("dev/nested/app"),
            None,
            "* does not cross directories"
        );
    }

    #[test]
    fn pushes_apply_and_destroy_pull_requests_plan() {
        let changes = || {
            vec![
                (ChangeKind::UnitChanged, &["prod/app"][..]),
                (ChangeKind::UnitDeleted, &["dev/old"][..]),
            ]
        };
        let actions = |plan: RunPlan| {
            plan.units
                .into_iter()
                .map(|u| (u.unit, u.account, u.action))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            actions(check(&event(push("main"), changes(), &[])).unwrap()),
            [
                ("dev/old".into(), "dev".into(), Action::Destroy),
                ("prod/app".into(), "prod".into(), Action::Apply)
            ]
        );
        assert_eq!(
            actions(check(&event(pr(), changes(), &[])).unwrap()),
            [
                ("dev/old".into(), "dev".into(), Action::PlanDestroy),
                ("prod/app".into(), "prod".into(), Action::Plan)
            ]
        );
    }

    #[test]
    fn a_drift_check_plans_every_listed_unit_unordered_minus_exclusions() {
        let drift = |branch: &str| Trigger::Drift {
            branch: branch.into(),
        };
        let mut config = config();
        config.drift = vec![config::DriftSchedule {
            repository: "infra".into(),
            schedule: None,
            units: vec!["**".into()],
            exclude: vec!["dev/*".into()],
            open_pull_request: false,
        }];
        let router = AccountRouter::new(&config);
        let check =
            |event: &ChangeEvent| plan(event, &config, &router, &ApprovalGates::new(&config));
        let units = &["prod/app", "prod/db", "dev/scratch"][..];
        let planned = check(&event(
            drift("main"),
            vec![(ChangeKind::DriftCheck, units)],
            &[("prod/app", "prod/db")],
        ))
        .unwrap();
        let actions: Vec<(&str, &str, Action, bool)> = planned
            .units
            .iter()
            .map(|u| (u.unit.as_str(), u.account.as_str(), u.action, u.gated))
            .collect();
        assert_eq!(
            actions,
            [
                ("prod/app", "prod", Action::DriftPlan, false),
                ("prod/db", "prod", Action::DriftPlan, false),
            ]
        );
        assert!(planned.edges.is_empty(), "drift plans wait for nothing");

        let err = check(&event(
            drift("feature"),
            vec![(ChangeKind::DriftCheck, units)],
            &[],
        ))
        .unwrap_err();
        assert!(
            err.contains("drift is checked on its deploy branch \"main\" only"),
            "{err}"
        );
        let err = check(&event(
            drift("main"),
            vec![(ChangeKind::UnitChanged, &["prod/app"][..])],
            &[],
        ))
        .unwrap_err();
        assert!(err.contains("it may list DriftCheck units only"), "{err}");
        let err = check(&event(
            push("main"),
            vec![(ChangeKind::DriftCheck, units)],
            &[],
        ))
        .unwrap_err();
        assert!(
            err.contains("drift checks come in drift events only"),
            "{err}"
        );
        let err = check(&event(
            drift("main"),
            vec![(ChangeKind::DriftCheck, &["../etc"][..])],
            &[],
        ))
        .unwrap_err();
        assert!(err.contains("../etc"), "{err}");
    }

    #[test]
    fn rejections_name_what_was_wrong() {
        let one = || vec![(ChangeKind::UnitChanged, &["prod/app"][..])];
        let reason = |event: ChangeEvent| check(&event).unwrap_err();

        let mut unknown = event(pr(), one(), &[]);
        unknown.repository = "other".into();
        assert!(reason(unknown).contains("unknown repository \"other\""));
        assert!(reason(event(push("feature"), one(), &[])).contains("push to branch \"feature\""));
        assert!(
            reason(event(
                pr(),
                vec![(ChangeKind::UnitChanged, &["staging/app"][..])],
                &[]
            ))
            .contains("unit \"staging/app\" matches no account's paths")
        );
        assert!(
            reason(event(
                pr(),
                vec![(ChangeKind::UnitChanged, &["prod/../../etc"][..])],
                &[]
            ))
            .contains("\"prod/../../etc\" is not normalized")
        );
        let mut bad_sha = event(pr(), one(), &[]);
        bad_sha.head_sha = "HEAD".into();
        assert!(reason(bad_sha).contains("head_sha \"HEAD\""));
    }

    #[test]
    fn an_event_over_max_units_per_run_is_rejected_naming_the_limit() {
        let names: Vec<String> = (0..20_000).map(|i| format!("prod/unit-{i}")).collect();
        let units: Vec<&str> = names.iter().map(String::as_str).collect();
        let big = event(pr(), vec![(ChangeKind::UnitChanged, &units[..])], &[]);
        let reason = check(&big).unwrap_err();
        assert_eq!(
            reason,
            "the event names 20000 units, more than dispatcher.max_units_per_run (5000): split \
             the change, or raise the limit"
        );
        let under = event(pr(), vec![(ChangeKind::UnitChanged, &units[..5_000])], &[]);
        assert_eq!(check(&under).unwrap().units.len(), 5_000);
    }

    #[test]
    fn paths_must_be_relative_normalized_and_plain() {
        for bad in [
            "", "/etc", "a//b", "a/./b", "a/../b", "..", "a\\b", "a/\u{0}", "a/",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "prod/eu-west-1/app", "a/.hidden/b"] {
            assert!(check_path(good).is_ok(), "{good:?} refused");
        }
    }

    fn with_triggers(triggers: &str) -> Config {
        let text = format!(
            "[[repositories]]\nname = \"infra\"\nurl = \"/srv/infra.git\"\n\
             [[accounts]]\nname = \"prod\"\npaths = [\"prod/**\"]\n[triggers]\n{triggers}"
        );
        Config::from_toml(&text).unwrap()
    }

    /// The planned (unit, action) pairs and (unit, depends_on) edges.
    type Planned = (Vec<(String, Action)>, Vec<(String, String)>);

    fn actions_with(config: &Config, event: &ChangeEvent) -> Planned {
        let plan = plan(
            event,
            config,
            &AccountRouter::new(config),
            &ApprovalGates::new(config),
        )
        .unwrap();
        (
            plan.units.into_iter().map(|u| (u.unit, u.action)).collect(),
            plan.edges
                .into_iter()
                .map(|e| (e.unit, e.depends_on))
                .collect(),
        )
    }

    #[test]
    fn triggers_can_plan_or_ignore_a_kind_and_order_is_kept_through_ignored_units() {
        let config = with_triggers("hcl_changed = \"none\"\ndrift_detected = \"plan\"");
        // app -> mid -> net, where only mid is an HclChanged unit.
        let event = event(
            push("main"),
            vec![
                (ChangeKind::UnitChanged, &["prod/app", "prod/net"][..]),
                (ChangeKind::HclChanged, &["prod/mid"][..]),
                (ChangeKind::DriftDetected, &["prod/drifted"][..]),
            ],
            &[("prod/app", "prod/mid"), ("prod/mid", "prod/net")],
        );
        let (actions, edges) = actions_with(&config, &event);
        assert_eq!(
            actions,
            [
                ("prod/app".into(), Action::Apply),
                ("prod/drifted".into(), Action::Plan),
                ("prod/net".into(), Action::Apply)
            ],
            "hcl_changed = none drops mid; drift_detected = plan plans even on a push"
        );
        assert_eq!(
            edges,
            [("prod/app".into(), "prod/net".into())],
            "app still waits for net"
        );
    }

    #[test]
    fn account_requests_run_the_configured_unit_or_nothing() {
        let requested =
            |trigger: Trigger| event(trigger, vec![(ChangeKind::AccountsRequested, &[][..])], &[]);
        let none = with_triggers("");
        assert!(
            actions_with(&none, &requested(pr())).0.is_empty(),
            "nothing by default"
        );
        let config = with_triggers("accounts_requested = { unit = \"prod/account-factory\" }");
        assert_eq!(
            actions_with(&config, &requested(pr())).0,
            [("prod/account-factory".into(), Action::Plan)]
        );
        assert_eq!(
            actions_with(&config, &requested(push("main"))).0,
            [("prod/account-factory".into(), Action::Apply)]
        );
    }

    #[test]
    fn cycles_and_applies_that_depend_on_deleted_units_are_refused() {
        let both = || vec![(ChangeKind::UnitChanged, &["prod/a", "prod/b"][..])];
        let cycle = check(&event(
            pr(),
            both(),
            &[("prod/a", "prod/b"), ("prod/b", "prod/a")],
        ))
        .unwrap_err();
        assert!(
            cycle.starts_with("dependency cycle: prod/a -> prod/b -> prod/a"),
            "{cycle}"
        );

        let changes = vec![
            (ChangeKind::UnitChanged, &["prod/a"][..]),
            (ChangeKind::UnitDeleted, &["prod/b"][..]),
        ];
        let orphan = check(&event(push("main"), changes, &[("prod/a", "prod/b")])).unwrap_err();
        assert!(
            orphan.contains("\"prod/a\" depends on \"prod/b\", which is being deleted"),
            "{orphan}"
        );
    }

    // --- Fuzzing. CI runs a few thousand cases; the full profile:
    //     PIPELINES_FUZZ_CASES=100000 cargo test --release -p dispatcher fuzz
    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn cases() -> u32 {
            std::env::var("PIPELINES_FUZZ_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2_000)
        }

        /// Path segments, hostile and ordinary.
        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("prod".to_owned()),
                Just("dev".to_owned()),
                Just("app".to_owned()),
                Just("..".to_owned()),
                Just(".".to_owned()),
                Just(String::new()),
                Just("\\x".to_owned()),
                Just("a\u{0}b".to_owned()),
                Just("é-ü".to_owned()),
                "[a-z0-9._-]{1,12}",
                any::<String>(),
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            (any::<bool>(), prop::collection::vec(segment(), 0..5)).prop_map(|(absolute, parts)| {
                format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
            })
        }

        fn kind() -> impl Strategy<Value = ChangeKind> {
            prop_oneof![
                Just(ChangeKind::UnitAdded),
                Just(ChangeKind::UnitChanged),
                Just(ChangeKind::UnitDeleted),
                Just(ChangeKind::HclChanged),
                Just(ChangeKind::AccountsRequested),
                Just(ChangeKind::DriftDetected),
            ]
        }

        fn change_event() -> impl Strategy<Value = ChangeEvent> {
            (
                prop::bool::ANY,
                prop::sample::select(vec!["main", "feature", ""]),
                prop::collection::vec(
                    (
                        kind(),
                        prop::collection::vec(path(), 0..4),
                        prop::collection::vec(path(), 0..3),
                    ),
                    0..4,
                ),
                prop::collection::vec((path(), path()), 0..4),
                prop::sample::select(vec!["infra".to_owned(), "other".to_owned(), "a".repeat(40)]),
            )
                .prop_map(|(push, branch, changes, edges, repository)| ChangeEvent {
                    id: Uuid::new_v4(),
                    repository,
                    trigger: if push {
                        Trigger::Push {
                            branch: branch.into(),
                        }
                    } else {
                        Trigger::PullRequest {
                            number: Some(1),
                            base_branch: "main".into(),
                            head_branch: branch.into(),
                        }
                    },
                    base_sha: "a".repeat(40),
                    head_sha: "b".repeat(40),
                    changes: changes
                        .into_iter()
                        .map(|(kind, units, files)| Change { kind, units, files })
                        .collect(),
                    dependencies: edges
                        .into_iter()
                        .map(|(unit, depends_on)| DependencyEdge { unit, depends_on })
                        .collect(),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

            /// Any event: a plan or a reason, never a panic; and a plan holds only clean paths,
            /// each routed to an account, with edges among its own units and no cycle.
            #[test]
            fn any_event_is_planned_safely_or_refused(event in change_event()) {
                let config = config();
                let router = AccountRouter::new(&config);
                if let Ok(plan) = plan(&event, &config, &router, &ApprovalGates::new(&config)) {
                    prop_assert!(event.repository == "infra");
                    for unit in &plan.units {
                        prop_assert!(check_path(&unit.unit).is_ok(), "accepted {:?}", unit.unit);
                        prop_assert_eq!(router.route(&unit.unit), Some(unit.account.as_str()));
                    }
                    let units: Vec<&str> = plan.units.iter().map(|u| u.unit.as_str()).collect();
                    for edge in &plan.edges {
                        prop_assert!(units.contains(&edge.unit.as_str()) && units.contains(&edge.depends_on.as_str()));
                    }
                    prop_assert!(find_cycle(&plan.edges).is_none());
                    if matches!(event.trigger, Trigger::Push { ref branch } if branch != "main") {
                        prop_assert!(false, "a push to another branch was planned");
                    }
                }
            }
        }
    }
}
