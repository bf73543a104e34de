//! A job's output: redacted line by line, written to the job's log file (up to
//! `executor.max_log_bytes`), and kept bounded (its beginning and its end) for the finished
//! event.
//!
//! Terraform can print megabytes; a job event must stay small. The head shows what the job
//! set out to do, the tail shows how it ended, and the middle is counted, not kept. Secrets
//! (the job's credential values) are replaced before anything is kept or written.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use run_logs::{Limit, SharedRunLogs};

/// Bytes kept from the start of the output.
const HEAD_BYTES: usize = 256 * 1024;
/// Bytes kept from the end of the output.
const TAIL_BYTES: usize = 768 * 1024;
/// A line longer than this is processed in pieces (a secret straddling the cut would escape
/// redaction; no tool prints such lines around credentials).
const MAX_LINE_BYTES: usize = 64 * 1024;
/// What a secret becomes.
pub(crate) const REDACTED: &str = "***";

/// Everything a job prints, on its way to the log file and the finished event.
#[derive(Debug)]
pub(crate) struct JobOutput {
    bounded: BoundedOutput,
    /// Longest first, so that a secret containing another is replaced whole.
    secrets: Vec<String>,
    partial: Vec<u8>,
    file: Option<File>,
    /// How many more bytes the log file may take (`executor.max_log_bytes`).
    file_room: u64,
    /// The limit, for the line that says it was reached.
    file_limit: u64,
    /// The worker's log directory, which must have room for each write.
    run_room: Option<RunRoom>,
    /// Told after every write to the file: the log stream follows it.
    written: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl JobOutput {
    /// `log`: where to write the whole output (created with its directories); `None` keeps
    /// only the bounded copy. A log that cannot be written is reported in the output itself.
    pub(crate) fn new(secrets: Vec<String>, log: Option<&Path>) -> JobOutput {
        let mut secrets: Vec<String> = secrets.iter().flat_map(|s| encodings(s)).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let mut output = JobOutput {
            bounded: BoundedOutput::default(),
            secrets,
            partial: Vec::new(),
            file: None,
            file_room: u64::MAX,
            file_limit: u64::MAX,
            run_room: None,
            written: None,
        };
        if let Some(path) = log {
            let opened = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| File::create(path));
            match opened {
                Ok(file) => output.file = Some(file),
                Err(err) => output.push_str(&format!(
                    "warning: cannot write the job log {}: {err}\n",
                    path.display()
                )),
            }
        }
        output
    }

    /// Writes at most `max` bytes of output to the log file, then a line saying the rest is
    /// not written there. The bounded copy (the output's end) goes on.
    pub(crate) fn with_log_limit(mut self, max: u64) -> JobOutput {
        self.file_room = max;
        self.file_limit = max;
        self
    }

    /// Writes to the log file only what the worker's log directory has room for
    /// (`executor.max_total_log_bytes`, `log_keep_free_bytes`), counting it to `run_id`;
    /// older runs' logs are deleted to make room. Past that, a line says why.
    pub(crate) fn with_run_logs(
        mut self,
        run_logs: SharedRunLogs,
        run_id: uuid::Uuid,
    ) -> JobOutput {
        self.run_room = Some(RunRoom {
            run_logs,
            run_id,
            claimed: 0,
        });
        self
    }

    /// Tells `written` after every write to the log file.
    pub(crate) fn notifying(
        mut self,
        written: Option<std::sync::Arc<tokio::sync::Notify>>,
    ) -> JobOutput {
        self.written = written;
        self
    }

