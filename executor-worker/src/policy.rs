//! Policy checks: the admin's Rego policy sets, read once when the worker starts and evaluated
//! in-process (regorus) against each plan's JSON, with conftest's conventions (`deny` and
//! `warn` rules in package `main`, `input` = the plan of `show -json`).
//!
//! Fail closed: a set that cannot be read or parsed, declares no rule, errors while evaluating
//! or outruns its time budget gives a result that blocks the plan, never a silent pass. The
//! files are read at start-up only, never during a job: a job's tools may write to disk, and
//! nothing they write can change a verdict.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use config::{PolicyMode, PolicyScope, PolicySet, PolicySettings, RegoSyntax};
use proto_types::{PolicyReport, PolicySetResult};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

/// The rule names read from each set, in conftest's meaning.
const RULES: [&str; 2] = ["deny", "warn"];
/// Messages kept per rule and set: a policy that denies every resource of a big plan must
/// not blow up the job's report.
const MAX_MESSAGES: usize = 50;
/// Bytes kept per message.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Who, what and where a plan is: `input.pipelines`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanContext {
    pub repository: String,
    /// `pull-request` or `push`.
    pub event: String,
    pub unit: String,
    pub account: String,
    /// The job's action: `plan`, `apply`, `destroy`, ...
    pub action: String,
    pub commit: String,
}

/// Every configured set, loaded.
#[derive(Debug, Clone)]
pub struct Policies {
    sets: Vec<LoadedSet>,
    budget: Duration,
    max_plan_bytes: u64,
}

/// The policy sets a worker holds. Each job takes a snapshot when it starts ([`current`]), so
/// an explicit reload ([`replace`]) takes effect from the next job on, never in the middle of
/// one.
///
/// [`current`]: PolicyHandle::current
/// [`replace`]: PolicyHandle::replace
#[derive(Debug, Clone)]
pub struct PolicyHandle(Arc<RwLock<Arc<Policies>>>);

impl PolicyHandle {
    pub fn new(policies: Policies) -> PolicyHandle {
        PolicyHandle(Arc::new(RwLock::new(Arc::new(policies))))
    }

    /// The sets in force now.
    pub fn current(&self) -> Arc<Policies> {
        // A poisoned lock still holds whole sets: a swap cannot half-happen.
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `policies` in force for the jobs that start from now on.
    pub fn replace(&self, policies: Policies) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policies);
    }
}

/// A set's policies, parsed, with what they declare.
#[derive(Debug, Clone)]
struct Prepared {
    engine: Engine,
    /// Which of [`RULES`] the package declares: evaluating an undeclared one is an error.
    declared: Vec<&'static str>,
    /// Rules declared, one per name per file.
    rules: u32,
}

#[derive(Debug, Clone)]
struct LoadedSet {
    config: PolicySet,
    scope: PolicyScope,
    name: String,
    /// The prepared engine, or why there is none.
    engine: Result<Prepared, String>,
}

impl Policies {
    /// Reads and parses every set. A set that fails is kept with its error, so that the jobs
    /// it governs fail saying why while the worker goes on with the others.
    pub fn load(sets: &[PolicySet], settings: &PolicySettings) -> Policies {
        let sets = sets
            .iter()
            .map(|set| LoadedSet {
                name: set.display_name(),
                engine: load_set(set, settings.time_budget()),
                scope: set.scope(),
                config: set.clone(),
            })
            .collect();
        Policies {
            sets,
            budget: settings.time_budget(),
            max_plan_bytes: settings.max_plan_bytes,
        }
    }

    /// How many sets are configured (loaded or not).
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Whether any set governs `unit` of `account`.
    pub fn govern(&self, account: &str, unit: &str) -> bool {
        self.sets
            .iter()
            .any(|set| set.scope.applies_to(account, unit))
    }

    /// The largest plan evaluated.
    pub fn max_plan_bytes(&self) -> u64 {
        self.max_plan_bytes
    }

