//! The dispatcher's check of pull request events' OIDC tokens (`dispatcher::identity`)
//! against a stand-in issuer: its key made by openssl for the run, its JWKS served over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::time::Duration;

use dispatcher::identity::{Identity, TokenClaims, Verifier};
use harness::oidc::{Issuer, KID, now};
use serde_json::{Value, json};

/// A verifier trusting `issuer_url` as `[dispatcher.oidc]` does by default (audience
/// `pipelines`, leeway 1 h), on its own runtime.
struct Checker {
    runtime: tokio::runtime::Runtime,
    verifier: Verifier,
}

impl Checker {
    fn new(issuer_url: &str) -> Checker {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let settings = config::OidcSettings {
            issuer: issuer_url.to_owned(),
            jwks_url: None,
            audience: "pipelines".into(),
            leeway: "1h".into(),
        };
        let verifier = {
            let _inside = runtime.enter();
            Verifier::new(&settings, Duration::from_secs(10)).unwrap()
        };
        Checker { runtime, verifier }
    }

    fn identify(&mut self, token: Option<&str>) -> Identity {
        let headers: broker::Headers = token
            .map(|token| (proto_types::ID_TOKEN_HEADER.to_owned(), token.to_owned()))
            .into_iter()
            .collect();
        self.runtime.block_on(self.verifier.identify(&headers))
    }

    fn refused(&mut self, token: &str) -> String {
        match self.identify(Some(token)) {
            Identity::Invalid(reason) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn a_token_the_issuer_signed_gives_its_claims_and_the_keys_are_read_once() {
    let issuer = Issuer::start();
    let mut checker = Checker::new(&issuer.url());
    for _ in 0..2 {
        let token = issuer.token("acme/infra", "pull_request", "refs/pull/7/merge");
        assert_eq!(
            checker.identify(Some(&token)),
            Identity::Verified(TokenClaims {
                repository: "acme/infra".into(),
                event_name: "pull_request".into(),
                git_ref: "refs/pull/7/merge".into(),
            })
        );
    }
    assert_eq!(checker.identify(None), Identity::Absent);
    assert_eq!(issuer.key_reads(), 1);
}

#[test]
fn a_token_that_does_not_check_out_is_refused_saying_why() {
    let issuer = Issuer::start();
    let impostor = Issuer::start();
    let mut checker = Checker::new(&issuer.url());
    let good = issuer.claims("acme/infra", "pull_request", "refs/pull/7/merge");
    let with = |key: &str, value: Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(KID.into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &good,
        &jsonwebtoken::EncodingKey::from_secret(b"the issuer's public key, say"),
    )
    .unwrap();
    let without_kid = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &good,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&issuer.key_pem()).unwrap(),
    )
    .unwrap();
    let mut no_repository = good.clone();
    no_repository.as_object_mut().unwrap().remove("repository");
    let late = now() - 3700;
    for (token, expected) in [
        (
            // Another key under the issuer's key id.
            impostor.sign(&good, KID),
            format!("its signature does not match the issuer's key {KID:?}"),
        ),
        (
            issuer.sign(&with("aud", json!("sts.amazonaws.com")), KID),
            "it is meant for another audience than \"pipelines\" (dispatcher.oidc.audience)"
                .to_owned(),
        ),
        (
            issuer.sign(&with("iss", json!(impostor.url())), KID),
            format!("it was not issued by {}", issuer.url()),
        ),
        (
            issuer.sign(&with("exp", json!(late)), KID),
            "it expired more than 3600 s ago (dispatcher.oidc.leeway)".to_owned(),
        ),
        (hmac, "it is signed with HS256, not RS256".to_owned()),
        ("not.a.token".to_owned(), "it is not a JWT".to_owned()),
        (
            without_kid.clone(),
            "it names no signing key (kid)".to_owned(),
        ),
        (
            "x".repeat(17 * 1024),
            "it is 17408 bytes long, and a token is at most 16384".to_owned(),
        ),
        (
            issuer.sign(&no_repository, KID),
            "it cannot be read".to_owned(),
        ),
    ] {
        let reason = checker.refused(&token);
        assert!(reason.starts_with(&expected), "{expected}: {reason}");
    }
    // Expired, but within the leeway (it waited in the queue while the dispatcher was down).
    let queued = issuer.sign(&with("exp", json!(now() - 600)), KID);
    assert!(matches!(
        checker.identify(Some(&queued)),
        Identity::Verified(_)
    ));
}

#[test]
fn an_unknown_key_is_looked_for_at_most_once_a_minute() {
    let issuer = Issuer::start();
    let mut checker = Checker::new(&issuer.url());
    let claims = issuer.claims("acme/infra", "pull_request", "refs/pull/7/merge");
    assert!(matches!(
        checker.identify(Some(&issuer.sign(&claims, KID))),
        Identity::Verified(_)
    ));
    // The keys were read for the first token; a key they lack does not read them again
    // within the minute, however many tokens name it.
    let unknown = issuer.sign(&claims, "made-up");
    for _ in 0..3 {
        assert_eq!(
            checker.refused(&unknown),
            format!(
                "its signing key \"made-up\" is not among the issuer's keys at {}/.well-known/jwks",
                issuer.url()
            )
        );
    }
    assert_eq!(issuer.key_reads(), 1);
}

#[test]
fn keys_that_cannot_be_read_refuse_the_token_naming_the_address() {
    let issuer = Issuer::start();
    // Nothing listens at a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("http://127.0.0.1:{port}");
    let mut checker = Checker::new(&gone);
    let token = issuer.token("acme/infra", "pull_request", "refs/pull/7/merge");
    // The next token, within the seconds before the keys are read again, says the same.
    for _ in 0..2 {
        let reason = checker.refused(&token);
        assert!(
            reason.starts_with(&format!(
                "the issuer's keys cannot be read from {gone}/.well-known/jwks: "
            )),
            "{reason}"
        );
    }
}
