//! A real browser for the web page's tests: Debian's headless Chromium, driven by chromedriver
//! through the W3C WebDriver protocol (JSON over HTTP, spoken here over std's `TcpStream`, so
//! the tests need no client crate). `scripts/test.sh` installs both packages when missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session, closed (and its driver killed) on drop.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .flat_map(|dir| candidates.iter().map(move |name| dir.join(name)))
                .find(|path| path.is_file())
        })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Panics, saying how to install
    /// them, when they are missing: a browser test never skips.
    pub fn start() -> Browser {
        let hint = "install Debian's chromium and chromium-driver (apt-get install -y chromium \
                    chromium-driver), as scripts/test.sh does";
        let driver_path = find_program(&["/usr/bin/chromedriver", "chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver is not installed: {hint}"));
        let chromium = find_program(&["/usr/bin/chromium", "chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("chromium is not installed: {hint}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
        };
        crate::poll_until(Duration::from_secs(30), "chromedriver answering", || {
            browser
                .try_request("GET", "/status", None)
                .filter(|status| status["ready"] == true)
        });
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000",
                         "--hide-scrollbars"]
            }
        }}});
        let session = browser.request("POST", "/session", Some(capabilities));
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        browser
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// The visible text of the first element matching `css`, if there is one. `None` too when
    /// the element went stale between finding and reading it (the page was just replaced, as
    /// after a form's submit): callers poll.
    pub fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css)?;
        self.try_request(
            "GET",
            &format!("/session/{}/element/{element}/text", self.session),
            None,
        )?
        .as_str()
        .map(str::to_owned)
    }

    pub fn click(&self, css: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("no element {css} to click"));
        self.command("POST", &format!("element/{element}/click"), Some(json!({})));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("no element {css} to type into"));
        self.command(
            "POST",
            &format!("element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The value of the cookie `name` of the current page, `HttpOnly` ones included.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.try_request(
            "GET",
            &format!("/session/{}/cookie/{name}", self.session),
            None,
        )?["value"]
            .as_str()
            .map(str::to_owned)
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.command("GET", "screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a screenshot"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot directory");
        }
        std::fs::write(path, bytes).expect("the screenshot is written");
    }

    fn find(&self, css: &str) -> Option<String> {
        let found = self.try_request(
            "POST",
            &format!("/session/{}/element", self.session),
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.request(method, &format!("/session/{}/{path}", self.session), body)
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let shown = body.as_ref().map(Value::to_string).unwrap_or_default();
        self.try_request(method, path, body)
            .unwrap_or_else(|| panic!("WebDriver {method} {path} {shown} failed"))
    }

    /// The `value` of a WebDriver answer; `None` for an error answer or no answer.
    fn try_request(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .ok()?;
        // chromedriver may keep the connection open whatever we ask: read the head, then
        // exactly the body it announces.
        let mut response = Vec::new();
        let mut byte = [0_u8; 1];
        while !response.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).ok()?;
            response.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
        let length = head.lines().find_map(|line| {
            line.strip_prefix("content-length:")
                .and_then(|value| value.trim().parse::<usize>().ok())
        });
        let body = match length {
            Some(length) => {
                let mut body = vec![0_u8; length];
                stream.read_exact(&mut body).ok()?;
                String::from_utf8_lossy(&body).into_owned()
            }
            None => {
                let mut body = Vec::new();
                stream.read_to_end(&mut body).ok()?;
                let body = String::from_utf8_lossy(&body).into_owned();
                if head.contains("transfer-encoding: chunked") {
                    crate::process::dechunk(&body)
                } else {
                    body
                }
            }
        };
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        (status == 200).then(|| answer["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
