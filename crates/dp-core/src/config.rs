//! `deploy.toml`: the app, its deploy root, what to upload, and the hosts per stage.
//!
//! ```toml
//! app = "mysite"
//! root = "/srv/mysite"          # per stage or per host too
//! source = "."                  # relative to this file
//! exclude = ["*.pyc", "node_modules/"]
//! shared = ["media", ".env"]
//! keep = 5
//! host_key_policy = "strict"    # or "accept-new"
//! known_hosts = "~/.ssh/known_hosts"
//! identity = "~/.ssh/id_ed25519"
//! connect_timeout = "10s"
//! server_alive_interval = "15s" # a host silent this long is asked to answer ...
//! server_alive_count_max = 3    # ... and fails after this many unanswered asks
//! allow_unreachable = 0         # hosts that cannot be reached at all a deploy may leave out
//!
//! [stages.prod]
//! user = "deploy"
//! port = 22
//! hosts = [
//!   { name = "web1", addr = "10.0.0.5", roles = ["web", "migrate"] },
//!   { name = "web2", addr = "10.0.0.6", roles = ["web"], port = 2222 },
//! ]
//! ```
//!
//! Errors point to `file:line:column` and name the key.

use crate::record::{HostKeyPolicy, Record, SshOptions, TransportKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A problem with the config file, found before any host was touched.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not a valid config; points at the line and column.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        /// The config file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A problem with the selection asked for (stage, role, host).
    #[error("{path}: {message}")]
    Select {
        /// The config file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The parsed `deploy.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The app's name (used in logs and history).
    #[serde(default)]
    pub app: Option<String>,
    /// Default deploy root on every host.
    #[serde(default)]
    pub root: Option<String>,
    /// Source directory to deploy, relative to the config file.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Extra ignore globs for the source scan.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Paths under `<root>/shared/` linked into every release.
    #[serde(default)]
    pub shared: Vec<String>,
    /// How many releases to keep.
    #[serde(default)]
    pub keep: Option<u32>,
    /// Unknown host keys: `strict` (refuse) or `accept-new` (record).
    #[serde(default)]
    pub host_key_policy: Option<HostKeyPolicy>,
    /// known_hosts file for SSH hosts.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Private key file for SSH hosts (tried after the agent).
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// How long to wait for a TCP connection and the SSH handshake.
    #[serde(default, deserialize_with = "duration::option")]
    pub connect_timeout: Option<Duration>,
    /// Silence from a host before a keepalive asks it to answer (OpenSSH's
    /// ServerAliveInterval; whole seconds; default 15s, 0s turns the check off).
    #[serde(default, deserialize_with = "duration::option")]
    pub server_alive_interval: Option<Duration>,
    /// Keepalives left unanswered before a host counts as not answering (default 3).
    #[serde(default)]
    pub server_alive_count_max: Option<u32>,
    /// Hosts that could not be connected to at all that a deploy may leave out (default
    /// 0: every host or none).
    #[serde(default)]
    pub allow_unreachable: Option<usize>,
    /// How dependencies are installed (`[deps]`).
    #[serde(default)]
    pub deps: Option<DepsConfig>,
    /// What runs in each new release before the switch (`[build]`).
    #[serde(default)]
    pub build: Option<BuildConfig>,
    /// How database migrations are applied (`[migrate]`).
    #[serde(default)]
    pub migrate: Option<MigrateConfig>,
    /// How the rollout goes (`[restart]`).
    #[serde(default)]
    pub restart: Option<RestartConfig>,
    /// Large uploads through an S3-compatible object store (`[artifacts]`).
    #[serde(default)]
    pub artifacts: Option<ArtifactsConfig>,
    /// Stages by name.
    #[serde(default)]
    pub stages: BTreeMap<String, Spanned<Stage>>,
    /// Directory of the config file: relative local paths are resolved against it.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The config file's path, for messages.
    #[serde(skip)]
    pub path: String,
}

/// `[deps]`: how each release gets its dependencies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepsConfig {
    /// `pip`, `npm`, `command` or `auto` (pip when requirements.txt exists, else npm when
    /// package-lock.json exists, else nothing).
    #[serde(default)]
    pub kind: Option<String>,
    /// Files (relative to the release) whose contents key the environment.
    #[serde(default)]
    pub lockfiles: Vec<String>,
    /// Extra `pip install` arguments, such as `["--no-index", "--find-links", "wheels"]`
    /// (relative paths are relative to the release).
    #[serde(default)]
    pub pip_args: Vec<String>,
    /// The Python interpreter on the hosts (default `python3`).
    #[serde(default)]
    pub python: Option<String>,
    /// For `kind = "command"`: the build command, run in the release with
    /// `$DP_DEPS_DIR` set to the environment directory.
    #[serde(default)]
    pub command: Option<String>,
    /// For `kind = "command"`: where the environment is linked inside the release.
    #[serde(default)]
    pub link: Option<String>,
    /// How long building an environment may take before it is stopped, such as `30m`.
    #[serde(default, deserialize_with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Names of the host's environment variables the installer may see among those that
    /// change what it installs (`PIP_*`, `npm_config_*`); the others are cleared.
    #[serde(default)]
    pub env: Vec<String>,
}

