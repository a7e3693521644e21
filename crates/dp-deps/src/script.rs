//! The one shell script dp-deps runs per host.

use crate::{Build, DepsOptions, Kind, BUILD_FAILED_STATUS};
use dp_core::layout::Script;
use dp_core::quote::{quote_str, QuoteError};

/// Quotes each word and joins them with spaces.
fn words(list: &[String]) -> Result<String, QuoteError> {
    Ok(list
        .iter()
        .map(|w| quote_str(w))
        .collect::<Result<Vec<_>, _>>()?
        .join(" "))
}

/// The script (`sh/deps.sh`): renew the deploy lock, compute the key on the host, reuse
/// or build the environment, link it into the release, then run the `[build]` command.
/// Prints `kind`, `key`, `cache`, `waited` and `build ok`.
pub fn deps(
    root: &str,
    release: &str,
    opts: &DepsOptions,
    build: Option<&Build>,
) -> Result<Script, QuoteError> {
    let (kind, command, link) = match &opts.kind {
        Kind::Auto => ("auto", "", ""),
        Kind::Pip => ("pip", "", ""),
        Kind::Npm => ("npm", "", ""),
        Kind::Command { command, link } => ("command", command.as_str(), link.as_str()),
    };
    let mut s = Script::new(root)?;
    s.push(&dp_core::lock::acquire_script(
        release,
        opts.lease,
        opts.renew.due(),
    )?)
    // Once in the script: this shell evaluates the kinds, and the environment build's own
    // shell runs them before `sh/build.sh`.
    .set("dp_kinds", dp_core::sh_file!("sh/kinds.sh"))?
    .push("eval \"$dp_kinds\"\n")
    .set("rel", release)?
    .set("kind", kind)?
    .set("python", &opts.python)?
    .set("cmd", command)?
    .set("link", link)?
    .set("pip_args", &words(&opts.pip_args)?)?
    .set("lockfiles", &words(&opts.lockfiles)?)?
    .set("keep_env", &opts.keep_env.join(" "))?
    .num("wait_secs", opts.wait.as_secs())
    .num("build_secs", opts.timeout.as_secs().max(1))
    // A build may take long: the lease is renewed before it, unless the lock was just
    // renewed above.
    .set("renew", if opts.renew.due() { "" } else { "1" })?
    .set("build_text", dp_core::sh_file!("sh/build.sh"))?
    .set("step", build.map_or("", |b| b.command.as_str()))?
    .num("step_secs", build.map_or(1, |b| b.timeout.as_secs().max(1)))
    .num("step_failed", BUILD_FAILED_STATUS)
    .push(dp_core::sh_file!("sh/deps.sh"));
    Ok(s)
}
