//! Where the remote cache lives and how to reach it: the `s3://BUCKET/PREFIX` URL, then the
//! standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, web identity, container and instance credentials, all read
//! by `object_store`) and, when no key is in the environment, static keys of a profile of
//! `~/.aws/credentials` and `~/.aws/config` (`AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`,
//! `AWS_CONFIG_FILE`). Credentials are never put in a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A cache URL that cannot be used, or an environment that cannot reach it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL is not `s3://BUCKET[/PREFIX]`.
    #[error(
        "cache URL `{url}`: {why} (expected s3://BUCKET/PREFIX, for example s3://my-team-cache/omnipack)"
    )]
    Url { url: String, why: &'static str },
    /// A plain-HTTP endpoint without `AWS_ALLOW_HTTP=true`.
    #[error(
        "{var} is a plain-HTTP endpoint (http://...): set AWS_ALLOW_HTTP=true to allow unencrypted requests, or use https://"
    )]
    PlainHttp { var: &'static str },
    /// An endpoint with a user name or password in it (never printed).
    #[error(
        "{var} contains a user name or password; give credentials with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
    )]
    EndpointCredentials { var: &'static str },
    /// A profile file that cannot be used.
    #[error("{path}: profile `{profile}`: {why}")]
    Profile {
        path: String,
        profile: String,
        why: String,
    },
    /// A credential with spaces, control or non-ASCII characters (never printed).
    #[error(
        "{name} contains spaces, control characters or non-ASCII characters: copy the key again"
    )]
    Credential { name: &'static str },
    /// The threads that move bytes to and from the store could not be started.
    #[error("cannot start the remote cache's transfer threads: {0}")]
    Runtime(String),
}

