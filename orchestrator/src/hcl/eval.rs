//! The expression evaluator: HCL expressions, lazily evaluated locals, and the Terragrunt and
//! Terraform functions that matter for finding reads. Every read it performs is recorded in a
//! [`Collector`]; every path it cannot resolve becomes an uncertain [`Issue`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use hcl::edit::Span;
use hcl::edit::expr::{
    BinaryOperator, Expression, ForExpr, FuncCall, ObjectKey, TraversalOperator, UnaryOperator,
};
use hcl::edit::structure::Body;
use hcl::edit::template::{Element, Template};

use crate::fast_hash::{FastMap, FastSet};
use crate::hcl::parse::{ParseCache, ParsedFile};
use crate::hcl::value::Value;
use crate::hcl::{Issue, REPO_ROOT, absolute, resolve};
use crate::paths::parent;
use crate::snapshot::Snapshot;

/// Functions whose calls read files: the ones worth evaluating wherever they appear.
const READ_FUNCTIONS: &[&str] = &[
    "file",
    "templatefile",
    "fileset",
    "filebase64",
    "filemd5",
    "filesha1",
    "filesha256",
    "filesha512",
    "fileexists",
    "read_terragrunt_config",
    "mark_as_read",
    "sops_decrypt_file",
    "read_tfvars_file",
];

pub(crate) fn is_read_function(name: &str) -> bool {
    READ_FUNCTIONS.contains(&name)
}

/// What evaluation found: files read, and problems.
#[derive(Debug, Clone, Default)]
pub(crate) struct Collector {
    /// Files read, as positions in the snapshot's file list (see [`Snapshot::position`]). Files
    /// that do not exist at the commit are not recorded: a changed file always exists on the side
    /// it is judged on. May hold repeats until [`Collector::finish`].
    pub(crate) reads: Vec<u32>,
    pub(crate) issues: Vec<Issue>,
}

impl Collector {
    pub(crate) fn merge(&mut self, other: &Collector) {
        self.reads.extend_from_slice(&other.reads);
        self.issues.extend(other.issues.iter().cloned());
    }

    /// Sorts and removes repeats: appending and sorting once is much cheaper than keeping a
    /// set through thousands of merges.
    pub(crate) fn finish(mut self) -> Collector {
        self.reads.sort_unstable();
        self.reads.dedup();
        self.issues.sort();
        self.issues.dedup();
        self
    }
}

/// Terragrunt configuration or Terraform source: they offer different functions and variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScopeKind {
    Terragrunt,
    Terraform,
}

/// Where an expression is evaluated.
pub(crate) struct Scope<'a> {
    pub(crate) kind: ScopeKind,
    /// The file the expression is in (repo path), for messages.
    pub(crate) file: &'a str,
    pub(crate) parsed: &'a ParsedFile,
    /// `get_terragrunt_dir()` (the unit, or a read configuration's own directory); Terraform:
    /// `path.module`. Relative paths resolve against it.
    pub(crate) dir: &'a str,
    /// Included configurations as (label, directory), for `get_parent_terragrunt_dir` and
    /// `path_relative_*_include`. An included file sees itself here.
    pub(crate) includes: &'a [(String, String)],
    pub(crate) locals: Option<&'a Locals<'a>>,
    /// Other top-level variables (`include`, `path`, loop variables).
    pub(crate) variables: &'a BTreeMap<String, Value>,
}

/// The `locals` of a configuration, evaluated on first use and remembered.
pub(crate) struct Locals<'a> {
    exprs: FastMap<&'a str, &'a Expression>,
    /// Values already known from an earlier evaluation of the same file.
    known: Option<&'a BTreeMap<String, Value>>,
    memo: RefCell<FastMap<String, Value>>,
    active: RefCell<FastSet<String>>,
}

impl<'a> Locals<'a> {
    /// Collects the attributes of every `locals` block of the given bodies.
    pub(crate) fn new(bodies: impl IntoIterator<Item = &'a Body>) -> Locals<'a> {
        let mut exprs = FastMap::default();
        for body in bodies {
            for block in body.get_blocks("locals") {
                for attribute in block.body.attributes() {
                    exprs.insert(attribute.key.as_str(), &attribute.value);
                }
            }
        }
        Locals {
            exprs,
            known: None,
            memo: RefCell::new(FastMap::default()),
            active: RefCell::new(FastSet::default()),
        }
    }

    /// Locals whose values are already known (from an earlier evaluation of the same file).
    pub(crate) fn prefilled(
        bodies: impl IntoIterator<Item = &'a Body>,
        values: &'a BTreeMap<String, Value>,
    ) -> Locals<'a> {
        Locals {
            known: Some(values),
            ..Locals::new(bodies)
        }
    }

