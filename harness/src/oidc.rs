//! A stand-in OIDC issuer (GitHub Actions' token service, unreachable from the tests): a
//! signing key made by `openssl` for the test run (no private key lives in the repository),
//! its public half served as a JWKS document, and tokens signed for a workflow run.

use base64::Engine;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The key id the issuer publishes its key under.
pub const KID: &str = "test-issuer-key";

/// An issuer and the runtime its server runs on.
#[derive(Debug)]
pub struct Issuer {
    runtime: tokio::runtime::Runtime,
    server: MockServer,
    key: Vec<u8>,
}

/// Writes a new 2048-bit RSA private key, PEM, to `file`: a key made for the test run, so that
/// no private key lives in the repository.
pub fn new_rsa_key(file: &std::path::Path) {
    openssl(&["genrsa", "-out", file.to_str().unwrap(), "2048"]);
}

/// What `openssl args` prints; a failure fails the test with openssl's words.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Issuer {
    pub fn start() -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("issuer.pem");
        new_rsa_key(&file);
        let file = file.to_str().unwrap();
        let modulus =
            String::from_utf8(openssl(&["rsa", "-in", file, "-noout", "-modulus"])).unwrap();
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let modulus: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let jwks = json!({ "keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID, "e": "AQAB",
            "n": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(modulus),
        }] });
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(MockServer::start());
        runtime.block_on(
            Mock::given(method("GET"))
                .and(path("/.well-known/jwks"))
                .respond_with(ResponseTemplate::new(200).set_body_json(jwks))
                .mount(&server),
        );
        Issuer {
            runtime,
            server,
            key: std::fs::read(file).unwrap(),
        }
    }

    /// The `[dispatcher.oidc]` section that trusts this issuer.
    pub fn config_section(&self) -> String {
        format!("\n[dispatcher.oidc]\nissuer = \"{}\"\n", self.server.uri())
    }

    /// The issuer's address (its `iss`).
    pub fn url(&self) -> String {
        self.server.uri()
    }

    /// The claims GitHub Actions writes for a workflow run of `repository`, triggered by
    /// `event_name` on `git_ref` (`refs/pull/7/merge`), for the audience `pipelines`, valid for
    /// five minutes.
    pub fn claims(&self, repository: &str, event_name: &str, git_ref: &str) -> Value {
        let now = now();
        json!({
            "iss": self.server.uri(), "aud": "pipelines", "iat": now, "exp": now + 300,
            "repository": repository, "event_name": event_name, "ref": git_ref,
            "sub": format!("repo:{repository}:{event_name}"),
        })
    }

    /// [`Issuer::claims`], signed.
    pub fn token(&self, repository: &str, event_name: &str, git_ref: &str) -> String {
        self.sign(&self.claims(repository, event_name, git_ref), KID)
    }

    /// `claims` signed with this issuer's key, naming the key `kid` (the issuer publishes
    /// its key as [`KID`]).
    pub fn sign(&self, claims: &Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&self.key).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// The issuer's private key (PEM), for tokens built by hand.
    pub fn key_pem(&self) -> Vec<u8> {
        self.key.clone()
    }

    /// How many times the signing keys were read.
    pub fn key_reads(&self) -> usize {
        self.runtime
            .block_on(self.server.received_requests())
            .unwrap_or_default()
            .len()
    }
}

/// Seconds since the epoch, as tokens count time.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