/// `[build]`: a command run on every host in the new release after its dependencies are
/// ready and before any host switches (`collectstatic`, `compilemessages`, an asset
/// build). A failure there is a failure before the switch: no host switches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// The command (a shell script), run in the release with `.venv/bin` and
    /// `node_modules/.bin` first on PATH and `DP_RELEASE`, `DP_PREVIOUS_RELEASE`,
    /// `DP_ROOT` set.
    pub command: String,
    /// How long it may run before it is stopped, such as `10m` (default 30m).
    #[serde(default, deserialize_with = "duration::option")]
    pub timeout: Option<Duration>,
}

/// `[migrate]`: where migrations are and how they run. The database URL is never here:
/// it comes from the environment (`DATABASE_URL`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateConfig {
    /// Migrations directory, relative to this file (default `<source>/migrations`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Framework mode: the command to run once in the new release instead of SQL files.
    #[serde(default)]
    pub exec: Option<String>,
    /// Reach the database through this host (an SSH tunnel).
    #[serde(default)]
    pub via: Option<String>,
    /// How long to wait for another run's lock, such as `60s`.
    #[serde(default, deserialize_with = "duration::option")]
    pub lock_timeout: Option<Duration>,
    /// Framework mode, contract phase: the command to run once after every host runs
    /// the new release.
    #[serde(default)]
    pub exec_post: Option<String>,
    /// How long the `exec` command may run before it is stopped, such as `30m`.
    #[serde(default, deserialize_with = "duration::option")]
    pub exec_timeout: Option<Duration>,
    /// Names of the deploying machine's environment variables passed to the `exec`
    /// commands, never through argv, records or logs (default `["DATABASE_URL"]`, each
    /// only when set).
    #[serde(default)]
    pub env: Option<Vec<String>>,
}

/// `[restart]`: the rolling switch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Hosts per batch: `1` (a number or a string), `25%`.
    #[serde(default, deserialize_with = "number_or_text")]
    pub batch: Option<String>,
    /// Restart command template, run in the new release.
    #[serde(default)]
    pub command: Option<String>,
    /// Health check URL template, fetched from the deploying machine.
    #[serde(default)]
    pub health_url: Option<String>,
    /// Health check command template, run on the host.
    #[serde(default)]
    pub health_cmd: Option<String>,
    /// How long a host may take to become healthy, such as `30s`.
    #[serde(default, deserialize_with = "duration::option")]
    pub health_timeout: Option<Duration>,
    /// Text the health check's answer must contain, templated (`ok {release}`): only the
    /// new release passes, not an old worker or another process on the port.
    #[serde(default)]
    pub health_expect: Option<String>,
    /// The app's log file on each host, templated (`{root}/shared/log/app.log`): its last
    /// lines go into a failed host's record (`error.details`) and `dp logs` shows it.
    #[serde(default)]
    pub app_log: Option<String>,
    /// How long the restart command may run before it is stopped, such as `5m`.
    #[serde(default, deserialize_with = "duration::option")]
    pub timeout: Option<Duration>,
}