    pub(crate) fn names(&self) -> Vec<&'a str> {
        let mut names: Vec<&str> = self.exprs.keys().copied().collect();
        names.sort_unstable();
        names
    }
}

/// A configuration read with `read_terragrunt_config`: its value and what reading it read.
#[derive(Debug)]
pub(crate) struct ReadConfig {
    pub(crate) value: Value,
    pub(crate) found: Collector,
}

/// How much of the evaluating unit's position an evaluation depended on: what decides whether
/// its result can be reused for other units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ContextUse {
    /// Nothing about the unit.
    Nothing,
    /// The directory above the unit (`find_in_parent_folders` starts there).
    ParentDir,
    /// The unit's own directory (`get_terragrunt_dir`, relative paths, ...).
    UnitDir,
}

/// Evaluation state shared by every unit evaluated on one thread: the snapshot, the parse
/// cache, and memos of context-free results.
pub(crate) struct Eval<'s> {
    pub(crate) snapshot: &'s Snapshot,
    pub(crate) cache: &'s ParseCache,
    read_configs: FastMap<String, Arc<ReadConfig>>,
    reading: FastSet<String>,
    pub(crate) modules: FastMap<String, Arc<Collector>>,
    /// `find_in_parent_folders` answers by name, then starting directory.
    found_above: FastMap<String, FastMap<String, Option<String>>>,
    /// What the evaluation in progress used of the unit's position.
    pub(crate) context_use: ContextUse,
    /// Evaluations of included files, by (file, directory above the unit), for those that used
    /// no more than that directory. Owned by `terragrunt`.
    pub(crate) included: FastMap<String, FastMap<String, Arc<crate::terragrunt::Included>>>,
    /// Units' include blocks, by (their text, directory above the unit). Owned by `terragrunt`.
    pub(crate) unit_includes: FastMap<String, FastMap<String, Arc<crate::terragrunt::IncludeSet>>>,
}

