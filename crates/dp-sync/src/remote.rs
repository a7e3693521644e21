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

use dp_core::layout::Script;
use dp_core::quote::QuoteError;
use std::time::Duration;

/// Marks the start of the manifest in [`prepare`]'s output.
pub const MANIFEST_MARK: &str = "---dp-manifest---";

/// [`prepare`]'s script, up to printing the base's manifest.
fn prepare_script(
    root: &str,
    release: &str,
    lease: Duration,
    known: &[String],
) -> Result<Script, QuoteError> {
    let mut s = Script::new(root)?;
    // Before anything changes (the lock is taken below): a host without the tools the
    // scripts need is refused here, not halfway through the build.
    s.push(&dp_core::layout::host_check_sh(false))
        .push(&dp_core::lock::acquire_script(release, lease, true)?)
        .set("rel", release)?
        .set("known", &known.join(" "))?
        .set("mark", MANIFEST_MARK)?
        .push(dp_core::sh_file!("sh/manifest.sh"))
        .push(dp_core::sh_file!("sh/prepare.sh"));
    Ok(s)
}

/// Script 1 (`sh/prepare.sh`): check the host, lock, clean, report base and its
/// manifest's digest, and the manifest itself unless its digest is one of `known`
/// (manifests the caller has cached).
pub fn prepare(
    root: &str,
    release: &str,
    lease: Duration,
    known: &[String],
) -> Result<String, QuoteError> {
    let mut s = prepare_script(root, release, lease, known)?;
    s.push("dp_base_manifest\n");
    Ok(s.into_string())
}

/// Scripts 1 and 2 in one exchange, when the client knows which release it built on the
/// host last (`base`, whose manifest has `digest`): [`prepare`], then, when that release
/// is still the newest complete one and the host still has the decompressor `program`
/// (empty: none), the build (`then`: [`build`]'s script, and what follows it, whose
/// helpers are sent once for both) from the tar stream on stdin (`sh/guess.sh`).
/// Otherwise the script ends as [`prepare`] does, after `guess missed`, without reading
/// its input.
pub fn prepare_guess(
    root: &str,
    release: &str,
    lease: Duration,
    known: &[String],
    (base, digest, program): (&str, &str, &str),
    then: Script,
) -> Result<String, QuoteError> {
    let mut s = prepare_script(root, release, lease, known)?;
    s.set("guess_base", base)?
        .set("guess_digest", digest)?
        .set("guess_needs", program)?
        .push(dp_core::sh_file!("sh/guess.sh"))
        .push(&then.into_inner());
    Ok(s.into_string())
}

/// `dp deploy --plan`'s script (`sh/plan.sh`): reads the current and newest complete
/// release, the latter's dependency key and manifest (unless its digest is `known`);
/// changes nothing.
pub fn plan(root: &str, known: &[String]) -> Result<String, QuoteError> {
    let mut s = Script::new(root)?;
    s.set("known", &known.join(" "))?
        .set("mark", MANIFEST_MARK)?
        .push(dp_core::sh_file!("sh/manifest.sh"))
        .push(dp_core::sh_file!("sh/plan.sh"));
    Ok(s.into_string())
}

/// What the build script needs to know.
pub struct BuildPlan<'a> {
    /// The deploy root.
    pub root: &'a str,
    /// The new release id.
    pub release: &'a str,
    /// The release to hard-link from, if any.
    pub base: Option<&'a str>,
    /// Shared paths (relative; a trailing `/` means a directory; no control characters).
    pub shared: &'a [String],
    /// Check every file with sha256sum before marking complete.
    pub verify: bool,
    /// How the tar stream is compressed.
    pub codec: crate::codec::Codec,
    /// SHA-256 of the new manifest, which the host rebuilds from the base's manifest,
    /// `.dp/manifest.drop` (base lines to leave out) and `.dp/manifest.add` (lines to add).
    pub digest: &'a str,
    /// The payload comes from the artifact store, not stdin (see [`Fetch`]).
    pub fetch: Option<Fetch<'a>>,
    /// The payload is in the script itself, as a format for `printf`
    /// ([`dp_core::quote::printf_format`]), not on stdin: it is there with the command,
    /// where input would follow one round trip later.
    pub inline: Option<&'a str>,
    /// Nothing changed against `base`: no payload at all; the host hard-links the base
    /// and writes the new release's REVISION itself (fewer processes than unpacking).
    pub unchanged: bool,
}

