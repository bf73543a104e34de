//! A job's cloud credentials: obtained per job from the provider the account names, handed to
//! the IaC process's environment and nowhere else, and redacted from everything it prints.
//!
//! Providers (`[[credentials]]` in the policy file):
//! - `none`: the worker's own environment (instance profile, workload identity);
//! - `aws-web-identity`: STS `AssumeRoleWithWebIdentity` with an OIDC token file;
//! - `command`: a program that prints `{"env": {"NAME": "value", ...}}`, and optionally
//!   `"files": {"NAME": "content", ...}` for credentials tools read from a file (a
//!   kubeconfig, a service-account key): each is written, mode 0600, into the job's own
//!   credentials directory (deleted with the job), and `NAME` is set to its path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use config::{Credentials, CredentialsProvider, ToolUser};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::process::Command;

/// Values shorter than this are not treated as secrets: redacting `1` or `us` everywhere would
/// make output unreadable, and such values protect nothing.
const MIN_SECRET_LEN: usize = 8;
/// Variables whose values are not secret, so output keeps them readable.
const NOT_SECRET: &[&str] = &["AWS_REGION", "AWS_DEFAULT_REGION"];

/// Why credentials could not be obtained. The job fails with this reason; nothing runs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialsError {
    #[error("credentials {name:?}: cannot read the token file {path}: {reason}")]
    TokenFile {
        name: String,
        path: String,
        reason: String,
    },
    #[error("credentials {name:?}: the command {program:?} failed: {reason}")]
    Command {
        name: String,
        program: String,
        reason: String,
    },
    #[error("credentials {name:?}: STS at {endpoint} failed: {reason}")]
    Sts {
        name: String,
        endpoint: String,
        reason: String,
    },
}

/// Environment variables for the IaC process, and which of their values to redact.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct JobCredentials {
    pub(crate) env: BTreeMap<String, String>,
    /// The contents of credential files (whole and line by line), redacted like values.
    pub(crate) file_secrets: Vec<String>,
}

impl std::fmt::Debug for JobCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values never reach a log.
        f.debug_struct("JobCredentials")
            .field("names", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl JobCredentials {
    /// The values that must never appear in output.
    pub(crate) fn secrets(&self) -> Vec<String> {
        self.env
            .iter()
            .filter(|(name, value)| {
                !NOT_SECRET.contains(&name.as_str()) && value.len() >= MIN_SECRET_LEN
            })
            .map(|(_, value)| value.clone())
            .chain(self.file_secrets.iter().cloned())
            .filter(|value| value.trim().len() >= MIN_SECRET_LEN)
            .collect()
    }
}

/// Where a job's credential files go, and who must be able to read them.
#[derive(Debug, Clone)]
pub(crate) struct FileTarget {
    pub(crate) dir: PathBuf,
    pub(crate) owner: Option<ToolUser>,
}

/// Obtains the credentials of `entry` for one job (`session` names the STS session), within
/// `timeout`.
pub(crate) async fn obtain(
    entry: &Credentials,
    session: &str,
    timeout: Duration,
    files: &FileTarget,
) -> Result<JobCredentials, CredentialsError> {
    match entry.provider {
        CredentialsProvider::None => Ok(JobCredentials::default()),
        CredentialsProvider::Command => from_command(entry, timeout, files).await,
        CredentialsProvider::AwsWebIdentity => from_web_identity(entry, session, timeout).await,
    }
}

#[derive(Deserialize)]
struct CommandOutput {
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

async fn from_command(
    entry: &Credentials,
    timeout: Duration,
    files: &FileTarget,
) -> Result<JobCredentials, CredentialsError> {
    let argv = entry.command.clone().unwrap_or_default();
    let failed = |reason: String| CredentialsError::Command {
        name: entry.name.clone(),
        program: argv.first().cloned().unwrap_or_default(),
        reason,
    };
    let Some((program, args)) = argv.split_first() else {
        return Err(failed("no command configured".into()));
    };
    let run = crate::without_worker_settings(&mut Command::new(program))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| failed(format!("no answer within {} s", timeout.as_secs())))?
        .map_err(|err| failed(err.to_string()))?;
    if !output.status.success() {
        // Its stderr may say why; its stdout may hold half a secret, so it is not shown.
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!("{}: {}", output.status, stderr.trim())));
    }
    let parsed: CommandOutput = serde_json::from_slice(&output.stdout).map_err(|err| {
        failed(format!(
            "its output is not {{\"env\": {{\"NAME\": \"value\", ...}}}} ({err})"
        ))
    })?;
    for name in parsed.env.keys().chain(parsed.files.keys()) {
        if !valid_name(name) {
            return Err(failed(format!(
                "{name:?} is not a valid environment variable name"
            )));
        }
    }
    let mut env = parsed.env;
    let mut secrets = Vec::new();
    for (name, content) in parsed.files {
        let path = write_file(files, &name, &content)
            .map_err(|err| failed(format!("cannot write the credential file {name}: {err}")))?;
        secrets.extend(content.lines().map(str::to_owned));
        secrets.push(content);
        env.insert(name, path.to_string_lossy().into_owned());
    }
    Ok(JobCredentials {
        env,
        file_secrets: secrets,
    })
}

