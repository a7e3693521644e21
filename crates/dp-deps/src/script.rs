//! The one shell script dp-deps runs per host, and the cleanup lines dp-restart runs.

use crate::{Build, DepsOptions, Kind, BUILD_FAILED_STATUS};
use dp_core::layout::script_prelude;
use dp_core::quote::{quote_str, QuoteError};

/// Quotes each word and joins them with spaces.
fn words(list: &[String]) -> Result<String, QuoteError> {
    Ok(list
        .iter()
        .map(|w| quote_str(w))
        .collect::<Result<Vec<_>, _>>()?
        .join(" "))
}

/// The script: renew the deploy lock, compute the key on the host, reuse or build the
/// environment, link it into the release. Prints `kind`, `key`, `cache` and `waited`.
pub fn deps(
    root: &str,
    release: &str,
    opts: &DepsOptions,
    build: Option<&Build>,
) -> Result<String, QuoteError> {
    let mut s = script_prelude(root)?;
    s.push_str(&dp_core::lock::acquire_script(
        release,
        opts.lease,
        opts.renew.due(),
    )?);
    let (kind, command, link) = match &opts.kind {
        Kind::Auto => ("auto", String::new(), String::new()),
        Kind::Pip => ("pip", String::new(), String::new()),
        Kind::Npm => ("npm", String::new(), String::new()),
        Kind::Command { command, link } => ("command", command.clone(), link.clone()),
    };
    s.push_str(&format!(
        r#"rel={rel}
rd="$releases/$rel"
[ -f "$rd/.dp/complete" ] || {{ echo "release $rel is not complete on this host (run dp-sync first)" >&2; exit 3; }}
cd "$rd"
kind={kind}
python={python}
cmd={command}
link={link}
pip_args={pip_args_text}
keep_env={keep_env}
set -- {lockfiles}
if [ "$kind" = auto ]; then
  if [ -f requirements.txt ]; then kind=pip
  elif [ -f package-lock.json ]; then kind=npm
  else kind=none
  fi
fi
if [ "$kind" = none ]; then
echo "kind none"; echo "key "; echo "cache none"
else
deps="$root/.dp/deps"
dp_mkdir "$deps"
case $kind in
pip)
  [ $# -gt 0 ] || set -- requirements.txt
  # Each kind's link in the release, and where its programs are (.dp/deps-bin).
  link=.venv; sub=; bin=.venv/bin
  ver=$("$python" --version 2>&1) || {{ echo "$python is not installed on this host (needed for pip dependencies): $ver" >&2; exit 12; }}
  ;;
npm)
  [ $# -gt 0 ] || set -- package.json package-lock.json
  link=node_modules; sub=/node_modules; bin=node_modules/.bin
  ver=$(node --version 2>&1) || {{ echo "node is not installed on this host (needed for npm dependencies): $ver" >&2; exit 12; }}
  command -v npm >/dev/null 2>&1 || {{ echo "npm is not installed on this host" >&2; exit 12; }}
  ;;
command)
  sub=; ver=; bin=$link/bin
  ;;
esac
for f; do
  [ -f "$f" ] || {{ echo "lockfile $f is missing from release $rel" >&2; exit 4; }}
done
key=$({{ printf '%s\n' dp-deps-1 "$kind" "$ver" "$pip_args" "$cmd"; for f; do printf '%s\n' "$f"; cat -- "$f"; done
  for dp_v in $keep_env; do eval "printf 'env %s=%s\\n' \"\$dp_v\" \"\${{$dp_v-}}\""; done; }} | sha256sum)
key=${{key%"${{key#????????????????}}"}}
env="$deps/$key"
cache=hit
waited=0
if [ ! -f "$env/.dp-complete" ]; then
  # One builder per key: mkdir is atomic. A lock older than an hour is a crashed build.
  own=
  while :; do
    if mkdir "$env.lock" 2>/dev/null; then own=1; break; fi
    [ -f "$env/.dp-complete" ] && break
    if [ -n "$(find "$env.lock" -maxdepth 0 -mmin +60 2>/dev/null)" ]; then rm -rf "$env.lock"; continue; fi
    if [ "$waited" -ge {wait} ]; then
      echo "gave up after {wait}s waiting for another deploy building dependencies $key" >&2; exit 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  if [ -n "$own" ]; then
    trap 'rm -rf "$env.lock"' EXIT
    if [ -f "$env/.dp-complete" ]; then :; else
      cache=built
{renew_lock}      rm -rf "$env"
      log="$env.log"
      # The build is a shell of its own (so `set -e` holds: it does not inside an `if`)
      # under a deadline that stops it with everything the installer started.
      export env kind python pip_args cmd
      # What the host's environment would change in the install goes, but for keep_env
      # (only here, where a build happens: a hit starts no process for it).
      for dp_v in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p; s/^\([Nn][Pp][Mm]_[Cc][Oo][Nn][Ff][Ii][Gg]_[A-Za-z0-9_]*\)=.*/\1/p'); do
        case " $keep_env " in *" $dp_v "*) ;; *) unset "$dp_v" ;; esac
      done
{release_env}      if ! dp_locked dp_deadline {timeout} "the dependency build" "$log" sh -c {build} dp-deps-build "$@" 2>/dev/null; then
        tail -n 25 "$log" >&2
        rm -rf "$env"
        exit 1
      fi
      : > "$env/.dp-complete"
    fi
  fi
