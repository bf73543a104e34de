//! Parsing HCL once per distinct content, on every core, with line numbers for messages.

use crate::fast_hash::FastMap;
use std::sync::Arc;

use hcl::edit::structure::Body;

use crate::hcl::Issue;
use crate::snapshot::{BlobId, Snapshot};

/// A parsed file: its body, or the syntax error that prevented it.
#[derive(Debug)]
pub(crate) struct ParsedFile {
    pub(crate) body: Result<Body, ParseError>,
    line_starts: Vec<usize>,
    /// The source, for spans that are keys of memos.
    text: Arc<str>,
}

#[derive(Debug, Clone)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl ParsedFile {
    pub(crate) fn parse(text: Arc<str>) -> ParsedFile {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let body = hcl::edit::parser::parse_body(&text).map_err(|err| ParseError {
            line: err.location().line(),
            message: err.message().to_owned(),
        });
        ParsedFile {
            body,
            line_starts,
            text,
        }
    }

    /// The source text of a span.
    pub(crate) fn source(&self, span: std::ops::Range<usize>) -> &str {
        self.text.get(span).unwrap_or_default()
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|&start| start <= offset)
            .max(1)
    }

    /// The syntax error as an issue of `path`, if there is one.
    pub(crate) fn syntax_issue(&self, path: &str) -> Option<Issue> {
        self.body.as_ref().err().map(|err| Issue {
            file: path.to_owned(),
            line: Some(err.line),
            message: format!("syntax error: {}", err.message),
            uncertain: true,
        })
    }
}

/// Parsed files by content id, shared by the base and head snapshots.
#[derive(Debug, Default)]
pub(crate) struct ParseCache {
    parsed: FastMap<BlobId, Arc<ParsedFile>>,
    /// Blobs that did not parse: usually none, so nobody has to look at every file for them.
    failed: crate::fast_hash::FastSet<BlobId>,
}

impl ParseCache {
    /// Parses every file of `snapshot` with content whose content is not cached yet, using every
    /// available core.
    pub(crate) fn add_snapshot(&mut self, snapshot: &Snapshot) {
        let mut todo: Vec<(BlobId, Arc<str>)> = Vec::new();
        let mut queued = crate::fast_hash::FastSet::default();
        for blob in snapshot.blobs.values() {
            if let Some(text) = &blob.text
                && !self.parsed.contains_key(&blob.id)
                && queued.insert(blob.id)
            {
                todo.push((blob.id, text.clone()));
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(todo.len().max(1));
        let chunk = todo.len().div_ceil(threads.max(1)).max(1);
        let results: Vec<Vec<(BlobId, ParsedFile)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = todo
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(id, text)| (*id, ParsedFile::parse(text.clone())))
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for (id, parsed) in results.into_iter().flatten() {
            if parsed.body.is_err() {
                self.failed.insert(id);
            }
            self.parsed.insert(id, Arc::new(parsed));
        }
    }

    /// Whether some blob parsed so far had a syntax error.
    pub(crate) fn has_failures(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Whether this blob was parsed and failed.
    pub(crate) fn failed(&self, blob: &crate::snapshot::Blob) -> bool {
        self.failed.contains(&blob.id)
    }

    /// The parsed form of a blob, if it was parsed.
    pub(crate) fn get_blob(&self, blob: &crate::snapshot::Blob) -> Option<Arc<ParsedFile>> {
        self.parsed.get(&blob.id).cloned()
    }

    /// The parsed form of `path` in `snapshot`, parsing it now if it was not parsed before.
    pub(crate) fn get(&self, snapshot: &Snapshot, path: &str) -> Option<Arc<ParsedFile>> {
        let blob = snapshot.blob(path)?;
        if let Some(parsed) = self.parsed.get(&blob.id) {
            return Some(parsed.clone());
        }
        blob.text
            .clone()
            .map(|text| Arc::new(ParsedFile::parse(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_carry_their_line() {
        let parsed = ParsedFile::parse("a = 1\nb = [\n".into());
        let issue = parsed.syntax_issue("x.hcl").expect("an error");
        // The unclosed bracket opens on line 2.
        assert_eq!(issue.line, Some(2));
        assert!(
            issue.to_string().starts_with("x.hcl:2: syntax error"),
            "{issue}"
        );
    }

    #[test]
    fn offsets_map_to_lines() {
        let parsed = ParsedFile::parse("a = 1\nb = 2\n".into());
        assert_eq!(
            (parsed.line_of(0), parsed.line_of(6), parsed.line_of(7)),
            (1, 2, 2)
        );
    }
}
