//! `[web]`: who may act from the dispatcher's web page (cancel runs, approve or reject gated
//! applies), and how they prove who they are. Without a sign-in method the page is read-only.

use std::net::IpAddr;

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
    /// The addresses (`10.0.0.7`) and networks (`10.0.0.0/8`) the proxy connects from: the
    /// header of a request from anywhere else is dropped, so whoever reaches `web_address`
    /// directly cannot claim a user. Default: this machine only (127.0.0.1, ::1).
    #[serde(default = "default_proxy_addresses")]
    pub proxy_addresses: Vec<String>,
    /// Static tokens, each naming its user. Sent as `Authorization: Bearer TOKEN` by scripts,
    /// or typed once into the page's sign-in form, which sets a session cookie.
    #[serde(default)]
    pub tokens: Vec<WebToken>,
    /// Users who may cancel runs from the page.
    #[serde(default)]
    pub operators: Vec<String>,
    /// Users who may approve or reject gated applies and destroys from the page. They open
    /// approval gates; they do not override policy denies (`override = "approvers"` names
    /// `[approvals] users` alone).
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
            proxy_addresses: default_proxy_addresses(),
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

fn default_proxy_addresses() -> Vec<String> {
    vec!["127.0.0.1".into(), "::1".into()]
}

/// An address or a network in CIDR notation: `10.0.0.7`, `10.0.0.0/8`, `fd00::/8`.
fn parse_network(text: &str) -> Option<(IpAddr, u32)> {
    let (address, bits) = match text.trim().split_once('/') {
        Some((address, bits)) => (address, Some(bits)),
        None => (text.trim(), None),
    };
    let address: IpAddr = address.parse().ok()?;
    let width = if address.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(bits) => bits.parse::<u32>().ok().filter(|bits| *bits <= width)?,
        None => width,
    };
    Some((address, bits))
}

/// Whether `peer` is inside `network` (`address/bits`).
fn contains((network, bits): (IpAddr, u32), peer: IpAddr) -> bool {
    // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    match (network, peer) {
        (IpAddr::V4(network), IpAddr::V4(peer)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(network) & mask == u32::from(peer) & mask
        }
        (IpAddr::V6(network), IpAddr::V6(peer)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(network) & mask == u128::from(peer) & mask
        }
        _ => false,
    }
}

impl WebSettings {
    /// Whether any sign-in method is configured: without one nobody can act.
    pub fn authenticates(&self) -> bool {
        self.proxy_header.is_some() || !self.tokens.is_empty()
    }

    /// Whether a request from `peer` may sign in through `proxy_header`.
    pub fn trusts_proxy(&self, peer: IpAddr) -> bool {
        self.proxy_addresses
            .iter()
            .filter_map(|network| parse_network(network))
            .any(|network| contains(network, peer))
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
    for (i, network) in web.proxy_addresses.iter().enumerate() {
        if parse_network(network).is_none() {
            return Err(invalid(
                format!("web.proxy_addresses[{i}]"),
                format!("{network:?} is neither an IP address nor a network (10.0.0.0/8)"),
            ));
        }
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
    fn the_proxy_is_trusted_only_from_its_addresses() {
        let web = WebSettings::default();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(web.trusts_proxy(ip("127.0.0.1")));
        assert!(web.trusts_proxy(ip("::1")));
        assert!(
            web.trusts_proxy(ip("::ffff:127.0.0.1")),
            "IPv4 on a dual-stack socket"
        );
        assert!(!web.trusts_proxy(ip("10.0.0.7")));
        let web = WebSettings {
            proxy_addresses: vec!["10.0.0.0/8".into(), "fd00::/8".into(), "192.0.2.1".into()],
            ..WebSettings::default()
        };
        assert!(web.trusts_proxy(ip("10.200.3.4")));
        assert!(web.trusts_proxy(ip("fd12::1")));
        assert!(web.trusts_proxy(ip("192.0.2.1")));
        assert!(!web.trusts_proxy(ip("192.0.2.2")));
        assert!(!web.trusts_proxy(ip("11.0.0.1")));
        assert!(
            !web.trusts_proxy(ip("127.0.0.1")),
            "the default is replaced"
        );
        let everywhere = WebSettings {
            proxy_addresses: vec!["0.0.0.0/0".into()],
            ..WebSettings::default()
        };
        assert!(everywhere.trusts_proxy(ip("203.0.113.9")));
    }

    #[test]
    fn bad_web_settings_name_their_key() {
        for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0/8", ""] {
            let err = error(WebSettings {
                proxy_addresses: vec!["127.0.0.1".into(), bad.into()],
                ..WebSettings::default()
            });
            assert!(err.contains("`web.proxy_addresses[1]`"), "{bad}: {err}");
        }
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
