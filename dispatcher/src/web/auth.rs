//! Who is asking, for the web page: a bearer token, an authenticating proxy's header, or the
//! session cookie the sign-in form sets; and the CSRF token every form carries.
//!
//! Cookies and CSRF tokens are HMAC-SHA256 signatures under a key drawn when the dispatcher
//! starts (a restart signs everybody out). Tokens are compared by their SHA-256, which is all
//! the configuration holds.

use config::WebSettings;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "pipelines_session";

/// How a request proved who sent it. Only a browser sends cookies and proxy-set identities on
/// its own, so only those need a CSRF token with every action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Bearer,
    Proxy,
    Session,
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) user: String,
    pub(crate) method: Method,
}

/// The sign-in methods and the signing key.
#[derive(Clone)]
pub(crate) struct Auth {
    settings: WebSettings,
    key: [u8; 32],
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub(crate) fn new(settings: WebSettings, key: [u8; 32]) -> Auth {
        Auth { settings, key }
    }

    /// A fresh random key.
    pub(crate) fn random_key() -> [u8; 32] {
        let mut key = [0_u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key
    }

    pub(crate) fn settings(&self) -> &WebSettings {
        &self.settings
    }

    /// Who sent `headers`, if anyone we know. `now_s`: seconds since the epoch.
    pub(crate) fn identify(&self, headers: &HeaderMap, now_s: u64) -> Option<Identity> {
        if let Some(token) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        {
            // A wrong token is a failed sign-in, not an anonymous visit.
            return self.user_of_token(token.trim()).map(|user| Identity {
                user,
                method: Method::Bearer,
            });
        }
        if let Some(header) = &self.settings.proxy_header {
            let mut values = headers.get_all(header.as_str()).iter();
            let (first, second) = (values.next(), values.next());
            // A proxy that adds its header beside one the client sent, instead of replacing
            // it, passes on both: whichever came first could be the client's. Nobody, then.
            if second.is_some() {
                return None;
            }
            if let Some(user) = first
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|user| !user.is_empty())
            {
                return Some(Identity {
                    user: user.to_owned(),
                    method: Method::Proxy,
                });
            }
        }
        let cookie = cookie(headers, SESSION_COOKIE)?;
        self.verify_session(&cookie, now_s).map(|user| Identity {
            user,
            method: Method::Session,
        })
    }

    /// The user a static token signs in.
    pub(crate) fn user_of_token(&self, token: &str) -> Option<String> {
        let digest = hex(&Sha256::digest(token.as_bytes()));
        self.settings
            .tokens
            .iter()
            .find(|known| {
                constant_time_eq(
                    known.sha256.to_ascii_lowercase().as_bytes(),
                    digest.as_bytes(),
                )
            })
            .map(|known| known.user.clone())
    }

    /// A session cookie's value for `user`, valid until `expires_s`.
    pub(crate) fn session(&self, user: &str, expires_s: u64) -> String {
        let payload = format!("{}.{expires_s}", b64(user.as_bytes()));
        format!("{payload}.{}", b64(&self.sign(&payload)))
    }

    fn verify_session(&self, value: &str, now_s: u64) -> Option<String> {
        let (payload, signature) = value.rsplit_once('.')?;
        let signature = unb64(signature)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let (user, expires) = payload.split_once('.')?;
        if expires.parse::<u64>().ok()? <= now_s {
            return None;
        }
        String::from_utf8(unb64(user)?).ok()
    }

    /// The CSRF token of `user`'s forms.
    pub(crate) fn csrf(&self, user: &str) -> String {
        b64(&self.sign(&format!("csrf:{user}")))
    }

    /// Whether `token` is `user`'s CSRF token.
    pub(crate) fn check_csrf(&self, user: &str, token: &str) -> bool {
        let Some(token) = unb64(token) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(format!("csrf:{user}").as_bytes());
        mac.verify_slice(&token).is_ok()
    }

    fn sign(&self, payload: &str) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length")
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Whether a browser says the request comes from another site: `Sec-Fetch-Site`, else an
/// `Origin` that is not this host. (Requests with neither come from scripts, not pages.)
pub(crate) fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            origin_host != host
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::WebToken;
    use http::HeaderValue;

    const TOKEN: &str = "s3cret-token";

    fn auth() -> Auth {
        Auth::new(
            WebSettings {
                proxy_header: Some("X-Forwarded-Email".into()),
                tokens: vec![WebToken {
                    user: "alice".into(),
                    sha256: hex(&Sha256::digest(TOKEN.as_bytes())),
                }],
                operators: vec!["alice".into()],
                ..WebSettings::default()
            },
            [7; 32],
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_bearer_token_signs_in_its_user_and_a_wrong_one_nobody() {
        let auth = auth();
        let who = auth.identify(&headers(&[("authorization", "Bearer s3cret-token")]), 0);
        assert_eq!(
            who,
            Some(Identity {
                user: "alice".into(),
                method: Method::Bearer
            })
        );
        let wrong = headers(&[
            ("authorization", "Bearer guess"),
            ("x-forwarded-email", "mallory"),
        ]);
        assert_eq!(
            auth.identify(&wrong, 0),
            None,
            "a wrong token is not a fallback to the proxy"
        );
    }

    #[test]
    fn the_proxy_header_signs_in_its_user_unless_the_request_carries_it_twice() {
        let auth = auth();
        assert_eq!(
            auth.identify(&headers(&[("x-forwarded-email", "bob")]), 0),
            Some(Identity {
                user: "bob".into(),
                method: Method::Proxy
            })
        );
        let twice = headers(&[
            ("x-forwarded-email", "alice"),
            ("x-forwarded-email", "mallory"),
        ]);
        assert_eq!(
            auth.identify(&twice, 0),
            None,
            "either could be the client's"
        );
        let with_session = headers(&[
            ("x-forwarded-email", "alice"),
            ("x-forwarded-email", "alice"),
            (
                "cookie",
                &format!("{SESSION_COOKIE}={}", auth.session("alice", 100)),
            ),
        ]);
        assert_eq!(
            auth.identify(&with_session, 0),
            None,
            "not a fallback to the session either"
        );
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let auth = auth();
        let value = auth.session("alice", 100);
        let with =
            |value: &str| headers(&[("cookie", &format!("theme=dark; {SESSION_COOKIE}={value}"))]);
        assert_eq!(
            auth.identify(&with(&value), 99).map(|who| who.user),
            Some("alice".into())
        );
        assert_eq!(auth.identify(&with(&value), 100), None, "expired");
        let forged = value.replacen(&b64(b"alice"), &b64(b"admin"), 1);
        assert_eq!(
            auth.identify(&with(&forged), 0),
            None,
            "the signature covers the user"
        );
        let other_key = Auth::new(auth.settings.clone(), [8; 32]);
        assert_eq!(
            other_key.identify(&with(&value), 0),
            None,
            "a restart signs everybody out"
        );
    }

    #[test]
    fn csrf_tokens_belong_to_one_user() {
        let auth = auth();
        let token = auth.csrf("alice");
        assert!(auth.check_csrf("alice", &token));
        assert!(!auth.check_csrf("bob", &token));
        assert!(!auth.check_csrf("alice", ""));
        assert!(!auth.check_csrf("alice", "not base64!"));
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "pipelines:8480")
        ])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://pipelines:8480"),
            ("host", "pipelines:8480")
        ])));
        assert!(!cross_site(&headers(&[("host", "pipelines:8480")])));
    }
}