impl<'s> Eval<'s> {
    pub(crate) fn new(snapshot: &'s Snapshot, cache: &'s ParseCache) -> Eval<'s> {
        Eval {
            snapshot,
            cache,
            read_configs: FastMap::default(),
            reading: FastSet::default(),
            modules: FastMap::default(),
            found_above: FastMap::default(),
            context_use: ContextUse::Nothing,
            included: FastMap::default(),
            unit_includes: FastMap::default(),
        }
    }

    /// Records that the evaluation in progress depends on `used` of the unit's position.
    pub(crate) fn note(&mut self, used: ContextUse) {
        self.context_use = self.context_use.max(used);
    }

    fn issue(
        &self,
        scope: &Scope<'_>,
        expr: &Expression,
        message: String,
        uncertain: bool,
    ) -> Issue {
        Issue {
            file: scope.file.to_owned(),
            line: expr.span().map(|span| scope.parsed.line_of(span.start)),
            message,
            uncertain,
        }
    }

    /// Evaluates `expr`, recording reads and problems in `out`.
    pub(crate) fn eval(
        &mut self,
        expr: &Expression,
        scope: &Scope<'_>,
        out: &mut Collector,
    ) -> Value {
        match expr {
            Expression::Null(_) => Value::Null,
            Expression::Bool(b) => Value::Bool(*b.value()),
            Expression::Number(n) => n
                .value()
                .as_f64()
                .map_or_else(|| Value::unknown("number"), Value::Number),
            Expression::String(s) => Value::String(s.value().clone()),
            Expression::Array(items) => Value::list(
                items
                    .iter()
                    .map(|item| self.eval(item, scope, out))
                    .collect(),
            ),
            Expression::Object(object) => {
                let mut fields = BTreeMap::new();
                for (key, value) in object.iter() {
                    let name = match key {
                        ObjectKey::Ident(ident) => Some(ident.as_str().to_owned()),
                        ObjectKey::Expression(key) => self.eval(key, scope, out).as_string(),
                    };
                    let value = self.eval(value.expr(), scope, out);
                    match name {
                        Some(name) => {
                            fields.insert(name, value);
                        }
                        None => return Value::unknown("object key is not a known string"),
                    }
                }
                Value::object(fields)
            }
            Expression::StringTemplate(template) => self.template(template, scope, out),
            Expression::HeredocTemplate(heredoc) => self.template(&heredoc.template, scope, out),
            Expression::Parenthesis(inner) => self.eval(inner.inner(), scope, out),
            Expression::Variable(name) => self.variable(name.as_str(), scope, out),
            Expression::Conditional(cond) => {
                match self.eval(&cond.cond_expr, scope, out).truthy() {
                    Some(true) => self.eval(&cond.true_expr, scope, out),
                    Some(false) => self.eval(&cond.false_expr, scope, out),
                    None => {
                        // Both branches may read; evaluate both so their reads are known.
                        self.eval(&cond.true_expr, scope, out);
                        self.eval(&cond.false_expr, scope, out);
                        Value::unknown("condition is not known statically")
                    }
                }
            }
            Expression::FuncCall(call) => self.call(call, expr, scope, out),
            Expression::Traversal(traversal) => {
                let mut operators = traversal.operators.iter().map(|op| op.value()).peekable();
                // `local.NAME` evaluates just that local.
                let mut value = match (&traversal.expr, operators.peek()) {
                    (Expression::Variable(var), Some(TraversalOperator::GetAttr(name)))
                        if var.as_str() == "local" =>
                    {
                        let name = name.as_str().to_owned();
                        operators.next();
                        self.local(&name, scope, out)
                    }
                    _ => self.eval(&traversal.expr, scope, out),
                };
                for operator in operators {
                    value = match operator {
                        TraversalOperator::GetAttr(name) => value.get_attr(name.as_str()),
                        TraversalOperator::Index(index) => {
                            let key = self.eval(index, scope, out);
                            value.index(&key)
                        }
                        TraversalOperator::LegacyIndex(index) => {
                            value.index(&Value::Number(*index.value() as f64))
                        }
                        TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => {
                            Value::unknown("splat expressions are not evaluated")
                        }
                    };
                }
                value
            }
            Expression::UnaryOp(op) => {
                let value = self.eval(&op.expr, scope, out);
                match (op.operator.value(), value) {
                    (UnaryOperator::Not, Value::Bool(b)) => Value::Bool(!b),
                    (UnaryOperator::Neg, Value::Number(n)) => Value::Number(-n),
                    (_, unknown @ Value::Unknown(_)) => unknown,
                    _ => Value::unknown("invalid operand"),
                }
            }
            Expression::BinaryOp(op) => {
                let lhs = self.eval(&op.lhs_expr, scope, out);
                let rhs = self.eval(&op.rhs_expr, scope, out);
                binary(*op.operator.value(), lhs, rhs)
            }
            Expression::ForExpr(for_expr) => self.for_expr(for_expr, scope, out),
        }
    }

    fn template(&mut self, template: &Template, scope: &Scope<'_>, out: &mut Collector) -> Value {
        let mut text = String::new();
        let mut unknown = None;
        for element in template.iter() {
            match element {
                Element::Literal(literal) => text.push_str(literal.value()),
                Element::Interpolation(interpolation) => {
                    let value = self.eval(&interpolation.expr, scope, out);
                    match value.as_string() {
                        Some(part) => text.push_str(&part),
                        None => {
                            unknown.get_or_insert_with(|| {
                                value
                                    .unknown_reason()
                                    .unwrap_or("interpolated value is not a string")
                                    .to_owned()
                            });
                        }
                    }
                }
                Element::Directive(_) => {
                    unknown
                        .get_or_insert_with(|| "template directives are not evaluated".to_owned());
                }
            }
        }
        match unknown {
            Some(why) => Value::unknown(why),
            None => Value::String(text),
        }
    }

    fn variable(&mut self, name: &str, scope: &Scope<'_>, out: &mut Collector) -> Value {
        if let Some(value) = scope.variables.get(name) {
            return value.clone();
        }
        if name == "local" {
            let Some(locals) = scope.locals else {
                return Value::unknown("locals are not available here");
            };
            let mut fields = BTreeMap::new();
            for local in locals.names() {
                let value = self.local(local, scope, out);
                fields.insert(local.to_owned(), value);
            }
            return Value::object(fields);
        }
        match name {
            "dependency" => Value::unknown_because("dependency outputs are only known at run time"),
            "var" => Value::unknown_because("variables are only known at run time"),
            _ => Value::unknown(format!("`{name}` is only known at run time")),
        }
    }

    /// Evaluates (once) and returns a local.
    pub(crate) fn local(&mut self, name: &str, scope: &Scope<'_>, out: &mut Collector) -> Value {
        let Some(locals) = scope.locals else {
            return Value::unknown("locals are not available here");
        };
        if let Some(value) = locals.known.and_then(|known| known.get(name)) {
            return value.clone();
        }
        if let Some(value) = locals.memo.borrow().get(name) {
            return value.clone();
        }
        let Some(expr) = locals.exprs.get(name).copied() else {
            return Value::unknown(format!("local.{name} is not defined"));
        };
        if !locals.active.borrow_mut().insert(name.to_owned()) {
            return Value::unknown(format!("local.{name} refers to itself"));
        }
        let value = self.eval(expr, scope, out);
        locals.active.borrow_mut().remove(name);
        locals
            .memo
            .borrow_mut()
            .insert(name.to_owned(), value.clone());
        value
    }

    fn for_expr(&mut self, for_expr: &ForExpr, scope: &Scope<'_>, out: &mut Collector) -> Value {
        let collection = self.eval(&for_expr.intro.collection_expr, scope, out);
        let items: Vec<(Value, Value)> = match collection {
            Value::List(items) => items
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, v)| (Value::Number(i as f64), v))
                .collect(),
            Value::Object(fields) => fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .map(|(k, v)| (Value::String(k), v))
                .collect(),
            unknown @ Value::Unknown(_) => return unknown,
            _ => return Value::unknown("for expression over a non-collection"),
        };
        let mut list = Vec::new();
        let mut object = BTreeMap::new();
        for (key, value) in items {
            let mut variables = scope.variables.clone();
            if let Some(key_var) = &for_expr.intro.key_var {
                variables.insert(key_var.as_str().to_owned(), key);
            }
            variables.insert(for_expr.intro.value_var.as_str().to_owned(), value);
            let inner = Scope {
                variables: &variables,
                ..*scope
            };
            if let Some(cond) = &for_expr.cond {
                match self.eval(&cond.expr, &inner, out).truthy() {
                    Some(true) => {}
                    Some(false) => continue,
                    None => return Value::unknown("for condition is not known statically"),
                }
            }
            let item = self.eval(&for_expr.value_expr, &inner, out);
            match &for_expr.key_expr {
                Some(key_expr) => match self.eval(key_expr, &inner, out).as_string() {
                    Some(key) => {
                        object.insert(key, item);
                    }
                    None => return Value::unknown("for key is not known statically"),
                },
                None => list.push(item),
            }
        }
        match for_expr.key_expr {
            Some(_) => Value::object(object),
            None => Value::list(list),
        }
    }

    fn call(
        &mut self,
        call: &FuncCall,
        expr: &Expression,
        scope: &Scope<'_>,
        out: &mut Collector,
    ) -> Value {
        let name = call.name.name.as_str();
        if !call.name.namespace.is_empty() {
            return Value::unknown(format!("provider function {name}"));
        }
        // `try` must not evaluate eagerly-failing arguments into errors: take the first known.
        if name == "try" || name == "coalesce" {
            for arg in call.args.iter() {
                let value = self.eval(arg, scope, out);
                if !value.is_unknown()
                    && !(name == "coalesce"
                        && (value == Value::Null || value == Value::String(String::new())))
                {
                    return value;
                }
            }
            return Value::unknown(format!("no argument of {name}() is known statically"));
        }
        let args: Vec<Value> = call
            .args
            .iter()
            .map(|arg| self.eval(arg, scope, out))
            .collect();
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
        let terragrunt = scope.kind == ScopeKind::Terragrunt;
        match name {
            // Reads.
            "file" | "filebase64" | "filemd5" | "filesha1" | "filesha256" | "filesha512"
            | "sops_decrypt_file" | "read_tfvars_file" => {
                self.record_read(&arg(0), name, expr, scope, out);
                Value::unknown(format!("contents of a file read with {name}()"))
            }
            "templatefile" => {
                self.record_read(&arg(0), name, expr, scope, out);
                Value::unknown("rendered template")
            }
            "mark_as_read" => {
                self.record_read(&arg(0), name, expr, scope, out);
                arg(0)
            }
            "fileexists" => match self.record_read(&arg(0), name, expr, scope, out) {
                Some(path) => Value::Bool(self.snapshot.exists(&path)),
                None => Value::unknown("fileexists of an unknown path"),
            },
            "fileset" => self.fileset(&arg(0), &arg(1), expr, scope, out),
            "read_terragrunt_config" if terragrunt => {
                let Some(path) = self.record_read(&arg(0), name, expr, scope, out) else {
                    return Value::unknown("read_terragrunt_config of an unknown path");
                };
                if !self.snapshot.exists(&path) && args.len() > 1 {
                    return arg(1);
                }
                let read = self.read_config(&path);
                out.merge(&read.found);
                read.value.clone()
            }

            // Terragrunt paths.
            "find_in_parent_folders" if terragrunt => {
                let target = match arg(0) {
                    Value::Null => "terragrunt.hcl".to_owned(),
                    value => match value.as_string() {
                        Some(name) => name,
                        None => return value,
                    },
                };
                self.note(ContextUse::ParentDir);
                match self.find_above(parent_dir_of(scope.dir), &target) {
                    Some(found) => Value::String(absolute(&found)),
                    None => match args.get(1) {
                        Some(fallback) => fallback.clone(),
                        None => {
                            Value::unknown(format!("no {target} in any folder above {}", scope.dir))
                        }
                    },
                }
            }
            "get_terragrunt_dir" | "get_original_terragrunt_dir" if terragrunt => {
                self.note(ContextUse::UnitDir);
                Value::String(absolute(scope.dir))
            }
            "get_repo_root" if terragrunt => Value::String(REPO_ROOT.to_owned()),
            "get_path_to_repo_root" if terragrunt => {
                self.note(ContextUse::UnitDir);
                Value::String(relative_path(scope.dir, ""))
            }
            "get_path_from_repo_root" if terragrunt => {
                self.note(ContextUse::UnitDir);
                Value::String(if scope.dir.is_empty() {
                    ".".to_owned()
                } else {
                    scope.dir.to_owned()
                })
            }
            "get_parent_terragrunt_dir" if terragrunt => match include_dir(scope, &arg(0)) {
                Some(dir) => Value::String(absolute(dir)),
                None => Value::unknown("get_parent_terragrunt_dir outside an include"),
            },
            "path_relative_to_include" if terragrunt => {
                self.note(ContextUse::UnitDir);
                match include_dir(scope, &arg(0)) {
                    Some(dir) => Value::String(relative_path(dir, scope.dir)),
                    None => Value::String(".".to_owned()),
                }
            }
            "path_relative_from_include" if terragrunt => {
                self.note(ContextUse::UnitDir);
                match include_dir(scope, &arg(0)) {
                    Some(dir) => Value::String(relative_path(scope.dir, dir)),
                    None => Value::String(".".to_owned()),
                }
            }
            "get_env"
            | "get_aws_account_id"
            | "get_aws_caller_identity_arn"
            | "get_aws_caller_identity_user_id"
            | "run_cmd"
            | "get_terraform_command"
            | "get_terraform_cli_args"
            | "get_platform" => Value::unknown(format!("{name}() is only known at run time")),

            // Paths and strings.
            "dirname" => string_fn(&arg(0), |s| parent_of_path(s).to_owned()),
            "basename" => string_fn(&arg(0), |s| {
                s.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            }),
            "abspath" | "pathexpand" | "tostring" | "trimspace" => string_fn(&arg(0), |s| {
                if name == "trimspace" {
                    s.trim().to_owned()
                } else {
                    s.to_owned()
                }
            }),
            "lower" => string_fn(&arg(0), str::to_lowercase),
            "upper" => string_fn(&arg(0), str::to_uppercase),
            "trimprefix" => two_strings(&arg(0), &arg(1), |s, p| {
                s.strip_prefix(p).unwrap_or(s).to_owned()
            }),
            "trimsuffix" => two_strings(&arg(0), &arg(1), |s, p| {
                s.strip_suffix(p).unwrap_or(s).to_owned()
            }),
            "startswith" => match (arg(0).as_string(), arg(1).as_string()) {
                (Some(s), Some(p)) => Value::Bool(s.starts_with(&p)),
                _ => Value::unknown("startswith of unknown strings"),
            },
            "endswith" => match (arg(0).as_string(), arg(1).as_string()) {
                (Some(s), Some(p)) => Value::Bool(s.ends_with(&p)),
                _ => Value::unknown("endswith of unknown strings"),
            },
            "replace" => match (arg(0).as_string(), arg(1).as_string(), arg(2).as_string()) {
                (Some(s), Some(from), Some(to)) if !from.starts_with('/') => {
                    Value::String(s.replace(&from, &to))
                }
                _ => Value::unknown("replace with unknown arguments or a regular expression"),
            },
            "format" => format(&args),
            "join" => match (arg(0).as_string(), &arg(1)) {
                (Some(separator), Value::List(items)) => {
                    let parts: Option<Vec<String>> = items.iter().map(Value::as_string).collect();
                    parts.map_or_else(
                        || Value::unknown("join of unknown items"),
                        |p| Value::String(p.join(&separator)),
                    )
                }
                _ => Value::unknown("join of unknown arguments"),
            },
            "split" => match (arg(0).as_string(), arg(1).as_string()) {
                (Some(separator), Some(s)) => Value::list(
                    s.split(separator.as_str())
                        .map(|p| Value::String(p.to_owned()))
                        .collect(),
                ),
                _ => Value::unknown("split of unknown arguments"),
            },
            "concat" => {
                let mut all = Vec::new();
                for list in &args {
                    match list {
                        Value::List(items) => all.extend(items.iter().cloned()),
                        _ => return Value::unknown("concat of non-lists"),
                    }
                }
                Value::list(all)
            }
            "flatten" => match arg(0) {
                Value::List(items) => {
                    let mut flat = Vec::new();
                    flatten_into(&items, &mut flat);
                    Value::list(flat)
                }
                _ => Value::unknown("flatten of a non-list"),
            },
            "compact" => match arg(0) {
                Value::List(items) => Value::list(
                    items
                        .iter()
                        .filter(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
                        .cloned()
                        .collect(),
                ),
                _ => Value::unknown("compact of a non-list"),
            },
            "merge" => {
                let mut merged = BTreeMap::new();
                for object in &args {
                    match object {
                        Value::Object(fields) => {
                            merged.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())))
                        }
                        Value::Null => {}
                        _ => return Value::unknown("merge of non-objects"),
                    }
                }
                Value::object(merged)
            }
            "lookup" => match (&arg(0), arg(1).as_string()) {
                (Value::Object(fields), Some(key)) => fields
                    .get(&key)
                    .cloned()
                    .or_else(|| args.get(2).cloned())
                    .unwrap_or_else(|| Value::unknown(format!("no key {key}"))),
                _ => Value::unknown("lookup of unknown arguments"),
            },
            "element" => match (&arg(0), &arg(1)) {
                (Value::List(items), Value::Number(n)) if !items.is_empty() && *n >= 0.0 => {
                    items[(*n as usize) % items.len()].clone()
                }
                _ => Value::unknown("element of unknown arguments"),
            },
            "length" => match arg(0) {
                Value::List(items) => Value::Number(items.len() as f64),
                Value::Object(fields) => Value::Number(fields.len() as f64),
                Value::String(s) => Value::Number(s.chars().count() as f64),
                _ => Value::unknown("length of an unknown value"),
            },
            "keys" => match arg(0) {
                Value::Object(fields) => {
                    Value::list(fields.keys().cloned().map(Value::String).collect())
                }
                _ => Value::unknown("keys of a non-object"),
            },
            "values" => match arg(0) {
                Value::Object(fields) => Value::list(fields.values().cloned().collect()),
                _ => Value::unknown("values of a non-object"),
            },
            "contains" => match (&arg(0), &arg(1)) {
                (Value::List(items), needle) if !needle.is_unknown() => {
                    Value::Bool(items.contains(needle))
                }
                _ => Value::unknown("contains of unknown arguments"),
            },
            "tolist" | "toset" | "tomap" | "sensitive" | "nonsensitive" => arg(0),
            "can" => Value::Bool(!arg(0).is_unknown()),
            _ => Value::unknown(format!("unknown function {name}()")),
        }
    }

    /// Resolves the path argument of a reading function and records the read. `None` (with an
    /// uncertain issue) when the path cannot be resolved.
    fn record_read(
        &mut self,
        path: &Value,
        function: &str,
        expr: &Expression,
        scope: &Scope<'_>,
        out: &mut Collector,
    ) -> Option<String> {
        let Some(text) = path.as_string() else {
            let why = path.unknown_reason().unwrap_or("not a string");
            let issue = self.issue(
                scope,
                expr,
                format!("cannot resolve the path {function}() reads: {why}"),
                true,
            );
            out.issues.push(issue);
            return None;
        };
        if !text.starts_with('/') {
            // Relative paths resolve against the unit.
            self.note(ContextUse::UnitDir);
        }
        match resolve(&text, scope.dir) {
            Some(resolved) => {
                out.reads.extend(self.snapshot.position(&resolved));
                Some(resolved)
            }
            None => {
                let issue = self.issue(
                    scope,
                    expr,
                    format!("{function}() reads {text:?}, outside the repository"),
                    false,
                );
                out.issues.push(issue);
                None
            }
        }
    }

    fn fileset(
        &mut self,
        dir: &Value,
        pattern: &Value,
        expr: &Expression,
        scope: &Scope<'_>,
        out: &mut Collector,
    ) -> Value {
        let (Some(dir_text), Some(pattern)) = (dir.as_string(), pattern.as_string()) else {
            let why = dir
                .unknown_reason()
                .or(pattern.unknown_reason())
                .unwrap_or("not strings");
            out.issues.push(self.issue(
                scope,
                expr,
                format!("cannot resolve what fileset() reads: {why}"),
                true,
            ));
            return Value::unknown("fileset of unknown arguments");
        };
        if !dir_text.starts_with('/') {
            self.note(ContextUse::UnitDir);
        }
        let Some(base) = resolve(&dir_text, scope.dir) else {
            out.issues.push(self.issue(
                scope,
                expr,
                format!("fileset() reads {dir_text:?}, outside the repository"),
                false,
            ));
            return Value::unknown("fileset outside the repository");
        };
        let matcher = match globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
        {
            Ok(glob) => glob.compile_matcher(),
            Err(err) => {
                out.issues.push(self.issue(
                    scope,
                    expr,
                    format!("invalid fileset() pattern {pattern:?}: {err}"),
                    true,
                ));
                return Value::unknown("invalid fileset pattern");
            }
        };
        let mut matches = Vec::new();
        for path in self.snapshot.files_under(&base) {
            let relative = if base.is_empty() {
                path
            } else {
                &path[base.len() + 1..]
            };
            if matcher.is_match(relative) {
                out.reads.extend(self.snapshot.position(path));
                matches.push(Value::String(relative.to_owned()));
            }
        }
        Value::list(matches)
    }

    /// The nearest `name` in `start` or a folder above it, remembered per (start, name).
    fn find_above(&mut self, start: Option<&str>, name: &str) -> Option<String> {
        let start = start?;
        if let Some(found) = self
            .found_above
            .get(name)
            .and_then(|by_dir| by_dir.get(start))
        {
            return found.clone();
        }
        let candidate = if start.is_empty() {
            name.to_owned()
        } else {
            format!("{start}/{name}")
        };
        let found = if self.snapshot.exists(&candidate) {
            Some(candidate)
        } else {
            self.find_above(parent_dir_of(start), name)
        };
        self.found_above
            .entry(name.to_owned())
            .or_default()
            .insert(start.to_owned(), found.clone());
        found
    }

    /// Evaluates a configuration for `read_terragrunt_config`, once per path.
    fn read_config(&mut self, path: &str) -> Arc<ReadConfig> {
        if let Some(read) = self.read_configs.get(path) {
            return read.clone();
        }
        if !self.reading.insert(path.to_owned()) {
            return Arc::new(ReadConfig {
                value: Value::unknown(format!("{path} reads itself")),
                found: Collector::default(),
            });
        }
        // A read configuration is evaluated in its own directory: what it uses of its own
        // position says nothing about the unit reading it.
        let outer = std::mem::replace(&mut self.context_use, ContextUse::Nothing);
        let read = Arc::new(crate::terragrunt::evaluate_read_config(self, path));
        self.context_use = outer;
        self.reading.remove(path);
        self.read_configs.insert(path.to_owned(), read.clone());
        read
    }
}

