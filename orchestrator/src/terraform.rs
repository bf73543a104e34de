//! Terraform and OpenTofu sources: what a module directory reads (its files, local module
//! sources followed recursively, and `file`-family reads with static paths), and whether a
//! directory is a root module (declares a backend). Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block, Body};

use crate::hcl::{
    Collector, Eval, Issue, Locals, ParseCache, ParsedFile, Scope, ScopeKind, Value, absolute,
    contains_read_call,
};
use crate::paths::{file_name, join};
use crate::snapshot::Snapshot;

pub(crate) fn is_terraform_source(path: &str) -> bool {
    let name = file_name(path);
    name.ends_with(".tf") || name.ends_with(".tofu")
}

/// Everything a module directory reads, memoized per directory. The directory's own files
/// count as read: Terraform loads them all.
pub(crate) fn module_reads(ev: &mut Eval<'_>, dir: &str) -> Arc<Collector> {
    if let Some(found) = ev.modules.get(dir) {
        return found.clone();
    }
    // Mark as in progress with an empty result, so a module cycle ends here.
    ev.modules
        .insert(dir.to_owned(), Arc::new(Collector::default()));
    let found = Arc::new(analyze(ev, dir).finish());
    ev.modules.insert(dir.to_owned(), found.clone());
    found
}

fn analyze(ev: &mut Eval<'_>, dir: &str) -> Collector {
    let mut out = Collector::default();
    let files: Vec<String> = ev.snapshot.files_in(dir).map(str::to_owned).collect();
    out.reads
        .extend(files.iter().filter_map(|file| ev.snapshot.position(file)));
    let mut parsed_sources: Vec<(String, Arc<ParsedFile>)> = Vec::new();
    for file in files.iter().filter(|f| is_terraform_source(f)) {
        match ev.cache.get(ev.snapshot, file) {
            Some(parsed) => match &parsed.body {
                Ok(_) => parsed_sources.push((file.clone(), parsed.clone())),
                Err(_) => out.issues.extend(parsed.syntax_issue(file)),
            },
            None => out.issues.push(Issue {
                file: file.clone(),
                line: None,
                message: "not valid UTF-8".into(),
                uncertain: true,
            }),
        }
    }
    let bodies: Vec<&Body> = parsed_sources
        .iter()
        .filter_map(|(_, p)| p.body.as_ref().ok())
        .collect();
    // Terraform locals are module-wide: gather them from every file of the directory.
    let locals = Locals::new(bodies.iter().copied());
    let mut path = BTreeMap::new();
    path.insert("module".to_owned(), Value::String(absolute(dir)));
    path.insert(
        "root".to_owned(),
        Value::unknown("path.root depends on the root module"),
    );
    path.insert(
        "cwd".to_owned(),
        Value::unknown("path.cwd depends on where terraform runs"),
    );
    let mut variables = BTreeMap::new();
    variables.insert("path".to_owned(), Value::object(path));

    let mut submodules = Vec::new();
    for (file, parsed) in &parsed_sources {
        let Ok(body) = &parsed.body else { continue };
        let scope = Scope {
            kind: ScopeKind::Terraform,
            file,
            parsed,
            dir,
            includes: &[],
            locals: Some(&locals),
            variables: &variables,
        };
        scan(ev, body, &scope, &mut out, &mut submodules);
    }
    for submodule in submodules {
        let found = module_reads(ev, &submodule);
        out.merge(&found);
    }
    out
}

/// Evaluates read calls anywhere in `body` and collects local module sources.
fn scan(
    ev: &mut Eval<'_>,
    body: &Body,
    scope: &Scope<'_>,
    out: &mut Collector,
    submodules: &mut Vec<String>,
) {
    for attribute in body.attributes() {
        if contains_read_call(&attribute.value) {
            ev.eval(&attribute.value, scope, out);
        }
    }
    for block in body.blocks() {
        if block.ident.as_str() == "module"
            && let Some(dir) = local_module_source(block, scope.dir)
        {
            submodules.push(dir);
        }
        scan(ev, &block.body, scope, out, submodules);
    }
}

/// A `module` block's source when it is a local path (Terraform requires a literal string).
fn local_module_source(block: &Block, dir: &str) -> Option<String> {
    let source = match &block.body.get_attribute("source")?.value {
        Expression::String(s) => s.value().clone(),
        _ => return None,
    };
    if !(source.starts_with("./") || source.starts_with("../")) {
        return None;
    }
    join(dir, source.trim_end_matches('/'))
}

/// Whether a Terraform source file declares a backend (or `cloud`) inside a `terraform` block:
/// what makes a directory of `.tf` files a root module rather than a library module. A file
/// that does not parse counts when it mentions a backend, so a broken root module is still
/// planned (and fails loudly) rather than silently missed; discovery reports the syntax error.
pub(crate) fn declares_backend(snapshot: &Snapshot, cache: &ParseCache, path: &str) -> bool {
    let Some(text) = snapshot.text(path) else {
        return false;
    };
    if !text.contains("backend") && !text.contains("cloud") {
        return false;
    }
    let Some(parsed) = cache.get(snapshot, path) else {
        return false;
    };
    match &parsed.body {
        Ok(body) => body.get_blocks("terraform").any(|terraform| {
            terraform.body.has_blocks("backend") || terraform.body.has_blocks("cloud")
        }),
        Err(_) => text.contains("backend \""),
    }
}