fi
up=
case $link in */*)
  up=$(printf '%s' "$link" | sed 's|[^/]*/|../|g; s|[^/]*$||')
  dp_mkdir "$rd/${{link%/*}}"
  ;;
esac
# A link carried over from the base release that already leads to this environment
# stays (same relative target); anything else there is replaced.
if ! {{ [ -L "$rd/$link" ] && [ "$rd/$link" -ef "$env$sub" ]; }}; then
  dp_rm "$rd/$link"
  ln -s "$up../../.dp/deps/$key$sub" "$rd/$link"
fi
printf '%s\n' "$key" > "$rd/.dp/deps-key"
printf '%s\n' "$bin" > "$rd/.dp/deps-bin"
echo "kind $kind"
echo "key $key"
echo "cache $cache"
echo "waited $waited"
fi
"#,
        rel = quote_str(release)?,
        kind = kind,
        python = quote_str(&opts.python)?,
        command = quote_str(&command)?,
        link = quote_str(&link)?,
        pip_args_text = quote_str(&words(&opts.pip_args)?)?,
        lockfiles = words(&opts.lockfiles)?,
        wait = opts.wait.as_secs(),
        timeout = opts.timeout.as_secs().max(1),
        release_env = dp_core::layout::release_env_sh("\"$rel\"", None),
        build = quote_str(dp_core::sh_file!("sh/build.sh"))?,
        // A build may take long: the lease is renewed before it even when the script
        // only checked it above.
        renew_lock = if opts.renew.due() {
            ""
        } else {
            dp_core::lock::RENEW_AGAIN
        },
        keep_env = quote_str(&opts.keep_env.join(" "))?,
    ));
    if let Some(b) = build {
        // The build runs in the release with its environment's programs first on PATH, under
        // `sh -e`: its first failing line fails it.
        s.push_str(&format!(
            r#"cd "$rd"
dp_deps_path "$rd"
{release_env}dp_rc=0
dp_locked dp_deadline {secs} 'the build command' "$root/.dp/build.log" sh -e -c {cmd} || dp_rc=$?
if [ "$dp_rc" -ne 0 ]; then echo "the build command failed (exit status $dp_rc); its output is in $root/.dp/build.log" >&2; exit {failed}; fi
echo "build ok"
"#,
            release_env = dp_core::layout::release_env_sh("\"$rel\"", None),
            secs = b.timeout.as_secs().max(1),
            cmd = quote_str(&b.command)?,
            failed = BUILD_FAILED_STATUS,
        ));
    }
    Ok(s)
}
