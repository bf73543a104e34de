//! `[web]`: who may act from the dispatcher's web page (cancel runs, approve or reject gated
//! applies), and how they prove who they are. Without a sign-in method the page is read-only.

use serde::Deserialize;

use crate::{Config, ConfigError, invalid};

/// `[web]`: sign-in methods and who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// A header set by an authenticating reverse proxy in front of the page (oauth2-proxy's
    /// `X-Forwarded-Email`, say): its value is the user. Only set it when the proxy is the one
    /// way to reach `dispatcher.web_address`, and strips the header from what clients send.
    #[serde(default)]
    pub proxy_header: Option<String>,
    /// Static tokens, each naming its user. Sent as `Authorization: Bearer TOKEN` by scripts,
    /// or typed once into the page's sign-in form, which sets a session cookie.
    #[serde(default)]
    pub tokens: Vec<WebToken>,
    /// Users who may cancel runs from the page.
    #[serde(default)]
    pub operators: Vec<String>,
    /// Users who may approve or reject gated applies and destroys from the page.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Hours a sign-in through the form lasts.
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
}

/// One static token: the user it signs in, and the SHA-256 of the token (hex), so that the
/// configuration never holds the token itself (`printf %s "$TOKEN" | sha256sum`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebToken {
    pub user: String,
    pub sha256: String,
}

impl Default for WebSettings {
    fn default() -> WebSettings {
        WebSettings {
            proxy_header: None,
            tokens: Vec::new(),
            operators: Vec::new(),
            approvers: Vec::new(),
            session_hours: default_session_hours(),
        }
    }
}

fn default_session_hours() -> u64 {
    12
}

impl WebSettings {
    /// Whether any sign-in method is configured: without one nobody can act.
    pub fn authenticates(&self) -> bool {
        self.proxy_header.is_some() || !self.tokens.is_empty()
    }

    pub fn may_cancel(&self, user: &str) -> bool {
        self.operators.iter().any(|operator| operator == user)
    }

    pub fn may_approve(&self, user: &str) -> bool {
        self.approvers.iter().any(|approver| approver == user)
    }
}

/// Names the key of the first bad value.
pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    let web = &config.web;
    if let Some(header) = &web.proxy_header
        && (header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(invalid(
            "web.proxy_header",
            format!("{header:?} is not an HTTP header name"),
        ));
    }
    for (i, token) in web.tokens.iter().enumerate() {
        if token.user.trim().is_empty() {
            return Err(invalid(
                format!("web.tokens[{i}].user"),
                "must not be empty",
            ));
        }
        if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                format!("web.tokens[{i}].sha256"),
                format!(
                    "{:?} is not a SHA-256 in hex (64 characters; printf %s \"$TOKEN\" | sha256sum)",
                    token.sha256
                ),
            ));
        }
    }
    if web.session_hours == 0 {
        return Err(invalid("web.session_hours", "must be at least 1"));
    }
    let names_users = !web.operators.is_empty() || !web.approvers.is_empty();
    if names_users && !web.authenticates() {
        return Err(invalid(
            "web.operators",
            "names users, but no sign-in method is configured (web.proxy_header or web.tokens): \
             nobody could sign in to act",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(web: WebSettings) -> Config {
        let mut config = Config::embedded("infra", "/srv/git/infra.git", "main");
        config.web = web;
        config
    }

    fn error(web: WebSettings) -> String {
        validate(&config(web)).unwrap_err().to_string()
    }

    #[test]
    fn bad_web_settings_name_their_key() {
        assert!(
            error(WebSettings {
                proxy_header: Some("X Forwarded: Email".into()),
                ..WebSettings::default()
            })
            .contains("`web.proxy_header`")
        );
        let bad_token = WebSettings {
            tokens: vec![WebToken {
                user: "alice".into(),
                sha256: "secret".into(),
            }],
            ..WebSettings::default()
        };
        assert!(error(bad_token).contains("`web.tokens[0].sha256`: \"secret\" is not a SHA-256"));
        let nobody_signs_in = WebSettings {
            operators: vec!["alice".into()],
            ..WebSettings::default()
        };
        assert!(error(nobody_signs_in).contains("no sign-in method"));
        assert!(validate(&config(WebSettings::default())).is_ok());
    }

    #[test]
    fn only_named_users_may_act() {
        let web = WebSettings {
            proxy_header: Some("X-Forwarded-Email".into()),
            operators: vec!["ops@example.com".into()],
            approvers: vec!["lead@example.com".into()],
            ..WebSettings::default()
        };
        assert!(web.authenticates());
        assert!(web.may_cancel("ops@example.com"));
        assert!(!web.may_cancel("lead@example.com"));
        assert!(web.may_approve("lead@example.com"));
        assert!(!web.may_approve("ops@example.com"));
        assert!(!WebSettings::default().authenticates());
    }
}