/// `[artifacts]`: large payloads go through an S3-compatible object store, uploaded once
/// and fetched by each host, instead of streamed to every host over SSH. Credentials are
/// never here: they come from the standard AWS environment variables or a profile in
/// `~/.aws/credentials`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// `s3://bucket/prefix`.
    pub store: String,
    /// The store's URL, for S3-compatible servers (default: `AWS_ENDPOINT_URL`, else AWS).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The store's region (default: `AWS_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// The profile in `~/.aws/credentials` (default: `AWS_PROFILE`, else `default`),
    /// used when `AWS_ACCESS_KEY_ID` is not set.
    #[serde(default)]
    pub profile: Option<String>,
    /// Payloads smaller than this stream over SSH as before (default `1MiB`).
    #[serde(default, deserialize_with = "size::option")]
    pub threshold: Option<u64>,
    /// `direct`: a host that cannot fetch from the store is sent the payload over SSH
    /// instead of failing (default: it fails, and so does the deploy).
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// How long the hosts' presigned URLs stay valid (default `15m`).
    #[serde(default, deserialize_with = "duration::option")]
    pub url_ttl: Option<Duration>,
    /// Releases whose payloads dp keeps in the store; older ones are deleted when a new
    /// one is uploaded (default: the top-level `keep`; `0`: dp deletes nothing and the
    /// store's lifecycle rules do it).
    #[serde(default)]
    pub keep: Option<u32>,
}

/// `[artifacts] fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Stream over SSH to a host that cannot fetch from the store.
    Direct,
}

/// A stage: defaults for its hosts, and the hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Default user.
    #[serde(default)]
    pub user: Option<String>,
    /// Default SSH port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Default deploy root.
    #[serde(default)]
    pub root: Option<String>,
    /// Default transport.
    #[serde(default)]
    pub transport: Option<TransportKind>,
    /// Default roles for hosts that name none.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The hosts.
    #[serde(default)]
    pub hosts: Vec<Spanned<HostEntry>>,
}

/// One host in a stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// Unique name (also the address when `addr` is not set, after ~/.ssh/config).
    pub name: Spanned<String>,
    /// Network address.
    #[serde(default)]
    pub addr: Option<String>,
    /// SSH port.
    #[serde(default)]
    pub port: Option<u16>,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Transport.
    #[serde(default)]
    pub transport: Option<TransportKind>,
    /// Deploy root for this host.
    #[serde(default)]
    pub root: Option<String>,
    /// Free-form values for command templates.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
}

