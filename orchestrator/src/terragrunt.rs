//! Terragrunt units: what a `terragrunt.hcl` reads (through includes, nested includes,
//! `read_terragrunt_config`, file functions and a local `terraform { source }`) and which units it
//! depends on. Pure.
//!
//! Evaluation follows Terragrunt: an included file is evaluated in the context of the unit that
//! includes it (`get_terragrunt_dir()` and `find_in_parent_folders()` start from the unit), while
//! a file read with `read_terragrunt_config` is evaluated in its own directory.
//!
//! Thousands of units include the same few files. An included file's evaluation is reused for
//! every unit in the same directory when it used nothing more of the unit's position than that
//! directory ([`ContextUse`]). Dependency blocks are the exception: they usually name paths
//! relative to the unit, so they are evaluated for every unit, along the include chain.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hcl::edit::Span;
use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block, Body};

use crate::hcl::{
    Collector, ContextUse, Eval, Issue, Locals, ParsedFile, ReadConfig, Scope, ScopeKind, Value,
    contains_read_call, resolve,
};
use crate::paths::{file_name, join, parent};

/// How deep includes may nest before we call it a cycle.
const MAX_DEPTH: usize = 16;

/// What evaluating a unit found.
#[derive(Debug, Default)]
pub(crate) struct UnitFindings {
    pub(crate) found: Collector,
    /// The include chain's files with dependency blocks; see [`unit_dependencies`].
    pub(crate) chain: Vec<Arc<ChainFile>>,
}

/// Evaluates the Terragrunt unit in `unit_dir`; `has_sources` says whether Terraform files sit
/// next to its `terragrunt.hcl`.
pub(crate) fn evaluate_unit(ev: &mut Eval<'_>, unit_dir: &str, has_sources: bool) -> UnitFindings {
    let config = join(unit_dir, "terragrunt.hcl").unwrap_or_default();
    let mut findings = UnitFindings::default();
    let mut stack = vec![config.clone()];
    let outcome = evaluate_config(
        ev,
        &config,
        unit_dir,
        Role::Unit,
        &mut stack,
        &mut findings.found,
    );
    findings.chain = outcome.chain.clone();
    if let Some(source) = &outcome.source
        && let Some(module_dir) = local_source_dir(source, unit_dir, &mut findings.found)
    {
        let module = crate::terraform::module_reads(ev, &module_dir);
        findings.found.merge(&module);
    }
    // Terraform files next to terragrunt.hcl run when there is no source; read their modules too.
    if has_sources {
        let own = crate::terraform::module_reads(ev, unit_dir);
        findings.found.merge(&own);
    }
    findings.found = std::mem::take(&mut findings.found).finish();
    findings
}