    /// Load errors, for the worker's start-up log.
    pub fn load_errors(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sets.iter().filter_map(|set| match &set.engine {
            Ok(_) => None,
            Err(err) => Some((set.name.as_str(), err.as_str())),
        })
    }

    /// Every set governing the plan's unit and account, evaluated against `plan_json`.
    pub fn evaluate(&self, plan_json: &[u8], context: &PlanContext) -> PolicyReport {
        let governing: Vec<&LoadedSet> = self
            .sets
            .iter()
            .filter(|set| set.scope.applies_to(&context.account, &context.unit))
            .collect();
        if governing.is_empty() {
            return PolicyReport::default();
        }
        let input = self.input(plan_json, context);
        let sets = governing
            .into_iter()
            .map(|set| {
                let enforced = set.config.mode == PolicyMode::Deny;
                let mut result = PolicySetResult {
                    name: set.name.clone(),
                    enforced,
                    rules: 0,
                    denies: Vec::new(),
                    warnings: Vec::new(),
                    error: None,
                    overridable: enforced && set.config.override_by.is_some(),
                    overridden: None,
                };
                let outcome = match (&set.engine, &input) {
                    (Err(err), _) => Err(err.clone()),
                    (_, Err(err)) => Err(err.clone()),
                    (Ok(prepared), Ok(input)) => {
                        result.rules = prepared.rules;
                        evaluate_set(prepared, &set.config.package, input.clone(), self.budget)
                    }
                };
                match outcome {
                    Ok((denies, warnings)) => {
                        result.denies = denies;
                        result.warnings = warnings;
                    }
                    Err(err) => result.error = Some(err),
                }
                result
            })
            .collect();
        PolicyReport { sets }
    }

    /// `input`: the plan, with `pipelines` added. A plan too big or not JSON fails every set.
    fn input(&self, plan_json: &[u8], context: &PlanContext) -> Result<Value, String> {
        let size = plan_json.len() as u64;
        if size > self.max_plan_bytes {
            return Err(format!(
                "the plan JSON is {size} bytes, over policy.max_plan_bytes ({}): it was not \
                 evaluated, so it does not pass",
                self.max_plan_bytes
            ));
        }
        let text = std::str::from_utf8(plan_json)
            .map_err(|err| format!("the plan JSON is not UTF-8: {err}"))?;
        let mut input = Value::from_json_str(text)
            .map_err(|err| format!("the plan is not JSON: {}", first_line(&err.to_string())))?;
        let object = input
            .as_object_mut()
            .map_err(|_| "the plan JSON is not an object".to_owned())?;
        let mut pipelines = Value::new_object();
        if let Ok(fields) = pipelines.as_object_mut() {
            for (key, value) in [
                ("repository", &context.repository),
                ("event", &context.event),
                ("unit", &context.unit),
                ("account", &context.account),
                ("action", &context.action),
                ("commit", &context.commit),
            ] {
                fields.insert(Value::from(key), Value::from(value.as_str()));
            }
        }
        object.insert(Value::from("pipelines"), pipelines);
        Ok(input)
    }
}

/// Records an approver's override (`who: why`) on the sets whose denies may be overridden
/// (this worker's configuration said so when it evaluated them); a set that could not give a
/// verdict is never overridden.
pub fn override_denies(report: &mut PolicyReport, by: &str) {
    for set in &mut report.sets {
        if set.overridable && set.error.is_none() && !set.denies.is_empty() {
            set.overridden = Some(by.to_owned());
        }
    }
}

/// The verdict as lines of the job's output.
pub fn render_report(report: &PolicyReport) -> String {
    let mut text = format!(
        "pipelines: policy: {} set(s), {} rule(s)\n",
        report.sets.len(),
        report.rules()
    );
    for set in &report.sets {
        let mode = if set.enforced { "deny" } else { "warn" };
        let verdict = if set.error.is_some() {
            "error"
        } else if set.overridden.is_some() {
            "denied, overridden"
        } else if set.blocks() {
            "denied"
        } else {
            "passed"
        };
        text.push_str(&format!(
            "  {} ({mode} mode, {} rule(s)): {verdict}\n",
            set.name, set.rules
        ));
        if let Some(error) = &set.error {
            text.push_str(&format!("    error: {error}\n"));
        }
        if let Some(by) = &set.overridden {
            text.push_str(&format!("    overridden by {by}\n"));
        }
        let deny_label = if set.enforced {
            "deny"
        } else {
            "warn (deny in warn mode)"
        };
        for message in &set.denies {
            text.push_str(&format!("    {deny_label}: {message}\n"));
        }
        for message in &set.warnings {
            text.push_str(&format!("    warn: {message}\n"));
        }
    }
    text
}

