//! The shell scripts dp-sync runs on a host: two per host, whatever the tree's size.
//!
//! 1. [`prepare`]: take the deploy lock, remove leftovers of interrupted syncs, and print
//!    the newest complete release and its manifest (or the manifest of this release when
//!    it is already complete: a re-run is then a no-op).
//! 2. [`build`]: with the tar stream on stdin, build the release under a hidden temporary
//!    name: hard-link the base (`cp -al`), unpack the sent entries beside it, remove what
//!    is gone, move the sent entries in (replacing links, never writing through them),
//!    link shared paths, optionally verify with sha256sum, mark complete, then rename the
//!    temporary directory to its final name. `REVISION` (the release id) comes in the
//!    stream like a sent file. An interrupted build leaves only hidden
//!    `.tmp-*`/`.incoming-*` directories, which the next prepare removes.

use dp_core::layout::script_prelude;
use dp_core::quote::{quote_str, QuoteError};
use std::time::Duration;

/// Marks the start of the manifest in [`prepare`]'s output.
pub const MANIFEST_MARK: &str = "---dp-manifest---";

/// Script 1: lock, clean, report base and its manifest's digest, and the manifest itself
/// unless its digest is one of `known` (manifests the caller has cached).
pub fn prepare(
    root: &str,
    release: &str,
    lease: Duration,
    known: &[String],
) -> Result<String, QuoteError> {
    let mut s = script_prelude(root)?;
    // Before anything changes (the lock is taken below): a host without the tools the
    // scripts need is refused here, not halfway through the build.
    s.push_str(&dp_core::layout::host_check_sh(false));
    s.push_str(&dp_core::lock::acquire_script(release, lease, true)?);
    s.push_str(&format!(
        r#"rel={rel}
known={known}
# The digest is stored beside the manifest when the release is built (older releases:
# computed here).
dp_manifest() {{
  d=
  IFS= read -r d 2>/dev/null < "$1.sha256" || true
  case $d in
    ????????????????????????????????????????????????????????????????) ;;
    *) d=$(sha256sum < "$1"); d=${{d%% *}} ;;
  esac
  echo "digest $d"
  echo "{mark}"
  case " $known " in *" $d "*) ;; *) cat "$1" ;; esac
}}
for d in "$releases"/.tmp-* "$releases"/.incoming-*; do
  [ -e "$d" ] || continue
  rm -rf "$d" && echo "cleaned ${{d##*/}}"
done
{probe}{current}echo "current $cur"
if [ -f "$releases/$rel/.dp/complete" ]; then
  echo "self complete"
  dp_manifest "$releases/$rel/.dp/manifest"
  exit 0
fi
if [ -e "$releases/$rel" ]; then
  echo "release directory $releases/$rel exists but is not complete; remove it" >&2
  exit 3
fi
# The newest complete release, found with the shell alone (no processes).
base=
for f in "$releases"/*/.dp/complete; do
  [ -f "$f" ] || continue
  # Ties go to the later name (ids start with their time), as in dp-restart's finish.
  if [ -z "$base" ] || ! [ "$releases/$base/.dp/complete" -nt "$f" ]; then
    d=${{f%/.dp/complete}}
    base=${{d##*/}}
  fi
done
echo "base $base"
if [ -n "$base" ] && [ -f "$releases/$base/.dp/manifest" ]; then dp_manifest "$releases/$base/.dp/manifest"; fi
"#,
        rel = quote_str(release)?,
        known = quote_str(&known.join(" "))?,
        mark = MANIFEST_MARK,
        probe = crate::codec::HostCodecs::PROBE,
        current = dp_core::layout::current_release_sh("cur"),
    ));
    Ok(s)
}

/// What the build script needs to know.
pub struct BuildPlan<'a> {
    /// The deploy root.
    pub root: &'a str,
    /// The new release id.
    pub release: &'a str,
    /// The release to hard-link from, if any.
    pub base: Option<&'a str>,
    /// Shared paths (relative; a trailing `/` means a directory).
    pub shared: &'a [String],
    /// Check every file with sha256sum before marking complete.
    pub verify: bool,
    /// How the tar stream is compressed.
    pub codec: crate::codec::Codec,
    /// SHA-256 of the new manifest, which the host rebuilds from the base's manifest,
    /// `.dp/manifest.drop` (base lines to leave out) and `.dp/manifest.add` (lines to add).
    pub digest: &'a str,
}