/// The directory of the include `label` names (or the first include), for the `*_include`
/// and `get_parent_terragrunt_dir` functions.
fn include_dir<'a>(scope: &Scope<'a>, label: &Value) -> Option<&'a str> {
    match label.as_string() {
        Some(label) => scope
            .includes
            .iter()
            .find(|(name, _)| *name == label)
            .map(|(_, dir)| dir.as_str()),
        None => scope.includes.first().map(|(_, dir)| dir.as_str()),
    }
}

/// The parent of a repo-relative directory; `None` above the root.
fn parent_dir_of(dir: &str) -> Option<&str> {
    if dir.is_empty() {
        None
    } else {
        Some(parent(dir))
    }
}

/// The relative path from directory `from` to directory `to`, both repo-relative.
fn relative_path(from: &str, to: &str) -> String {
    let from_parts: Vec<&str> = from.split('/').filter(|p| !p.is_empty()).collect();
    let to_parts: Vec<&str> = to.split('/').filter(|p| !p.is_empty()).collect();
    let common = from_parts
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<&str> = vec![".."; from_parts.len() - common];
    parts.extend(&to_parts[common..]);
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

fn parent_of_path(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    }
}

fn string_fn(value: &Value, f: impl FnOnce(&str) -> String) -> Value {
    match value.as_string() {
        Some(s) => Value::String(f(&s)),
        None => value.clone(),
    }
}

