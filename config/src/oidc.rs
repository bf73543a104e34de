//! `[dispatcher.oidc]`: pull request events must carry an OIDC token of their own pull
//! request's CI job (GitHub Actions' `id-token`), so that one pull request's CI cannot speak
//! for another's number.

use serde::Deserialize;

use crate::{Config, ConfigError, invalid, parse_duration};

/// GitHub Actions' token issuer.
pub const GITHUB_ACTIONS_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Where and how pull request events' identity tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The tokens' issuer (`iss`). Default: GitHub Actions,
    /// `https://token.actions.githubusercontent.com`; GitHub Enterprise Server's is
    /// `https://HOST/_services/token`.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Where the issuer's signing keys are read (a JWKS document). Default:
    /// `<issuer>/.well-known/jwks`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The audience the workflow asks its token for (`aud`): tokens meant for anything else
    /// are refused.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// How long after its expiry a token is still taken (a duration like `1h`): an event may
    /// wait in the queue while the dispatcher is down, and its token expires in minutes.
    #[serde(default = "default_leeway")]
    pub leeway: String,
}

fn default_issuer() -> String {
    GITHUB_ACTIONS_ISSUER.to_owned()
}

fn default_audience() -> String {
    "pipelines".to_owned()
}

fn default_leeway() -> String {
    "1h".to_owned()
}

impl OidcSettings {
    /// The JWKS document's address.
    pub fn jwks_url(&self) -> String {
        self.jwks_url
            .clone()
            .unwrap_or_else(|| format!("{}/.well-known/jwks", self.issuer.trim_end_matches('/')))
    }

    /// `leeway` as a duration (validated at load).
    pub fn leeway(&self) -> std::time::Duration {
        parse_duration(&self.leeway).unwrap_or(std::time::Duration::from_secs(3600))
    }
}

pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    let Some(oidc) = &config.dispatcher.oidc else {
        return Ok(());
    };
    // Whoever could answer for the keys could sign any pull request's token: HTTPS, but for
    // an issuer on this machine.
    for (key, url) in [
        ("dispatcher.oidc.issuer", Some(oidc.issuer.as_str())),
        ("dispatcher.oidc.jwks_url", oidc.jwks_url.as_deref()),
    ] {
        if let Some(url) = url
            && !(url.starts_with("https://") || is_loopback_http(url))
        {
            return Err(invalid(
                key,
                format!(
                    "{url:?} is not an https:// address (http:// only on 127.0.0.1, ::1 or localhost)"
                ),
            ));
        }
    }
    if oidc.issuer.ends_with('/') {
        return Err(invalid(
            "dispatcher.oidc.issuer",
            format!(
                "{:?} ends with '/': tokens name their issuer without it",
                oidc.issuer
            ),
        ));
    }
    // A token vouches for pull requests; pushes, which apply, must come from the deploy
    // branch's own login, or the pull requests' login could still ask for applies.
    if config.dispatcher.deploy_orchestrator_users.is_empty() {
        return Err(invalid(
            "dispatcher.deploy_orchestrator_users",
            "must name the deploy branch's orchestrator login when [dispatcher.oidc] is set: \
             otherwise the pull requests' login may still send push events",
        ));
    }
    if oidc.audience.trim().is_empty() {
        return Err(invalid(
            "dispatcher.oidc.audience",
            "must name the audience the workflow asks its token for",
        ));
    }
    parse_duration(&oidc.leeway).map_err(|err| invalid("dispatcher.oidc.leeway", err))?;
    // A token names its repository as GitHub does: without `github`, nothing to compare.
    for (i, repo) in config.repositories.iter().enumerate() {
        if repo.github.is_none() {
            return Err(invalid(
                format!("repositories[{i}].github"),
                format!(
                    "{:?} needs its GitHub owner/name: with [dispatcher.oidc] a pull request \
                     event is taken only with a token of that repository's workflow",
                    repo.name
                ),
            ));
        }
    }
    Ok(())
}

/// `http://` to this machine (a test issuer, a local proxy), whose traffic nobody between
/// can change.
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const GITHUB: &str = "github = \"acme/infra\"";
    const DEPLOY: &str = "deploy_orchestrator_users = [\"pipelines-orchestrator-deploy\"]";

    fn config(repository: &str, deploy: &str, oidc: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[[repositories]]\nname = \"infra\"\nurl = \"/srv/infra.git\"\n{repository}\n\
             [[accounts]]\nname = \"dev\"\npaths = [\"**\"]\n[dispatcher]\n{deploy}\n\
             [dispatcher.oidc]\n{oidc}\n"
        ))
        .map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_are_github_actions_with_the_pipelines_audience() {
        let oidc = config(GITHUB, DEPLOY, "").unwrap().dispatcher.oidc.unwrap();
        assert_eq!(oidc.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(
            oidc.jwks_url(),
            "https://token.actions.githubusercontent.com/.well-known/jwks"
        );
        assert_eq!(oidc.audience, "pipelines");
        assert_eq!(oidc.leeway(), std::time::Duration::from_secs(3600));
        // An issuer on this machine may speak plain HTTP.
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost/token",
            "http://[::1]:9",
        ] {
            assert!(
                config(GITHUB, DEPLOY, &format!("issuer = \"{local}\"")).is_ok(),
                "{local}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_naming_their_key() {
        for (repository, deploy, oidc, expected) in [
            (
                GITHUB,
                DEPLOY,
                "issuer = \"token.actions\"",
                "`dispatcher.oidc.issuer`: \"token.actions\" is not an https:// address",
            ),
            (
                GITHUB,
                DEPLOY,
                "issuer = \"http://token.example\"",
                "`dispatcher.oidc.issuer`: \"http://token.example\" is not an https:// address \
                 (http:// only on 127.0.0.1, ::1 or localhost)",
            ),
            (
                GITHUB,
                DEPLOY,
                "issuer = \"https://token.actions.githubusercontent.com/\"",
                "`dispatcher.oidc.issuer`: \"https://token.actions.githubusercontent.com/\" ends \
                 with '/'",
            ),
            (
                GITHUB,
                DEPLOY,
                "jwks_url = \"file:///keys\"",
                "`dispatcher.oidc.jwks_url`: \"file:///keys\" is not an https:// address",
            ),
            (
                GITHUB,
                DEPLOY,
                "audience = \" \"",
                "`dispatcher.oidc.audience`: must name the audience",
            ),
            (
                GITHUB,
                DEPLOY,
                "leeway = \"soon\"",
                "`dispatcher.oidc.leeway`: \"soon\"",
            ),
            (
                "",
                DEPLOY,
                "",
                "`repositories[0].github`: \"infra\" needs its GitHub owner/name",
            ),
            (
                GITHUB,
                "",
                "",
                "`dispatcher.deploy_orchestrator_users`: must name the deploy branch's \
                 orchestrator login",
            ),
        ] {
            let err = config(repository, deploy, oidc).unwrap_err();
            assert!(err.contains(expected), "{oidc}: {err}");
        }
    }
}
