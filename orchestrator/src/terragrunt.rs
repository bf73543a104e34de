//! Terragrunt units: what a `terragrunt.hcl` reads (through includes, nested includes,
//! `read_terragrunt_config`, file functions and a local `terraform { source }`) and which units it
//! depends on. Pure.
//!
//! Evaluation follows Terragrunt: an included file is evaluated in the context of the unit that
//! includes it (`get_terragrunt_dir()` and `find_in_parent_folders()` start from the unit), while
//! a file read with `read_terragrunt_config` is evaluated in its own directory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hcl::edit::Span;
use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block, Body};

use crate::hcl::{Collector, Eval, Issue, ParsedFile, Scope, ScopeKind, Value, resolve};
use crate::hcl::{ReadConfig, contains_read_call};
use crate::paths::{file_name, join, parent};

/// How deep includes and reads may nest before we call it a cycle.
const MAX_DEPTH: usize = 16;

/// What evaluating a unit found.
#[derive(Debug, Default)]
pub(crate) struct UnitFindings {
    pub(crate) found: Collector,
    pub(crate) dependencies: BTreeSet<String>,
}

/// Evaluates the Terragrunt unit in `unit_dir`.
pub(crate) fn evaluate_unit(ev: &mut Eval<'_>, unit_dir: &str) -> UnitFindings {
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
    findings.dependencies = outcome.dependencies;
    if let Some(source) = outcome.source
        && let Some(module_dir) = local_source_dir(&source, unit_dir, &mut findings.found)
    {
        let module = crate::terraform::module_reads(ev, &module_dir);
        findings.found.merge(&module);
    }
    // Terraform files next to terragrunt.hcl run when there is no source; read their modules too.
    if ev
        .snapshot
        .files_in(unit_dir)
        .any(crate::terraform::is_terraform_source)
    {
        let own = crate::terraform::module_reads(ev, unit_dir);
        findings.found.merge(&own);
    }
    findings
}

