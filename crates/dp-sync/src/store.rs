//! Large payloads through an S3-compatible object store (`[artifacts]` in deploy.toml).
//!
//! A payload (the tar of what the hosts on one base lack) is the same for every host on
//! that base, so it is uploaded once, named by its SHA-256, and each host fetches it
//! itself through a short-lived presigned URL, checks the hash and unpacks it as it
//! unpacks a streamed one. The deploying machine's bytes out then no longer grow with
//! the number of hosts.
//!
//! Objects are named `<prefix>/<release>/<sha256>.tar[.gz|.bz2]`. The signing is
//! rusty-s3's (sans-IO: it makes presigned URLs); the requests go through ureq, which dp
//! already uses for health URLs. Credentials come from the standard AWS environment
//! variables or a profile in `~/.aws/credentials`, never from deploy.toml, and never
//! appear in records, logs or argv: a presigned URL reaches a host on its stdin.

use rusty_s3::actions::{DeleteObject, HeadObject, ListObjectsV2, PutObject, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Payloads smaller than this stream over SSH (`[artifacts] threshold`).
pub const THRESHOLD: u64 = 1 << 20;

/// How long a presigned URL stays valid (`[artifacts] url_ttl`).
pub const URL_TTL: Duration = Duration::from_secs(15 * 60);

/// How long the client waits for the store to connect, or for a read or write to move.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the store, from `[artifacts]`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `s3://bucket/prefix`.
    pub store: String,
    /// The store's URL (default: `AWS_ENDPOINT_URL`, else AWS's for the region).
    pub endpoint: Option<String>,
    /// The region (default: `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// The credentials profile, tried before the environment's keys when given.
    pub profile: Option<String>,
    /// Payloads from this many bytes go through the store.
    pub threshold: u64,
    /// A host that cannot fetch is sent the payload over SSH instead of failing.
    pub fallback_direct: bool,
    /// How long a host's presigned URL stays valid.
    pub url_ttl: Duration,
    /// Releases whose payloads are kept in the store (0: never delete).
    pub keep: usize,
}

impl StoreOptions {
    /// From deploy.toml's `[artifacts]`, if it has one (`keep` defaults to the releases
    /// kept on the hosts).
    pub fn from_config(config: &dp_core::config::Config) -> Option<StoreOptions> {
        let c = config.artifacts.as_ref()?;
        Some(StoreOptions {
            store: c.store.clone(),
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            profile: c.profile.clone(),
            threshold: c.threshold.unwrap_or(THRESHOLD),
            fallback_direct: c.fallback == Some(dp_core::config::Fallback::Direct),
            url_ttl: c.url_ttl.unwrap_or(URL_TTL),
            keep: c
                .keep
                .map_or_else(|| config.keep_releases(), |k| k as usize),
        })
    }
}

/// An open store: where it is and the credentials to sign with.
pub struct Store {
    bucket: Bucket,
    credentials: Credentials,
    /// Empty, or ending with `/`.
    prefix: String,
    /// `host[:port]` of the endpoint, for messages.
    host: String,
    agent: ureq::Agent,
    /// See [`StoreOptions`].
    pub threshold: u64,
    /// See [`StoreOptions`].
    pub fallback_direct: bool,
    url_ttl: Duration,
    keep: usize,
}

