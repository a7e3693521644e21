//! The one function that quotes arguments for a remote POSIX shell.
//!
//! Every path and argument that dp puts into a command line for `sh` goes through
//! [`quote`]. Bytes are kept exactly: text is wrapped in single quotes (a single quote
//! becomes `'\''`), and bytes that are not valid UTF-8 (which cannot travel in an SSH exec
//! request as text) are rebuilt on the host with `printf` octal escapes inside `"$(...)"`.
//! A NUL byte cannot be part of a shell argument and is refused.

/// An argument that no shell can receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument contains a NUL byte: {0:?}")]
pub struct QuoteError(pub String);

/// True when `name` can name a shell variable (or a template placeholder): ASCII
/// letters, digits and `_`, not starting with a digit.
pub fn is_shell_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The command line that runs `script` with `/bin/sh`, whatever login shell reads it
/// first: over SSH a command goes to the user's shell (`$SHELL -c`), which may be bash,
/// dash, zsh or fish. The script travels as one single-quoted word that each of them
/// reads the same way: a `'` becomes `'\''` and a `\` becomes `'"\\"'` (fish, unlike
/// POSIX shells, reads backslash escapes inside single quotes, but not these). csh and
/// tcsh are not among them (they end a quoted word at a newline).
pub fn sh_command(script: &str) -> String {
    let mut out = String::with_capacity(script.len() + 32);
    out.push_str("exec /bin/sh -c '");
    for c in script.chars() {
        match c {
            '\'' => out.push_str("'\\''"),
            '\\' => out.push_str("'\"\\\\\"'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes `arg` as one word for a POSIX shell, byte for byte.
pub fn quote(arg: impl AsRef<[u8]>) -> Result<String, QuoteError> {
    let bytes = arg.as_ref();
    if bytes.contains(&0) {
        return Err(QuoteError(String::from_utf8_lossy(bytes).into_owned()));
    }
    if !bytes.is_empty() && bytes.iter().all(|b| is_safe(*b)) {
        // Plain words stay readable in logs; a leading '-' or '=' is still fine for sh.
        return Ok(String::from_utf8(bytes.to_vec()).expect("ascii"));
    }
    let mut out = String::with_capacity(bytes.len() + 2);
    let mut rest = bytes;
    if rest.is_empty() {
        return Ok("''".to_string());
    }
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                push_single_quoted(&mut out, text);
                rest = &[];
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                if !good.is_empty() {
                    push_single_quoted(&mut out, std::str::from_utf8(good).expect("valid"));
                }
                let bad_len = e.error_len().unwrap_or(bad.len());
                out.push_str("\"$(printf '");
                out.push_str(&printf_format(&bad[..bad_len]));
                out.push_str("')\"");
                rest = &bad[bad_len..];
            }
        }
    }
    Ok(out)
}

/// Quotes a UTF-8 string; see [`quote`].
pub fn quote_str(arg: &str) -> Result<String, QuoteError> {
    quote(arg.as_bytes())
}

/// `bytes` as a format for the shell's `printf` that prints exactly them: letters,
/// digits and `-_./:@+,` as they are, every other byte as a three-digit octal escape
/// (POSIX printf; NUL included). The result needs no quoting.
pub fn printf_format(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if is_safe(b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_./:@%+,".contains(&b)
}

fn push_single_quoted(out: &mut String, text: &str) {
    out.push('\'');
    out.push_str(&text.replace('\'', "'\\''"));
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same script gives the same output through every login shell dp supports
    /// (`make test` installs zsh and fish).
    #[test]
    fn sh_command_reads_the_same_in_every_login_shell() {
        let script = "set -e\nlist='a b  c'\nfor w in $list; do printf '<%s>' \"$w\"; done\n\
                      printf '%s|%s\\n' \"it's\" 'back\\slash \\\\ \\' $((1 + 2))\n\
                      printf '\\101\\n'; echo \"${0##*/} $# ${HOME:+home}\"\n";
        let reference = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(reference.status.success(), "{reference:?}");
        let want = String::from_utf8(reference.stdout).unwrap();
        assert!(want.starts_with("<a><b><c>it's|back\\slash"), "{want}");
        for shell in ["sh", "dash", "bash", "zsh", "fish"] {
            let out = std::process::Command::new(shell)
                .args(["-c", &sh_command(script)])
                .output()
                .unwrap_or_else(|e| panic!("{shell}: {e} (make test installs it)"));
            assert!(out.status.success(), "{shell}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{shell}");
        }
    }

    #[test]
    fn printf_format_prints_every_byte_in_every_posix_shell() {
        let mut bytes: Vec<u8> = (0..=255u8).collect();
        // Escapes followed by digits, and the escape characters themselves.
        bytes.extend_from_slice(br"\0\\1%%d%s7\x41\n\0000123\u00e9");
        let format = printf_format(&bytes);
        assert!(format.bytes().all(|b| b == b'\\' || is_safe(b)), "{format}");
        let script = format!("printf {}", quote_str(&format).unwrap());
        for shell in ["sh", "dash", "bash", "busybox", "zsh"] {
            let mut cmd = std::process::Command::new(shell);
            match shell {
                "busybox" => cmd.args(["sh", "-c", &script]),
                "zsh" => cmd.args(["--emulate", "sh", "-c", &script]),
                _ => cmd.args(["-c", &script]),
            };
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{shell}: {e} (make test installs it)"));
            assert!(out.status.success(), "{shell}: {out:?}");
            assert_eq!(out.stdout, bytes, "{shell}");
        }
    }

    #[test]
    fn shapes() {
        assert_eq!(quote("plain/path-1.txt").unwrap(), "plain/path-1.txt");
        assert_eq!(quote("").unwrap(), "''");
        assert_eq!(quote("a b").unwrap(), "'a b'");
        assert_eq!(quote("it's").unwrap(), "'it'\\''s'");
        assert_eq!(quote(b"a\xffb").unwrap(), "'a'\"$(printf '\\377')\"'b'");
        assert!(quote(b"a\0b").is_err());
    }
}