/// Evaluates a file for `read_terragrunt_config`, in its own directory.
pub(crate) fn evaluate_read_config(ev: &mut Eval<'_>, path: &str) -> ReadConfig {
    let mut found = Collector::default();
    let mut stack = vec![path.to_owned()];
    let outcome = evaluate_config(ev, path, parent(path), Role::Read, &mut stack, &mut found);
    let mut value = BTreeMap::new();
    value.insert("locals".to_owned(), outcome.locals);
    value.insert("inputs".to_owned(), outcome.inputs);
    for (name, attribute) in outcome.attributes {
        value.entry(name).or_insert(attribute);
    }
    ReadConfig {
        value: Value::Object(value),
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
#[derive(Debug, Clone)]
struct Source {
    value: Value,
    file: String,
    line: Option<usize>,
}

#[derive(Debug)]
struct ConfigOutcome {
    source: Option<Source>,
    dependencies: BTreeSet<String>,
    locals: Value,
    inputs: Value,
    attributes: BTreeMap<String, Value>,
}

impl ConfigOutcome {
    fn empty() -> ConfigOutcome {
        ConfigOutcome {
            source: None,
            dependencies: BTreeSet::new(),
            locals: Value::Object(BTreeMap::new()),
            inputs: Value::Object(BTreeMap::new()),
            attributes: BTreeMap::new(),
        }
    }
}

fn evaluate_config(
    ev: &mut Eval<'_>,
    file: &str,
    terragrunt_dir: &str,
    role: Role,
    stack: &mut Vec<String>,
    out: &mut Collector,
) -> ConfigOutcome {
    out.reads.insert(file.to_owned());
    let Some(parsed) = ev.cache.get(ev.snapshot, file) else {
        let message = if ev.snapshot.exists(file) {
            "not valid UTF-8"
        } else {
            "does not exist"
        };
        out.issues.push(Issue {
            file: file.to_owned(),
            line: None,
            message: message.to_owned(),
            uncertain: true,
        });
        return ConfigOutcome::empty();
    };
    let body = match &parsed.body {
        Ok(body) => body,
        Err(_) => {
            out.issues.extend(parsed.syntax_issue(file));
            return ConfigOutcome::empty();
        }
    };
    evaluate_body(ev, file, &parsed, body, terragrunt_dir, role, stack, out)
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
    let no_variables = BTreeMap::new();
    let file_dir = parent(file).to_owned();

    // 1. Includes: their paths may use functions but not locals, as in Terragrunt.
    let mut includes: Vec<(String, String)> = Vec::new();
    let mut exposed = BTreeMap::new();
    let mut included_sources = Vec::new();
    let mut dependencies = BTreeSet::new();
    {
        let self_include = [(String::new(), file_dir.clone())];
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
        for block in body.get_blocks("include") {
            let label = block
                .labels
                .first()
                .map(|l| l.as_str().to_owned())
                .unwrap_or_default();
            let Some(path_attr) = block.body.get_attribute("path") else {
                continue;
            };
            let value = ev.eval(&path_attr.value, &scope, out);
            let Some(target) = path_of(&value, &file_dir) else {
                out.issues.push(issue_at(
                    file,
                    parsed,
                    &path_attr.value,
                    format!("cannot resolve the include path: {}", why(&value)),
                    true,
                ));
                continue;
            };
            if stack.contains(&target) || stack.len() >= MAX_DEPTH {
                out.issues.push(issue_at(
                    file,
                    parsed,
                    &path_attr.value,
                    format!("include cycle through {target}"),
                    true,
                ));
                continue;
            }
            stack.push(target.clone());
            let outcome = evaluate_config(ev, &target, terragrunt_dir, Role::Included, stack, out);
            stack.pop();
            let mut fields = BTreeMap::new();
            fields.insert("locals".to_owned(), outcome.locals.clone());
            fields.insert("inputs".to_owned(), outcome.inputs.clone());
            exposed.insert(label.clone(), Value::Object(fields));
            includes.push((label, parent(&target).to_owned()));
            included_sources.extend(outcome.source);
            dependencies.extend(outcome.dependencies);
        }
    }

    // 2. Everything else, with locals and exposed includes available.
    let self_include = [(String::new(), file_dir.clone())];
    let scope_includes: &[(String, String)] = if role == Role::Included {
        &self_include
    } else {
        &includes
    };
    let mut variables = BTreeMap::new();
    variables.insert("include".to_owned(), Value::Object(exposed));
    let locals = crate::hcl::Locals::new([body]);
    let scope = Scope {
        kind: ScopeKind::Terragrunt,
        file,
        parsed,
        dir: terragrunt_dir,
        includes: scope_includes,
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
    let mut inputs = Value::Object(BTreeMap::new());
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
    for block in body.blocks() {
        match block.ident.as_str() {
            "include" | "locals" => {}
            "terraform" => {
                if let Some(attr) = block.body.get_attribute("source") {
                    let value = ev.eval(&attr.value, &scope, out);
                    let line = attr.value.span().map(|span| parsed.line_of(span.start));
                    source = Some(Source {
                        value,
                        file: file.to_owned(),
                        line,
                    });
                }
                scan_block(ev, block, &scope, out, &["source"]);
            }
            "dependency" => {
                if let Some(attr) = block.body.get_attribute("config_path") {
                    let value = ev.eval(&attr.value, &scope, out);
                    dependency_paths(
                        &value,
                        terragrunt_dir,
                        file,
                        parsed,
                        &attr.value,
                        &mut dependencies,
                        out,
                    );
                }
                scan_block(ev, block, &scope, out, &["config_path"]);
            }
            "dependencies" => {
                if let Some(attr) = block.body.get_attribute("paths") {
                    let value = ev.eval(&attr.value, &scope, out);
                    dependency_paths(
                        &value,
                        terragrunt_dir,
                        file,
                        parsed,
                        &attr.value,
                        &mut dependencies,
                        out,
                    );
                }
            }
            _ => scan_block(ev, block, &scope, out, &[]),
        }
    }

    // The unit's own source wins over an included one, as Terragrunt merges them.
    let source = source.or_else(|| included_sources.into_iter().next());
    ConfigOutcome {
        source,
        dependencies,
        locals: Value::Object(local_values),
        inputs,
        attributes,
    }
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
    let root = match resolve(root, unit_dir) {
        Some(root) => root,
        None => {
            out.issues.push(Issue {
                file: source.file.clone(),
                line: source.line,
                message: format!("terraform.source {text:?} is outside the repository"),
                uncertain: false,
            });
            return None;
        }
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
