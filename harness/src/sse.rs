//! A server-sent events client over std's `TcpStream`, for the benchmarks that follow the web
//! page's live streams as a browser would (HTTP/1.1, chunked transfer encoding).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One event: its name and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// An open event stream.
#[derive(Debug)]
pub struct Stream {
    reader: BufReader<TcpStream>,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no event end (big events arrive in many reads).
    scanned: usize,
}

impl Stream {
    /// `GET path` on `address`; `None` when the answer is not a 200 event stream.
    pub fn open(address: &str, path: &str) -> Option<Stream> {
        let mut stream = TcpStream::connect(address).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .ok()?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).ok()?;
        if status.split_whitespace().nth(1) != Some("200") {
            return None;
        }
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            if line.trim().is_empty() {
                break;
            }
        }
        Some(Stream {
            reader,
            chunk_left: 0,
            pending: Vec::new(),
            scanned: 0,
        })
    }

    /// The next event; `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let from = self.scanned.saturating_sub(1);
            let found = self.pending[from..].windows(2).position(|w| w == b"\n\n");
            self.scanned = self.pending.len();
            if let Some(at) = found {
                let end = from + at;
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                self.scanned = 0;
                let block = String::from_utf8_lossy(&block);
                let mut event = Event {
                    name: "message".into(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.name = name.trim().to_owned();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(data.strip_prefix(' ').unwrap_or(data));
                    }
                }
                if event.data.is_empty() && event.name == "message" {
                    continue; // a keep-alive comment
                }
                return Some(event);
            }
            self.fill()?;
        }
    }

    /// Reads the next piece of the chunked body into `pending`.
    fn fill(&mut self) -> Option<()> {
        if self.chunk_left == 0 {
            let mut size = String::new();
            while size.trim().is_empty() {
                size.clear();
                if self.reader.read_line(&mut size).ok()? == 0 {
                    return None;
                }
            }
            self.chunk_left = usize::from_str_radix(size.trim(), 16).ok()?;
            if self.chunk_left == 0 {
                return None;
            }
        }
        let mut buffer = vec![0_u8; self.chunk_left.min(64 * 1024)];
        let read = self.reader.read(&mut buffer).ok()?;
        if read == 0 {
            return None;
        }
        self.chunk_left -= read;
        self.pending.extend_from_slice(&buffer[..read]);
        Some(())
    }
}