/// Which hosts to select from a stage.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The stage; may be omitted when the config has exactly one.
    pub stage: Option<String>,
    /// Keep hosts having any of these roles (all hosts when empty).
    pub roles: Vec<String>,
    /// Keep only these host names (all when empty).
    pub hosts: Vec<String>,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, &path.display().to_string(), &dir)
    }

    /// Parses config `text`; `path` names it in errors; `dir` anchors relative paths.
    pub fn parse(text: &str, path: &str, dir: &Path) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = line_col(text, span.map(|s| s.start).unwrap_or(0));
            ConfigError::At {
                path: path.to_string(),
                line,
                column,
                message,
            }
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim();
            match e.span().and_then(|span| key_at(text, span.start)) {
                Some(key) => at(e.span(), format!("{key}: {message}")),
                None => at(e.span(), message.to_string()),
            }
        })?;
        config.dir = dir.to_path_buf();
        config.path = path.to_string();
        if config
            .server_alive_interval
            .is_some_and(|d| d.subsec_nanos() != 0)
        {
            return Err(at(
                text.find("server_alive_interval").map(|p| p..p),
                "server_alive_interval is whole seconds, such as \"15s\" (\"0s\" turns the check off)".into(),
            ));
        }
        for (name, stage) in &config.stages {
            let mut seen = BTreeMap::new();
            if stage.get_ref().hosts.is_empty() {
                return Err(at(
                    Some(stage.span()),
                    format!("stage {name:?} has no hosts"),
                ));
            }
            for host in &stage.get_ref().hosts {
                let host_name = &host.get_ref().name;
                if host_name.get_ref().is_empty() {
                    return Err(at(Some(host_name.span()), "host `name` is empty".into()));
                }
                if seen.insert(host_name.get_ref().clone(), ()).is_some() {
                    return Err(at(
                        Some(host_name.span()),
                        format!(
                            "duplicate host name {:?} in stage {name:?}",
                            host_name.get_ref()
                        ),
                    ));
                }
                let h = host.get_ref();
                if h.root.is_none() && stage.get_ref().root.is_none() && config.root.is_none() {
                    return Err(at(
                        Some(host.span()),
                        format!(
                            "host {:?} has no `root` (set it on the host, the stage or the top level)",
                            host_name.get_ref()
                        ),
                    ));
                }
                config.record_for(stage.get_ref(), h).check().map_err(|e| {
                    at(
                        Some(host.span()),
                        format!("host {:?}: {e}", host_name.get_ref()),
                    )
                })?;
            }
        }
        Ok(config)
    }

    /// Complete releases kept on each host (`keep`, else [`defaults::KEEP`]).
    pub fn keep_releases(&self) -> usize {
        self.keep.map_or(crate::defaults::KEEP, |k| k as usize)
    }

    /// The stage names, sorted.
    pub fn stage_names(&self) -> Vec<&str> {
        self.stages.keys().map(String::as_str).collect()
    }

    /// The records of the selected hosts, in config order, with stage and top-level
    /// defaults applied. SSH aliases are not resolved here (see [`crate::sshconfig`]).
    pub fn select(&self, sel: &Selection) -> Result<Vec<Record>, ConfigError> {
        let select_err = |message: String| ConfigError::Select {
            path: self.path.clone(),
            message,
        };
        let stage_name = match &sel.stage {
            Some(s) => s.clone(),
            None if self.stages.len() == 1 => {
                self.stages.keys().next().cloned().unwrap_or_default()
            }
            None if self.stages.is_empty() => return Err(select_err("no stages defined".into())),
            None => {
                return Err(select_err(format!(
                    "several stages ({}): choose one with --stage",
                    self.stage_names().join(", ")
                )))
            }
        };
        let stage = self.stages.get(&stage_name).ok_or_else(|| {
            select_err(format!(
                "no stage {stage_name:?} (stages: {})",
                self.stage_names().join(", ")
            ))
        })?;
        let stage = stage.get_ref();
        for wanted in &sel.hosts {
            if !stage
                .hosts
                .iter()
                .any(|h| h.get_ref().name.get_ref() == wanted)
            {
                return Err(select_err(format!(
                    "no host {wanted:?} in stage {stage_name:?}"
                )));
            }
        }
        let records: Vec<Record> = stage
            .hosts
            .iter()
            .map(|h| self.record_for(stage, h.get_ref()))
            .filter(|r| sel.hosts.is_empty() || sel.hosts.contains(&r.host))
            .filter(|r| sel.roles.is_empty() || sel.roles.iter().any(|role| r.has_role(role)))
            .collect();
        if records.is_empty() {
            return Err(select_err(format!(
                "no host in stage {stage_name:?} matches roles [{}]",
                sel.roles.join(", ")
            )));
        }
        Ok(records)
    }

    fn record_for(&self, stage: &Stage, h: &HostEntry) -> Record {
        let mut r = Record::new(h.name.get_ref().clone());
        r.transport = h.transport.or(stage.transport).unwrap_or_default();
        r.addr = h.addr.clone();
        r.port = h.port.or(stage.port);
        r.user = h.user.clone().or_else(|| stage.user.clone());
        let root = h
            .root
            .clone()
            .or_else(|| stage.root.clone())
            .or_else(|| self.root.clone());
        r.root = root.map(|root| match r.transport {
            TransportKind::Local => self.local_path(Path::new(&root)).display().to_string(),
            TransportKind::Ssh => root,
        });
        r.roles = h.roles.clone().unwrap_or_else(|| stage.roles.clone());
        if r.transport == TransportKind::Ssh {
            r.ssh = SshOptions {
                identity: self.identity.as_deref().map(|p| self.local_path(p)),
                known_hosts: self.known_hosts.as_deref().map(|p| self.local_path(p)),
                host_key_policy: self.host_key_policy,
                connect_timeout_ms: self.connect_timeout.map(|d| d.as_millis() as u64),
                server_alive_interval: self.server_alive_interval.map(|d| d.as_secs()),
                server_alive_count_max: self.server_alive_count_max,
            };
        }
        if !h.vars.is_empty() {
            let vars: serde_json::Map<String, serde_json::Value> = h
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect();
            r.extra
                .insert("vars".into(), serde_json::Value::Object(vars));
        }
        r
    }

    /// The source directory to deploy: `source`, else the config file's directory.
    pub fn source_dir(&self) -> PathBuf {
        self.local_path(self.source.as_deref().unwrap_or(Path::new(".")))
    }

    /// The migrations directory: `dir` in `[migrate]`, else `<source>/migrations`.
    pub fn migrations_dir(&self) -> PathBuf {
        match self.migrate.as_ref().and_then(|m| m.dir.as_deref()) {
            Some(d) => self.local_path(d),
            None => self.source_dir().join("migrations"),
        }
    }

    /// Resolves a local path: `~/` is the home directory, relative paths are relative to
    /// the config file's directory.
    pub fn local_path(&self, p: &Path) -> PathBuf {
        let p = expand_home(p);
        let p = if p.is_absolute() {
            p
        } else {
            let joined = self.dir.join(&p);
            std::path::absolute(&joined).unwrap_or(joined)
        };
        normalize(&p)
    }
}

