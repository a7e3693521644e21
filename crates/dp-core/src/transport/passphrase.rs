//! Passphrases for encrypted private key files, asked once per key file and process.
//!
//! Much as OpenSSH asks: from the program in `SSH_ASKPASS` when `SSH_ASKPASS_REQUIRE` is
//! `force` or `prefer`, or when there is no terminal; otherwise at a prompt on the
//! terminal with echo off. A deploy to 20 hosts asks once. An OpenSSH-format key is
//! decrypted once, here, and handed to libssh2 from memory for every host (an Ed25519
//! one, as any Ed25519 key, signs through [`super::signer`] instead). The opened key
//! and the passphrase stay in this process's memory (never in records, logs, argv or
//! files). Every copy dp makes is wiped when dropped (zeroize): they are read a byte at a
//! time into a buffer that never grows (so no buffered reader and no reallocation leaves
//! one behind), and they reach libssh2 without the ssh2 crate's unwiped C-string copies
//! ([`userauth`]). What libssh2 and OpenSSL do with the key inside is theirs.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use zeroize::Zeroizing;

/// A passphrase, or an opened key: wiped when dropped.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// The passphrase.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The longest passphrase line read (OpenSSH reads 1023 bytes too).
const MAX_LINE: usize = 1023;

/// The first line of what `from` gives (without `\n` or `\r\n`; at most [`MAX_LINE`]
/// bytes), read a byte at a time into a buffer that is never reallocated.
fn read_line_secret(from: &mut impl Read) -> std::io::Result<Secret> {
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_LINE + 1));
    let mut byte = Zeroizing::new([0u8; 1]);
    while line.len() < MAX_LINE {
        match from.read(&mut byte[..]) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    // from_utf8 takes the buffer as it is (no copy); an error hands it back to be wiped.
    let bytes = std::mem::take(&mut *line);
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Secret(Zeroizing::new(text))),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the passphrase is not UTF-8",
            ))
        }
    }
}

/// Authenticates `user` with `key` as it was opened (a key file with or without a
/// passphrase, or a key decrypted here), through libssh2 directly: the ssh2 crate's
/// `userauth_pubkey_memory` and `userauth_pubkey_file` copy the key and the passphrase
/// into C strings that they free without wiping, on every host.
pub fn userauth(
    session: &ssh2::Session,
    user: &str,
    key: &Path,
    unlocked: Option<&Unlocked>,
) -> Result<(), ssh2::Error> {
    let mut raw = session.raw();
    let raw: *mut libssh2_sys::LIBSSH2_SESSION = &mut *raw;
    #[cfg(dp_openssl3)]
    if let Some(rc) = sign_here(raw, user, key, unlocked)? {
        return outcome(raw, rc);
    }
    let rc = match unlocked {
        Some(Unlocked::Key(plain)) => {
            let plain = plain.expose().as_bytes();
            // SAFETY: the session is locked (the guard lives to the end of this function);
            // every pointer comes with its length.
            unsafe {
                libssh2_sys::libssh2_userauth_publickey_frommemory(
                    raw,
                    user.as_ptr().cast(),
                    user.len(),
                    std::ptr::null(),
                    0,
                    plain.as_ptr().cast(),
                    plain.len(),
                    std::ptr::null(),
                )
            }
        }
        _ => {
            let path = std::ffi::CString::new(key.as_os_str().as_encoded_bytes())
                .map_err(|_| ssh2::Error::new(ssh2::ErrorCode::Session(-1), "NUL in a key path"))?;
            // The passphrase with its NUL, in a buffer wiped when dropped.
            let passphrase = match unlocked {
                Some(Unlocked::Passphrase(p)) => {
                    let mut z = Zeroizing::new(Vec::with_capacity(p.expose().len() + 1));
                    z.extend_from_slice(p.expose().as_bytes());
                    z.push(0);
                    Some(z)
                }
                _ => None,
            };
            // SAFETY: as above; the strings are NUL-terminated and outlive the call.
            unsafe {
                libssh2_sys::libssh2_userauth_publickey_fromfile_ex(
                    raw,
                    user.as_ptr().cast(),
                    user.len() as std::ffi::c_uint,
                    std::ptr::null(),
                    path.as_ptr(),
                    passphrase
                        .as_ref()
                        .map_or(std::ptr::null(), |p| p.as_ptr().cast()),
                )
            }
        }
    };
    outcome(raw, rc)
}

/// Logs in with the Ed25519 key at `key` if this process holds it ([`super::signer`]):
/// the status libssh2 gave, or None for a key that libssh2 reads itself.
#[cfg(dp_openssl3)]
fn sign_here(
    raw: *mut libssh2_sys::LIBSSH2_SESSION,
    user: &str,
    key: &Path,
    unlocked: Option<&Unlocked>,
) -> Result<Option<std::ffi::c_int>, ssh2::Error> {
    let plain = match unlocked {
        Some(Unlocked::Key(plain)) => Some(plain.expose()),
        Some(Unlocked::Passphrase(_)) => return Ok(None),
        None => None,
    };
    let Some(key) = super::signer::opened(key, plain) else {
        return Ok(None);
    };
    let user = std::ffi::CString::new(user)
        .map_err(|_| ssh2::Error::new(ssh2::ErrorCode::Session(-1), "NUL in a user name"))?;
    // SAFETY: the caller holds the session locked for the call.
    Ok(Some(unsafe { super::signer::userauth(raw, &user, &key) }))
}