/// Reads a set's files into a prepared engine and counts its rules.
fn load_set(set: &PolicySet, budget: Duration) -> Result<Prepared, String> {
    let files = rego_files(&set.path)?;
    if files.is_empty() {
        return Err(format!("{} holds no .rego file", set.path.display()));
    }
    let mut engine = Engine::new();
    engine.set_rego_v0(set.rego == RegoSyntax::V0);
    // A builtin given the wrong type is an error, not an undefined result that lets the
    // plan through.
    engine.set_strict_builtin_errors(true);
    let mut in_package = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
        let path = file.display().to_string();
        let package = engine
            .add_policy(path.clone(), text)
            .map_err(|err| format!("{}", err))?;
        if package == format!("data.{}", set.package) {
            in_package.push(path);
        }
    }
    let mut rules = 0;
    let mut declared = Vec::new();
    for path in &in_package {
        for rule in RULES {
            if engine
                .has_declared_rule_rooted_at(path, rule)
                .map_err(|err| format!("{path}: {err}"))?
            {
                rules += 1;
                if !declared.contains(&rule) {
                    declared.push(rule);
                }
            }
        }
    }
    if rules == 0 {
        return Err(format!(
            "{} declares no `deny` or `warn` rule in package {:?}: nothing would be checked",
            set.path.display(),
            set.package
        ));
    }
    // Analyse and schedule the modules now, once: an engine clones its preparation, so each
    // evaluation starts from a prepared engine instead of preparing its own. An error here
    // (with an empty input) is left for the real evaluation to report. Under the same time
    // budget: a policy that loops must not hold up the worker's start.
    engine.set_execution_timer_config(timer(budget));
    engine.set_input(Value::new_object());
    for rule in &declared {
        let _ = engine.eval_rule(format!("data.{}.{rule}", set.package));
    }
    Ok(Prepared {
        engine,
        declared,
        rules,
    })
}

/// The set's `.rego` files, sorted, skipping conftest's `_test.rego` files.
fn rego_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let metadata = std::fs::metadata(path)
        .map_err(|err| format!("cannot read policy path {}: {err}", path.display()))?;
    if metadata.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|err| format!("cannot list {}: {err}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|err| format!("cannot list {}: {err}", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry
                .file_type()
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            if kind.is_dir() {
                pending.push(path);
            } else if name.ends_with(".rego") && !name.ends_with("_test.rego") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `deny` and `warn` of `package`, as messages.
fn evaluate_set(
    prepared: &Prepared,
    package: &str,
    input: Value,
    budget: Duration,
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut engine = prepared.engine.clone();
    engine.set_execution_timer_config(timer(budget));
    engine.set_input(input);
    let mut results = Vec::with_capacity(RULES.len());
    for rule in RULES {
        if !prepared.declared.contains(&rule) {
            results.push(Vec::new());
            continue;
        }
        let value = engine
            .eval_rule(format!("data.{package}.{rule}"))
            .map_err(|err| {
                let err = err.to_string();
                if err.contains("execution exceeded") || err.contains("time limit") {
                    format!(
                        "evaluating {rule} took longer than policy.time_budget ({} ms): {}",
                        budget.as_millis(),
                        first_line(&err)
                    )
                } else {
                    err
                }
            })?;
        results.push(messages(&value));
    }
    let warnings = results.pop().unwrap_or_default();
    let denies = results.pop().unwrap_or_default();
    Ok((denies, warnings))
}

/// The time limit of an evaluation, checked every 64 steps of work.
fn timer(budget: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: budget,
        check_interval: NonZeroU32::MIN.saturating_add(63),
    }
}