/// A payload in the artifact store ([`crate::store`]): the host reads its presigned URL
/// from stdin, fetches it and checks its hash (`sh/fetch.sh`).
pub struct Fetch<'a> {
    /// The payload's SHA-256.
    pub sha256: &'a str,
    /// The store's host, for messages.
    pub from: &'a str,
    /// A payload the host cannot have is reported (`payload unfetched` on stdout), to be
    /// sent over SSH instead.
    pub fallback: bool,
}

/// What the build script prints when a payload from the store could not be had and the
/// client is to send it instead.
pub const UNFETCHED: &[u8] = b"payload unfetched\n";

/// Script 2 (`sh/build.sh`): build the release from the tar on stdin (as a [`Script`],
/// which may go on and be sent inside [`prepare_guess`]'s).
pub fn build(plan: &BuildPlan) -> Result<Script, QuoteError> {
    let mut s = Script::new(plan.root)?;
    s.set("rel", plan.release)?
        .set("digest", plan.digest)?
        .set("base", plan.base.unwrap_or(""))?
        .set("codec", plan.codec.tar_flag().trim_end())?
        .set("shared", &plan.shared.join("\n"))?
        .set("verify", if plan.verify { "1" } else { "" })?
        .set("fetch", plan.fetch.as_ref().map_or("", |f| f.sha256))?
        .set("inline", plan.inline.unwrap_or(""))?
        .set("unchanged", if plan.unchanged { "1" } else { "" })?;
    if let Some(f) = &plan.fetch {
        s.set("fetch_from", f.from)?
            .set("fallback", if f.fallback { "1" } else { "" })?
            .push(dp_core::sh_file!("sh/fetch.sh"));
    }
    s.push(dp_core::sh_file!("sh/build.sh"));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::tarstream::TarReader;
    use std::io::{Read, Write};

    /// The plan of a first `release` (no base, nothing shared, no compression) of a
    /// manifest with `digest` under `root`; tests change what they need.
    fn plan<'a>(root: &'a str, release: &'a str, digest: &'a str) -> BuildPlan<'a> {
        BuildPlan {
            root,
            release,
            base: None,
            shared: &[],
            verify: false,
            codec: crate::codec::Codec::None,
            digest,
            fetch: None,
            inline: None,
            unchanged: false,
        }
    }

    /// Runs `plan`'s build script with `sh`, `input` on its stdin and PATH set to `path`
    /// when not empty.
    fn run_build(plan: &BuildPlan, input: &[u8], path: &str) -> std::process::Output {
        let script = build(plan).unwrap().into_string();
        let mut c = std::process::Command::new("sh");
        c.args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if !path.is_empty() {
            c.env("PATH", path);
        }
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs the build script of a first `release` (of a manifest with `digest`, from the
    /// store when `fetch` says so, from the script when `inline`) under `dir/root` with
    /// `sh`, `input` on its stdin and PATH set to `path` when not empty. Gives its output
    /// and the release's directory.
    fn run_first_build(
        dir: &std::path::Path,
        (release, digest): (&str, &str),
        (fetch, inline): (Option<Fetch>, Option<&str>),
        input: &[u8],
        path: &str,
    ) -> (std::process::Output, std::path::PathBuf) {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("releases")).unwrap();
        let plan = BuildPlan {
            fetch,
            inline,
            ..plan(root.to_str().unwrap(), release, digest)
        };
        (
            run_build(&plan, input, path),
            root.join("releases").join(release),
        )
    }

    /// Runs the build script of a first release with `sh`, the tar on stdin; `end` says
    /// whether the stream carries its closing `.dp/end`.
    fn build_first_release(end: bool) -> (std::process::Output, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("dp-remote-build-{}-{end}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (tar, digest) = first_release_tar(&dir, end);
        let (out, _) = run_first_build(&dir, ("r1", &digest), (None, None), &tar, "");
        (out, dir)
    }

    #[test]
    fn a_guessed_build_defines_each_function_once() {
        let plan = BuildPlan {
            base: Some("r1"),
            ..plan("/srv/app", "r2", "d")
        };
        let mut build = build(&plan).unwrap();
        // A then-script that takes the lock too, as dp-deps's does.
        let mut then = dp_core::layout::Script::new("/srv/app").unwrap();
        then.push(&dp_core::lock::acquire_script("r2", Duration::from_secs(60), false).unwrap());
        build.push(&crate::then::then_script(&then.into_inner()));
        let text = prepare_guess(
            "/srv/app",
            "r2",
            Duration::from_secs(60),
            &[],
            ("r1", "d", ""),
            build,
        )
        .unwrap();
        let mut seen = std::collections::HashSet::new();
        // Definitions start a line: `name() {`.
        let defined = text.lines().filter_map(|l| {
            let (name, _) = l.split_once("() {")?;
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                .then_some(name)
        });
        for name in defined {
            assert!(seen.insert(name), "{name} defined twice");
        }
        assert!(
            seen.contains("dp_lock") && seen.contains("dp_mkdir"),
            "{seen:?}"
        );
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

    /// A small payload inside the script: the release is built from it with nothing on
    /// stdin, every byte intact.
    #[test]
    fn a_payload_inside_the_script_builds_the_release() {
        let dir = std::env::temp_dir().join(format!("dp-remote-inline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let bytes: Vec<u8> = (0..=255u8).chain(*br"%s\0\n'%%").collect();
        std::fs::write(dir.join("src/all-bytes"), &bytes).unwrap();
        let (tar, digest) = first_release_tar(&dir, true);
        let format = dp_core::quote::printf_format(&tar);
        let (out, release) = run_first_build(&dir, ("r1", &digest), (None, Some(&format)), b"", "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(release.join("all-bytes")).unwrap(), bytes);
        assert_eq!(std::fs::read(release.join("a.txt")).unwrap(), b"a\n");
        assert!(release.join(".dp/complete").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A release with nothing changed is made from its base without a payload: the
    /// same files (hard links), the base's manifest, its own REVISION, and the base left
    /// as it was.
    #[test]
    fn an_unchanged_release_is_made_from_its_base_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("dp-remote-unchanged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (tar, digest) = first_release_tar(&dir, true);
        let (out, r1) = run_first_build(&dir, ("r1", &digest), (None, None), &tar, "");
        assert!(out.status.success(), "{out:?}");
        std::fs::write(r1.join("REVISION"), "r1\n").unwrap();
        std::fs::write(r1.join(".dp/deps-key"), "k1\n").unwrap();
        let root = dir.join("root");
        let plan = BuildPlan {
            base: Some("r1"),
            unchanged: true,
            ..plan(root.to_str().unwrap(), "r2", &digest)
        };
        let out = run_build(&plan, b"", "");
        assert!(out.status.success(), "{out:?}");
        let r2 = root.join("releases/r2");
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(r2.join("REVISION")), "r2\n");
        assert_eq!(
            read(r1.join("REVISION")),
            "r1\n",
            "the base is not written through"
        );
        assert_eq!(read(r2.join(".dp/manifest")), read(r1.join(".dp/manifest")));
        assert_eq!(read(r2.join(".dp/manifest.sha256")), format!("{digest}\n"));
        assert!(r2.join(".dp/complete").exists() && r1.join(".dp/complete").exists());
        assert!(
            !r2.join(".dp/deps-key").exists(),
            "the base's bookkeeping stays its own"
        );
        assert_eq!(read(r1.join(".dp/deps-key")), "k1\n");
        let ino = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(r1.join("a.txt")), ino(r2.join("a.txt")));
        assert!(!root.join("releases/.tmp-r2").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A first release's tar (without compression) of `dir/src` (one file, made here),
    /// with its extras (the closing `.dp/end` when `end`), and the digest of its manifest.
    fn first_release_tar(dir: &std::path::Path, end: bool) -> (Vec<u8>, String) {
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/a.txt"), "a\n").unwrap();
        let manifest: Manifest = crate::scan::scan(&dir.join("src"), &Default::default()).unwrap();
        let mut add = format!("{}\n", Manifest::header());
        for line in manifest.lines() {
            add.push_str(line);
            add.push('\n');
        }
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
        (tar, manifest.digest())
    }

    /// The build script fetches a stored payload with curl, or with wget where the host
    /// has no curl, checks its hash, and says why it could not, without the URL's query.
    #[test]
    fn a_stored_payload_is_fetched_with_curl_or_wget_and_checked() {
        use std::process::{Command, Stdio};
        let have = |tool: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !have("curl") || !have("wget") || !have("python3") {
            panic!("curl, wget and python3 are needed: run make test (scripts/test-env.sh)");
        }
        let dir = std::env::temp_dir().join(format!("dp-remote-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (tar, digest) = first_release_tar(&dir, true);
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&tar))
        };
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/payload.tar"), &tar).unwrap();
        // A PATH without curl: every program of /usr/bin and /bin but curl.
        let no_curl = dir.join("no-curl");
        std::fs::create_dir_all(&no_curl).unwrap();
        for d in ["/usr/bin", "/bin"] {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                if e.file_name() != "curl" {
                    let _ = std::os::unix::fs::symlink(e.path(), no_curl.join(e.file_name()));
                }
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir.join("www"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http.server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let from = format!("127.0.0.1:{port}");
        let build = |release: &str, path: &str, sha256: &str, fallback: bool| {
            let fetch = Fetch {
                sha256,
                from: &from,
                fallback,
            };
            let url = format!("http://{from}/{release}.tar?X-Amz-Signature=secret\n");
            run_first_build(
                &dir,
                (release, &digest),
                (Some(fetch), None),
                url.as_bytes(),
                path,
            )
        };
        std::fs::copy(dir.join("www/payload.tar"), dir.join("www/r1.tar")).unwrap();
        std::fs::copy(dir.join("www/payload.tar"), dir.join("www/r2.tar")).unwrap();
        let no_curl_path = no_curl.display().to_string();
        for (release, path) in [("r1", ""), ("r2", no_curl_path.as_str())] {
            let (out, built) = build(release, path, &sha, false);
            assert!(
                out.status.success(),
                "{release}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(std::fs::read_to_string(built.join("a.txt")).unwrap(), "a\n");
            assert!(built.join(".dp/complete").exists());
        }
        // Another hash: rejected, nothing built, nothing left behind but hidden leftovers.
        std::fs::copy(dir.join("www/payload.tar"), dir.join("www/r3.tar")).unwrap();
        let (out, built) = build("r3", "", &"0".repeat(64), false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("fetched from {from} has SHA-256 {sha}"))
                && err.contains("rejected"),
            "{err}"
        );
        assert!(!built.exists());
        // Not there (404), with each fetcher: the error names the store and the status,
        // never the query; with the fallback, stdout says so.
        for path in ["", no_curl_path.as_str()] {
            let (out, built) = build("r4", path, &sha, true);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(
                err.contains(&format!("fetching the payload from {from} failed"))
                    && err.contains("404"),
                "{err}"
            );
            assert!(!err.contains("secret") && !err.contains("X-Amz"), "{err}");
            assert_eq!(
                out.stdout,
                UNFETCHED,
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(!built.exists());
        }
        let _ = server.kill();
        let _ = server.wait();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