/// A libssh2 login status as a result.
fn outcome(raw: *mut libssh2_sys::LIBSSH2_SESSION, rc: std::ffi::c_int) -> Result<(), ssh2::Error> {
    if rc >= 0 {
        Ok(())
    } else {
        Err(ssh2::Error::from_session_error_raw(raw, rc))
    }
}

/// True when `path` holds a private key that needs a passphrase: an OpenSSH-format key
/// whose cipher is not `none`, or a PEM key marked `ENCRYPTED`.
pub fn is_encrypted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return ssh_key::PrivateKey::from_openssh(&text).is_ok_and(|k| k.is_encrypted());
    }
    // "-----BEGIN ENCRYPTED PRIVATE KEY-----" (PKCS#8), or "Proc-Type: 4,ENCRYPTED" on
    // the line after the BEGIN line (the older PEM keys).
    text.lines().take(2).any(|l| l.contains("ENCRYPTED"))
}

/// An encrypted key file, opened with its passphrase.
pub enum Unlocked {
    /// An OpenSSH-format key, decrypted here once (its bcrypt-pbkdf takes about 0.3 s):
    /// the plain key in OpenSSH format, for libssh2 to read from memory.
    Key(Secret),
    /// Any other key (PEM): libssh2 decrypts the file with this passphrase, which is cheap
    /// for these formats.
    Passphrase(Secret),
}

/// The key file at `path`, opened: the passphrase is asked at the first call for that
/// file (up to three times while the answer does not open an OpenSSH-format key), and
/// the outcome, an error too, is kept for the other hosts. Errors are one line that says
/// what to do.
pub fn unlock(path: &Path) -> Result<Arc<Unlocked>, String> {
    type Opened = HashMap<PathBuf, Result<Arc<Unlocked>, String>>;
    static OPENED: OnceLock<Mutex<Opened>> = OnceLock::new();
    // One lock for the whole ask: hosts connecting in parallel wait for the one prompt.
    let mut opened = OPENED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(done) = opened.get(path) {
        return done.clone();
    }
    let first = format!("Enter passphrase for key '{}': ", path.display());
    let mut prompt = first.clone();
    let mut tries = 0;
    let done = loop {
        tries += 1;
        match ask(&prompt)
            .map_err(Refused::Other)
            .and_then(|p| open(path, p))
        {
            Err(Refused::Wrong) if tries < 3 => {
                prompt = format!("Wrong passphrase, try again. {first}");
            }
            Err(Refused::Wrong) => {
                break Err("wrong passphrase? the key did not open with it".to_string())
            }
            Err(Refused::Other(why)) => break Err(why),
            Ok(unlocked) => {
                keep_out_of_core_dumps();
                break Ok(Arc::new(unlocked));
            }
        }
    };
    opened.insert(path.to_path_buf(), done.clone());
    done
}

/// Why a key did not open.
enum Refused {
    /// The passphrase does not decrypt it.
    Wrong,
    /// Anything else, said in one line.
    Other(String),
}

impl From<String> for Refused {
    fn from(why: String) -> Refused {
        Refused::Other(why)
    }
}

fn open(path: &Path, passphrase: Secret) -> Result<Unlocked, Refused> {
    if passphrase.expose().is_empty() {
        // As OpenSSH does: an empty answer skips the key.
        return Err("no passphrase given, key skipped".to_string().into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("could not read the key: {e}"))?;
    let Ok(key) = ssh_key::PrivateKey::from_openssh(&text) else {
        return Ok(Unlocked::Passphrase(passphrase));
    };
    let plain = key
        .decrypt(passphrase.expose())
        .map_err(|_| Refused::Wrong)?;
    let mut text = plain
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| format!("could not re-encode the opened key: {e}"))?;
    // Moved out, not copied: the Zeroizing it came in is left empty.
    Ok(Unlocked::Key(Secret(Zeroizing::new(std::mem::take(
        &mut *text,
    )))))
}