fn two_strings(a: &Value, b: &Value, f: impl FnOnce(&str, &str) -> String) -> Value {
    match (a.as_string(), b.as_string()) {
        (Some(a), Some(b)) => Value::String(f(&a, &b)),
        _ => Value::unknown("string function of unknown arguments"),
    }
}

fn flatten_into(items: &[Value], out: &mut Vec<Value>) {
    for item in items {
        match item {
            Value::List(inner) => flatten_into(inner, out),
            other => out.push(other.clone()),
        }
    }
}

/// `format` with the verbs configurations use for paths: `%s`, `%d`, `%v` and `%%`.
fn format(args: &[Value]) -> Value {
    let Some(spec) = args.first().and_then(Value::as_string) else {
        return Value::unknown("format of an unknown specification");
    };
    let mut out = String::new();
    let mut next = 1;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('s' | 'd' | 'v') => match args.get(next).and_then(Value::as_string) {
                Some(part) => {
                    out.push_str(&part);
                    next += 1;
                }
                None => return Value::unknown("format of unknown values"),
            },
            _ => return Value::unknown("format verb not evaluated statically"),
        }
    }
    Value::String(out)
}

fn binary(operator: BinaryOperator, lhs: Value, rhs: Value) -> Value {
    if let Value::Unknown(_) = lhs {
        return lhs;
    }
    if let Value::Unknown(_) = rhs {
        return rhs;
    }
    match operator {
        BinaryOperator::Eq => Value::Bool(lhs == rhs),
        BinaryOperator::NotEq => Value::Bool(lhs != rhs),
        BinaryOperator::And | BinaryOperator::Or => match (lhs.truthy(), rhs.truthy()) {
            (Some(a), Some(b)) => Value::Bool(if operator == BinaryOperator::And {
                a && b
            } else {
                a || b
            }),
            _ => Value::unknown("logical operator on non-booleans"),
        },
        _ => {
            let (Value::Number(a), Value::Number(b)) = (&lhs, &rhs) else {
                return Value::unknown("arithmetic on non-numbers");
            };
            let (a, b) = (*a, *b);
            match operator {
                BinaryOperator::Plus => Value::Number(a + b),
                BinaryOperator::Minus => Value::Number(a - b),
                BinaryOperator::Mul => Value::Number(a * b),
                BinaryOperator::Div if b != 0.0 => Value::Number(a / b),
                BinaryOperator::Mod if b != 0.0 => Value::Number(a % b),
                BinaryOperator::Less => Value::Bool(a < b),
                BinaryOperator::LessEq => Value::Bool(a <= b),
                BinaryOperator::Greater => Value::Bool(a > b),
                BinaryOperator::GreaterEq => Value::Bool(a >= b),
                _ => Value::unknown("invalid arithmetic"),
            }
        }
    }
}