/// A rule's value as messages: a set of strings (or of objects with `msg`, as conftest's
/// structured results), sorted, bounded. Undefined (no such rule, no result) is none.
fn messages(value: &Value) -> Vec<String> {
    let items: Vec<&Value> = match value {
        Value::Set(set) => set.iter().collect(),
        Value::Array(array) => array.iter().collect(),
        Value::Undefined | Value::Null => Vec::new(),
        other => vec![other],
    };
    let mut messages: Vec<String> = items
        .into_iter()
        .map(|item| {
            let text = match item {
                Value::String(text) => text.to_string(),
                Value::Object(object) => object
                    .get(&Value::from("msg"))
                    .and_then(|msg| msg.as_string().ok())
                    .map_or_else(|| item.to_string(), |msg| msg.to_string()),
                other => other.to_string(),
            };
            bounded(text)
        })
        .collect();
    messages.sort();
    if messages.len() > MAX_MESSAGES {
        let more = messages.len() - MAX_MESSAGES;
        messages.truncate(MAX_MESSAGES);
        messages.push(format!("… and {more} more"));
    }
    messages
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        text.truncate(proto_types::untrusted_text::head(&text, MAX_MESSAGE_BYTES).len());
        text.push('…');
    }
    text
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> PlanContext {
        PlanContext {
            repository: "infra".into(),
            event: "pull-request".into(),
            unit: "prod/app".into(),
            account: "prod".into(),
            action: "plan".into(),
            commit: "abc123".into(),
        }
    }

    /// A set in a fresh directory from `(file name, text)` pairs.
    fn set(files: &[(&str, &str)], toml: &str) -> (tempfile::TempDir, Policies) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let config = config::Config::from_toml(&format!(
            "[[repositories]]\nname = \"infra\"\nurl = \"/srv/git/infra.git\"\n\
             [[accounts]]\nname = \"prod\"\npaths = [\"prod/**\"]\n\
             [[policies]]\npath = {:?}\n{toml}",
            dir.path()
        ))
        .unwrap();
        let policies = Policies::load(&config.policies, &config.policy);
        (dir, policies)
    }

    const PLAN: &str = r#"{"format_version":"1.2","resource_changes":[
        {"address":"null_resource.a","type":"null_resource","change":{"actions":["create"]}},
        {"address":"aws_s3_bucket.b","type":"aws_s3_bucket","change":{"actions":["create"]}}]}"#;

    const NO_BUCKETS: &str = r#"package main

deny contains msg if {
    some change in input.resource_changes
    change.type == "aws_s3_bucket"
    msg := sprintf("%s: S3 buckets are not allowed here", [change.address])
}