/// An opened key is in this process's memory from now on: keep it out of core dumps (and
/// other users' debuggers), as ssh-agent does.
fn keep_out_of_core_dumps() {
    #[cfg(dp_linux)]
    // SAFETY: prctl with an integer option; it changes only this process's flags.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

fn ask(prompt: &str) -> Result<Secret, String> {
    let askpass = std::env::var_os("SSH_ASKPASS").filter(|p| !p.is_empty());
    let require = std::env::var("SSH_ASKPASS_REQUIRE")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty");
    match (askpass, require.as_str(), tty) {
        (Some(program), "force" | "prefer", _) | (Some(program), _, Err(_))
            if require != "never" =>
        {
            run_askpass(&program, prompt)
        }
        (_, _, Ok(tty)) => read_tty(tty, prompt),
        (_, _, Err(_)) => Err(
            "the key needs a passphrase and there is no terminal to ask on: \
             load it into ssh-agent (ssh-add), or set SSH_ASKPASS"
                .into(),
        ),
    }
}

fn run_askpass(program: &std::ffi::OsStr, prompt: &str) -> Result<Secret, String> {
    let name = Path::new(program).display().to_string();
    let mut child = Command::new(program)
        .arg(prompt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("SSH_ASKPASS {name} could not start: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let read = read_line_secret(&mut stdout);
    // The rest of its output is not read: closing the pipe lets it end.
    drop(stdout);
    let status = child
        .wait()
        .map_err(|e| format!("SSH_ASKPASS {name}: {e}"))?;
    match read {
        Ok(line) if status.success() => Ok(line),
        _ => Err(format!("SSH_ASKPASS {name} gave no passphrase ({status})")),
    }
}

type Around = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

static AROUND_PROMPT: Mutex<Option<Around>> = Mutex::new(None);

/// Runs every terminal prompt inside `around`: a live display on the same terminal uses
/// it to stand still and clear itself while the passphrase is typed.
pub fn around_prompt(around: impl Fn(&mut dyn FnMut()) + Send + Sync + 'static) {
    *AROUND_PROMPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(around));
}

fn read_tty(tty: std::fs::File, prompt: &str) -> Result<Secret, String> {
    let around = AROUND_PROMPT.lock().unwrap_or_else(|e| e.into_inner());
    let mut answer = Err(String::new());
    let mut ask = || answer = prompt_on(&tty, prompt);
    match around.as_ref() {
        Some(around) => around(&mut ask),
        None => ask(),
    }
    answer
}

/// The terminal's settings from before the prompt, for the signal handler below. Written
/// only while no handler is installed (prompts are one at a time, under `OPENED`).
struct SavedTermios(UnsafeCell<MaybeUninit<libc::termios>>);

// SAFETY: see above: written before the handlers are installed, read only by them.
unsafe impl Sync for SavedTermios {}

static SAVED: SavedTermios = SavedTermios(UnsafeCell::new(MaybeUninit::uninit()));
static PROMPT_FD: AtomicI32 = AtomicI32::new(-1);

/// The signals that end a process at a prompt; each puts the terminal's echo back first.
const ENDING: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn restore_and_end(sig: libc::c_int) {
    // Only async-signal-safe calls: tcsetattr, signal, raise.
    let fd = PROMPT_FD.load(Ordering::SeqCst);
    // SAFETY: SAVED was written before this handler was installed; fd is the open tty.
    unsafe {
        if fd >= 0 {
            libc::tcsetattr(fd, libc::TCSAFLUSH, (*SAVED.0.get()).as_ptr());
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn prompt_on(tty: &std::fs::File, prompt: &str) -> Result<Secret, String> {
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on the terminal's own descriptor with a zeroed struct that
    // tcgetattr fills in; sigaction with handlers that only restore it. Signals that were
    // ignored stay ignored.
    let (saved, before) = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err("could not read the terminal's settings to ask for the passphrase".into());
        }
        (*SAVED.0.get()).write(t);
        PROMPT_FD.store(fd, Ordering::SeqCst);
        let mut before: [libc::sigaction; ENDING.len()] = std::mem::zeroed();
        for (sig, old) in ENDING.iter().zip(before.iter_mut()) {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = restore_and_end as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(*sig, &act, old);
            if old.sa_sigaction == libc::SIG_IGN {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        if libc::tcsetattr(fd, libc::TCSAFLUSH, &t) != 0 {
            put_back(fd, &saved, &before);
            return Err("could not turn off the terminal's echo to ask for the passphrase".into());
        }
        (saved, before)
    };
    let mut out = tty;
    let _ = out.write_all(prompt.as_bytes());
    let _ = out.flush();
    let read = read_line_secret(&mut out);
    put_back(fd, &saved, &before);
    read.map_err(|e| format!("could not read the passphrase: {e}"))
}

/// Puts back the terminal's settings and the signal handlers from before the prompt.
fn put_back(fd: RawFd, saved: &libc::termios, before: &[libc::sigaction; ENDING.len()]) {
    // SAFETY: the settings and handlers read in prompt_on, for the same descriptor.
    unsafe {
        libc::tcsetattr(fd, libc::TCSAFLUSH, saved);
        for (sig, old) in ENDING.iter().zip(before) {
            libc::sigaction(*sig, old, std::ptr::null_mut());
        }
    }
    PROMPT_FD.store(-1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_keys_are_told_from_plain_ones() {
        let dir = std::env::temp_dir().join(format!("dp-pass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, pass, encrypted) in [("plain", "", false), ("locked", "s3cret", true)] {
            let key = dir.join(name);
            let _ = std::fs::remove_file(&key);
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", pass, "-f"])
                .arg(&key)
                .status()
                .unwrap();
            assert!(ok.success());
            assert_eq!(is_encrypted(&key), encrypted, "{name}");
        }
        let pem = dir.join("pem");
        std::fs::write(
            &pem,
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(is_encrypted(&pem));
        assert!(!is_encrypted(&dir.join("missing")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