/// Whether an expression contains a call to a reading function anywhere inside it.
pub(crate) fn contains_read_call(expr: &Expression) -> bool {
    match expr {
        Expression::FuncCall(call) => is_read_function(call.name.name.as_str()) || call.args.iter().any(contains_read_call),
        Expression::Array(items) => items.iter().any(contains_read_call),
        Expression::Object(object) => object.iter().any(|(key, value)| {
            matches!(key, ObjectKey::Expression(key) if contains_read_call(key)) || contains_read_call(value.expr())
        }),
        Expression::StringTemplate(template) => template_contains_read_call(template),
        Expression::HeredocTemplate(heredoc) => template_contains_read_call(&heredoc.template),
        Expression::Parenthesis(inner) => contains_read_call(inner.inner()),
        Expression::Conditional(cond) => [&cond.cond_expr, &cond.true_expr, &cond.false_expr].into_iter().any(contains_read_call),
        Expression::Traversal(traversal) => {
            contains_read_call(&traversal.expr)
                || traversal.operators.iter().any(|op| matches!(op.value(), TraversalOperator::Index(index) if contains_read_call(index)))
        }
        Expression::UnaryOp(op) => contains_read_call(&op.expr),
        Expression::BinaryOp(op) => contains_read_call(&op.lhs_expr) || contains_read_call(&op.rhs_expr),
        Expression::ForExpr(for_expr) => {
            contains_read_call(&for_expr.intro.collection_expr)
                || contains_read_call(&for_expr.value_expr)
                || for_expr.key_expr.as_ref().is_some_and(contains_read_call)
                || for_expr.cond.as_ref().is_some_and(|c| contains_read_call(&c.expr))
        }
        Expression::Null(_) | Expression::Bool(_) | Expression::Number(_) | Expression::String(_) | Expression::Variable(_) => false,
    }
}

fn template_contains_read_call(template: &Template) -> bool {
    template
        .iter()
        .any(|element| matches!(element, Element::Interpolation(i) if contains_read_call(&i.expr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_directories() {
        assert_eq!(relative_path("live", "live/prod/app"), "prod/app");
        assert_eq!(relative_path("live/prod/app", "live"), "../..");
        assert_eq!(relative_path("live/prod/app", ""), "../../..");
        assert_eq!(relative_path("a/b", "a/c"), "../c");
        assert_eq!(relative_path("a", "a"), ".");
    }

    #[test]
    fn dirname_follows_terraform() {
        assert_eq!(parent_of_path("/__repo__/live/root.hcl"), "/__repo__/live");
        assert_eq!(parent_of_path("root.hcl"), ".");
        assert_eq!(parent_of_path("/x"), "/");
    }

    #[test]
    fn format_supports_path_verbs() {
        let args = [
            Value::String("%s/%s-%d".into()),
            Value::String("a".into()),
            Value::String("b".into()),
            Value::Number(3.0),
        ];
        assert_eq!(format(&args), Value::String("a/b-3".into()));
    }
}