    /// More values to redact from here on (credentials obtained after the output began).
    pub(crate) fn add_secrets(&mut self, secrets: Vec<String>) {
        self.secrets
            .extend(secrets.iter().flat_map(|s| encodings(s)));
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.emit(&line);
        }
        if self.partial.len() > MAX_LINE_BYTES {
            let piece = std::mem::take(&mut self.partial);
            self.emit(&piece);
        }
    }

    pub(crate) fn push_str(&mut self, text: &str) {
        self.push(text.as_bytes());
    }

    /// `text` with every secret replaced, for what leaves the job outside its output (policy
    /// messages, which may quote the plan).
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    fn emit(&mut self, bytes: &[u8]) {
        let text = self.redact(&String::from_utf8_lossy(bytes));
        if let Some(file) = &mut self.file {
            let length = text.len() as u64;
            let full = if length > self.file_room {
                Some(format!(
                    "executor.max_log_bytes = {} bytes",
                    self.file_limit
                ))
            } else if let Some(room) = &mut self.run_room
                && length > room.claimed
            {
                match claim(&room.run_logs, room.run_id, length - room.claimed) {
                    Ok(claimed) => {
                        room.claimed += claimed;
                        None
                    }
                    Err(limit) => Some(limit),
                }
            } else {
                None
            };
            if full.is_none()
                && let Some(room) = &mut self.run_room
            {
                room.claimed = room.claimed.saturating_sub(length);
            }
            let written = match full {
                // Whole lines only, then the reason: a reader of the file sees where it ends.
                Some(limit) => {
                    let _ = file.write_all(
                        format!(
                            "\n(the log reached {limit}: the rest of the output is not written to this file; its end is in the job's result)\n"
                        )
                        .as_bytes(),
                    );
                    false
                }
                None => file.write_all(text.as_bytes()).is_ok(),
            };
            if written {
                self.file_room -= length;
            } else {
                // Past the limit, or a full disk: neither fails the job; the bounded copy goes on.
                self.file = None;
            }
        }
        if let Some(written) = &self.written {
            written.notify_one();
        }
        self.bounded.push(text.as_bytes());
    }

    /// Flushes the last, unterminated line; the bounded, redacted text.
    pub(crate) fn finish(mut self) -> String {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.emit(&rest);
        }
        if let Some(file) = &mut self.file {
            let _ = file.flush();
        }
        self.bounded.finish()
    }
}

/// The job's share of the worker's log directory: room is claimed a block at a time, not a
/// line at a time, and what was claimed and not written is given back when the output goes
/// (finished, or dropped when a job ends early), for the next job.
#[derive(Debug)]
struct RunRoom {
    run_logs: SharedRunLogs,
    run_id: uuid::Uuid,
    /// Bytes claimed and not written yet.
    claimed: u64,
}

impl Drop for RunRoom {
    fn drop(&mut self) {
        if self.claimed > 0 {
            self.run_logs.lock().unwrote(self.run_id, self.claimed);
        }
    }
}

/// Room in the log directory is claimed this many bytes at a time (or what a line needs):
/// a lock and a look at the budget per block, not per line; what a job did not use of its
/// last block is given back when its output goes ([`RunRoom`]).
const CLAIM_BLOCK: u64 = 64 * 1024;

/// Claims at least `needed` bytes of the worker's log directory for `run_id` (a block, where
/// there is room for one), deleting older runs' logs if need be. The bytes claimed, or the
/// limit that refused them.
fn claim(run_logs: &SharedRunLogs, run_id: uuid::Uuid, needed: u64) -> Result<u64, String> {
    let now = std::time::SystemTime::now();
    let mut logs = run_logs.lock();
    let room = logs.room(run_id, needed.max(CLAIM_BLOCK), now);
    if room.bytes < needed {
        let budget = logs.budget();
        return Err(match room.short {
            Some(Limit::Disk) => format!(
                "executor.log_keep_free_bytes: the last {} bytes of the disk stay free",
                budget.keep_free
            ),
            _ => format!(
                "executor.max_total_log_bytes = {} bytes for all job logs",
                budget.total
            ),
        });
    }
    logs.wrote(run_id, room.bytes, now);
    Ok(room.bytes)
}

/// Shortest encoded form worth redacting: shorter fragments would match ordinary text.
const MIN_ENCODED_LEN: usize = 8;