/// `s3://bucket/prefix` as (bucket, prefix without slashes at either end).
fn parse_store(text: &str) -> Result<(String, String), String> {
    let bad = |why: &str| format!("[artifacts] store {text:?}: {why}");
    let rest = text
        .strip_prefix("s3://")
        .ok_or_else(|| bad("write it as s3://bucket/prefix"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(bad(
            "the bucket name has 3 to 63 lowercase letters, digits, dots or dashes",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.chars().any(char::is_control) || prefix.split('/').any(|s| s == "." || s == "..") {
        return Err(bad("the prefix has no control characters, `.` or `..`"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The credentials file's path (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`).
fn credentials_file() -> PathBuf {
    env("AWS_SHARED_CREDENTIALS_FILE").map_or_else(
        || dp_core::config::expand_home(Path::new("~/.aws/credentials")),
        PathBuf::from,
    )
}

/// The keys of `[profile]` in an AWS credentials file's text.
fn profile_keys(text: &str, profile: &str) -> Option<Credentials> {
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !inside {
            continue;
        }
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => key = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    Some(match token {
        Some(t) => Credentials::new_with_token(key?, secret?, t),
        None => Credentials::new(key?, secret?),
    })
}

/// The environment's keys, or a profile's: `profile` (from deploy.toml) first when
/// given, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else `AWS_PROFILE` or
/// `default` in the credentials file.
fn credentials(profile: Option<&str>) -> Result<Credentials, String> {
    if profile.is_none() {
        if let Some(c) = Credentials::from_env() {
            return Ok(c);
        }
    }
    let name = profile
        .map(str::to_string)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let file = credentials_file();
    let found = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| profile_keys(&text, &name));
    found.ok_or_else(|| {
        format!(
            "no credentials for the artifact store: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or give profile [{name}] aws_access_key_id and \
             aws_secret_access_key in {}",
            file.display()
        )
    })
}

/// The release of a payload's object name under the prefix (`<release>/<sha256>.tar`,
/// `.tar.gz` or `.tar.bz2`); `None` for anything else, which dp never deletes (a bucket
/// or prefix may hold other objects).
fn payload_release(name: &str) -> Option<&str> {
    let (release, file) = name.split_once('/')?;
    use crate::codec::Codec;
    let hash = [Codec::None, Codec::Gzip, Codec::Bzip2]
        .iter()
        .find_map(|c| file.strip_suffix(c.extension()))?;
    let ok = dp_core::layout::check_release_id(release).is_ok()
        && hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(release)
}

/// The S3 error code in an error response's body (`<Code>NoSuchKey</Code>`).
fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    Some(&body[start..start + len]).filter(|c| c.len() < 100)
}

impl Store {
    /// Resolves the endpoint, region and credentials; checks nothing over the network.
    pub fn open(o: &StoreOptions) -> Result<Store, String> {
        let (bucket, prefix) = parse_store(&o.store)?;
        let region = o
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = o
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let (endpoint, style) = match &custom {
            Some(e) => (e.clone(), UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let url = url::Url::parse(&endpoint)
            .map_err(|e| format!("[artifacts] endpoint {endpoint:?}: {e}"))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(format!("[artifacts] endpoint {endpoint:?} has no host")),
        };
        let bucket = Bucket::new(url, style, bucket, region)
            .map_err(|e| format!("[artifacts] endpoint {endpoint:?}: {e}"))?;
        Ok(Store {
            bucket,
            credentials: credentials(o.profile.as_deref())?,
            prefix: if prefix.is_empty() {
                prefix
            } else {
                format!("{prefix}/")
            },
            host,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(IO_TIMEOUT)
                .timeout_read(IO_TIMEOUT)
                .timeout_write(IO_TIMEOUT)
                .build(),
            threshold: o.threshold,
            fallback_direct: o.fallback_direct,
            url_ttl: o.url_ttl,
            keep: o.keep,
        })
    }

    /// `host[:port]` of the store, for messages (never the URL: it may carry a signature).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The object name of a payload of `release` with this hash and file extension.
    pub fn key(&self, release: &str, sha256: &str, ext: &str) -> String {
        format!("{}{release}/{sha256}{ext}", self.prefix)
    }

    /// Short-lived URLs for the requests the client makes.
    const SIGN_FOR: Duration = Duration::from_secs(5 * 60);

    /// What went wrong with `what`, naming the store's host (never the signed URL).
    fn failed(&self, what: &str, e: ureq::Error) -> String {
        match e {
            ureq::Error::Status(code, r) => {
                let text = r.status_text().to_string();
                let body = r.into_string().unwrap_or_default();
                let code_name = error_code(&body)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                format!(
                    "{what} at the artifact store {}: HTTP {code} {text}{code_name}",
                    self.host
                )
            }
            ureq::Error::Transport(t) => {
                let mut cause = t.kind().to_string();
                if let Some(m) = t.message() {
                    cause = format!("{cause}: {m}");
                }
                if let Some(s) = std::error::Error::source(&t) {
                    cause = format!("{cause}: {s}");
                }
                format!("{what} at the artifact store {}: {cause}", self.host)
            }
        }
    }

    /// Whether `key` is in the store already.
    pub fn exists(&self, key: &str) -> Result<bool, String> {
        let url = HeadObject::new(&self.bucket, Some(&self.credentials), key).sign(Self::SIGN_FOR);
        match self.agent.head(url.as_str()).call() {
            Ok(_) => Ok(true),
            Err(ureq::Error::Status(404, _)) => Ok(false),
            Err(e) => Err(self.failed("looking for the payload", e)),
        }
    }

    /// Uploads the file at `path` (`len` bytes) as `key`.
    pub fn put(&self, key: &str, path: &Path, len: u64) -> Result<(), String> {
        let url = PutObject::new(&self.bucket, Some(&self.credentials), key).sign(Self::SIGN_FOR);
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.agent
            .put(url.as_str())
            .set("Content-Length", &len.to_string())
            .send(file)
            .map(|_| ())
            .map_err(|e| self.failed("uploading the payload", e))
    }

    /// Checks that the store takes an object under the prefix and lets it be deleted
    /// (`dp setup`): puts an empty `<prefix>/.dp-check`, then deletes it.
    pub fn check(&self) -> Result<(), String> {
        let key = format!("{}.dp-check", self.prefix);
        let url = PutObject::new(&self.bucket, Some(&self.credentials), &key).sign(Self::SIGN_FOR);
        self.agent
            .put(url.as_str())
            .send_bytes(&[])
            .map_err(|e| self.failed("writing a test object", e))?;
        let url =
            DeleteObject::new(&self.bucket, Some(&self.credentials), &key).sign(Self::SIGN_FOR);
        self.agent
            .delete(url.as_str())
            .call()
            .map_err(|e| self.failed("deleting a test object", e))?;
        Ok(())
    }

    /// A presigned URL for a host to fetch `key` with (a secret while it lasts).
    pub fn get_url(&self, key: &str) -> String {
        rusty_s3::actions::GetObject::new(&self.bucket, Some(&self.credentials), key)
            .sign(self.url_ttl)
            .to_string()
    }

    /// Deletes the payloads of all but the newest `keep` releases under the prefix, by
    /// their newest object's time; `release`'s are never deleted. Gives the objects
    /// deleted.
    pub fn prune(&self, release: &str) -> Result<Vec<String>, String> {
        if self.keep == 0 {
            return Ok(Vec::new());
        }
        let mut newest: std::collections::HashMap<String, String> = Default::default();
        let mut objects: Vec<(String, String)> = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            list.with_prefix(self.prefix.as_str());
            if let Some(t) = &token {
                list.with_continuation_token(t.as_str());
            }
            let url = list.sign(Self::SIGN_FOR);
            let body = self
                .agent
                .get(url.as_str())
                .call()
                .map_err(|e| self.failed("listing old payloads", e))?
                .into_string()
                .map_err(|e| format!("listing old payloads at {}: {e}", self.host))?;
            let page = ListObjectsV2::parse_response(&body)
                .map_err(|e| format!("listing old payloads at {}: {e}", self.host))?;
            for o in page.contents {
                // Listed with `encoding-type=url` (rusty-s3 asks for it).
                let key = percent_encoding::percent_decode_str(&o.key)
                    .decode_utf8_lossy()
                    .into_owned();
                let Some(rel) = key
                    .strip_prefix(self.prefix.as_str())
                    .and_then(payload_release)
                else {
                    continue;
                };
                let slot = newest.entry(rel.to_string()).or_default();
                if *slot < o.last_modified {
                    *slot = o.last_modified.clone();
                }
                objects.push((rel.to_string(), key.clone()));
            }
            token = page.next_continuation_token;
            if token.is_none() {
                break;
            }
        }
        let mut releases: Vec<(&String, &String)> =
            newest.iter().filter(|(r, _)| *r != release).collect();
        releases.sort_by(|a, b| b.1.cmp(a.1).then(b.0.cmp(a.0)));
        // This release is one of the `keep`.
        let old: std::collections::HashSet<&str> = releases
            .iter()
            .skip(self.keep.saturating_sub(1))
            .map(|(r, _)| r.as_str())
            .collect();
        let mut deleted = Vec::new();
        for (rel, key) in &objects {
            if old.contains(rel.as_str()) {
                let url = DeleteObject::new(&self.bucket, Some(&self.credentials), key)
                    .sign(Self::SIGN_FOR);
                self.agent
                    .delete(url.as_str())
                    .call()
                    .map_err(|e| self.failed("deleting an old payload", e))?;
                deleted.push(key.clone());
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            parse_store("s3://dp-artifacts/site/a/").unwrap(),
            ("dp-artifacts".into(), "site/a".into())
        );
        assert_eq!(
            parse_store("s3://bucket").unwrap(),
            ("bucket".into(), "".into())
        );
        for bad in [
            "dp-artifacts",
            "s3://ab/x",
            "s3://Bucket/x",
            "s3://bucket/../x",
        ] {
            assert!(parse_store(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    [deploy]\n# a comment\naws_access_key_id=C\naws_secret_access_key= D \n\
                    aws_session_token = T\n[broken]\naws_access_key_id = E\n";
        let c = profile_keys(text, "default").unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("A", "B", None));
        let c = profile_keys(text, "deploy").unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("C", "D", Some("T")));
        assert!(profile_keys(text, "broken").is_none());
        assert!(profile_keys(text, "missing").is_none());
    }

    #[test]
    fn only_payloads_are_pruned() {
        let hash = "ab".repeat(32);
        for ext in [".tar", ".tar.gz", ".tar.bz2"] {
            assert_eq!(payload_release(&format!("r1/{hash}{ext}")), Some("r1"));
        }
        for other in [
            format!("r1/{hash}.zip"),
            format!("r1/{}.tar", "ab".repeat(31)),
            format!("r1/{}.tar", "AB".repeat(32)),
            format!("r1/x/{hash}.tar"),
            format!("{hash}.tar"),
            "backups/db.sql".to_string(),
            ".dp-check".to_string(),
        ] {
            assert_eq!(payload_release(&other), None, "{other}");
        }
    }

    #[test]
    fn error_codes() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>x</Message></Error>";
        assert_eq!(error_code(body), Some("AccessDenied"));
        assert_eq!(error_code("nothing"), None);
    }
}