warn contains msg if {
    input.pipelines.account == "prod"
    msg := sprintf("%s touches prod", [input.pipelines.unit])
}
"#;

    #[test]
    fn a_deny_rule_blocks_the_plan_with_its_message_and_warnings_come_along() {
        let (_dir, policies) = set(&[("buckets.rego", NO_BUCKETS)], "");
        let report = policies.evaluate(PLAN.as_bytes(), &context());
        let result = &report.sets[0];
        assert_eq!(
            result.denies,
            ["aws_s3_bucket.b: S3 buckets are not allowed here"]
        );
        assert_eq!(result.warnings, ["prod/app touches prod"]);
        assert_eq!(result.rules, 2);
        assert!(report.blocks());
    }

    #[test]
    fn only_the_denies_of_a_set_that_allows_it_are_overridden_and_they_then_pass() {
        let (_dir, overridable) = set(
            &[("buckets.rego", NO_BUCKETS)],
            "override = \"approvers\"\n[approvals]\nusers = [\"alice\"]\n",
        );
        let mut report = overridable.evaluate(PLAN.as_bytes(), &context());
        assert!(report.blocks() && report.overridable(), "{report:?}");
        override_denies(&mut report, "alice: CHG-1");
        assert!(!report.blocks(), "{report:?}");
        assert_eq!(report.sets[0].overridden.as_deref(), Some("alice: CHG-1"));
        assert!(render_report(&report).contains("denied, overridden"));

        let (_dir, final_deny) = set(&[("buckets.rego", NO_BUCKETS)], "");
        let mut report = final_deny.evaluate(PLAN.as_bytes(), &context());
        assert!(!report.overridable());
        override_denies(&mut report, "alice: CHG-1");
        assert!(
            report.blocks(),
            "a set that does not allow it is never overridden"
        );

        let (_dir, broken) = set(
            &[("broken.rego", "package main\ndeny contains msg if {")],
            "override = \"approvers\"\n[approvals]\nusers = [\"alice\"]\n",
        );
        let mut report = broken.evaluate(PLAN.as_bytes(), &context());
        assert!(
            !report.overridable(),
            "a check that did not run is not a deny"
        );
        override_denies(&mut report, "alice: CHG-1");
        assert!(report.blocks());
    }

    #[test]
    fn a_plan_without_the_resource_passes() {
        let (_dir, policies) = set(&[("buckets.rego", NO_BUCKETS)], "");
        let plan = r#"{"resource_changes":[{"address":"null_resource.a","type":"null_resource"}]}"#;
        let report = policies.evaluate(plan.as_bytes(), &context());
        assert!(report.sets[0].denies.is_empty());
        assert!(!report.blocks(), "{report:?}");
    }

    #[test]
    fn warn_mode_reports_denies_without_blocking() {
        let (_dir, policies) = set(&[("buckets.rego", NO_BUCKETS)], "mode = \"warn\"");
        let report = policies.evaluate(PLAN.as_bytes(), &context());
        assert_eq!(report.sets[0].denies.len(), 1);
        assert!(!report.blocks());
    }

    #[test]
    fn rego_v0_policies_load_when_the_set_says_so() {
        let v0 = r#"package main

deny[msg] {
    change := input.resource_changes[_]
    change.type == "aws_s3_bucket"
    msg := sprintf("%s is a bucket", [change.address])
}
"#;
        let (_dir, policies) = set(&[("v0.rego", v0)], "rego = \"v0\"");
        let report = policies.evaluate(PLAN.as_bytes(), &context());
        assert_eq!(report.sets[0].denies, ["aws_s3_bucket.b is a bucket"]);
        // The same file as v1 does not parse: the set fails, and so does the plan.
        let (_dir, strict) = set(&[("v0.rego", v0)], "");
        let report = strict.evaluate(PLAN.as_bytes(), &context());
        assert!(report.blocks());
        assert!(report.sets[0].error.is_some());
    }

    #[test]
    fn a_syntax_error_fails_closed_naming_the_file_and_line() {
        let broken = "package main\n\ndeny contains msg if {\n    msg := \n}\n";
        let (dir, policies) = set(&[("broken.rego", broken)], "");
        assert_eq!(policies.load_errors().count(), 1);
        let report = policies.evaluate(PLAN.as_bytes(), &context());
        let error = report.sets[0].error.as_deref().unwrap();
        let file = dir.path().join("broken.rego").display().to_string();
        assert!(error.contains(&format!("{file}:")), "{error}");
        assert!(report.blocks());
    }

    #[test]
    fn a_set_without_rules_in_its_package_fails_closed() {
        let other = "package other\n\ndeny contains \"x\" if { true }\n";
        let (_dir, policies) = set(&[("other.rego", other)], "");
        let report = policies.evaluate(PLAN.as_bytes(), &context());
        let error = report.sets[0].error.as_deref().unwrap();
        assert!(
            error.contains("declares no `deny` or `warn` rule"),
            "{error}"
        );
        assert!(report.blocks());
        let (_dir, empty) = set(&[("README.md", "no policies")], "");
        assert!(empty.evaluate(PLAN.as_bytes(), &context()).blocks());
    }

    #[test]
    fn a_policy_that_outruns_its_budget_fails_closed() {
        // Ten billion steps over two small ranges: work, not memory.
        let slow = r#"package main

deny contains msg if {
    some x in numbers.range(1, 100000)
    some y in numbers.range(1, 100000)
    x * y == -1
    msg := "never"
}
"#;
        // Loading runs under the budget too: the engine is prepared with an evaluation.
        let (_dir, policies) = set(&[("slow.rego", slow)], "[policy]\ntime_budget = \"1s\"");
        let report = policies.evaluate(PLAN.as_bytes(), &context());
        let error = report.sets[0].error.as_deref().unwrap();
        assert!(error.contains("policy.time_budget"), "{error}");
        assert!(report.blocks());
    }

    #[test]
    fn a_plan_over_the_size_limit_or_not_json_fails_closed() {
        let (_dir, policies) = set(&[("buckets.rego", NO_BUCKETS)], "");
        let policies = Policies {
            max_plan_bytes: 100,
            ..policies
        };
        let report = policies.evaluate(PLAN.as_bytes(), &context());
        let error = report.sets[0].error.as_deref().unwrap();
        assert!(error.contains("policy.max_plan_bytes (100)"), "{error}");
        assert!(report.blocks());
        let report = policies.evaluate(b"{not json", &context());
        assert!(report.blocks());
    }

    #[test]
    fn sets_govern_only_their_accounts_and_units_and_skip_test_files() {
        let failing_test = "package main\n\ntest_x if { false }\n";
        let (_dir, policies) = set(
            &[("a.rego", NO_BUCKETS), ("a_test.rego", failing_test)],
            "accounts = [\"prod\"]",
        );
        assert!(policies.govern("prod", "prod/app"));
        assert!(!policies.govern("dev", "dev/app"));
        let dev = PlanContext {
            account: "dev".into(),
            ..context()
        };
        assert!(policies.evaluate(PLAN.as_bytes(), &dev).sets.is_empty());
    }

    /// `examples/policies`, as an admin would configure it.
    fn examples() -> Policies {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
        let config = config::Config::from_toml(&format!(
            "[[repositories]]\nname = \"infra\"\nurl = \"/srv/git/infra.git\"\n\
             [[accounts]]\nname = \"prod\"\npaths = [\"prod/**\"]\n\
             [[policies]]\npath = {:?}\n\
             [[policies]]\npath = {:?}\nmode = \"warn\"\n",
            root.join("security"),
            root.join("advice"),
        ))
        .unwrap();
        Policies::load(&config.policies, &config.policy)
    }

    fn example_plan(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/policies/testdata")
            .join(name);
        std::fs::read(path).unwrap()
    }

    #[test]
    fn the_example_policy_sets_deny_what_they_promise_and_pass_a_compliant_plan() {
        let policies = examples();
        assert_eq!(policies.load_errors().count(), 0);
        let report = policies.evaluate(&example_plan("violations.json"), &context());
        let security = &report.sets[0];
        assert_eq!(security.name, "security");
        assert_eq!(security.rules, 3, "{report:?}");
        assert_eq!(
            security.denies,
            [
                "aws_db_instance.main: aws_db_instance is protected and would be destroyed",
                "aws_db_instance.main: missing required tags [\"cost-center\", \"owner\"]",
                "aws_instance.web: missing required tags [\"cost-center\"]",
                "aws_s3_bucket_acl.site: the ACL \"public-read\" makes the bucket public",
                "aws_s3_bucket_public_access_block.site: block_public_policy must stay true",
            ],
            "{report:?}"
        );
        let advice = &report.sets[1];
        assert_eq!(
            advice.warnings,
            [
                "aws_db_instance.main will be replaced (destroyed, then created)",
                "plan changes 4 resource(s) of prod/app in account prod",
            ]
        );
        assert!(report.blocks());

        let report = policies.evaluate(&example_plan("compliant.json"), &context());
        assert!(report.sets[0].denies.is_empty(), "{report:?}");
        assert!(!report.blocks(), "{report:?}");
    }
}
