//! Bounded job output: the beginning and the end of what the tools printed, never all of it.
//!
//! Terraform can print megabytes; a job event must stay small. The head shows what the job
//! set out to do, the tail shows how it ended, and the middle is counted, not kept.

/// Bytes kept from the start of the output.
const HEAD_BYTES: usize = 16 * 1024;
/// Bytes kept from the end of the output.
const TAIL_BYTES: usize = 48 * 1024;

#[derive(Debug, Default)]
pub(crate) struct BoundedOutput {
    head: Vec<u8>,
    tail: Vec<u8>,
    omitted: usize,
}

impl BoundedOutput {
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
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

    pub(crate) fn push_str(&mut self, text: &str) {
        self.push(text.as_bytes());
    }

    pub(crate) fn finish(mut self) -> String {
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
        let mut output = BoundedOutput::default();
        output.push_str("hello ");
        output.push_str("world");
        assert_eq!(output.finish(), "hello world");
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