/// Script 2: build the release from the tar on stdin.
pub fn build(plan: &BuildPlan) -> Result<String, QuoteError> {
    let mut s = script_prelude(plan.root)?;
    s.push_str(&format!(
        r#"rel={rel}
digest={digest}
inc="$releases/.incoming-$rel"
tmp="$releases/.tmp-$rel"
dp_rm "$inc" "$tmp"
mkdir "$inc"
"#,
        rel = quote_str(plan.release)?,
        digest = quote_str(plan.digest)?,
    ));
    // The hard links are made first, while the client is still compressing and sending.
    // `.dp/end` is the stream's last entry: without it the upload was cut short (tar
    // exits 0 when its input ends between two entries).
    let untar = format!(
        "tar -x {}-p --no-same-owner -f - -C \"$inc\"\n[ -f \"$inc/.dp/end\" ] || {{ echo \"the upload was cut short\" >&2; exit 1; }}\n",
        plan.codec.tar_flag()
    );
    match plan.base {
        Some(base) => s.push_str(&format!(
            r#"base="$releases"/{b}
cp -al "$base" "$tmp"
{untar}if [ -s "$inc/.dp/remove" ]; then (cd "$tmp" && xargs -0 rm -rf -- < "$inc/.dp/remove"); fi
if [ -s "$inc/.dp/manifest.drop" ] || [ -s "$inc/.dp/manifest.add" ]; then
  # Both sides are in canonical (byte) order, so a merge is enough.
  {{ grep -v -x -F -f "$inc/.dp/manifest.drop" "$base/.dp/manifest" || [ $? -eq 1 ]; }} |
    LC_ALL=C sort -m - "$inc/.dp/manifest.add" > "$inc/.dp/manifest"
else
  # Nothing changed: the manifest is the base's, digest and all.
  cp "$base/.dp/manifest" "$inc/.dp/manifest"
  dp_unchanged=1
fi
# The base's own .dp (its manifest, completion mark, deps key) is not the new release's.
rm -rf "$tmp/.dp" "$inc/.dp/remove" "$inc/.dp/manifest.drop" "$inc/.dp/manifest.add" "$inc/.dp/end"
"#,
            b = quote_str(base)?
        )),
        None => s.push_str(&format!(
            r#"{untar}LC_ALL=C sort "$inc/.dp/manifest.add" > "$inc/.dp/manifest"
rm -f "$inc/.dp/remove" "$inc/.dp/manifest.drop" "$inc/.dp/manifest.add" "$inc/.dp/end"
"#
        )),
    }
    s.push_str(
        r#"if [ -z "${dp_unchanged:-}" ]; then
  dp_digest=$(sha256sum < "$inc/.dp/manifest")
  dp_digest=${dp_digest%% *}
  if [ "$dp_digest" != "$digest" ]; then
    echo "the manifest rebuilt on the host does not match (got $dp_digest)" >&2
    exit 1
  fi
fi
printf '%s\n' "$digest" > "$inc/.dp/manifest.sha256"
"#,
    );
    match plan.base {
        Some(_) => {
            s.push_str("cp -al --remove-destination \"$inc/.\" \"$tmp/\"\nrm -rf \"$inc\"\n")
        }
        None => s.push_str("mv \"$inc\" \"$tmp\"\n"),
    }
    for path in plan.shared {
        let dir = path.ends_with('/');
        let rel = path.trim_end_matches('/');
        let depth = rel.matches('/').count() + 2;
        let target = format!("{}shared/{rel}", "../".repeat(depth));
        let q = quote_str(rel)?;
        if dir {
            s.push_str(&format!("dp_mkdir \"$root/shared/\"{q}\n"));
        } else {
            s.push_str(&format!(
                "[ -e \"$root/shared/\"{q} ] || {{ echo \"shared file $root/shared/\"{q}\" is missing: create it on the host\" >&2; exit 1; }}\n"
            ));
        }
        s.push_str(&format!("dp_rm \"$tmp/\"{q}\n"));
        if let Some((parent, _)) = rel.rsplit_once('/') {
            let p = quote_str(parent)?;
            s.push_str(&format!("dp_mkdir \"$tmp/\"{p}\n"));
        }
        s.push_str(&format!("ln -s {} \"$tmp/\"{q}\n", quote_str(&target)?));
    }
    if plan.verify {
        s.push_str(
            r#"if ! (cd "$tmp" && sha256sum --quiet --strict -c .dp/sha256sums >&2); then
  echo "verify: the release on the host differs from the source" >&2
  exit 1
fi
"#,
        );
    }
    s.push_str(
        r#": > "$tmp/.dp/complete"
mv "$tmp" "$releases/$rel"
echo "built"
"#,
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::tarstream::TarReader;
    use std::io::{Read, Write};

    /// Runs the build script of a first release with `sh`, the tar on stdin; `end` says
    /// whether the stream carries its closing `.dp/end`.
    fn build_first_release(end: bool) -> (std::process::Output, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("dp-remote-build-{}-{end}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/a.txt"), "a\n").unwrap();
        let manifest: Manifest = crate::scan::scan(&dir.join("src"), &Default::default()).unwrap();
        let mut add = format!("{}\n", Manifest::header());
        for line in manifest.lines() {
            add.push_str(line);
            add.push('\n');
        }
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("releases")).unwrap();
        let digest = manifest.digest();
        let plan = BuildPlan {
            root: root.to_str().unwrap(),
            release: "r1",
            base: None,
            shared: &[],
            verify: false,
            codec: crate::codec::Codec::None,
            digest: &digest,
        };
        let script = build(&plan).unwrap();
        let entries: Vec<&crate::manifest::Entry> = manifest.entries.iter().collect();
        let mut extra: Vec<(&str, &[u8])> = vec![
            (".dp/remove", b""),
            (".dp/manifest.drop", b""),
            (".dp/manifest.add", add.as_bytes()),
        ];
        if end {
            extra.push((".dp/end", b""));
        }
        let mut tar = Vec::new();
        TarReader::new(&dir.join("src"), &entries, &extra)
            .read_to_end(&mut tar)
            .unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        (child.wait_with_output().unwrap(), dir)
    }

    #[test]
    fn a_stream_without_its_end_builds_no_release() {
        let (out, dir) = build_first_release(true);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let release = dir.join("root/releases/r1");
        assert_eq!(
            std::fs::read_to_string(release.join("a.txt")).unwrap(),
            "a\n"
        );
        assert!(release.join(".dp/complete").exists());
        assert!(
            !release.join(".dp/end").exists(),
            "the mark is not left in the release"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        // A stream that ends before `.dp/end`: tar itself exits 0 on it.
        let (out, dir) = build_first_release(false);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the upload was cut short"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.join("root/releases/r1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