/// Writes one credential file, readable by its owner alone, never through a symlink.
fn write_file(target: &FileTarget, name: &str, content: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // create_new: O_EXCL, which never follows a symlink planted in the job's directory.
    let path = target.dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(content.as_bytes())?;
    if let Some(owner) = target.owner {
        std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))?;
    }
    Ok(path)
}

async fn from_web_identity(
    entry: &Credentials,
    session: &str,
    timeout: Duration,
) -> Result<JobCredentials, CredentialsError> {
    let token_path = entry.token_file.clone().unwrap_or_default();
    // Tokens are rotated on disk (projected service account tokens): read it for every job.
    let token = tokio::fs::read_to_string(&token_path)
        .await
        .map_err(|err| CredentialsError::TokenFile {
            name: entry.name.clone(),
            path: token_path.display().to_string(),
            reason: err.to_string(),
        })?;
    let region = entry
        .region
        .clone()
        .unwrap_or_else(|| "us-east-1".to_owned());
    let endpoint = entry
        .sts_endpoint
        .clone()
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com/"));
    let failed = |reason: String| CredentialsError::Sts {
        name: entry.name.clone(),
        endpoint: endpoint.clone(),
        reason,
    };
    let form = form_encode(&[
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", entry.role_arn.as_deref().unwrap_or_default()),
        ("RoleSessionName", session),
        ("WebIdentityToken", token.trim()),
        (
            "DurationSeconds",
            &entry.session_seconds.unwrap_or(3600).to_string(),
        ),
    ]);
    let (status, body) = tokio::time::timeout(timeout, post_form(&endpoint, form))
        .await
        .map_err(|_| failed(format!("no answer within {} s", timeout.as_secs())))?
        .map_err(failed)?;
    if status != 200 {
        let message =
            xml_text(&body, "Message").unwrap_or_else(|| body.chars().take(200).collect());
        return Err(failed(format!("HTTP {status}: {message}")));
    }
    let sts = parse_assume_role_response(&body).map_err(failed)?;
    let env = BTreeMap::from([
        ("AWS_ACCESS_KEY_ID".to_owned(), sts.access_key_id),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), sts.secret_access_key),
        ("AWS_SESSION_TOKEN".to_owned(), sts.session_token),
        ("AWS_REGION".to_owned(), region.clone()),
        ("AWS_DEFAULT_REGION".to_owned(), region),
    ]);
    Ok(JobCredentials {
        env,
        file_secrets: Vec::new(),
    })
}

/// The credentials in an `AssumeRoleWithWebIdentityResponse`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StsCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: String,
}