/// A parsed `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUrl {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl CacheUrl {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<CacheUrl, ConfigError> {
        let err = |why| ConfigError::Url {
            url: without_userinfo(url),
            why,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| err("only s3:// URLs are supported"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(err("no bucket"));
        }
        if bucket.contains(['@', ':', '?', '#']) {
            return Err(err("not a bucket name"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.contains(['?', '#', '\\'])
            || prefix
                .split('/')
                .any(|c| (c.is_empty() && !prefix.is_empty()) || c == "." || c == "..")
        {
            return Err(err("the prefix must be plain /-separated names"));
        }
        Ok(CacheUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The URL as given back to users.
    pub fn display(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// `url` as it may be printed: a user name or password before an `@` in its authority is
/// replaced by `***`.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// Settings read from a profile, applied only where the environment has none.
#[derive(Default, PartialEq, Eq)]
pub(crate) struct ProfileSettings {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

// Never print keys.
impl std::fmt::Debug for ProfileSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileSettings")
            .field("has_keys", &self.access_key_id.is_some())
            .field("region", &self.region)
            .finish()
    }
}

/// Endpoint variables in the order `object_store` gives them precedence.
const ENDPOINT_VARS: [&str; 3] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"];

/// Checks the endpoint in `env` (and in the profile): plain HTTP only with
/// `AWS_ALLOW_HTTP=true`, and no credentials inside the URL.
pub(crate) fn check_endpoint(
    env: &dyn Fn(&str) -> Option<String>,
    profile_endpoint: Option<&str>,
) -> Result<(), ConfigError> {
    let allow_http = env("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // Every one that is set: which one wins is `object_store`'s business, none may be unsafe.
    let endpoints = ENDPOINT_VARS
        .iter()
        .filter_map(|v| env(v).filter(|s| !s.is_empty()).map(|s| (*v, s)))
        .chain(profile_endpoint.map(|e| ("endpoint_url", e.to_string())));
    for (var, url) in endpoints {
        let authority = url
            .split_once("://")
            .map_or(url.as_str(), |(_, r)| r)
            .split('/')
            .next()
            .unwrap_or_default();
        if authority.contains('@') {
            return Err(ConfigError::EndpointCredentials { var });
        }
        if url.to_ascii_lowercase().starts_with("http://") && !allow_http {
            return Err(ConfigError::PlainHttp { var });
        }
    }
    Ok(())
}

/// Credentials go into request headers: a value with anything but visible ASCII would be
/// refused deep in the HTTP client, so it is refused here, by name (never by value).
pub(crate) fn check_credentials(
    env: &dyn Fn(&str) -> Option<String>,
    profile: &ProfileSettings,
) -> Result<(), ConfigError> {
    let values = [
        ("AWS_ACCESS_KEY_ID", env("AWS_ACCESS_KEY_ID")),
        ("AWS_SECRET_ACCESS_KEY", env("AWS_SECRET_ACCESS_KEY")),
        ("AWS_SESSION_TOKEN", env("AWS_SESSION_TOKEN")),
        ("AWS_SECURITY_TOKEN", env("AWS_SECURITY_TOKEN")),
        ("aws_access_key_id", profile.access_key_id.clone()),
        ("aws_secret_access_key", profile.secret_access_key.clone()),
        ("aws_session_token", profile.session_token.clone()),
    ];
    for (name, value) in values {
        if value.is_some_and(|v| !v.bytes().all(|b| b.is_ascii_graphic())) {
            return Err(ConfigError::Credential { name });
        }
    }
    Ok(())
}

/// The profile's settings when the environment holds no access key: `AWS_PROFILE` (default
/// `default`) of the shared credentials and config files. A profile that needs SSO, a
/// credential process or an assumed role is an error saying how to export its keys.
pub(crate) fn profile_settings(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ProfileSettings, ConfigError> {
    let named = env("AWS_PROFILE").filter(|p| !p.is_empty());
    let profile = named.clone().unwrap_or_else(|| "default".to_string());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, rel: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(rel)))
    };
    let creds_path = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_path = file("AWS_CONFIG_FILE", ".aws/config");
    let creds = creds_path
        .as_deref()
        .and_then(read_ini)
        .and_then(|mut s| s.remove(&profile));
    let config_section = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let config = config_path
        .as_deref()
        .and_then(read_ini)
        .and_then(|mut s| s.remove(&config_section));
    if creds.is_none() && config.is_none() {
        if named.is_some() {
            return Err(ConfigError::Profile {
                path: creds_path.map_or_else(
                    || "~/.aws/credentials".to_string(),
                    |p| p.display().to_string(),
                ),
                profile,
                why: "no such profile in the credentials or config file".to_string(),
            });
        }
        return Ok(ProfileSettings::default());
    }
    let mut merged = config.unwrap_or_default();
    merged.extend(creds.unwrap_or_default());
    let has_keys = merged.contains_key("aws_access_key_id");
    if !has_keys
        && let Some(k) = [
            "credential_process",
            "role_arn",
            "source_profile",
            "sso_session",
        ]
        .into_iter()
        .chain(
            merged
                .keys()
                .map(String::as_str)
                .filter(|k| k.starts_with("sso_")),
        )
        .find(|k| merged.contains_key(*k))
    {
        return Err(ConfigError::Profile {
            path: config_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            profile: profile.clone(),
            why: format!(
                "`{k}` is not supported; export static keys first: eval \"$(aws configure export-credentials --profile {profile} --format env)\""
            ),
        });
    }
    if has_keys != merged.contains_key("aws_secret_access_key") {
        return Err(ConfigError::Profile {
            path: creds_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            profile,
            why: "aws_access_key_id and aws_secret_access_key must be given together".to_string(),
        });
    }
    Ok(ProfileSettings {
        access_key_id: merged.remove("aws_access_key_id"),
        secret_access_key: merged.remove("aws_secret_access_key"),
        session_token: merged.remove("aws_session_token"),
        region: merged.remove("region"),
        endpoint_url: merged.remove("endpoint_url"),
    })
}

/// Sections of an INI file (`[name]`, `key = value`, `#`/`;` comments); `None` when unreadable.
fn read_ini(path: &Path) -> Option<BTreeMap<String, BTreeMap<String, String>>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse_ini(&text))
}

fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            section = Some(name);
        } else if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(s.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn urls() {
        let u = CacheUrl::parse("s3://b/team/omnipack/").unwrap();
        assert_eq!(u.bucket, "b");
        assert_eq!(u.prefix, "team/omnipack");
        assert_eq!(u.display(), "s3://b/team/omnipack");
        assert_eq!(CacheUrl::parse("s3://b").unwrap().prefix, "");
        for bad in [
            "http://b/p",
            "s3:///p",
            "s3://b/a/../c",
            "s3://b/a//c",
            "b/p",
        ] {
            assert!(CacheUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_needs_allow_http_and_userinfo_is_refused() {
        let e = check_endpoint(&env_of(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")]), None);
        assert!(e.unwrap_err().to_string().contains("AWS_ALLOW_HTTP=true"));
        assert!(
            check_endpoint(
                &env_of(&[
                    ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
                    ("AWS_ALLOW_HTTP", "true")
                ]),
                None
            )
            .is_ok()
        );
        assert!(check_endpoint(&env_of(&[]), Some("http://minio:9000")).is_err());
        let e = check_endpoint(
            &env_of(&[("AWS_ENDPOINT_URL_S3", "https://user:secret@host/")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(check_endpoint(&env_of(&[("AWS_ENDPOINT_URL", "https://h")]), None).is_ok());
    }

    #[test]
    fn profiles() {
        let d = tempfile::tempdir().unwrap();
        let creds = d.path().join("credentials");
        let config = d.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = s1\n\n[ci]\n# comment\naws_access_key_id=AKCI\naws_secret_access_key=s2\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile ci]\nregion = auto\nendpoint_url = https://acct.r2.cloudflarestorage.com\n[profile sso]\nsso_start_url = https://x\n",
        )
        .unwrap();
        let (c, f) = (creds.to_str().unwrap(), config.to_str().unwrap());
        let base = [
            ("AWS_SHARED_CREDENTIALS_FILE", c),
            ("AWS_CONFIG_FILE", f),
            ("HOME", "/nonexistent"),
        ];
        let p = profile_settings(&env_of(&base)).unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("AKDEF"));
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        let mut ci = base.to_vec();
        ci.push(("AWS_PROFILE", "ci"));
        let p = profile_settings(&env_of(&ci)).unwrap();
        assert_eq!(p.access_key_id.as_deref(), Some("AKCI"));
        assert_eq!(p.session_token.as_deref(), Some("tok"));
        assert_eq!(p.region.as_deref(), Some("auto"));
        assert!(p.endpoint_url.is_some());
        assert!(!format!("{p:?}").contains("s2"));
        let mut sso = base.to_vec();
        sso.push(("AWS_PROFILE", "sso"));
        let e = profile_settings(&env_of(&sso)).unwrap_err().to_string();
        assert!(e.contains("export-credentials"), "{e}");
        let mut missing = base.to_vec();
        missing.push(("AWS_PROFILE", "nope"));
        assert!(profile_settings(&env_of(&missing)).is_err());
        // No files at all: nothing, and no error.
        assert_eq!(
            profile_settings(&env_of(&[("HOME", "/nonexistent")])).unwrap(),
            ProfileSettings::default()
        );
    }
}
