//! `/metrics` (Prometheus text), `/healthz` (the process answers) and `/readyz` (connected to
//! the broker, consumers running) over plain HTTP/1.1. GET only; one request per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// Readiness, set by the component: ready once connected with consumers running.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    /// Why it is not ready, for `/readyz` (the last broker error, say).
    reason: Arc<Mutex<Option<String>>>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        if ready && let Ok(mut reason) = self.reason.lock() {
            *reason = None;
        }
    }

    /// Not ready, and why: `/readyz` says it.
    pub fn set_not_ready(&self, why: impl Into<String>) {
        self.ready.store(false, Ordering::SeqCst);
        if let Ok(mut reason) = self.reason.lock() {
            *reason = Some(why.into());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .ok()
            .and_then(|reason| reason.clone())
            .unwrap_or_else(|| "not connected to the broker".to_owned())
    }
}

/// Connections answered at once. More wait in the listen backlog: a client that opens many
/// and sends nothing holds each for [`REQUEST_TIMEOUT`] at most, and cannot make the process
/// run out of file descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// How long one connection may take, from accepting it to the last byte of the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed accept (out of file descriptors, say): it would fail again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `address` and answers requests until the runtime stops; the bound address (useful
/// with port 0).
pub async fn serve(address: &str, metrics: Metrics, health: Health) -> std::io::Result<SocketAddr> {
    serve_at_most(address, metrics, health, MAX_CONNECTIONS).await
}

async fn serve_at_most(
    address: &str,
    metrics: Metrics,
    health: Health,
    connections: usize,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(connections));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "Cannot accept a connection to the metrics endpoint.");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(ANSWER_TIMEOUT, answer(stream, &metrics, &health)).await;
                drop(slot);
            });
        }
    });
    Ok(bound)
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, health: &Health) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buffer = [0_u8; 1024];
    let reading = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buffer[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    // A client that opens a connection and sends nothing gives its slot up soon: a scraper
    // or a probe sends its request at once.
    tokio::time::timeout(REQUEST_TIMEOUT, reading)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let (status, content_type, body) = route(method, path, metrics, health);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The status line, content type and body for a request. Pure.
fn route(
    method: &str,
    path: &str,
    metrics: &Metrics,
    health: &Health,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    match path.split('?').next().unwrap_or_default() {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if health.is_ready() => ("200 OK", TEXT, "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            TEXT,
            format!("not ready: {}\n", health.reason()),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_component_and_other_paths_are_refused() {
        let (metrics, health) = (Metrics::default(), Health::default());
        assert_eq!(
            route("GET", "/readyz", &metrics, &health).0,
            "503 Service Unavailable"
        );
        assert_eq!(
            route("GET", "/readyz", &metrics, &health).2,
            "not ready: not connected to the broker\n"
        );
        health.set_not_ready("cannot consume jobs.dev.plan: 541 INTERNAL_ERROR");
        assert_eq!(
            route("GET", "/readyz", &metrics, &health).2,
            "not ready: cannot consume jobs.dev.plan: 541 INTERNAL_ERROR\n"
        );
        health.set_ready(true);
        assert_eq!(route("GET", "/readyz", &metrics, &health).0, "200 OK");
        assert_eq!(route("GET", "/healthz", &metrics, &health).0, "200 OK");
        assert_eq!(
            route("POST", "/metrics", &metrics, &health).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("GET", "/nope", &metrics, &health).0, "404 Not Found");
    }

    #[tokio::test]
    async fn the_endpoint_answers_over_tcp() {
        let metrics = Metrics::default();
        metrics.counter("jobs_total", "Jobs.");
        metrics.inc("jobs_total", &[]);
        let address = serve("127.0.0.1:0", metrics, Health::default())
            .await
            .unwrap();
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("jobs_total 1\n"), "{response}");
    }

    #[tokio::test]
    async fn a_slot_is_free_again_when_its_connection_ends() {
        // A slot never given back would keep the waiting client waiting: fail, not hang.
        tokio::time::timeout(Duration::from_secs(60), slot_given_back())
            .await
            .expect("the waiting client was never answered");
    }

    async fn slot_given_back() {
        let address = serve_at_most("127.0.0.1:0", Metrics::default(), Health::default(), 1)
            .await
            .unwrap();
        // The one slot, held by a client that sends nothing.
        let idle = TcpStream::connect(address).await.unwrap();
        let mut waiting = TcpStream::connect(address).await.unwrap();
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        // The idle client goes: its connection ends, and the slot is the waiting one's (were
        // it never given back, the waiting client would wait for ever).
        drop(idle);
        let mut response = String::new();
        waiting.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }
}
