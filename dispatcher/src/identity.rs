//! The edge of `[dispatcher.oidc]`: a change event's identity token checked against its
//! issuer's signing keys (read over HTTP, kept, read again for a key not seen yet). What the
//! token's claims must say about the event is `dispatcher_core::identity`'s decision. Tested
//! against a stand-in issuer in `harness/tests/oidc.rs`.

use std::time::Duration;

use broker::Headers;
pub use dispatcher_core::identity::{Identity, TokenClaims};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use octocrab::Octocrab;
use proto_types::ID_TOKEN_HEADER;
use tokio::time::Instant;

/// For a key not among those read, the keys are read again at most this often: a stream of
/// tokens naming made-up keys costs the issuer one request a minute.
const READ_KEYS_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// After a read that failed, the next may come this soon: an issuer that was briefly
/// unreachable costs pull requests' runs seconds, not a minute.
const READ_KEYS_AGAIN_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// A longer header is not a token worth parsing (GitHub's are about 1.5 KB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claims read from a token, beside those `Validation` checks (`exp`, `iss`, `aud`).
#[derive(Debug, serde::Deserialize)]
struct Claims {
    repository: String,
    event_name: String,
    #[serde(rename = "ref")]
    git_ref: String,
}

/// Checks tokens against `[dispatcher.oidc]`'s issuer.
pub struct Verifier {
    issuer: String,
    audience: String,
    leeway: Duration,
    jwks_url: String,
    /// Unauthenticated: the keys are public, and no GitHub credential goes to another host.
    http: Octocrab,
    timeout: Duration,
    keys: JwkSet,
    read_at: Option<Instant>,
    /// Why the last read failed, if it did: the reason a token whose key was not found is
    /// refused until the next read.
    read_failed: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("jwks_url", &self.jwks_url)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// `timeout` bounds each read of the keys (`timeouts.github`). Must run inside the tokio
    /// runtime it will be used on.
    pub fn new(settings: &config::OidcSettings, timeout: Duration) -> Result<Verifier, String> {
        let http = Octocrab::builder()
            .build()
            .map_err(|err| format!("cannot set up an HTTP client for the OIDC keys: {err}"))?;
        Ok(Verifier {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway(),
            jwks_url: settings.jwks_url(),
            http,
            timeout,
            keys: JwkSet { keys: Vec::new() },
            read_at: None,
            read_failed: None,
        })
    }

    /// The identity an event's headers carry ([`ID_TOKEN_HEADER`]).
    pub async fn identify(&mut self, headers: &Headers) -> Identity {
        let Some(token) = headers.get(ID_TOKEN_HEADER) else {
            return Identity::Absent;
        };
        match self.verify(token).await {
            Ok(claims) => Identity::Verified(claims),
            Err(reason) => Identity::Invalid(reason),
        }
    }

    async fn verify(&mut self, token: &str) -> Result<TokenClaims, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "it is {} bytes long, and a token is at most {MAX_TOKEN_BYTES}",
                token.len()
            ));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|err| format!("it is not a JWT: {err}"))?;
        // The issuer's keys are RSA: a token that names another algorithm (`none`, an HMAC
        // keyed with the public key) is never tried.
        if header.alg != Algorithm::RS256 {
            return Err(format!("it is signed with {:?}, not RS256", header.alg));
        }
        let kid = header
            .kid
            .ok_or_else(|| "it names no signing key (kid)".to_owned())?;
        if self.keys.find(&kid).is_none() && self.may_read_keys() {
            self.read_keys().await?;
        }
        let jwk = match (self.keys.find(&kid), &self.read_failed) {
            (Some(jwk), _) => jwk,
            (None, Some(failed)) => return Err(failed.clone()),
            (None, None) => {
                return Err(format!(
                    "its signing key {kid:?} is not among the issuer's keys at {}",
                    self.jwks_url
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|err| format!("the issuer's key {kid:?} cannot be used: {err}"))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway.as_secs();
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|err| self.explain(&err, &kid))?
            .claims;
        Ok(TokenClaims {
            repository: claims.repository,
            event_name: claims.event_name,
            git_ref: claims.git_ref,
        })
    }

    /// Why a token was refused, in the operator's terms.
    fn explain(&self, err: &jsonwebtoken::errors::Error, kid: &str) -> String {
        match err.kind() {
            ErrorKind::ExpiredSignature => format!(
                "it expired more than {} s ago (dispatcher.oidc.leeway)",
                self.leeway.as_secs()
            ),
            ErrorKind::InvalidAudience => format!(
                "it is meant for another audience than {:?} (dispatcher.oidc.audience)",
                self.audience
            ),
            ErrorKind::InvalidIssuer => format!("it was not issued by {}", self.issuer),
            ErrorKind::InvalidSignature => {
                format!("its signature does not match the issuer's key {kid:?}")
            }
            ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim:?} claim"),
            _ => format!("it cannot be read: {err}"),
        }
    }

    fn may_read_keys(&self) -> bool {
        let every = match self.read_failed {
            Some(_) => READ_KEYS_AGAIN_AFTER_FAILURE,
            None => READ_KEYS_AT_MOST_EVERY,
        };
        self.read_at.is_none_or(|at| at.elapsed() >= every)
    }

    /// Reads the issuer's keys; the keys read before stay when it fails, and the failure is
    /// kept as the reason for tokens whose key was not found until the next read.
    async fn read_keys(&mut self) -> Result<(), String> {
        let read = self.fetch_keys().await;
        self.read_at = Some(Instant::now());
        match read {
            Ok(keys) => {
                tracing::info!(url = %self.jwks_url, keys = keys.keys.len(), "Read the OIDC issuer's signing keys.");
                self.keys = keys;
                self.read_failed = None;
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(url = %self.jwks_url, %reason, "Cannot read the OIDC issuer's signing keys: pull requests' runs are refused until they can be.");
                self.read_failed = Some(reason.clone());
                Err(reason)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<JwkSet, String> {
        let url = &self.jwks_url;
        let failed =
            |reason: String| format!("the issuer's keys cannot be read from {url}: {reason}");
        let read = async {
            let response = self
                .http
                ._get(url.as_str())
                .await
                .map_err(|err| err.to_string())?;
            let status = response.status();
            let body = self
                .http
                .body_to_string(response)
                .await
                .map_err(|err| err.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            serde_json::from_str::<JwkSet>(&body)
                .map_err(|err| format!("not a JWKS document: {err}"))
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| {
                failed(format!(
                    "no answer within {} ms (timeouts.github)",
                    self.timeout.as_millis()
                ))
            })?
            .map_err(failed)
    }
}