/// Evaluates a file for `read_terragrunt_config`, in its own directory.
pub(crate) fn evaluate_read_config(ev: &mut Eval<'_>, path: &str) -> ReadConfig {
    let mut found = Collector::default();
    let mut stack = vec![path.to_owned()];
    let outcome = evaluate_config(ev, path, parent(path), Role::Read, &mut stack, &mut found);
    let mut value = BTreeMap::new();
    value.insert("locals".to_owned(), outcome.locals.clone());
    value.insert("inputs".to_owned(), outcome.inputs.clone());
    for (name, attribute) in outcome.attributes.iter() {
        value
            .entry(name.clone())
            .or_insert_with(|| attribute.clone());
    }
    ReadConfig {
        value: Value::object(value),
        found,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The unit's own `terragrunt.hcl`.
    Unit,
    /// A file included by the unit (or by another included file).
    Included,
    /// A file read with `read_terragrunt_config`.
    Read,
}

/// The terraform source as written, with where, for messages.
#[derive(Debug)]
struct Source {
    value: Value,
    file: String,
    line: Option<usize>,
}

/// A file of the include chain that declares dependencies, with what evaluating their paths
/// needs.
#[derive(Debug)]
pub(crate) struct ChainFile {
    file: String,
    parsed: Arc<ParsedFile>,
    locals: BTreeMap<String, Value>,
    variables: BTreeMap<String, Value>,
    includes: Vec<(String, String)>,
}

/// What a configuration file contributes to its unit. Shared (not copied) between the units
/// that reuse an included file's evaluation.
#[derive(Debug)]
struct ConfigOutcome {
    source: Option<Arc<Source>>,
    locals: Value,
    inputs: Value,
    attributes: BTreeMap<String, Value>,
    /// Files of this configuration and its includes with dependency blocks.
    chain: Vec<Arc<ChainFile>>,
}

impl ConfigOutcome {
    fn empty() -> ConfigOutcome {
        ConfigOutcome {
            source: None,
            locals: Value::object(BTreeMap::new()),
            inputs: Value::object(BTreeMap::new()),
            attributes: BTreeMap::new(),
            chain: Vec::new(),
        }
    }
}

/// A remembered evaluation of an included file.
#[derive(Debug)]
pub(crate) struct Included {
    found: Collector,
    outcome: Arc<ConfigOutcome>,
}

fn evaluate_config(
    ev: &mut Eval<'_>,
    file: &str,
    terragrunt_dir: &str,
    role: Role,
    stack: &mut Vec<String>,
    out: &mut Collector,
) -> Arc<ConfigOutcome> {
    out.reads.extend(ev.snapshot.position(file));
    let Some(parsed) = ev.cache.get(ev.snapshot, file) else {
        let message = if ev.snapshot.exists(file) {
            "is not an HCL file (or not valid UTF-8): what it reads is unknown"
        } else {
            "does not exist"
        };
        out.issues.push(Issue {
            file: file.to_owned(),
            line: None,
            message: message.to_owned(),
            uncertain: true,
        });
        return Arc::new(ConfigOutcome::empty());
    };
    let body = match &parsed.body {
        Ok(body) => body,
        Err(_) => {
            out.issues.extend(parsed.syntax_issue(file));
            return Arc::new(ConfigOutcome::empty());
        }
    };
    Arc::new(evaluate_body(
        ev,
        file,
        &parsed,
        body,
        terragrunt_dir,
        role,
        stack,
        out,
    ))
}

/// Evaluates an included file, or reuses an earlier evaluation for a unit in the same directory.
fn evaluate_included(
    ev: &mut Eval<'_>,
    file: &str,
    terragrunt_dir: &str,
    stack: &mut Vec<String>,
    out: &mut Collector,
) -> Arc<ConfigOutcome> {
    let dir = parent(terragrunt_dir);
    if let Some(included) = ev.included.get(file).and_then(|by_dir| by_dir.get(dir)) {
        out.merge(&included.found);
        return included.outcome.clone();
    }
    let outer = std::mem::replace(&mut ev.context_use, ContextUse::Nothing);
    let mut found = Collector::default();
    let outcome = evaluate_config(ev, file, terragrunt_dir, Role::Included, stack, &mut found);
    let found = found.finish();
    let used = ev.context_use;
    ev.context_use = outer.max(used);
    out.merge(&found);
    if used <= ContextUse::ParentDir {
        let included = Arc::new(Included {
            found,
            outcome: outcome.clone(),
        });
        ev.included
            .entry(file.to_owned())
            .or_default()
            .insert(dir.to_owned(), included);
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn evaluate_body(
    ev: &mut Eval<'_>,
    file: &str,
    parsed: &Arc<ParsedFile>,
    body: &Body,
    terragrunt_dir: &str,
    role: Role,
    stack: &mut Vec<String>,
    out: &mut Collector,
) -> ConfigOutcome {
    let file_dir = parent(file).to_owned();
    let self_include = vec![(String::new(), file_dir.clone())];

    // 1. Includes. A unit's are remembered per directory when they resolve the same way for
    // every unit there (the usual `find_in_parent_folders` includes).
    let include_set = if role == Role::Unit {
        unit_includes(ev, file, parsed, body, terragrunt_dir, stack, out)
    } else {
        let set = resolve_includes(ev, file, parsed, body, terragrunt_dir, role, stack);
        out.merge(&set.found);
        Arc::new(set)
    };
    let mut chain = include_set.chain.clone();
    let included_sources = &include_set.sources;

    // 2. Everything else, with locals and exposed includes available.
    let scope_includes = if role == Role::Included {
        self_include
    } else {
        include_set.includes.clone()
    };
    let mut variables = BTreeMap::new();
    variables.insert("include".to_owned(), include_set.exposed.clone());
    let locals = Locals::new([body]);
    let scope = Scope {
        kind: ScopeKind::Terragrunt,
        file,
        parsed,
        dir: terragrunt_dir,
        includes: &scope_includes,
        locals: Some(&locals),
        variables: &variables,
    };
    let mut local_values = BTreeMap::new();
    for name in locals.names() {
        let value = ev.local(name, &scope, out);
        local_values.insert(name.to_owned(), value);
    }

    let mut source = None;
    let mut attributes = BTreeMap::new();
    let mut inputs = Value::object(BTreeMap::new());
    for attribute in body.attributes() {
        let key = attribute.key.as_str();
        // A read configuration's attributes are its value; elsewhere only reads matter.
        if role == Role::Read || (key == "inputs" && role != Role::Unit) {
            let value = ev.eval(&attribute.value, &scope, out);
            if key == "inputs" {
                inputs = value.clone();
            }
            attributes.insert(key.to_owned(), value);
        } else if contains_read_call(&attribute.value) {
            ev.eval(&attribute.value, &scope, out);
        }
    }
    let mut has_dependencies = false;
    for block in body.blocks() {
        match block.ident.as_str() {
            "include" | "locals" => {}
            "terraform" => {
                if let Some(attr) = block.body.get_attribute("source") {
                    let value = ev.eval(&attr.value, &scope, out);
                    let line = attr.value.span().map(|span| parsed.line_of(span.start));
                    source = Some(Arc::new(Source {
                        value,
                        file: file.to_owned(),
                        line,
                    }));
                }
                scan_block(ev, block, &scope, out, &["source"]);
            }
            "dependency" => {
                has_dependencies = true;
                scan_block(ev, block, &scope, out, &["config_path"]);
            }
            "dependencies" => has_dependencies = true,
            _ => scan_block(ev, block, &scope, out, &[]),
        }
    }
    if has_dependencies && role != Role::Read {
        chain.push(Arc::new(ChainFile {
            file: file.to_owned(),
            parsed: parsed.clone(),
            locals: local_values.clone(),
            variables,
            includes: scope_includes.clone(),
        }));
    }

    // The unit's own source wins over an included one, as Terragrunt merges them.
    let source = source.or_else(|| included_sources.first().cloned());
    ConfigOutcome {
        source,
        locals: Value::object(local_values),
        inputs,
        attributes,
        chain,
    }
}

/// What a configuration's include blocks bring: the included directories, their exposed
/// values, terraform sources and dependency chains, and what resolving them read.
#[derive(Debug)]
pub(crate) struct IncludeSet {
    found: Collector,
    includes: Vec<(String, String)>,
    exposed: Value,
    sources: Vec<Arc<Source>>,
    chain: Vec<Arc<ChainFile>>,
    /// Whether the same include blocks resolve the same way for every unit of the directory.
    portable: bool,
}

/// A unit's includes, remembered by (the text of its include blocks, the directory above it).
fn unit_includes(
    ev: &mut Eval<'_>,
    file: &str,
    parsed: &Arc<ParsedFile>,
    body: &Body,
    terragrunt_dir: &str,
    stack: &mut Vec<String>,
    out: &mut Collector,
) -> Arc<IncludeSet> {
    let key: String = body
        .get_blocks("include")
        .filter_map(|block| block.span())
        .map(|span| parsed.source(span))
        .collect();
    let dir = parent(terragrunt_dir);
    if let Some(set) = ev
        .unit_includes
        .get(&key)
        .and_then(|by_dir| by_dir.get(dir))
    {
        out.merge(&set.found);
        return set.clone();
    }
    let set = Arc::new(resolve_includes(
        ev,
        file,
        parsed,
        body,
        terragrunt_dir,
        Role::Unit,
        stack,
    ));
    out.merge(&set.found);
    if set.portable && !key.is_empty() {
        ev.unit_includes
            .entry(key)
            .or_default()
            .insert(dir.to_owned(), set.clone());
    }
    set
}

/// Resolves and evaluates the include blocks of a configuration. Their paths may use functions
/// but not locals, as in Terragrunt.
fn resolve_includes(
    ev: &mut Eval<'_>,
    file: &str,
    parsed: &Arc<ParsedFile>,
    body: &Body,
    terragrunt_dir: &str,
    role: Role,
    stack: &mut Vec<String>,
) -> IncludeSet {
    let no_variables = BTreeMap::new();
    let file_dir = parent(file).to_owned();
    let self_include = vec![(String::new(), file_dir.clone())];
    let outer = std::mem::replace(&mut ev.context_use, ContextUse::Nothing);
    let mut found = Collector::default();
    let mut set = IncludeSet {
        found: Collector::default(),
        includes: Vec::new(),
        exposed: Value::Null,
        sources: Vec::new(),
        chain: Vec::new(),
        portable: true,
    };
    let mut exposed = BTreeMap::new();
    for block in body.get_blocks("include") {
        let scope = Scope {
            kind: ScopeKind::Terragrunt,
            file,
            parsed,
            dir: terragrunt_dir,
            includes: if role == Role::Included {
                &self_include
            } else {
                &[]
            },
            locals: None,
            variables: &no_variables,
        };
        let label = block
            .labels
            .first()
            .map(|l| l.as_str().to_owned())
            .unwrap_or_default();
        let Some(path_attr) = block.body.get_attribute("path") else {
            continue;
        };
        let value = ev.eval(&path_attr.value, &scope, &mut found);
        // A relative include path resolves against the including file's directory.
        set.portable &= value.as_str().is_some_and(|path| path.starts_with('/'));
        let Some(target) = path_of(&value, &file_dir) else {
            found.issues.push(issue_at(
                file,
                parsed,
                &path_attr.value,
                format!("cannot resolve the include path: {}", why(&value)),
                true,
            ));
            continue;
        };
        if stack.contains(&target) || stack.len() >= MAX_DEPTH {
            found.issues.push(issue_at(
                file,
                parsed,
                &path_attr.value,
                format!("include cycle through {target}"),
                true,
            ));
            continue;
        }
        stack.push(target.clone());
        let included = evaluate_included(ev, &target, terragrunt_dir, stack, &mut found);
        stack.pop();
        let mut fields = BTreeMap::new();
        fields.insert("locals".to_owned(), included.locals.clone());
        fields.insert("inputs".to_owned(), included.inputs.clone());
        exposed.insert(label.clone(), Value::object(fields));
        set.includes.push((label, parent(&target).to_owned()));
        set.sources.extend(included.source.clone());
        set.chain.extend(included.chain.iter().cloned());
    }
    set.exposed = Value::object(exposed);
    set.portable &= ev.context_use <= ContextUse::ParentDir && found.issues.is_empty();
    ev.context_use = outer.max(ev.context_use);
    set.found = found;
    set
}

/// Evaluates every attribute of a block (and nested blocks) that calls a reading function.
fn scan_block(
    ev: &mut Eval<'_>,
    block: &Block,
    scope: &Scope<'_>,
    out: &mut Collector,
    skip: &[&str],
) {
    for attribute in block.body.attributes() {
        if !skip.contains(&attribute.key.as_str()) && contains_read_call(&attribute.value) {
            ev.eval(&attribute.value, scope, out);
        }
    }
    for inner in block.body.blocks() {
        scan_block(ev, inner, scope, out, &[]);
    }
}

/// The units a unit depends on, from the `dependency` and `dependencies` blocks of its include
/// chain. Separate from [`evaluate_unit`] because detection needs them only for some units.
pub(crate) fn unit_dependencies(
    ev: &mut Eval<'_>,
    chain: &[Arc<ChainFile>],
    unit_dir: &str,
) -> (BTreeSet<String>, Vec<Issue>) {
    let mut found = Collector::default();
    let dependencies = chain_dependencies(ev, chain, unit_dir, &mut found);
    (dependencies, found.issues)
}

/// The units the include chain's `dependency` and `dependencies` blocks name, evaluated for
/// this unit.
fn chain_dependencies(
    ev: &mut Eval<'_>,
    chain: &[Arc<ChainFile>],
    terragrunt_dir: &str,
    out: &mut Collector,
) -> BTreeSet<String> {
    let mut dependencies = BTreeSet::new();
    for link in chain {
        let Ok(body) = &link.parsed.body else {
            continue;
        };
        let locals = Locals::prefilled([body], &link.locals);
        let scope = Scope {
            kind: ScopeKind::Terragrunt,
            file: &link.file,
            parsed: &link.parsed,
            dir: terragrunt_dir,
            includes: &link.includes,
            locals: Some(&locals),
            variables: &link.variables,
        };
        for block in body.blocks() {
            let attribute = match block.ident.as_str() {
                "dependency" => block.body.get_attribute("config_path"),
                "dependencies" => block.body.get_attribute("paths"),
                _ => None,
            };
            if let Some(attribute) = attribute {
                let value = ev.eval(&attribute.value, &scope, out);
                dependency_paths(
                    &value,
                    terragrunt_dir,
                    &link.file,
                    &link.parsed,
                    &attribute.value,
                    &mut dependencies,
                    out,
                );
            }
        }
    }
    dependencies
}

fn dependency_paths(
    value: &Value,
    terragrunt_dir: &str,
    file: &str,
    parsed: &ParsedFile,
    expr: &Expression,
    dependencies: &mut BTreeSet<String>,
    out: &mut Collector,
) {
    let values: Vec<&Value> = match value {
        Value::List(items) => items.iter().collect(),
        other => vec![other],
    };
    for value in values {
        match path_of(value, terragrunt_dir) {
            Some(path) => {
                // `config_path` may name the dependency's terragrunt.hcl rather than its directory.
                let dir = if file_name(&path).ends_with(".hcl") {
                    parent(&path).to_owned()
                } else {
                    path
                };
                dependencies.insert(dir);
            }
            None => out.issues.push(issue_at(
                file,
                parsed,
                expr,
                format!(
                    "cannot resolve a dependency path: {}; the run may be ordered without it",
                    why(value)
                ),
                false,
            )),
        }
    }
}

/// The module directory of a local `terraform { source }`, or `None` for remote sources.
fn local_source_dir(source: &Source, unit_dir: &str, out: &mut Collector) -> Option<String> {
    let Some(text) = source.value.as_string() else {
        out.issues.push(Issue {
            file: source.file.clone(),
            line: source.line,
            message: format!("cannot resolve terraform.source: {}", why(&source.value)),
            uncertain: true,
        });
        return None;
    };
    let local = text.starts_with("./") || text.starts_with("../") || text.starts_with('/');
    if !local {
        return None;
    }
    let without_query = text.split('?').next().unwrap_or_default();
    // `root//subdir`: Terragrunt copies `root` and runs in `subdir`.
    let (root, subdir) = match without_query.find("//") {
        Some(i) => (&without_query[..i], &without_query[i + 2..]),
        None => (without_query, ""),
    };
    let Some(root) = resolve(root, unit_dir) else {
        out.issues.push(Issue {
            file: source.file.clone(),
            line: source.line,
            message: format!("terraform.source {text:?} is outside the repository"),
            uncertain: false,
        });
        return None;
    };
    if subdir.is_empty() {
        Some(root)
    } else {
        join(&root, subdir)
    }
}

fn path_of(value: &Value, base_dir: &str) -> Option<String> {
    resolve(&value.as_string()?, base_dir)
}

fn why(value: &Value) -> String {
    match value.unknown_reason() {
        Some(reason) => reason.to_owned(),
        None if value.as_string().is_some() => "it leaves the repository".to_owned(),
        None => "not a string".to_owned(),
    }
}

fn issue_at(
    file: &str,
    parsed: &ParsedFile,
    expr: &Expression,
    message: String,
    uncertain: bool,
) -> Issue {
    Issue {
        file: file.to_owned(),
        line: expr.span().map(|span| parsed.line_of(span.start)),
        message,
        uncertain,
    }
}