/// Reads the three values out of STS's XML answer. The document is small and flat, so the
/// text of each element is found by name rather than with an XML parser.
pub(crate) fn parse_assume_role_response(xml: &str) -> Result<StsCredentials, String> {
    let get = |tag: &str| xml_text(xml, tag).ok_or_else(|| format!("the answer has no <{tag}>"));
    Ok(StsCredentials {
        access_key_id: get("AccessKeyId")?,
        secret_access_key: get("SecretAccessKey")?,
        session_token: get("SessionToken")?,
    })
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(unescape_xml(xml[start..end].trim()))
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `application/x-www-form-urlencoded`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// POSTs a form over HTTPS (or HTTP, for a local stand-in); the status and the body.
async fn post_form(url: &str, form: String) -> Result<(u16, String), String> {
    let provider = rustls::crypto::ring::default_provider();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|err| format!("no TLS root certificates: {err}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let request = hyper::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/xml")
        .body(Full::new(Bytes::from(form)))
        .map_err(|err| format!("invalid STS endpoint: {err}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|err| err.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| err.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_answers_yield_the_three_values_unescaped() {
        let xml = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>secret&amp;key</SecretAccessKey>
      <SessionToken>token/+=</SessionToken>
      <Expiration>2026-11-26T12:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        assert_eq!(
            parse_assume_role_response(xml),
            Ok(StsCredentials {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: "secret&key".into(),
                session_token: "token/+=".into(),
            })
        );
        assert_eq!(
            parse_assume_role_response("<Error><Message>denied</Message></Error>"),
            Err("the answer has no <AccessKeyId>".into())
        );
    }

    #[test]
    fn forms_are_percent_encoded() {
        assert_eq!(
            form_encode(&[("RoleArn", "arn:aws:iam::1:role/x"), ("Token", "a b+c")]),
            "RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx&Token=a%20b%2Bc"
        );
    }

    #[test]
    fn short_values_and_regions_are_not_secrets_and_debug_shows_names_only() {
        let credentials = JobCredentials {
            env: BTreeMap::from([
                ("AWS_REGION".into(), "eu-west-1-long".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "wJalrXUtnFEMI".into()),
                ("TF_VAR_tier".into(), "gold".into()),
            ]),
            file_secrets: Vec::new(),
        };
        assert_eq!(credentials.secrets(), ["wJalrXUtnFEMI"]);
        let debug = format!("{credentials:?}");
        assert!(
            !debug.contains("wJalrXUtnFEMI") && debug.contains("AWS_SECRET_ACCESS_KEY"),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn a_command_provider_gives_its_env_and_failures_say_why() {
        let entry = |command: &[&str]| Credentials {
            name: "test".into(),
            provider: CredentialsProvider::Command,
            role_arn: None,
            token_file: None,
            region: None,
            session_seconds: None,
            sts_endpoint: None,
            command: Some(command.iter().map(|s| (*s).to_owned()).collect()),
        };
        let dir = tempfile::tempdir().unwrap();
        let files = FileTarget {
            dir: dir.path().to_owned(),
            owner: None,
        };
        let obtain = |entry: Credentials, session: &'static str| {
            let files = files.clone();
            async move { obtain(&entry, session, Duration::from_secs(10), &files).await }
        };
        let ok = obtain(
            entry(&[
                "sh",
                "-c",
                r#"printf '%s' '{"env": {"TOKEN": "s3cr3t-value"}, "files": {"KEY_FILE": "line-one-secret\nline-two-secret"}}'"#,
            ]),
            "s",
        )
        .await
        .unwrap();
        assert_eq!(
            ok.env.get("TOKEN").map(String::as_str),
            Some("s3cr3t-value")
        );
        let key_file = dir.path().join("KEY_FILE");
        assert_eq!(
            ok.env.get("KEY_FILE").map(String::as_str),
            key_file.to_str()
        );
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&key_file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&key_file).unwrap(),
            "line-one-secret\nline-two-secret"
        );
        let secrets = ok.secrets();
        for secret in ["s3cr3t-value", "line-one-secret", "line-two-secret"] {
            assert!(secrets.iter().any(|s| s == secret), "{secret}: {secrets:?}");
        }

        let failing = obtain(entry(&["sh", "-c", "echo denied >&2; exit 3"]), "s")
            .await
            .unwrap_err()
            .to_string();
        assert!(failing.contains("exit status: 3: denied"), "{failing}");
        let garbage = obtain(entry(&["sh", "-c", "echo not-json"]), "s")
            .await
            .unwrap_err()
            .to_string();
        assert!(garbage.contains("is not {\"env\""), "{garbage}");
        let bad_name = obtain(entry(&["sh", "-c", r#"echo '{"env": {"A B": "x"}}'"#]), "s")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            bad_name.contains("\"A B\" is not a valid environment variable name"),
            "{bad_name}"
        );
    }
}
