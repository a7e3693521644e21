//! Command and URL templates: `{host}`, `{addr}`, `{ssh_port}`, `{release}`, `{root}`, and
//! each of the host's `vars` from deploy.toml (as `{name}` or `{vars.name}`). `{port}` is
//! only ever a host var (the app's port), never the SSH port. Values put into a shell
//! command are quoted with [`crate::quote`]; values put into a URL are percent-encoded,
//! so no value can inject anything.

use crate::quote::{quote_str, QuoteError};
use crate::Record;

/// How substituted values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// For a POSIX shell command: each value becomes one quoted word.
    Shell,
    /// For a URL: each value is percent-encoded.
    Url,
    /// Plain text (an expected answer): values as they are.
    Text,
}

/// The value of each placeholder for `record`, with `release` as `{release}`.
fn values(record: &Record, release: &str) -> Vec<(String, String)> {
    let mut v = vec![
        ("host".to_string(), record.host.clone()),
        ("addr".to_string(), record.address().to_string()),
        ("release".to_string(), release.to_string()),
        ("root".to_string(), record.root.clone().unwrap_or_default()),
        (
            "ssh_port".to_string(),
            record.port.unwrap_or(22).to_string(),
        ),
    ];
    if let Some(serde_json::Value::Object(vars)) = record.extra.get("vars") {
        for (k, val) in vars {
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            v.retain(|(name, _)| name != k);
            v.push((k.clone(), text.clone()));
            v.push((format!("vars.{k}"), text));
        }
    }
    v
}

/// A piece of a template: text as it is, or a placeholder's name.
enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

/// Splits a template. A placeholder is `{name}` or `{vars.name}`, a name being letters,
/// digits and `_` (not starting with a digit); anything else in braces is text, and so
/// is `${name}`, which belongs to the shell, and `{}` (find -exec). `{{name}}` is the
/// text `{name}`.
fn pieces(template: &str) -> Vec<Piece<'_>> {
    let is_name = |n: &str| crate::quote::is_shell_name(n.strip_prefix("vars.").unwrap_or(n));
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    let bytes = template.as_bytes();
    while i < bytes.len() {
        // `{{name}}` is the text `{name}` (an awk program's `{print}`, say).
        if template[i..].starts_with("{{") {
            if let Some(len) = template[i + 2..].find("}}") {
                if is_name(&template[i + 2..i + 2 + len]) {
                    out.push(Piece::Text(&template[text_start..i]));
                    out.push(Piece::Text(&template[i + 1..i + len + 3]));
                    i += len + 4;
                    text_start = i;
                    continue;
                }
            }
        }
        if bytes[i] == b'{' && (i == 0 || bytes[i - 1] != b'$') {
            if let Some(len) = template[i + 1..].find('}') {
                let name = &template[i + 1..i + 1 + len];
                if is_name(name) {
                    out.push(Piece::Text(&template[text_start..i]));
                    out.push(Piece::Name(name));
                    i += len + 2;
                    text_start = i;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push(Piece::Text(&template[text_start..]));
    out
}

/// Why a template cannot be rendered for a record.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A placeholder that is neither built in nor one of the host's vars.
    #[error("unknown placeholder {{{name}}} (known: {known})")]
    Unknown {
        /// The placeholder's name.
        name: String,
        /// The names that would work for this host.
        known: String,
    },
    /// A value could not be quoted.
    #[error(transparent)]
    Quote(#[from] QuoteError),
}

/// Renders `template` for `record`, quoting or encoding every value; a placeholder that
/// is not known for this host is an error.
pub fn render(
    template: &str,
    record: &Record,
    release: &str,
    escape: Escape,
) -> Result<String, TemplateError> {
    let vals = values(record, release);
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Name(name) => {
                let Some((_, value)) = vals.iter().find(|(n, _)| n == name) else {
                    return Err(TemplateError::Unknown {
                        name: name.to_string(),
                        known: vals
                            .iter()
                            .map(|(n, _)| format!("{{{n}}}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                };
                match escape {
                    Escape::Shell => out.push_str(&quote_str(value)?),
                    Escape::Url => out.push_str(&percent_encode(value)),
                    Escape::Text => out.push_str(value),
                }
            }
        }
    }
    Ok(out)
}

/// Checks, before any host is touched, that `template` renders for every record that has
/// not failed; the error names the host and `what` the template is.
pub fn check(template: &str, records: &[Record], escape: Escape, what: &str) -> Result<(), String> {
    for r in records.iter().filter(|r| !r.failed()) {
        render(template, r, "r", escape).map_err(|e| format!("{}: {what}: {e}", r.host))?;
    }
    Ok(())
}

/// All but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) and the `:`, `[`
/// and `]` of a host and port.
const URL_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'[')
    .remove(b']');

fn percent_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, URL_KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_or_encoded() {
        let mut r = Record::new("web1");
        r.addr = Some("10.0.0.5".into());
        r.root = Some("/srv/it's".into());
        r.extra.insert(
            "vars".into(),
            serde_json::json!({"port": 8001, "evil": "$(rm -rf /); x"}),
        );
        let cmd = render(
            "restart {host} {root} {port} {ssh_port} {evil} ${HOME} {} {print $1}",
            &r,
            "r1",
            Escape::Shell,
        )
        .unwrap();
        assert_eq!(
            cmd,
            "restart web1 '/srv/it'\\''s' 8001 22 '$(rm -rf /); x' ${HOME} {} {print $1}"
        );
        // `{port}` is never the SSH port: without a host var of that name it is unknown.
        let mut plain = Record::new("web2");
        plain.port = Some(2222);
        assert_eq!(
            render("{ssh_port}", &plain, "r1", Escape::Shell).unwrap(),
            "2222"
        );
        let e = render("{port}", &plain, "r1", Escape::Shell).unwrap_err();
        assert!(
            e.to_string().starts_with("unknown placeholder {port}"),
            "{e}"
        );
        assert_eq!(
            render("awk '{{print}}' {{x}}", &r, "r1", Escape::Shell).unwrap(),
            "awk '{print}' {x}"
        );
        let e = render("x {relase}", &r, "r1", Escape::Shell)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("unknown placeholder {relase} (known: {host}"),
            "{e}"
        );
        let url = render(
            "http://{addr}:{vars.port}/health?x={evil}",
            &r,
            "r1",
            Escape::Url,
        )
        .unwrap();
        assert_eq!(
            url,
            "http://10.0.0.5:8001/health?x=%24%28rm%20-rf%20%2F%29%3B%20x"
        );
    }
}
