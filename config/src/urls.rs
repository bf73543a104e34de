//! Broker and repository URLs: their passwords, found, added and hidden.

/// What a secret shows as in `Debug` output and messages.
pub const REDACTED: &str = "***";

/// The password of a URL's user information, if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password)
}

/// The user a URL logs in as (`amqp://alice:…@host` → `alice`), if it names one.
pub fn url_user(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    (!user.is_empty()).then_some(user)
}

/// The vhost part of a URL (`amqp://host:5672/%2f` → `%2f`; empty when it names none).
pub fn url_vhost(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.find('/').map_or("", |at| &rest[at + 1..]);
    &path[..path.find(['?', '#']).unwrap_or(path.len())]
}

/// `url` with `password` (percent-encoded) after its user; `None` without a user.
pub fn with_password(url: &str, password: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (user, host) = rest.split_once('@')?;
    if user.is_empty() || user.contains(':') {
        return None;
    }
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Some(format!("{scheme}://{user}:{encoded}@{host}"))
}

/// A URL without its secret: `scheme://user:***@host/...` when it has a password, and
/// `scheme://***@host/...` when its only user information is a token
/// (`https://ghp_x@github.com/...`). Anything else is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last '@' before the path.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((userinfo, host)) = rest[..authority_end].rsplit_once('@') else {
        return url.to_owned();
    };
    let tail = &rest[authority_end..];
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}@{host}{tail}"),
        None => format!("{scheme}://{REDACTED}@{host}{tail}"),
    }
}

/// An http(s) URL's user information as a git setting instead: `(the URL without it, (key,
/// value))`. A password (`https://x-access-token:TOKEN@host/…`) becomes a Basic
/// `Authorization` header for requests to that URL (git also sends it after a redirect of
/// the first request, as it does any extra header); a user alone (`https://org@host/…`,
/// or a token in its place) becomes `credential.<url>.username`, as git would take it from
/// the URL, for the credential helpers of `executor.git_config` (or the dispatcher's) to
/// answer. `None` for any other URL, and for other arguments. Git and its transport helper
/// show their arguments to every user of the host (`/proc/PID/cmdline`), the tools of a plan
/// running beside a worker among them, while their environment is theirs alone.
pub fn git_credentials_apart(arg: &str) -> Option<(String, (String, String))> {
    use base64::Engine;
    let (scheme, rest) = arg.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let bare = format!("{scheme}://{host}{}", &rest[authority_end..]);
    let Some((user, password)) = userinfo.split_once(':') else {
        let user = String::from_utf8_lossy(&percent_decoded(userinfo)).into_owned();
        return Some((bare.clone(), (format!("credential.{bare}.username"), user)));
    };
    // As git reads them: percent-decoded.
    let mut basic = percent_decoded(user);
    basic.push(b':');
    basic.extend(percent_decoded(password));
    let header = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(basic)
    );
    Some((bare.clone(), (format!("http.{bare}.extraHeader"), header)))
}

/// `args` for git, each http(s) URL's user information moved into `settings` (see
/// [`git_credentials_apart`]).
pub fn git_args_without_credentials(
    args: &[&str],
    settings: &mut Vec<(String, String)>,
) -> Vec<String> {
    args.iter()
        .map(|arg| match git_credentials_apart(arg) {
            Some((bare, setting)) => {
                settings.push(setting);
                bare
            }
            None => (*arg).to_owned(),
        })
        .collect()
}

/// `text` with each `%XX` turned into its byte.
fn percent_decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_passwords_and_tokens_but_keep_the_rest() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("https://ghp_abc@github.com/a/b.git"),
            "https://***@github.com/a/b.git"
        );
        assert_eq!(
            redact_url("https://github.com/a/b@c.git"),
            "https://github.com/a/b@c.git"
        );
        assert_eq!(redact_url("/srv/git/infra.git"), "/srv/git/infra.git");
    }

    #[test]
    fn the_user_information_of_an_http_url_becomes_git_settings_for_that_url() {
        use base64::Engine;
        let basic = |credentials: &str| {
            format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            )
        };
        assert_eq!(
            git_credentials_apart("https://x-access-token:s3cr%2Ft@github.com/acme/infra.git"),
            Some((
                "https://github.com/acme/infra.git".to_owned(),
                (
                    "http.https://github.com/acme/infra.git.extraHeader".to_owned(),
                    basic("x-access-token:s3cr/t")
                )
            ))
        );
        // A user alone stays a user, for the credential helpers; off the command line too,
        // since it may be a token.
        assert_eq!(
            git_credentials_apart("https://ghp_x%41@dev.example:8080/org/_git/infra"),
            Some((
                "https://dev.example:8080/org/_git/infra".to_owned(),
                (
                    "credential.https://dev.example:8080/org/_git/infra.username".to_owned(),
                    "ghp_xA".to_owned()
                )
            ))
        );
        // `%` not followed by two hexadecimal digits is itself.
        assert_eq!(percent_decoded("a%+1%4g%%41%"), b"a%+1%4g%A%");
        for untouched in [
            "https://github.com/acme/infra.git",
            "https://github.com/acme/in@fra.git",
            "ssh://git@github.com/acme/infra.git",
            "git@github.com:acme/infra.git",
            "file:///srv/infra.git",
            "+refs/heads/*:refs/heads/*",
            "fetch",
        ] {
            assert_eq!(git_credentials_apart(untouched), None, "{untouched}");
        }
    }
}
