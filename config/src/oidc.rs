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
    for (key, url) in [
        ("dispatcher.oidc.issuer", Some(oidc.issuer.as_str())),
        ("dispatcher.oidc.jwks_url", oidc.jwks_url.as_deref()),
    ] {
        if let Some(url) = url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid(
                key,
                format!("{url:?} is not an http:// or https:// address"),
            ));
        }
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

#[cfg(test)]
mod tests {
    use crate::Config;

    fn config(repository: &str, oidc: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[[repositories]]\nname = \"infra\"\nurl = \"/srv/infra.git\"\n{repository}\n\
             [[accounts]]\nname = \"dev\"\npaths = [\"**\"]\n[dispatcher.oidc]\n{oidc}\n"
        ))
        .map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_are_github_actions_with_the_pipelines_audience() {
        let config = config("github = \"acme/infra\"", "").unwrap();
        let oidc = config.dispatcher.oidc.unwrap();
        assert_eq!(oidc.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(
            oidc.jwks_url(),
            "https://token.actions.githubusercontent.com/.well-known/jwks"
        );
        assert_eq!(oidc.audience, "pipelines");
        assert_eq!(oidc.leeway(), std::time::Duration::from_secs(3600));
    }

    #[test]
    fn bad_values_are_refused_naming_their_key() {
        let github = "github = \"acme/infra\"";
        for (repository, oidc, expected) in [
            (
                github,
                "issuer = \"token.actions\"",
                "`dispatcher.oidc.issuer`: \"token.actions\" is not an http:// or https:// address",
            ),
            (
                github,
                "jwks_url = \"file:///keys\"",
                "`dispatcher.oidc.jwks_url`: \"file:///keys\" is not an http:// or https:// address",
            ),
            (
                github,
                "audience = \" \"",
                "`dispatcher.oidc.audience`: must name the audience",
            ),
            (
                github,
                "leeway = \"soon\"",
                "`dispatcher.oidc.leeway`: \"soon\"",
            ),
            (
                "",
                "",
                "`repositories[0].github`: \"infra\" needs its GitHub owner/name",
            ),
        ] {
            let err = config(repository, oidc).unwrap_err();
            assert!(err.contains(expected), "{oidc}: {err}");
        }
    }
}