/// A secret as a tool may print it: as is, in base64 (standard and URL-safe, at each of the
/// three alignments it can have inside a longer encoded text, so a token inside an encoded
/// `user:token` is found too), and percent-encoded (upper- and lower-case hex).
pub(crate) fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    if secret.is_empty() {
        return Vec::new();
    }
    let mut forms = vec![secret.to_owned()];
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        for shift in 0..3_usize {
            let mut data = vec![0_u8; shift];
            data.extend_from_slice(secret.as_bytes());
            let encoded = engine.encode(&data);
            // Only the 4-character groups made of the secret's bytes alone: the first group
            // of a shifted copy also encodes what precedes the secret, a last partial group
            // what follows it.
            let skip = if shift == 0 { 0 } else { 4 };
            let whole = data.len() / 3 * 4;
            if whole > skip && whole - skip >= MIN_ENCODED_LEN {
                forms.push(encoded[skip..whole].to_owned());
            }
        }
    }
    let mut upper = String::new();
    for byte in secret.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            upper.push(char::from(byte));
        } else {
            upper.push_str(&format!("%{byte:02X}"));
        }
    }
    if upper != secret {
        let lower = lower_hex_escapes(&upper);
        forms.push(upper);
        forms.push(lower);
    }
    forms
}

/// `%2F` → `%2f`, leaving everything else as it is.
fn lower_hex_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(hex) = chars.next() {
                    out.push(hex.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

#[derive(Debug, Default)]
struct BoundedOutput {
    head: Vec<u8>,
    tail: Vec<u8>,
    omitted: usize,
}

impl BoundedOutput {
    fn push(&mut self, mut bytes: &[u8]) {
        if self.head.len() < HEAD_BYTES {
            let take = bytes.len().min(HEAD_BYTES - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.tail.extend_from_slice(bytes);
        // Trim in batches so pushing many small chunks stays linear.
        if self.tail.len() > 2 * TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
            self.omitted += excess;
        }
    }

    fn finish(mut self) -> String {
        if self.tail.len() > TAIL_BYTES {
            let excess = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..excess);
            self.omitted += excess;
        }
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if self.omitted > 0 {
            text.push_str(&format!(
                "\n[... {} bytes of output omitted ...]\n",
                self.omitted
            ));
        }
        text.push_str(&String::from_utf8_lossy(&self.tail));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut output = JobOutput::new(Vec::new(), None);
        output.push_str("hello ");
        output.push_str("world");
        assert_eq!(output.finish(), "hello world");
    }

    #[test]
    fn secrets_are_redacted_even_across_chunks_and_the_log_file_gets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run/job-1.log");
        let secrets = vec!["s3cr3t-value".to_owned(), "s3cr3t-value-longer".to_owned()];
        let mut output = JobOutput::new(secrets, Some(&log));
        output.push_str("key = s3cr");
        output.push_str("3t-value\nlonger = s3cr3t-value-longer\n");
        output.push_str("tail without newline s3cr3t-value");
        let text = output.finish();
        assert_eq!(text, "key = ***\nlonger = ***\ntail without newline ***");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), text);
    }

    #[test]
    fn a_full_log_directory_deletes_older_runs_logs_then_cuts_this_one_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let old_run = uuid::Uuid::from_u128(1);
        let old = dir.path().join(old_run.to_string());
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("job-1.log"), [b'x'; 100]).unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for path in [old.join("job-1.log"), old.clone()] {
            File::open(path).unwrap().set_modified(hour_ago).unwrap();
        }
        let run_logs = SharedRunLogs::new(dir.path(), run_logs::Budget::from_settings(0, 150, 0));
        let run_id = uuid::Uuid::from_u128(2);
        let log = dir.path().join(run_id.to_string()).join("job-1.log");
        let mut output =
            JobOutput::new(Vec::new(), Some(&log)).with_run_logs(run_logs.clone(), run_id);
        // 8 bytes a line: the old run's 100 bytes go for the first; 18 lines fit in 150.
        for n in 0..50 {
            output.push_str(&format!("line {n:02}\n"));
        }
        let text = output.finish();
        assert!(!old.exists(), "the run written longest ago made room");
        let file = std::fs::read_to_string(&log).unwrap();
        assert!(
            file.starts_with("line 00\n")
                && file.contains("line 17\n")
                && !file.contains("line 18"),
            "{file}"
        );
        assert!(
            file.ends_with(
                "(the log reached executor.max_total_log_bytes = 150 bytes for all job logs: the rest of the output is not written to this file; its end is in the job's result)\n"
            ),
            "{file}"
        );
        // Claimed a block at a time, and what the job did not use given back at its end.
        assert_eq!(run_logs.lock().total_bytes(), 144);
        assert!(text.ends_with("line 49\n"), "{text}");
    }

    #[test]
    fn an_output_dropped_without_finishing_gives_back_the_room_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let run_logs = SharedRunLogs::new(dir.path(), run_logs::Budget::UNLIMITED);
        let run_id = uuid::Uuid::from_u128(2);
        let log = dir.path().join(run_id.to_string()).join("job-1.log");
        let mut output =
            JobOutput::new(Vec::new(), Some(&log)).with_run_logs(run_logs.clone(), run_id);
        output.push_str("line 00\n");
        assert_eq!(
            run_logs.lock().total_bytes(),
            CLAIM_BLOCK,
            "a block is claimed"
        );
        // A job that ends early (a step's error) drops its output without `finish`.
        drop(output);
        assert_eq!(run_logs.lock().total_bytes(), 8);
    }

    #[test]
    fn the_log_file_stops_at_max_log_bytes_and_says_so_while_the_result_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run/job-1.log");
        let mut output = JobOutput::new(Vec::new(), Some(&log)).with_log_limit(100);
        // 8 bytes a line: twelve fit in 100 bytes, the thirteenth does not.
        for n in 0..50 {
            output.push_str(&format!("line {n:02}\n"));
        }
        let text = output.finish();
        let file = std::fs::read_to_string(&log).unwrap();
        assert!(
            file.starts_with("line 00\n")
                && file.contains("line 11\n")
                && !file.contains("line 12"),
            "{file}"
        );
        assert!(
            file.ends_with(
                "(the log reached executor.max_log_bytes = 100 bytes: the rest of the output is not written to this file; its end is in the job's result)\n"
            ),
            "{file}"
        );
        assert!(
            text.starts_with("line 00\n") && text.ends_with("line 49\n"),
            "{text}"
        );
    }

    #[test]
    fn redacts_base64_and_percent_encoded_forms() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let secret = "p4ss/w0rd+with?odd=chars";
        let mut output = JobOutput::new(vec![secret.to_owned()], None);
        let forms = [
            STANDARD.encode(secret),
            URL_SAFE.encode(secret),
            // Inside a longer encoded text, at each alignment: a basic-auth header.
            STANDARD.encode(format!("user:{secret}")),
            STANDARD.encode(format!("us:{secret}")),
            STANDARD.encode(format!("u:{secret}")),
            "p4ss%2Fw0rd%2Bwith%3Fodd%3Dchars".to_owned(),
            "p4ss%2fw0rd%2bwith%3fodd%3dchars".to_owned(),
        ];
        for form in &forms {
            output.push_str(&format!("value: {form}\n"));
        }
        let text = output.finish();
        for form in &forms {
            assert!(!text.contains(form.as_str()), "{form} in {text}");
        }
        // What could be left of each is a few characters at the edges, never the middle.
        for line in text.lines() {
            assert!(line.contains(REDACTED), "{line}");
            assert!(line.len() < "value: ".len() + 16, "{line}");
        }
    }

    #[test]
    fn long_output_keeps_head_and_tail_and_counts_the_rest() {
        let mut output = BoundedOutput::default();
        output.push(&vec![b'h'; HEAD_BYTES]);
        for _ in 0..100 {
            output.push(&vec![b'm'; 1024]);
        }
        output.push(&vec![b't'; TAIL_BYTES]);
        let text = output.finish();
        assert!(text.starts_with(&"h".repeat(HEAD_BYTES)));
        assert!(text.ends_with(&"t".repeat(TAIL_BYTES)));
        assert!(
            text.contains("[... 102400 bytes of output omitted ...]"),
            "{}",
            &text[HEAD_BYTES..HEAD_BYTES + 80]
        );
        assert!(text.len() < HEAD_BYTES + TAIL_BYTES + 100);
    }
}