/// `p` without `.` components and with each `..` taking out the component before it
/// (lexically, as a deploy root must be written: `hosts/../a` is `a`).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Expands a leading `~/` to `$HOME`.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The key whose value starts at `offset`, with its table: "`batch` in [restart]".
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?.trim_end().strip_suffix('=')?.trim_end();
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |i| i + 1);
    let key = &before[start..];
    if key.is_empty() {
        return None;
    }
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    Some(match table {
        Some(t) => format!("`{key}` in {t}"),
        None => format!("`{key}`"),
    })
}

/// A string, or a number written without quotes (`batch = 1`), as text.
fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(i64),
        Text(String),
    }
    Ok(Option::<Value>::deserialize(d)?.map(|v| match v {
        Value::Number(n) => n.to_string(),
        Value::Text(t) => t,
    }))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Parses a duration such as `10s`, `500ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a size such as `1MiB`, `512KiB`, `2MB` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        _ => return Err(format!("invalid size {text:?}: use bytes, KiB, MiB or GiB")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("invalid size {text:?}: use bytes, KiB, MiB or GiB"))
}

mod size {
    use serde::Deserializer;

    /// A size in bytes (`threshold = 1048576`) or with its unit (`"1MiB"`).
    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::number_or_text(d)?
            .map(|t| super::parse_size(&t))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "deploy.toml", Path::new("/cfg"))
    }

    #[test]
    fn artifact_threshold_in_bytes_or_with_a_unit() {
        let threshold = |v: &str| {
            parse(&format!(
                "[artifacts]\nstore = \"s3://b-1/p\"\nthreshold = {v}\n"
            ))
            .map(|c| c.artifacts.unwrap().threshold.unwrap())
        };
        assert_eq!(threshold("1048576").unwrap(), 1 << 20);
        assert_eq!(threshold("\"1MiB\"").unwrap(), 1 << 20);
        assert_eq!(threshold("\"512 KiB\"").unwrap(), 512 << 10);
        assert_eq!(threshold("\"2MB\"").unwrap(), 2_000_000);
        for bad in ["\"1 parsec\"", "-1", "\"MiB\""] {
            let e = threshold(bad).unwrap_err().to_string();
            assert!(
                e.contains("threshold") && e.contains("invalid size"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn stage_defaults_and_overrides() {
        let c = parse(
            r#"root = "/srv/app"
connect_timeout = "3s"
[stages.prod]
user = "deploy"
port = 2222
hosts = [{ name = "web1", roles = ["web"] }, { name = "db", port = 22, user = "pg", root = "/x" }]
"#,
        )
        .unwrap();
        let recs = c.select(&Selection::default()).unwrap();
        assert_eq!(recs[0].port, Some(2222));
        assert_eq!(recs[0].user.as_deref(), Some("deploy"));
        assert_eq!(recs[0].root.as_deref(), Some("/srv/app"));
        assert_eq!(recs[0].ssh.connect_timeout_ms, Some(3000));
        assert_eq!(recs[1].port, Some(22));
        assert_eq!(recs[1].root.as_deref(), Some("/x"));
        let web = c
            .select(&Selection {
                roles: vec!["web".into()],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(web.len(), 1);
    }

    #[test]
    fn errors_point_at_line_and_key() {
        let e = parse("root = \"/a\"\n[stages.p]\nhosts = [{ name = \"a\", prot = 1 }]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("deploy.toml:3:"), "{e}");
        assert!(e.contains("prot"), "{e}");
        let e =
            parse("root = \"/a\"\n[stages.p]\nhosts = [{ name = \"a\" },\n { name = \"a\" }]\n")
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("deploy.toml:4:"), "{e}");
        assert!(e.contains("duplicate host name"), "{e}");
        let e = parse("[stages.p]\nhosts = [{ name = \"a\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `root`"), "{e}");
        // A number where the man page allows one; a type error names its key and table.
        let ok = "root = \"/srv/app\"\n[restart]\nbatch = 1\n[stages.prod]\nhosts = [{ name = \"a\" }]\n";
        let c = Config::parse(ok, "deploy.toml", Path::new(".")).unwrap();
        assert_eq!(c.restart.unwrap().batch.as_deref(), Some("1"));
        let bad = "root = \"/srv/app\"\nkeep = \"five\"\n[stages.prod]\nhosts = [{ name = \"a\", port = \"22\" }]\n";
        let e = Config::parse(bad, "deploy.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("deploy.toml:2:8: `keep`: invalid type"),
            "{e}"
        );
        let bad = "root = \"/srv/app\"\n[stages.prod]\nhosts = [{ name = \"a\", port = \"22\" }]\n";
        let e = Config::parse(bad, "deploy.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`port` in [stages.prod]: invalid type"), "{e}");
        let e = parse("root = \"/\"\n[stages.p]\nhosts = [{ name = \"a\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("deploy.toml:3:") && e.contains("root \"/\""),
            "{e}"
        );
        let e = parse("root = \"srv\"\n[stages.p]\nhosts = [{ name = \"a\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not absolute"), "{e}");
        let e = parse("root = \"/srv\"\n[stages.p]\nhosts = [{ name = \"a\", port = 0 }]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1..65535"), "{e}");
    }

    #[test]
    fn local_roots_are_relative_to_the_config() {
        let c = parse(
            "[stages.l]\ntransport = \"local\"\nhosts = [{ name = \"a\", root = \"hosts/a\" }]\n",
        )
        .unwrap();
        let r = c.select(&Selection::default()).unwrap();
        assert_eq!(r[0].root.as_deref(), Some("/cfg/hosts/a"));
        let c = parse(
            "[stages.l]\ntransport = \"local\"\nhosts = [{ name = \"a\", root = \"../t/./hosts/a\" }]\n",
        )
        .unwrap();
        let r = c.select(&Selection::default()).unwrap();
        assert_eq!(r[0].root.as_deref(), Some("/t/hosts/a"));
    }
}
